//! LeanX callback verification against tokens tally did not make.
//!
//! The tokens below were minted ONCE with PyJWT 2.15.1 (Python), not by tally or its JWT crate:
//! `python3 -m venv /tmp/jwtvenv && /tmp/jwtvenv/bin/pip install pyjwt`, then
//! `/tmp/jwtvenv/bin/python src/providers/leanx/tests/mint_callback_vectors.py` (the script is
//! beside this file; it prints each token under its name). The claims copy the shape of the
//! doc's sample callback (PROVIDERS.md §1.5); the key is [`HASH_KEY`].

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::HeaderMap;
use rust_decimal::Decimal;
use secrecy::ExposeSecret;

use crate::domain::{PayoutStatus, Provider};
use crate::providers::leanx::LeanxSettings;
use crate::providers::{
    Callback, CallbackAck, CallbackRefusal, CallbackRefusalKind, CallbackRequest, ProviderConfig, Trigger,
};

/// The HS256 secret the vectors were signed with.
const HASH_KEY: &str = "lx-hash-key-5f2b8c1e9a7d";

/// `jwt.encode(claims, HASH_KEY, algorithm="HS256", headers={"typ": "JWT"})`.
const HS256_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJvdXRwdXQiOnsiaW52b2ljZV9ubyI6IlBBWU9VVC1BOUQ1OjE3NDMwNy1MRUFOWCIsImVycm9yX2Rlc2NyaXB0aW9uIjpbXSwiYmFua19yZXNwb25zZSI6eyJTdWNjZXNzIjp0cnVlLCJSZXN1bHQiOnsiT3JnbkN1cnJlbmN5IjoiTVlSIiwiT3JnblRyYW5zYWN0aW9uQW1vdW50IjoiMS4wIiwiUGF5bWVudFN0YXR1cyI6IkFDU1AifX19LCJjbGllbnRfZGF0YSI6eyJ2aXJ0dWFsX3Bvb2xfcmVmZXJlbmNlIjoiVkEtRjA0RUM0LTE2NDcxMjAyMDI3Ny1QQVlPVVQiLCJleHRlcm5hbF9pbnZvaWNlX3JlZiI6IklOVk9JQ0UxMjM0IiwicmVjaXBpZW50X3JlZmVyZW5jZSI6InJlbnQifSwiaW52b2ljZV9zdGF0dXNfaWQiOjIsImludm9pY2Vfc3RhdHVzIjoiU1VDQ0VTUyIsImFtb3VudCI6IjEyMzQ1Njc4OTAxMjMuNDUiLCJwYXlvdXRfc2VydmljZV9pZCI6MSwiY2xpZW50X2NhbGxiYWNrX3VybCI6Imh0dHBzOi8vdGFsbHkuZXhhbXBsZS9jYWxsYmFja3MvbGVhbngtbWFpbiIsInBheW91dF9wYXltZW50Ijp7Iml0ZW0iOnsiYmFsYW5jZSI6IjcuMDAiLCJ2aXJ0dWFsX3Bvb2xfcmVmZXJlbmNlIjoiVkEtRjA0RUM0LTE2NDcxMjAyMDI3Ny1QQVlPVVQiLCJjcmVhdGVkX2F0IjoiMjAyNC0wOS0wNFQxNDo0OTo0OFoiLCJ1cGRhdGVkX2F0IjoiMjAyNC0wOS0wNFQxNDo1MDowNVoifX19.I7KfdCJLC2QJMYZBmc2nKdaYemDFwW6bJotfNJMQwiQ";

/// The same claims, `algorithm="HS512"`.
const HS512_TOKEN: &str = "eyJhbGciOiJIUzUxMiIsInR5cCI6IkpXVCJ9.eyJvdXRwdXQiOnsiaW52b2ljZV9ubyI6IlBBWU9VVC1BOUQ1OjE3NDMwNy1MRUFOWCIsImVycm9yX2Rlc2NyaXB0aW9uIjpbXSwiYmFua19yZXNwb25zZSI6eyJTdWNjZXNzIjp0cnVlLCJSZXN1bHQiOnsiT3JnbkN1cnJlbmN5IjoiTVlSIiwiT3JnblRyYW5zYWN0aW9uQW1vdW50IjoiMS4wIiwiUGF5bWVudFN0YXR1cyI6IkFDU1AifX19LCJjbGllbnRfZGF0YSI6eyJ2aXJ0dWFsX3Bvb2xfcmVmZXJlbmNlIjoiVkEtRjA0RUM0LTE2NDcxMjAyMDI3Ny1QQVlPVVQiLCJleHRlcm5hbF9pbnZvaWNlX3JlZiI6IklOVk9JQ0UxMjM0IiwicmVjaXBpZW50X3JlZmVyZW5jZSI6InJlbnQifSwiaW52b2ljZV9zdGF0dXNfaWQiOjIsImludm9pY2Vfc3RhdHVzIjoiU1VDQ0VTUyIsImFtb3VudCI6IjEyMzQ1Njc4OTAxMjMuNDUiLCJwYXlvdXRfc2VydmljZV9pZCI6MSwiY2xpZW50X2NhbGxiYWNrX3VybCI6Imh0dHBzOi8vdGFsbHkuZXhhbXBsZS9jYWxsYmFja3MvbGVhbngtbWFpbiIsInBheW91dF9wYXltZW50Ijp7Iml0ZW0iOnsiYmFsYW5jZSI6IjcuMDAiLCJ2aXJ0dWFsX3Bvb2xfcmVmZXJlbmNlIjoiVkEtRjA0RUM0LTE2NDcxMjAyMDI3Ny1QQVlPVVQiLCJjcmVhdGVkX2F0IjoiMjAyNC0wOS0wNFQxNDo0OTo0OFoiLCJ1cGRhdGVkX2F0IjoiMjAyNC0wOS0wNFQxNDo1MDowNVoifX19.Ufw9oT-kIbK7_3wXE1aYcGyDZeCy5CJgDIDZ1Ll3thxPP3b_dVaPueHMa4eZU0gk9OPPqdLHkoX4S-6Kii7h1A";

/// The same claims, `algorithm="none"` (no signature).
const NONE_TOKEN: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJvdXRwdXQiOnsiaW52b2ljZV9ubyI6IlBBWU9VVC1BOUQ1OjE3NDMwNy1MRUFOWCIsImVycm9yX2Rlc2NyaXB0aW9uIjpbXSwiYmFua19yZXNwb25zZSI6eyJTdWNjZXNzIjp0cnVlLCJSZXN1bHQiOnsiT3JnbkN1cnJlbmN5IjoiTVlSIiwiT3JnblRyYW5zYWN0aW9uQW1vdW50IjoiMS4wIiwiUGF5bWVudFN0YXR1cyI6IkFDU1AifX19LCJjbGllbnRfZGF0YSI6eyJ2aXJ0dWFsX3Bvb2xfcmVmZXJlbmNlIjoiVkEtRjA0RUM0LTE2NDcxMjAyMDI3Ny1QQVlPVVQiLCJleHRlcm5hbF9pbnZvaWNlX3JlZiI6IklOVk9JQ0UxMjM0IiwicmVjaXBpZW50X3JlZmVyZW5jZSI6InJlbnQifSwiaW52b2ljZV9zdGF0dXNfaWQiOjIsImludm9pY2Vfc3RhdHVzIjoiU1VDQ0VTUyIsImFtb3VudCI6IjEyMzQ1Njc4OTAxMjMuNDUiLCJwYXlvdXRfc2VydmljZV9pZCI6MSwiY2xpZW50X2NhbGxiYWNrX3VybCI6Imh0dHBzOi8vdGFsbHkuZXhhbXBsZS9jYWxsYmFja3MvbGVhbngtbWFpbiIsInBheW91dF9wYXltZW50Ijp7Iml0ZW0iOnsiYmFsYW5jZSI6IjcuMDAiLCJ2aXJ0dWFsX3Bvb2xfcmVmZXJlbmNlIjoiVkEtRjA0RUM0LTE2NDcxMjAyMDI3Ny1QQVlPVVQiLCJjcmVhdGVkX2F0IjoiMjAyNC0wOS0wNFQxNDo0OTo0OFoiLCJ1cGRhdGVkX2F0IjoiMjAyNC0wOS0wNFQxNDo1MDowNVoifX19.";

/// The same claims plus `exp` 1725461000 (2024-09-04T14:43:20Z), HS256.
const EXP_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJvdXRwdXQiOnsiaW52b2ljZV9ubyI6IlBBWU9VVC1BOUQ1OjE3NDMwNy1MRUFOWCIsImVycm9yX2Rlc2NyaXB0aW9uIjpbXSwiYmFua19yZXNwb25zZSI6eyJTdWNjZXNzIjp0cnVlLCJSZXN1bHQiOnsiT3JnbkN1cnJlbmN5IjoiTVlSIiwiT3JnblRyYW5zYWN0aW9uQW1vdW50IjoiMS4wIiwiUGF5bWVudFN0YXR1cyI6IkFDU1AifX19LCJjbGllbnRfZGF0YSI6eyJ2aXJ0dWFsX3Bvb2xfcmVmZXJlbmNlIjoiVkEtRjA0RUM0LTE2NDcxMjAyMDI3Ny1QQVlPVVQiLCJleHRlcm5hbF9pbnZvaWNlX3JlZiI6IklOVk9JQ0UxMjM0IiwicmVjaXBpZW50X3JlZmVyZW5jZSI6InJlbnQifSwiaW52b2ljZV9zdGF0dXNfaWQiOjIsImludm9pY2Vfc3RhdHVzIjoiU1VDQ0VTUyIsImFtb3VudCI6IjEyMzQ1Njc4OTAxMjMuNDUiLCJwYXlvdXRfc2VydmljZV9pZCI6MSwiY2xpZW50X2NhbGxiYWNrX3VybCI6Imh0dHBzOi8vdGFsbHkuZXhhbXBsZS9jYWxsYmFja3MvbGVhbngtbWFpbiIsInBheW91dF9wYXltZW50Ijp7Iml0ZW0iOnsiYmFsYW5jZSI6IjcuMDAiLCJ2aXJ0dWFsX3Bvb2xfcmVmZXJlbmNlIjoiVkEtRjA0RUM0LTE2NDcxMjAyMDI3Ny1QQVlPVVQiLCJjcmVhdGVkX2F0IjoiMjAyNC0wOS0wNFQxNDo0OTo0OFoiLCJ1cGRhdGVkX2F0IjoiMjAyNC0wOS0wNFQxNDo1MDowNVoifX0sImV4cCI6MTcyNTQ2MTAwMH0.CMOAKzlWPykvbXRwgPkQRAaf4XEWqFmhvntXSGpMivA";

/// The claims without `invoice_status`, HS256.
const NO_STATUS_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJvdXRwdXQiOnsiaW52b2ljZV9ubyI6IlBBWU9VVC1BOUQ1OjE3NDMwNy1MRUFOWCIsImVycm9yX2Rlc2NyaXB0aW9uIjpbXSwiYmFua19yZXNwb25zZSI6eyJTdWNjZXNzIjp0cnVlLCJSZXN1bHQiOnsiT3JnbkN1cnJlbmN5IjoiTVlSIiwiT3JnblRyYW5zYWN0aW9uQW1vdW50IjoiMS4wIiwiUGF5bWVudFN0YXR1cyI6IkFDU1AifX19LCJjbGllbnRfZGF0YSI6eyJ2aXJ0dWFsX3Bvb2xfcmVmZXJlbmNlIjoiVkEtRjA0RUM0LTE2NDcxMjAyMDI3Ny1QQVlPVVQiLCJleHRlcm5hbF9pbnZvaWNlX3JlZiI6IklOVk9JQ0UxMjM0IiwicmVjaXBpZW50X3JlZmVyZW5jZSI6InJlbnQifSwiaW52b2ljZV9zdGF0dXNfaWQiOjIsImFtb3VudCI6IjEyMzQ1Njc4OTAxMjMuNDUiLCJwYXlvdXRfc2VydmljZV9pZCI6MSwiY2xpZW50X2NhbGxiYWNrX3VybCI6Imh0dHBzOi8vdGFsbHkuZXhhbXBsZS9jYWxsYmFja3MvbGVhbngtbWFpbiIsInBheW91dF9wYXltZW50Ijp7Iml0ZW0iOnsiYmFsYW5jZSI6IjcuMDAiLCJ2aXJ0dWFsX3Bvb2xfcmVmZXJlbmNlIjoiVkEtRjA0RUM0LTE2NDcxMjAyMDI3Ny1QQVlPVVQiLCJjcmVhdGVkX2F0IjoiMjAyNC0wOS0wNFQxNDo0OTo0OFoiLCJ1cGRhdGVkX2F0IjoiMjAyNC0wOS0wNFQxNDo1MDowNVoifX19.WCnkFpxGWmBXPtYVNYzzBFrR_nJ-dVwkvpOo0IIKy6A";

/// The claims with `amount` "not-a-number", HS256.
const BAD_AMOUNT_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJvdXRwdXQiOnsiaW52b2ljZV9ubyI6IlBBWU9VVC1BOUQ1OjE3NDMwNy1MRUFOWCIsImVycm9yX2Rlc2NyaXB0aW9uIjpbXSwiYmFua19yZXNwb25zZSI6eyJTdWNjZXNzIjp0cnVlLCJSZXN1bHQiOnsiT3JnbkN1cnJlbmN5IjoiTVlSIiwiT3JnblRyYW5zYWN0aW9uQW1vdW50IjoiMS4wIiwiUGF5bWVudFN0YXR1cyI6IkFDU1AifX19LCJjbGllbnRfZGF0YSI6eyJ2aXJ0dWFsX3Bvb2xfcmVmZXJlbmNlIjoiVkEtRjA0RUM0LTE2NDcxMjAyMDI3Ny1QQVlPVVQiLCJleHRlcm5hbF9pbnZvaWNlX3JlZiI6IklOVk9JQ0UxMjM0IiwicmVjaXBpZW50X3JlZmVyZW5jZSI6InJlbnQifSwiaW52b2ljZV9zdGF0dXNfaWQiOjIsImludm9pY2Vfc3RhdHVzIjoiU1VDQ0VTUyIsImFtb3VudCI6Im5vdC1hLW51bWJlciIsInBheW91dF9zZXJ2aWNlX2lkIjoxLCJjbGllbnRfY2FsbGJhY2tfdXJsIjoiaHR0cHM6Ly90YWxseS5leGFtcGxlL2NhbGxiYWNrcy9sZWFueC1tYWluIiwicGF5b3V0X3BheW1lbnQiOnsiaXRlbSI6eyJiYWxhbmNlIjoiNy4wMCIsInZpcnR1YWxfcG9vbF9yZWZlcmVuY2UiOiJWQS1GMDRFQzQtMTY0NzEyMDIwMjc3LVBBWU9VVCIsImNyZWF0ZWRfYXQiOiIyMDI0LTA5LTA0VDE0OjQ5OjQ4WiIsInVwZGF0ZWRfYXQiOiIyMDI0LTA5LTA0VDE0OjUwOjA1WiJ9fX0.FmVnoIgXo26ErZjfJ1RPGgmyMLYG8rq-7rBhsx9ZTB0";

fn settings(hash_key: Option<&str>) -> ProviderConfig {
    let mut keys = serde_json::json!({"auth_token": "LP-0D7C06DE-MM|uuid|2141df4a"});
    if let Some(key) = hash_key {
        keys["hash_key"] = key.into();
    }
    ProviderConfig::read(Provider::Leanx, keys).expect("valid LeanX settings")
}

fn at(text: &str) -> DateTime<Utc> {
    text.parse().expect("an RFC 3339 time")
}

/// A callback as LeanX posts it, to an account with `hash_key`, judged at `now`.
fn verify_at(config: &ProviderConfig, body: &str, now: DateTime<Utc>) -> Result<Callback, CallbackRefusal> {
    let headers = HeaderMap::new();
    let request = CallbackRequest {
        body: body.as_bytes(),
        headers: &headers,
        now,
        utc_offset: chrono::FixedOffset::east_opt(8 * 3600).unwrap(),
    };
    config.verify_callback(&request)
}

fn verify(token: &str) -> Result<Callback, CallbackRefusal> {
    verify_at(&settings(Some(HASH_KEY)), &body(token), at("2024-09-04T14:51:00Z"))
}

fn body(token: &str) -> String {
    serde_json::json!({ "data": token }).to_string()
}

/// A refusal of `kind`, whose message says nothing of the key.
fn refused(result: Result<Callback, CallbackRefusal>, kind: CallbackRefusalKind) -> String {
    let refusal = result.expect_err("the callback is refused");
    assert_eq!(refusal.kind, kind, "{refusal:?}");
    assert!(!refusal.message.contains(HASH_KEY), "the message holds the key: {}", refusal.message);
    refusal.message
}

/// A token over `header` and `payload` (JSON text, any), signed HS256 with `key` by the `hmac`
/// crate directly: to reach the checks after the signature.
fn hand_signed(header: &str, payload: &str, key: &str) -> String {
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

#[test]
fn a_token_minted_by_pyjwt_verifies_and_reads_as_the_payout() {
    let Callback::Payout(payout) = verify(HS256_TOKEN).expect("the PyJWT token verifies") else {
        panic!("a verified callback is a payout");
    };
    assert_eq!(payout.id, "PAYOUT-A9D5:174307-LEANX");
    assert_eq!(payout.reference.as_deref(), Some("INVOICE1234"));
    assert_eq!(payout.status, PayoutStatus::Succeeded);
    assert_eq!(payout.provider_status, "SUCCESS");
    assert!(payout.is_final);
    // A string amount, exact to the cent at a size an f64 cannot hold.
    assert_eq!(payout.amount, Some(Decimal::from_str_exact("1234567890123.45").unwrap()));
    assert_eq!(payout.amount.unwrap().to_string(), "1234567890123.45");
    assert_eq!(payout.currency.as_ref().map(|c| c.as_str()), Some("MYR"));
    assert_eq!(payout.fee, None);
    assert_eq!(payout.failure, None);
    // Nested times carry `Z`: UTC, not the account's +08:00.
    assert_eq!(payout.created_at, Some(Utc.with_ymd_and_hms(2024, 9, 4, 14, 49, 48).unwrap()));
    assert_eq!(payout.updated_at, Some(Utc.with_ymd_and_hms(2024, 9, 4, 14, 50, 5).unwrap()));
}

#[test]
fn a_leanx_callback_is_acknowledged_with_json() {
    assert_eq!(settings(Some(HASH_KEY)).callback_ack(), CallbackAck::Json);
}

#[test]
fn a_token_checked_with_another_key_is_unverified() {
    let result = verify_at(&settings(Some("another-hash-key")), &body(HS256_TOKEN), at("2024-09-04T14:51:00Z"));
    let message = refused(result, CallbackRefusalKind::Unverified);
    assert!(message.contains("signature"), "{message}");
}

#[test]
fn a_token_with_alg_none_is_unverified() {
    let message = refused(verify(NONE_TOKEN), CallbackRefusalKind::Unverified);
    assert!(message.contains("`none`"), "{message}");
    // With the HS256 signature of the same input pasted on, still refused: the header decides.
    let signature = HS256_TOKEN.rsplit('.').next().unwrap();
    refused(verify(&format!("{NONE_TOKEN}{signature}")), CallbackRefusalKind::Unverified);
}

#[test]
fn tokens_of_other_algorithms_are_unverified() {
    let message = refused(verify(HS512_TOKEN), CallbackRefusalKind::Unverified);
    assert!(message.contains("`HS512`"), "{message}");
    // An RS256 header over a payload and signature that are valid HS256 with the key: the
    // algorithm-confusion attack. The header alone refuses it.
    let [_, payload, signature] = HS256_TOKEN.split('.').collect::<Vec<_>>()[..] else { unreachable!() };
    let rs256 = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#);
    let message = refused(verify(&format!("{rs256}.{payload}.{signature}")), CallbackRefusalKind::Unverified);
    assert!(message.contains("`RS256`"), "{message}");
    let lowercase = URL_SAFE_NO_PAD.encode(r#"{"alg":"hs256"}"#);
    refused(verify(&format!("{lowercase}.{payload}.{signature}")), CallbackRefusalKind::Unverified);
    let missing = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT"}"#);
    refused(verify(&format!("{missing}.{payload}.{signature}")), CallbackRefusalKind::Unverified);
}

#[test]
fn a_tampered_payload_is_unverified() {
    // NO_STATUS's payload under HS256_TOKEN's signature.
    let [header, _, signature] = HS256_TOKEN.split('.').collect::<Vec<_>>()[..] else { unreachable!() };
    let payload = NO_STATUS_TOKEN.split('.').nth(1).unwrap();
    refused(verify(&format!("{header}.{payload}.{signature}")), CallbackRefusalKind::Unverified);
    // The signature's first character changed (six data bits, no padding bits).
    let at = HS256_TOKEN.rfind('.').unwrap() + 1;
    let mut forged = HS256_TOKEN.to_owned();
    let other = if &forged[at..=at] == "A" { "B" } else { "A" };
    forged.replace_range(at..=at, other);
    refused(verify(&forged), CallbackRefusalKind::Unverified);
}

#[test]
fn an_expired_token_is_unverified_and_a_current_one_verifies() {
    let config = settings(Some(HASH_KEY));
    // exp is 14:43:20Z; 60 s of clock skew are allowed, as jsonwebtoken allows by default.
    assert!(verify_at(&config, &body(EXP_TOKEN), at("2024-09-04T14:40:00Z")).is_ok());
    assert!(verify_at(&config, &body(EXP_TOKEN), at("2024-09-04T14:44:20Z")).is_ok());
    let message =
        refused(verify_at(&config, &body(EXP_TOKEN), at("2024-09-04T14:44:21Z")), CallbackRefusalKind::Unverified);
    assert!(message.contains("expired"), "{message}");
    // A token without exp never expires by itself (whether LeanX sends exp is unknown).
    assert!(verify_at(&config, &body(HS256_TOKEN), at("2030-01-01T00:00:00Z")).is_ok());
}

#[test]
fn a_token_not_yet_valid_is_unverified() {
    let token = hand_signed(r#"{"alg":"HS256","typ":"JWT"}"#, r#"{"nbf":1725462000}"#, HASH_KEY);
    let message = refused(
        verify_at(&settings(Some(HASH_KEY)), &body(&token), at("2024-09-04T14:51:00Z")),
        CallbackRefusalKind::Unverified,
    );
    assert!(message.contains("not valid yet"), "{message}");
}

#[test]
fn malformed_bodies_and_tokens_are_malformed() {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let cases = [
        "not json".to_owned(),
        r#"{"data": 5}"#.to_owned(),
        r#"{"token": "a.b.c"}"#.to_owned(),
        body("only.two"),
        body("a.b.c.d"),
        body(""),
        body(".."),
        body("!!!.eyJ9.c2ln"),
        body(&format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode("not json"))),
        body(&format!("{header}.e30.not*base64")),
    ];
    for case in cases {
        refused(
            verify_at(&settings(Some(HASH_KEY)), &case, at("2024-09-04T14:51:00Z")),
            CallbackRefusalKind::Malformed,
        );
    }
    // Signed correctly over a payload that is not JSON.
    let token = hand_signed(r#"{"alg":"HS256","typ":"JWT"}"#, "not json", HASH_KEY);
    refused(verify(&token), CallbackRefusalKind::Malformed);
    let token = hand_signed(r#"{"alg":"HS256","typ":"JWT"}"#, r#"{"exp":"soon"}"#, HASH_KEY);
    refused(verify(&token), CallbackRefusalKind::Malformed);
}

#[test]
fn verified_tokens_without_the_documented_fields_are_malformed() {
    let message = refused(verify(NO_STATUS_TOKEN), CallbackRefusalKind::Malformed);
    assert!(message.contains("invoice_status"), "{message}");
    let message = refused(verify(BAD_AMOUNT_TOKEN), CallbackRefusalKind::Malformed);
    assert!(message.contains("amount"), "{message}");
    assert!(!message.contains("not-a-number"), "values are not echoed: {message}");
    let token = hand_signed(r#"{"alg":"HS256"}"#, r#"{"invoice_status":"SUCCESS"}"#, HASH_KEY);
    let message = refused(verify(&token), CallbackRefusalKind::Malformed);
    assert!(message.contains("output"), "{message}");
    let token = hand_signed(r#"{"alg":"HS256"}"#, r#"{"output":{},"invoice_status":"SUCCESS"}"#, HASH_KEY);
    let message = refused(verify(&token), CallbackRefusalKind::Malformed);
    assert!(message.contains("invoice_no"), "{message}");
}

#[test]
fn a_numeric_amount_is_read_exactly_too() {
    let token = hand_signed(
        r#"{"alg":"HS256"}"#,
        r#"{"output":{"invoice_no":"P-1"},"invoice_status":"PENDING","amount":90071992547409.93}"#,
        HASH_KEY,
    );
    let Ok(Callback::Payout(payout)) = verify(&token) else { panic!("verifies") };
    assert_eq!(payout.amount.unwrap().to_string(), "90071992547409.93");
    assert_eq!(payout.status, PayoutStatus::Pending);
    assert!(!payout.is_final);
}

#[test]
fn without_a_hash_key_a_callback_is_only_a_trigger_naming_the_payout() {
    let config = settings(None);
    let now = at("2024-09-04T14:51:00Z");
    // Verified or not, nothing in it is trusted: only the id to look up.
    for token in [HS256_TOKEN, NONE_TOKEN, HS512_TOKEN, EXP_TOKEN, BAD_AMOUNT_TOKEN] {
        assert_eq!(
            verify_at(&config, &body(token), now),
            Ok(Callback::Trigger(Trigger::Payout { id: "INVOICE1234".to_owned() }))
        );
    }
    let token = hand_signed(r#"{"alg":"HS256"}"#, r#"{"output":{"invoice_no":"P-1"}}"#, "any");
    assert_eq!(verify_at(&config, &body(&token), now), Ok(Callback::Trigger(Trigger::Payout { id: "P-1".to_owned() })));
    let token = hand_signed(r#"{"alg":"HS256"}"#, r#"{"amount":"1.00"}"#, "any");
    refused(verify_at(&config, &body(&token), now), CallbackRefusalKind::Malformed);
    let long = format!(r#"{{"output":{{"invoice_no":"{}"}}}}"#, "x".repeat(300));
    let token = hand_signed(r#"{"alg":"HS256"}"#, &long, "any");
    refused(verify_at(&config, &body(&token), now), CallbackRefusalKind::Malformed);
    refused(verify_at(&config, "not json", now), CallbackRefusalKind::Malformed);
}

#[test]
fn the_hash_key_is_a_secret_setting() {
    let config = settings(Some(HASH_KEY));
    assert!(!format!("{config:?}").contains(HASH_KEY), "Debug shows the hash_key");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hash_key");
    std::fs::write(&path, format!("{HASH_KEY}\n")).unwrap();
    let from_file = settings(Some(&format!("file:{}", path.display())));
    assert!(verify_at(&from_file, &body(HS256_TOKEN), at("2024-09-04T14:51:00Z")).is_ok());
    let ProviderConfig::Leanx(LeanxSettings { hash_key: Some(key), .. }) = from_file else { panic!("LeanX") };
    assert_eq!(key.expose_secret(), HASH_KEY);
    let error = ProviderConfig::read(
        Provider::Leanx,
        serde_json::json!({"auth_token": "t", "hash_key": "env:TALLY_TEST_SURELY_UNSET_HASH_KEY"}),
    )
    .expect_err("an unset variable is an error");
    assert_eq!(error.key.as_deref(), Some("hash_key"));
    assert!(error.problem.contains("TALLY_TEST_SURELY_UNSET_HASH_KEY"), "{error:?}");
    let error = ProviderConfig::read(Provider::Leanx, serde_json::json!({"auth_token": "t", "hash_key": ""}))
        .expect_err("an empty key is an error");
    assert_eq!(error.key.as_deref(), Some("hash_key"));
}
