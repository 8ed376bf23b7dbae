//! The REST API of rooms: listing and reading them, their sessions and participants, their
//! documents (read as JSON or as an update, written with an update, deleted), and deleting a
//! room. Every grant is checked as on the y-websocket endpoint.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use bytes::Bytes;
use roomd_room_apis::participants::rfc3339;
use roomd_room_apis::{normalize_doc_path, Forbidden};

use super::{check_name, check_room, is_reserved, ApiError, Requester, DOC_NAME_BYTES_MAX};
use crate::events::EventParticipant;
use crate::room::{DocFormat, DocRead, RestCmd, RestError};
use crate::store::{RoomKey, SessionRecord};
use crate::App;

impl From<RestError> for ApiError {
    fn from(e: RestError) -> ApiError {
        match e {
            RestError::NotFound => ApiError::not_found("no such document"),
            RestError::Invalid(m) => ApiError::bad_request(m),
            RestError::TooLarge(m) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", m),
            RestError::Forbidden(m) => ApiError::forbidden(m),
            RestError::Unavailable(m) => ApiError::unavailable(m),
            RestError::Internal => ApiError::internal(),
        }
    }
}

/// Runs a blocking store read off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "store read failed");
            Err(ApiError::internal())
        }
        Err(_) => Err(ApiError::internal()),
    }
}

fn unavailable() -> ApiError {
    ApiError::unavailable("the room is not available; try again")
}

/// What is said of a room in listings; with `queues`, the counts of its work queues too (from
/// its task when it is active, from the store when not).
async fn room_json(
    app: &Arc<App>,
    key: &RoomKey,
    created_ms: Option<u64>,
    queues: bool,
) -> serde_json::Value {
    let store = app.ctx.store.clone();
    let k = key.clone();
    let docs = blocking(move || store.docs(&k)).await.unwrap_or_default();
    let bytes: u64 = docs.iter().map(|d| d.bytes).sum();
    let info = if app.rooms.is_active(key) {
        app.rooms
            .request_if_active(key, |reply| RestCmd::Info { queues, reply })
            .await
    } else {
        None
    };
    let session = info.as_ref().map(|info| {
        serde_json::json!({
            "id": info.session_id,
            "started": rfc3339(info.started_ms),
            "participants": info.participants,
            "connections": info.connections,
        })
    });
    let mut json = serde_json::json!({
        "name": key.name(),
        "active": session.is_some(),
        "session": session,
        "created": created_ms.map(rfc3339),
        "documents": docs.len(),
        "bytes": bytes,
    });
    if queues {
        let stats = match info {
            Some(info) => info.queues,
            None => {
                let (store, k) = (app.ctx.store.clone(), key.clone());
                blocking(move || crate::room::stored_queue_stats(&store, &k))
                    .await
                    .unwrap_or_default()
            }
        };
        json["queues"] = crate::room::queue_stats_json(&stats);
    }
    json
}

/// `GET /v1/rooms`: the project's rooms, active or not. Needs the project's API key or a token
/// with the `admin` grant (which sees the rooms its room grant covers).
pub async fn list_rooms(
    State(app): State<Arc<App>>,
    req: Requester,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !req.caller.is_project_admin() {
        return Err(req.forbid(&app, Forbidden::NoAdminGrant, None));
    }
    let store = app.ctx.store.clone();
    let project = req.caller.project();
    let rooms = blocking(move || store.rooms(&project)).await?;
    let mut out = Vec::new();
    for (key, record) in rooms {
        if req.caller.scope_in(key.name()).is_err() {
            continue;
        }
        out.push(room_json(&app, &key, Some(record.created_ms), false).await);
    }
    Ok(Json(serde_json::json!({ "rooms": out })))
}

/// `GET /v1/rooms/{room}`: any valid token for the room.
pub async fn get_room(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    req: Requester,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_room(&room)?;
    req.scope_in(&app, &room)?;
    let key = RoomKey::new(req.caller.project(), &room);
    let store = app.ctx.store.clone();
    let k = key.clone();
    let record = blocking(move || store.room(&k)).await?;
    if record.is_none() && !app.rooms.is_active(&key) {
        return Err(ApiError::not_found("no such room"));
    }
    Ok(Json(
        room_json(&app, &key, record.map(|r| r.created_ms), true).await,
    ))
}

/// `DELETE /v1/rooms/{room}`: a token with the `admin` grant for the room. Connections are
/// closed with 4410 and everything stored for the room is removed, durably, before the answer.
pub async fn delete_room(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    req: Requester,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_room(&room)?;
    let scope = req.scope_in(&app, &room)?;
    if scope.admin.is_none() {
        return Err(req.forbid(&app, Forbidden::NoAdminGrant, Some(&room)));
    }
    let key = RoomKey::new(req.caller.project(), &room);
    let write = app
        .rooms
        .request(&key, |reply| RestCmd::Delete { reply })
        .await
        .ok_or_else(unavailable)??;
    if !app.ctx.wait_durable(write).await {
        return Err(unavailable());
    }
    Ok(Json(serde_json::json!({ "deleted": room })))
}

fn session_json(s: &SessionRecord) -> serde_json::Value {
    serde_json::json!({
        "id": uuid::Uuid::from_bytes(s.id).to_string(),
        "started": rfc3339(s.started_ms),
        "ended": s.ended_ms.map(rfc3339),
        "interrupted": s.interrupted,
        "participants": s.participants.iter().map(|p| serde_json::json!({
            "id": p.id,
            "name": p.name,
            "role": p.role,
            "joined": rfc3339(p.joined_ms),
            "left": p.left_ms.map(rfc3339),
        })).collect::<Vec<_>>(),
        "participants_omitted": s.participants_omitted,
    })
}

/// `GET /v1/rooms/{room}/sessions`: the room's sessions, oldest first; any valid token for
/// the room.
pub async fn sessions(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    req: Requester,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_room(&room)?;
    req.scope_in(&app, &room)?;
    let key = RoomKey::new(req.caller.project(), &room);
    let store = app.ctx.store.clone();
    let sessions = blocking(move || store.sessions(&key)).await?;
    Ok(Json(serde_json::json!({
        "sessions": sessions.iter().map(session_json).collect::<Vec<_>>(),
    })))
}

/// `GET /v1/rooms/{room}/participants`: who is connected now; any valid token for the room.
/// An inactive room has no participant, and is not activated to say so.
pub async fn participants(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    req: Requester,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_room(&room)?;
    req.scope_in(&app, &room)?;
    let key = RoomKey::new(req.caller.project(), &room);
    let participants = app
        .rooms
        .request_if_active(&key, |reply| RestCmd::Participants { reply })
        .await
        .unwrap_or_default();
    Ok(Json(serde_json::json!({ "participants": participants })))
}

/// `GET /v1/rooms/{room}/docs`: the room's documents and their stored sizes, those the
/// caller's `sync` grant covers.
pub async fn list_docs(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    req: Requester,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_room(&room)?;
    let scope = req.scope_in(&app, &room)?;
    let Some(sync) = scope.sync.as_ref() else {
        return Err(req.forbid(&app, Forbidden::NoSyncGrant, Some(&room)));
    };
    let key = RoomKey::new(req.caller.project(), &room);
    let store = app.ctx.store.clone();
    let docs = blocking(move || store.docs(&key)).await?;
    let visible: Vec<serde_json::Value> = docs
        .iter()
        .filter(|d| sync.access(normalize_doc_path(&d.name)).is_some())
        .map(|d| serde_json::json!({ "name": d.name, "bytes": d.bytes }))
        .collect();
    Ok(Json(serde_json::json!({ "documents": visible })))
}

/// The query of a document read.
#[derive(Debug, serde::Deserialize)]
pub struct ReadQuery {
    /// A state vector, base64 (standard or URL-safe): the answer is what its holder lacks.
    sv: Option<String>,
}

fn wants_binary(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/octet-stream"))
}

fn decode_sv(text: &str) -> Result<Vec<u8>, ApiError> {
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    engines
        .iter()
        .find_map(|e| e.decode(text).ok())
        .ok_or_else(|| ApiError::bad_request("sv is not base64"))
}

/// `GET /v1/rooms/{room}/docs/{doc}`: the document as JSON, or with `Accept:
/// application/octet-stream` as a v1 update (everything, or what `?sv=` lacks).
pub async fn read_doc(
    State(app): State<Arc<App>>,
    Path((room, doc)): Path<(String, String)>,
    Query(query): Query<ReadQuery>,
    headers: HeaderMap,
    req: Requester,
) -> Result<Response, ApiError> {
    check_room(&room)?;
    check_name("document", &doc, DOC_NAME_BYTES_MAX)?;
    req.doc_access(&app, &room, &doc)?;
    let binary = wants_binary(&headers);
    let format = if binary {
        DocFormat::Update(query.sv.as_deref().map(decode_sv).transpose()?)
    } else {
        DocFormat::Json
    };
    let key = RoomKey::new(req.caller.project(), &room);
    let doc: Arc<str> = doc.into();
    let read = app
        .rooms
        .request(&key, |reply| RestCmd::ReadDoc {
            doc: doc.clone(),
            format: format.clone(),
            reply,
        })
        .await
        .ok_or_else(unavailable)??;
    Ok(match read {
        DocRead::Json(value) => Json(value).into_response(),
        DocRead::Update(bytes) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            Bytes::from(bytes),
        )
            .into_response(),
    })
}

/// The document of a `POST …/docs/{doc}/update`, or an error for any other POST.
fn update_target(doc: &str) -> Result<&str, ApiError> {
    doc.strip_suffix("/update")
        .filter(|d| !d.is_empty())
        .ok_or_else(|| ApiError::not_found("POST to /v1/rooms/{room}/docs/{doc}/update"))
}

/// `POST /v1/rooms/{room}/docs/{doc}/update`: applies a v1 update, validated and limited as on
/// the socket, seen live by connected editors, and answered once the flush that makes it durable
/// has completed.
pub async fn write_doc(
    State(app): State<Arc<App>>,
    Path((room, doc)): Path<(String, String)>,
    req: Requester,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_room(&room)?;
    let doc = update_target(&doc)?;
    check_name("document", doc, DOC_NAME_BYTES_MAX)?;
    let access = req.doc_access(&app, &room, doc)?;
    let scope = req
        .caller
        .scope_in(&room)
        .map_err(|f| req.forbid(&app, f, Some(&room)))?;
    if super::reads_only(normalize_doc_path(doc), access, &scope) {
        return Err(req.forbid(&app, Forbidden::PathNotGranted, Some(&room)));
    }
    let key = RoomKey::new(req.caller.project(), &room);
    let name: Arc<str> = doc.into();
    let who = EventParticipant {
        id: String::new(),
        name: req.caller.name(),
    };
    let written = app
        .rooms
        .request(&key, |reply| RestCmd::WriteDoc {
            doc: name.clone(),
            update: body.clone(),
            who: who.clone(),
            principal: req.caller.principal(),
            reply,
        })
        .await
        .ok_or_else(unavailable)??;
    if let Some(write) = written {
        if !app.ctx.wait_durable(write).await {
            return Err(unavailable());
        }
    }
    Ok(Json(serde_json::json!({ "changed": written.is_some() })))
}

/// `POST /v1/rooms/{room}/threads/{tool}`: a call of the `threads` toolkit, its JSON arguments
/// the body, answered with the toolkit's JSON once what it wrote is durable.
pub async fn thread_call(
    State(app): State<Arc<App>>,
    Path((room, tool)): Path<(String, String)>,
    req: Requester,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    use crate::room::threads::{needs, ThreadError};
    check_room(&room)?;
    let error = |e: ThreadError| match e {
        ThreadError::Invalid(m) => ApiError::bad_request(m),
        ThreadError::NotFound(m) => ApiError::not_found(m),
        ThreadError::Exists(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
        ThreadError::Forbidden(m) => ApiError::forbidden(m),
        ThreadError::Unavailable(m) => ApiError::unavailable(m),
        ThreadError::Internal => ApiError::internal(),
    };
    let args = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(args)) => args,
        _ if body.is_empty() => serde_json::Map::new(),
        _ => return Err(ApiError::bad_request("the body must be a JSON object")),
    };
    let need = needs(&tool, &args).map_err(error)?;
    let access = req.doc_access(&app, &room, &need.doc)?;
    if need.writes && access.read_only {
        return Err(req.forbid(&app, Forbidden::PathNotGranted, Some(&room)));
    }
    let key = RoomKey::new(req.caller.project(), &room);
    let principal = req.caller.principal();
    let (answer, written) = app
        .rooms
        .request(&key, |reply| RestCmd::Thread {
            tool: tool.clone(),
            args: args.clone(),
            principal: principal.clone(),
            reply,
        })
        .await
        .ok_or_else(unavailable)?
        .map_err(error)?;
    if let Some(write) = written {
        if !app.ctx.wait_durable(write).await {
            return Err(unavailable());
        }
    }
    Ok(Json(answer))
}

/// `DELETE /v1/rooms/{room}/docs/{doc}`: closes the document's connections with 4410 and
/// removes it, durably, before the answer.
pub async fn delete_doc(
    State(app): State<Arc<App>>,
    Path((room, doc)): Path<(String, String)>,
    req: Requester,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_room(&room)?;
    check_name("document", &doc, DOC_NAME_BYTES_MAX)?;
    let access = req.doc_access(&app, &room, &doc)?;
    if access.read_only || is_reserved(normalize_doc_path(&doc)) {
        return Err(req.forbid(&app, Forbidden::PathNotGranted, Some(&room)));
    }
    let key = RoomKey::new(req.caller.project(), &room);
    let name: Arc<str> = doc.as_str().into();
    let who = EventParticipant {
        id: String::new(),
        name: req.caller.name(),
    };
    let write = app
        .rooms
        .request(&key, |reply| RestCmd::DeleteDoc {
            doc: name.clone(),
            who: who.clone(),
            reply,
        })
        .await
        .ok_or_else(unavailable)??;
    if !app.ctx.wait_durable(write).await {
        return Err(unavailable());
    }
    Ok(Json(serde_json::json!({ "deleted": doc })))
}
