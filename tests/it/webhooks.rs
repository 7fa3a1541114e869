//! Webhooks (SPEC §8.3, §8.4): signed deliveries to receivers that are real HTTP servers on
//! port 0, verified with the Standard Webhooks library (an independent implementation);
//! retries driven by the injected clock; claims, restarts and replicas through a real store.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::both_stores;
use crate::helpers::{TestApp, TestDb, t0};

/// An outer bound for what must happen at once: generous, never asserted as an elapsed time.
const BOUND: Duration = Duration::from_secs(20);

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const PREVIOUS: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// How the receiver answers one request.
#[derive(Clone, Copy, Debug)]
enum Reply {
    Status(u16),
    /// A status with `Retry-After: <seconds>`.
    RetryAfter(u16, u64),
    /// No answer until the gate opens, then 200.
    Hang,
}

/// One request the receiver got.
#[derive(Debug)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_else(|| panic!("no {name} header"))
    }

    fn id(&self) -> &str {
        self.header("webhook-id")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// Checks the signature header as the Standard Webhooks library computes it, for each of
    /// `secrets` (each must be one of the space-separated signatures), and that it holds
    /// exactly that many signatures.
    fn assert_signed_by(&self, secrets: &[&str]) {
        let header = self.header("webhook-signature");
        let sent: Vec<&str> = header.split(' ').collect();
        assert_eq!(sent.len(), secrets.len(), "one signature per secret: {header}");
        let timestamp: i64 = self.header("webhook-timestamp").parse().expect("unix seconds");
        for secret in secrets {
            let expected =
                standardwebhooks::Webhook::new(secret).unwrap().sign(self.id(), timestamp, &self.body).unwrap();
            assert!(sent.contains(&expected.as_str()), "no signature by {secret}'s key in {header}");
        }
    }
}

struct ReceiverState {
    script: Vec<Reply>,
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    gate: watch::Sender<bool>,
    seen: mpsc::UnboundedSender<Received>,
}

/// A webhook receiver on 127.0.0.1:0 answering with `script` (its last reply repeated), and
/// recording each request on a channel.
struct Receiver {
    url: String,
    state: Arc<ReceiverState>,
    seen: mpsc::UnboundedReceiver<Received>,
}

struct InFlight(Arc<ReceiverState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn receive(State(state): State<Arc<ReceiverState>>, headers: HeaderMap, body: Bytes) -> Response {
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let _guard = InFlight(Arc::clone(&state));
    let n = state.calls.fetch_add(1, Ordering::SeqCst);
    let reply = state.script[n.min(state.script.len() - 1)];
    let _ = state.seen.send(Received { headers, body });
    match reply {
        Reply::Status(s) => StatusCode::from_u16(s).unwrap().into_response(),
        Reply::RetryAfter(s, secs) => {
            (StatusCode::from_u16(s).unwrap(), [("retry-after", secs.to_string())]).into_response()
        }
        Reply::Hang => {
            let mut gate = state.gate.subscribe();
            let _ = gate.wait_for(|open| *open).await;
            StatusCode::OK.into_response()
        }
    }
}

impl Receiver {
    async fn start(script: Vec<Reply>) -> Self {
        let (tx, seen) = mpsc::unbounded_channel();
        let state = Arc::new(ReceiverState {
            script,
            calls: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            gate: watch::Sender::new(false),
            seen: tx,
        });
        let router = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { url, state, seen }
    }

    /// The next request (bounded).
    async fn next(&mut self) -> Received {
        tokio::time::timeout(BOUND, self.seen.recv()).await.expect("a request within the bound").expect("open")
    }

    fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    fn open_gate(&self) {
        self.state.gate.send_replace(true);
    }
}

fn hook(id: &str, url: &str, extra: &str) -> String {
    format!(
        "[[webhooks]]\nid = \"{id}\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\nretry_schedule = [\"1s\", \"2s\"]\n{extra}\n"
    )
}

/// Waits (bounded) until the app has finished `n` attempts in all.
async fn attempts_done(app: &TestApp, n: u64) {
    let mut done = app.service.webhooks().attempts_done();
    tokio::time::timeout(BOUND, done.wait_for(|d| *d >= n)).await.expect("attempts finish").expect("running");
}

async fn post(app: &TestApp, path: &str) -> (u16, Value) {
    let r = app.http.post(format!("{}{}", app.base, path)).send().await.expect("the app answers");
    let status = r.status().as_u16();
    (status, serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null))
}

/// `POST /webhooks/{id}/test`: the event's id.
async fn test_event(app: &TestApp, webhook: &str) -> String {
    let (status, body) = post(app, &format!("/webhooks/{webhook}/test")).await;
    assert_eq!(status, 202, "{body}");
    body["id"].as_str().expect("the event").to_owned()
}

async fn deliveries(app: &TestApp, event: &str) -> Vec<Value> {
    let (status, body) = app.get_json(&format!("/events/{event}")).await;
    assert_eq!(status, 200, "{body}");
    body["deliveries"].as_array().unwrap().clone()
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().expect("a time").parse().expect("RFC 3339")
}

async fn delivered_once_signed_with_the_standard_headers(db: &TestDb) {
    let mut receiver = Receiver::start(vec![Reply::Status(204)]).await;
    let id = format!("once-{}", db.kind());
    let app = TestApp::spawn(db.url(), &hook(&id, &receiver.url, "")).await;
    let event = test_event(&app, &id).await;
    let got = receiver.next().await;
    assert_eq!(got.id(), event);
    assert_eq!(got.header("webhook-timestamp"), t0().timestamp().to_string(), "this attempt's time, by tally's clock");
    assert_eq!(got.header("content-type"), "application/json");
    assert_eq!(got.header("user-agent"), concat!("tally/", env!("CARGO_PKG_VERSION")));
    got.assert_signed_by(&[SECRET]);
    let body = got.json();
    assert_eq!(body["id"], event);
    assert_eq!(body["type"], "webhook.test");
    assert_eq!(body["data"], serde_json::json!({"webhook": id}));

    attempts_done(&app, 1).await;
    let d = deliveries(&app, &event).await;
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["webhook"], id.as_str());
    assert_eq!(d[0]["status"], "succeeded");
    assert_eq!(d[0]["next_attempt_at"], Value::Null);
    let attempts = d[0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["status_code"], 204);
    assert_eq!(attempts[0]["error"], Value::Null);
    assert_eq!(time(&attempts[0]["at"]), t0());
    assert_eq!(receiver.calls(), 1);
    assert_eq!(
        app.counter(&format!("tally_webhook_deliveries_total{{webhook=\"{id}\",outcome=\"succeeded\"}}")).await,
        1
    );
    app.stop().await;
}

async fn retried_after_a_5xx_by_the_schedule_then_delivered(db: &TestDb) {
    let mut receiver = Receiver::start(vec![Reply::Status(503), Reply::Status(200)]).await;
    let id = format!("retry5xx-{}", db.kind());
    let app = TestApp::spawn(db.url(), &hook(&id, &receiver.url, "")).await;
    let event = test_event(&app, &id).await;
    let first = receiver.next().await;
    attempts_done(&app, 1).await;
    let d = deliveries(&app, &event).await;
    assert_eq!(d[0]["status"], "pending");
    assert_eq!(d[0]["attempts"][0]["status_code"], 503);
    let wait = time(&d[0]["next_attempt_at"]) - t0();
    assert!(
        wait >= chrono::TimeDelta::milliseconds(900) && wait <= chrono::TimeDelta::milliseconds(1100),
        "the first delay of the schedule, ±10%: {wait}"
    );
    assert_eq!(
        app.counter(&format!("tally_webhook_deliveries_total{{webhook=\"{id}\",outcome=\"retried\"}}")).await,
        1
    );

    app.advance(Duration::from_millis(1200));
    let second = receiver.next().await;
    assert_eq!(second.id(), first.id(), "the same webhook-id on every attempt");
    assert_eq!(second.header("webhook-timestamp"), (t0().timestamp() + 1).to_string(), "this attempt's time");
    second.assert_signed_by(&[SECRET]);
    attempts_done(&app, 2).await;
    let d = deliveries(&app, &event).await;
    assert_eq!(d[0]["status"], "succeeded");
    assert_eq!(d[0]["attempts"].as_array().unwrap().len(), 2);
    app.stop().await;
}

async fn a_410_disables_the_webhook_until_recovered_and_kept_events_follow(db: &TestDb) {
    let mut receiver = Receiver::start(vec![Reply::Status(410), Reply::Status(200)]).await;
    let id = format!("gone-{}", db.kind());
    let app = TestApp::spawn(db.url(), &hook(&id, &receiver.url, "")).await;
    let gone = test_event(&app, &id).await;
    receiver.next().await;
    attempts_done(&app, 1).await;
    assert_eq!(deliveries(&app, &gone).await[0]["status"], "failed", "410 fails the delivery");
    let (_, listed) = app.get_json("/webhooks").await;
    let listed = &listed["webhooks"][0];
    assert_eq!(listed["enabled"], false);
    assert_eq!(listed["last_failure"]["status_code"], 410);

    // Raised while disabled: kept, pending, not sent.
    let kept = test_event(&app, &id).await;
    app.advance(Duration::from_secs(10));
    let (_, listed) = app.get_json("/webhooks").await;
    assert_eq!(listed["webhooks"][0]["pending"], 1);
    assert_eq!(listed["webhooks"][0]["oldest_pending_seconds"], 10);
    assert_eq!(deliveries(&app, &kept).await[0]["attempts"].as_array().unwrap().len(), 0);

    let (status, body) = post(&app, &format!("/webhooks/{id}/recover")).await;
    assert_eq!((status, &body), (202, &serde_json::json!({"requeued": 1})), "the 410'd delivery is queued again");
    let mut ids = vec![receiver.next().await.id().to_owned(), receiver.next().await.id().to_owned()];
    ids.sort();
    assert_eq!(ids, [gone.clone(), kept.clone()]);
    attempts_done(&app, 3).await;
    for event in [&gone, &kept] {
        let d = deliveries(&app, event).await;
        assert_eq!(d[0]["status"], "succeeded");
        let last = d[0]["attempts"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(time(&last["at"]), t0() + chrono::TimeDelta::seconds(10), "sent after the recovery only");
    }
    let (_, listed) = app.get_json("/webhooks").await;
    assert_eq!(listed["webhooks"][0]["enabled"], true);
    assert_eq!(listed["webhooks"][0]["pending"], 0);
    app.stop().await;
}

async fn a_claim_left_by_a_crashed_process_is_taken_over_once_it_expires(db: &TestDb) {
    let mut receiver = Receiver::start(vec![Reply::Status(200)]).await;
    let id = format!("crash-{}", db.kind());
    let toml = format!("[store]\nurl = \"{}\"\n\n{}", db.url(), hook(&id, &receiver.url, ""));
    let settings = tally::config::from_toml(&toml).unwrap();
    // The crashed process: it stored an event, claimed its delivery, and died before the answer.
    let routes = settings.webhooks.iter().map(|w| w.route()).collect();
    let crashed = tally::store::open_with_webhooks(&settings.store, routes).unwrap();
    crashed.migrate().await.unwrap();
    let event = crashed.append_event(&tally::domain::event::webhook_test(&id, t0())).await.unwrap();
    let until = t0() + chrono::TimeDelta::seconds(60);
    let claimed = crashed.claim_deliveries("crashed", t0(), until, 4).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].event.id, event.id);
    crashed.close().await;
    drop(crashed);

    let app = TestApp::spawn_settings(
        tally::config::from_toml(&format!("[server]\nlisten = \"127.0.0.1:0\"\n{toml}")).unwrap(),
    )
    .await;
    app.advance(Duration::from_secs(30));
    let (_, listed) = app.get_json("/webhooks").await;
    assert_eq!(listed["webhooks"][0]["pending"], 1, "still claimed: not sent");
    assert_eq!(receiver.calls(), 0);
    app.advance(Duration::from_secs(31));
    let got = receiver.next().await;
    assert_eq!(got.id(), event.id);
    attempts_done(&app, 1).await;
    assert_eq!(deliveries(&app, &event.id).await[0]["status"], "succeeded");
    app.stop().await;
}

async fn a_delivery_pending_at_shutdown_goes_out_after_the_next_start(db: &TestDb) {
    let mut receiver = Receiver::start(vec![Reply::Status(500), Reply::Status(200)]).await;
    let id = format!("restart-{}", db.kind());
    let first = TestApp::spawn(db.url(), &hook(&id, &receiver.url, "")).await;
    let event = test_event(&first, &id).await;
    receiver.next().await;
    attempts_done(&first, 1).await;
    first.stop().await;

    let second = TestApp::spawn(db.url(), &hook(&id, &receiver.url, "")).await;
    second.advance(Duration::from_secs(2));
    assert_eq!(receiver.next().await.id(), event);
    attempts_done(&second, 1).await;
    assert_eq!(deliveries(&second, &event).await[0]["status"], "succeeded");
    second.stop().await;
}

async fn at_most_four_in_flight_per_webhook_while_another_is_served(db: &TestDb) {
    let mut stuck = Receiver::start(vec![Reply::Hang]).await;
    let mut healthy = Receiver::start(vec![Reply::Status(200)]).await;
    let (a, b) = (format!("stuck-{}", db.kind()), format!("healthy-{}", db.kind()));
    let toml = format!("{}{}", hook(&a, &stuck.url, "timeout = \"5m\""), hook(&b, &healthy.url, ""));
    let app = TestApp::spawn(db.url(), &toml).await;
    for _ in 0..10 {
        test_event(&app, &a).await;
    }
    for _ in 0..3 {
        test_event(&app, &b).await;
    }
    for _ in 0..4 {
        stuck.next().await;
    }
    for _ in 0..3 {
        healthy.next().await;
    }
    attempts_done(&app, 3).await;
    assert_eq!(stuck.calls(), 4, "the stuck receiver holds four attempts, and gets no fifth");
    let (_, listed) = app.get_json("/webhooks").await;
    assert_eq!(listed["webhooks"][0]["pending"], 10);
    assert_eq!(listed["webhooks"][1]["pending"], 0, "the other webhook was served meanwhile");

    stuck.open_gate();
    for _ in 0..6 {
        stuck.next().await;
    }
    attempts_done(&app, 13).await;
    assert_eq!(stuck.state.max_in_flight.load(Ordering::SeqCst), 4);
    app.stop().await;
}

async fn a_redelivery_asked_while_an_attempt_is_in_flight_follows_it(db: &TestDb) {
    let mut receiver = Receiver::start(vec![Reply::Hang, Reply::Status(200)]).await;
    let id = format!("inflight-{}", db.kind());
    let app = TestApp::spawn(db.url(), &hook(&id, &receiver.url, "")).await;
    let event = test_event(&app, &id).await;
    receiver.next().await;
    let (status, body) = post(&app, &format!("/events/{event}/redeliver")).await;
    assert_eq!((status, body), (202, serde_json::json!({"requeued": 1})));
    // The attempt in flight ends (200): recorded, without undoing the redelivery, which
    // follows it rather than running beside it.
    receiver.open_gate();
    assert_eq!(receiver.next().await.id(), event);
    attempts_done(&app, 2).await;
    let d = deliveries(&app, &event).await;
    assert_eq!(d[0]["status"], "succeeded");
    let codes: Vec<&Value> = d[0]["attempts"].as_array().unwrap().iter().map(|a| &a["status_code"]).collect();
    assert_eq!(codes, [200, 200]);
    assert_eq!(receiver.state.max_in_flight.load(Ordering::SeqCst), 1, "never two attempts of it at once");
    app.stop().await;
}

both_stores!(
    a_redelivery_asked_while_an_attempt_is_in_flight_follows_it,
    delivered_once_signed_with_the_standard_headers,
    retried_after_a_5xx_by_the_schedule_then_delivered,
    a_410_disables_the_webhook_until_recovered_and_kept_events_follow,
    a_claim_left_by_a_crashed_process_is_taken_over_once_it_expires,
    a_delivery_pending_at_shutdown_goes_out_after_the_next_start,
    at_most_four_in_flight_per_webhook_while_another_is_served,
);

#[tokio::test]
async fn during_a_rotation_both_secrets_sign_and_the_library_verifies_either() {
    let db = TestDb::sqlite();
    let mut receiver = Receiver::start(vec![Reply::Status(200)]).await;
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"{}\"\n{}",
        db.url(),
        hook("rotating", &receiver.url, &format!("previous_secret = \"{PREVIOUS}\""))
    );
    // The library checks the timestamp against its own clock: tally's starts at real time here.
    let app = TestApp::spawn_at(tally::config::from_toml(&toml).unwrap(), Utc::now()).await;
    test_event(&app, "rotating").await;
    let got = receiver.next().await;
    got.assert_signed_by(&[SECRET, PREVIOUS]);
    for secret in [SECRET, PREVIOUS] {
        standardwebhooks::Webhook::new(secret).unwrap().verify(&got.body, &got.headers).expect("verifies");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_429_waits_its_retry_after_when_longer_than_the_schedule() {
    let db = TestDb::sqlite();
    let mut receiver = Receiver::start(vec![Reply::RetryAfter(429, 120), Reply::Status(200)]).await;
    let app = TestApp::spawn(db.url(), &hook("slowdown", &receiver.url, "")).await;
    let event = test_event(&app, "slowdown").await;
    receiver.next().await;
    attempts_done(&app, 1).await;
    let d = deliveries(&app, &event).await;
    assert_eq!(d[0]["attempts"][0]["status_code"], 429);
    assert_eq!(time(&d[0]["next_attempt_at"]), t0() + chrono::TimeDelta::seconds(120), "Retry-After, not 1s");
    app.advance(Duration::from_secs(121));
    assert_eq!(receiver.next().await.id(), event);
    attempts_done(&app, 2).await;
    assert_eq!(deliveries(&app, &event).await[0]["status"], "succeeded");
    app.stop().await;
}

#[tokio::test]
async fn an_attempt_without_an_answer_in_time_is_retried() {
    let db = TestDb::sqlite();
    let mut receiver = Receiver::start(vec![Reply::Hang, Reply::Status(200)]).await;
    let app = TestApp::spawn(db.url(), &hook("sleepy", &receiver.url, "timeout = \"200ms\"")).await;
    let event = test_event(&app, "sleepy").await;
    receiver.next().await;
    attempts_done(&app, 1).await;
    let d = deliveries(&app, &event).await;
    let attempt = &d[0]["attempts"][0];
    assert_eq!(attempt["status_code"], Value::Null);
    assert_eq!(attempt["error"], "no answer within 200ms");
    assert_eq!(d[0]["status"], "pending");
    app.advance(Duration::from_secs(2));
    assert_eq!(receiver.next().await.id(), event);
    attempts_done(&app, 2).await;
    assert_eq!(deliveries(&app, &event).await[0]["status"], "succeeded");
    receiver.open_gate();
    app.stop().await;
}

#[tokio::test]
async fn a_400_fails_the_delivery_at_once_and_the_schedule_ends_in_failed() {
    let db = TestDb::sqlite();
    let mut refusing = Receiver::start(vec![Reply::Status(400)]).await;
    let mut down = Receiver::start(vec![Reply::Status(502)]).await;
    let toml = format!("{}{}", hook("refusing", &refusing.url, ""), hook("down", &down.url, ""));
    let app = TestApp::spawn(db.url(), &toml).await;
    let refused = test_event(&app, "refusing").await;
    refusing.next().await;
    attempts_done(&app, 1).await;
    let d = deliveries(&app, &refused).await;
    assert_eq!(d[0]["status"], "failed");
    assert_eq!(d[0]["next_attempt_at"], Value::Null);

    // Two retries in the schedule: three attempts, then failed.
    let event = test_event(&app, "down").await;
    down.next().await;
    attempts_done(&app, 2).await;
    app.advance(Duration::from_secs(2));
    down.next().await;
    attempts_done(&app, 3).await;
    app.advance(Duration::from_secs(3));
    down.next().await;
    attempts_done(&app, 4).await;
    let d = deliveries(&app, &event).await;
    assert_eq!(d[0]["status"], "failed");
    assert_eq!(d[0]["attempts"].as_array().unwrap().len(), 3);
    assert_eq!(app.counter("tally_webhook_deliveries_total{webhook=\"down\",outcome=\"failed\"}").await, 1);
    assert_eq!(app.counter("tally_webhook_deliveries_total{webhook=\"down\",outcome=\"retried\"}").await, 2);
    assert_eq!(refusing.calls(), 1);
    app.stop().await;
}

#[tokio::test]
async fn redeliver_sends_an_event_again_and_names_unknown_ids() {
    let db = TestDb::sqlite();
    let mut one = Receiver::start(vec![Reply::Status(200)]).await;
    let mut two = Receiver::start(vec![Reply::Status(200)]).await;
    let toml = format!("{}{}", hook("redeliver-one", &one.url, ""), hook("redeliver-two", &two.url, ""));
    let app = TestApp::spawn(db.url(), &toml).await;
    let event = test_event(&app, "redeliver-one").await;
    one.next().await;
    attempts_done(&app, 1).await;

    let (status, body) = post(&app, &format!("/events/{event}/redeliver")).await;
    assert_eq!((status, body), (202, serde_json::json!({"requeued": 1})));
    assert_eq!(one.next().await.id(), event, "the same id again");
    attempts_done(&app, 2).await;

    // To a webhook the event was not for: a delivery is made for it.
    let (status, body) = post(&app, &format!("/events/{event}/redeliver?webhook=redeliver-two")).await;
    assert_eq!((status, body), (202, serde_json::json!({"requeued": 1})));
    assert_eq!(two.next().await.id(), event);
    attempts_done(&app, 3).await;
    let d = deliveries(&app, &event).await;
    assert_eq!(d.len(), 2);

    let (status, body) = post(&app, &format!("/events/{event}/redeliver?webhook=nope")).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("webhook_not_found")));
    let (status, body) = post(&app, "/events/evt_0000000000000009999/redeliver").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("event_not_found")));
    let (status, body) = post(&app, "/webhooks/nope/test").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("webhook_not_found")));
    let (status, body) = post(&app, "/webhooks/nope/recover").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("webhook_not_found")));
    let (status, body) = post(&app, "/webhooks/redeliver-one/recover?since=yesterday").await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_time")));
    app.stop().await;
}

#[tokio::test]
async fn the_webhook_list_never_shows_a_secret_or_a_credential_in_the_url() {
    let db = TestDb::sqlite();
    let receiver = Receiver::start(vec![Reply::Status(200)]).await;
    let url = receiver.url.replace("http://", "http://user:hunter2@") + "?token=s3cr3t-token";
    let toml = format!(
        "[[accounts]]\nid = \"leanx-hooked\"\nprovider = \"leanx\"\nauth_token = \"tok\"\n\n{}events = [\"payout.finalized\"]\naccounts = [\"leanx-hooked\"]\n",
        hook("listed", &url, &format!("previous_secret = \"{PREVIOUS}\""))
    );
    let app = TestApp::spawn(db.url(), &toml).await;
    let text = app.get("/webhooks").await.text().await.unwrap();
    for secret in [SECRET, PREVIOUS, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "hunter2", "s3cr3t-token", "whsec_"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    let listed: Value = serde_json::from_str(&text).unwrap();
    let w = &listed["webhooks"][0];
    assert_eq!(w["id"], "listed");
    assert!(w["url"].as_str().unwrap().contains("REDACTED"), "{w}");
    assert_eq!(w["events"], serde_json::json!(["payout.finalized"]));
    assert_eq!(w["accounts"], serde_json::json!(["leanx-hooked"]));
    assert_eq!(w["enabled"], true);
    assert_eq!(w["pending"], 0);
    assert_eq!(w["oldest_pending_seconds"], Value::Null);
    assert_eq!(w["last_success_at"], Value::Null);
    assert_eq!(w["last_failure"], Value::Null);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    for series in [
        "tally_webhook_deliveries_total{webhook=\"listed\",outcome=\"succeeded\"} 0",
        "tally_webhook_deliveries_total{webhook=\"listed\",outcome=\"retried\"} 0",
        "tally_webhook_deliveries_total{webhook=\"listed\",outcome=\"failed\"} 0",
        "tally_webhook_pending{webhook=\"listed\"} 0",
        "tally_webhook_oldest_pending_seconds{webhook=\"listed\"} 0",
        "tally_events_total{type=\"webhook.test\"}",
    ] {
        assert!(metrics.contains(series), "{series} is exported from the start");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_read_key_is_refused_the_actions_and_an_operate_key_may_take_them() {
    let db = TestDb::sqlite();
    let mut receiver = Receiver::start(vec![Reply::Status(200)]).await;
    let (read, operate) = (tally::http::digest_hex("read-key"), tally::http::digest_hex("operate-key"));
    let toml = format!(
        "[auth]\napi_keys = [{{ name = \"reader\", sha256 = \"{read}\" }}, {{ name = \"operator\", sha256 = \"{operate}\", role = \"operate\" }}]\n\n{}",
        hook("guarded", &receiver.url, "")
    );
    let app = TestApp::spawn(db.url(), &toml).await;
    let call = |key: &'static str, path: String| {
        let request = app.http.post(format!("{}{}", app.base, path)).bearer_auth(key);
        async move { request.send().await.unwrap() }
    };
    let r = call("operate-key", "/webhooks/guarded/test".into()).await;
    assert_eq!(r.status(), 202);
    let event = serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap()["id"].as_str().unwrap().to_owned();
    receiver.next().await;
    for path in
        ["/webhooks/guarded/test".to_owned(), "/webhooks/guarded/recover".into(), format!("/events/{event}/redeliver")]
    {
        let refused = call("read-key", path.clone()).await;
        assert_eq!(refused.status(), 403, "{path}");
        assert_eq!(refused.headers()["content-type"], "application/problem+json");
        assert_eq!(serde_json::from_slice::<Value>(&refused.bytes().await.unwrap()).unwrap()["code"], "forbidden");
        assert_eq!(call("operate-key", path.clone()).await.status(), 202, "{path}");
    }
    let listed = app.http.get(format!("{}/webhooks", app.base)).bearer_auth("read-key").send().await.unwrap();
    assert_eq!(listed.status(), 200, "reading needs no more than read");
    app.stop().await;
}

#[tokio::test]
async fn three_replicas_on_one_postgres_deliver_each_event_exactly_once() {
    let Some(db) = TestDb::postgres().await else { return };
    let mut receiver = Receiver::start(vec![Reply::Status(200)]).await;
    let toml = hook("replicated", &receiver.url, "");
    let apps = [
        TestApp::spawn(db.url(), &toml).await,
        TestApp::spawn(db.url(), &toml).await,
        TestApp::spawn(db.url(), &toml).await,
    ];
    const EVENTS: usize = 30;
    let mut raised = Vec::new();
    for i in 0..EVENTS {
        raised.push(test_event(&apps[i % 3], "replicated").await);
    }
    let mut got: HashMap<String, usize> = HashMap::new();
    for _ in 0..EVENTS {
        *got.entry(receiver.next().await.id().to_owned()).or_default() += 1;
    }
    raised.sort();
    let mut ids: Vec<_> = got.keys().cloned().collect();
    ids.sort();
    assert_eq!(ids, raised, "every event, once each");
    // Every replica's attempts finished (recorded after the receiver answered).
    let mut dones: Vec<_> = apps.iter().map(|a| a.service.webhooks().attempts_done()).collect();
    let all_done = async {
        loop {
            let sum: u64 = dones.iter_mut().map(|d| *d.borrow_and_update()).sum();
            if sum >= EVENTS as u64 {
                return;
            }
            let changes = dones.iter_mut().map(|d| Box::pin(d.changed()));
            let _ = futures_util::future::select_all(changes).await;
        }
    };
    tokio::time::timeout(BOUND, all_done).await.expect("every attempt finishes");
    // Every attempt any replica made is recorded with its delivery: one each.
    for event in &raised {
        let d = deliveries(&apps[0], event).await;
        assert_eq!(d[0]["status"], "succeeded");
        assert_eq!(d[0]["attempts"].as_array().unwrap().len(), 1, "{event}");
    }
    let mut done = 0;
    for app in &apps {
        done += *app.service.webhooks().attempts_done().borrow();
    }
    assert_eq!(done, EVENTS as u64);
    assert_eq!(receiver.calls(), EVENTS);
    for app in apps {
        app.stop().await;
    }
}

/// The routing is written with the event, in its transaction: a balance change goes to the
/// webhooks whose filters it passes.
async fn deliveries_are_written_with_the_events_they_are_for(db: &TestDb) {
    use tally::domain::webhook::Route;
    let routes = vec![
        Route { id: "every".into(), events: vec![], accounts: vec![] },
        Route { id: "payouts".into(), events: vec!["payout.finalized".into()], accounts: vec![] },
        Route { id: "leanx".into(), events: vec![], accounts: vec!["leanx-main".parse().unwrap()] },
        Route { id: "other".into(), events: vec![], accounts: vec!["yedpay-hk".parse().unwrap()] },
    ];
    let settings = tally::config::from_toml(&format!("[store]\nurl = \"{}\"\n", db.url())).unwrap();
    let store = tally::store::open_with_webhooks(&settings.store, routes).unwrap();
    store.migrate().await.unwrap();
    let entry = tally::domain::BalanceEntry::single_figure(
        "prefund",
        "MYR".parse().unwrap(),
        tally::domain::parse_decimal("1.00").unwrap(),
    );
    let snapshot = tally::store::AccountSnapshot {
        account: "leanx-main".parse().unwrap(),
        provider: tally::domain::Provider::Leanx,
        fetched_at: t0(),
        entries: vec![entry],
        raw: None,
    };
    store.record_balances(&snapshot, &[]).await.unwrap();
    let events = store.events(&tally::store::EventQuery { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(events.len(), 1);
    let seq = tally::domain::event::event_seq(&events[0].id).unwrap();
    let to: Vec<String> = store.deliveries(seq).await.unwrap().into_iter().map(|d| d.webhook).collect();
    assert_eq!(to, ["every", "leanx"]);
    // Pruned with its event.
    assert_eq!(store.prune_events(t0() + chrono::TimeDelta::seconds(1), 100).await.unwrap(), 1);
    assert!(store.deliveries(seq).await.unwrap().is_empty());
    store.close().await;
}

both_stores!(deliveries_are_written_with_the_events_they_are_for);
