//! LeanX wire types (PROVIDERS.md §1) and their conversion into the domain model. Amounts are
//! JSON numbers, read exactly; timestamps are naive local times.

use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;

use crate::domain::{
    BalanceEntry, Currency, Payout, PayoutFailure, PayoutStatus, RawJson, de_decimal_number, de_opt_decimal_number,
};
use crate::providers::UpstreamError;

/// The response code of a successful call.
pub const SUCCESS: i64 = 2000;

/// The envelope every LeanX answer shares.
#[derive(Debug, Deserialize)]
pub struct LeanxEnvelope<T> {
    pub response_code: i64,
    #[serde(default)]
    pub description: Option<String>,
    // A missing `data` reads as None (serde's rule for Option fields).
    pub data: Option<T>,
}

#[derive(Debug, Deserialize)]
pub struct LeanxBalanceData {
    pub transaction_balance: LeanxPool,
    #[serde(deserialize_with = "de_decimal_number")]
    pub prefund_balance: Decimal,
}

#[derive(Debug, Deserialize)]
pub struct LeanxPool {
    #[serde(deserialize_with = "de_decimal_number")]
    pub value: Decimal,
}

#[derive(Debug, Deserialize)]
pub struct LeanxPayoutData {
    pub payout_invoice_no: Option<String>,
    #[serde(default)]
    pub external_invoice_ref: Option<String>,
    pub transaction_status: Option<String>,
    #[serde(default, deserialize_with = "de_opt_decimal_number")]
    pub value: Option<Decimal>,
    #[serde(default, deserialize_with = "de_opt_decimal_number")]
    pub transaction_fee: Option<Decimal>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
    #[serde(default)]
    pub error_message: Option<LeanxErrorMessage>,
}

#[derive(Debug, Deserialize)]
pub struct LeanxErrorMessage {
    #[serde(default)]
    pub error_code: Option<serde_json::Value>,
    #[serde(default)]
    pub error_message: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// The two pools: `transaction` (collections) and `prefund` (payouts are debited from it).
pub fn balance_entries(data: &LeanxBalanceData, currency: &Currency) -> Vec<BalanceEntry> {
    vec![
        BalanceEntry::single_figure("transaction", currency.clone(), data.transaction_balance.value),
        BalanceEntry::single_figure("prefund", currency.clone(), data.prefund_balance),
    ]
}

/// LeanX's documented statuses; SUCCESS and FAILED are final ("can be taken as final
/// confirmation").
pub fn status(provider_status: &str) -> (PayoutStatus, bool) {
    match provider_status {
        "PENDING" => (PayoutStatus::Pending, false),
        "STATUS_PENDING_APPROVAL" => (PayoutStatus::AwaitingApproval, false),
        "SUCCESS" => (PayoutStatus::Succeeded, true),
        "FAILED" => (PayoutStatus::Failed, true),
        other => {
            tracing::warn!(provider = "leanx", provider_status = other, "unmapped payout status");
            (PayoutStatus::Unknown, false)
        }
    }
}

pub fn payout(
    data: LeanxPayoutData,
    asked: &str,
    currency: &Currency,
    offset: FixedOffset,
) -> Result<Payout, UpstreamError> {
    let provider_status = data
        .transaction_status
        .ok_or_else(|| UpstreamError::invalid_response("a LeanX payout without transaction_status"))?;
    let (status, is_final) = status(&provider_status);
    let id = data.payout_invoice_no.unwrap_or_else(|| asked.to_owned());
    // The lookup accepts the merchant's reference too; the answer does not echo it back.
    let reference = data.external_invoice_ref.or_else(|| (asked != id).then(|| asked.to_owned()));
    let failure = data.error_message.map(|e| PayoutFailure {
        code: e.error_code.map(|c| match c {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        }),
        message: e.error_message.or(e.description).unwrap_or_default(),
    });
    Ok(Payout {
        id,
        reference,
        status,
        provider_status,
        is_final,
        amount: data.value,
        currency: Some(currency.clone()),
        fee: data.transaction_fee,
        failure,
        created_at: data.created_at.as_deref().and_then(|t| naive_local(t, offset)),
        updated_at: data.updated_at.as_deref().and_then(|t| naive_local(t, offset)),
    })
}

/// Reads a naive timestamp (`2023-12-05T17:43:07`, fractions allowed) in the account's offset.
pub fn naive_local(text: &str, offset: FixedOffset) -> Option<DateTime<Utc>> {
    let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f"))
        .ok()?;
    naive.and_local_timezone(offset).single().map(|t| t.with_timezone(&Utc))
}

/// The raw payload for `include=raw`, without the API key UUID (part of the auth token).
pub fn redacted(mut raw: RawJson) -> RawJson {
    fn walk(v: &mut RawJson) {
        match v {
            RawJson::Object(entries) => {
                for (k, v) in entries.iter_mut() {
                    if k == "token" || k == "api_key" {
                        *v = RawJson::String("[redacted]".into());
                    } else {
                        walk(v);
                    }
                }
            }
            RawJson::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut raw);
    raw
}
