//! Webhook delivery, measured (not asserted anywhere): tally on a store (a SQLite file, or the
//! PostgreSQL named by `TALLY_BENCH_DATABASE_URL`) delivering to a receiver on 127.0.0.1.
//!
//! 1. Throughput: a burst of `webhook.test` events (raised through the API, 8 callers at
//!    once); events delivered per second from the first arrival to the last.
//! 2. Latency: events raised one at a time (every 20 ms); from the event's commit (its
//!    `timestamp`, to the millisecond) to its arrival at the receiver, p50 and p99.
//!
//! `cargo run --release --example webhook-bench`

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use chrono::{DateTime, Utc};

const BURST: usize = 2000;
const PACED: usize = 300;

type Arrivals = Arc<Mutex<Vec<(Instant, DateTime<Utc>, DateTime<Utc>)>>>;

async fn receive(State(arrivals): State<Arrivals>, body: Bytes) -> &'static str {
    let now = Utc::now();
    let event: serde_json::Value = serde_json::from_slice(&body).expect("an event");
    let at: DateTime<Utc> = event["timestamp"].as_str().and_then(|t| t.parse().ok()).expect("a timestamp");
    arrivals.lock().unwrap().push((Instant::now(), at, now));
    "ok"
}

#[tokio::main]
async fn main() {
    let arrivals: Arrivals = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver = format!("http://{}/hook", listener.local_addr().unwrap());
    let router = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(Arc::clone(&arrivals));
    tokio::spawn(async move { axum::serve(listener, router).await });

    let dir = tempfile::tempdir().unwrap();
    let store = std::env::var("TALLY_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"{store}\"\n[[webhooks]]\nid = \"bench\"\nurl = \"{receiver}\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n"
    );
    let app = tally::app::Application::build(tally::config::from_toml(&toml).unwrap()).await.unwrap();
    let base = format!("http://{}", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let url: Arc<str> = format!("{base}/webhooks/bench/test").into();
    let raise = move |http: reqwest::Client| {
        let url = Arc::clone(&url);
        async move { assert_eq!(http.post(&*url).send().await.unwrap().status(), 202) }
    };

    // 1. A burst.
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (http, raise) = (http.clone(), raise.clone());
            tokio::spawn(async move {
                for _ in 0..BURST / 8 {
                    raise(http.clone()).await;
                }
            })
        })
        .collect();
    for c in callers {
        c.await.unwrap();
    }
    wait_for(&arrivals, BURST).await;
    let burst: Vec<_> = std::mem::take(&mut *arrivals.lock().unwrap());
    let first = burst.iter().map(|a| a.0).min().unwrap();
    let last = burst.iter().map(|a| a.0).max().unwrap();
    println!(
        "store {}: burst of {BURST}: {:.0} events/s delivered (first to last arrival {:.2} s)",
        store.split(':').next().unwrap(),
        BURST as f64 / (last - first).as_secs_f64(),
        (last - first).as_secs_f64()
    );

    // 2. One at a time.
    for _ in 0..PACED {
        raise(http.clone()).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for(&arrivals, PACED).await;
    let mut latencies: Vec<i64> = arrivals
        .lock()
        .unwrap()
        .iter()
        .map(|(_, at, received)| (*received - *at).num_microseconds().unwrap())
        .collect();
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)] as f64 / 1000.0;
    println!(
        "commit -> received, {PACED} events one at a time: p50 {:.1} ms, p99 {:.1} ms (event timestamps are whole ms)",
        pct(0.50),
        pct(0.99)
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

async fn wait_for(arrivals: &Arrivals, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while arrivals.lock().unwrap().len() < n {
        assert!(Instant::now() < deadline, "only {} of {n} arrived", arrivals.lock().unwrap().len());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
