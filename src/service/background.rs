//! Work that is not driven by a request: periodic refresh of accounts with a
//! `refresh_interval`, following the fetches of other replicas sharing the store, and the
//! periodic prune of events past retention.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::{AccountState, Service, Within};
use crate::clock;
use crate::domain::AccountId;
use crate::providers::{UpstreamError, UpstreamErrorKind};
use crate::sync::MutexExt;

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
        if let Some(cluster) = &self.cluster {
            tasks.push(tokio::spawn(Arc::clone(self).follow_cluster(cluster.events())));
        }
        tasks.push(tokio::spawn(Arc::clone(self).prune_periodically()));
        if !self.monitors.known() {
            tasks.push(tokio::spawn(Arc::clone(self).load_monitors_until_known()));
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
        if let Ok(Some(snapshot)) = self.store.latest_balances(account.id(), Within::Health).await {
            let mut health = account.health.locked();
            health.last_success_at = health.last_success_at.max(Some(snapshot.fetched_at));
            drop(health);
            account.offer(Arc::new(snapshot));
        }
        self.sync_monitors(account.id()).await;
        if let Some(cluster) = &self.cluster
            && let Ok(Some(shared)) = cluster.last_failure(account.id(), Within::Health).await
        {
            account.adopt_circuit(&shared);
            let failure = shared.failure;
            let mut health = account.health.locked();
            if health.last_error.as_ref().is_none_or(|(_, at)| *at < failure.failed_at) {
                let error = UpstreamError::new(UpstreamErrorKind::from_code(&failure.code), failure.message)
                    .with_status_opt(failure.upstream_status);
                health.last_error = Some((error, failure.failed_at));
            }
        }
    }

    /// Refreshes the account about once per period, whichever replica does it. Each check
    /// sleeps until the figure is due (with a little jitter so replicas and accounts spread
    /// out), then refreshes it if it still is.
    async fn refresh_periodically(self: Arc<Self>, account: Arc<AccountState>) {
        let period = account.config.freshness.refresh_interval;
        let mut wait = jitter(period);
        loop {
            tokio::time::sleep(wait).await;
            wait = self.background_check(&account, period).await + jitter(period);
            account.background_checks.send_modify(|checks| *checks += 1);
        }
    }

    /// One background check: refreshes the account if its figure is due, and returns how long
    /// until the next check. With replicas the decision is taken under the account's lease,
    /// against the store's figure: another replica may have refreshed since this one last
    /// looked. The lease taken here is handed to the fetch, which releases it.
    async fn background_check(self: &Arc<Self>, account: &Arc<AccountState>, period: Duration) -> Duration {
        // This replica's figure is never newer than the store's: not due here is not due.
        if let Some(wait) = self.until_due(account, period) {
            return wait;
        }
        let mut lease = None;
        if let Some(cluster) = self.cluster.as_ref().filter(|cluster| cluster.answers()) {
            match cluster.take_lease(account.id()).await {
                // Another fetch holds it: its figure lands soon; look again then.
                Ok(None) => return period / 10,
                Ok(Some(held)) => {
                    if let Ok(Some(stored)) = self.store.latest_balances(account.id(), Within::Health).await {
                        account.offer(Arc::new(stored));
                    }
                    // Dropping the lease releases it.
                    if let Some(wait) = self.until_due(account, period) {
                        return wait;
                    }
                    lease = Some(held);
                }
                // The store is down: nothing to coordinate through.
                Err(_) => {}
            }
        }
        let mut rx = self.refresh(account, lease, tokio::time::Instant::now() + self.request_timeout);
        let _ = rx.wait_for(|outcome| outcome.is_some()).await;
        // After a failure the figure is still due: try again next period.
        self.until_due(account, period).unwrap_or(period)
    }

    /// How long until the account's figure is due for a background refresh; `None` if it is
    /// due now. A figure is due one period after it was fetched, less a twentieth of the
    /// period, so that a check waking a little early (timer drift, clock skew between
    /// replicas) does not skip a whole period.
    fn until_due(&self, account: &AccountState, period: Duration) -> Option<Duration> {
        let fetched_at = account.latest()?.fetched_at;
        let due_in = (period - period / 20).checked_sub(clock::age(self.clock.now(), fetched_at))?;
        (!due_in.is_zero()).then_some(due_in)
    }
}

/// Up to a tenth of the period: spreads the checks of replicas and accounts.
fn jitter(period: Duration) -> Duration {
    (period / 10).mul_f64(rand::random_range(0.0..1.0))
}
