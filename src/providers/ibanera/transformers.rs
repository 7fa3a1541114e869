//! Ibanera wire types (PROVIDERS.md §3) and their conversion into the domain model. Balances are
//! JSON numbers (crypto assets carry 8 decimals), read exactly. `status` is the string "1" for
//! success.

use rust_decimal::Decimal;
use serde::Deserialize;

use crate::domain::{BalanceEntry, de_decimal_number, de_opt_decimal_number};
use crate::providers::UpstreamError;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IbaneraEnvelope<T> {
    pub details: Option<T>,
    #[serde(default)]
    pub number_of_pages: Option<u32>,
    pub status: String,
    #[serde(default)]
    pub errors: Vec<IbaneraError>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IbaneraError {
    #[serde(default)]
    pub message_code: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IbaneraLogin {
    pub access_token: String,
    pub expires_in: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IbaneraBalance {
    pub id: serde_json::Value,
    pub asset: String,
    #[serde(default, deserialize_with = "de_opt_decimal_number")]
    pub total_balance: Option<Decimal>,
    #[serde(deserialize_with = "de_decimal_number")]
    pub available_balance: Decimal,
    #[serde(default, deserialize_with = "de_opt_decimal_number")]
    pub pending_balance: Option<Decimal>,
    #[serde(default, rename = "bSuppressed")]
    pub b_suppressed: bool,
}

impl<T> IbaneraEnvelope<T> {
    pub fn is_success(&self) -> bool {
        self.status == "1"
    }

    /// The message codes, for errors and logs (`Username_Or_Password_Incorrect`, …).
    pub fn codes(&self) -> String {
        let codes: Vec<&str> = self.errors.iter().filter_map(|e| e.message_code.as_deref()).collect();
        if codes.is_empty() { "no messageCode".to_owned() } else { codes.join(",") }
    }
}

pub fn balance_entry(b: &IbaneraBalance) -> Result<BalanceEntry, UpstreamError> {
    let wallet = match &b.id {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        other => return Err(UpstreamError::invalid_response(format!("an Ibanera asset account id `{other}`"))),
    };
    let currency =
        b.asset.parse().map_err(|_| UpstreamError::invalid_response(format!("Ibanera asset `{}`", b.asset)))?;
    Ok(BalanceEntry {
        wallet,
        currency,
        available: Some(b.available_balance),
        pending: b.pending_balance,
        reserved: None,
        total: b.total_balance,
        blocked: b.b_suppressed,
    })
}
