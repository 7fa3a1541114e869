//! The LeanX emulator: `auth-token` header; POST-only; the `response_code` envelope with
//! amounts as JSON numbers.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::data::{LEANX_PAYOUTS, LeanxPayout, leanx_pools};
use super::{Emulated, SendCallback, Shared, credentials, deliver, delivered, json, unknown_payout};
use crate::domain::Provider;
use crate::sync::MutexExt;

/// This emulator's registration (see [`super::EMULATORS`]).
pub(super) const EMULATED: Emulated =
    Emulated { provider: Provider::Leanx, routes, too_many_requests, demo_accounts, how_to_call };

fn demo_accounts(base_url: &url::Url) -> String {
    let account = |id: &str, token: &str| {
        format!(
            "[[accounts]]\nid = \"{id}\"\nprovider = \"leanx\"\nbase_url = \"{base_url}\"\nauth_token = \"{token}\"\nhash_key = \"{}\"\n",
            credentials::LEANX_HASH_KEY
        )
    };
    [account("leanx-main", credentials::LEANX_MAIN_TOKEN), account("leanx-ops", credentials::LEANX_OPS_TOKEN)]
        .join("\n")
}

fn how_to_call() -> String {
    format!(
        "auth-token: {} (or {})  callback Hash Key: {}",
        credentials::LEANX_MAIN_TOKEN,
        credentials::LEANX_OPS_TOKEN,
        credentials::LEANX_HASH_KEY
    )
}

fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v1/merchant/overall-balance", post(balance))
        .route("/api/v1/merchant/get-payout-transaction-by-id", post(payout))
}

fn token(headers: &HeaderMap) -> Option<&'static str> {
    let presented = headers.get("auth-token")?.to_str().ok()?;
    [credentials::LEANX_MAIN_TOKEN, credentials::LEANX_OPS_TOKEN].into_iter().find(|t| *t == presented)
}

/// The docs name `INVALID_TOKEN` (FAQ) but show no error answer; this shape is assumed.
fn invalid_token() -> Response {
    json(StatusCode::UNAUTHORIZED, r#"{"response_code":4001,"description":"INVALID_TOKEN","app_version":"/api/v1","data":null,"breakdown_errors":"INVALID_TOKEN","token":""}"#.to_owned())
}

/// LeanX documents no rate limit (PROVIDERS.md §1.6); this envelope, over HTTP 429, is assumed.
fn too_many_requests() -> Response {
    json(StatusCode::TOO_MANY_REQUESTS, r#"{"response_code":4290,"description":"TOO_MANY_REQUESTS","app_version":"/api/v1","data":null,"breakdown_errors":"TOO_MANY_REQUESTS","token":""}"#.to_owned())
}

async fn balance(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let Some(token) = token(&headers) else { return invalid_token() };
    let (transaction, mut prefund) = leanx_pools(token, shared.minute()).expect("known tokens have pools");
    if let Some(held) = shared.leanx_prefund.locked().get(token) {
        prefund = *held;
    }
    json(
        StatusCode::OK,
        format!(
            r#"{{"response_code":2000,"description":"SUCCESS","app_version":"/api/v1","talk_to_server_before":"{now}","data":{{"transaction_balance":{{"value":{transaction},"pool_name":"TRANSACTION","api_key":"86774f4a-3d60-4197-a9b2-5b72b5034695","record_status":1,"updated_at":"{now}","account_id":57,"id":337,"pool_type":1,"created_at":"2024-01-03T11:58:03"}},"prefund_balance":{prefund},"total_transaction_as_of_today":0}},"breakdown_errors":null,"token":""}}"#,
            now = shared.local_now(8)
        ),
    )
}

#[derive(serde::Deserialize)]
struct Lookup {
    #[serde(rename = "_id")]
    id: Option<String>,
}

async fn payout(State(shared): State<Arc<Shared>>, headers: HeaderMap, Query(q): Query<Lookup>) -> Response {
    let Some(token) = token(&headers) else { return invalid_token() };
    let id = q.id.unwrap_or_default();
    let found = LEANX_PAYOUTS.iter().find(|p| p.token == token && (p.id == id || p.external_ref == id));
    match found {
        Some(p) => {
            let settled = shared.settled.locked().get(p.id).cloned();
            json(StatusCode::OK, payout_body(p, settled.as_deref().unwrap_or(p.status)))
        }
        // Not documented either: a refusal without data, as tally reads it.
        None => json(StatusCode::OK, r#"{"response_code":4004,"description":"PAYOUT_NOT_FOUND","app_version":"/api/v1","data":null,"breakdown_errors":"PAYOUT_NOT_FOUND","token":""}"#.to_owned()),
    }
}

fn payout_body(p: &LeanxPayout, status: &str) -> String {
    // The seed's error belongs to its own (failed) status only.
    let error = p.error.filter(|_| status == p.status).map_or(String::new(), |(code, message)| {
        format!(r#","error_message":{{"response_code":5223,"error_code":"{code}","error_message":"{message}","description":"PAYOUT_FAILED","data":null}}"#)
    });
    format!(
        r#"{{"response_code":2000,"description":"SUCCESS","app_version":"/api/v1","talk_to_server_before":"2026-11-22T08:00:00.000000","data":{{"payout_invoice_no":"{id}","merchant_invoice_id":"VA-F04EC4-164712020277-PAYOUT","id":419,"payout_account_number":"8011408168","transaction_fee":{fee},"account_id":3,"record_status":1,"updated_at":"{updated}","switch_invoice_id":"VP1678085468bA52B","transaction_invoice_no":"PAYOUT1701769387uG4ENyls","transaction_status":"{status}","value":{value},"switch_transaction_fee":0.00,"api_key":"18e0933d-6bc1-4808-9bc7-aad2bcd38686","created_at":"{created}"{error}}},"breakdown_errors":null,"token":"18e0933d-6bc1-4808-9bc7-aad2bcd38686"}}"#,
        id = p.id,
        fee = p.fee,
        updated = p.updated_at,
        value = p.value,
        created = p.created_at,
    )
}

/// `PUT /_control/leanx/prefund`: `{"value": "120.00", "account": "main"}` holds the prefund
/// pool of the demo's `leanx-main` (or `"ops"`: `leanx-ops`) at `value` until reset.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HeldPrefund {
    value: String,
    #[serde(default)]
    account: Option<String>,
}

fn demo_token(account: Option<&str>) -> Option<&'static str> {
    match account.unwrap_or("main") {
        "main" | "leanx-main" => Some(credentials::LEANX_MAIN_TOKEN),
        "ops" | "leanx-ops" => Some(credentials::LEANX_OPS_TOKEN),
        _ => None,
    }
}

pub(super) async fn put_prefund(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let bad = |message: String| json(StatusCode::BAD_REQUEST, serde_json::json!({ "error": message }).to_string());
    let held: HeldPrefund = match serde_json::from_slice(&body) {
        Ok(held) => held,
        Err(e) => return bad(format!("expected {{\"value\": \"120.00\", \"account\": \"main\"}}: {e}")),
    };
    let Some(token) = demo_token(held.account.as_deref()) else {
        return bad("account must be `main` or `ops`".into());
    };
    let value = match crate::domain::parse_decimal(&held.value) {
        Ok(v) if v >= rust_decimal::Decimal::ZERO => v,
        _ => return bad(format!("value must be a non-negative decimal string, not `{}`", held.value)),
    };
    shared.leanx_prefund.locked().insert(token, value);
    StatusCode::NO_CONTENT.into_response()
}

/// `DELETE /_control/leanx/prefund`: every prefund pool drifts again.
pub(super) async fn reset_prefund(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.leanx_prefund.locked().clear();
    StatusCode::NO_CONTENT
}

/// `POST /_control/leanx/callback`: `{"url", "payout", "status"}` posts the payout callback
/// LeanX would send (PROVIDERS.md §1.5) for a demo payout, `{"data": "<JWT>"}` signed HS256
/// with [`credentials::LEANX_HASH_KEY`], to `url`.
pub(super) async fn send_callback(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let asked = match SendCallback::read(&body) {
        Ok(asked) => asked,
        Err(refused) => return *refused,
    };
    let Some(p) = LEANX_PAYOUTS.iter().find(|p| p.id == asked.payout || p.external_ref == asked.payout) else {
        return unknown_payout(&asked.payout);
    };
    let token = crate::providers::leanx::jwt::sign_hs256(
        &callback_claims(p, asked.status.as_deref().unwrap_or(p.status), asked.url.as_str()),
        credentials::LEANX_HASH_KEY.as_bytes(),
    );
    deliver(&shared, asked.url, serde_json::json!({ "data": token }).to_string(), None).await
}

/// The claims of LeanX's payout callback, shaped as the doc's sample decodes. Its nested
/// times carry `Z` (UTC), where the status API's are naive Malaysia time.
fn callback_claims(p: &LeanxPayout, status: &str, url: &str) -> serde_json::Value {
    let utc = |local: &str| {
        chrono::NaiveDateTime::parse_from_str(local, "%Y-%m-%dT%H:%M:%S")
            .map(|t| (t - chrono::TimeDelta::hours(8)).format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|_| local.to_owned())
    };
    let status_id = match status {
        "SUCCESS" => 2,
        "FAILED" => 3,
        _ => 1,
    };
    serde_json::json!({
        "output": {
            "invoice_no": p.id,
            "error_description": p.error.map(|(_, message)| vec![message]).unwrap_or_default(),
            "bank_response": {"Success": status == "SUCCESS", "Result": {"OrgnCurrency": "MYR", "OrgnTransactionAmount": p.value, "PaymentStatus": "ACSP"}},
        },
        "client_data": {"virtual_pool_reference": "VA-F04EC4-164712020277-PAYOUT", "external_invoice_ref": p.external_ref, "recipient_reference": "demo"},
        "invoice_status_id": status_id,
        "invoice_status": status,
        "amount": p.value,
        "payout_service_id": 1,
        "client_callback_url": url,
        "payout_payment": {"item": {"balance": "7.00", "virtual_pool_reference": "VA-F04EC4-164712020277-PAYOUT", "created_at": utc(p.created_at), "updated_at": utc(p.updated_at)}},
    })
}

/// Where each demo merchant's (token's) callbacks go, given tally's address.
pub(super) fn callback_urls(tally: &str) -> std::collections::HashMap<&'static str, url::Url> {
    [("leanx-main", credentials::LEANX_MAIN_TOKEN), ("leanx-ops", credentials::LEANX_OPS_TOKEN)]
        .into_iter()
        .filter_map(|(account, token)| {
            url::Url::parse(&format!("{tally}/callbacks/{account}")).ok().map(|u| (token, u))
        })
        .collect()
}

/// `PUT /_control/leanx/payouts/{id}`: `{"status": "SUCCESS"}` moves a demo payout to another
/// LeanX status, as its lookups then report. As LeanX does (PROVIDERS.md §1.5), a payout that
/// becomes `SUCCESS` is called back, when the emulator was told where
/// ([`super::Emulator::send_leanx_callbacks_to`]); any other status is not: the answer says
/// which (`{"status": …, "callback": {"status": 200, "body": …} | null}`).
pub(super) async fn settle(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(p) = LEANX_PAYOUTS.iter().find(|p| p.id == id || p.external_ref == id) else {
        return unknown_payout(&id);
    };
    let status = match super::settled_status(&body, "SUCCESS, FAILED or PENDING") {
        Ok(status) => status,
        Err(refused) => return *refused,
    };
    shared.settled.locked().insert(p.id, status.clone());
    let url = shared.leanx_callback_urls.locked().get(p.token).cloned();
    let callback = match url {
        Some(url) if status == "SUCCESS" => {
            let token = crate::providers::leanx::jwt::sign_hs256(
                &callback_claims(p, &status, url.as_str()),
                credentials::LEANX_HASH_KEY.as_bytes(),
            );
            delivered(deliver(&shared, url, serde_json::json!({ "data": token }).to_string(), None).await).await
        }
        _ => serde_json::Value::Null,
    };
    json(StatusCode::OK, serde_json::json!({ "id": p.id, "status": status, "callback": callback }).to_string())
}
