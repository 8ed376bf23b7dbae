//! The registry of active rooms: finds a room's task or starts one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use roomd_sync::{CloseCode, ConnId};
use tokio::sync::{mpsc, oneshot};

use crate::outbox::Outbox;
use crate::room::{JoinError, RestCmd, Room, RoomCmd};
use crate::store::RoomKey;
use crate::ws::Joining;
use crate::AppCtx;

/// How a connection reaches its room's task.
#[derive(Debug, Clone)]
pub struct RoomHandle {
    /// The room's bounded inbox.
    pub tx: mpsc::Sender<RoomCmd>,
    generation: u64,
}

/// Every active room, by project and name.
#[derive(Debug)]
pub struct Rooms {
    map: DashMap<RoomKey, RoomHandle>,
    next_generation: AtomicU64,
    ctx: Arc<AppCtx>,
}

/// Joins that meet unloading rooms retry this many times before giving up.
const JOIN_ATTEMPTS_MAX: usize = 8;

impl Rooms {
    /// An empty registry.
    pub fn new(ctx: Arc<AppCtx>) -> Arc<Rooms> {
        Arc::new(Rooms {
            map: DashMap::new(),
            next_generation: AtomicU64::new(0),
            ctx,
        })
    }

    /// The room's task, started if need be; `None` once the server shuts down: no room may
    /// start (and write to the store) after the rooms have been flushed for the last time.
    fn handle(self: &Arc<Self>, room: &RoomKey) -> Option<RoomHandle> {
        if let Some(h) = self.map.get(room) {
            return Some(h.clone());
        }
        if self.ctx.shutdown.is_cancelled() {
            return None;
        }
        Some(
            self.map
                .entry(room.clone())
                .or_insert_with(|| {
                    let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
                    let (tx, rx) = mpsc::channel(self.ctx.config.limits.room_inbox_messages_max);
                    let task = Room::new(room.clone(), generation, self.ctx.clone(), self.clone());
                    self.ctx.tracker.spawn(task.run(rx));
                    RoomHandle { tx, generation }
                })
                .clone(),
        )
    }

    /// Removes `room` from the registry if it is still the given generation.
    pub fn remove(&self, room: &RoomKey, generation: u64) {
        self.map.remove_if(room, |_, h| h.generation == generation);
    }

    /// Sends a REST request to `room`'s task, starting the room if needed, and waits for the
    /// answer. A request that meets a room unloading goes to a fresh one. `None` when the server
    /// shuts down or no room takes it.
    pub async fn request<T>(
        self: &Arc<Self>,
        room: &RoomKey,
        make: impl Fn(oneshot::Sender<T>) -> RestCmd,
    ) -> Option<T> {
        for _ in 0..JOIN_ATTEMPTS_MAX {
            if self.ctx.shutdown.is_cancelled() {
                return None;
            }
            let Some(handle) = self.handle(room) else {
                break;
            };
            let (reply, answer) = oneshot::channel();
            if handle.tx.send(RoomCmd::Rest(make(reply))).await.is_err() {
                self.remove(room, handle.generation);
                continue;
            }
            if let Ok(answer) = answer.await {
                return Some(answer);
            }
        }
        None
    }

    /// Like [`Rooms::request`], but only to a room that is active: `None` when it is not (the
    /// request never activates it).
    pub async fn request_if_active<T>(
        &self,
        room: &RoomKey,
        make: impl FnOnce(oneshot::Sender<T>) -> RestCmd,
    ) -> Option<T> {
        let handle = self.map.get(room).map(|h| h.clone())?;
        let (reply, answer) = oneshot::channel();
        handle.tx.send(RoomCmd::Rest(make(reply))).await.ok()?;
        answer.await.ok()
    }

    /// Whether `room` is active now.
    pub fn is_active(&self, room: &RoomKey) -> bool {
        self.map.contains_key(room)
    }

    /// Joins `conn` to a document in `room`, starting the room if needed.
    pub async fn join(
        self: &Arc<Self>,
        room: &RoomKey,
        joining: Arc<Joining>,
        conn: ConnId,
        outbox: Outbox,
    ) -> Result<RoomHandle, JoinError> {
        for _ in 0..JOIN_ATTEMPTS_MAX {
            if self.ctx.shutdown.is_cancelled() {
                break;
            }
            let Some(handle) = self.handle(room) else {
                break;
            };
            let (reply, answer) = oneshot::channel();
            let cmd = RoomCmd::Join {
                joining: joining.clone(),
                conn,
                outbox: outbox.clone(),
                reply,
            };
            if handle.tx.send(cmd).await.is_err() {
                self.remove(room, handle.generation);
                continue;
            }
            match answer.await {
                Ok(Ok(())) => return Ok(handle),
                Ok(Err(JoinError::Unloading)) | Err(_) => continue,
                Ok(Err(e)) => return Err(e),
            }
        }
        Err(JoinError::Refused(
            CloseCode::TryAgain,
            "room is not available; try again".into(),
        ))
    }
}
