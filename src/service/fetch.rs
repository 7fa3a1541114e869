//! One fetch per account at a time, shared by every request that needs it (coalescing), with
//! retries for transient failures, the circuit breaker, and persistence before serving.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::coalesce::{Joined, Shared};
use super::lease::{self, Lease};
use super::{AccountState, FetchFailure, FetchOutcome, Service, Within};
use crate::providers::{UpstreamError, UpstreamErrorKind};
use crate::store::{AccountSnapshot, FailedFetch};
use crate::sync::MutexExt;

impl Service {
    /// Joins the account's fetch in flight, or starts one. The fetch runs in its own task, so
    /// a caller that stops waiting (its deadline passed) does not cancel it: the figure still
    /// lands in the cache and the store for the next caller.
    ///
    /// A caller already holding the account's lease hands it over with the fetch it starts;
    /// if it joins a fetch in flight instead, the lease is released (that fetch has, or is
    /// waiting for, a lease of its own). `deadline` is the starting caller's: the fetch's store
    /// calls keep within it, so a stalled store does not hold the figure past it.
    pub(super) fn refresh(
        self: &Arc<Self>,
        account: &Arc<AccountState>,
        lease: Option<Lease>,
        deadline: Instant,
    ) -> Shared<FetchOutcome> {
        let (publisher, rx) = match self.fetches.join_or_start(account.id()) {
            Joined::Waiting(rx) => {
                drop(lease);
                metrics::counter!("tally_coalesced_waiters_total", "account" => account.id().to_string()).increment(1);
                return rx;
            }
            Joined::Started(publisher, rx) => (publisher, rx),
        };
        let service = Arc::clone(self);
        let account = Arc::clone(account);
        tokio::spawn(async move {
            let outcome = service.fetch_now(&account, lease, deadline).await;
            service.fetches.finish(publisher, outcome);
        });
        rx
    }

    /// One fetch of the account, holding its lease when replicas share the store. The lease
    /// is released when `lease` goes out of scope here, on every path.
    async fn fetch_now(&self, account: &AccountState, held: Option<Lease>, deadline: Instant) -> FetchOutcome {
        // This replica's view of the circuit first: open, it refuses without asking anyone.
        self.circuit_allows(account)?;
        let lease = match held {
            Some(lease) => Some(lease),
            None => match self.coordinate(account, deadline).await {
                Coordinated::Done(outcome) => return outcome,
                Coordinated::Leased(lease) => Some(lease),
                Coordinated::Alone => None,
            },
        };
        if lease.is_some()
            && let Some(cluster) = &self.cluster
        {
            // Under the lease the cluster's circuit decides: failures seen by other replicas
            // count here, and one probe per cool-down is made in the whole cluster.
            let shared = cluster.last_failure(account.id(), Within::share_of(deadline)).await;
            if let Ok(Some(shared)) = shared {
                account.adopt_circuit(&shared);
            }
            self.circuit_allows(account)?;
        }
        let result = {
            let _permit = self.fetch_permits.acquire().await.expect("the fetch semaphore is never closed");
            self.fetch_with_retries(account, deadline).await
        };
        let result = match result {
            Ok(fetch) => Ok(fetch),
            Err(Stopped::Failed(error)) => Err(error),
            // No call was made: nothing to record, for the circuit or the cluster.
            Err(Stopped::Denied(denied)) => return Err(denied),
        };
        let outcome = self.conclude(account, result, deadline).await;
        drop(lease);
        outcome
    }

    /// Refuses a fetch while the account's circuit is open.
    fn circuit_allows(&self, account: &AccountState) -> Result<(), FetchFailure> {
        let now = self.clock.now();
        let Err(reopens_at) = account.circuit.locked().allow(now) else {
            return Ok(());
        };
        metrics::counter!("tally_upstream_calls_total", "provider" => account.provider().as_str(),
            "account" => account.id().to_string(), "operation" => "balances", "outcome" => "circuit_open")
        .increment(1);
        let error = UpstreamError::circuit_open(format!(
            "too many consecutive failures; the next attempt is allowed at {}",
            reopens_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
        Err(FetchFailure::new(error, now))
    }

    /// Records a fetch's result: persisted and cached on success; on failure counted by the
    /// circuit and shared with other replicas.
    async fn conclude(
        &self,
        account: &AccountState,
        result: Result<crate::domain::BalanceFetch, UpstreamError>,
        deadline: Instant,
    ) -> FetchOutcome {
        let id = account.id().to_string();
        let provider = account.provider().as_str();
        let now = self.clock.now();
        match result {
            Ok(fetch) => {
                let snapshot = Arc::new(AccountSnapshot::new(
                    account.id().clone(),
                    account.provider(),
                    now,
                    fetch.entries,
                    Some(fetch.raw),
                ));
                self.persist(&snapshot, deadline).await;
                account.offer(Arc::clone(&snapshot));
                let was_open = account.circuit.locked().unhealthy_since();
                account.circuit.locked().on_success();
                account.health.locked().last_success_at = Some(now);
                // Alone, the recovery is this process's to raise; with replicas the store
                // raised it with the write that closed the shared circuit.
                if let (Some(since), None) = (was_open, &self.cluster) {
                    self.circuit_recovered(account, since, now, deadline).await;
                }
                Ok(snapshot)
            }
            Err(error) => {
                tracing::warn!(account = %id, provider, code = error.code(), upstream_status = ?error.upstream_status,
                    provider_code = ?error.provider_code, "balance fetch failed: {}", error.message);
                account.health.locked().last_error = Some((error.clone(), now));
                let failed = FailedFetch {
                    code: error.code().to_owned(),
                    message: error.message.clone(),
                    upstream_status: error.upstream_status,
                    failed_at: now,
                };
                let threshold = account.config.circuit.failure_threshold;
                // With replicas the failure counts in the cluster's run; alone, here.
                let recorded = match &self.cluster {
                    Some(cluster) => cluster.record_failure(account.id(), failed, threshold, deadline).await,
                    None => None,
                };
                let opened = match recorded {
                    // The one failure that brought the shared run to the threshold opened the
                    // circuit: its replica, and no other, raises the event.
                    Some(Ok(shared)) => {
                        account.adopt_circuit(&shared);
                        shared.opened_at.is_some() && shared.consecutive_failures == threshold.max(1)
                    }
                    // Alone, or not recorded (yet: once it lands, following the cluster's
                    // announcements adopts the recorded run).
                    recorded => {
                        if let Some(Err(e)) = recorded {
                            tracing::debug!(account = %id, error = %e, "could not share a fetch failure");
                        }
                        let mut circuit = account.circuit.locked();
                        let was_open = circuit.opened_at().is_some();
                        circuit.on_failure(now);
                        // With replicas, an opening the cluster did not record is not raised.
                        !was_open && circuit.opened_at().is_some() && self.cluster.is_none()
                    }
                };
                if opened {
                    self.circuit_opened(account, &error, now, deadline).await;
                }
                Err(FetchFailure::new(error, now))
            }
        }
    }

    /// How long a replica waits for the holder of an account's lease before fetching itself:
    /// a live holder's whole retry budget plus one attempt, and the lapse of a dead one's lease.
    fn longest_wait(&self, account: &AccountState) -> Duration {
        self.request_timeout + account.config.freshness.timeout + lease::lease_ttl(self.request_timeout)
    }

    /// Replicas sharing a store: takes the account's cluster-wide lease, or waits for the
    /// fetch holding it and takes its result: the snapshot it stored, or the failure it
    /// recorded. If the holder dies, its lease lapses and this replica takes it over. While
    /// the store is failing there is nothing to coordinate through: the fetch goes alone.
    ///
    /// Until the lease is asked for, the store gets a share of the time left before
    /// `deadline`; after that the wait is the holder's, bounded by [`longest_wait`].
    ///
    /// [`longest_wait`]: Self::longest_wait
    async fn coordinate(&self, account: &AccountState, deadline: Instant) -> Coordinated {
        let Some(cluster) = self.cluster.as_ref().filter(|cluster| cluster.answers()) else {
            return Coordinated::Alone;
        };
        let mut events = cluster.events();
        // What the store held before asking for the lease: a result landing any time after
        // this, even before the wait starts, is the holder's.
        let share = Within::share_of(deadline);
        let (Ok(before_snapshot), Ok(before_failure)) =
            (self.store.latest_balances(account.id(), share).await, cluster.last_failure(account.id(), share).await)
        else {
            return Coordinated::Alone;
        };
        let before_snapshot = before_snapshot.map(|s| s.fetched_at);
        let before_failure = before_failure.map(|f| f.failure.failed_at);
        let mut lease = match cluster.take_lease_within(account.id(), share).await {
            Ok(lease) => lease,
            Err(e) => {
                tracing::warn!(account = %account.id(), error = %e, "could not take the fetch lease; fetching anyway");
                return Coordinated::Alone;
            }
        };
        if lease.is_none() {
            metrics::counter!("tally_replica_waits_total", "account" => account.id().to_string()).increment(1);
        }
        let until = Instant::now() + self.longest_wait(account);
        loop {
            if lease.is_none() {
                // Notifications wake us at once; the poll covers one lost while LISTEN
                // (re)starts, and notices a lease that lapsed because its holder died.
                tokio::select! {
                    event = events.recv() => match event {
                        Ok(a) if a != account.id().as_str() => continue,
                        _ => {}
                    },
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                    () = tokio::time::sleep_until(until) => return Coordinated::Alone,
                }
            }
            if let Ok(Some(snapshot)) = self.store.latest_balances(account.id(), Within::Health).await
                && Some(snapshot.fetched_at) != before_snapshot
            {
                let snapshot = Arc::new(snapshot);
                account.offer(Arc::clone(&snapshot));
                account.circuit.locked().on_success();
                account.health.locked().last_success_at = Some(snapshot.fetched_at);
                return Coordinated::Done(Ok(snapshot));
            }
            if let Ok(Some(shared)) = cluster.last_failure(account.id(), Within::Health).await
                && Some(shared.failure.failed_at) != before_failure
            {
                account.adopt_circuit(&shared);
                let failure = shared.failure;
                let error = UpstreamError::new(UpstreamErrorKind::from_code(&failure.code), failure.message)
                    .with_status_opt(failure.upstream_status);
                account.health.locked().last_error = Some((error.clone(), failure.failed_at));
                return Coordinated::Done(Err(FetchFailure::new(error, failure.failed_at)));
            }
            // Nothing landed since we looked: with the lease, the fetch is ours.
            if let Some(lease) = lease {
                return Coordinated::Leased(lease);
            }
            lease = cluster.take_lease(account.id()).await.ok().flatten();
        }
    }

    /// Calls the provider, retrying transient failures with exponential backoff and jitter
    /// while the retry, its wait and its whole attempt, still ends by the deadline of the
    /// request that started the fetch. Auth failures are never retried.
    ///
    /// Every attempt draws from the account's upstream budget first: a first attempt the
    /// budget cannot afford is [`Stopped::Denied`]; a retry it cannot afford is not made, and
    /// the failure before it stands. A 429 with `Retry-After` pauses the account's calls.
    async fn fetch_with_retries(
        &self,
        account: &AccountState,
        budget_ends: Instant,
    ) -> Result<crate::domain::BalanceFetch, Stopped> {
        let policy = account.config.retry;
        let mut attempt = 0;
        let mut last_error = None;
        loop {
            if let Err(denied) = self.draw_call(account, "balances", budget_ends).await {
                return Err(last_error.map_or(Stopped::Denied(denied), Stopped::Failed));
            }
            let result = self.fetch_once(account).await;
            let error = match result {
                Ok(fetch) => return Ok(fetch),
                Err(e) => e,
            };
            self.pause_calls(account, &error, budget_ends).await;
            if !error.kind.is_transient() || attempt >= policy.max_retries {
                return Err(Stopped::Failed(error));
            }
            let delay = backoff(policy.base_delay, attempt).max(error.retry_after.unwrap_or_default());
            if !retry_fits(Instant::now(), delay, account.config.freshness.timeout, budget_ends) {
                return Err(Stopped::Failed(error));
            }
            tracing::debug!(account = %account.id(), attempt, delay_ms = delay.as_millis() as u64, code = error.code(),
                "retrying balance fetch");
            tokio::time::sleep(delay).await;
            attempt += 1;
            last_error = Some(error);
        }
    }

    async fn fetch_once(&self, account: &AccountState) -> Result<crate::domain::BalanceFetch, UpstreamError> {
        let started = Instant::now();
        let timeout = account.config.freshness.timeout;
        let result = tokio::time::timeout(timeout, account.client.fetch_balances()).await.unwrap_or_else(|_| {
            Err(UpstreamError::timeout(format!("no answer within {}", humantime::format_duration(timeout))))
        });
        let provider = account.provider().as_str();
        let outcome = match &result {
            Ok(_) => "success",
            Err(e) => e.code(),
        };
        metrics::counter!("tally_upstream_calls_total", "provider" => provider, "account" => account.id().to_string(),
            "operation" => "balances", "outcome" => outcome)
        .increment(1);
        metrics::histogram!("tally_upstream_latency_seconds", "provider" => provider, "operation" => "balances")
            .record(started.elapsed().as_secs_f64());
        result
    }

    /// Persists a successful fetch before it is served. A store outage is logged and reported
    /// by `/readyz`, but never keeps a live figure from being served: past the deadline the
    /// figure is served while its write goes on.
    async fn persist(&self, snapshot: &Arc<AccountSnapshot>, deadline: Instant) {
        let book = Arc::clone(&self.monitors);
        let moved = move |entries| book.apply(entries);
        match self.store.record_balances(snapshot, self.monitors.monitors(), moved, deadline).await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                tracing::error!(account = %snapshot.account, error = %e, "could not store a balance snapshot")
            }
            None => {
                tracing::warn!(account = %snapshot.account, "serving a figure before the slow store confirmed its write")
            }
        }
    }
}

/// Why a fetch's attempts stopped without a figure.
enum Stopped {
    /// The last call made failed.
    Failed(UpstreamError),
    /// No call was made: the upstream budget could not afford the first.
    Denied(FetchFailure),
}

/// What coordinating with other replicas decided.
enum Coordinated {
    /// Another replica's fetch finished meanwhile; its result is ours.
    Done(FetchOutcome),
    /// This fetch holds the lease: it calls the upstream.
    Leased(Lease),
    /// The store cannot coordinate now, or the wait hit its bound: fetch without a lease.
    Alone,
}

/// Whether an attempt started after `delay` ends, even if it takes its whole `timeout`, by the
/// end of the budget: a retry that cannot answer in time only adds an upstream call.
fn retry_fits(now: Instant, delay: Duration, timeout: Duration, budget_ends: Instant) -> bool {
    // The delay may come from an upstream's Retry-After: a sum past any clock does not fit.
    now.checked_add(delay).and_then(|t| t.checked_add(timeout)).is_some_and(|end| end <= budget_ends)
}

/// `base · 2^attempt`, with ±25% jitter so retries of many accounts spread out.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16));
    exp.mul_f64(rand::random_range(0.75..1.25))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_fits_only_with_its_whole_attempt() {
        let now = Instant::now();
        let (delay, timeout) = (Duration::from_secs(1), Duration::from_secs(2));
        assert!(retry_fits(now, delay, timeout, now + Duration::from_secs(3)));
        assert!(
            !retry_fits(now, delay, timeout, now + Duration::from_millis(2999)),
            "the attempt would outlast the budget"
        );
    }

    #[test]
    fn backoff_doubles_within_jitter() {
        let base = Duration::from_millis(100);
        for attempt in 0..4 {
            let d = backoff(base, attempt);
            let nominal = 100.0 * f64::from(1u32 << attempt);
            let ms = d.as_secs_f64() * 1000.0;
            assert!(ms >= nominal * 0.75 && ms <= nominal * 1.25, "attempt {attempt}: {ms} ms");
        }
    }
}
