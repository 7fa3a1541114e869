//! Integration tests: the real app on port 0, a real SQLite file or a fresh PostgreSQL
//! database per test, upstream providers faked over real HTTP.

mod helpers;

mod api;
mod balances;
mod budgets;
mod callbacks;
mod cli;
mod connections;
mod dashboard;
mod demo;
mod deploy;
mod events;
mod grafana;
mod hostile;
mod monitors;
mod monthend;
mod openapi;
mod ops;
mod payouts;
mod reliability;
mod replicas;
mod secrets;
mod serve;
mod store;
mod watch;
mod webhooks;
