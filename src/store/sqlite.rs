//! The embedded SQLite store: one file, WAL journal, amounts as decimal TEXT, times as unix
//! microseconds.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use super::*;

pub struct SqliteStore {
    pool: SqlitePool,
    file: Arc<FileWatch>,
    /// Moves on at each commit that stored events: one process writes this file.
    events: tokio::sync::watch::Sender<u64>,
    /// The configured webhooks, whose deliveries are written with the events they are for.
    webhooks: Arc<[Route]>,
}

/// The file the store opened, watched: deleted or replaced while tally runs, it is no longer
/// where the store's connections write (they hold the old file open), and a new connection
/// would open another file at the same path.
struct FileWatch {
    path: std::path::PathBuf,
    /// The identity (device, inode) of the file at the first connection; `None` when there is
    /// no file to watch (an in-memory database, or a platform without inodes). Sound while a
    /// connection holds the file open, which is when two files could be written at once: an
    /// inode number is given again only once nothing holds its file open.
    opened: std::sync::OnceLock<Option<(u64, u64)>>,
}

impl FileWatch {
    #[cfg(unix)]
    fn identity(&self) -> std::io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.path).map(|m| (m.dev(), m.ino()))
    }

    #[cfg(not(unix))]
    fn identity(&self) -> std::io::Result<(u64, u64)> {
        Err(std::io::ErrorKind::Unsupported.into())
    }

    /// Whether the file at the path is still the one the store opened.
    fn check(&self) -> Result<(), StoreError> {
        let Some(Some(opened)) = self.opened.get() else { return Ok(()) };
        match self.identity() {
            Ok(now) if now == *opened => Ok(()),
            Ok(_) => Err(StoreError::Unavailable(
                "the SQLite file tally opened was replaced by another file while tally ran; restart tally to use it"
                    .into(),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::Unavailable(
                "the SQLite file tally opened was deleted while tally ran; restart tally (after restoring it, or to start an empty one)"
                    .into(),
            )),
            Err(e) => Err(StoreError::Unavailable(format!("cannot see the SQLite file tally opened: {e}"))),
        }
    }

    /// At every new connection: the first one records the file; a later one that opened
    /// another file (the first was deleted, and SQLite created a new one, or it was replaced)
    /// is refused, so the store never writes to two files at once. The pool retries a refused
    /// connection until its acquire timeout (logging why each time), then the call fails.
    fn admit(&self) -> Result<(), sqlx::Error> {
        let now = self.identity().ok();
        match self.opened.get_or_init(|| now) {
            Some(opened) if now != Some(*opened) => Err(sqlx::Error::Io(std::io::Error::other(
                "the SQLite file tally opened was deleted or replaced while tally ran",
            ))),
            _ => Ok(()),
        }
    }
}

impl SqliteStore {
    pub fn open(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options =
            SqliteConnectOptions::from_str(url).map_err(|e| StoreError::Unavailable(format!("bad SQLite URL: {e}")))?;
        Ok(Self::with_options(options, max_connections))
    }

    /// Opens the file `options` name, with tally's journal, durability and busy timeout applied
    /// over them: for what a URL cannot carry, such as a page budget (`max_page_count`, how the
    /// tests fill a disk without filling one).
    pub fn with_options(options: SqliteConnectOptions, max_connections: u32) -> Self {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL is durable across application crashes, and fast.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let file = Arc::new(FileWatch { path: options.get_filename().to_owned(), opened: Default::default() });
        let watch = Arc::clone(&file);
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(3))
            .after_connect(move |_, _| {
                let admitted = watch.admit();
                Box::pin(async move { admitted })
            })
            .after_release(|conn, _| Box::pin(released_outside_a_transaction(conn)))
            .connect_lazy_with(options);
        Self { pool, file, events: tokio::sync::watch::Sender::new(0), webhooks: Arc::new([]) }
    }

    /// The store writing a delivery for each of `webhooks` that an event is for.
    pub fn with_webhooks(mut self, webhooks: Arc<[Route]>) -> Self {
        self.webhooks = webhooks;
        self
    }
}

/// Whether a connection coming back to the pool may be reused: only outside any transaction.
///
/// A write that fails with SQLITE_FULL (or an I/O error) can make SQLite roll the whole
/// transaction back by itself. The ROLLBACK sqlx queues when the dropped transaction is
/// released then fails ("no transaction is active"), and sqlx keeps counting the connection as
/// inside a transaction: reused, it refused every later `BEGIN IMMEDIATE` ("attempted to call
/// begin_with at non-zero transaction depth"), so writes kept failing after the disk had room
/// again, until a restart. The ping runs after that queued rollback; a connection still counted
/// inside a transaction is closed, and the pool opens a fresh one when needed.
async fn released_outside_a_transaction(conn: &mut sqlx::SqliteConnection) -> Result<bool, sqlx::Error> {
    use sqlx::Connection;
    conn.ping().await?;
    Ok(!conn.is_in_transaction())
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn time(us: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(us).ok_or_else(|| StoreError::Corrupt(format!("time {us} out of range")))
}

fn entry(row: &SqliteRow) -> Result<BalanceEntry, StoreError> {
    Ok(BalanceEntry {
        wallet: row.try_get("wallet")?,
        currency: parse_currency(row.try_get("currency")?)?,
        available: parse_decimal_text(row.try_get("available")?)?,
        pending: parse_decimal_text(row.try_get("pending")?)?,
        reserved: parse_decimal_text(row.try_get("reserved")?)?,
        total: parse_decimal_text(row.try_get("total")?)?,
        blocked: row.try_get::<i64, _>("blocked")? != 0,
    })
}

fn stored_payout(row: &SqliteRow) -> Result<StoredPayout, StoreError> {
    let failure_message: Option<String> = row.try_get("failure_message")?;
    let opt_time = |col: &str| -> Result<Option<DateTime<Utc>>, StoreError> {
        row.try_get::<Option<i64>, _>(col)?.map(time).transpose()
    };
    Ok(StoredPayout {
        account: parse_account(row.try_get("account")?)?,
        provider: parse_provider(row.try_get("provider")?)?,
        fetched_at: time(row.try_get("fetched_at")?)?,
        payout: Payout {
            id: row.try_get("payout_id")?,
            reference: row.try_get("reference")?,
            status: parse_status(row.try_get("status")?)?,
            provider_status: row.try_get("provider_status")?,
            is_final: row.try_get::<i64, _>("is_final")? != 0,
            amount: parse_decimal_text(row.try_get("amount")?)?,
            currency: row.try_get::<Option<String>, _>("currency")?.as_deref().map(parse_currency).transpose()?,
            fee: parse_decimal_text(row.try_get("fee")?)?,
            failure: failure_message
                .map(|message| {
                    Ok::<_, StoreError>(crate::domain::PayoutFailure { code: row.try_get("failure_code")?, message })
                })
                .transpose()?,
            created_at: opt_time("created_at")?,
            updated_at: opt_time("updated_at")?,
        },
    })
}

/// Writes `events` in the transaction `tx`, in order, each with a delivery per webhook of
/// `webhooks` it is for (due at once).
async fn insert_events(
    tx: &mut Transaction<'_, Sqlite>,
    events: &[NewEvent],
    webhooks: &[Route],
) -> Result<Vec<i64>, StoreError> {
    let mut seqs = Vec::with_capacity(events.len());
    for e in events {
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO events (type, account, timestamp, data) VALUES (?1, ?2, ?3, ?4) RETURNING seq",
        )
        .bind(e.kind)
        .bind(e.account.as_str())
        .bind(micros(e.timestamp))
        .bind(e.data.to_string())
        .fetch_one(&mut **tx)
        .await?;
        for webhook in crate::domain::webhook::recipients(webhooks, e) {
            sqlx::query(
                "INSERT INTO webhook_deliveries (event_seq, webhook, status, next_attempt_at, created_at)
                 VALUES (?1, ?2, 'pending', ?3, ?3)",
            )
            .bind(seq)
            .bind(webhook)
            .bind(micros(e.timestamp))
            .execute(&mut **tx)
            .await?;
        }
        seqs.push(seq);
    }
    Ok(seqs)
}

fn watch_row(row: &SqliteRow) -> Result<PayoutWatch, StoreError> {
    Ok(PayoutWatch {
        account: parse_account(row.try_get("account")?)?,
        payout_id: row.try_get("payout_id")?,
        first_watched_at: time(row.try_get("first_watched_at")?)?,
        watch_until: time(row.try_get("watch_until")?)?,
        next_check_at: time(row.try_get("next_check_at")?)?,
        checks: u32::try_from(row.try_get::<i64, _>("checks")?).unwrap_or(u32::MAX),
    })
}

fn receipt_row(row: &SqliteRow) -> Result<CallbackReceipt, StoreError> {
    Ok(CallbackReceipt {
        received_at: time(row.try_get("received_at")?)?,
        account: parse_account(row.try_get("account")?)?,
        provider: parse_provider(row.try_get("provider")?)?,
        verified: row.try_get::<i64, _>("verified")? != 0,
        outcome: parse_outcome(row.try_get("outcome")?)?,
        payout_id: row.try_get("payout_id")?,
        status: row.try_get::<Option<String>, _>("status")?.as_deref().map(parse_status).transpose()?,
        error: row.try_get("error")?,
    })
}

fn attempt_row(row: &SqliteRow) -> Result<AttemptRecord, StoreError> {
    Ok(AttemptRecord {
        at: time(row.try_get("at")?)?,
        status_code: status_code(row.try_get("status_code")?)?,
        error: row.try_get("error")?,
        duration_ms: u64::try_from(row.try_get::<i64, _>("duration_ms")?).unwrap_or(0),
    })
}

/// One change point as the history, `as_of` and daily reads select it.
fn history_point(row: &SqliteRow) -> Result<HistoryPoint, StoreError> {
    Ok(HistoryPoint {
        account: parse_account(row.try_get("account")?)?,
        provider: parse_provider(row.try_get("provider")?)?,
        entry: entry(row)?,
        first_seen_at: time(row.try_get("first_seen_at")?)?,
        last_confirmed_at: time(row.try_get("last_confirmed_at")?)?,
    })
}

fn event_row(row: &SqliteRow) -> Result<Event, StoreError> {
    let data: String = row.try_get("data")?;
    parse_event(row.try_get("seq")?, row.try_get("type")?, time(row.try_get("timestamp")?)?, &data)
}

/// Writes one fetched figure set: a confirmation, or a new change point with its event.
async fn upsert_point(
    tx: &mut Transaction<'_, Sqlite>,
    snapshot: &AccountSnapshot,
    e: &BalanceEntry,
) -> Result<Option<NewEvent>, StoreError> {
    let at = micros(snapshot.fetched_at);
    let last = sqlx::query(
        "SELECT id, wallet, currency, available, pending, reserved, total, blocked FROM balance_points
         WHERE account = ?1 AND wallet = ?2 AND currency = ?3 ORDER BY first_seen_at DESC, id DESC LIMIT 1",
    )
    .bind(snapshot.account.as_str())
    .bind(&e.wallet)
    .bind(e.currency.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    let last = last.map(|row| Ok::<_, StoreError>((row.try_get::<i64, _>("id")?, entry(&row)?))).transpose()?;
    let point = decide::point(last, e);
    if let decide::Point::Confirms(id) = point {
        sqlx::query("UPDATE balance_points SET last_confirmed_at = ?1 WHERE id = ?2 AND last_confirmed_at < ?1")
            .bind(at)
            .bind(id)
            .execute(&mut **tx)
            .await?;
        return Ok(None);
    }
    sqlx::query(
        "INSERT INTO balance_points (account, provider, wallet, currency, available, pending, reserved, total,
                                     blocked, first_seen_at, last_confirmed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)",
    )
    .bind(snapshot.account.as_str())
    .bind(snapshot.provider.as_str())
    .bind(&e.wallet)
    .bind(e.currency.as_str())
    .bind(decimal_text(&e.available))
    .bind(decimal_text(&e.pending))
    .bind(decimal_text(&e.reserved))
    .bind(decimal_text(&e.total))
    .bind(e.blocked as i64)
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(point.event(snapshot, e))
}

/// Evaluates `monitors` against every figure of `snapshot` in `tx` (writes are serialized,
/// so the read state is the one this write moves): writes each moved state, returns the
/// events and the entries.
async fn apply_monitors(
    tx: &mut Transaction<'_, Sqlite>,
    snapshot: &AccountSnapshot,
    monitors: &[Monitor],
) -> Result<(Vec<NewEvent>, Vec<MonitorEntry>), StoreError> {
    let (mut events, mut entries) = (Vec::new(), Vec::new());
    for (monitor, e) in decide::monitored(snapshot, monitors) {
        let row = sqlx::query(
            "SELECT state, value, since, observed_at FROM monitor_states
             WHERE monitor = ?1 AND account = ?2 AND wallet = ?3 AND currency = ?4",
        )
        .bind(&monitor.id)
        .bind(snapshot.account.as_str())
        .bind(&e.wallet)
        .bind(e.currency.as_str())
        .fetch_optional(&mut **tx)
        .await?;
        let stored = row.as_ref().map(entry_state).transpose()?;
        let Some((entry, event)) = decide::monitor_entry(monitor, stored.as_ref(), snapshot, e) else { continue };
        sqlx::query(
            "INSERT INTO monitor_states (monitor, account, wallet, currency, provider, state, value, since, observed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (monitor, account, wallet, currency) DO UPDATE SET
                provider = ?5, state = ?6, value = ?7, since = ?8, observed_at = ?9",
        )
        .bind(&entry.monitor)
        .bind(entry.account.as_str())
        .bind(&entry.wallet)
        .bind(entry.currency.as_str())
        .bind(entry.provider.as_str())
        .bind(entry.state.state.as_str())
        .bind(decimal_text(&entry.state.value))
        .bind(micros(entry.state.since))
        .bind(micros(entry.state.observed_at))
        .execute(&mut **tx)
        .await?;
        events.extend(event);
        entries.push(entry);
    }
    Ok((events, entries))
}

fn entry_state(row: &SqliteRow) -> Result<EntryState, StoreError> {
    Ok(EntryState {
        state: parse_monitor_state(row.try_get("state")?)?,
        value: parse_decimal_text(row.try_get("value")?)?,
        since: time(row.try_get("since")?)?,
        observed_at: time(row.try_get("observed_at")?)?,
    })
}

fn monitor_entry(row: &SqliteRow) -> Result<MonitorEntry, StoreError> {
    Ok(MonitorEntry {
        monitor: row.try_get("monitor")?,
        account: parse_account(row.try_get("account")?)?,
        provider: parse_provider(row.try_get("provider")?)?,
        wallet: row.try_get("wallet")?,
        currency: parse_currency(row.try_get("currency")?)?,
        state: entry_state(row)?,
    })
}

impl SqliteStore {
    /// A write transaction. `BEGIN IMMEDIATE` takes the write lock up front (waiting up to the
    /// busy timeout); a deferred transaction that reads first cannot be upgraded while another
    /// writer holds the lock, and SQLite fails that at once with "database is locked".
    async fn write(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    async fn snapshot_from(&self, row: SqliteRow) -> Result<AccountSnapshot, StoreError> {
        let account = parse_account(row.try_get("account")?)?;
        let fetched_at: i64 = row.try_get("fetched_at")?;
        let rows = sqlx::query(
            "SELECT wallet, currency, available, pending, reserved, total, blocked FROM balance_points
             WHERE account = ?1 AND last_confirmed_at = ?2 ORDER BY wallet, currency",
        )
        .bind(account.as_str())
        .bind(fetched_at)
        .fetch_all(&self.pool)
        .await?;
        Ok(AccountSnapshot::new(
            account,
            parse_provider(row.try_get("provider")?)?,
            time(fetched_at)?,
            rows.iter().map(entry).collect::<Result<_, _>>()?,
            parse_raw(row.try_get("raw")?),
        ))
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        // Closed after use, as on PostgreSQL: a migration cut short leaves nothing half-done
        // on a pooled connection. Migrations run once per start.
        let mut conn = self.pool.acquire().await?;
        conn.close_on_drop();
        migrations::sqlite().run_direct(None, &mut *conn, false).await.map_err(|e| StoreError::Migration(e.to_string()))
    }

    async fn check_ready(&self) -> Result<(), StoreError> {
        // First: connections still read a deleted file, and a new one would be refused only
        // after the pool's retries.
        self.file.check()?;
        let applied: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| StoreError::NotMigrated(e.to_string()))?;
        decide::schema_ready(applied, migrations::latest_version(&migrations::sqlite()))
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        // A page's worth: it needs a page the file may not have room for, and its commit
        // writes to the journal. Removed in the same transaction, so the table stays empty and
        // the page is left free for the next probe or write.
        let mut tx = self.write().await?;
        sqlx::query("INSERT INTO store_probe (filler) VALUES (zeroblob(4096))").execute(&mut *tx).await?;
        sqlx::query("DELETE FROM store_probe").execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_balances(
        &self,
        snapshot: &AccountSnapshot,
        monitors: &[Monitor],
    ) -> Result<Vec<MonitorEntry>, StoreError> {
        let mut tx = self.write().await?;
        let mut events = Vec::new();
        for e in &snapshot.entries {
            events.extend(upsert_point(&mut tx, snapshot, e).await?);
        }
        sqlx::query(
            "INSERT INTO account_snapshots (account, provider, fetched_at, raw) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (account) DO UPDATE SET provider = ?2, fetched_at = ?3, raw = ?4
             WHERE account_snapshots.fetched_at <= ?3",
        )
        .bind(snapshot.account.as_str())
        .bind(snapshot.provider.as_str())
        .bind(micros(snapshot.fetched_at))
        .bind(snapshot.raw.as_ref().map(|r| r.to_string()))
        .execute(&mut *tx)
        .await?;
        let (monitor_events, moved) = apply_monitors(&mut tx, snapshot, monitors).await?;
        events.extend(monitor_events);
        insert_events(&mut tx, &events, &self.webhooks).await?;
        tx.commit().await?;
        announce(&self.events, &events);
        Ok(moved)
    }

    async fn evaluate_monitors(
        &self,
        snapshot: &AccountSnapshot,
        monitors: &[Monitor],
    ) -> Result<Vec<MonitorEntry>, StoreError> {
        if decide::monitored(snapshot, monitors).next().is_none() {
            return Ok(Vec::new());
        }
        let mut tx = self.write().await?;
        let (events, moved) = apply_monitors(&mut tx, snapshot, monitors).await?;
        insert_events(&mut tx, &events, &self.webhooks).await?;
        tx.commit().await?;
        announce(&self.events, &events);
        Ok(moved)
    }

    async fn monitor_states(&self, account: Option<&AccountId>) -> Result<Vec<MonitorEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT monitor, account, provider, wallet, currency, state, value, since, observed_at FROM monitor_states
             WHERE ?1 IS NULL OR account = ?1 ORDER BY monitor, account, wallet, currency",
        )
        .bind(account.map(AccountId::as_str))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(monitor_entry).collect()
    }

    async fn latest_balances(&self, account: &AccountId) -> Result<Option<AccountSnapshot>, StoreError> {
        let row = sqlx::query("SELECT account, provider, fetched_at, raw FROM account_snapshots WHERE account = ?1")
            .bind(account.as_str())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(Some(self.snapshot_from(row).await?)),
            None => Ok(None),
        }
    }

    async fn all_latest_balances(&self) -> Result<Vec<AccountSnapshot>, StoreError> {
        let rows = sqlx::query("SELECT account, provider, fetched_at, raw FROM account_snapshots ORDER BY account")
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(self.snapshot_from(row).await?);
        }
        Ok(out)
    }

    async fn balance_history(&self, q: &HistoryQuery) -> Result<Vec<HistoryPoint>, StoreError> {
        // Only the filters given become SQL, so the planner can use the series indexes.
        let mut sql = sqlx::QueryBuilder::<Sqlite>::new(
            "SELECT account, provider, wallet, currency, available, pending, reserved, total, blocked, \
             first_seen_at, last_confirmed_at FROM balance_points WHERE 1 = 1",
        );
        if let Some(a) = &q.account {
            sql.push(" AND account = ").push_bind(a.as_str());
        }
        if let Some(w) = &q.wallet {
            sql.push(" AND wallet = ").push_bind(w.as_str());
        }
        if let Some(c) = &q.currency {
            sql.push(" AND currency = ").push_bind(c.as_str());
        }
        if let Some(from) = q.from {
            sql.push(" AND last_confirmed_at >= ").push_bind(micros(from));
        }
        if let Some(to) = q.to {
            sql.push(" AND first_seen_at <= ").push_bind(micros(to));
        }
        sql.push(" ORDER BY first_seen_at, id LIMIT ").push_bind(i64::from(q.limit));
        let rows = sql.build().fetch_all(&self.pool).await?;
        rows.iter().map(history_point).collect()
    }

    async fn balances_as_of(
        &self,
        accounts: &[AccountId],
        as_of: DateTime<Utc>,
    ) -> Result<Vec<HistoryPoint>, StoreError> {
        if accounts.is_empty() {
            return Ok(Vec::new());
        }
        // The series of the accounts, then for each the latest point first seen by `as_of`:
        // both steps walk the `balance_points_series` index (account, wallet, currency,
        // first_seen_at), the second as one descending seek per series.
        let mut sql = sqlx::QueryBuilder::<Sqlite>::new(
            "WITH series AS (SELECT DISTINCT account, wallet, currency FROM balance_points WHERE account IN (",
        );
        let mut list = sql.separated(", ");
        for a in accounts {
            list.push_bind(a.as_str());
        }
        sql.push(") AND first_seen_at <= ").push_bind(micros(as_of));
        sql.push(
            ") SELECT p.account, p.provider, p.wallet, p.currency, p.available, p.pending, p.reserved, p.total, \
             p.blocked, p.first_seen_at, p.last_confirmed_at FROM series s JOIN balance_points p ON p.id = \
             (SELECT q.id FROM balance_points q WHERE q.account = s.account AND q.wallet = s.wallet \
             AND q.currency = s.currency AND q.first_seen_at <= ",
        );
        sql.push_bind(micros(as_of));
        sql.push(" ORDER BY q.first_seen_at DESC, q.id DESC LIMIT 1) ORDER BY p.account, p.wallet, p.currency");
        let rows = sql.build().fetch_all(&self.pool).await?;
        rows.iter().map(history_point).collect()
    }

    async fn balance_points_between(
        &self,
        accounts: &[AccountId],
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<HistoryPoint>, StoreError> {
        if accounts.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = sqlx::QueryBuilder::<Sqlite>::new(
            "SELECT account, provider, wallet, currency, available, pending, reserved, total, blocked, \
             first_seen_at, last_confirmed_at FROM balance_points WHERE account IN (",
        );
        let mut list = sql.separated(", ");
        for a in accounts {
            list.push_bind(a.as_str());
        }
        sql.push(") AND first_seen_at > ").push_bind(micros(after));
        sql.push(" AND first_seen_at <= ").push_bind(micros(until));
        sql.push(" ORDER BY account, wallet, currency, first_seen_at, id LIMIT ").push_bind(i64::from(limit));
        let rows = sql.build().fetch_all(&self.pool).await?;
        rows.iter().map(history_point).collect()
    }

    async fn save_payout(&self, p: &StoredPayout, source: &str) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        let previous: Option<(String, String)> =
            sqlx::query_as("SELECT status, provider_status FROM payouts WHERE account = ?1 AND payout_id = ?2")
                .bind(p.account.as_str())
                .bind(&p.payout.id)
                .fetch_optional(&mut *tx)
                .await?;
        let po = &p.payout;
        sqlx::query(
            "INSERT INTO payouts (account, payout_id, provider, reference, status, provider_status, is_final, amount,
                                  currency, fee, failure_code, failure_message, created_at, updated_at, fetched_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
             ON CONFLICT (account, payout_id) DO UPDATE SET
                provider = ?3, reference = ?4, status = ?5, provider_status = ?6, is_final = ?7, amount = ?8,
                currency = ?9, fee = ?10, failure_code = ?11, failure_message = ?12, created_at = ?13,
                updated_at = ?14, fetched_at = ?15",
        )
        .bind(p.account.as_str())
        .bind(&po.id)
        .bind(p.provider.as_str())
        .bind(po.reference.as_deref())
        .bind(po.status.as_str())
        .bind(&po.provider_status)
        .bind(po.is_final as i64)
        .bind(decimal_text(&po.amount))
        .bind(po.currency.as_ref().map(|c| c.as_str()))
        .bind(decimal_text(&po.fee))
        .bind(po.failure.as_ref().and_then(|f| f.code.as_deref()))
        .bind(po.failure.as_ref().map(|f| f.message.as_str()))
        .bind(po.created_at.map(micros))
        .bind(po.updated_at.map(micros))
        .bind(micros(p.fetched_at))
        .execute(&mut *tx)
        .await?;
        let events = decide::payout_events(previous.as_ref(), p);
        if decide::is_transition(previous.as_ref(), po) {
            sqlx::query(
                "INSERT INTO payout_transitions (account, payout_id, observed_at, provider_status, status, source)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .bind(p.account.as_str())
            .bind(&po.id)
            .bind(micros(p.fetched_at))
            .bind(&po.provider_status)
            .bind(po.status.as_str())
            .bind(source)
            .execute(&mut *tx)
            .await?;
        }
        insert_events(&mut tx, &events, &self.webhooks).await?;
        tx.commit().await?;
        announce(&self.events, &events);
        Ok(())
    }

    async fn find_payout(&self, account: &AccountId, id: &str) -> Result<Option<StoredPayout>, StoreError> {
        let row = sqlx::query(
            "SELECT * FROM payouts WHERE account = ?1 AND (payout_id = ?2 OR reference = ?2)
             ORDER BY payout_id = ?2 DESC LIMIT 1",
        )
        .bind(account.as_str())
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(stored_payout).transpose()
    }

    async fn payout_transitions(
        &self,
        account: &AccountId,
        payout_id: &str,
    ) -> Result<Vec<PayoutTransition>, StoreError> {
        let rows = sqlx::query(
            "SELECT observed_at, provider_status, status, source FROM payout_transitions
             WHERE account = ?1 AND payout_id = ?2 ORDER BY id",
        )
        .bind(account.as_str())
        .bind(payout_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(PayoutTransition {
                    observed_at: time(row.try_get("observed_at")?)?,
                    provider_status: row.try_get("provider_status")?,
                    status: parse_status(row.try_get("status")?)?,
                    source: row.try_get("source")?,
                })
            })
            .collect()
    }

    async fn append_event(&self, event: &NewEvent) -> Result<Event, StoreError> {
        let mut tx = self.write().await?;
        let seqs = insert_events(&mut tx, std::slice::from_ref(event), &self.webhooks).await?;
        tx.commit().await?;
        announce(&self.events, std::slice::from_ref(event));
        Ok(event.stored(seqs[0]))
    }

    async fn events(&self, q: &EventQuery) -> Result<Vec<Event>, StoreError> {
        // One writer at a time: a committed seq is never followed by a lower one.
        let mut sql = sqlx::QueryBuilder::<Sqlite>::new("SELECT seq, type, timestamp, data FROM events WHERE seq > ");
        sql.push_bind(q.after.unwrap_or(0));
        if !q.types.is_empty() {
            let mut list = sql.push(" AND type IN (").separated(", ");
            for t in &q.types {
                list.push_bind(t.as_str());
            }
            sql.push(")");
        }
        if !q.accounts.is_empty() {
            let mut list = sql.push(" AND account IN (").separated(", ");
            for a in &q.accounts {
                list.push_bind(a.as_str());
            }
            sql.push(")");
        }
        sql.push(" ORDER BY seq LIMIT ").push_bind(i64::from(q.limit));
        let rows = sql.build().fetch_all(&self.pool).await?;
        rows.iter().map(event_row).collect()
    }

    async fn event(&self, seq: i64) -> Result<Option<Event>, StoreError> {
        let row = sqlx::query("SELECT seq, type, timestamp, data FROM events WHERE seq = ?1")
            .bind(seq)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(event_row).transpose()
    }

    async fn prune_events(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE timestamp < ?1 ORDER BY seq LIMIT ?2)",
        )
        .bind(micros(before))
        .bind(i64::from(limit))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    fn event_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.events.subscribe()
    }

    async fn claim_deliveries(
        &self,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        per_webhook: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        // One process writes this file: the write lock is the only coordination needed.
        let mut tx = self.write().await?;
        let mut claimed = Vec::new();
        for route in self.webhooks.iter() {
            let live: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE webhook = ?1 AND claimed_until > ?2")
                    .bind(&route.id)
                    .bind(micros(now))
                    .fetch_one(&mut *tx)
                    .await?;
            let room = i64::from(per_webhook) - live;
            if room <= 0 {
                continue;
            }
            let rows = sqlx::query(
                "UPDATE webhook_deliveries SET claimed_by = ?1, claimed_until = ?2
                 WHERE webhook = ?3 AND event_seq IN (
                     SELECT event_seq FROM webhook_deliveries
                     WHERE webhook = ?3 AND status = 'pending' AND next_attempt_at <= ?4
                       AND (claimed_until IS NULL OR claimed_until <= ?4)
                       AND NOT EXISTS (SELECT 1 FROM webhook_states s WHERE s.webhook = ?3 AND s.disabled_at IS NOT NULL)
                     ORDER BY next_attempt_at, event_seq LIMIT ?5)
                 RETURNING event_seq, attempts, generation",
            )
            .bind(holder)
            .bind(micros(until))
            .bind(&route.id)
            .bind(micros(now))
            .bind(room)
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                let seq: i64 = row.try_get("event_seq")?;
                let event = sqlx::query("SELECT seq, type, timestamp, data FROM events WHERE seq = ?1")
                    .bind(seq)
                    .fetch_one(&mut *tx)
                    .await?;
                claimed.push(ClaimedDelivery {
                    event: event_row(&event)?,
                    webhook: route.id.clone(),
                    attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
                    generation: row.try_get("generation")?,
                });
            }
        }
        tx.commit().await?;
        Ok(claimed)
    }

    async fn finish_attempt(
        &self,
        claim: &ClaimedDelivery,
        holder: &str,
        attempt: &AttemptRecord,
        result: AttemptResult,
    ) -> Result<(), StoreError> {
        let seq = crate::domain::event::event_seq(&claim.event.id).unwrap_or(-1);
        let (status, next) = after_attempt(result);
        let mut tx = self.write().await?;
        let exists = sqlx::query(
            "INSERT INTO webhook_attempts (event_seq, webhook, at, status_code, error, duration_ms, succeeded)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 WHERE EXISTS
                 (SELECT 1 FROM webhook_deliveries WHERE event_seq = ?1 AND webhook = ?2)",
        )
        .bind(seq)
        .bind(&claim.webhook)
        .bind(micros(attempt.at))
        .bind(attempt.status_code.map(i64::from))
        .bind(attempt.error.as_deref())
        .bind(i64::try_from(attempt.duration_ms).unwrap_or(i64::MAX))
        .bind(result == AttemptResult::Succeeded)
        .execute(&mut *tx)
        .await?;
        if exists.rows_affected() > 0 {
            sqlx::query(
                "UPDATE webhook_deliveries SET
                        status = CASE WHEN generation = ?6 THEN ?1 ELSE status END,
                        next_attempt_at = CASE WHEN generation = ?6 THEN ?2 ELSE next_attempt_at END,
                        attempts = CASE WHEN generation = ?6 THEN attempts + 1 ELSE attempts END,
                        claimed_by = NULL, claimed_until = NULL
                 WHERE event_seq = ?3 AND webhook = ?4 AND claimed_by = ?5",
            )
            .bind(status.as_str())
            .bind(next.map(micros))
            .bind(seq)
            .bind(&claim.webhook)
            .bind(holder)
            .bind(claim.generation)
            .execute(&mut *tx)
            .await?;
        }
        if result == AttemptResult::Gone {
            sqlx::query(
                "INSERT INTO webhook_states (webhook, disabled_at) VALUES (?1, ?2)
                 ON CONFLICT (webhook) DO UPDATE SET disabled_at = ?2",
            )
            .bind(&claim.webhook)
            .bind(micros(attempt.at))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn release_claims(&self, holder: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE webhook_deliveries SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = ?1")
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn next_delivery_at(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let mut next: Option<i64> = None;
        for route in self.webhooks.iter() {
            let due: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(MAX(next_attempt_at, COALESCE(claimed_until, next_attempt_at))) FROM webhook_deliveries
                 WHERE webhook = ?1 AND status = 'pending'
                   AND NOT EXISTS (SELECT 1 FROM webhook_states s WHERE s.webhook = ?1 AND s.disabled_at IS NOT NULL)",
            )
            .bind(&route.id)
            .fetch_one(&self.pool)
            .await?;
            next = match (next, due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        next.map(time).transpose()
    }

    async fn deliveries(&self, seq: i64) -> Result<Vec<Delivery>, StoreError> {
        let rows = sqlx::query(
            "SELECT webhook, status, next_attempt_at FROM webhook_deliveries WHERE event_seq = ?1 ORDER BY webhook",
        )
        .bind(seq)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let webhook: String = row.try_get("webhook")?;
            let attempts = sqlx::query(
                "SELECT at, status_code, error, duration_ms FROM webhook_attempts
                 WHERE event_seq = ?1 AND webhook = ?2 ORDER BY id",
            )
            .bind(seq)
            .bind(&webhook)
            .fetch_all(&self.pool)
            .await?;
            let status = parse_delivery_status(row.try_get("status")?)?;
            out.push(Delivery {
                next_attempt_at: row.try_get::<Option<i64>, _>("next_attempt_at")?.map(time).transpose()?,
                attempts: attempts.iter().map(attempt_row).collect::<Result<_, _>>()?,
                status,
                webhook,
            });
        }
        Ok(out)
    }

    async fn requeue_event(&self, seq: i64, webhook: Option<&str>, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut tx = self.write().await?;
        if let Some(webhook) = webhook {
            sqlx::query(
                "INSERT INTO webhook_deliveries (event_seq, webhook, status, next_attempt_at, created_at)
                 VALUES (?1, ?2, 'pending', ?3, ?3) ON CONFLICT (event_seq, webhook) DO NOTHING",
            )
            .bind(seq)
            .bind(webhook)
            .bind(micros(now))
            .execute(&mut *tx)
            .await?;
        }
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?1,
                    generation = generation + 1
             WHERE event_seq = ?2 AND (?3 IS NULL OR webhook = ?3)",
        )
        .bind(micros(now))
        .bind(seq)
        .bind(webhook)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.events.send_modify(|n| *n = n.wrapping_add(1));
        Ok(done.rows_affected())
    }

    async fn recover_webhook(
        &self,
        webhook: &str,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM webhook_states WHERE webhook = ?1").bind(webhook).execute(&mut *tx).await?;
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?1,
                    generation = generation + 1
             WHERE webhook = ?2 AND status = 'failed' AND created_at >= ?3",
        )
        .bind(micros(now))
        .bind(webhook)
        .bind(micros(since))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.events.send_modify(|n| *n = n.wrapping_add(1));
        Ok(done.rows_affected())
    }

    async fn webhook_stats(&self) -> Result<Vec<(String, WebhookStats)>, StoreError> {
        let mut out = Vec::with_capacity(self.webhooks.len());
        for route in self.webhooks.iter() {
            let id = route.id.as_str();
            let disabled: Option<Option<i64>> =
                sqlx::query_scalar("SELECT disabled_at FROM webhook_states WHERE webhook = ?1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
            let (pending, oldest): (i64, Option<i64>) = sqlx::query_as(
                "SELECT COUNT(*), MIN(created_at) FROM webhook_deliveries WHERE webhook = ?1 AND status = 'pending'",
            )
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
            let last_success: Option<i64> =
                sqlx::query_scalar("SELECT MAX(at) FROM webhook_attempts WHERE webhook = ?1 AND succeeded = 1")
                    .bind(id)
                    .fetch_one(&self.pool)
                    .await?;
            let last_failure = sqlx::query(
                "SELECT at, status_code, error, duration_ms FROM webhook_attempts
                 WHERE webhook = ?1 AND succeeded = 0 ORDER BY id DESC LIMIT 1",
            )
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
            out.push((
                id.to_owned(),
                WebhookStats {
                    enabled: disabled.flatten().is_none(),
                    pending: u64::try_from(pending).unwrap_or(0),
                    oldest_pending: oldest.map(time).transpose()?,
                    last_success_at: last_success.map(time).transpose()?,
                    last_failure: last_failure.as_ref().map(attempt_row).transpose()?,
                },
            ));
        }
        Ok(out)
    }

    async fn watch_payout(
        &self,
        account: &AccountId,
        payout_id: &str,
        now: DateTime<Utc>,
        watch_until: DateTime<Utc>,
        next_check_at: DateTime<Utc>,
    ) -> Result<PayoutWatch, StoreError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO payout_watches (account, payout_id, first_watched_at, watch_until, next_check_at)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (account, payout_id) DO NOTHING",
        )
        .bind(account.as_str())
        .bind(payout_id)
        .bind(micros(now))
        .bind(micros(watch_until))
        .bind(micros(next_check_at))
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query("SELECT * FROM payout_watches WHERE account = ?1 AND payout_id = ?2")
            .bind(account.as_str())
            .bind(payout_id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        watch_row(&row)
    }

    async fn unwatch_payout(&self, account: &AccountId, payout_id: &str) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM payout_watches WHERE account = ?1 AND payout_id = ?2")
            .bind(account.as_str())
            .bind(payout_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn payout_watch(&self, account: &AccountId, payout_id: &str) -> Result<Option<PayoutWatch>, StoreError> {
        let row = sqlx::query("SELECT * FROM payout_watches WHERE account = ?1 AND payout_id = ?2")
            .bind(account.as_str())
            .bind(payout_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(watch_row).transpose()
    }

    async fn claim_watches(
        &self,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<PayoutWatch>, StoreError> {
        // One process writes this file: the write lock is the only coordination needed.
        let mut tx = self.write().await?;
        let rows = sqlx::query(
            "UPDATE payout_watches SET claimed_by = ?1, claimed_until = ?2
             WHERE (account, payout_id) IN (
                 SELECT account, payout_id FROM payout_watches
                 WHERE next_check_at <= ?3 AND (claimed_until IS NULL OR claimed_until <= ?3)
                 ORDER BY next_check_at, account, payout_id LIMIT ?4)
             RETURNING *",
        )
        .bind(holder)
        .bind(micros(until))
        .bind(micros(now))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(watch_row).collect()
    }

    async fn finish_watch(
        &self,
        watch: &PayoutWatch,
        holder: &str,
        next_check_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE payout_watches SET next_check_at = ?1, checks = checks + 1, claimed_by = NULL, claimed_until = NULL
             WHERE account = ?2 AND payout_id = ?3 AND claimed_by = ?4",
        )
        .bind(micros(next_check_at))
        .bind(watch.account.as_str())
        .bind(&watch.payout_id)
        .bind(holder)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn next_watch_at(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let next: Option<i64> =
            sqlx::query_scalar("SELECT MIN(MAX(next_check_at, COALESCE(claimed_until, 0))) FROM payout_watches")
                .fetch_one(&self.pool)
                .await?;
        next.map(time).transpose()
    }

    async fn list_payouts(&self, q: &PayoutListQuery) -> Result<Vec<(StoredPayout, Option<PayoutWatch>)>, StoreError> {
        let mut sql = sqlx::QueryBuilder::<Sqlite>::new(
            "SELECT p.*, w.first_watched_at, w.watch_until, w.next_check_at, w.checks
             FROM payouts p LEFT JOIN payout_watches w ON w.account = p.account AND w.payout_id = p.payout_id
             WHERE 1 = 1",
        );
        if let Some(account) = &q.account {
            sql.push(" AND p.account = ").push_bind(account.as_str());
        }
        if let Some(status) = q.status {
            sql.push(" AND p.status = ").push_bind(status.as_str());
        }
        if let Some(is_final) = q.is_final {
            sql.push(" AND p.is_final = ").push_bind(i64::from(is_final));
        }
        sql.push(" ORDER BY COALESCE(p.created_at, p.fetched_at) DESC, p.account, p.payout_id LIMIT ")
            .push_bind(i64::from(q.limit));
        let rows = sql.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let stored = stored_payout(row)?;
                let watch = match row.try_get::<Option<i64>, _>("first_watched_at")? {
                    None => None,
                    Some(_) => Some(watch_row(row)?),
                };
                Ok((stored, watch))
            })
            .collect()
    }

    async fn record_callback(&self, r: &CallbackReceipt) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO callback_receipts (received_at, account, provider, verified, outcome, payout_id, status, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(micros(r.received_at))
        .bind(r.account.as_str())
        .bind(r.provider.as_str())
        .bind(i64::from(r.verified))
        .bind(r.outcome.as_str())
        .bind(r.payout_id.as_deref())
        .bind(r.status.map(PayoutStatus::as_str))
        .bind(r.error.as_deref())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn callbacks(&self, account: Option<&AccountId>, limit: u32) -> Result<Vec<CallbackReceipt>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM callback_receipts WHERE ?1 IS NULL OR account = ?1 ORDER BY id DESC LIMIT ?2")
                .bind(account.map(AccountId::as_str))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(receipt_row).collect()
    }

    async fn prune_callbacks(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "DELETE FROM callback_receipts WHERE id IN
                 (SELECT id FROM callback_receipts WHERE received_at < ?1 ORDER BY id LIMIT ?2)",
        )
        .bind(micros(before))
        .bind(i64::from(limit))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    /// One process with its own file: nothing to coordinate.
    fn cluster(&self) -> Option<Arc<dyn Cluster>> {
        None
    }
}
