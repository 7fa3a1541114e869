//! Events (SPEC §8.1): facts tally observed, each stored in the same transaction as the change
//! it reports. Built here, once, from the domain values; the store keeps them, the API shows
//! them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use super::{AccountId, BalanceEntry, Payout, PayoutFailure, PayoutStatus, Provider};

/// Every event type this build raises, in the order `tally_events_total` lists them.
pub const EVENT_TYPES: [&str; 8] = [
    "balance.changed",
    "balance.threshold_crossed",
    "balance.threshold_cleared",
    "payout.status_changed",
    "payout.finalized",
    "account.unhealthy",
    "account.recovered",
    WEBHOOK_TEST,
];

/// `webhook.test`: the event `POST /webhooks/{id}/test` raises, for that webhook only.
pub const WEBHOOK_TEST: &str = "webhook.test";

/// An event to store: its id is given by the store, in feed order.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub kind: &'static str,
    pub account: AccountId,
    /// When tally observed the fact (the service's clock, to the millisecond).
    pub timestamp: DateTime<Utc>,
    pub data: Value,
}

/// A stored event, as the feed shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    /// `evt_…`: opaque, unique, and in feed order.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub timestamp: DateTime<Utc>,
    pub data: Value,
}

/// The id of the event stored at position `seq` of the feed: `evt_` and 19 digits, so that
/// ids sort as the feed does, as text too.
pub fn event_id(seq: i64) -> String {
    format!("evt_{seq:019}")
}

impl NewEvent {
    /// The event as stored at feed position `seq`.
    pub fn stored(&self, seq: i64) -> Event {
        Event { id: event_id(seq), kind: self.kind.to_owned(), timestamp: self.timestamp, data: self.data.clone() }
    }
}

/// The feed position of an event id; `None` for anything [`event_id`] does not make.
pub fn event_seq(id: &str) -> Option<i64> {
    let digits = id.strip_prefix("evt_")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&n: &i64| n >= 0)
}

fn amount(d: &Option<rust_decimal::Decimal>) -> Value {
    d.map_or(Value::Null, |d| Value::String(d.to_string()))
}

/// A figures object as in `/balances`: exact decimal strings (`null` when not reported).
pub fn figures(e: &BalanceEntry) -> Value {
    json!({
        "available": amount(&e.available),
        "pending": amount(&e.pending),
        "reserved": amount(&e.reserved),
        "total": amount(&e.total),
        "blocked": e.blocked,
    })
}

/// `balance.changed`: a new change point of `(account, wallet, currency)`; `previous` is the
/// point it follows (`None` for the first figure).
pub fn balance_changed(
    account: &AccountId,
    provider: Provider,
    current: &BalanceEntry,
    previous: Option<&BalanceEntry>,
    observed_at: DateTime<Utc>,
) -> NewEvent {
    NewEvent {
        kind: "balance.changed",
        account: account.clone(),
        timestamp: observed_at,
        data: json!({
            "account": account.as_str(),
            "provider": provider.as_str(),
            "wallet": current.wallet,
            "currency": current.currency.as_str(),
            "previous": previous.map_or(Value::Null, figures),
            "current": figures(current),
            "observed_at": observed_at,
        }),
    }
}

/// A payout as `GET /payouts/{id}` shows it, built from the domain payout in this one place
/// (the API's `PayoutResponse` is made from it). A stored observation is neither stale nor
/// failed: `stale` is false and `error` null.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PayoutObject {
    pub id: String,
    pub account: AccountId,
    pub provider: Provider,
    pub status: PayoutStatus,
    pub provider_status: String,
    #[serde(rename = "final")]
    pub is_final: bool,
    pub amount: Option<rust_decimal::Decimal>,
    pub currency: Option<super::Currency>,
    pub fee: Option<rust_decimal::Decimal>,
    pub reference: Option<String>,
    pub failure: Option<PayoutFailure>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub fetched_at: DateTime<Utc>,
    pub stale: bool,
    pub error: Option<Value>,
}

impl PayoutObject {
    pub fn of(account: &AccountId, provider: Provider, payout: &Payout, fetched_at: DateTime<Utc>) -> Self {
        let p = payout.clone();
        Self {
            id: p.id,
            account: account.clone(),
            provider,
            status: p.status,
            provider_status: p.provider_status,
            is_final: p.is_final,
            amount: p.amount,
            currency: p.currency,
            fee: p.fee,
            reference: p.reference,
            failure: p.failure,
            created_at: p.created_at,
            updated_at: p.updated_at,
            fetched_at,
            stale: false,
            error: None,
        }
    }
}

/// The events of a payout saved with `payout`'s status over `previous` (`None`: first sight):
/// `payout.status_changed` when first stored or its normalized status changed, with
/// `payout.finalized` when that status is final; nothing otherwise.
pub fn payout_events(
    account: &AccountId,
    provider: Provider,
    previous: Option<PayoutStatus>,
    payout: &Payout,
    observed_at: DateTime<Utc>,
) -> Vec<NewEvent> {
    if previous == Some(payout.status) {
        return Vec::new();
    }
    let object = PayoutObject::of(account, provider, payout, observed_at);
    let data = json!({
        "account": account.as_str(),
        "provider": provider.as_str(),
        "previous_status": previous.map(PayoutStatus::as_str),
        "payout": object,
    });
    let event = |kind| NewEvent { kind, account: account.clone(), timestamp: observed_at, data: data.clone() };
    let mut events = vec![event("payout.status_changed")];
    if payout.is_final {
        events.push(event("payout.finalized"));
    }
    events
}

/// `account.unhealthy`: the account's circuit opened; `error` is the failure as `/balances`
/// shows it (`code`, `message`, `upstream_status`, `at`).
pub fn account_unhealthy(
    account: &AccountId,
    provider: Provider,
    error: Value,
    last_success_at: Option<DateTime<Utc>>,
    at: DateTime<Utc>,
) -> NewEvent {
    NewEvent {
        kind: "account.unhealthy",
        account: account.clone(),
        timestamp: at,
        data: json!({
            "account": account.as_str(),
            "provider": provider.as_str(),
            "error": error,
            "last_success_at": last_success_at,
        }),
    }
}

/// `account.recovered`: the first successful fetch after the circuit opened at `unhealthy_since`.
pub fn account_recovered(
    account: &AccountId,
    provider: Provider,
    unhealthy_since: DateTime<Utc>,
    recovered_at: DateTime<Utc>,
) -> NewEvent {
    NewEvent {
        kind: "account.recovered",
        account: account.clone(),
        timestamp: recovered_at,
        data: json!({
            "account": account.as_str(),
            "provider": provider.as_str(),
            "unhealthy_since": unhealthy_since,
            "recovered_at": recovered_at,
        }),
    }
}

/// `webhook.test`: raised by `POST /webhooks/{id}/test`, for that webhook only. It is about no
/// account ([`AccountId::none`]).
pub fn webhook_test(webhook: &str, at: DateTime<Utc>) -> NewEvent {
    NewEvent { kind: WEBHOOK_TEST, account: AccountId::none(), timestamp: at, data: json!({ "webhook": webhook }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_as_the_feed_and_read_back() {
        assert_eq!(event_id(42), "evt_0000000000000000042");
        assert!(event_id(9) < event_id(10));
        assert_eq!(event_seq(&event_id(42)), Some(42));
        assert_eq!(event_seq("evt_"), None);
        assert_eq!(event_seq("evt_-1"), None);
        assert_eq!(event_seq("bal_1"), None);
    }
}
