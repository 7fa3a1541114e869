//! Luxtak payout notifications (PROVIDERS.md §2.5): a JSON POST to the payout's `notify_url`
//! whose `Authorization` header is the request signature ([`super::signature`]) of its own
//! params with the account's app key. Luxtak retries until it reads `success`.

use std::collections::HashSet;
use std::fmt;

use reqwest::header::AUTHORIZATION;
use secrecy::ExposeSecret;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use subtle::ConstantTimeEq;

use super::{LuxtakSettings, signature, transformers};
use crate::domain::{Payout, PayoutFailure, PayoutStatus};
use crate::providers::{Callback, CallbackRefusal, CallbackRequest};

pub fn verify(settings: &LuxtakSettings, request: &CallbackRequest<'_>) -> Result<Callback, CallbackRefusal> {
    let params = params(request.body)?;
    let claimed = request
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| CallbackRefusal::unverified("the notification has no Authorization header"))?;
    let expected = signature_of(&params, settings.app_key.expose_secret());
    // The docs ask for lowercase hex; a sender's uppercase is read as the same digest.
    let claimed = claimed.as_bytes().to_ascii_lowercase();
    if !bool::from(expected.as_bytes().ct_eq(&claimed)) {
        return Err(CallbackRefusal::unverified("the Authorization signature does not match the app_key"));
    }
    Ok(Callback::Payout(Box::new(payout(&params)?)))
}

/// The `Authorization` a notification with this body carries when signed with `app_key`.
pub fn expected_signature(body: &[u8], app_key: &str) -> Result<String, CallbackRefusal> {
    Ok(signature_of(&params(body)?, app_key))
}

fn signature_of(params: &[(String, Option<String>)], app_key: &str) -> String {
    let joined = signature::join(params.iter().filter_map(|(k, v)| Some((k.as_str(), v.clone()?))));
    signature::digest(&joined, app_key)
}

/// The body's top-level params in order, each as the text that is signed (`None` for null).
/// Strings are signed unescaped, numbers and booleans as sent. A repeated key or a nested value
/// is refused: the docs sign neither in a known way.
fn params(body: &[u8]) -> Result<Vec<(String, Option<String>)>, CallbackRefusal> {
    let raw: RawParams = serde_json::from_slice(body)
        .map_err(|_| CallbackRefusal::malformed("the body is not a JSON object with each key once"))?;
    raw.0
        .into_iter()
        .map(|(k, v)| {
            let text = v.get();
            let value = match text.as_bytes().first() {
                Some(b'"') => Some(
                    serde_json::from_str::<String>(text)
                        .map_err(|_| CallbackRefusal::malformed("a string param is not valid JSON"))?,
                ),
                Some(b'{' | b'[') => {
                    return Err(CallbackRefusal::malformed(format!(
                        "the param `{k}` is nested; Luxtak signs flat params"
                    )));
                }
                _ if text == "null" => None,
                _ => Some(text.to_owned()),
            };
            Ok((k, value))
        })
        .collect()
}

fn payout(params: &[(String, Option<String>)]) -> Result<Payout, CallbackRefusal> {
    let field =
        |name: &str| params.iter().find(|(k, _)| k == name).and_then(|(_, v)| v.clone()).filter(|v| !v.is_empty());
    let reference = field("custom_code");
    let id = field("payoutId")
        .or_else(|| reference.clone())
        .ok_or_else(|| CallbackRefusal::malformed("the notification has neither `payoutId` nor `custom_code`"))?;
    let provider_status =
        field("status").ok_or_else(|| CallbackRefusal::malformed("the notification has no `status`"))?;
    let (status, is_final) = transformers::status(&provider_status);
    let failure = matches!(status, PayoutStatus::Failed | PayoutStatus::Reversed)
        .then(|| PayoutFailure { code: None, message: field("msg").unwrap_or_default() });
    Ok(Payout {
        id,
        reference,
        status,
        provider_status,
        is_final,
        // The notification carries no amount or times of the payout; the confirming lookup does.
        amount: None,
        currency: None,
        fee: None,
        failure,
        created_at: None,
        updated_at: None,
    })
}

/// A JSON object's entries with their values as raw JSON, refusing a repeated key.
struct RawParams(Vec<(String, Box<RawValue>)>);

impl<'de> de::Deserialize<'de> for RawParams {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = RawParams;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawParams, A::Error> {
                let mut seen = HashSet::new();
                let mut entries = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, Box<RawValue>>()? {
                    if !seen.insert(key.clone()) {
                        return Err(de::Error::custom("a repeated key"));
                    }
                    entries.push((key, value));
                }
                Ok(RawParams(entries))
            }
        }
        d.deserialize_map(Entries)
    }
}
