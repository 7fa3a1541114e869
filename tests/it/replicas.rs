//! Several tally replicas on one PostgreSQL database: one upstream call per account, however
//! many replicas need it. PostgreSQL only (SQLite is single-process).

use std::time::{Duration, Instant};

use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{TestApp, TestDb};

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

    // Replica A is a real process, so it can really be killed mid-fetch. Its lease lasts
    // request_timeout + timeout = 2 s.
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config_a = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nrequest_timeout = \"1s\"\n[store]\nurl = \"{}\"\n{}",
        db.url(),
        accounts(&[&upstream], "timeout = \"1s\"")
    );
    std::fs::write(dir.path().join("a.toml"), config_a).unwrap();
    let mut replica_a = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["serve", "--config", dir.path().join("a.toml").to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let ready = tokio::time::timeout(Duration::from_secs(20), async {
        while http.get(format!("http://127.0.0.1:{port}/healthz")).send().await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    ready.await.expect("replica A starts");
    let to_a = tokio::spawn(http.get(format!("http://127.0.0.1:{port}/balances?max_age=0")).send());
    tokio::time::timeout(Duration::from_secs(5), async {
        while calls(&upstream).await == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("replica A calls the upstream");
    replica_a.kill().unwrap();
    replica_a.wait().unwrap();
    let _ = to_a.await;

    let b =
        TestApp::spawn_with(db.url(), "request_timeout = \"6s\"", &accounts(&[&upstream], "timeout = \"1s\"")).await;
    let started = Instant::now();
    let (status, body) = b.get_json("/balances?max_age=0").await;
    let took = started.elapsed();
    assert_eq!(status, 200);
    assert_eq!(body["accounts"][0]["status"], "fresh", "{body}");
    assert!(took < Duration::from_secs(5), "B takes over once A's 2 s lease lapses; took {took:?}");
    assert_eq!(calls(&upstream).await, 2, "A's lost call and B's");
}

#[tokio::test]
async fn background_refresh_runs_once_per_period_across_replicas() {
    let Some(db) = TestDb::postgres().await else { return };
    let upstream = slow_upstream(Duration::from_millis(50)).await;
    // Real timers tick every ~200 ms; figures only age when the test moves the replicas'
    // clocks, so each "period" below is one clock step.
    let config = accounts(&[&upstream], "refresh_interval = \"200ms\"\nttl = \"1h\"");
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(TestApp::spawn(db.url(), &config).await);
    }
    for period in 1..=3 {
        let wait = tokio::time::timeout(Duration::from_secs(5), async {
            while calls(&upstream).await < period {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        wait.await.unwrap_or_else(|_| panic!("period {period}: a refresh happens"));
        // Several more ticks of every replica: none refreshes a figure that is still young.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(calls(&upstream).await, period, "one upstream call in period {period}, not one per replica");
        for replica in &replicas {
            replica.advance(Duration::from_secs(1));
        }
    }
}
