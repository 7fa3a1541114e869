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
