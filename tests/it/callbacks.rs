//! `POST /callbacks/{account}` over HTTP (SPEC §9.2): callbacks sent by the emulators' control
//! routes, signed as LeanX and Luxtak sign them, to the real app on both stores.

use serde_json::{Value, json};
use tally::domain::Provider;
use tally::emulator::{Emulator, EmulatorOptions, credentials as c};

use crate::both_stores;
use crate::helpers::{TestApp, TestDb};

const LEANX_PENDING: &str = "PAYOUT-B7E1:091512-LEANX";
const LUXTAK_PAID: &str = "TS2026112010000110003";

async fn emulator() -> Emulator {
    tally::install_crypto_provider();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Emulator::start(listener, EmulatorOptions::default()).await.unwrap()
}

/// The demo accounts (LeanX with its Hash Key), plus a LeanX account without `hash_key` and
/// one with the wrong key, named apart per store (metric labels are process-wide).
fn accounts(emu: &Emulator, kind: &str) -> String {
    let leanx = emu.base_url(Provider::Leanx);
    format!(
        "{}\n[[accounts]]\nid = \"leanx-nokey-{kind}\"\nprovider = \"leanx\"\nbase_url = \"{leanx}\"\nauth_token = \"{}\"\n\
         [[accounts]]\nid = \"leanx-wrongkey-{kind}\"\nprovider = \"leanx\"\nbase_url = \"{leanx}\"\nauth_token = \"{}\"\nhash_key = \"not-the-hash-key\"\n",
        emu.demo_accounts_toml(),
        c::LEANX_MAIN_TOKEN,
        c::LEANX_MAIN_TOKEN,
    )
}

/// Asks the emulator to send a callback for `payout` to `account`'s callback URL; returns the
/// status and body tally answered the emulator with.
async fn send(emu: &Emulator, app: &TestApp, provider: &str, account: &str, payout: &str) -> (u64, String) {
    let url = format!("http://{}/_control/{provider}/callback", emu.addr());
    let asked = json!({"url": format!("{}/callbacks/{account}", app.base), "payout": payout});
    let r = app.http.post(url).header("content-type", "application/json").body(asked.to_string()).send().await.unwrap();
    assert_eq!(r.status(), 200, "the emulator delivered the callback");
    let answer: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    (answer["status"].as_u64().unwrap(), answer["body"].as_str().unwrap().to_owned())
}

async fn list(app: &TestApp, path: &str, key: &str) -> Vec<Value> {
    let (status, body) = app.get_json(path).await;
    assert_eq!(status, 200, "{body}");
    body[key].as_array().unwrap().clone()
}

both_stores!(
    verified_callbacks_are_applied_with_events_and_a_duplicate_raises_none,
    an_unverified_callback_is_refused_and_changes_nothing,
    a_leanx_callback_without_hash_key_is_only_a_trigger,
    an_ibanera_callback_refreshes_the_account_s_balances,
    callbacks_for_unknown_accounts_unsupported_providers_and_oversized_bodies_are_refused,
);

async fn verified_callbacks_are_applied_with_events_and_a_duplicate_raises_none(db: &TestDb) {
    let emu = emulator().await;
    let app = TestApp::spawn(db.url(), &accounts(&emu, db.kind())).await;

    assert_eq!(send(&emu, &app, "leanx", "leanx-main", LEANX_PENDING).await, (200, r#"{"received":true}"#.into()));
    assert_eq!(send(&emu, &app, "luxtak", "luxtak-latam", LUXTAK_PAID).await, (200, "success".into()));
    let changes = "/events?type=payout.status_changed&account=leanx-main,luxtak-latam";
    let events = list(&app, changes, "events").await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["data"]["payout"]["id"], LEANX_PENDING);
    assert_eq!(events[0]["data"]["payout"]["status"], "pending");
    assert_eq!(events[0]["data"]["payout"]["amount"], "250.00", "LeanX's amount, read exactly from its string");
    assert_eq!(events[1]["data"]["payout"]["id"], LUXTAK_PAID);
    assert_eq!(events[1]["data"]["payout"]["status"], "succeeded");
    let finalized = list(&app, "/events?type=payout.finalized&account=luxtak-latam", "events").await;
    assert_eq!(finalized.len(), 1);

    // The provider sends it again: answered as the first, and nothing is raised.
    assert_eq!(send(&emu, &app, "leanx", "leanx-main", LEANX_PENDING).await, (200, r#"{"received":true}"#.into()));
    assert_eq!(list(&app, changes, "events").await.len(), 2, "a duplicate raises no event");

    let receipts = list(&app, "/callbacks", "callbacks").await;
    let summary: Vec<_> = receipts
        .iter()
        .map(|r| (r["account"].as_str().unwrap(), r["outcome"].as_str().unwrap(), r["verified"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [("leanx-main", "duplicate", true), ("luxtak-latam", "applied", true), ("leanx-main", "applied", true)],
        "newest first"
    );
    let first = &receipts[2];
    assert_eq!(first["provider"], "leanx");
    assert_eq!(first["payout_id"], LEANX_PENDING);
    assert_eq!(first["status"], "pending");
    assert_eq!(first["error"], Value::Null);
    assert_eq!(first["received_at"], "2026-11-22T08:00:00Z");
    assert_eq!(list(&app, "/callbacks?account=luxtak-latam&limit=5", "callbacks").await.len(), 1);

    let transitions = db.store().payout_transitions(&"leanx-main".parse().unwrap(), LEANX_PENDING).await.unwrap();
    assert_eq!(transitions[0].source, "callback");
    let payouts = list(&app, "/payouts?account=leanx-main", "payouts").await;
    assert_eq!(payouts[0]["id"], LEANX_PENDING);
    assert_eq!(payouts[0]["watched"], true, "pending after a callback: watched");
    assert_eq!(payouts[0]["reference"], "INVOICE2001", "the callback's reference, kept by the confirming lookup");
    let paid = list(&app, "/payouts?account=luxtak-latam&final=true", "payouts").await;
    assert_eq!(paid[0]["status"], "succeeded");
    assert_eq!(paid[0]["watched"], false);
    assert_eq!(paid[0]["next_check_at"], Value::Null);
    assert!(list(&app, "/payouts?status=failed", "payouts").await.is_empty());
}

async fn an_unverified_callback_is_refused_and_changes_nothing(db: &TestDb) {
    let emu = emulator().await;
    let app = TestApp::spawn(db.url(), &accounts(&emu, db.kind())).await;
    let account = format!("leanx-wrongkey-{}", db.kind());

    let (status, body) = send(&emu, &app, "leanx", &account, LEANX_PENDING).await;
    assert_eq!(status, 401, "{body}");
    let problem: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["code"], "callback_unverified");
    assert!(!body.contains("not-the-hash-key") && !body.contains(c::LEANX_HASH_KEY), "no key in the answer");

    assert!(list(&app, &format!("/payouts?account={account}"), "payouts").await.is_empty(), "nothing stored");
    assert!(list(&app, &format!("/events?account={account}"), "events").await.is_empty(), "nothing raised");
    let receipts = list(&app, &format!("/callbacks?account={account}"), "callbacks").await;
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0]["outcome"], "rejected");
    assert_eq!(receipts[0]["verified"], false);
    assert!(receipts[0]["error"].as_str().is_some_and(|e| !e.contains("not-the-hash-key")), "{receipts:?}");
}

async fn a_leanx_callback_without_hash_key_is_only_a_trigger(db: &TestDb) {
    let emu = emulator().await;
    let app = TestApp::spawn(db.url(), &accounts(&emu, db.kind())).await;
    let account = format!("leanx-nokey-{}", db.kind());
    let lookups = emu.calls(Provider::Leanx);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    for outcome in ["applied", "duplicate", "trigger", "rejected"] {
        let series = format!("tally_callbacks_total{{account=\"{account}\",outcome=\"{outcome}\"}} 0");
        assert!(metrics.contains(&series), "exported from the start: {series}");
    }

    assert_eq!(send(&emu, &app, "leanx", &account, LEANX_PENDING).await, (200, r#"{"received":true}"#.into()));
    // The lookup it triggers stores the payout and raises its event: the feed's long-poll
    // waits for it.
    let events = list(&app, &format!("/events?account={account}&type=payout.status_changed&wait=10"), "events").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"]["payout"]["id"], LEANX_PENDING);
    assert!(emu.calls(Provider::Leanx) > lookups, "looked up through the API");
    let receipts = list(&app, &format!("/callbacks?account={account}"), "callbacks").await;
    assert_eq!(receipts[0]["outcome"], "trigger");
    assert_eq!(receipts[0]["verified"], false, "nothing in it was trusted");
    assert_eq!(receipts[0]["status"], Value::Null);
    let transitions = db.store().payout_transitions(&account.parse().unwrap(), LEANX_PENDING).await.unwrap();
    assert_eq!(transitions[0].source, "lookup", "stored from the API's answer");
    let series = format!("tally_callbacks_total{{account=\"{account}\",outcome=\"trigger\"}}");
    assert_eq!(app.counter(&series).await, 1);
}

async fn callbacks_for_unknown_accounts_unsupported_providers_and_oversized_bodies_are_refused(db: &TestDb) {
    let emu = emulator().await;
    let key = "callback-test-key";
    let auth = format!("[auth]\napi_keys = [{{ name = \"ops\", sha256 = \"{}\" }}]\n", tally::http::digest_hex(key));
    let app = TestApp::spawn(db.url(), &format!("{auth}{}", accounts(&emu, db.kind()))).await;
    let post = |account: &str, body: Vec<u8>| {
        let request = app.http.post(format!("{}/callbacks/{account}", app.base)).body(body);
        async move {
            let r = request.header("content-type", "application/json").send().await.unwrap();
            let status = r.status().as_u16();
            (status, serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap())
        }
    };
    let (status, body) = post("nope", b"{}".to_vec()).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("unknown_account")), "no key needed to be told");
    let (status, body) = post("yedpay-hk", b"{}".to_vec()).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("callbacks_unsupported")));
    let (status, body) = post("leanx-main", br#"{"data": "not-a-token"}"#.to_vec()).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_callback")));
    let (status, body) = post("leanx-main", vec![b' '; 64 * 1024 + 1]).await;
    assert_eq!((status, body["code"].as_str()), (413, Some("payload_too_large")));

    // The receipts are read with a key; the callback route alone is open.
    assert_eq!(app.get("/callbacks").await.status(), 401);
    let r = app.http.get(format!("{}/callbacks", app.base)).bearer_auth(key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let receipts: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let outcomes: Vec<_> = receipts["callbacks"].as_array().unwrap().iter().map(|r| r["outcome"].clone()).collect();
    assert_eq!(outcomes, [json!("rejected"), json!("rejected")], "refused callbacks to configured accounts");
}

async fn an_ibanera_callback_refreshes_the_account_s_balances(db: &TestDb) {
    let emu = emulator().await;
    let app = TestApp::spawn(db.url(), &accounts(&emu, db.kind())).await;
    let r = app.http.post(format!("{}/callbacks/ibanera-treasury", app.base)).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(answer, json!({"received": true}));
    // The refresh it triggers stores the account's first figures: the feed's long-poll waits
    // for their events.
    let changed = list(&app, "/events?account=ibanera-treasury&type=balance.changed&wait=10", "events").await;
    assert!(!changed.is_empty(), "the balances were refreshed");
    assert!(emu.calls(Provider::Ibanera) > 0);
    let receipts = list(&app, "/callbacks?account=ibanera-treasury", "callbacks").await;
    assert_eq!((&receipts[0]["outcome"], &receipts[0]["verified"]), (&json!("trigger"), &json!(false)));
}
