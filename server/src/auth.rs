//! Who is asking: the token a request carries, verified against the project keys (or an external
//! issuer), what it allows, and the limit on failed attempts per address.
//!
//! While the store holds no API key and no external issuer is configured, roomd is in open
//! development mode: every caller is an anonymous participant of the `default` project with every
//! scope. Once a key exists, every request needs a valid token, from the next request on.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, StatusCode};
use roomd_room_apis::participants::{Identity as Who, ParticipantKey};
use roomd_room_apis::{
    ApiKey, ApiScope, DocAccess, ExternalIssuer, Forbidden, KeyId, ProjectId, Role,
    Unauthenticated, Verified,
};
use roomd_sync::CloseCode;

use crate::store::ProjectKey;

/// The prefix of the WebSocket subprotocol that carries a token (`meshagent-room.<jwt>`), for
/// browsers, which cannot set headers on a WebSocket.
pub const SUBPROTOCOL_PREFIX: &str = "meshagent-room.";

/// How the request carried its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    /// The token, from the first place that had one: the `Authorization: Bearer` header, the
    /// subprotocol, then `?token=`.
    pub token: Option<String>,
    /// The `meshagent-room.` subprotocol the client offered, to echo back: a browser drops a
    /// connection whose offered subprotocol is not echoed.
    pub subprotocol: Option<String>,
}

/// Reads the token a request presents. `query` is the URL's query string.
pub fn presented(headers: &HeaderMap, query: Option<&str>) -> Presented {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    let subprotocol = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| p.starts_with(SUBPROTOCOL_PREFIX))
        .map(str::to_string);
    let from_subprotocol = subprotocol
        .as_deref()
        .and_then(|p| p.strip_prefix(SUBPROTOCOL_PREFIX))
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    let from_query = query.and_then(|q| {
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == "token" && !v.is_empty()).then(|| percent_decode(v))
        })
    });
    Presented {
        token: bearer.or(from_subprotocol).or(from_query),
        subprotocol,
    }
}

/// Decodes `%XX` escapes (and `+` as a space) of a query value; invalid escapes stay as they are.
fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A URL's path and query as it may be logged: a `token` parameter's value is replaced.
pub fn redacted(path: &str, query: Option<&str>) -> String {
    match query {
        None => path.to_string(),
        Some(q) => {
            let parts: Vec<String> = q
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some(("token", _)) => "token=<redacted>".to_string(),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}?{}", parts.join("&"))
        }
    }
}

/// Who made a request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Open development mode: an anonymous participant with every scope.
    Anonymous {
        /// The default project.
        project: ProjectKey,
    },
    /// A verified token.
    Token(Box<Verified>),
    /// A project's API key, presented as the token: every scope in every room of the project
    /// (its holder could mint any token anyway).
    ProjectKey {
        /// The key's project.
        project: ProjectKey,
        /// The key.
        key: KeyId,
    },
}

impl Caller {
    /// The project whose rooms the caller reaches.
    pub fn project(&self) -> ProjectKey {
        match self {
            Caller::Anonymous { project } | Caller::ProjectKey { project, .. } => *project,
            Caller::Token(v) => *v.project.uuid().as_bytes(),
        }
    }

    /// The API scope the caller has in `room`, or why it has none there.
    pub fn scope_in(&self, room: &str) -> Result<ApiScope, Forbidden> {
        match self {
            Caller::Anonymous { .. } | Caller::ProjectKey { .. } => Ok(ApiScope::full()),
            Caller::Token(v) => v.claims.authorize_room(room).cloned(),
        }
    }

    /// How the caller may use document `doc` of `room`.
    pub fn doc_access(&self, room: &str, doc: &str) -> Result<DocAccess, Forbidden> {
        self.scope_in(room)?.doc_access(doc)
    }

    /// The participant the caller is. Callers without a token are one participant, `anonymous`,
    /// whose identity every one of their connections shares.
    pub fn who(&self) -> std::sync::Arc<Who> {
        static ANONYMOUS: std::sync::OnceLock<std::sync::Arc<Who>> = std::sync::OnceLock::new();
        if let Caller::Anonymous { .. } = self {
            return ANONYMOUS
                .get_or_init(|| std::sync::Arc::new(self.identity()))
                .clone();
        }
        std::sync::Arc::new(self.identity())
    }

    fn identity(&self) -> Who {
        match self {
            Caller::ProjectKey { key, .. } => Who {
                key: ParticipantKey::Named {
                    name: format!("api-key {key}").into(),
                    role: Role::Tool,
                },
                name: format!("api-key {key}"),
                role: Role::Tool,
                attributes: serde_json::Map::new(),
            },
            Caller::Anonymous { .. } => Who {
                key: ParticipantKey::Anonymous,
                name: "anonymous".into(),
                role: Role::User,
                attributes: serde_json::Map::from_iter([(
                    "name".to_string(),
                    serde_json::Value::String("anonymous".into()),
                )]),
            },
            Caller::Token(v) => Who {
                key: ParticipantKey::Named {
                    name: v.claims.name.as_str().into(),
                    role: v.claims.role(),
                },
                name: v.claims.name.clone(),
                role: v.claims.role(),
                attributes: v.claims.attributes(),
            },
        }
    }

    /// The participant's name, for logs and events.
    pub fn name(&self) -> String {
        match self {
            Caller::Anonymous { .. } => "anonymous".into(),
            Caller::ProjectKey { key, .. } => format!("api-key {key}"),
            Caller::Token(v) => v.claims.name.clone(),
        }
    }

    /// Who the caller is to the rules of the documents it writes.
    pub fn principal(&self) -> roomd_sync::Principal {
        roomd_sync::Principal::new(self.name(), self.is_project_admin())
    }

    /// True for an operator of the project: its API key, or a token with the `admin` grant.
    pub fn is_project_admin(&self) -> bool {
        match self {
            Caller::Anonymous { .. } | Caller::ProjectKey { .. } => true,
            Caller::Token(v) => v.claims.api().is_some_and(|a| a.admin.is_some()),
        }
    }
}

/// Why a request was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No token where one is needed.
    Missing,
    /// The token authenticates no one.
    Unauthenticated(Unauthenticated),
    /// The token is valid but does not allow this.
    Forbidden(Forbidden),
    /// The address made too many failed attempts.
    TooManyFailures,
}

impl Refusal {
    /// A short stable name, for logs and metrics labels.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Unauthenticated(u) => u.reason(),
            Refusal::Forbidden(f) => f.reason(),
            Refusal::TooManyFailures => "too_many_failures",
        }
    }

    /// The HTTP status of the refusal.
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::Missing | Refusal::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
            Refusal::TooManyFailures => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The close code a y-websocket connection gets.
    pub fn close_code(self) -> CloseCode {
        match self {
            Refusal::Missing | Refusal::Unauthenticated(_) => CloseCode::Unauthorized,
            Refusal::Forbidden(_) => CloseCode::Forbidden,
            Refusal::TooManyFailures => CloseCode::TooManyFailures,
        }
    }

    /// A short message for the client, naming no internal detail.
    pub fn message(self) -> String {
        match self {
            Refusal::Missing => "a token is required".into(),
            Refusal::Unauthenticated(u) => u.to_string(),
            Refusal::Forbidden(f) => f.to_string(),
            Refusal::TooManyFailures => "too many failed attempts from this address".into(),
        }
    }
}

/// Counts failed attempts per source address over a minute. Memory is bounded: at most
/// `addresses_max` addresses are tracked; past that, expired entries are dropped, and if none
/// has expired, new addresses share one overflow count.
#[derive(Debug)]
pub struct FailureLimiter {
    per_minute_max: u32,
    addresses_max: usize,
    windows: Mutex<HashMap<Option<IpAddr>, (Instant, u32)>>,
}

const WINDOW: Duration = Duration::from_secs(60);

impl FailureLimiter {
    /// A limiter allowing `per_minute_max` failures a minute per address.
    pub fn new(per_minute_max: u32, addresses_max: usize) -> FailureLimiter {
        FailureLimiter {
            per_minute_max,
            addresses_max: addresses_max.max(1),
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a failure from `ip` at `now`; true when the address is over its limit.
    pub fn fail(&self, ip: IpAddr, now: Instant) -> bool {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() >= self.addresses_max && !windows.contains_key(&Some(ip)) {
            windows.retain(|_, (start, _)| now.saturating_duration_since(*start) < WINDOW);
        }
        let key = if windows.len() >= self.addresses_max && !windows.contains_key(&Some(ip)) {
            None
        } else {
            Some(ip)
        };
        let entry = windows.entry(key).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        entry.1 > self.per_minute_max
    }
}

/// The token verification state: projects and keys, the external issuer, the failure limiter.
pub struct Auth {
    /// Projects and keys.
    pub identity: crate::identity::Identity,
    /// An external issuer's public key, when configured.
    pub issuer: Option<ExternalIssuer>,
    /// Failed attempts per address.
    pub failures: FailureLimiter,
    /// The project of open development mode.
    pub default_project: ProjectKey,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("identity", &self.identity)
            .field("issuer", &self.issuer.is_some())
            .finish_non_exhaustive()
    }
}

/// Seconds since the Unix epoch.
fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Auth {
    /// True in open development mode.
    pub fn is_open(&self) -> bool {
        self.identity.is_open() && self.issuer.is_none()
    }

    /// Who presents `token` (or no token).
    pub fn authenticate(&self, token: Option<&str>) -> Result<Caller, Refusal> {
        let anonymous = Caller::Anonymous {
            project: self.default_project,
        };
        let open = self.is_open();
        let Some(token) = token else {
            return if open {
                Ok(anonymous)
            } else {
                Err(Refusal::Missing)
            };
        };
        if token.starts_with("ma-") {
            let checked = ApiKey::parse(token)
                .map_err(|_| Unauthenticated::Malformed)
                .and_then(|key| self.identity.check_api_key(&key).map(|p| (p, key.id)));
            return match checked {
                Ok((project, key)) => Ok(Caller::ProjectKey {
                    project: *project.uuid().as_bytes(),
                    key,
                }),
                Err(_) if open => Ok(anonymous),
                Err(e) => Err(Refusal::Unauthenticated(e)),
            };
        }
        let verified = self.identity.with_keys(|keys| {
            roomd_room_apis::verify(token, now_secs(), keys, self.issuer.as_ref())
        });
        match verified {
            Ok(v) => Ok(Caller::Token(Box::new(v))),
            // With nothing to verify against, a token proves nothing and needs to prove nothing.
            Err(_) if open => Ok(anonymous),
            Err(e) => Err(Refusal::Unauthenticated(e)),
        }
    }

    /// Turns a refusal of a request from `ip` into the one to answer: past the address's limit of
    /// failed attempts, [`Refusal::TooManyFailures`].
    pub fn failed(&self, ip: IpAddr, refusal: Refusal) -> Refusal {
        if self.failures.fail(ip, Instant::now()) {
            Refusal::TooManyFailures
        } else {
            refusal
        }
    }

    /// The project id of a caller's project.
    pub fn project_id(project: ProjectKey) -> ProjectId {
        ProjectId::from_uuid(uuid::Uuid::from_bytes(project))
    }
}

/// The MeshAgent SDK version whose tokens roomd's tokens match: written as their `version`.
pub const TOKEN_VERSION: &str = "0.56.0";

/// What a token is minted for.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRequest {
    /// The room grant: a room name, or a prefix ending in `*`.
    pub room: String,
    /// The participant's name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its API scope.
    pub api: ApiScope,
    /// How long it is valid; `None` for a token without expiry (accepted only by a project that
    /// allows such tokens).
    pub ttl: Option<Duration>,
}

/// An API scope preset, as the MeshAgent SDK defines it: `user`, `agent` or `full`.
pub fn preset(name: &str) -> Option<ApiScope> {
    match name {
        "user" => Some(ApiScope::user_default()),
        "agent" => Some(ApiScope::agent_default()),
        "full" => Some(ApiScope::full()),
        _ => None,
    }
}

/// Mints a participant token signed with `key`, as the MeshAgent SDK's `to_jwt(api_key=…)`
/// does: the key's id and project in `kid` and `sub`.
pub fn mint_token(key: &ApiKey, request: &TokenRequest) -> Result<(String, Option<i64>), String> {
    if request.name.trim().is_empty() || request.name.chars().count() > 128 {
        return Err("the name must be 1 to 128 characters".into());
    }
    if request.room.is_empty() {
        return Err("a room (or a prefix ending in *) is required".into());
    }
    let mut claims = roomd_room_apis::Claims::new(request.name.clone());
    claims.grants = vec![
        roomd_room_apis::Grant::Room(request.room.clone()),
        roomd_room_apis::Grant::Role(request.role),
        roomd_room_apis::Grant::Api(request.api.clone()),
    ];
    claims.project = Some(key.project);
    claims.key = Some(key.id);
    let exp = request
        .ttl
        .map(|ttl| now_secs().saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)));
    claims.exp = exp;
    claims.version = Some(TOKEN_VERSION.into());
    roomd_room_apis::mint(&claims, &key.secret)
        .map(|token| (token, exp))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_first_token_present_is_the_one_taken() {
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("other, meshagent-room.from-protocol"),
        );
        let p = presented(&h, Some("a=1&token=from%2Dquery"));
        assert_eq!(p.token.as_deref(), Some("from-protocol"));
        assert_eq!(
            p.subprotocol.as_deref(),
            Some("meshagent-room.from-protocol")
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer from-header"),
        );
        assert_eq!(presented(&h, None).token.as_deref(), Some("from-header"));
        let q = presented(&HeaderMap::new(), Some("a=1&token=from%2Dquery"));
        assert_eq!(q.token.as_deref(), Some("from-query"));
        assert_eq!(q.subprotocol, None);
        assert_eq!(presented(&HeaderMap::new(), Some("token=")).token, None);
    }

    #[test]
    fn tokens_never_reach_a_logged_url() {
        assert_eq!(
            redacted("/v1/rooms/r/yjs/d", Some("v=1&token=secret.jwt")),
            "/v1/rooms/r/yjs/d?v=1&token=<redacted>"
        );
        assert_eq!(redacted("/x", None), "/x");
    }

    #[test]
    fn failures_are_limited_per_address_within_bounded_memory() {
        let limiter = FailureLimiter::new(3, 2);
        let t = Instant::now();
        let a: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..3 {
            assert!(!limiter.fail(a, t));
        }
        assert!(limiter.fail(a, t));
        // Another address has its own count; a minute later the count starts again.
        assert!(!limiter.fail([10, 0, 0, 2].into(), t));
        assert!(!limiter.fail(a, t + WINDOW));
        // Past the bound, new addresses share one count.
        for i in 3..10u8 {
            limiter.fail([10, 0, 0, i].into(), t + WINDOW);
        }
        assert!(limiter.windows.lock().map(|w| w.len()).unwrap_or(0) <= 3);
    }
}
