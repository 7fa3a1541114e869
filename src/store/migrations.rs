//! Migrations embedded in the binary, one list per backend (`migrations/<backend>/`).

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use crate::sync::MutexExt;

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
/// started becomes ready without a restart.
///
/// One attempt runs at a time, in a task of its own, bounded by [`Self::ATTEMPT_TIMEOUT`]:
/// callers wait for it and may give up waiting (`/readyz` answers within 3 s, start-up goes on
/// after 3 s), but never cancel it. The stores migrate on a connection that is closed, not
/// returned to the pool, if an attempt is cut short: PostgreSQL then releases the migration's
/// advisory lock with the session.
pub struct MigrationGate {
    store: std::sync::Arc<dyn super::Store>,
    done: std::sync::atomic::AtomicBool,
    attempt: std::sync::Mutex<Option<Attempt>>,
}

type Attempt = futures_util::future::Shared<futures_util::future::BoxFuture<'static, Result<(), super::StoreError>>>;

impl MigrationGate {
    /// Bound on one attempt, so a store that accepts connections and then stalls cannot hold
    /// the attempt (and every caller joining it) for ever; long enough for a migration that
    /// rebuilds a large table.
    pub const ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

    pub fn new(store: std::sync::Arc<dyn super::Store>) -> Self {
        Self { store, done: false.into(), attempt: std::sync::Mutex::new(None) }
    }

    pub fn is_done(&self) -> bool {
        self.done.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Migrates unless already done; a caller arriving during an attempt shares it.
    pub async fn ensure(self: &std::sync::Arc<Self>) -> Result<(), super::StoreError> {
        let attempt = {
            let mut current = self.attempt.locked();
            // Checked under the lock: an attempt that just succeeded has cleared the slot.
            if self.is_done() {
                return Ok(());
            }
            current.get_or_insert_with(|| self.start()).clone()
        };
        attempt.await
    }

    /// Spawns an attempt; called with the slot locked, which the attempt's clean-up takes
    /// too, so it clears the slot only after its own attempt is in it.
    fn start(self: &std::sync::Arc<Self>) -> Attempt {
        use futures_util::FutureExt;
        let gate = std::sync::Arc::clone(self);
        let task = tokio::spawn(async move {
            // Clears the slot however the attempt ends (a panic or a cancelled task included),
            // so the next caller starts a new one.
            let _clear = ClearOnExit(std::sync::Arc::clone(&gate));
            let outcome = tokio::time::timeout(Self::ATTEMPT_TIMEOUT, gate.store.migrate())
                .await
                .unwrap_or_else(|_| Err(super::StoreError::Unavailable("the store did not answer in time".into())));
            if outcome.is_ok() {
                gate.done.store(true, std::sync::atomic::Ordering::Release);
                tracing::info!("store migrations are applied");
            }
            outcome
        });
        async move { task.await.unwrap_or_else(|e| Err(super::StoreError::Migration(format!("the attempt ended: {e}")))) }
            .boxed()
            .shared()
    }
}

struct ClearOnExit(std::sync::Arc<MigrationGate>);

impl Drop for ClearOnExit {
    fn drop(&mut self) {
        *self.0.attempt.locked() = None;
    }
}
