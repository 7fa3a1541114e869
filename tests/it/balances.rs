//! `GET /balances`, `/balances/history` and `/accounts` over HTTP, with LeanX-shaped
//! upstreams faked by wiremock.

use std::time::Duration;

use serde_json::Value;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::both_stores;
use crate::helpers::{
    BALANCE_PATH, Script, StallingProxy, TestApp, TestDb, eventually, leanx, leanx_body, more_checks, ok,
};

/// A LeanX account on `server`; no retries unless `extra` sets `max_retries`.
fn account(id: &str, server: &MockServer, extra: &str) -> String {
    let retries = if extra.contains("max_retries") { "" } else { "max_retries = 0\n" };
    format!(
        "[[accounts]]\nid = \"{id}\"\nprovider = \"leanx\"\nbase_url = \"{}\"\nauth_token = \"tok\"\n{retries}{extra}\n",
        server.uri()
    )
}

fn lines_of<'a>(body: &'a Value, account: &str) -> Vec<&'a Value> {
    body["balances"].as_array().unwrap().iter().filter(|l| l["account"] == account).collect()
}

fn account_line<'a>(body: &'a Value, account: &str) -> &'a Value {
    body["accounts"].as_array().unwrap().iter().find(|a| a["account"] == account).unwrap()
}

/// A LeanX upstream whose balance calls all wait for one another: `n` calls must be in
/// flight at once before any is answered. A client that called one account after another would
/// never get its first answer (its calls would run into the account timeout).
async fn rendezvous_upstream(n: usize) -> String {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let handler = move || {
        let barrier = barrier.clone();
        async move {
            barrier.wait().await;
            ([(axum::http::header::CONTENT_TYPE, "application/json")], leanx_body("393.63", "26.05"))
        }
    };
    let app = axum::Router::new().route(BALANCE_PATH, axum::routing::post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn five_upstreams_are_asked_at_once(db: &TestDb) {
    let upstream = rendezvous_upstream(5).await;
    let config: String = (0..5)
        .map(|i| {
            format!("[[accounts]]\nid = \"a{i}\"\nprovider = \"leanx\"\nbase_url = \"{upstream}\"\nauth_token = \"tok\"\nmax_retries = 0\n")
        })
        .collect();
    let app = TestApp::spawn(db.url(), &config).await;
    let (status, body) = app.get_json("/balances?max_age=0").await;
    assert_eq!(status, 200);
    assert_eq!(body["complete"], true, "all five calls were in flight together: {body}");
    assert_eq!(body["balances"].as_array().unwrap().len(), 10);
}

async fn concurrent_requests_share_one_upstream_call(db: &TestDb) {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(BALANCE_PATH))
        .respond_with(ok("393.63", "26.05").set_delay(Duration::from_millis(300)))
        .expect(1)
        .mount(&server)
        .await;
    let app = TestApp::spawn(db.url(), &account("leanx-main", &server, "")).await;
    let requests: Vec<_> = (0..100)
        .map(|_| {
            let http = app.http.clone();
            let url = format!("{}/balances?max_age=0", app.base);
            tokio::spawn(async move { http.get(url).send().await.unwrap().status().as_u16() })
        })
        .collect();
    let mut statuses = Vec::new();
    for r in requests {
        statuses.push(r.await.unwrap());
    }
    assert!(statuses.iter().all(|s| *s == 200));
    server.verify().await;
    eprintln!(
        "coalescing: 100 concurrent forced requests, upstream calls: {}",
        server.received_requests().await.unwrap().len()
    );
}

async fn a_figure_within_its_ttl_is_served_from_cache_without_an_upstream_call(db: &TestDb) {
    let server = leanx(ok("393.63", "26.05")).await;
    let app = TestApp::spawn(db.url(), &account("leanx-main", &server, "ttl = \"30s\"")).await;
    let (_, first) = app.get_json("/balances").await;
    assert_eq!(account_line(&first, "leanx-main")["source"], "live");
    app.advance(Duration::from_secs(20));
    let (_, second) = app.get_json("/balances").await;
    assert_eq!(account_line(&second, "leanx-main")["source"], "cache");
    assert_eq!(lines_of(&second, "leanx-main")[0]["age_seconds"], 20);
    assert_eq!(server.received_requests().await.unwrap().len(), 1, "served from cache");
    app.advance(Duration::from_secs(11));
    let (_, third) = app.get_json("/balances").await;
    assert_eq!(account_line(&third, "leanx-main")["source"], "live", "older than the ttl: fetched again");
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

async fn a_failed_refresh_serves_the_stored_figure_as_stale(db: &TestDb) {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(BALANCE_PATH))
        .respond_with(ok("393.63", "26.05"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST")).and(path(BALANCE_PATH)).respond_with(ResponseTemplate::new(500)).mount(&server).await;
    let app = TestApp::spawn(db.url(), &account("leanx-main", &server, "")).await;
    let (status, _) = app.get_json("/balances").await;
    assert_eq!(status, 200);
    app.advance(Duration::from_secs(60));
    let (status, body) = app.get_json("/balances").await;
    assert_eq!(status, 200, "a failing provider is data, not an HTTP error");
    assert_eq!(body["complete"], false);
    let acct = account_line(&body, "leanx-main");
    assert_eq!(acct["status"], "stale");
    assert_eq!(acct["source"], "cache");
    assert_eq!(acct["error"]["code"], "upstream_unavailable");
    assert_eq!(acct["error"]["upstream_status"], 500);
    let lines = lines_of(&body, "leanx-main");
    assert!(lines.iter().all(|l| l["stale"] == true));
    assert_eq!(lines.iter().find(|l| l["wallet"] == "prefund").unwrap()["available"], "393.63");
    assert_eq!(body["totals"][0]["stale_entries"], 2);
    assert_eq!(lines[0]["age_seconds"], 60);
}

async fn a_hung_upstream_times_out_at_the_deadline_while_the_others_stay_fresh(db: &TestDb) {
    let fast = leanx(ok("1.00", "2.00")).await;
    let hung = leanx(ok("3.00", "4.00").set_delay(Duration::from_secs(30))).await;
    let accounts = format!("{}{}", account("fast", &fast, ""), account("hung", &hung, "timeout = \"20s\""));
    let app = TestApp::spawn_with(db.url(), "request_timeout = \"1s\"", &accounts).await;
    let (status, body) = app.get_json("/balances").await;
    assert_eq!(status, 200);
    assert_eq!(account_line(&body, "fast")["status"], "fresh");
    let hung_line = account_line(&body, "hung");
    assert_eq!(hung_line["status"], "failed");
    assert_eq!(hung_line["error"]["code"], "upstream_timeout");
    // The request's deadline answered, not the account's own 20 s timeout.
    assert_eq!(hung_line["error"]["message"], "no answer before the request deadline", "{body}");
    assert_eq!(body["complete"], false);
    assert_eq!(lines_of(&body, "fast").len(), 2);
}

async fn the_circuit_opens_after_the_threshold_and_closes_after_the_cooldown(db: &TestDb) {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(BALANCE_PATH))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(2)
        .mount(&server)
        .await;
    Mock::given(method("POST")).and(path(BALANCE_PATH)).respond_with(ok("393.63", "26.05")).mount(&server).await;
    let extra = "circuit_failure_threshold = 2\ncircuit_cooldown = \"30s\"";
    let app = TestApp::spawn(db.url(), &account("leanx-main", &server, extra)).await;
    for _ in 0..2 {
        let (status, body) = app.get_json("/balances?max_age=0").await;
        assert_eq!(status, 503, "nothing stored yet and the upstream fails");
        assert_eq!(body["code"], "nothing_to_serve");
    }
    let r = app.get("/balances?max_age=0").await;
    assert_eq!(r.status(), 503);
    let retry_after: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry_after), "retry after the cool-down: {retry_after}");
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["accounts"][0]["error"]["code"], "circuit_open");
    assert_eq!(server.received_requests().await.unwrap().len(), 2, "no call while the circuit is open");
    let (_, accounts) = app.get_json("/accounts").await;
    assert_eq!(accounts["accounts"][0]["circuit"], "open");

    app.advance(Duration::from_secs(31));
    let (_, accounts) = app.get_json("/accounts").await;
    assert_eq!(accounts["accounts"][0]["circuit"], "half_open");
    let (status, body) = app.get_json("/balances?max_age=0").await;
    assert_eq!(status, 200, "the probe after the cool-down succeeds");
    assert_eq!(account_line(&body, "leanx-main")["status"], "fresh");
    let (_, accounts) = app.get_json("/accounts").await;
    assert_eq!(accounts["accounts"][0]["circuit"], "closed");
    assert_eq!(server.received_requests().await.unwrap().len(), 3);
}

#[tokio::test]
async fn a_store_outage_does_not_break_balances() {
    let server = leanx(ok("393.63", "26.05")).await;
    let app = TestApp::spawn("postgres://tally@127.0.0.1:1/tally", &account("leanx-main", &server, "")).await;
    let (status, body) = app.get_json("/balances").await;
    assert_eq!(status, 200);
    assert_eq!(account_line(&body, "leanx-main")["status"], "fresh");
    assert_eq!(account_line(&body, "leanx-main")["source"], "live");
    assert_eq!(lines_of(&body, "leanx-main").len(), 2);
    let (status, _) = app.get_json("/readyz").await;
    assert_eq!(status, 503, "readiness reports the store outage");
}

async fn unchanged_figures_add_no_history_rows(db: &TestDb) {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(BALANCE_PATH))
        .respond_with(ok("393.63", "26.05"))
        .up_to_n_times(3)
        .mount(&server)
        .await;
    Mock::given(method("POST")).and(path(BALANCE_PATH)).respond_with(ok("380.00", "26.05")).mount(&server).await;
    let app = TestApp::spawn(db.url(), &account("leanx-main", &server, "")).await;
    for _ in 0..4 {
        app.get_json("/balances?max_age=0").await;
        app.advance(Duration::from_secs(10));
    }
    let (status, body) = app.get_json("/balances/history?account=leanx-main").await;
    assert_eq!(status, 200);
    let points = body["points"].as_array().unwrap();
    let summary: Vec<(String, String)> = points
        .iter()
        .map(|p| (p["wallet"].as_str().unwrap().to_owned(), p["available"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(points.len(), 3, "two series, one change: {summary:?}");
    let tx = points.iter().find(|p| p["wallet"] == "transaction").unwrap();
    assert_eq!(tx["first_seen_at"], "2026-11-22T08:00:00Z");
    assert_eq!(tx["last_confirmed_at"], "2026-11-22T08:00:30Z", "confirmed by each unchanged fetch");
    let (_, wallet_only) = app.get_json("/balances/history?account=leanx-main&wallet=prefund&limit=1").await;
    assert_eq!(wallet_only["points"].as_array().unwrap().len(), 1);
    assert_eq!(wallet_only["points"][0]["available"], "393.63");
}

/// `include=raw` is the provider's payload digit for digit, live and after a store round trip
/// (a restart serves it from the store): never re-encoded through f64 (`…94`, `13.0`).
async fn include_raw_keeps_the_providers_digits_through_the_store(db: &TestDb) {
    let server = leanx(ok("90071992547409.93", "13.00")).await;
    let config = account("leanx-main", &server, "ttl = \"1h\"");
    let exact = [r#""prefund_balance":90071992547409.93,"#, r#""value":13.00,"#];
    let raw_text = |app: &TestApp| {
        let url = format!("{}/balances?include=raw", app.base);
        let http = app.http.clone();
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };

    let app = TestApp::spawn(db.url(), &config).await;
    let live = raw_text(&app).await;
    assert!(exact.iter().all(|e| live.contains(e)), "live: {live}");
    app.stop().await;

    let app = TestApp::spawn(db.url(), &config).await;
    let stored = raw_text(&app).await;
    let body: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(account_line(&body, "leanx-main")["source"], "cache");
    assert_eq!(server.received_requests().await.unwrap().len(), 1, "the second answer came from the store");
    assert!(exact.iter().all(|e| stored.contains(e)), "from the store: {stored}");
}

both_stores!(
    five_upstreams_are_asked_at_once,
    concurrent_requests_share_one_upstream_call,
    a_figure_within_its_ttl_is_served_from_cache_without_an_upstream_call,
    a_failed_refresh_serves_the_stored_figure_as_stale,
    a_hung_upstream_times_out_at_the_deadline_while_the_others_stay_fresh,
    the_circuit_opens_after_the_threshold_and_closes_after_the_cooldown,
    unchanged_figures_add_no_history_rows,
    include_raw_keeps_the_providers_digits_through_the_store,
    totals_are_per_currency_and_filters_select,
    pollers_get_304_for_an_unchanged_etag_and_a_cache_lifetime,
    accounts_lists_settings_and_health_without_secrets,
    the_warm_up_serves_stored_figures_with_their_real_ages,
    accounts_shows_the_last_error_after_a_failure,
    history_over_http_filters_by_account_wallet_currency_range_and_limit,
);

async fn totals_are_per_currency_and_filters_select(db: &TestDb) {
    let myr1 = leanx(ok("393.63", "26.05")).await;
    let myr2 = leanx(ok("0.37", "0")).await;
    let usd = leanx(ok("90071992547409.93", "1.5")).await;
    let config = format!(
        "{}{}{}",
        account("m1", &myr1, ""),
        account("m2", &myr2, ""),
        account("u1", &usd, "currency = \"USD\"")
    );
    let app = TestApp::spawn(db.url(), &config).await;
    let (_, body) = app.get_json("/balances").await;
    let totals = body["totals"].as_array().unwrap();
    assert_eq!(totals.len(), 2);
    assert_eq!(totals[0]["currency"], "MYR");
    assert_eq!(totals[0]["available"], "420.05");
    assert_eq!(totals[0]["pending"], Value::Null, "no entry reports pending");
    assert_eq!(totals[0]["entries"], 4);
    assert_eq!(totals[1]["currency"], "USD");
    assert_eq!(totals[1]["total"], "90071992547411.43", "exact, beyond f64");

    let (_, only_usd) = app.get_json("/balances?currency=usd").await;
    assert!(only_usd["balances"].as_array().unwrap().iter().all(|l| l["currency"] == "USD"));
    assert_eq!(only_usd["totals"].as_array().unwrap().len(), 1);
    let (_, two) = app.get_json("/balances?account=m1&account=u1").await;
    assert_eq!(two["accounts"].as_array().unwrap().len(), 2);
    let (_, comma) = app.get_json("/balances?account=m1,m2&provider=leanx").await;
    assert_eq!(comma["accounts"].as_array().unwrap().len(), 2);
    let (_, none) = app.get_json("/balances?provider=yedpay").await;
    assert_eq!(none["accounts"].as_array().unwrap().len(), 0);
    let (_, raw) = app.get_json("/balances?account=m1&include=raw").await;
    assert_eq!(raw["accounts"][0]["raw"]["response_code"], 2000);
    assert!(body["accounts"][0].get("raw").is_none(), "raw only on request");
}

async fn pollers_get_304_for_an_unchanged_etag_and_a_cache_lifetime(db: &TestDb) {
    let server = leanx(ok("393.63", "26.05")).await;
    let app = TestApp::spawn(db.url(), &account("leanx-main", &server, "ttl = \"30s\"")).await;
    let first = app.get("/balances").await;
    assert_eq!(first.status(), 200);
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(first.headers()["cache-control"], "private, max-age=30");
    app.advance(Duration::from_secs(12));
    let second = app.http.get(format!("{}/balances", app.base)).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(second.status(), 304, "same figures, only ages moved");
    assert_eq!(second.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(second.headers()["cache-control"], "private, max-age=18");
    let other =
        app.http.get(format!("{}/balances", app.base)).header("if-none-match", "\"stale-tag\"").send().await.unwrap();
    assert_eq!(other.status(), 200);
}

#[tokio::test]
async fn every_bad_query_is_a_400_problem_with_a_stable_code() {
    let server = leanx(ok("393.63", "26.05")).await;
    let db = TestDb::sqlite();
    let app = TestApp::spawn(db.url(), &account("leanx-main", &server, "")).await;
    let cases = [
        ("/balances?account=nope", "unknown_account"),
        ("/balances?account=Bad%20Id", "unknown_account"),
        ("/balances?provider=stripe", "unknown_provider"),
        ("/balances?max_age=-1", "invalid_max_age"),
        ("/balances?max_age=soon", "invalid_max_age"),
        ("/balances?max_age=1&max_age=2", "invalid_query"),
        ("/balances?include=everything", "invalid_include"),
        ("/balances?currency=%24%24", "invalid_currency"),
        ("/balances?acount=leanx-main", "unknown_parameter"),
        ("/balances/history?from=yesterday", "invalid_time"),
        ("/balances/history?limit=0", "invalid_limit"),
        ("/balances/history?account=nope", "unknown_account"),
    ];
    for (uri, code) in cases {
        let r = app.get(uri).await;
        assert_eq!(r.status(), 400, "{uri}");
        assert_eq!(r.headers()["content-type"], "application/problem+json", "{uri}");
        let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(body["code"], code, "{uri}: {body}");
        assert_eq!(body["status"], 400);
    }
    assert_eq!(server.received_requests().await.unwrap().len(), 0, "a bad query calls no upstream");
}

#[tokio::test]
async fn an_empty_selection_value_is_refused_not_read_as_every_account() {
    let server = leanx(ok("393.63", "26.05")).await;
    let db = TestDb::sqlite();
    let app = TestApp::spawn(db.url(), &account("leanx-main", &server, "")).await;
    for uri in [
        "/balances?account=",
        "/balances?account=leanx-main&account=",
        "/balances?account=leanx-main,,leanx-main",
        "/balances?account=leanx-main,",
        "/balances?account=%20",
        "/balances?provider=",
        "/balances?provider=leanx,,luxtak",
        "/balances?currency=",
        "/balances?currency=MYR,",
    ] {
        let r = app.get(uri).await;
        assert_eq!(r.status(), 400, "{uri}");
        let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(body["code"], "invalid_query", "{uri}: {body}");
        assert!(body["detail"].as_str().unwrap().contains("empty value"), "{uri}: {body}");
    }
    assert_eq!(server.received_requests().await.unwrap().len(), 0, "a refused query calls no upstream");
    // Items with spaces around them are still read.
    assert_eq!(app.get("/balances?account=leanx-main,%20leanx-main&currency=MYR").await.status(), 200);
}

async fn accounts_lists_settings_and_health_without_secrets(db: &TestDb) {
    let server = leanx(ok("393.63", "26.05")).await;
    let app = TestApp::spawn(db.url(), &account("leanx-main", &server, "ttl = \"15s\"")).await;
    app.get_json("/balances").await;
    let (status, body) = app.get_json("/accounts").await;
    assert_eq!(status, 200);
    let a = &body["accounts"][0];
    assert_eq!(a["account"], "leanx-main");
    assert_eq!(a["provider"], "leanx");
    assert_eq!(a["ttl_seconds"], 15);
    assert_eq!(a["capabilities"]["balances"], true);
    assert_eq!(a["last_success_at"], "2026-11-22T08:00:00Z");
    assert_eq!(a["circuit"], "closed");
    assert!(!body.to_string().contains("tok"), "no credential in /accounts: {body}");
}

#[tokio::test]
async fn a_repeated_answer_carries_its_own_generated_at_and_ages() {
    let server = leanx(ok("393.63", "26.05")).await;
    let db = TestDb::sqlite();
    let app = TestApp::spawn(db.url(), &account("leanx-main", &server, "ttl = \"1h\"")).await;
    let (_, first) = app.get_json("/balances").await;
    assert_eq!(first["generated_at"], "2026-11-22T08:00:00.000Z");
    app.advance(Duration::from_millis(400));
    let (_, second) = app.get_json("/balances").await;
    assert_eq!(second["generated_at"], "2026-11-22T08:00:00.400Z", "served from cached bytes, stamped now");
    assert_eq!(second["accounts"][0]["source"], "cache");
    app.advance(Duration::from_millis(400));
    let (_, third) = app.get_json("/balances").await;
    assert_eq!(third["generated_at"], "2026-11-22T08:00:00.800Z");
    assert_eq!(third["balances"], second["balances"]);
    app.advance(Duration::from_secs(2));
    let (_, later) = app.get_json("/balances").await;
    assert_eq!(later["generated_at"], "2026-11-22T08:00:02.800Z");
    assert_eq!(later["balances"][0]["age_seconds"], 2, "a new second recomputes the ages");
}

#[tokio::test]
async fn a_cached_answer_never_shows_an_age_it_no_longer_has() {
    // A figure fetched at .700: within one second of the clock its age goes from 1 to 2.
    let server = leanx(ok("393.63", "26.05")).await;
    let db = TestDb::sqlite();
    let app = TestApp::spawn(db.url(), &account("leanx-main", &server, "ttl = \"1h\"")).await;
    app.advance(Duration::from_millis(700));
    let (_, fetched) = app.get_json("/balances").await;
    assert_eq!(fetched["balances"][0]["fetched_at"], "2026-11-22T08:00:00.700Z");
    app.advance(Duration::from_millis(1400));
    let (_, early) = app.get_json("/balances").await;
    assert_eq!(
        (early["generated_at"].as_str(), early["balances"][0]["age_seconds"].as_u64()),
        (Some("2026-11-22T08:00:02.100Z"), Some(1))
    );
    app.advance(Duration::from_millis(800));
    let (_, late) = app.get_json("/balances").await;
    assert_eq!(
        (late["generated_at"].as_str(), late["balances"][0]["age_seconds"].as_u64()),
        (Some("2026-11-22T08:00:02.900Z"), Some(2))
    );
}

async fn scripted(answers: Vec<ResponseTemplate>) -> (MockServer, Script) {
    let server = MockServer::start().await;
    let script = Script::new(answers);
    Mock::given(method("POST")).and(path(BALANCE_PATH)).respond_with(script.clone()).mount(&server).await;
    (server, script)
}

#[tokio::test]
async fn a_transient_failure_is_retried_and_the_retry_serves_the_figure() {
    let (server, script) = scripted(vec![ResponseTemplate::new(503), ok("393.63", "26.05")]).await;
    let db = TestDb::sqlite();
    let app =
        TestApp::spawn(db.url(), &account("retried", &server, "max_retries = 2\nretry_base_delay = \"10ms\"")).await;
    let (status, body) = app.get_json("/balances").await;
    assert_eq!(status, 200);
    assert_eq!(account_line(&body, "retried")["status"], "fresh", "{body}");
    assert_eq!(script.calls().len(), 2, "one failure, one successful retry");
}

#[tokio::test]
async fn a_retry_waits_at_least_the_upstream_s_retry_after() {
    let busy = ResponseTemplate::new(503).insert_header("retry-after", "1");
    let (server, script) = scripted(vec![busy, ok("393.63", "26.05")]).await;
    let db = TestDb::sqlite();
    let extra = "max_retries = 1\nretry_base_delay = \"10ms\"\ntimeout = \"1s\"";
    let app = TestApp::spawn(db.url(), &account("polite", &server, extra)).await;
    let (_, body) = app.get_json("/balances").await;
    assert_eq!(account_line(&body, "polite")["status"], "fresh", "{body}");
    let calls = script.calls();
    assert_eq!(calls.len(), 2);
    let waited = calls[1] - calls[0];
    assert!(waited >= Duration::from_secs(1), "Retry-After: 1 honoured over a 10 ms backoff; waited {waited:?}");
}

#[tokio::test]
async fn an_auth_failure_is_never_retried() {
    let invalid_token = ResponseTemplate::new(401)
        .set_body_raw(r#"{"response_code":4001,"description":"INVALID_TOKEN","data":null}"#, "application/json");
    let (server, script) = scripted(vec![invalid_token, ok("393.63", "26.05")]).await;
    let db = TestDb::sqlite();
    let app =
        TestApp::spawn(db.url(), &account("locked", &server, "max_retries = 3\nretry_base_delay = \"10ms\"")).await;
    let (status, body) = app.get_json("/balances").await;
    assert_eq!(status, 503, "nothing to serve: {body}");
    assert_eq!(body["accounts"][0]["error"]["code"], "upstream_auth_failed");
    assert_eq!(script.calls().len(), 1, "bad credentials are not retried");
}

#[tokio::test]
async fn a_retry_that_could_not_finish_before_the_deadline_is_not_made() {
    // The retry could start after Retry-After (1 s), inside the 2 s deadline, but its attempt
    // may take the whole 1.5 s timeout: it could not answer in time, so it is not made.
    let busy = ResponseTemplate::new(503).insert_header("retry-after", "1");
    let (server, script) = scripted(vec![busy, ok("393.63", "26.05")]).await;
    let db = TestDb::sqlite();
    let extra = "max_retries = 3\nretry_base_delay = \"10ms\"\ntimeout = \"1500ms\"";
    let app = TestApp::spawn_with(db.url(), "request_timeout = \"2s\"", &account("hurried", &server, extra)).await;
    let (_, body) = app.get_json("/balances").await;
    assert_eq!(body["accounts"][0]["error"]["code"], "upstream_unavailable", "{body}");
    assert_eq!(script.calls().len(), 1, "no retry past the deadline");
}

#[tokio::test]
async fn cache_control_is_the_remaining_freshness_under_the_ttl_capped_by_max_age() {
    let server = leanx(ok("393.63", "26.05")).await;
    let db = TestDb::sqlite();
    let app = TestApp::spawn(db.url(), &account("leanx-main", &server, "ttl = \"30s\"")).await;
    let max_age_of = |r: &reqwest::Response| r.headers()["cache-control"].to_str().unwrap().to_owned();
    assert_eq!(max_age_of(&app.get("/balances").await), "private, max-age=30", "live: the ttl");
    app.advance(Duration::from_secs(20));
    let lenient = app.get("/balances?max_age=3600").await;
    assert_eq!(max_age_of(&lenient), "private, max-age=10", "accepting older figures does not extend the ttl");
    assert_eq!(max_age_of(&app.get("/balances?max_age=25").await), "private, max-age=5", "min(ttl, max_age) - age");
    let strict = app.get("/balances?max_age=10").await;
    let cache_control = max_age_of(&strict);
    let body: Value = serde_json::from_slice(&strict.bytes().await.unwrap()).unwrap();
    assert_eq!(account_line(&body, "leanx-main")["source"], "live");
    assert_eq!(cache_control, "private, max-age=10", "a figure fetched for max_age=10 is fresh for 10 s to it");
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn background_refresh_fetches_once_per_period() {
    let server = leanx(ok("393.63", "26.05")).await;
    let db = TestDb::sqlite();
    // Checks run on real timers (~100 ms); the figure ages only when the test moves the clock.
    let period = Duration::from_millis(100);
    let app = TestApp::spawn(db.url(), &account("warm", &server, "refresh_interval = \"100ms\"\nttl = \"1h\"")).await;
    let calls = || async { server.received_requests().await.unwrap().len() };
    let mut checks = app.service.account(&"warm".parse().unwrap()).unwrap().background_checks();
    eventually("the first refresh, at start", Duration::from_secs(10), || async { calls().await == 1 }).await;
    more_checks(&mut checks, 2).await;
    assert_eq!(calls().await, 1, "a figure younger than the period is not refreshed");
    app.advance(period / 2);
    more_checks(&mut checks, 2).await;
    assert_eq!(calls().await, 1, "half a period old: not yet due");
    app.advance(period / 2);
    eventually("refreshed one period after the last fetch", Duration::from_secs(10), || async { calls().await == 2 })
        .await;
    more_checks(&mut checks, 2).await;
    assert_eq!(calls().await, 2, "once per period");
    let (_, body) = app.get_json("/balances").await;
    assert_eq!(account_line(&body, "warm")["source"], "cache", "requests are served the refreshed figure");
    assert_eq!(calls().await, 2);
}

#[tokio::test]
async fn a_stalled_store_does_not_hold_balances_past_the_deadline() {
    let Some(db) = TestDb::postgres().await else { return };
    let server = leanx(ok("393.63", "26.05")).await;
    let proxy = StallingProxy::start(&db).await;
    let app = TestApp::spawn_with(proxy.url(), "request_timeout = \"2s\"", &account("stalled", &server, "")).await;
    let (status, body) = app.get_json("/balances").await;
    assert_eq!((status, account_line(&body, "stalled")["source"].as_str()), (200, Some("live")));

    proxy.stall();
    // The first request finds the store stalled; the next ones know it is failing.
    // A store call not bounded by the deadline would hold the answer until the HTTP backstop,
    // which answers 408: a 200 with the live figure is the deadline's answer.
    for attempt in 1..=3 {
        let (status, body) = app.get_json("/balances?max_age=0").await;
        assert_eq!(status, 200, "attempt {attempt}: {body}");
        let line = account_line(&body, "stalled");
        assert_eq!((line["status"].as_str(), line["source"].as_str()), (Some("fresh"), Some("live")), "{body}");
    }
    assert_eq!(server.received_requests().await.unwrap().len(), 4);
}

#[tokio::test]
async fn a_stalled_store_makes_history_a_503_within_the_deadline() {
    let Some(db) = TestDb::postgres().await else { return };
    let proxy = StallingProxy::start(&db).await;
    let app = TestApp::spawn_with(proxy.url(), "request_timeout = \"1s\"", "").await;
    let (status, body) = app.get_json("/balances/history").await;
    assert_eq!(status, 200, "{body}");

    proxy.stall();
    // The HTTP backstop would answer 408: a 503 `not_ready` is the deadline's answer.
    let r = app.get("/balances/history").await;
    assert_eq!((r.status().as_u16(), r.headers().get("retry-after").map(|v| v.to_str().unwrap())), (503, Some("5")));
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["code"], "not_ready");
}

async fn the_warm_up_serves_stored_figures_with_their_real_ages(db: &TestDb) {
    let store = db.store();
    store.migrate().await.unwrap();
    let entry = |wallet: &str, amount: &str| tally::domain::BalanceEntry {
        wallet: wallet.into(),
        currency: "MYR".parse().unwrap(),
        available: Some(tally::domain::parse_decimal(amount).unwrap()),
        pending: None,
        reserved: None,
        total: Some(tally::domain::parse_decimal(amount).unwrap()),
        blocked: false,
    };
    let fetched_at = crate::helpers::t0() - chrono::TimeDelta::seconds(12);
    let snapshot = tally::store::AccountSnapshot {
        account: "stored".parse().unwrap(),
        provider: tally::domain::Provider::Leanx,
        fetched_at,
        entries: vec![entry("prefund", "393.63"), entry("transaction", "26.05")],
        raw: None,
    };
    store.record_balances(&snapshot, &[]).await.unwrap();
    store.close().await;

    let server = leanx(ok("1.00", "2.00")).await;
    let app = TestApp::spawn(db.url(), &account("stored", &server, "ttl = \"30s\"")).await;
    let (status, body) = app.get_json("/balances").await;
    assert_eq!(status, 200);
    let line = account_line(&body, "stored");
    assert_eq!((line["status"].as_str(), line["source"].as_str()), (Some("fresh"), Some("cache")), "{body}");
    assert_eq!(line["fetched_at"], "2026-11-22T07:59:48Z");
    let lines = lines_of(&body, "stored");
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l["age_seconds"] == 12), "the stored figure's real age: {body}");
    assert_eq!(lines.iter().find(|l| l["wallet"] == "prefund").unwrap()["available"], "393.63");
    assert_eq!(server.received_requests().await.unwrap().len(), 0, "served from the warmed cache");
}

async fn accounts_shows_the_last_error_after_a_failure(db: &TestDb) {
    let server = MockServer::start().await;
    Mock::given(method("POST")).and(path(BALANCE_PATH)).respond_with(ResponseTemplate::new(500)).mount(&server).await;
    let app = TestApp::spawn(db.url(), &account("failing", &server, "")).await;
    let (_, before) = app.get_json("/accounts").await;
    assert_eq!(before["accounts"][0]["last_error"], Value::Null);
    app.advance(Duration::from_secs(5));
    let (status, _) = app.get_json("/balances").await;
    assert_eq!(status, 503);
    app.advance(Duration::from_secs(5));
    let (_, body) = app.get_json("/accounts").await;
    let a = &body["accounts"][0];
    assert_eq!(a["last_error"]["code"], "upstream_unavailable", "{body}");
    assert_eq!(a["last_error"]["upstream_status"], 500);
    assert_eq!(a["last_error"]["at"], "2026-11-22T08:00:05Z", "when the fetch failed");
    assert_eq!(a["last_success_at"], Value::Null);
    assert_eq!(a["circuit"], "closed", "one failure is below the threshold");
}

async fn history_over_http_filters_by_account_wallet_currency_range_and_limit(db: &TestDb) {
    // The prefund figure changes every minute; the transaction figure never does.
    let answers = ["100.00", "101.00", "102.00", "103.00"].map(|prefund| ok(prefund, "1.00")).to_vec();
    let myr = MockServer::start().await;
    Mock::given(method("POST")).and(path(BALANCE_PATH)).respond_with(Script::new(answers)).mount(&myr).await;
    let usd = leanx(ok("5.00", "6.00")).await;
    let config = format!("{}{}", account("h-myr", &myr, ""), account("h-usd", &usd, "currency = \"USD\""));
    let app = TestApp::spawn(db.url(), &config).await;
    for minute in 0..4 {
        let (status, _) = app.get_json("/balances?max_age=0").await;
        assert_eq!(status, 200);
        if minute < 3 {
            app.advance(Duration::from_secs(60));
        }
    }
    let figures = |body: &Value| -> Vec<(String, String, String)> {
        body["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let field = |k: &str| p[k].as_str().unwrap().to_owned();
                (field("account"), field("wallet"), field("available"))
            })
            .collect()
    };
    let (status, all) = app.get_json("/balances/history").await;
    assert_eq!(status, 200);
    assert_eq!(all["points"].as_array().unwrap().len(), 7, "4 prefund changes, 1 transaction, 2 USD: {all}");

    let (_, ranged) = app
        .get_json("/balances/history?account=h-myr&wallet=prefund&from=2026-11-22T08:01:00Z&to=2026-11-22T08:02:00Z")
        .await;
    let expected = ["101.00", "102.00"].map(|a| ("h-myr".to_owned(), "prefund".to_owned(), a.to_owned()));
    assert_eq!(figures(&ranged), expected, "still confirmed at `from`, first seen by `to`");

    let (_, usd_only) = app.get_json("/balances/history?currency=USD").await;
    assert!(figures(&usd_only).iter().all(|(account, _, _)| account == "h-usd"));
    assert_eq!(usd_only["points"].as_array().unwrap().len(), 2);
    assert_eq!(usd_only["points"][0]["currency"], "USD");

    let (_, unchanged) = app.get_json("/balances/history?account=h-myr&wallet=transaction").await;
    let points = unchanged["points"].as_array().unwrap();
    assert_eq!(points.len(), 1, "an unchanged figure is one change point");
    assert_eq!(points[0]["first_seen_at"], "2026-11-22T08:00:00Z");
    assert_eq!(points[0]["last_confirmed_at"], "2026-11-22T08:03:00Z");

    let (_, limited) = app.get_json("/balances/history?account=h-myr&wallet=prefund&limit=2").await;
    let oldest = ["100.00", "101.00"].map(|a| ("h-myr".to_owned(), "prefund".to_owned(), a.to_owned()));
    assert_eq!(figures(&limited), oldest, "the limit keeps the oldest points");
}
