//! `GET /balances`: which accounts a request selects, how fresh each figure must be, the
//! concurrent fan-out within the request deadline, and the report.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::clock::{age, age_seconds};
use super::report::{AccountError, AccountLine, AccountStatus, BalanceLine, BalancesReport, Source, totals};
use super::{AccountState, FetchFailure, Service};
use crate::domain::{AccountId, Currency, Provider};
use crate::store::{AccountSnapshot, Backend};

/// What a `/balances` request asks for. Empty lists select everything.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub accounts: Vec<AccountId>,
    pub providers: Vec<Provider>,
    pub currencies: Vec<Currency>,
    /// Accept a cached figure at most this old (instead of each account's ttl).
    pub max_age: Option<Duration>,
    pub include_raw: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SelectionError {
    #[error("no account `{0}` is configured")]
    UnknownAccount(AccountId),
}

/// What one `/balances` request resolved to, and what the HTTP layer needs to answer with it.
/// The report itself is built on demand ([`report`](Self::report)): an HTTP layer that already
/// holds the bytes of an identical answer does not need it.
pub struct BalancesOutcome {
    views: Vec<View>,
    selection: Selection,
    now: chrono::DateTime<chrono::Utc>,
    /// False when no selected account has anything to serve (503).
    pub servable: bool,
    /// How long until the first served figure leaves its freshness bound (`Cache-Control`).
    pub fresh_for: Duration,
    /// When to try again if nothing is servable.
    pub retry_after: Duration,
    /// A tag of the report's content for `ETag`: the same figures, statuses and errors give
    /// the same tag, whatever `generated_at`, ages or live-vs-cache.
    pub tag: String,
    /// Equal keys give reports identical but for `generated_at`: the tag, each account's
    /// source, and the second of `now` (which fixes every `age_seconds`).
    pub body_key: String,
}

/// One account's answer for one request.
struct View {
    account: Arc<AccountState>,
    status: AccountStatus,
    source: Option<Source>,
    snapshot: Option<Arc<AccountSnapshot>>,
    error: Option<AccountError>,
    fresh_for: Duration,
}

impl Service {
    pub fn select(&self, selection: &Selection) -> Result<Vec<Arc<AccountState>>, SelectionError> {
        for id in &selection.accounts {
            if self.account(id).is_none() {
                return Err(SelectionError::UnknownAccount(id.clone()));
            }
        }
        Ok(self
            .accounts
            .iter()
            .filter(|a| selection.accounts.is_empty() || selection.accounts.contains(a.id()))
            .filter(|a| selection.providers.is_empty() || selection.providers.contains(&a.provider()))
            .cloned()
            .collect())
    }

    pub async fn balances(self: &Arc<Self>, selection: &Selection) -> Result<BalancesOutcome, SelectionError> {
        let selected = self.select(selection)?;
        let deadline = Instant::now() + self.request_timeout;
        let mut views: Vec<Option<View>> = selected.iter().map(|_| None).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, account) in selected.iter().enumerate() {
            // A fresh figure is served inline: only accounts that need the store or a fetch
            // get a task (the hot path of a polling dashboard spawns nothing).
            let bound = selection.max_age.unwrap_or(account.config.freshness.ttl);
            if let Some(view) = self.fresh_cached(account, bound) {
                account.cache_hits.increment(1);
                views[i] = Some(view);
                continue;
            }
            let service = Arc::clone(self);
            let account = Arc::clone(account);
            let max_age = selection.max_age;
            tasks.spawn(async move {
                let resolving = Arc::clone(&service).resolve(Arc::clone(&account), max_age, deadline);
                // Each account answers by the deadline, whatever it still waits for (every step
                // of resolve() is bounded by it too; this is the backstop): with what is in
                // memory.
                let view = match tokio::time::timeout_at(deadline, resolving).await {
                    Ok(view) => view,
                    Err(_) => {
                        let latest = account.latest();
                        service.stale_view(account, service.deadline_failure(), latest)
                    }
                };
                (i, view)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            // resolve() does not panic; a JoinError would mean the runtime is shutting down.
            if let Ok((i, view)) = joined {
                views[i] = Some(view);
            }
        }
        let views: Vec<View> = views.into_iter().flatten().collect();
        Ok(self.outcome(views, selection))
    }

    /// Serves the account from cache when fresh enough, else refreshes it (joining a fetch in
    /// flight) and waits until the deadline; on failure serves the last figure as stale.
    async fn resolve(
        self: Arc<Self>,
        account: Arc<AccountState>,
        max_age: Option<Duration>,
        deadline: Instant,
    ) -> View {
        let bound = max_age.unwrap_or(account.config.freshness.ttl);
        if let Some(view) = self.fresh_cached(&account, bound) {
            account.cache_hits.increment(1);
            return view;
        }
        // Another replica sharing the store may hold a newer figure than this process. The
        // store gets a share of the time, the rest is left for fetching.
        if self.store.backend() == Backend::Postgres
            && let Ok(Some(stored)) =
                self.guarded_by(self.store.latest_balances(account.id()), Self::store_share(deadline)).await
        {
            account.offer(Arc::new(stored));
            if let Some(view) = self.fresh_cached(&account, bound) {
                account.cache_hits.increment(1);
                return view;
            }
        }
        account.cache_misses.increment(1);
        let fetched = super::await_shared(self.refresh(&account, None, deadline), deadline).await;
        match fetched.unwrap_or_else(|| Err(self.deadline_failure())) {
            Ok(snapshot) => {
                let fresh_for = freshness_bound(&account, max_age);
                View {
                    account,
                    status: AccountStatus::Fresh,
                    source: Some(Source::Live),
                    snapshot: Some(snapshot),
                    error: None,
                    fresh_for,
                }
            }
            Err(failure) => self.stale(account, failure, deadline).await,
        }
    }

    fn fresh_cached(&self, account: &Arc<AccountState>, bound: Duration) -> Option<View> {
        let snapshot = account.latest()?;
        let age = age(self.clock.now(), snapshot.fetched_at);
        (age <= bound && !bound.is_zero()).then(|| View {
            account: Arc::clone(account),
            status: AccountStatus::Fresh,
            source: Some(Source::Cache),
            snapshot: Some(snapshot),
            error: None,
            fresh_for: freshness_bound(account, Some(bound)).saturating_sub(age),
        })
    }

    /// The failure of an account still unresolved at the request deadline.
    fn deadline_failure(&self) -> FetchFailure {
        FetchFailure { error: super::deadline_passed(), at: self.clock.now() }
    }

    /// The last known figure (memory, else the store while the deadline allows) marked stale,
    /// or `failed` if none.
    async fn stale(&self, account: Arc<AccountState>, failure: FetchFailure, deadline: Instant) -> View {
        let mut snapshot = account.latest();
        if snapshot.is_none()
            && Instant::now() < deadline
            && let Ok(Some(stored)) = self.guarded_by(self.store.latest_balances(account.id()), deadline).await
        {
            let stored = Arc::new(stored);
            account.offer(Arc::clone(&stored));
            snapshot = Some(stored);
        }
        self.stale_view(account, failure, snapshot)
    }

    /// `snapshot` served as stale for `failure`, or the account `failed` without one.
    fn stale_view(
        &self,
        account: Arc<AccountState>,
        failure: FetchFailure,
        snapshot: Option<Arc<AccountSnapshot>>,
    ) -> View {
        let FetchFailure { error, at } = failure;
        let error = Some(AccountError {
            code: error.code().to_owned(),
            message: error.message,
            upstream_status: error.upstream_status,
            at,
        });
        let (status, source) = match snapshot {
            Some(_) => (AccountStatus::Stale, Some(Source::Cache)),
            None => (AccountStatus::Failed, None),
        };
        View { account, status, source, snapshot, error, fresh_for: Duration::ZERO }
    }

    fn outcome(&self, views: Vec<View>, selection: &Selection) -> BalancesOutcome {
        let now = self.clock.now();
        let servable = views.is_empty() || views.iter().any(|v| v.snapshot.is_some());
        let fresh_for = views.iter().map(|v| v.fresh_for).min().unwrap_or_default();
        let retry_after = views
            .iter()
            .filter_map(|v| v.account.circuit.lock().ok().and_then(|c| c.allow(now).err()))
            .map(|at| age(at, now))
            .min()
            .unwrap_or(Duration::from_secs(5))
            .max(Duration::from_secs(1));
        let tag = content_tag(&views, selection);
        let sources: String = views.iter().map(|v| if v.source == Some(Source::Live) { 'l' } else { 'c' }).collect();
        let body_key = format!("{tag}{sources}{}", now.timestamp());
        BalancesOutcome { views, selection: selection.clone(), now, servable, fresh_for, retry_after, tag, body_key }
    }
}

impl BalancesOutcome {
    pub fn generated_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.now
    }

    pub fn report(&self) -> BalancesReport {
        let (now, selection) = (self.now, &self.selection);
        let mut balances = Vec::new();
        let mut accounts = Vec::with_capacity(self.views.len());
        for view in &self.views {
            if let Some(snapshot) = &view.snapshot {
                let wanted = |c: &Currency| selection.currencies.is_empty() || selection.currencies.contains(c);
                balances.extend(snapshot.entries.iter().filter(|e| wanted(&e.currency)).map(|e| BalanceLine {
                    account: view.account.id().clone(),
                    provider: view.account.provider(),
                    wallet: e.wallet.clone(),
                    currency: e.currency.clone(),
                    available: e.available,
                    pending: e.pending,
                    reserved: e.reserved,
                    total: e.total,
                    blocked: e.blocked,
                    fetched_at: snapshot.fetched_at,
                    age_seconds: age_seconds(now, snapshot.fetched_at),
                    stale: view.status != AccountStatus::Fresh,
                }));
            }
            accounts.push(AccountLine {
                account: view.account.id().clone(),
                provider: view.account.provider(),
                status: view.status,
                source: view.source,
                fetched_at: view.snapshot.as_ref().map(|s| s.fetched_at),
                error: view.error.clone(),
                raw: if selection.include_raw { view.snapshot.as_ref().and_then(|s| s.raw.clone()) } else { None },
            });
        }
        BalancesReport {
            generated_at: now,
            complete: self.views.iter().all(|v| v.status == AccountStatus::Fresh),
            totals: totals(&balances),
            balances,
            accounts,
        }
    }
}

/// How long a figure served to this request stays fresh from its fetch: the account's ttl,
/// or less when the request asked for younger figures. A `max_age` longer than the ttl lets a
/// request accept an older figure, but does not make the figure fresh for longer.
fn freshness_bound(account: &AccountState, max_age: Option<Duration>) -> Duration {
    let ttl = account.config.freshness.ttl;
    max_age.map_or(ttl, |max_age| max_age.min(ttl))
}

/// What the report's content is a function of: each account's served snapshot (an account's
/// snapshot is identified by its fetch time), status and error, and the selection's currency
/// and raw filters. Hashing these is far cheaper than re-serializing the report.
fn content_tag(views: &[View], selection: &Selection) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for v in views {
        h.update(v.account.id().as_str());
        h.update([v.status as u8]);
        if let Some(s) = &v.snapshot {
            h.update(s.fetched_at.timestamp_micros().to_le_bytes());
        }
        if let Some(e) = &v.error {
            h.update(e.code.as_bytes());
            h.update(e.message.as_bytes());
        }
        h.update([0xff]);
    }
    for c in &selection.currencies {
        h.update(c.as_str());
        h.update([0xfe]);
    }
    h.update([u8::from(selection.include_raw)]);
    format!("\"{}\"", hex::encode(&h.finalize()[..16]))
}
