//! Persistence: the only module with SQL. One small interface ([`Store`]) with two
//! implementations chosen by the URL scheme:
//!
//! - [`sqlite`]: the embedded default;
//! - [`postgres`]: production, shared by replicas;
//! - [`cluster`]: the coordination of replicas sharing a store (leases, shared failures and
//!   circuit, fetch announcements): a [`Cluster`] only PostgreSQL has;
//! - [`decide`]: what a write keeps (change point or confirmation, payout transition or not,
//!   a final status regressing) and whether the schema is ready, decided once for both; the
//!   backends hold SQL only;
//! - `migrations`: the schema of each backend, applied once however many callers ask.
//!
//! Balance figures are kept as change points: a new row only when an
//! `(account, wallet, currency)` figure set changes, otherwise the row's `last_confirmed_at`
//! moves. The latest fetch of an account is the set of rows confirmed at its `fetched_at`.
//!
//! Events (`domain::event`) are written in the transaction of the change they report (a new
//! change point, a payout's new status), as its last step; their position in the feed is
//! commit order on both backends (see [`postgres::insert_events`]).
//!
//! The store is the webhooks' outbox: with each event, in its transaction, a delivery per
//! configured webhook the event is for (the routes given at [`open_with_webhooks`], decided by
//! `domain::webhook`). Dispatchers claim due deliveries ([`Store::claim_deliveries`]: at most
//! 4 live claims per webhook, across replicas on PostgreSQL) and record each attempt.

pub mod cluster;
pub mod decide;
mod migrations;

pub use cluster::{BUDGET_WINDOW, CallDenied, Cluster, FETCH_EVENTS, FailedFetch, SharedFailure};
pub use migrations::MigrationGate;
pub mod postgres;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use secrecy::ExposeSecret;

use crate::config::StoreSettings;
use crate::domain::event::{Event, NewEvent};
use crate::domain::monitor::{EntryState, Monitor, MonitorEntry, State};
use crate::domain::webhook::{DeliveryStatus, Route};
use crate::domain::{AccountId, BalanceEntry, Currency, Payout, PayoutStatus, Provider, RawJson};

/// A store failure. Messages come from the database driver and never hold the store URL.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store is unreachable: {0}")]
    Unavailable(String),
    #[error("the store's schema is not migrated: {0}")]
    NotMigrated(String),
    #[error("the store holds a value tally cannot read: {0}")]
    Corrupt(String),
    #[error("migration failed: {0}")]
    Migration(String),
    /// The store answered, and refused a value of the call (PostgreSQL's data exceptions,
    /// SQLSTATE class 22: a NUL in text, a number out of range): the caller's fault, which
    /// says nothing about the store's health.
    #[error("the store refused a value: {0}")]
    InvalidInput(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::ColumnNotFound(_) => {
                Self::Corrupt(e.to_string())
            }
            // Database errors say which statement failed, never the connection string.
            sqlx::Error::Database(db) if is_data_exception(db.as_ref()) => Self::InvalidInput(db.message().to_owned()),
            sqlx::Error::Database(db) => Self::Unavailable(db.message().to_owned()),
            // A value the driver could not send: the call's fault, not the store's.
            sqlx::Error::Encode(e) => Self::InvalidInput(e.to_string()),
            sqlx::Error::PoolTimedOut => Self::Unavailable("timed out waiting for a connection".into()),
            sqlx::Error::Io(io) => Self::Unavailable(io.to_string()),
            other => Self::Unavailable(other.to_string()),
        }
    }
}

/// A PostgreSQL data exception (SQLSTATE class 22: `22021` invalid byte sequence for a NUL in
/// text, `22003` numeric value out of range, …): the server answered and refused a value.
fn is_data_exception(db: &dyn sqlx::error::DatabaseError) -> bool {
    db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().is_some_and(|pg| pg.code().starts_with("22"))
}

/// The latest successful balance fetch of one account.
#[derive(Clone, Debug)]
pub struct AccountSnapshot {
    pub account: AccountId,
    pub provider: Provider,
    pub fetched_at: DateTime<Utc>,
    pub entries: Vec<BalanceEntry>,
    pub raw: Option<RawJson>,
}

impl AccountSnapshot {
    /// A snapshot with its entries in one canonical order (by wallet, then currency, byte-wise),
    /// whether it comes from a provider's answer or from the store: the same fetch then answers
    /// its lines in the same order however it was reached (a replica following another's fetch
    /// reads it back from the store; PostgreSQL's `ORDER BY` follows its collation).
    pub fn new(
        account: AccountId,
        provider: Provider,
        fetched_at: DateTime<Utc>,
        mut entries: Vec<BalanceEntry>,
        raw: Option<RawJson>,
    ) -> Self {
        entries.sort_by(|a, b| (a.wallet.as_str(), a.currency.as_str()).cmp(&(b.wallet.as_str(), b.currency.as_str())));
        Self { account, provider, fetched_at, entries, raw }
    }
}

/// Filters of `GET /balances/history`.
#[derive(Clone, Debug, Default)]
pub struct HistoryQuery {
    pub account: Option<AccountId>,
    pub wallet: Option<String>,
    pub currency: Option<Currency>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub limit: u32,
}

/// One change point: a figure set valid from `first_seen_at` and confirmed until
/// `last_confirmed_at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryPoint {
    pub account: AccountId,
    pub provider: Provider,
    pub entry: BalanceEntry,
    pub first_seen_at: DateTime<Utc>,
    pub last_confirmed_at: DateTime<Utc>,
}

/// A payout as last observed, with where it was observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPayout {
    pub account: AccountId,
    pub provider: Provider,
    pub payout: Payout,
    pub fetched_at: DateTime<Utc>,
}

/// One observed status of a payout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayoutTransition {
    pub observed_at: DateTime<Utc>,
    pub provider_status: String,
    pub status: PayoutStatus,
    /// Where the observation came from: `lookup` (a call to the provider made for a caller or a
    /// callback), `watch` (the payout watch's own lookup) or `callback` (a verified callback).
    pub source: String,
}

/// A watched payout (SPEC §9.1), keyed by the id it is looked up by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayoutWatch {
    pub account: AccountId,
    pub payout_id: String,
    pub first_watched_at: DateTime<Utc>,
    pub watch_until: DateTime<Utc>,
    pub next_check_at: DateTime<Utc>,
    /// Lookups made by the watch so far: the place in the schedule.
    pub checks: u32,
}

/// Filters of `GET /payouts`: newest first, at most `limit`.
#[derive(Clone, Debug, Default)]
pub struct PayoutListQuery {
    pub account: Option<AccountId>,
    pub status: Option<PayoutStatus>,
    pub is_final: Option<bool>,
    pub limit: u32,
}

/// What became of a callback (SPEC §9.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallbackOutcome {
    /// Verified, and a new status stored.
    Applied,
    /// Verified, and the stored status was already the same: nothing changed.
    Duplicate,
    /// Nothing in it was trusted: it only made tally look again.
    Trigger,
    /// Refused (unverified, malformed, or unsupported).
    Rejected,
}

impl CallbackOutcome {
    pub const ALL: [Self; 4] = [Self::Applied, Self::Duplicate, Self::Trigger, Self::Rejected];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Duplicate => "duplicate",
            Self::Trigger => "trigger",
            Self::Rejected => "rejected",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == text)
    }
}

/// One callback as received and judged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallbackReceipt {
    pub received_at: DateTime<Utc>,
    pub account: AccountId,
    pub provider: Provider,
    pub verified: bool,
    pub outcome: CallbackOutcome,
    pub payout_id: Option<String>,
    pub status: Option<PayoutStatus>,
    /// Why it was refused (never a secret or an expected signature).
    pub error: Option<String>,
}

/// Filters of `GET /events`: events after the feed position `after` (from the oldest kept
/// when `None`), of the given types and accounts (every one when empty), oldest first.
#[derive(Clone, Debug, Default)]
pub struct EventQuery {
    pub after: Option<i64>,
    pub types: Vec<String>,
    pub accounts: Vec<AccountId>,
    pub limit: u32,
}

/// A delivery claimed for one attempt: the event, the webhook, and the attempts made before
/// this one since it was (re)queued.
#[derive(Clone, Debug)]
pub struct ClaimedDelivery {
    pub event: Event,
    pub webhook: String,
    pub attempts: u32,
    /// The delivery's re-queue count when claimed: an attempt whose delivery was re-queued
    /// meanwhile (redeliver) is recorded without changing the delivery.
    pub generation: i64,
}

/// One attempt of a delivery, as recorded and shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRecord {
    pub at: DateTime<Utc>,
    /// The receiver's status, `None` when it did not answer.
    pub status_code: Option<u16>,
    /// Why there was no answer (never a URL).
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// What an attempt makes of its delivery (decided by `domain::webhook`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptResult {
    Succeeded,
    RetryAt(DateTime<Utc>),
    Failed,
    /// Failed, and the webhook is disabled until recovered (`410 Gone`).
    Gone,
}

/// One delivery of an event to a webhook, with its attempts (oldest first).
#[derive(Clone, Debug)]
pub struct Delivery {
    pub webhook: String,
    pub status: DeliveryStatus,
    pub attempts: Vec<AttemptRecord>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// The state of one configured webhook, from its deliveries.
#[derive(Clone, Debug, Default)]
pub struct WebhookStats {
    pub enabled: bool,
    pub pending: u64,
    pub oldest_pending: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_failure: Option<AttemptRecord>,
}

/// The most events one prune deletes: a prune is bounded, the next one takes the rest.
pub const PRUNE_BATCH: u32 = 1000;

/// The channel on which PostgreSQL announces committed events (any replica's); the payload is
/// empty.
pub const EVENTS_CHANNEL: &str = "tally_events";

/// After a commit that stored `events`: counted, and announced to this process's waiters.
fn announce(signal: &tokio::sync::watch::Sender<u64>, events: &[NewEvent]) {
    if events.is_empty() {
        return;
    }
    for e in events {
        metrics::counter!("tally_events_total", "type" => e.kind).increment(1);
    }
    signal.send_modify(|n| *n = n.wrapping_add(1));
}

fn parse_event(seq: i64, kind: String, timestamp: DateTime<Utc>, data: &str) -> Result<Event, StoreError> {
    Ok(Event {
        id: crate::domain::event::event_id(seq),
        kind,
        timestamp,
        data: serde_json::from_str(data).map_err(|e| StoreError::Corrupt(format!("event {seq}: {e}")))?,
    })
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Readiness: the store answers and every migration tally knows is applied.
    async fn check_ready(&self) -> Result<(), StoreError>;

    /// Whether the store takes a write: a small write made and removed in one transaction
    /// (on SQLite, a page of the file), asked by `/readyz` after a write failed, so that a store
    /// that refused writes (a full disk) is ready again once it takes them, with or without
    /// traffic.
    async fn check_writable(&self) -> Result<(), StoreError>;

    /// Records one successful fetch as change points, atomically, and evaluates `monitors`
    /// against every fetched figure in the same transaction (their new states, and the events
    /// of their crossings). Returns the monitored entries this write moved, with their states.
    async fn record_balances(
        &self,
        snapshot: &AccountSnapshot,
        monitors: &[Monitor],
    ) -> Result<Vec<MonitorEntry>, StoreError>;

    /// Evaluates `monitors` against a stored snapshot (at start: a monitor added while tally
    /// was down), writing their new states and events atomically, and nothing else; returns
    /// the entries it moved. Evaluating a figure already evaluated changes nothing.
    async fn evaluate_monitors(
        &self,
        snapshot: &AccountSnapshot,
        monitors: &[Monitor],
    ) -> Result<Vec<MonitorEntry>, StoreError>;

    /// The stored monitor states, of one account or of all.
    async fn monitor_states(&self, account: Option<&AccountId>) -> Result<Vec<MonitorEntry>, StoreError>;

    /// The latest snapshot of one account, if any was ever stored.
    async fn latest_balances(&self, account: &AccountId) -> Result<Option<AccountSnapshot>, StoreError>;

    /// The latest snapshot of every account, to warm the in-memory view at start.
    async fn all_latest_balances(&self) -> Result<Vec<AccountSnapshot>, StoreError>;

    /// Stored change points, oldest first.
    async fn balance_history(&self, query: &HistoryQuery) -> Result<Vec<HistoryPoint>, StoreError>;

    /// The change point in force at `as_of` (the latest first seen at or before it) of every
    /// `(account, wallet, currency)` of `accounts`, in one indexed query (SPEC §10.1), ordered
    /// by account, wallet and currency.
    async fn balances_as_of(
        &self,
        accounts: &[AccountId],
        as_of: DateTime<Utc>,
    ) -> Result<Vec<HistoryPoint>, StoreError>;

    /// The change points of `accounts` first seen after `after` and at or before `until`,
    /// ordered by account, wallet, currency and time; at most `limit` (`/balances/daily`).
    async fn balance_points_between(
        &self,
        accounts: &[AccountId],
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<HistoryPoint>, StoreError>;

    /// Upserts the payout's current state and appends a transition when its status changed
    /// (or on first sight).
    async fn save_payout(&self, payout: &StoredPayout, source: &str) -> Result<(), StoreError>;

    /// A stored payout of one account, by the provider's id or the merchant's reference.
    async fn find_payout(&self, account: &AccountId, id: &str) -> Result<Option<StoredPayout>, StoreError>;

    /// Every observed transition of one payout, oldest first.
    async fn payout_transitions(
        &self,
        account: &AccountId,
        payout_id: &str,
    ) -> Result<Vec<PayoutTransition>, StoreError>;

    /// Stores one event in a write of its own (facts that are no stored figure: a circuit
    /// opening or recovering), and returns it with its id.
    async fn append_event(&self, event: &NewEvent) -> Result<Event, StoreError>;

    /// The feed: events after the query's position, oldest first, only ever showing an event
    /// once every event before it in the feed is visible too.
    async fn events(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError>;

    /// One event by its feed position.
    async fn event(&self, seq: i64) -> Result<Option<Event>, StoreError>;

    /// Deletes at most `limit` events observed before `before`, oldest first; returns how many.
    async fn prune_events(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError>;

    /// Moves on each time events are committed (on PostgreSQL, by any replica sharing the
    /// store): what a long-poll of the feed waits on.
    fn event_signal(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Claims, for `holder` until `until`, the deliveries due at `now` of the enabled webhooks,
    /// keeping each webhook's live claims (of any replica) at most `per_webhook`. A claim
    /// whose `claimed_until` has passed (its holder died) is taken over.
    async fn claim_deliveries(
        &self,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        per_webhook: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError>;

    /// Records an attempt of `holder`'s claim and what it makes of the delivery, releasing
    /// the claim. A delivery re-queued meanwhile (redeliver) keeps its new state; the attempt
    /// is recorded all the same.
    async fn finish_attempt(
        &self,
        claim: &ClaimedDelivery,
        holder: &str,
        attempt: &AttemptRecord,
        result: AttemptResult,
    ) -> Result<(), StoreError>;

    /// Releases `holder`'s claims (at shutdown): their deliveries are due again at once.
    async fn release_claims(&self, holder: &str) -> Result<(), StoreError>;

    /// When a pending delivery of an enabled webhook is next due (its next attempt, or the
    /// expiry of its claim); `None` when none is pending.
    async fn next_delivery_at(&self) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// The deliveries of the event at `seq`, in webhook order, with their attempts.
    async fn deliveries(&self, seq: i64) -> Result<Vec<Delivery>, StoreError>;

    /// Queues the event at `seq` again, due at `now`: for `webhook` only (its delivery made
    /// if the event had none for it), or every delivery it has. Returns how many.
    async fn requeue_event(&self, seq: i64, webhook: Option<&str>, now: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Enables `webhook` again and queues its failed deliveries created since `since`, due at
    /// `now`. Returns how many.
    async fn recover_webhook(&self, webhook: &str, since: DateTime<Utc>, now: DateTime<Utc>)
    -> Result<u64, StoreError>;

    /// The state of each configured webhook, in configuration order.
    async fn webhook_stats(&self) -> Result<Vec<(String, WebhookStats)>, StoreError>;

    /// Watches a payout from `now` until `watch_until`, first due at `next_check_at`; a payout
    /// already watched keeps its watch. Returns the watch as stored.
    async fn watch_payout(
        &self,
        account: &AccountId,
        payout_id: &str,
        now: DateTime<Utc>,
        watch_until: DateTime<Utc>,
        next_check_at: DateTime<Utc>,
    ) -> Result<PayoutWatch, StoreError>;

    /// Ends a payout's watch (final, or past `watch_until`), if it has one.
    async fn unwatch_payout(&self, account: &AccountId, payout_id: &str) -> Result<(), StoreError>;

    /// The watch of a payout, if it is watched.
    async fn payout_watch(&self, account: &AccountId, payout_id: &str) -> Result<Option<PayoutWatch>, StoreError>;

    /// Claims, for `holder` until `until`, at most `limit` watches due at `now` (earliest
    /// first): across replicas on PostgreSQL, a due watch is claimed by one of them. A claim
    /// whose `claimed_until` has passed is taken over.
    async fn claim_watches(
        &self,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<PayoutWatch>, StoreError>;

    /// Releases `holder`'s claim of a watch after its lookup, counting the lookup and setting
    /// when it is next due.
    async fn finish_watch(
        &self,
        watch: &PayoutWatch,
        holder: &str,
        next_check_at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// When a watch is next due (its next check, or the expiry of its claim); `None` when
    /// nothing is watched.
    async fn next_watch_at(&self) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Stored payouts, newest first (the provider's creation time, else when tally last saw
    /// them), each with its watch.
    async fn list_payouts(
        &self,
        query: &PayoutListQuery,
    ) -> Result<Vec<(StoredPayout, Option<PayoutWatch>)>, StoreError>;

    /// Stores a callback's receipt.
    async fn record_callback(&self, receipt: &CallbackReceipt) -> Result<(), StoreError>;

    /// Callback receipts, newest first.
    async fn callbacks(&self, account: Option<&AccountId>, limit: u32) -> Result<Vec<CallbackReceipt>, StoreError>;

    /// Deletes at most `limit` receipts received before `before`, oldest first; returns how many.
    async fn prune_callbacks(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError>;

    /// Closes the pool, waiting for connections in use to be returned.
    async fn close(&self);

    /// The coordination of replicas sharing this store (PostgreSQL); `None` when this process
    /// is alone with its store (SQLite).
    fn cluster(&self) -> Option<Arc<dyn Cluster>>;
}

/// Opens the store named by `store.url` (without migrating). Connections are made lazily, so
/// tally starts, and serves live figures, while the database is down.
pub fn open(settings: &StoreSettings) -> Result<Arc<dyn Store>, StoreError> {
    open_with_webhooks(settings, Vec::new())
}

/// Opens the store as [`open`] does, writing a delivery for each of `webhooks` that an event
/// is for, in the event's transaction.
pub fn open_with_webhooks(settings: &StoreSettings, webhooks: Vec<Route>) -> Result<Arc<dyn Store>, StoreError> {
    let url = settings.url.expose_secret();
    let webhooks: Arc<[Route]> = webhooks.into();
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(url, settings.max_connections)?.with_webhooks(webhooks)))
    } else {
        Ok(Arc::new(postgres::PostgresStore::open(url, settings.max_connections)?.with_webhooks(webhooks)))
    }
}

fn parse_delivery_status(text: &str) -> Result<DeliveryStatus, StoreError> {
    DeliveryStatus::parse(text).ok_or_else(|| StoreError::Corrupt(format!("unknown delivery status `{text}`")))
}

/// A stored HTTP status, which tally wrote from a `u16`.
fn status_code(code: Option<i64>) -> Result<Option<u16>, StoreError> {
    code.map(|c| u16::try_from(c).map_err(|_| StoreError::Corrupt(format!("status code {c}")))).transpose()
}

/// The state an attempt's result leaves its delivery in: the status, and when it is next due.
fn after_attempt(result: AttemptResult) -> (DeliveryStatus, Option<DateTime<Utc>>) {
    match result {
        AttemptResult::Succeeded => (DeliveryStatus::Succeeded, None),
        AttemptResult::RetryAt(at) => (DeliveryStatus::Pending, Some(at)),
        AttemptResult::Failed | AttemptResult::Gone => (DeliveryStatus::Failed, None),
    }
}

fn parse_provider(text: &str) -> Result<Provider, StoreError> {
    text.parse().map_err(|e: crate::domain::UnknownProvider| StoreError::Corrupt(e.to_string()))
}

fn parse_account(text: &str) -> Result<AccountId, StoreError> {
    text.parse().map_err(|e: crate::domain::InvalidAccountId| StoreError::Corrupt(e.to_string()))
}

fn parse_currency(text: &str) -> Result<Currency, StoreError> {
    text.parse().map_err(|e: crate::domain::InvalidCurrency| StoreError::Corrupt(e.to_string()))
}

fn parse_monitor_state(text: &str) -> Result<State, StoreError> {
    State::parse(text).ok_or_else(|| StoreError::Corrupt(format!("unknown monitor state `{text}`")))
}

fn parse_outcome(text: &str) -> Result<CallbackOutcome, StoreError> {
    CallbackOutcome::parse(text).ok_or_else(|| StoreError::Corrupt(format!("unknown callback outcome `{text}`")))
}

fn parse_status(text: &str) -> Result<PayoutStatus, StoreError> {
    PayoutStatus::parse(text).ok_or_else(|| StoreError::Corrupt(format!("unknown payout status `{text}`")))
}

/// The stored payload, read back exactly as it was written (numbers as the provider sent them).
fn parse_raw(text: Option<String>) -> Option<RawJson> {
    text.and_then(|t| RawJson::parse(&t).ok())
}

fn decimal_text(d: &Option<Decimal>) -> Option<String> {
    d.map(|d| d.to_string())
}

fn parse_decimal_text(text: Option<String>) -> Result<Option<Decimal>, StoreError> {
    text.map(|t| crate::domain::parse_decimal(&t).map_err(|e| StoreError::Corrupt(format!("amount `{t}`: {e}"))))
        .transpose()
}
