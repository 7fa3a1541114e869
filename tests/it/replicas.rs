//! Several tally replicas on one PostgreSQL database: one upstream call per account, however
//! many replicas need it. PostgreSQL only (SQLite is single-process).

use std::time::Duration;

use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{Script, TestApp, TestDb, eventually, more_checks};

const BALANCE_PATH: &str = "/api/v1/merchant/overall-balance";

fn body() -> String {
    r#"{"response_code":2000,"description":"SUCCESS","data":{"transaction_balance":{"value":26.05},"prefund_balance":393.63},"breakdown_errors":null,"token":""}"#.to_owned()
}

fn accounts(servers: &[&MockServer], extra: &str) -> String {
    servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!("[[accounts]]\nid = \"acct-{i}\"\nprovider = \"leanx\"\nbase_url = \"{}\"\nauth_token = \"t\"\nmax_retries = 0\n{extra}\n", s.uri())
        })
        .collect()
}

async fn slow_upstream(delay: Duration) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(BALANCE_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_raw(body(), "application/json").set_delay(delay))
        .mount(&server)
        .await;
    server
}

async fn calls(server: &MockServer) -> usize {
    server.received_requests().await.unwrap().len()
}

#[tokio::test]
async fn three_replicas_make_one_upstream_call_per_account() {
    let Some(db) = TestDb::postgres().await else { return };
    let a = slow_upstream(Duration::from_millis(500)).await;
    let b = slow_upstream(Duration::from_millis(500)).await;
    let config = accounts(&[&a, &b], "");
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(TestApp::spawn(db.url(), &config).await);
    }
    let mut requests = Vec::new();
    for i in 0..300 {
        let replica = &replicas[i % 3];
        let (http, url) = (replica.http.clone(), format!("{}/balances?max_age=0", replica.base));
        requests.push(tokio::spawn(async move {
            let r = http.get(url).send().await.unwrap();
            let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            body["complete"].as_bool().unwrap()
        }));
    }
    for r in requests {
        assert!(r.await.unwrap(), "every replica serves both accounts fresh");
    }
    assert_eq!((calls(&a).await, calls(&b).await), (1, 1), "one upstream call per account across 3 replicas");
}

#[tokio::test]
async fn when_the_lease_holder_dies_another_replica_completes_the_refresh() {
    let Some(db) = TestDb::postgres().await else { return };
    let upstream = MockServer::start().await;
    // The first call never answers in time: the replica making it is killed meanwhile.
    Mock::given(method("POST"))
        .and(path(BALANCE_PATH))
        .respond_with(
            ResponseTemplate::new(200).set_body_raw(body(), "application/json").set_delay(Duration::from_secs(60)),
        )
        .up_to_n_times(1)
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .and(path(BALANCE_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_raw(body(), "application/json"))
        .mount(&upstream)
        .await;

    // Both replicas run the same config. Replica A is a real process, so it can really be
    // killed mid-fetch; B runs in this test, so its waits can be observed.
    let request_timeout = Duration::from_secs(4);
    let account = format!(
        "[[accounts]]\nid = \"takeover\"\nprovider = \"leanx\"\nbase_url = \"{}\"\nauth_token = \"t\"\nmax_retries = 0\ntimeout = \"3s\"\n",
        upstream.uri()
    );
    let server = format!("request_timeout = \"{}s\"", request_timeout.as_secs());
    let b = TestApp::spawn_with(db.url(), &server, &account).await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config_a =
        format!("[server]\nlisten = \"127.0.0.1:{port}\"\n{server}\n[store]\nurl = \"{}\"\n{account}", db.url());
    std::fs::write(dir.path().join("a.toml"), config_a).unwrap();
    let mut replica_a = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["serve", "--config", dir.path().join("a.toml").to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    eventually("replica A starts", Duration::from_secs(20), || async {
        http.get(format!("http://127.0.0.1:{port}/healthz")).send().await.is_ok()
    })
    .await;
    let to_a = tokio::spawn(http.get(format!("http://127.0.0.1:{port}/balances?max_age=0")).send());
    eventually("replica A calls the upstream", Duration::from_secs(5), || async { calls(&upstream).await == 1 }).await;

    // B asks while A holds the lease, and waits for A's result.
    let to_b = tokio::spawn({
        let (http, url) = (b.http.clone(), format!("{}/balances?max_age=0", b.base));
        async move {
            let answer = http.get(url).send().await.unwrap().bytes().await.unwrap();
            serde_json::from_slice::<serde_json::Value>(&answer).unwrap()
        }
    });
    let waits = "tally_replica_waits_total{account=\"takeover\"}";
    eventually("B waits on A's lease", Duration::from_secs(3), || async { b.counter(waits).await == 1 }).await;
    replica_a.kill().unwrap();
    replica_a.wait().unwrap();
    let _ = to_a.await;

    let body = to_b.await.unwrap();
    // Had B waited past its own deadline, it would have answered the account as failed.
    assert_eq!(body["accounts"][0]["status"], "fresh", "B completes the refresh within its deadline: {body}");
    assert_eq!(body["accounts"][0]["source"], "live");
    assert_eq!(calls(&upstream).await, 2, "A's lost call and B's");
}

#[tokio::test]
async fn background_refresh_runs_once_per_period_across_replicas() {
    let Some(db) = TestDb::postgres().await else { return };
    let upstream = slow_upstream(Duration::from_millis(50)).await;
    // Timers run on real time (checks every ~200 ms); figures age only when the test moves
    // the replicas' clocks. Steps of 0.6 period put the replicas' figure past half a period at
    // every step: a rule that refreshes twice per period (or once per replica) shows here.
    let period = Duration::from_millis(200);
    let config = accounts(&[&upstream], "refresh_interval = \"200ms\"\nttl = \"1h\"");
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(TestApp::spawn(db.url(), &config).await);
    }
    let account: tally::domain::AccountId = "acct-0".parse().unwrap();
    let mut checks: Vec<_> =
        replicas.iter().map(|r| r.service.account(&account).unwrap().background_checks()).collect();
    eventually("the first refresh, at start", Duration::from_secs(10), || async { calls(&upstream).await == 1 }).await;
    for step in 1..=6 {
        for replica in &replicas {
            replica.advance(period.mul_f64(0.6));
        }
        for replica_checks in &mut checks {
            more_checks(replica_checks, 2).await;
        }
        // Refreshed at 0, 1.2, 2.4 and 3.6 periods: every second step.
        assert_eq!(calls(&upstream).await, 1 + step / 2, "after {step} steps of 0.6 period");
    }
}

#[tokio::test]
async fn two_fetches_of_one_replica_exclude_each_other_through_the_lease() {
    let Some(db) = TestDb::postgres().await else { return };
    let upstream = slow_upstream(Duration::ZERO).await;
    let app = TestApp::spawn(db.url(), &accounts(&[&upstream], "")).await;
    let account = app.service.account(&"acct-0".parse().unwrap()).unwrap().id();
    let cluster = app.service.cluster().expect("replicas share PostgreSQL");
    let first = cluster.take_lease(account).await.unwrap().expect("the first fetch takes the lease");
    let second = cluster.take_lease(account).await.unwrap();
    assert!(second.is_none(), "a second fetch of the same replica does not share the first one's lease");
    drop(first);
    eventually("the released lease is free again", Duration::from_secs(5), || async {
        cluster.take_lease(account).await.unwrap().is_some()
    })
    .await;
}

#[tokio::test]
async fn a_lease_is_renewed_while_its_fetch_outlasts_its_ttl() {
    let Some(db) = TestDb::postgres().await else { return };
    // request_timeout 2 s: leases last 0.5 s, and the fetch takes 1.5 s.
    let upstream = slow_upstream(Duration::from_millis(1500)).await;
    let config = accounts(&[&upstream], "");
    let a = TestApp::spawn_with(db.url(), "request_timeout = \"2s\"", &config).await;
    let b = TestApp::spawn_with(db.url(), "request_timeout = \"2s\"", &config).await;
    let to_a = tokio::spawn({
        let (http, url) = (a.http.clone(), format!("{}/balances?max_age=0", a.base));
        async move { http.get(url).send().await.unwrap().status() }
    });
    eventually("A calls the upstream", Duration::from_secs(5), || async { calls(&upstream).await == 1 }).await;
    let (status, body) = b.get_json("/balances?max_age=0").await;
    assert_eq!(status, 200);
    assert_eq!(body["accounts"][0]["status"], "fresh", "B takes A's result: {body}");
    assert_eq!(to_a.await.unwrap(), 200);
    assert_eq!(calls(&upstream).await, 1, "A's lease outlived its ttl while A fetched: B never took it over");
}

/// Lease rows in the shared database, held or lapsed.
async fn lease_rows(db: &TestDb) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM fetch_leases").fetch_one(&mut conn).await.unwrap()
}

#[tokio::test]
async fn a_background_refresh_refused_by_an_open_circuit_releases_its_lease() {
    let Some(db) = TestDb::postgres().await else { return };
    let upstream = MockServer::start().await;
    Mock::given(method("POST")).and(path(BALANCE_PATH)).respond_with(ResponseTemplate::new(503)).mount(&upstream).await;
    let account = format!(
        "[[accounts]]\nid = \"refused\"\nprovider = \"leanx\"\nbase_url = \"{}\"\nauth_token = \"t\"\nmax_retries = 0\n\
         refresh_interval = \"100ms\"\ncircuit_failure_threshold = 1\ncircuit_cooldown = \"1h\"\n",
        upstream.uri()
    );
    let app = TestApp::spawn(db.url(), &account).await;
    let refused = "tally_upstream_calls_total{provider=\"leanx\",account=\"refused\",operation=\"balances\",outcome=\"circuit_open\"}";
    eventually("background refreshes meet the open circuit", Duration::from_secs(10), || async {
        app.counter(refused).await >= 2
    })
    .await;
    assert_eq!(calls(&upstream).await, 1, "one failure opened the circuit");
    // Each refused refresh took the lease first; none may keep it.
    eventually("no lease is left behind", Duration::from_secs(5), || async { lease_rows(&db).await == 0 }).await;
}

#[tokio::test]
async fn a_failure_taken_from_another_replica_keeps_the_time_it_happened() {
    let Some(db) = TestDb::postgres().await else { return };
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(BALANCE_PATH))
        .respond_with(ResponseTemplate::new(500).set_delay(Duration::from_millis(800)))
        .mount(&upstream)
        .await;
    let config = accounts(&[&upstream], "");
    let a = TestApp::spawn(db.url(), &config).await;
    let b = TestApp::spawn(db.url(), &config).await;
    // B's clock is 7 s ahead of A's: a time taken from B's clock is told apart.
    b.advance(Duration::from_secs(7));
    let to_a = tokio::spawn({
        let (http, url) = (a.http.clone(), format!("{}/balances?max_age=0", a.base));
        async move { http.get(url).send().await.unwrap().status() }
    });
    eventually("A calls the upstream", Duration::from_secs(5), || async { calls(&upstream).await == 1 }).await;
    let (status, body) = b.get_json("/balances?max_age=0").await;
    assert_eq!(status, 503, "{body}");
    let error = &body["accounts"][0]["error"];
    assert_eq!(error["code"], "upstream_unavailable");
    assert_eq!(error["at"], "2026-11-22T08:00:00Z", "when A's fetch failed, not when B answered");
    assert_eq!(to_a.await.unwrap(), 503);
    assert_eq!(calls(&upstream).await, 1, "B took A's failure");
    let (_, accounts) = b.get_json("/accounts").await;
    assert_eq!(accounts["accounts"][0]["last_error"]["at"], "2026-11-22T08:00:00Z");
}

async fn circuit_of(replica: &TestApp) -> String {
    replica.get_json("/accounts").await.1["accounts"][0]["circuit"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_circuit_is_shared_by_every_replica() {
    let Some(db) = TestDb::postgres().await else { return };
    // Three failures open the circuit; the probe after the first cool-down fails too; the
    // probe after the second succeeds.
    let failure = ResponseTemplate::new(503);
    let success = ResponseTemplate::new(200).set_body_raw(body(), "application/json");
    let script = Script::new(vec![failure.clone(), failure.clone(), failure.clone(), failure, success]);
    let upstream = MockServer::start().await;
    Mock::given(method("POST")).and(path(BALANCE_PATH)).respond_with(script.clone()).mount(&upstream).await;
    let config = accounts(&[&upstream], "circuit_failure_threshold = 3\ncircuit_cooldown = \"30s\"");
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(TestApp::spawn(db.url(), &config).await);
    }
    // A fourth replica serves no request: it learns the circuit only from the others.
    let bystander = TestApp::spawn(db.url(), &config).await;

    for i in 0..9 {
        let (status, _) = replicas[i % 3].get_json("/balances?max_age=0").await;
        assert_eq!(status, 503, "request {i}: nothing stored, and the upstream fails or the circuit is open");
    }
    assert_eq!(script.calls().len(), 3, "the threshold in total, not per replica");
    for replica in replicas.iter().chain([&bystander]) {
        eventually("every replica shows the circuit open", Duration::from_secs(5), || async {
            circuit_of(replica).await == "open"
        })
        .await;
    }

    // After the cool-down, replicas asking at once make one probe; it fails and re-opens the
    // circuit everywhere.
    for replica in replicas.iter().chain([&bystander]) {
        replica.advance(Duration::from_secs(31));
    }
    let probes: Vec<_> = replicas
        .iter()
        .map(|r| {
            let (http, url) = (r.http.clone(), format!("{}/balances?max_age=0", r.base));
            tokio::spawn(async move { http.get(url).send().await.unwrap().status().as_u16() })
        })
        .collect();
    for probe in probes {
        assert_eq!(probe.await.unwrap(), 503);
    }
    assert_eq!(script.calls().len(), 4, "one probe in the cluster");
    for replica in replicas.iter().chain([&bystander]) {
        eventually("the failed probe re-opens the circuit everywhere", Duration::from_secs(5), || async {
            circuit_of(replica).await == "open"
        })
        .await;
    }

    // After the next cool-down one probe succeeds and closes the circuit everywhere.
    for replica in replicas.iter().chain([&bystander]) {
        replica.advance(Duration::from_secs(31));
    }
    let (status, probed) = replicas[1].get_json("/balances?max_age=0").await;
    assert_eq!((status, probed["accounts"][0]["status"].as_str()), (200, Some("fresh")));
    for replica in replicas.iter().chain([&bystander]) {
        eventually("the successful probe closes the circuit everywhere", Duration::from_secs(5), || async {
            circuit_of(replica).await == "closed"
        })
        .await;
        let (status, body) = replica.get_json("/balances").await;
        assert_eq!((status, body["accounts"][0]["status"].as_str()), (200, Some("fresh")), "{body}");
    }
    assert_eq!(script.calls().len(), 5, "one successful probe, then figures from the store");
}
