//! Logs and metrics. Logs: `RUST_LOG` filter (default `info`), human-readable on a terminal,
//! JSON lines when `TALLY_LOG_FORMAT=json`. Metrics: one process-wide Prometheus recorder,
//! rendered by tally's own `/metrics` route.

use std::io::IsTerminal;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Installs the global log subscriber. Safe to call more than once (later calls do nothing).
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("TALLY_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init()
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).try_init()
    };
}

/// The process-wide Prometheus recorder, installed on first use. One process may run several
/// apps (tests, the demo); they share it, as metrics are process-wide anyway.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
            let recorder =
                PrometheusBuilder::new().set_buckets(&buckets).expect("the bucket list is not empty").build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; tally installs none elsewhere.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
