use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The closed set of providers tally speaks to. Adding one means adding a variant here, a
/// folder under `providers/`, and nothing in the service layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Leanx,
    Luxtak,
    Ibanera,
    Yedpay,
}

impl Provider {
    pub const ALL: [Provider; 4] = [Self::Leanx, Self::Luxtak, Self::Ibanera, Self::Yedpay];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Leanx => "leanx",
            Self::Luxtak => "luxtak",
            Self::Ibanera => "ibanera",
            Self::Yedpay => "yedpay",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown provider `{0}` (expected one of leanx, luxtak, ibanera, yedpay)")]
pub struct UnknownProvider(pub String);

impl FromStr for Provider {
    type Err = UnknownProvider;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| UnknownProvider(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_names_round_trip() {
        for p in Provider::ALL {
            assert_eq!(p.as_str().parse::<Provider>().unwrap(), p);
        }
        assert!("stripe".parse::<Provider>().is_err());
    }
}
