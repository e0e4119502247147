//! API keys (`Authorization: Bearer <key>`; missing or unknown: 401) and teams
//! (`X-Friendli-Team`; a key bound to another team: 403).
//!
//! Rule: with no key configured the server is open. With keys, every path needs a valid key
//! except the operational ones in [`OPEN_PATHS`] (`/health` for load balancers, `/metrics` for
//! scrapers — counts only, no request content — and `/openapi.json`). A missing, malformed or
//! unknown key is 401; a key bound to a team used with an `X-Friendli-Team` naming another team
//! is 403. Keys are compared as SHA-256 digests, every configured key every time, without
//! early exit, so the time taken does not depend on how much of a key matched.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::observe::RequestRecord;
use crate::state::AppState;

/// Paths answered without a key even when keys are configured.
pub const OPEN_PATHS: [&str; 3] = ["/health", "/metrics", "/openapi.json"];

/// The team header (Friendli SDKs send it with `team_id` / `x_friendli_team`).
pub const TEAM_HEADER: &str = "x-friendli-team";

/// Longest accepted team name (visible ASCII only).
const MAX_TEAM_LEN: usize = 128;

struct KeyEntry {
    digest: [u8; 32],
    team: Option<String>,
}

/// The configured keys; empty = open server.
#[derive(Clone, Default)]
pub struct ApiKeys(Arc<Vec<KeyEntry>>);

/// Who is calling, once the key is checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// The key's team, or the team the header names (when the key has none).
    pub team: Option<String>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.len())
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Equal digests, in time independent of where they differ.
fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl ApiKeys {
    /// Keys with their optional team. Empty keys are skipped.
    pub fn new(keys: impl IntoIterator<Item = (String, Option<String>)>) -> ApiKeys {
        let entries = keys
            .into_iter()
            .filter(|(k, _)| !k.is_empty())
            .map(|(k, team)| KeyEntry {
                digest: digest(&k),
                team,
            })
            .collect();
        ApiKeys(Arc::new(entries))
    }

    /// A keys file: one key per line, optionally followed by whitespace and the team it is bound
    /// to; blank lines and lines starting with `#` are skipped.
    pub fn parse_file(text: &str) -> Result<Vec<(String, Option<String>)>, String> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let key = parts.next().unwrap_or_default().to_owned();
            let team = parts.next().map(str::to_owned);
            if parts.next().is_some() {
                return Err(format!(
                    "line {}: expected `KEY [TEAM]`, found more fields",
                    i + 1
                ));
            }
            if let Some(t) = &team {
                check_team(t).map_err(|e| format!("line {}: {e}", i + 1))?;
            }
            keys.push((key, team));
        }
        Ok(keys)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks a request's headers: 401 / 403 / 400 (an unreadable team header), else who it is.
    pub fn check(&self, headers: &HeaderMap) -> Result<Identity, ApiError> {
        let header_team = team_header(headers)?;
        if self.is_empty() {
            return Ok(Identity { team: header_team });
        }
        let presented = bearer(headers)?;
        let d = digest(presented);
        let mut found: Option<&KeyEntry> = None;
        for entry in self.0.iter() {
            if digests_equal(&entry.digest, &d) && found.is_none() {
                found = Some(entry);
            }
        }
        let entry =
            found.ok_or_else(|| ApiError::Unauthorized("the API key is not valid".into()))?;
        match (&entry.team, header_team) {
            (Some(bound), Some(asked)) if *bound != asked => Err(ApiError::Forbidden(format!(
                "this API key belongs to another team than `{asked}` (X-Friendli-Team)"
            ))),
            (Some(bound), _) => Ok(Identity {
                team: Some(bound.clone()),
            }),
            (None, asked) => Ok(Identity { team: asked }),
        }
    }
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let missing = || {
        ApiError::Unauthorized("an API key is required: send `Authorization: Bearer <key>`".into())
    };
    let value = headers.get(header::AUTHORIZATION).ok_or_else(missing)?;
    let value = value.to_str().map_err(|_| missing())?;
    let (scheme, key) = value.trim().split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(missing());
    }
    Ok(key.trim())
}

fn check_team(team: &str) -> Result<(), String> {
    if team.is_empty() || team.len() > MAX_TEAM_LEN || !team.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "a team must be 1 to {MAX_TEAM_LEN} visible ASCII characters"
        ));
    }
    Ok(())
}

fn team_header(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(TEAM_HEADER) else {
        return Ok(None);
    };
    let team = v.to_str().unwrap_or("\u{0}").trim();
    check_team(team)
        .map_err(|e| ApiError::BadRequest(format!("invalid X-Friendli-Team header: {e}")))?;
    Ok(Some(team.to_owned()))
}

/// Middleware: applies the rule above and records the team on the request's log record.
pub async fn require_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let open = OPEN_PATHS.contains(&req.uri().path());
    let keys = &state.options().api_keys;
    let identity = match keys.check(req.headers()) {
        Ok(identity) => identity,
        Err(_) if open => Identity::default(),
        Err(e) => return e.into_response(),
    };
    if let Some(record) = req.extensions().get::<Arc<RequestRecord>>() {
        record.set_team(identity.team.clone(), !keys.is_empty());
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(auth: Option<&str>, team: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        if let Some(t) = team {
            h.insert(TEAM_HEADER, HeaderValue::from_str(t).unwrap());
        }
        h
    }

    fn keys() -> ApiKeys {
        ApiKeys::new([
            ("k-open".to_owned(), None),
            ("k-red".to_owned(), Some("red".to_owned())),
        ])
    }

    #[test]
    fn no_keys_means_open() {
        let id = ApiKeys::default().check(&headers(None, Some("t"))).unwrap();
        assert_eq!(id.team.as_deref(), Some("t"));
    }

    #[test]
    fn missing_wrong_or_malformed_keys_are_401() {
        for auth in [
            None,
            Some("Bearer nope"),
            Some("Basic k-open"),
            Some("k-open"),
            Some("Bearer k-ope"),
        ] {
            let err = keys().check(&headers(auth, None)).unwrap_err();
            assert_eq!(err.status(), 401, "{auth:?}");
        }
        assert!(keys().check(&headers(Some("bearer  k-open"), None)).is_ok());
    }

    #[test]
    fn teams_bind_keys() {
        let red = keys().check(&headers(Some("Bearer k-red"), None)).unwrap();
        assert_eq!(red.team.as_deref(), Some("red"));
        assert!(keys()
            .check(&headers(Some("Bearer k-red"), Some("red")))
            .is_ok());
        let err = keys()
            .check(&headers(Some("Bearer k-red"), Some("blue")))
            .unwrap_err();
        assert_eq!(err.status(), 403);
        let unbound = keys()
            .check(&headers(Some("Bearer k-open"), Some("blue")))
            .unwrap();
        assert_eq!(unbound.team.as_deref(), Some("blue"));
    }

    #[test]
    fn keys_file_format() {
        let parsed = ApiKeys::parse_file("# comment\n\nk1\n  k2 team-a  \n").unwrap();
        assert_eq!(
            parsed,
            [
                ("k1".to_owned(), None),
                ("k2".to_owned(), Some("team-a".to_owned()))
            ]
        );
        assert!(ApiKeys::parse_file("k1 a b").is_err());
    }
}
