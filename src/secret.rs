//! Secret values in the config: a literal, `env:NAME` or `file:/path`, resolved at load into
//! a [`SecretString`] so they can only be read on purpose (`expose_secret`).
//!
//! On the ground floor: the config and each provider's own settings (`providers/<name>/`)
//! resolve secrets the same way, the providers through [`deserialize`].

use secrecy::SecretString;
use serde::{Deserialize, Deserializer};

/// Resolves a config value that may reference a secret held elsewhere. Errors name the
/// variable or file, never the value.
pub fn resolve(value: &str) -> Result<SecretString, String> {
    resolve_plain(value).map(SecretString::from)
}

/// Like [`resolve`], for values that are not secret themselves but may come from the
/// environment (`store.url = "env:DATABASE_URL"`).
pub fn resolve_plain(value: &str) -> Result<String, String> {
    if let Some(name) = value.strip_prefix("env:") {
        match std::env::var(name) {
            Ok(v) if !v.is_empty() => Ok(v),
            Ok(_) => Err(format!("environment variable {name} is empty")),
            Err(_) => Err(format!("environment variable {name} is not set")),
        }
    } else if let Some(path) = value.strip_prefix("file:") {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        // Files written by editors and secret managers usually end in a newline.
        let text = text.trim_end_matches(['\n', '\r']).to_owned();
        if text.is_empty() { Err(format!("file {path} is empty")) } else { Ok(text) }
    } else if value.is_empty() {
        Err("is empty".to_owned())
    } else {
        Ok(value.to_owned())
    }
}

/// serde's `deserialize_with` for a secret setting: the written value resolved as
/// [`resolve`] does; an error names the variable or file, never the value.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    resolve(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn literal_env_and_file_references_resolve() {
        assert_eq!(resolve("plain").unwrap().expose_secret(), "plain");
        // PATH is set in every environment tests run in.
        assert_eq!(resolve_plain("env:PATH").unwrap(), std::env::var("PATH").unwrap());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cr3t\n").unwrap();
        assert_eq!(resolve(&format!("file:{}", path.display())).unwrap().expose_secret(), "s3cr3t");
    }

    #[test]
    fn missing_references_name_the_variable_or_file_not_a_value() {
        let err = resolve("env:TALLY_TEST_SURELY_UNSET_VARIABLE").unwrap_err();
        assert_eq!(err, "environment variable TALLY_TEST_SURELY_UNSET_VARIABLE is not set");
        let err = resolve("file:/nonexistent/tally/secret").unwrap_err();
        assert!(err.starts_with("cannot read /nonexistent/tally/secret"), "{err}");
        assert_eq!(resolve("").unwrap_err(), "is empty");
    }
}
