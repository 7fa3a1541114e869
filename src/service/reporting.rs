//! One reporting currency (SPEC §10.4): per-currency totals converted at the rate in force on
//! the day asked, rounded half to even to `scale` decimals, and summed. Exact decimals only:
//! rates are parsed from text, products are `Decimal` products.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::NaiveDate;
use rust_decimal::{Decimal, RoundingStrategy};

use super::totals::{CurrencySums, add};
use crate::domain::Currency;

/// `[reporting]`, validated: the rates of each currency by the date they hold from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reporting {
    pub currency: Currency,
    pub scale: u32,
    pub max_rate_age: Duration,
    rates: BTreeMap<Currency, BTreeMap<NaiveDate, Decimal>>,
}

/// A rate used for a conversion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateUsed {
    pub currency: Currency,
    pub rate: Decimal,
    pub as_of: NaiveDate,
    /// The rate is older than `max_rate_age` on the day asked (it is still used).
    pub stale: bool,
}

/// One total's figures in the reporting currency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvertedFigures {
    pub available: Option<Decimal>,
    pub total: Option<Decimal>,
}

/// Every total converted: one entry per total (`None` without a rate), and the sums.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversion {
    pub currency: Currency,
    pub per_total: Vec<Option<ConvertedFigures>>,
    /// The sum of the converted `available` figures; `None` when none was converted.
    pub available: Option<Decimal>,
    pub total: Option<Decimal>,
    /// The rates used, by currency (the reporting currency itself is not listed: its rate is 1).
    pub rates: Vec<RateUsed>,
    /// Currencies of the totals with no rate on or before the day.
    pub unconverted: Vec<Currency>,
    /// True when every total was converted.
    pub complete: bool,
}

impl Reporting {
    pub fn new(currency: Currency, scale: u32, max_rate_age: Duration) -> Self {
        Self { currency, scale, max_rate_age, rates: BTreeMap::new() }
    }

    /// Adds one rate given as text; on a bad value, the field at fault and the problem.
    pub fn add_rate(&mut self, currency: &str, rate: &str, as_of: &str) -> Result<(), (&'static str, String)> {
        let currency: Currency =
            currency.parse().map_err(|e: crate::domain::InvalidCurrency| ("currency", e.to_string()))?;
        if currency == self.currency {
            return Err(("currency", format!("`{currency}` is the reporting currency itself (its rate is always 1)")));
        }
        let value = Some(rate)
            .filter(|r| !r.contains(['e', 'E']))
            .and_then(|r| crate::domain::parse_decimal(r).ok())
            .filter(|r| *r > Decimal::ZERO)
            .ok_or_else(|| ("rate", format!("`{rate}` is not an exact decimal above zero like \"0.2241\"")))?;
        let date = NaiveDate::parse_from_str(as_of.trim(), "%Y-%m-%d")
            .map_err(|_| ("as_of", format!("`{as_of}` is not a date like \"2026-11-28\"")))?;
        let by_date = self.rates.entry(currency.clone()).or_default();
        if by_date.insert(date, value).is_some() {
            return Err(("as_of", format!("`{currency}` has two rates for {date}")));
        }
        Ok(())
    }

    /// The rate of `currency` with the latest date on or before `day`.
    pub fn rate_on(&self, currency: &Currency, day: NaiveDate) -> Option<RateUsed> {
        let (&as_of, &rate) = self.rates.get(currency)?.range(..=day).next_back()?;
        let age = (day - as_of).to_std().unwrap_or_default();
        Some(RateUsed { currency: currency.clone(), rate, as_of, stale: age > self.max_rate_age })
    }

    /// `amount × rate`, rounded half to even to `scale` decimals (and written with them).
    fn convert(&self, amount: Option<Decimal>, rate: Decimal) -> Result<Option<Decimal>, ()> {
        let Some(amount) = amount else { return Ok(None) };
        let mut product = amount
            .checked_mul(rate)
            .ok_or(())?
            .round_dp_with_strategy(self.scale, RoundingStrategy::MidpointNearestEven);
        product.rescale(self.scale);
        Ok(Some(product))
    }

    /// Converts `totals` at the rates in force on `day`.
    pub fn conversion(&self, totals: &[CurrencySums], day: NaiveDate) -> Conversion {
        let mut conversion = Conversion {
            currency: self.currency.clone(),
            per_total: Vec::with_capacity(totals.len()),
            available: None,
            total: None,
            rates: Vec::new(),
            unconverted: Vec::new(),
            complete: true,
        };
        for t in totals {
            let rate = if t.currency == self.currency {
                Some(Decimal::ONE)
            } else {
                self.rate_on(&t.currency, day).map(|used| {
                    let rate = used.rate;
                    conversion.rates.push(used);
                    rate
                })
            };
            let figures = rate.and_then(|rate| {
                Some(ConvertedFigures {
                    available: self.convert(t.available, rate).ok()?,
                    total: self.convert(t.total, rate).ok()?,
                })
            });
            match figures {
                Some(f) => {
                    add(&mut conversion.available, f.available);
                    add(&mut conversion.total, f.total);
                }
                None => {
                    conversion.unconverted.push(t.currency.clone());
                    conversion.complete = false;
                }
            }
            conversion.per_total.push(figures);
        }
        conversion
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn sums(currency: &str, amount: &str) -> CurrencySums {
        CurrencySums {
            currency: currency.parse().unwrap(),
            available: Some(d(amount)),
            pending: None,
            reserved: None,
            total: Some(d(amount)),
            entries: 1,
            stale_entries: 0,
        }
    }

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn usd() -> Reporting {
        Reporting::new("USD".parse().unwrap(), 2, Duration::from_secs(7 * 86_400))
    }

    #[test]
    fn exact_products_round_half_to_even_where_a_float_would_not() {
        // 10.05 × 0.1 is 1.005 exactly: half to even gives 1.00; the f64 product is
        // 1.0050000000000001, which would round to 1.01.
        assert_eq!(10.05_f64 * 0.1, 1.0050000000000001);
        let mut r = usd();
        r.add_rate("MYR", "0.1", "2026-11-01").unwrap();
        r.add_rate("HKD", "0.1", "2026-11-01").unwrap();
        let c = r.conversion(&[sums("HKD", "10.15"), sums("MYR", "10.05"), sums("USD", "3")], day("2026-11-02"));
        assert_eq!(c.per_total[1].unwrap().total, Some(d("1.00")));
        assert_eq!(c.per_total[0].unwrap().total, Some(d("1.02")), "1.015 to the even 1.02");
        assert_eq!(c.per_total[2].unwrap().total.unwrap().to_string(), "3.00", "written with `scale` decimals");
        assert_eq!(c.total.unwrap().to_string(), "5.02", "the rounded amounts summed");
        assert!(c.complete);
    }

    #[test]
    fn the_rate_in_force_is_the_latest_on_or_before_the_day() {
        let mut r = usd();
        r.add_rate("MYR", "0.2200", "2026-11-01").unwrap();
        r.add_rate("MYR", "0.2241", "2026-11-28").unwrap();
        assert_eq!(r.rate_on(&"MYR".parse().unwrap(), day("2026-10-31")), None);
        assert_eq!(r.rate_on(&"MYR".parse().unwrap(), day("2026-11-27")).unwrap().rate, d("0.2200"));
        let on = r.rate_on(&"MYR".parse().unwrap(), day("2026-11-28")).unwrap();
        assert_eq!((on.rate, on.stale), (d("0.2241"), false));
        assert!(!r.rate_on(&"MYR".parse().unwrap(), day("2026-12-05")).unwrap().stale, "7 days is not older than 7d");
        assert!(r.rate_on(&"MYR".parse().unwrap(), day("2026-12-06")).unwrap().stale);
    }

    #[test]
    fn bad_rates_are_refused_by_field() {
        let mut r = usd();
        assert_eq!(r.add_rate("USD", "1", "2026-11-01").unwrap_err().0, "currency");
        assert_eq!(r.add_rate("M", "1", "2026-11-01").unwrap_err().0, "currency");
        assert_eq!(r.add_rate("MYR", "0", "2026-11-01").unwrap_err().0, "rate");
        assert_eq!(r.add_rate("MYR", "-0.2", "2026-11-01").unwrap_err().0, "rate");
        assert_eq!(r.add_rate("MYR", "1e3", "2026-11-01").unwrap_err().0, "rate");
        assert_eq!(r.add_rate("MYR", "0.2", "28/11/2026").unwrap_err().0, "as_of");
        r.add_rate("MYR", "0.2", "2026-11-01").unwrap();
        assert_eq!(r.add_rate("myr", "0.3", "2026-11-01").unwrap_err().0, "as_of");
    }
}
