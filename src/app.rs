//! The composition root: builds the store, the service and the router from settings, binds
//! the listener before serving (so tests can bind port 0 and read the port), and runs until a
//! shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::clock::{Clock, SystemClock};
use crate::config::Settings;
use crate::http::{self, AppState};
use crate::providers::{DEFAULT_MAX_RESPONSE_BYTES, UpstreamHttp};
use crate::service::Service;
use crate::store::{self, MigrationGate, Store};

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    service: Arc<Service>,
    store: Arc<dyn Store>,
    migrations: Arc<MigrationGate>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    settings: Settings,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(
        "refusing to listen on {0} without API keys: add keys to [auth] api_keys, \
         or set auth.allow_anonymous = true to serve anonymously on a non-loopback address"
    )]
    AnonymousNonLoopback(SocketAddr),
    /// The store cannot even be opened: its URL is unusable (never echoed: it may hold a password).
    #[error("config key `store.url`: {0}")]
    StoreUrl(String),
}

/// What valid settings may still not run with, checked before anything starts: by `serve`,
/// and by `check-config` so that it accepts exactly what `serve` accepts. Opens the store
/// without connecting (connections are made lazily).
pub fn preflight(settings: &Settings) -> Result<Arc<dyn Store>, StartError> {
    let addr = settings.server.listen;
    if settings.auth.api_keys.is_empty() && !settings.auth.allow_anonymous && !addr.ip().is_loopback() {
        return Err(StartError::AnonymousNonLoopback(addr));
    }
    let webhooks = settings.webhooks.iter().map(crate::config::WebhookConfig::route).collect();
    store::open_with_webhooks(&settings.store, webhooks).map_err(|e| {
        StartError::StoreUrl(match e {
            store::StoreError::Unavailable(why) => why,
            other => other.to_string(),
        })
    })
}

impl Application {
    /// Builds with the system clock.
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        Self::build_with_clock(settings, Arc::new(SystemClock)).await
    }

    /// Builds with an injected clock (tests move time without sleeping).
    pub async fn build_with_clock(settings: Settings, clock: Arc<dyn Clock>) -> Result<Self, StartError> {
        let store = preflight(&settings)?;
        // A store that is down at start is not fatal: live figures are still served, /readyz
        // reports it, and the migrations are applied once it is back.
        let migrations = Arc::new(MigrationGate::new(Arc::clone(&store)));
        // One budget for everything start-up waits on the store for (migrating, then warming
        // the cache): a store that hangs does not keep tally from listening (the attempt goes on).
        let store_by = tokio::time::Instant::now() + STORE_START_BUDGET;
        match tokio::time::timeout_at(store_by, migrations.ensure()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "could not migrate the store; serving live figures only until it is back")
            }
            Err(_) => tracing::error!(
                "the store did not answer in time; serving live figures only, migrating once it answers"
            ),
        }
        // The recorder first: whatever the service records before it is installed is lost.
        let metrics = crate::telemetry::metrics_handle();
        let service =
            Service::new(&settings, Arc::clone(&store), clock, &UpstreamHttp::new(DEFAULT_MAX_RESPONSE_BYTES));
        service.warm_up(store_by).await;
        let state = AppState::new(Arc::clone(&service), Arc::clone(&migrations), &settings, metrics.clone());
        let router = http::router(state, &settings);
        let addr = settings.server.listen;
        let listener = listen(addr, settings.server.max_concurrent_requests)
            .map_err(|source| StartError::Bind { addr, source })?;
        Ok(Self { listener, router, service, store, migrations, metrics, settings })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish
    /// within `server.shutdown_timeout`, and closes the store's pool.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let mut background = self.service.spawn_background_refresh();
        let dispatcher = self.service.spawn_webhook_dispatcher();
        let watcher = self.service.spawn_payout_watcher();
        background.push(tokio::spawn(keep_metrics_bounded(self.metrics.clone())));
        if !self.migrations.is_done() {
            background.push(tokio::spawn(migrate_when_back(Arc::clone(&self.migrations), Arc::clone(&self.service))));
        }
        let grace = self.settings.server.shutdown_timeout;
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections, finishing requests in flight");
            let _ = stopping_tx.send(());
        };
        let serve = http::serve(self.listener, self.router, &self.settings.server, signal);
        let deadline = async move {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let result = tokio::select! {
            r = serve => r,
            () = deadline => {
                tracing::warn!(grace_ms = grace.as_millis() as u64, "requests still in flight after the grace period; stopping anyway");
                Ok(())
            }
        };
        for task in background {
            task.abort();
        }
        watcher.stop().await;
        // Before the store closes: the dispatcher releases its claims through it.
        if let Some(dispatcher) = dispatcher {
            dispatcher.stop().await;
        }
        // Closing waits for connections in use; a fetch still writing must not hold the exit.
        if tokio::time::timeout(STORE_CLOSE_TIMEOUT, self.store.close()).await.is_err() {
            tracing::warn!("the store's connections did not close in time; exiting anyway");
        }
        tracing::info!("stopped");
        result
    }
}

/// Binds the API's listener with a backlog that holds a burst of callers. The default of the
/// standard library and tokio's `bind` (128) overflowed under 1000 concurrent callers: the
/// kernel dropped the connections beyond it, and their retried SYNs arrived a second later
/// (BENCHMARKS.md). The kernel caps the backlog at `net.core.somaxconn`.
fn listen(addr: SocketAddr, max_concurrent_requests: usize) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    // A restarted tally can bind while connections of the previous process linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let backlog = u32::try_from(max_concurrent_requests).unwrap_or(u32::MAX).max(LISTEN_BACKLOG);
    socket.listen(backlog)
}

/// The smallest listen backlog tally asks for; more when `server.max_concurrent_requests` is
/// higher.
const LISTEN_BACKLOG: u32 = 1024;

/// How long start-up waits on the store in all, migrations and warm-up together, before
/// listening (README, Storage).
const STORE_START_BUDGET: Duration = Duration::from_secs(3);

/// How long shutdown waits for the store's pool to close.
const STORE_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The Prometheus recorder keeps histogram samples until they are folded into its buckets: at
/// each scrape, or by this upkeep. Without it an instance nobody scrapes grows without bound.
async fn keep_metrics_bounded(handle: metrics_exporter_prometheus::PrometheusHandle) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        handle.run_upkeep();
    }
}

/// Retries the migrations of a store that was down at start until they succeed, then warms
/// the cache from it (start-up could not: its budget was spent waiting).
async fn migrate_when_back(migrations: Arc<MigrationGate>, service: Arc<Service>) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !migrations.is_done() {
        every.tick().await;
        if let Err(e) = migrations.ensure().await {
            tracing::debug!(error = %e, "the store is still not migrated");
        }
    }
    // Figures fetched since start are newer than the stored ones, and are kept.
    service.warm_up(tokio::time::Instant::now() + LATE_WARM_UP_BOUND).await;
}

/// How long the warm-up of a store that came back after start may take: as long as any store
/// call off a request's path.
const LATE_WARM_UP_BOUND: Duration = Duration::from_secs(5);

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_listener_holds_a_burst_of_callers_it_has_not_accepted_yet() {
        // Nothing accepts: every connection beyond the backlog would wait for a SYN retry.
        const BURST: usize = 300;
        let cap = std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok().and_then(|v| v.trim().parse().ok());
        if cap.is_some_and(|cap: usize| cap < BURST) {
            // As with PostgreSQL: a skip is visible, and under CI it is a failure.
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "net.core.somaxconn is {cap:?}, below the burst of {BURST} this test needs"
            );
            eprintln!("SKIPPED: net.core.somaxconn is {cap:?}, below the burst of {BURST} this test needs");
            return;
        }
        let listener = listen("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let addr = listener.local_addr().unwrap();
        let burst = futures_util::future::join_all((0..BURST).map(|_| tokio::net::TcpStream::connect(addr)));
        let connected = tokio::time::timeout(Duration::from_secs(10), burst).await.expect("no connection waits");
        assert!(connected.iter().all(Result::is_ok));
    }
}
