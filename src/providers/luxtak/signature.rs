//! Luxtak's request signature (PROVIDERS.md §2.2): the body's top-level params without empty
//! values, sorted by key, joined as `k=v` with `&` (no URL-encoding), followed by the app key;
//! `Authorization` is the lowercase hex SHA-256 of that. Plain SHA-256, not HMAC: the
//! documented vector only matches this way.

use sha2::{Digest, Sha256};

/// The string that is hashed, without the key.
pub fn sorted_params(body: &serde_json::Map<String, serde_json::Value>) -> String {
    join(body.iter().filter_map(|(k, v)| {
        let text = match v {
            serde_json::Value::Null => return None,
            serde_json::Value::String(s) => s.clone(),
            // Numbers as their JSON text, as the documented samples stringify them.
            other => other.to_string(),
        };
        Some((k.as_str(), text))
    }))
}

/// Params already stringified: the empty ones dropped, the rest sorted by key (bytes) and
/// joined as `k=v&…`. Requests and notifications both come through here.
pub fn join<'a>(params: impl IntoIterator<Item = (&'a str, String)>) -> String {
    let mut pairs: Vec<(&str, String)> = params.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    pairs.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

/// The signature of an already [`join`]ed params string: lowercase hex SHA-256 of it followed
/// by the app key.
pub fn digest(joined: &str, app_key: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(joined.as_bytes());
    hasher.update(app_key.as_bytes());
    hex::encode(hasher.finalize())
}

/// The `Authorization` header value for a body.
pub fn sign(body: &serde_json::Map<String, serde_json::Value>, app_key: &str) -> String {
    digest(&sorted_params(body), app_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The platform's published vector (PROVIDERS.md §2.2).
    #[test]
    fn reproduces_the_documented_signature_vector() {
        let body: serde_json::Value = serde_json::from_str(
            r#"{"account_digit":"4","account_number":"1234567","account_type":"CHECKING","additional_remark":"1234567_test","amount":"10.00","bankcode":"001","branch":"0001","custom_code":"1234567","document_id":"50284414727","document_type":"CPF","fee":"merchant","name":"Test User Name","notify_url":"https://www.pagsmile.com","payout_currency":"BRL","source_currency":"BRL"}"#,
        )
        .unwrap();
        let body = body.as_object().unwrap();
        assert_eq!(
            sorted_params(body),
            "account_digit=4&account_number=1234567&account_type=CHECKING&additional_remark=1234567_test&amount=10.00&bankcode=001&branch=0001&custom_code=1234567&document_id=50284414727&document_type=CPF&fee=merchant&name=Test User Name&notify_url=https://www.pagsmile.com&payout_currency=BRL&source_currency=BRL"
        );
        assert_eq!(sign(body, "ABCDE"), "b15f900705867ecc3f66088054c14a80f9f12b1fb31c82320c4cbfe181876abb");
    }

    #[test]
    fn empty_values_are_dropped_and_numbers_keep_their_text() {
        let body: serde_json::Value =
            serde_json::from_str(r#"{"timestamp":1642075807,"b":"","a":null,"c":"x"}"#).unwrap();
        assert_eq!(sorted_params(body.as_object().unwrap()), "c=x&timestamp=1642075807");
    }
}
