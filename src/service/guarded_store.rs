//! The store as the service uses it: every call bounded, by what is known of the store's
//! health and by the time its caller has left, and every result recorded in that health (for
//! `/readyz` and logs). A store already known to be failing gets a short bound, so an outage
//! does not add its connection timeout to every answer; a stalled store cannot hold an answer
//! past its deadline; and a write that must not be lost runs on after its caller stops waiting.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::domain::AccountId;
use crate::domain::monitor::{Monitor, MonitorEntry};
use crate::store::{
    AccountSnapshot, CallbackReceipt, Cluster, HistoryPoint, HistoryQuery, PayoutListQuery, PayoutWatch, Store,
    StoreError, StoredPayout,
};
use crate::sync::MutexExt;

/// How long a store call may take while the store answers.
const STORE_BOUND: Duration = Duration::from_secs(5);
/// How long a store call may take once the store is known to be failing, so an outage does
/// not add its connection timeout to every answer. A call given at least this long that does
/// not answer marks the store as failing.
const FAILING_STORE_BOUND: Duration = Duration::from_millis(300);

/// Whether the store answered the last time it was used (for `/readyz` and logs), and whether
/// the last write went through.
#[derive(Default)]
pub struct StoreHealth {
    last_error: Mutex<Option<String>>,
    /// Why the last write failed; cleared by a write that goes through (a fetch's, a payout's,
    /// or `/readyz`'s probe). A read that answers says nothing about writes: on a full disk
    /// reads go on answering while every write fails.
    failed_write: Mutex<Option<String>>,
}

impl StoreHealth {
    /// A write refused for its values (`InvalidInput`) says nothing of whether the store takes
    /// writes, and changes nothing.
    fn record_write<T>(&self, result: &Result<T, StoreError>) {
        match result {
            Ok(_) => *self.failed_write.locked() = None,
            Err(StoreError::InvalidInput(_)) => {}
            Err(e) => *self.failed_write.locked() = Some(e.to_string()),
        }
    }

    /// Why the last write failed, while no write has gone through since.
    pub fn failed_write(&self) -> Option<String> {
        self.failed_write.locked().clone()
    }

    /// A call refused for its values (`InvalidInput`) was answered: the store is reachable. No
    /// input can mark the store failing.
    fn record<T>(&self, result: &Result<T, StoreError>) {
        let mut last = self.last_error.locked();
        match result {
            Ok(_) | Err(StoreError::InvalidInput(_)) => *last = None,
            Err(e) => *last = Some(e.to_string()),
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.locked().clone()
    }

    /// Whether the last store call failed: then there is nothing to coordinate replicas through.
    pub fn is_failing(&self) -> bool {
        self.last_error.locked().is_some()
    }

    /// How long the next store call may take, from what is known of the store.
    fn bound(&self) -> Duration {
        if self.is_failing() { FAILING_STORE_BOUND } else { STORE_BOUND }
    }

    /// Runs a store call for at most the health's bound, and until `within` allows, recording
    /// the result. A call cut short before [`FAILING_STORE_BOUND`] (the caller had no more
    /// time) says nothing about the store.
    pub(super) async fn run<T>(
        &self,
        within: Within,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let bound = match within {
            Within::Health => self.bound(),
            Within::Until(by) => self.bound().min(by.saturating_duration_since(Instant::now())),
        };
        match tokio::time::timeout(bound, call).await {
            Ok(result) => {
                self.record(&result);
                result
            }
            Err(_) => {
                let late = Err(StoreError::Unavailable("the store did not answer in time".into()));
                if bound >= FAILING_STORE_BOUND {
                    self.record(&late);
                }
                late
            }
        }
    }

    /// A store write that must not be lost because a request stopped waiting for it: it runs
    /// in its own task (bounded by the health only), and the caller waits for it until `by`.
    /// `None` when the caller stopped waiting first; the write goes on.
    pub(super) async fn behind<T: Send + 'static>(
        self: &Arc<Self>,
        call: impl Future<Output = Result<T, StoreError>> + Send + 'static,
        by: Instant,
    ) -> Option<Result<T, StoreError>> {
        let health = Arc::clone(self);
        let write = tokio::spawn(async move {
            let written = health.run(Within::Health, call).await;
            health.record_write(&written);
            written
        });
        match tokio::time::timeout_at(by, write).await {
            Ok(joined) => Some(joined.unwrap_or_else(|e| Err(StoreError::Unavailable(e.to_string())))),
            Err(_) => None,
        }
    }
}

/// How long a store call may wait, besides the bound the store's health sets.
#[derive(Clone, Copy, Debug)]
pub enum Within {
    /// The health's bound only: work no request waits on.
    Health,
    /// Until this instant: a step of a request, which a stalled store must not hold past it.
    Until(Instant),
}

impl Within {
    /// The part of the time left before `deadline` that a request spends on the store before
    /// fetching: a quarter, so that a stalled store leaves the upstream call most of it. Taken
    /// once per step: the step's store calls share it.
    pub fn share_of(deadline: Instant) -> Self {
        let now = Instant::now();
        Self::Until(now + deadline.saturating_duration_since(now) / 4)
    }
}

/// How long a step that must finish before answering may wait for the write of a fetch's
/// result: until the deadline, and at least [`FAILING_STORE_BOUND`] (the fetch outlived the
/// request that started it; later requests joining it want the write too).
pub(super) fn write_until(deadline: Instant) -> Instant {
    deadline.max(Instant::now() + FAILING_STORE_BOUND)
}

/// The store with its health: the bounded store calls the service makes.
pub struct GuardedStore {
    store: Arc<dyn Store>,
    health: Arc<StoreHealth>,
}

impl GuardedStore {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, health: Default::default() }
    }

    pub fn health(&self) -> &StoreHealth {
        &self.health
    }

    /// The coordination of the replicas sharing this store, if they can share it (PostgreSQL),
    /// with the health it is guarded by: the store's own, for they are one database.
    pub(super) fn cluster(&self) -> Option<(Arc<dyn Cluster>, Arc<StoreHealth>)> {
        Some((self.store.cluster()?, Arc::clone(&self.health)))
    }

    /// Whether the store answers, holds the schema this build expects, and takes writes (for
    /// `/readyz`, which bounds it, and which must not be cut short by what was known of the
    /// store). After a failed write, a probe write must go through: a store that answers reads
    /// but refuses writes (a full disk) is not ready, and is ready again once it takes writes,
    /// whether or not requests come to write.
    pub async fn check_ready(&self) -> Result<(), StoreError> {
        self.store.check_ready().await?;
        if self.health.failed_write().is_some() {
            let probe = self.store.check_writable().await;
            self.health.record_write(&probe);
            probe?;
        }
        Ok(())
    }

    /// The last stored figures of every account: read at start, before serving, within what
    /// is left of start-up's budget. A store that is down then is known to be failing from the
    /// first request on.
    pub async fn all_latest_balances(&self, within: Within) -> Result<Vec<AccountSnapshot>, StoreError> {
        self.health.run(within, self.store.all_latest_balances()).await
    }

    pub async fn latest_balances(
        &self,
        account: &AccountId,
        within: Within,
    ) -> Result<Option<AccountSnapshot>, StoreError> {
        self.health.run(within, self.store.latest_balances(account)).await
    }

    pub async fn balance_history(&self, query: &HistoryQuery, within: Within) -> Result<Vec<HistoryPoint>, StoreError> {
        self.health.run(within, self.store.balance_history(query)).await
    }

    pub async fn balances_as_of(
        &self,
        accounts: &[AccountId],
        as_of: DateTime<Utc>,
        within: Within,
    ) -> Result<Vec<HistoryPoint>, StoreError> {
        self.health.run(within, self.store.balances_as_of(accounts, as_of)).await
    }

    pub async fn balance_points_between(
        &self,
        accounts: &[AccountId],
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
        within: Within,
    ) -> Result<Vec<HistoryPoint>, StoreError> {
        self.health.run(within, self.store.balance_points_between(accounts, after, until, limit)).await
    }

    pub async fn find_payout(
        &self,
        account: &AccountId,
        id: &str,
        within: Within,
    ) -> Result<Option<StoredPayout>, StoreError> {
        self.health.run(within, self.store.find_payout(account, id)).await
    }

    /// Persists a fetch's figures, waited for until the fetch's `deadline` and at least the
    /// failing-store bound (`write_until`); `None` if the write was still running then (it goes
    /// on).
    ///
    /// `monitors` are evaluated in the write's transaction; `moved` is given the monitored
    /// entries it moved, once it commits, even when the caller stopped waiting.
    pub async fn record_balances(
        &self,
        snapshot: &Arc<AccountSnapshot>,
        monitors: &Arc<[Monitor]>,
        moved: impl FnOnce(Vec<MonitorEntry>) + Send + 'static,
        deadline: Instant,
    ) -> Option<Result<(), StoreError>> {
        let (store, stored, monitors) = (Arc::clone(&self.store), Arc::clone(snapshot), Arc::clone(monitors));
        let write = async move {
            moved(store.record_balances(&stored, &monitors).await?);
            Ok(())
        };
        self.health.behind(write, write_until(deadline)).await
    }

    /// Evaluates `monitors` against a stored snapshot, in a write of its own.
    pub async fn evaluate_monitors(
        &self,
        snapshot: &AccountSnapshot,
        monitors: &[Monitor],
        within: Within,
    ) -> Result<Vec<MonitorEntry>, StoreError> {
        let written = self.health.run(within, self.store.evaluate_monitors(snapshot, monitors)).await;
        self.health.record_write(&written);
        written
    }

    pub async fn monitor_states(
        &self,
        account: Option<&AccountId>,
        within: Within,
    ) -> Result<Vec<MonitorEntry>, StoreError> {
        self.health.run(within, self.store.monitor_states(account)).await
    }

    /// Stores one event in its own write (a circuit opening or recovering).
    pub async fn append_event(
        &self,
        event: &crate::domain::event::NewEvent,
        within: Within,
    ) -> Result<crate::domain::event::Event, StoreError> {
        self.health.run(within, self.store.append_event(event)).await
    }

    pub async fn events(
        &self,
        query: &crate::store::EventQuery,
        within: Within,
    ) -> Result<Vec<crate::domain::event::Event>, StoreError> {
        self.health.run(within, self.store.events(query)).await
    }

    pub async fn event(&self, seq: i64, within: Within) -> Result<Option<crate::domain::event::Event>, StoreError> {
        self.health.run(within, self.store.event(seq)).await
    }

    pub async fn prune_events(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        self.health.run(Within::Health, self.store.prune_events(before, limit)).await
    }

    pub async fn claim_deliveries(
        &self,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        per_webhook: u32,
    ) -> Result<Vec<crate::store::ClaimedDelivery>, StoreError> {
        self.health.run(Within::Health, self.store.claim_deliveries(holder, now, until, per_webhook)).await
    }

    pub async fn finish_attempt(
        &self,
        claim: &crate::store::ClaimedDelivery,
        holder: &str,
        attempt: &crate::store::AttemptRecord,
        result: crate::store::AttemptResult,
    ) -> Result<(), StoreError> {
        self.health.run(Within::Health, self.store.finish_attempt(claim, holder, attempt, result)).await
    }

    pub async fn release_claims(&self, holder: &str) -> Result<(), StoreError> {
        self.health.run(Within::Health, self.store.release_claims(holder)).await
    }

    pub async fn next_delivery_at(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.health.run(Within::Health, self.store.next_delivery_at()).await
    }

    pub async fn deliveries(&self, seq: i64, within: Within) -> Result<Vec<crate::store::Delivery>, StoreError> {
        self.health.run(within, self.store.deliveries(seq)).await
    }

    pub async fn requeue_event(
        &self,
        seq: i64,
        webhook: Option<&str>,
        now: DateTime<Utc>,
        within: Within,
    ) -> Result<u64, StoreError> {
        self.health.run(within, self.store.requeue_event(seq, webhook, now)).await
    }

    pub async fn recover_webhook(
        &self,
        webhook: &str,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
        within: Within,
    ) -> Result<u64, StoreError> {
        self.health.run(within, self.store.recover_webhook(webhook, since, now)).await
    }

    pub async fn webhook_stats(&self, within: Within) -> Result<Vec<(String, crate::store::WebhookStats)>, StoreError> {
        self.health.run(within, self.store.webhook_stats()).await
    }

    pub fn event_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.store.event_signal()
    }

    /// Saves a payout observation, waited for until `deadline` only: a lookup outlives no
    /// request, and a write still running then goes on while the payout is served.
    pub async fn save_payout(
        &self,
        payout: &StoredPayout,
        source: &'static str,
        deadline: Instant,
    ) -> Option<Result<(), StoreError>> {
        let (store, observed) = (Arc::clone(&self.store), payout.clone());
        let save = async move { store.save_payout(&observed, source).await };
        self.health.behind(save, deadline).await
    }

    pub async fn watch_payout(
        &self,
        account: &AccountId,
        payout_id: &str,
        now: DateTime<Utc>,
        watch_until: DateTime<Utc>,
        next_check_at: DateTime<Utc>,
        within: Within,
    ) -> Result<PayoutWatch, StoreError> {
        let written =
            self.health.run(within, self.store.watch_payout(account, payout_id, now, watch_until, next_check_at)).await;
        self.health.record_write(&written);
        written
    }

    pub async fn unwatch_payout(&self, account: &AccountId, payout_id: &str, within: Within) -> Result<(), StoreError> {
        self.health.run(within, self.store.unwatch_payout(account, payout_id)).await
    }

    pub async fn payout_watch(
        &self,
        account: &AccountId,
        payout_id: &str,
        within: Within,
    ) -> Result<Option<PayoutWatch>, StoreError> {
        self.health.run(within, self.store.payout_watch(account, payout_id)).await
    }

    pub async fn claim_watches(
        &self,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<PayoutWatch>, StoreError> {
        self.health.run(Within::Health, self.store.claim_watches(holder, now, until, limit)).await
    }

    pub async fn finish_watch(
        &self,
        watch: &PayoutWatch,
        holder: &str,
        next_check_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.health.run(Within::Health, self.store.finish_watch(watch, holder, next_check_at)).await
    }

    pub async fn next_watch_at(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.health.run(Within::Health, self.store.next_watch_at()).await
    }

    pub async fn list_payouts(
        &self,
        query: &PayoutListQuery,
        within: Within,
    ) -> Result<Vec<(StoredPayout, Option<PayoutWatch>)>, StoreError> {
        self.health.run(within, self.store.list_payouts(query)).await
    }

    pub async fn record_callback(&self, receipt: &CallbackReceipt, within: Within) -> Result<(), StoreError> {
        self.health.run(within, self.store.record_callback(receipt)).await
    }

    pub async fn callbacks(
        &self,
        account: Option<&AccountId>,
        limit: u32,
        within: Within,
    ) -> Result<Vec<CallbackReceipt>, StoreError> {
        self.health.run(within, self.store.callbacks(account, limit)).await
    }

    pub async fn prune_callbacks(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        self.health.run(Within::Health, self.store.prune_callbacks(before, limit)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_refused_for_its_values_never_marks_the_store_failing() {
        let health = StoreHealth::default();
        let refused = || async { Err::<(), _>(StoreError::InvalidInput("invalid byte sequence".into())) };
        assert!(health.run(Within::Health, refused()).await.is_err());
        assert!(!health.is_failing(), "the store answered");

        let down = || async { Err::<(), _>(StoreError::Unavailable("connection refused".into())) };
        let _ = health.run(Within::Health, down()).await;
        assert!(health.is_failing());
        let _ = health.run(Within::Health, refused()).await;
        assert!(!health.is_failing(), "an answer, even a refusal, says the store is back");

        health.record_write(&down().await);
        health.record_write(&refused().await);
        assert!(health.failed_write().is_some(), "a refused value says nothing about a full disk");
    }
}
