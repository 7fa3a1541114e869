//! `GET /balances`: which accounts a request selects, how fresh each figure must be, the
//! concurrent fan-out within the request deadline, and what each selected account has to
//! serve, with the per-currency totals ([`super::totals`]). The HTTP layer turns that into the
//! report it sends.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::monitors::Alert;
use super::totals::{CurrencySums, totals};
use super::{AccountState, FetchFailure, Service};
use crate::clock::{age, age_seconds};
use crate::domain::monitor::{Monitor, MonitorEntry};
use crate::domain::{AccountId, BalanceEntry, Currency, Provider};
use crate::store::AccountSnapshot;
use crate::sync::MutexExt;

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
/// What each account serves is read on demand ([`accounts`](Self::accounts),
/// [`entries`](Self::entries), [`totals`](Self::totals)): an HTTP layer that already holds the
/// bytes of an identical answer does not need it.
pub struct BalancesOutcome {
    service: Arc<Service>,
    views: Vec<View>,
    selection: Selection,
    now: chrono::DateTime<chrono::Utc>,
    /// False when no selected account has anything to serve (503).
    pub servable: bool,
    /// How long until the first served figure leaves its freshness bound (`Cache-Control`).
    pub fresh_for: Duration,
    /// When to try again if nothing is servable.
    pub retry_after: Duration,
    /// A digest of the report's content for `ETag` ([`etag`](Self::etag)): the same figures,
    /// statuses and errors give the same tag, whatever `generated_at`, ages or live-vs-cache.
    pub tag: [u8; 16],
    /// Equal keys give reports identical but for `generated_at`.
    pub body_key: BodyKey,
    /// The firing monitor entries, all of them (filtered by [`alerts`](Self::alerts)); `None`
    /// while the stored states could not be read.
    firing: Option<Arc<[Alert]>>,
}

/// What a report's body is a function of, but for `generated_at`: what was selected (the
/// accounts, currencies, `include`), the content (the tag), and what the body shows beyond
/// the content: each account's source, each figure's `age_seconds`, and each error's time and
/// upstream status. Compared only within this process, so the hashes need no cryptographic
/// digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BodyKey {
    selection: u64,
    tag: [u8; 16],
    shown: u64,
}

impl BodyKey {
    /// Which answer this is a version of: requests with one selection share a body.
    pub fn selection(&self) -> u64 {
        self.selection
    }
}

/// How an account's figure stands for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The figure is within its freshness bound.
    Fresh,
    /// A refresh failed or missed the deadline; the last stored figure is served.
    Stale,
    /// Nothing to serve.
    Failed,
}

/// Where a served figure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Fetched for this request.
    Live,
    /// Served from memory or the store.
    Cache,
}

/// One selected account's answer, as [`BalancesOutcome::accounts`] shows it.
#[derive(Clone, Copy)]
pub struct AccountAnswer<'a> {
    pub account: &'a AccountState,
    pub status: Status,
    /// Where the served figure came from; `None` when nothing is served.
    pub origin: Option<Origin>,
    /// The served figures.
    pub snapshot: Option<&'a AccountSnapshot>,
    /// Why the figure is not fresh.
    pub failure: Option<&'a FetchFailure>,
}

/// One account's answer for one request.
struct View {
    /// The account's position in [`Service::accounts`]: no reference count to move per
    /// account on the hot path.
    account: usize,
    status: Status,
    source: Option<Origin>,
    snapshot: Option<Arc<AccountSnapshot>>,
    error: Option<FetchFailure>,
    fresh_for: Duration,
}

impl Service {
    /// The selected accounts with their positions in [`Service::accounts`], in config order.
    pub(super) fn select<'a>(
        &'a self,
        selection: &'a Selection,
    ) -> Result<impl Iterator<Item = (usize, &'a Arc<AccountState>)> + 'a, SelectionError> {
        for id in &selection.accounts {
            if self.account(id).is_none() {
                return Err(SelectionError::UnknownAccount(id.clone()));
            }
        }
        Ok(self
            .accounts
            .iter()
            .enumerate()
            .filter(|(_, a)| selection.accounts.is_empty() || selection.accounts.contains(a.id()))
            .filter(|(_, a)| selection.providers.is_empty() || selection.providers.contains(&a.provider())))
    }

    pub async fn balances(self: &Arc<Self>, selection: &Selection) -> Result<BalancesOutcome, SelectionError> {
        let deadline = Instant::now() + self.request_timeout;
        let mut views: Vec<Option<View>> = Vec::with_capacity(self.accounts.len());
        // A fresh figure is served inline: only accounts that need the store or a fetch get a
        // task (the hot path of a polling dashboard spawns nothing and reads the clock once).
        let now = self.clock.now();
        let mut tasks = None;
        for (index, account) in self.select(selection)? {
            let i = views.len();
            let bound = selection.max_age.unwrap_or(account.config.freshness.ttl);
            if let Some(view) = self.fresh_cached_at(index, bound, now) {
                account.cache_hits.fetch_add(1, Ordering::Relaxed);
                views.push(Some(view));
                continue;
            }
            views.push(None);
            let service = Arc::clone(self);
            let account = Arc::clone(account);
            let max_age = selection.max_age;
            tasks.get_or_insert_with(tokio::task::JoinSet::new).spawn(async move {
                let resolving = Arc::clone(&service).resolve(index, max_age, deadline);
                // Each account answers by the deadline, whatever it still waits for (every step
                // of resolve() is bounded by it too; this is the backstop): with what is in
                // memory.
                let view = match tokio::time::timeout_at(deadline, resolving).await {
                    Ok(view) => view,
                    Err(_) => {
                        let latest = account.latest();
                        service.stale_view(index, service.deadline_failure(), latest)
                    }
                };
                (i, view)
            });
        }
        if let Some(tasks) = tasks.as_mut() {
            while let Some(joined) = tasks.join_next().await {
                let (i, view) = super::joined(tasks, joined);
                views[i] = Some(view);
            }
        }
        let views: Vec<View> = views.into_iter().flatten().collect();
        // Served from memory alone, the report is as of the clock read above; after fetches,
        // as of now.
        let now = if tasks.is_some() { self.clock.now() } else { now };
        Ok(self.outcome(views, selection, now))
    }

    /// Serves the account from cache when fresh enough, else refreshes it (joining a fetch in
    /// flight) and waits until the deadline; on failure serves the last figure as stale.
    async fn resolve(self: Arc<Self>, index: usize, max_age: Option<Duration>, deadline: Instant) -> View {
        let account = Arc::clone(&self.accounts[index]);
        let bound = max_age.unwrap_or(account.config.freshness.ttl);
        if let Some(view) = self.fresh_cached(index, bound) {
            account.cache_hits.fetch_add(1, Ordering::Relaxed);
            return view;
        }
        // Another replica sharing the store may hold a newer figure than this process. The
        // store gets a share of the time, the rest is left for fetching.
        if self.cluster.is_some()
            && let Ok(Some(stored)) = self.store.latest_balances(account.id(), super::Within::share_of(deadline)).await
        {
            account.offer(Arc::new(stored));
            if let Some(view) = self.fresh_cached(index, bound) {
                account.cache_hits.fetch_add(1, Ordering::Relaxed);
                return view;
            }
        }
        account.cache_misses.fetch_add(1, Ordering::Relaxed);
        let fetched = super::await_shared(self.refresh(&account, None, deadline), deadline).await;
        match fetched.unwrap_or_else(|| Err(self.deadline_failure())) {
            Ok(snapshot) => {
                let fresh_for = freshness_bound(&account, max_age);
                View {
                    account: index,
                    status: Status::Fresh,
                    source: Some(Origin::Live),
                    snapshot: Some(snapshot),
                    error: None,
                    fresh_for,
                }
            }
            Err(failure) => self.stale(index, failure, deadline).await,
        }
    }

    fn fresh_cached(&self, index: usize, bound: Duration) -> Option<View> {
        self.fresh_cached_at(index, bound, self.clock.now())
    }

    /// [`fresh_cached`](Self::fresh_cached) as of `now` (read once for all of a request's accounts).
    fn fresh_cached_at(&self, index: usize, bound: Duration, now: DateTime<Utc>) -> Option<View> {
        let account = &self.accounts[index];
        let snapshot = account.latest()?;
        let age = age(now, snapshot.fetched_at);
        (age <= bound && !bound.is_zero()).then(|| View {
            account: index,
            status: Status::Fresh,
            source: Some(Origin::Cache),
            snapshot: Some(snapshot),
            error: None,
            fresh_for: freshness_bound(account, Some(bound)).saturating_sub(age),
        })
    }

    /// The last known figure (memory, else the store while the deadline allows) marked stale,
    /// or `failed` if none.
    async fn stale(&self, index: usize, failure: FetchFailure, deadline: Instant) -> View {
        let account = &self.accounts[index];
        let mut snapshot = account.latest();
        if snapshot.is_none()
            && Instant::now() < deadline
            && let Ok(Some(stored)) = self.store.latest_balances(account.id(), super::Within::Until(deadline)).await
        {
            let stored = Arc::new(stored);
            account.offer(Arc::clone(&stored));
            snapshot = Some(stored);
        }
        self.stale_view(index, failure, snapshot)
    }

    /// `snapshot` served as stale for `failure`, or the account `failed` without one.
    fn stale_view(&self, index: usize, failure: FetchFailure, snapshot: Option<Arc<AccountSnapshot>>) -> View {
        let error = Some(failure);
        let (status, source) = match snapshot {
            Some(_) => (Status::Stale, Some(Origin::Cache)),
            None => (Status::Failed, None),
        };
        View { account: index, status, source, snapshot, error, fresh_for: Duration::ZERO }
    }

    fn outcome(self: &Arc<Self>, views: Vec<View>, selection: &Selection, now: DateTime<Utc>) -> BalancesOutcome {
        let servable = views.is_empty() || views.iter().any(|v| v.snapshot.is_some());
        let fresh_for = views.iter().map(|v| v.fresh_for).min().unwrap_or_default();
        // Only an answer with nothing to serve says when to try again.
        let retry_after = if servable {
            Duration::ZERO
        } else {
            views
                .iter()
                .filter_map(|v| self.accounts[v.account].circuit.locked().allow(now).err())
                // A call the upstream budget could not afford may be made when it refills.
                .chain(views.iter().filter_map(|v| Some(v.error.as_ref()?.denied?.until())))
                .map(|at| age(at, now))
                .min()
                .unwrap_or(Duration::from_secs(5))
                .max(Duration::from_secs(1))
        };
        let firing = self.monitors.firing();
        // Converted totals use the rates of the day: a new day may show other amounts.
        let day = self.reporting.is_some().then(|| now.date_naive());
        let tag = content_tag(&self.accounts, &views, selection, firing.as_deref(), day);
        let (selected, shown) = {
            use std::hash::{Hash, Hasher};
            let (mut selected, mut shown) = (std::hash::DefaultHasher::new(), std::hash::DefaultHasher::new());
            for v in &views {
                v.account.hash(&mut selected);
                (v.source == Some(Origin::Live)).hash(&mut shown);
                v.snapshot.as_ref().map(|s| age_seconds(now, s.fetched_at)).hash(&mut shown);
                v.error.as_ref().map(|e| (e.at, e.error.upstream_status)).hash(&mut shown);
            }
            selection.currencies.hash(&mut selected);
            selection.include_raw.hash(&mut selected);
            (selected.finish(), shown.finish())
        };
        let body_key = BodyKey { selection: selected, tag, shown };
        let service = Arc::clone(self);
        BalancesOutcome {
            service,
            views,
            selection: selection.clone(),
            now,
            servable,
            fresh_for,
            retry_after,
            tag,
            body_key,
            firing,
        }
    }
}

impl BalancesOutcome {
    pub fn generated_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.now
    }

    /// The `ETag` header's value: the quoted hex of [`tag`](Self::tag).
    pub fn etag(&self) -> String {
        format!("\"{}\"", hex::encode(self.tag))
    }

    /// Every selected account's answer, in config order.
    pub fn accounts(&self) -> impl Iterator<Item = AccountAnswer<'_>> {
        self.views.iter().map(|view| AccountAnswer {
            account: &self.service.accounts[view.account],
            status: view.status,
            origin: view.source,
            snapshot: view.snapshot.as_deref(),
            failure: view.error.as_ref(),
        })
    }

    /// Every served entry in a selected currency, with its account's answer, in config order
    /// and then in the provider's order.
    pub fn entries(&self) -> impl Iterator<Item = (AccountAnswer<'_>, &AccountSnapshot, &BalanceEntry)> {
        let wanted = |c: &Currency| self.selection.currencies.is_empty() || self.selection.currencies.contains(c);
        self.accounts().flat_map(move |answer| {
            let served = answer.snapshot.into_iter().flat_map(|s| s.entries.iter().map(move |e| (s, e)));
            served.filter(move |(_, e)| wanted(&e.currency)).map(move |(s, e)| (answer, s, e))
        })
    }

    /// The per-currency totals of [`entries`](Self::entries), an entry of an account not
    /// [`Status::Fresh`] counting as stale.
    pub fn totals(&self) -> Vec<CurrencySums> {
        totals(self.entries().map(|(answer, _, entry)| (entry, answer.status != Status::Fresh)))
    }

    /// How old `snapshot` is as of [`generated_at`](Self::generated_at), in whole seconds.
    pub fn age_seconds(&self, snapshot: &AccountSnapshot) -> u64 {
        age_seconds(self.now, snapshot.fetched_at)
    }

    /// True when every selected account is fresh.
    pub fn complete(&self) -> bool {
        self.views.iter().all(|v| v.status == Status::Fresh)
    }

    /// The firing monitor entries within the selection (its accounts and currencies), with
    /// their monitors; `None` while the stored states could not be read.
    pub fn alerts(&self) -> Option<impl Iterator<Item = (&Monitor, &MonitorEntry)>> {
        let firing = self.firing.as_deref()?;
        let monitors = self.service.monitors.monitors();
        Some(
            firing
                .iter()
                .filter(|a| selected(&self.service.accounts, &self.views, &self.selection, &a.entry))
                .map(move |a| (&monitors[a.monitor], &a.entry)),
        )
    }

    /// `[reporting]`, when set: the totals are converted at the rates of the
    /// [`generated_at`](Self::generated_at) day (UTC).
    pub fn reporting(&self) -> Option<&super::reporting::Reporting> {
        self.service.reporting().map(|r| &**r)
    }

    /// Whether the request asked for each account's raw provider payload (`include=raw`).
    pub fn include_raw(&self) -> bool {
        self.selection.include_raw
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
/// and raw filters. Hashing these is far cheaper than re-serializing the report, and replicas
/// holding the same snapshots give the same tag.
fn content_tag(
    accounts: &[Arc<AccountState>],
    views: &[View],
    selection: &Selection,
    firing: Option<&[Alert]>,
    day: Option<chrono::NaiveDate>,
) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    if let Some(day) = day {
        h.update(day.to_string());
        h.update([0xfb]);
    }
    // The alerts shown: which entries fire (and since when, at what figure), or unknown.
    match firing {
        None => h.update([0xfd]),
        Some(firing) => {
            for a in firing.iter().filter(|a| selected(accounts, views, selection, &a.entry)) {
                let e = &a.entry;
                h.update(a.monitor.to_le_bytes());
                for part in [e.account.as_str(), &e.wallet, e.currency.as_str()] {
                    h.update(part);
                    h.update([0]);
                }
                h.update(e.state.value.map(|v| v.to_string()).unwrap_or_default());
                h.update(e.state.since.timestamp_micros().to_le_bytes());
            }
            h.update([0xfc]);
        }
    }
    for v in views {
        h.update(accounts[v.account].id().as_str());
        h.update([v.status as u8]);
        if let Some(s) = &v.snapshot {
            h.update(s.fetched_at.timestamp_micros().to_le_bytes());
        }
        if let Some(e) = &v.error {
            h.update(e.code().as_bytes());
            h.update(e.error.message.as_bytes());
        }
        h.update([0xff]);
    }
    for c in &selection.currencies {
        h.update(c.as_str());
        h.update([0xfe]);
    }
    h.update([u8::from(selection.include_raw)]);
    <[u8; 16]>::try_from(&h.finalize()[..16]).expect("a SHA-256 digest has 32 bytes")
}

/// Whether a monitored entry is within a request's selection: one of its accounts (those the
/// request resolved, in `views`) and, when the request names currencies, one of them.
fn selected(accounts: &[Arc<AccountState>], views: &[View], selection: &Selection, entry: &MonitorEntry) -> bool {
    views.iter().any(|v| *accounts[v.account].id() == entry.account)
        && (selection.currencies.is_empty() || selection.currencies.contains(&entry.currency))
}
