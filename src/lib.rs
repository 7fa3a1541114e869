//! tally: how much money a finance team holds at each payment provider, and what happened to
//! each payout, in one normalized, exact-decimal JSON shape.
//!
//! # Layout
//! Modules follow the flow of a request:
//! - [`http`]: routes, extractors, auth, errors rendered as RFC 9457 problem+json, and the
//!   wire types of the answers (the `/balances` report);
//! - [`service`]: freshness, concurrent fan-out, coalescing, retries, circuit breaking,
//!   totals; the only caller of providers and the store;
//! - [`providers`]: one client per provider (`providers/<name>/`), each with its wire types
//!   in `transformers.rs`;
//! - [`store`]: the only place with SQL, SQLite and PostgreSQL behind one interface.
//!
//! Beside them: [`domain`] (money, balances, payouts, ids), [`config`] (the validated config
//! file), [`telemetry`] (logs and metrics), [`app`] (the composition root: store, service and
//! router from settings, serving until shutdown), [`cli`] (the `tally` command),
//! [`emulator`] with [`demo`] (faithful fakes of the four providers, and `tally demo` on them),
//! [`clock`] (injectable wall-clock time), [`secret`] (secret config values), [`sync`] (locks
//! that stay usable after a caught panic) and `coalesce` (one call in flight per key, joined by
//! every caller: fetches, payout lookups and migrations), on the ground floor: any module may
//! use them, and they import nothing above them.

pub mod app;
pub mod cli;
pub mod clock;
mod coalesce;
pub mod config;
pub mod demo;
pub mod domain;
pub mod emulator;
pub mod http;
pub mod providers;
pub mod secret;
pub mod service;
pub mod store;
pub mod sync;
pub mod telemetry;

/// rustls needs one process-wide crypto provider; tally uses ring for reqwest and sqlx alike.
pub fn install_crypto_provider() {
    // Err only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
