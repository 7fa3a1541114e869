//! Coordination of replicas sharing a store: fetch leases, the failures and circuit the
//! cluster shares, and the announcements of finished fetches. Only a store that replicas share
//! has one ([`Store::cluster`](super::Store::cluster): PostgreSQL); with SQLite a process is
//! alone, and having no cluster is how the rest of tally knows it.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::broadcast;

use super::StoreError;
use crate::domain::AccountId;

/// A failed fetch, to record for other replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedFetch {
    pub code: String,
    pub message: String,
    pub upstream_status: Option<u16>,
    pub failed_at: DateTime<Utc>,
}

/// An account's last failed fetch as recorded, with the account's circuit as the cluster sees
/// it: the run of consecutive failures (0 after a success) and when the circuit opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedFailure {
    pub failure: FailedFetch,
    pub consecutive_failures: u32,
    /// When the circuit (re)opened; `None` while it is closed.
    pub opened_at: Option<DateTime<Utc>>,
}

/// The length of an upstream budget's window: `max_calls_per_minute` counts calls in one.
pub const BUDGET_WINDOW: Duration = Duration::from_secs(60);

/// Why an upstream call was not granted, and when one may be asked for again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallDenied {
    /// The window in progress has counted `max_calls_per_minute` calls; it ends at `until`.
    Exhausted { until: DateTime<Utc> },
    /// A provider asked for a pause (429 with `Retry-After`) that lasts until `until`.
    Paused { until: DateTime<Utc> },
}

impl CallDenied {
    pub fn until(self) -> DateTime<Utc> {
        match self {
            Self::Exhausted { until } | Self::Paused { until } => until,
        }
    }
}

/// The channel on which the store announces that an account's fetch finished (succeeded or
/// failed) somewhere in the cluster; the payload is the account id.
pub const FETCH_EVENTS: &str = "tally_fetches";

#[async_trait]
pub trait Cluster: Send + Sync {
    /// Takes the cluster-wide lease on fetching `account` for `holder` (one fetch), unless a
    /// lease on it has not expired, whoever holds it.
    async fn try_lease(&self, account: &AccountId, holder: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// Extends `holder`'s lease by `ttl` from now; false if it is no longer the holder.
    async fn renew_lease(&self, account: &AccountId, holder: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// Ends `holder`'s lease; a lease held by another holder is left alone.
    async fn release_lease(&self, account: &AccountId, holder: &str) -> Result<(), StoreError>;

    /// Records a failed fetch and announces it, counting it in the account's run of failures:
    /// the circuit opens when the run reaches `threshold`, and re-opens at once on a failed
    /// probe. Returns the circuit as recorded.
    async fn record_failure(
        &self,
        account: &AccountId,
        failure: &FailedFetch,
        threshold: u32,
    ) -> Result<SharedFailure, StoreError>;

    /// The last recorded failure and the shared circuit (a success resets its run, not the
    /// failure's details).
    async fn last_failure(&self, account: &AccountId) -> Result<Option<SharedFailure>, StoreError>;

    /// Draws one upstream call of `account` from its budget at `now`, in one statement (so
    /// replicas drawing at once each count once): granted unless a pause lasts past `now`, or
    /// `limit` calls were already counted in the window in progress (one [`BUDGET_WINDOW`]
    /// from its first call). `None` is unlimited: only the pause is checked, nothing counted.
    async fn draw_call(
        &self,
        account: &AccountId,
        now: DateTime<Utc>,
        limit: Option<u32>,
    ) -> Result<Result<(), CallDenied>, StoreError>;

    /// Pauses `account`'s upstream calls until `until` (kept if a longer pause is recorded).
    async fn pause_calls(&self, account: &AccountId, until: DateTime<Utc>) -> Result<(), StoreError>;

    /// Announcements of finished fetches across the cluster (account ids). The first
    /// subscription starts listening.
    fn fetch_events(&self) -> broadcast::Receiver<String>;
}
