//! Webhooks (SPEC §8.3, §8.4): the dispatcher, which claims due deliveries through the store
//! (the outbox: each delivery was written in its event's transaction) and sends them signed,
//! and the operations (redeliver, recover, test, the state of each webhook).
//!
//! The dispatcher wakes when events are committed (the store's event signal: in-process, and
//! `LISTEN tally_events` on PostgreSQL), when an attempt ends, when the next delivery falls due
//! by the service's clock, and when an operation re-queues deliveries; never by fast polling.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::{Service, Within};
use crate::config::WebhookConfig;
use crate::domain::event::{self, Event};
use crate::domain::webhook::{self, MAX_IN_FLIGHT, Verdict};
use crate::store::{AttemptRecord, AttemptResult, ClaimedDelivery, Delivery, StoreError, WebhookStats};
use crate::sync::MutexExt;

/// How long a claim outlives its attempt's timeout: a replica that died mid-attempt holds the
/// delivery this much longer, then another takes it over.
const CLAIM_MARGIN: Duration = Duration::from_secs(30);
/// The dispatcher reads the store at least this often, whatever woke it or not (a wake lost
/// while a `LISTEN` connection restarts, a claim another replica holds).
const MAX_IDLE: Duration = Duration::from_secs(60);
/// When deliveries are due but their webhook has no free slot (its attempts in flight are
/// another replica's), the dispatcher looks again after this.
const BUSY_RECHECK: Duration = Duration::from_secs(1);
/// After the store failed, the dispatcher waits this long before asking again.
const STORE_BACKOFF: Duration = Duration::from_secs(5);
/// The backlog gauges are read from the store at most this often (by the dispatcher, when it
/// wakes); their ages are counted at each scrape.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);
/// How long shutdown waits for the dispatcher to release its claims.
const STOP_BOUND: Duration = Duration::from_secs(5);
/// The delivery outcomes counted by `tally_webhook_deliveries_total`: `succeeded` and `failed`
/// end a delivery; `retried` is an attempt that failed with a retry scheduled.
pub const OUTCOMES: [&str; 3] = ["succeeded", "retried", "failed"];

/// The configured webhooks and what the dispatcher keeps of them.
pub struct Webhooks {
    configs: Vec<WebhookConfig>,
    http: reqwest::Client,
    /// This process's name on its claims.
    holder: String,
    /// Rings when an operation re-queued deliveries.
    wake: Notify,
    /// Each webhook's pending count and oldest pending delivery, as last read: the gauges.
    backlog: Mutex<HashMap<String, Backlog>>,
    /// When the backlog was last read.
    backlog_read_at: Mutex<Option<tokio::time::Instant>>,
    /// Attempts finished (recorded or not) by this process: what a test waits on, instead of
    /// guessing how long an attempt takes.
    attempts_done: watch::Sender<u64>,
}

/// A webhook's pending deliveries: how many, and when the oldest was created.
type Backlog = (u64, Option<DateTime<Utc>>);

/// Why an operation on webhooks was refused.
#[derive(Debug, thiserror::Error)]
pub enum WebhookOpError {
    #[error("no webhook `{0}` is configured")]
    UnknownWebhook(String),
    #[error("no event `{0}` is kept")]
    UnknownEvent(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Webhooks {
    pub fn new(configs: Vec<WebhookConfig>) -> Self {
        crate::install_crypto_provider();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tally/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("the webhook HTTP client builds");
        for c in &configs {
            for outcome in OUTCOMES {
                metrics::counter!("tally_webhook_deliveries_total", "webhook" => c.id.clone(), "outcome" => outcome)
                    .increment(0);
            }
            metrics::gauge!("tally_webhook_pending", "webhook" => c.id.clone()).set(0.0);
            metrics::gauge!("tally_webhook_oldest_pending_seconds", "webhook" => c.id.clone()).set(0.0);
        }
        let holder = format!("tally-{:016x}", rand::random::<u64>());
        Self {
            configs,
            http,
            holder,
            wake: Notify::new(),
            backlog: Mutex::default(),
            backlog_read_at: Mutex::default(),
            attempts_done: watch::Sender::new(0),
        }
    }

    /// Counts the attempts this process has finished.
    pub fn attempts_done(&self) -> watch::Receiver<u64> {
        self.attempts_done.subscribe()
    }

    pub fn configs(&self) -> &[WebhookConfig] {
        &self.configs
    }

    fn config(&self, id: &str) -> Option<&WebhookConfig> {
        self.configs.iter().find(|c| c.id == id)
    }
}

/// The running dispatcher: stopped at shutdown, releasing its claims.
pub struct Dispatcher {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Dispatcher {
    /// Stops sending (attempts in flight are dropped) and releases this process's claims, so
    /// their deliveries go out after the next start (or from another replica) at once.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let mut task = self.task;
        if tokio::time::timeout(STOP_BOUND, &mut task).await.is_err() {
            task.abort();
            tracing::warn!("the webhook dispatcher did not stop in time");
        }
    }
}

impl Service {
    pub fn webhooks(&self) -> &Webhooks {
        &self.webhooks
    }

    /// Starts the dispatcher (when webhooks are configured).
    pub fn spawn_webhook_dispatcher(self: &Arc<Self>) -> Option<Dispatcher> {
        if self.webhooks.configs.is_empty() {
            return None;
        }
        let (stop, stopping) = watch::channel(false);
        let task = tokio::spawn(Arc::clone(self).dispatch(stopping));
        Some(Dispatcher { stop, task })
    }

    async fn dispatch(self: Arc<Self>, mut stopping: watch::Receiver<bool>) {
        let mut committed = self.store.event_signal();
        let mut moved = crate::clock::Moved::of(self.clock.as_ref());
        let mut in_flight = JoinSet::new();
        loop {
            committed.borrow_and_update();
            moved.seen();
            let wait = match self.claim_and_send(&mut in_flight).await {
                Ok(wait) => wait,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the webhook deliveries from the store");
                    STORE_BACKOFF
                }
            };
            tokio::select! {
                _ = stopping.changed() => break,
                _ = committed.changed() => {}
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                () = self.webhooks.wake.notified() => {}
                () = moved.changed() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        in_flight.abort_all();
        while in_flight.join_next().await.is_some() {}
        if let Err(e) = self.store.release_claims(&self.webhooks.holder).await {
            tracing::warn!(error = %e, "could not release this process's webhook claims; they expire by themselves");
        }
    }

    /// Claims what is due and starts its attempts; returns how long to wait at most before
    /// looking again.
    async fn claim_and_send(self: &Arc<Self>, in_flight: &mut JoinSet<()>) -> Result<Duration, StoreError> {
        let now = self.clock.now();
        let longest = self.webhooks.configs.iter().map(|c| c.timeout).max().unwrap_or_default();
        // Bounded: a webhook's timeout is at most 5 minutes (config).
        let claim_for = TimeDelta::from_std(longest + CLAIM_MARGIN).unwrap_or(TimeDelta::MAX);
        let until = now.checked_add_signed(claim_for).unwrap_or(DateTime::<Utc>::MAX_UTC);
        let claims = self.store.claim_deliveries(&self.webhooks.holder, now, until, MAX_IN_FLIGHT).await?;
        for claim in claims {
            in_flight.spawn(Arc::clone(self).attempt(claim));
        }
        self.refresh_backlog().await;
        let next = self.store.next_delivery_at().await?;
        Ok(match next {
            None => MAX_IDLE,
            Some(at) if at <= now => BUSY_RECHECK,
            Some(at) => (at - now).to_std().unwrap_or(BUSY_RECHECK).min(MAX_IDLE),
        })
    }

    async fn refresh_backlog(&self) {
        {
            let mut read_at = self.webhooks.backlog_read_at.locked();
            if read_at.is_some_and(|at| at.elapsed() < BACKLOG_EVERY) {
                return;
            }
            *read_at = Some(tokio::time::Instant::now());
        }
        match self.store.webhook_stats(Within::Health).await {
            Ok(stats) => {
                let mut backlog = self.webhooks.backlog.locked();
                for (id, s) in stats {
                    backlog.insert(id, (s.pending, s.oldest_pending));
                }
            }
            Err(e) => tracing::debug!(error = %e, "could not read the webhook backlog"),
        }
    }

    /// Sets the backlog gauges from what the dispatcher last read, aged to now (at scrape).
    pub fn publish_webhook_gauges(&self) {
        let now = self.clock.now();
        for (id, (pending, oldest)) in self.webhooks.backlog.locked().iter() {
            metrics::gauge!("tally_webhook_pending", "webhook" => id.clone()).set(*pending as f64);
            let age = oldest.map_or(0.0, |o| crate::clock::age(now, o).as_secs_f64());
            metrics::gauge!("tally_webhook_oldest_pending_seconds", "webhook" => id.clone()).set(age);
        }
    }

    /// One attempt of a claimed delivery: sent signed, judged, recorded.
    async fn attempt(self: Arc<Self>, claim: ClaimedDelivery) {
        let Some(config) = self.webhooks.config(&claim.webhook) else { return };
        let body = serde_json::to_vec(&claim.event).expect("an event serializes");
        let at = self.clock.now();
        let timestamp = at.timestamp();
        let keys = std::iter::once(config.secret.expose()).chain(config.previous_secret.as_ref().map(|s| s.expose()));
        let signature = webhook::signature_header(keys, &claim.event.id, timestamp, &body);
        let started = tokio::time::Instant::now();
        let sent = self
            .webhooks
            .http
            .post(config.url.clone())
            .timeout(config.timeout)
            .header("webhook-id", &claim.event.id)
            .header("webhook-timestamp", timestamp)
            .header("webhook-signature", signature)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        // The answer's body is never read: only its status and `Retry-After` count.
        let (status_code, error, retry_after) = match sent {
            Ok(answer) => {
                let retry_after = answer
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| crate::providers::parse_retry_after(v, std::time::SystemTime::now()));
                (Some(answer.status().as_u16()), None, retry_after)
            }
            Err(e) => (None, Some(describe(&e, config.timeout)), None),
        };
        let result = match webhook::verdict(status_code) {
            Verdict::Succeeded => AttemptResult::Succeeded,
            Verdict::Fail => AttemptResult::Failed,
            Verdict::Gone => AttemptResult::Gone,
            Verdict::Retry => {
                let jitter = rand::random_range(0.9..=1.1);
                match webhook::retry_delay(&config.retry_schedule, claim.attempts + 1, retry_after, jitter) {
                    Some(delay) => {
                        // Bounded: a schedule's delay by the config, a `Retry-After` by MAX_RETRY_AFTER.
                        let now = self.clock.now();
                        let at = TimeDelta::from_std(delay).ok().and_then(|d| now.checked_add_signed(d)).unwrap_or(now);
                        // To the millisecond, as every time tally keeps and shows.
                        AttemptResult::RetryAt(DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at))
                    }
                    None => AttemptResult::Failed,
                }
            }
        };
        let record = AttemptRecord { at, status_code, error, duration_ms };
        let outcome = match result {
            AttemptResult::Succeeded => "succeeded",
            AttemptResult::RetryAt(_) => "retried",
            AttemptResult::Failed | AttemptResult::Gone => "failed",
        };
        metrics::counter!("tally_webhook_deliveries_total", "webhook" => claim.webhook.clone(), "outcome" => outcome)
            .increment(1);
        if result == AttemptResult::Gone {
            tracing::warn!(webhook = %claim.webhook, "the webhook answered 410 Gone: disabled until POST /webhooks/{{id}}/recover");
        } else if outcome == "failed" {
            tracing::warn!(webhook = %claim.webhook, event = %claim.event.id, status = ?status_code, error = ?record.error, "webhook delivery failed");
        }
        if let Err(e) = self.store.finish_attempt(&claim, &self.webhooks.holder, &record, result).await {
            tracing::warn!(webhook = %claim.webhook, event = %claim.event.id, error = %e,
                "could not record a webhook attempt; the delivery is attempted again once its claim expires");
        }
        self.webhooks.attempts_done.send_modify(|n| *n += 1);
    }

    /// The deliveries of one event (by its feed position).
    pub async fn event_deliveries(&self, seq: i64) -> Result<Vec<Delivery>, StoreError> {
        self.store.deliveries(seq, Within::Until(tokio::time::Instant::now() + self.request_timeout)).await
    }

    /// Queues an event again, for one webhook or every one it was for; returns how many
    /// deliveries.
    pub async fn redeliver(&self, id: &str, webhook: Option<&str>) -> Result<u64, WebhookOpError> {
        if let Some(w) = webhook {
            self.webhooks.config(w).ok_or_else(|| WebhookOpError::UnknownWebhook(w.to_owned()))?;
        }
        let unknown = || WebhookOpError::UnknownEvent(id.to_owned());
        let seq = event::event_seq(id).ok_or_else(unknown)?;
        self.event(id).await?.ok_or_else(unknown)?;
        let within = Within::Until(tokio::time::Instant::now() + self.request_timeout);
        let n = self.store.requeue_event(seq, webhook, self.clock.now(), within).await?;
        self.webhooks.wake.notify_one();
        Ok(n)
    }

    /// Enables a webhook again and queues its deliveries that failed since `since` (default:
    /// the last 24 hours); returns how many.
    pub async fn recover_webhook(&self, id: &str, since: Option<DateTime<Utc>>) -> Result<u64, WebhookOpError> {
        self.webhooks.config(id).ok_or_else(|| WebhookOpError::UnknownWebhook(id.to_owned()))?;
        let now = self.clock.now();
        let since = since.unwrap_or(now - TimeDelta::hours(24));
        let within = Within::Until(tokio::time::Instant::now() + self.request_timeout);
        let n = self.store.recover_webhook(id, since, now, within).await?;
        self.webhooks.wake.notify_one();
        Ok(n)
    }

    /// Stores a `webhook.test` event, which is delivered to that webhook only.
    pub async fn test_webhook(&self, id: &str) -> Result<Event, WebhookOpError> {
        self.webhooks.config(id).ok_or_else(|| WebhookOpError::UnknownWebhook(id.to_owned()))?;
        let event = event::webhook_test(id, self.clock.now());
        let within = Within::Until(tokio::time::Instant::now() + self.request_timeout);
        Ok(self.store.append_event(&event, within).await?)
    }

    /// Each configured webhook with its state.
    pub async fn webhook_states(&self) -> Result<Vec<(&WebhookConfig, WebhookStats)>, StoreError> {
        let within = Within::Until(tokio::time::Instant::now() + self.request_timeout);
        let mut stats: HashMap<String, WebhookStats> = self.store.webhook_stats(within).await?.into_iter().collect();
        Ok(self.webhooks.configs.iter().map(|c| (c, stats.remove(&c.id).unwrap_or_default())).collect())
    }
}

/// Why an attempt got no answer, in words that never hold the URL (it may carry a credential).
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        format!("no answer within {}", humantime::format_duration(timeout))
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        "the request failed before an answer".to_owned()
    }
}
