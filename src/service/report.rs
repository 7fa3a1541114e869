//! The `/balances` report of SPEC §3 and the arithmetic behind it: per-currency totals that
//! never mix currencies, with `null` for a figure no entry reports.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::{AccountId, Currency, Provider, RawJson};

/// A decimal amount as a JSON string, keeping the provider's scale.
pub type Amount = Option<Decimal>;

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct BalancesReport {
    /// When this report was assembled (always with milliseconds).
    #[serde(serialize_with = "millis")]
    pub generated_at: DateTime<Utc>,
    /// True when every selected account is `fresh`.
    pub complete: bool,
    pub balances: Vec<BalanceLine>,
    pub totals: Vec<CurrencyTotal>,
    pub accounts: Vec<AccountLine>,
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
    /// One of `upstream_timeout`, `upstream_unavailable`, `upstream_rate_limited`,
    /// `upstream_auth_failed`, `upstream_invalid_response`, `upstream_rejected`, `circuit_open`.
    #[schema(example = "upstream_unavailable")]
    pub code: String,
    pub message: String,
    /// The HTTP status the provider answered with, if it answered.
    pub upstream_status: Option<u16>,
    /// When the failure happened.
    pub at: DateTime<Utc>,
}

impl AccountError {
    /// An upstream failure as the API shows it, at the time it happened.
    pub fn new(error: crate::providers::UpstreamError, at: DateTime<Utc>) -> Self {
        Self { code: error.code().to_owned(), message: error.message, upstream_status: error.upstream_status, at }
    }
}

/// RFC 3339 with exactly three fractional digits, so the field has a fixed width.
fn millis<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Per-currency totals, sorted by currency. A figure's total is the sum over the entries that
/// report it, `null` when none does.
pub fn totals(lines: &[BalanceLine]) -> Vec<CurrencyTotal> {
    let mut by_currency: BTreeMap<&Currency, CurrencyTotal> = BTreeMap::new();
    for line in lines {
        let t = by_currency.entry(&line.currency).or_insert_with(|| CurrencyTotal {
            currency: line.currency.clone(),
            available: None,
            pending: None,
            reserved: None,
            total: None,
            entries: 0,
            stale_entries: 0,
        });
        add(&mut t.available, line.available);
        add(&mut t.pending, line.pending);
        add(&mut t.reserved, line.reserved);
        add(&mut t.total, line.total);
        t.entries += 1;
        t.stale_entries += u32::from(line.stale);
    }
    by_currency.into_values().collect()
}

fn add(sum: &mut Amount, figure: Amount) {
    if let Some(figure) = figure {
        *sum = Some(sum.unwrap_or(Decimal::ZERO) + figure);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(currency: &str, available: Option<&str>, pending: Option<&str>, stale: bool) -> BalanceLine {
        let d = |s: Option<&str>| s.map(|s| crate::domain::parse_decimal(s).unwrap());
        BalanceLine {
            account: "a".parse().unwrap(),
            provider: Provider::Leanx,
            wallet: "w".into(),
            currency: currency.parse().unwrap(),
            available: d(available),
            pending: d(pending),
            reserved: None,
            total: d(available),
            blocked: false,
            fetched_at: DateTime::from_timestamp(0, 0).unwrap(),
            age_seconds: 0,
            stale,
        }
    }

    #[test]
    fn totals_never_mix_currencies_and_follow_the_null_rule() {
        let lines = [
            line("MYR", Some("26.05"), None, false),
            line("MYR", Some("393.63"), None, true),
            line("USD", Some("0.12345678"), Some("1.5"), false),
            line("USD", None, None, false),
        ];
        let t = totals(&lines);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].currency.as_str(), "MYR");
        assert_eq!(t[0].available.unwrap().to_string(), "419.68");
        assert_eq!(t[0].pending, None, "no MYR entry reports pending");
        assert_eq!((t[0].entries, t[0].stale_entries), (2, 1));
        assert_eq!(t[1].available.unwrap().to_string(), "0.12345678");
        assert_eq!(t[1].pending.unwrap().to_string(), "1.5");
        assert_eq!(t[1].entries, 2);
    }
}
