//! Fuzzing every provider's client with arbitrary answers: JSON of any shape (nested past any
//! bound, numbers no decimal holds, keys repeated), bare and inside each provider's success
//! envelope so that the transformers behind it are reached. Whatever the answer, the client
//! returns `Ok` or an error: it never panics, overflows its stack or hangs.
//!
//! The answers go over real HTTP (one wiremock server per provider, answering every call with
//! the case's body), through the client the registry builds. `PROPTEST_CASES` runs more cases
//! than CI's default (e.g. `PROPTEST_CASES=20000 cargo test --lib providers::fuzz`).

use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use super::conformance::Case;
use super::test_support::client_of;
use crate::sync::MutexExt;

/// Answers every call it is mounted for with the current case's body.
#[derive(Clone, Default)]
struct CurrentBody(Arc<Mutex<String>>);

impl Respond for CurrentBody {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_raw(self.0.locked().clone(), "application/json")
    }
}

/// Keys the providers read, so that generated objects meet the transformers' fields, and a
/// few they do not.
const KEYS: &[&str] = &[
    "data",
    "details",
    "response_code",
    "code",
    "success",
    "status",
    "description",
    "msg",
    "prefund_balance",
    "transaction_balance",
    "value",
    "currency",
    "amount",
    "asset",
    "id",
    "availableBalance",
    "pendingBalance",
    "totalBalance",
    "bSuppressed",
    "numberOfPages",
    "available_balance",
    "ledger_balance",
    "locked_balance",
    "holding_balance",
    "total_balance",
    "transaction_status",
    "created_at",
    "updated_at",
    "meta",
    "pagination",
    "total_pages",
    "x",
    "",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![4 => proptest::sample::select(KEYS).prop_map(str::to_owned), 1 => "[a-zA-Z_]{1,12}"]
}

fn quoted(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

/// JSON text of any shape. Written as text, so that numbers may be any length and an object
/// may repeat a key.
fn json() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        // Numbers past any decimal: 60 digits, exponents in the thousands.
        "-?[0-9]{1,60}(\\.[0-9]{1,60})?([eE][+-]?[0-9]{1,4})?",
        ".{0,24}".prop_map(|s| quoted(&s)),
        // Strings that look like the figures and times the providers send.
        "-?[0-9]{1,30}\\.[0-9]{0,30}".prop_map(|s| quoted(&s)),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?Z?".prop_map(|s| quoted(&s)),
        "[A-Za-z]{2,5}".prop_map(|s| quoted(&s)),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(|items| format!("[{}]", items.join(","))),
            prop::collection::vec((key(), inner), 0..8).prop_map(|entries| {
                let entries: Vec<String> = entries.iter().map(|(k, v)| format!("{}:{v}", quoted(k))).collect();
                format!("{{{}}}", entries.join(","))
            }),
        ]
    })
}

/// An answer: arbitrary JSON, the same inside every provider's success envelope, or nesting
/// far past any bound.
fn answer() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => json(),
        6 => json().prop_map(|x| format!(
            r#"{{"response_code":2000,"code":200,"success":true,"status":"1","msg":"success","data":{x},"details":{x},"numberOfPages":1}}"#
        )),
        // Nesting where a reader skips it (a field nobody reads), where it is the value read,
        // and inside an object the reader opens.
        2 => (1usize..200_000, 0usize..3).prop_map(|(depth, place)| {
            let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            match place {
                0 => format!(r#"{{"response_code":2000,"code":200,"success":true,"status":"1","data":{{}},"extra":{deep}}}"#),
                1 => format!(r#"{{"response_code":2000,"code":200,"success":true,"status":"1","data":{deep},"details":{deep}}}"#),
                _ => format!(r#"{{"response_code":2000,"code":200,"success":true,"status":"1","data":{{"x":{deep}}},"details":[{{"x":{deep}}}]}}"#),
            }
        }),
    ]
}

async fn fake(case: &Case, body: &CurrentBody) -> MockServer {
    let server = MockServer::start().await;
    if let Some(prelude) = case.prelude {
        prelude(&server).await;
    }
    Mock::given(wiremock::matchers::any()).respond_with(body.clone()).mount(&server).await;
    server
}

#[test]
fn no_answer_makes_a_client_panic() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    let cases = runtime.block_on(async { super::registry::conformance_cases() });
    for case in cases {
        let body = CurrentBody::default();
        let server = runtime.block_on(fake(&case, &body));
        let client = client_of(case.provider, &server.uri(), &format!("timeout = \"5s\"\n{}", case.settings));
        let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(200);
        let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
        let outcome = runner.run(&answer(), |text| {
            *body.0.locked() = text;
            runtime.block_on(async {
                let _ = client.fetch_balances().await;
                let _ = client.lookup_payout("PAYOUT-1").await;
            });
            Ok(())
        });
        if let Err(e) = outcome {
            panic!("{}: {e}", case.provider);
        }
    }
}

/// A compact HS256 token over any payload text (not necessarily JSON), signed with `key`.
fn hs256_token(payload: &str, key: &str) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use hmac::{KeyInit, Mac};
    let input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#), URL_SAFE_NO_PAD.encode(payload));
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

/// Whatever a callback's body (arbitrary, or correctly signed so that the reading behind the
/// check is reached), every provider answers a callback, a trigger or a refusal: never a panic.
#[test]
fn no_callback_makes_a_provider_panic() {
    use super::{CallbackRequest, ProviderConfig};
    use crate::domain::Provider;
    let read = |provider, keys| ProviderConfig::read(provider, keys).expect("valid settings");
    let accounts = [
        read(Provider::Leanx, serde_json::json!({"auth_token": "t", "hash_key": "k"})),
        read(Provider::Leanx, serde_json::json!({"auth_token": "t"})),
        read(Provider::Luxtak, serde_json::json!({"app_id": "a", "app_key": "k"})),
        read(
            Provider::Ibanera,
            serde_json::json!({"username": "u", "password": "p", "totp_secret": "JBSWY3DPEHPK3PXP"}),
        ),
        read(Provider::Yedpay, serde_json::json!({"access_token": "t", "company_id": "c"})),
    ];
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(200);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let outcome = runner.run(&answer(), |text| {
        let token = hs256_token(&text, "k");
        let luxtak_signature = super::luxtak::callback::expected_signature(text.as_bytes(), "k").unwrap_or_default();
        let bodies = [text.clone(), serde_json::json!({ "data": token }).to_string(), format!(r#"{{"data":{text}}}"#)];
        for body in &bodies {
            for signature in ["0", luxtak_signature.as_str()] {
                let mut headers = reqwest::header::HeaderMap::new();
                if let Ok(value) = reqwest::header::HeaderValue::from_str(signature) {
                    headers.insert(reqwest::header::AUTHORIZATION, value);
                }
                let request = CallbackRequest {
                    body: body.as_bytes(),
                    headers: &headers,
                    now: chrono::Utc::now(),
                    utc_offset: chrono::FixedOffset::east_opt(8 * 3600).expect("a valid offset"),
                };
                for account in &accounts {
                    let _ = account.verify_callback(&request);
                }
            }
        }
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}
