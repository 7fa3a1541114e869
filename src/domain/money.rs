use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

/// A currency or asset code as the provider names it, upper-cased (`MYR`, `USDC`, `BTC`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Currency(String);

#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a currency code (2-12 letters or digits)")]
pub struct InvalidCurrency(pub String);

impl Currency {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Currency {
    type Err = InvalidCurrency;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if (2..=12).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Ok(Self(s.to_ascii_uppercase()))
        } else {
            Err(InvalidCurrency(s.to_owned()))
        }
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a decimal written as text, keeping its scale (`"13.00"` stays `13.00`).
/// Accepts exponent notation too, because a JSON number may legally be written `1.5E+3`.
/// An amount of 10^20 or more is refused: no balance or payout is that large, and below it any
/// sum of amounts tally makes (a currency's total over every entry) stays within what a
/// decimal holds, so the arithmetic on amounts from outside cannot overflow.
pub fn parse_decimal(s: &str) -> Result<Decimal, rust_decimal::Error> {
    let s = s.trim();
    let d = if s.contains(['e', 'E']) { Decimal::from_scientific(s) } else { Decimal::from_str_exact(s) }?;
    if d.abs() >= MAX_AMOUNT { Err(rust_decimal::Error::ExceedsMaximumPossibleValue) } else { Ok(d) }
}

/// The bound of [`parse_decimal`]: 10^20.
const MAX_AMOUNT: Decimal = Decimal::from_parts(1_661_992_960, 1_808_227_885, 5, false, 0);

/// Deserializes a JSON *number* (or a numeric string) into a [`Decimal`] from its literal
/// text, so the value never passes through `f64`: `90071992547409.93` stays exact.
pub fn de_decimal_number<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    let raw = Box::<RawValue>::deserialize(d)?;
    decimal_from_raw(&raw).map_err(serde::de::Error::custom)
}

/// Like [`de_decimal_number`], with JSON `null` (or an absent field, via `#[serde(default)]`)
/// read as `None`.
pub fn de_opt_decimal_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    let raw = Option::<Box<RawValue>>::deserialize(d)?;
    match raw {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => decimal_from_raw(&raw).map(Some).map_err(serde::de::Error::custom),
    }
}

fn decimal_from_raw(raw: &RawValue) -> Result<Decimal, String> {
    let text = raw.get();
    // A provider documented to send numbers sometimes sends numeric strings; both are exact.
    let literal = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(text);
    parse_decimal(literal).map_err(|e| format!("`{literal}` is not an exact decimal: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Wire {
        #[serde(deserialize_with = "de_decimal_number")]
        value: Decimal,
        #[serde(default, deserialize_with = "de_opt_decimal_number")]
        maybe: Option<Decimal>,
    }

    #[test]
    fn json_numbers_that_f64_cannot_hold_stay_exact() {
        let w: Wire = serde_json::from_str(r#"{"value": 90071992547409.93, "maybe": 0.12345678}"#).unwrap();
        assert_eq!(w.value.to_string(), "90071992547409.93");
        assert_eq!(w.maybe.unwrap().to_string(), "0.12345678");
    }

    #[test]
    fn scale_is_kept_and_null_is_none() {
        let w: Wire = serde_json::from_str(r#"{"value": 13.00, "maybe": null}"#).unwrap();
        assert_eq!(w.value.to_string(), "13.00");
        assert!(w.maybe.is_none());
        let w: Wire = serde_json::from_str(r#"{"value": "17.4781"}"#).unwrap();
        assert_eq!(w.value.to_string(), "17.4781");
        assert!(w.maybe.is_none());
    }

    #[test]
    fn exponent_notation_and_garbage() {
        let w: Wire = serde_json::from_str(r#"{"value": 1.5E+3}"#).unwrap();
        assert_eq!(w.value, Decimal::from(1500));
        assert!(serde_json::from_str::<Wire>(r#"{"value": "abc"}"#).is_err());
        assert!(serde_json::from_str::<Wire>(r#"{"value": true}"#).is_err());
    }

    #[test]
    fn currency_codes_are_upper_cased() {
        assert_eq!("usdc".parse::<Currency>().unwrap().as_str(), "USDC");
        assert!("M".parse::<Currency>().is_err());
        assert!("US D".parse::<Currency>().is_err());
    }

    #[test]
    fn amounts_of_a_hundred_quintillion_or_more_are_refused() {
        assert_eq!(MAX_AMOUNT.to_string(), "100000000000000000000");
        assert!(parse_decimal("99999999999999999999.99").is_ok());
        for huge in ["100000000000000000000", "-1e20", "79228162514264337593543950335", "1E+25"] {
            assert!(parse_decimal(huge).is_err(), "{huge}");
        }
    }
}
