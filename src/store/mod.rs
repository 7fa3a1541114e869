//! Persistence: the only module with SQL. One small interface ([`Store`]) with two
//! implementations chosen by the URL scheme:
//!
//! - [`sqlite`]: the embedded default;
//! - [`postgres`]: production, shared by replicas;
//! - [`decide`]: what a write keeps (change point or confirmation, payout transition or not,
//!   a final status regressing), decided once for both; the backends hold SQL only;
//! - `migrations`: the schema of each backend, applied once however many callers ask.
//!
//! Balance figures are kept as change points: a new row only when an
//! `(account, wallet, currency)` figure set changes, otherwise the row's `last_confirmed_at`
//! moves. The latest fetch of an account is the set of rows confirmed at its `fetched_at`.

pub mod decide;
mod migrations;

pub use migrations::MigrationGate;
pub mod postgres;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use secrecy::ExposeSecret;

use crate::config::StoreSettings;
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
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::ColumnNotFound(_) => {
                Self::Corrupt(e.to_string())
            }
            // Database errors say which statement failed, never the connection string.
            sqlx::Error::Database(db) => Self::Unavailable(db.message().to_owned()),
            sqlx::Error::PoolTimedOut => Self::Unavailable("timed out waiting for a connection".into()),
            sqlx::Error::Io(io) => Self::Unavailable(io.to_string()),
            other => Self::Unavailable(other.to_string()),
        }
    }
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
    /// Where the observation came from: `lookup` (a call to the provider).
    pub source: String,
}

/// A failed fetch, to record for other replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedFetch {
    pub code: String,
    pub message: String,
    pub upstream_status: Option<u16>,
    pub failed_at: DateTime<Utc>,
}

/// An account's last failed fetch as recorded, with the account's circuit as the cluster sees
/// it: the run of consecutive failures (0 after a success) and when the circuit opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedFailure {
    pub failure: FailedFetch,
    pub consecutive_failures: u32,
    /// When the circuit (re)opened; `None` while it is closed.
    pub opened_at: Option<DateTime<Utc>>,
}

/// The channel on which the store announces that an account's fetch finished (succeeded or
/// failed) somewhere in the cluster; the payload is the account id.
pub const FETCH_EVENTS: &str = "tally_fetches";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[async_trait]
pub trait Store: Send + Sync {
    fn backend(&self) -> Backend;

    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Readiness: the store answers and every migration tally knows is applied.
    async fn check_ready(&self) -> Result<(), StoreError>;

    /// Records one successful fetch as change points, atomically.
    async fn record_balances(&self, snapshot: &AccountSnapshot) -> Result<(), StoreError>;

    /// The latest snapshot of one account, if any was ever stored.
    async fn latest_balances(&self, account: &AccountId) -> Result<Option<AccountSnapshot>, StoreError>;

    /// The latest snapshot of every account, to warm the in-memory view at start.
    async fn all_latest_balances(&self) -> Result<Vec<AccountSnapshot>, StoreError>;

    /// Stored change points, oldest first.
    async fn balance_history(&self, query: &HistoryQuery) -> Result<Vec<HistoryPoint>, StoreError>;

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

    /// Closes the pool, waiting for connections in use to be returned.
    async fn close(&self);

    // Coordination of replicas sharing the store. A single-process store (SQLite) needs none:
    // it grants every lease and announces nothing.

    /// Takes the cluster-wide lease on fetching `account` for `holder` (one fetch), unless a
    /// lease on it has not expired, whoever holds it.
    async fn try_lease(
        &self,
        _account: &AccountId,
        _holder: &str,
        _ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Extends `holder`'s lease by `ttl` from now; false if it is no longer the holder.
    async fn renew_lease(
        &self,
        _account: &AccountId,
        _holder: &str,
        _ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Ends `holder`'s lease; a lease held by another holder is left alone.
    async fn release_lease(&self, _account: &AccountId, _holder: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Records a failed fetch and announces it, counting it in the account's run of failures:
    /// the circuit opens when the run reaches `threshold`, and re-opens at once on a failed
    /// probe. Returns the circuit as recorded, or `None` if the store does not share it.
    async fn record_failure(
        &self,
        _account: &AccountId,
        _failure: &FailedFetch,
        _threshold: u32,
    ) -> Result<Option<SharedFailure>, StoreError> {
        Ok(None)
    }

    /// The last recorded failure and the shared circuit (a success resets its run, not the
    /// failure's details).
    async fn last_failure(&self, _account: &AccountId) -> Result<Option<SharedFailure>, StoreError> {
        Ok(None)
    }

    /// Announcements of finished fetches across the cluster (account ids), if the store
    /// coordinates replicas.
    fn fetch_events(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        None
    }
}

/// Opens the store named by `store.url` (without migrating). Connections are made lazily, so
/// tally starts, and serves live figures, while the database is down.
pub fn open(settings: &StoreSettings) -> Result<Arc<dyn Store>, StoreError> {
    let url = settings.url.expose_secret();
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(url, settings.max_connections)?))
    } else {
        Ok(Arc::new(postgres::PostgresStore::open(url, settings.max_connections)?))
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
