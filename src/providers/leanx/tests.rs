use std::time::Duration;

use wiremock::matchers::{body_string, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;
use crate::domain::PayoutStatus;
use crate::providers::UpstreamErrorKind;
use crate::providers::test_support::account;

const TOKEN: &str = "LP-0D7C06DE-MM|7394e58e-edee-4c42-9ca5-bcbc449f1b9f|2141df4a";

/// The documented pool-balance example (docs/leanx-pool-balance.txt).
const BALANCE_EXAMPLE: &str = r#"{
    "response_code": 2000, "description": "SUCCESS", "app_version": "/api/v1",
    "talk_to_server_before": "2024-08-09T13:18:02.305450",
    "data": {
        "transaction_balance": {"value": 26.05, "pool_name": "TRANSACTION", "api_key": "86774f4a-3d60-4197-a9b2-5b72b5034695",
            "record_status": 1, "updated_at": "2024-04-25T13:30:00", "account_id": 57, "id": 337, "pool_type": 1,
            "created_at": "2024-01-03T11:58:03"},
        "prefund_balance": 393.63, "total_transaction_as_of_today": 0
    },
    "breakdown_errors": null, "token": ""
}"#;

/// The documented status-checking example (docs/leanx-payout-status.txt).
const PAYOUT_EXAMPLE: &str = r#"{
  "response_code": 2000, "description": "SUCCESS", "app_version": "/api/v1",
  "talk_to_server_before": "2023-12-05T18:02:55.948983",
  "data": {
    "payout_invoice_no": "PAYOUT-A9D5:174307-LEANX", "merchant_invoice_id": "VA-F04EC4-164712020277-PAYOUT", "id": 419,
    "payout_account_number": "8011408168", "transaction_fee": 0.00, "account_id": 3, "record_status": 1,
    "updated_at": "2023-12-05T17:44:05", "switch_invoice_id": "VP1678085468bA52B",
    "transaction_invoice_no": "PAYOUT1701769387uG4ENyls", "transaction_status": "SUCCESS", "value": 13.00,
    "switch_transaction_fee": 0.00, "api_key": "18e0933d-6bc1-4808-9bc7-aad2bcd38686", "created_at": "2023-12-05T17:43:07"
  },
  "breakdown_errors": null, "token": "18e0933d-6bc1-4808-9bc7-aad2bcd38686"
}"#;

fn client(server: &MockServer, extra: &str) -> LeanxClient {
    let fields = format!("auth_token = \"{TOKEN}\"\ntimeout = \"300ms\"\n{extra}");
    {
        let (settings, account) = account::<LeanxSettings>(&server.uri(), &fields);
        LeanxClient::new(&settings, account)
    }
}

fn json(body: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(body.to_owned(), "application/json")
}

fn payout_body(status: &str, extra: &str) -> String {
    format!(
        r#"{{"response_code":2000,"description":"SUCCESS","data":{{"payout_invoice_no":"PAYOUT-X:1-LEANX","transaction_status":"{status}","value":5.50,"transaction_fee":1.00,"created_at":"2024-01-01T08:00:00","updated_at":"2024-01-01T08:00:30"{extra}}},"breakdown_errors":null,"token":""}}"#
    )
}

async fn balance_error(response: ResponseTemplate) -> UpstreamError {
    let server = MockServer::start().await;
    Mock::given(method("POST")).and(path(BALANCE_PATH)).respond_with(response).mount(&server).await;
    client(&server, "").fetch_balances().await.expect_err("the fetch fails")
}

#[tokio::test]
async fn balance_request_is_a_post_with_the_auth_token_and_no_body() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(BALANCE_PATH))
        .and(header("auth-token", TOKEN))
        .and(body_string(""))
        .respond_with(json(BALANCE_EXAMPLE))
        .expect(1)
        .mount(&server)
        .await;
    client(&server, "").fetch_balances().await.unwrap();
    let request = &server.received_requests().await.unwrap()[0];
    assert!(request.headers.get("authorization").is_none(), "only the documented header carries credentials");
}

#[tokio::test]
async fn the_documented_balance_maps_both_pools_to_exact_decimals() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).and(path(BALANCE_PATH)).respond_with(json(BALANCE_EXAMPLE)).mount(&server).await;
    let fetch = client(&server, "").fetch_balances().await.unwrap();
    let figures: Vec<(String, String, String, String)> = fetch
        .entries
        .iter()
        .map(|e| {
            (e.wallet.clone(), e.currency.to_string(), e.available.unwrap().to_string(), e.total.unwrap().to_string())
        })
        .collect();
    assert_eq!(
        figures,
        [
            ("transaction".into(), "MYR".into(), "26.05".into(), "26.05".into()),
            ("prefund".into(), "MYR".into(), "393.63".into(), "393.63".into())
        ]
    );
    assert!(fetch.entries.iter().all(|e| e.pending.is_none() && e.reserved.is_none() && !e.blocked));
    assert_eq!(
        fetch.raw["data"]["transaction_balance"]["api_key"].as_str(),
        Some("[redacted]"),
        "the key UUID is part of the token"
    );
    assert_eq!(fetch.raw["token"].as_str(), Some("[redacted]"));
}

#[tokio::test]
async fn a_number_f64_cannot_hold_comes_out_unchanged_in_the_account_currency() {
    let server = MockServer::start().await;
    let body = BALANCE_EXAMPLE
        .replace("393.63", "90071992547409.93")
        .replace("26.05", "13.00")
        .replace("\"total_transaction_as_of_today\": 0", "\"total_transaction_as_of_today\": 0.00");
    Mock::given(method("POST")).and(path(BALANCE_PATH)).respond_with(json(&body)).mount(&server).await;
    let fetch = client(&server, "currency = \"USD\"").fetch_balances().await.unwrap();
    assert_eq!(fetch.entries[1].available.unwrap().to_string(), "90071992547409.93");
    assert_eq!(fetch.entries[0].available.unwrap().to_string(), "13.00");
    assert_eq!(fetch.entries[1].currency.as_str(), "USD");
    // The raw payload (include=raw, and what the store keeps) is exact too: f64 would write
    // 90071992547409.94, 13.0 and 0.0.
    let data = &fetch.raw["data"];
    assert_eq!(data["prefund_balance"].as_number(), Some("90071992547409.93"));
    assert_eq!(data["transaction_balance"]["value"].as_number(), Some("13.00"));
    assert_eq!(data["total_transaction_as_of_today"].as_number(), Some("0.00"));
    let text = fetch.raw.to_string();
    assert!(text.contains(r#""prefund_balance":90071992547409.93,"#), "{text}");
    assert!(text.contains(r#""value":13.00,"#) && text.contains(r#""total_transaction_as_of_today":0.00}"#), "{text}");
}

#[tokio::test]
async fn an_invalid_token_is_an_auth_failure() {
    let e = balance_error(
        ResponseTemplate::new(401)
            .set_body_raw(r#"{"response_code":4001,"description":"INVALID_TOKEN","data":null}"#, "application/json"),
    )
    .await;
    assert_eq!(e.kind, UpstreamErrorKind::AuthFailed);
    assert_eq!(e.provider_code.as_deref(), Some("4001"));
    assert!(!e.message.contains(TOKEN));
    // The same code in a 200 answer, as LeanX answers errors inside its envelope.
    let e = balance_error(json(r#"{"response_code":4001,"description":"INVALID_TOKEN","data":null}"#)).await;
    assert_eq!(e.kind, UpstreamErrorKind::AuthFailed);
}

#[tokio::test]
async fn other_response_codes_are_rejections_with_the_code_kept() {
    let e = balance_error(json(r#"{"response_code":5001,"description":"SOMETHING_ELSE","data":null}"#)).await;
    assert_eq!(e.kind, UpstreamErrorKind::Rejected);
    assert_eq!(e.provider_code.as_deref(), Some("5001"));
    assert!(e.message.contains("SOMETHING_ELSE"));
}

#[tokio::test]
async fn rate_limits_server_errors_and_bad_bodies_are_classified() {
    let e = balance_error(ResponseTemplate::new(429).insert_header("retry-after", "7")).await;
    assert_eq!(
        (e.kind, e.upstream_status, e.retry_after),
        (UpstreamErrorKind::RateLimited, Some(429), Some(Duration::from_secs(7)))
    );
    let e = balance_error(ResponseTemplate::new(503)).await;
    assert_eq!((e.kind, e.upstream_status), (UpstreamErrorKind::Unavailable, Some(503)));
    let e = balance_error(ResponseTemplate::new(200).set_body_raw("<html>Maintenance</html>", "text/html")).await;
    assert_eq!(e.kind, UpstreamErrorKind::InvalidResponse);
    let e = balance_error(json(&BALANCE_EXAMPLE[..120])).await;
    assert_eq!(e.kind, UpstreamErrorKind::InvalidResponse);
}

#[tokio::test]
async fn the_documented_payout_reads_back_normalized_in_utc() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(PAYOUT_PATH))
        .and(query_param("_id", "PAYOUT-A9D5:174307-LEANX"))
        .and(header("auth-token", TOKEN))
        .respond_with(json(PAYOUT_EXAMPLE))
        .mount(&server)
        .await;
    let PayoutLookup::Found(p) = client(&server, "").lookup_payout("PAYOUT-A9D5:174307-LEANX").await.unwrap() else {
        panic!("found")
    };
    assert_eq!(p.id, "PAYOUT-A9D5:174307-LEANX");
    assert_eq!((p.status, p.is_final, p.provider_status.as_str()), (PayoutStatus::Succeeded, true, "SUCCESS"));
    assert_eq!(p.amount.unwrap().to_string(), "13.00");
    assert_eq!(p.fee.unwrap().to_string(), "0.00");
    assert_eq!(p.currency.unwrap().as_str(), "MYR");
    assert_eq!(p.reference, None);
    // Naive Malaysia time (+08:00), as the embedded epoch 1701769387 confirms.
    assert_eq!(p.created_at.unwrap().to_rfc3339(), "2023-12-05T09:43:07+00:00");
    assert_eq!(p.updated_at.unwrap().to_rfc3339(), "2023-12-05T09:44:05+00:00");
}

#[tokio::test]
async fn a_lookup_by_the_merchant_reference_keeps_it_as_the_reference() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(PAYOUT_PATH))
        .and(query_param("_id", "INVOICE1234"))
        .respond_with(json(PAYOUT_EXAMPLE))
        .mount(&server)
        .await;
    let PayoutLookup::Found(p) = client(&server, "").lookup_payout("INVOICE1234").await.unwrap() else {
        panic!("found")
    };
    assert_eq!(p.id, "PAYOUT-A9D5:174307-LEANX");
    assert_eq!(p.reference.as_deref(), Some("INVOICE1234"));
}

#[tokio::test]
async fn every_documented_status_maps() {
    for (provider_status, status, is_final) in [
        ("PENDING", PayoutStatus::Pending, false),
        ("STATUS_PENDING_APPROVAL", PayoutStatus::AwaitingApproval, false),
        ("SUCCESS", PayoutStatus::Succeeded, true),
        ("FAILED", PayoutStatus::Failed, true),
        ("SOMETHING_NEW", PayoutStatus::Unknown, false),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(PAYOUT_PATH))
            .respond_with(json(&payout_body(provider_status, "")))
            .mount(&server)
            .await;
        let PayoutLookup::Found(p) = client(&server, "").lookup_payout("x").await.unwrap() else { panic!("found") };
        assert_eq!((p.status, p.is_final), (status, is_final), "{provider_status}");
    }
}

#[tokio::test]
async fn the_documented_failed_payout_carries_its_error_code() {
    let server = MockServer::start().await;
    let error = r#","error_message":{"response_code":5223,"error_code":"77","error_message":"Account Verification Failed. Please Try Again","description":"PAYOUT_FAILED","data":null}"#;
    Mock::given(method("POST"))
        .and(path(PAYOUT_PATH))
        .respond_with(json(&payout_body("FAILED", error)))
        .mount(&server)
        .await;
    let PayoutLookup::Found(p) = client(&server, "").lookup_payout("x").await.unwrap() else { panic!("found") };
    assert_eq!(p.status, PayoutStatus::Failed);
    let failure = p.failure.unwrap();
    assert_eq!(failure.code.as_deref(), Some("77"));
    assert_eq!(failure.message, "Account Verification Failed. Please Try Again");
}

#[tokio::test]
async fn an_id_with_colons_slashes_spaces_and_ampersands_reaches_the_upstream_intact() {
    let server = MockServer::start().await;
    let id = "PAYOUT-A9D5:17/43 07&x=1#frag";
    Mock::given(method("POST"))
        .and(path(PAYOUT_PATH))
        .and(query_param("_id", id))
        .respond_with(json(PAYOUT_EXAMPLE))
        .expect(1)
        .mount(&server)
        .await;
    let found = client(&server, "").lookup_payout(id).await.unwrap();
    assert!(matches!(found, PayoutLookup::Found(_)));
    let request = &server.received_requests().await.unwrap()[0];
    assert_eq!(request.url.query_pairs().count(), 1, "the id did not split the query: {}", request.url);
}

#[tokio::test]
async fn a_refusal_without_data_is_not_found_but_a_bad_token_is_not() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(PAYOUT_PATH))
        .respond_with(json(r#"{"response_code":4004,"description":"PAYOUT_NOT_FOUND","data":null}"#))
        .mount(&server)
        .await;
    assert!(matches!(client(&server, "").lookup_payout("nope").await.unwrap(), PayoutLookup::NotFound));

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(PAYOUT_PATH))
        .respond_with(json(r#"{"response_code":4001,"description":"INVALID_TOKEN","data":{}}"#))
        .mount(&server)
        .await;
    let e = client(&server, "").lookup_payout("nope").await.unwrap_err();
    assert_eq!(e.kind, UpstreamErrorKind::AuthFailed);
}

#[tokio::test]
async fn a_payout_lookup_refused_401_or_403_without_the_envelope_is_an_auth_failure() {
    let refusals = || {
        [
            ResponseTemplate::new(401).set_body_raw("<html><body>401 Unauthorized</body></html>", "text/html"),
            ResponseTemplate::new(403),
        ]
    };
    for response in refusals() {
        let server = MockServer::start().await;
        Mock::given(method("POST")).and(path(PAYOUT_PATH)).respond_with(response).mount(&server).await;
        let e = client(&server, "").lookup_payout("x").await.unwrap_err();
        assert_eq!(e.kind, UpstreamErrorKind::AuthFailed, "a refusal is not a not-found: {e}");
    }
}

/// LeanX's row of the conformance suite.
pub(crate) fn conformance() -> crate::providers::conformance::Case {
    crate::providers::conformance::Case {
        provider: crate::domain::Provider::Leanx,
        settings: format!("auth_token = \"{TOKEN}\""),
        balance_path: BALANCE_PATH,
        balance_example: BALANCE_EXAMPLE.to_owned(),
        figures: &["transaction MYR 26.05 - - 26.05 false", "prefund MYR 393.63 - - 393.63 false"],
        authorized: |request| {
            request.headers.get("auth-token").is_some_and(|t| t == TOKEN)
                && request.headers.get("authorization").is_none()
        },
        prelude: None,
        payout: Some(crate::providers::conformance::PayoutCase {
            path: PAYOUT_PATH,
            id: "PAYOUT-A9D5:174307-LEANX",
            example: PAYOUT_EXAMPLE.to_owned(),
            // Malaysia time (+08:00), as the id's embedded epoch 1701769387 confirms.
            created_at: "2023-12-05T09:43:07+00:00",
        }),
    }
}

mod callback;
