//! Migrations embedded in the binary, one list per backend (`migrations/<backend>/`).

use std::borrow::Cow;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use crate::coalesce::{self, Coalescer, Joined, Publisher};

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
    migrator(&[
        (1, "init", include_str!("../../migrations/sqlite/0001_init.sql")),
        (2, "store_probe", include_str!("../../migrations/sqlite/0002_store_probe.sql")),
        (3, "events", include_str!("../../migrations/sqlite/0003_events.sql")),
        (4, "monitors", include_str!("../../migrations/sqlite/0004_monitors.sql")),
        (5, "webhooks", include_str!("../../migrations/sqlite/0005_webhooks.sql")),
        (6, "payout_watch", include_str!("../../migrations/sqlite/0006_payout_watch.sql")),
    ])
}

pub fn postgres() -> Migrator {
    migrator(&[
        (1, "init", include_str!("../../migrations/postgres/0001_init.sql")),
        (2, "replicas", include_str!("../../migrations/postgres/0002_replicas.sql")),
        (3, "shared_circuit", include_str!("../../migrations/postgres/0003_shared_circuit.sql")),
        (4, "upstream_budgets", include_str!("../../migrations/postgres/0004_upstream_budgets.sql")),
        (5, "events", include_str!("../../migrations/postgres/0005_events.sql")),
        (6, "monitors", include_str!("../../migrations/postgres/0006_monitors.sql")),
        (7, "webhooks", include_str!("../../migrations/postgres/0007_webhooks.sql")),
        (8, "payout_watch", include_str!("../../migrations/postgres/0008_payout_watch.sql")),
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
/// callers join it through the coalescer the service's fetches use (one key: there is one
/// schema), and may give up waiting (`/readyz` answers within 3 s, start-up goes on after 3 s),
/// but never cancel it. The stores migrate on a connection that is closed, not returned to the
/// pool, if an attempt is cut short: PostgreSQL then releases the migration's advisory lock
/// with the session.
pub struct MigrationGate {
    store: Arc<dyn super::Store>,
    done: AtomicBool,
    attempts: Coalescer<(), Outcome>,
}

type Outcome = Result<(), super::StoreError>;

impl MigrationGate {
    /// Bound on one attempt, so a store that accepts connections and then stalls cannot hold
    /// the attempt (and every caller joining it) for ever; long enough for a migration that
    /// rebuilds a large table.
    pub const ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

    pub fn new(store: Arc<dyn super::Store>) -> Self {
        Self { store, done: false.into(), attempts: Coalescer::default() }
    }

    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Migrates unless already done; a caller arriving during an attempt shares it.
    pub async fn ensure(self: &Arc<Self>) -> Result<(), super::StoreError> {
        if self.is_done() {
            return Ok(());
        }
        let rx = match self.attempts.join_or_start(&()) {
            Joined::Waiting(rx) => rx,
            Joined::Started(publisher, rx) => {
                // An attempt that succeeded since the check above has published (after marking
                // the gate done) and left the slot: no second attempt for it.
                if self.is_done() {
                    self.attempts.finish(publisher, Ok(()));
                } else {
                    self.start(publisher);
                }
                rx
            }
        };
        coalesce::outcome(rx).await.unwrap_or_else(|| {
            Err(super::StoreError::Migration(
                "the attempt ended without an outcome (it panicked or was cancelled)".into(),
            ))
        })
    }

    /// Runs an attempt in its own task, which publishes its outcome to every caller that
    /// joined it. If the task ends without publishing (a panic, or the runtime going away),
    /// its waiters get an error and the next caller starts a new attempt.
    fn start(self: &Arc<Self>, publisher: Publisher<(), Outcome>) {
        let gate = Arc::clone(self);
        tokio::spawn(async move {
            let outcome = tokio::time::timeout(Self::ATTEMPT_TIMEOUT, gate.store.migrate())
                .await
                .unwrap_or_else(|_| Err(super::StoreError::Unavailable("the store did not answer in time".into())));
            if outcome.is_ok() {
                gate.done.store(true, Ordering::Release);
                tracing::info!("store migrations are applied");
            }
            gate.attempts.finish(publisher, outcome);
        });
    }
}
