//! Operations routes: liveness, readiness, the configured accounts, metrics.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorCode, Problem};
use super::report::AccountError;
use crate::domain::{AccountId, Provider};
use crate::providers::Capabilities;
use crate::service::CircuitState;
use crate::sync::MutexExt;

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Liveness: 200 while the process runs. Open to callers without a key.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is alive.", body = Health)))]
pub async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

/// Readiness: 200 when the store answers, its migrations are applied, it takes writes (after a
/// failed write, a probe write must go through), and, on SQLite, the file tally opened is still
/// at its path. Open to callers without a key.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "The store answers, is migrated and takes writes.", body = Health),
        (status = 503, description = "The store is unreachable, not migrated, refuses writes (a full disk), or its SQLite file was deleted or replaced: `not_ready`.", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Result<axum::Json<Health>, ApiError> {
    // A store that was down at start is migrated as soon as it answers again.
    let ready = async {
        state.migrations.ensure().await?;
        state.service.store_ready().await
    };
    match tokio::time::timeout(Duration::from_secs(3), ready).await {
        Ok(Ok(())) => Ok(axum::Json(Health { status: "ready" })),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check failed");
            Err(ApiError::new(ErrorCode::NotReady, "the store is unreachable, not migrated, or refuses writes")
                .retry_after(5))
        }
        Err(_) => Err(ApiError::new(ErrorCode::NotReady, "the store did not answer in time").retry_after(5)),
    }
}

/// A configured account, without any secret.
#[derive(Serialize, ToSchema)]
pub struct AccountInfo {
    #[schema(value_type = String, example = "leanx-main")]
    pub account: AccountId,
    pub provider: Provider,
    pub capabilities: Capabilities,
    /// A figure younger than this many seconds is served from cache.
    pub ttl_seconds: u64,
    /// Bound on one fetch of this account, in milliseconds.
    pub timeout_ms: u64,
    /// Background refresh period in seconds; 0 when off.
    pub refresh_interval_seconds: u64,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_error: Option<AccountError>,
    pub circuit: CircuitState,
}

#[derive(Serialize, ToSchema)]
pub struct AccountsResponse {
    pub accounts: Vec<AccountInfo>,
}

/// The configured accounts with their provider, capabilities, freshness settings and health.
#[utoipa::path(get, path = "/accounts", tag = "operations",
    responses(
        (status = 200, description = "Configured accounts, in config order.", body = AccountsResponse),
        (status = 401, description = "Missing or unknown API key: `unauthorized`.", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ()))]
pub async fn accounts(State(state): State<AppState>) -> axum::Json<AccountsResponse> {
    let now = state.service.now();
    let accounts = state
        .service
        .accounts()
        .iter()
        .map(|a| {
            let health = a.health();
            let f = a.config.freshness;
            AccountInfo {
                account: a.id().clone(),
                provider: a.provider(),
                capabilities: a.capabilities(),
                ttl_seconds: f.ttl.as_secs(),
                timeout_ms: f.timeout.as_millis() as u64,
                refresh_interval_seconds: f.refresh_interval.as_secs(),
                last_success_at: health.last_success_at,
                last_error: health.last_error.map(|(e, at)| AccountError::new(e, at)),
                circuit: a.circuit_state(now),
            }
        })
        .collect();
    axum::Json(AccountsResponse { accounts })
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format.", body = String, content_type = "text/plain"),
        (status = 401, description = "Missing or unknown API key when `metrics.require_auth` is set: `unauthorized`.", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ()))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let now = state.service.now();
    // Gauges of state and the per-account cache counts, published at scrape time rather than
    // on every request.
    for a in state.service.accounts() {
        let account = a.id().to_string();
        metrics::gauge!("tally_circuit_state", "account" => account.clone()).set(a.circuit_state(now).gauge());
        let (hits, misses) = a.cache_counts();
        metrics::counter!("tally_cache_hits_total", "account" => account.clone()).absolute(hits);
        metrics::counter!("tally_cache_misses_total", "account" => account.clone()).absolute(misses);
        // NaN (no value) until the account has a figure: 0 would read as a fresh one.
        let age =
            a.latest().map_or(f64::NAN, |latest| (now - latest.fetched_at).to_std().unwrap_or_default().as_secs_f64());
        metrics::gauge!("tally_figure_age_seconds", "account" => account).set(age);
    }
    publish_balance_gauges(&state.service);
    state.service.publish_webhook_gauges();
    let body = state.metrics.render();
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

/// The labels of one `tally_balance` series: account, provider, wallet, currency, field.
type BalanceLabels = (String, &'static str, String, String, &'static str);

/// The `tally_balance` series published by an earlier scrape: one whose entry is gone from the
/// account's latest figure (a wallet the provider no longer lists) is set to NaN, with its
/// observed timestamp, rather than left at its last value.
static PUBLISHED_BALANCES: std::sync::Mutex<std::collections::BTreeSet<BalanceLabels>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// The balance gauges, from each account's latest figure as held in memory (the one `/balances`
/// serves from cache; nothing is read from the store or the upstream here), and whether each
/// account's last fetch succeeded.
///
/// `tally_balance` is a float for charts and alerts: the one place a `Decimal` becomes an
/// `f64`. The JSON API stays exact.
fn publish_balance_gauges(service: &crate::service::Service) {
    use rust_decimal::prelude::ToPrimitive;
    let mut published = std::collections::BTreeSet::new();
    for a in service.accounts() {
        let account = a.id().to_string();
        metrics::gauge!("tally_account_up", "account" => account.clone()).set(account_up(&a.health()));
        let Some(latest) = a.latest() else { continue };
        let provider = latest.provider.as_str();
        let observed = latest.fetched_at.timestamp_millis() as f64 / 1000.0;
        for entry in &latest.entries {
            let currency = entry.currency.to_string();
            metrics::gauge!("tally_balance_observed_timestamp_seconds", "account" => account.clone(),
                "wallet" => entry.wallet.clone(), "currency" => currency.clone())
            .set(observed);
            let fields = [
                ("available", entry.available),
                ("pending", entry.pending),
                ("reserved", entry.reserved),
                ("total", entry.total),
            ];
            for (field, amount) in fields {
                let Some(amount) = amount.and_then(|d| d.to_f64()) else { continue };
                metrics::gauge!("tally_balance", "account" => account.clone(), "provider" => provider,
                    "wallet" => entry.wallet.clone(), "currency" => currency.clone(), "field" => field)
                .set(amount);
                published.insert((account.clone(), provider, entry.wallet.clone(), currency.clone(), field));
            }
        }
    }
    let mut earlier = PUBLISHED_BALANCES.locked();
    for (account, provider, wallet, currency, field) in earlier.difference(&published) {
        metrics::gauge!("tally_balance", "account" => account.clone(), "provider" => *provider,
            "wallet" => wallet.clone(), "currency" => currency.clone(), "field" => *field)
        .set(f64::NAN);
        let listed = published.iter().any(|(a, _, w, c, _)| (a, w, c) == (account, wallet, currency));
        if !listed {
            metrics::gauge!("tally_balance_observed_timestamp_seconds", "account" => account.clone(),
                "wallet" => wallet.clone(), "currency" => currency.clone())
            .set(f64::NAN);
        }
    }
    earlier.extend(published);
}

/// 1 when the account's last fetch succeeded, 0 when it failed, NaN before any fetch is known
/// (unknown is not down: an alert on `== 0` stays quiet).
fn account_up(health: &crate::service::Health) -> f64 {
    match (health.last_success_at, health.last_error.as_ref().map(|(_, at)| *at)) {
        (None, None) => f64::NAN,
        (Some(_), None) => 1.0,
        (None, Some(_)) => 0.0,
        (Some(succeeded), Some(failed)) => f64::from(u8::from(succeeded >= failed)),
    }
}

/// Registers, at 0, every series of the metrics table whose labels are known at start (each
/// account's, each provider's in use), so that a fresh scrape lists them all: a series that
/// appears only with its first event breaks `rate()` and alerts on its absence. Series labelled
/// by an error code appear with their first event; the gauges are set at each scrape.
pub(super) fn export_known_series(service: &crate::service::Service) {
    let mut providers = std::collections::BTreeSet::new();
    for a in service.accounts() {
        let (provider, account) = (a.provider().as_str(), a.id().to_string());
        let payouts = a.capabilities().payouts;
        providers.insert((provider, "balances"));
        metrics::counter!("tally_upstream_calls_total", "provider" => provider, "account" => account.clone(),
            "operation" => "balances", "outcome" => "success")
        .increment(0);
        if payouts {
            providers.insert((provider, "payout"));
            for outcome in ["found", "not_found"] {
                metrics::counter!("tally_upstream_calls_total", "provider" => provider, "account" => account.clone(),
                    "operation" => "payout", "outcome" => outcome)
                .increment(0);
            }
            metrics::counter!("tally_coalesced_payout_waiters_total", "account" => account.clone()).increment(0);
        }
        metrics::counter!("tally_coalesced_waiters_total", "account" => account.clone()).increment(0);
        metrics::counter!("tally_replica_waits_total", "account" => account).increment(0);
    }
    for (provider, operation) in providers {
        // A histogram handle is rendered, with empty buckets, from its registration.
        let _ = metrics::histogram!("tally_upstream_latency_seconds", "provider" => provider, "operation" => operation);
    }
    metrics::counter!("tally_http_shed_total").increment(0);
    for kind in crate::domain::event::EVENT_TYPES {
        metrics::counter!("tally_events_total", "type" => kind).increment(0);
    }
    // A monitor naming its account and wallet watches one known entry: its series is there
    // from start (added to, not set: a firing state read at start stays 1).
    for m in service.monitor_book().monitors().iter() {
        if let (Some(account), Some(wallet)) = (&m.account, &m.wallet) {
            metrics::gauge!("tally_monitor_firing", "monitor" => m.id.clone(), "account" => account.to_string(),
                "wallet" => wallet.clone(), "currency" => m.currency.to_string())
            .increment(0.0);
        }
    }
}
