//! E2B's sandbox lists (`GET /v2/sandboxes`, and v1's `GET /sandboxes`):
//! a key's own sandboxes, filtered by state, metadata, template and start
//! time, newest first unless asked otherwise, in pages.

use super::control::{internal, listed_json, owner, MAX_PAGE};
use super::{ApiError, E2b};
use axum::extract::{Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct ListQuery {
    metadata: Option<String>,
    limit: Option<usize>,
    next_token: Option<String>,
    /// Only sandboxes of this template.
    template: Option<String>,
    /// RFC 3339: only sandboxes started at or after it.
    started_after: Option<String>,
    /// `asc` or `desc` by start time (default: newest first, as E2B).
    order: Option<String>,
}

/// The states a list asks for: `state=a,b` (as both of E2B's SDKs send
/// them) or `state=a&state=b` (OpenAPI's default form, which other
/// clients use); running and paused when none.
fn wanted_states(raw_query: &str) -> Vec<String> {
    let states: Vec<String> = form_pairs(raw_query)
        .into_iter()
        .filter(|(k, _)| k == "state")
        .flat_map(|(_, v)| {
            v.split(',')
                .map(|s| s.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.is_empty())
        .collect();
    if states.is_empty() {
        vec!["running".into(), "paused".into()]
    } else {
        states
    }
}

/// Unix seconds of an RFC 3339 time.
fn parse_rfc3339(text: &str) -> Option<i64> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// `k=v&k2=v2`, each key and value percent-encoded once more (the SDK
/// quotes them before it encodes the whole query value).
fn metadata_filter(text: &str) -> BTreeMap<String, String> {
    form_pairs(text)
        .into_iter()
        .map(|(k, v)| (percent_decode(&k), percent_decode(&v)))
        .collect()
}

fn form_pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) async fn list(
    State(e2b): State<Arc<E2b>>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let owner = owner(&e2b, &headers)?;
    let Query(q) = q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let states = wanted_states(raw.as_deref().unwrap_or(""));
    let wanted = q
        .metadata
        .as_deref()
        .map(metadata_filter)
        .unwrap_or_default();
    let started_after = match q.started_after.as_deref() {
        None | Some("") => None,
        Some(t) => Some(parse_rfc3339(t).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "startedAfter {t:?} is not an RFC 3339 time (for example 2026-01-31T12:00:00Z)"
                ),
            )
        })?),
    };
    let newest_first = match q.order.as_deref() {
        None | Some("") | Some("desc") => true,
        Some("asc") => false,
        Some(o) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("order {o:?} is neither asc nor desc"),
            ))
        }
    };
    let limit = q.limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
    let start: usize = match q.next_token.as_deref() {
        None | Some("") => 0,
        Some(t) => t.parse().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("nextToken {t:?} is not one this API gave"),
            )
        })?,
    };
    let mut mine = e2b.m.store.e2b_of(&owner).map_err(internal)?;
    mine.sort_by(|a, b| (a.started_at, &a.vm).cmp(&(b.started_at, &b.vm)));
    if newest_first {
        mine.reverse();
    }
    let all: Vec<Value> = mine
        .iter()
        .filter(|s| wanted.iter().all(|(k, v)| s.metadata.get(k) == Some(v)))
        .filter(|s| {
            q.template
                .as_deref()
                .is_none_or(|t| t.is_empty() || s.template == t)
        })
        .filter(|s| started_after.is_none_or(|t| s.started_at >= t))
        .filter_map(|s| listed_json(&e2b, s))
        .filter(|v| states.iter().any(|s| v["state"] == s.as_str()))
        .collect();
    let page: Vec<Value> = all.iter().skip(start).take(limit).cloned().collect();
    let mut resp = Json(Value::Array(page)).into_response();
    if start.saturating_add(limit) < all.len() {
        if let Ok(v) = HeaderValue::from_str(&(start + limit).to_string()) {
            resp.headers_mut().insert("x-next-token", v);
        }
    }
    Ok(resp)
}

/// The v1 list: running sandboxes only, all of them.
pub(super) async fn list_running(
    State(e2b): State<Arc<E2b>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let owner = owner(&e2b, &headers)?;
    let all: Vec<Value> = e2b
        .m
        .store
        .e2b_of(&owner)
        .map_err(internal)?
        .iter()
        .filter_map(|s| listed_json(&e2b, s))
        .filter(|v| v["state"] == "running")
        .collect();
    Ok(Json(Value::Array(all)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_filter_is_decoded_twice_as_the_sdk_encodes_it_twice() {
        // {"k": "v w", "team": "a&b"} after the query's own decoding.
        let f = metadata_filter("k=v%2520w&team=a%2526b");
        assert_eq!(f.get("k").map(String::as_str), Some("v w"));
        assert_eq!(f.get("team").map(String::as_str), Some("a&b"));
        assert!(metadata_filter("").is_empty());
        assert_eq!(percent_decode("100%"), "100%", "a lone % stays");
    }

    #[test]
    fn list_states_come_comma_separated_or_repeated() {
        assert_eq!(wanted_states(""), ["running", "paused"]);
        assert_eq!(wanted_states("state=paused"), ["paused"]);
        assert_eq!(
            wanted_states("limit=2&state=running%2Cpaused"),
            ["running", "paused"]
        );
        assert_eq!(
            wanted_states("state=running&state=paused"),
            ["running", "paused"]
        );
        assert_eq!(
            parse_rfc3339("2026-01-31T12:00:00.5+01:00"),
            Some(1_769_857_200)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
