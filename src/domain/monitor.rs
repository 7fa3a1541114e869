//! Balance monitors (SPEC §8.2): a rule on one figure of the entries it matches, the state of
//! each matched `(account, wallet, currency)` entry (`ok` or `firing`), and the pure decision
//! that moves a state on a new observation. The store keeps the states and writes the events
//! in the transaction of the figure; the decision is made here, once, for both backends.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::json;

use super::event::NewEvent;
use super::{AccountId, BalanceEntry, Currency, Provider};

/// Which figure of an entry a monitor watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Field {
    Available,
    Pending,
    Reserved,
    Total,
}

impl Field {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::Pending => "pending",
            Self::Reserved => "reserved",
            Self::Total => "total",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "available" => Self::Available,
            "pending" => Self::Pending,
            "reserved" => Self::Reserved,
            "total" => Self::Total,
            _ => return None,
        })
    }

    /// The figure of `entry` (`None`: the provider does not report it).
    pub fn of(self, entry: &BalanceEntry) -> Option<Decimal> {
        match self {
            Self::Available => entry.available,
            Self::Pending => entry.pending,
            Self::Reserved => entry.reserved,
            Self::Total => entry.total,
        }
    }
}

/// Which side of the threshold fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Condition {
    Below,
    Above,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Below => "below",
            Self::Above => "above",
        }
    }
}

/// One `[[monitors]]` rule, validated: `clear` is never on the firing side of `threshold`
/// (`clear` defaults to `threshold`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Monitor {
    pub id: String,
    pub account: Option<AccountId>,
    pub provider: Option<Provider>,
    pub wallet: Option<String>,
    pub currency: Currency,
    pub field: Field,
    pub condition: Condition,
    pub threshold: Decimal,
    pub clear: Decimal,
}

/// The state of one monitored entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Ok,
    Firing,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Firing => "firing",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ok" => Some(Self::Ok),
            "firing" => Some(Self::Firing),
            _ => None,
        }
    }
}

/// A stored entry's state: `since` when it entered it, `value` the latest observed figure
/// (`None` when the provider did not report it), `observed_at` when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryState {
    pub state: State,
    pub value: Option<Decimal>,
    pub since: DateTime<Utc>,
    pub observed_at: DateTime<Utc>,
}

/// What an observation did to an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Nothing: the state stays (its value and observation time move on).
    Stays,
    /// From not firing (or never seen) to firing: `balance.threshold_crossed`.
    Crossed,
    /// From firing back past `clear`: `balance.threshold_cleared`.
    Cleared,
}

/// One monitor's entry with its state, as the store keeps it and the API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonitorEntry {
    pub monitor: String,
    pub account: AccountId,
    pub provider: Provider,
    pub wallet: String,
    pub currency: Currency,
    pub state: EntryState,
}

impl Monitor {
    /// Whether the monitor watches `entry` of `account` (of `provider`).
    pub fn matches(&self, account: &AccountId, provider: Provider, entry: &BalanceEntry) -> bool {
        self.watches(account, provider, &entry.wallet, &entry.currency)
    }

    /// Whether the monitor watches the `(account, wallet, currency)` entry of an account of
    /// `provider` (a stored state of a monitor whose filters have changed since is not its).
    pub fn watches(&self, account: &AccountId, provider: Provider, wallet: &str, currency: &Currency) -> bool {
        *currency == self.currency
            && self.account.as_ref().is_none_or(|a| a == account)
            && self.provider.is_none_or(|p| p == provider)
            && self.wallet.as_deref().is_none_or(|w| w == wallet)
    }

    fn past_threshold(&self, value: Decimal) -> bool {
        match self.condition {
            Condition::Below => value < self.threshold,
            Condition::Above => value > self.threshold,
        }
    }

    fn back_past_clear(&self, value: Decimal) -> bool {
        match self.condition {
            Condition::Below => value >= self.clear,
            Condition::Above => value <= self.clear,
        }
    }

    /// The entry's new state after observing `value` at `at`, over the stored one (`None`:
    /// never seen), and what changed; `None` when the observation is older than the stored one
    /// (it is ignored). A `None` value (not reported) never fires or clears; the first figure
    /// ever seen fires if it is already past the threshold; a firing entry fires nothing more
    /// while it stays past `clear`.
    pub fn decide(
        &self,
        stored: Option<&EntryState>,
        value: Option<Decimal>,
        at: DateTime<Utc>,
    ) -> Option<(EntryState, Transition)> {
        let (state, since) = match stored {
            Some(s) if at < s.observed_at => return None,
            Some(s) => (s.state, s.since),
            None => (State::Ok, at),
        };
        let transition = match (state, value) {
            (State::Ok, Some(v)) if self.past_threshold(v) => Transition::Crossed,
            (State::Firing, Some(v)) if self.back_past_clear(v) => Transition::Cleared,
            _ => Transition::Stays,
        };
        let (state, since) = match transition {
            Transition::Crossed => (State::Firing, at),
            Transition::Cleared => (State::Ok, at),
            Transition::Stays => (state, since),
        };
        Some((EntryState { state, value, since, observed_at: at }, transition))
    }

    /// The event of `transition` for `entry` (none for [`Transition::Stays`]), with `data` as
    /// SPEC §8.1 lists it.
    pub fn event(&self, entry: &MonitorEntry, transition: Transition) -> Option<NewEvent> {
        let kind = match transition {
            Transition::Stays => return None,
            Transition::Crossed => "balance.threshold_crossed",
            Transition::Cleared => "balance.threshold_cleared",
        };
        Some(NewEvent {
            kind,
            account: entry.account.clone(),
            timestamp: entry.state.observed_at,
            data: json!({
                "monitor": self.id,
                "account": entry.account.as_str(),
                "provider": entry.provider.as_str(),
                "wallet": entry.wallet,
                "currency": entry.currency.as_str(),
                "field": self.field.as_str(),
                "condition": self.condition.as_str(),
                "threshold": self.threshold.to_string(),
                "clear": self.clear.to_string(),
                "value": entry.state.value.map(|v| v.to_string()),
                "observed_at": entry.state.observed_at,
            }),
        })
    }
}

/// The key of one monitored entry: (monitor, account, wallet, currency).
pub type EntryKey = (String, AccountId, String, Currency);

impl MonitorEntry {
    pub fn key(&self) -> EntryKey {
        (self.monitor.clone(), self.account.clone(), self.wallet.clone(), self.currency.clone())
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;
    use crate::domain::parse_decimal;

    fn d(text: &str) -> Decimal {
        parse_decimal(text).unwrap()
    }

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap() + TimeDelta::seconds(secs)
    }

    fn monitor(condition: Condition, threshold: &str, clear: &str) -> Monitor {
        Monitor {
            id: "low".into(),
            account: None,
            provider: None,
            wallet: None,
            currency: "MYR".parse().unwrap(),
            field: Field::Available,
            condition,
            threshold: d(threshold),
            clear: d(clear),
        }
    }

    /// Runs `values` (seconds, figure) through the monitor from no state; the transitions.
    fn run(m: &Monitor, values: &[(i64, Option<&str>)]) -> (Vec<Transition>, Option<EntryState>) {
        let mut state = None;
        let mut out = Vec::new();
        for (secs, value) in values {
            if let Some((next, transition)) = m.decide(state.as_ref(), value.map(d), t(*secs)) {
                state = Some(next);
                out.push(transition);
            }
        }
        (out, state)
    }

    use Transition::{Cleared, Crossed, Stays};

    #[test]
    fn below_fires_once_on_crossing_and_clears_at_clear() {
        let m = monitor(Condition::Below, "500.00", "750.00");
        let (transitions, state) = run(
            &m,
            &[
                (0, Some("800")),
                (1, Some("499.99")),
                (2, Some("100")),
                (3, Some("600")),
                (4, Some("749.99")),
                (5, Some("750.00")),
                (6, Some("800")),
                (7, Some("400")),
            ],
        );
        assert_eq!(
            transitions,
            [Stays, Crossed, Stays, Stays, Stays, Cleared, Stays, Crossed],
            "staying low fires nothing more; between threshold and clear stays firing; re-crossing fires again"
        );
        let state = state.unwrap();
        assert_eq!((state.state, state.since, state.value), (State::Firing, t(7), Some(d("400"))));
    }

    #[test]
    fn without_hysteresis_the_threshold_itself_clears_below() {
        let m = monitor(Condition::Below, "500", "500");
        let (transitions, _) = run(&m, &[(0, Some("500")), (1, Some("499")), (2, Some("500"))]);
        assert_eq!(transitions, [Stays, Crossed, Cleared], "500 is not below 500, and clears at >= 500");
    }

    #[test]
    fn above_fires_over_the_threshold_and_clears_at_or_under_clear() {
        let m = monitor(Condition::Above, "1000", "900");
        let (transitions, state) =
            run(&m, &[(0, Some("1000")), (1, Some("1000.01")), (2, Some("950")), (3, Some("900")), (4, Some("1200"))]);
        assert_eq!(transitions, [Stays, Crossed, Stays, Cleared, Crossed]);
        assert_eq!(state.unwrap().state, State::Firing);
    }

    #[test]
    fn the_first_figure_fires_if_already_past() {
        let m = monitor(Condition::Below, "500", "500");
        let (transitions, state) = run(&m, &[(0, Some("10"))]);
        assert_eq!(transitions, [Crossed]);
        assert_eq!(state.unwrap().since, t(0));
    }

    #[test]
    fn a_null_figure_never_fires_or_clears() {
        let m = monitor(Condition::Below, "500", "500");
        let (transitions, state) = run(&m, &[(0, None), (1, Some("10")), (2, None), (3, Some("10"))]);
        assert_eq!(
            transitions,
            [Stays, Crossed, Stays, Stays],
            "null keeps firing; the low figure after it is no new crossing"
        );
        let state = state.unwrap();
        assert_eq!((state.state, state.since), (State::Firing, t(1)));
        let (transitions, state) = run(&m, &[(0, None)]);
        assert_eq!(transitions, [Stays]);
        assert_eq!(state.unwrap().state, State::Ok, "a first null figure is no crossing");
    }

    #[test]
    fn an_older_observation_is_ignored() {
        let m = monitor(Condition::Below, "500", "500");
        let (transitions, state) = run(&m, &[(10, Some("800")), (5, Some("10")), (10, Some("800"))]);
        assert_eq!(transitions, [Stays, Stays], "the older low figure is not taken; the same time again is");
        assert_eq!(state.unwrap().state, State::Ok);
    }

    #[test]
    fn a_monitor_matches_its_filters_and_currency() {
        let mut m = monitor(Condition::Below, "500", "500");
        let account: AccountId = "leanx-main".parse().unwrap();
        let myr = BalanceEntry::single_figure("prefund", "MYR".parse().unwrap(), d("1"));
        let usd = BalanceEntry::single_figure("prefund", "USD".parse().unwrap(), d("1"));
        assert!(m.matches(&account, Provider::Leanx, &myr));
        assert!(!m.matches(&account, Provider::Leanx, &usd), "currency is required");
        m.wallet = Some("transaction".into());
        assert!(!m.matches(&account, Provider::Leanx, &myr));
        m.wallet = Some("prefund".into());
        m.provider = Some(Provider::Luxtak);
        assert!(!m.matches(&account, Provider::Leanx, &myr));
        m.provider = Some(Provider::Leanx);
        m.account = Some("other".parse().unwrap());
        assert!(!m.matches(&account, Provider::Leanx, &myr));
    }

    #[test]
    fn events_carry_the_spec_s_data() {
        let m = monitor(Condition::Below, "500.00", "750.00");
        let (state, transition) = m.decide(None, Some(d("12.30")), t(0)).unwrap();
        let entry = MonitorEntry {
            monitor: m.id.clone(),
            account: "leanx-main".parse().unwrap(),
            provider: Provider::Leanx,
            wallet: "prefund".into(),
            currency: "MYR".parse().unwrap(),
            state,
        };
        let event = m.event(&entry, transition).unwrap();
        assert_eq!(event.kind, "balance.threshold_crossed");
        assert_eq!(
            event.data,
            json!({"monitor": "low", "account": "leanx-main", "provider": "leanx", "wallet": "prefund",
                   "currency": "MYR", "field": "available", "condition": "below", "threshold": "500.00",
                   "clear": "750.00", "value": "12.30", "observed_at": t(0)})
        );
        assert!(m.event(&entry, Stays).is_none());
    }
}
