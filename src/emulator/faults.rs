//! Fault injection: per provider, from flags (`latency=100ms,error_rate=0.1`) or the control
//! endpoint (`PUT /_control/faults/{provider}` with JSON).

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added before every answer.
    #[serde(with = "humantime_serde_compat")]
    pub latency: Duration,
    /// Up to this much more, at random.
    #[serde(with = "humantime_serde_compat")]
    pub jitter: Duration,
    /// Share of calls (0 to 1) answered with HTTP 500. A probability, not money: f64 is right.
    #[serde(deserialize_with = "de_probability")]
    pub error_rate: f64,
    /// Answer 429, in the provider's own rate-limit shape, with this `Retry-After` (seconds).
    pub rate_limit: Option<u64>,
    /// Never answer.
    pub hang: bool,
    /// Answer with truncated JSON.
    pub malformed: bool,
    /// The next N calls answer 503.
    pub fail_next: u32,
}

impl FromStr for Faults {
    type Err = String;

    /// `latency=100ms,jitter=20ms,error_rate=0.1,rate_limit=5,hang,malformed,fail_next=3`
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut f = Faults::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            let bad = || format!("bad fault `{item}`");
            match key {
                "latency" => f.latency = humantime::parse_duration(value).map_err(|_| bad())?,
                "jitter" => f.jitter = humantime::parse_duration(value).map_err(|_| bad())?,
                "error_rate" => f.error_rate = probability(value.parse().map_err(|_| bad())?)?,
                "rate_limit" => f.rate_limit = Some(value.parse().map_err(|_| bad())?),
                "hang" => f.hang = true,
                "malformed" => f.malformed = true,
                "fail_next" => f.fail_next = value.parse().map_err(|_| bad())?,
                _ => {
                    return Err(format!(
                        "unknown fault `{key}` (latency, jitter, error_rate, rate_limit, hang, malformed, fail_next)"
                    ));
                }
            }
        }
        Ok(f)
    }
}

/// `error_rate` is a share of calls: the flag and the control endpoint refuse anything else
/// rather than act on it (a rate of 2 would fail every call, -1 none, silently).
fn probability(rate: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("error_rate must be between 0 and 1 (a share of calls), not {rate}"))
    }
}

fn de_probability<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    probability(f64::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// Durations as strings like `"100ms"` in the control endpoint's JSON.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_from_the_compact_form() {
        let f: Faults =
            "latency=100ms,jitter=20ms,error_rate=0.25,rate_limit=5,hang,malformed,fail_next=3".parse().unwrap();
        assert_eq!(f.latency, Duration::from_millis(100));
        assert_eq!(f.jitter, Duration::from_millis(20));
        assert_eq!((f.error_rate, f.rate_limit, f.hang, f.malformed, f.fail_next), (0.25, Some(5), true, true, 3));
        assert_eq!("".parse::<Faults>().unwrap(), Faults::default());
        assert!("error_rate=2".parse::<Faults>().is_err());
        assert!("explode".parse::<Faults>().is_err());
    }

    #[test]
    fn faults_read_json_with_duration_strings() {
        let f: Faults = serde_json::from_str(r#"{"latency":"250ms","fail_next":2}"#).unwrap();
        assert_eq!((f.latency, f.fail_next), (Duration::from_millis(250), 2));
        assert!(serde_json::from_str::<Faults>(r#"{"latncy":"1s"}"#).is_err());
    }
}
