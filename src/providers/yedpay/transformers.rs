//! Yedpay wire types (PROVIDERS.md §4) and their conversion into the domain model. Amounts are
//! strings (the `*_float` twins are ignored); timestamps are naive Hong Kong times.

use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;

use crate::domain::{BalanceEntry, Currency, Payout, PayoutFailure, PayoutStatus, parse_decimal};
use crate::providers::UpstreamError;

/// `{"success": true, "data": …}` or `{"success": false, "message": …, "status": …}`.
#[derive(Debug, Deserialize)]
pub struct YedpayEnvelope<T> {
    pub success: bool,
    pub data: Option<T>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub meta: Option<YedpayMeta>,
}

#[derive(Debug, Deserialize)]
pub struct YedpayBalance {
    #[serde(default)]
    pub currency: Option<String>,
    pub total_balance: String,
    pub available_balance: String,
    pub ledger_balance: String,
    pub locked_balance: String,
    pub holding_balance: String,
}

#[derive(Debug, Deserialize)]
pub struct YedpayMeta {
    pub pagination: YedpayPagination,
}

#[derive(Debug, Deserialize)]
pub struct YedpayPagination {
    pub total_pages: u32,
}

#[derive(Debug, Deserialize)]
pub struct YedpaySettlement {
    pub id: serde_json::Value,
    #[serde(default)]
    pub transaction_id: Option<serde_json::Value>,
    pub status: String,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub amount: Option<String>,
    #[serde(default)]
    pub charge: Option<String>,
    #[serde(default)]
    pub settle_fee: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
}

fn amount(field: &str, text: &str) -> Result<Decimal, UpstreamError> {
    parse_decimal(text)
        .map_err(|_| UpstreamError::invalid_response(format!("Yedpay `{field}` is not a decimal: `{text}`")))
}

/// SPEC §2: available ← `available_balance`, pending ← `ledger_balance`, reserved ←
/// `locked_balance + holding_balance`, total ← `total_balance`.
pub fn balance_entry(company_id: &str, asked: &Currency, b: &YedpayBalance) -> Result<BalanceEntry, UpstreamError> {
    let currency = match &b.currency {
        Some(c) => c.parse().map_err(|_| UpstreamError::invalid_response(format!("Yedpay currency `{c}`")))?,
        None => asked.clone(),
    };
    Ok(BalanceEntry {
        wallet: company_id.to_owned(),
        currency,
        available: Some(amount("available_balance", &b.available_balance)?),
        pending: Some(amount("ledger_balance", &b.ledger_balance)?),
        reserved: Some(
            amount("locked_balance", &b.locked_balance)?
                .checked_add(amount("holding_balance", &b.holding_balance)?)
                .ok_or_else(|| {
                    UpstreamError::invalid_response("Yedpay's locked and holding balances overflow a decimal")
                })?,
        ),
        total: Some(amount("total_balance", &b.total_balance)?),
        blocked: false,
    })
}

/// Id values may be JSON strings or numbers; compare their text.
pub fn id_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Settlement statuses, case-insensitive: the docs list `*_settlement` codes but their example
/// shows `canceled`.
pub fn status(provider_status: &str) -> (PayoutStatus, bool) {
    match provider_status.to_ascii_lowercase().as_str() {
        "settlement_requested" => (PayoutStatus::Pending, false),
        "in_progress_settlement" => (PayoutStatus::Processing, false),
        "settled" => (PayoutStatus::Succeeded, true),
        "cancelled_settlement" => (PayoutStatus::Failed, true),
        "reverse_settlement" | "canceled" | "cancelled" => (PayoutStatus::Cancelled, true),
        other => {
            tracing::warn!(provider = "yedpay", provider_status = other, "unmapped settlement status");
            (PayoutStatus::Unknown, false)
        }
    }
}

pub fn payout(s: YedpaySettlement, offset: FixedOffset) -> Result<Payout, UpstreamError> {
    let (status, is_final) = status(&s.status);
    let opt = |field: &str, v: &Option<String>| v.as_deref().map(|t| amount(field, t)).transpose();
    let failure = s
        .reason
        .filter(|r| !r.is_empty() && matches!(status, PayoutStatus::Failed | PayoutStatus::Cancelled))
        .map(|message| PayoutFailure { code: None, message });
    Ok(Payout {
        id: id_text(&s.id),
        reference: s.transaction_id.as_ref().map(id_text),
        status,
        provider_status: s.status,
        is_final,
        amount: opt("amount", &s.amount)?,
        currency: s.currency.and_then(|c| c.parse().ok()),
        fee: match opt("settle_fee", &s.settle_fee)? {
            Some(fee) => Some(fee),
            None => opt("charge", &s.charge)?,
        },
        failure,
        created_at: s.created_at.as_deref().and_then(|t| naive_local(t, offset)),
        updated_at: s.updated_at.as_deref().and_then(|t| naive_local(t, offset)),
    })
}

/// `YYYY-mm-dd HH:MM:SS`, no zone: read in the account's offset (Hong Kong by default).
fn naive_local(text: &str, offset: FixedOffset) -> Option<DateTime<Utc>> {
    let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").ok()?;
    naive.and_local_timezone(offset).single().map(|t| t.with_timezone(&Utc))
}
