//! The developer events of a room over REST: pages, and a Server-Sent Events stream that
//! resumes from `Last-Event-ID` with no gap and no duplicate. Both need the `developer` grant.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures_util::stream::Stream;
use roomd_room_apis::participants::rfc3339;

use super::{check_room, ApiError, Requester};
use crate::events::ReadError;
use crate::store::{EventRecord, RoomKey};
use crate::App;

/// Events read from the store at once, at most (a page's largest size too).
const BATCH_MAX: usize = 256;

/// An event as readers see it.
pub(crate) fn event_json(e: &EventRecord) -> serde_json::Value {
    serde_json::json!({
        "id": e.id,
        "time": rfc3339(e.time_ms),
        "type": e.kind,
        "participant": e.participant.as_ref().map(|(id, name)| serde_json::json!({ "id": id, "name": name })),
        "body": e.body,
    })
}

fn lagged(after: u64, oldest: u64) -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "lagged",
        format!("events after {after} are no longer kept; the oldest kept is {oldest}"),
    )
}

/// The room's log, if the caller holds the `developer` grant for the room.
fn developer_room(app: &App, req: &Requester, room: &str) -> Result<RoomKey, ApiError> {
    check_room(room)?;
    let scope = req.scope_in(app, room)?;
    scope
        .require_developer()
        .map_err(|f| req.forbid(app, f, Some(room)))?;
    Ok(RoomKey::new(req.caller.project(), room))
}

/// The query of a page of events.
#[derive(Debug, serde::Deserialize)]
pub struct PageQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

/// `GET /v1/rooms/{room}/events?after=ID&limit=N`: up to `limit` (at most 256) events after
/// `after`, oldest first, and the id to ask after next.
pub async fn page(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    Query(query): Query<PageQuery>,
    req: Requester,
) -> Result<Json<serde_json::Value>, ApiError> {
    let key = developer_room(&app, &req, &room)?;
    let limit = query.limit.unwrap_or(100).clamp(1, BATCH_MAX);
    let events = read(&app, &key, query.after, limit).await?;
    let next = events.last().map_or(query.after, |e| e.id);
    Ok(Json(serde_json::json!({
        "events": events.iter().map(event_json).collect::<Vec<_>>(),
        "next": next,
    })))
}

async fn read(
    app: &Arc<App>,
    key: &RoomKey,
    after: u64,
    limit: usize,
) -> Result<Vec<EventRecord>, ApiError> {
    let (app, key) = (app.clone(), key.clone());
    match tokio::task::spawn_blocking(move || app.ctx.events.page(&key, after, limit)).await {
        Ok(Ok(events)) => Ok(events),
        Ok(Err(ReadError::Lagged { after, oldest })) => Err(lagged(after, oldest)),
        Ok(Err(ReadError::Store(e))) => {
            tracing::error!(error = %e, "reading events failed");
            Err(ApiError::internal())
        }
        Err(_) => Err(ApiError::internal()),
    }
}

/// The query of a stream: where to start when no `Last-Event-ID` is sent.
#[derive(Debug, serde::Deserialize)]
pub struct StreamQuery {
    after: Option<u64>,
}

struct Follow {
    app: Arc<App>,
    key: RoomKey,
    after: u64,
    watch: tokio::sync::watch::Receiver<u64>,
    ready: VecDeque<EventRecord>,
    done: bool,
}

/// `GET /v1/rooms/{room}/events/stream`: Server-Sent Events, from `Last-Event-ID` (or `?after=`)
/// on, live. A subscriber that falls behind the retained log is sent an `error` event and the
/// stream ends: events are never skipped silently.
pub async fn stream(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
    req: Requester,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let key = developer_room(&app, &req, &room)?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or(query.after)
        .unwrap_or(0);
    let watch = app.ctx.events.watch(&key).map_err(|e| {
        tracing::error!(error = %e, "opening the event log failed");
        ApiError::internal()
    })?;
    let follow = Follow {
        app,
        key,
        after,
        watch,
        ready: VecDeque::new(),
        done: false,
    };
    let events = futures_util::stream::unfold(follow, |mut f| async move {
        loop {
            if f.done {
                return None;
            }
            if let Some(e) = f.ready.pop_front() {
                f.after = e.id;
                let event = Event::default()
                    .id(e.id.to_string())
                    .event(e.kind.clone())
                    .data(event_json(&e).to_string());
                return Some((Ok(event), f));
            }
            // Marks what is visible now as seen before reading, so that nothing made visible
            // after the read is missed.
            f.watch.borrow_and_update();
            match read(&f.app, &f.key, f.after, BATCH_MAX).await {
                Ok(events) if !events.is_empty() => f.ready.extend(events),
                Ok(_) => {
                    let shutdown = f.app.ctx.shutdown.clone();
                    tokio::select! {
                        changed = f.watch.changed() => if changed.is_err() { return None },
                        () = shutdown.cancelled() => return None,
                    }
                }
                Err(e) => {
                    f.done = true;
                    let event = Event::default().event("error").data(
                        serde_json::json!({ "error": { "code": e.code, "message": e.message } })
                            .to_string(),
                    );
                    return Some((Ok(event), f));
                }
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
