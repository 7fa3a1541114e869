use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// The operator's name for a configured account: `[a-z0-9_-]+`, at most 64 characters.
/// It appears in URLs, metrics labels and logs, hence the narrow alphabet.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct AccountId(String);

#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a valid account id (use 1-64 characters from a-z, 0-9, `_` and `-`)")]
pub struct InvalidAccountId(pub String);

impl AccountId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The account of an event about no account (`webhook.test`): empty, which no configured
    /// account is (an id has 1 to 64 characters), so no account filter selects it.
    pub fn none() -> Self {
        Self(String::new())
    }
}

impl FromStr for AccountId {
    type Err = InvalidAccountId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok { Ok(Self(s.to_owned())) } else { Err(InvalidAccountId(s.to_owned())) }
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_follow_the_documented_alphabet() {
        assert!("leanx-main".parse::<AccountId>().is_ok());
        assert!("yedpay_hk2".parse::<AccountId>().is_ok());
        for bad in ["", "LeanX", "a b", "a/b", "ü", &"a".repeat(65)] {
            assert!(bad.parse::<AccountId>().is_err(), "{bad:?} should be rejected");
        }
    }
}
