//! The Yedpay emulator: Bearer personal token; balances per company and currency with string
//! amounts (and the `*_float` twins); the settlement list, paged.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use rust_decimal::prelude::ToPrimitive;
use serde_json::json;

use super::data::{YEDPAY_SETTLEMENTS, yedpay_balance};
use super::{Emulated, Shared, credentials, json as respond};
use crate::domain::Provider;

/// This emulator's registration (see [`super::EMULATORS`]).
pub(super) const EMULATED: Emulated =
    Emulated { provider: Provider::Yedpay, routes, too_many_requests, demo_accounts, how_to_call };

fn demo_accounts(base_url: &url::Url) -> String {
    format!(
        "[[accounts]]\nid = \"yedpay-hk\"\nprovider = \"yedpay\"\nbase_url = \"{base_url}\"\naccess_token = \"{}\"\ncompany_id = \"{}\"\ncurrencies = [\"HKD\", \"USD\"]\n",
        credentials::YEDPAY_ACCESS_TOKEN,
        credentials::YEDPAY_COMPANY_ID
    )
}

fn how_to_call() -> String {
    format!("Bearer: {}  company_id: {}", credentials::YEDPAY_ACCESS_TOKEN, credentials::YEDPAY_COMPANY_ID)
}

fn routes() -> Router<Arc<Shared>> {
    Router::new().route("/v1/balance/{company_id}", get(balance)).route("/v1/settlements", get(settlements))
}

/// The documented body; its HTTP status is not documented (401 assumed).
fn unauthenticated() -> Response {
    respond(StatusCode::UNAUTHORIZED, r#"{"success":false,"message":"Unauthenticated.","status":500}"#.to_owned())
}

/// Yedpay documents no rate limit (PROVIDERS.md §4.6). Its error messages are Laravel's
/// (`Unauthenticated.`, `This action is unauthorized.`), so its throttle's is assumed, in the
/// documented error shape.
fn too_many_requests() -> Response {
    respond(
        StatusCode::TOO_MANY_REQUESTS,
        r#"{"success":false,"message":"Too Many Attempts.","status":429}"#.to_owned(),
    )
}

fn authorized(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {}", credentials::YEDPAY_ACCESS_TOKEN))
}

#[derive(serde::Deserialize)]
struct BalanceQuery {
    currency: Option<String>,
}

async fn balance(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(company): Path<String>,
    Query(q): Query<BalanceQuery>,
) -> Response {
    if !authorized(&headers) {
        return unauthenticated();
    }
    if company != credentials::YEDPAY_COMPANY_ID {
        return respond(
            StatusCode::FORBIDDEN,
            r#"{"success":false,"message":"This action is unauthorized.","status":403}"#.to_owned(),
        );
    }
    let currency = q.currency.unwrap_or_else(|| "HKD".to_owned()).to_uppercase();
    let Some((total, available, ledger, locked, holding)) = yedpay_balance(&currency, shared.minute()) else {
        return respond(
            StatusCode::UNPROCESSABLE_ENTITY,
            r#"{"success":false,"message":"The selected currency is invalid.","status":422}"#.to_owned(),
        );
    };
    let float = |d: rust_decimal::Decimal| d.to_f64().unwrap_or_default();
    let total_available = available.round_dp(2);
    respond(
        StatusCode::OK,
        json!({"success": true, "data": {
            "company_id": company, "currency": currency,
            "total_balance": format!("{:.4}", total), "total_available_balance": total_available.to_string(),
            "available_balance": available.to_string(), "ledger_balance": ledger.to_string(),
            "locked_balance": locked.to_string(), "holding_balance": holding.to_string(),
            // The docs' float twins, which clients must ignore.
            "total_balance_float": float(total), "total_available_balance_float": float(total_available),
            "available_balance_float": float(available), "ledger_balance_float": float(ledger),
            "locked_balance_float": float(locked), "holding_balance_float": float(holding),
        }})
        .to_string(),
    )
}

#[derive(serde::Deserialize)]
struct Page {
    page: Option<usize>,
    limit: Option<usize>,
}

async fn settlements(headers: HeaderMap, Query(q): Query<Page>) -> Response {
    if !authorized(&headers) {
        return unauthenticated();
    }
    let limit = q.limit.unwrap_or(40).clamp(1, 100);
    let page = q.page.unwrap_or(1).max(1);
    let total = YEDPAY_SETTLEMENTS.len();
    let pages = total.div_ceil(limit);
    let data: Vec<_> = YEDPAY_SETTLEMENTS
        .iter()
        .skip((page - 1) * limit)
        .take(limit)
        .map(|s| {
            json!({
                "id": s.id, "status": s.status, "company_id": credentials::YEDPAY_COMPANY_ID, "transaction_id": s.transaction_id,
                "currency": s.currency, "amount": s.amount, "charge": s.fee, "settle": s.amount, "settle_fee": s.fee, "total": s.amount,
                "created_at": s.created_at, "updated_at": s.updated_at,
                "account_name": "Demo Ltd", "account_holder_name": "Demo Ltd", "account_code": "004", "account_branch": "HK",
                "account_number": "123-456789-001", "account_currency": s.currency, "reason": s.reason,
            })
        })
        .collect();
    let count = data.len();
    respond(
        StatusCode::OK,
        json!({"success": true, "data": data, "meta": {"pagination": {
            "total": total, "count": count, "per_page": limit, "current_page": page, "total_pages": pages, "links": {}
        }}})
        .to_string(),
    )
}
