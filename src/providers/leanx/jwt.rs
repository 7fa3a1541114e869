//! LeanX callback tokens (PROVIDERS.md §1.5): compact JWTs signed HS256 with the account's
//! Hash Key.
//!
//! The parsing and checks are `jsonwebtoken`'s; its crypto backend is chosen here, explicitly:
//! an HS256-only provider on RustCrypto's `hmac` + `sha2` (already in the tree), installed for
//! the process. No other algorithm can sign or verify, whatever a token's header says, and no
//! RSA/EC code is linked. `exp`/`nbf` are judged against tally's clock, not the system's, so
//! tests inject time.

use std::sync::Once;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::signature::{Signer, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Validation};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::Sha256;

use crate::providers::CallbackRefusal;

/// Allowance for clock skew on `exp` and `nbf`, as `jsonwebtoken` allows by default.
pub const LEEWAY_SECONDS: i64 = 60;

/// Verifies `token` as HS256 with `key` at `now` and returns its claims as raw JSON (amounts
/// inside stay text; the caller reads them exactly). Refuses any other `alg` (including
/// `none`), a wrong signature, and a token expired or not yet valid.
pub fn verify_hs256(token: &str, key: &[u8], now: DateTime<Utc>) -> Result<Box<RawValue>, CallbackRefusal> {
    let [header, _, _] = parts(token)?;
    let header: serde_json::Value = serde_json::from_slice(&base64url(header, "header")?)
        .map_err(|_| CallbackRefusal::malformed("the token header is not JSON"))?;
    // Judged before the library sees the token, so `none` or RS256 is an unverified token (401),
    // not a header the library fails to parse.
    match header.get("alg").and_then(|a| a.as_str()) {
        Some("HS256") => {}
        Some(other) => {
            return Err(CallbackRefusal::unverified(format!(
                "the token is signed with {}; only HS256 is accepted",
                printable(other)
            )));
        }
        None => return Err(CallbackRefusal::unverified("the token header names no HS256 alg")),
    }
    install_backend();
    let key = DecodingKey::from_secret(key).map_err(|_| CallbackRefusal::unverified("the hash_key is unusable"))?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_exp = false; // judged below against tally's clock
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear(); // whether LeanX sends exp/iat is unknown
    let claims = jsonwebtoken::decode::<Box<RawValue>>(token, &key, &validation).map_err(refusal)?.claims;
    check_times(&claims, now)?;
    Ok(claims)
}

/// The claims of `token` read WITHOUT verifying anything: for a callback that is only a
/// trigger, whose body is a hint at most.
pub fn unverified_claims(token: &str) -> Result<Box<RawValue>, CallbackRefusal> {
    let [_, payload, _] = parts(token)?;
    serde_json::from_slice(&base64url(payload, "payload")?)
        .map_err(|_| CallbackRefusal::malformed("the token payload is not JSON"))
}

/// Signs `claims` as LeanX does (header `{"alg":"HS256","typ":"JWT"}`): for the emulator and
/// tests.
pub fn sign_hs256(claims: &serde_json::Value, key: &[u8]) -> String {
    install_backend();
    let key = EncodingKey::from_secret(key).expect("an HMAC key of any length is a key");
    jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), claims, &key)
        .expect("HS256 signing of JSON claims cannot fail")
}

fn parts(token: &str) -> Result<[&str; 3], CallbackRefusal> {
    let parts: Vec<&str> = token.split('.').collect();
    match parts[..] {
        [header, payload, signature] if !header.is_empty() && !payload.is_empty() => Ok([header, payload, signature]),
        _ => Err(CallbackRefusal::malformed("the token is not three dot-separated parts")),
    }
}

fn base64url(part: &str, name: &str) -> Result<Vec<u8>, CallbackRefusal> {
    URL_SAFE_NO_PAD.decode(part).map_err(|_| CallbackRefusal::malformed(format!("the token {name} is not base64url")))
}

/// A header's `alg` for a message: short tokens as they are, anything else not echoed.
fn printable(alg: &str) -> String {
    if alg.len() <= 16 && alg.chars().all(|c| c.is_ascii_alphanumeric()) {
        format!("`{alg}`")
    } else {
        "another algorithm".to_owned()
    }
}

fn refusal(e: Error) -> CallbackRefusal {
    match e.kind() {
        ErrorKind::InvalidSignature => CallbackRefusal::unverified("the token's signature does not match the hash_key"),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
            CallbackRefusal::unverified("only HS256 tokens are accepted")
        }
        ErrorKind::Base64(_) => CallbackRefusal::malformed("a token part is not base64url"),
        ErrorKind::Json(_) | ErrorKind::Utf8(_) => CallbackRefusal::malformed("a token part is not JSON"),
        ErrorKind::InvalidToken => CallbackRefusal::malformed("the token is not a compact JWT"),
        _ => CallbackRefusal::unverified("the token does not verify"),
    }
}

#[derive(Deserialize)]
struct Times {
    exp: Option<i64>,
    nbf: Option<i64>,
}

fn check_times(claims: &RawValue, now: DateTime<Utc>) -> Result<(), CallbackRefusal> {
    let times: Times = serde_json::from_str(claims.get())
        .map_err(|_| CallbackRefusal::malformed("the token's exp or nbf is not a whole number of seconds"))?;
    let now = now.timestamp();
    if times.exp.is_some_and(|exp| now > exp.saturating_add(LEEWAY_SECONDS)) {
        return Err(CallbackRefusal::unverified("the token has expired"));
    }
    if times.nbf.is_some_and(|nbf| now.saturating_add(LEEWAY_SECONDS) < nbf) {
        return Err(CallbackRefusal::unverified("the token is not valid yet"));
    }
    Ok(())
}

/// The backend: HS256 and nothing else.
static HS256_ONLY: CryptoProvider = CryptoProvider {
    signer_factory: |alg, key| match (alg, key.family()) {
        (Algorithm::HS256, AlgorithmFamily::Hmac) => Ok(Box::new(Hs256(mac(key.as_bytes())?))),
        _ => Err(ErrorKind::UnsupportedAlgorithm.into()),
    },
    verifier_factory: |alg, key| match (alg, key.family()) {
        (Algorithm::HS256, AlgorithmFamily::Hmac) => Ok(Box::new(Hs256(mac(key.try_get_as_bytes()?)?))),
        _ => Err(ErrorKind::UnsupportedAlgorithm.into()),
    },
    // Only reached for JWKs, which tally never reads.
    key_utils: KeyUtils::new_unimplemented(),
};

fn install_backend() {
    static INSTALL: Once = Once::new();
    // Fails only if another backend was installed first; none is (no crypto feature is enabled),
    // and the HS256-only validation holds whatever the backend.
    INSTALL.call_once(|| {
        let _ = HS256_ONLY.install_default();
    });
}

fn mac(key: &[u8]) -> Result<Hmac<Sha256>, Error> {
    Hmac::<Sha256>::new_from_slice(key).map_err(|_| ErrorKind::InvalidKeyFormat.into())
}

struct Hs256(Hmac<Sha256>);

impl Signer<Vec<u8>> for Hs256 {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, jsonwebtoken::signature::Error> {
        let mut mac = self.0.clone();
        mac.update(msg);
        Ok(mac.finalize().into_bytes().to_vec())
    }
}

impl Verifier<Vec<u8>> for Hs256 {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), jsonwebtoken::signature::Error> {
        let mut mac = self.0.clone();
        mac.update(msg);
        // `verify_slice` compares in constant time.
        mac.verify_slice(signature).map_err(|_| jsonwebtoken::signature::Error::new())
    }
}

impl JwtSigner for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

impl JwtVerifier for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}
