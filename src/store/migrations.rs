//! Migrations embedded in the binary, one list per backend (`migrations/<backend>/`).

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

fn migrator(files: &[(i64, &'static str, &'static str)]) -> Migrator {
    let migrations = files
        .iter()
        .map(|(version, name, sql)| {
            Migration::new(*version, Cow::Borrowed(*name), MigrationType::Simple, sql.into_sql_str(), false)
        })
        .collect();
    Migrator::with_migrations(migrations)
}

pub fn sqlite() -> Migrator {
    migrator(&[(1, "init", include_str!("../../migrations/sqlite/0001_init.sql"))])
}

pub fn postgres() -> Migrator {
    migrator(&[
        (1, "init", include_str!("../../migrations/postgres/0001_init.sql")),
        (2, "replicas", include_str!("../../migrations/postgres/0002_replicas.sql")),
        (3, "shared_circuit", include_str!("../../migrations/postgres/0003_shared_circuit.sql")),
    ])
}

/// The newest version tally knows, for readiness checks.
pub fn latest_version(migrator: &Migrator) -> i64 {
    migrator.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Applies the store's migrations once the store answers: at start, and again whenever asked
/// (by a retry loop and by `/readyz`) until they succeed, so a store that was down when tally
/// started becomes ready without a restart. One attempt runs at a time.
pub struct MigrationGate {
    store: std::sync::Arc<dyn super::Store>,
    done: std::sync::atomic::AtomicBool,
    attempt: tokio::sync::Mutex<()>,
}

impl MigrationGate {
    /// Bound on one attempt, so a store that accepts connections and then stalls cannot hold
    /// readiness checks.
    const ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

    pub fn new(store: std::sync::Arc<dyn super::Store>) -> Self {
        Self { store, done: false.into(), attempt: tokio::sync::Mutex::new(()) }
    }

    pub fn is_done(&self) -> bool {
        self.done.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Migrates unless already done; a caller arriving during an attempt shares its wait.
    pub async fn ensure(&self) -> Result<(), super::StoreError> {
        if self.is_done() {
            return Ok(());
        }
        let _attempt = self.attempt.lock().await;
        if self.is_done() {
            return Ok(());
        }
        let outcome = tokio::time::timeout(Self::ATTEMPT_TIMEOUT, self.store.migrate())
            .await
            .unwrap_or_else(|_| Err(super::StoreError::Unavailable("the store did not answer in time".into())));
        if outcome.is_ok() {
            self.done.store(true, std::sync::atomic::Ordering::Release);
            tracing::info!("store migrations are applied");
        }
        outcome
    }
}
