//! Monitors (SPEC §8.2) as the service keeps them: the rules, and the states in memory for the
//! `/balances` hot path ([`Book`]), which reads no store. The states are decided and kept by
//! the store, in the transaction of each fetched figure; the book takes the states each write of
//! this process moved, all of them at start, and an account's again whenever this replica
//! follows another replica's fetch of it. `tally_monitor_firing` follows the book.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Service, Within};
use crate::clock;
use crate::domain::AccountId;
use crate::domain::monitor::{EntryKey, Monitor, MonitorEntry, State};
use crate::store::{AccountSnapshot, StoreError};
use crate::sync::RwLockExt;

/// How often the states are read again while they could not be read (the store was down at
/// start).
const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// One firing entry, with the position of its monitor in [`Book::monitors`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    pub monitor: usize,
    pub entry: MonitorEntry,
}

/// The monitors and the states of their entries, in memory.
pub struct Book {
    monitors: Arc<[Monitor]>,
    inner: RwLock<Inner>,
}

struct Inner {
    /// Whether every stored state has been read (at start, or since): until then `/balances`
    /// cannot say which entries fire, and says so (`alerts: null`).
    known: bool,
    entries: BTreeMap<EntryKey, MonitorEntry>,
    /// The firing entries, in key order: what `/balances` takes, one reference count per request.
    firing: Arc<[Alert]>,
}

impl Book {
    pub fn new(monitors: Vec<Monitor>) -> Self {
        let known = monitors.is_empty();
        Self {
            monitors: monitors.into(),
            inner: RwLock::new(Inner { known, entries: BTreeMap::new(), firing: Arc::from([]) }),
        }
    }

    pub fn monitors(&self) -> &Arc<[Monitor]> {
        &self.monitors
    }

    /// The position of the configured monitor that `entry`'s state belongs to; `None` for a
    /// state of a monitor removed from the config, or whose filters no longer watch the entry.
    pub fn monitor_of(&self, entry: &MonitorEntry) -> Option<usize> {
        self.monitors.iter().position(|m| {
            m.id == entry.monitor && m.watches(&entry.account, entry.provider, &entry.wallet, &entry.currency)
        })
    }

    /// The firing entries; `None` while the stored states could not be read.
    pub fn firing(&self) -> Option<Arc<[Alert]>> {
        let inner = self.inner.read_locked();
        inner.known.then(|| Arc::clone(&inner.firing))
    }

    pub fn known(&self) -> bool {
        self.inner.read_locked().known
    }

    /// Takes the states a write moved (a state already held from a later observation stays:
    /// writes may finish out of order).
    pub fn apply(&self, moved: Vec<MonitorEntry>) {
        if moved.is_empty() {
            return;
        }
        self.update(|entries| {
            for entry in moved {
                keep_newer(entries, entry);
            }
        });
    }

    /// Takes every stored state (read whole): the book is known from now on.
    pub fn load(&self, all: Vec<MonitorEntry>) {
        self.replace(|_| true, all);
        self.inner.write_locked().known = true;
    }

    /// Takes the stored states of one account (after another replica's fetch of it).
    pub fn load_account(&self, account: &AccountId, states: Vec<MonitorEntry>) {
        self.replace(|e| e.account == *account, states);
    }

    /// Replaces the entries `scope` selects by `read` (from the store), but for those this
    /// process holds from a later observation (a write of its own that finished after the read).
    fn replace(&self, scope: impl Fn(&MonitorEntry) -> bool, read: Vec<MonitorEntry>) {
        self.update(|entries| {
            let mut held = BTreeMap::new();
            entries.retain(|key, e| {
                if scope(e) {
                    held.insert(key.clone(), e.clone());
                }
                !scope(e)
            });
            for entry in read {
                keep_newer(entries, entry);
            }
            for (key, entry) in held {
                if entries.get(&key).is_some_and(|e| e.state.observed_at < entry.state.observed_at) {
                    entries.insert(key, entry);
                }
            }
        });
    }

    /// Changes the entries, keeping only configured monitors' states, and refreshes the firing
    /// list and the gauge of every entry.
    fn update(&self, change: impl FnOnce(&mut BTreeMap<EntryKey, MonitorEntry>)) {
        let mut inner = self.inner.write_locked();
        change(&mut inner.entries);
        let mut firing = Vec::new();
        let mut orphans = Vec::new();
        for (key, entry) in &inner.entries {
            let Some(monitor) = self.monitor_of(entry) else {
                orphans.push(key.clone());
                continue;
            };
            let on = entry.state.state == State::Firing;
            metrics::gauge!("tally_monitor_firing", "monitor" => entry.monitor.clone(),
                "account" => entry.account.to_string(), "wallet" => entry.wallet.clone(),
                "currency" => entry.currency.to_string())
            .set(if on { 1.0 } else { 0.0 });
            if on {
                firing.push(Alert { monitor, entry: entry.clone() });
            }
        }
        for key in orphans {
            inner.entries.remove(&key);
        }
        inner.firing = firing.into();
    }
}

/// Puts `entry` in, unless the entry held was observed later.
fn keep_newer(entries: &mut BTreeMap<EntryKey, MonitorEntry>, entry: MonitorEntry) {
    let key = entry.key();
    if entries.get(&key).is_none_or(|held| held.state.observed_at <= entry.state.observed_at) {
        entries.insert(key, entry);
    }
}

/// One monitored entry as `GET /monitors` shows it.
#[derive(Clone, Debug)]
pub struct EntryView {
    pub entry: MonitorEntry,
    /// The entry's latest figure is older than its account's `ttl`.
    pub stale: bool,
}

impl Service {
    /// The monitors and the in-memory states of their entries.
    pub fn monitor_book(&self) -> &Book {
        &self.monitors
    }

    /// Evaluates the monitors against the latest stored figures (a monitor added while tally
    /// was down fires once; one already evaluated changes nothing), then reads every state into
    /// memory. A store that fails leaves the book unknown; the background retries.
    pub(super) async fn evaluate_stored(
        &self,
        snapshots: &[AccountSnapshot],
        within: Within,
    ) -> Result<(), StoreError> {
        if self.monitors.monitors().is_empty() {
            return Ok(());
        }
        for snapshot in snapshots.iter().filter(|s| self.account(&s.account).is_some()) {
            let moved = self.store.evaluate_monitors(snapshot, self.monitors.monitors(), within).await?;
            self.monitors.apply(moved);
        }
        let states = self.store.monitor_states(None, within).await?;
        self.monitors.load(states);
        Ok(())
    }

    /// While the states could not be read at start, tries again every [`RELOAD_EVERY`]
    /// (evaluating the stored figures first, as the start does).
    pub(super) async fn load_monitors_until_known(self: Arc<Self>) {
        while !self.monitors.known() {
            tokio::time::sleep(RELOAD_EVERY).await;
            let loaded = async {
                let snapshots = self.store.all_latest_balances(Within::Health).await?;
                self.evaluate_stored(&snapshots, Within::Health).await
            };
            match loaded.await {
                Ok(()) => tracing::info!("read the monitor states from the store"),
                Err(e) => tracing::debug!(error = %e, "still cannot read the monitor states"),
            }
        }
    }

    /// Takes an account's stored states again (after another replica's fetch of it).
    pub(super) async fn sync_monitors(&self, account: &AccountId) {
        if self.monitors.monitors().is_empty() {
            return;
        }
        if let Ok(states) = self.store.monitor_states(Some(account), Within::Health).await {
            self.monitors.load_account(account, states);
        }
    }

    /// Every stored state of the configured monitors, by monitor (config order), read from the
    /// store within the request deadline, each marked stale when its latest figure is older
    /// than its account's `ttl` (as of the service's clock).
    pub async fn monitor_states(&self) -> Result<Vec<Vec<EntryView>>, StoreError> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let states = self.store.monitor_states(None, Within::Until(deadline)).await?;
        let now = self.clock.now();
        let mut by_monitor: Vec<Vec<EntryView>> = vec![Vec::new(); self.monitors.monitors().len()];
        for entry in states {
            let Some(i) = self.monitors.monitor_of(&entry) else { continue };
            let stale = self.entry_stale(&entry, now);
            by_monitor[i].push(EntryView { entry, stale });
        }
        Ok(by_monitor)
    }

    /// Whether an entry's latest figure is older than its account's `ttl` (an account no
    /// longer configured: stale).
    fn entry_stale(&self, entry: &MonitorEntry, now: DateTime<Utc>) -> bool {
        self.account(&entry.account).is_none_or(|a| clock::age(now, entry.state.observed_at) > a.config.freshness.ttl)
    }
}
