//! No secret reaches the logs or a response: tally runs at `RUST_LOG=trace` (a real process,
//! its stderr captured) through a success and every failure path of every provider.

use std::process::{Command, Stdio};
use std::time::Duration;

use tally::domain::Provider;
use tally::emulator::{Emulator, EmulatorOptions, Faults, credentials as c};

use crate::helpers::{PG_ENV, TestDb};

const API_KEY: &str = "probe-api-key-5f2c9a";
const WRONG_KEY: &str = "wrong-api-key-77ab1e";
const STORE_PASSWORD: &str = "store-pw-9d41";
const WRONG: [&str; 4] =
    ["wrong-leanx-token-a1", "wrong-luxtak-key-b2", "wrong-ibanera-pw-c3", "wrong-yedpay-token-d4"];

fn bad_accounts(emu: &Emulator) -> String {
    let url = |p| emu.base_url(p);
    format!(
        "[[accounts]]\nid = \"leanx-bad\"\nprovider = \"leanx\"\nbase_url = \"{}\"\nauth_token = \"{}\"\n\
         [[accounts]]\nid = \"luxtak-bad\"\nprovider = \"luxtak\"\nbase_url = \"{}\"\napp_id = \"{}\"\napp_key = \"{}\"\n\
         [[accounts]]\nid = \"ibanera-bad\"\nprovider = \"ibanera\"\nbase_url = \"{}\"\nusername = \"{}\"\npassword = \"{}\"\ntotp_secret = \"{}\"\n\
         [[accounts]]\nid = \"yedpay-bad\"\nprovider = \"yedpay\"\nbase_url = \"{}\"\naccess_token = \"{}\"\ncompany_id = \"{}\"\n",
        url(Provider::Leanx),
        WRONG[0],
        url(Provider::Luxtak),
        c::LUXTAK_APP_ID,
        WRONG[1],
        url(Provider::Ibanera),
        c::IBANERA_USERNAME,
        WRONG[2],
        c::IBANERA_TOTP_SECRET,
        url(Provider::Yedpay),
        WRONG[3],
        c::YEDPAY_COMPANY_ID,
    )
}

/// A store URL carrying a password: PostgreSQL (trust auth ignores it) when available, else a
/// fresh SQLite file in the test's own directory.
fn store_url(db: &Option<TestDb>, dir: &std::path::Path) -> String {
    match db {
        Some(db) => {
            let mut url = url::Url::parse(db.url()).unwrap();
            url.set_password(Some(STORE_PASSWORD)).unwrap();
            url.to_string()
        }
        None => format!("sqlite://{}", dir.join("probe.db").display()),
    }
}

#[tokio::test]
async fn no_secret_reaches_logs_or_responses_at_trace_level() {
    tally::install_crypto_provider();
    let emu = Emulator::start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), EmulatorOptions::default())
        .await
        .unwrap();
    let db = if std::env::var(PG_ENV).is_ok() { TestDb::postgres().await } else { None };
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nrequest_timeout = \"2s\"\n[store]\nurl = \"{}\"\n\
         [defaults]\ntimeout = \"400ms\"\nmax_retries = 0\ncircuit_failure_threshold = 100\n\
         [auth]\napi_keys = [{{ name = \"secret-probe\", sha256 = \"{}\" }}]\n{}{}",
        store_url(&db, dir.path()),
        tally::http::digest_hex(API_KEY),
        emu.demo_accounts_toml(),
        bad_accounts(&emu)
    );
    let config_path = dir.path().join("tally.toml");
    std::fs::write(&config_path, config).unwrap();
    let log_path = dir.path().join("stderr.log");
    let mut tally = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["serve", "--config", config_path.to_str().unwrap()])
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();

    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let ready = tokio::time::timeout(Duration::from_secs(20), async {
        while http.get(format!("{base}/healthz")).send().await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    ready.await.expect("tally starts");

    let mut bodies = Vec::new();
    let mut get = async |path: &str, key: &str| {
        let r = http.get(format!("{base}{path}")).bearer_auth(key).send().await.unwrap();
        let headers = format!("{:?}", r.headers());
        bodies.push(format!("{headers}\n{}", r.text().await.unwrap()));
    };
    // Success, then each failure path on every provider at once: 5xx, 429, bad JSON, a hang.
    let rounds = [
        Faults::default(),
        Faults { fail_next: 100, ..Faults::default() },
        Faults { rate_limit: Some(1), ..Faults::default() },
        Faults { malformed: true, ..Faults::default() },
        Faults { hang: true, ..Faults::default() },
    ];
    for faults in rounds {
        for p in Provider::ALL {
            emu.set_faults(p, faults.clone());
        }
        get("/balances?max_age=0&include=raw", API_KEY).await;
        for id in ["PAYOUT-A9D5%3A174307-LEANX", "LUX-ORDER-1004", "STL-0004", "unknown-id"] {
            get(&format!("/payouts/{id}?max_age=0"), API_KEY).await;
        }
    }
    for p in Provider::ALL {
        emu.set_faults(p, Faults::default());
    }
    get("/accounts", API_KEY).await;
    get("/metrics", API_KEY).await;
    get("/balances/history", API_KEY).await;
    get("/balances", WRONG_KEY).await;
    tally.kill().unwrap();
    tally.wait().unwrap();

    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(logs.lines().count() > 50 && logs.contains("TRACE"), "trace logging ran: {} lines", logs.lines().count());
    assert!(logs.contains("caller=\"secret-probe\""), "the key's name is recorded in the request span");
    assert!(logs.contains("upstream_auth_failed"), "the failure paths ran");
    let token_uuid = c::LEANX_MAIN_TOKEN.split('|').nth(1).unwrap();
    let secrets = [
        c::LEANX_MAIN_TOKEN,
        c::LEANX_OPS_TOKEN,
        c::LEANX_HASH_KEY,
        token_uuid,
        c::LUXTAK_APP_KEY,
        c::LUXTAK_APP_ID,
        c::IBANERA_USERNAME,
        c::IBANERA_PASSWORD,
        c::IBANERA_TOTP_SECRET,
        c::YEDPAY_ACCESS_TOKEN,
        API_KEY,
        WRONG_KEY,
        STORE_PASSWORD,
        // Access tokens the Ibanera emulator issued.
        "eyJemu.",
    ];
    for secret in secrets.iter().chain(WRONG.iter()) {
        assert!(!logs.contains(secret), "a secret ({secret}) is in the logs");
        for body in &bodies {
            assert!(!body.contains(secret), "a secret ({secret}) is in a response:\n{body}");
        }
    }
}
