//! The Ibanera emulator: login with username, password and a TOTP; tokens that expire; a valid
//! `otp` on every private call; lock-out after repeated failed logins; paged balances.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use secrecy::SecretString;
use tokio::time::Instant;

use super::data::ibanera_accounts;
use super::{Emulated, Shared, credentials, json};
use crate::domain::Provider;
use crate::providers::ibanera::totp;
use crate::sync::MutexExt;

/// Failed logins in a row that lock the account (the docs say "too many"; 5 is assumed).
const LOCK_AFTER: u32 = 5;
const LOCK_FOR: std::time::Duration = std::time::Duration::from_secs(600);

/// This emulator's registration (see [`super::EMULATORS`]).
pub(super) const EMULATED: Emulated =
    Emulated { provider: Provider::Ibanera, routes, too_many_requests, demo_accounts, how_to_call };

fn demo_accounts(base_url: &url::Url) -> String {
    format!(
        "[[accounts]]\nid = \"ibanera-treasury\"\nprovider = \"ibanera\"\nbase_url = \"{base_url}\"\nusername = \"{}\"\npassword = \"{}\"\ntotp_secret = \"{}\"\npage_size = 2\n",
        credentials::IBANERA_USERNAME,
        credentials::IBANERA_PASSWORD,
        credentials::IBANERA_TOTP_SECRET
    )
}

fn how_to_call() -> String {
    format!(
        "username: {}  password: {}  TOTP secret (base32): {}",
        credentials::IBANERA_USERNAME,
        credentials::IBANERA_PASSWORD,
        credentials::IBANERA_TOTP_SECRET
    )
}

fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v1/public/auth/login", post(login))
        .route("/api/v1/customer/accounts/balances", get(balances))
}

fn refused(status: StatusCode, code: &str) -> Response {
    json(
        status,
        format!(r#"{{"id":0,"details":null,"status":"0","errors":[{{"fieldName":"","messageCode":"{code}"}}]}}"#),
    )
}

/// Ibanera documents no rate limit (PROVIDERS.md §3.6): its common error envelope over HTTP 429,
/// with an assumed message code.
fn too_many_requests() -> Response {
    refused(StatusCode::TOO_MANY_REQUESTS, "Too_Many_Requests")
}

/// The current TOTP step ±1, as servers allow for clock skew.
fn otp_ok(code: &str) -> bool {
    let generator =
        totp::generator(&SecretString::from(credentials::IBANERA_TOTP_SECRET)).expect("the demo secret is base32");
    totp::accepts(&generator, code, chrono::Utc::now().timestamp() as u64, 1)
}

#[derive(serde::Deserialize)]
struct Login {
    username: Option<String>,
    password: Option<String>,
    otp: Option<String>,
}

async fn login(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let Ok(login) = serde_json::from_slice::<Login>(&body) else { return refused(StatusCode::BAD_REQUEST, "Required") };
    let mut auth = shared.ibanera.locked();
    if auth.locked_until.is_some_and(|until| Instant::now() < until) {
        return refused(StatusCode::BAD_REQUEST, "Account_Locked");
    }
    let ok = login.username.as_deref() == Some(credentials::IBANERA_USERNAME)
        && login.password.as_deref() == Some(credentials::IBANERA_PASSWORD)
        && login.otp.as_deref().is_some_and(otp_ok);
    if !ok {
        auth.failures += 1;
        if auth.failures >= LOCK_AFTER {
            auth.locked_until = Some(Instant::now() + LOCK_FOR);
            return refused(StatusCode::BAD_REQUEST, "Account_Locked");
        }
        return refused(StatusCode::BAD_REQUEST, "Username_Or_Password_Incorrect");
    }
    auth.failures = 0;
    let token = format!("eyJemu.{:032x}", rand::random::<u128>());
    let lifetime = shared.options.ibanera_token_lifetime;
    auth.tokens.insert(token.clone(), Instant::now() + lifetime);
    json(
        StatusCode::OK,
        format!(
            r#"{{"id":0,"details":{{"accessToken":"{token}","expiresIn":{},"refreshToken":"r-{token}","refreshTokenExpiresIn":{}}},"status":"1","errors":[]}}"#,
            lifetime.as_secs(),
            lifetime.as_secs() * 2
        ),
    )
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Paging {
    page_number: Option<usize>,
    page_size: Option<usize>,
}

async fn balances(State(shared): State<Arc<Shared>>, headers: HeaderMap, Query(paging): Query<Paging>) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let token = header("authorization").and_then(|v| v.strip_prefix("Bearer "));
    let live = token.is_some_and(|t| {
        let auth = shared.ibanera.locked();
        auth.tokens.get(t).is_some_and(|expires| Instant::now() < *expires)
    });
    if !live {
        return json(StatusCode::UNAUTHORIZED, String::new());
    }
    // Not in the docs' error list: a bad one-time password is assumed to be refused like this.
    if !header("otp").is_some_and(otp_ok) {
        return refused(StatusCode::BAD_REQUEST, "Invalid_Otp");
    }
    let accounts = ibanera_accounts(shared.minute());
    let (number, size) = match (paging.page_number, paging.page_size) {
        (None, None) => (1, accounts.len().max(1)),
        (n, s) => (n.unwrap_or(1).max(1), s.unwrap_or(10).max(1)),
    };
    let pages = accounts.len().div_ceil(size);
    let items: Vec<String> = accounts
        .iter()
        .skip((number - 1) * size)
        .take(size)
        .map(|(id, asset, total, available, pending, suppressed)| {
            format!(
                r#"{{"id":{id},"asset":"{asset}","totalBalance":{total},"availableBalance":{available},"pendingBalance":{pending},"bSuppressed":{suppressed}}}"#
            )
        })
        .collect();
    json(
        StatusCode::OK,
        format!(
            r#"{{"id":0,"details":[{}],"pageSize":{size},"pageNumber":{number},"numberOfPages":{pages},"status":"1","errors":[]}}"#,
            items.join(",")
        ),
    )
}
