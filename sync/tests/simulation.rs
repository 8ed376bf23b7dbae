//! Seeded convergence simulation: several Yjs clients edit one document through a single
//! [`YjsDocSession`] over a hostile simulated network, and every replica must end identical.
//!
//! # What is simulated
//!
//! Each client is a `yrs::Doc` running the y-sync client logic, written here with yrs's own
//! codec (`yrs::sync`), independent of roomd's: when its connection opens it sends sync step 1
//! (and its awareness state); it answers a step 1 with a step 2; it applies every step 2 and
//! update; it sends each local change as an update while connected. Local changes are rich-text
//! edits (inserts with and without formatting attributes, formats that set and remove
//! attributes, deletes, embeds), map sets and removals, and undo and redo through a
//! `yrs::UndoManager` (so undo-shaped updates reach the server: items brought back as new
//! structs, deletions of other clients' formatting). Like a Yjs client, a client that applies a
//! remote change to formatted text cleans up the formatting markers it left dangling and sends
//! that cleanup as a change of its own. Remote updates go through `roomd_crdt::bare::apply`, the
//! same guard the server's documents use, because yrs 0.28 on its own corrupts documents that
//! receive updates out of order (Yjs clients handle that correctly). The room core is one
//! `YjsDocSession`; every `Output::Append` goes to a log that stands for storage, and the room is
//! sometimes restarted from that log (after an optional compaction into one snapshot), as the
//! server does when a room unloads and loads again. In half of the seeds, frames that reach the
//! server in the same tick are handed to `receive_many` together (which merges runs of updates),
//! as a room does with what has queued in its inbox. Since messages are reordered, a replica (the
//! server included) often receives the deletion of an item before the item itself.
//!
//! # The network model, and what the protocol can guarantee
//!
//! A WebSocket runs over TCP: within one connection nothing is lost, duplicated or reordered
//! while the connection lives, and when something is lost the connection breaks. y-sync has no
//! acknowledgements or retransmission; it recovers from loss by the handshake of the *next*
//! connection (each side's step 1 is answered with everything the other lacks). A message that
//! silently vanished from a connection that stays open would be lost for good, so no protocol of
//! this shape can survive that, and it does not happen in reality. The simulation therefore
//! models loss only as a broken connection:
//!
//! - **Delay and reordering**: every message gets an independent random delay, so messages are
//!   reordered across connections *and within one connection*. That is stronger than TCP; the
//!   protocol still converges because Yjs updates commute (an update that arrives before its
//!   dependencies waits as pending structs) and are idempotent.
//! - **Duplication**: a message may be delivered twice (again stronger than TCP); applying an
//!   update twice is a no-op and a repeated step 1 is answered twice.
//! - **Drop = connection lost**: when a message is dropped, its connection breaks. The client
//!   notices at once and reconnects after a random delay with a new connection id and a fresh
//!   handshake. The server notices after its own random delay (`session.close`); until then it
//!   still processes messages from that connection that were already on their way, and its
//!   messages to the client are lost. Anything else in flight on the connection may arrive or
//!   not.
//! - **Disconnects and restarts**: clients also leave and come back on their own, and the whole
//!   room restarts from its log, which breaks every connection.
//!
//! At the end the network heals (no more drops, disconnects or restarts; delays and duplicates
//! continue), every disconnected client reconnects, connected clients keep their connections,
//! and the network drains. Then every client, the session's document and the document rebuilt
//! from the log must be identical: same text with the same formatting and embeds, same map, same
//! state vector, same encoded state (delete set included), and nothing pending or waiting
//! anywhere.
//!
//! # Running it
//!
//! `cargo test -p roomd-sync --test simulation` runs 200 seeds. `SIM_SEEDS=5000` runs more;
//! `SIM_SEED=17` replays one seed and prints its trace (add `-- --nocapture`). A failure names its
//! seed and the command that replays it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use roomd_crdt::{DocLimits, YDoc};
use roomd_sync::{ConnId, MessageLimits, Output, Peer, SessionLimits, YjsDocSession};
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::sync::{Message as YMessage, MessageReader, SyncMessage as YSync};
use yrs::types::text::Diff;
use yrs::types::{Attrs, ToJson};
use yrs::undo::{Options as UndoOptions, UndoManager};
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::Encode;
use yrs::{
    Any, ClientID, Doc, GetString, Map, MapRef, ReadTxn, StateVector, Text, TextRef, Transact,
    Update,
};

const DEFAULT_SEEDS: u64 = 200;
const TEXT: &str = "t";
const MAP: &str = "m";

const SESSION_LIMITS: SessionLimits = SessionLimits {
    message: MessageLimits {
        payload_bytes_max: 8 << 20,
    },
    conns_max: 64,
    awareness_states_per_conn_max: 16,
};

/// The knobs of one run, drawn from its seed.
#[derive(Debug, Clone)]
struct Config {
    clients: usize,
    steps: u32,
    /// Largest delay of one message, in ticks.
    max_delay: u64,
    /// Chance that a message is delivered twice.
    dup: f64,
    /// Chance that a message is dropped, breaking its connection.
    drop: f64,
    /// Chance per tick that a random client disconnects on its own.
    disconnect: f64,
    /// Chance per tick that the room restarts from its log.
    restart: f64,
    /// Chance per tick and client of a local edit.
    edit: f64,
    /// Chance per tick that a random client announces a new awareness state.
    awareness: f64,
    /// Largest delay before a client reconnects, in ticks.
    reconnect_max: u64,
    /// Frames that reach the server in the same tick go to `receive_many` together, as a room
    /// hands over what has queued in its inbox; otherwise one by one to `receive`.
    batch: bool,
}

impl Config {
    fn draw(rng: &mut SmallRng) -> Config {
        // A few seeds run on a perfect network, which must converge without any handshake
        // after the first.
        let faults = rng.random_range(0..8) != 0;
        Config {
            clients: rng.random_range(2..=5),
            steps: rng.random_range(60..=180),
            max_delay: rng.random_range(0..=20),
            dup: if faults {
                rng.random_range(0.0..0.2)
            } else {
                0.0
            },
            drop: if faults {
                rng.random_range(0.0..0.05)
            } else {
                0.0
            },
            disconnect: if faults {
                rng.random_range(0.0..0.03)
            } else {
                0.0
            },
            restart: if faults {
                rng.random_range(0.0..0.005)
            } else {
                0.0
            },
            edit: rng.random_range(0.05..0.4),
            awareness: rng.random_range(0.0..0.1),
            reconnect_max: rng.random_range(1..=40),
            batch: rng.random_bool(0.5),
        }
    }
}

/// Something the network will do at a given tick.
#[derive(Debug, Clone)]
enum Event {
    /// A frame from a client arrives at the server.
    ToServer { conn: ConnId, frame: Bytes },
    /// A frame from the server arrives at a client.
    ToClient { conn: ConnId, frame: Bytes },
    /// The server notices that a connection is gone.
    ServerClose { conn: ConnId },
    /// A client's reconnect timer fires.
    Connect { client: usize },
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    delivered: u64,
    duplicated: u64,
    dropped: u64,
    connects: u64,
    restarts: u64,
    edits: u64,
    /// Batches of more than one frame handed to `receive_many`.
    batches: u64,
    /// Formats (setting or removing attributes) and inserts with attributes.
    formats: u64,
    /// Undo and redo steps that changed the document.
    undos: u64,
    /// Formatting cleanups clients sent after applying a remote change.
    cleanups: u64,
    /// Frames after which the server held something waiting for missing structs.
    waits: u64,
}

impl Stats {
    fn add(&mut self, o: Stats) {
        self.delivered += o.delivered;
        self.duplicated += o.duplicated;
        self.dropped += o.dropped;
        self.connects += o.connects;
        self.restarts += o.restarts;
        self.edits += o.edits;
        self.batches += o.batches;
        self.formats += o.formats;
        self.undos += o.undos;
        self.cleanups += o.cleanups;
        self.waits += o.waits;
    }
}

/// The origin of a client's own edits, which its undo manager tracks; remote updates are applied
/// without an origin.
const LOCAL: &str = "local";

struct Client {
    doc: Doc,
    text: TextRef,
    map: MapRef,
    undo: UndoManager<()>,
    /// What the client changed itself, as updates to send: its edits, its undo and redo steps,
    /// and the formatting cleanups it made while applying remote changes.
    changes: Arc<Mutex<Vec<Vec<u8>>>>,
    conn: Option<ConnId>,
    awareness_clock: u32,
    /// Updates waiting for missing structs (see [`Client::apply`]).
    waiting: Vec<Vec<u8>>,
}

impl Client {
    fn new(id: u64) -> Client {
        let doc = Doc::with_client_id(id);
        let text = doc.get_or_insert_text(TEXT);
        let map = doc.get_or_insert_map(MAP);
        let mut undo = UndoManager::with_options(UndoOptions {
            // Every edit is its own undo step, whatever the wall clock says.
            capture_timeout_millis: 0,
            ..UndoOptions::default()
        });
        undo.expand_scope(&doc, &text);
        undo.expand_scope(&doc, &map);
        undo.include_origin(LOCAL);
        let changes = Arc::new(Mutex::new(Vec::new()));
        // Edits and undo steps carry an origin; a remote update is applied without one.
        let own = Arc::clone(&changes);
        doc.observe_update_v1("changes", move |txn, event| {
            if txn.origin().is_some() {
                own.lock().unwrap().push(event.update.clone());
            }
        })
        .unwrap();
        // yrs deletes formatting markers that a remote change left dangling inside the
        // transaction that applied it; a Yjs client does the same in a transaction of its own,
        // which it sends on. So the cleanup goes out as a deletion of the client's own.
        let cleanups = Arc::clone(&changes);
        doc.observe_after_transaction("cleanups", move |txn| {
            if txn.origin().is_none() && !txn.cleanups().is_empty() {
                // A v1 update with no structs: a zero client count, then the delete set.
                let mut update = vec![0];
                update.extend(txn.cleanups().encode_v1());
                cleanups.lock().unwrap().push(update);
            }
        })
        .unwrap();
        Client {
            doc,
            text,
            map,
            undo,
            changes,
            conn: None,
            awareness_clock: 0,
            waiting: Vec::new(),
        }
    }

    /// Applies a remote update the way `roomd_crdt::YDoc` does (see `roomd_crdt::bare`): only
    /// structs that continue the document reach yrs, the rest waits.
    fn apply(&mut self, update: &[u8]) {
        if let Err(e) = roomd_crdt::bare::apply(&self.doc, &mut self.waiting, update) {
            panic!("an update from the server does not apply: {e}");
        }
    }

    /// The changes made since the last call, to be sent.
    fn take_changes(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.changes.lock().unwrap())
    }

    /// What the holder of `sv` lacks, waiting updates included.
    fn diff(&self, sv: &StateVector) -> Vec<u8> {
        let diff = self.doc.transact().encode_state_as_update_v1(sv);
        roomd_crdt::bare::with_waiting(diff, &self.waiting)
    }
}

struct Sim {
    seed: u64,
    rng: SmallRng,
    cfg: Config,
    now: u64,
    seq: u64,
    /// Pending events by (tick, sequence number).
    queue: BTreeMap<(u64, u64), Event>,
    session: YjsDocSession,
    /// Every update the session asked to append, in order; a compaction folds it.
    log: Vec<Bytes>,
    clients: Vec<Client>,
    /// Which client each connection id belongs to (ids are never reused).
    owner: HashMap<ConnId, usize>,
    next_conn: u64,
    /// False once the network has healed.
    faults: bool,
    trace: bool,
    stats: Stats,
}

/// Formatting attributes: for an insert, one or two set; for a format, some set and some removed
/// (a `null` value).
fn random_attrs(rng: &mut SmallRng, may_remove: bool) -> Attrs {
    let mut attrs = Attrs::new();
    for _ in 0..rng.random_range(1..=2) {
        let (key, value) = match rng.random_range(0..3) {
            0 => ("bold", Any::Bool(true)),
            1 => ("italic", Any::Bool(true)),
            _ => (
                "color",
                Any::from(["red", "blue"][rng.random_range(0..2)].to_string()),
            ),
        };
        let value = if may_remove && rng.random_bool(0.3) {
            Any::Null
        } else {
            value
        };
        attrs.insert(key.into(), value);
    }
    attrs
}

fn doc_limits() -> DocLimits {
    DocLimits::DEFAULT
}

fn sync_frame(msg: YSync) -> Bytes {
    Bytes::from(YMessage::Sync(msg).encode_v1())
}

/// The document rebuilt from a log of v1 updates, as the server loads it from storage.
fn rebuild(log: &[Bytes]) -> YDoc {
    let mut doc = YDoc::new(doc_limits());
    for (i, update) in log.iter().enumerate() {
        if let Err(e) = doc.apply_update(update) {
            panic!("log entry {i} of {} does not apply: {e}", log.len());
        }
    }
    doc
}

/// What a replica's content looks like, for comparison.
#[derive(Debug, PartialEq)]
struct Content {
    text: String,
    /// The text as chunks with their formatting attributes; embeds are chunks of their own.
    rich: Vec<Diff<()>>,
    map: Any,
    state_vector: StateVector,
    pending: bool,
}

fn content(doc: &Doc) -> Content {
    let txn = doc.transact();
    Content {
        text: txn
            .get_text(TEXT)
            .map(|t| t.get_string(&txn))
            .unwrap_or_default(),
        rich: txn
            .get_text(TEXT)
            .map(|t| t.diff(&txn, |_| ()))
            .unwrap_or_default(),
        map: txn
            .get_map(MAP)
            .map(|m| m.to_json(&txn))
            .unwrap_or_else(|| Any::Map(Default::default())),
        state_vector: txn.state_vector(),
        pending: txn.store().pending_update().is_some() || txn.store().pending_ds().is_some(),
    }
}

/// A yrs document holding exactly `update`.
fn doc_of(update: &[u8]) -> Doc {
    let doc = Doc::with_client_id(u64::MAX >> 11);
    doc.transact_mut()
        .apply_update(Update::decode_v1(update).expect("snapshot decodes"))
        .expect("snapshot applies");
    doc
}

fn full_state(doc: &Doc) -> Vec<u8> {
    doc.transact()
        .encode_state_as_update_v1(&StateVector::default())
}

impl Sim {
    fn new(seed: u64, trace: bool) -> Sim {
        let mut rng = SmallRng::seed_from_u64(seed);
        let cfg = Config::draw(&mut rng);
        let clients = (0..cfg.clients)
            .map(|i| Client::new(i as u64 + 1))
            .collect();
        Sim {
            seed,
            rng,
            cfg,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            session: YjsDocSession::new(YDoc::new(doc_limits()), SESSION_LIMITS),
            log: Vec::new(),
            clients,
            owner: HashMap::new(),
            next_conn: 1,
            faults: true,
            trace,
            stats: Stats::default(),
        }
    }

    fn log_event(&self, what: std::fmt::Arguments<'_>) {
        if self.trace {
            eprintln!("[seed {} t={}] {what}", self.seed, self.now);
        }
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.queue.insert((at, self.seq), event);
    }

    fn delay(&mut self) -> u64 {
        self.now + self.rng.random_range(0..=self.cfg.max_delay)
    }

    /// Puts a frame on the wire of `conn`: it may be delayed, duplicated, or dropped (which
    /// breaks the connection).
    fn transmit(&mut self, event: Event) {
        let conn = match &event {
            Event::ToServer { conn, .. } | Event::ToClient { conn, .. } => *conn,
            _ => unreachable!("only frames are transmitted"),
        };
        if self.faults && self.rng.random_bool(self.cfg.drop) {
            self.stats.dropped += 1;
            self.log_event(format_args!("drop on {conn:?}: {event:?}"));
            self.break_conn(conn);
            return;
        }
        let copies = if self.faults && self.rng.random_bool(self.cfg.dup) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = self.delay();
            self.schedule(at, event.clone());
        }
    }

    /// The connection breaks: the client forgets it now and will reconnect; the server notices
    /// later.
    fn break_conn(&mut self, conn: ConnId) {
        let client = self.owner[&conn];
        if self.clients[client].conn != Some(conn) {
            return;
        }
        self.clients[client].conn = None;
        let notice = self.now + self.rng.random_range(0..=2 * self.cfg.max_delay);
        self.schedule(notice, Event::ServerClose { conn });
        let back = self.now + self.rng.random_range(1..=self.cfg.reconnect_max);
        self.schedule(back, Event::Connect { client });
        self.log_event(format_args!(
            "{conn:?} of client {client} broke; server notices at {notice}, reconnect at {back}"
        ));
    }

    fn connect(&mut self, client: usize) {
        if self.clients[client].conn.is_some() {
            return;
        }
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.owner.insert(conn, client);
        self.clients[client].conn = Some(conn);
        self.stats.connects += 1;
        self.log_event(format_args!("client {client} connects as {conn:?}"));
        let mut out = Vec::new();
        // A client is one participant across its connections, as an authenticated one is.
        let peer = Peer {
            participant: client as u64,
            read_only: false,
            principal: std::sync::Arc::new(roomd_sync::Principal::new("p", false)),
        };
        if let Err(code) = self.session.open_as(conn, peer, &mut out) {
            panic!("session refused {conn:?}: {code:?}");
        }
        self.carry_out(out);
        let sv = self.clients[client].doc.transact().state_vector();
        self.transmit(Event::ToServer {
            conn,
            frame: sync_frame(YSync::SyncStep1(sv)),
        });
        if self.clients[client].awareness_clock > 0 {
            self.send_awareness(client);
        }
    }

    fn send_awareness(&mut self, client: usize) {
        let Some(conn) = self.clients[client].conn else {
            return;
        };
        let c = &mut self.clients[client];
        c.awareness_clock += 1;
        let mut clients = HashMap::new();
        clients.insert(
            ClientID::new(client as u64 + 1),
            AwarenessUpdateEntry {
                clock: c.awareness_clock,
                json: format!(
                    r#"{{"user":{{"name":"c{client}"}},"cursor":{}}}"#,
                    c.awareness_clock
                )
                .into(),
            },
        );
        let frame = Bytes::from(YMessage::Awareness(AwarenessUpdate { clients }).encode_v1());
        self.transmit(Event::ToServer { conn, frame });
    }

    /// Carries out the session's outputs as the server would.
    fn carry_out(&mut self, out: Vec<Output>) {
        for o in out {
            match o {
                Output::Send { conn, frame } => self.transmit(Event::ToClient { conn, frame }),
                Output::Append { update } => self.log.push(update),
                Output::Authors { .. } => {}
                Output::Disconnect { conn, code, reason } => {
                    panic!("the session closed {conn:?} with {code:?}: {reason}")
                }
                // Every client writes, and announces only its own awareness client id.
                o @ (Output::Refused { .. } | Output::Spoofed { .. }) => {
                    panic!("an honest client was refused: {o:?}")
                }
            }
        }
    }

    /// A random local change by `client`, sent as updates when it is connected.
    fn edit(&mut self, client: usize) {
        let kind = self.rng.random_range(0..20);
        let c = &mut self.clients[client];
        match kind {
            0..=13 => {
                let mut txn = c.doc.transact_mut_with(LOCAL);
                let len = c.text.len(&txn);
                match kind {
                    0..=3 => {
                        let at = self.rng.random_range(0..=len);
                        let n = self.rng.random_range(1..=4);
                        let s: String = (0..n)
                            .map(|_| char::from(b'a' + self.rng.random_range(0..26u8)))
                            .collect();
                        if self.rng.random_bool(0.5) {
                            c.text.insert(&mut txn, at, &s);
                        } else {
                            let attrs = random_attrs(&mut self.rng, false);
                            c.text.insert_with_attributes(&mut txn, at, &s, attrs);
                            self.stats.formats += 1;
                        }
                    }
                    4..=5 if len > 0 => {
                        let at = self.rng.random_range(0..len);
                        let n = self.rng.random_range(1..=(len - at).min(6));
                        c.text.remove_range(&mut txn, at, n);
                    }
                    6..=7 if len > 0 => {
                        let at = self.rng.random_range(0..len);
                        let n = self.rng.random_range(1..=(len - at).min(6));
                        let attrs = random_attrs(&mut self.rng, true);
                        c.text.format(&mut txn, at, n, attrs);
                        self.stats.formats += 1;
                    }
                    8 => {
                        let at = self.rng.random_range(0..=len);
                        let image = Any::from(format!("img{}", self.rng.random_range(0..100)));
                        if self.rng.random_bool(0.5) {
                            c.text.insert_embed(&mut txn, at, image);
                        } else {
                            let attrs = random_attrs(&mut self.rng, false);
                            c.text
                                .insert_embed_with_attributes(&mut txn, at, image, attrs);
                        }
                    }
                    9 => {
                        let key = ["a", "b", "c", "d"][self.rng.random_range(0..4)];
                        c.map.remove(&mut txn, key);
                    }
                    _ => {
                        let key = ["a", "b", "c", "d"][self.rng.random_range(0..4)];
                        let value = self.rng.random_range(0..1000i64);
                        if self.rng.random_bool(0.5) {
                            c.map.insert(&mut txn, key, value);
                        } else {
                            c.map.insert(&mut txn, key, format!("v{value}"));
                        }
                    }
                }
            }
            14..=17 => {
                if c.undo.undo_blocking() {
                    self.stats.undos += 1;
                }
            }
            _ => {
                if c.undo.redo_blocking() {
                    self.stats.undos += 1;
                }
            }
        }
        // A transaction that changed nothing (removing an absent key) sends nothing.
        let changes = self.clients[client].take_changes();
        self.stats.edits += changes.len() as u64;
        self.send_changes(client, changes);
    }

    /// Sends `client`'s own changes as updates, while it is connected; offline, they reach the
    /// server with the handshake of its next connection.
    fn send_changes(&mut self, client: usize, changes: Vec<Vec<u8>>) {
        let Some(conn) = self.clients[client].conn else {
            return;
        };
        for update in changes {
            self.transmit(Event::ToServer {
                conn,
                frame: sync_frame(YSync::Update(update)),
            });
        }
    }

    /// A frame from the server reaches `client` on `conn`.
    fn client_receive(&mut self, client: usize, conn: ConnId, frame: &[u8]) {
        let mut decoder = DecoderV1::from(frame);
        let messages: Vec<YMessage> = MessageReader::new(&mut decoder)
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("server frame {frame:?} does not decode: {e}"));
        assert_eq!(messages.len(), 1, "the server sends one message per frame");
        match messages.into_iter().next().unwrap() {
            YMessage::Sync(YSync::SyncStep1(sv)) => {
                let diff = self.clients[client].diff(&sv);
                self.transmit(Event::ToServer {
                    conn,
                    frame: sync_frame(YSync::SyncStep2(diff)),
                });
            }
            YMessage::Sync(YSync::SyncStep2(u) | YSync::Update(u)) => {
                self.clients[client].apply(&u);
                let cleanups = self.clients[client].take_changes();
                self.stats.cleanups += cleanups.len() as u64;
                self.send_changes(client, cleanups);
            }
            YMessage::Awareness(update) => {
                assert!(
                    update
                        .clients
                        .values()
                        .all(|e| e.json.as_ref() == "null" || e.json.starts_with(r#"{"user""#)),
                    "unexpected awareness states {update:?}"
                );
            }
            other => panic!("unexpected message from the server: {other:?}"),
        }
    }

    fn handle(&mut self, event: Event) {
        self.log_event(format_args!("{event:?}"));
        match event {
            Event::ToServer { conn, frame } => {
                self.stats.delivered += 1;
                let mut out = Vec::new();
                self.session.receive(conn, &frame, &mut out);
                self.count_waiting();
                self.carry_out(out);
            }
            Event::ToClient { conn, frame } => {
                let client = self.owner[&conn];
                if self.clients[client].conn == Some(conn) {
                    self.stats.delivered += 1;
                    self.client_receive(client, conn, &frame);
                }
            }
            Event::ServerClose { conn } => {
                let mut out = Vec::new();
                self.session.close(conn, &mut out);
                self.carry_out(out);
            }
            Event::Connect { client } => self.connect(client),
        }
    }

    /// The room unloads and loads again from its log (compacted into one snapshot half of the
    /// time): every connection breaks.
    fn restart(&mut self) {
        self.stats.restarts += 1;
        if self.rng.random_bool(0.5) {
            self.log = vec![Bytes::from(self.session.doc().snapshot())];
        }
        self.log_event(format_args!(
            "room restarts from {} log entries",
            self.log.len()
        ));
        self.session = YjsDocSession::new(rebuild(&self.log), SESSION_LIMITS);
        for client in 0..self.clients.len() {
            if let Some(conn) = self.clients[client].conn {
                self.break_conn(conn);
            }
        }
    }

    fn run(&mut self) {
        for client in 0..self.clients.len() {
            self.connect(client);
        }
        for _ in 0..self.cfg.steps {
            self.now += 1;
            for client in 0..self.clients.len() {
                if self.rng.random_bool(self.cfg.edit) {
                    self.edit(client);
                }
            }
            if self.rng.random_bool(self.cfg.awareness) {
                let client = self.rng.random_range(0..self.clients.len());
                self.send_awareness(client);
            }
            if self.rng.random_bool(self.cfg.disconnect) {
                let client = self.rng.random_range(0..self.clients.len());
                if let Some(conn) = self.clients[client].conn {
                    self.log_event(format_args!("client {client} leaves"));
                    self.break_conn(conn);
                }
            }
            if self.rng.random_bool(self.cfg.restart) {
                self.restart();
            }
            while let Some(entry) = self.queue.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let event = entry.remove();
                match event {
                    Event::ToServer { conn, frame } if self.cfg.batch => {
                        self.server_receive_batch(conn, frame);
                    }
                    event => self.handle(event),
                }
            }
        }
        self.heal_and_drain();
        self.check();
    }

    fn count_waiting(&mut self) {
        self.stats.waits += u64::from(self.session.doc().pending_updates() > 0);
    }

    /// Hands the server `frame` together with every other frame for it that is due now.
    fn server_receive_batch(&mut self, conn: ConnId, frame: Bytes) {
        let mut frames = vec![(conn, frame)];
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > self.now || !matches!(entry.get(), Event::ToServer { .. }) {
                break;
            }
            if let Event::ToServer { conn, frame } = entry.remove() {
                frames.push((conn, frame));
            }
        }
        self.log_event(format_args!("server receives a batch of {}", frames.len()));
        self.stats.delivered += frames.len() as u64;
        self.stats.batches += u64::from(frames.len() > 1);
        let mut out = Vec::new();
        self.session.receive_many(&frames, &mut out);
        self.count_waiting();
        self.carry_out(out);
    }

    fn heal_and_drain(&mut self) {
        self.faults = false;
        self.log_event(format_args!("network heals"));
        for client in 0..self.clients.len() {
            if self.clients[client].conn.is_none() {
                self.schedule(self.now, Event::Connect { client });
            }
        }
        let mut budget = 1_000_000u32;
        while let Some(((at, _), event)) = self.queue.pop_first() {
            self.now = self.now.max(at);
            self.handle(event);
            budget -= 1;
            assert!(budget > 0, "the network never drained");
        }
    }

    fn check(&self) {
        for (i, c) in self.clients.iter().enumerate() {
            assert!(
                c.conn.is_some(),
                "client {i} is not connected after healing"
            );
        }
        assert_eq!(
            self.session.connections(),
            self.clients.len(),
            "the session's connections after healing"
        );
        let server = self.session.doc();
        let server_snapshot = server.snapshot();
        let server_doc = doc_of(&server_snapshot);
        let want = content(&server_doc);
        assert!(!want.pending, "the server has pending structs: {want:?}");
        assert_eq!(server.text(TEXT), want.text);
        assert_eq!(
            StateVector::decode_v1(&server.state_vector()).unwrap(),
            want.state_vector,
            "the session's state vector differs from its snapshot's"
        );
        let want_state = full_state(&server_doc);
        assert_eq!(
            server.pending_updates(),
            0,
            "updates still wait at the server"
        );
        for (i, c) in self.clients.iter().enumerate() {
            assert!(c.waiting.is_empty(), "updates still wait at client {i}");
            assert_eq!(content(&c.doc), want, "client {i} differs from the server");
            assert_eq!(
                full_state(&doc_of(&full_state(&c.doc))),
                want_state,
                "client {i}'s encoded state differs from the server's"
            );
        }
        let stored = rebuild(&self.log);
        assert_eq!(
            stored.pending_updates(),
            0,
            "updates wait in the rebuilt document"
        );
        assert_eq!(
            content(&doc_of(&stored.snapshot())),
            want,
            "the log does not rebuild the session's document"
        );
    }
}

fn run_seed(seed: u64, trace: bool) -> Stats {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut sim = Sim::new(seed, trace);
        if trace {
            eprintln!("seed {seed}: {:?}", sim.cfg);
        }
        sim.run();
        sim.stats
    }));
    match outcome {
        Ok(stats) => stats,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!(
                "simulation failed for seed {seed}: {msg}\n\
                 replay with: SIM_SEED={seed} cargo test -p roomd-sync --test simulation -- --nocapture"
            )
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number")),
    )
}

#[test]
fn replicas_converge_under_faults() {
    if let Some(seed) = env_u64("SIM_SEED") {
        let stats = run_seed(seed, true);
        eprintln!("seed {seed} converged: {stats:?}");
        return;
    }
    let seeds = env_u64("SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let mut total = Stats::default();
    for seed in 0..seeds {
        total.add(run_seed(seed, false));
    }
    eprintln!("{seeds} seeds converged: {total:?}");
    // The run must actually have exercised the faults it claims to survive.
    if seeds >= DEFAULT_SEEDS {
        assert!(total.dropped > 0 && total.duplicated > 0 && total.restarts > 0);
        assert!(total.connects > total.restarts + seeds * 2);
        assert!(total.edits > seeds * 10);
        assert!(total.batches > seeds);
        assert!(total.formats > seeds * 2 && total.undos > seeds && total.cleanups > 0);
        assert!(total.waits > seeds);
    }
}
