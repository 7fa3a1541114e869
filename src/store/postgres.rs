//! The PostgreSQL store: shared by replicas; amounts as NUMERIC, times as TIMESTAMPTZ.
//! Its [`PostgresCluster`] is how those replicas coordinate (leases, shared failures and
//! circuit, `LISTEN`/`NOTIFY`).
//!
//! Amounts cross the driver as text (`$n::numeric`, `col::text`): sqlx's binary Decimal
//! codec drops the scale of zero (`0.00` comes back `0`), and the scale is part of a figure.

use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};
use tokio::sync::broadcast;

use super::*;

pub struct PostgresStore {
    pool: PgPool,
    cluster: Arc<PostgresCluster>,
    /// Moves on at each commit of events, this process's (at once) and every replica's
    /// (`LISTEN tally_events`, started on first subscription).
    events: tokio::sync::watch::Sender<u64>,
    events_listener: OnceLock<tokio::task::JoinHandle<()>>,
    /// The configured webhooks, whose deliveries are written with the events they are for.
    webhooks: Arc<[Route]>,
}

/// The transaction-level advisory lock under which events take their feed position: see
/// [`insert_events`].
const EVENTS_LOCK: i64 = 0x7461_6c6c_7965_7674; // "tallyevt"

/// Writes `events` in the transaction `tx`, as its last step before commit.
///
/// The feed position is drawn under the advisory lock [`EVENTS_LOCK`], held until the
/// transaction ends: of two transactions writing events, the second draws its positions only
/// once the first has committed (or rolled back). So positions are drawn in commit order, and
/// when a reader sees an event, every event with a lower position is already visible: a reader
/// following the feed never skips one. Taken last, after every row lock of the transaction, so
/// that it is never held while waiting for another lock.
///
/// Each event's deliveries (one per webhook of `webhooks` it is for, due at once) are written
/// with it.
pub async fn insert_events(
    tx: &mut Transaction<'_, Postgres>,
    events: &[NewEvent],
    webhooks: &[Route],
) -> Result<Vec<i64>, StoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(EVENTS_LOCK).execute(&mut **tx).await?;
    let mut seqs = Vec::with_capacity(events.len());
    for e in events {
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO events (seq, type, account, timestamp, data) VALUES (nextval('events_seq'), $1, $2, $3, $4)
             RETURNING seq",
        )
        .bind(e.kind)
        .bind(e.account.as_str())
        .bind(e.timestamp)
        .bind(e.data.to_string())
        .fetch_one(&mut **tx)
        .await?;
        for webhook in crate::domain::webhook::recipients(webhooks, e) {
            sqlx::query(
                "INSERT INTO webhook_deliveries (event_seq, webhook, status, next_attempt_at, created_at)
                 VALUES ($1, $2, 'pending', $3, $3)",
            )
            .bind(seq)
            .bind(webhook)
            .bind(e.timestamp)
            .execute(&mut **tx)
            .await?;
        }
        seqs.push(seq);
    }
    // Delivered at commit: waiting readers on every replica wake when the events are readable.
    sqlx::query("SELECT pg_notify($1, '')").bind(EVENTS_CHANNEL).execute(&mut **tx).await?;
    Ok(seqs)
}

/// One change point as the history, `as_of` and daily reads select it.
fn history_point(row: &PgRow) -> Result<HistoryPoint, StoreError> {
    Ok(HistoryPoint {
        account: parse_account(row.try_get("account")?)?,
        provider: parse_provider(row.try_get("provider")?)?,
        entry: entry(row)?,
        first_seen_at: row.try_get("first_seen_at")?,
        last_confirmed_at: row.try_get("last_confirmed_at")?,
    })
}

fn event_row(row: &PgRow) -> Result<Event, StoreError> {
    let data: String = row.try_get("data")?;
    parse_event(row.try_get("seq")?, row.try_get("type")?, row.try_get("timestamp")?, &data)
}

/// The coordination of the replicas sharing this database: its own tables (`fetch_leases`,
/// `fetch_failures`) and `LISTEN`/`NOTIFY`.
pub struct PostgresCluster {
    pool: PgPool,
    /// Fetch announcements from `LISTEN tally_fetches`, started on first subscription.
    events: OnceLock<(broadcast::Sender<String>, tokio::task::JoinHandle<()>)>,
}

impl PostgresStore {
    pub fn open(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        crate::install_crypto_provider();
        // The parse error would echo the URL, which may hold a password: keep only its kind.
        let options = PgConnectOptions::from_str(url)
            .map_err(|_| StoreError::Unavailable("the PostgreSQL URL in store.url is malformed".into()))?
            .application_name("tally");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(options);
        let cluster = Arc::new(PostgresCluster { pool: pool.clone(), events: OnceLock::new() });
        Ok(Self {
            pool,
            cluster,
            events: tokio::sync::watch::Sender::new(0),
            events_listener: OnceLock::new(),
            webhooks: Arc::new([]),
        })
    }

    /// The store writing a delivery for each of `webhooks` that an event is for.
    pub fn with_webhooks(mut self, webhooks: Arc<[Route]>) -> Self {
        self.webhooks = webhooks;
        self
    }

    /// Wakes the dispatchers of every replica (and this process's waiters): deliveries were
    /// queued again.
    async fn announce_requeue(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, '')").bind(EVENTS_CHANNEL).execute(&self.pool).await?;
        self.events.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }
}

/// The first key of the per-webhook advisory locks under which replicas claim deliveries
/// (the second is the hash of the webhook's id).
const WEBHOOK_CLAIM_LOCK: i32 = 0x7768; // "wh"

fn watch_row(row: &PgRow) -> Result<PayoutWatch, StoreError> {
    Ok(PayoutWatch {
        account: parse_account(row.try_get("account")?)?,
        payout_id: row.try_get("payout_id")?,
        first_watched_at: row.try_get("first_watched_at")?,
        watch_until: row.try_get("watch_until")?,
        next_check_at: row.try_get("next_check_at")?,
        checks: u32::try_from(row.try_get::<i32, _>("checks")?).unwrap_or(0),
    })
}

fn receipt_row(row: &PgRow) -> Result<CallbackReceipt, StoreError> {
    Ok(CallbackReceipt {
        received_at: row.try_get("received_at")?,
        account: parse_account(row.try_get("account")?)?,
        provider: parse_provider(row.try_get("provider")?)?,
        verified: row.try_get("verified")?,
        outcome: parse_outcome(row.try_get("outcome")?)?,
        payout_id: row.try_get("payout_id")?,
        status: row.try_get::<Option<String>, _>("status")?.as_deref().map(parse_status).transpose()?,
        error: row.try_get("error")?,
    })
}

fn attempt_row(row: &PgRow) -> Result<AttemptRecord, StoreError> {
    Ok(AttemptRecord {
        at: row.try_get("at")?,
        status_code: status_code(row.try_get::<Option<i32>, _>("status_code")?.map(i64::from))?,
        error: row.try_get("error")?,
        duration_ms: u64::try_from(row.try_get::<i64, _>("duration_ms")?).unwrap_or(0),
    })
}

fn entry(row: &PgRow) -> Result<BalanceEntry, StoreError> {
    Ok(BalanceEntry {
        wallet: row.try_get("wallet")?,
        currency: parse_currency(row.try_get("currency")?)?,
        available: parse_decimal_text(row.try_get("available")?)?,
        pending: parse_decimal_text(row.try_get("pending")?)?,
        reserved: parse_decimal_text(row.try_get("reserved")?)?,
        total: parse_decimal_text(row.try_get("total")?)?,
        blocked: row.try_get("blocked")?,
    })
}

/// The columns [`PointDecoder`] reads, by position.
const BETWEEN_COLUMNS: &str = "SELECT account, provider, wallet, currency, available::text, pending::text, \
     reserved::text, total::text, blocked, first_seen_at, last_confirmed_at, id";

/// Decodes the rows of [`BETWEEN_COLUMNS`] by position, without sqlx's per-value type check
/// (the query's casts and the table's schema fix each column's type), the figures as borrowed
/// text, the account taken from the caller's list and the currency of the previous row reused
/// when it repeats: a month of 100 accounts is 72,000 rows (`/balances/daily`).
struct PointDecoder<'a> {
    accounts: std::collections::HashMap<&'a str, &'a AccountId>,
    currency: Option<Currency>,
}

impl<'a> PointDecoder<'a> {
    fn new(accounts: &'a [AccountId]) -> Self {
        Self { accounts: accounts.iter().map(|a| (a.as_str(), a)).collect(), currency: None }
    }

    fn decode(&mut self, row: &PgRow) -> Result<(HistoryPoint, i64), StoreError> {
        let account: &str = row.try_get_unchecked(0)?;
        let account = match self.accounts.get(account) {
            Some(a) => (*a).clone(),
            None => parse_account(account)?,
        };
        let currency: &str = row.try_get_unchecked(3)?;
        let currency = match &self.currency {
            Some(c) if c.as_str() == currency => c.clone(),
            _ => self.currency.insert(parse_currency(currency)?).clone(),
        };
        let figure = |i: usize| -> Result<Option<Decimal>, StoreError> {
            row.try_get_unchecked::<Option<&str>, _>(i)?
                .map(|t| crate::domain::parse_decimal(t).map_err(|e| StoreError::Corrupt(format!("amount `{t}`: {e}"))))
                .transpose()
        };
        let point = HistoryPoint {
            account,
            provider: parse_provider(row.try_get_unchecked(1)?)?,
            entry: BalanceEntry {
                wallet: row.try_get_unchecked(2)?,
                currency,
                available: figure(4)?,
                pending: figure(5)?,
                reserved: figure(6)?,
                total: figure(7)?,
                blocked: row.try_get_unchecked(8)?,
            },
            first_seen_at: row.try_get_unchecked(9)?,
            last_confirmed_at: row.try_get_unchecked(10)?,
        };
        Ok((point, row.try_get_unchecked(11)?))
    }
}

fn shared_failure(row: &PgRow) -> Result<SharedFailure, StoreError> {
    Ok(SharedFailure {
        failure: FailedFetch {
            code: row.try_get("code")?,
            message: row.try_get("message")?,
            upstream_status: row.try_get::<Option<i32>, _>("upstream_status")?.and_then(|s| u16::try_from(s).ok()),
            failed_at: row.try_get("failed_at")?,
        },
        consecutive_failures: u32::try_from(row.try_get::<i32, _>("consecutive_failures")?).unwrap_or_default(),
        opened_at: row.try_get("opened_at")?,
    })
}

fn stored_payout(row: &PgRow) -> Result<StoredPayout, StoreError> {
    let failure_message: Option<String> = row.try_get("failure_message")?;
    Ok(StoredPayout {
        account: parse_account(row.try_get("account")?)?,
        provider: parse_provider(row.try_get("provider")?)?,
        fetched_at: row.try_get("fetched_at")?,
        payout: Payout {
            id: row.try_get("payout_id")?,
            reference: row.try_get("reference")?,
            status: parse_status(row.try_get("status")?)?,
            provider_status: row.try_get("provider_status")?,
            is_final: row.try_get("is_final")?,
            amount: parse_decimal_text(row.try_get("amount")?)?,
            currency: row.try_get::<Option<String>, _>("currency")?.as_deref().map(parse_currency).transpose()?,
            fee: parse_decimal_text(row.try_get("fee")?)?,
            failure: failure_message
                .map(|message| {
                    Ok::<_, StoreError>(crate::domain::PayoutFailure { code: row.try_get("failure_code")?, message })
                })
                .transpose()?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        },
    })
}

/// Writes one fetched figure set: a confirmation, or a new change point with its event.
async fn upsert_point(
    tx: &mut Transaction<'_, Postgres>,
    snapshot: &AccountSnapshot,
    e: &BalanceEntry,
) -> Result<Option<NewEvent>, StoreError> {
    let last = sqlx::query(
        "SELECT id, wallet, currency, available::text AS available, pending::text AS pending, reserved::text AS reserved, total::text AS total, blocked FROM balance_points
         WHERE account = $1 AND wallet = $2 AND currency = $3 ORDER BY first_seen_at DESC, id DESC LIMIT 1",
    )
    .bind(snapshot.account.as_str())
    .bind(&e.wallet)
    .bind(e.currency.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    let last = last.map(|row| Ok::<_, StoreError>((row.try_get::<i64, _>("id")?, entry(&row)?))).transpose()?;
    let point = decide::point(last, e);
    if let decide::Point::Confirms(id) = point {
        sqlx::query("UPDATE balance_points SET last_confirmed_at = $1 WHERE id = $2 AND last_confirmed_at < $1")
            .bind(snapshot.fetched_at)
            .bind(id)
            .execute(&mut **tx)
            .await?;
        return Ok(None);
    }
    sqlx::query(
        "INSERT INTO balance_points (account, provider, wallet, currency, available, pending, reserved, total,
                                     blocked, first_seen_at, last_confirmed_at)
         VALUES ($1, $2, $3, $4, $5::numeric, $6::numeric, $7::numeric, $8::numeric, $9, $10, $10)",
    )
    .bind(snapshot.account.as_str())
    .bind(snapshot.provider.as_str())
    .bind(&e.wallet)
    .bind(e.currency.as_str())
    .bind(decimal_text(&e.available))
    .bind(decimal_text(&e.pending))
    .bind(decimal_text(&e.reserved))
    .bind(decimal_text(&e.total))
    .bind(e.blocked)
    .bind(snapshot.fetched_at)
    .execute(&mut **tx)
    .await?;
    Ok(point.event(snapshot, e))
}

/// Evaluates `monitors` against every figure of `snapshot` in `tx`: each state row is made to
/// exist (a placeholder `new` row, replaced before commit) and locked before it is read, so
/// that replicas recording at once decide one after the other, each on the state the other
/// committed, and a crossing fires once. Rows are locked in [`decide::monitored`]'s order.
/// Writes each moved state; returns the events and the entries.
async fn apply_monitors(
    tx: &mut Transaction<'_, Postgres>,
    snapshot: &AccountSnapshot,
    monitors: &[Monitor],
) -> Result<(Vec<NewEvent>, Vec<MonitorEntry>), StoreError> {
    let (mut events, mut entries) = (Vec::new(), Vec::new());
    for (monitor, e) in decide::monitored(snapshot, monitors) {
        sqlx::query(
            "INSERT INTO monitor_states (monitor, account, wallet, currency, provider, state)
             VALUES ($1, $2, $3, $4, $5, 'new') ON CONFLICT DO NOTHING",
        )
        .bind(&monitor.id)
        .bind(snapshot.account.as_str())
        .bind(&e.wallet)
        .bind(e.currency.as_str())
        .bind(snapshot.provider.as_str())
        .execute(&mut **tx)
        .await?;
        let row = sqlx::query(
            "SELECT state, value::text AS value, since, observed_at FROM monitor_states
             WHERE monitor = $1 AND account = $2 AND wallet = $3 AND currency = $4 FOR UPDATE",
        )
        .bind(&monitor.id)
        .bind(snapshot.account.as_str())
        .bind(&e.wallet)
        .bind(e.currency.as_str())
        .fetch_one(&mut **tx)
        .await?;
        let stored = entry_state(&row)?;
        let Some((entry, event)) = decide::monitor_entry(monitor, stored.as_ref(), snapshot, e) else { continue };
        sqlx::query(
            "UPDATE monitor_states SET provider = $5, state = $6, value = $7::numeric, since = $8, observed_at = $9
             WHERE monitor = $1 AND account = $2 AND wallet = $3 AND currency = $4",
        )
        .bind(&entry.monitor)
        .bind(entry.account.as_str())
        .bind(&entry.wallet)
        .bind(entry.currency.as_str())
        .bind(entry.provider.as_str())
        .bind(entry.state.state.as_str())
        .bind(decimal_text(&entry.state.value))
        .bind(entry.state.since)
        .bind(entry.state.observed_at)
        .execute(&mut **tx)
        .await?;
        events.extend(event);
        entries.push(entry);
    }
    Ok((events, entries))
}

/// A state row's state; `None` for a placeholder (`new`: never decided).
fn entry_state(row: &PgRow) -> Result<Option<EntryState>, StoreError> {
    let state: String = row.try_get("state")?;
    if state == "new" {
        return Ok(None);
    }
    let (since, observed_at): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
        (row.try_get("since")?, row.try_get("observed_at")?);
    let (Some(since), Some(observed_at)) = (since, observed_at) else {
        return Err(StoreError::Corrupt(format!("monitor state `{state}` without its times")));
    };
    Ok(Some(EntryState {
        state: parse_monitor_state(&state)?,
        value: parse_decimal_text(row.try_get("value")?)?,
        since,
        observed_at,
    }))
}

impl PostgresStore {
    async fn snapshot_from(&self, row: PgRow) -> Result<AccountSnapshot, StoreError> {
        let account = parse_account(row.try_get("account")?)?;
        let fetched_at: DateTime<Utc> = row.try_get("fetched_at")?;
        let rows = sqlx::query(
            "SELECT wallet, currency, available::text AS available, pending::text AS pending, reserved::text AS reserved, total::text AS total, blocked FROM balance_points
             WHERE account = $1 AND last_confirmed_at = $2 ORDER BY wallet, currency",
        )
        .bind(account.as_str())
        .bind(fetched_at)
        .fetch_all(&self.pool)
        .await?;
        Ok(AccountSnapshot::new(
            account,
            parse_provider(row.try_get("provider")?)?,
            fetched_at,
            rows.iter().map(entry).collect::<Result<_, _>>()?,
            parse_raw(row.try_get("raw")?),
        ))
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        // Closed after use rather than returned to the pool: a migration cut short could leave
        // its connection holding the migration lock. Migrations run once per start.
        let mut conn = self.pool.acquire().await?;
        conn.close_on_drop();
        migrations::postgres()
            .run_direct(None, &mut *conn, false)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))
    }

    async fn check_ready(&self) -> Result<(), StoreError> {
        let applied: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| match StoreError::from(e) {
                StoreError::Unavailable(m) if m.contains("_sqlx_migrations") => StoreError::NotMigrated(m),
                other => other,
            })?;
        decide::schema_ready(applied, migrations::latest_version(&migrations::postgres()))
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        // A transaction that is given an id commits a record to the write-ahead log: refused
        // by a server that takes no writes (read-only, recovering, or out of WAL space).
        sqlx::query("SELECT txid_current()").execute(&self.pool).await?;
        Ok(())
    }

    async fn record_balances(
        &self,
        snapshot: &AccountSnapshot,
        monitors: &[Monitor],
    ) -> Result<Vec<MonitorEntry>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut events = Vec::new();
        for e in &snapshot.entries {
            events.extend(upsert_point(&mut tx, snapshot, e).await?);
        }
        sqlx::query(
            "INSERT INTO account_snapshots (account, provider, fetched_at, raw) VALUES ($1, $2, $3, $4)
             ON CONFLICT (account) DO UPDATE SET provider = $2, fetched_at = $3, raw = $4
             WHERE account_snapshots.fetched_at <= $3",
        )
        .bind(snapshot.account.as_str())
        .bind(snapshot.provider.as_str())
        .bind(snapshot.fetched_at)
        .bind(snapshot.raw.as_ref().map(|r| r.to_string()))
        .execute(&mut *tx)
        .await?;
        // The shared circuit closes; the one write that closes an open one raises
        // `account.recovered` (the row lock makes it one, however many replicas succeed).
        let was_open: Option<Option<DateTime<Utc>>> = sqlx::query_scalar(
            "UPDATE fetch_failures f SET consecutive_failures = 0, opened_at = NULL, unhealthy_since = NULL
             FROM (SELECT account, opened_at, unhealthy_since FROM fetch_failures WHERE account = $1 FOR UPDATE) old
             WHERE f.account = old.account
             RETURNING CASE WHEN old.opened_at IS NOT NULL THEN COALESCE(old.unhealthy_since, old.opened_at) END",
        )
        .bind(snapshot.account.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(Some(since)) = was_open {
            events.push(crate::domain::event::account_recovered(
                &snapshot.account,
                snapshot.provider,
                since,
                snapshot.fetched_at,
            ));
        }
        let (monitor_events, moved) = apply_monitors(&mut tx, snapshot, monitors).await?;
        events.extend(monitor_events);
        insert_events(&mut tx, &events, &self.webhooks).await?;
        // Delivered at commit: waiting replicas wake when the snapshot is readable.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(FETCH_EVENTS)
            .bind(snapshot.account.as_str())
            .execute(&mut *tx)
            .await?;
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
        let mut tx = self.pool.begin().await?;
        let (events, moved) = apply_monitors(&mut tx, snapshot, monitors).await?;
        insert_events(&mut tx, &events, &self.webhooks).await?;
        if !events.is_empty() {
            // Other replicas follow the account again, monitor states included.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(FETCH_EVENTS)
                .bind(snapshot.account.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        announce(&self.events, &events);
        Ok(moved)
    }

    async fn monitor_states(&self, account: Option<&AccountId>) -> Result<Vec<MonitorEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT monitor, account, provider, wallet, currency, state, value::text AS value, since, observed_at
             FROM monitor_states WHERE state <> 'new' AND ($1::text IS NULL OR account = $1)
             ORDER BY monitor, account, wallet, currency",
        )
        .bind(account.map(AccountId::as_str))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let state = entry_state(row)?
                    .ok_or_else(|| StoreError::Corrupt("an undecided monitor state was committed".into()))?;
                Ok(MonitorEntry {
                    monitor: row.try_get("monitor")?,
                    account: parse_account(row.try_get("account")?)?,
                    provider: parse_provider(row.try_get("provider")?)?,
                    wallet: row.try_get("wallet")?,
                    currency: parse_currency(row.try_get("currency")?)?,
                    state,
                })
            })
            .collect()
    }

    async fn latest_balances(&self, account: &AccountId) -> Result<Option<AccountSnapshot>, StoreError> {
        let row = sqlx::query("SELECT account, provider, fetched_at, raw FROM account_snapshots WHERE account = $1")
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
        let mut sql = sqlx::QueryBuilder::<Postgres>::new(
            "SELECT account, provider, wallet, currency, available::text AS available, pending::text AS pending, reserved::text AS reserved, total::text AS total, blocked, \
             first_seen_at, last_confirmed_at FROM balance_points WHERE TRUE",
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
            sql.push(" AND last_confirmed_at >= ").push_bind(from);
        }
        if let Some(to) = q.to {
            sql.push(" AND first_seen_at <= ").push_bind(to);
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
        // A loose index scan over `balance_points_series` (account, wallet, currency,
        // first_seen_at): the recursive part jumps from each series of an account to the next,
        // and for each series one backward seek finds the point in force at `as_of`. A plain
        // DISTINCT ON would sort every point of the accounts.
        let ids: Vec<&str> = accounts.iter().map(AccountId::as_str).collect();
        let rows = sqlx::query(
            "WITH RECURSIVE series AS ( \
                SELECT n.account, n.wallet, n.currency FROM unnest($1::text[]) a(account) CROSS JOIN LATERAL ( \
                    SELECT b.account, b.wallet, b.currency FROM balance_points b WHERE b.account = a.account \
                    ORDER BY b.wallet, b.currency LIMIT 1) n \
                UNION ALL \
                SELECT n.account, n.wallet, n.currency FROM series s CROSS JOIN LATERAL ( \
                    SELECT b.account, b.wallet, b.currency FROM balance_points b \
                    WHERE b.account = s.account AND (b.wallet, b.currency) > (s.wallet, s.currency) \
                    ORDER BY b.wallet, b.currency LIMIT 1) n) \
             SELECT p.account, p.provider, p.wallet, p.currency, p.available::text AS available, \
                p.pending::text AS pending, p.reserved::text AS reserved, p.total::text AS total, p.blocked, \
                p.first_seen_at, p.last_confirmed_at \
             FROM series s CROSS JOIN LATERAL ( \
                SELECT * FROM balance_points p WHERE p.account = s.account AND p.wallet = s.wallet \
                AND p.currency = s.currency AND p.first_seen_at <= $2 \
                ORDER BY p.first_seen_at DESC, p.id DESC LIMIT 1) p \
             ORDER BY p.account, p.wallet, p.currency",
        )
        .bind(&ids)
        .bind(as_of)
        .fetch_all(&self.pool)
        .await?;
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
        // PostgreSQL reads the points in no order: sorting a month of 100 accounts (72,000 rows)
        // there spills to disk and cost most of the query (BENCHMARKS.md, issue 20). They are
        // sorted here instead, by the same key, `id` breaking ties. When more than `limit` match,
        // the unordered read cannot tell which `limit` come first, and the ordered query runs.
        let ids: Vec<&str> = accounts.iter().map(AccountId::as_str).collect();
        let read = |ordered: bool, limit: i64| {
            let mut sql = sqlx::QueryBuilder::<Postgres>::new(BETWEEN_COLUMNS);
            sql.push(" FROM balance_points WHERE account = ANY(").push_bind(ids.clone());
            sql.push(") AND first_seen_at > ").push_bind(after);
            sql.push(" AND first_seen_at <= ").push_bind(until);
            if ordered {
                sql.push(" ORDER BY account, wallet, currency, first_seen_at, id");
            }
            sql.push(" LIMIT ").push_bind(limit);
            sql
        };
        // Each row decoded as it arrives, rather than all 72,000 kept and decoded after.
        let mut decoder = PointDecoder::new(accounts);
        let mut points = Vec::new();
        for (ordered, read_limit) in [(false, i64::from(limit) + 1), (true, i64::from(limit))] {
            points.clear();
            let mut sql = read(ordered, read_limit);
            let mut rows = sql.build().fetch(&self.pool);
            while let Some(row) = futures_util::TryStreamExt::try_next(&mut rows).await? {
                points.push(decoder.decode(&row)?);
            }
            if points.len() <= limit as usize {
                break;
            }
        }
        // Sorted by position, so that the points (about 200 bytes each) move once.
        let mut order: Vec<usize> = (0..points.len()).collect();
        order.sort_unstable_by(|&a, &b| {
            let ((a, a_id), (b, b_id)) = (&points[a], &points[b]);
            (a.account.as_str(), a.entry.wallet.as_str(), a.entry.currency.as_str(), a.first_seen_at, a_id).cmp(&(
                b.account.as_str(),
                b.entry.wallet.as_str(),
                b.entry.currency.as_str(),
                b.first_seen_at,
                b_id,
            ))
        });
        let mut slots: Vec<Option<HistoryPoint>> = points.into_iter().map(|(p, _)| Some(p)).collect();
        Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
    }

    async fn save_payout(&self, p: &StoredPayout, source: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let po = &p.payout;
        let previous: Option<(String, String)> = sqlx::query_as(
            "SELECT status, provider_status FROM payouts WHERE account = $1 AND payout_id = $2 FOR UPDATE",
        )
        .bind(p.account.as_str())
        .bind(&po.id)
        .fetch_optional(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO payouts (account, payout_id, provider, reference, status, provider_status, is_final, amount,
                                  currency, fee, failure_code, failure_message, created_at, updated_at, fetched_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8::numeric, $9, $10::numeric, $11, $12, $13, $14, $15)
             ON CONFLICT (account, payout_id) DO UPDATE SET
                provider = $3, reference = $4, status = $5, provider_status = $6, is_final = $7, amount = $8::numeric,
                currency = $9, fee = $10::numeric, failure_code = $11, failure_message = $12, created_at = $13,
                updated_at = $14, fetched_at = $15",
        )
        .bind(p.account.as_str())
        .bind(&po.id)
        .bind(p.provider.as_str())
        .bind(po.reference.as_deref())
        .bind(po.status.as_str())
        .bind(&po.provider_status)
        .bind(po.is_final)
        .bind(decimal_text(&po.amount))
        .bind(po.currency.as_ref().map(|c| c.as_str()))
        .bind(decimal_text(&po.fee))
        .bind(po.failure.as_ref().and_then(|f| f.code.as_deref()))
        .bind(po.failure.as_ref().map(|f| f.message.as_str()))
        .bind(po.created_at)
        .bind(po.updated_at)
        .bind(p.fetched_at)
        .execute(&mut *tx)
        .await?;
        let events = decide::payout_events(previous.as_ref(), p);
        if decide::is_transition(previous.as_ref(), po) {
            sqlx::query(
                "INSERT INTO payout_transitions (account, payout_id, observed_at, provider_status, status, source)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(p.account.as_str())
            .bind(&po.id)
            .bind(p.fetched_at)
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
            "SELECT account, payout_id, provider, reference, status, provider_status, is_final, amount::text AS amount,
                    currency, fee::text AS fee, failure_code, failure_message, created_at, updated_at, fetched_at
             FROM payouts WHERE account = $1 AND (payout_id = $2 OR reference = $2)
             ORDER BY (payout_id = $2) DESC LIMIT 1",
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
             WHERE account = $1 AND payout_id = $2 ORDER BY id",
        )
        .bind(account.as_str())
        .bind(payout_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(PayoutTransition {
                    observed_at: row.try_get("observed_at")?,
                    provider_status: row.try_get("provider_status")?,
                    status: parse_status(row.try_get("status")?)?,
                    source: row.try_get("source")?,
                })
            })
            .collect()
    }

    async fn append_event(&self, event: &NewEvent) -> Result<Event, StoreError> {
        let mut tx = self.pool.begin().await?;
        let seqs = insert_events(&mut tx, std::slice::from_ref(event), &self.webhooks).await?;
        tx.commit().await?;
        announce(&self.events, std::slice::from_ref(event));
        Ok(event.stored(seqs[0]))
    }

    async fn events(&self, q: &EventQuery) -> Result<Vec<Event>, StoreError> {
        // Positions are drawn in commit order (see `insert_events`): what is visible is a
        // prefix of the feed, so reading past the last visible position skips nothing.
        let mut sql = sqlx::QueryBuilder::<Postgres>::new("SELECT seq, type, timestamp, data FROM events WHERE seq > ");
        sql.push_bind(q.after.unwrap_or(0));
        if !q.types.is_empty() {
            sql.push(" AND type = ANY(").push_bind(q.types.clone()).push(")");
        }
        if !q.accounts.is_empty() {
            let accounts: Vec<String> = q.accounts.iter().map(|a| a.to_string()).collect();
            sql.push(" AND account = ANY(").push_bind(accounts).push(")");
        }
        sql.push(" ORDER BY seq LIMIT ").push_bind(i64::from(q.limit));
        let rows = sql.build().fetch_all(&self.pool).await?;
        rows.iter().map(event_row).collect()
    }

    async fn event(&self, seq: i64) -> Result<Option<Event>, StoreError> {
        let row = sqlx::query("SELECT seq, type, timestamp, data FROM events WHERE seq = $1")
            .bind(seq)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(event_row).transpose()
    }

    async fn prune_events(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE timestamp < $1 ORDER BY seq LIMIT $2)",
        )
        .bind(before)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    fn event_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.events_listener.get_or_init(|| {
            let signal = self.events.clone();
            tokio::spawn(listen(self.pool.clone(), EVENTS_CHANNEL, move |_| {
                signal.send_modify(|n| *n = n.wrapping_add(1));
            }))
        });
        self.events.subscribe()
    }

    async fn claim_deliveries(
        &self,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        per_webhook: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let mut claimed = Vec::new();
        for route in self.webhooks.iter() {
            // Per webhook, one claimer at a time across replicas: the count of live claims
            // and the new claims are one decision, so a webhook never has more in flight.
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                .bind(WEBHOOK_CLAIM_LOCK)
                .bind(&route.id)
                .execute(&mut *tx)
                .await?;
            let live: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE webhook = $1 AND claimed_until > $2")
                    .bind(&route.id)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
            let room = i64::from(per_webhook) - live;
            if room <= 0 {
                tx.rollback().await?;
                continue;
            }
            let rows = sqlx::query(
                "WITH due AS (
                     SELECT event_seq FROM webhook_deliveries
                     WHERE webhook = $3 AND status = 'pending' AND next_attempt_at <= $4
                       AND (claimed_until IS NULL OR claimed_until <= $4)
                       AND NOT EXISTS (SELECT 1 FROM webhook_states s WHERE s.webhook = $3 AND s.disabled_at IS NOT NULL)
                     ORDER BY next_attempt_at, event_seq LIMIT $5
                     FOR UPDATE SKIP LOCKED)
                 UPDATE webhook_deliveries d SET claimed_by = $1, claimed_until = $2
                 FROM due WHERE d.webhook = $3 AND d.event_seq = due.event_seq
                 RETURNING d.event_seq, d.attempts, d.generation",
            )
            .bind(holder)
            .bind(until)
            .bind(&route.id)
            .bind(now)
            .bind(room)
            .fetch_all(&mut *tx)
            .await?;
            // (event_seq, attempts, generation) of each claimed delivery.
            let mut claims = Vec::with_capacity(rows.len());
            for row in &rows {
                claims.push((
                    row.try_get::<i64, _>("event_seq")?,
                    row.try_get::<i32, _>("attempts")?,
                    row.try_get::<i64, _>("generation")?,
                ));
            }
            let events = sqlx::query("SELECT seq, type, timestamp, data FROM events WHERE seq = ANY($1) ORDER BY seq")
                .bind(claims.iter().map(|c| c.0).collect::<Vec<_>>())
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            for row in &events {
                let event = event_row(row)?;
                let Some(&(_, attempts, generation)) =
                    claims.iter().find(|c| crate::domain::event::event_id(c.0) == event.id)
                else {
                    continue;
                };
                claimed.push(ClaimedDelivery {
                    event,
                    webhook: route.id.clone(),
                    attempts: u32::try_from(attempts).unwrap_or(0),
                    generation,
                });
            }
        }
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
        let mut tx = self.pool.begin().await?;
        let exists = sqlx::query(
            "INSERT INTO webhook_attempts (event_seq, webhook, at, status_code, error, duration_ms, succeeded)
             SELECT $1, $2, $3, $4, $5, $6, $7 WHERE EXISTS
                 (SELECT 1 FROM webhook_deliveries WHERE event_seq = $1 AND webhook = $2)",
        )
        .bind(seq)
        .bind(&claim.webhook)
        .bind(attempt.at)
        .bind(attempt.status_code.map(i32::from))
        .bind(attempt.error.as_deref())
        .bind(i64::try_from(attempt.duration_ms).unwrap_or(i64::MAX))
        .bind(result == AttemptResult::Succeeded)
        .execute(&mut *tx)
        .await?;
        if exists.rows_affected() > 0 {
            sqlx::query(
                "UPDATE webhook_deliveries SET
                        status = CASE WHEN generation = $6 THEN $1 ELSE status END,
                        next_attempt_at = CASE WHEN generation = $6 THEN $2 ELSE next_attempt_at END,
                        attempts = CASE WHEN generation = $6 THEN attempts + 1 ELSE attempts END,
                        claimed_by = NULL, claimed_until = NULL
                 WHERE event_seq = $3 AND webhook = $4 AND claimed_by = $5",
            )
            .bind(status.as_str())
            .bind(next)
            .bind(seq)
            .bind(&claim.webhook)
            .bind(holder)
            .bind(claim.generation)
            .execute(&mut *tx)
            .await?;
        }
        if result == AttemptResult::Gone {
            sqlx::query(
                "INSERT INTO webhook_states (webhook, disabled_at) VALUES ($1, $2)
                 ON CONFLICT (webhook) DO UPDATE SET disabled_at = $2",
            )
            .bind(&claim.webhook)
            .bind(attempt.at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn release_claims(&self, holder: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE webhook_deliveries SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = $1")
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn next_delivery_at(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let ids: Vec<String> = self.webhooks.iter().map(|r| r.id.clone()).collect();
        Ok(sqlx::query_scalar(
            "SELECT MIN(GREATEST(next_attempt_at, claimed_until)) FROM webhook_deliveries d
             WHERE webhook = ANY($1) AND status = 'pending'
               AND NOT EXISTS (SELECT 1 FROM webhook_states s WHERE s.webhook = d.webhook AND s.disabled_at IS NOT NULL)",
        )
        .bind(ids)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn deliveries(&self, seq: i64) -> Result<Vec<Delivery>, StoreError> {
        let rows = sqlx::query(
            "SELECT webhook, status, next_attempt_at FROM webhook_deliveries WHERE event_seq = $1 ORDER BY webhook",
        )
        .bind(seq)
        .fetch_all(&self.pool)
        .await?;
        let attempts = sqlx::query(
            "SELECT webhook, at, status_code, error, duration_ms FROM webhook_attempts WHERE event_seq = $1 ORDER BY id",
        )
        .bind(seq)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let webhook: String = row.try_get("webhook")?;
            let mut mine = Vec::new();
            for a in &attempts {
                if a.try_get::<String, _>("webhook")? == webhook {
                    mine.push(attempt_row(a)?);
                }
            }
            out.push(Delivery {
                status: parse_delivery_status(row.try_get("status")?)?,
                next_attempt_at: row.try_get("next_attempt_at")?,
                attempts: mine,
                webhook,
            });
        }
        Ok(out)
    }

    async fn requeue_event(&self, seq: i64, webhook: Option<&str>, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(webhook) = webhook {
            sqlx::query(
                "INSERT INTO webhook_deliveries (event_seq, webhook, status, next_attempt_at, created_at)
                 VALUES ($1, $2, 'pending', $3, $3) ON CONFLICT (event_seq, webhook) DO NOTHING",
            )
            .bind(seq)
            .bind(webhook)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = $1,
                    generation = generation + 1
             WHERE event_seq = $2 AND ($3::text IS NULL OR webhook = $3)",
        )
        .bind(now)
        .bind(seq)
        .bind(webhook)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.announce_requeue().await?;
        Ok(done.rows_affected())
    }

    async fn recover_webhook(
        &self,
        webhook: &str,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM webhook_states WHERE webhook = $1").bind(webhook).execute(&mut *tx).await?;
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = $1,
                    generation = generation + 1
             WHERE webhook = $2 AND status = 'failed' AND created_at >= $3",
        )
        .bind(now)
        .bind(webhook)
        .bind(since)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.announce_requeue().await?;
        Ok(done.rows_affected())
    }

    async fn webhook_stats(&self) -> Result<Vec<(String, WebhookStats)>, StoreError> {
        let mut out = Vec::with_capacity(self.webhooks.len());
        for route in self.webhooks.iter() {
            let id = route.id.as_str();
            let disabled: Option<Option<DateTime<Utc>>> =
                sqlx::query_scalar("SELECT disabled_at FROM webhook_states WHERE webhook = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
            let (pending, oldest): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
                "SELECT COUNT(*), MIN(created_at) FROM webhook_deliveries WHERE webhook = $1 AND status = 'pending'",
            )
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
            let last_success_at: Option<DateTime<Utc>> =
                sqlx::query_scalar("SELECT MAX(at) FROM webhook_attempts WHERE webhook = $1 AND succeeded")
                    .bind(id)
                    .fetch_one(&self.pool)
                    .await?;
            let last_failure = sqlx::query(
                "SELECT at, status_code, error, duration_ms FROM webhook_attempts
                 WHERE webhook = $1 AND NOT succeeded ORDER BY id DESC LIMIT 1",
            )
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
            out.push((
                id.to_owned(),
                WebhookStats {
                    enabled: disabled.flatten().is_none(),
                    pending: u64::try_from(pending).unwrap_or(0),
                    oldest_pending: oldest,
                    last_success_at,
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
        // The no-op update makes RETURNING give the row that was already there.
        let row = sqlx::query(
            "INSERT INTO payout_watches (account, payout_id, first_watched_at, watch_until, next_check_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (account, payout_id) DO UPDATE SET account = payout_watches.account
             RETURNING *",
        )
        .bind(account.as_str())
        .bind(payout_id)
        .bind(now)
        .bind(watch_until)
        .bind(next_check_at)
        .fetch_one(&self.pool)
        .await?;
        watch_row(&row)
    }

    async fn unwatch_payout(&self, account: &AccountId, payout_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM payout_watches WHERE account = $1 AND payout_id = $2")
            .bind(account.as_str())
            .bind(payout_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn payout_watch(&self, account: &AccountId, payout_id: &str) -> Result<Option<PayoutWatch>, StoreError> {
        let row = sqlx::query("SELECT * FROM payout_watches WHERE account = $1 AND payout_id = $2")
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
        // SKIP LOCKED: replicas claiming at once take different watches, and a watch claimed
        // (claimed_until ahead) is not due again until its claim expires.
        let rows = sqlx::query(
            "WITH due AS (
                 SELECT account, payout_id FROM payout_watches
                 WHERE next_check_at <= $3 AND (claimed_until IS NULL OR claimed_until <= $3)
                 ORDER BY next_check_at, account, payout_id LIMIT $4
                 FOR UPDATE SKIP LOCKED)
             UPDATE payout_watches w SET claimed_by = $1, claimed_until = $2
             FROM due WHERE w.account = due.account AND w.payout_id = due.payout_id
             RETURNING w.*",
        )
        .bind(holder)
        .bind(until)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(watch_row).collect()
    }

    async fn finish_watch(
        &self,
        watch: &PayoutWatch,
        holder: &str,
        next_check_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE payout_watches SET next_check_at = $1, checks = checks + 1, claimed_by = NULL, claimed_until = NULL
             WHERE account = $2 AND payout_id = $3 AND claimed_by = $4",
        )
        .bind(next_check_at)
        .bind(watch.account.as_str())
        .bind(&watch.payout_id)
        .bind(holder)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn next_watch_at(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(GREATEST(next_check_at, COALESCE(claimed_until, next_check_at))) FROM payout_watches",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    async fn list_payouts(&self, q: &PayoutListQuery) -> Result<Vec<(StoredPayout, Option<PayoutWatch>)>, StoreError> {
        let mut sql = sqlx::QueryBuilder::<Postgres>::new(
            "SELECT p.account, p.payout_id, p.provider, p.reference, p.status, p.provider_status, p.is_final,
                    p.amount::text AS amount, p.currency, p.fee::text AS fee, p.failure_code, p.failure_message,
                    p.created_at, p.updated_at, p.fetched_at,
                    w.first_watched_at, w.watch_until, w.next_check_at, w.checks
             FROM payouts p LEFT JOIN payout_watches w ON w.account = p.account AND w.payout_id = p.payout_id
             WHERE TRUE",
        );
        if let Some(account) = &q.account {
            sql.push(" AND p.account = ").push_bind(account.as_str());
        }
        if let Some(status) = q.status {
            sql.push(" AND p.status = ").push_bind(status.as_str());
        }
        if let Some(is_final) = q.is_final {
            sql.push(" AND p.is_final = ").push_bind(is_final);
        }
        sql.push(" ORDER BY COALESCE(p.created_at, p.fetched_at) DESC, p.account, p.payout_id LIMIT ")
            .push_bind(i64::from(q.limit));
        let rows = sql.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let stored = stored_payout(row)?;
                let watch = match row.try_get::<Option<DateTime<Utc>>, _>("first_watched_at")? {
                    None => None,
                    Some(_) => Some(watch_row(row)?),
                };
                Ok((stored, watch))
            })
            .collect()
    }

    async fn record_callback(&self, r: &CallbackReceipt) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO callback_receipts (received_at, account, provider, verified, outcome, payout_id, status, error)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(r.received_at)
        .bind(r.account.as_str())
        .bind(r.provider.as_str())
        .bind(r.verified)
        .bind(r.outcome.as_str())
        .bind(r.payout_id.as_deref())
        .bind(r.status.map(PayoutStatus::as_str))
        .bind(r.error.as_deref())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn callbacks(&self, account: Option<&AccountId>, limit: u32) -> Result<Vec<CallbackReceipt>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM callback_receipts WHERE $1::TEXT IS NULL OR account = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(account.map(AccountId::as_str))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(receipt_row).collect()
    }

    async fn prune_callbacks(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM callback_receipts WHERE id IN
                 (SELECT id FROM callback_receipts WHERE received_at < $1 ORDER BY id LIMIT $2)",
        )
        .bind(before)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn close(&self) {
        // The listeners hold pooled connections; the pool closes only once they are returned.
        if let Some((_, listener)) = self.cluster.events.get() {
            listener.abort();
        }
        if let Some(listener) = self.events_listener.get() {
            listener.abort();
        }
        self.pool.close().await;
    }

    fn cluster(&self) -> Option<Arc<dyn Cluster>> {
        Some(Arc::clone(&self.cluster) as Arc<dyn Cluster>)
    }
}

#[async_trait]
impl Cluster for PostgresCluster {
    async fn try_lease(&self, account: &AccountId, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let granted: Option<String> = sqlx::query_scalar(
            "INSERT INTO fetch_leases (account, holder, expires_at) VALUES ($1, $2, now() + make_interval(secs => $3))
             ON CONFLICT (account) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
             WHERE fetch_leases.expires_at < now()
             RETURNING holder",
        )
        .bind(account.as_str())
        .bind(holder)
        .bind(ttl.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?;
        Ok(granted.is_some())
    }

    async fn renew_lease(&self, account: &AccountId, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let renewed = sqlx::query(
            "UPDATE fetch_leases SET expires_at = now() + make_interval(secs => $3) WHERE account = $1 AND holder = $2",
        )
        .bind(account.as_str())
        .bind(holder)
        .bind(ttl.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(renewed.rows_affected() == 1)
    }

    async fn release_lease(&self, account: &AccountId, holder: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM fetch_leases WHERE account = $1 AND holder = $2")
            .bind(account.as_str())
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn record_failure(
        &self,
        account: &AccountId,
        failure: &FailedFetch,
        threshold: u32,
    ) -> Result<SharedFailure, StoreError> {
        let mut tx = self.pool.begin().await?;
        // One statement, so concurrent failures (replicas fetching alone while the store was
        // unreachable) each count once.
        let row = sqlx::query(
            "INSERT INTO fetch_failures (account, code, message, upstream_status, failed_at, consecutive_failures, opened_at,
                                         unhealthy_since)
             VALUES ($1, $2, $3, $4, $5, 1, CASE WHEN $6::integer <= 1 THEN $5::timestamptz END,
                     CASE WHEN $6::integer <= 1 THEN $5::timestamptz END)
             ON CONFLICT (account) DO UPDATE SET code = $2, message = $3, upstream_status = $4, failed_at = $5,
                 consecutive_failures = fetch_failures.consecutive_failures + 1,
                 opened_at = CASE WHEN fetch_failures.opened_at IS NOT NULL
                                    OR fetch_failures.consecutive_failures + 1 >= $6::integer
                                  THEN $5::timestamptz END,
                 unhealthy_since = CASE WHEN fetch_failures.opened_at IS NOT NULL
                                          OR fetch_failures.consecutive_failures + 1 >= $6::integer
                                        THEN COALESCE(fetch_failures.unhealthy_since, fetch_failures.opened_at,
                                                      $5::timestamptz) END
             RETURNING code, message, upstream_status, failed_at, consecutive_failures, opened_at",
        )
        .bind(account.as_str())
        .bind(&failure.code)
        .bind(&failure.message)
        .bind(failure.upstream_status.map(i32::from))
        .bind(failure.failed_at)
        .bind(i32::try_from(threshold).unwrap_or(i32::MAX))
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("SELECT pg_notify($1, $2)").bind(FETCH_EVENTS).bind(account.as_str()).execute(&mut *tx).await?;
        tx.commit().await?;
        shared_failure(&row)
    }

    async fn last_failure(&self, account: &AccountId) -> Result<Option<SharedFailure>, StoreError> {
        let row = sqlx::query(
            "SELECT code, message, upstream_status, failed_at, consecutive_failures, opened_at
             FROM fetch_failures WHERE account = $1",
        )
        .bind(account.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(shared_failure).transpose()
    }

    async fn draw_call(
        &self,
        account: &AccountId,
        now: DateTime<Utc>,
        limit: Option<u32>,
    ) -> Result<Result<(), CallDenied>, StoreError> {
        let window = TimeDelta::from_std(BUDGET_WINDOW).expect("a minute is a TimeDelta");
        // A window that started at or before this ended by now.
        let ended_if_started_by = now.checked_sub_signed(window).unwrap_or(DateTime::<Utc>::MIN_UTC);
        let granted = match limit {
            // Unlimited: nothing to count, only a pause to respect.
            None => {
                sqlx::query_scalar::<_, bool>(
                    "SELECT NOT EXISTS (SELECT 1 FROM upstream_budgets WHERE account = $1 AND paused_until > $2)",
                )
                .bind(account.as_str())
                .bind(now)
                .fetch_one(&self.pool)
                .await?
            }
            // One statement decides and counts: the row is locked by the upsert, so calls drawn
            // at once by several replicas are counted one after the other, each against the
            // count the previous one left.
            Some(limit) => sqlx::query_scalar::<_, i32>(
                "INSERT INTO upstream_budgets AS b (account, window_start, calls) VALUES ($1, $2, 1)
                 ON CONFLICT (account) DO UPDATE SET
                     window_start = CASE WHEN b.window_start > $3 THEN b.window_start ELSE $2 END,
                     calls = CASE WHEN b.window_start > $3 THEN b.calls + 1 ELSE 1 END
                 WHERE (b.paused_until IS NULL OR b.paused_until <= $2)
                   AND (b.window_start IS NULL OR b.window_start <= $3 OR b.calls < $4)
                 RETURNING 1",
            )
            .bind(account.as_str())
            .bind(now)
            .bind(ended_if_started_by)
            .bind(i64::from(limit))
            .fetch_optional(&self.pool)
            .await?
            .is_some(),
        };
        if granted {
            return Ok(Ok(()));
        }
        // Denied: say until when, from the row as it is now (advice for Retry-After only).
        let row: Option<(Option<DateTime<Utc>>, Option<DateTime<Utc>>)> =
            sqlx::query_as("SELECT window_start, paused_until FROM upstream_budgets WHERE account = $1")
                .bind(account.as_str())
                .fetch_optional(&self.pool)
                .await?;
        let (window_start, paused_until) = row.unwrap_or_default();
        Ok(Err(match paused_until.filter(|&until| until > now) {
            Some(until) => CallDenied::Paused { until },
            None => CallDenied::Exhausted {
                until: window_start.and_then(|s| s.checked_add_signed(window)).unwrap_or(now).max(now),
            },
        }))
    }

    async fn pause_calls(&self, account: &AccountId, until: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO upstream_budgets AS b (account, paused_until) VALUES ($1, $2)
             ON CONFLICT (account) DO UPDATE SET paused_until = GREATEST(b.paused_until, $2)",
        )
        .bind(account.as_str())
        .bind(until)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    fn fetch_events(&self) -> broadcast::Receiver<String> {
        let (sender, _) = self.events.get_or_init(|| {
            let (sender, _) = broadcast::channel(1024);
            let forward = sender.clone();
            let listener = tokio::spawn(listen(self.pool.clone(), FETCH_EVENTS, move |payload| {
                let _ = forward.send(payload);
            }));
            (sender, listener)
        });
        sender.subscribe()
    }
}

/// Hands the payloads of `NOTIFY channel` to `forward`, reconnecting after errors (one attempt a
/// second at most): `tally_fetches` for fetch announcements, `tally_events` for events.
async fn listen(pool: PgPool, channel: &'static str, forward: impl Fn(String) + Send + 'static) {
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => match listener.listen(channel).await {
                Ok(()) => loop {
                    match listener.recv().await {
                        Ok(n) => forward(n.payload().to_owned()),
                        Err(e) => {
                            tracing::warn!(error = %e, channel, "lost a LISTEN connection; reconnecting");
                            break;
                        }
                    }
                },
                Err(e) => tracing::warn!(error = %e, channel, "could not LISTEN"),
            },
            Err(e) => tracing::debug!(error = %e, channel, "no connection for a LISTEN yet"),
        }
        if pool.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
