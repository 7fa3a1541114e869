//! Luxtak notification verification against signatures tally did not compute.
//!
//! The `*_SIGNATURE` values were computed ONCE with Python's hashlib (plain SHA-256 of the
//! non-empty params sorted `k=v&…` followed by the app key, PROVIDERS.md §2.5) by
//! `src/providers/leanx/tests/mint_callback_vectors.py`, and pinned here.

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};

use crate::domain::{PayoutFailure, PayoutStatus, Provider};
use crate::providers::{Callback, CallbackAck, CallbackRefusal, CallbackRefusalKind, CallbackRequest, ProviderConfig};

const APP_KEY: &str = "lt-app-key-9c4e2a71";

/// A PAID notification with an empty `msg` (left out of the signature) and an integer timestamp.
const PAID: &str =
    r#"{"payoutId":"TS2409041449480001","custom_code":"ORDER-77","status":"PAID","msg":"","timestamp":1725461388}"#;
/// hashlib: sha256("custom_code=ORDER-77&payoutId=TS2409041449480001&status=PAID&timestamp=1725461388" + APP_KEY).
const PAID_SIGNATURE: &str = "ab9bb3b8e57143ac8acdf524b7f565e1b46fdc89542725cb187563e55d71ed6a";

/// A REJECTED notification with a reason and the timestamp as a string (the Transfersmile table).
const REJECTED: &str = r#"{"payoutId":"TS2409041449480002","custom_code":"ORDER-78","status":"REJECTED","msg":"Invalid PIX Key","timestamp":"1725461390"}"#;
/// hashlib: sha256("custom_code=ORDER-78&msg=Invalid PIX Key&payoutId=TS2409041449480002&status=REJECTED&timestamp=1725461390" + APP_KEY).
const REJECTED_SIGNATURE: &str = "fb069f00bd54aa1aa5c2b267b29e4fda870a4b1142f74f386daffbab383898a7";

fn settings(app_key: &str) -> ProviderConfig {
    ProviderConfig::read(Provider::Luxtak, serde_json::json!({"app_id": "94FAC68548", "app_key": app_key}))
        .expect("valid Luxtak settings")
}

fn verify_with(app_key: &str, body: &str, authorization: Option<&str>) -> Result<Callback, CallbackRefusal> {
    let mut headers = HeaderMap::new();
    if let Some(value) = authorization {
        headers.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
    }
    let request = CallbackRequest {
        body: body.as_bytes(),
        headers: &headers,
        now: chrono::Utc::now(),
        utc_offset: chrono::FixedOffset::east_opt(0).unwrap(),
    };
    settings(app_key).verify_callback(&request)
}

fn verify(body: &str, authorization: &str) -> Result<Callback, CallbackRefusal> {
    verify_with(APP_KEY, body, Some(authorization))
}

fn refused(result: Result<Callback, CallbackRefusal>, kind: CallbackRefusalKind) -> String {
    let refusal = result.expect_err("the notification is refused");
    assert_eq!(refusal.kind, kind, "{refusal:?}");
    assert!(!refusal.message.contains(APP_KEY), "the message holds the key: {}", refusal.message);
    refusal.message
}

#[test]
fn a_paid_notification_signed_by_hashlib_verifies_and_reads_as_the_payout() {
    let Callback::Payout(payout) = verify(PAID, PAID_SIGNATURE).expect("verifies") else { panic!("a payout") };
    assert_eq!(payout.id, "TS2409041449480001");
    assert_eq!(payout.reference.as_deref(), Some("ORDER-77"));
    assert_eq!(
        (payout.status, payout.provider_status.as_str(), payout.is_final),
        (PayoutStatus::Succeeded, "PAID", true)
    );
    assert_eq!(payout.failure, None);
    assert_eq!((payout.amount, payout.currency.clone()), (None, None), "the notification carries no amount");
}

#[test]
fn a_rejected_notification_carries_its_reason_and_a_string_timestamp_signs_the_same() {
    let Callback::Payout(payout) = verify(REJECTED, REJECTED_SIGNATURE).expect("verifies") else { panic!() };
    assert_eq!((payout.status, payout.is_final), (PayoutStatus::Failed, true));
    assert_eq!(payout.failure, Some(PayoutFailure { code: None, message: "Invalid PIX Key".to_owned() }));
}

#[test]
fn refunded_maps_as_the_lookup_maps_it() {
    let body = r#"{"payoutId":"TS1","custom_code":"C1","status":"REFUNDED","msg":"returned by bank","timestamp":1}"#;
    let joined = "custom_code=C1&msg=returned by bank&payoutId=TS1&status=REFUNDED&timestamp=1";
    let signature = crate::providers::luxtak::signature::digest(joined, APP_KEY);
    let Callback::Payout(payout) = verify(body, &signature).expect("verifies") else { panic!() };
    assert_eq!((payout.status, payout.is_final), (PayoutStatus::Reversed, true));
}

#[test]
fn the_documented_signature_vector_passes_the_notification_check() {
    // The platform's published request example (PROVIDERS.md §2.2) with its published
    // signature: the signature is accepted; the body is then refused only for having no status.
    let body = r#"{"account_digit":"4","account_number":"1234567","account_type":"CHECKING","additional_remark":"1234567_test","amount":"10.00","bankcode":"001","branch":"0001","custom_code":"1234567","document_id":"50284414727","document_type":"CPF","fee":"merchant","name":"Test User Name","notify_url":"https://www.pagsmile.com","payout_currency":"BRL","source_currency":"BRL"}"#;
    let signature = "b15f900705867ecc3f66088054c14a80f9f12b1fb31c82320c4cbfe181876abb";
    let message = refused(verify_with("ABCDE", body, Some(signature)), CallbackRefusalKind::Malformed);
    assert!(message.contains("status"), "{message}");
    refused(verify_with("ABCDF", body, Some(signature)), CallbackRefusalKind::Unverified);
}

#[test]
fn a_tampered_body_is_unverified() {
    let tampered = PAID.replace("PAID", "REJECTED");
    let message = refused(verify(&tampered, PAID_SIGNATURE), CallbackRefusalKind::Unverified);
    assert!(message.contains("Authorization"), "{message}");
    refused(verify(&PAID.replace("ORDER-77", "ORDER-78"), PAID_SIGNATURE), CallbackRefusalKind::Unverified);
    // The empty msg given a value changes what is signed.
    refused(verify(&PAID.replace(r#""msg":"""#, r#""msg":"x""#), PAID_SIGNATURE), CallbackRefusalKind::Unverified);
}

#[test]
fn a_wrong_key_a_wrong_or_missing_header_is_unverified() {
    refused(verify_with("another-app-key", PAID, Some(PAID_SIGNATURE)), CallbackRefusalKind::Unverified);
    refused(verify_with(APP_KEY, PAID, None), CallbackRefusalKind::Unverified);
    refused(verify(PAID, ""), CallbackRefusalKind::Unverified);
    refused(verify(PAID, &PAID_SIGNATURE[..63]), CallbackRefusalKind::Unverified);
    refused(verify(PAID, &format!("{PAID_SIGNATURE}0")), CallbackRefusalKind::Unverified);
    refused(verify(PAID, REJECTED_SIGNATURE), CallbackRefusalKind::Unverified);
    // HMAC-SHA256 (what the docs' wording suggests) is not the scheme.
    let hmac = {
        use hmac::{Hmac, KeyInit, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(APP_KEY.as_bytes()).unwrap();
        mac.update(b"custom_code=ORDER-77&payoutId=TS2409041449480001&status=PAID&timestamp=1725461388");
        hex::encode(mac.finalize().into_bytes())
    };
    refused(verify(PAID, &hmac), CallbackRefusalKind::Unverified);
}

#[test]
fn empty_and_null_params_are_left_out_of_the_signature() {
    let body = r#"{"payoutId":"TS2409041449480001","extra":null,"custom_code":"ORDER-77","note":"","status":"PAID","msg":"","timestamp":1725461388}"#;
    assert!(verify(body, PAID_SIGNATURE).is_ok());
    // Key order and whitespace in the body do not matter; the sorted params do.
    let reordered =
        r#"{ "timestamp": 1725461388, "status": "PAID", "payoutId": "TS2409041449480001", "custom_code": "ORDER-77" }"#;
    assert!(verify(reordered, PAID_SIGNATURE).is_ok());
}

#[test]
fn an_uppercase_signature_is_the_same_digest() {
    assert!(verify(PAID, &PAID_SIGNATURE.to_uppercase()).is_ok());
}

#[test]
fn malformed_notifications_are_malformed() {
    for body in ["not json", "[]", "\"PAID\"", r#"{"status":"PAID","status":"REJECTED"}"#, r#"{"status":{"a":1}}"#] {
        refused(verify(body, PAID_SIGNATURE), CallbackRefusalKind::Malformed);
    }
    // Verified, but naming no payout.
    let body = r#"{"status":"PAID","timestamp":1}"#;
    let signature = crate::providers::luxtak::signature::digest("status=PAID&timestamp=1", APP_KEY);
    let message = refused(verify(body, &signature), CallbackRefusalKind::Malformed);
    assert!(message.contains("payoutId"), "{message}");
}

#[test]
fn a_notification_without_payout_id_is_known_by_its_custom_code() {
    let body = r#"{"custom_code":"ORDER-9","status":"PAID","timestamp":1}"#;
    let signature = crate::providers::luxtak::signature::digest("custom_code=ORDER-9&status=PAID&timestamp=1", APP_KEY);
    let Callback::Payout(payout) = verify(body, &signature).expect("verifies") else { panic!() };
    assert_eq!((payout.id.as_str(), payout.reference.as_deref()), ("ORDER-9", Some("ORDER-9")));
}

#[test]
fn luxtak_is_acknowledged_with_the_text_success() {
    assert_eq!(settings(APP_KEY).callback_ack(), CallbackAck::Text("success"));
}
