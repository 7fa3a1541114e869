//! Per-currency totals of the `/balances` report (SPEC §3): sums that never mix currencies,
//! with `None` for a figure no entry reports.
//!
//! This is money arithmetic, not presentation, so it stays in the service and computes on the
//! domain's entries: the rule (what is summed with what, when a sum is unknown rather than
//! zero, what counts as stale) holds for any answer tally gives, whatever shape the API puts
//! it in. The HTTP layer only renders the sums (its `CurrencyTotal`).

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use crate::domain::{BalanceEntry, Currency};

/// The sums of one currency over the entries that report each figure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrencySums {
    pub currency: Currency,
    pub available: Option<Decimal>,
    pub pending: Option<Decimal>,
    pub reserved: Option<Decimal>,
    pub total: Option<Decimal>,
    /// How many entries were summed.
    pub entries: u32,
    /// How many of them are stale.
    pub stale_entries: u32,
}

/// Per-currency sums of `entries` (each with whether it is served stale), sorted by currency.
/// A figure's sum is over the entries that report it, `None` when none does.
pub fn totals<'a>(entries: impl IntoIterator<Item = (&'a BalanceEntry, bool)>) -> Vec<CurrencySums> {
    let mut by_currency: BTreeMap<&Currency, CurrencySums> = BTreeMap::new();
    for (entry, stale) in entries {
        let t = by_currency.entry(&entry.currency).or_insert_with(|| CurrencySums {
            currency: entry.currency.clone(),
            available: None,
            pending: None,
            reserved: None,
            total: None,
            entries: 0,
            stale_entries: 0,
        });
        add(&mut t.available, entry.available);
        add(&mut t.pending, entry.pending);
        add(&mut t.reserved, entry.reserved);
        add(&mut t.total, entry.total);
        t.entries += 1;
        t.stale_entries += u32::from(stale);
    }
    by_currency.into_values().collect()
}

/// Adds a figure to its sum. Amounts from outside are below 10^20 (`domain::parse_decimal`),
/// so no real number of entries reaches what a decimal holds (about 7.9e28); were it reached,
/// the sum saturates rather than panic the answer.
pub(super) fn add(sum: &mut Option<Decimal>, figure: Option<Decimal>) {
    if let Some(figure) = figure {
        let base = sum.unwrap_or(Decimal::ZERO);
        *sum = Some(base.checked_add(figure).unwrap_or(if figure.is_sign_negative() {
            Decimal::MIN
        } else {
            Decimal::MAX
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(currency: &str, available: Option<&str>, pending: Option<&str>) -> BalanceEntry {
        let d = |s: Option<&str>| s.map(|s| crate::domain::parse_decimal(s).unwrap());
        BalanceEntry {
            wallet: "w".into(),
            currency: currency.parse().unwrap(),
            available: d(available),
            pending: d(pending),
            reserved: None,
            total: d(available),
            blocked: false,
        }
    }

    #[test]
    fn totals_never_mix_currencies_and_follow_the_null_rule() {
        let entries = [
            (entry("MYR", Some("26.05"), None), false),
            (entry("MYR", Some("393.63"), None), true),
            (entry("USD", Some("0.12345678"), Some("1.5")), false),
            (entry("USD", None, None), false),
        ];
        let t = totals(entries.iter().map(|(e, stale)| (e, *stale)));
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
