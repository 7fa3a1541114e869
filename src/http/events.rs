//! `GET /events` (the feed, with its long-poll) and `GET /events/{id}`.

use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorCode, Problem};
use super::query::Params;
use crate::domain::AccountId;
use crate::domain::event::{EVENT_TYPES, Event, event_seq};
use crate::service::events::MAX_WAIT;
use crate::store::{AttemptRecord, Delivery, EventQuery, StoreError};

/// The feed's page size when `limit` is not given, and the largest one.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

/// One event (SPEC §8.1).
#[derive(Serialize, ToSchema)]
pub struct EventLine {
    /// Opaque, unique, and in feed order.
    #[schema(example = "evt_0000000000000000042")]
    pub id: String,
    #[serde(rename = "type")]
    #[schema(schema_with = event_type)]
    pub kind: String,
    /// When tally observed the fact.
    pub timestamp: DateTime<Utc>,
    /// The fact. `balance.changed`: `account, provider, wallet, currency, previous` (a figures
    /// object or null), `current` (a figures object: `available, pending, reserved, total`
    /// as exact decimal strings or null, and `blocked`), `observed_at`.
    /// `balance.threshold_crossed` and `balance.threshold_cleared`: `monitor, account, provider,
    /// wallet, currency, field, condition` (`below` or `above`), `threshold, clear, value`
    /// (exact decimal strings), `observed_at`.
    /// `payout.status_changed` and `payout.finalized` (sent with it when the status is final):
    /// `account, provider, previous_status` (null on first sight), `payout` (the
    /// `/payouts/{id}` object). `account.unhealthy`: `account, provider, error` (as in
    /// `/balances`), `last_success_at`. `account.recovered`: `account, provider,
    /// unhealthy_since, recovered_at`. `webhook.test`: `webhook`.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

impl From<Event> for EventLine {
    fn from(e: Event) -> Self {
        Self { id: e.id, kind: e.kind, timestamp: e.timestamp, data: e.data }
    }
}

/// The schema of [`EventLine::kind`]: one of [`EVENT_TYPES`].
fn event_type() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(EVENT_TYPES))
        .examples(["balance.changed"])
        .build()
}

#[derive(Serialize, ToSchema)]
pub struct FeedResponse {
    /// Oldest first.
    pub events: Vec<EventLine>,
    /// The id to pass as `after` for the next page: the last event's, or the `after` given
    /// when there is no event (null when neither).
    #[schema(example = "evt_0000000000000000042")]
    pub next: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EventResponse {
    pub event: EventLine,
    /// One delivery per webhook the event was meant for (or redelivered to).
    pub deliveries: Vec<DeliveryLine>,
}

/// The event feed, oldest first after the cursor. Every reader following `next` sees every
/// event exactly once, in the order the events were committed, even while several replicas
/// write events at once.
#[utoipa::path(
    get,
    path = "/events",
    tag = "events",
    params(
        ("after" = Option<String>, Query, description = "Events after this id (`next` of the previous page); without it, from the oldest event kept."),
        ("type" = Option<Vec<String>>, Query, description = "Only these types (repeatable or comma-separated).", explode = true),
        ("account" = Option<Vec<String>>, Query, description = "Only events of these accounts (repeatable or comma-separated).", explode = true),
        ("limit" = Option<u32>, Query, description = "At most this many events (1-1000, default 100).", minimum = 1, maximum = 1000),
        ("wait" = Option<u32>, Query, description = "Seconds (0-30) to hold the request open when there is no event yet: it answers as soon as one lands, or with no event when the wait (or the instance's `[events] max_wait`, if lower) has passed.", minimum = 0, maximum = 30),
    ),
    responses(
        (status = 200, description = "The events after the cursor, and the cursor of the next page.", body = FeedResponse),
        (status = 400, description = "Bad query: `unknown_parameter`, `invalid_query` (a parameter given twice, an empty list item, a value holding a control character, an `after` that is no event id, a `wait` out of 0-30), `unknown_account`, `unknown_event_type`, `invalid_limit`.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown API key: `unauthorized`.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unreachable: `not_ready`.", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ()),
)]
pub async fn get_events(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<axum::Json<FeedResponse>, ApiError> {
    let params = Params::parse(query.as_deref(), &["after", "type", "account", "limit", "wait"])?;
    let after = params.single("after")?;
    let after_seq = after
        .map(|a| {
            event_seq(a).ok_or_else(|| ApiError::new(ErrorCode::InvalidQuery, format!("`after` is no event id: `{a}`")))
        })
        .transpose()?;
    let types = params.parsed("type", ErrorCode::UnknownEventType, |t| {
        EVENT_TYPES.iter().find(|known| **known == t).map(|t| (*t).to_owned())
    })?;
    let accounts = params
        .list("account")?
        .into_iter()
        .map(|a| {
            let id = a.parse::<AccountId>().ok().filter(|id| state.service.account(id).is_some());
            id.ok_or_else(|| ApiError::unknown_account(a))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let limit = match params.single("limit")? {
        None => DEFAULT_LIMIT,
        Some(l) => l.parse::<u32>().ok().filter(|l| (1..=MAX_LIMIT).contains(l)).ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidLimit, format!("`limit` must be a whole number from 1 to 1000, not `{l}`"))
        })?,
    };
    let wait = match params.single("wait")? {
        None => Duration::ZERO,
        Some(w) => w.parse::<u64>().ok().map(Duration::from_secs).filter(|w| *w <= MAX_WAIT).ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidQuery, format!("`wait` must be whole seconds from 0 to 30, not `{w}`"))
        })?,
    };
    let query = EventQuery { after: after_seq, types, accounts, limit };
    let events = state.service.events(&query, wait).await.map_err(store_failed)?;
    let next = events.last().map(|e| e.id.clone()).or_else(|| after.map(str::to_owned));
    Ok(axum::Json(FeedResponse { events: events.into_iter().map(EventLine::from).collect(), next }))
}

/// One event, with its deliveries.
#[utoipa::path(
    get,
    path = "/events/{id}",
    tag = "events",
    params(
        ("id" = String, Path, description = "The event's id.", example = "evt_0000000000000000042"),
    ),
    responses(
        (status = 200, description = "The event, and its deliveries to webhooks.", body = EventResponse),
        (status = 401, description = "Missing or unknown API key: `unauthorized`.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No event has this id (or it was pruned): `event_not_found`.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unreachable: `not_ready`.", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ()),
)]
pub async fn get_event(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<EventResponse>, ApiError> {
    match state.service.event(&id).await.map_err(store_failed)? {
        Some(event) => {
            let seq = event_seq(&event.id).unwrap_or_default();
            let deliveries = state.service.event_deliveries(seq).await.map_err(store_failed)?;
            let deliveries = deliveries.into_iter().map(Into::into).collect();
            Ok(axum::Json(EventResponse { event: event.into(), deliveries }))
        }
        None => Err(ApiError::new(ErrorCode::EventNotFound, format!("no event `{}` is kept", id.escape_debug()))),
    }
}

pub(super) fn store_failed(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "event query failed");
    ApiError::new(ErrorCode::NotReady, "the store is unreachable").retry_after(5)
}

/// One attempt of a delivery.
#[derive(Serialize, ToSchema)]
pub struct AttemptLine {
    pub at: DateTime<Utc>,
    /// The receiver's status; null when it did not answer.
    pub status_code: Option<u16>,
    /// Why there was no answer (a timeout, no connection); null when it answered.
    pub error: Option<String>,
    pub duration_ms: u64,
}

impl From<AttemptRecord> for AttemptLine {
    fn from(a: AttemptRecord) -> Self {
        Self { at: a.at, status_code: a.status_code, error: a.error, duration_ms: a.duration_ms }
    }
}

/// The delivery of an event to one webhook.
#[derive(Serialize, ToSchema)]
pub struct DeliveryLine {
    #[schema(example = "treasury-bot")]
    pub webhook: String,
    #[schema(example = "pending", pattern = "^(pending|succeeded|failed)$")]
    pub status: &'static str,
    /// Oldest first.
    pub attempts: Vec<AttemptLine>,
    /// When the next attempt is due; null once it succeeded or failed.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

impl From<Delivery> for DeliveryLine {
    fn from(d: Delivery) -> Self {
        Self {
            webhook: d.webhook,
            status: d.status.as_str(),
            attempts: d.attempts.into_iter().map(AttemptLine::from).collect(),
            next_attempt_at: d.next_attempt_at,
        }
    }
}
