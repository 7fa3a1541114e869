//! Events (SPEC §8): the feed with its long-poll, one event, the circuit's events, and
//! retention. The events of stored changes are written by the store, in the transaction of the
//! change; the circuit's are written here, each in a write of its own.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::time::Instant;

use super::{AccountState, Service, Within};
use crate::domain::event::{self, Event, NewEvent};
use crate::providers::UpstreamError;
use crate::store::{EventQuery, PRUNE_BATCH, StoreError};

/// The longest a feed request may wait for an event (`wait`, in seconds).
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// While waiting, the feed is read again at least this often: a notification lost while a
/// `LISTEN` connection (re)starts delays an answer by this much at most.
const RECHECK: Duration = Duration::from_secs(1);

/// How often the background prune runs; each run deletes at most `MAX_PRUNE_BATCHES` batches.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
const MAX_PRUNE_BATCHES: u32 = 100;

impl Service {
    /// The feed: the events the query selects, oldest first. With `wait`, an empty answer is
    /// held until an event lands (in this process, or with PostgreSQL in any replica) or
    /// `wait` (at most [`MAX_WAIT`], and `[events] max_wait`) passes.
    pub async fn events(&self, query: &EventQuery, wait: Duration) -> Result<Vec<Event>, StoreError> {
        let until = Instant::now() + wait.min(MAX_WAIT).min(self.events_max_wait);
        // Subscribed before the first read: an event committed after that read wakes the wait.
        let mut signal = self.store.event_signal();
        loop {
            signal.borrow_and_update();
            let found = self.store.events(query, Within::Until(Instant::now() + self.request_timeout)).await?;
            if !found.is_empty() || Instant::now() >= until {
                return Ok(found);
            }
            tokio::select! {
                changed = signal.changed() => if changed.is_err() { return Ok(found) },
                () = tokio::time::sleep(RECHECK) => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// One event by its id; `None` for an id that is not one, or no longer kept.
    pub async fn event(&self, id: &str) -> Result<Option<Event>, StoreError> {
        let Some(seq) = event::event_seq(id) else { return Ok(None) };
        self.store.event(seq, Within::Until(Instant::now() + self.request_timeout)).await
    }

    /// Deletes the events observed more than `[events] retention` ago (by the service's
    /// clock), a batch at a time, at most [`MAX_PRUNE_BATCHES`] batches, and the callback receipts
    /// received before then; returns how many events.
    pub async fn prune_events(&self) -> Result<u64, StoreError> {
        let retention = TimeDelta::from_std(self.events_retention).unwrap_or(TimeDelta::MAX);
        let before = self.clock.now().checked_sub_signed(retention).unwrap_or(DateTime::<Utc>::MIN_UTC);
        let mut pruned = 0;
        for _ in 0..MAX_PRUNE_BATCHES {
            let n = self.store.prune_events(before, PRUNE_BATCH).await?;
            pruned += n;
            if n < u64::from(PRUNE_BATCH) {
                break;
            }
        }
        // Callback receipts are kept as long as events (SPEC §9.2).
        for _ in 0..MAX_PRUNE_BATCHES {
            if self.store.prune_callbacks(before, PRUNE_BATCH).await? < u64::from(PRUNE_BATCH) {
                break;
            }
        }
        Ok(pruned)
    }

    /// The periodic prune: one run at start, then every [`PRUNE_EVERY`].
    pub(super) async fn prune_periodically(self: Arc<Self>) {
        loop {
            match self.prune_events().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(events = n, "pruned events past retention"),
                Err(e) => tracing::warn!(error = %e, "could not prune events"),
            }
            tokio::time::sleep(PRUNE_EVERY).await;
        }
    }

    /// `account.unhealthy`: the account's circuit opened on `error` at `at`.
    pub(super) async fn circuit_opened(
        &self,
        account: &AccountState,
        error: &UpstreamError,
        at: DateTime<Utc>,
        deadline: Instant,
    ) {
        let error = serde_json::json!({
            "code": error.code(),
            "message": error.message,
            "upstream_status": error.upstream_status,
            "at": at,
        });
        let last_success_at = account.health().last_success_at;
        let event = event::account_unhealthy(account.id(), account.provider(), error, last_success_at, at);
        self.raise(event, deadline).await;
    }

    /// `account.recovered`: the first successful fetch after the circuit opened at `since`.
    pub(super) async fn circuit_recovered(
        &self,
        account: &AccountState,
        since: DateTime<Utc>,
        at: DateTime<Utc>,
        deadline: Instant,
    ) {
        self.raise(event::account_recovered(account.id(), account.provider(), since, at), deadline).await;
    }

    async fn raise(&self, event: NewEvent, deadline: Instant) {
        if let Err(e) = self.store.append_event(&event, Within::Until(deadline)).await {
            tracing::warn!(account = %event.account, kind = event.kind, error = %e, "could not store an event");
        }
    }
}
