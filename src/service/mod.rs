//! The service layer: what a request needs from providers and the store.
//!
//! - [`fetch`]: one coalesced, retried, circuit-broken fetch per account at a time, persisted
//!   before it is served;
//! - [`balances`]: freshness per request, concurrent fan-out within the deadline, and what
//!   each account serves (entries, per-account status) for the HTTP layer's report of SPEC §3;
//! - [`totals`]: the report's per-currency sums, which never mix currencies;
//! - [`payouts`]: one payout status across accounts;
//! - [`payout_watch`]: non-final payouts looked up again until final (stored watches, claimed
//!   through the store);
//! - [`callbacks`]: provider callbacks applied (or taken as triggers) and their receipts;
//! - fetches and lookups in flight are joined through `crate::coalesce` (which the store's
//!   migrations use too);
//! - [`guarded_store`]: the store with its health: every call bounded by what is known of the
//!   store and by the time its caller has left;
//! - [`cluster`]: coordination with the replicas sharing the store (PostgreSQL only): leases,
//!   the shared failures and circuit, fetch announcements;
//! - [`lease`]: a fetch's cluster-wide lease on an account;
//! - `background`: periodic refresh, and following other replicas' fetches;
//! - [`circuit`]: the breaker (shared through the store by replicas);
//! - [`events`]: the event feed and its long-poll, the circuit's events, retention;
//! - [`webhooks`]: the webhook dispatcher (claims due deliveries through the store, sends
//!   them signed, retries) and the webhook operations;
//! - [`budget`]: each account's upstream calls per minute, and a provider's pause (shared
//!   through the store by replicas).
//!
//! Every store call on a request's path is bounded by the request's deadline.

pub mod as_of;
mod background;
pub mod balances;
pub mod budget;
pub mod callbacks;
pub mod circuit;
pub mod cluster;
pub mod daily;
pub mod events;
mod fetch;
pub mod guarded_store;
pub mod lease;
pub mod monitors;
pub mod payout_watch;
pub mod payouts;
pub mod reporting;
pub mod totals;
pub mod webhooks;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Semaphore, watch};

use crate::clock::Clock;
// `super::coalesce` to the submodules that coalesce fetches and lookups.
use crate::coalesce;
use crate::config::{AccountConfig, Settings};
use crate::domain::{AccountId, Provider};
use crate::providers::{Capabilities, ClientContext, ProviderClient, UpstreamError, UpstreamHttp};
use crate::store::{AccountSnapshot, Store};
use crate::sync::{MutexExt, RwLockExt};

pub use circuit::CircuitState;
pub use guarded_store::StoreHealth;
use guarded_store::{GuardedStore, Within};

/// The result of one fetch, shared by every request that waited for it.
pub type FetchOutcome = Result<Arc<AccountSnapshot>, FetchFailure>;

/// A failed fetch, and when it failed (which a request joining it, or a replica adopting it,
/// reports as the time of the error, not its own time).
#[derive(Clone, Debug)]
pub struct FetchFailure {
    pub error: UpstreamError,
    pub at: DateTime<Utc>,
    /// Set when no call was made: the account's upstream budget could not afford it, or a
    /// provider's pause lasts ([`FetchFailure::denied`]).
    pub denied: Option<crate::store::CallDenied>,
}

impl FetchFailure {
    /// An upstream call that failed at `at`.
    pub fn new(error: UpstreamError, at: DateTime<Utc>) -> Self {
        Self { error, at, denied: None }
    }

    /// The stable code the API shows: the upstream error's, or
    /// [`budget::RATE_BUDGET_EXHAUSTED`] for a call that was not made.
    pub fn code(&self) -> &'static str {
        if self.denied.is_some() { budget::RATE_BUDGET_EXHAUSTED } else { self.error.code() }
    }
}

/// Waits until `deadline` for the outcome of a shared (coalesced) call. `None` when the
/// deadline passed, or the task vanished without an answer: for the caller, a timeout.
async fn await_shared<T: Clone>(rx: coalesce::Shared<T>, deadline: tokio::time::Instant) -> Option<T> {
    tokio::time::timeout_at(deadline, coalesce::outcome(rx)).await.ok().flatten()
}

/// The value of one of a request's tasks. A task that panicked panics here too, so that the
/// request answers 500 (the HTTP envelope catches it) rather than leaving an account out as if
/// it had never been asked; the other tasks are detached first, so that the other accounts'
/// fetches and store writes finish rather than stop halfway. A cancelled task means the
/// runtime is going away.
fn joined<T: 'static>(tasks: &mut tokio::task::JoinSet<T>, joined: Result<T, tokio::task::JoinError>) -> T {
    match joined {
        Ok(value) => value,
        Err(e) => {
            tasks.detach_all();
            match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => panic!("a task of this request was cancelled: {e}"),
            }
        }
    }
}

/// Everything tally knows about one configured account at run time.
pub struct AccountState {
    pub config: AccountConfig,
    client: Arc<dyn ProviderClient>,
    latest: RwLock<Option<Arc<AccountSnapshot>>>,
    circuit: Mutex<circuit::Circuit>,
    /// The upstream budget as this process keeps it (alone, or while the store fails).
    budget: Mutex<budget::Local>,
    health: Mutex<Health>,
    /// Background checks of this account finished in this process (refreshed or not due).
    background_checks: watch::Sender<u64>,
    /// Figures served from cache and figures that needed a fetch: plain counts, published as
    /// metrics at scrape time, so a cache hit on the hot path is one uncontended-by-design add
    /// rather than a metrics-registry update.
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
}

/// What `/accounts` reports about an account's recent fetches.
#[derive(Clone, Debug, Default)]
pub struct Health {
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_error: Option<(UpstreamError, DateTime<Utc>)>,
}

impl AccountState {
    pub fn id(&self) -> &AccountId {
        &self.config.id
    }

    pub fn provider(&self) -> Provider {
        self.config.provider_kind()
    }

    pub fn capabilities(&self) -> Capabilities {
        self.config.provider.capabilities()
    }

    pub fn latest(&self) -> Option<Arc<AccountSnapshot>> {
        self.latest.read_locked().clone()
    }

    /// Keeps the newer of the held and the offered snapshot.
    fn offer(&self, snapshot: Arc<AccountSnapshot>) {
        let mut latest = self.latest.write_locked();
        if latest.as_ref().is_none_or(|l| l.fetched_at <= snapshot.fetched_at) {
            *latest = Some(snapshot);
        }
    }

    pub fn health(&self) -> Health {
        self.health.locked().clone()
    }

    /// Takes the circuit as the cluster recorded it.
    fn adopt_circuit(&self, shared: &crate::store::SharedFailure) {
        self.circuit.locked().adopt(shared.consecutive_failures, shared.opened_at);
    }

    /// Counts the background checks of this account as they finish: what a test of background
    /// refresh waits on, instead of guessing how long a timer takes.
    pub fn background_checks(&self) -> watch::Receiver<u64> {
        self.background_checks.subscribe()
    }

    /// Figures served from cache and figures that needed a fetch, since start.
    pub fn cache_counts(&self) -> (u64, u64) {
        (self.cache_hits.load(Ordering::Relaxed), self.cache_misses.load(Ordering::Relaxed))
    }

    pub fn circuit_state(&self, now: DateTime<Utc>) -> CircuitState {
        self.circuit.locked().state(now)
    }
}

pub struct Service {
    accounts: Vec<Arc<AccountState>>,
    by_id: HashMap<AccountId, usize>,
    store: GuardedStore,
    clock: Arc<dyn Clock>,
    fetch_permits: Arc<Semaphore>,
    request_timeout: Duration,
    /// `[events] retention`: how long events are kept.
    events_retention: Duration,
    /// `[events] max_wait`: the longest a feed request waits.
    events_max_wait: Duration,
    /// Present when replicas share the store (PostgreSQL): whether another replica may hold
    /// newer figures or an account's lease.
    cluster: Option<cluster::GuardedCluster>,
    /// One balance fetch in flight per account.
    fetches: coalesce::Coalescer<AccountId, FetchOutcome>,
    /// One payout lookup in flight per account and id.
    payout_lookups: coalesce::Coalescer<payouts::LookupKey, payouts::LookupOutcome>,
    /// `[[monitors]]` and their entries' states in memory.
    monitors: Arc<monitors::Book>,
    /// `[reporting]` (SPEC §10.4), when set.
    reporting: Option<Arc<reporting::Reporting>>,
    /// The configured webhooks and their dispatcher's state.
    webhooks: webhooks::Webhooks,
    /// `[payouts]` and the payout watcher's state.
    watcher: payout_watch::Watcher,
}

impl Service {
    /// Builds the service for the configured accounts, sharing one HTTP client.
    pub fn new(settings: &Settings, store: Arc<dyn Store>, clock: Arc<dyn Clock>, http: &UpstreamHttp) -> Arc<Self> {
        let accounts: Vec<Arc<AccountState>> = settings
            .accounts
            .iter()
            .map(|config| {
                Arc::new(AccountState {
                    cache_hits: AtomicU64::new(0),
                    cache_misses: AtomicU64::new(0),
                    client: config.provider.client(ClientContext {
                        base_url: config.base_url.clone(),
                        utc_offset: config.utc_offset,
                        timeout: config.freshness.timeout,
                        http: http.clone(),
                    }),
                    latest: RwLock::new(None),
                    circuit: Mutex::new(circuit::Circuit::new(config.circuit)),
                    budget: Mutex::default(),
                    health: Mutex::new(Health::default()),
                    background_checks: watch::Sender::new(0),
                    config: config.clone(),
                })
            })
            .collect();
        // Present from start at 0, so a dashboard's rate() sees the first refusal.
        for account in &accounts {
            metrics::counter!("tally_upstream_budget_denied_total", "account" => account.id().to_string()).increment(0);
            for outcome in crate::store::CallbackOutcome::ALL {
                metrics::counter!("tally_callbacks_total", "account" => account.id().to_string(),
                    "outcome" => outcome.as_str())
                .increment(0);
            }
        }
        let by_id = accounts.iter().enumerate().map(|(i, a)| (a.id().clone(), i)).collect();
        let store = GuardedStore::new(store);
        let cluster = cluster::GuardedCluster::of(&store, settings.server.request_timeout);
        Arc::new(Self {
            accounts,
            by_id,
            store,
            cluster,
            clock,
            fetch_permits: Arc::new(Semaphore::new(settings.server.max_concurrent_fetches)),
            request_timeout: settings.server.request_timeout,
            events_retention: settings.events.retention,
            events_max_wait: settings.events.max_wait,
            fetches: Default::default(),
            payout_lookups: Default::default(),
            monitors: Arc::new(monitors::Book::new(settings.monitors.clone())),
            webhooks: webhooks::Webhooks::new(settings.webhooks.clone()),
            watcher: payout_watch::Watcher::new(settings.payouts.clone()),
            reporting: settings.reporting.clone().map(Arc::new),
        })
    }

    /// `[reporting]`, when set.
    pub fn reporting(&self) -> Option<&Arc<reporting::Reporting>> {
        self.reporting.as_ref()
    }

    pub fn accounts(&self) -> &[Arc<AccountState>] {
        &self.accounts
    }

    pub fn account(&self, id: &AccountId) -> Option<&Arc<AccountState>> {
        self.by_id.get(id).map(|&i| &self.accounts[i])
    }

    /// Whether the store answers and holds the schema this build expects (for `/readyz`).
    pub async fn store_ready(&self) -> Result<(), crate::store::StoreError> {
        self.store.check_ready().await
    }

    pub fn store_health(&self) -> &StoreHealth {
        self.store.health()
    }

    /// The coordination of the replicas sharing the store; `None` when this process is alone
    /// with it (SQLite).
    pub fn cluster(&self) -> Option<&cluster::GuardedCluster> {
        self.cluster.as_ref()
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The failure of an account still unresolved at the request deadline, as of now.
    fn deadline_failure(&self) -> FetchFailure {
        FetchFailure::new(UpstreamError::timeout("no answer before the request deadline"), self.clock.now())
    }

    /// Stored change points, within the request deadline: a stalled store gets a 503 in time
    /// rather than holding the request until the HTTP backstop.
    pub async fn balance_history(
        &self,
        query: &crate::store::HistoryQuery,
    ) -> Result<Vec<crate::store::HistoryPoint>, crate::store::StoreError> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        self.store.balance_history(query, Within::Until(deadline)).await
    }

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Loads the last stored figures into memory, with their real ages, waiting for the store
    /// until `by` at most (start-up's budget). A store that is down or does not answer in time
    /// is logged and skipped: tally then starts cold and fetches live. Figures already held
    /// (fetched since start) are kept when newer.
    pub async fn warm_up(&self, by: tokio::time::Instant) {
        // Start listening for other replicas' fetches before any request needs them.
        if let Some(cluster) = &self.cluster {
            drop(cluster.events());
        }
        match self.store.all_latest_balances(Within::Until(by)).await {
            Ok(snapshots) => {
                // Monitors first: a monitor added while tally was down fires on the stored figure.
                if let Err(e) = self.evaluate_stored(&snapshots, Within::Until(by)).await {
                    tracing::warn!(error = %e, "could not evaluate the monitors against the stored figures; \
                        /balances shows `alerts: null` until the states are read");
                }
                let mut loaded = 0;
                for snapshot in snapshots {
                    if let Some(account) = self.account(&snapshot.account) {
                        account.offer(Arc::new(snapshot));
                        loaded += 1;
                    }
                }
                tracing::info!(accounts = loaded, "warmed the balance cache from the store");
            }
            Err(e) => tracing::warn!(error = %e, "could not warm the balance cache from the store"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_task_that_panicked_panics_its_request_and_leaves_the_others_running() {
        let mut tasks = tokio::task::JoinSet::new();
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let (done, finished) = tokio::sync::oneshot::channel();
        tasks.spawn(async move {
            let _ = wait.await;
            let _ = done.send("the other account's work finished");
        });
        tasks.spawn(async { panic!("a bug in resolve") });
        let outcome = tasks.join_next().await.expect("a task ends");
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| super::joined(&mut tasks, outcome)))
            .expect_err("the panic goes on");
        assert_eq!(caught.downcast_ref::<&str>(), Some(&"a bug in resolve"));
        drop(tasks);
        go.send(()).expect("the other task still runs");
        assert_eq!(finished.await, Ok("the other account's work finished"));
    }
}
