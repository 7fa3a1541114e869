//! A hostile or broken upstream, end to end: what it sends becomes data in the answer, never a
//! panic, a 500 or a crash.

use serde_json::Value;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{BALANCE_PATH, TestApp, TestDb, leanx_body};

fn account(id: &str, server: &MockServer, extra: &str) -> String {
    format!(
        "[[accounts]]\nid = \"{id}\"\nprovider = \"leanx\"\nbase_url = \"{}\"\nauth_token = \"tok\"\n{extra}\n",
        server.uri()
    )
}

/// A `Retry-After` of u64::MAX seconds once panicked the fetch (an instant overflow): the
/// account was reported as `upstream_timeout`, its last error stayed empty and its circuit
/// never opened.
#[tokio::test]
async fn a_retry_after_beyond_any_clock_is_a_rate_limit_with_its_error_kept() {
    let db = TestDb::sqlite();
    let server = MockServer::start().await;
    let huge = ResponseTemplate::new(429).insert_header("retry-after", u64::MAX.to_string().as_str());
    Mock::given(method("POST")).and(path(BALANCE_PATH)).respond_with(huge).mount(&server).await;
    let app =
        TestApp::spawn(db.url(), &account("limited", &server, "max_retries = 1\ncircuit_failure_threshold = 1")).await;

    let (status, body) = app.get_json("/balances").await;
    assert_eq!(status, 503, "nothing to serve: {body}");
    let (_, accounts) = app.get_json("/accounts").await;
    let a = &accounts["accounts"][0];
    assert_eq!(a["last_error"]["code"], "upstream_rate_limited", "{accounts}");
    assert_eq!(a["last_error"]["upstream_status"], 429);
    assert_eq!(a["circuit"], "open", "the failure counts towards the circuit");
    assert_eq!(server.received_requests().await.unwrap().len(), 1, "an hour's wait leaves no room for a retry");
}

/// One extra field nested 5000 levels deep in a valid envelope once overflowed the stack and
/// aborted the process (every account down; with background refresh, a crash loop).
#[tokio::test]
async fn an_answer_nested_thousands_deep_is_an_invalid_response_and_tally_stays_up() {
    let db = TestDb::sqlite();
    let hostile = MockServer::start().await;
    let body = leanx_body("393.63", "26.05");
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let body = format!("{}, \"extra\": {deep}}}", &body[..body.rfind('}').unwrap()]);
    Mock::given(method("POST"))
        .and(path(BALANCE_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_raw(body, "application/json"))
        .mount(&hostile)
        .await;
    let fine = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(BALANCE_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_raw(leanx_body("1.00", "2.00"), "application/json"))
        .mount(&fine)
        .await;
    let config = format!("{}{}", account("hostile", &hostile, "max_retries = 0"), account("fine", &fine, ""));
    let app = TestApp::spawn(db.url(), &config).await;

    let (status, body) = app.get_json("/balances").await;
    assert_eq!(status, 200, "{body}");
    let line = |id: &str| body["accounts"].as_array().unwrap().iter().find(|a| a["account"] == id).cloned();
    assert_eq!(line("hostile").unwrap()["error"]["code"], "upstream_invalid_response", "{body}");
    assert_eq!(line("fine").unwrap()["status"], "fresh");
    let (status, _): (u16, Value) = app.get_json("/healthz").await;
    assert_eq!(status, 200, "still up");
}
