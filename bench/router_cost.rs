//! What one answer costs inside the process, without the network: the time and the heap
//! allocations of a request through tally's router (ten warm accounts), next to a bare axum
//! router. A profiling aid for the throughput row of BENCHMARKS.md:
//! `cargo run --release --example router-cost`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use tally::domain::Provider;
use tally::emulator::{Emulator, EmulatorOptions, credentials};
use tower::ServiceExt;

/// The system allocator, counting allocations.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract, which is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    tally::install_crypto_provider();
    let emulator =
        Emulator::start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), EmulatorOptions::default())
            .await
            .unwrap();
    let accounts: String = (0..10)
        .map(|i| {
            format!(
                "[[accounts]]\nid = \"warm-{i}\"\nprovider = \"leanx\"\nbase_url = \"{}\"\nauth_token = \"{}\"\n",
                emulator.base_url(Provider::Leanx),
                credentials::LEANX_MAIN_TOKEN
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"sqlite://{}\"\n[defaults]\nttl = \"1h\"\n{accounts}",
        dir.path().join("tally.db").display()
    );
    let settings = tally::config::from_toml(&toml).unwrap();
    let store = tally::store::open(&settings.store).unwrap();
    let migrations = Arc::new(tally::store::MigrationGate::new(Arc::clone(&store)));
    migrations.ensure().await.unwrap();
    let clock = Arc::new(tally::clock::SystemClock);
    let http = tally::providers::UpstreamHttp::new(tally::providers::DEFAULT_MAX_RESPONSE_BYTES);
    let service = tally::service::Service::new(&settings, store, clock, &http);
    let state = tally::http::AppState::new(service, migrations, &settings, tally::telemetry::metrics_handle());
    let tally = tally::http::router(state, &settings);
    let bare = axum::Router::new().route(
        "/balances",
        axum::routing::get(|| async { ([("content-type", "application/json")], bytes::Bytes::from_static(b"{}")) }),
    );
    // The first answer fetches the ten accounts; every later one is served from memory.
    measure("tally", &tally, "/balances?max_age=3600", 1).await;
    println!("{:<30} {:>10} {:>12}", "route", "time", "allocations");
    for (name, router, path) in [
        ("bare axum", &bare, "/balances"),
        ("tally /healthz", &tally, "/healthz"),
        ("tally /balances", &tally, "/balances"),
    ] {
        let (per_request, allocations) = measure(name, router, path, 100_000).await;
        println!("{name:<30} {:>8.2} µs {allocations:>12.1}", per_request * 1e6);
    }
}

/// Seconds and allocations per request, over `n` requests.
async fn measure(name: &str, router: &axum::Router, path: &str, n: u32) -> (f64, f64) {
    let started = Instant::now();
    let allocations = ALLOCATIONS.load(Relaxed);
    for _ in 0..n {
        let request = axum::http::Request::get(path).body(axum::body::Body::empty()).unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        assert!(response.status().is_success(), "{name} {path}: {}", response.status());
    }
    let per_request = started.elapsed().as_secs_f64() / f64::from(n);
    (per_request, (ALLOCATIONS.load(Relaxed) - allocations) as f64 / f64::from(n))
}
