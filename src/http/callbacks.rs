//! `POST /callbacks/{account}` (open: each provider's own verification stands in for a key)
//! and `GET /callbacks` (the receipts), SPEC §9.2.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorCode, Problem};
use super::query::Params;
use crate::domain::{AccountId, PayoutStatus, Provider};
use crate::providers::{CallbackAck, CallbackRefusalKind, MAX_CALLBACK_BYTES};
use crate::service::callbacks::CallbackError;
use crate::store::CallbackReceipt;

/// Receipts per page when `limit` is not given, and the most.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

/// How a JSON-answering provider's callback is acknowledged.
#[derive(Serialize, ToSchema)]
pub struct Received {
    #[schema(example = true)]
    pub received: bool,
}

/// A callback from a provider: verified as that provider documents (LeanX: HS256 JWT with the
/// account's `hash_key`; Luxtak: `Authorization` SHA-256 signature with the `app_key`),
/// or only a trigger to look again (Ibanera; LeanX without `hash_key`). Needs no API key.
#[utoipa::path(
    post,
    path = "/callbacks/{account}",
    tag = "payouts",
    params(
        ("account" = String, Path, description = "The account the callback is for: give the provider `https://<tally>/callbacks/<account>`.", example = "leanx-main"),
    ),
    request_body(content = String, description = "The provider's callback body, exactly as it sends it (LeanX `{\"data\": \"<JWT>\"}`; Luxtak its notification JSON), at most 64 KiB.", content_type = "application/json"),
    responses(
        (status = 200, description = "Taken (applied, a duplicate, or a trigger): `{\"received\": true}`, or `text/plain` `success` for Luxtak.",
            content((Received = "application/json"), (String = "text/plain", example = "success"))),
        (status = 400, description = "The body is not the provider's documented shape: `invalid_callback`.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "The signature, algorithm or validity does not check out: `callback_unverified`; nothing changed.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such account: `unknown_account`; or its provider sends no callbacks: `callbacks_unsupported`.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is over 64 KiB: `payload_too_large`.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A verified payout could not be stored (the provider should send it again): `not_ready`.", body = Problem, content_type = "application/problem+json"),
    ),
    security(()),
)]
pub async fn receive_callback(
    State(state): State<AppState>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = axum::body::to_bytes(body, MAX_CALLBACK_BYTES).await.map_err(|_| {
        ApiError::new(ErrorCode::PayloadTooLarge, format!("a callback body is at most {MAX_CALLBACK_BYTES} bytes"))
    })?;
    match state.service.receive_callback(&account, &body, &headers).await {
        Ok(CallbackAck::Json) => Ok(axum::Json(Received { received: true }).into_response()),
        Ok(CallbackAck::Text(text)) => {
            Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"))], text).into_response())
        }
        Err(CallbackError::UnknownAccount(id)) => Err(ApiError::unknown_account_in_path(&id)),
        Err(CallbackError::Refused(refusal)) => {
            let code = match refusal.kind {
                CallbackRefusalKind::Unverified => ErrorCode::CallbackUnverified,
                CallbackRefusalKind::Malformed => ErrorCode::InvalidCallback,
                CallbackRefusalKind::Unsupported => ErrorCode::CallbacksUnsupported,
            };
            Err(ApiError::new(code, refusal.message))
        }
        Err(CallbackError::Store(e)) => {
            tracing::error!(account = %account, error = %e, "could not store a verified callback");
            Err(ApiError::new(ErrorCode::NotReady, "the store is unreachable").retry_after(5))
        }
    }
}

/// One callback as received and judged.
#[derive(Serialize, ToSchema)]
pub struct ReceiptLine {
    pub received_at: DateTime<Utc>,
    #[schema(value_type = String, example = "leanx-main")]
    pub account: AccountId,
    pub provider: Provider,
    /// True when the provider's verification passed (a trigger is never verified).
    pub verified: bool,
    #[schema(example = "applied", pattern = "^(applied|duplicate|trigger|rejected)$")]
    pub outcome: &'static str,
    /// The payout it named (for a trigger: the id read from the unverified body).
    #[schema(example = "PAYOUT-A9D5:174307-LEANX")]
    pub payout_id: Option<String>,
    /// The status it reported, verified.
    pub status: Option<PayoutStatus>,
    /// Why it was refused, or a note on a verified one that changed nothing.
    pub error: Option<String>,
}

impl From<CallbackReceipt> for ReceiptLine {
    fn from(r: CallbackReceipt) -> Self {
        Self {
            received_at: r.received_at,
            account: r.account,
            provider: r.provider,
            verified: r.verified,
            outcome: r.outcome.as_str(),
            payout_id: r.payout_id,
            status: r.status,
            error: r.error,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ReceiptsResponse {
    /// Newest first.
    pub callbacks: Vec<ReceiptLine>,
}

/// The callbacks received, newest first (kept as long as events).
#[utoipa::path(
    get,
    path = "/callbacks",
    tag = "payouts",
    params(
        ("account" = Option<String>, Query, description = "Only this account's callbacks."),
        ("limit" = Option<u32>, Query, description = "At most this many (1-1000, default 100).", minimum = 1, maximum = 1000),
    ),
    responses(
        (status = 200, description = "The receipts, newest first.", body = ReceiptsResponse),
        (status = 400, description = "Bad query: `unknown_parameter`, `invalid_query`, `unknown_account`, `invalid_limit`.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown API key: `unauthorized`.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unreachable: `not_ready`.", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ()),
)]
pub async fn list_callbacks(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<axum::Json<ReceiptsResponse>, ApiError> {
    let params = Params::parse(query.as_deref(), &["account", "limit"])?;
    let account = configured_account(&state, params.single("account")?)?;
    let limit = limit(params.single("limit")?)?;
    let receipts =
        state.service.callback_receipts(account.as_ref(), limit).await.map_err(super::events::store_failed)?;
    Ok(axum::Json(ReceiptsResponse { callbacks: receipts.into_iter().map(ReceiptLine::from).collect() }))
}

/// A configured account named by the query, if any.
pub(super) fn configured_account(state: &AppState, given: Option<&str>) -> Result<Option<AccountId>, ApiError> {
    given
        .map(|a| {
            let id = a.parse::<AccountId>().ok().filter(|id| state.service.account(id).is_some());
            id.ok_or_else(|| ApiError::unknown_account(a))
        })
        .transpose()
}

/// `limit`: 1 to 1000, default 100.
pub(super) fn limit(given: Option<&str>) -> Result<u32, ApiError> {
    match given {
        None => Ok(DEFAULT_LIMIT),
        Some(l) => l.parse::<u32>().ok().filter(|l| (1..=MAX_LIMIT).contains(l)).ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidLimit, format!("`limit` must be a whole number from 1 to 1000, not `{l}`"))
        }),
    }
}
