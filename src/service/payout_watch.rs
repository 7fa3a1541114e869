//! The payout watch (SPEC §9.1): every payout seen in a non-final status is looked up again by
//! tally itself on `[payouts] watch_schedule` until it is final or `watch_for` has passed.
//!
//! Watches are stored (they survive restarts). The watcher claims due watches through the
//! store (on PostgreSQL with `FOR UPDATE SKIP LOCKED`: one lookup per due watch across
//! replicas; a claim of a replica that died expires), looks each up as `GET /payouts/{id}`
//! does (coalesced, within the fetch permits and the upstream budget), and stores what it
//! finds with source `watch`. It wakes when a watch is added, when the next watch falls due by
//! the service's clock, and when that clock is moved by hand (tests); never by fast polling.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::payouts::PayoutQueryError;
use super::{AccountState, Service, Within};
use crate::config::PayoutsSettings;
use crate::domain::{AccountId, PayoutLookup};
use crate::store::{PayoutListQuery, PayoutWatch, StoreError, StoredPayout};

/// The most watch lookups one process runs at once (each also waits for a fetch permit).
const MAX_IN_FLIGHT: u32 = 8;
/// How long a claim outlives its lookup's deadline: a replica that died mid-lookup holds the
/// watch this much longer, then another takes it over.
const CLAIM_MARGIN: Duration = Duration::from_secs(30);
/// The watcher reads the store at least this often, whatever woke it or not (a watch added
/// by another replica).
const MAX_IDLE: Duration = Duration::from_secs(60);
/// When watches are due but claimed by another replica, the watcher looks again after this.
const BUSY_RECHECK: Duration = Duration::from_secs(1);
/// After the store failed, the watcher waits this long before asking again.
const STORE_BACKOFF: Duration = Duration::from_secs(5);
/// How long shutdown waits for the watcher to stop.
const STOP_BOUND: Duration = Duration::from_secs(5);
/// The outcomes counted by `tally_payout_watch_checks_total`.
pub const CHECK_OUTCOMES: [&str; 4] = ["changed", "unchanged", "not_found", "failed"];

/// The watch's settings and the watcher's state in this process.
pub struct Watcher {
    settings: PayoutsSettings,
    /// This process's name on its claims.
    holder: String,
    /// Rings when a watch was added.
    wake: Notify,
    /// Watch lookups finished by this process: what a test waits on, instead of guessing how
    /// long a lookup takes.
    checks_done: watch::Sender<u64>,
}

impl Watcher {
    pub fn new(settings: PayoutsSettings) -> Self {
        for outcome in CHECK_OUTCOMES {
            metrics::counter!("tally_payout_watch_checks_total", "outcome" => outcome).increment(0);
        }
        Self {
            settings,
            holder: format!("tally-{:016x}", rand::random::<u64>()),
            wake: Notify::new(),
            checks_done: watch::Sender::new(0),
        }
    }

    /// When a watch that has made `checks` lookups is next due, from `now`: the schedule's
    /// delay for the next lookup (the last one repeating), and never after `watch_until`.
    pub fn next_check(&self, checks: u32, now: DateTime<Utc>, watch_until: DateTime<Utc>) -> DateTime<Utc> {
        let schedule = &self.settings.watch_schedule;
        let step = usize::try_from(checks).unwrap_or(usize::MAX).min(schedule.len().saturating_sub(1));
        let delay = schedule.get(step).copied().unwrap_or(Duration::from_secs(3600));
        later(now, delay).min(watch_until)
    }
}

/// Why `POST /payouts/{id}/watch` was refused.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Query(#[from] PayoutQueryError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The running watcher, stopped at shutdown.
pub struct WatchTask {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl WatchTask {
    /// Stops the watcher; lookups in flight are dropped and their claims expire by themselves.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let mut task = self.task;
        if tokio::time::timeout(STOP_BOUND, &mut task).await.is_err() {
            task.abort();
            tracing::warn!("the payout watcher did not stop in time");
        }
    }
}

fn later(t: DateTime<Utc>, by: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(by).ok().and_then(|d| t.checked_add_signed(d)).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl Service {
    pub fn watcher(&self) -> &Watcher {
        &self.watcher
    }

    /// Counts the watch lookups this process has finished.
    pub fn watch_checks(&self) -> watch::Receiver<u64> {
        self.watcher.checks_done.subscribe()
    }

    /// Watches a payout of `account` by `payout_id` (kept as it is when already watched), and
    /// wakes the watcher.
    pub async fn watch_payout(
        &self,
        account: &AccountId,
        payout_id: &str,
        within: Within,
    ) -> Result<PayoutWatch, StoreError> {
        let now = self.clock.now();
        let until = later(now, self.watcher.settings.watch_for);
        let next = self.watcher.next_check(0, now, until);
        let watch = self.store.watch_payout(account, payout_id, now, until, next, within).await?;
        self.watcher.wake.notify_one();
        Ok(watch)
    }

    /// `POST /payouts/{id}/watch`: watches the payout (by its stored id when it is stored, else
    /// by `id` until it is found), unless it is stored final. Returns what is stored of it and
    /// its watch (`None` for a final payout).
    pub async fn request_watch(
        &self,
        account: &AccountId,
        id: &str,
    ) -> Result<(Option<StoredPayout>, Option<PayoutWatch>), WatchError> {
        let state = self.account(account).ok_or_else(|| PayoutQueryError::UnknownAccount(account.clone()))?;
        if !state.capabilities().payouts {
            return Err(PayoutQueryError::Unsupported(account.clone()).into());
        }
        let within = Within::Until(tokio::time::Instant::now() + self.request_timeout);
        let stored = self.store.find_payout(account, id, within).await?;
        if stored.as_ref().is_some_and(|s| s.payout.is_final) {
            return Ok((stored, None));
        }
        let key = stored.as_ref().map_or(id, |s| s.payout.id.as_str());
        let watch = self.watch_payout(account, key, within).await?;
        Ok((stored, Some(watch)))
    }

    /// `GET /payouts`: stored payouts, newest first, each with its watch.
    pub async fn list_payouts(
        &self,
        query: &PayoutListQuery,
    ) -> Result<Vec<(StoredPayout, Option<PayoutWatch>)>, StoreError> {
        self.store.list_payouts(query, Within::Until(tokio::time::Instant::now() + self.request_timeout)).await
    }

    /// After a payout was observed: watched while it is not final, no longer once it is.
    pub(super) async fn keep_watching(&self, account: &AccountId, payout_id: &str, is_final: bool, within: Within) {
        let done = if is_final {
            self.store.unwatch_payout(account, payout_id, within).await
        } else {
            self.watch_payout(account, payout_id, within).await.map(drop)
        };
        if let Err(e) = done {
            tracing::warn!(account = %account, error = %e, "could not update a payout's watch");
        }
    }

    /// Starts the watcher.
    pub fn spawn_payout_watcher(self: &Arc<Self>) -> WatchTask {
        let (stop, stopping) = watch::channel(false);
        let task = tokio::spawn(Arc::clone(self).run_watcher(stopping));
        WatchTask { stop, task }
    }

    async fn run_watcher(self: Arc<Self>, mut stopping: watch::Receiver<bool>) {
        let mut moved = crate::clock::Moved::of(self.clock.as_ref());
        let mut in_flight = JoinSet::new();
        loop {
            moved.seen();
            let wait = match self.claim_and_check(&mut in_flight).await {
                Ok(wait) => wait,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the payout watches from the store");
                    STORE_BACKOFF
                }
            };
            tokio::select! {
                _ = stopping.changed() => break,
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                () = self.watcher.wake.notified() => {}
                () = moved.changed() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        in_flight.abort_all();
        while in_flight.join_next().await.is_some() {}
    }

    /// Claims what is due (as many as there is room for) and starts its lookups; returns how
    /// long to wait at most before looking again.
    async fn claim_and_check(self: &Arc<Self>, in_flight: &mut JoinSet<()>) -> Result<Duration, StoreError> {
        let now = self.clock.now();
        let room = MAX_IN_FLIGHT.saturating_sub(u32::try_from(in_flight.len()).unwrap_or(MAX_IN_FLIGHT));
        if room > 0 {
            let until = later(now, self.request_timeout + CLAIM_MARGIN);
            for watch in self.store.claim_watches(&self.watcher.holder, now, until, room).await? {
                in_flight.spawn(Arc::clone(self).check(watch));
            }
        }
        Ok(match self.store.next_watch_at().await? {
            None => MAX_IDLE,
            Some(at) if at <= now => BUSY_RECHECK,
            Some(at) => (at - now).to_std().unwrap_or(BUSY_RECHECK).min(MAX_IDLE),
        })
    }

    /// One lookup of a claimed watch: what it finds is stored (source `watch`), and the watch
    /// goes on to its next check, or ends (final, or `watch_until` passed).
    async fn check(self: Arc<Self>, watch: PayoutWatch) {
        let outcome = match self.account(&watch.account).filter(|a| a.capabilities().payouts) {
            // An account no longer configured (or unable to look payouts up): nothing to watch.
            None => {
                self.end_watch(&watch).await;
                None
            }
            Some(account) => Some(self.check_on(&Arc::clone(account), &watch).await),
        };
        if let Some(outcome) = outcome {
            metrics::counter!("tally_payout_watch_checks_total", "outcome" => outcome).increment(1);
        }
        self.watcher.checks_done.send_modify(|n| *n += 1);
    }

    async fn check_on(self: &Arc<Self>, account: &Arc<AccountState>, watch: &PayoutWatch) -> &'static str {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let stored =
            self.store.find_payout(account.id(), &watch.payout_id, Within::Until(deadline)).await.ok().flatten();
        let looked_up = super::await_shared(self.lookup(account, &watch.payout_id, deadline), deadline).await;
        let (outcome, ended) = match looked_up {
            Some(Ok(PayoutLookup::Found(payout))) => {
                let changed = stored.as_ref().is_none_or(|s| s.payout.status != payout.status);
                if payout.id != watch.payout_id
                    && !payout.is_final
                    && stored.as_ref().is_none_or(|s| !s.payout.is_final)
                {
                    self.move_watch(watch, &payout.id, deadline).await;
                }
                let view = self.observe(account, *payout, stored, deadline, "watch").await;
                // Found under another id (the merchant's reference): watched on under the
                // provider's id (`move_watch`), and this watch ends.
                let moved = view.stored.payout.id != watch.payout_id;
                (if changed { "changed" } else { "unchanged" }, view.stored.payout.is_final || moved)
            }
            // Not visible yet, or the lookup failed: looked up again on the schedule.
            Some(Ok(PayoutLookup::NotFound)) => ("not_found", false),
            Some(Err(_)) | None => ("failed", false),
        };
        let now = self.clock.now();
        if ended || now >= watch.watch_until {
            self.end_watch(watch).await;
        } else {
            let next = self.watcher.next_check(watch.checks.saturating_add(1), now, watch.watch_until);
            if let Err(e) = self.store.finish_watch(watch, &self.watcher.holder, next).await {
                tracing::warn!(account = %watch.account, error = %e,
                    "could not record a watch's lookup; it is looked up again once its claim expires");
            }
        }
        outcome
    }

    /// Watches on, under the provider's id, a payout found by another id (the merchant's
    /// reference), keeping the watch's start, end and place in the schedule.
    async fn move_watch(&self, watch: &PayoutWatch, payout_id: &str, deadline: tokio::time::Instant) {
        let next = self.watcher.next_check(watch.checks.saturating_add(1), self.clock.now(), watch.watch_until);
        let (first, until) = (watch.first_watched_at, watch.watch_until);
        let within = Within::Until(deadline);
        if let Err(e) = self.store.watch_payout(&watch.account, payout_id, first, until, next, within).await {
            tracing::warn!(account = %watch.account, error = %e, "could not watch a payout under the provider's id");
        }
    }

    async fn end_watch(&self, watch: &PayoutWatch) {
        if let Err(e) = self.store.unwatch_payout(&watch.account, &watch.payout_id, Within::Health).await {
            tracing::warn!(account = %watch.account, error = %e, "could not end a payout's watch");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_s_last_delay_repeats_and_no_check_comes_after_the_watch_ends() {
        let secs = Duration::from_secs;
        let watcher = Watcher::new(PayoutsSettings { watch_schedule: vec![secs(30), secs(60)], watch_for: secs(600) });
        let t0 = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        let end = later(t0, secs(600));
        assert_eq!(watcher.next_check(0, t0, end), later(t0, secs(30)));
        assert_eq!(watcher.next_check(1, t0, end), later(t0, secs(60)));
        assert_eq!(watcher.next_check(7, t0, end), later(t0, secs(60)), "the last delay repeats");
        assert_eq!(watcher.next_check(7, later(t0, secs(590)), end), end, "never after watch_until");
    }
}
