//! HTTP routes: health, readiness, metrics, the y-websocket endpoint, and the REST API; the
//! JSON errors every route answers with; and who a request comes from.

mod admin;
pub use admin::parse_ttl;
mod events;
pub(crate) use events::event_json;
mod rooms;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use roomd_room_apis::normalize_doc_path;

use crate::auth::{presented, redacted, Caller, Refusal};
use crate::events::{EventKind, EventParticipant};
use crate::store::RoomKey;
use crate::App;

/// Longest room name, in bytes.
pub const ROOM_NAME_BYTES_MAX: usize = 128;
/// Longest document name, in bytes.
pub const DOC_NAME_BYTES_MAX: usize = 512;

/// An error answered as JSON `{ "error": { "code", "message" } }`. The message never holds
/// internal detail: that goes to the log.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub(crate) fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server could not complete the request",
        )
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    pub(crate) fn from_refusal(r: Refusal) -> ApiError {
        let code = match r {
            Refusal::Missing | Refusal::Unauthenticated(_) => "unauthorized",
            Refusal::Forbidden(_) => "forbidden",
            Refusal::TooManyFailures => "too_many_requests",
        };
        ApiError::new(r.status(), code, r.message())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, axum::Json(body)).into_response()
    }
}

/// The router over the shared application state, for the TCP listener.
pub fn router(app: Arc<App>) -> Router {
    let body_limit = app.ctx.config.limits.message_bytes_max;
    routes(Router::new())
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/rooms/{room}/yjs/{*doc}", get(yjs_socket))
        .route("/rooms/{room}", get(crate::room_socket::upgrade))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(app)
}

/// The REST routes, shared by the TCP listener and the control socket.
fn routes(r: Router<Arc<App>>) -> Router<Arc<App>> {
    r.route(
        "/v1/projects",
        get(admin::list_projects).post(admin::create_project),
    )
    .route(
        "/v1/projects/{project}",
        get(admin::get_project).patch(admin::update_project),
    )
    .route(
        "/v1/projects/{project}/keys",
        get(admin::list_keys).post(admin::create_key),
    )
    .route(
        "/v1/projects/{project}/keys/{key}",
        axum::routing::delete(admin::revoke_key),
    )
    .route("/v1/tokens", post(admin::create_token))
    .route("/v1/rooms", get(rooms::list_rooms))
    .route(
        "/v1/rooms/{room}",
        get(room_or_socket).delete(rooms::delete_room),
    )
    .route("/v1/rooms/{room}/sessions", get(rooms::sessions))
    .route("/v1/rooms/{room}/participants", get(rooms::participants))
    .route("/v1/rooms/{room}/docs", get(rooms::list_docs))
    .route(
        "/v1/rooms/{room}/docs/{*doc}",
        get(rooms::read_doc)
            .post(rooms::write_doc)
            .delete(rooms::delete_doc),
    )
    .route("/v1/rooms/{room}/threads/{tool}", post(rooms::thread_call))
    .route("/v1/rooms/{room}/events", get(events::page))
    .route("/v1/rooms/{room}/events/stream", get(events::stream))
}

/// `GET /v1/rooms/{room}`: a WebSocket upgrade is the room protocol, anything else reads the
/// room over REST.
async fn room_or_socket(State(app): State<Arc<App>>, request: Request) -> Response {
    use axum::handler::Handler;
    if crate::room_socket::is_upgrade(&request) {
        crate::room_socket::upgrade.call(request, app).await
    } else {
        rooms::get_room.call(request, app).await
    }
}

/// The router of the control socket: the REST routes, every request an operator's.
pub fn control_router(app: Arc<App>) -> Router {
    let body_limit = app.ctx.config.limits.message_bytes_max;
    routes(Router::new())
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(axum::middleware::from_fn(
            |mut request: Request, next: axum::middleware::Next| async move {
                request.extensions_mut().insert(Operator);
                next.run(request).await
            },
        ))
        .with_state(app)
}

/// Marks a request that came over the control socket: only processes that can reach the data
/// directory can make one.
#[derive(Debug, Clone, Copy)]
pub struct Operator;

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.ctx.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    if !app.ctx.store.is_ready() {
        return (StatusCode::SERVICE_UNAVAILABLE, "storage unavailable\n").into_response();
    }
    "ready\n".into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.ctx.metrics.render(),
    )
        .into_response()
}

/// Checks a room or document name: non-empty, bounded, no control characters, no empty path
/// segment.
fn check_name(kind: &str, name: &str, bytes_max: usize) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > bytes_max {
        return Err(ApiError::bad_request(format!(
            "{kind} name must be 1 to {bytes_max} bytes"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{kind} name must not contain control characters"
        )));
    }
    if name.split('/').any(str::is_empty) {
        return Err(ApiError::bad_request(format!(
            "{kind} name must not have empty path segments"
        )));
    }
    Ok(())
}

/// Checks a document name as the y-websocket endpoint does; the message says what is wrong.
pub(crate) fn check_doc_name(doc: &str) -> Result<(), String> {
    check_name("document", doc, DOC_NAME_BYTES_MAX).map_err(|e| e.message)
}

pub(crate) fn check_room(room: &str) -> Result<(), ApiError> {
    check_name("room", room, ROOM_NAME_BYTES_MAX)?;
    if room.contains('/') {
        return Err(ApiError::bad_request("room name must not contain '/'"));
    }
    Ok(())
}

/// True for a document path roomd reserves (its first segment starts with `.`): clients may
/// read such documents, within their grants, but only the server writes them.
pub fn is_reserved(doc: &str) -> bool {
    doc.starts_with('.')
}

/// Whether a participant whose `sync` grant gives it `access` to `doc`, and whose grants are
/// `scope`, may only read it. A reserved document is the server's to write, but for a queue's
/// document (`.queues/<name>`), to whose inbox a participant that may send to the queue appends
/// sends (its rules allow nothing else).
pub fn reads_only(
    doc: &str,
    access: roomd_room_apis::DocAccess,
    scope: &roomd_room_apis::ApiScope,
) -> bool {
    if access.read_only {
        return true;
    }
    if !is_reserved(doc) {
        return false;
    }
    match crate::room::queue_of_doc(doc) {
        Some(queue) => !scope.queues.as_ref().is_some_and(|g| g.can_send(queue)),
        None => true,
    }
}

/// Who sends a REST request, as its handlers see it.
#[derive(Debug)]
pub struct Requester {
    /// Who it is.
    pub caller: Caller,
    /// Its address, when it came over TCP.
    pub peer: Option<SocketAddr>,
    /// The request's URI (for logs, with any token redacted).
    pub uri: axum::http::Uri,
    /// It came over the control socket.
    pub operator: bool,
}

impl axum::extract::FromRequestParts<Arc<App>> for Requester {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        let operator = parts.extensions.get::<Operator>().is_some();
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        let caller = if operator {
            Caller::Anonymous {
                project: app.ctx.default_project,
            }
        } else {
            authenticate(app, &parts.headers, &parts.uri, peer).map_err(ApiError::from_refusal)?
        };
        Ok(Requester {
            caller,
            peer,
            uri: parts.uri.clone(),
            operator,
        })
    }
}

impl Requester {
    /// The caller's scope in `room`; a refusal is recorded as any other.
    fn scope_in(&self, app: &App, room: &str) -> Result<roomd_room_apis::ApiScope, ApiError> {
        self.caller
            .scope_in(room)
            .map_err(|f| self.forbid(app, f, Some(room)))
    }

    /// Records and answers a refusal of a valid caller.
    fn forbid(&self, app: &App, f: roomd_room_apis::Forbidden, room: Option<&str>) -> ApiError {
        let answered = refused(
            app,
            Refusal::Forbidden(f),
            &self.uri,
            self.peer,
            room.map(|r| (&self.caller, r)),
        );
        ApiError::from_refusal(answered)
    }

    /// The caller's access to document `doc` of `room`.
    fn doc_access(
        &self,
        app: &App,
        room: &str,
        doc: &str,
    ) -> Result<roomd_room_apis::DocAccess, ApiError> {
        let scope = self.scope_in(app, room)?;
        scope
            .doc_access(normalize_doc_path(doc))
            .map_err(|f| self.forbid(app, f, Some(room)))
    }
}

/// Who sends a request: the token it carries, verified. A refusal is counted, logged (without
/// the token) and, past the address's limit of failed attempts, turned into a 429.
fn authenticate(
    app: &App,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
    peer: Option<SocketAddr>,
) -> Result<Caller, Refusal> {
    let token = presented(headers, uri.query()).token;
    app.ctx
        .auth
        .authenticate(token.as_deref())
        .map_err(|r| refused(app, r, uri, peer, None))
}

/// [`authenticate`], answered as the JSON error of a refusal.
pub(crate) fn authenticate_request(
    app: &App,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
    peer: Option<SocketAddr>,
) -> Result<Caller, ApiError> {
    authenticate(app, headers, uri, peer).map_err(ApiError::from_refusal)
}

/// Records a refusal: metrics, the log, the failed-attempt count of the address, and, for a
/// valid token refused in a room, that room's event log. Returns the refusal to answer.
pub(crate) fn refused(
    app: &App,
    refusal: Refusal,
    uri: &axum::http::Uri,
    peer: Option<SocketAddr>,
    in_room: Option<(&Caller, &str)>,
) -> Refusal {
    let answered = match peer {
        Some(addr) => app.ctx.auth.failed(addr.ip(), refusal),
        None => refusal,
    };
    app.ctx.metrics.count_refusal(answered.reason());
    tracing::info!(
        reason = refusal.reason(),
        answered = answered.reason(),
        peer = ?peer,
        path = %redacted(uri.path(), uri.query()),
        "refused"
    );
    if let Some((caller, room)) = in_room {
        let key = RoomKey::new(caller.project(), room);
        app.ctx.emit(
            &key,
            EventKind::AuthRefused,
            Some(&EventParticipant {
                id: String::new(),
                name: caller.name().to_string(),
            }),
            serde_json::json!({ "reason": refusal.reason(), "path": uri.path() }),
        );
    }
    answered
}

async fn yjs_socket(
    State(app): State<Arc<App>>,
    Path((room, doc)): Path<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
) -> Result<Response, ApiError> {
    check_room(&room)?;
    check_name("document", &doc, DOC_NAME_BYTES_MAX)?;
    let accept = upgrade_accept(&request)?;
    let offered = presented(request.headers(), request.uri().query());
    let uri = request.uri().clone();
    let path = normalize_doc_path(&doc).to_string();
    // Whatever the answer, the upgrade completes: a refusal is a close code the provider can
    // read, before any document data.
    let admitted = authenticate(&app, request.headers(), &uri, Some(peer)).and_then(|caller| {
        match caller.doc_access(&room, &path) {
            Ok(access) => Ok((caller, access)),
            Err(f) => Err(refused(
                &app,
                Refusal::Forbidden(f),
                &uri,
                Some(peer),
                Some((&caller, &room)),
            )),
        }
    });
    let upgraded = hyper::upgrade::on(&mut request);
    let tracker = app.ctx.tracker.clone();
    match admitted {
        Ok((caller, access)) => {
            let joining = Arc::new(crate::ws::Joining {
                room: RoomKey::new(caller.project(), &room),
                doc: doc.into(),
                who: caller.who(),
                read_only: caller
                    .scope_in(&room)
                    .map_or(true, |scope| reads_only(&path, access, &scope)),
                principal: Arc::new(caller.principal()),
                scope: None,
                url: String::new(),
            });
            tokio::spawn(tracker.track_future(crate::ws::serve_socket(upgraded, app, joining)));
        }
        Err(refusal) => {
            let code = refusal.close_code();
            tokio::spawn(tracker.track_future(crate::ws::refuse_socket(
                upgraded,
                app,
                code,
                refusal.message(),
            )));
        }
    }
    Ok(switching_protocols(accept, offered.subprotocol))
}

/// Checks a WebSocket upgrade request and returns its `Sec-WebSocket-Accept` value.
pub(crate) fn upgrade_accept(request: &Request) -> Result<HeaderValue, ApiError> {
    let accept = crate::websocket::accept_key(request.headers())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if request
        .extensions()
        .get::<hyper::upgrade::OnUpgrade>()
        .is_none()
    {
        return Err(ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "bad_request",
            "this connection cannot be upgraded",
        ));
    }
    Ok(accept)
}

/// The answer that completes a WebSocket upgrade, echoing the subprotocol the token came in, if
/// it did: a browser drops a connection whose offered subprotocol is not echoed.
pub(crate) fn switching_protocols(accept: HeaderValue, subprotocol: Option<String>) -> Response {
    let mut response = (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (header::SEC_WEBSOCKET_ACCEPT, accept),
        ],
    )
        .into_response();
    if let Some(protocol) = subprotocol.and_then(|p| HeaderValue::from_str(&p).ok()) {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    response
}
