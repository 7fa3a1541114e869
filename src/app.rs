//! The composition root: builds the store, the service and the router from settings, binds
//! the listener before serving (so tests can bind port 0 and read the port), and runs until a
//! shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Settings;
use crate::http::{self, AppState};
use crate::providers::{DEFAULT_MAX_RESPONSE_BYTES, UpstreamHttp};
use crate::service::{Clock, Service, SystemClock};
use crate::store::{self, Store};

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    service: Arc<Service>,
    store: Arc<dyn Store>,
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
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

impl Application {
    /// Builds with the system clock.
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        Self::build_with_clock(settings, Arc::new(SystemClock)).await
    }

    /// Builds with an injected clock (tests move time without sleeping).
    pub async fn build_with_clock(settings: Settings, clock: Arc<dyn Clock>) -> Result<Self, StartError> {
        let addr = settings.server.listen;
        if settings.auth.api_keys.is_empty() && !settings.auth.allow_anonymous && !addr.ip().is_loopback() {
            return Err(StartError::AnonymousNonLoopback(addr));
        }
        let store = store::open(&settings.store)?;
        // A store that is down at start is not fatal: live figures are still served, and
        // /readyz reports it until the store is back and migrated.
        if let Err(e) = store.migrate().await {
            tracing::error!(error = %e, "could not migrate the store; serving live figures only until it is back");
        }
        // The recorder first: the service registers its per-account counters with it.
        let metrics = crate::telemetry::metrics_handle();
        let service =
            Service::new(&settings, Arc::clone(&store), clock, &UpstreamHttp::new(DEFAULT_MAX_RESPONSE_BYTES));
        service.warm_up().await;
        let state = AppState {
            service: Arc::clone(&service),
            api_keys: settings.auth.api_keys.clone().into(),
            metrics_require_auth: settings.metrics.require_auth,
            metrics,
            balances_body: Default::default(),
        };
        let router = http::router(state, &settings);
        let listener = TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?;
        Ok(Self { listener, router, service, store, settings })
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
        let background = self.service.spawn_background_refresh();
        let grace = self.settings.server.shutdown_timeout;
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections, finishing requests in flight");
            let _ = stopping_tx.send(());
        };
        let serve = axum::serve(self.listener, self.router).with_graceful_shutdown(signal);
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
        self.store.close().await;
        tracing::info!("stopped");
        result
    }
}

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
