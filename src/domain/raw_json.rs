//! A provider's payload exactly as it was sent, for `include=raw` and the store (SPEC §2: no
//! amount ever passes through `f64`).
//!
//! `serde_json::Value` is not exact here: without serde_json's `arbitrary_precision` feature a
//! number becomes an `f64` (`90071992547409.93` reads back as `…94`, `13.00` as `13.0`), and that
//! feature is not an option (it makes `Number` serialize as a private struct for every other
//! serializer, such as the YAML of `tally openapi`, and it would change serde_json for the whole
//! dependency graph). [`RawJson`] keeps each number as its literal text instead, and objects in
//! the order the provider wrote them.

use std::fmt::{self, Write as _};

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

/// A JSON value whose numbers are kept as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawJson {
    Null,
    Bool(bool),
    Number(JsonNumber),
    String(String),
    Array(Vec<RawJson>),
    /// Entries in the provider's order; a repeated key is kept as sent.
    Object(Vec<(String, RawJson)>),
}

/// The literal text of a JSON number (RFC 8259 §6), checked against the grammar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonNumber(String);

#[derive(Debug, thiserror::Error)]
#[error("not JSON: {0}")]
pub struct InvalidRawJson(String);

impl JsonNumber {
    pub fn new(text: impl Into<String>) -> Result<Self, InvalidRawJson> {
        let text = text.into();
        // serde_json checks the number grammar when it captures a raw value; a leading sign or
        // digit rules out the other kinds of value.
        let is_number = text.starts_with(|c: char| c == '-' || c.is_ascii_digit())
            && serde_json::from_str::<&RawValue>(&text).is_ok_and(|raw| raw.get() == text);
        if is_number { Ok(Self(text)) } else { Err(InvalidRawJson(format!("`{text}` is not a JSON number"))) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The deepest nesting of arrays and objects tally reads. Provider payloads are a few levels
/// deep; serde_json bounds its own recursion only for typed values, not for the values it
/// skips or captures raw, so a hostile answer nested thousands of levels deep would overflow
/// the stack of whichever reader recursed into it. Every JSON tally reads from outside is held
/// to this bound first ([`check_depth`]).
pub const MAX_DEPTH: usize = 64;

/// Refuses JSON text nested deeper than [`MAX_DEPTH`], in one pass without recursion (brackets
/// inside strings do not count). Says nothing else about the text: the parser that follows
/// judges it.
pub fn check_depth(text: &[u8]) -> Result<(), InvalidRawJson> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in text {
        match (in_string, byte) {
            (true, _) if escaped => escaped = false,
            (true, b'\\') => escaped = true,
            (true, b'"') => in_string = false,
            (true, _) => {}
            (false, b'"') => in_string = true,
            (false, b'[' | b'{') => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(InvalidRawJson(format!("nested deeper than {MAX_DEPTH} levels")));
                }
            }
            (false, b']' | b'}') => depth = depth.saturating_sub(1),
            (false, _) => {}
        }
    }
    Ok(())
}

impl RawJson {
    /// Parses JSON text. Each value is first captured as raw text by serde_json (which validates
    /// it), then containers are opened one level at a time, so a number is never converted.
    pub fn parse(text: &str) -> Result<Self, InvalidRawJson> {
        check_depth(text.as_bytes())?;
        let raw: &RawValue = serde_json::from_str(text).map_err(|e| InvalidRawJson(e.to_string()))?;
        Self::from_raw(raw).map_err(|e| InvalidRawJson(e.to_string()))
    }

    pub fn from_slice(bytes: &[u8]) -> Result<Self, InvalidRawJson> {
        let text = std::str::from_utf8(bytes).map_err(|e| InvalidRawJson(e.to_string()))?;
        Self::parse(text)
    }

    /// Re-reads a captured value. Every byte is scanned once per level of nesting above it;
    /// provider payloads are a few levels deep, and serde_json caps nesting at 128.
    fn from_raw(raw: &RawValue) -> Result<Self, serde_json::Error> {
        let text = raw.get();
        Ok(match text.as_bytes().first() {
            Some(b'{') => {
                let Entries(entries) = serde_json::from_str(text)?;
                Self::Object(entries.into_iter().map(|(k, v)| Ok((k, Self::from_raw(v)?))).collect::<Result<_, _>>()?)
            }
            Some(b'[') => {
                let items: Vec<&RawValue> = serde_json::from_str(text)?;
                Self::Array(items.into_iter().map(Self::from_raw).collect::<Result<_, _>>()?)
            }
            Some(b'"') => Self::String(serde_json::from_str(text)?),
            Some(b't' | b'f') => Self::Bool(serde_json::from_str(text)?),
            Some(b'n') => Self::Null,
            // serde_json validated the number while capturing it.
            _ => Self::Number(JsonNumber(text.to_owned())),
        })
    }

    /// The value of `key` when this is an object holding it (the last one, as serde_json reads
    /// a repeated key).
    pub fn get(&self, key: &str) -> Option<&RawJson> {
        match self {
            Self::Object(entries) => entries.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// A number's literal text.
    pub fn as_number(&self) -> Option<&str> {
        match self {
            Self::Number(n) => Some(n.as_str()),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[RawJson]> {
        match self {
            Self::Array(items) => Some(items),
            _ => None,
        }
    }
}

/// `raw["data"]["value"]`, with `Null` for anything absent, as `serde_json::Value` indexes.
impl std::ops::Index<&str> for RawJson {
    type Output = RawJson;

    fn index(&self, key: &str) -> &RawJson {
        self.get(key).unwrap_or(&RawJson::Null)
    }
}

impl std::ops::Index<usize> for RawJson {
    type Output = RawJson;

    fn index(&self, i: usize) -> &RawJson {
        self.as_array().and_then(|items| items.get(i)).unwrap_or(&RawJson::Null)
    }
}

/// Compact JSON text, numbers exactly as parsed: what the stores keep.
impl fmt::Display for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => f.write_str("null"),
            Self::Bool(b) => write!(f, "{b}"),
            Self::Number(n) => f.write_str(n.as_str()),
            Self::String(s) => write_string(f, s),
            Self::Array(items) => {
                f.write_char('[')?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_char(',')?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_char(']')
            }
            Self::Object(entries) => {
                f.write_char('{')?;
                for (i, (key, value)) in entries.iter().enumerate() {
                    if i > 0 {
                        f.write_char(',')?;
                    }
                    write_string(f, key)?;
                    write!(f, ":{value}")?;
                }
                f.write_char('}')
            }
        }
    }
}

fn write_string(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str(&serde_json::to_string(s).map_err(|_| fmt::Error)?)
}

/// Serializes structurally, with each number handed to serde_json as raw text, which its
/// serializer writes verbatim (responses are serde_json). Integers that fit an `i64`/`u64` go as
/// integers, so other serializers see plain numbers for them.
impl Serialize for RawJson {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Null => s.serialize_unit(),
            Self::Bool(b) => s.serialize_bool(*b),
            Self::Number(n) => serialize_number(n.as_str(), s),
            Self::String(text) => s.serialize_str(text),
            Self::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Self::Object(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
        }
    }
}

fn serialize_number<S: Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
    if let Ok(n) = text.parse::<i64>()
        && n.to_string() == text
    {
        return s.serialize_i64(n);
    }
    if let Ok(n) = text.parse::<u64>()
        && n.to_string() == text
    {
        return s.serialize_u64(n);
    }
    let raw = RawValue::from_string(text.to_owned()).map_err(serde::ser::Error::custom)?;
    raw.serialize(s)
}

/// A JSON object's entries in their order, each value still raw.
struct Entries<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Entries<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;

        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }

        d.deserialize_map(EntriesVisitor)
    }
}

/// Documented as "any JSON", as `serde_json::Value` is.
impl utoipa::PartialSchema for RawJson {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <serde_json::Value as utoipa::PartialSchema>::schema()
    }
}

impl utoipa::ToSchema for RawJson {}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str) -> String {
        RawJson::parse(text).unwrap_or_else(|e| panic!("{text}: {e}")).to_string()
    }

    #[test]
    fn numbers_keep_their_digits_and_scale() {
        let text = r#"{"big":90071992547409.93,"scaled":13.00,"zero":0.00,"int":2000}"#;
        assert_eq!(round_trip(text), text, "f64 would give …94, 13.0 and 0.0");
        let raw = RawJson::parse(text).unwrap();
        assert_eq!(raw["big"].as_number(), Some("90071992547409.93"));
        assert_eq!(serde_json::to_string(&raw).unwrap(), text, "serde_json writes the same text");
    }

    #[test]
    fn negative_and_exponent_numbers_are_kept_as_written() {
        let text = r#"[-0.5,-12,1E+3,2.5e-8,-0,123456789012345678901234567890]"#;
        assert_eq!(round_trip(text), text);
        assert_eq!(serde_json::to_string(&RawJson::parse(text).unwrap()).unwrap(), text);
    }

    #[test]
    fn nesting_and_key_order_survive() {
        let text = r#"{"z":{"b":[1,{"c":[[],{}]}],"a":null},"a":[true,false,"x"],"m":{}}"#;
        assert_eq!(round_trip(text), text);
        let raw = RawJson::parse(text).unwrap();
        assert_eq!(raw["z"]["b"][1]["c"], RawJson::Array(vec![RawJson::Array(vec![]), RawJson::Object(vec![])]));
        assert_eq!(raw["a"][2].as_str(), Some("x"));
        assert_eq!(raw["missing"]["deeper"], RawJson::Null);
    }

    #[test]
    fn whitespace_is_dropped_and_unicode_escapes_are_decoded() {
        let raw =
            RawJson::parse("  { \"name\" : \"Jos\\u00e9 \\ud83d\\ude00\\n\\\"q\\\"\" , \"n\" : [ 1 , 2 ] }\n").unwrap();
        assert_eq!(raw["name"].as_str(), Some("José 😀\n\"q\""));
        let text = raw.to_string();
        assert_eq!(text, "{\"name\":\"José 😀\\n\\\"q\\\"\",\"n\":[1,2]}");
        assert_eq!(RawJson::parse(&text).unwrap(), raw, "the written text reads back the same");
    }

    #[test]
    fn invalid_json_is_rejected() {
        for bad in [
            "",
            "{",
            r#"{"a":1,}"#,
            "[1 2]",
            "01",
            "1.",
            ".5",
            "+1",
            "NaN",
            r#"{"a":1} x"#,
            "\"\\ud800\"",
            "'single'",
            "{a:1}",
        ] {
            assert!(RawJson::parse(bad).is_err(), "{bad:?} is not JSON");
        }
        assert!(RawJson::from_slice(b"\"\xff\"").is_err(), "not UTF-8");
    }

    #[test]
    fn number_literals_are_checked_against_the_grammar() {
        assert_eq!(JsonNumber::new("-1.50e+10").unwrap().as_str(), "-1.50e+10");
        for bad in ["1.", "01", " 1", "1 ", "\"1\"", "true", "0x10", "Infinity", ""] {
            assert!(JsonNumber::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_schema_is_any_json() {
        use utoipa::PartialSchema;
        assert_eq!(
            serde_json::to_value(RawJson::schema()).unwrap(),
            serde_json::to_value(serde_json::Value::schema()).unwrap()
        );
    }

    #[test]
    fn nesting_beyond_the_bound_is_refused_without_recursing() {
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(RawJson::parse(&nested(MAX_DEPTH)).is_ok());
        let e = RawJson::parse(&nested(MAX_DEPTH + 1)).unwrap_err();
        assert!(e.to_string().contains("nested deeper than 64 levels"), "{e}");
        // A million levels: refused by the scan, before any recursive reader sees it.
        assert!(check_depth(nested(1_000_000).as_bytes()).is_err());
        // Brackets inside strings, escaped quotes included, are text.
        let text = format!(r#"{{"a": "{}\"{}", "b": [1]}}"#, "[".repeat(200), "{".repeat(200));
        assert!(check_depth(text.as_bytes()).is_ok(), "{text}");
    }
}
