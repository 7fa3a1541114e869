//! The store under trouble: a full disk, hostile query text, a store that hangs at start, a
//! SQLite file deleted under tally.

use std::str::FromStr;
use std::sync::Arc;

use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use tally::clock::ManualClock;
use tally::domain::{BalanceEntry, Provider, RawJson, parse_decimal};
use tally::providers::{DEFAULT_MAX_RESPONSE_BYTES, UpstreamHttp};
use tally::service::Service;
use tally::store::sqlite::SqliteStore;
use tally::store::{AccountSnapshot, MigrationGate, Store};
use wiremock::ResponseTemplate;

use crate::helpers::{TestDb, t0};

/// A snapshot of `account` whose raw payload takes about `kib` KiB: new pages in the file.
fn bulky(account: &str, kib: usize) -> AccountSnapshot {
    let raw = format!(r#"{{"filler":"{}"}}"#, "x".repeat(kib * 1024));
    AccountSnapshot {
        account: account.parse().unwrap(),
        provider: Provider::Leanx,
        fetched_at: t0(),
        entries: vec![BalanceEntry {
            wallet: "prefund".into(),
            currency: "MYR".parse().unwrap(),
            available: Some(parse_decimal("1.00").unwrap()),
            pending: None,
            reserved: None,
            total: None,
            blocked: false,
        }],
        raw: Some(RawJson::parse(&raw).unwrap()),
    }
}

/// A SQLite store whose connections may not grow the file beyond `pages`: a full disk, without
/// filling one. Space comes back when rows are deleted (their pages are reused).
fn store_with_page_budget(db: &TestDb, pages: u64) -> Arc<dyn Store> {
    let options = SqliteConnectOptions::from_str(db.url()).unwrap().pragma("max_page_count", pages.to_string());
    Arc::new(SqliteStore::with_options(options, 2))
}

/// A migrated SQLite store already as large as its page budget lets it be (a full disk), and
/// the operator's own connection, with no budget, that frees space by deleting the filler.
async fn full_disk(db: &TestDb) -> (Arc<dyn Store>, SqliteConnection) {
    let unlimited = db.store();
    unlimited.migrate().await.unwrap();
    // Room that can be given back later: about 64 KiB of another account's payload.
    unlimited.record_balances(&bulky("filler", 64), &[]).await.unwrap();
    let mut operator = SqliteConnection::connect(db.url()).await.unwrap();
    let pages: u64 = sqlx::query_scalar("PRAGMA page_count").fetch_one(&mut operator).await.unwrap();
    (store_with_page_budget(db, pages), operator)
}

/// Space comes back: the operator deletes the filler, whose pages are reused.
async fn free_space(operator: &mut SqliteConnection) {
    sqlx::query("DELETE FROM account_snapshots WHERE account = 'filler'").execute(operator).await.unwrap();
}

#[tokio::test]
async fn sqlite_writes_recover_by_themselves_once_a_full_disk_has_space_again() {
    let db = TestDb::sqlite();
    let (store, mut operator) = full_disk(&db).await;
    store.check_ready().await.expect("a full disk still answers reads");
    // Every pooled connection meets the full disk, more than once.
    for _ in 0..4 {
        let full = store.record_balances(&bulky("leanx-main", 32), &[]).await.expect_err("no room for new pages");
        assert!(full.to_string().contains("database or disk is full"), "{full}");
    }

    free_space(&mut operator).await;
    for _ in 0..4 {
        store.record_balances(&bulky("leanx-main", 32), &[]).await.expect("writes go through again, without a restart");
    }
    let latest = store.latest_balances(&"leanx-main".parse().unwrap()).await.unwrap();
    assert!(latest.is_some());
}

/// tally's router over `store` (already migrated), served on 127.0.0.1:0: for a store only a
/// test can open, such as one with a page budget. Returns the base URL.
async fn serve_on(store: Arc<dyn Store>, extra: &str) -> String {
    let settings = tally::config::from_toml(extra).unwrap();
    let migrations = Arc::new(MigrationGate::new(Arc::clone(&store)));
    migrations.ensure().await.expect("the store is migrated");
    let clock = Arc::new(ManualClock::new(t0()));
    let service = Service::new(&settings, store, clock, &UpstreamHttp::new(DEFAULT_MAX_RESPONSE_BYTES));
    let state = tally::http::AppState::new(service, migrations, &settings, tally::telemetry::metrics_handle());
    let router = tally::http::router(state, &settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
}

async fn status(url: String) -> u16 {
    reqwest::get(url).await.expect("tally answers").status().as_u16()
}

#[tokio::test]
async fn readyz_reports_a_store_that_refuses_writes_and_is_ready_again_once_it_takes_them() {
    let db = TestDb::sqlite();
    let (store, mut operator) = full_disk(&db).await;

    // A LeanX answer with 32 KiB more in it: its stored payload needs new pages.
    let padded = crate::helpers::leanx_body("2.25", "1.50").replacen(
        '{',
        &format!(r#"{{"padding":"{}","#, "x".repeat(32 * 1024)),
        1,
    );
    let upstream = crate::helpers::leanx(ResponseTemplate::new(200).set_body_raw(padded, "application/json")).await;
    let extra = format!(
        "[[accounts]]\nid = \"disk-full\"\nprovider = \"leanx\"\nbase_url = \"{}\"\nauth_token = \"tok\"\n",
        upstream.uri()
    );
    let base = serve_on(Arc::clone(&store), &extra).await;
    assert_eq!(status(format!("{base}/readyz")).await, 200, "nothing has failed yet");

    // The figures are served live, but their write meets the full disk.
    assert_eq!(status(format!("{base}/balances?max_age=0")).await, 200);
    let answer = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(answer.status(), 503, "a store that refuses writes is not ready");
    let problem: serde_json::Value = serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap();
    assert_eq!(problem["code"], "not_ready");
    assert_eq!(status(format!("{base}/readyz")).await, 503, "still full: the probe write fails too");

    // Space comes back: ready again with no write from any request, then writes land.
    free_space(&mut operator).await;
    assert_eq!(status(format!("{base}/readyz")).await, 200, "the probe write went through");
    assert_eq!(status(format!("{base}/balances?max_age=0")).await, 200);
    let stored = store.latest_balances(&"disk-full".parse().unwrap()).await.unwrap();
    assert!(stored.is_some(), "the next fetch is stored");
}

/// Query text tally refuses: control characters, NUL first of all (PostgreSQL cannot hold it).
async fn control_characters_in_history_query_text_are_a_bad_request_and_never_mark_the_store_failing(db: &TestDb) {
    let upstream = crate::helpers::leanx(crate::helpers::ok("2.25", "1.50")).await;
    let extra = format!(
        "[[accounts]]\nid = \"nul-probe-{}\"\nprovider = \"leanx\"\nbase_url = \"{}\"\nauth_token = \"tok\"\n",
        db.kind(),
        upstream.uri()
    );
    let app = crate::helpers::TestApp::spawn(db.url(), &extra).await;
    for query in [
        "wallet=pre%00fund",
        "wallet=%00",
        "wallet=a%0Ab",
        "wallet=%7F",
        "wallet=%C2%85",
        "account=nul-probe%00",
        "currency=US%00D",
        "from=2026-11-22T08:00:00Z%00",
    ] {
        let r = app.get(&format!("/balances/history?{query}")).await;
        let status = r.status().as_u16();
        assert_eq!(r.headers()["content-type"], "application/problem+json", "{query}");
        let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!((status, body["code"].as_str()), (400, Some("invalid_query")), "{query}: {body}");
        assert!(app.service.store_health().last_error().is_none(), "{query} marked the store failing");
    }
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = app.get_json("/balances/history?wallet=pre%20fund%C3%A9").await;
    assert_eq!(status, 200, "spaces and letters beyond ASCII are text like any other");
}

/// Below the HTTP layer: a value the database cannot hold is the query's fault, never an
/// outage, whatever reaches the store.
async fn a_value_the_store_cannot_hold_is_a_query_error_not_an_outage(db: &TestDb) {
    let store = db.store();
    store.migrate().await.unwrap();
    let query = tally::store::HistoryQuery { wallet: Some("pre\0fund".into()), limit: 10, ..Default::default() };
    match store.balance_history(&query).await {
        Ok(points) => assert!(points.is_empty()),
        Err(tally::store::StoreError::InvalidInput(_)) => {}
        Err(other) => panic!("a NUL in a filter is not an outage: {other:?}"),
    }
}

crate::both_stores!(
    control_characters_in_history_query_text_are_a_bad_request_and_never_mark_the_store_failing,
    a_value_the_store_cannot_hold_is_a_query_error_not_an_outage,
);

/// Paused time: the runtime's clock moves only when every task waits, straight to the next
/// timer, so what start-up waits on the store is counted exactly, whatever the machine's load.
#[tokio::test(start_paused = true)]
async fn with_a_store_that_hangs_start_up_waits_on_it_for_one_3_s_budget_in_all() {
    let Some(db) = TestDb::postgres().await else { return };
    let proxy = crate::helpers::StallingProxy::start(&db).await;
    proxy.stall();
    // Migrations and the warm-up each used to wait their own 3 s (6 s in all). A budget of 3 s
    // for the whole wait, and a little for the rest: the outer bound fires first if the
    // start-up waits on the store any longer.
    let starting = crate::helpers::TestApp::spawn(proxy.url(), "");
    let app = tokio::time::timeout(std::time::Duration::from_millis(3100), starting)
        .await
        .expect("start-up waits on a hanging store for 3 s in all, then listens");
    assert_eq!(app.get_json("/healthz").await.0, 200, "alive");
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!((status, body["code"].as_str()), (503, Some("not_ready")), "and not ready: {body}");
}

#[tokio::test]
async fn readyz_reports_a_sqlite_file_deleted_or_replaced_under_tally() {
    let db = TestDb::sqlite();
    let app = crate::helpers::TestApp::spawn(db.url(), "").await;
    assert_eq!(app.get_json("/readyz").await.0, 200);
    let path = std::path::PathBuf::from(db.url().trim_start_matches("sqlite://"));

    std::fs::remove_file(&path).unwrap();
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!((status, body["code"].as_str()), (503, Some("not_ready")), "the file is gone: {body}");

    // Another file at the same path (a restore, or a new empty store): not the one tally
    // opened, and tally does not switch to it.
    let other = db.store();
    other.migrate().await.unwrap();
    other.close().await;
    assert!(path.exists());
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!((status, body["code"].as_str()), (503, Some("not_ready")), "the file was replaced: {body}");
}

#[tokio::test]
async fn a_sqlite_store_opens_no_connection_to_another_file_at_its_path() {
    let db = TestDb::sqlite();
    let store = db.store();
    // Migrating records the file, and closes the connection it used: none is left idle.
    store.migrate().await.unwrap();
    // A connection still on the old file, as a running tally has: the file lives on (and its
    // inode number cannot be given to the next file at the path).
    let _still_open = SqliteConnection::connect(db.url()).await.unwrap();
    let path = std::path::PathBuf::from(db.url().trim_start_matches("sqlite://"));
    std::fs::remove_file(&path).unwrap();
    // A new connection opens (SQLite creates) another file at the path: refused, until the
    // pool gives up waiting for one.
    let refused = store.latest_balances(&"leanx-main".parse().unwrap()).await.expect_err("not another file");
    assert!(refused.to_string().contains("timed out waiting for a connection"), "{refused}");
    let not_ready = store.check_ready().await.expect_err("not the file it opened");
    assert!(not_ready.to_string().contains("replaced"), "{not_ready}");
}
