//! The registry of active rooms: finds a room's task or starts one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use roomd_sync::{CloseCode, ConnId};
use tokio::sync::{mpsc, oneshot};

use crate::outbox::Outbox;
use crate::room::{JoinError, Room, RoomCmd};
use crate::AppCtx;

/// How a connection reaches its room's task.
#[derive(Debug, Clone)]
pub struct RoomHandle {
    /// The room's bounded inbox.
    pub tx: mpsc::Sender<RoomCmd>,
    generation: u64,
}

/// Every active room, by name.
#[derive(Debug)]
pub struct Rooms {
    map: DashMap<Arc<str>, RoomHandle>,
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

    fn handle(self: &Arc<Self>, room: &str) -> RoomHandle {
        if let Some(h) = self.map.get(room) {
            return h.clone();
        }
        self.map
            .entry(Arc::from(room))
            .or_insert_with(|| {
                let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = mpsc::channel(self.ctx.config.limits.room_inbox_messages_max);
                let task = Room::new(Arc::from(room), generation, self.ctx.clone(), self.clone());
                self.ctx.tracker.spawn(task.run(rx));
                RoomHandle { tx, generation }
            })
            .clone()
    }

    /// Removes `room` from the registry if it is still the given generation.
    pub fn remove(&self, room: &str, generation: u64) {
        self.map.remove_if(room, |_, h| h.generation == generation);
    }

    /// Joins `conn` to `doc` in `room`, starting the room if needed.
    pub async fn join(
        self: &Arc<Self>,
        room: &str,
        doc: Arc<str>,
        conn: ConnId,
        outbox: Outbox,
    ) -> Result<RoomHandle, JoinError> {
        for _ in 0..JOIN_ATTEMPTS_MAX {
            if self.ctx.shutdown.is_cancelled() {
                break;
            }
            let handle = self.handle(room);
            let (reply, answer) = oneshot::channel();
            let cmd = RoomCmd::Join {
                doc: doc.clone(),
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
