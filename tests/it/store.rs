//! The store contract, run against SQLite and PostgreSQL alike.

use chrono::{DateTime, TimeDelta, Utc};
use tally::domain::{BalanceEntry, Payout, PayoutFailure, PayoutStatus, Provider, RawJson, parse_decimal};
use tally::store::{AccountSnapshot, HistoryQuery, StoredPayout};

use crate::both_stores;
use crate::helpers::{TestDb, t0};

fn entry(wallet: &str, currency: &str, available: &str) -> BalanceEntry {
    BalanceEntry {
        wallet: wallet.into(),
        currency: currency.parse().unwrap(),
        available: Some(parse_decimal(available).unwrap()),
        pending: None,
        reserved: None,
        total: Some(parse_decimal(available).unwrap()),
        blocked: false,
    }
}

/// A provider payload with numbers f64 would change (`…94`, `0.0`).
const RAW: &str = r#"{"response_code":2000,"data":{"prefund_balance":90071992547409.93,"fee":0.00}}"#;

fn snapshot(at: DateTime<Utc>, entries: Vec<BalanceEntry>) -> AccountSnapshot {
    AccountSnapshot {
        account: "leanx-main".parse().unwrap(),
        provider: Provider::Leanx,
        fetched_at: at,
        entries,
        raw: Some(RawJson::parse(RAW).unwrap()),
    }
}

async fn migrated(db: &TestDb) -> std::sync::Arc<dyn tally::store::Store> {
    let store = db.store();
    store.migrate().await.expect("migrations apply");
    store.check_ready().await.expect("ready after migrating");
    store
}

async fn history(store: &dyn tally::store::Store) -> Vec<tally::store::HistoryPoint> {
    store.balance_history(&HistoryQuery { limit: 100, ..Default::default() }).await.unwrap()
}

async fn an_unchanged_figure_only_moves_its_confirmation_time(db: &TestDb) {
    let store = migrated(db).await;
    let first = snapshot(t0(), vec![entry("prefund", "MYR", "393.63"), entry("transaction", "MYR", "26.05")]);
    store.record_balances(&first, &[]).await.unwrap();
    let later = t0() + TimeDelta::seconds(30);
    store.record_balances(&snapshot(later, first.entries.clone()), &[]).await.unwrap();

    let points = history(store.as_ref()).await;
    assert_eq!(points.len(), 2, "no new row for unchanged figures");
    assert!(points.iter().all(|p| p.first_seen_at == t0() && p.last_confirmed_at == later));
    let latest = store.latest_balances(&"leanx-main".parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(latest.fetched_at, later);
    assert_eq!(latest.entries.len(), 2);
    assert_eq!(latest.raw.unwrap().to_string(), RAW, "the payload reads back digit for digit");
}

async fn a_changed_figure_adds_a_change_point(db: &TestDb) {
    let store = migrated(db).await;
    store.record_balances(&snapshot(t0(), vec![entry("prefund", "MYR", "393.63")]), &[]).await.unwrap();
    let later = t0() + TimeDelta::seconds(10);
    store.record_balances(&snapshot(later, vec![entry("prefund", "MYR", "380.00")]), &[]).await.unwrap();
    // Scale is part of the figure: 380.0 differs from 380.00.
    let last = t0() + TimeDelta::seconds(20);
    store.record_balances(&snapshot(last, vec![entry("prefund", "MYR", "380.0")]), &[]).await.unwrap();

    let points = history(store.as_ref()).await;
    let figures: Vec<String> = points.iter().map(|p| p.entry.available.unwrap().to_string()).collect();
    assert_eq!(figures, ["393.63", "380.00", "380.0"]);
    let latest = store.latest_balances(&"leanx-main".parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(latest.entries[0].available.unwrap().to_string(), "380.0");
}

async fn latest_per_account_holds_only_the_last_fetch(db: &TestDb) {
    let store = migrated(db).await;
    store
        .record_balances(&snapshot(t0(), vec![entry("a", "MYR", "1.00"), entry("b", "USD", "2.00")]), &[])
        .await
        .unwrap();
    // Wallet b disappeared from the provider's answer.
    let later = t0() + TimeDelta::seconds(5);
    store.record_balances(&snapshot(later, vec![entry("a", "MYR", "1.00")]), &[]).await.unwrap();
    let all = store.all_latest_balances().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].entries.iter().map(|e| e.wallet.as_str()).collect::<Vec<_>>(), ["a"]);
}

async fn history_filters_by_range_wallet_and_currency(db: &TestDb) {
    let store = migrated(db).await;
    for minute in 0..5 {
        let at = t0() + TimeDelta::minutes(minute);
        let amount = format!("{}.00", 100 + minute);
        store
            .record_balances(&snapshot(at, vec![entry("prefund", "MYR", &amount), entry("usd", "USD", "1")]), &[])
            .await
            .unwrap();
    }
    let q = HistoryQuery {
        account: Some("leanx-main".parse().unwrap()),
        wallet: Some("prefund".into()),
        currency: Some("MYR".parse().unwrap()),
        // A point counts when it was still confirmed at `from` (101.00, seen and confirmed at 1 min).
        from: Some(t0() + TimeDelta::seconds(60)),
        to: Some(t0() + TimeDelta::minutes(3)),
        limit: 100,
    };
    let points = store.balance_history(&q).await.unwrap();
    let figures: Vec<String> = points.iter().map(|p| p.entry.available.unwrap().to_string()).collect();
    assert_eq!(figures, ["101.00", "102.00", "103.00"]);
    let limited = store.balance_history(&HistoryQuery { limit: 2, ..q }).await.unwrap();
    assert_eq!(limited.len(), 2);
}

async fn exact_decimals_round_trip(db: &TestDb) {
    let store = migrated(db).await;
    let mut e = entry("1000", "USDC", "90071992547409.93");
    e.pending = Some(parse_decimal("0.12345678").unwrap());
    e.reserved = Some(parse_decimal("0.00").unwrap());
    e.blocked = true;
    store.record_balances(&snapshot(t0(), vec![e.clone()]), &[]).await.unwrap();
    let latest = store.latest_balances(&"leanx-main".parse().unwrap()).await.unwrap().unwrap();
    let got = &latest.entries[0];
    assert_eq!(got.available.unwrap().to_string(), "90071992547409.93");
    assert_eq!(got.pending.unwrap().to_string(), "0.12345678");
    assert_eq!(got.reserved.unwrap().to_string(), "0.00");
    assert!(got.blocked);
    assert!(got.same_figures(&e));
}

fn payout(status: PayoutStatus, provider_status: &str) -> Payout {
    Payout {
        id: "PAYOUT-A9D5:174307-LEANX".into(),
        reference: Some("INVOICE1234".into()),
        status,
        provider_status: provider_status.into(),
        is_final: matches!(status, PayoutStatus::Succeeded | PayoutStatus::Failed),
        amount: Some(parse_decimal("13.00").unwrap()),
        currency: Some("MYR".parse().unwrap()),
        fee: Some(parse_decimal("0.00").unwrap()),
        failure: (status == PayoutStatus::Failed)
            .then(|| PayoutFailure { code: Some("77".into()), message: "Account Verification Failed".into() }),
        created_at: Some(t0()),
        updated_at: Some(t0() + TimeDelta::seconds(58)),
    }
}

async fn payouts_upsert_and_keep_their_transitions(db: &TestDb) {
    let store = migrated(db).await;
    let account: tally::domain::AccountId = "leanx-main".parse().unwrap();
    let stored =
        |p: Payout, at| StoredPayout { account: account.clone(), provider: Provider::Leanx, payout: p, fetched_at: at };
    store.save_payout(&stored(payout(PayoutStatus::Pending, "PENDING"), t0()), "lookup").await.unwrap();
    store
        .save_payout(&stored(payout(PayoutStatus::Pending, "PENDING"), t0() + TimeDelta::seconds(5)), "lookup")
        .await
        .unwrap();
    store
        .save_payout(&stored(payout(PayoutStatus::Failed, "FAILED"), t0() + TimeDelta::seconds(9)), "lookup")
        .await
        .unwrap();

    let by_id = store.find_payout(&account, "PAYOUT-A9D5:174307-LEANX").await.unwrap().unwrap();
    let by_ref = store.find_payout(&account, "INVOICE1234").await.unwrap().unwrap();
    assert_eq!(by_id, by_ref);
    assert_eq!(by_id.payout, payout(PayoutStatus::Failed, "FAILED"));
    assert_eq!(by_id.payout.amount.unwrap().to_string(), "13.00");
    assert_eq!(by_id.fetched_at, t0() + TimeDelta::seconds(9));
    assert!(store.find_payout(&account, "nope").await.unwrap().is_none());

    let transitions = store.payout_transitions(&account, "PAYOUT-A9D5:174307-LEANX").await.unwrap();
    let seen: Vec<(&str, PayoutStatus)> = transitions.iter().map(|t| (t.provider_status.as_str(), t.status)).collect();
    assert_eq!(
        seen,
        [("PENDING", PayoutStatus::Pending), ("FAILED", PayoutStatus::Failed)],
        "a repeat adds no transition"
    );
    assert!(transitions.iter().all(|t| t.source == "lookup"));
}

async fn migrating_twice_is_harmless(db: &TestDb) {
    let store = migrated(db).await;
    store.migrate().await.expect("a second migration run is a no-op");
    store.check_ready().await.unwrap();
}

async fn a_migrated_store_takes_the_readiness_probe_write_and_keeps_nothing_of_it(db: &TestDb) {
    let store = migrated(db).await;
    store.check_writable().await.expect("a store with room takes writes");
    store.check_writable().await.expect("again: the probe leaves nothing in the way");
    assert!(store.all_latest_balances().await.unwrap().is_empty(), "no data written");
}

async fn concurrent_writes_of_many_accounts_all_land(db: &TestDb) {
    let store = migrated(db).await;
    let writes = (0..20).map(|i| {
        let store = std::sync::Arc::clone(&store);
        tokio::spawn(async move {
            let mut snap = snapshot(t0(), vec![entry("prefund", "MYR", "1.00"), entry("transaction", "MYR", "2.00")]);
            snap.account = format!("acct-{i}").parse().unwrap();
            store.record_balances(&snap, &[]).await
        })
    });
    let writes: Vec<_> = writes.collect();
    for w in writes {
        w.await.unwrap().expect("a concurrent write succeeds (no `database is locked`)");
    }
    assert_eq!(store.all_latest_balances().await.unwrap().len(), 20);
}

both_stores!(
    a_migrated_store_takes_the_readiness_probe_write_and_keeps_nothing_of_it,
    concurrent_writes_of_many_accounts_all_land,
    an_unchanged_figure_only_moves_its_confirmation_time,
    a_changed_figure_adds_a_change_point,
    latest_per_account_holds_only_the_last_fetch,
    history_filters_by_range_wallet_and_currency,
    exact_decimals_round_trip,
    payouts_upsert_and_keep_their_transitions,
    migrating_twice_is_harmless,
    a_due_watch_is_claimed_once_until_its_claim_expires,
    callback_receipts_are_listed_newest_first_and_pruned_by_age,
);

#[tokio::test]
async fn an_unmigrated_store_is_not_ready() {
    let db = TestDb::sqlite();
    let store = db.store();
    assert!(store.check_ready().await.is_err());
}

#[tokio::test]
async fn a_fetch_lease_is_held_by_exactly_one_holder() {
    let Some(db) = TestDb::postgres().await else { return };
    let store = migrated(&db).await;
    let store = store.cluster().expect("replicas coordinate through PostgreSQL");
    let account: tally::domain::AccountId = "leanx-main".parse().unwrap();
    let ttl = std::time::Duration::from_secs(60);
    // Holders are fetches: the replica's id and the fetch's number.
    assert!(store.try_lease(&account, "r1/1", ttl).await.unwrap());
    assert!(!store.try_lease(&account, "r1/2", ttl).await.unwrap(), "another fetch of the same replica waits");
    assert!(!store.try_lease(&account, "r1/1", ttl).await.unwrap(), "a lease is taken once, then renewed");
    store.release_lease(&account, "r1/2").await.unwrap();
    assert!(!store.try_lease(&account, "r2/1", ttl).await.unwrap(), "a non-holder's release frees nothing");
    assert!(store.renew_lease(&account, "r1/1", ttl).await.unwrap());
    assert!(!store.renew_lease(&account, "r1/2", ttl).await.unwrap(), "only the holder renews");
    store.release_lease(&account, "r1/1").await.unwrap();
    assert!(store.try_lease(&account, "r1/2", ttl).await.unwrap(), "released by its holder, it is free");
}

#[tokio::test]
async fn a_migration_outlives_the_readiness_checks_that_give_up_on_it() {
    let Some(db) = TestDb::postgres().await else { return };
    let proxy = crate::helpers::StallingProxy::start(&db).await;
    let settings = tally::config::from_toml(&format!("[store]\nurl = \"{}\"\n", proxy.url())).unwrap();
    let store = tally::store::open(&settings.store).unwrap();
    let gate = std::sync::Arc::new(tally::store::MigrationGate::new(std::sync::Arc::clone(&store)));

    // The store hangs: a caller stops waiting, as /readyz does after 3 s. Cancelling the
    // migration itself could leave its connection holding the migration lock; the attempt
    // carries on and finishes once the store answers, with nobody waiting for it.
    proxy.stall();
    let gave_up = tokio::time::timeout(std::time::Duration::from_millis(100), gate.ensure()).await;
    assert!(gave_up.is_err(), "the store was held");
    proxy.resume();
    crate::helpers::eventually("the attempt finishes", std::time::Duration::from_secs(10), || async { gate.is_done() })
        .await;
    store.check_ready().await.expect("migrated and ready");
    gate.ensure().await.expect("done stays done");
}

#[tokio::test]
async fn tally_starts_listening_while_its_migrations_wait_and_is_ready_once_they_ran() {
    use sqlx::Connection;
    let Some(db) = TestDb::postgres().await else { return };
    db.store().migrate().await.unwrap();
    // Another session holds the migrations table, as a replica migrating at the same moment
    // would: tally's own migration waits on it, after its connection is made.
    let mut holder = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let mut held = holder.begin().await.unwrap();
    sqlx::query("LOCK TABLE _sqlx_migrations IN ACCESS EXCLUSIVE MODE").execute(&mut *held).await.unwrap();

    let starting = crate::helpers::TestApp::spawn(db.url(), "");
    let app = tokio::time::timeout(std::time::Duration::from_secs(20), starting).await.expect("tally starts");
    assert_eq!(app.get_json("/healthz").await.0, 200);
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!((status, body["code"].as_str()), (503, Some("not_ready")));
    held.commit().await.unwrap();
    crate::helpers::eventually("ready once the migrations ran", std::time::Duration::from_secs(20), || async {
        app.get_json("/readyz").await.0 == 200
    })
    .await;
}

#[tokio::test]
async fn only_a_store_shared_by_replicas_coordinates_them() {
    let sqlite = TestDb::sqlite();
    assert!(sqlite.store().cluster().is_none(), "a SQLite file belongs to one process");
    let Some(db) = TestDb::postgres().await else { return };
    assert!(db.store().cluster().is_some());
}

async fn a_due_watch_is_claimed_once_until_its_claim_expires(db: &TestDb) {
    let store = migrated(db).await;
    let account: tally::domain::AccountId = "leanx-main".parse().unwrap();
    let (until, due) = (t0() + TimeDelta::days(7), t0() + TimeDelta::seconds(30));
    let watch = store.watch_payout(&account, "P1", t0(), until, due).await.unwrap();
    let again = store.watch_payout(&account, "P1", due, until + TimeDelta::days(1), due).await.unwrap();
    assert_eq!(again, watch, "watching a watched payout keeps its watch");
    assert_eq!(store.next_watch_at().await.unwrap(), Some(due));

    assert!(store.claim_watches("a", t0(), t0() + TimeDelta::minutes(1), 10).await.unwrap().is_empty(), "not due");
    let claim_until = due + TimeDelta::minutes(1);
    let claimed = store.claim_watches("a", due, claim_until, 10).await.unwrap();
    assert_eq!(claimed, std::slice::from_ref(&watch));
    assert!(store.claim_watches("b", due, claim_until, 10).await.unwrap().is_empty(), "claimed by a");
    assert_eq!(store.next_watch_at().await.unwrap(), Some(claim_until), "due again when the claim expires");
    let taken_over = store.claim_watches("b", claim_until, claim_until + TimeDelta::minutes(1), 10).await.unwrap();
    assert_eq!(taken_over.len(), 1, "a claim whose holder died is taken over");

    let next = claim_until + TimeDelta::minutes(2);
    store.finish_watch(&watch, "a", next).await.unwrap();
    assert_eq!(store.payout_watch(&account, "P1").await.unwrap().unwrap().checks, 0, "only the holder finishes");
    store.finish_watch(&watch, "b", next).await.unwrap();
    let finished = store.payout_watch(&account, "P1").await.unwrap().unwrap();
    assert_eq!((finished.checks, finished.next_check_at), (1, next));
    assert_eq!(store.next_watch_at().await.unwrap(), Some(next));

    store.unwatch_payout(&account, "P1").await.unwrap();
    assert_eq!(store.payout_watch(&account, "P1").await.unwrap(), None);
    assert_eq!(store.next_watch_at().await.unwrap(), None);
}

async fn callback_receipts_are_listed_newest_first_and_pruned_by_age(db: &TestDb) {
    use tally::store::{CallbackOutcome, CallbackReceipt};
    let store = migrated(db).await;
    let receipt = |minutes: i64, account: &str, outcome: CallbackOutcome| CallbackReceipt {
        received_at: t0() + TimeDelta::minutes(minutes),
        account: account.parse().unwrap(),
        provider: Provider::Leanx,
        verified: outcome != CallbackOutcome::Rejected,
        outcome,
        payout_id: Some(format!("P{minutes}")),
        status: Some(PayoutStatus::Pending),
        error: None,
    };
    let receipts = [
        receipt(0, "leanx-main", CallbackOutcome::Applied),
        receipt(1, "leanx-ops", CallbackOutcome::Rejected),
        receipt(2, "leanx-main", CallbackOutcome::Duplicate),
    ];
    for r in &receipts {
        store.record_callback(r).await.unwrap();
    }
    let all = store.callbacks(None, 10).await.unwrap();
    assert_eq!(all, [receipts[2].clone(), receipts[1].clone(), receipts[0].clone()]);
    let main = store.callbacks(Some(&"leanx-main".parse().unwrap()), 1).await.unwrap();
    assert_eq!(main, [receipts[2].clone()]);
    assert_eq!(store.prune_callbacks(t0() + TimeDelta::seconds(90), 10).await.unwrap(), 2);
    assert_eq!(store.callbacks(None, 10).await.unwrap(), [receipts[2].clone()]);
}
