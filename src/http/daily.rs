//! `GET /balances/daily` (SPEC §10.2), as JSON or CSV (§10.3).

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::NaiveDate;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::balances::{bytes_etag, tagged};
use super::csv::{self, Cell, Format, Sheet};
use super::error::{ApiError, ErrorCode, Problem};
use super::query::Params;
use super::report::Amount;
use crate::domain::{AccountId, Currency, Provider};
use crate::service::balances::Selection;
use crate::service::daily::{DailyError, DailyQuery, DailyRow, Figures, MAX_DAYS, Zone};
use crate::store::StoreError;

/// Day by day, per (account, wallet, currency): the opening, closing, lowest and highest
/// figures, the number of changes, and whether the closing figure was stale at the day's end.
#[utoipa::path(
    get,
    path = "/balances/daily",
    tag = "balances",
    params(
        ("from" = String, Query, description = "The first day (`YYYY-MM-DD`), in `tz`.", format = Date),
        ("to" = String, Query, description = "The last day (`YYYY-MM-DD`), in `tz`; at most 366 days from `from`, both included.", format = Date),
        ("tz" = Option<String>, Query, description = "The time zone of the days: an IANA name (`Asia/Kuala_Lumpur`, `Europe/London`) or an offset `±HH:MM` (percent-encode `+` as `%2B`; a bare `+`, read as a space, is taken as `+`). Default `UTC`. Days of daylight-saving changes are 23 or 25 hours long."),
        ("account" = Option<Vec<String>>, Query, description = "Only these accounts (repeatable or comma-separated).", explode = true),
        ("provider" = Option<Vec<Provider>>, Query, description = "Only accounts of these providers (repeatable or comma-separated).", explode = true),
        ("currency" = Option<Vec<String>>, Query, description = "Only these currencies (repeatable or comma-separated).", explode = true),
        ("format" = Option<Format>, Query, description = "`csv` answers CSV with the columns `date,account,provider,wallet,currency,opening_available,opening_total,closing_available,closing_pending,closing_reserved,closing_total,low_available,high_available,low_total,high_total,changes,stale`; `json` (the default) JSON. Without it, `Accept: text/csv` asks for CSV. Anything else: `invalid_format`."),
        ("If-None-Match" = Option<String>, Header, description = "The `ETag` of a previous answer: 304 when nothing changed."),
    ),
    responses(
        (status = 200, description = "One row per day and (account, wallet, currency) with a figure that day, by date, then account, wallet and currency.",
            content((DailyResponse = "application/json"), (String = "text/csv", example = json!("date,account,provider,wallet,currency,opening_available,opening_total,closing_available,closing_pending,closing_reserved,closing_total,low_available,high_available,low_total,high_total,changes,stale\r\n2026-11-01,leanx-main,leanx,prefund,MYR,393.63,393.63,380.10,,,380.10,380.10,401.00,380.10,401.00,3,false\r\n"))),
            headers(("ETag" = String, description = "A digest of the answer."),
                    ("Content-Disposition" = String, description = "CSV only: `attachment; filename=\"tally-balances-daily-<UTC date>.csv\"`."))),
        (status = 304, description = "Not modified since the `If-None-Match` tag."),
        (status = 400, description = "Bad query: `unknown_parameter`, `invalid_query` (an empty list item, a parameter given twice, a control character, or a range holding more change points than one answer reads), `unknown_account`, `unknown_provider`, `invalid_currency`, `invalid_date` (`from` or `to` missing or not a date, `to` before `from`, more than 366 days), `invalid_tz`, `invalid_format`.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown API key: `unauthorized`.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unreachable: `not_ready`.", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ()),
)]
pub async fn get_daily(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref(), &["from", "to", "tz", "account", "provider", "currency", "format"])?;
    let format = Format::of(&params, &headers)?;
    let date = |key: &str| -> Result<NaiveDate, ApiError> {
        let text = params.single(key)?.ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidDate, format!("`{key}` is required (a date like 2026-11-01)"))
        })?;
        NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidDate,
                format!("`{key}` must be a date like 2026-11-01, not `{}`", text.escape_debug()),
            )
        })
    };
    let (from, to) = (date("from")?, date("to")?);
    if to < from {
        return Err(ApiError::new(ErrorCode::InvalidDate, "`to` is before `from`"));
    }
    if (to - from).num_days() + 1 > MAX_DAYS {
        return Err(ApiError::new(ErrorCode::InvalidDate, format!("at most {MAX_DAYS} days at once")));
    }
    let zone = match params.single("tz")? {
        None => Zone::Iana(chrono_tz::UTC),
        Some(tz) => Zone::parse(tz).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidTz,
                format!("`tz` must be an IANA time zone name or an offset like +08:00, not `{}`", tz.escape_debug()),
            )
        })?,
    };
    let accounts =
        params.list("account")?.into_iter().map(|a| a.parse::<AccountId>().map_err(|_| ApiError::unknown_account(a)));
    let selection = Selection {
        accounts: accounts.collect::<Result<_, _>>()?,
        providers: params.parsed("provider", ErrorCode::UnknownProvider, |p| p.parse::<Provider>().ok())?,
        currencies: params.parsed("currency", ErrorCode::InvalidCurrency, |c| c.parse::<Currency>().ok())?,
        ..Selection::default()
    };
    let rows = state.service.balances_daily(&DailyQuery { selection, from, to, zone }).await.map_err(|e| match e {
        DailyError::Selection(e) => ApiError::from(e),
        DailyError::TooManyPoints => ApiError::new(ErrorCode::InvalidQuery, e.to_string()),
        DailyError::Store(StoreError::InvalidInput(why)) => {
            ApiError::new(ErrorCode::InvalidQuery, format!("the store cannot compare the query's values: {why}"))
        }
        DailyError::NoDayStart => ApiError::new(ErrorCode::InvalidDate, e.to_string()),
        DailyError::Store(e) => {
            tracing::error!(error = %e, "daily balances query failed");
            ApiError::new(ErrorCode::NotReady, "the store is unreachable").retry_after(5)
        }
    })?;
    let days: Vec<DailyLine> = rows.into_iter().map(DailyLine::from).collect();
    if format == Format::Csv {
        let body = daily_csv(&days);
        let etag = bytes_etag(&body);
        return Ok(csv::answer(&headers, "balances-daily", state.service.now(), &etag, "private, no-cache", || body));
    }
    // About 540 bytes a line: reserved at once rather than grown by copying (1.6 MB for 3,000).
    let mut body = Vec::with_capacity(256 + days.len() * 600);
    serde_json::to_writer(&mut body, &DailyResponse { from, to, tz: zone.name(), days }).expect("an answer serializes");
    Ok(tagged(&headers, bytes_etag(&body), "private, no-cache", "application/json", body))
}

#[derive(Serialize, ToSchema)]
pub struct DailyResponse {
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// The time zone of the days, as asked (`UTC` by default).
    #[schema(example = "Asia/Kuala_Lumpur")]
    pub tz: String,
    pub days: Vec<DailyLine>,
}

/// One day of one (account, wallet, currency).
#[derive(Serialize, ToSchema)]
pub struct DailyLine {
    pub date: NaiveDate,
    #[schema(value_type = String, example = "leanx-main")]
    pub account: AccountId,
    pub provider: Provider,
    #[schema(example = "prefund")]
    pub wallet: String,
    #[schema(value_type = String, example = "MYR")]
    pub currency: Currency,
    /// The figures in force at the day's start; `null` when the first figure came that day.
    pub opening: Option<FigureSet>,
    /// The figures in force at the day's end (now, for today).
    pub closing: FigureSet,
    /// The lowest value of each field over the day.
    pub low: FigureSet,
    /// The highest value of each field over the day.
    pub high: FigureSet,
    /// Change points first seen that day.
    pub changes: u32,
    /// The closing figure was older than the account's `ttl` at the day's end.
    pub stale: bool,
}

/// The four figures of an entry: strings, or `null` where the provider reports none.
#[derive(Serialize, ToSchema)]
pub struct FigureSet {
    #[schema(value_type = Option<String>, example = "393.63", pattern = r"^-?\d+(\.\d+)?$")]
    pub available: Amount,
    #[schema(value_type = Option<String>, example = json!(null), pattern = r"^-?\d+(\.\d+)?$")]
    pub pending: Amount,
    #[schema(value_type = Option<String>, example = json!(null), pattern = r"^-?\d+(\.\d+)?$")]
    pub reserved: Amount,
    #[schema(value_type = Option<String>, example = "393.63", pattern = r"^-?\d+(\.\d+)?$")]
    pub total: Amount,
}

impl From<Figures> for FigureSet {
    fn from(f: Figures) -> Self {
        Self { available: f.available, pending: f.pending, reserved: f.reserved, total: f.total }
    }
}

impl From<DailyRow> for DailyLine {
    fn from(r: DailyRow) -> Self {
        Self {
            date: r.date,
            account: r.account,
            provider: r.provider,
            wallet: r.wallet,
            currency: r.currency,
            opening: r.opening.map(FigureSet::from),
            closing: r.closing.into(),
            low: r.low.into(),
            high: r.high.into(),
            changes: r.changes,
            stale: r.stale,
        }
    }
}

fn daily_csv(days: &[DailyLine]) -> Vec<u8> {
    let mut sheet = Sheet::new(&[
        "date",
        "account",
        "provider",
        "wallet",
        "currency",
        "opening_available",
        "opening_total",
        "closing_available",
        "closing_pending",
        "closing_reserved",
        "closing_total",
        "low_available",
        "high_available",
        "low_total",
        "high_total",
        "changes",
        "stale",
    ]);
    for d in days {
        sheet.row(&[
            Cell::Plain(d.date.to_string()),
            Cell::Text(d.account.as_str()),
            Cell::Text(d.provider.as_str()),
            Cell::Text(&d.wallet),
            Cell::Text(d.currency.as_str()),
            Cell::Amount(d.opening.as_ref().and_then(|o| o.available)),
            Cell::Amount(d.opening.as_ref().and_then(|o| o.total)),
            Cell::Amount(d.closing.available),
            Cell::Amount(d.closing.pending),
            Cell::Amount(d.closing.reserved),
            Cell::Amount(d.closing.total),
            Cell::Amount(d.low.available),
            Cell::Amount(d.high.available),
            Cell::Amount(d.low.total),
            Cell::Amount(d.high.total),
            Cell::Number(u64::from(d.changes)),
            Cell::Bool(d.stale),
        ]);
    }
    sheet.finish()
}
