use std::sync::Arc;
use std::time::Duration;

use wiremock::matchers::{method, path, query_param};
use wiremock::{Match, Mock, MockServer, Request, ResponseTemplate};

use super::*;
use crate::providers::UpstreamErrorKind;
use crate::providers::test_support::account;

const SECRET: &str = "JBSWY3DPEHPK3PXP";
const TOKEN: &str = "eyJ-test-access-token";

/// Whether `code` is the TOTP of the test secret now (±1 step, as servers allow for skew).
fn valid_otp(code: &str) -> bool {
    let totp = totp::generator(&SecretString::from(SECRET)).unwrap();
    totp::accepts(&totp, code, chrono::Utc::now().timestamp() as u64, 1)
}

/// Checks a private call: the Bearer token and a valid TOTP in `otp`.
struct Authorized;

impl Match for Authorized {
    fn matches(&self, request: &Request) -> bool {
        let header =
            |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        header("authorization") == format!("Bearer {TOKEN}") && valid_otp(&header("otp"))
    }
}

/// Checks the login body: the credentials and a valid TOTP.
struct LoginBody;

impl Match for LoginBody {
    fn matches(&self, request: &Request) -> bool {
        let Ok(body) = serde_json::from_slice::<serde_json::Value>(&request.body) else { return false };
        body["username"] == "treasury" && body["password"] == "pa55" && body["otp"].as_str().is_some_and(valid_otp)
    }
}

fn login_ok(expires_in: u64) -> ResponseTemplate {
    let body = format!(
        r#"{{"id":0,"details":{{"accessToken":"{TOKEN}","expiresIn":{expires_in},"refreshToken":"r","refreshTokenExpiresIn":7200}},"status":"1","errors":[]}}"#
    );
    ResponseTemplate::new(200).set_body_raw(body, "application/json")
}

fn page(items: &str, number: u32, pages: u32) -> ResponseTemplate {
    let body = format!(
        r#"{{"id":0,"details":[{items}],"pageSize":2,"pageNumber":{number},"numberOfPages":{pages},"status":"1","errors":[]}}"#
    );
    ResponseTemplate::new(200).set_body_raw(body, "application/json")
}

const PAGE_1: &str = r#"{"id":1000,"asset":"USD","totalBalance":1500.00,"availableBalance":1250.50,"pendingBalance":249.50,"bSuppressed":false},
    {"id":1001,"asset":"USDC","totalBalance":1520.12345678,"availableBalance":1520.12345678,"pendingBalance":0,"bSuppressed":false}"#;
const PAGE_2: &str = r#"{"id":1002,"asset":"EUR","totalBalance":90071992547409.93,"availableBalance":90071992547409.93,"pendingBalance":0.00,"bSuppressed":true}"#;

fn client(server: &MockServer) -> IbaneraClient {
    let fields = format!(
        "username = \"treasury\"\npassword = \"pa55\"\ntotp_secret = \"{SECRET}\"\npage_size = 2\ntimeout = \"300ms\""
    );
    {
        let (settings, account) = account::<IbaneraSettings>(&server.uri(), &fields);
        IbaneraClient::new(&settings, account)
    }
}

async fn mount_login(server: &MockServer, response: ResponseTemplate) {
    Mock::given(method("POST")).and(path(LOGIN_PATH)).and(LoginBody).respond_with(response).mount(server).await;
}

async fn mount_pages(server: &MockServer) {
    for (n, items) in [("1", PAGE_1), ("2", PAGE_2)] {
        Mock::given(method("GET"))
            .and(path(BALANCES_PATH))
            .and(query_param("pageNumber", n))
            .and(query_param("pageSize", "2"))
            .and(Authorized)
            .respond_with(page(items, n.parse().unwrap(), 2))
            .mount(server)
            .await;
    }
}

async fn logins(server: &MockServer) -> usize {
    server.received_requests().await.unwrap().iter().filter(|r| r.url.path() == LOGIN_PATH).count()
}

#[tokio::test]
async fn logs_in_with_a_totp_and_pages_through_exact_balances() {
    let server = MockServer::start().await;
    mount_login(&server, login_ok(3600)).await;
    mount_pages(&server).await;
    let fetch = client(&server).fetch_balances().await.unwrap();
    let show: Vec<(String, String, String, String, String, bool)> = fetch
        .entries
        .iter()
        .map(|e| {
            let d = |v: Option<rust_decimal::Decimal>| v.map(|d| d.to_string()).unwrap_or_default();
            (e.wallet.clone(), e.currency.to_string(), d(e.available), d(e.pending), d(e.total), e.blocked)
        })
        .collect();
    assert_eq!(show[0], ("1000".into(), "USD".into(), "1250.50".into(), "249.50".into(), "1500.00".into(), false));
    assert_eq!(show[1].2, "1520.12345678", "crypto keeps 8 decimals");
    assert_eq!(
        show[2],
        ("1002".into(), "EUR".into(), "90071992547409.93".into(), "0.00".into(), "90071992547409.93".into(), true)
    );
    assert!(fetch.entries.iter().all(|e| e.reserved.is_none()));
    assert_eq!(fetch.raw.as_array().unwrap().len(), 2, "both pages, never the login answer");
    // The raw pages keep the numbers as sent (f64 would write …94, 1500.0 and 0.0).
    assert_eq!(fetch.raw[1]["details"][0]["totalBalance"].as_number(), Some("90071992547409.93"));
    assert_eq!(fetch.raw[1]["details"][0]["pendingBalance"].as_number(), Some("0.00"));
    assert_eq!(fetch.raw[0]["details"][0]["totalBalance"].as_number(), Some("1500.00"));
    let text = fetch.raw.to_string();
    assert!(text.contains(r#""availableBalance":90071992547409.93,"pendingBalance":0.00,"#), "{text}");
    assert!(!fetch.raw.to_string().contains(TOKEN));
}

#[tokio::test]
async fn the_token_is_reused_until_it_expires_then_exactly_one_new_login() {
    let server = MockServer::start().await;
    mount_login(&server, login_ok(120)).await;
    mount_pages(&server).await;
    let c = client(&server);
    c.fetch_balances().await.unwrap();
    c.fetch_balances().await.unwrap();
    assert_eq!(logins(&server).await, 1, "the cached token serves both fetches");
    // The token's lifetime passes (injected: its expiry moves into the past).
    c.session.lock().await.token.as_mut().unwrap().1 = Instant::now() - Duration::from_secs(1);
    c.fetch_balances().await.unwrap();
    c.fetch_balances().await.unwrap();
    assert_eq!(logins(&server).await, 2, "one new login after expiry");
}

#[tokio::test]
async fn a_token_lifetime_beyond_any_clock_is_held_to_a_day() {
    let server = MockServer::start().await;
    mount_login(&server, login_ok(u64::MAX)).await;
    mount_pages(&server).await;
    let c = client(&server);
    c.fetch_balances().await.expect("a huge expiresIn is a long-lived token, not a panic");
    c.fetch_balances().await.unwrap();
    assert_eq!(logins(&server).await, 1, "the token is reused");
    let expires = c.session.lock().await.token.as_ref().unwrap().1;
    assert!(expires <= Instant::now() + MAX_TOKEN_LIFETIME, "renewed within a day");
}

#[tokio::test]
async fn a_refused_cached_token_leads_to_one_new_login_and_one_retry() {
    let server = MockServer::start().await;
    mount_login(&server, login_ok(3600)).await;
    mount_pages(&server).await;
    let c = client(&server);
    c.fetch_balances().await.unwrap();
    // The provider drops the token before its announced expiry.
    Mock::given(method("GET"))
        .and(path(BALANCES_PATH))
        .respond_with(ResponseTemplate::new(401))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    c.fetch_balances().await.unwrap();
    assert_eq!(logins(&server).await, 2);
}

/// A fixed time in the middle of a TOTP step.
const NOW: i64 = 1_700_000_015;

fn at(server: &MockServer, unix: i64) -> (IbaneraClient, Arc<crate::clock::ManualClock>) {
    let clock = Arc::new(crate::clock::ManualClock::new(chrono::DateTime::from_timestamp(unix, 0).unwrap()));
    let mut c = client(server);
    c.clock = clock.clone();
    (c, clock)
}

fn code(step: u64) -> String {
    totp::code_for_step(&totp::generator(&SecretString::from(SECRET)).unwrap(), step)
}

/// A request carrying the code of one TOTP step, in the `otp` header or the login body.
struct OtpOf(u64);

impl Match for OtpOf {
    fn matches(&self, request: &Request) -> bool {
        let header = request.headers.get("otp").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = serde_json::from_slice::<serde_json::Value>(&request.body).ok();
        let login = body.as_ref().and_then(|b| b["otp"].as_str()).map(str::to_owned);
        header.or(login) == Some(code(self.0))
    }
}

async fn data_call_otps(server: &MockServer) -> Vec<String> {
    let requests = server.received_requests().await.unwrap();
    let calls = requests.iter().filter(|r| r.url.path() == BALANCES_PATH);
    calls.map(|r| r.headers.get("otp").unwrap().to_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn a_call_refused_right_after_a_login_is_retried_with_the_next_steps_code_and_no_new_login() {
    let server = MockServer::start().await;
    let step = totp::step_at(NOW as u64);
    Mock::given(method("POST"))
        .and(path(LOGIN_PATH))
        .and(OtpOf(step))
        .respond_with(login_ok(3600))
        .mount(&server)
        .await;
    // A server that refuses a code used twice: the login's code is refused on the data call.
    Mock::given(method("GET"))
        .and(path(BALANCES_PATH))
        .and(OtpOf(step))
        .respond_with(ResponseTemplate::new(401))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(BALANCES_PATH))
        .and(OtpOf(step + 1))
        .respond_with(page(PAGE_2, 1, 1))
        .mount(&server)
        .await;
    let (c, _) = at(&server, NOW);
    let fetch = c.fetch_balances().await.unwrap();
    assert_eq!(fetch.entries.len(), 1);
    assert_eq!(logins(&server).await, 1, "a second login would reuse the refused code");
    assert_eq!(data_call_otps(&server).await, [code(step), code(step + 1)]);
}

#[tokio::test]
async fn after_a_new_login_for_a_refused_cached_token_the_retry_uses_the_next_steps_code() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).and(path(LOGIN_PATH)).respond_with(login_ok(3600)).mount(&server).await;
    let first = totp::step_at(NOW as u64);
    Mock::given(method("GET"))
        .and(path(BALANCES_PATH))
        .and(OtpOf(first))
        .respond_with(page(PAGE_2, 1, 1))
        .mount(&server)
        .await;
    let (c, clock) = at(&server, NOW);
    c.fetch_balances().await.unwrap();
    clock.advance(Duration::from_secs(600));
    let later = first + 20;
    // The cached token is refused; the new login takes the current step's code.
    Mock::given(method("GET"))
        .and(path(BALANCES_PATH))
        .and(OtpOf(later))
        .respond_with(ResponseTemplate::new(401))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(BALANCES_PATH))
        .and(OtpOf(later + 1))
        .respond_with(page(PAGE_2, 1, 1))
        .mount(&server)
        .await;
    c.fetch_balances().await.unwrap();
    assert_eq!(logins(&server).await, 2);
    assert_eq!(data_call_otps(&server).await, [code(first), code(later), code(later + 1)]);
}

#[tokio::test]
async fn a_failed_login_is_not_retried_during_the_cooldown() {
    let server = MockServer::start().await;
    let refused = r#"{"id":0,"details":null,"status":"0","errors":[{"fieldName":"","messageCode":"Username_Or_Password_Incorrect"}]}"#;
    Mock::given(method("POST"))
        .and(path(LOGIN_PATH))
        .respond_with(ResponseTemplate::new(400).set_body_raw(refused, "application/json"))
        .mount(&server)
        .await;
    let c = client(&server);
    let e = c.fetch_balances().await.unwrap_err();
    assert_eq!(
        (e.kind, e.provider_code.as_deref()),
        (UpstreamErrorKind::AuthFailed, Some("Username_Or_Password_Incorrect"))
    );
    let again = c.fetch_balances().await.unwrap_err();
    assert_eq!(again.kind, UpstreamErrorKind::AuthFailed);
    assert!(again.message.contains("no new login for"), "{}", again.message);
    assert_eq!(server.received_requests().await.unwrap().len(), 1, "no HTTP call during the cool-down");
    // The cool-down passes (injected).
    c.session.lock().await.no_login_until.as_mut().unwrap().0 = Instant::now() - Duration::from_secs(1);
    c.fetch_balances().await.unwrap_err();
    assert_eq!(logins(&server).await, 2, "one login attempt after the cool-down");
}

#[tokio::test]
async fn transient_failures_and_bad_bodies_are_classified() {
    let seconds = |s| Some(Duration::from_secs(s));
    for (response, kind, retry_after) in [
        (ResponseTemplate::new(429).insert_header("retry-after", "7"), UpstreamErrorKind::RateLimited, seconds(7)),
        (ResponseTemplate::new(503).insert_header("retry-after", "3"), UpstreamErrorKind::Unavailable, seconds(3)),
        (
            ResponseTemplate::new(200).set_body_raw("<html>down</html>", "text/html"),
            UpstreamErrorKind::InvalidResponse,
            None,
        ),
        (
            ResponseTemplate::new(200).set_body_raw(r#"{"id":0,"details":[{"id":1,"as"#, "application/json"),
            UpstreamErrorKind::InvalidResponse,
            None,
        ),
        (page(PAGE_2, 1, 1).set_delay(Duration::from_secs(2)), UpstreamErrorKind::Timeout, None),
    ] {
        let server = MockServer::start().await;
        mount_login(&server, login_ok(3600)).await;
        Mock::given(method("GET")).and(path(BALANCES_PATH)).respond_with(response).mount(&server).await;
        let e = client(&server).fetch_balances().await.unwrap_err();
        assert_eq!((e.kind, e.retry_after), (kind, retry_after));
    }
    let server = MockServer::start().await;
    mount_login(&server, ResponseTemplate::new(503)).await;
    let e = client(&server).fetch_balances().await.unwrap_err();
    assert_eq!(e.kind, UpstreamErrorKind::Unavailable, "a login that fails transiently starts no cool-down");
    client(&server).fetch_balances().await.unwrap_err();
    assert_eq!(logins(&server).await, 2);
}

#[tokio::test]
async fn payout_lookup_is_reported_unsupported_without_a_call() {
    let server = MockServer::start().await;
    let c = client(&server);
    let registered = crate::providers::registration(crate::domain::Provider::Ibanera).expect("registered");
    assert!(!registered.capabilities.payouts);
    assert!(c.lookup_payout("42").await.is_err());
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_401_or_403_without_the_envelope_is_an_auth_failure() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(LOGIN_PATH))
        .respond_with(ResponseTemplate::new(401).set_body_raw("Unauthorized", "text/plain"))
        .mount(&server)
        .await;
    let e = client(&server).fetch_balances().await.unwrap_err();
    assert_eq!((e.kind, e.upstream_status), (UpstreamErrorKind::AuthFailed, Some(401)), "a refused login");

    let server = MockServer::start().await;
    mount_login(&server, login_ok(3600)).await;
    Mock::given(method("GET"))
        .and(path(BALANCES_PATH))
        .respond_with(ResponseTemplate::new(403).set_body_raw("<html>Forbidden</html>", "text/html"))
        .mount(&server)
        .await;
    let e = client(&server).fetch_balances().await.unwrap_err();
    assert_eq!((e.kind, e.upstream_status), (UpstreamErrorKind::AuthFailed, Some(403)), "a refused data call");
}

#[tokio::test]
async fn more_pages_than_tally_reads_is_an_error_not_a_partial_success() {
    let server = MockServer::start().await;
    mount_login(&server, login_ok(3600)).await;
    Mock::given(method("GET"))
        .and(path(BALANCES_PATH))
        .respond_with(page(PAGE_1, 1, MAX_PAGES + 1))
        .mount(&server)
        .await;
    let e = client(&server).fetch_balances().await.unwrap_err();
    assert_eq!(e.kind, UpstreamErrorKind::InvalidResponse);
    assert!(e.message.contains("101 pages") && e.message.contains("page_size"), "{}", e.message);
    let pages = server.received_requests().await.unwrap().iter().filter(|r| r.url.path() == BALANCES_PATH).count();
    assert_eq!(pages, 1, "known from the first page");
}

/// Ibanera's row of the conformance suite: the login is its prelude; it has no payouts.
pub(crate) fn conformance() -> crate::providers::conformance::Case {
    crate::providers::conformance::Case {
        provider: crate::domain::Provider::Ibanera,
        settings: format!("username = \"treasury\"\npassword = \"pa55\"\ntotp_secret = \"{SECRET}\"\npage_size = 2"),
        balance_path: BALANCES_PATH,
        balance_example: format!(
            r#"{{"id":0,"details":[{PAGE_1}],"pageSize":2,"pageNumber":1,"numberOfPages":1,"status":"1","errors":[]}}"#
        ),
        figures: &["1000 USD 1250.50 249.50 - 1500.00 false", "1001 USDC 1520.12345678 0 - 1520.12345678 false"],
        authorized: |request| {
            if request.url.path() == LOGIN_PATH { LoginBody.matches(request) } else { Authorized.matches(request) }
        },
        prelude: Some(|server| Box::pin(mount_login(server, login_ok(3600)))),
        payout: None,
    }
}

/// An unsigned callback (PROVIDERS.md §3.5) is only a trigger, whatever it says.
#[test]
fn a_callback_only_triggers_a_balance_refresh() {
    use crate::providers::{Callback, CallbackAck, CallbackRequest, ProviderConfig, Trigger};
    let config = ProviderConfig::read(
        crate::domain::Provider::Ibanera,
        serde_json::json!({"username": "u", "password": "p", "totp_secret": SECRET}),
    )
    .unwrap();
    let headers = reqwest::header::HeaderMap::new();
    for body in
        [&br#"{"Id":"9b2c","Type":"TRANSACTION_STATUS_UPDATED","Data":{"Id":1,"bCompleted":true}}"#[..], b"", b"\xff"]
    {
        let request = CallbackRequest {
            body,
            headers: &headers,
            now: chrono::Utc::now(),
            utc_offset: chrono::FixedOffset::east_opt(0).unwrap(),
        };
        assert_eq!(config.verify_callback(&request), Ok(Callback::Trigger(Trigger::Balances)));
    }
    assert_eq!(config.callback_ack(), CallbackAck::Json);
}
