//! The conformance suite: every provider's client held to one contract over real HTTP
//! (wiremock). Each registered provider states its cases in one [`Case`] (in its own
//! `tests.rs`, beside its documented examples), and the registry's line brings it into the
//! suite; the suite does the rest:
//! - the documented balance example read into exact decimals, figure by figure;
//! - every request carrying the provider's documented auth, checked as the provider would;
//! - naive upstream timestamps read in the provider's UTC offset (where it documents them);
//! - the error classes: a bare 401 or 403 is `auth_failed`, a 429 with `Retry-After` is
//!   `rate_limited` with the wait kept, a 5xx is `unavailable`, a cut-off body is
//!   `invalid_response`, and an answer slower than the account's timeout is `timeout`.
//!
//! Paging and each provider's own error codes stay in its own tests: they differ in kind.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use wiremock::matchers::path;
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use super::test_support::client_of;
use crate::domain::{BalanceEntry, PayoutLookup, Provider};
use crate::providers::{ProviderClient, UpstreamErrorKind};

/// Mounts what must answer before the call under test (a login).
pub type Prelude = for<'a> fn(&'a MockServer) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// One provider's cases.
pub struct Case {
    pub provider: Provider,
    /// The account's provider keys (TOML), with the credentials the fake checks.
    pub settings: String,
    /// The documented balance path, and its documented example answer.
    pub balance_path: &'static str,
    pub balance_example: String,
    /// The figures tally must read from the example, in order:
    /// `wallet currency available pending reserved total blocked` (`-` for a figure not reported).
    pub figures: &'static [&'static str],
    /// Whether a request carries the documented auth exactly (checked on every request).
    pub authorized: fn(&Request) -> bool,
    pub prelude: Option<Prelude>,
    pub payout: Option<PayoutCase>,
}

/// A payout lookup whose documented answer carries naive local times.
pub struct PayoutCase {
    pub path: &'static str,
    pub id: &'static str,
    pub example: String,
    /// The example's `created_at`, read in the provider's offset, in UTC (RFC 3339).
    pub created_at: &'static str,
}

/// One row per registered provider, so a new provider is in the suite from its first line.
fn cases() -> Vec<Case> {
    super::registry::conformance_cases()
}

/// The client of `case`'s account pointed at `server`, with a 300 ms timeout.
fn client(case: &Case, server: &MockServer) -> Arc<dyn ProviderClient> {
    client_of(case.provider, &server.uri(), &format!("timeout = \"300ms\"\n{}", case.settings))
}

/// A server with `case`'s prelude mounted and the balance path answering `response`.
async fn serving(case: &Case, response: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    if let Some(prelude) = case.prelude {
        prelude(&server).await;
    }
    Mock::given(path(case.balance_path)).respond_with(response).mount(&server).await;
    server
}

fn json(body: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(body.to_owned(), "application/json")
}

fn show(e: &BalanceEntry) -> String {
    let d = |v: Option<rust_decimal::Decimal>| v.map_or("-".to_owned(), |d| d.to_string());
    format!(
        "{} {} {} {} {} {} {}",
        e.wallet,
        e.currency,
        d(e.available),
        d(e.pending),
        d(e.reserved),
        d(e.total),
        e.blocked
    )
}

async fn assert_all_authorized(case: &Case, server: &MockServer) {
    let requests = server.received_requests().await.expect("wiremock records requests");
    assert!(!requests.is_empty(), "{}: no request reached the fake", case.provider);
    for request in &requests {
        assert!((case.authorized)(request), "{}: {} carries no documented auth", case.provider, request.url);
    }
}

#[tokio::test]
async fn every_provider_is_in_the_suite() {
    let covered: Vec<Provider> = cases().iter().map(|c| c.provider).collect();
    assert_eq!(covered, Provider::ALL);
}

#[tokio::test]
async fn the_documented_balance_example_reads_exactly_with_the_documented_auth() {
    for case in cases() {
        let server = serving(&case, json(&case.balance_example)).await;
        let fetch = client(&case, &server).fetch_balances().await.unwrap_or_else(|e| panic!("{}: {e}", case.provider));
        let figures: Vec<String> = fetch.entries.iter().map(show).collect();
        assert_eq!(figures, case.figures, "{}", case.provider);
        assert_all_authorized(&case, &server).await;
    }
}

#[tokio::test]
async fn naive_timestamps_are_read_in_the_providers_offset() {
    for case in cases() {
        let Some(payout) = &case.payout else { continue };
        let server = MockServer::start().await;
        Mock::given(path(payout.path)).respond_with(json(&payout.example)).mount(&server).await;
        let found = client(&case, &server).lookup_payout(payout.id).await;
        let Ok(PayoutLookup::Found(found)) = found else { panic!("{}: {found:?}", case.provider) };
        assert_eq!(found.created_at.map(|t| t.to_rfc3339()).as_deref(), Some(payout.created_at), "{}", case.provider);
        assert_all_authorized(&case, &server).await;
    }
}

#[tokio::test]
async fn error_classes_are_the_same_for_every_provider() {
    for case in cases() {
        let cut = &case.balance_example[..case.balance_example.len() / 2];
        let html = |status: u16, body: &str| ResponseTemplate::new(status).set_body_raw(body.to_owned(), "text/html");
        let classes = [
            (401, html(401, "<html>Unauthorized</html>"), UpstreamErrorKind::AuthFailed),
            (403, ResponseTemplate::new(403), UpstreamErrorKind::AuthFailed),
            (429, ResponseTemplate::new(429).insert_header("retry-after", "7"), UpstreamErrorKind::RateLimited),
            (503, html(503, "<html>down</html>"), UpstreamErrorKind::Unavailable),
            (200, json(cut), UpstreamErrorKind::InvalidResponse),
            (200, json(&case.balance_example).set_delay(Duration::from_secs(2)), UpstreamErrorKind::Timeout),
        ];
        for (status, response, kind) in classes {
            let server = serving(&case, response).await;
            let e = client(&case, &server).fetch_balances().await.expect_err("the fetch fails");
            assert_eq!(e.kind, kind, "{} answering {status}: {e}", case.provider);
            if kind == UpstreamErrorKind::RateLimited {
                assert_eq!(e.retry_after, Some(Duration::from_secs(7)), "{}: Retry-After is kept", case.provider);
            }
            if status != 200 {
                assert_eq!(e.upstream_status, Some(status), "{}: the status is kept", case.provider);
            }
        }
    }
}

/// The documented example with one more field, nested `depth` levels deep (about 2 bytes a
/// level): valid JSON that a recursive reader without a bound overflows its stack on.
fn deeply_nested(example: &str, depth: usize) -> String {
    let close = example.rfind('}').expect("an example is a JSON object");
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    format!("{}, \"extra\": {nested}}}", &example[..close])
}

#[tokio::test]
async fn a_hostile_answer_is_an_error_never_a_crash() {
    for case in cases() {
        for depth in [200, 5_000, 100_000] {
            let server = serving(&case, json(&deeply_nested(&case.balance_example, depth))).await;
            // A thread of the default test stack: an unbounded recursion overflows it and aborts.
            let outcome = client(&case, &server).fetch_balances().await;
            assert!(
                outcome.as_ref().is_err_and(|e| e.kind == UpstreamErrorKind::InvalidResponse),
                "{} nested {depth} deep: {:?}",
                case.provider,
                outcome.map(|f| f.entries.len())
            );
        }
        for status in [429, 503] {
            let huge = ResponseTemplate::new(status).insert_header("retry-after", u64::MAX.to_string().as_str());
            let server = serving(&case, huge).await;
            let e = client(&case, &server).fetch_balances().await.expect_err("the fetch fails");
            let wait = e.retry_after.expect("the wait is kept, bounded");
            assert_eq!(wait, crate::providers::MAX_RETRY_AFTER, "{} {status}: {e}", case.provider);
            assert!(std::time::Instant::now().checked_add(wait).is_some());
        }
    }
}
