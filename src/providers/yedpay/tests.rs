use std::time::Duration;

use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;
use crate::domain::PayoutStatus;
use crate::providers::UpstreamErrorKind;
use crate::providers::test_support::account;

const TOKEN: &str = "yedpay-personal-token";

/// The documented balance example (docs/yedpay-balance.txt).
const HKD: &str = r#"{ "success": true, "data": { "company_id": "JwoMPpKy", "currency": "HKD", "total_balance": "17.4781", "total_available_balance": "17.47", "available_balance": "17.47", "ledger_balance": "0.00", "locked_balance": "0.00", "holding_balance": "0.00", "total_balance_float": 17.4781, "total_available_balance_float": 17.47, "available_balance_float": 17.47, "ledger_balance_float": 0, "locked_balance_float": 0, "holding_balance_float": 0 } }"#;

const USD: &str = r#"{ "success": true, "data": { "company_id": "JwoMPpKy", "currency": "USD", "total_balance": "1200.5000", "total_available_balance": "1000.00", "available_balance": "1000.00", "ledger_balance": "150.25", "locked_balance": "30.10", "holding_balance": "20.15", "total_balance_float": 1200.5 } }"#;

const UNAUTHENTICATED: &str = r#"{ "success": false, "message": "Unauthenticated.", "status": 500 }"#;

fn client(server: &MockServer, currencies: &str) -> YedpayClient {
    let fields = format!(
        "access_token = \"{TOKEN}\"\ncompany_id = \"JwoMPpKy\"\ncurrencies = {currencies}\ntimeout = \"300ms\""
    );
    {
        let (settings, account) = account::<YedpaySettings>(&server.uri(), &fields);
        YedpayClient::new(&settings, account)
    }
}

fn json(status: u16, body: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(body.to_owned(), "application/json")
}

async fn balance_error(response: ResponseTemplate) -> UpstreamError {
    let server = MockServer::start().await;
    Mock::given(method("GET")).and(path("/v1/balance/JwoMPpKy")).respond_with(response).mount(&server).await;
    client(&server, r#"["HKD"]"#).fetch_balances().await.expect_err("the fetch fails")
}

#[tokio::test]
async fn one_bearer_request_per_currency_maps_the_documented_figures() {
    let server = MockServer::start().await;
    for (currency, body) in [("HKD", HKD), ("USD", USD)] {
        Mock::given(method("GET"))
            .and(path("/v1/balance/JwoMPpKy"))
            .and(query_param("currency", currency))
            .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
            .respond_with(json(200, body))
            .expect(1)
            .mount(&server)
            .await;
    }
    let fetch = client(&server, r#"["HKD", "USD"]"#).fetch_balances().await.unwrap();
    let show = |e: &crate::domain::BalanceEntry| {
        [e.available, e.pending, e.reserved, e.total].map(|d| d.map(|d| d.to_string()).unwrap_or_default())
    };
    assert_eq!(fetch.entries[0].wallet, "JwoMPpKy");
    assert_eq!(fetch.entries[0].currency.as_str(), "HKD");
    assert_eq!(show(&fetch.entries[0]), ["17.47", "0.00", "0.00", "17.4781"], "total keeps its 4 decimals");
    assert_eq!(fetch.entries[1].currency.as_str(), "USD");
    assert_eq!(show(&fetch.entries[1]), ["1000.00", "150.25", "50.25", "1200.5000"], "reserved = locked + holding");
    assert_eq!(fetch.raw["HKD"]["data"]["total_balance"].as_str(), Some("17.4781"));
    assert_eq!(fetch.raw["USD"]["data"]["total_balance_float"].as_number(), Some("1200.5"));
}

#[tokio::test]
async fn unauthenticated_is_an_auth_failure_even_inside_an_http_500() {
    for status in [500, 401, 200] {
        let e = balance_error(json(status, UNAUTHENTICATED)).await;
        assert_eq!(e.kind, UpstreamErrorKind::AuthFailed, "HTTP {status}");
        assert_eq!(e.provider_code.as_deref(), Some("Unauthenticated."));
    }
    let e =
        balance_error(json(403, r#"{"success":false,"message":"This action is unauthorized.","status":403}"#)).await;
    assert_eq!(e.kind, UpstreamErrorKind::AuthFailed);
}

#[tokio::test]
async fn other_refusals_rate_limits_server_errors_and_bad_bodies_are_classified() {
    let e = balance_error(json(200, r#"{"success":false,"message":"Currency not supported","status":422}"#)).await;
    assert_eq!((e.kind, e.message.as_str()), (UpstreamErrorKind::Rejected, "Yedpay answered: Currency not supported"));
    let e = balance_error(ResponseTemplate::new(429).insert_header("retry-after", "7")).await;
    assert_eq!((e.kind, e.retry_after), (UpstreamErrorKind::RateLimited, Some(Duration::from_secs(7))));
    let e = balance_error(ResponseTemplate::new(502).set_body_raw("<html>Bad Gateway</html>", "text/html")).await;
    assert_eq!((e.kind, e.upstream_status), (UpstreamErrorKind::Unavailable, Some(502)));
    let e = balance_error(ResponseTemplate::new(200).set_body_raw("<html>hi</html>", "text/html")).await;
    assert_eq!(e.kind, UpstreamErrorKind::InvalidResponse);
    let e = balance_error(json(200, &HKD[..80])).await;
    assert_eq!(e.kind, UpstreamErrorKind::InvalidResponse);
    let e = balance_error(json(200, HKD).set_delay(Duration::from_secs(2))).await;
    assert_eq!(e.kind, UpstreamErrorKind::Timeout);
}

fn settlement(id: &str, transaction_id: &str, status: &str) -> String {
    format!(
        r#"{{"id":"{id}","status":"{status}","company_id":"JwoMPpKy","transaction_id":"{transaction_id}","currency":"HKD","amount":"100.00","charge":"1.00","settle":"99.00","settle_fee":"1.50","total":"98.50","created_at":"2024-03-01 10:00:00","updated_at":"2024-03-01 18:30:00","account_name":"X","account_number":"123","reason":"Bank account closed"}}"#
    )
}

fn page(items: &[String], current: u32, total: u32) -> String {
    format!(
        r#"{{"success":true,"data":[{}],"meta":{{"pagination":{{"total":{},"count":{},"per_page":100,"current_page":{current},"total_pages":{total},"links":{{}}}}}}}}"#,
        items.join(","),
        items.len(),
        items.len()
    )
}

#[tokio::test]
async fn a_settlement_on_page_two_is_found_by_id_or_transaction_id() {
    let server = MockServer::start().await;
    let first = page(&[settlement("S1", "T1", "settled")], 1, 2);
    let second = page(&[settlement("S2", "T2", "cancelled_settlement")], 2, 2);
    for (n, body) in [("1", first), ("2", second)] {
        Mock::given(method("GET"))
            .and(path("/v1/settlements"))
            .and(query_param("page", n))
            .and(query_param("limit", "100"))
            .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
            .respond_with(json(200, &body))
            .mount(&server)
            .await;
    }
    let c = client(&server, r#"["HKD"]"#);
    for asked in ["S2", "T2"] {
        let PayoutLookup::Found(p) = c.lookup_payout(asked).await.unwrap() else { panic!("{asked} is found") };
        assert_eq!((p.id.as_str(), p.reference.as_deref()), ("S2", Some("T2")));
        assert_eq!((p.status, p.is_final), (PayoutStatus::Failed, true));
        assert_eq!(p.amount.unwrap().to_string(), "100.00");
        assert_eq!(p.fee.unwrap().to_string(), "1.50");
        assert_eq!(p.failure.as_ref().unwrap().message, "Bank account closed");
        assert_eq!(p.created_at.unwrap().to_rfc3339(), "2024-03-01T02:00:00+00:00", "read in +08:00");
    }
    assert!(matches!(c.lookup_payout("S9").await.unwrap(), PayoutLookup::NotFound));
}

#[tokio::test]
async fn every_documented_settlement_status_maps() {
    for (provider_status, status, is_final) in [
        ("settlement_requested", PayoutStatus::Pending, false),
        ("in_progress_settlement", PayoutStatus::Processing, false),
        ("settled", PayoutStatus::Succeeded, true),
        ("cancelled_settlement", PayoutStatus::Failed, true),
        ("reverse_settlement", PayoutStatus::Cancelled, true),
        ("canceled", PayoutStatus::Cancelled, true),
        ("Settled", PayoutStatus::Succeeded, true),
        ("mystery", PayoutStatus::Unknown, false),
    ] {
        let (s, f) = transformers::status(provider_status);
        assert_eq!((s, f), (status, is_final), "{provider_status}");
    }
}

#[tokio::test]
async fn a_settlement_beyond_the_page_cap_is_an_error_not_a_not_found() {
    let server = MockServer::start().await;
    // Every page says there are more than tally searches, and none holds the id.
    Mock::given(method("GET"))
        .and(path("/v1/settlements"))
        .respond_with(json(200, &page(&[settlement("S1", "T1", "settled")], 1, MAX_PAGES + 10)))
        .mount(&server)
        .await;
    let e = client(&server, r#"["HKD"]"#).lookup_payout("S9").await.unwrap_err();
    assert_eq!(e.kind, UpstreamErrorKind::InvalidResponse);
    assert!(e.message.contains("not searched"), "{}", e.message);
    assert_eq!(server.received_requests().await.unwrap().len(), MAX_PAGES as usize);
    // Within the searched pages it is still found.
    let PayoutLookup::Found(p) = client(&server, r#"["HKD"]"#).lookup_payout("T1").await.unwrap() else {
        panic!("found on the first page")
    };
    assert_eq!(p.id, "S1");
}

/// A Yedpay fake whose balance answers wait until two requests are in flight at once: asked one
/// after the other, the first would never be answered and the fetch would fail.
async fn rendezvous_server() -> std::net::SocketAddr {
    use axum::extract::Query;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
    let handler = move |Query(q): Query<std::collections::HashMap<String, String>>| {
        let barrier = barrier.clone();
        async move {
            barrier.wait().await;
            let body = if q.get("currency").map(String::as_str) == Some("USD") { USD } else { HKD };
            ([(axum::http::header::CONTENT_TYPE, "application/json")], body)
        }
    };
    let app = axum::Router::new().route("/v1/balance/{company_id}", axum::routing::get(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn the_currencies_are_asked_concurrently() {
    let addr = rendezvous_server().await;
    // A generous timeout: only a sequential client ever reaches it.
    let fields = format!(
        "access_token = \"{TOKEN}\"\ncompany_id = \"JwoMPpKy\"\ncurrencies = [\"HKD\", \"USD\"]\ntimeout = \"5s\""
    );
    let c = {
        let (settings, account) = account::<YedpaySettings>(&format!("http://{addr}"), &fields);
        YedpayClient::new(&settings, account)
    };
    let fetch = c.fetch_balances().await.expect("both calls were in flight together");
    let currencies: Vec<&str> = fetch.entries.iter().map(|e| e.currency.as_str()).collect();
    assert_eq!(currencies, ["HKD", "USD"]);
}

/// Yedpay's row of the conformance suite.
pub(crate) fn conformance() -> crate::providers::conformance::Case {
    crate::providers::conformance::Case {
        provider: crate::domain::Provider::Yedpay,
        settings: format!("access_token = \"{TOKEN}\"\ncompany_id = \"JwoMPpKy\"\ncurrencies = [\"HKD\"]"),
        balance_path: "/v1/balance/JwoMPpKy",
        balance_example: HKD.to_owned(),
        figures: &["JwoMPpKy HKD 17.47 0.00 0.00 17.4781 false"],
        authorized: |request| {
            request.headers.get("authorization").is_some_and(|a| a == format!("Bearer {TOKEN}").as_str())
        },
        prelude: None,
        payout: Some(crate::providers::conformance::PayoutCase {
            path: "/v1/settlements",
            id: "S1",
            example: page(&[settlement("S1", "T1", "settled")], 1, 1),
            // Hong Kong time (+08:00).
            created_at: "2024-03-01T02:00:00+00:00",
        }),
    }
}

/// Yedpay documents no payout notification (PROVIDERS.md §4.5).
#[test]
fn callbacks_are_unsupported() {
    use crate::providers::{CallbackRefusalKind, CallbackRequest, ProviderConfig};
    let config = ProviderConfig::read(
        crate::domain::Provider::Yedpay,
        serde_json::json!({"access_token": "t", "company_id": "JwoMPpKy"}),
    )
    .unwrap();
    let headers = reqwest::header::HeaderMap::new();
    let request = CallbackRequest {
        body: b"{}",
        headers: &headers,
        now: chrono::Utc::now(),
        utc_offset: chrono::FixedOffset::east_opt(8 * 3600).unwrap(),
    };
    let refusal = config.verify_callback(&request).unwrap_err();
    assert_eq!(refusal.kind, CallbackRefusalKind::Unsupported);
}
