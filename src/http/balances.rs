//! `GET /balances` and `GET /balances/history`.

use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::csv::{self, Cell, Format, Sheet};
use super::error::{ApiError, ErrorCode, Problem, ProblemAccount};
use super::query::Params;
use super::report::{AccountError, BalancesReport};
use crate::domain::{AccountId, Currency, Provider};
use crate::service::as_of::AsOfError;
use crate::service::balances::{BalancesOutcome, BodyKey, Selection};
use crate::store::{HistoryPoint, HistoryQuery, StoreError};

/// Balances of every selected account, wallet and currency, with per-currency totals and the
/// freshness of every figure.
#[utoipa::path(
    get,
    path = "/balances",
    tag = "balances",
    params(
        ("account" = Option<Vec<String>>, Query, description = "Only these accounts (repeatable or comma-separated; an empty value is refused with `invalid_query`).", explode = true),
        ("provider" = Option<Vec<Provider>>, Query, description = "Only accounts of these providers (repeatable or comma-separated; an empty value is refused with `invalid_query`).", explode = true),
        ("currency" = Option<Vec<String>>, Query, description = "Only entries in these currencies (repeatable or comma-separated; an empty value is refused with `invalid_query`).", explode = true),
        ("max_age" = Option<u32>, Query, description = "Accept a cached figure at most this many seconds old; 0 forces a live fetch.", minimum = 0),
        ("include" = Option<String>, Query, description = "`raw` adds each account's last raw provider payload (not with `as_of`: `invalid_include`)."),
        ("as_of" = Option<String>, Query, description = "RFC 3339 time, not in the future: the figures in force then, from the store alone (no upstream call; `source: store`; an account with nothing stored by then is `failed` with `no_data`). Not with `max_age` (`invalid_query`). A bad or future time is `invalid_as_of`.", format = DateTime),
        ("format" = Option<Format>, Query, description = "`csv` answers CSV (SPEC §10.3: RFC 4180, a header row, CRLF, no BOM, an empty cell for null, text cells starting with `=`, `+`, `-`, `@`, tab or CR prefixed with `'`); `json` (the default) JSON. Without it, `Accept: text/csv` asks for CSV. Anything else: `invalid_format`."),
        ("Accept" = Option<String>, Header, description = "`text/csv` (preferred over JSON) asks for CSV when `format` is not given."),
        ("If-None-Match" = Option<String>, Header, description = "The `ETag` of a previous answer: 304 when nothing changed."),
    ),
    responses(
        (status = 200, description = "At least one account has figures to serve (with `as_of`: always); failing accounts are reported in `accounts`. As CSV (`format=csv` or `Accept: text/csv`): one row per balance entry, columns `account,provider,wallet,currency,available,pending,reserved,total,blocked,fetched_at,age_seconds,stale`.",
            content((BalancesReport = "application/json"), (String = "text/csv", example = json!("account,provider,wallet,currency,available,pending,reserved,total,blocked,fetched_at,age_seconds,stale\r\nleanx-main,leanx,prefund,MYR,393.63,,,393.63,false,2026-11-22T07:59:58Z,2,false\r\n"))),
            headers(("ETag" = String, description = "Tag over the content (not `generated_at` or ages); the CSV answer has its own tag."),
                    ("Cache-Control" = String, description = "`private, max-age=N`: seconds until the first figure leaves its freshness bound (`private, no-cache` with `as_of`)."),
                    ("Content-Disposition" = String, description = "CSV only: `attachment; filename=\"tally-balances-<UTC date>.csv\"`."))),
        (status = 304, description = "Not modified since the `If-None-Match` tag."),
        (status = 400, description = "Bad query: `unknown_parameter`, `invalid_query` (an empty `account`, `provider` or `currency` among them, or `max_age` with `as_of`), `unknown_account`, `unknown_provider`, `invalid_max_age`, `invalid_currency`, `invalid_include`, `invalid_as_of`, `invalid_format`.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown API key: `unauthorized`.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Nothing can be served (`nothing_to_serve`), tally is overloaded (`overloaded`), or, with `as_of`, the store is unreachable (`not_ready`); see `Retry-After`.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again."))),
    ),
    security(("bearer" = []), ()),
)]
pub async fn get_balances(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    // The request itself rather than extractors that copy its query and headers.
    let params = Params::parse(
        request.uri().query(),
        &["account", "provider", "currency", "max_age", "include", "as_of", "format"],
    )?;
    let format = Format::of(&params, request.headers())?;
    let (selection, as_of) = selection(&params)?;
    if let Some(as_of) = as_of {
        return balances_as_of(&state, &selection, as_of, format, request.headers()).await;
    }
    let outcome = state.service.balances(&selection).await?;
    if !outcome.servable {
        return Err(ApiError::new(ErrorCode::NothingToServe, "no selected account has figures to serve")
            .retry_after(outcome.retry_after.as_secs())
            .with_accounts(
                outcome
                    .accounts()
                    .map(|a| ProblemAccount {
                        account: a.account.id().clone(),
                        provider: a.account.provider(),
                        error: a.failure.cloned().map(AccountError::from),
                    })
                    .collect(),
            ));
    }
    if format == Format::Csv {
        // Built from the outcome (the body cache holds JSON); a 304 builds nothing.
        let etag = csv::etag(&outcome.etag());
        let cache_control = format!("private, max-age={}", outcome.fresh_for.as_secs());
        let now = outcome.generated_at();
        return Ok(csv::answer(request.headers(), "balances", now, &etag, &cache_control, || {
            balances_csv(&BalancesReport::from(&outcome))
        }));
    }
    let (etag, body) = state.balances_body.answer(&outcome).await;
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

/// An `as_of` answer (SPEC §10.1): from the store alone, never from or into the body cache of
/// live answers; its `ETag` is a digest of its content (all of it but `generated_at`).
async fn balances_as_of(
    state: &AppState,
    selection: &Selection,
    as_of: chrono::DateTime<chrono::Utc>,
    format: Format,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if as_of > state.service.now() {
        return Err(ApiError::new(ErrorCode::InvalidAsOf, "`as_of` is in the future; the store holds only the past"));
    }
    let outcome = state.service.balances_as_of(selection, as_of).await.map_err(|e| match e {
        AsOfError::Selection(e) => ApiError::from(e),
        AsOfError::Store(StoreError::InvalidInput(why)) => {
            ApiError::new(ErrorCode::InvalidQuery, format!("the store cannot compare the query's values: {why}"))
        }
        AsOfError::Store(e) => {
            tracing::error!(error = %e, "as_of balances query failed");
            ApiError::new(ErrorCode::NotReady, "the store is unreachable").retry_after(5)
        }
    })?;
    let report = BalancesReport::from(&outcome);
    let etag = content_etag(&BalancesReport { generated_at: as_of, ..report.clone() });
    if format == Format::Csv {
        let etag = csv::etag(&etag);
        let now = outcome.generated_at;
        return Ok(csv::answer(headers, "balances", now, &etag, "private, no-cache", || balances_csv(&report)));
    }
    let body = serde_json::to_vec(&report).expect("a report serializes");
    Ok(tagged(headers, etag, "private, no-cache", "application/json", body))
}

/// A quoted digest of `content`'s JSON, for an `ETag`.
fn content_etag(content: &impl serde::Serialize) -> String {
    bytes_etag(&serde_json::to_vec(content).expect("a report serializes"))
}

/// `body` with its `ETag` and `Cache-Control`, or `304` when `If-None-Match` holds the tag.
pub(super) fn tagged(
    headers: &HeaderMap,
    etag: String,
    cache_control: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response {
    let mut response = if if_none_match(headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, HeaderValue::from_static(content_type))], body).into_response()
    };
    let h = response.headers_mut();
    h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("a quoted hex digest is a valid header value"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache_control));
    response
}

/// The CSV of a `/balances` report (SPEC §10.3).
fn balances_csv(report: &BalancesReport) -> Vec<u8> {
    let mut sheet = Sheet::new(&[
        "account",
        "provider",
        "wallet",
        "currency",
        "available",
        "pending",
        "reserved",
        "total",
        "blocked",
        "fetched_at",
        "age_seconds",
        "stale",
    ]);
    for l in &report.balances {
        sheet.row(&[
            Cell::Text(l.account.as_str()),
            Cell::Text(l.provider.as_str()),
            Cell::Text(&l.wallet),
            Cell::Text(l.currency.as_str()),
            Cell::Amount(l.available),
            Cell::Amount(l.pending),
            Cell::Amount(l.reserved),
            Cell::Amount(l.total),
            Cell::Bool(l.blocked),
            Cell::Time(Some(l.fetched_at)),
            Cell::Number(l.age_seconds),
            Cell::Bool(l.stale),
        ]);
    }
    sheet.finish()
}

/// The CSV of `/balances/history` points (SPEC §10.3).
fn history_csv(points: &[HistoryLine]) -> Vec<u8> {
    let mut sheet = Sheet::new(&[
        "account",
        "provider",
        "wallet",
        "currency",
        "available",
        "pending",
        "reserved",
        "total",
        "blocked",
        "first_seen_at",
        "last_confirmed_at",
    ]);
    for p in points {
        sheet.row(&[
            Cell::Text(p.account.as_str()),
            Cell::Text(p.provider.as_str()),
            Cell::Text(&p.wallet),
            Cell::Text(p.currency.as_str()),
            Cell::Amount(p.available),
            Cell::Amount(p.pending),
            Cell::Amount(p.reserved),
            Cell::Amount(p.total),
            Cell::Bool(p.blocked),
            Cell::Time(Some(p.first_seen_at)),
            Cell::Time(Some(p.last_confirmed_at)),
        ]);
    }
    sheet.finish()
}

/// A quoted digest of `bytes`, for an `ETag`.
pub(super) fn bytes_etag(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("\"{}\"", hex::encode(&Sha256::digest(bytes)[..16]))
}

fn selection(params: &Params) -> Result<(Selection, Option<chrono::DateTime<chrono::Utc>>), ApiError> {
    let as_of = match params.single("as_of")? {
        None => None,
        Some(v) => Some(chrono::DateTime::parse_from_rfc3339(v).map(|t| t.to_utc()).map_err(|_| {
            ApiError::new(ErrorCode::InvalidAsOf, format!("`as_of` must be an RFC 3339 time, not `{v}`"))
        })?),
    };
    if as_of.is_some() && params.single("max_age")?.is_some() {
        return Err(ApiError::new(
            ErrorCode::InvalidQuery,
            "`max_age` cannot be given with `as_of`: an `as_of` answer comes from the store alone",
        ));
    }
    let accounts =
        params.list("account")?.into_iter().map(|a| a.parse::<AccountId>().map_err(|_| ApiError::unknown_account(a)));
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
    if as_of.is_some() && include_raw {
        return Err(ApiError::new(
            ErrorCode::InvalidInclude,
            "`include=raw` cannot be given with `as_of`: raw payloads are not kept over time",
        ));
    }
    let selection = Selection {
        accounts: accounts.collect::<Result<_, _>>()?,
        providers: params.parsed("provider", ErrorCode::UnknownProvider, |p| p.parse::<Provider>().ok())?,
        currencies: params.parsed("currency", ErrorCode::InvalidCurrency, |c| c.parse::<Currency>().ok())?,
        max_age: params.max_age()?,
        include_raw,
    };
    Ok((selection, as_of))
}

/// Recent `/balances` bodies by selection (see [`super::body_cache`]).
#[derive(Default)]
pub struct BodyCache(super::body_cache::Bodies<u64, BodyKey>);

impl BodyCache {
    /// The `ETag` and the body of the answer to `outcome`.
    async fn answer(&self, outcome: &BalancesOutcome) -> (HeaderValue, bytes::Bytes) {
        let key = outcome.body_key;
        self.0
            .answer(key.selection(), key, outcome.generated_at(), || {
                let body = serde_json::to_vec(&BalancesReport::from(outcome)).expect("a report serializes");
                let etag = HeaderValue::from_maybe_shared(bytes::Bytes::from(outcome.etag()))
                    .expect("a quoted hex digest is a valid header value");
                (etag, body)
            })
            .await
    }
}

pub(super) fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
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
        ("wallet" = Option<String>, Query, description = "Only this wallet. Like every query value, it may not hold a control character (U+0000-U+001F, U+007F-U+009F): `invalid_query`.", pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"),
        ("currency" = Option<String>, Query, description = "Only this currency."),
        ("from" = Option<String>, Query, description = "RFC 3339 start: points still confirmed at or after this time.", format = DateTime),
        ("to" = Option<String>, Query, description = "RFC 3339 end: points first seen at or before this time.", format = DateTime),
        ("limit" = Option<u32>, Query, description = "At most this many points (1-10000, default 1000).", minimum = 1, maximum = 10000),
        ("format" = Option<Format>, Query, description = "`csv` answers CSV (SPEC §10.3: RFC 4180, a header row, CRLF, no BOM, an empty cell for null, text cells starting with `=`, `+`, `-`, `@`, tab or CR prefixed with `'`); `json` (the default) JSON. Without it, `Accept: text/csv` asks for CSV. Anything else: `invalid_format`."),
        ("Accept" = Option<String>, Header, description = "`text/csv` (preferred over JSON) asks for CSV when `format` is not given."),
        ("If-None-Match" = Option<String>, Header, description = "CSV only: the `ETag` of a previous CSV answer: 304 when nothing changed."),
    ),
    responses(
        (status = 200, description = "Change points: a figure set valid from `first_seen_at`, confirmed unchanged until `last_confirmed_at`. As CSV: one row per point, columns `account,provider,wallet,currency,available,pending,reserved,total,blocked,first_seen_at,last_confirmed_at`.",
            content((HistoryResponse = "application/json"), (String = "text/csv", example = json!("account,provider,wallet,currency,available,pending,reserved,total,blocked,first_seen_at,last_confirmed_at\r\nleanx-main,leanx,prefund,MYR,393.63,,,393.63,false,2026-11-22T07:59:58Z,2026-11-22T08:00:00Z\r\n"))),
            headers(("ETag" = String, description = "CSV only: a digest of the CSV."),
                    ("Content-Disposition" = String, description = "CSV only: `attachment; filename=\"tally-balances-history-<UTC date>.csv\"`."))),
        (status = 304, description = "CSV only: not modified since the `If-None-Match` tag."),
        (status = 400, description = "Bad query: `unknown_parameter`, `invalid_query` (a parameter given twice, a value holding a control character, or one the store cannot compare), `unknown_account`, `invalid_currency`, `invalid_time`, `invalid_limit`, `invalid_format`.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown API key: `unauthorized`.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unreachable: `not_ready`.", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ()),
)]
pub async fn get_history(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref(), &["account", "wallet", "currency", "from", "to", "limit", "format"])?;
    let format = Format::of(&params, &headers)?;
    let account = match params.single("account")? {
        None => None,
        Some(a) => {
            let id = a.parse::<AccountId>().ok().filter(|id| state.service.account(id).is_some());
            Some(id.ok_or_else(|| ApiError::unknown_account(a))?)
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
    let points = state.service.balance_history(&query).await.map_err(|e| match e {
        // The store answered and refused a value of the query: the caller's to fix.
        StoreError::InvalidInput(why) => {
            ApiError::new(ErrorCode::InvalidQuery, format!("the store cannot compare the query's values: {why}"))
        }
        e => {
            tracing::error!(error = %e, "balance history query failed");
            ApiError::new(ErrorCode::NotReady, "the store is unreachable").retry_after(5)
        }
    })?;
    let points: Vec<HistoryLine> = points.into_iter().map(HistoryLine::from).collect();
    if format == Format::Csv {
        let body = history_csv(&points);
        let etag = bytes_etag(&body);
        let now = state.service.now();
        return Ok(csv::answer(&headers, "balances-history", now, &etag, "private, no-cache", || body));
    }
    Ok(axum::Json(HistoryResponse { points }).into_response())
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
