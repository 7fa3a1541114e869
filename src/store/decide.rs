//! What a write keeps, and whether the schema is ready, decided once for both backends:
//! [`sqlite`](super::sqlite) and [`postgres`](super::postgres) read the stored row, ask here,
//! and run the statement that the answer names. Keeping the rules out of the SQL keeps the
//! twins from drifting apart.

use super::StoreError;
use crate::domain::event::{self, NewEvent};
use crate::domain::monitor::{EntryState, Monitor, MonitorEntry};
use crate::domain::{BalanceEntry, Payout, PayoutStatus};

/// Whether a schema whose newest applied migration is `applied` (`None`: none applied) is
/// ready for a build whose newest migration is `expected`. A schema migrated further, by a
/// newer build, counts as ready too.
pub fn schema_ready(applied: Option<i64>, expected: i64) -> Result<(), StoreError> {
    match applied {
        Some(v) if v >= expected => Ok(()),
        _ => Err(StoreError::NotMigrated(format!("expected version {expected}, found {applied:?}"))),
    }
}

/// What a fetched figure set is to the last stored point of its series.
#[derive(Debug, PartialEq, Eq)]
pub enum Point<Id> {
    /// The same figures (scale included): the stored point, by its row id, is confirmed until
    /// the fetch's time.
    Confirms(Id),
    /// New figures, or a series never seen: a new change point starts at the fetch's time,
    /// and raises `balance.changed` in the same transaction ([`Point::event`]). Holds the
    /// figures it follows (`None`: the first of its series).
    Changes(Option<BalanceEntry>),
}

/// Decides between confirming the last stored point of a series (`last`: its row id and
/// figures, if any) and starting a new one for `fetched`.
pub fn point<Id>(last: Option<(Id, BalanceEntry)>, fetched: &BalanceEntry) -> Point<Id> {
    match last {
        Some((id, stored)) if stored.same_figures(fetched) => Point::Confirms(id),
        last => Point::Changes(last.map(|(_, stored)| stored)),
    }
}

impl<Id> Point<Id> {
    /// The event a write of this point raises, in its transaction: `balance.changed` for a
    /// new change point, nothing for a confirmation.
    pub fn event(&self, snapshot: &super::AccountSnapshot, fetched: &BalanceEntry) -> Option<NewEvent> {
        match self {
            Point::Confirms(_) => None,
            Point::Changes(previous) => Some(event::balance_changed(
                &snapshot.account,
                snapshot.provider,
                fetched,
                previous.as_ref(),
                snapshot.fetched_at,
            )),
        }
    }
}

/// A monitor's entry after observing `fetched` of `snapshot`, over its stored state (`None`:
/// never seen), with the event of its transition, if any; `None` when the observation is older
/// than the stored one (nothing to write).
pub fn monitor_entry(
    monitor: &Monitor,
    stored: Option<&EntryState>,
    snapshot: &super::AccountSnapshot,
    fetched: &BalanceEntry,
) -> Option<(MonitorEntry, Option<NewEvent>)> {
    let (state, transition) = monitor.decide(stored, monitor.field.of(fetched), snapshot.fetched_at)?;
    let entry = MonitorEntry {
        monitor: monitor.id.clone(),
        account: snapshot.account.clone(),
        provider: snapshot.provider,
        wallet: fetched.wallet.clone(),
        currency: fetched.currency.clone(),
        state,
    };
    let event = monitor.event(&entry, transition);
    Some((entry, event))
}

/// The `(monitor, entry)` pairs a snapshot's monitors are evaluated on, in a fixed order (the
/// snapshot's entries, then the monitors' config order): every writer locks the state rows of
/// one account in this order.
pub fn monitored<'a>(
    snapshot: &'a super::AccountSnapshot,
    monitors: &'a [Monitor],
) -> impl Iterator<Item = (&'a Monitor, &'a BalanceEntry)> + 'a {
    snapshot.entries.iter().flat_map(move |e| {
        monitors.iter().filter(move |m| m.matches(&snapshot.account, snapshot.provider, e)).map(move |m| (m, e))
    })
}

/// The events of saving `saved` over the stored normalized status (`None`: first sight), in
/// the transaction of the save: `payout.status_changed` (with `payout.finalized` for a final
/// status) on first sight and when the normalized status changes.
pub fn payout_events(previous: Option<&(String, String)>, saved: &super::StoredPayout) -> Vec<NewEvent> {
    let previous = previous.map(|(status, _)| PayoutStatus::parse(status).unwrap_or(PayoutStatus::Unknown));
    event::payout_events(&saved.account, saved.provider, previous, &saved.payout, saved.fetched_at)
}

/// Whether saving `saved` over the stored `(status, provider_status)` of the payout (`None`:
/// first sight) is a transition to append to its history. A change of the provider's own
/// status counts even when it maps to the same status.
pub fn is_transition(previous: Option<&(String, String)>, saved: &Payout) -> bool {
    previous.is_none_or(|(status, provider_status)| {
        status != saved.status.as_str() || *provider_status != saved.provider_status
    })
}

/// Whether a `reported` status would take a `stored` payout back from a final status: a final
/// status may only be followed by another final one; of those only a refund after a success
/// (`succeeded` → `reversed`) is expected, and the rest are still taken as reported.
pub fn regresses(stored: &Payout, reported: &Payout) -> bool {
    stored.is_final
        && !reported.is_final
        && !(stored.status == PayoutStatus::Succeeded && reported.status == PayoutStatus::Reversed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payout(status: PayoutStatus, is_final: bool) -> Payout {
        Payout {
            id: "p".into(),
            reference: None,
            status,
            provider_status: status.as_str().into(),
            is_final,
            amount: None,
            currency: None,
            fee: None,
            failure: None,
            created_at: None,
            updated_at: None,
        }
    }

    #[test]
    fn a_schema_is_ready_once_this_build_s_migrations_are_applied() {
        assert!(schema_ready(Some(3), 3).is_ok());
        assert!(schema_ready(Some(4), 3).is_ok(), "migrated further by a newer build");
        assert!(matches!(schema_ready(Some(2), 3), Err(StoreError::NotMigrated(_))));
        assert!(matches!(schema_ready(None, 3), Err(StoreError::NotMigrated(_))));
    }

    #[test]
    fn a_final_status_never_goes_back_to_a_non_final_one() {
        let succeeded = payout(PayoutStatus::Succeeded, true);
        assert!(regresses(&succeeded, &payout(PayoutStatus::Pending, false)));
        assert!(regresses(&payout(PayoutStatus::Failed, true), &payout(PayoutStatus::Processing, false)));
        assert!(!regresses(&succeeded, &payout(PayoutStatus::Reversed, true)), "refunds after payment exist");
        assert!(!regresses(&payout(PayoutStatus::Pending, false), &succeeded));
        assert!(!regresses(&payout(PayoutStatus::Pending, false), &payout(PayoutStatus::Processing, false)));
    }

    #[test]
    fn a_save_is_a_transition_on_first_sight_and_when_either_status_changes() {
        let pending = payout(PayoutStatus::Pending, false);
        assert!(is_transition(None, &pending));
        assert!(!is_transition(Some(&("pending".into(), "pending".into())), &pending));
        assert!(is_transition(Some(&("processing".into(), "pending".into())), &pending));
        assert!(is_transition(Some(&("pending".into(), "QUEUED".into())), &pending), "the provider's status moved");
    }

    #[test]
    fn the_same_figures_confirm_the_last_point_and_others_start_one() {
        let entry = |amount: &str| BalanceEntry {
            wallet: "prefund".into(),
            currency: "MYR".parse().unwrap(),
            available: Some(crate::domain::parse_decimal(amount).unwrap()),
            pending: None,
            reserved: None,
            total: None,
            blocked: false,
        };
        assert_eq!(point(Some((7, entry("1.00"))), &entry("1.00")), Point::Confirms(7));
        assert_eq!(
            point(Some((7, entry("1.00"))), &entry("1.0")),
            Point::Changes(Some(entry("1.00"))),
            "the scale is part of a figure"
        );
        assert_eq!(point(Some((7, entry("1.00"))), &entry("2.00")), Point::Changes(Some(entry("1.00"))));
        assert_eq!(point::<i64>(None, &entry("1.00")), Point::Changes(None));
    }
}
