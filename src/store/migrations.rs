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
/// started becomes ready without a restart.
///
/// One attempt runs at a time, in a task of its own: callers wait for it and may give up
/// waiting (`/readyz` answers within 3 s), but never cancel it. A migration cancelled halfway
/// would leave its connection holding PostgreSQL's migration advisory lock, stalling every
/// later attempt; the connection's own timeouts bound how long an attempt can take.
pub struct MigrationGate {
    store: std::sync::Arc<dyn super::Store>,
    done: std::sync::atomic::AtomicBool,
    attempt: std::sync::Mutex<Option<Attempt>>,
}

type Attempt = futures_util::future::Shared<futures_util::future::BoxFuture<'static, Result<(), super::StoreError>>>;

impl MigrationGate {
    pub fn new(store: std::sync::Arc<dyn super::Store>) -> Self {
        Self { store, done: false.into(), attempt: std::sync::Mutex::new(None) }
    }

    pub fn is_done(&self) -> bool {
        self.done.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Migrates unless already done; a caller arriving during an attempt shares it.
    pub async fn ensure(self: &std::sync::Arc<Self>) -> Result<(), super::StoreError> {
        use futures_util::FutureExt;
        if self.is_done() {
            return Ok(());
        }
        let attempt = {
            let mut current = self.attempt.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            current
                .get_or_insert_with(|| {
                    let gate = std::sync::Arc::clone(self);
                    // Spawned under the lock: the task's last step takes it too, so it clears
                    // the slot only after its own attempt is in it.
                    let task = tokio::spawn(async move {
                        let outcome = gate.store.migrate().await;
                        if outcome.is_ok() {
                            gate.done.store(true, std::sync::atomic::Ordering::Release);
                            tracing::info!("store migrations are applied");
                        }
                        *gate.attempt.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                        outcome
                    });
                    async move {
                        task.await
                            .unwrap_or_else(|e| Err(super::StoreError::Migration(format!("the attempt ended: {e}"))))
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        attempt.await
    }
}
