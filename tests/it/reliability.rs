//! The store under trouble: a full disk, hostile query text, a store that hangs at start, a
//! SQLite file deleted under tally.

use std::str::FromStr;
use std::sync::Arc;

use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use tally::domain::{BalanceEntry, Provider, RawJson, parse_decimal};
use tally::store::sqlite::SqliteStore;
use tally::store::{AccountSnapshot, Store};

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

/// Another connection to the file, with no page budget: the operator freeing space.
async fn operator(db: &TestDb) -> SqliteConnection {
    SqliteConnection::connect(db.url()).await.unwrap()
}

#[tokio::test]
async fn sqlite_writes_recover_by_themselves_once_a_full_disk_has_space_again() {
    let db = TestDb::sqlite();
    let unlimited = db.store();
    unlimited.migrate().await.unwrap();
    // Room that can be given back later: about 64 KiB of another account's payload.
    unlimited.record_balances(&bulky("filler", 64)).await.unwrap();
    let mut op = operator(&db).await;
    let pages: u64 = sqlx::query_scalar("PRAGMA page_count").fetch_one(&mut op).await.unwrap();

    let store = store_with_page_budget(&db, pages);
    store.check_ready().await.expect("a full disk still answers reads");
    // Every pooled connection meets the full disk, more than once.
    for _ in 0..4 {
        let full = store.record_balances(&bulky("leanx-main", 32)).await.expect_err("no room for new pages");
        assert!(full.to_string().contains("database or disk is full"), "{full}");
    }

    // Space comes back.
    sqlx::query("DELETE FROM account_snapshots WHERE account = 'filler'").execute(&mut op).await.unwrap();
    for _ in 0..4 {
        store.record_balances(&bulky("leanx-main", 32)).await.expect("writes go through again, without a restart");
    }
    let latest = store.latest_balances(&"leanx-main".parse().unwrap()).await.unwrap();
    assert!(latest.is_some());
}
