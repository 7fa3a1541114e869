//! Balance monitors (SPEC §8.2): crossing, staying, clearing and crossing again through the
//! real service against a fake provider whose figure the test changes; the first figure
//! already low; a restart and another replica never fire again; a monitor added while tally
//! was down fires once at start; `GET /monitors`, `/balances` `alerts` and the gauge.

use std::time::Duration;

use chrono::TimeDelta;
use serde_json::{Value, json};
use tally::domain::monitor::{Condition, Field, Monitor, State};
use tally::domain::{BalanceEntry, Provider, parse_decimal};
use tally::store::{AccountSnapshot, EventQuery, Store};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer};

use crate::both_stores;
use crate::helpers::{BALANCE_PATH, Script, TestApp, TestDb, ok, t0};

fn account(id: &str, uri: &str) -> String {
    format!(
        "[[accounts]]\nid = \"{id}\"\nprovider = \"leanx\"\nbase_url = \"{uri}\"\nauth_token = \"tok\"\nmax_retries = 0\n"
    )
}

/// A monitor on the prefund wallet of `account`: below 500.00, clear at 750.00.
fn prefund_low(account: &str) -> String {
    format!(
        "[[monitors]]\nid = \"prefund-low\"\naccount = \"{account}\"\nwallet = \"prefund\"\ncurrency = \"MYR\"\n\
         below = \"500.00\"\nclear = \"750.00\"\n"
    )
}

/// A fake LeanX answering the prefund figures in order (the last repeated).
async fn provider(prefunds: &[&str]) -> MockServer {
    let server = MockServer::start().await;
    let answers = prefunds.iter().map(|p| ok(p, "10.00")).collect();
    Mock::given(method("POST")).and(path(BALANCE_PATH)).respond_with(Script::new(answers)).mount(&server).await;
    server
}

/// One live fetch, a little later than the last.
async fn fetch(app: &TestApp) -> Value {
    app.advance(Duration::from_secs(5));
    let (status, body) = app.get_json("/balances?max_age=0").await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn threshold_events(app: &TestApp) -> Vec<Value> {
    let (status, feed) = app.get_json("/events?type=balance.threshold_crossed,balance.threshold_cleared").await;
    assert_eq!(status, 200, "{feed}");
    feed["events"].as_array().unwrap().clone()
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// The value of the `tally_monitor_firing` series of `account` on `/metrics`.
async fn firing_gauge(app: &TestApp, account: &str) -> Option<f64> {
    let text = app.get("/metrics").await.text().await.unwrap();
    let wanted = format!("account=\"{account}\"");
    text.lines()
        .find(|l| l.starts_with("tally_monitor_firing{") && l.contains(&wanted))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn a_monitor_crosses_stays_low_clears_and_crosses_again(db: &TestDb) {
    let id = format!("mon-cross-{}", db.kind());
    // 800 ok; 400 crosses; 300 stays low; 600 is above the threshold but under clear: still
    // firing; 750.00 clears; 800 stays ok; 100 crosses again.
    let server = provider(&["800.00", "400.00", "300.00", "600.00", "750.00", "800.00", "100.00"]).await;
    let app = TestApp::spawn(db.url(), &format!("{}{}", account(&id, &server.uri()), prefund_low(&id))).await;

    let body = fetch(&app).await;
    assert_eq!(body["alerts"], json!([]), "nothing fires at 800.00");
    assert!(threshold_events(&app).await.is_empty());
    assert_eq!(firing_gauge(&app, &id).await, Some(0.0), "the entry is known, not firing");

    let body = fetch(&app).await;
    let crossed_at = t0() + TimeDelta::seconds(10);
    assert_eq!(
        body["alerts"],
        json!([{"monitor": "prefund-low", "account": id, "wallet": "prefund", "currency": "MYR", "field": "available",
                "condition": "below", "threshold": "500.00", "value": "400.00", "since": crossed_at}]),
    );
    let events = threshold_events(&app).await;
    assert_eq!(kinds(&events), ["balance.threshold_crossed"]);
    assert_eq!(
        events[0]["data"],
        json!({"monitor": "prefund-low", "account": id, "provider": "leanx", "wallet": "prefund", "currency": "MYR",
               "field": "available", "condition": "below", "threshold": "500.00", "clear": "750.00",
               "value": "400.00", "observed_at": crossed_at})
    );
    assert_eq!(events[0]["timestamp"], json!(crossed_at));
    assert_eq!(firing_gauge(&app, &id).await, Some(1.0));

    let body = fetch(&app).await; // 300.00
    assert_eq!(body["alerts"][0]["value"], "300.00", "the alert shows the latest figure");
    assert_eq!(body["alerts"][0]["since"], json!(crossed_at), "and since when it fires");
    let body = fetch(&app).await; // 600.00
    assert_eq!(body["alerts"].as_array().unwrap().len(), 1, "between threshold and clear it still fires");
    assert_eq!(kinds(&threshold_events(&app).await), ["balance.threshold_crossed"], "staying low fires nothing more");

    let body = fetch(&app).await; // 750.00
    let cleared_at = t0() + TimeDelta::seconds(25);
    assert_eq!(body["alerts"], json!([]));
    let events = threshold_events(&app).await;
    assert_eq!(kinds(&events), ["balance.threshold_crossed", "balance.threshold_cleared"]);
    assert_eq!(events[1]["data"]["value"], "750.00");
    assert_eq!(events[1]["data"]["observed_at"], json!(cleared_at));
    assert_eq!(firing_gauge(&app, &id).await, Some(0.0));

    // GET /monitors: the rule and the entry's state.
    let (status, monitors) = app.get_json("/monitors").await;
    assert_eq!(status, 200, "{monitors}");
    assert_eq!(
        monitors,
        json!({"monitors": [{
            "id": "prefund-low",
            "filter": {"account": id, "provider": null, "wallet": "prefund", "currency": "MYR"},
            "field": "available", "condition": "below", "threshold": "500.00", "clear": "750.00",
            "entries": [{"account": id, "provider": "leanx", "wallet": "prefund", "currency": "MYR", "state": "ok",
                         "value": "750.00", "since": cleared_at, "observed_at": cleared_at, "stale": false}]
        }]})
    );

    fetch(&app).await; // 800.00
    let body = fetch(&app).await; // 100.00
    assert_eq!(body["alerts"][0]["value"], "100.00");
    let events = threshold_events(&app).await;
    assert_eq!(kinds(&events), ["balance.threshold_crossed", "balance.threshold_cleared", "balance.threshold_crossed"]);

    // Alerts follow the selection: another currency selects none of this account's entries.
    let (status, usd) = app.get_json(&format!("/balances?account={id}&currency=USD")).await;
    assert_eq!((status, usd["alerts"].clone()), (200, json!([])));
    let (_, myr) = app.get_json(&format!("/balances?account={id}&currency=MYR")).await;
    assert_eq!(myr["alerts"].as_array().unwrap().len(), 1);

    // The entry goes stale once its figure is older than the account's ttl (30 s by default).
    app.advance(Duration::from_secs(31));
    let (_, monitors) = app.get_json("/monitors").await;
    assert_eq!(monitors["monitors"][0]["entries"][0]["stale"], true, "{monitors}");
    app.stop().await;
}

async fn the_first_figure_already_low_fires_and_a_restart_does_not_fire_again(db: &TestDb) {
    let id = format!("mon-restart-{}", db.kind());
    let server = provider(&["12.00"]).await;
    let config = format!("{}{}", account(&id, &server.uri()), prefund_low(&id));
    let app = TestApp::spawn(db.url(), &config).await;
    let body = fetch(&app).await;
    assert_eq!(body["alerts"][0]["value"], "12.00", "the first figure ever seen fires: {body}");
    assert_eq!(kinds(&threshold_events(&app).await), ["balance.threshold_crossed"]);
    app.stop().await;

    // A restart: the state is in the store. The stored figure evaluated again at start, and the
    // same low figure fetched again, fire nothing.
    let again = TestApp::spawn(db.url(), &config).await;
    let (status, cached) = again.get_json("/balances").await;
    assert_eq!(status, 200);
    assert_eq!(cached["alerts"][0]["value"], "12.00", "the firing state is read at start: {cached}");
    fetch(&again).await;
    assert_eq!(kinds(&threshold_events(&again).await), ["balance.threshold_crossed"], "no second crossing");
    assert_eq!(firing_gauge(&again, &id).await, Some(1.0));
    again.stop().await;
}

async fn a_monitor_added_while_tally_was_down_fires_once_at_start(db: &TestDb) {
    let id = format!("mon-added-{}", db.kind());
    let server = provider(&["40.00"]).await;
    let before = TestApp::spawn(db.url(), &account(&id, &server.uri())).await;
    let body = fetch(&before).await;
    assert_eq!(body["alerts"], json!([]), "no monitor, no alert");
    before.stop().await;

    let config = format!("{}{}", account(&id, &server.uri()), prefund_low(&id));
    let app = TestApp::spawn(db.url(), &config).await;
    let events = threshold_events(&app).await;
    assert_eq!(kinds(&events), ["balance.threshold_crossed"], "evaluated at start against the stored figure");
    assert_eq!(events[0]["data"]["value"], "40.00");
    assert_eq!(events[0]["data"]["observed_at"], json!(t0() + TimeDelta::seconds(5)), "the stored figure's time");
    let (_, cached) = app.get_json("/balances").await;
    assert_eq!(cached["alerts"].as_array().unwrap().len(), 1, "{cached}");
    app.stop().await;

    let restarted = TestApp::spawn(db.url(), &config).await;
    assert_eq!(threshold_events(&restarted).await.len(), 1, "and only once");
    restarted.stop().await;
}

fn low_monitor() -> Monitor {
    Monitor {
        id: "low".into(),
        account: None,
        provider: None,
        wallet: None,
        currency: "MYR".parse().unwrap(),
        field: Field::Available,
        condition: Condition::Below,
        threshold: parse_decimal("500").unwrap(),
        clear: parse_decimal("500").unwrap(),
    }
}

fn snapshot(at: chrono::DateTime<chrono::Utc>, available: Option<&str>) -> AccountSnapshot {
    let mut entry = BalanceEntry::single_figure("prefund", "MYR".parse().unwrap(), parse_decimal("0").unwrap());
    entry.available = available.map(|a| parse_decimal(a).unwrap());
    AccountSnapshot {
        account: "leanx-main".parse().unwrap(),
        provider: Provider::Leanx,
        fetched_at: at,
        entries: vec![entry],
        raw: None,
    }
}

async fn threshold_kinds(store: &dyn Store) -> Vec<String> {
    let query = EventQuery {
        types: vec!["balance.threshold_crossed".into(), "balance.threshold_cleared".into()],
        limit: 1000,
        ..Default::default()
    };
    store.events(&query).await.unwrap().into_iter().map(|e| e.kind).collect()
}

/// The store writes the state with the figure: null never fires, an older figure is ignored,
/// and concurrent writers of the same figure (each with its own pool, as replicas) move the
/// state once: evaluations at start (which lock the state rows only) and fetches' writes.
async fn the_store_keeps_one_state_per_entry_and_moves_it_once_under_concurrent_writes(db: &TestDb) {
    let store = db.store();
    store.migrate().await.unwrap();
    let monitors = [low_monitor()];
    let moved = store.record_balances(&snapshot(t0(), None), &monitors).await.unwrap();
    assert_eq!(moved.len(), 1);
    assert_eq!((moved[0].state.state, moved[0].state.value), (State::Ok, None), "null never fires");

    let low = snapshot(t0() + TimeDelta::seconds(10), Some("100"));
    let evaluations = (0..8).map(|_| {
        let (store, low) = (db.store(), low.clone());
        tokio::spawn(async move { store.evaluate_monitors(&low, &[low_monitor()]).await })
    });
    for e in evaluations.collect::<Vec<_>>() {
        e.await.unwrap().expect("every concurrent evaluation goes through");
    }
    assert_eq!(
        threshold_kinds(store.as_ref()).await,
        ["balance.threshold_crossed"],
        "one crossing, however many writers"
    );

    let high = snapshot(t0() + TimeDelta::seconds(20), Some("900"));
    let writes = (0..8).map(|_| {
        let (store, high) = (db.store(), high.clone());
        tokio::spawn(async move { store.record_balances(&high, &[low_monitor()]).await })
    });
    for w in writes.collect::<Vec<_>>() {
        w.await.unwrap().expect("every concurrent write goes through");
    }
    assert_eq!(threshold_kinds(store.as_ref()).await, ["balance.threshold_crossed", "balance.threshold_cleared"]);

    let older = store.record_balances(&snapshot(t0() + TimeDelta::seconds(5), Some("1")), &monitors).await.unwrap();
    assert!(older.is_empty(), "an observation older than the stored one is ignored");
    let states = store.monitor_states(None).await.unwrap();
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].state.state, State::Ok);
    assert_eq!(states[0].state.since, t0() + TimeDelta::seconds(20));
    assert_eq!(states[0].state.value, Some(parse_decimal("900").unwrap()));

    // Evaluating the stored figure again changes nothing.
    let stored = store.latest_balances(&"leanx-main".parse().unwrap()).await.unwrap().unwrap();
    store.evaluate_monitors(&stored, &monitors).await.unwrap();
    assert_eq!(threshold_kinds(store.as_ref()).await.len(), 2);
    assert!(store.monitor_states(Some(&"other".parse().unwrap())).await.unwrap().is_empty());
}

/// A crossing is stored with its event or not at all: with the events table gone, the writes
/// that would fire fail whole and the state stays; one that moves no state goes through.
async fn a_crossing_is_never_stored_without_its_event(db: &TestDb) {
    use sqlx::Connection;
    let store = db.store();
    store.migrate().await.unwrap();
    let monitors = [low_monitor()];
    store.record_balances(&snapshot(t0(), Some("900")), &monitors).await.unwrap();
    match db.kind() {
        "sqlite" => {
            let mut conn = sqlx::SqliteConnection::connect(db.url()).await.unwrap();
            sqlx::query("DROP TABLE events").execute(&mut conn).await.unwrap();
        }
        _ => {
            let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
            // CASCADE: webhook deliveries refer to their events.
            sqlx::query("DROP TABLE events CASCADE").execute(&mut conn).await.unwrap();
        }
    }
    let low = snapshot(t0() + TimeDelta::seconds(10), Some("100"));
    assert!(store.evaluate_monitors(&low, &monitors).await.is_err(), "the crossing's event could not be written");
    assert!(store.record_balances(&low, &monitors).await.is_err());
    let states = store.monitor_states(None).await.unwrap();
    assert_eq!((states[0].state.state, states[0].state.observed_at), (State::Ok, t0()), "so the state did not move");
    let same = snapshot(t0() + TimeDelta::seconds(20), Some("900"));
    let moved = store.record_balances(&same, &monitors).await.expect("no event, no failure");
    assert_eq!(moved[0].state.observed_at, t0() + TimeDelta::seconds(20));
}

both_stores!(
    a_monitor_crosses_stays_low_clears_and_crosses_again,
    the_first_figure_already_low_fires_and_a_restart_does_not_fire_again,
    a_monitor_added_while_tally_was_down_fires_once_at_start,
    the_store_keeps_one_state_per_entry_and_moves_it_once_under_concurrent_writes,
    a_crossing_is_never_stored_without_its_event,
);

/// Two replicas on one PostgreSQL, each fetching the same low figure: one crossing; the other
/// replica learns the state from the store and shows the alert too.
#[tokio::test]
async fn postgres_two_replicas_recording_the_same_low_figure_fire_once() {
    let Some(db) = TestDb::postgres().await else { return };
    let id = "mon-replicas";
    let server = provider(&["20.00"]).await;
    let config = format!("{}{}", account(id, &server.uri()), prefund_low(id));
    let (a, b) = (TestApp::spawn(db.url(), &config).await, TestApp::spawn(db.url(), &config).await);
    a.advance(Duration::from_secs(5));
    b.advance(Duration::from_secs(5));
    let (ra, rb) = tokio::join!(a.get("/balances?max_age=0"), b.get("/balances?max_age=0"));
    assert_eq!((ra.status().as_u16(), rb.status().as_u16()), (200, 200));
    fetch(&a).await;
    fetch(&b).await;
    assert_eq!(kinds(&threshold_events(&a).await), ["balance.threshold_crossed"]);
    for app in [&a, &b] {
        let (_, body) = app.get_json("/balances").await;
        assert_eq!(body["alerts"].as_array().map(Vec::len), Some(1), "{body}");
    }
    a.stop().await;
    b.stop().await;
}

/// One replica's crossing reaches another that made no fetch: following the fetch's
/// announcement, it takes the account's states from the store (what its `/balances` serves).
#[tokio::test]
async fn postgres_a_replica_takes_another_replica_s_crossing_from_the_store() {
    let Some(db) = TestDb::postgres().await else { return };
    let id = "mon-follow";
    let server = MockServer::start().await;
    let script = Script::new(vec![ok("30.00", "10.00")]);
    Mock::given(method("POST")).and(path(BALANCE_PATH)).respond_with(script.clone()).mount(&server).await;
    let config = format!("{}{}", account(id, &server.uri()), prefund_low(id));
    let (a, b) = (TestApp::spawn(db.url(), &config).await, TestApp::spawn(db.url(), &config).await);
    assert_eq!(b.service.monitor_book().firing().map(|f| f.len()), Some(0), "known, and nothing fires");
    fetch(&a).await;
    crate::helpers::eventually("the other replica takes the firing state", Duration::from_secs(20), || async {
        b.service.monitor_book().firing().is_some_and(|f| f.len() == 1)
    })
    .await;
    assert_eq!(script.calls().len(), 1, "only the first replica called the provider");
    a.stop().await;
    b.stop().await;
}

/// A store that cannot be read: `/balances` still answers, with `alerts: null` (unknown), and
/// `/monitors` is 503.
#[tokio::test]
async fn without_a_store_balances_answer_with_alerts_null() {
    let id = "mon-no-store";
    let server = provider(&["20.00"]).await;
    let config = format!("{}{}", account(id, &server.uri()), prefund_low(id));
    // Nothing listens on port 9: every store call fails at once.
    let app = TestApp::spawn("postgres://tally@127.0.0.1:9/tally", &config).await;
    let body = fetch(&app).await;
    assert_eq!(body["balances"].as_array().unwrap().len(), 2, "the live figures are served");
    assert_eq!(body["alerts"], Value::Null, "{body}");
    let (status, problem) = app.get_json("/monitors").await;
    assert_eq!((status, problem["code"].as_str()), (503, Some("not_ready")));
    app.stop().await;
}

/// The in-memory book answers `/balances` without the store: a firing state is shared by
/// reference, and entries of a monitor no longer configured are dropped.
#[test]
fn the_book_keeps_only_configured_monitors_entries() {
    use tally::domain::monitor::{EntryState, MonitorEntry};
    use tally::service::monitors::Book;
    let book = Book::new(vec![low_monitor()]);
    assert!(book.firing().is_none(), "unknown until read");
    let entry = |monitor: &str, state| MonitorEntry {
        monitor: monitor.into(),
        account: "leanx-main".parse().unwrap(),
        provider: Provider::Leanx,
        wallet: "prefund".into(),
        currency: "MYR".parse().unwrap(),
        state: EntryState { state, value: None, since: t0(), observed_at: t0() },
    };
    book.load(vec![entry("low", State::Firing), entry("removed", State::Firing)]);
    let firing = book.firing().unwrap();
    assert_eq!(firing.len(), 1);
    assert_eq!(firing[0].entry.monitor, "low");
    let mut cleared = entry("low", State::Ok);
    cleared.state.observed_at = t0() + TimeDelta::seconds(10);
    book.apply(vec![cleared.clone()]);
    assert!(book.firing().unwrap().is_empty());
    assert_eq!(firing.len(), 1, "a request holding the earlier list keeps it");

    // Writes and reads finishing out of order never take an entry back to an earlier figure.
    book.apply(vec![entry("low", State::Firing)]);
    book.load(vec![entry("low", State::Firing)]);
    book.load_account(&"leanx-main".parse().unwrap(), vec![entry("low", State::Firing)]);
    assert!(book.firing().unwrap().is_empty(), "the later observation stays");
    let mut again = cleared;
    again.state = EntryState { state: State::Firing, observed_at: t0() + TimeDelta::seconds(20), ..again.state };
    book.load_account(&"leanx-main".parse().unwrap(), vec![again]);
    assert_eq!(book.firing().unwrap().len(), 1, "a later stored state is taken");
}
