//! HTTP routes: health, readiness, metrics, and the WebSocket endpoints.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::App;

/// Longest room name, in bytes.
pub const ROOM_NAME_BYTES_MAX: usize = 128;
/// Longest document name, in bytes.
pub const DOC_NAME_BYTES_MAX: usize = 512;

/// An error answered as JSON `{ "error": { "code", "message" } }`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, axum::Json(body)).into_response()
    }
}

/// The router over the shared application state.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/rooms/{room}/yjs/{*doc}", get(yjs_socket))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                code: "not_found",
                message: "no such endpoint".into(),
            }
        })
        .with_state(app)
}

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

async fn yjs_socket(
    State(app): State<Arc<App>>,
    Path((room, doc)): Path<(String, String)>,
    mut request: Request,
) -> Result<Response, ApiError> {
    check_name("room", &room, ROOM_NAME_BYTES_MAX)?;
    if room.contains('/') {
        return Err(ApiError::bad_request("room name must not contain '/'"));
    }
    check_name("document", &doc, DOC_NAME_BYTES_MAX)?;
    let accept = crate::websocket::accept_key(request.headers())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if request
        .extensions()
        .get::<hyper::upgrade::OnUpgrade>()
        .is_none()
    {
        return Err(ApiError {
            status: StatusCode::UPGRADE_REQUIRED,
            code: "bad_request",
            message: "this connection cannot be upgraded".into(),
        });
    }
    let upgraded = hyper::upgrade::on(&mut request);
    let (room, doc): (Arc<str>, Arc<str>) = (room.into(), doc.into());
    let tracker = app.ctx.tracker.clone();
    tokio::spawn(tracker.track_future(crate::ws::serve_socket(upgraded, app, room, doc)));
    Ok((
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (header::SEC_WEBSOCKET_ACCEPT, accept),
        ],
    )
        .into_response())
}
