//! The webhook operations (SPEC §8.4): `GET /webhooks`, `POST /webhooks/{id}/recover`,
//! `POST /webhooks/{id}/test`, `POST /events/{id}/redeliver`, and the deliveries `GET
//! /events/{id}` shows. The actions need the `operate` role.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::auth::Operate;
use super::error::{ApiError, ErrorCode, Problem};
use super::events::EventLine;
use super::query::Params;
use crate::service::webhooks::WebhookOpError;

/// The last failed attempt of a webhook.
#[derive(Serialize, ToSchema)]
pub struct FailureLine {
    pub at: DateTime<Utc>,
    pub status_code: Option<u16>,
    pub error: Option<String>,
}

/// One configured webhook (never its secret).
#[derive(Serialize, ToSchema)]
pub struct WebhookLine {
    #[schema(example = "treasury-bot")]
    pub id: String,
    /// As configured, with any user, password or query value replaced by `REDACTED`.
    #[schema(example = "https://hooks.example.com/tally")]
    pub url: String,
    /// The event types it receives; null: every type.
    pub events: Option<Vec<String>>,
    /// The accounts whose events it receives; null: every account.
    pub accounts: Option<Vec<String>>,
    /// False once a `410 Gone` disabled it, until `POST /webhooks/{id}/recover`.
    pub enabled: bool,
    /// Deliveries not yet succeeded or failed (kept while it is disabled).
    pub pending: u64,
    /// The age of the oldest of them; null when none is pending.
    pub oldest_pending_seconds: Option<u64>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_failure: Option<FailureLine>,
}

#[derive(Serialize, ToSchema)]
pub struct WebhooksResponse {
    pub webhooks: Vec<WebhookLine>,
}

#[derive(Serialize, ToSchema)]
pub struct RequeuedResponse {
    /// How many deliveries were queued again.
    pub requeued: u64,
}

fn op_failed(e: WebhookOpError) -> ApiError {
    match e {
        WebhookOpError::UnknownWebhook(_) => ApiError::new(ErrorCode::WebhookNotFound, e.to_string()),
        WebhookOpError::UnknownEvent(id) => {
            ApiError::new(ErrorCode::EventNotFound, format!("no event `{}` is kept", id.escape_debug()))
        }
        WebhookOpError::Store(e) => super::events::store_failed(e),
    }
}

/// Every configured webhook with its state.
#[utoipa::path(
    get,
    path = "/webhooks",
    tag = "webhooks",
    responses(
        (status = 200, description = "Each configured webhook, in configuration order (never its secret).", body = WebhooksResponse),
        (status = 401, description = "Missing or unknown API key: `unauthorized`.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unreachable: `not_ready`.", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ()),
)]
pub async fn list(State(state): State<AppState>) -> Result<axum::Json<WebhooksResponse>, ApiError> {
    let now = state.service.now();
    let states = state.service.webhook_states().await.map_err(super::events::store_failed)?;
    let webhooks = states
        .into_iter()
        .map(|(c, s)| WebhookLine {
            id: c.id.clone(),
            url: c.shown_url(),
            events: (!c.events.is_empty()).then(|| c.events.clone()),
            accounts: (!c.accounts.is_empty()).then(|| c.accounts.iter().map(|a| a.to_string()).collect()),
            enabled: s.enabled,
            pending: s.pending,
            oldest_pending_seconds: s.oldest_pending.map(|o| crate::clock::age_seconds(now, o)),
            last_success_at: s.last_success_at,
            last_failure: s.last_failure.map(|f| FailureLine { at: f.at, status_code: f.status_code, error: f.error }),
        })
        .collect();
    Ok(axum::Json(WebhooksResponse { webhooks }))
}

/// Enables a webhook again (after a `410 Gone`) and re-queues its deliveries that failed.
#[utoipa::path(
    post,
    path = "/webhooks/{id}/recover",
    tag = "webhooks",
    params(
        ("id" = String, Path, description = "The webhook's id.", example = "treasury-bot"),
        ("since" = Option<String>, Query, description = "Re-queue the failed deliveries of events raised since this RFC 3339 time (default: the last 24 hours)."),
    ),
    responses(
        (status = 202, description = "Enabled; the failed deliveries since then are queued again.", body = RequeuedResponse),
        (status = 400, description = "Bad query: `unknown_parameter`, `invalid_query`, `invalid_time`.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown API key: `unauthorized`.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks the `operate` role: `forbidden`.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No webhook has this id: `webhook_not_found`.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unreachable: `not_ready`.", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ()),
)]
pub async fn recover(
    _: Operate,
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<(StatusCode, axum::Json<RequeuedResponse>), ApiError> {
    let since = Params::parse(query.as_deref(), &["since"])?.time("since")?;
    let requeued = state.service.recover_webhook(&id, since).await.map_err(op_failed)?;
    Ok((StatusCode::ACCEPTED, axum::Json(RequeuedResponse { requeued })))
}

/// Stores a `webhook.test` event (data `{"webhook": id}`), delivered to this webhook only.
#[utoipa::path(
    post,
    path = "/webhooks/{id}/test",
    tag = "webhooks",
    params(
        ("id" = String, Path, description = "The webhook's id.", example = "treasury-bot"),
    ),
    responses(
        (status = 202, description = "The event stored; its delivery follows (see `GET /events/{id}`).", body = EventLine),
        (status = 401, description = "Missing or unknown API key: `unauthorized`.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks the `operate` role: `forbidden`.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No webhook has this id: `webhook_not_found`.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unreachable: `not_ready`.", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ()),
)]
pub async fn test(
    _: Operate,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, axum::Json<EventLine>), ApiError> {
    let event = state.service.test_webhook(&id).await.map_err(op_failed)?;
    Ok((StatusCode::ACCEPTED, axum::Json(event.into())))
}

/// Delivers an event again: to one webhook (even one it was not for), or to every webhook it
/// was for.
#[utoipa::path(
    post,
    path = "/events/{id}/redeliver",
    tag = "webhooks",
    params(
        ("id" = String, Path, description = "The event's id.", example = "evt_0000000000000000042"),
        ("webhook" = Option<String>, Query, description = "Only to this webhook."),
    ),
    responses(
        (status = 202, description = "Queued again.", body = RequeuedResponse),
        (status = 400, description = "Bad query: `unknown_parameter`, `invalid_query`.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown API key: `unauthorized`.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks the `operate` role: `forbidden`.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No event has this id: `event_not_found`; no webhook has the one named: `webhook_not_found`.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unreachable: `not_ready`.", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ()),
)]
pub async fn redeliver(
    _: Operate,
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<(StatusCode, axum::Json<RequeuedResponse>), ApiError> {
    let params = Params::parse(query.as_deref(), &["webhook"])?;
    let requeued = state.service.redeliver(&id, params.single("webhook")?).await.map_err(op_failed)?;
    Ok((StatusCode::ACCEPTED, axum::Json(RequeuedResponse { requeued })))
}
