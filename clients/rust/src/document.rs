//! Documents: yrs `Doc`s the client keeps in sync with the room, both ways.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, watch, Notify};
use yrs::{Doc, Origin};

use crate::driver::Cmd;
use crate::error::{Error, Result};

/// The origin of the transactions in which the client applies what the room sends: updates
/// made under it are not sent back.
pub(crate) const REMOTE: &str = "roomd-client:remote";

/// How many events a document's change streams hold for a reader that falls behind before it
/// misses some (and is told how many, with [`Error::Lagged`]).
pub const CHANGES_BUFFER: usize = 1024;

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Author {
    /// This client, through its own `Doc`.
    Local,
    /// Other participants of the room, by id: one, or several when the server merged the
    /// updates of several connections that arrived together.
    Participants(Vec<String>),
    /// Nobody the server names: an update that came over REST, or what the document held
    /// when it was (re)opened.
    Server,
}

/// A change to a document: the v1 update that made it and who made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The change as a v1 update (decode it with `yrs::Update::decode_v1` to see what it
    /// inserts and deletes).
    pub update: Bytes,
    /// Who made it.
    pub author: Author,
}

/// What a document's change stream carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocEvent {
    /// The document changed.
    Changed(Change),
    /// The server refused one of this client's updates (a path the token may only read,
    /// say): the room's copy is unchanged; this client's `Doc` still holds the change.
    Refused {
        /// Why.
        message: String,
    },
    /// The document was opened again after the connection came back, and holds the room's
    /// state again.
    Resynced,
}

/// The state a document shares between its handles and the connection.
#[derive(Debug)]
pub(crate) struct DocShared {
    pub(crate) path: String,
    pub(crate) doc: Doc,
    /// Local updates not yet taken by the connection, with the count each one makes.
    pub(crate) pending: Mutex<Vec<(u64, Vec<u8>)>>,
    /// Local updates made so far.
    pub(crate) written: AtomicU64,
    /// Local updates known to be durable on the server.
    pub(crate) durable: watch::Sender<u64>,
    pub(crate) events: broadcast::Sender<DocEvent>,
    pub(crate) closed: AtomicBool,
}

impl DocShared {
    pub(crate) fn new(path: String, notify: Arc<Notify>) -> Result<Arc<DocShared>> {
        let (events, _) = broadcast::channel(CHANGES_BUFFER);
        let shared = Arc::new(DocShared {
            path,
            doc: Doc::new(),
            pending: Mutex::new(Vec::new()),
            written: AtomicU64::new(0),
            durable: watch::channel(0).0,
            events,
            closed: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&shared);
        let remote = Origin::from(REMOTE);
        shared
            .doc
            .observe_update_v1("roomd-client", move |txn, e| {
                let Some(s) = weak.upgrade() else {
                    return;
                };
                if txn.origin() == Some(&remote) || s.closed.load(Ordering::Acquire) {
                    return;
                }
                let n = s.written.fetch_add(1, Ordering::AcqRel) + 1;
                if let Ok(mut p) = s.pending.lock() {
                    p.push((n, e.update.clone()));
                }
                let _ = s.events.send(DocEvent::Changed(Change {
                    update: Bytes::from(e.update.clone()),
                    author: Author::Local,
                }));
                notify.notify_one();
            })
            .map_err(|e| Error::Protocol(format!("observing the document: {e}")))?;
        Ok(shared)
    }
}

/// A document of the room, opened with [`crate::RoomClient::open`]: a yrs [`Doc`] the
/// client keeps in sync. Edit it with ordinary yrs transactions; each committed transaction
/// is sent to the room (or kept and sent on reconnect while the connection is down), and what
/// other participants change is applied to it as it arrives.
///
/// Keep transactions short and never hold one across an `.await`: the client applies remote
/// updates in a transaction of its own.
///
/// ```no_run
/// # async fn example(client: roomd_client::RoomClient) -> Result<(), roomd_client::Error> {
/// use yrs::{GetString, Text, Transact};
///
/// let doc = client.open("notes/plan.doc").await?;
/// let text = doc.doc().get_or_insert_text("text");
/// text.push(&mut doc.doc().transact_mut(), "hello");
/// doc.durable().await?; // the room has it on disk
/// println!("{}", text.get_string(&doc.doc().transact()));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Document {
    pub(crate) shared: Arc<DocShared>,
    pub(crate) cmds: mpsc::Sender<Cmd>,
}

impl Document {
    /// The document's path in the room.
    pub fn path(&self) -> &str {
        &self.shared.path
    }

    /// The yrs document.
    pub fn doc(&self) -> &Doc {
        &self.shared.doc
    }

    /// A stream of what happens to the document from now on: every change (this client's
    /// and others', with who made them), refusals, resynchronisations.
    pub fn changes(&self) -> Changes {
        Changes {
            rx: self.shared.events.subscribe(),
        }
    }

    /// Resolves once every change this client made to the document so far is durable on the
    /// server (the flush that covers it has completed), across reconnects; fails only if
    /// the client is closed first.
    pub async fn durable(&self) -> Result<()> {
        let target = self.shared.written.load(Ordering::Acquire);
        let mut rx = self.shared.durable.subscribe();
        loop {
            if *rx.borrow_and_update() >= target {
                return Ok(());
            }
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(Error::Closed);
            }
            if rx.changed().await.is_err() {
                return Err(Error::Closed);
            }
        }
    }

    /// Closes the document: it stops syncing (changes made after are not sent).
    pub async fn close(self) -> Result<()> {
        self.cmds
            .send(Cmd::CloseDoc(self.shared.path.clone()))
            .await
            .map_err(|_| Error::Closed)
    }
}

/// A document's change stream ([`Document::changes`]).
#[derive(Debug)]
pub struct Changes {
    rx: broadcast::Receiver<DocEvent>,
}

impl Changes {
    /// The next event (after [`Document::close`], none comes). A reader that fell more than
    /// [`CHANGES_BUFFER`] events behind gets `Err(Error::Lagged(n))` once, then goes on
    /// with the oldest event still held.
    pub async fn next(&mut self) -> Option<Result<DocEvent>> {
        match self.rx.recv().await {
            Ok(e) => Some(Ok(e)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Err(Error::Lagged(n))),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}
