//! Query-string parsing shared by the routes: repeatable or comma-separated filters, unknown
//! parameters rejected (a typo must not silently select everything), and control characters
//! refused in every value.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::error::{ApiError, ErrorCode};

/// The decoded `key=value` pairs of a query string.
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Parses the query, rejecting parameters not in `known`, and values holding a control
    /// character (see [`refused`]).
    pub fn parse(query: Option<&str>, known: &[&str]) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if let Some((k, _)) = pairs.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            return Err(ApiError::new(
                ErrorCode::UnknownParameter,
                format!("unknown query parameter `{}` (expected one of: {})", k.escape_debug(), known.join(", ")),
            ));
        }
        if let Some((k, v)) = pairs.iter().find(|(_, v)| v.chars().any(refused)) {
            let c = v.chars().find(|&c| refused(c)).map_or(0, u32::from);
            return Err(ApiError::new(
                ErrorCode::InvalidQuery,
                format!(
                    "`{k}` holds the control character U+{c:04X}; query values may not hold any (U+0000-U+001F, U+007F-U+009F)"
                ),
            ));
        }
        Ok(Self(pairs))
    }

    /// Every value of a repeatable, comma-separated parameter. An empty item (`account=`,
    /// `a,,b`, a trailing comma) is refused: selecting nothing by mistake must not select
    /// everything, which is what leaving the parameter out does.
    pub fn list(&self, key: &str) -> Result<Vec<&str>, ApiError> {
        let items = self.0.iter().filter(|(k, _)| k == key).flat_map(|(_, v)| v.split(',')).map(str::trim);
        items
            .map(|v| {
                if v.is_empty() {
                    return Err(ApiError::new(
                        ErrorCode::InvalidQuery,
                        format!("`{key}` has an empty value; leave `{key}` out to select every one"),
                    ));
                }
                Ok(v)
            })
            .collect()
    }

    /// A parameter given at most once.
    pub fn single(&self, key: &str) -> Result<Option<&str>, ApiError> {
        let mut values = self.0.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str());
        let first = values.next();
        if values.next().is_some() {
            return Err(ApiError::new(ErrorCode::InvalidQuery, format!("`{key}` may be given only once")));
        }
        Ok(first)
    }

    /// Parses every item of a list parameter, with the error code of that parameter.
    pub fn parsed<T>(&self, key: &str, code: ErrorCode, parse: impl Fn(&str) -> Option<T>) -> Result<Vec<T>, ApiError> {
        self.list(key)?
            .into_iter()
            .map(|v| parse(v).ok_or_else(|| ApiError::new(code, format!("`{v}` is not a valid `{key}`"))))
            .collect()
    }

    /// `max_age`: whole seconds, 0 forcing a live fetch.
    pub fn max_age(&self) -> Result<Option<Duration>, ApiError> {
        match self.single("max_age")? {
            None => Ok(None),
            Some(v) => v.parse::<u32>().map(|s| Some(Duration::from_secs(u64::from(s)))).map_err(|_| {
                ApiError::new(
                    ErrorCode::InvalidMaxAge,
                    format!("`max_age` must be whole seconds (0 or more), not `{v}`"),
                )
            }),
        }
    }

    pub fn time(&self, key: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
        self.single(key)?
            .map(|v| {
                DateTime::parse_from_rfc3339(v).map(|t| t.with_timezone(&Utc)).map_err(|_| {
                    ApiError::new(ErrorCode::InvalidTime, format!("`{key}` must be an RFC 3339 time, not `{v}`"))
                })
            })
            .transpose()
    }
}

/// Characters no query value may hold: the control characters (Unicode category Cc: U+0000 to
/// U+001F, U+007F to U+009F). No account, wallet, currency, time or id holds one; NUL cannot
/// even be stored in PostgreSQL text, and a line break in a value would reach the logs. Every
/// other character, spaces and letters beyond ASCII included, is text like any other.
pub fn refused(c: char) -> bool {
    c.is_control()
}
