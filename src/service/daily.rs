//! `GET /balances/daily` (SPEC §10.2): per day of a time zone and per (account, wallet,
//! currency), the opening, closing, lowest and highest figures, the number of changes, and
//! whether the closing figure was stale at the day's end. Read from the stored change points
//! in two queries: the points in force at the range's start, and those first seen within it.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, TimeDelta, TimeZone, Utc};
use rust_decimal::Decimal;

use super::balances::{Selection, SelectionError};
use super::{Service, Within};
use crate::clock::age;
use crate::domain::{AccountId, Currency, Provider};
use crate::store::{HistoryPoint, StoreError};

/// The longest range a request may ask for, in days.
pub const MAX_DAYS: i64 = 366;

/// The most change points one request reads; a range holding more is refused (narrow it).
pub const MAX_POINTS: u32 = 200_000;

/// A time zone: an IANA name or a fixed offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Zone {
    Iana(chrono_tz::Tz),
    Fixed(FixedOffset),
}

impl Zone {
    /// An IANA name (`Asia/Kuala_Lumpur`, `UTC`) or `±HH:MM`. A `+` left unencoded in a query
    /// string arrives as a space: ` 08:00` is read as `+08:00`.
    pub fn parse(text: &str) -> Option<Self> {
        let plus = text.strip_prefix(' ').map(|rest| format!("+{rest}"));
        let text = plus.as_deref().unwrap_or(text);
        if let Some(sign) = text.chars().next().filter(|c| matches!(c, '+' | '-')) {
            let (h, m) = text[1..].split_once(':')?;
            let digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
            if !digits(h) || !digits(m) {
                return None;
            }
            let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
            if h > 23 || m > 59 {
                return None;
            }
            let seconds = (h * 3600 + m * 60) * if sign == '-' { -1 } else { 1 };
            return FixedOffset::east_opt(seconds).map(Self::Fixed);
        }
        text.parse::<chrono_tz::Tz>().ok().map(Self::Iana)
    }

    /// The zone as the answer names it: the IANA name, or `±HH:MM`.
    pub fn name(&self) -> String {
        match self {
            Self::Iana(tz) => tz.name().to_owned(),
            Self::Fixed(offset) => offset.to_string(),
        }
    }

    /// The first instant of `date` in this zone. Where a daylight-saving change skips
    /// midnight, the day starts at the first local time that exists.
    pub fn day_start(&self, date: NaiveDate) -> Option<DateTime<Utc>> {
        let midnight = date.and_time(NaiveTime::MIN);
        match self {
            Self::Fixed(offset) => offset.from_local_datetime(&midnight).single().map(|t| t.to_utc()),
            Self::Iana(tz) => (0..=16)
                .map(|quarter| midnight + TimeDelta::minutes(15 * quarter))
                .find_map(|local| tz.from_local_datetime(&local).earliest())
                .map(|t| t.to_utc()),
        }
    }
}

/// What a `/balances/daily` request asks for.
#[derive(Clone, Debug)]
pub struct DailyQuery {
    /// Accounts, providers and currencies (`max_age` and `include_raw` are not used).
    pub selection: Selection,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub zone: Zone,
}

/// The four figures of an entry; `None` where the provider reports none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    pub available: Option<Decimal>,
    pub pending: Option<Decimal>,
    pub reserved: Option<Decimal>,
    pub total: Option<Decimal>,
}

impl Figures {
    fn of(p: &HistoryPoint) -> Self {
        let e = &p.entry;
        Self { available: e.available, pending: e.pending, reserved: e.reserved, total: e.total }
    }

    /// Field by field, the lower (or higher) of two, a missing figure ignored.
    fn merge(self, other: Self, pick: fn(Decimal, Decimal) -> Decimal) -> Self {
        let f = |a: Option<Decimal>, b: Option<Decimal>| match (a, b) {
            (Some(a), Some(b)) => Some(pick(a, b)),
            (a, b) => a.or(b),
        };
        Self {
            available: f(self.available, other.available),
            pending: f(self.pending, other.pending),
            reserved: f(self.reserved, other.reserved),
            total: f(self.total, other.total),
        }
    }
}

/// One day of one (account, wallet, currency).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DailyRow {
    pub date: NaiveDate,
    pub account: AccountId,
    pub provider: Provider,
    pub wallet: String,
    pub currency: Currency,
    /// In force at the day's start; `None` when the series began that day.
    pub opening: Option<Figures>,
    /// In force at the day's end (now, for today).
    pub closing: Figures,
    pub low: Figures,
    pub high: Figures,
    /// Change points first seen that day.
    pub changes: u32,
    /// The closing figure was older than the account's ttl at the day's end.
    pub stale: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DailyError {
    #[error(transparent)]
    Selection(#[from] SelectionError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the range holds more than {MAX_POINTS} change points; ask for fewer days or accounts")]
    TooManyPoints,
    #[error("a day of the range has no start in the time zone")]
    NoDayStart,
}

impl Service {
    /// The rows of `query`, by date and then account, wallet and currency.
    pub async fn balances_daily(&self, query: &DailyQuery) -> Result<Vec<DailyRow>, DailyError> {
        let selected: Vec<_> = self.select(&query.selection)?.map(|(_, a)| a).collect();
        let ids: Vec<AccountId> = selected.iter().map(|a| a.id().clone()).collect();
        let now = self.clock.now();
        // Each day's bounds, days not yet begun left out.
        let mut days = Vec::new();
        for date in query.from.iter_days().take_while(|d| *d <= query.to) {
            let start = query.zone.day_start(date).ok_or(DailyError::NoDayStart)?;
            if start > now {
                break;
            }
            let next = date.succ_opt().and_then(|d| query.zone.day_start(d)).ok_or(DailyError::NoDayStart)?;
            days.push((date, start, next));
        }
        let (Some(&(_, start, _)), Some(&(_, _, end))) = (days.first(), days.last()) else {
            return Ok(Vec::new());
        };
        let end = end.min(now);
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let opening = self.store.balances_as_of(&ids, start, Within::Until(deadline)).await?;
        let within =
            self.store.balance_points_between(&ids, start, end, MAX_POINTS + 1, Within::Until(deadline)).await?;
        if within.len() > MAX_POINTS as usize {
            return Err(DailyError::TooManyPoints);
        }
        let mut series: BTreeMap<(AccountId, String, Currency), Vec<HistoryPoint>> = BTreeMap::new();
        let key = |p: &HistoryPoint| (p.account.clone(), p.entry.wallet.clone(), p.entry.currency.clone());
        for p in opening {
            series.entry(key(&p)).or_default().push(p);
        }
        // The store gives each series' points together, so the key is looked up once a run.
        let mut within = within.into_iter().peekable();
        while let Some(first) = within.next() {
            let points = series.entry(key(&first)).or_default();
            let same = |p: &HistoryPoint, first: &HistoryPoint| {
                p.account == first.account
                    && p.entry.wallet == first.entry.wallet
                    && p.entry.currency == first.entry.currency
            };
            let run = points.len();
            points.push(first);
            while let Some(p) = within.next_if(|p| same(p, &points[run])) {
                points.push(p);
            }
        }
        let currencies = &query.selection.currencies;
        let mut rows = Vec::new();
        for ((account, wallet, currency), points) in series {
            if !currencies.is_empty() && !currencies.contains(&currency) {
                continue;
            }
            let Some(state) = selected.iter().find(|a| *a.id() == account) else { continue };
            let ttl = state.config.freshness.ttl;
            for &(date, start, next) in &days {
                let day_end = next.min(now);
                let at_start = points.partition_point(|p| p.first_seen_at <= start);
                let before_end = points.partition_point(|p| p.first_seen_at < next);
                let Some(closing) = before_end.checked_sub(1).map(|i| &points[i]) else { continue };
                let opening = at_start.checked_sub(1).map(|i| Figures::of(&points[i]));
                // The figures in force during the day: the opening one and each new one.
                let during = at_start.saturating_sub(1)..before_end;
                let (mut low, mut high) = (Figures::of(&points[during.start]), Figures::of(&points[during.start]));
                for p in &points[during] {
                    low = low.merge(Figures::of(p), Decimal::min);
                    high = high.merge(Figures::of(p), Decimal::max);
                }
                let changes = before_end - points.partition_point(|p| p.first_seen_at < start).min(before_end);
                rows.push(DailyRow {
                    date,
                    account: account.clone(),
                    provider: closing.provider,
                    wallet: wallet.clone(),
                    currency: currency.clone(),
                    opening,
                    closing: Figures::of(closing),
                    low,
                    high,
                    changes: u32::try_from(changes).unwrap_or(u32::MAX),
                    stale: closing.last_confirmed_at < day_end && age(day_end, closing.last_confirmed_at) > ttl,
                });
            }
        }
        rows.sort_by_key(|r| r.date);
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn zones_parse_as_names_and_offsets() {
        assert_eq!(Zone::parse("UTC").unwrap().name(), "UTC");
        assert_eq!(Zone::parse("Asia/Kuala_Lumpur").unwrap().name(), "Asia/Kuala_Lumpur");
        assert_eq!(Zone::parse("+08:00").unwrap().name(), "+08:00");
        assert_eq!(Zone::parse(" 08:00").unwrap().name(), "+08:00", "an unencoded + is a space");
        assert_eq!(Zone::parse("-03:30").unwrap().name(), "-03:30");
        for bad in ["", "Mars/Olympus", "+8:00", "+08", "+24:00", "+08:60", "08:00", "+0a:00", "+-1:00"] {
            assert_eq!(Zone::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn days_are_23_or_25_hours_around_daylight_saving_changes() {
        let london = Zone::parse("Europe/London").unwrap();
        let day = |d: &str| d.parse::<NaiveDate>().unwrap();
        let len = |d: &str| {
            let d = day(d);
            london.day_start(d.succ_opt().unwrap()).unwrap() - london.day_start(d).unwrap()
        };
        assert_eq!(len("2026-03-29"), TimeDelta::hours(23));
        assert_eq!(len("2026-10-25"), TimeDelta::hours(25));
        assert_eq!(len("2026-11-01"), TimeDelta::hours(24));
        assert_eq!(london.day_start(day("2026-07-01")).unwrap(), utc("2026-06-30T23:00:00Z"));
        // São Paulo's 2018 change skipped midnight: the day began at 01:00 local (03:00 UTC).
        let sao_paulo = Zone::parse("America/Sao_Paulo").unwrap();
        assert_eq!(sao_paulo.day_start(day("2018-11-04")).unwrap(), utc("2018-11-04T03:00:00Z"));
        let kl = Zone::parse("+08:00").unwrap();
        assert_eq!(kl.day_start(day("2026-11-30")).unwrap(), utc("2026-11-29T16:00:00Z"));
    }
}
