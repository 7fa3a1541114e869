//! Events (SPEC §8.1, §8.4): stored in the transaction of the change they report, the feed
//! with its cursor, filters and long-poll, the ordering promise on PostgreSQL, retention.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use serde_json::{Value, json};
use tally::domain::event::NewEvent;
use tally::domain::{BalanceEntry, Payout, PayoutStatus, Provider, parse_decimal};
use tally::store::{AccountSnapshot, EventQuery, HistoryQuery, Store, StoredPayout};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::both_stores;
use crate::helpers::{BALANCE_PATH, Script, TestApp, TestDb, eventually, ok, t0};

/// An outer bound for what must happen at once: generous, never asserted as an elapsed time.
const BOUND: Duration = Duration::from_secs(20);

fn entry(wallet: &str, available: &str) -> BalanceEntry {
    BalanceEntry::single_figure(wallet, "MYR".parse().unwrap(), parse_decimal(available).unwrap())
}

fn snapshot(account: &str, at: chrono::DateTime<chrono::Utc>, entries: Vec<BalanceEntry>) -> AccountSnapshot {
    AccountSnapshot { account: account.parse().unwrap(), provider: Provider::Leanx, fetched_at: at, entries, raw: None }
}

fn payout(id: &str, status: PayoutStatus, provider_status: &str, is_final: bool) -> Payout {
    Payout {
        id: id.into(),
        reference: Some("INV-1".into()),
        status,
        provider_status: provider_status.into(),
        is_final,
        amount: Some(parse_decimal("13.00").unwrap()),
        currency: Some("MYR".parse().unwrap()),
        fee: Some(parse_decimal("0.00").unwrap()),
        failure: None,
        created_at: None,
        updated_at: None,
    }
}

async fn migrated(db: &TestDb) -> Arc<dyn Store> {
    let store = db.store();
    store.migrate().await.expect("migrations apply");
    store
}

async fn all_events(store: &dyn Store) -> Vec<tally::domain::event::Event> {
    store.events(&EventQuery { limit: 1000, ..Default::default() }).await.unwrap()
}

fn of_kind<'a>(events: &'a [tally::domain::event::Event], kind: &str) -> Vec<&'a tally::domain::event::Event> {
    events.iter().filter(|e| e.kind == kind).collect()
}

async fn one_balance_changed_per_real_change_in_the_same_write(db: &TestDb) {
    let store = migrated(db).await;
    store
        .record_balances(
            &snapshot("leanx-main", t0(), vec![entry("prefund", "1.00"), entry("transaction", "2.00")]),
            &[],
        )
        .await
        .unwrap();
    let events = all_events(store.as_ref()).await;
    let points = store.balance_history(&HistoryQuery { limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(points.len(), 2);
    assert_eq!(of_kind(&events, "balance.changed").len(), 2, "the first figure of each series is a change");
    assert_eq!(events[0].data["previous"], Value::Null);
    assert_eq!(
        events[0].data["current"],
        json!({"available": "1.00", "pending": null, "reserved": null, "total": "1.00", "blocked": false})
    );
    assert_eq!(events[0].data["account"], "leanx-main");
    assert_eq!(events[0].data["provider"], "leanx");
    assert_eq!(events[0].data["wallet"], "prefund");
    assert_eq!(events[0].data["currency"], "MYR");
    assert_eq!(events[0].timestamp, t0());

    // Unchanged figures: no change point, no event.
    let later = t0() + TimeDelta::seconds(30);
    store
        .record_balances(
            &snapshot("leanx-main", later, vec![entry("prefund", "1.00"), entry("transaction", "2.00")]),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(all_events(store.as_ref()).await.len(), 2, "an unchanged figure raises nothing");
    let points = store.balance_history(&HistoryQuery { limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(points.len(), 2, "and stores no change point");

    // One changed figure (the scale counts): one point, one event, with what it follows.
    let last = t0() + TimeDelta::seconds(60);
    store
        .record_balances(
            &snapshot("leanx-main", last, vec![entry("prefund", "1.0"), entry("transaction", "2.00")]),
            &[],
        )
        .await
        .unwrap();
    let events = all_events(store.as_ref()).await;
    let points = store.balance_history(&HistoryQuery { limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(points.len(), 3);
    assert_eq!(events.len(), 3, "every change point has its event, and no event is without one");
    let changed = &events[2];
    assert_eq!(changed.data["previous"]["available"], "1.00");
    assert_eq!(changed.data["current"]["available"], "1.0");
    assert_eq!(changed.data["observed_at"], json!(last));
    assert!(events.windows(2).all(|w| w[0].id < w[1].id), "ids are in feed order");
    for e in &events {
        assert_eq!(store.event(tally::domain::event::event_seq(&e.id).unwrap()).await.unwrap().as_ref(), Some(e));
    }
}

async fn payout_events_on_first_sight_on_status_changes_and_when_final(db: &TestDb) {
    let store = migrated(db).await;
    let saved = |p: Payout, secs: i64| StoredPayout {
        account: "leanx-main".parse().unwrap(),
        provider: Provider::Leanx,
        payout: p,
        fetched_at: t0() + TimeDelta::seconds(secs),
    };
    store.save_payout(&saved(payout("P1", PayoutStatus::Pending, "PENDING", false), 0), "lookup").await.unwrap();
    let events = all_events(store.as_ref()).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, "payout.status_changed");
    assert_eq!(events[0].data["previous_status"], Value::Null);
    assert_eq!(events[0].data["payout"]["id"], "P1");
    assert_eq!(events[0].data["payout"]["status"], "pending");
    assert_eq!(events[0].data["payout"]["amount"], "13.00");
    assert_eq!(events[0].data["payout"]["fee"], "0.00");
    assert_eq!(events[0].data["payout"]["final"], false);
    assert_eq!(events[0].data["payout"]["stale"], false);

    // Seen again unchanged, or with only the provider's own status moved: no event.
    store.save_payout(&saved(payout("P1", PayoutStatus::Pending, "PENDING", false), 10), "lookup").await.unwrap();
    store.save_payout(&saved(payout("P1", PayoutStatus::Pending, "QUEUED", false), 20), "lookup").await.unwrap();
    assert_eq!(all_events(store.as_ref()).await.len(), 1, "no normalized status change, no event");

    store.save_payout(&saved(payout("P1", PayoutStatus::Succeeded, "SUCCESS", true), 30), "lookup").await.unwrap();
    let events = all_events(store.as_ref()).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["payout.status_changed", "payout.status_changed", "payout.finalized"]);
    for e in &events[1..] {
        assert_eq!(e.data["previous_status"], "pending");
        assert_eq!(e.data["payout"]["status"], "succeeded");
        assert_eq!(e.data["payout"]["final"], true);
        assert_eq!(e.timestamp, t0() + TimeDelta::seconds(30));
    }
}

/// Runs one statement on the test database, beside the store (as an operator's client would).
async fn execute(db: &TestDb, sql: &'static str) {
    use sqlx::Connection;
    match db.kind() {
        "sqlite" => {
            let mut conn = sqlx::SqliteConnection::connect(db.url()).await.unwrap();
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
        _ => {
            let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
    }
}

/// A change whose event cannot be written is not stored either: the change point, the
/// payout's new status and their events commit together or not at all.
async fn a_change_is_never_stored_without_its_event(db: &TestDb) {
    let store = migrated(db).await;
    store.record_balances(&snapshot("leanx-main", t0(), vec![entry("prefund", "1.00")]), &[]).await.unwrap();
    let history = || async { store.balance_history(&HistoryQuery { limit: 100, ..Default::default() }).await.unwrap() };
    assert_eq!(history().await.len(), 1);

    // The events table refuses every write (gone): the writes that would raise an event fail
    // whole, and those that raise none still go through.
    // On PostgreSQL the webhook deliveries' foreign key must go with it (CASCADE drops that
    // constraint, not the deliveries).
    execute(db, if db.kind() == "postgres" { "DROP TABLE events CASCADE" } else { "DROP TABLE events" }).await;
    let changed = snapshot("leanx-main", t0() + TimeDelta::seconds(10), vec![entry("prefund", "2.00")]);
    assert!(store.record_balances(&changed, &[]).await.is_err(), "the event could not be written");
    assert_eq!(history().await.len(), 1, "so the change point was not stored either");
    let latest = store.latest_balances(&"leanx-main".parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(latest.fetched_at, t0(), "nor the snapshot");
    let unchanged = snapshot("leanx-main", t0() + TimeDelta::seconds(20), vec![entry("prefund", "1.00")]);
    store.record_balances(&unchanged, &[]).await.expect("an unchanged figure writes no event");
    let p = StoredPayout {
        account: "leanx-main".parse().unwrap(),
        provider: Provider::Leanx,
        payout: payout("P7", PayoutStatus::Pending, "PENDING", false),
        fetched_at: t0(),
    };
    assert!(store.save_payout(&p, "lookup").await.is_err());
    assert_eq!(store.find_payout(&"leanx-main".parse().unwrap(), "P7").await.unwrap(), None, "nor the payout");
}

both_stores!(
    a_change_is_never_stored_without_its_event,
    one_balance_changed_per_real_change_in_the_same_write,
    payout_events_on_first_sight_on_status_changes_and_when_final,
    the_feed_pages_by_cursor_filters_and_bounds_its_limit,
    the_feed_answers_a_wait_as_soon_as_an_event_lands,
    a_circuit_opening_raises_unhealthy_once_then_recovered,
    events_past_retention_are_pruned_by_the_injected_clock,
);

fn account(id: &str, uri: &str, extra: &str) -> String {
    format!(
        "[[accounts]]\nid = \"{id}\"\nprovider = \"leanx\"\nbase_url = \"{uri}\"\nauth_token = \"tok\"\nmax_retries = 0\n{extra}\n"
    )
}

fn ids(body: &Value) -> Vec<String> {
    body["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect()
}

async fn the_feed_pages_by_cursor_filters_and_bounds_its_limit(db: &TestDb) {
    let accounts =
        format!("{}{}", account("feed-a", "http://127.0.0.1:9", ""), account("feed-b", "http://127.0.0.1:9", ""));
    let app = TestApp::spawn(db.url(), &accounts).await;
    let store = db.store();
    store.record_balances(&snapshot("feed-a", t0(), vec![entry("prefund", "1.00")]), &[]).await.unwrap();
    store
        .record_balances(&snapshot("feed-a", t0() + TimeDelta::seconds(1), vec![entry("prefund", "2.00")]), &[])
        .await
        .unwrap();
    store.record_balances(&snapshot("feed-b", t0(), vec![entry("prefund", "3.00")]), &[]).await.unwrap();
    let p = StoredPayout {
        account: "feed-a".parse().unwrap(),
        provider: Provider::Leanx,
        payout: payout("P9", PayoutStatus::Pending, "PENDING", false),
        fetched_at: t0(),
    };
    store.save_payout(&p, "lookup").await.unwrap();

    let (status, all) = app.get_json("/events").await;
    assert_eq!(status, 200, "{all}");
    let every = ids(&all);
    assert_eq!(every.len(), 4);
    assert_eq!(all["next"], every[3].as_str());
    assert_eq!(all["events"][0]["type"], "balance.changed");
    assert_eq!(all["events"][0]["timestamp"], "2026-11-22T08:00:00Z");

    // Following `next` page by page sees every event once, in order.
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let after = next.as_ref().map(|n| format!("&after={n}")).unwrap_or_default();
        let (status, page) = app.get_json(&format!("/events?limit=3{after}")).await;
        assert_eq!(status, 200);
        let got = ids(&page);
        if got.is_empty() {
            assert_eq!(page["next"].as_str(), next.as_deref(), "no event: `next` is the `after` given");
            break;
        }
        seen.extend(got);
        next = page["next"].as_str().map(str::to_owned);
    }
    assert_eq!(seen, every);

    let count = |body: &Value| body["events"].as_array().unwrap().len();
    assert_eq!(count(&app.get_json("/events?type=payout.status_changed").await.1), 1);
    assert_eq!(count(&app.get_json("/events?account=feed-b").await.1), 1);
    assert_eq!(count(&app.get_json("/events?account=feed-a,feed-b").await.1), 4);
    assert_eq!(count(&app.get_json("/events?account=feed-a&account=feed-b").await.1), 4);
    assert_eq!(count(&app.get_json("/events?type=balance.changed&account=feed-a").await.1), 2);
    assert_eq!(count(&app.get_json("/events?type=balance.changed,payout.status_changed&account=feed-a").await.1), 3);

    for (query, code) in [
        ("limit=0", "invalid_limit"),
        ("limit=1001", "invalid_limit"),
        ("wait=31", "invalid_query"),
        ("account=", "invalid_query"),
        ("type=balance.changed,", "invalid_query"),
        ("type=balance.exploded", "unknown_event_type"),
        ("account=nobody", "unknown_account"),
        ("after=bal_1", "invalid_query"),
        ("colour=red", "unknown_parameter"),
    ] {
        let (status, body) = app.get_json(&format!("/events?{query}")).await;
        assert_eq!((status, body["code"].as_str()), (400, Some(code)), "{query}: {body}");
    }
    assert_eq!(count(&app.get_json("/events?limit=1000").await.1), 4);

    let (status, one) = app.get_json(&format!("/events/{}", every[3])).await;
    assert_eq!(status, 200);
    assert_eq!(one["event"], all["events"][3]);
    assert_eq!(one["deliveries"], json!([]));
    for unknown in ["evt_9999999999999999999", "nothing"] {
        let (status, body) = app.get_json(&format!("/events/{unknown}")).await;
        assert_eq!((status, body["code"].as_str()), (404, Some("event_not_found")));
    }
    app.stop().await;
}

async fn the_feed_answers_a_wait_as_soon_as_an_event_lands(db: &TestDb) {
    let server = MockServer::start().await;
    let script = Script::new(vec![ok("1.00", "2.00"), ok("5.00", "2.00")]);
    Mock::given(method("POST")).and(path(BALANCE_PATH)).respond_with(script).mount(&server).await;
    let id = format!("wait-{}", db.kind());
    let app = TestApp::spawn(db.url(), &account(&id, &server.uri(), "")).await;
    assert_eq!(app.get("/balances?max_age=0").await.status(), 200);
    let (_, first) = app.get_json("/events").await;
    let after = first["next"].as_str().unwrap().to_owned();

    // Nothing new: a wait of 0 answers at once with nothing.
    let (_, none) = app.get_json(&format!("/events?after={after}&wait=0")).await;
    assert_eq!(ids(&none), Vec::<String>::new());

    // A request waiting (30 s at most), then a change: the answer carries the change.
    let (http, url) = (app.http.clone(), format!("{}/events?after={after}&wait=30", app.base));
    let waiting = tokio::spawn(async move {
        http.get(url).send().await.unwrap().bytes().await.map(|b| serde_json::from_slice::<Value>(&b).unwrap()).unwrap()
    });
    app.advance(Duration::from_secs(5));
    assert_eq!(app.get("/balances?max_age=0").await.status(), 200);
    let answer = tokio::time::timeout(BOUND, waiting).await.expect("answered when the event landed").unwrap();
    let events = answer["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{answer}");
    assert_eq!(events[0]["data"]["current"]["available"], "5.00");
    assert_eq!(answer["next"], events[0]["id"]);
    app.stop().await;
}

#[tokio::test]
async fn events_max_wait_answers_a_longer_wait_empty_at_its_bound() {
    let db = TestDb::sqlite();
    // With the default (30 s) this request would outlast the outer bound below.
    let app = TestApp::spawn(db.url(), "[events]\nmax_wait = \"1s\"\n").await;
    let answered = tokio::time::timeout(BOUND, app.get_json("/events?wait=30")).await;
    let (status, body) = answered.expect("answered at max_wait, not after the 30 s asked");
    assert_eq!(status, 200);
    assert_eq!(ids(&body), Vec::<String>::new());
}

async fn a_circuit_opening_raises_unhealthy_once_then_recovered(db: &TestDb) {
    let server = MockServer::start().await;
    let failure = ResponseTemplate::new(503);
    let script = Script::new(vec![failure.clone(), failure.clone(), failure, ok("1.00", "2.00")]);
    Mock::given(method("POST")).and(path(BALANCE_PATH)).respond_with(script).mount(&server).await;
    let id = format!("circuit-{}", db.kind());
    let extra = "circuit_failure_threshold = 2\ncircuit_cooldown = \"30s\"";
    let app = TestApp::spawn(db.url(), &account(&id, &server.uri(), extra)).await;
    for _ in 0..3 {
        app.get("/balances?max_age=0").await;
    }
    let (_, health) = app.get_json("/events?type=account.unhealthy,account.recovered").await;
    let events = health["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "one opening, one event; a refusal while open raises nothing: {health}");
    assert_eq!(events[0]["type"], "account.unhealthy");
    assert_eq!(events[0]["data"]["account"], id.as_str());
    assert_eq!(events[0]["data"]["provider"], "leanx");
    assert_eq!(events[0]["data"]["error"]["code"], "upstream_unavailable");
    assert_eq!(events[0]["data"]["last_success_at"], Value::Null);

    // A failed probe re-opens the circuit: the account was already unhealthy, nothing new.
    app.advance(Duration::from_secs(31));
    app.get("/balances?max_age=0").await;
    app.advance(Duration::from_secs(31));
    assert_eq!(app.get("/balances?max_age=0").await.status(), 200, "the next probe succeeds");
    app.advance(Duration::from_secs(1));
    assert_eq!(app.get("/balances?max_age=0").await.status(), 200);
    let (_, health) = app.get_json("/events?type=account.unhealthy,account.recovered").await;
    let events = health["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["account.unhealthy", "account.recovered"], "recovered once, on the first success");
    assert_eq!(events[1]["data"]["unhealthy_since"], events[0]["timestamp"], "since the first opening");
    assert_eq!(events[1]["data"]["recovered_at"], json!(t0() + TimeDelta::seconds(62)));
    app.stop().await;
}

async fn events_past_retention_are_pruned_by_the_injected_clock(db: &TestDb) {
    let server = MockServer::start().await;
    let script = Script::new(vec![ok("1.00", "2.00"), ok("3.00", "2.00")]);
    Mock::given(method("POST")).and(path(BALANCE_PATH)).respond_with(script).mount(&server).await;
    let id = format!("prune-{}", db.kind());
    let config = format!("{}\n[events]\nretention = \"1h\"\n", account(&id, &server.uri(), ""));
    let app = TestApp::spawn(db.url(), &config).await;
    app.get("/balances?max_age=0").await;
    assert_eq!(app.service.prune_events().await.unwrap(), 0, "nothing is older than an hour");
    app.advance(Duration::from_secs(3600 + 1));
    app.get("/balances?max_age=0").await;
    assert_eq!(ids(&app.get_json("/events").await.1).len(), 3);
    assert_eq!(app.service.prune_events().await.unwrap(), 2, "the first fetch's two events are past retention");
    let (_, kept) = app.get_json("/events").await;
    let events = kept["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"]["current"]["available"], "3.00");
    app.stop().await;
}

/// The ordering promise with concurrent writers: a transaction holds its event uncommitted
/// while another writes one; a reader following the feed sees neither until the first commits,
/// then both, the first first, and never skips one.
#[tokio::test]
async fn postgres_a_reader_never_skips_an_event_committed_late() {
    use sqlx::Connection;
    let Some(db) = TestDb::postgres().await else { return };
    let store = migrated(&db).await;
    let event = |n: u32| NewEvent {
        kind: "balance.changed",
        account: "leanx-main".parse().unwrap(),
        timestamp: t0(),
        data: json!({"n": n}),
    };
    let read_after = |after: Option<i64>| {
        let store = Arc::clone(&store);
        async move { store.events(&EventQuery { after, limit: 100, ..Default::default() }).await.unwrap() }
    };

    // The first writer draws its position and holds its transaction open.
    let mut first_conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let mut first = first_conn.begin().await.unwrap();
    let first_seq = tally::store::postgres::insert_events(&mut first, &[event(1)], &[]).await.unwrap()[0];

    // The second writer, on another connection, starts its transaction and writes its event.
    let url = db.url().to_owned();
    let second = tokio::spawn(async move {
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        let seq = tally::store::postgres::insert_events(&mut tx, &[event(2)], &[]).await.unwrap()[0];
        tx.commit().await.unwrap();
        seq
    });
    // It waits for the first to end before it may draw a position (visible in pg_locks).
    let probe = sqlx::PgPool::connect(db.url()).await.unwrap();
    eventually("the second writer waits for the first", BOUND, || {
        let probe = probe.clone();
        async move {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .fetch_one(&probe)
            .await
            .unwrap();
            waiting == 1
        }
    })
    .await;
    assert!(!second.is_finished());
    assert_eq!(read_after(None).await, vec![], "nothing committed, nothing shown");

    first.commit().await.unwrap();
    let second_seq = tokio::time::timeout(BOUND, second).await.expect("the second writer goes on").unwrap();
    assert!(second_seq > first_seq, "positions are drawn in commit order");

    let feed = read_after(None).await;
    let order: Vec<&Value> = feed.iter().map(|e| &e.data["n"]).collect();
    assert_eq!(order, [&json!(1), &json!(2)], "every event once, in commit order");
    let after_first = tally::domain::event::event_seq(&feed[0].id);
    assert_eq!(read_after(after_first).await.len(), 1, "a reader that saw the first sees the second next");
}

/// Replicas share the feed: an event committed through one store instance wakes a waiter of
/// another (`LISTEN tally_events`), not only through its own process's signal.
#[tokio::test]
async fn postgres_a_waiter_is_woken_by_another_replica_s_event() {
    let Some(db) = TestDb::postgres().await else { return };
    let here = migrated(&db).await;
    let there = db.store();
    let mut signal = here.event_signal();
    let event = NewEvent {
        kind: "account.recovered",
        account: "leanx-main".parse().unwrap(),
        timestamp: t0(),
        data: json!({}),
    };
    // The listener starts with the first subscription: an event committed before its LISTEN
    // is in place is missed, so events are written until one wakes this replica.
    let woken = tokio::time::timeout(BOUND, async {
        loop {
            there.append_event(&event).await.unwrap();
            if tokio::time::timeout(Duration::from_millis(500), signal.changed()).await.is_ok() {
                return;
            }
        }
    })
    .await;
    assert!(woken.is_ok(), "another replica's event wakes this one");
}

/// Two replicas on one PostgreSQL: a request waiting on one is answered by a change stored by
/// the other.
#[tokio::test]
async fn postgres_the_feed_wait_is_answered_by_another_replica_s_change() {
    let Some(db) = TestDb::postgres().await else { return };
    let server = MockServer::start().await;
    let script = Script::new(vec![ok("1.00", "2.00"), ok("7.00", "2.00")]);
    Mock::given(method("POST")).and(path(BALANCE_PATH)).respond_with(script).mount(&server).await;
    let config = account("replica-wait", &server.uri(), "");
    let (a, b) = (TestApp::spawn(db.url(), &config).await, TestApp::spawn(db.url(), &config).await);
    a.get("/balances?max_age=0").await;
    let after = a.get_json("/events").await.1["next"].as_str().unwrap().to_owned();
    let (http, url) = (a.http.clone(), format!("{}/events?after={after}&wait=30", a.base));
    let waiting = tokio::spawn(async move {
        http.get(url).send().await.unwrap().bytes().await.map(|b| serde_json::from_slice::<Value>(&b).unwrap()).unwrap()
    });
    b.advance(Duration::from_secs(5));
    assert_eq!(b.get("/balances?max_age=0").await.status(), 200);
    let answer = tokio::time::timeout(BOUND, waiting).await.expect("answered when the event landed").unwrap();
    assert_eq!(answer["events"][0]["data"]["current"]["available"], "7.00", "{answer}");
    a.stop().await;
    b.stop().await;
}

/// Two replicas fail in turn: the shared circuit opens once, and one event says so.
#[tokio::test]
async fn postgres_one_opening_across_replicas_raises_one_event() {
    let Some(db) = TestDb::postgres().await else { return };
    let server = MockServer::start().await;
    Mock::given(method("POST")).and(path(BALANCE_PATH)).respond_with(ResponseTemplate::new(503)).mount(&server).await;
    let config = account("replica-circuit", &server.uri(), "circuit_failure_threshold = 2\ncircuit_cooldown = \"30s\"");
    let (a, b) = (TestApp::spawn(db.url(), &config).await, TestApp::spawn(db.url(), &config).await);
    a.get("/balances?max_age=0").await;
    b.get("/balances?max_age=0").await;
    a.get("/balances?max_age=0").await;
    b.get("/balances?max_age=0").await;
    let (_, feed) = a.get_json("/events?type=account.unhealthy").await;
    assert_eq!(feed["events"].as_array().unwrap().len(), 1, "{feed}");
    a.stop().await;
    b.stop().await;
}
