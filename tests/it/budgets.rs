//! Upstream budgets (SPEC §12): `max_calls_per_minute` per account, shared by replicas on
//! PostgreSQL, and a provider's 429 with `Retry-After` pausing the account everywhere. Calls
//! are counted at the fake upstream; time is the app's injected clock.

use std::time::Duration;

use serde_json::Value;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::both_stores;
use crate::helpers::{BALANCE_PATH, Script, TestApp, TestDb, eventually, leanx, more_checks, ok};

const LEANX_PAYOUT: &str = "/api/v1/merchant/get-payout-transaction-by-id";

/// A LeanX account on `uri`, without retries.
fn account(id: &str, uri: &str, extra: &str) -> String {
    format!(
        "[[accounts]]\nid = \"{id}\"\nprovider = \"leanx\"\nbase_url = \"{uri}\"\nauth_token = \"tok\"\nmax_retries = 0\n{extra}\n"
    )
}

async fn calls(server: &MockServer) -> usize {
    server.received_requests().await.unwrap().len()
}

fn account_line<'a>(body: &'a Value, id: &str) -> &'a Value {
    body["accounts"].as_array().unwrap().iter().find(|a| a["account"] == id).unwrap()
}

/// One forced refresh of `id`: the account's line and whether every entry is stale.
async fn refresh(app: &TestApp, id: &str) -> (Value, bool) {
    let (status, body) = app.get_json(&format!("/balances?account={id}&max_age=0")).await;
    assert_eq!(status, 200, "{body}");
    let stale = body["balances"].as_array().unwrap().iter().all(|l| l["stale"] == true);
    (account_line(&body, id).clone(), stale)
}

async fn a_budget_of_n_calls_makes_at_most_n_calls_a_minute_and_refills_after_it(db: &TestDb) {
    let id = format!("budget-n-{}", db.kind());
    let upstream = leanx(ok("393.63", "26.05")).await;
    let app = TestApp::spawn(db.url(), &account(&id, &upstream.uri(), "max_calls_per_minute = 2")).await;
    let denied = format!("tally_upstream_budget_denied_total{{account=\"{id}\"}} 0");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.lines().any(|l| l == denied), "the series is there from start, at 0");
    for _ in 0..2 {
        let (line, stale) = refresh(&app, &id).await;
        assert_eq!((line["status"].as_str(), stale), (Some("fresh"), false), "{line}");
    }
    app.advance(Duration::from_secs(59));
    for _ in 0..3 {
        let (line, stale) = refresh(&app, &id).await;
        assert_eq!(line["status"], "stale", "the stored figure is served: {line}");
        assert_eq!(line["source"], "cache");
        assert_eq!(line["error"]["code"], "rate_budget_exhausted", "{line}");
        assert!(stale, "every entry is marked stale");
    }
    assert_eq!(calls(&upstream).await, 2, "two calls within the minute, counted at the upstream");
    let denied = format!("tally_upstream_budget_denied_total{{account=\"{id}\"}}");
    assert_eq!(app.counter(&denied).await, 3);

    app.advance(Duration::from_secs(1));
    let (line, stale) = refresh(&app, &id).await;
    assert_eq!((line["status"].as_str(), stale), (Some("fresh"), false), "the budget refills after the minute: {line}");
    assert_eq!(calls(&upstream).await, 3);
}

async fn an_unlimited_account_is_never_denied(db: &TestDb) {
    let id = format!("budget-unlimited-{}", db.kind());
    let upstream = leanx(ok("1.00", "2.00")).await;
    let app = TestApp::spawn(db.url(), &account(&id, &upstream.uri(), "")).await;
    for _ in 0..5 {
        let (line, _) = refresh(&app, &id).await;
        assert_eq!(line["status"], "fresh", "{line}");
    }
    assert_eq!(calls(&upstream).await, 5);
}

/// A LeanX payout answer.
fn payout(id: &str, status: &str) -> ResponseTemplate {
    let body = format!(
        r#"{{"response_code":2000,"description":"SUCCESS","data":{{"payout_invoice_no":"{id}","transaction_status":"{status}","value":13.00,"transaction_fee":0.00,"created_at":"2023-12-05T17:43:07","updated_at":"2023-12-05T17:44:05"}},"breakdown_errors":null,"token":""}}"#
    );
    ResponseTemplate::new(200).set_body_raw(body, "application/json")
}

async fn under_a_spent_budget_a_stored_payout_is_served_stale_and_an_unseen_one_is_503(db: &TestDb) {
    let id = format!("budget-payouts-{}", db.kind());
    let upstream = MockServer::start().await;
    Mock::given(method("POST")).and(path(LEANX_PAYOUT)).respond_with(payout("P1", "PENDING")).mount(&upstream).await;
    // The payout watch draws from the same budget: P1, seen pending, would be looked up again
    // by the watch once the clock moves a minute; here it is not due within the test.
    let config =
        format!("[payouts]\nwatch_schedule = [\"1h\"]\n{}", account(&id, &upstream.uri(), "max_calls_per_minute = 1"));
    let app = TestApp::spawn(db.url(), &config).await;

    let (status, first) = app.get_json("/payouts/P1").await;
    assert_eq!((status, &first["stale"], &first["error"]), (200, &Value::Bool(false), &Value::Null), "{first}");

    let (status, stored) = app.get_json("/payouts/P1?max_age=0").await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["status"], "pending", "the stored status is served");
    assert_eq!(stored["stale"], true);
    assert_eq!(stored["error"]["code"], "rate_budget_exhausted", "{stored}");

    let r = app.get("/payouts/NEVER-SEEN").await;
    assert_eq!(r.status().as_u16(), 503);
    let retry_after: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(retry_after, 60, "the window refills a minute after its first call");
    let problem: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(problem["code"], "rate_budget_exhausted", "{problem}");
    assert_eq!(problem["accounts"][0]["error"]["code"], "rate_budget_exhausted", "{problem}");
    assert_eq!(calls(&upstream).await, 1, "only the first lookup reached the upstream");

    app.advance(Duration::from_secs(60));
    let (status, unseen) = app.get_json("/payouts/NEVER-SEEN").await;
    assert_eq!(status, 200, "after the minute the lookup is made: {unseen}");
    assert_eq!(calls(&upstream).await, 2);
}

async fn a_429_with_retry_after_pauses_the_account_until_then(db: &TestDb) {
    let id = format!("budget-429-{}", db.kind());
    let upstream = MockServer::start().await;
    let script = Script::new(vec![
        ok("5.00", "1.00"),
        ResponseTemplate::new(429).insert_header("retry-after", "30"),
        ok("6.00", "1.00"),
    ]);
    Mock::given(method("POST")).and(path(BALANCE_PATH)).respond_with(script.clone()).mount(&upstream).await;
    let app = TestApp::spawn(db.url(), &account(&id, &upstream.uri(), "")).await;
    assert_eq!(refresh(&app, &id).await.0["status"], "fresh");
    let (limited, _) = refresh(&app, &id).await;
    assert_eq!(limited["error"]["code"], "upstream_rate_limited", "{limited}");

    app.advance(Duration::from_secs(29));
    let (paused, stale) = refresh(&app, &id).await;
    assert_eq!(paused["error"]["code"], "rate_budget_exhausted", "no call during the pause: {paused}");
    assert!(stale);
    assert_eq!(script.calls().len(), 2);

    app.advance(Duration::from_secs(1));
    assert_eq!(refresh(&app, &id).await.0["status"], "fresh", "the pause ends when Retry-After said");
    assert_eq!(script.calls().len(), 3);
}

async fn retries_draw_from_the_budget_and_a_denied_retry_leaves_the_failure_before_it(db: &TestDb) {
    let id = format!("budget-retries-{}", db.kind());
    let upstream = leanx(ResponseTemplate::new(503)).await;
    let extra = "max_calls_per_minute = 2\nmax_retries = 5\nretry_base_delay = \"1ms\"";
    let app = TestApp::spawn(db.url(), &account(&id, &upstream.uri(), extra).replace("max_retries = 0\n", "")).await;
    let (status, body) = app.get_json(&format!("/balances?account={id}&max_age=0")).await;
    assert_eq!(status, 503, "nothing stored: {body}");
    assert_eq!(body["accounts"][0]["error"]["code"], "upstream_unavailable", "the last call's failure: {body}");
    assert_eq!(calls(&upstream).await, 2, "the first attempt and one retry; the budget refused the rest");
}

both_stores!(
    retries_draw_from_the_budget_and_a_denied_retry_leaves_the_failure_before_it,
    a_budget_of_n_calls_makes_at_most_n_calls_a_minute_and_refills_after_it,
    an_unlimited_account_is_never_denied,
    under_a_spent_budget_a_stored_payout_is_served_stale_and_an_unseen_one_is_503,
    a_429_with_retry_after_pauses_the_account_until_then,
);

#[tokio::test]
async fn two_replicas_share_one_budget() {
    let Some(db) = TestDb::postgres().await else { return };
    let id = "budget-shared";
    let upstream = leanx(ok("393.63", "26.05")).await;
    let config = account(id, &upstream.uri(), "max_calls_per_minute = 3");
    let (a, b) = (TestApp::spawn(db.url(), &config).await, TestApp::spawn(db.url(), &config).await);
    let mut codes = Vec::new();
    for replica in [&a, &b, &a, &b, &a, &b] {
        let (line, _) = refresh(replica, id).await;
        codes.push(line["error"]["code"].as_str().unwrap_or("none").to_owned());
    }
    assert_eq!(calls(&upstream).await, 3, "three calls in the minute across both replicas");
    assert_eq!(
        codes,
        ["none", "none", "none", "rate_budget_exhausted", "rate_budget_exhausted", "rate_budget_exhausted"]
    );

    for replica in [&a, &b] {
        replica.advance(Duration::from_secs(60));
    }
    assert_eq!(refresh(&b, id).await.0["status"], "fresh", "the shared budget refills after the minute");
    assert_eq!(calls(&upstream).await, 4);
}

#[tokio::test]
async fn a_429_with_retry_after_pauses_the_other_replica_too() {
    let Some(db) = TestDb::postgres().await else { return };
    let id = "budget-shared-429";
    let upstream = MockServer::start().await;
    let script = Script::new(vec![ResponseTemplate::new(429).insert_header("retry-after", "30"), ok("6.00", "1.00")]);
    Mock::given(method("POST")).and(path(BALANCE_PATH)).respond_with(script.clone()).mount(&upstream).await;
    let config = account(id, &upstream.uri(), "");
    let (a, b) = (TestApp::spawn(db.url(), &config).await, TestApp::spawn(db.url(), &config).await);

    let (status, body) = a.get_json(&format!("/balances?account={id}&max_age=0")).await;
    assert_eq!(status, 503, "nothing stored yet: {body}");
    assert_eq!(body["accounts"][0]["error"]["code"], "upstream_rate_limited", "{body}");

    let r = b.get(&format!("/balances?account={id}&max_age=0")).await;
    assert_eq!(r.status().as_u16(), 503, "B makes no call during A's pause");
    let retry_after: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry_after), "Retry-After within the pause: {retry_after}");
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["accounts"][0]["error"]["code"], "rate_budget_exhausted", "{body}");
    assert_eq!(script.calls().len(), 1, "one call: A's, answered 429");

    for replica in [&a, &b] {
        replica.advance(Duration::from_secs(30));
    }
    let (line, _) = refresh(&b, id).await;
    assert_eq!(line["status"], "fresh", "after the pause B calls: {line}");
    assert_eq!(script.calls().len(), 2);
}

/// The store's draw decides and counts in one statement: many replicas drawing at once get
/// exactly the limit between them, and a pause denies even an unlimited account.
#[tokio::test]
async fn concurrent_draws_on_postgresql_grant_exactly_the_limit() {
    let Some(db) = TestDb::postgres().await else { return };
    let store = db.store();
    store.migrate().await.expect("migrations apply");
    let cluster = store.cluster().expect("replicas coordinate through PostgreSQL");
    let account: tally::domain::AccountId = "budget-draws".parse().unwrap();
    let now = crate::helpers::t0();
    let draws: Vec<_> = (0..20)
        .map(|_| {
            let (cluster, account) = (cluster.clone(), account.clone());
            tokio::spawn(async move { cluster.draw_call(&account, now, Some(5)).await.unwrap() })
        })
        .collect();
    let mut granted = 0;
    for draw in draws {
        match draw.await.unwrap() {
            Ok(()) => granted += 1,
            Err(denied) => {
                assert_eq!(denied, tally::store::CallDenied::Exhausted { until: now + chrono::TimeDelta::seconds(60) })
            }
        }
    }
    assert_eq!(granted, 5);
    let later = now + chrono::TimeDelta::seconds(60);
    assert_eq!(cluster.draw_call(&account, later, Some(5)).await.unwrap(), Ok(()), "a new window");

    let until = later + chrono::TimeDelta::seconds(10);
    cluster.pause_calls(&account, until).await.unwrap();
    assert_eq!(
        cluster.draw_call(&account, later, None).await.unwrap(),
        Err(tally::store::CallDenied::Paused { until })
    );
    assert_eq!(cluster.draw_call(&account, until, None).await.unwrap(), Ok(()), "the pause ends");
}

/// Background refresh is an upstream call like any other: it draws from the budget.
#[tokio::test]
async fn background_refresh_draws_from_the_budget() {
    let db = TestDb::sqlite();
    let id = "budget-background";
    let upstream = leanx(ok("393.63", "26.05")).await;
    // Checks run on real timers (~100 ms); the figure ages only when the test moves the clock.
    let extra = "max_calls_per_minute = 1\nrefresh_interval = \"100ms\"\nttl = \"1h\"";
    let app = TestApp::spawn(db.url(), &account(id, &upstream.uri(), extra)).await;
    let mut checks = app.service.account(&id.parse().unwrap()).unwrap().background_checks();
    eventually("the first refresh, at start", Duration::from_secs(10), || async { calls(&upstream).await == 1 }).await;
    // The call reached the fake; its figure is stamped when the answer is read. Moving the
    // clock before that would stamp it a second later, and no refresh would come due.
    more_checks(&mut checks, 1).await;
    app.advance(Duration::from_secs(1));
    let denied = format!("tally_upstream_budget_denied_total{{account=\"{id}\"}}");
    eventually("a due refresh is refused by the budget", Duration::from_secs(10), || async {
        app.counter(&denied).await >= 1
    })
    .await;
    more_checks(&mut checks, 2).await;
    assert_eq!(calls(&upstream).await, 1, "no second call within the minute");
    app.advance(Duration::from_secs(59));
    eventually("refreshed once the window ended", Duration::from_secs(10), || async { calls(&upstream).await == 2 })
        .await;
}
