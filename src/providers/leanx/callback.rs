//! LeanX payout callbacks (PROVIDERS.md §1.5): a POST of `{"data": "<JWT>"}`, the token signed
//! HS256 with the portal's Hash Key, sent on successful payouts only. With the account's
//! `hash_key` the token is verified and the payout read from it; without one, nothing in the
//! body is trusted and the callback only names a payout to look up.

use chrono::{DateTime, FixedOffset, Utc};
use rust_decimal::Decimal;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::{LeanxSettings, jwt, transformers};
use crate::domain::{Payout, PayoutFailure, PayoutStatus, de_opt_decimal_number};
use crate::providers::{Callback, CallbackRefusal, CallbackRequest, Trigger};

/// The longest payout id taken from an unverified callback as a lookup hint.
const MAX_HINT_CHARS: usize = 256;

#[derive(Deserialize)]
struct LeanxCallbackBody {
    data: String,
}

/// The decoded token, as far as tally reads it (the doc's sample, decoded).
#[derive(Deserialize)]
struct LeanxCallbackClaims {
    #[serde(default)]
    output: Option<LeanxCallbackOutput>,
    #[serde(default)]
    client_data: Option<LeanxClientData>,
    #[serde(default)]
    invoice_status: Option<String>,
    /// A string here ("1.00"), unlike the status API's numbers; read exactly either way.
    #[serde(default, deserialize_with = "de_opt_decimal_number")]
    amount: Option<Decimal>,
    #[serde(default)]
    payout_payment: Option<LeanxPayoutPayment>,
}

#[derive(Deserialize)]
struct LeanxCallbackOutput {
    #[serde(default)]
    invoice_no: Option<String>,
    #[serde(default)]
    error_description: Option<Vec<serde_json::Value>>,
}

#[derive(Deserialize)]
struct LeanxClientData {
    #[serde(default)]
    external_invoice_ref: Option<String>,
}

#[derive(Deserialize)]
struct LeanxPayoutPayment {
    #[serde(default)]
    item: Option<LeanxPayoutItem>,
}

#[derive(Deserialize)]
struct LeanxPayoutItem {
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    updated_at: Option<String>,
}

/// Only the ids, for a callback that is a trigger (its amounts are never read).
#[derive(Deserialize)]
struct LeanxCallbackIds {
    #[serde(default)]
    output: Option<LeanxCallbackOutput>,
    #[serde(default)]
    client_data: Option<LeanxClientData>,
}

pub fn verify(settings: &LeanxSettings, request: &CallbackRequest<'_>) -> Result<Callback, CallbackRefusal> {
    let body: LeanxCallbackBody = serde_json::from_slice(request.body)
        .map_err(|_| CallbackRefusal::malformed(r#"the body is not {"data": "<JWT>"}"#))?;
    let Some(hash_key) = &settings.hash_key else {
        let ids: LeanxCallbackIds = read(&jwt::unverified_claims(&body.data)?)?;
        return Ok(Callback::Trigger(Trigger::Payout { id: hint(ids)? }));
    };
    let claims = jwt::verify_hs256(&body.data, hash_key.expose_secret().as_bytes(), request.now)?;
    let claims: LeanxCallbackClaims = read(&claims)?;
    Ok(Callback::Payout(Box::new(payout(claims, settings, request.utc_offset)?)))
}

/// Reads verified (or hint-only) claims; an error names the field, never its value.
fn read<T: DeserializeOwned>(claims: &RawValue) -> Result<T, CallbackRefusal> {
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(claims.get()))
        .map_err(|e| CallbackRefusal::malformed(format!("the token's `{}` is not the documented shape", e.path())))
}

/// The id an unverified callback names: the merchant's reference (LeanX recommends looking up
/// by it), else LeanX's invoice number.
fn hint(ids: LeanxCallbackIds) -> Result<String, CallbackRefusal> {
    let reference = ids.client_data.and_then(|c| c.external_invoice_ref).filter(|r| !r.is_empty());
    let id = reference.or_else(|| ids.output.and_then(|o| o.invoice_no).filter(|i| !i.is_empty()));
    match id {
        Some(id) if id.chars().count() <= MAX_HINT_CHARS => Ok(id),
        Some(_) => Err(CallbackRefusal::malformed("the payout id in the callback is too long")),
        None => Err(CallbackRefusal::malformed("the callback names no payout")),
    }
}

fn payout(
    claims: LeanxCallbackClaims,
    settings: &LeanxSettings,
    offset: FixedOffset,
) -> Result<Payout, CallbackRefusal> {
    let output = claims.output.ok_or_else(|| CallbackRefusal::malformed("the token has no `output`"))?;
    let id = output
        .invoice_no
        .filter(|i| !i.is_empty())
        .ok_or_else(|| CallbackRefusal::malformed("the token has no `output.invoice_no`"))?;
    let provider_status = claims
        .invoice_status
        .filter(|s| !s.is_empty())
        .ok_or_else(|| CallbackRefusal::malformed("the token has no `invoice_status`"))?;
    let (status, is_final) = transformers::status(&provider_status);
    let failure = (status == PayoutStatus::Failed).then(|| PayoutFailure {
        code: None,
        message: output
            .error_description
            .unwrap_or_default()
            .iter()
            .map(|d| d.as_str().map_or_else(|| d.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join("; "),
    });
    let item = claims.payout_payment.and_then(|p| p.item);
    let time = |t: Option<&String>| t.and_then(|t| timestamp(t, offset));
    Ok(Payout {
        id,
        reference: claims.client_data.and_then(|c| c.external_invoice_ref).filter(|r| !r.is_empty()),
        status,
        provider_status,
        is_final,
        amount: claims.amount,
        currency: Some(settings.currency.clone()),
        fee: None,
        failure,
        created_at: time(item.as_ref().and_then(|i| i.created_at.as_ref())),
        updated_at: time(item.as_ref().and_then(|i| i.updated_at.as_ref())),
    })
}

/// Callback times carry `Z` (UTC); a naive one is read in the account's offset, as the API's.
fn timestamp(text: &str, offset: FixedOffset) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| transformers::naive_local(text, offset))
}
