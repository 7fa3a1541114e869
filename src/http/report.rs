//! The `/balances` report of SPEC §3 as it goes on the wire, and the account errors every
//! route shows: what the service found ([`BalancesOutcome`], [`FetchFailure`]), rendered.
//!
//! The per-currency totals are summed by the service ([`crate::service::totals`]), not here:
//! they are money arithmetic (never mixing currencies, `null` for a figure no entry reports),
//! which holds whatever shape an answer takes; this module only copies the sums out.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::monitor::{Condition, Field, Monitor, MonitorEntry};
use crate::domain::{AccountId, Currency, Provider, RawJson};
use crate::providers::UpstreamError;
use crate::service::FetchFailure;
use crate::service::as_of::AsOfOutcome;
use crate::service::balances::{BalancesOutcome, Origin, Status};
use crate::service::reporting::Reporting;
use crate::service::totals::CurrencySums;

/// A decimal amount as a JSON string, keeping the provider's scale.
pub type Amount = Option<Decimal>;

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct BalancesReport {
    /// When this report was assembled (always with milliseconds).
    #[serde(serialize_with = "millis")]
    pub generated_at: DateTime<Utc>,
    /// The time asked with `as_of` (SPEC §10.1): the figures are those in force then, from the
    /// store. Absent from live answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_of: Option<DateTime<Utc>>,
    /// True when every selected account is `fresh`.
    pub complete: bool,
    pub balances: Vec<BalanceLine>,
    pub totals: Vec<CurrencyTotal>,
    pub accounts: Vec<AccountLine>,
    /// With `[reporting]` set (SPEC §10.4): the totals in the reporting currency. Absent
    /// without it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub converted: Option<ConvertedReport>,
    /// The firing monitor entries (SPEC §8.2) of the selected accounts and currencies; `null`
    /// when tally could not read the monitor states from the store (since it started), so it
    /// cannot say which fire, and in `as_of` answers (monitor states are not kept over time).
    pub alerts: Option<Vec<AlertLine>>,
}

/// A firing monitor entry.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AlertLine {
    #[schema(example = "leanx-prefund-low")]
    pub monitor: String,
    #[schema(value_type = String, example = "leanx-main")]
    pub account: AccountId,
    #[schema(example = "prefund")]
    pub wallet: String,
    #[schema(value_type = String, example = "MYR")]
    pub currency: Currency,
    pub field: Field,
    pub condition: Condition,
    #[schema(value_type = String, example = "500.00", pattern = r"^-?\d+(\.\d+)?$")]
    pub threshold: Decimal,
    /// The latest observed figure.
    #[schema(value_type = Option<String>, example = "412.50", pattern = r"^-?\d+(\.\d+)?$")]
    pub value: Amount,
    /// When the entry started firing.
    pub since: DateTime<Utc>,
}

impl AlertLine {
    pub fn new(monitor: &Monitor, entry: &MonitorEntry) -> Self {
        Self {
            monitor: monitor.id.clone(),
            account: entry.account.clone(),
            wallet: entry.wallet.clone(),
            currency: entry.currency.clone(),
            field: monitor.field,
            condition: monitor.condition,
            threshold: monitor.threshold,
            value: entry.state.value,
            since: entry.state.since,
        }
    }
}

/// One `(account, wallet, currency)` figure set.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct BalanceLine {
    #[schema(value_type = String, example = "leanx-main")]
    pub account: AccountId,
    pub provider: Provider,
    #[schema(example = "prefund")]
    pub wallet: String,
    #[schema(value_type = String, example = "MYR")]
    pub currency: Currency,
    #[schema(value_type = Option<String>, example = "393.63", pattern = r"^-?\d+(\.\d+)?$")]
    pub available: Amount,
    #[schema(value_type = Option<String>, example = json!(null), pattern = r"^-?\d+(\.\d+)?$")]
    pub pending: Amount,
    #[schema(value_type = Option<String>, example = json!(null), pattern = r"^-?\d+(\.\d+)?$")]
    pub reserved: Amount,
    #[schema(value_type = Option<String>, example = "393.63", pattern = r"^-?\d+(\.\d+)?$")]
    pub total: Amount,
    /// True when the provider marks the wallet disabled.
    pub blocked: bool,
    pub fetched_at: DateTime<Utc>,
    pub age_seconds: u64,
    /// True when this figure is served because a refresh failed or missed the deadline.
    pub stale: bool,
}

/// Sums of one currency over the entries that report each figure.
#[derive(Clone, Debug, Serialize, ToSchema, PartialEq, Eq)]
pub struct CurrencyTotal {
    #[schema(value_type = String, example = "MYR")]
    pub currency: Currency,
    #[schema(value_type = Option<String>, example = "419.68", pattern = r"^-?\d+(\.\d+)?$")]
    pub available: Amount,
    #[schema(value_type = Option<String>, example = json!(null), pattern = r"^-?\d+(\.\d+)?$")]
    pub pending: Amount,
    #[schema(value_type = Option<String>, example = json!(null), pattern = r"^-?\d+(\.\d+)?$")]
    pub reserved: Amount,
    #[schema(value_type = Option<String>, example = "419.68", pattern = r"^-?\d+(\.\d+)?$")]
    pub total: Amount,
    /// How many entries were summed.
    pub entries: u32,
    /// How many of them are stale.
    pub stale_entries: u32,
    /// With `[reporting]` set: `available` and `total` times the rate in force, rounded half to
    /// even to `scale` decimals; `null` without a rate. Absent without `[reporting]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<TotalConverted>)]
    pub converted: Option<Option<TotalConverted>>,
}

/// One total in the reporting currency.
#[derive(Clone, Debug, Serialize, ToSchema, PartialEq, Eq)]
pub struct TotalConverted {
    #[schema(value_type = Option<String>, example = "94.05", pattern = r"^-?\d+(\.\d+)?$")]
    pub available: Amount,
    #[schema(value_type = Option<String>, example = "94.05", pattern = r"^-?\d+(\.\d+)?$")]
    pub total: Amount,
}

/// Every total in the reporting currency (SPEC §10.4): the rounded conversions summed.
#[derive(Clone, Debug, Serialize, ToSchema, PartialEq, Eq)]
pub struct ConvertedReport {
    /// The reporting currency.
    #[schema(value_type = String, example = "USD")]
    pub currency: Currency,
    #[schema(value_type = Option<String>, example = "94.05", pattern = r"^-?\d+(\.\d+)?$")]
    pub available: Amount,
    #[schema(value_type = Option<String>, example = "94.05", pattern = r"^-?\d+(\.\d+)?$")]
    pub total: Amount,
    /// The rates used: for each converted currency, the one with the latest `as_of` on or
    /// before the day asked (today, or the `as_of` day, UTC). The reporting currency's own
    /// rate, 1, is not listed.
    pub rates: Vec<RateLine>,
    /// Currencies of the totals with no rate by then: not in the sums.
    #[schema(value_type = Vec<String>, example = json!(["BRL"]))]
    pub unconverted: Vec<Currency>,
    /// True when every total was converted.
    pub complete: bool,
}

/// A rate used: units of the reporting currency per one unit of `currency`.
#[derive(Clone, Debug, Serialize, ToSchema, PartialEq, Eq)]
pub struct RateLine {
    #[schema(value_type = String, example = "MYR")]
    pub currency: Currency,
    #[schema(value_type = String, example = "0.2241", pattern = r"^\d+(\.\d+)?$")]
    pub rate: Decimal,
    /// The date the rate holds from.
    pub as_of: chrono::NaiveDate,
    /// Older than `max_rate_age` on the day asked (still used).
    pub stale: bool,
}

/// The per-currency totals and, with `[reporting]`, their conversion at the rates of `day`.
fn totals_and_conversion(
    sums: Vec<CurrencySums>,
    reporting: Option<&Reporting>,
    day: chrono::NaiveDate,
) -> (Vec<CurrencyTotal>, Option<ConvertedReport>) {
    let Some(reporting) = reporting else {
        return (sums.into_iter().map(CurrencyTotal::from).collect(), None);
    };
    let c = reporting.conversion(&sums, day);
    let totals = sums
        .into_iter()
        .zip(&c.per_total)
        .map(|(s, f)| CurrencyTotal {
            converted: Some(f.map(|f| TotalConverted { available: f.available, total: f.total })),
            ..CurrencyTotal::from(s)
        })
        .collect();
    let rates = c
        .rates
        .into_iter()
        .map(|r| RateLine { currency: r.currency, rate: r.rate, as_of: r.as_of, stale: r.stale })
        .collect();
    let converted = ConvertedReport {
        currency: c.currency,
        available: c.available,
        total: c.total,
        rates,
        unconverted: c.unconverted,
        complete: c.complete,
    };
    (totals, Some(converted))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccountStatus {
    /// The figure is within its freshness bound.
    Fresh,
    /// A refresh failed or missed the deadline; the last stored figure is served.
    Stale,
    /// Nothing to serve.
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Fetched for this request.
    Live,
    /// Served from memory or the store.
    Cache,
    /// Read from the stored history for an `as_of` answer.
    Store,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AccountLine {
    #[schema(value_type = String, example = "leanx-main")]
    pub account: AccountId,
    pub provider: Provider,
    pub status: AccountStatus,
    /// Where the served figure came from; null when nothing is served.
    pub source: Option<Source>,
    pub fetched_at: Option<DateTime<Utc>>,
    pub error: Option<AccountError>,
    /// The provider's last raw answer, only with `include=raw`.
    #[serde(skip_serializing_if = "Option::is_none")]
    // Any JSON, as RawJson's own schema says; named as `serde_json::Value` because utoipa
    // renders that without a `oneOf` null wrapper, keeping the published document unchanged.
    #[schema(value_type = Option<serde_json::Value>)]
    pub raw: Option<RawJson>,
}

/// Why an account's figure is not fresh.
#[derive(Clone, Debug, Serialize, ToSchema, PartialEq, Eq)]
pub struct AccountError {
    #[schema(schema_with = account_error_code)]
    pub code: String,
    pub message: String,
    /// The HTTP status the provider answered with, if it answered.
    pub upstream_status: Option<u16>,
    /// When the failure happened.
    pub at: DateTime<Utc>,
}

/// Every code an [`AccountError`] may carry: the upstream failures, the open circuit, and a
/// call the upstream budget could not afford.
pub const ACCOUNT_ERROR_CODES: [&str; 8] = [
    "upstream_timeout",
    "upstream_unavailable",
    "upstream_rate_limited",
    "upstream_auth_failed",
    "upstream_invalid_response",
    "upstream_rejected",
    "circuit_open",
    crate::service::budget::RATE_BUDGET_EXHAUSTED,
];

/// The code of an account with nothing stored by the time an `as_of` answer asks about.
pub const NO_DATA: &str = "no_data";

/// The schema of [`AccountError::code`]: a string, one of [`ACCOUNT_ERROR_CODES`].
fn account_error_code() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(ACCOUNT_ERROR_CODES.iter().copied().chain([NO_DATA])))
        .description(Some(
            "Why the figure or payout is not fresh. `rate_budget_exhausted`: no call was made, because the account's \
             `max_calls_per_minute` is spent or the provider asked for a pause (429 with `Retry-After`). \
             `no_data`: an `as_of` answer, and nothing was stored for the account by then.",
        ))
        .examples(["upstream_unavailable"])
        .build()
}

impl AccountError {
    /// An upstream failure as the API shows it, at the time it happened.
    pub fn new(error: UpstreamError, at: DateTime<Utc>) -> Self {
        Self { code: error.code().to_owned(), message: error.message, upstream_status: error.upstream_status, at }
    }
}

impl From<FetchFailure> for AccountError {
    fn from(failure: FetchFailure) -> Self {
        let code = failure.code();
        Self { code: code.to_owned(), ..Self::new(failure.error, failure.at) }
    }
}

impl From<Status> for AccountStatus {
    fn from(status: Status) -> Self {
        match status {
            Status::Fresh => Self::Fresh,
            Status::Stale => Self::Stale,
            Status::Failed => Self::Failed,
        }
    }
}

impl From<Origin> for Source {
    fn from(origin: Origin) -> Self {
        match origin {
            Origin::Live => Self::Live,
            Origin::Cache => Self::Cache,
        }
    }
}

impl From<CurrencySums> for CurrencyTotal {
    fn from(s: CurrencySums) -> Self {
        Self {
            currency: s.currency,
            available: s.available,
            pending: s.pending,
            reserved: s.reserved,
            total: s.total,
            entries: s.entries,
            stale_entries: s.stale_entries,
            converted: None,
        }
    }
}

impl From<&BalancesOutcome> for BalancesReport {
    fn from(outcome: &BalancesOutcome) -> Self {
        let balances = outcome
            .entries()
            .map(|(answer, snapshot, e)| BalanceLine {
                account: answer.account.id().clone(),
                provider: answer.account.provider(),
                wallet: e.wallet.clone(),
                currency: e.currency.clone(),
                available: e.available,
                pending: e.pending,
                reserved: e.reserved,
                total: e.total,
                blocked: e.blocked,
                fetched_at: snapshot.fetched_at,
                age_seconds: outcome.age_seconds(snapshot),
                stale: answer.status != Status::Fresh,
            })
            .collect();
        let accounts = outcome
            .accounts()
            .map(|answer| AccountLine {
                account: answer.account.id().clone(),
                provider: answer.account.provider(),
                status: answer.status.into(),
                source: answer.origin.map(Source::from),
                fetched_at: answer.snapshot.map(|s| s.fetched_at),
                error: answer.failure.cloned().map(AccountError::from),
                raw: if outcome.include_raw() { answer.snapshot.and_then(|s| s.raw.clone()) } else { None },
            })
            .collect();
        let (totals, converted) =
            totals_and_conversion(outcome.totals(), outcome.reporting(), outcome.generated_at().date_naive());
        BalancesReport {
            generated_at: outcome.generated_at(),
            as_of: None,
            complete: outcome.complete(),
            balances,
            totals,
            accounts,
            converted,
            alerts: outcome.alerts().map(|alerts| alerts.map(|(m, e)| AlertLine::new(m, e)).collect()),
        }
    }
}

impl From<&AsOfOutcome> for BalancesReport {
    fn from(outcome: &AsOfOutcome) -> Self {
        let balances = outcome
            .entries()
            .map(|(account, e)| BalanceLine {
                account: account.account.clone(),
                provider: account.provider,
                wallet: e.entry.wallet.clone(),
                currency: e.entry.currency.clone(),
                available: e.entry.available,
                pending: e.entry.pending,
                reserved: e.entry.reserved,
                total: e.entry.total,
                blocked: e.entry.blocked,
                fetched_at: e.fetched_at,
                age_seconds: e.age_seconds,
                stale: e.stale,
            })
            .collect();
        let accounts = outcome
            .accounts
            .iter()
            .map(|a| AccountLine {
                account: a.account.clone(),
                provider: a.provider,
                status: a.status.into(),
                source: Some(Source::Store),
                fetched_at: a.fetched_at,
                error: (a.status == Status::Failed).then(|| AccountError {
                    code: NO_DATA.to_owned(),
                    message: "nothing was stored for this account by `as_of`".to_owned(),
                    upstream_status: None,
                    at: outcome.as_of,
                }),
                raw: None,
            })
            .collect();
        let (totals, converted) =
            totals_and_conversion(outcome.totals(), outcome.reporting.as_deref(), outcome.as_of.date_naive());
        BalancesReport {
            generated_at: outcome.generated_at,
            as_of: Some(outcome.as_of),
            complete: outcome.complete(),
            balances,
            totals,
            accounts,
            converted,
            alerts: None,
        }
    }
}

/// RFC 3339 with exactly three fractional digits, so the field has a fixed width.
fn millis<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    use crate::providers::UpstreamErrorKind;

    #[test]
    fn the_documented_account_error_codes_are_the_codes_tally_gives() {
        let (budget, upstream) = super::ACCOUNT_ERROR_CODES.split_last().unwrap();
        assert_eq!(*budget, crate::service::budget::RATE_BUDGET_EXHAUSTED);
        for code in upstream {
            assert_eq!(UpstreamErrorKind::from_code(code).code(), *code, "{code} is an upstream error code");
        }
    }
}
