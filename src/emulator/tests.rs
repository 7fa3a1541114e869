//! The emulators over real HTTP: they hold clients to each provider's documented auth, and
//! tally's own clients read every provider from them.

use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::config::{AccountConfig, from_toml};
use crate::domain::{PayoutLookup, PayoutStatus};
use crate::providers::ibanera::IbaneraSettings;
use crate::providers::leanx::LeanxSettings;
use crate::providers::luxtak::LuxtakSettings;
use crate::providers::yedpay::YedpaySettings;
use crate::providers::{
    ClientContext, DEFAULT_MAX_RESPONSE_BYTES, ProviderClient, ProviderConfig, UpstreamErrorKind, UpstreamHttp,
};

async fn emulator() -> Emulator {
    // Raw reqwest clients below need the process's TLS provider, as tally's own client does.
    crate::install_crypto_provider();
    Emulator::start(TcpListener::bind("127.0.0.1:0").await.unwrap(), EmulatorOptions::default()).await.unwrap()
}

fn demo_accounts(emu: &Emulator) -> Vec<AccountConfig> {
    from_toml(&emu.demo_accounts_toml()).unwrap().accounts
}

fn client(account: &AccountConfig) -> std::sync::Arc<dyn ProviderClient> {
    account.provider.client(ClientContext {
        base_url: account.base_url.clone(),
        utc_offset: account.utc_offset,
        timeout: account.freshness.timeout,
        http: UpstreamHttp::new(DEFAULT_MAX_RESPONSE_BYTES),
    })
}

fn with(account: &AccountConfig, field: &str, value: &str) -> AccountConfig {
    // The account with one credential replaced, as an operator's typo would.
    let mut a = account.clone();
    let value = secrecy::SecretString::from(value.to_owned());
    a.provider = match (&a.provider, field) {
        (ProviderConfig::Leanx(s), "auth_token") => {
            ProviderConfig::Leanx(LeanxSettings { auth_token: value, ..s.clone() })
        }
        (ProviderConfig::Luxtak(s), "app_key") => {
            ProviderConfig::Luxtak(LuxtakSettings { app_key: value, ..s.clone() })
        }
        (ProviderConfig::Ibanera(s), "password") => {
            ProviderConfig::Ibanera(IbaneraSettings { password: value, ..s.clone() })
        }
        (ProviderConfig::Yedpay(s), "access_token") => {
            ProviderConfig::Yedpay(YedpaySettings { access_token: value, ..s.clone() })
        }
        _ => panic!("no field {field} here"),
    };
    a
}

fn figures(fetch: &crate::domain::BalanceFetch) -> Vec<String> {
    fetch
        .entries
        .iter()
        .map(|e| {
            let d = |v: Option<rust_decimal::Decimal>| v.map_or("null".to_owned(), |d| d.to_string());
            format!(
                "{}/{} {} {} {} {}{}",
                e.wallet,
                e.currency,
                d(e.available),
                d(e.pending),
                d(e.reserved),
                d(e.total),
                if e.blocked { " blocked" } else { "" }
            )
        })
        .collect()
}

#[tokio::test]
async fn tallys_clients_read_every_provider_from_the_emulators() {
    let emu = emulator().await;
    let accounts = demo_accounts(&emu);
    let mut all = Vec::new();
    for account in &accounts {
        let fetch = client(account).fetch_balances().await.unwrap_or_else(|e| panic!("{}: {e}", account.id));
        all.push((account.id.to_string(), figures(&fetch)));
    }
    let get = |id: &str| all.iter().find(|(a, _)| a == id).unwrap().1.clone();
    assert_eq!(get("leanx-main"), ["transaction/MYR 26.05 null null 26.05", "prefund/MYR 393.63 null null 393.63"]);
    assert_eq!(get("leanx-ops")[1], "prefund/MYR 8400.50 null null 8400.50");
    assert_eq!(get("luxtak-latam")[0], "main/USD 551.38 null null 551.38");
    assert_eq!(get("luxtak-latam")[3], "main/EUR 0 null null 0");
    let ibanera = get("ibanera-treasury");
    assert_eq!(ibanera.len(), 5, "three pages of two");
    assert_eq!(ibanera[2], "1002/USDC 1520.12345678 0.00000000 null 1520.12345678");
    assert_eq!(ibanera[4], "1004/GBP 310.00 0.00 null 310.00 blocked");
    assert_eq!(
        get("yedpay-hk"),
        ["JwoMPpKy/HKD 17.47 0.00 0.00 17.4781", "JwoMPpKy/USD 2200.00 150.00 150.12 2500.1250"]
    );
}

#[tokio::test]
async fn every_demo_payout_reads_back_through_the_clients() {
    let emu = emulator().await;
    let accounts = demo_accounts(&emu);
    let by_id = |id: &str| client(accounts.iter().find(|a| a.id.as_str() == id).unwrap());
    let cases = [
        ("leanx-main", "PAYOUT-A9D5:174307-LEANX", PayoutStatus::Succeeded),
        ("leanx-main", "INVOICE2001", PayoutStatus::Pending),
        ("leanx-main", "INVOICE2002", PayoutStatus::AwaitingApproval),
        ("leanx-main", "PAYOUT-D8A3:112045-LEANX", PayoutStatus::Failed),
        ("luxtak-latam", "LUX-ORDER-1001", PayoutStatus::Pending),
        ("luxtak-latam", "TS2026112009300110002", PayoutStatus::Processing),
        ("luxtak-latam", "LUX-ORDER-1003", PayoutStatus::Succeeded),
        ("luxtak-latam", "LUX-ORDER-1004", PayoutStatus::Failed),
        ("luxtak-latam", "LUX-ORDER-1005", PayoutStatus::Reversed),
        ("yedpay-hk", "STL-0001", PayoutStatus::Pending),
        ("yedpay-hk", "YTX-90002", PayoutStatus::Processing),
        ("yedpay-hk", "STL-0003", PayoutStatus::Succeeded),
        ("yedpay-hk", "STL-0004", PayoutStatus::Failed),
        ("yedpay-hk", "STL-0005", PayoutStatus::Cancelled),
        ("yedpay-hk", "STL-0006", PayoutStatus::Cancelled),
    ];
    for (account, id, status) in cases {
        let PayoutLookup::Found(p) = by_id(account).lookup_payout(id).await.unwrap() else { panic!("{id} is found") };
        assert_eq!(p.status, status, "{account} {id}");
    }
    let PayoutLookup::Found(failed) = by_id("leanx-main").lookup_payout("INVOICE2003").await.unwrap() else { panic!() };
    assert_eq!(failed.failure.unwrap().code.as_deref(), Some("77"));
    assert!(
        matches!(by_id("leanx-ops").lookup_payout("INVOICE1234").await.unwrap(), PayoutLookup::NotFound),
        "payouts are per token"
    );
    assert!(matches!(by_id("luxtak-latam").lookup_payout("nope").await.unwrap(), PayoutLookup::NotFound));
}

#[tokio::test]
async fn wrong_credentials_get_each_providers_documented_refusal() {
    let emu = emulator().await;
    let accounts = demo_accounts(&emu);
    let cases = [(0, "auth_token"), (2, "app_key"), (3, "password"), (4, "access_token")];
    for (i, field) in cases {
        let bad = with(&accounts[i], field, "wrong");
        let e = client(&bad).fetch_balances().await.unwrap_err();
        assert_eq!(e.kind, UpstreamErrorKind::AuthFailed, "{field}: {e}");
    }
    // The documented bodies themselves.
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/api/v1/merchant/overall-balance", emu.base_url(Provider::Leanx)))
        .header("auth-token", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer(r).await,
        (
            401,
            json!({"response_code": 4001, "description": "INVALID_TOKEN", "app_version": "/api/v1", "data": null,
                   "breakdown_errors": "INVALID_TOKEN", "token": ""})
        ),
        "the FAQ's INVALID_TOKEN in LeanX's envelope"
    );
    let r = http
        .post(format!("{}/api/balance", emu.base_url(Provider::Luxtak)))
        .header("AppId", credentials::LUXTAK_APP_ID)
        .header("Authorization", "0".repeat(64))
        .body("{\"timestamp\":1}")
        .send()
        .await
        .unwrap();
    let (status, body) = answer(r).await;
    assert_eq!(status, 401);
    assert_eq!((body["code"].as_i64(), body["msg"].as_str()), (Some(4_004_003), Some("permission denied")));
    let r = http
        .post(format!("{}/api/v1/public/auth/login", emu.base_url(Provider::Ibanera)))
        .body(json!({"username": credentials::IBANERA_USERNAME, "password": "wrong", "otp": current_otp()}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer(r).await,
        (
            400,
            json!({"id": 0, "details": null, "status": "0",
                   "errors": [{"fieldName": "", "messageCode": "Username_Or_Password_Incorrect"}]})
        ),
        "a documented login messageCode in the common envelope"
    );
    let r = http
        .get(format!("{}/v1/balance/JwoMPpKy", emu.base_url(Provider::Yedpay)))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(answer(r).await.1, json!({"success": false, "message": "Unauthenticated.", "status": 500}));
}

/// Status and JSON body of an emulator's answer.
async fn answer(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes))))
}

fn ibanera_totp() -> totp_rs::Totp {
    crate::providers::ibanera::totp::generator(&credentials::IBANERA_TOTP_SECRET.to_owned().into()).unwrap()
}

fn current_otp() -> String {
    crate::providers::ibanera::totp::code_at(&ibanera_totp(), chrono::Utc::now().timestamp() as u64)
}

#[tokio::test]
async fn an_ibanera_data_call_with_a_bad_otp_is_refused_even_with_a_live_token() {
    let emu = emulator().await;
    let http = reqwest::Client::new();
    let base = emu.base_url(Provider::Ibanera);
    let login = json!({"username": credentials::IBANERA_USERNAME, "password": credentials::IBANERA_PASSWORD,
                       "otp": current_otp()});
    let r = http.post(format!("{base}/api/v1/public/auth/login")).body(login.to_string()).send().await.unwrap();
    let (status, body) = answer(r).await;
    assert_eq!(status, 200, "{body}");
    let token = body["details"]["accessToken"].as_str().unwrap().to_owned();
    // A code valid in no step the server accepts (now ±1), even a step later.
    let now = chrono::Utc::now().timestamp() as u64;
    let totp = ibanera_totp();
    let bad = (0..1_000_000)
        .map(|n| format!("{n:06}"))
        .find(|c| !crate::providers::ibanera::totp::accepts(&totp, c, now + 30, 2))
        .unwrap();
    let balances = format!("{base}/api/v1/customer/accounts/balances");
    for otp in [Some(bad.as_str()), None] {
        let mut request = http.get(&balances).bearer_auth(&token);
        if let Some(otp) = otp {
            request = request.header("otp", otp);
        }
        let (status, body) = answer(request.send().await.unwrap()).await;
        assert_eq!((status, &body["status"], &body["details"]), (400, &json!("0"), &Value::Null), "otp {otp:?}");
        assert_eq!(body["errors"][0]["messageCode"], "Invalid_Otp");
    }
    let r = http.get(&balances).bearer_auth(&token).header("otp", current_otp()).send().await.unwrap();
    assert_eq!(answer(r).await.0, 200, "the same token with a valid code is served");
}

#[tokio::test]
async fn luxtak_requests_without_app_id_or_authorization_get_the_documented_codes() {
    let emu = emulator().await;
    let url = format!("{}/api/balance", emu.base_url(Provider::Luxtak));
    let http = reqwest::Client::new();
    let params: serde_json::Map<String, Value> =
        serde_json::from_value(json!({"timestamp": chrono::Utc::now().timestamp()})).unwrap();
    let signature = crate::providers::luxtak::sign(&params, credentials::LUXTAK_APP_KEY);
    let body = Value::Object(params).to_string();
    let r = http.post(&url).header("Authorization", &signature).body(body.clone()).send().await.unwrap();
    let (status, answer_body) = answer(r).await;
    assert_eq!(
        (status, answer_body["code"].as_i64(), answer_body["msg"].as_str()),
        (401, Some(4_004_100), Some("MerchantId or AppId is required"))
    );
    let r = http.post(&url).header("AppId", credentials::LUXTAK_APP_ID).body(body.clone()).send().await.unwrap();
    let (status, answer_body) = answer(r).await;
    assert_eq!(
        (status, answer_body["code"].as_i64(), answer_body["msg"].as_str()),
        (401, Some(4_004_101), Some("Authorization is required"))
    );
    let r = http
        .post(&url)
        .header("AppId", credentials::LUXTAK_APP_ID)
        .header("Authorization", &signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer(r).await.0, 200, "both present and right");
}

#[tokio::test]
async fn an_injected_rate_limit_answers_in_each_providers_own_shape() {
    let emu = emulator().await;
    let accounts = demo_accounts(&emu);
    let http = reqwest::Client::new();
    let cases = [
        (
            0,
            Provider::Leanx,
            http.post(format!("{}/api/v1/merchant/overall-balance", emu.base_url(Provider::Leanx))),
            json!({"response_code": 4290, "description": "TOO_MANY_REQUESTS", "app_version": "/api/v1", "data": null,
                   "breakdown_errors": "TOO_MANY_REQUESTS", "token": ""}),
        ),
        (
            2,
            Provider::Luxtak,
            http.post(format!("{}/api/balance", emu.base_url(Provider::Luxtak))),
            json!({"code": 4_004_029, "msg": "too many requests", "data": {}}),
        ),
        (
            3,
            Provider::Ibanera,
            http.post(format!("{}/api/v1/public/auth/login", emu.base_url(Provider::Ibanera))),
            json!({"id": 0, "details": null, "status": "0",
                   "errors": [{"fieldName": "", "messageCode": "Too_Many_Requests"}]}),
        ),
        (
            4,
            Provider::Yedpay,
            http.get(format!("{}/v1/settlements", emu.base_url(Provider::Yedpay))),
            json!({"success": false, "message": "Too Many Attempts.", "status": 429}),
        ),
    ];
    for (account, provider, request, expected) in cases {
        emu.set_faults(provider, Faults { rate_limit: Some(9), ..Faults::default() });
        let r = request.send().await.unwrap();
        assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("9"), "{provider}");
        let (status, mut body) = answer(r).await;
        if provider == Provider::Luxtak {
            assert!(body["time"].is_i64(), "Luxtak's envelope has a time");
            body.as_object_mut().unwrap().remove("time");
        }
        assert_eq!((status, body), (429, expected), "{provider}");
        // And tally's client reads it as the rate limit it is.
        let e = client(&accounts[account]).fetch_balances().await.unwrap_err();
        assert_eq!(
            (e.kind, e.retry_after),
            (UpstreamErrorKind::RateLimited, Some(Duration::from_secs(9))),
            "{provider}"
        );
    }
}

#[test]
fn luxtak_payout_times_agree_with_the_dates_in_their_ids() {
    for p in &data::LUXTAK_PAYOUTS {
        // `TS` + the UTC creation time as YYYYMMDDhhmmss + a sequence (PROVIDERS.md §2.7).
        let encoded = chrono::NaiveDateTime::parse_from_str(&p.payout_id[2..16], "%Y%m%d%H%M%S").unwrap().and_utc();
        assert_eq!(encoded.timestamp(), p.create_time, "{}", p.payout_id);
        assert!(p.update_time >= p.create_time, "{}", p.payout_id);
    }
}

#[tokio::test]
async fn an_error_rate_outside_0_to_1_is_refused_by_the_control_endpoint_and_the_flag() {
    let emu = emulator().await;
    let http = reqwest::Client::new();
    for rate in ["1.5", "-0.1", "2"] {
        let r = http
            .put(format!("http://{}/_control/faults/leanx", emu.addr()))
            .body(format!(r#"{{"error_rate":{rate}}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{rate}");
        let text = r.text().await.unwrap();
        assert!(text.contains("error_rate must be between 0 and 1"), "{rate}: {text}");
        let flag = format!("error_rate={rate}").parse::<Faults>().unwrap_err();
        assert!(flag.contains("error_rate must be between 0 and 1"), "{rate}: {flag}");
    }
    assert!(client(&demo_accounts(&emu)[0]).fetch_balances().await.is_ok(), "no refused fault was applied");
    let r = http
        .put(format!("http://{}/_control/faults/leanx", emu.addr()))
        .body(r#"{"error_rate":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "the bounds themselves are valid");
}

#[tokio::test]
async fn a_stale_luxtak_timestamp_has_expired() {
    let emu = emulator().await;
    let params: serde_json::Map<String, Value> =
        serde_json::from_value(json!({"timestamp": chrono::Utc::now().timestamp() - 3600})).unwrap();
    let r = reqwest::Client::new()
        .post(format!("{}/api/balance", emu.base_url(Provider::Luxtak)))
        .header("AppId", credentials::LUXTAK_APP_ID)
        .header("Authorization", crate::providers::luxtak::sign(&params, credentials::LUXTAK_APP_KEY))
        .body(Value::Object(params).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!((body["code"].as_i64(), body["data"]["err"].as_str()), (Some(4_001_000), Some("request has expired")));
}

#[tokio::test]
async fn expired_ibanera_tokens_lead_to_one_new_login() {
    let emu = emulator().await;
    let ibanera = client(&demo_accounts(&emu)[3]);
    ibanera.fetch_balances().await.unwrap();
    assert_eq!(emu.calls(Provider::Ibanera), 4, "one login, three pages");
    ibanera.fetch_balances().await.unwrap();
    assert_eq!(emu.calls(Provider::Ibanera), 7, "the token is reused");
    emu.expire_ibanera_tokens();
    ibanera.fetch_balances().await.unwrap();
    assert_eq!(emu.calls(Provider::Ibanera), 12, "a refused page, one login, three pages");
}

#[tokio::test]
async fn repeated_failed_ibanera_logins_lock_the_account() {
    let emu = emulator().await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/public/auth/login", emu.base_url(Provider::Ibanera));
    let mut last = Value::Null;
    for _ in 0..5 {
        let r = http
            .post(&url)
            .body(r#"{"username":"demo-treasury","password":"bad","otp":"000000"}"#)
            .send()
            .await
            .unwrap();
        last = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    }
    assert_eq!(last["errors"][0]["messageCode"], "Account_Locked");
    // Even the right credentials are refused while locked.
    let e = client(&demo_accounts(&emu)[3]).fetch_balances().await.unwrap_err();
    assert_eq!((e.kind, e.provider_code.as_deref()), (UpstreamErrorKind::AuthFailed, Some("Account_Locked")));
}

#[tokio::test]
async fn yedpay_settlements_page_at_the_asked_limit() {
    let emu = emulator().await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/settlements?limit=3&page=2", emu.base_url(Provider::Yedpay));
    let r = http.get(url).bearer_auth(credentials::YEDPAY_ACCESS_TOKEN).send().await.unwrap();
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["meta"]["pagination"]["total_pages"], 2);
    assert_eq!(body["data"][2]["status"], "canceled");
}

#[tokio::test]
async fn injected_faults_look_like_real_failures() {
    let emu = emulator().await;
    let accounts = demo_accounts(&emu);
    let leanx = client(&accounts[0]);
    emu.set_faults(Provider::Leanx, Faults { fail_next: 1, ..Faults::default() });
    assert_eq!(leanx.fetch_balances().await.unwrap_err().kind, UpstreamErrorKind::Unavailable);
    assert!(leanx.fetch_balances().await.is_ok(), "only the next call failed");
    emu.set_faults(Provider::Leanx, Faults { rate_limit: Some(9), ..Faults::default() });
    let e = leanx.fetch_balances().await.unwrap_err();
    assert_eq!((e.kind, e.retry_after), (UpstreamErrorKind::RateLimited, Some(Duration::from_secs(9))));
    emu.set_faults(Provider::Leanx, Faults { malformed: true, ..Faults::default() });
    assert_eq!(leanx.fetch_balances().await.unwrap_err().kind, UpstreamErrorKind::InvalidResponse);
    emu.set_faults(Provider::Leanx, Faults { error_rate: 1.0, ..Faults::default() });
    assert_eq!(leanx.fetch_balances().await.unwrap_err().kind, UpstreamErrorKind::Unavailable);

    // A hang meets the client's timeout (the demo accounts' default 5 s, shortened here).
    let mut quick = accounts[1].clone();
    quick.freshness.timeout = Duration::from_millis(200);
    emu.set_faults(Provider::Leanx, Faults { hang: true, ..Faults::default() });
    assert_eq!(client(&quick).fetch_balances().await.unwrap_err().kind, UpstreamErrorKind::Timeout);

    // Latency holds the answer back: longer than the client waits, it is a timeout.
    emu.set_faults(Provider::Leanx, Faults { latency: Duration::from_secs(30), ..Faults::default() });
    assert_eq!(client(&quick).fetch_balances().await.unwrap_err().kind, UpstreamErrorKind::Timeout);

    // The control endpoint sets the same faults from outside.
    let http = reqwest::Client::new();
    let r = http
        .put(format!("http://{}/_control/faults/yedpay", emu.addr()))
        .body(r#"{"fail_next":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(client(&accounts[4]).fetch_balances().await.unwrap_err().kind, UpstreamErrorKind::Unavailable);
    let calls: Value = serde_json::from_slice(
        &http.get(format!("http://{}/_control/calls", emu.addr())).send().await.unwrap().bytes().await.unwrap(),
    )
    .unwrap();
    assert_eq!(calls["yedpay"], 2, "both currencies were asked concurrently; the first failed");
    emu.shutdown().await;
}

#[test]
fn every_provider_has_one_emulator_and_demo_accounts() {
    for provider in Provider::ALL {
        assert_eq!(EMULATORS.iter().filter(|e| e.provider == provider).count(), 1, "{provider}");
        let accounts = (emulated(provider).demo_accounts)(&url::Url::parse("http://127.0.0.1:9/x").unwrap());
        let settings = crate::config::from_toml(&accounts).unwrap_or_else(|e| panic!("{provider}: {e}"));
        assert!(settings.accounts.iter().all(|a| a.provider_kind() == provider), "{provider}: {accounts}");
        assert!(!settings.accounts.is_empty(), "{provider} has demo accounts");
    }
}

#[tokio::test]
async fn a_held_leanx_prefund_figure_is_served_until_reset() {
    let emu = emulator().await;
    let http = reqwest::Client::new();
    let control = format!("http://{}/_control/leanx/prefund", emu.addr());
    let accounts = demo_accounts(&emu);
    let (main, ops) = (client(&accounts[0]), client(&accounts[1]));
    let prefund = |fetch: &crate::domain::BalanceFetch| {
        figures(fetch).into_iter().find(|f| f.starts_with("prefund/")).expect("a prefund pool")
    };
    let drifting = prefund(&main.fetch_balances().await.unwrap());

    let r = http.put(&control).body(r#"{"value":"120.00"}"#).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(prefund(&main.fetch_balances().await.unwrap()), "prefund/MYR 120.00 null null 120.00");
    assert_ne!(prefund(&ops.fetch_balances().await.unwrap()), "prefund/MYR 120.00 null null 120.00", "main only");

    for bad in [r#"{"value":"-1"}"#, r#"{"value":"lots"}"#, r#"{"value":"1","account":"x"}"#, "120"] {
        let r = http.put(&control).body(bad).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    assert_eq!(http.delete(&control).send().await.unwrap().status(), 204);
    assert_eq!(prefund(&main.fetch_balances().await.unwrap()), drifting, "back to the demo's figure");
}

mod callbacks;
