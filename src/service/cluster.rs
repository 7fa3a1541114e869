//! Replica coordination as the service uses it: a fetch's lease on an account, the failures
//! and circuit the cluster shares, and the announcements of fetches finished elsewhere.
//!
//! The service holds a [`GuardedCluster`] only when its store is shared by replicas
//! (PostgreSQL): whether it has one is the answer to "may another replica hold newer figures,
//! or an account's lease". Its calls are bounded as the store's are, by the store's health:
//! the cluster lives in the same database.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::guarded_store::{GuardedStore, StoreHealth, Within, write_until};
use super::lease::{self, Lease};
use crate::domain::AccountId;
use crate::store::{CallDenied, Cluster, FailedFetch, SharedFailure, StoreError};

pub struct GuardedCluster {
    cluster: Arc<dyn Cluster>,
    health: Arc<StoreHealth>,
    /// This process's name in fetch lease tokens.
    replica_id: String,
    /// Numbers this process's fetches, so each holds a lease under its own token.
    lease_sequence: AtomicU64,
    /// How long a lease lasts without renewal ([`lease::lease_ttl`]).
    lease_ttl: Duration,
}

impl GuardedCluster {
    /// The coordination of the replicas sharing `store`; `None` when this process is alone
    /// with it (SQLite).
    pub(super) fn of(store: &GuardedStore, request_timeout: Duration) -> Option<Self> {
        let (cluster, health) = store.cluster()?;
        Some(Self {
            cluster,
            health,
            replica_id: format!("{}-{:08x}", std::process::id(), rand::random::<u32>()),
            lease_sequence: Default::default(),
            lease_ttl: lease::lease_ttl(request_timeout),
        })
    }

    /// Whether there is anything to coordinate through now: not while the store (the cluster's
    /// database) is failing; each replica then goes alone.
    pub(super) fn answers(&self) -> bool {
        !self.health.is_failing()
    }

    /// Takes the account's cluster-wide lease for one fetch, unless another fetch holds it.
    /// Dropping the lease releases it.
    pub async fn take_lease(&self, account: &AccountId) -> Result<Option<Lease>, StoreError> {
        self.take_lease_within(account, Within::Health).await
    }

    /// [`take_lease`](Self::take_lease), giving up on the store as `within` says.
    pub(super) async fn take_lease_within(
        &self,
        account: &AccountId,
        within: Within,
    ) -> Result<Option<Lease>, StoreError> {
        let token = lease::token(&self.replica_id, self.lease_sequence.fetch_add(1, Ordering::Relaxed));
        let granted = self.health.run(within, self.cluster.try_lease(account, &token, self.lease_ttl)).await?;
        Ok(granted.then(|| Lease::granted(&self.cluster, account, token, self.lease_ttl)))
    }

    /// The account's last recorded failure, with the cluster's circuit.
    pub(super) async fn last_failure(
        &self,
        account: &AccountId,
        within: Within,
    ) -> Result<Option<SharedFailure>, StoreError> {
        self.health.run(within, self.cluster.last_failure(account)).await
    }

    /// Records a failed fetch in the cluster's run of failures, waited for until the fetch's
    /// `deadline` and at least the failing-store bound ([`write_until`]); `None` if the write
    /// was still running then (it goes on, and its announcement brings the recorded run to
    /// every replica).
    pub(super) async fn record_failure(
        &self,
        account: &AccountId,
        failed: FailedFetch,
        threshold: u32,
        deadline: Instant,
    ) -> Option<Result<SharedFailure, StoreError>> {
        let (cluster, account) = (Arc::clone(&self.cluster), account.clone());
        let record = async move { cluster.record_failure(&account, &failed, threshold).await };
        self.health.behind(record, write_until(deadline)).await
    }

    /// Draws one upstream call of `account` from the cluster's budget
    /// ([`Cluster::draw_call`]), giving up on the store as `within` says.
    pub(super) async fn draw_call(
        &self,
        account: &AccountId,
        now: DateTime<Utc>,
        limit: Option<NonZeroU32>,
        within: Within,
    ) -> Result<Result<(), CallDenied>, StoreError> {
        self.health.run(within, self.cluster.draw_call(account, now, limit.map(NonZeroU32::get))).await
    }

    /// Records a provider's pause of `account`'s calls for every replica, waited for until
    /// `by`; `None` if the write was still running then (it goes on).
    pub(super) async fn pause_calls(
        &self,
        account: &AccountId,
        until: DateTime<Utc>,
        by: Instant,
    ) -> Option<Result<(), StoreError>> {
        let (cluster, account) = (Arc::clone(&self.cluster), account.clone());
        self.health.behind(async move { cluster.pause_calls(&account, until).await }, by).await
    }

    /// Announcements of fetches finished anywhere in the cluster (account ids).
    pub(super) fn events(&self) -> broadcast::Receiver<String> {
        self.cluster.fetch_events()
    }
}
