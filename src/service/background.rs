//! Work that is not driven by a request: periodic refresh of accounts with a
//! `refresh_interval`, and following the fetches of other replicas sharing the store.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::{AccountState, Service, clock};
use crate::domain::AccountId;
use crate::providers::{UpstreamError, UpstreamErrorKind};
use crate::store::Backend;

impl Service {
    /// Starts the background tasks: periodic refresh of the accounts with a
    /// `refresh_interval`, and (with a store shared by replicas) following the fetches other
    /// replicas finish. The tasks end when the returned handles are aborted (at shutdown).
    pub fn spawn_background_refresh(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        let mut tasks: Vec<JoinHandle<()>> = self
            .accounts
            .iter()
            .filter(|a| !a.config.freshness.refresh_interval.is_zero())
            .map(|account| {
                let service = Arc::clone(self);
                let account = Arc::clone(account);
                tokio::spawn(async move { service.refresh_periodically(account).await })
            })
            .collect();
        if let Some(events) = self.store.fetch_events() {
            tasks.push(tokio::spawn(Arc::clone(self).follow_cluster(events)));
        }
        tasks
    }

    /// Keeps this replica's view of each account (its figure, circuit and health) in step with
    /// the fetches finished anywhere in the cluster, so that the circuit, `/accounts` and the
    /// cache agree across replicas, whichever of them made the call.
    async fn follow_cluster(self: Arc<Self>, mut events: broadcast::Receiver<String>) {
        loop {
            match events.recv().await {
                Ok(id) => {
                    if let Some(account) = id.parse::<AccountId>().ok().and_then(|id| self.account(&id)) {
                        self.sync_from_store(account).await;
                    }
                }
                // Announcements were missed: catch up on every account.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    for account in &self.accounts {
                        self.sync_from_store(account).await;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Takes the account's latest figure, circuit and health from the store.
    async fn sync_from_store(&self, account: &AccountState) {
        if let Ok(Some(snapshot)) = self.guarded(self.store.latest_balances(account.id())).await {
            let mut health = account.health.lock().expect("health lock is never held across a panic");
            health.last_success_at = health.last_success_at.max(Some(snapshot.fetched_at));
            drop(health);
            account.offer(Arc::new(snapshot));
        }
        if let Ok(Some(shared)) = self.guarded(self.store.last_failure(account.id())).await {
            account.adopt_circuit(&shared);
            let failure = shared.failure;
            let mut health = account.health.lock().expect("health lock is never held across a panic");
            if health.last_error.as_ref().is_none_or(|(_, at)| *at < failure.failed_at) {
                let error = UpstreamError::new(UpstreamErrorKind::from_code(&failure.code), failure.message)
                    .with_status_opt(failure.upstream_status);
                health.last_error = Some((error, failure.failed_at));
            }
        }
    }

    async fn refresh_periodically(self: Arc<Self>, account: Arc<AccountState>) {
        let period = account.config.freshness.refresh_interval;
        loop {
            // ±10% jitter keeps accounts with one period from calling upstreams in lockstep.
            let jitter = period.mul_f64(rand::random_range(0.9..1.1));
            tokio::time::sleep(jitter).await;
            self.refresh_in_background(&account, period / 2).await;
        }
    }

    /// One background refresh, unless the figure is younger than `within`. With replicas, the
    /// decision is taken under the account's lease: a replica that finds the lease taken
    /// leaves the refresh to its holder, and one that gets it checks again, since another
    /// replica may have refreshed between its first look and the lease. The lease taken here
    /// is handed to the fetch, which releases it.
    async fn refresh_in_background(self: &Arc<Self>, account: &Arc<AccountState>, within: Duration) {
        if self.refreshed_recently(account, within).await {
            return;
        }
        let mut lease = None;
        if self.store.fetch_events().is_some() {
            match self.take_lease(account).await {
                Ok(None) => return,
                // Dropping the lease releases it.
                Ok(Some(_)) if self.refreshed_recently(account, within).await => return,
                Ok(Some(held)) => lease = Some(held),
                // The store is down: nothing to coordinate through.
                Err(_) => {}
            }
        }
        let mut rx = self.refresh(account, lease);
        let _ = rx.wait_for(|outcome| outcome.is_some()).await;
    }

    /// Whether the account's figure is younger than `within`, here or (with a shared store)
    /// on another replica: then a background refresh would only repeat its call.
    async fn refreshed_recently(&self, account: &AccountState, within: Duration) -> bool {
        if self.store.backend() == Backend::Postgres
            && let Ok(Some(stored)) = self.guarded(self.store.latest_balances(account.id())).await
        {
            account.offer(Arc::new(stored));
        }
        account.latest().is_some_and(|s| clock::age(self.clock.now(), s.fetched_at) < within)
    }
}
