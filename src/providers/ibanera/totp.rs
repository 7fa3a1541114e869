//! Ibanera's per-request one-time password: RFC 6238 TOTP, SHA-1, 6 digits, 30 s steps, from
//! the base32 shared secret (PROVIDERS.md §3.2).

use secrecy::{ExposeSecret, SecretString};
use totp_rs::{Algorithm, Builder, Secret, Totp};

/// Builds the TOTP generator for a base32 shared secret.
pub fn generator(secret: &SecretString) -> Result<Totp, String> {
    let cleaned: String =
        secret.expose_secret().chars().filter(|c| !c.is_whitespace() && *c != '=').collect::<String>().to_uppercase();
    let bytes = Secret::try_from_base32(&cleaned).map_err(|_| "is not a base32 shared secret".to_owned())?;
    if bytes.as_ref().is_empty() {
        return Err("is not a base32 shared secret".to_owned());
    }
    // Providers hand out secrets shorter than RFC 4226's recommended 128 bits; accept them.
    Ok(Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_step_duration(STEP_SECONDS)
        .with_secret(bytes)
        .build_noncompliant())
}

/// The length of one TOTP step.
pub const STEP_SECONDS: u64 = 30;

/// The code for a given unix time.
pub fn code_at(totp: &Totp, unix_seconds: u64) -> String {
    totp.generate(unix_seconds).to_string()
}

/// The step (the counter of RFC 6238) a unix time falls in.
pub fn step_at(unix_seconds: u64) -> u64 {
    unix_seconds / STEP_SECONDS
}

/// The code of one step.
pub fn code_for_step(totp: &Totp, step: u64) -> String {
    code_at(totp, step * STEP_SECONDS)
}

/// Whether `code` is the code of the step of `unix_seconds` or of one within `skew` steps of
/// it, as servers allow for clock skew (the emulator, and tests of the client).
pub fn accepts(totp: &Totp, code: &str, unix_seconds: u64, skew: u64) -> bool {
    let step = step_at(unix_seconds);
    (step.saturating_sub(skew)..=step + skew).any(|s| code_for_step(totp, s) == code)
}

/// The check of the account's settings: the secret must decode.
pub fn secret_is_valid(secret: &SecretString) -> Result<(), String> {
    generator(secret).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B: secret "12345678901234567890" (ASCII), SHA-1, 8 digits; the
    /// 6-digit codes are the last six digits of the published 8-digit values.
    #[test]
    fn matches_the_rfc_6238_test_vectors() {
        let base32 = SecretString::from("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        let totp = generator(&base32).unwrap();
        assert_eq!(code_at(&totp, 59), "287082");
        assert_eq!(code_at(&totp, 1_111_111_109), "081804");
        assert_eq!(code_at(&totp, 1_234_567_890), "005924");
        assert_eq!(code_at(&totp, 2_000_000_000), "279037");
    }

    #[test]
    fn a_step_is_thirty_seconds_and_its_code_is_the_code_of_its_start() {
        let totp = generator(&SecretString::from("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ")).unwrap();
        assert_eq!((step_at(59), step_at(60), step_at(89)), (1, 2, 2));
        assert_eq!(code_for_step(&totp, step_at(59)), "287082");
        assert_eq!(code_for_step(&totp, 2), code_at(&totp, 89));
        assert_ne!(code_for_step(&totp, 2), code_for_step(&totp, 3));
    }

    #[test]
    fn a_code_is_accepted_within_the_allowed_skew_only() {
        let totp = generator(&SecretString::from("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ")).unwrap();
        let previous = code_at(&totp, 59);
        assert!(accepts(&totp, &previous, 60, 1) && accepts(&totp, &previous, 30, 0));
        assert!(!accepts(&totp, &previous, 60, 0) && !accepts(&totp, &previous, 90, 1));
        assert!(accepts(&totp, &code_at(&totp, 0), 0, 1), "no step before the first");
    }

    #[test]
    fn rejects_a_secret_that_is_not_base32() {
        assert!(secret_is_valid(&SecretString::from("not base32!")).is_err());
        assert!(secret_is_valid(&SecretString::from("jbsw y3dp ehpk 3pxp")).is_ok());
    }
}
