//! `GET /balances` and `GET /balances/history`.

use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::{ApiError, ErrorCode, Problem, ProblemAccount};
use super::query::Params;
use crate::domain::{AccountId, Currency, Provider};
use crate::service::balances::{BalancesOutcome, BodyKey, Selection, SelectionError};
use crate::service::report::BalancesReport;
use crate::store::{HistoryPoint, HistoryQuery};

/// Balances of every selected account, wallet and currency, with per-currency totals and the
/// freshness of every figure.
#[utoipa::path(
    get,
    path = "/balances",
    tag = "balances",
    params(
        ("account" = Option<Vec<String>>, Query, description = "Only these accounts (repeatable or comma-separated).", explode = true),
        ("provider" = Option<Vec<Provider>>, Query, description = "Only accounts of these providers (repeatable or comma-separated).", explode = true),
        ("currency" = Option<Vec<String>>, Query, description = "Only entries in these currencies (repeatable or comma-separated).", explode = true),
        ("max_age" = Option<u32>, Query, description = "Accept a cached figure at most this many seconds old; 0 forces a live fetch.", minimum = 0),
        ("include" = Option<String>, Query, description = "`raw` adds each account's last raw provider payload."),
        ("If-None-Match" = Option<String>, Header, description = "The `ETag` of a previous answer: 304 when nothing changed."),
    ),
    responses(
        (status = 200, description = "At least one account has figures to serve; failing accounts are reported in `accounts`.", body = BalancesReport,
            headers(("ETag" = String, description = "Tag over the content (not `generated_at` or ages)."),
                    ("Cache-Control" = String, description = "`private, max-age=N`: seconds until the first figure leaves its freshness bound."))),
        (status = 304, description = "Not modified since the `If-None-Match` tag."),
        (status = 400, description = "Bad query: `unknown_parameter`, `invalid_query`, `unknown_account`, `unknown_provider`, `invalid_max_age`, `invalid_currency`, `invalid_include`.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown API key: `unauthorized`.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Nothing can be served (`nothing_to_serve`) or tally is overloaded (`overloaded`); see `Retry-After`.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again."))),
    ),
    security(("bearer" = []), ()),
)]
pub async fn get_balances(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    // The request itself rather than extractors that copy its query and headers.
    let selection = selection(request.uri().query())?;
    let outcome = state.service.balances(&selection).await.map_err(|e| match e {
        SelectionError::UnknownAccount(_) => ApiError::new(ErrorCode::UnknownAccount, e.to_string()),
    })?;
    if !outcome.servable {
        return Err(ApiError::new(ErrorCode::NothingToServe, "no selected account has figures to serve")
            .retry_after(outcome.retry_after.as_secs())
            .with_accounts(
                outcome
                    .report()
                    .accounts
                    .into_iter()
                    .map(|a| ProblemAccount { account: a.account, provider: a.provider, error: a.error })
                    .collect(),
            ));
    }
    let (etag, body) = state.balances_body.answer(&outcome);
    let cache_control = bytes::Bytes::from(format!("private, max-age={}", outcome.fresh_for.as_secs()));
    let mut response = if if_none_match(request.headers(), etag.to_str().unwrap_or_default()) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
    };
    let h = response.headers_mut();
    h.insert(header::ETAG, etag);
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_maybe_shared(cache_control).expect("ASCII digits are a valid header value"),
    );
    Ok(response)
}

fn selection(query: Option<&str>) -> Result<Selection, ApiError> {
    let params = Params::parse(query, &["account", "provider", "currency", "max_age", "include"])?;
    let accounts = params.list("account").into_iter().map(|a| {
        a.parse::<AccountId>()
            .map_err(|_| ApiError::new(ErrorCode::UnknownAccount, format!("no account `{a}` is configured")))
    });
    let include_raw = match params.single("include")? {
        None => false,
        Some("raw") => true,
        Some(other) => {
            return Err(ApiError::new(
                ErrorCode::InvalidInclude,
                format!("`include` accepts only `raw`, not `{other}`"),
            ));
        }
    };
    Ok(Selection {
        accounts: accounts.collect::<Result<_, _>>()?,
        providers: params.parsed("provider", ErrorCode::UnknownProvider, |p| p.parse::<Provider>().ok())?,
        currencies: params.parsed("currency", ErrorCode::InvalidCurrency, |c| c.parse::<Currency>().ok())?,
        max_age: params.max_age()?,
        include_raw,
    })
}

/// Recent `/balances` answers by body key, so that dashboards polling the same figures are
/// answered from bytes rather than by rebuilding and re-serializing the report. Answers with
/// one `body_key` differ only in `generated_at`, which leads the body with a fixed width and is
/// spliced in fresh; the spliced body is shared by every answer within one millisecond.
/// Several dashboards with different filters each keep theirs; past [`BODY_CACHE_ENTRIES`]
/// answers or [`BODY_CACHE_BYTES`], the least recently used make room.
#[derive(Default)]
pub struct BodyCache(std::sync::Mutex<Bodies<BodyKey>>);

struct Bodies<K> {
    by_key: std::collections::HashMap<K, CachedBody>,
    bytes: usize,
    /// A counter of uses: the entry with the smallest `used` was used least recently.
    uses: u64,
}

struct CachedBody {
    etag: HeaderValue,
    /// The body after the timestamp.
    tail: bytes::Bytes,
    /// The whole body for one `generated_at`.
    spliced: (chrono::DateTime<chrono::Utc>, bytes::Bytes),
    used: u64,
}

const BODY_CACHE_ENTRIES: usize = 64;
const BODY_CACHE_BYTES: usize = 16 << 20;

/// `{"generated_at":"` and the width of a timestamp with milliseconds.
const HEAD: &[u8] = br#"{"generated_at":""#;
const STAMP: usize = "2026-11-22T08:00:00.123Z".len();

impl BodyCache {
    /// The `ETag` and the body of the answer to `outcome`. Serializing and splicing happen
    /// outside the lock: a report with raw payloads can be megabytes.
    fn answer(&self, outcome: &BalancesOutcome) -> (HeaderValue, bytes::Bytes) {
        let now = outcome.generated_at();
        let cached = {
            let mut bodies = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            bodies.uses += 1;
            let uses = bodies.uses;
            bodies.by_key.get_mut(&outcome.body_key).map(|hit| {
                hit.used = uses;
                let spliced = (hit.spliced.0 == now).then(|| hit.spliced.1.clone());
                (hit.etag.clone(), hit.tail.clone(), spliced)
            })
        };
        match cached {
            Some((etag, _, Some(body))) => (etag, body),
            Some((etag, tail, None)) => {
                let body = splice(now, &tail);
                let mut bodies = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(hit) = bodies.by_key.get_mut(&outcome.body_key) {
                    hit.spliced = (now, body.clone());
                }
                (etag, body)
            }
            None => {
                let body = bytes::Bytes::from(serde_json::to_vec(&outcome.report()).expect("a report serializes"));
                debug_assert!(body.starts_with(HEAD));
                let etag = HeaderValue::from_maybe_shared(bytes::Bytes::from(outcome.etag()))
                    .expect("a quoted hex digest is a valid header value");
                let tail = body.slice(HEAD.len() + STAMP..);
                let mut bodies = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                bodies.keep(
                    outcome.body_key,
                    CachedBody { etag: etag.clone(), tail, spliced: (now, body.clone()), used: 0 },
                );
                (etag, body)
            }
        }
    }
}

impl<K> Default for Bodies<K> {
    fn default() -> Self {
        Self { by_key: std::collections::HashMap::new(), bytes: 0, uses: 0 }
    }
}

impl<K: std::hash::Hash + Eq + Copy> Bodies<K> {
    fn keep(&mut self, key: K, mut body: CachedBody) {
        let size = body.tail.len();
        if size > BODY_CACHE_BYTES / 4 {
            return;
        }
        if let Some(old) = self.by_key.remove(&key) {
            self.bytes -= old.tail.len();
        }
        while !self.by_key.is_empty()
            && (self.by_key.len() >= BODY_CACHE_ENTRIES || self.bytes + size > BODY_CACHE_BYTES)
        {
            let oldest = *self.by_key.iter().min_by_key(|(_, b)| b.used).map(|(k, _)| k).expect("not empty");
            let evicted = self.by_key.remove(&oldest).expect("a key just listed");
            self.bytes -= evicted.tail.len();
        }
        self.uses += 1;
        body.used = self.uses;
        self.bytes += size;
        self.by_key.insert(key, body);
    }
}

fn splice(now: chrono::DateTime<chrono::Utc>, tail: &[u8]) -> bytes::Bytes {
    let mut stamp = [0u8; STAMP];
    write_stamp(&mut stamp, now);
    let mut body = Vec::with_capacity(HEAD.len() + STAMP + tail.len());
    body.extend_from_slice(HEAD);
    body.extend_from_slice(&stamp);
    body.extend_from_slice(tail);
    bytes::Bytes::from(body)
}

/// `generated_at` as the report serializes it (RFC 3339, milliseconds, `Z`), without
/// allocating.
fn write_stamp(out: &mut [u8; STAMP], at: chrono::DateTime<chrono::Utc>) {
    use std::io::Write as _;
    let mut cursor = std::io::Cursor::new(&mut out[..]);
    write!(cursor, "{}", at.format("%Y-%m-%dT%H:%M:%S%.3fZ")).expect("a timestamp has a fixed width");
}

fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers.get_all(header::IF_NONE_MATCH).iter().filter_map(|v| v.to_str().ok()).any(|v| {
        v.split(',').map(str::trim).any(|tag| tag == "*" || tag == etag || tag.strip_prefix("W/") == Some(etag))
    })
}

/// The stored change points of balance figures over time, oldest first, for charts.
#[utoipa::path(
    get,
    path = "/balances/history",
    tag = "balances",
    params(
        ("account" = Option<String>, Query, description = "Only this account."),
        ("wallet" = Option<String>, Query, description = "Only this wallet."),
        ("currency" = Option<String>, Query, description = "Only this currency."),
        ("from" = Option<String>, Query, description = "RFC 3339 start: points still confirmed at or after this time.", format = DateTime),
        ("to" = Option<String>, Query, description = "RFC 3339 end: points first seen at or before this time.", format = DateTime),
        ("limit" = Option<u32>, Query, description = "At most this many points (1-10000, default 1000).", minimum = 1, maximum = 10000),
    ),
    responses(
        (status = 200, description = "Change points: a figure set valid from `first_seen_at`, confirmed unchanged until `last_confirmed_at`.", body = HistoryResponse),
        (status = 400, description = "Bad query: `unknown_parameter`, `invalid_query`, `unknown_account`, `invalid_currency`, `invalid_time`, `invalid_limit`.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown API key: `unauthorized`.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unreachable: `not_ready`.", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ()),
)]
pub async fn get_history(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<axum::Json<HistoryResponse>, ApiError> {
    let params = Params::parse(query.as_deref(), &["account", "wallet", "currency", "from", "to", "limit"])?;
    let account = match params.single("account")? {
        None => None,
        Some(a) => {
            let id = a.parse::<AccountId>().ok().filter(|id| state.service.account(id).is_some());
            Some(id.ok_or_else(|| ApiError::new(ErrorCode::UnknownAccount, format!("no account `{a}` is configured")))?)
        }
    };
    let currency = params
        .single("currency")?
        .map(|c| c.parse::<Currency>().map_err(|e| ApiError::new(ErrorCode::InvalidCurrency, e.to_string())))
        .transpose()?;
    let limit = match params.single("limit")? {
        None => 1000,
        Some(l) => l.parse::<u32>().ok().filter(|l| (1..=10_000).contains(l)).ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidLimit, format!("`limit` must be a whole number from 1 to 10000, not `{l}`"))
        })?,
    };
    let query = HistoryQuery {
        account,
        wallet: params.single("wallet")?.map(str::to_owned),
        currency,
        from: params.time("from")?,
        to: params.time("to")?,
        limit,
    };
    let points = state.service.store().balance_history(&query).await.map_err(|e| {
        tracing::error!(error = %e, "balance history query failed");
        ApiError::new(ErrorCode::NotReady, "the store is unreachable").retry_after(5)
    })?;
    Ok(axum::Json(HistoryResponse { points: points.into_iter().map(HistoryLine::from).collect() }))
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct HistoryResponse {
    pub points: Vec<HistoryLine>,
}

/// One change point.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct HistoryLine {
    #[schema(value_type = String, example = "leanx-main")]
    pub account: AccountId,
    pub provider: Provider,
    #[schema(example = "prefund")]
    pub wallet: String,
    #[schema(value_type = String, example = "MYR")]
    pub currency: Currency,
    #[schema(value_type = Option<String>, example = "393.63", pattern = r"^-?\d+(\.\d+)?$")]
    pub available: Option<rust_decimal::Decimal>,
    #[schema(value_type = Option<String>, example = json!(null), pattern = r"^-?\d+(\.\d+)?$")]
    pub pending: Option<rust_decimal::Decimal>,
    #[schema(value_type = Option<String>, example = json!(null), pattern = r"^-?\d+(\.\d+)?$")]
    pub reserved: Option<rust_decimal::Decimal>,
    #[schema(value_type = Option<String>, example = "393.63", pattern = r"^-?\d+(\.\d+)?$")]
    pub total: Option<rust_decimal::Decimal>,
    pub blocked: bool,
    pub first_seen_at: chrono::DateTime<chrono::Utc>,
    pub last_confirmed_at: chrono::DateTime<chrono::Utc>,
}

impl From<HistoryPoint> for HistoryLine {
    fn from(p: HistoryPoint) -> Self {
        Self {
            account: p.account,
            provider: p.provider,
            wallet: p.entry.wallet,
            currency: p.entry.currency,
            available: p.entry.available,
            pending: p.entry.pending,
            reserved: p.entry.reserved,
            total: p.entry.total,
            blocked: p.entry.blocked,
            first_seen_at: p.first_seen_at,
            last_confirmed_at: p.last_confirmed_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(size: usize) -> CachedBody {
        let at = chrono::DateTime::from_timestamp_millis(0).unwrap();
        CachedBody {
            etag: HeaderValue::from_static("\"t\""),
            tail: bytes::Bytes::from(vec![b' '; size]),
            spliced: (at, bytes::Bytes::new()),
            used: 0,
        }
    }

    #[test]
    fn the_body_cache_is_bounded_and_keeps_what_was_used_last() {
        let mut bodies = Bodies::<u32>::default();
        for key in 0..BODY_CACHE_ENTRIES as u32 {
            bodies.keep(key, body(10));
        }
        // Key 0 used again: it stays, and the next new key evicts key 1 instead.
        bodies.uses += 1;
        bodies.by_key.get_mut(&0).unwrap().used = bodies.uses;
        bodies.keep(1000, body(10));
        assert_eq!(bodies.by_key.len(), BODY_CACHE_ENTRIES);
        assert!(bodies.by_key.contains_key(&0) && !bodies.by_key.contains_key(&1));

        // Bytes are bounded too; a body over a quarter of the budget is not kept at all.
        bodies.keep(2000, body(BODY_CACHE_BYTES / 4));
        bodies.keep(2001, body(BODY_CACHE_BYTES / 4));
        bodies.keep(2002, body(BODY_CACHE_BYTES / 4));
        bodies.keep(2003, body(BODY_CACHE_BYTES / 4));
        assert!(bodies.bytes <= BODY_CACHE_BYTES);
        assert_eq!(bodies.bytes, bodies.by_key.values().map(|b| b.tail.len()).sum::<usize>());
        bodies.keep(3000, body(BODY_CACHE_BYTES / 4 + 1));
        assert!(!bodies.by_key.contains_key(&3000));
    }

    #[test]
    fn the_spliced_stamp_is_what_the_report_serializes() {
        for ms in [0, 1, 999, 1_764_000_000_000, 1_764_000_000_123, 4_102_444_799_999] {
            let at = chrono::DateTime::from_timestamp_millis(ms).unwrap();
            let mut stamp = [0u8; STAMP];
            write_stamp(&mut stamp, at);
            assert_eq!(std::str::from_utf8(&stamp).unwrap(), at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        }
    }
}
