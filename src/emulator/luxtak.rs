//! The Luxtak emulator: signed POSTs (`AppId` + SHA-256 of the sorted params and the app key),
//! a timestamp window, the `code/msg/time/data` envelope with string amounts.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use serde_json::{Map, Value, json};

use super::data::{LUXTAK_PAYOUTS, LuxtakPayout, luxtak_balances};
use super::{Emulated, SendCallback, Shared, credentials, deliver, json as respond, unknown_payout};
use crate::domain::Provider;
use crate::sync::MutexExt;

/// This emulator's registration (see [`super::EMULATORS`]).
pub(super) const EMULATED: Emulated =
    Emulated { provider: Provider::Luxtak, routes, too_many_requests, demo_accounts, how_to_call };

fn demo_accounts(base_url: &url::Url) -> String {
    format!(
        "[[accounts]]\nid = \"luxtak-latam\"\nprovider = \"luxtak\"\nbase_url = \"{base_url}\"\napp_id = \"{}\"\napp_key = \"{}\"\n",
        credentials::LUXTAK_APP_ID,
        credentials::LUXTAK_APP_KEY
    )
}

fn how_to_call() -> String {
    format!("AppId: {}  app key: {}", credentials::LUXTAK_APP_ID, credentials::LUXTAK_APP_KEY)
}

fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/balance", post(balance))
        .route("/api/payout/status", post(status))
        .route("/api/payout/detail", post(detail))
}

fn envelope(http: StatusCode, code: i64, msg: &str, data: Value) -> Response {
    let time = chrono::Utc::now().timestamp();
    respond(http, json!({"code": code, "msg": msg, "time": time, "data": data}).to_string())
}

/// The documented rate-limit answer (PROVIDERS.md §2.6: 4004029 over HTTP 429).
fn too_many_requests() -> Response {
    envelope(StatusCode::TOO_MANY_REQUESTS, 4_004_029, "too many requests", json!({}))
}

/// Checks `AppId`, the signature and the timestamp window, as the platform does; returns the
/// body's params or the documented error: 4004100 / 4004101 for a missing `AppId` /
/// `Authorization`, 4004003 for a wrong one (PROVIDERS.md §2.6).
fn verify(shared: &Shared, headers: &HeaderMap, body: &Bytes) -> Result<Map<String, Value>, Box<Response>> {
    let refused = |code, msg| Box::new(envelope(StatusCode::UNAUTHORIZED, code, msg, json!({})));
    let denied = || refused(4_004_003, "permission denied");
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty());
    if header("AppId").is_none() {
        return Err(refused(4_004_100, "MerchantId or AppId is required"));
    }
    if header("Authorization").is_none() {
        return Err(refused(4_004_101, "Authorization is required"));
    }
    let Ok(Value::Object(params)) = serde_json::from_slice::<Value>(body) else {
        return Err(Box::new(envelope(
            StatusCode::BAD_REQUEST,
            4_001_000,
            "invalid parameter",
            json!({"err": "body is not a JSON object"}),
        )));
    };
    if header("AppId") != Some(credentials::LUXTAK_APP_ID) {
        return Err(denied());
    }
    let expected = crate::providers::luxtak::sign(&params, credentials::LUXTAK_APP_KEY);
    if header("Authorization") != Some(expected.as_str()) {
        return Err(denied());
    }
    let window = shared.options.luxtak_timestamp_window.as_secs() as i64;
    let fresh = params
        .get("timestamp")
        .and_then(Value::as_i64)
        .is_some_and(|t| (chrono::Utc::now().timestamp() - t).abs() <= window);
    if !fresh {
        return Err(Box::new(envelope(
            StatusCode::BAD_REQUEST,
            4_001_000,
            "invalid parameter",
            json!({"err": "request has expired"}),
        )));
    }
    Ok(params)
}

async fn balance(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(refused) = verify(&shared, &headers, &body) {
        return *refused;
    }
    let data: Vec<Value> =
        luxtak_balances(shared.minute()).into_iter().map(|(c, a)| json!({"currency": c, "amount": a})).collect();
    envelope(StatusCode::OK, 200, "success", Value::Array(data))
}

async fn status(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let params = match verify(&shared, &headers, &body) {
        Ok(p) => p,
        Err(refused) => return *refused,
    };
    if !params.contains_key("payout_id") && !params.contains_key("custom_code") {
        return envelope(
            StatusCode::BAD_REQUEST,
            400,
            "invalid parameters",
            json!({"error": "custom_code or payout_id required"}),
        );
    }
    let asked = |key: &str| params.get(key).and_then(Value::as_str);
    let found = LUXTAK_PAYOUTS
        .iter()
        .find(|p| asked("payout_id") == Some(p.payout_id) || asked("custom_code") == Some(p.custom_code));
    match found {
        Some(p) => {
            let status = shared.settled.locked().get(p.payout_id).cloned().unwrap_or_else(|| p.status.to_owned());
            let description =
                if p.remark.is_empty() || status != p.status { status.clone() } else { p.remark.to_owned() };
            envelope(
                StatusCode::OK,
                200,
                "success",
                json!({"payout_id": p.payout_id, "custom_code": p.custom_code, "status": status, "description": description}),
            )
        }
        None => envelope(StatusCode::NOT_FOUND, 4_004_004, "not found", json!({})),
    }
}

async fn detail(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let params = match verify(&shared, &headers, &body) {
        Ok(p) => p,
        Err(refused) => return *refused,
    };
    let id = params.get("transaction_id").and_then(Value::as_str).unwrap_or_default();
    match LUXTAK_PAYOUTS.iter().find(|p| p.payout_id == id) {
        Some(p) => {
            let status = shared.settled.locked().get(p.payout_id).cloned().unwrap_or_else(|| p.status.to_owned());
            envelope(
                StatusCode::OK,
                200,
                "success",
                json!({
                    "reference_id": p.custom_code, "transaction_id": p.payout_id, "user_name": "Demo Recipient",
                    "amount": p.amount, "source_amount": p.amount, "settlement_amount": p.amount, "arrival_amount": p.amount,
                    "exchange_rate": "1", "tax": "0.00", "fee": p.fee, "fee_user": "merchant",
                    "source_currency": p.currency, "arrival_currency": p.currency, "transaction_status": status,
                    "create_time": p.create_time, "update_time": p.update_time, "remark": p.remark,
                }),
            )
        }
        None => envelope(StatusCode::BAD_REQUEST, 4_001_021, "order not existed", json!({})),
    }
}

/// `POST /_control/luxtak/callback`: `{"url", "payout", "status"}` posts the payout
/// notification Luxtak would send (PROVIDERS.md §2.5) for a demo payout to `url`, with
/// `Authorization` the SHA-256 signature of its params and the app key.
pub(super) async fn send_callback(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let asked = match SendCallback::read(&body) {
        Ok(asked) => asked,
        Err(refused) => return *refused,
    };
    let Some(p) = LUXTAK_PAYOUTS.iter().find(|p| p.payout_id == asked.payout || p.custom_code == asked.payout) else {
        return unknown_payout(&asked.payout);
    };
    notify(&shared, p, asked.status.as_deref().unwrap_or(p.status), asked.url).await
}

/// Posts Luxtak's notification of `p` at `status` to `url`, signed with the demo app key.
async fn notify(shared: &Shared, p: &LuxtakPayout, status: &str, url: url::Url) -> Response {
    let notification = json!({
        "payoutId": p.payout_id,
        "custom_code": p.custom_code,
        "status": status,
        "msg": p.remark,
        "timestamp": chrono::Utc::now().timestamp(),
    })
    .to_string();
    let signature =
        crate::providers::luxtak::callback::expected_signature(notification.as_bytes(), credentials::LUXTAK_APP_KEY)
            .expect("the emulator's own notification is flat JSON");
    deliver(shared, url, notification, Some(signature)).await
}

/// `PUT /_control/luxtak/payouts/{id}`: `{"status": "PAID"}` moves a demo payout (by its
/// `payoutId` or `custom_code`) to another Luxtak status, as its lookups then report. As Luxtak
/// does (PROVIDERS.md §2.5), `PAID`, `REJECTED` and `REFUNDED` are notified to the `notify_url`
/// the emulator was told ([`super::Emulator::send_callbacks_to`]); the answer says so
/// (`{"id", "status", "callback": {"status", "body"} | null}`).
pub(super) async fn settle(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    body: Bytes,
) -> Response {
    let Some(p) = LUXTAK_PAYOUTS.iter().find(|p| p.payout_id == id || p.custom_code == id) else {
        return unknown_payout(&id);
    };
    let status = match super::settled_status(&body, "PAID, REJECTED, REFUNDED or PROCESSING") {
        Ok(status) => status,
        Err(refused) => return *refused,
    };
    shared.settled.locked().insert(p.payout_id, status.clone());
    let url = shared.luxtak_notify_url.locked().clone();
    let callback = match url {
        Some(url) if matches!(status.as_str(), "PAID" | "REJECTED" | "REFUNDED") => {
            super::delivered(notify(&shared, p, &status, url).await).await
        }
        _ => Value::Null,
    };
    respond(StatusCode::OK, json!({ "id": p.payout_id, "status": status, "callback": callback }).to_string())
}
