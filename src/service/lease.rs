//! A fetch's cluster-wide lease on one account (replicas sharing PostgreSQL).
//!
//! The holder is one fetch, not one replica: its token is the replica's id and a sequence
//! number, so two fetches of one process exclude each other like fetches of two processes,
//! and releasing one never frees another's lease.
//!
//! The lease is short and renewed by a heartbeat while its fetch runs: a holder that dies stops
//! renewing, and its lease lapses within [`lease_ttl`], soon enough for a waiting replica to
//! take over and still answer within its own request deadline. Whoever owns a [`Lease`] value
//! holds the lease; dropping it (at the end of the fetch, on an early return, or when the task
//! is cancelled) stops the heartbeat and releases it.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::domain::AccountId;
use crate::store::Cluster;

/// How long a lease lasts without renewal: a quarter of the request deadline (within 0.5 s to
/// 5 s), so that a replica waiting on a dead holder takes over with time left to fetch.
pub fn lease_ttl(request_timeout: Duration) -> Duration {
    (request_timeout / 4).clamp(Duration::from_millis(500), Duration::from_secs(5))
}

/// How long the release of a lease may take before it is left to expire.
const RELEASE_BOUND: Duration = Duration::from_secs(2);

pub struct Lease {
    cluster: Arc<dyn Cluster>,
    account: AccountId,
    token: String,
    heartbeat: JoinHandle<()>,
}

impl Lease {
    /// A lease the cluster just granted to `token`: renewed every third of its ttl until
    /// dropped.
    pub(super) fn granted(cluster: &Arc<dyn Cluster>, account: &AccountId, token: String, ttl: Duration) -> Self {
        let heartbeat = tokio::spawn(heartbeat(Arc::clone(cluster), account.clone(), token.clone(), ttl));
        Self { cluster: Arc::clone(cluster), account: account.clone(), token, heartbeat }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.heartbeat.abort();
        // Released in the background: waiters on other replicas are woken by the fetch's own
        // announcement, not by the release, so nothing needs to wait for it. Without a runtime
        // (shutting down) the lease simply lapses.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (cluster, account, token) =
                (Arc::clone(&self.cluster), self.account.clone(), std::mem::take(&mut self.token));
            runtime.spawn(async move {
                match tokio::time::timeout(RELEASE_BOUND, cluster.release_lease(&account, &token)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(account = %account, error = %e, "could not release a fetch lease; it will lapse")
                    }
                    Err(_) => tracing::warn!(account = %account, "releasing a fetch lease timed out; it will lapse"),
                }
            });
        }
    }
}

async fn heartbeat(cluster: Arc<dyn Cluster>, account: AccountId, token: String, ttl: Duration) {
    let mut tick = tokio::time::interval(ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match tokio::time::timeout(ttl / 3, cluster.renew_lease(&account, &token, ttl)).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                // It lapsed and another fetch took it: that one is now the holder.
                tracing::warn!(account = %account, "lost a fetch lease while fetching; another replica may fetch too");
                return;
            }
            Ok(Err(e)) => tracing::debug!(account = %account, error = %e, "could not renew a fetch lease"),
            Err(_) => tracing::debug!(account = %account, "renewing a fetch lease timed out"),
        }
    }
}

/// A holder token unique to one fetch: the replica's id and the fetch's sequence number.
pub fn token(replica: &str, sequence: u64) -> String {
    format!("{replica}/{sequence}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_lapses_well_within_the_request_deadline() {
        assert_eq!(lease_ttl(Duration::from_secs(10)), Duration::from_millis(2500));
        assert_eq!(lease_ttl(Duration::from_secs(4)), Duration::from_secs(1));
        assert_eq!(lease_ttl(Duration::from_secs(60)), Duration::from_secs(5), "at most 5 s");
        assert_eq!(lease_ttl(Duration::from_secs(1)), Duration::from_millis(500), "at least 0.5 s");
    }
}
