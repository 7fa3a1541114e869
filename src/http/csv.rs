//! CSV answers (SPEC §10.3): `format=csv` or `Accept: text/csv` on the balance routes.
//!
//! RFC 4180 through the `csv` crate: a header row, CRLF line ends, no BOM, an empty cell for
//! `null`, amounts as the plain decimal text of the JSON, times RFC 3339 UTC. A text cell a
//! spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`, tab or carriage
//! return) is prefixed with `'`; amounts are not text cells, so `-5.00` stays a number.

use std::borrow::Cow;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::error::{ApiError, ErrorCode};
use super::query::Params;

pub const TEXT_CSV: &str = "text/csv; charset=utf-8";

/// The representation a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// JSON (the default).
    Json,
    /// CSV (SPEC §10.3), as `Accept: text/csv` asks too.
    Csv,
}

impl Format {
    /// `format` when given (it wins over `Accept`), else CSV when `Accept` prefers `text/csv`
    /// to JSON.
    pub fn of(params: &Params, headers: &HeaderMap) -> Result<Self, ApiError> {
        match params.single("format")? {
            Some("csv") => Ok(Self::Csv),
            Some("json") => Ok(Self::Json),
            Some(other) => Err(ApiError::new(
                ErrorCode::InvalidFormat,
                format!("`format` accepts `json` or `csv`, not `{}`", other.escape_debug()),
            )),
            None => Ok(if accepts_csv(headers) { Self::Csv } else { Self::Json }),
        }
    }
}

/// Whether `Accept` names `text/csv` (q > 0) with no JSON type of a higher quality before it.
fn accepts_csv(headers: &HeaderMap) -> bool {
    let mut best: Option<(f32, bool)> = None;
    for range in headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')) {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        let csv = match media.as_str() {
            "text/csv" => true,
            "application/json" | "application/*" => false,
            _ => continue,
        };
        if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
            best = Some((q, csv));
        }
    }
    best.is_some_and(|(_, csv)| csv)
}

/// One CSV document being written.
pub struct Sheet(csv::Writer<Vec<u8>>);

impl Sheet {
    pub fn new(header: &[&str]) -> Self {
        let mut w = csv::WriterBuilder::new().terminator(csv::Terminator::CRLF).from_writer(Vec::new());
        w.write_record(header).expect("writing to memory does not fail");
        Self(w)
    }

    pub fn row(&mut self, cells: &[Cell<'_>]) {
        let cells: Vec<Cow<'_, str>> = cells.iter().map(Cell::text).collect();
        self.0.write_record(cells.iter().map(|c| c.as_bytes())).expect("writing to memory does not fail");
    }

    pub fn finish(self) -> Vec<u8> {
        self.0.into_inner().expect("writing to memory does not fail")
    }
}

/// A CSV cell.
pub enum Cell<'a> {
    /// Text from outside (a name, a wallet): guarded against formulas.
    Text(&'a str),
    Amount(Option<Decimal>),
    Time(Option<DateTime<Utc>>),
    Bool(bool),
    Number(u64),
    /// Text tally writes itself (a date): written as is.
    Plain(String),
}

impl Cell<'_> {
    fn text(&self) -> Cow<'_, str> {
        match self {
            Cell::Text(s) => guard(s),
            Cell::Amount(a) => a.map(|a| Cow::Owned(a.to_string())).unwrap_or_default(),
            Cell::Time(t) => t.map(|t| Cow::Owned(time(t))).unwrap_or_default(),
            Cell::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            Cell::Number(n) => Cow::Owned(n.to_string()),
            Cell::Plain(s) => Cow::Borrowed(s),
        }
    }
}

/// RFC 3339 UTC, as the JSON writes it.
pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// `s`, prefixed with `'` when a spreadsheet would run it as a formula.
pub fn guard(s: &str) -> Cow<'_, str> {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) { Cow::Owned(format!("'{s}")) } else { Cow::Borrowed(s) }
}

/// The answer: `body` as an attachment named after `route` and the UTC date of `now`, with
/// `etag`, or `304` when `If-None-Match` holds it.
pub fn answer(
    headers: &HeaderMap,
    route: &str,
    now: DateTime<Utc>,
    etag: &str,
    cache_control: &str,
    body: impl FnOnce() -> Vec<u8>,
) -> Response {
    let mut response = if super::balances::if_none_match(headers, etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let disposition = format!("attachment; filename=\"tally-{route}-{}.csv\"", now.format("%Y-%m-%d"));
        (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(TEXT_CSV)),
                (header::CONTENT_DISPOSITION, HeaderValue::from_str(&disposition).expect("an ASCII file name")),
            ],
            body(),
        )
            .into_response()
    };
    let h = response.headers_mut();
    h.insert(header::ETAG, HeaderValue::from_str(etag).expect("a quoted hex digest is a valid header value"));
    if let Ok(v) = HeaderValue::from_str(cache_control) {
        h.insert(header::CACHE_CONTROL, v);
    }
    response
}

/// The `ETag` of the CSV answer whose JSON answer has `json_etag`: another representation,
/// another tag.
pub fn etag(json_etag: &str) -> String {
    format!("\"{}-csv\"", json_etag.trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_neutralized_and_amounts_are_not() {
        assert_eq!(guard("=HYPERLINK(\"http://x\")"), "'=HYPERLINK(\"http://x\")");
        for s in ["+1", "-1", "@SUM(A1)", "\tx", "\rx"] {
            assert_eq!(guard(s), format!("'{s}"));
        }
        assert_eq!(guard("prefund"), "prefund");
        let mut sheet = Sheet::new(&["a", "b", "c"]);
        sheet.row(&[Cell::Text("-x"), Cell::Amount(Some(Decimal::new(-500, 2))), Cell::Amount(None)]);
        assert_eq!(String::from_utf8(sheet.finish()).unwrap(), "a,b,c\r\n'-x,-5.00,\r\n");
    }

    #[test]
    fn accept_prefers_by_quality() {
        let h = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
            h
        };
        assert!(accepts_csv(&h("text/csv")));
        assert!(accepts_csv(&h("text/csv;q=0.9, */*;q=0.1")));
        assert!(!accepts_csv(&h("application/json, text/csv;q=0.5")));
        assert!(!accepts_csv(&h("text/csv;q=0")));
        assert!(!accepts_csv(&h("*/*")));
        assert!(!accepts_csv(&HeaderMap::new()));
    }
}
