//! Luxtak wire types (PROVIDERS.md §2) and their conversion into the domain model. Amounts are
//! strings; times are unix seconds.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::domain::{BalanceEntry, Payout, PayoutFailure, PayoutStatus, parse_decimal};
use crate::providers::UpstreamError;

/// `{"code": …, "msg": …, "time": …, "data": …}`; `code` 0 or 200 is success.
#[derive(Debug, Deserialize)]
pub struct LuxtakEnvelope {
    pub code: i64,
    #[serde(default)]
    pub msg: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

#[derive(Debug, Deserialize)]
pub struct LuxtakBalance {
    pub currency: String,
    pub amount: String,
}

#[derive(Debug, Deserialize)]
pub struct LuxtakPayoutStatus {
    #[serde(default)]
    pub payout_id: Option<String>,
    #[serde(default)]
    pub custom_code: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct LuxtakPayoutDetail {
    #[serde(default)]
    pub amount: Option<String>,
    #[serde(default)]
    pub fee: Option<String>,
    #[serde(default)]
    pub source_currency: Option<String>,
    #[serde(default)]
    pub create_time: Option<i64>,
    #[serde(default)]
    pub update_time: Option<i64>,
    #[serde(default)]
    pub remark: Option<String>,
}

/// Codes that mean "no such payout" for a status lookup: 4004004 not found, 4001021 order not
/// existed (PROVIDERS.md §2.6).
const NOT_FOUND_CODES: [i64; 2] = [4_004_004, 4_001_021];

/// 4001011 "request has expired": a parameter code about tally's clock, not about the id.
const EXPIRED: i64 = 4_001_011;

impl LuxtakEnvelope {
    pub fn is_success(&self) -> bool {
        matches!(self.code, 0 | 200)
    }

    /// Luxtak knows no payout under the key that was asked.
    pub fn is_not_found(&self) -> bool {
        NOT_FOUND_CODES.contains(&self.code)
    }

    /// Luxtak has no payout whose `payout_id` is the asked id: not found, or a refusal of the
    /// value as a `payout_id` (4001000 invalid parameter, 4001001–4001014 field errors). The
    /// platform assigns payout ids in its own format (`TS2021…`) while a merchant's
    /// `custom_code` is free text, so a `custom_code` sent as `payout_id` may be refused as a
    /// malformed field rather than not found. An expired timestamp is about tally's clock and
    /// says nothing about the id; auth and rate-limit codes are not in this family at all.
    pub fn is_not_a_payout_id(&self) -> bool {
        let parameter_error = matches!(self.code, 4_001_000..=4_001_014)
            && self.code != EXPIRED
            && !self.reason().contains("request has expired");
        self.is_not_found() || parameter_error
    }

    /// The provider's explanation: `data.err` / `data.error` when present, else `msg`.
    pub fn reason(&self) -> String {
        let detail = ["err", "error"].iter().find_map(|k| self.data.get(k).and_then(|v| v.as_str()));
        match (detail, &self.msg) {
            (Some(d), Some(m)) => format!("{m}: {d}"),
            (Some(d), None) => d.to_owned(),
            (None, Some(m)) => m.clone(),
            (None, None) => String::new(),
        }
    }

    /// Classifies a non-success envelope by Luxtak's API codes (PROVIDERS.md §2.6). The
    /// answer's `Retry-After` goes with 4004029 whatever the HTTP status: it is the rate limit
    /// even when it does not ride on a 429.
    pub fn error(&self, http_status: u16, retry_after: Option<Duration>) -> UpstreamError {
        let reason = self.reason();
        let error = match self.code {
            4_004_001..=4_004_003 | 4_004_100 | 4_004_101 | 4_004_103 => {
                UpstreamError::auth_failed(format!("Luxtak refused the credentials: {reason}"))
            }
            4_004_029 => {
                UpstreamError::rate_limited(format!("Luxtak is rate limiting: {reason}")).with_retry_after(retry_after)
            }
            _ if reason.contains("request has expired") => UpstreamError::rejected(format!(
                "Luxtak rejected the request timestamp ({reason}); check this host's clock (NTP)"
            )),
            _ => UpstreamError::rejected(format!("Luxtak answered {}: {reason}", self.code)),
        };
        error.with_status(http_status).with_provider_code(self.code.to_string())
    }
}

pub fn balance_entries(items: Vec<LuxtakBalance>) -> Result<Vec<BalanceEntry>, UpstreamError> {
    items
        .into_iter()
        .map(|b| {
            let currency = b
                .currency
                .parse()
                .map_err(|_| UpstreamError::invalid_response(format!("Luxtak currency `{}`", b.currency)))?;
            let amount = parse_decimal(&b.amount).map_err(|_| {
                UpstreamError::invalid_response(format!("Luxtak amount `{}` is not a decimal", b.amount))
            })?;
            Ok(BalanceEntry::single_figure("main", currency, amount))
        })
        .collect()
}

pub fn status(provider_status: &str) -> (PayoutStatus, bool) {
    match provider_status {
        "IN_PROCESSING" => (PayoutStatus::Pending, false),
        "PROCESSING" => (PayoutStatus::Processing, false),
        "PAID" => (PayoutStatus::Succeeded, true),
        "REJECTED" => (PayoutStatus::Failed, true),
        // Refunded by the bank or recipient after payment.
        "REFUNDED" => (PayoutStatus::Reversed, true),
        other => {
            tracing::warn!(provider = "luxtak", provider_status = other, "unmapped payout status");
            (PayoutStatus::Unknown, false)
        }
    }
}

pub fn payout(s: LuxtakPayoutStatus, asked: &str, detail: Option<LuxtakPayoutDetail>) -> Result<Payout, UpstreamError> {
    let provider_status = s.status.ok_or_else(|| UpstreamError::invalid_response("a Luxtak payout without status"))?;
    let (status, is_final) = status(&provider_status);
    let detail = detail.unwrap_or(LuxtakPayoutDetail {
        amount: None,
        fee: None,
        source_currency: None,
        create_time: None,
        update_time: None,
        remark: None,
    });
    let decimal = |v: &Option<String>| v.as_deref().and_then(|t| parse_decimal(t).ok());
    let failure = matches!(status, PayoutStatus::Failed | PayoutStatus::Reversed).then(|| PayoutFailure {
        code: None,
        message: detail.remark.clone().filter(|r| !r.is_empty()).or(s.description.clone()).unwrap_or_default(),
    });
    Ok(Payout {
        id: s.payout_id.unwrap_or_else(|| asked.to_owned()),
        reference: s.custom_code,
        status,
        provider_status,
        is_final,
        amount: decimal(&detail.amount),
        currency: detail.source_currency.and_then(|c| c.parse().ok()),
        fee: decimal(&detail.fee),
        failure,
        created_at: detail.create_time.and_then(|t| DateTime::<Utc>::from_timestamp(t, 0)),
        updated_at: detail.update_time.and_then(|t| DateTime::<Utc>::from_timestamp(t, 0)),
    })
}
