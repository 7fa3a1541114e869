//! The payout watch (SPEC §9.1) over HTTP: LeanX faked by wiremock, time moved by the app's
//! injected clock, the watcher's finished lookups counted (never slept on).

use std::time::Duration;

use serde_json::Value;
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::both_stores;
use crate::helpers::{Script, TestApp, TestDb, more_checks, t0};

const LEANX_PAYOUT: &str = "/api/v1/merchant/get-payout-transaction-by-id";

fn leanx_payout(id: &str, status: &str) -> ResponseTemplate {
    let body = format!(
        r#"{{"response_code":2000,"description":"SUCCESS","data":{{"payout_invoice_no":"{id}","transaction_status":"{status}","value":13.00,"transaction_fee":0.00,"created_at":"2023-12-05T17:43:07","updated_at":"2023-12-05T17:44:05"}},"breakdown_errors":null,"token":""}}"#
    );
    ResponseTemplate::new(200).set_body_raw(body, "application/json")
}

/// A LeanX account named `id` on `server`, and the watch settings.
fn config(id: &str, server: &MockServer, payouts: &str) -> String {
    format!(
        "[payouts]\n{payouts}\n\n[[accounts]]\nid = \"{id}\"\nprovider = \"leanx\"\nbase_url = \"{}\"\nauth_token = \"t\"\ntimeout = \"1s\"\n",
        server.uri()
    )
}

/// Answers for one payout id, in order (the last repeated).
async fn answering(server: &MockServer, id: &str, script: &Script) {
    Mock::given(method("POST"))
        .and(path(LEANX_PAYOUT))
        .and(query_param("_id", id))
        .respond_with(script.clone())
        .mount(server)
        .await;
}

fn encoded(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>().replace('+', "%20")
}

fn at(offset_secs: i64) -> String {
    (t0() + chrono::TimeDelta::seconds(offset_secs)).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

async fn listed(app: &TestApp, account: &str) -> Vec<Value> {
    let (status, body) = app.get_json(&format!("/payouts?account={account}")).await;
    assert_eq!(status, 200, "{body}");
    body["payouts"].as_array().expect("a list").clone()
}

both_stores!(
    a_pending_payout_that_fails_upstream_is_found_by_the_watch_with_no_caller_asking,
    a_watch_ends_at_watch_for,
    watches_survive_a_restart,
    a_watch_by_reference_moves_to_the_provider_s_id_keeping_its_schedule,
);

async fn a_pending_payout_that_fails_upstream_is_found_by_the_watch_with_no_caller_asking(db: &TestDb) {
    let id = "PAYOUT-W1:000001-LEANX";
    let account = format!("watch-fails-{}", db.kind());
    let server = MockServer::start().await;
    let script = Script::new(vec![leanx_payout(id, "PENDING"), leanx_payout(id, "FAILED")]);
    answering(&server, id, &script).await;
    let app = TestApp::spawn(db.url(), &config(&account, &server, "watch_schedule = [\"30s\", \"1m\"]")).await;
    let mut checks = app.service.watch_checks();

    let (status, body) = app.get_json(&format!("/payouts/{}?account={account}", encoded(id))).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("pending")), "{body}");
    let payouts = listed(&app, &account).await;
    assert_eq!(payouts.len(), 1);
    assert_eq!(payouts[0]["watched"], true, "a payout seen pending is watched");
    assert_eq!(payouts[0]["next_check_at"], at(30), "first checked 30 s after it was seen");

    // LeanX sends no callback for a failure: only the watch can learn of it.
    app.advance(Duration::from_secs(30));
    more_checks(&mut checks, 1).await;
    assert_eq!(script.calls().len(), 2, "one lookup by the watch");
    let payouts = listed(&app, &account).await;
    assert_eq!(payouts[0]["status"], "failed");
    assert_eq!(payouts[0]["final"], true);
    assert_eq!(payouts[0]["watched"], false, "a final payout is no longer watched");
    assert_eq!(payouts[0]["next_check_at"], Value::Null);

    let (_, events) = app.get_json(&format!("/events?account={account}&type=payout.finalized")).await;
    let events = events["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"]["previous_status"], "pending");
    assert_eq!(events[0]["data"]["payout"]["status"], "failed");
    let transitions = db.store().payout_transitions(&account.parse().unwrap(), id).await.unwrap();
    let sources: Vec<_> = transitions.iter().map(|t| (t.status.as_str(), t.source.as_str())).collect();
    assert_eq!(sources, [("pending", "lookup"), ("failed", "watch")]);
}

async fn a_watch_ends_at_watch_for(db: &TestDb) {
    let id = "PAYOUT-W2:000002-LEANX";
    let account = format!("watch-ends-{}", db.kind());
    let server = MockServer::start().await;
    let script = Script::new(vec![leanx_payout(id, "PENDING")]);
    answering(&server, id, &script).await;
    let settings = "watch_schedule = [\"1m\"]\nwatch_for = \"3m\"";
    let app = TestApp::spawn(db.url(), &config(&account, &server, settings)).await;
    let mut checks = app.service.watch_checks();

    let r =
        app.http.post(format!("{}/payouts/{}/watch?account={account}", app.base, encoded(id))).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["id"], id);
    assert_eq!(body["account"], account.as_str());
    assert_eq!(body["status"], Value::Null, "not found yet: no status");
    assert_eq!(body["final"], false);
    assert_eq!(body["next_check_at"], at(60));
    assert_eq!(body["watch_until"], at(180));
    assert_eq!(script.calls().len(), 0, "watching asks nothing of the provider");

    for minute in 1..=3 {
        app.advance(Duration::from_secs(60));
        more_checks(&mut checks, 1).await;
        assert_eq!(script.calls().len(), minute, "one lookup a minute");
    }
    let payouts = listed(&app, &account).await;
    assert_eq!(payouts[0]["status"], "pending", "never final");
    assert_eq!(payouts[0]["watched"], false, "the watch ended at watch_for");
    let watch = db.store().payout_watch(&account.parse().unwrap(), id).await.unwrap();
    assert_eq!(watch, None, "nothing left to look up");
}

async fn watches_survive_a_restart(db: &TestDb) {
    let id = "PAYOUT-W3:000003-LEANX";
    let account = format!("watch-restart-{}", db.kind());
    let server = MockServer::start().await;
    let script = Script::new(vec![leanx_payout(id, "SUCCESS")]);
    answering(&server, id, &script).await;
    let toml = config(&account, &server, "");
    let first = TestApp::spawn(db.url(), &toml).await;
    let r = first.http.post(format!("{}/payouts/{}/watch?account={account}", first.base, encoded(id))).send().await;
    assert_eq!(r.unwrap().status(), 202);
    first.stop().await;

    let second = TestApp::spawn(db.url(), &toml).await;
    let mut checks = second.service.watch_checks();
    second.advance(Duration::from_secs(30));
    more_checks(&mut checks, 1).await;
    assert_eq!(script.calls().len(), 1, "the restarted service looked the watched payout up");
    let payouts = listed(&second, &account).await;
    assert_eq!(payouts[0]["status"], "succeeded");
    assert_eq!(payouts[0]["watched"], false);
}

/// Two replicas on one PostgreSQL, each with its own clock moved past the due time: every due
/// watch is looked up once, by one of them.
#[tokio::test]
async fn two_replicas_make_one_lookup_per_due_watch() {
    let Some(db) = TestDb::postgres().await else { return };
    let account = "watch-replicas";
    let server = MockServer::start().await;
    let ids: Vec<String> = (1..=6).map(|i| format!("PAYOUT-R{i}:00000{i}-LEANX")).collect();
    for id in &ids {
        Mock::given(method("POST"))
            .and(path(LEANX_PAYOUT))
            .and(query_param("_id", id.as_str()))
            .respond_with(leanx_payout(id, "PENDING"))
            .mount(&server)
            .await;
    }
    let toml = config(account, &server, "");
    let a = TestApp::spawn(db.url(), &toml).await;
    let b = TestApp::spawn(db.url(), &toml).await;
    for id in &ids {
        let r = a.http.post(format!("{}/payouts/{}/watch?account={account}", a.base, encoded(id))).send().await;
        assert_eq!(r.unwrap().status(), 202);
    }
    let (mut checks_a, mut checks_b) = (a.service.watch_checks(), b.service.watch_checks());
    checks_a.borrow_and_update();
    checks_b.borrow_and_update();
    b.advance(Duration::from_secs(30));
    a.advance(Duration::from_secs(30));
    let done = |a: &tokio::sync::watch::Receiver<u64>, b: &tokio::sync::watch::Receiver<u64>| *a.borrow() + *b.borrow();
    tokio::time::timeout(Duration::from_secs(20), async {
        while done(&checks_a, &checks_b) < ids.len() as u64 {
            tokio::select! {
                _ = checks_a.changed() => {}
                _ = checks_b.changed() => {}
            }
        }
    })
    .await
    .expect("every due watch is checked");
    assert_eq!(done(&checks_a, &checks_b), ids.len() as u64, "one check per due watch");
    assert_eq!(server.received_requests().await.unwrap().len(), ids.len(), "one lookup per due watch");
    let payouts = listed(&a, account).await;
    assert_eq!(payouts.len(), ids.len());
    for p in &payouts {
        assert_eq!(p["watched"], true, "pending: still watched");
        assert_eq!(p["next_check_at"], at(90), "next at the schedule's second delay");
    }
}

#[tokio::test]
async fn watching_names_an_account_that_looks_payouts_up() {
    let db = TestDb::sqlite();
    let server = MockServer::start().await;
    let app = TestApp::spawn(db.url(), &config("watch-query", &server, "")).await;
    let post = |path: String| {
        let http = app.http.clone();
        let url = format!("{}{path}", app.base);
        async move {
            let r = http.post(url).send().await.unwrap();
            let status = r.status().as_u16();
            (status, serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap())
        }
    };
    let (status, body) = post("/payouts/X/watch".into()).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_query")), "`account` is required");
    let (status, body) = post("/payouts/X/watch?account=nope".into()).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("unknown_account")));
    let (status, body) = app.get_json("/payouts?status=lost").await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_status")));
    let (status, body) = app.get_json("/payouts?final=maybe").await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_query")));
    let (status, body) = app.get_json("/payouts?limit=0").await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_limit")));
    let (status, body) = app.get_json("/payouts").await;
    assert_eq!((status, body), (200, serde_json::json!({"payouts": []})));
}

async fn a_watch_by_reference_moves_to_the_provider_s_id_keeping_its_schedule(db: &TestDb) {
    let (reference, id) = ("INVOICE-W4", "PAYOUT-W4:000004-LEANX");
    let account = format!("watch-reference-{}", db.kind());
    let server = MockServer::start().await;
    let script = Script::new(vec![leanx_payout(id, "PENDING")]);
    answering(&server, reference, &script).await;
    let settings = "watch_schedule = [\"30s\", \"1m\"]\nwatch_for = \"10m\"";
    let app = TestApp::spawn(db.url(), &config(&account, &server, settings)).await;
    let mut checks = app.service.watch_checks();
    let url = format!("{}/payouts/{reference}/watch?account={account}", app.base);
    assert_eq!(app.http.post(url).send().await.unwrap().status(), 202);

    app.advance(Duration::from_secs(30));
    more_checks(&mut checks, 1).await;
    let payouts = listed(&app, &account).await;
    assert_eq!(payouts[0]["id"], id);
    assert_eq!(payouts[0]["watched"], true);
    assert_eq!(payouts[0]["next_check_at"], at(90), "the schedule's second delay after its first check");
    let store = db.store();
    let account_id = account.parse().unwrap();
    assert_eq!(store.payout_watch(&account_id, reference).await.unwrap(), None, "the reference's watch ended");
    let moved = store.payout_watch(&account_id, id).await.unwrap().expect("watched under the provider's id");
    assert_eq!((moved.first_watched_at, moved.watch_until), (t0(), t0() + chrono::TimeDelta::minutes(10)));
}
