use std::time::Duration;

use wiremock::matchers::{header, method, path};
use wiremock::{Match, Mock, MockServer, Request, ResponseTemplate};

use super::*;
use crate::domain::PayoutStatus;
use crate::providers::UpstreamErrorKind;
use crate::providers::test_support::account;

const APP_ID: &str = "94FAC0000000000000000000068548";
const APP_KEY: &str = "test-app-key";

/// The documented balance example (docs/luxtak-account-balance.txt).
const BALANCE_EXAMPLE: &str = r#"{"code":200,"msg":"success","time":1642075813,"data":[{"currency":"USD","amount":"551.38"},{"currency":"GBP","amount":"0"},{"currency":"EUR","amount":"0"},{"currency":"BRL","amount":"99002.23"},{"currency":"MXN","amount":"0"}]}"#;

/// Checks the request as Luxtak would: the `AppId`, the signature recomputed from the body
/// received, and a timestamp within a minute of now.
struct SignedByTestApp;

impl Match for SignedByTestApp {
    fn matches(&self, request: &Request) -> bool {
        let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&request.body) else { return false };
        let fresh = body
            .get("timestamp")
            .and_then(Value::as_i64)
            .is_some_and(|t| (chrono::Utc::now().timestamp() - t).abs() <= 60);
        let app_id = request.headers.get("AppId").and_then(|v| v.to_str().ok()) == Some(APP_ID);
        let signature = request.headers.get("Authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
        fresh && app_id && signature == Some(signature::sign(&body, APP_KEY))
    }
}

/// Matches a body field's value.
struct BodyField(&'static str, &'static str);

impl Match for BodyField {
    fn matches(&self, request: &Request) -> bool {
        serde_json::from_slice::<Value>(&request.body).ok().and_then(|b| b.get(self.0).cloned()) == Some(json!(self.1))
    }
}

fn client(server: &MockServer) -> LuxtakClient {
    let fields = format!("app_id = \"{APP_ID}\"\napp_key = \"{APP_KEY}\"\ntimeout = \"300ms\"");
    {
        let (settings, account) = account::<LuxtakSettings>(&server.uri(), &fields);
        LuxtakClient::new(&settings, account)
    }
}

fn json_response(status: u16, body: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(body.to_owned(), "application/json")
}

async fn balance_error(response: ResponseTemplate) -> UpstreamError {
    let server = MockServer::start().await;
    Mock::given(method("POST")).and(path("/api/balance")).respond_with(response).mount(&server).await;
    client(&server).fetch_balances().await.expect_err("the fetch fails")
}

#[tokio::test]
async fn the_balance_request_is_signed_and_maps_the_documented_example() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/balance"))
        .and(header("Content-Type", "application/json; charset=UTF-8"))
        .and(SignedByTestApp)
        .respond_with(json_response(200, BALANCE_EXAMPLE))
        .expect(1)
        .mount(&server)
        .await;
    let fetch = client(&server).fetch_balances().await.unwrap();
    let figures: Vec<(String, String, String)> = fetch
        .entries
        .iter()
        .map(|e| (e.wallet.clone(), e.currency.to_string(), e.total.unwrap().to_string()))
        .collect();
    assert_eq!(figures[0], ("main".into(), "USD".into(), "551.38".into()));
    assert_eq!(figures[1], ("main".into(), "GBP".into(), "0".into()));
    assert_eq!(figures[3], ("main".into(), "BRL".into(), "99002.23".into()));
    assert!(fetch.entries.iter().all(|e| e.available == e.total && e.pending.is_none()));
    let body: Value = serde_json::from_slice(&server.received_requests().await.unwrap()[0].body).unwrap();
    assert_eq!(
        body.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["timestamp"],
        "the body holds only the timestamp"
    );
}

#[tokio::test]
async fn documented_errors_are_classified_with_their_codes() {
    let e =
        balance_error(json_response(401, r#"{"code":4004003,"msg":"permission denied","time":1642074682,"data":{}}"#))
            .await;
    assert_eq!((e.kind, e.provider_code.as_deref()), (UpstreamErrorKind::AuthFailed, Some("4004003")));
    let e = balance_error(json_response(
        400,
        r#"{"code":4001000,"msg":"invalid parameter","time":1642078510,"data":{"err":"request has expired"}}"#,
    ))
    .await;
    assert_eq!(e.kind, UpstreamErrorKind::Rejected);
    assert!(e.message.contains("clock"), "points at clock skew: {}", e.message);
    for code in [4_004_001, 4_004_002] {
        let body = format!(r#"{{"code":{code},"msg":"invalid token","time":1642074682,"data":{{}}}}"#);
        let e = balance_error(json_response(401, &body)).await;
        assert_eq!((e.kind, e.provider_code), (UpstreamErrorKind::AuthFailed, Some(code.to_string())));
    }
    let too_many = r#"{"code":4004029,"msg":"too many requests","data":{}}"#;
    let e = balance_error(json_response(429, too_many).insert_header("retry-after", "11")).await;
    assert_eq!(
        (e.kind, e.upstream_status, e.retry_after, e.provider_code.as_deref()),
        (UpstreamErrorKind::RateLimited, Some(429), Some(Duration::from_secs(11)), Some("4004029"))
    );
    // The code alone is the rate limit, and its Retry-After is kept, whatever the HTTP status.
    let e = balance_error(json_response(200, too_many).insert_header("retry-after", "12")).await;
    assert_eq!(
        (e.kind, e.upstream_status, e.retry_after),
        (UpstreamErrorKind::RateLimited, Some(200), Some(Duration::from_secs(12)))
    );
    let e = balance_error(json_response(400, r#"{"code":4001003,"msg":"invalid field","data":{}}"#)).await;
    assert_eq!((e.kind, e.provider_code.as_deref()), (UpstreamErrorKind::Rejected, Some("4001003")));
}

#[tokio::test]
async fn rate_limits_server_errors_bad_bodies_and_slowness_are_classified() {
    let e = balance_error(ResponseTemplate::new(429).insert_header("retry-after", "7")).await;
    assert_eq!(
        (e.kind, e.retry_after, e.upstream_status),
        (UpstreamErrorKind::RateLimited, Some(Duration::from_secs(7)), Some(429))
    );
    let e = balance_error(json_response(500, r#"{"code":5001000,"msg":"system error","data":{}}"#)).await;
    assert_eq!((e.kind, e.provider_code.as_deref()), (UpstreamErrorKind::Unavailable, Some("5001000")));
    let e = balance_error(ResponseTemplate::new(503)).await;
    assert_eq!(e.kind, UpstreamErrorKind::Unavailable);
    let e = balance_error(ResponseTemplate::new(200).set_body_raw("<html>oops</html>", "text/html")).await;
    assert_eq!(e.kind, UpstreamErrorKind::InvalidResponse);
    let e = balance_error(json_response(200, &BALANCE_EXAMPLE[..60])).await;
    assert_eq!(e.kind, UpstreamErrorKind::InvalidResponse);
    let e = balance_error(json_response(200, BALANCE_EXAMPLE).set_delay(Duration::from_secs(2))).await;
    assert_eq!(e.kind, UpstreamErrorKind::Timeout);
}

fn status_body(status: &str) -> String {
    format!(
        r#"{{"code":200,"msg":"success","time":1628492701,"data":{{"payout_id":"TS2021080907050112345","custom_code":"order-77","status":"{status}","description":"CPF Verify Failed"}}}}"#
    )
}

const DETAIL: &str = r#"{"code":200,"msg":"success","data":{"reference_id":"order-77","transaction_id":"TS2021080907050112345","amount":"10.00","source_amount":"10.00","source_currency":"BRL","arrival_currency":"BRL","fee":"0.35","transaction_status":"REJECTED","create_time":1628492701,"update_time":1628496301,"remark":"CPF Verify Failed"}}"#;

#[tokio::test]
async fn a_payout_is_found_by_custom_code_after_payout_id_misses() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/payout/status"))
        .and(BodyField("payout_id", "order-77"))
        .and(SignedByTestApp)
        .respond_with(json_response(404, r#"{"code":4004004,"msg":"not found","data":{}}"#))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/payout/status"))
        .and(BodyField("custom_code", "order-77"))
        .and(SignedByTestApp)
        .respond_with(json_response(200, &status_body("REJECTED")))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/payout/detail"))
        .and(BodyField("transaction_id", "TS2021080907050112345"))
        .and(SignedByTestApp)
        .respond_with(json_response(200, DETAIL))
        .mount(&server)
        .await;
    let PayoutLookup::Found(p) = client(&server).lookup_payout("order-77").await.unwrap() else { panic!("found") };
    assert_eq!((p.id.as_str(), p.reference.as_deref()), ("TS2021080907050112345", Some("order-77")));
    assert_eq!((p.status, p.is_final), (PayoutStatus::Failed, true));
    assert_eq!((p.amount.unwrap().to_string(), p.fee.unwrap().to_string()), ("10.00".into(), "0.35".into()));
    assert_eq!(p.currency.unwrap().as_str(), "BRL");
    assert_eq!(p.failure.unwrap().message, "CPF Verify Failed");
    assert_eq!(p.created_at.unwrap().to_rfc3339(), "2021-08-09T07:05:01+00:00");
}

#[tokio::test]
async fn a_payout_without_detail_is_still_served_and_unknown_ids_are_not_found() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/payout/status"))
        .and(BodyField("payout_id", "TS1"))
        .respond_with(json_response(200, &status_body("PAID")))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/payout/status"))
        .respond_with(json_response(200, r#"{"code":4001021,"msg":"order not existed","data":{}}"#))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/payout/detail"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let PayoutLookup::Found(p) = client(&server).lookup_payout("TS1").await.unwrap() else { panic!("found") };
    assert_eq!(p.status, PayoutStatus::Succeeded);
    assert!(p.amount.is_none(), "the detail call failed");
    assert!(matches!(client(&server).lookup_payout("nope").await.unwrap(), PayoutLookup::NotFound));
}

#[tokio::test]
async fn every_documented_status_maps() {
    for (provider_status, status, is_final) in [
        ("IN_PROCESSING", PayoutStatus::Pending, false),
        ("PROCESSING", PayoutStatus::Processing, false),
        ("PAID", PayoutStatus::Succeeded, true),
        ("REJECTED", PayoutStatus::Failed, true),
        ("REFUNDED", PayoutStatus::Reversed, true),
        ("LOST_IN_SPACE", PayoutStatus::Unknown, false),
    ] {
        assert_eq!(transformers::status(provider_status), (status, is_final), "{provider_status}");
    }
}

/// Mounts one answer to a status lookup by `payout_id` and another by `custom_code`.
async fn status_server(by_payout_id: ResponseTemplate, by_custom_code: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    for (key, response) in [("payout_id", by_payout_id), ("custom_code", by_custom_code)] {
        Mock::given(method("POST"))
            .and(path("/api/payout/status"))
            .and(BodyField(key, "order-77"))
            .respond_with(response)
            .mount(&server)
            .await;
    }
    Mock::given(method("POST"))
        .and(path("/api/payout/detail"))
        .respond_with(json_response(200, DETAIL))
        .mount(&server)
        .await;
    server
}

async fn status_calls(server: &MockServer) -> usize {
    server.received_requests().await.unwrap().iter().filter(|r| r.url.path() == "/api/payout/status").count()
}

#[tokio::test]
async fn a_custom_code_refused_as_a_malformed_payout_id_is_tried_as_custom_code() {
    for refusal in [
        r#"{"code":4001000,"msg":"invalid parameter","data":{"err":"payout_id is invalid"}}"#,
        r#"{"code":4001003,"msg":"invalid field","data":{}}"#,
        r#"{"code":4001021,"msg":"order not existed","data":{}}"#,
    ] {
        let server = status_server(json_response(400, refusal), json_response(200, &status_body("PAID"))).await;
        let found = client(&server).lookup_payout("order-77").await.unwrap();
        let PayoutLookup::Found(p) = found else { panic!("found by custom_code after {refusal}") };
        assert_eq!(p.reference.as_deref(), Some("order-77"));
        assert_eq!(status_calls(&server).await, 2);
    }
}

#[tokio::test]
async fn auth_rate_limit_and_clock_refusals_of_the_payout_id_are_errors_without_a_second_lookup() {
    let found = || json_response(200, &status_body("PAID"));
    for (refusal, kind) in [
        (json_response(401, r#"{"code":4004003,"msg":"permission denied","data":{}}"#), UpstreamErrorKind::AuthFailed),
        (json_response(401, r#"{"code":4004001,"msg":"invalid token","data":{}}"#), UpstreamErrorKind::AuthFailed),
        (json_response(429, r#"{"code":4004029,"msg":"too many requests","data":{}}"#), UpstreamErrorKind::RateLimited),
        (
            json_response(400, r#"{"code":4001000,"msg":"invalid parameter","data":{"err":"request has expired"}}"#),
            UpstreamErrorKind::Rejected,
        ),
        (json_response(400, r#"{"code":4001011,"msg":"request has expired","data":{}}"#), UpstreamErrorKind::Rejected),
        (json_response(503, r#"{"code":4004004,"msg":"not found","data":{}}"#), UpstreamErrorKind::Unavailable),
    ] {
        let server = status_server(refusal, found()).await;
        let e = client(&server).lookup_payout("order-77").await.unwrap_err();
        assert_eq!(e.kind, kind, "{e}");
        assert_eq!(status_calls(&server).await, 1, "{e}: not read as an unknown payout_id");
    }
}

#[tokio::test]
async fn only_a_not_found_custom_code_is_not_found() {
    let not_a_payout_id = || json_response(404, r#"{"code":4004004,"msg":"not found","data":{}}"#);
    let server =
        status_server(not_a_payout_id(), json_response(400, r#"{"code":4001021,"msg":"order not existed","data":{}}"#))
            .await;
    assert!(matches!(client(&server).lookup_payout("order-77").await.unwrap(), PayoutLookup::NotFound));
    // A malformed custom_code is a refusal of tally's request, not knowledge that the payout
    // does not exist.
    let server =
        status_server(not_a_payout_id(), json_response(400, r#"{"code":4001003,"msg":"invalid field","data":{}}"#))
            .await;
    let e = client(&server).lookup_payout("order-77").await.unwrap_err();
    assert_eq!((e.kind, e.provider_code.as_deref()), (UpstreamErrorKind::Rejected, Some("4001003")));
}

/// Luxtak's row of the conformance suite (its times are UTC: no naive-time case).
pub(crate) fn conformance() -> crate::providers::conformance::Case {
    crate::providers::conformance::Case {
        provider: crate::domain::Provider::Luxtak,
        settings: format!("app_id = \"{APP_ID}\"\napp_key = \"{APP_KEY}\""),
        balance_path: "/api/balance",
        balance_example: BALANCE_EXAMPLE.to_owned(),
        figures: &[
            "main USD 551.38 - - 551.38 false",
            "main GBP 0 - - 0 false",
            "main EUR 0 - - 0 false",
            "main BRL 99002.23 - - 99002.23 false",
            "main MXN 0 - - 0 false",
        ],
        authorized: |request| SignedByTestApp.matches(request),
        prelude: None,
        payout: None,
    }
}

#[tokio::test]
async fn a_currency_listed_twice_is_an_invalid_answer_not_twice_the_money() {
    for data in [
        r#"[{"currency":"USD","amount":"551.38"},{"currency":"USD","amount":"551.38"}]"#,
        r#"[{"currency":"USD","amount":"551.38"},{"currency":"usd","amount":"10.00"}]"#,
    ] {
        let server = MockServer::start().await;
        let body = format!(r#"{{"code":200,"msg":"success","time":1642075813,"data":{data}}}"#);
        Mock::given(path("/api/balance"))
            .respond_with(ResponseTemplate::new(200).set_body_raw(body, "application/json"))
            .mount(&server)
            .await;
        // Through the registry, as tally builds every client.
        let fields = format!("app_id = \"{APP_ID}\"\napp_key = \"{APP_KEY}\"");
        let client = crate::providers::test_support::client_of(crate::domain::Provider::Luxtak, &server.uri(), &fields);
        let e = client.fetch_balances().await.expect_err("an ambiguous answer");
        assert_eq!(e.kind, UpstreamErrorKind::InvalidResponse, "{data}: {e}");
        assert!(e.message.contains("USD in wallet `main` more than once"), "{e}");
    }
}

mod callback;
