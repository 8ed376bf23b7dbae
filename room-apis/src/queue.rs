//! The room's work queues (the `queues` room API), sans-IO.
//!
//! A [`Queues`] holds named FIFO queues of JSON messages. [`Queues::send`] appends a message;
//! [`Queues::receive`] takes the oldest waiting one. Without a lease, as the stock MeshAgent SDK
//! receives, the message is removed at once. With a lease it stays, leased to its consumer until
//! the lease ends: [`Queues::ack`] completes it, [`Queues::nack`] returns it to its place in the
//! queue, and a lease that runs out ([`Queues::expire`]) returns it too, so a consumer that
//! crashes does not lose work. An item returned having been delivered `max_attempts` times is
//! dead-lettered: it moves to the queue's dead-letter queue (`<queue>.dead` unless configured),
//! where it waits for inspection with its attempts and the queue it came from recorded.
//!
//! Nothing here does I/O or reads the clock: times are parameters (`now_ms`, ms since the
//! epoch), and lease receipts come from a counter. Every mutation returns [`Effects`]: the
//! [`Record`]s to write to a key-value store, in order, so that [`Queues::restore`] rebuilds the
//! same state from the store, and the queues in which a message became available, so that
//! receivers parked on an empty queue can be woken.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The longest queue name, in bytes.
pub const NAME_MAX_BYTES: usize = 256;

/// [`Config::max_attempts`] by default.
const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// Bounds and defaults of a [`Queues`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The most queues, dead-letter queues included.
    pub max_queues: usize,
    /// The most items a queue holds: waiting, leased and held dead.
    pub max_items_per_queue: usize,
    /// The largest message, in bytes of its JSON text.
    pub max_message_bytes: usize,
    /// The most bytes of messages (their JSON text) all the queues hold together: what bounds
    /// the memory they take, whatever the counts allow.
    pub max_total_bytes: usize,
    /// Deliveries after which a returned item is dead-lettered, for queues that do not set their
    /// own ([`QueueSettings::max_attempts`]). 0: items are never dead-lettered.
    pub max_attempts: u32,
    /// What a queue's name is followed by to name its dead-letter queue, for queues that do not
    /// name their own ([`QueueSettings::dead_letter`]).
    pub dead_letter_suffix: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_queues: 1024,
            max_items_per_queue: 100_000,
            max_message_bytes: 1 << 20,
            max_total_bytes: 256 << 20,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            dead_letter_suffix: ".dead".into(),
        }
    }
}

/// A queue's own settings; what it leaves unset comes from the [`Config`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSettings {
    /// Deliveries after which a returned item is dead-lettered (0: never).
    pub max_attempts: Option<u32>,
    /// The name of the queue's dead-letter queue.
    pub dead_letter: Option<String>,
}

/// Why a queue operation was refused. A refused operation changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue name is empty or longer than [`NAME_MAX_BYTES`].
    #[error("a queue name is 1 to 256 bytes long")]
    NameLength,
    /// The queue name has a control character.
    #[error("a queue name has no control characters")]
    NameControl,
    /// No queue has this name.
    #[error("there is no queue named {0:?}")]
    NoSuchQueue(String),
    /// Creating the queue would exceed [`Config::max_queues`].
    #[error("there are at most {max} queues")]
    TooManyQueues {
        /// [`Config::max_queues`].
        max: usize,
    },
    /// The queue holds [`Config::max_items_per_queue`] items already.
    #[error("queue {queue:?} holds its maximum of {max} items")]
    QueueFull {
        /// The queue.
        queue: String,
        /// [`Config::max_items_per_queue`].
        max: usize,
    },
    /// The message's JSON text is longer than [`Config::max_message_bytes`].
    #[error("the message is {bytes} bytes, over the limit of {max}")]
    MessageTooLarge {
        /// The length of the message's JSON text.
        bytes: usize,
        /// [`Config::max_message_bytes`].
        max: usize,
    },
    /// The queues hold [`Config::max_total_bytes`] of messages already, or would with this one.
    #[error("the queues hold at most {max} bytes of messages")]
    TooManyBytes {
        /// [`Config::max_total_bytes`].
        max: usize,
    },
    /// No outstanding lease has this receipt: it was never issued, or its item was acknowledged,
    /// returned, expired and returned, or removed with its queue.
    #[error("receipt {0} is unknown: its item was settled, returned or removed, or never leased")]
    UnknownReceipt(u64),
    /// The lease of this receipt has ended; its item is to be returned to its queue.
    #[error("the lease of receipt {0} has expired")]
    LeaseExpired(u64),
    /// A queue was configured as its own dead-letter queue.
    #[error("a queue cannot be its own dead-letter queue")]
    SelfDeadLetter,
    /// A stored record does not read back, or stored records do not fit together.
    #[error("the stored queues are corrupt: {0}")]
    Corrupt(String),
}

/// Where an item is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ItemState {
    /// In its queue, to be received.
    Waiting,
    /// Received with a lease, not yet acknowledged or returned.
    Leased {
        /// The receipt that settles the lease, unique across all queues.
        receipt: u64,
        /// When the lease ends (it has ended once `now_ms >= until_ms`).
        until_ms: u64,
        /// Who received it.
        consumer: String,
    },
    /// Completed: acknowledged, or received without a lease. Items are removed once done, so
    /// only items handed back by [`Queues::ack`] and [`Queues::receive`] are in this state.
    Done,
    /// Delivered `max_attempts` times and returned, and its dead-letter queue could not take it
    /// (full, over the queue limit, or an invalid name): it stays in its queue, never delivered
    /// again, until the queue is drained or closed.
    Dead,
}

impl ItemState {
    /// The state's name: `waiting`, `leased`, `done` or `dead`.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Leased { .. } => "leased",
            Self::Done => "done",
            Self::Dead => "dead",
        }
    }
}

/// Where a dead-lettered item came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The queue it was sent to.
    pub queue: String,
    /// Its sequence number there.
    pub seq: u64,
}

/// An item of a queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Its sequence number, assigned when it entered the queue and increasing in each queue: its
    /// place in the FIFO order.
    pub seq: u64,
    /// The message.
    pub message: serde_json::Value,
    /// When it entered the queue, in ms since the epoch.
    pub enqueued_ms: u64,
    /// How many times it was delivered.
    pub attempts: u32,
    /// Its state.
    pub state: ItemState,
    /// For an item of a dead-letter queue, where it came from.
    pub origin: Option<Origin>,
    /// For an item a client appended to the queue's document, the send it was (its Yjs item
    /// id), so that the send is taken once, whatever happens between taking it and the
    /// document showing it taken ([`Queues::send_from`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<String>,
}

/// A received item.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The queue it was received from.
    pub queue: String,
    /// The item: [`ItemState::Leased`] with a lease, [`ItemState::Done`] without one. Its
    /// `attempts` counts this delivery.
    pub item: Item,
    /// The receipt that settles the lease, if there is one.
    pub receipt: Option<u64>,
}

/// A queue as [`Queues::list`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    /// Its name.
    pub name: String,
    /// Its items not yet done: waiting and leased (items held dead are not counted).
    pub size: usize,
}

/// A queue's counts, as [`Queues::stats`] shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    /// Its name.
    pub name: String,
    /// Its waiting items.
    pub depth: usize,
    /// Its leased items.
    pub leased: usize,
    /// Its dead items ([`Queues::dead`]).
    pub dead: usize,
    /// How long its oldest waiting item has waited, if one waits.
    pub oldest_age_ms: Option<u64>,
}

/// Counts over every queue, as [`Queues::totals`] reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Queues, dead-letter queues included.
    pub queues: usize,
    /// Waiting items.
    pub waiting: usize,
    /// Leased items.
    pub leased: usize,
    /// Items held dead in their queue (those moved to a dead-letter queue count there as
    /// waiting).
    pub dead: usize,
    /// When the oldest waiting item entered its queue, in ms since the epoch.
    pub oldest_enqueued_ms: Option<u64>,
    /// Bytes of the messages held (their JSON text).
    pub bytes: usize,
}

/// What happened to an item returned by [`Queues::nack`] or by an expired lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Returned {
    /// It waits again in its queue, at its place in the FIFO order.
    Waiting,
    /// It moved to a dead-letter queue.
    DeadLettered {
        /// The dead-letter queue.
        queue: String,
        /// Its sequence number there.
        seq: u64,
    },
    /// It stays in its queue as [`ItemState::Dead`].
    HeldDead,
}

/// A lease that [`Queues::expire`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    /// The item's queue.
    pub queue: String,
    /// The item's sequence number.
    pub seq: u64,
    /// The lease's receipt, no longer valid.
    pub receipt: u64,
    /// What became of the item.
    pub returned: Returned,
}

/// What a mutation asks of the server.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    /// Records to write to the store, in this order (a later record of a key replaces an earlier
    /// one), best in one atomic batch.
    pub records: Vec<Record>,
    /// Queues in which an item became available to receive, each named once: receivers waiting
    /// on them are to try again (another receiver may have taken the item by then).
    pub ready: Vec<String>,
    /// Queues [`Queues::drain`] emptied: their items the records delete were removed, not
    /// completed.
    pub drained: Vec<String>,
}

impl Effects {
    fn ready(&mut self, queue: &str) {
        if !self.ready.iter().any(|q| q == queue) {
            self.ready.push(queue.to_owned());
        }
    }
}

impl Effects {
    /// The queues whose stored state the records change (created, removed, or an item's
    /// state), each named once, in the order first written.
    pub fn queues_changed(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for record in &self.records {
            if let Some(name) = record.queue() {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        names
    }
}

/// The answer of a mutation and its [`Effects`].
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome<T> {
    /// The answer.
    pub value: T,
    /// What the server is to persist and whom to wake.
    pub effects: Effects,
}

/// A queue's stored description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueMeta {
    /// Its name.
    pub name: String,
    /// The sequence number of its next item.
    pub next_seq: u64,
    /// Its settings.
    pub settings: QueueSettings,
}

/// A value in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stored {
    /// A queue (key [`Key::Queue`]).
    Queue(QueueMeta),
    /// An item not done (key [`Key::Item`]).
    Item {
        /// Its queue.
        queue: String,
        /// The item.
        item: Item,
    },
    /// The receipt counter (key [`Key::Receipts`]).
    Receipts {
        /// The next receipt to issue.
        next: u64,
    },
}

impl Stored {
    /// Its key.
    pub fn key(&self) -> Key {
        match self {
            Self::Queue(meta) => Key::Queue(meta.name.clone()),
            Self::Item { queue, item } => Key::Item {
                queue: queue.clone(),
                seq: item.seq,
            },
            Self::Receipts { .. } => Key::Receipts,
        }
    }
}

/// A key in the store. Each queue, each item and the receipt counter is one key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    /// `queue/<name>`.
    Queue(String),
    /// `item/<queue>\0<seq, 8 bytes big-endian>`: a queue's items are the keys under
    /// `item/<queue>\0` (no name has a NUL), in FIFO order.
    Item {
        /// The queue.
        queue: String,
        /// The item's sequence number.
        seq: u64,
    },
    /// `receipts`.
    Receipts,
}

impl Key {
    /// Its bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Queue(name) => [b"queue/", name.as_bytes()].concat(),
            Self::Item { queue, seq } => {
                [b"item/", queue.as_bytes(), b"\0", &seq.to_be_bytes()].concat()
            }
            Self::Receipts => b"receipts".to_vec(),
        }
    }
}

/// A write to the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// Write this value at its key.
    Put(Stored),
    /// Remove this key.
    Delete(Key),
}

impl Record {
    /// The key written or removed.
    pub fn key(&self) -> Vec<u8> {
        match self {
            Self::Put(stored) => stored.key().encode(),
            Self::Delete(key) => key.encode(),
        }
    }

    /// The queue the record belongs to (`None` for the receipt counter).
    pub fn queue(&self) -> Option<&str> {
        match self {
            Self::Put(Stored::Queue(meta)) => Some(&meta.name),
            Self::Put(Stored::Item { queue, .. })
            | Self::Delete(Key::Item { queue, .. })
            | Self::Delete(Key::Queue(queue)) => Some(queue),
            Self::Put(Stored::Receipts { .. }) | Self::Delete(Key::Receipts) => None,
        }
    }

    /// The value to write (JSON), or `None` to remove the key.
    #[allow(
        clippy::expect_used,
        reason = "the stored types serialize to JSON without fail: every map key is a string"
    )]
    pub fn encode(&self) -> Option<Vec<u8>> {
        match self {
            Self::Put(stored) => Some(serde_json::to_vec(stored).expect("stored values are JSON")),
            Self::Delete(_) => None,
        }
    }

    /// Reads a stored key and value back as the [`Record::Put`] that wrote them.
    pub fn decode(key: &[u8], value: &[u8]) -> Result<Self, QueueError> {
        let stored: Stored = serde_json::from_slice(value)
            .map_err(|e| QueueError::Corrupt(format!("a stored value does not read: {e}")))?;
        if stored.key().encode() != key {
            return Err(QueueError::Corrupt(
                "a stored value is not at its key".into(),
            ));
        }
        Ok(Self::Put(stored))
    }
}

/// The length of a value's JSON text, counted without writing it anywhere.
fn json_len(value: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // A `Value` always serializes (its map keys are strings), and counting never fails.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Checks a queue name: 1 to [`NAME_MAX_BYTES`] bytes, no control characters.
pub fn validate_name(name: &str) -> Result<(), QueueError> {
    if name.is_empty() || name.len() > NAME_MAX_BYTES {
        return Err(QueueError::NameLength);
    }
    if name.chars().any(char::is_control) {
        return Err(QueueError::NameControl);
    }
    Ok(())
}

/// One queue.
#[derive(Debug, Clone, Default, PartialEq)]
struct Queue {
    settings: QueueSettings,
    next_seq: u64,
    /// Items not done, by sequence number.
    items: BTreeMap<u64, Item>,
    /// The sequence numbers of the waiting items.
    waiting: BTreeSet<u64>,
    /// Items completed since the queue was opened or restored (saturating; not persisted).
    done: u64,
    /// How many of `items` are [`ItemState::Dead`], kept as they change so that the totals a
    /// server reads after every mutation cost a step per queue, not per item.
    dead: usize,
}

impl Queue {
    fn meta(&self, name: &str) -> Record {
        Record::Put(Stored::Queue(QueueMeta {
            name: name.to_owned(),
            next_seq: self.next_seq,
            settings: self.settings.clone(),
        }))
    }
}

/// An outstanding lease.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Lease {
    queue: String,
    seq: u64,
    until_ms: u64,
}

/// The work queues of a room.
#[derive(Debug, Clone)]
pub struct Queues {
    config: Config,
    queues: BTreeMap<String, Queue>,
    /// Outstanding leases by receipt.
    leases: BTreeMap<u64, Lease>,
    /// Outstanding leases by end, then receipt.
    deadlines: BTreeSet<(u64, u64)>,
    next_receipt: u64,
    /// Bytes of the messages of every item held (their JSON text).
    bytes: usize,
}

fn put_item(queue: &str, item: &Item) -> Record {
    Record::Put(Stored::Item {
        queue: queue.to_owned(),
        item: item.clone(),
    })
}

fn delete_item(queue: &str, seq: u64) -> Record {
    Record::Delete(Key::Item {
        queue: queue.to_owned(),
        seq,
    })
}

impl Queues {
    /// No queues.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            queues: BTreeMap::new(),
            leases: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            next_receipt: 1,
            bytes: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Rebuilds the queues from stored records: the store's contents (as [`Record::decode`]
    /// reads them, in any order), or every record ever written, in the order written.
    ///
    /// Bounds are not checked again. Leases outstanding when the records were written stay
    /// outstanding until their `until_ms`, so their items are delivered again once they expire,
    /// and receipts continue above every receipt issued.
    pub fn restore(
        config: Config,
        records: impl IntoIterator<Item = Record>,
    ) -> Result<Self, QueueError> {
        let mut metas: BTreeMap<String, QueueMeta> = BTreeMap::new();
        let mut items: BTreeMap<(String, u64), Item> = BTreeMap::new();
        let mut next_receipt = 1;
        for record in records {
            match record {
                Record::Put(Stored::Queue(meta)) => {
                    metas.insert(meta.name.clone(), meta);
                }
                Record::Put(Stored::Item { queue, item }) => {
                    items.insert((queue, item.seq), item);
                }
                Record::Put(Stored::Receipts { next }) => next_receipt = next,
                Record::Delete(Key::Queue(name)) => {
                    metas.remove(&name);
                }
                Record::Delete(Key::Item { queue, seq }) => {
                    items.remove(&(queue, seq));
                }
                Record::Delete(Key::Receipts) => next_receipt = 1,
            }
        }
        let mut this = Self::new(config);
        for (name, meta) in metas {
            let queue = Queue {
                settings: meta.settings,
                next_seq: meta.next_seq,
                ..Queue::default()
            };
            this.queues.insert(name, queue);
        }
        for ((name, seq), item) in items {
            let Some(queue) = this.queues.get_mut(&name) else {
                return Err(QueueError::Corrupt(format!(
                    "an item of queue {name:?}, which is not stored"
                )));
            };
            match &item.state {
                ItemState::Waiting => {
                    queue.waiting.insert(seq);
                }
                ItemState::Leased {
                    receipt, until_ms, ..
                } => {
                    let lease = Lease {
                        queue: name.clone(),
                        seq,
                        until_ms: *until_ms,
                    };
                    if this.leases.insert(*receipt, lease).is_some() {
                        return Err(QueueError::Corrupt(format!(
                            "receipt {receipt} leases two items"
                        )));
                    }
                    this.deadlines.insert((*until_ms, *receipt));
                    next_receipt = next_receipt.max(receipt.saturating_add(1));
                }
                ItemState::Dead => queue.dead += 1,
                ItemState::Done => {
                    return Err(QueueError::Corrupt(format!(
                        "item {seq} of queue {name:?} is stored done"
                    )))
                }
            }
            queue.next_seq = queue.next_seq.max(seq.saturating_add(1));
            this.bytes = this.bytes.saturating_add(json_len(&item.message));
            queue.items.insert(seq, item);
        }
        this.next_receipt = next_receipt.max(1);
        Ok(this)
    }

    /// The whole state as records: what the store holds once every [`Effects::records`] is
    /// written, to compact or copy it.
    pub fn records(&self) -> Vec<Record> {
        let mut records = Vec::new();
        for (name, queue) in &self.queues {
            records.push(queue.meta(name));
            for item in queue.items.values() {
                records.push(put_item(name, item));
            }
        }
        if self.next_receipt > 1 {
            records.push(Record::Put(Stored::Receipts {
                next: self.next_receipt,
            }));
        }
        records
    }

    /// The queues and their sizes (waiting and leased items), by name.
    pub fn list(&self) -> Vec<QueueInfo> {
        self.queues
            .iter()
            .map(|(name, q)| QueueInfo {
                name: name.clone(),
                size: q.items.len() - q.dead_count(),
            })
            .collect()
    }

    /// Creates an empty queue, unless it exists.
    pub fn open(&mut self, queue: &str) -> Result<Effects, QueueError> {
        validate_name(queue)?;
        let mut effects = Effects::default();
        if !self.queues.contains_key(queue) {
            self.check_room_for_queue()?;
            self.create(queue, &mut effects);
        }
        Ok(effects)
    }

    /// Sets a queue's own settings.
    pub fn configure(
        &mut self,
        queue: &str,
        settings: QueueSettings,
    ) -> Result<Effects, QueueError> {
        if let Some(dead) = &settings.dead_letter {
            validate_name(dead)?;
            if dead == queue {
                return Err(QueueError::SelfDeadLetter);
            }
        }
        let q = self.queue_mut(queue)?;
        q.settings = settings;
        let record = q.meta(queue);
        Ok(Effects {
            records: vec![record],
            ..Effects::default()
        })
    }

    /// A queue's own settings.
    pub fn settings(&self, queue: &str) -> Option<&QueueSettings> {
        self.queues.get(queue).map(|q| &q.settings)
    }

    /// Removes a queue and all its items; outstanding leases of its items end. Answers how many
    /// items it held.
    pub fn close(&mut self, queue: &str) -> Result<Outcome<usize>, QueueError> {
        let q = self
            .queues
            .remove(queue)
            .ok_or_else(|| QueueError::NoSuchQueue(queue.to_owned()))?;
        let mut effects = Effects::default();
        for item in q.items.values() {
            if let ItemState::Leased {
                receipt, until_ms, ..
            } = item.state
            {
                self.leases.remove(&receipt);
                self.deadlines.remove(&(until_ms, receipt));
            }
            effects.records.push(delete_item(queue, item.seq));
            self.bytes = self.bytes.saturating_sub(json_len(&item.message));
        }
        effects
            .records
            .push(Record::Delete(Key::Queue(queue.to_owned())));
        Ok(Outcome {
            value: q.items.len(),
            effects,
        })
    }

    /// Removes a queue's waiting items and the items it holds dead; leased items stay. Answers
    /// how many were removed.
    pub fn drain(&mut self, queue: &str) -> Result<Outcome<usize>, QueueError> {
        let q = self.queue_mut(queue)?;
        let removed: Vec<u64> = q
            .items
            .values()
            .filter(|item| matches!(item.state, ItemState::Waiting | ItemState::Dead))
            .map(|item| item.seq)
            .collect();
        let mut effects = Effects::default();
        let mut freed = 0usize;
        for seq in &removed {
            if let Some(item) = q.items.remove(seq) {
                freed = freed.saturating_add(json_len(&item.message));
            }
            effects.records.push(delete_item(queue, *seq));
        }
        q.waiting.clear();
        q.dead = 0;
        self.bytes = self.bytes.saturating_sub(freed);
        effects.drained.push(queue.to_owned());
        Ok(Outcome {
            value: removed.len(),
            effects,
        })
    }

    /// Appends a message to a queue, creating the queue if `create` is set. Answers the item's
    /// sequence number.
    pub fn send(
        &mut self,
        queue: &str,
        message: serde_json::Value,
        create: bool,
        now_ms: u64,
    ) -> Result<Outcome<u64>, QueueError> {
        self.send_as(queue, message, create, now_ms, None)
    }

    /// [`Queues::send`] of the send `send` that a client appended to the queue's document: the
    /// item remembers it, for [`Queues::find_send`].
    pub fn send_from(
        &mut self,
        queue: &str,
        message: serde_json::Value,
        create: bool,
        now_ms: u64,
        send: &str,
    ) -> Result<Outcome<u64>, QueueError> {
        self.send_as(queue, message, create, now_ms, Some(send.to_owned()))
    }

    /// The item a queue holds that was the send `send` ([`Queues::send_from`]). It walks the
    /// queue's items: for the few sends found not taken when a document is loaded.
    pub fn find_send(&self, queue: &str, send: &str) -> Option<u64> {
        self.queues
            .get(queue)?
            .items
            .values()
            .find(|item| item.send.as_deref() == Some(send))
            .map(|item| item.seq)
    }

    /// A queue's items (waiting, leased and held dead), in FIFO order.
    pub fn items(&self, queue: &str) -> impl Iterator<Item = &Item> {
        self.queues
            .get(queue)
            .into_iter()
            .flat_map(|q| q.items.values())
    }

    fn send_as(
        &mut self,
        queue: &str,
        message: serde_json::Value,
        create: bool,
        now_ms: u64,
        send: Option<String>,
    ) -> Result<Outcome<u64>, QueueError> {
        validate_name(queue)?;
        let bytes = json_len(&message);
        if bytes > self.config.max_message_bytes {
            return Err(QueueError::MessageTooLarge {
                bytes,
                max: self.config.max_message_bytes,
            });
        }
        if self.bytes.saturating_add(bytes) > self.config.max_total_bytes {
            return Err(QueueError::TooManyBytes {
                max: self.config.max_total_bytes,
            });
        }
        let mut effects = Effects::default();
        match self.queues.get(queue) {
            Some(q) if q.items.len() >= self.config.max_items_per_queue => {
                return Err(QueueError::QueueFull {
                    queue: queue.to_owned(),
                    max: self.config.max_items_per_queue,
                })
            }
            Some(_) => {}
            None if !create => return Err(QueueError::NoSuchQueue(queue.to_owned())),
            None => {
                self.check_room_for_queue()?;
                if self.config.max_items_per_queue == 0 {
                    return Err(QueueError::QueueFull {
                        queue: queue.to_owned(),
                        max: 0,
                    });
                }
                self.create(queue, &mut effects);
            }
        }
        let seq = self.push_waiting(queue, message, 0, (None, send), now_ms, &mut effects);
        Ok(Outcome {
            value: seq,
            effects,
        })
    }

    /// Takes the oldest waiting item of a queue, first returning items whose leases have ended
    /// (as [`Queues::expire`] does). Without a lease the item is completed at once; with one it
    /// is leased to `consumer` for `lease_ms` and counts a delivery. `None` when no item waits.
    pub fn receive(
        &mut self,
        queue: &str,
        consumer: &str,
        lease_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<Outcome<Option<Delivery>>, QueueError> {
        if !self.queues.contains_key(queue) {
            return Err(QueueError::NoSuchQueue(queue.to_owned()));
        }
        let mut effects = self.expire(now_ms).effects;
        let receipt = self.next_receipt;
        let Some(q) = self.queues.get_mut(queue) else {
            return Err(QueueError::NoSuchQueue(queue.to_owned()));
        };
        let Some(seq) = q.waiting.pop_first() else {
            return Ok(Outcome {
                value: None,
                effects,
            });
        };
        let delivery = match lease_ms {
            None => {
                let Some(mut item) = q.items.remove(&seq) else {
                    return Err(QueueError::Corrupt(format!("item {seq} waits, not held")));
                };
                self.bytes = self.bytes.saturating_sub(json_len(&item.message));
                item.attempts = item.attempts.saturating_add(1);
                item.state = ItemState::Done;
                q.done = q.done.saturating_add(1);
                effects.records.push(delete_item(queue, seq));
                Delivery {
                    queue: queue.to_owned(),
                    item,
                    receipt: None,
                }
            }
            Some(lease_ms) => {
                let Some(item) = q.items.get_mut(&seq) else {
                    return Err(QueueError::Corrupt(format!("item {seq} waits, not held")));
                };
                let until_ms = now_ms.saturating_add(lease_ms);
                item.attempts = item.attempts.saturating_add(1);
                item.state = ItemState::Leased {
                    receipt,
                    until_ms,
                    consumer: consumer.to_owned(),
                };
                let item = item.clone();
                self.next_receipt = receipt.saturating_add(1);
                self.leases.insert(
                    receipt,
                    Lease {
                        queue: queue.to_owned(),
                        seq,
                        until_ms,
                    },
                );
                self.deadlines.insert((until_ms, receipt));
                effects.records.push(put_item(queue, &item));
                effects.records.push(Record::Put(Stored::Receipts {
                    next: self.next_receipt,
                }));
                Delivery {
                    queue: queue.to_owned(),
                    item,
                    receipt: Some(receipt),
                }
            }
        };
        Ok(Outcome {
            value: Some(delivery),
            effects,
        })
    }

    /// Completes a leased item: it is removed. Answers it, [`ItemState::Done`].
    pub fn ack(&mut self, receipt: u64, now_ms: u64) -> Result<Outcome<Item>, QueueError> {
        let lease = self.settle(receipt, now_ms)?;
        let mut effects = Effects::default();
        let Some(q) = self.queues.get_mut(&lease.queue) else {
            return Err(QueueError::Corrupt(format!(
                "receipt {receipt} of no queue"
            )));
        };
        let Some(mut item) = q.items.remove(&lease.seq) else {
            return Err(QueueError::Corrupt(format!("receipt {receipt} of no item")));
        };
        self.bytes = self.bytes.saturating_sub(json_len(&item.message));
        item.state = ItemState::Done;
        q.done = q.done.saturating_add(1);
        effects.records.push(delete_item(&lease.queue, lease.seq));
        Ok(Outcome {
            value: item,
            effects,
        })
    }

    /// Extends an outstanding lease that has not ended: it now ends `lease_ms` from `now_ms`
    /// (sooner or later than it would have), under the same receipt. Answers when it ends.
    pub fn extend(
        &mut self,
        receipt: u64,
        lease_ms: u64,
        now_ms: u64,
    ) -> Result<Outcome<u64>, QueueError> {
        let lease = self
            .leases
            .get_mut(&receipt)
            .ok_or(QueueError::UnknownReceipt(receipt))?;
        if lease.until_ms <= now_ms {
            return Err(QueueError::LeaseExpired(receipt));
        }
        let until_ms = now_ms.saturating_add(lease_ms);
        self.deadlines.remove(&(lease.until_ms, receipt));
        self.deadlines.insert((until_ms, receipt));
        lease.until_ms = until_ms;
        let (queue, seq) = (lease.queue.clone(), lease.seq);
        let Some(item) = self
            .queues
            .get_mut(&queue)
            .and_then(|q| q.items.get_mut(&seq))
        else {
            return Err(QueueError::Corrupt(format!("receipt {receipt} of no item")));
        };
        if let ItemState::Leased { until_ms: u, .. } = &mut item.state {
            *u = until_ms;
        }
        let record = put_item(&queue, item);
        Ok(Outcome {
            value: until_ms,
            effects: Effects {
                records: vec![record],
                ..Effects::default()
            },
        })
    }

    /// Returns a leased item to its queue, at its place in the FIFO order, or dead-letters it if
    /// it was delivered `max_attempts` times.
    pub fn nack(&mut self, receipt: u64, now_ms: u64) -> Result<Outcome<Returned>, QueueError> {
        let lease = self.settle(receipt, now_ms)?;
        let mut effects = Effects::default();
        let returned = self.return_item(&lease.queue, lease.seq, now_ms, &mut effects);
        Ok(Outcome {
            value: returned,
            effects,
        })
    }

    /// Returns the items whose leases have ended (`until_ms <= now_ms`), as [`Queues::nack`]
    /// does. Call it at [`Queues::next_deadline`].
    pub fn expire(&mut self, now_ms: u64) -> Outcome<Vec<Expired>> {
        let mut effects = Effects::default();
        let mut expired = Vec::new();
        while let Some(&(until_ms, receipt)) = self.deadlines.first() {
            if until_ms > now_ms {
                break;
            }
            self.deadlines.pop_first();
            let Some(lease) = self.leases.remove(&receipt) else {
                continue;
            };
            let returned = self.return_item(&lease.queue, lease.seq, now_ms, &mut effects);
            expired.push(Expired {
                queue: lease.queue,
                seq: lease.seq,
                receipt,
                returned,
            });
        }
        Outcome {
            value: expired,
            effects,
        }
    }

    /// When the next lease ends, if one is outstanding.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|&(until_ms, _)| until_ms)
    }

    /// A queue's item.
    pub fn item(&self, queue: &str, seq: u64) -> Option<&Item> {
        self.queues.get(queue)?.items.get(&seq)
    }

    /// A queue's waiting items.
    pub fn depth(&self, queue: &str) -> Option<usize> {
        self.queues.get(queue).map(|q| q.waiting.len())
    }

    /// A queue's leased items.
    pub fn leased(&self, queue: &str) -> Option<usize> {
        self.queues
            .get(queue)
            .map(|q| q.items.len() - q.waiting.len() - q.dead_count())
    }

    /// A queue's dead items: those it holds dead and those of its dead-letter queue that came
    /// from it.
    pub fn dead(&self, queue: &str) -> Option<usize> {
        let q = self.queues.get(queue)?;
        let from_here = self
            .queues
            .get(&self.dead_letter_name(queue, q))
            .map_or(0, |d| {
                d.items
                    .values()
                    .filter(|item| item.origin.as_ref().is_some_and(|o| o.queue == queue))
                    .count()
            });
        Some(q.dead_count() + from_here)
    }

    /// How long the oldest waiting item of a queue has been in it; `Some(None)` when none waits.
    pub fn oldest_waiting_age_ms(&self, queue: &str, now_ms: u64) -> Option<Option<u64>> {
        let q = self.queues.get(queue)?;
        Some(
            q.waiting
                .first()
                .and_then(|seq| q.items.get(seq))
                .map(|item| now_ms.saturating_sub(item.enqueued_ms)),
        )
    }

    /// Items of a queue completed since it was opened or the queues restored (saturating; a
    /// metric, not persisted).
    pub fn done_count(&self, queue: &str) -> Option<u64> {
        self.queues.get(queue).map(|q| q.done)
    }

    /// Whether a queue of this name exists.
    pub fn contains(&self, queue: &str) -> bool {
        self.queues.contains_key(queue)
    }

    /// The queue whose item an outstanding lease holds.
    pub fn lease_queue(&self, receipt: u64) -> Option<&str> {
        self.leases.get(&receipt).map(|l| l.queue.as_str())
    }

    /// Each queue's counts, by name: what a server shows of a room's queues.
    pub fn stats(&self, now_ms: u64) -> Vec<QueueStats> {
        self.queues
            .keys()
            .map(|name| QueueStats {
                name: name.clone(),
                depth: self.depth(name).unwrap_or(0),
                leased: self.leased(name).unwrap_or(0),
                dead: self.dead(name).unwrap_or(0),
                oldest_age_ms: self.oldest_waiting_age_ms(name, now_ms).flatten(),
            })
            .collect()
    }

    /// The counts over every queue, in a step per queue: what a server reads after each
    /// mutation for its metrics.
    pub fn totals(&self) -> Totals {
        let mut t = Totals {
            queues: self.queues.len(),
            bytes: self.bytes,
            ..Totals::default()
        };
        for q in self.queues.values() {
            t.waiting += q.waiting.len();
            t.dead += q.dead_count();
            t.leased += q.items.len() - q.waiting.len() - q.dead_count();
            let oldest = q
                .waiting
                .first()
                .and_then(|seq| q.items.get(seq))
                .map(|item| item.enqueued_ms);
            t.oldest_enqueued_ms = match (t.oldest_enqueued_ms, oldest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        t
    }

    /// A queue's items as JSON, in FIFO order: `[{"seq", "state", "attempts", "enqueued_ms"}]`,
    /// `state` being [`ItemState::name`].
    pub fn document_view(&self, queue: &str) -> Option<serde_json::Value> {
        let q = self.queues.get(queue)?;
        Some(serde_json::Value::Array(
            q.items
                .values()
                .map(|item| {
                    serde_json::json!({
                        "seq": item.seq,
                        "state": item.state.name(),
                        "attempts": item.attempts,
                        "enqueued_ms": item.enqueued_ms,
                    })
                })
                .collect(),
        ))
    }

    /// Bytes of every item's message, counted again (what the property test compares the kept
    /// count with).
    #[cfg(test)]
    fn bytes_of_items(&self) -> usize {
        self.queues
            .values()
            .flat_map(|q| q.items.values())
            .map(|item| json_len(&item.message))
            .sum()
    }

    fn queue_mut(&mut self, queue: &str) -> Result<&mut Queue, QueueError> {
        self.queues
            .get_mut(queue)
            .ok_or_else(|| QueueError::NoSuchQueue(queue.to_owned()))
    }

    fn check_room_for_queue(&self) -> Result<(), QueueError> {
        if self.queues.len() >= self.config.max_queues {
            return Err(QueueError::TooManyQueues {
                max: self.config.max_queues,
            });
        }
        Ok(())
    }

    fn create(&mut self, queue: &str, effects: &mut Effects) {
        let q = Queue::default();
        effects.records.push(q.meta(queue));
        self.queues.insert(queue.to_owned(), q);
    }

    fn dead_letter_name(&self, queue: &str, q: &Queue) -> String {
        q.settings
            .dead_letter
            .clone()
            .unwrap_or_else(|| format!("{queue}{}", self.config.dead_letter_suffix))
    }

    /// Appends a waiting item to an existing queue, with where it came from (a dead-lettered
    /// item's origin, a document's send); answers its sequence number.
    fn push_waiting(
        &mut self,
        queue: &str,
        message: serde_json::Value,
        attempts: u32,
        (origin, send): (Option<Origin>, Option<String>),
        now_ms: u64,
        effects: &mut Effects,
    ) -> u64 {
        let Some(q) = self.queues.get_mut(queue) else {
            return 0;
        };
        let seq = q.next_seq;
        q.next_seq = seq.saturating_add(1);
        let item = Item {
            seq,
            message,
            enqueued_ms: now_ms,
            attempts,
            state: ItemState::Waiting,
            origin,
            send,
        };
        effects.records.push(q.meta(queue));
        effects.records.push(put_item(queue, &item));
        self.bytes = self.bytes.saturating_add(json_len(&item.message));
        q.items.insert(seq, item);
        q.waiting.insert(seq);
        effects.ready(queue);
        seq
    }

    /// Ends the lease of `receipt`, if it is outstanding and has not expired.
    fn settle(&mut self, receipt: u64, now_ms: u64) -> Result<Lease, QueueError> {
        let lease = self
            .leases
            .get(&receipt)
            .ok_or(QueueError::UnknownReceipt(receipt))?;
        if lease.until_ms <= now_ms {
            return Err(QueueError::LeaseExpired(receipt));
        }
        self.deadlines.remove(&(lease.until_ms, receipt));
        self.leases
            .remove(&receipt)
            .ok_or(QueueError::UnknownReceipt(receipt))
    }

    /// Returns an item whose lease ended to waiting, or dead-letters it.
    fn return_item(
        &mut self,
        queue: &str,
        seq: u64,
        now_ms: u64,
        effects: &mut Effects,
    ) -> Returned {
        let Some(q) = self.queues.get(queue) else {
            return Returned::Waiting;
        };
        let Some(item) = q.items.get(&seq) else {
            return Returned::Waiting;
        };
        let max = q.settings.max_attempts.unwrap_or(self.config.max_attempts);
        let dies = max != 0 && item.attempts >= max && item.origin.is_none();
        if !dies {
            if let Some(q) = self.queues.get_mut(queue) {
                if let Some(item) = q.items.get_mut(&seq) {
                    item.state = ItemState::Waiting;
                    effects.records.push(put_item(queue, item));
                }
                q.waiting.insert(seq);
                effects.ready(queue);
            }
            return Returned::Waiting;
        }
        let target = self.dead_letter_name(queue, q);
        let target_takes = target != queue
            && validate_name(&target).is_ok()
            && match self.queues.get(&target) {
                Some(d) => d.items.len() < self.config.max_items_per_queue,
                None => {
                    self.queues.len() < self.config.max_queues
                        && self.config.max_items_per_queue > 0
                }
            };
        let Some(q) = self.queues.get_mut(queue) else {
            return Returned::Waiting;
        };
        if !target_takes {
            if let Some(item) = q.items.get_mut(&seq) {
                item.state = ItemState::Dead;
                effects.records.push(put_item(queue, item));
                q.dead += 1;
            }
            return Returned::HeldDead;
        }
        let Some(item) = q.items.remove(&seq) else {
            return Returned::Waiting;
        };
        self.bytes = self.bytes.saturating_sub(json_len(&item.message));
        effects.records.push(delete_item(queue, seq));
        if !self.queues.contains_key(&target) {
            self.create(&target, effects);
        }
        let origin = Origin {
            queue: queue.to_owned(),
            seq,
        };
        let dead_seq = self.push_waiting(
            &target,
            item.message,
            item.attempts,
            (Some(origin), None),
            now_ms,
            effects,
        );
        Returned::DeadLettered {
            queue: target,
            seq: dead_seq,
        }
    }
}

impl Queue {
    fn dead_count(&self) -> usize {
        self.dead
    }

    #[cfg(test)]
    fn counts_agree(&self) -> bool {
        let dead = self
            .items
            .values()
            .filter(|item| item.state == ItemState::Dead)
            .count();
        let waiting = self
            .items
            .values()
            .filter(|item| item.state == ItemState::Waiting)
            .count();
        dead == self.dead && waiting == self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn store_of(records: &[Record], store: &mut BTreeMap<Vec<u8>, Vec<u8>>) {
        for record in records {
            match record.encode() {
                Some(value) => store.insert(record.key(), value),
                None => store.remove(&record.key()),
            };
        }
    }

    fn restored(store: &BTreeMap<Vec<u8>, Vec<u8>>, config: Config) -> Queues {
        let records = store
            .iter()
            .map(|(k, v)| Record::decode(k, v).unwrap())
            .collect::<Vec<_>>();
        Queues::restore(config, records).unwrap()
    }

    fn lease(q: &mut Queues, queue: &str, ms: u64, now: u64) -> Delivery {
        q.receive(queue, "worker", Some(ms), now)
            .unwrap()
            .value
            .unwrap()
    }

    #[test]
    fn items_are_received_in_the_order_sent() {
        let mut q = Queues::new(Config::default());
        for n in 0..5 {
            let sent = q.send("jobs", json!({ "n": n }), true, 10 + n).unwrap();
            assert_eq!(sent.value, n);
            assert_eq!(sent.effects.ready, vec!["jobs".to_owned()]);
        }
        for n in 0..5 {
            let got = q.receive("jobs", "w", None, 100).unwrap().value.unwrap();
            assert_eq!(got.item.message, json!({ "n": n }));
            assert_eq!(got.item.state, ItemState::Done);
            assert_eq!(got.item.attempts, 1);
            assert_eq!(got.receipt, None);
        }
        assert_eq!(q.receive("jobs", "w", None, 100).unwrap().value, None);
        assert_eq!(q.done_count("jobs"), Some(5));
    }

    #[test]
    fn send_without_create_needs_the_queue() {
        let mut q = Queues::new(Config::default());
        assert_eq!(
            q.send("jobs", json!(1), false, 0).unwrap_err(),
            QueueError::NoSuchQueue("jobs".into())
        );
        assert!(q.open("jobs").unwrap().records.len() == 1);
        assert!(q.open("jobs").unwrap().records.is_empty());
        assert!(q.send("jobs", json!(1), false, 0).is_ok());
        assert_eq!(
            q.receive("other", "w", None, 0).unwrap_err(),
            QueueError::NoSuchQueue("other".into())
        );
    }

    #[test]
    fn names_are_checked() {
        let mut q = Queues::new(Config::default());
        assert_eq!(q.open("").unwrap_err(), QueueError::NameLength);
        assert_eq!(
            q.open(&"x".repeat(NAME_MAX_BYTES + 1)).unwrap_err(),
            QueueError::NameLength
        );
        assert!(q.open(&"x".repeat(NAME_MAX_BYTES)).is_ok());
        assert_eq!(q.open("a\nb").unwrap_err(), QueueError::NameControl);
        assert_eq!(
            q.send("a\u{7f}", json!(1), true, 0).unwrap_err(),
            QueueError::NameControl
        );
        assert!(q.open("jobs/é ü").is_ok());
    }

    #[test]
    fn a_lease_that_expires_returns_its_item_in_place() {
        let mut q = Queues::new(Config::default());
        for n in 0..3 {
            q.send("jobs", json!(n), true, 0).unwrap();
        }
        let first = lease(&mut q, "jobs", 100, 10);
        assert_eq!(first.item.attempts, 1);
        assert_eq!(q.depth("jobs"), Some(2));
        assert_eq!(q.leased("jobs"), Some(1));
        assert_eq!(q.next_deadline(), Some(110));
        assert!(q.expire(109).value.is_empty());
        let expired = q.expire(110);
        assert_eq!(
            expired.value,
            vec![Expired {
                queue: "jobs".into(),
                seq: 0,
                receipt: first.receipt.unwrap(),
                returned: Returned::Waiting,
            }]
        );
        assert_eq!(expired.effects.ready, vec!["jobs".to_owned()]);
        assert_eq!(q.next_deadline(), None);
        let again = lease(&mut q, "jobs", 100, 120);
        assert_eq!(again.item.seq, 0);
        assert_eq!(again.item.attempts, 2);
        assert_ne!(again.receipt, first.receipt);
        assert_eq!(
            q.ack(first.receipt.unwrap(), 120).unwrap_err(),
            QueueError::UnknownReceipt(first.receipt.unwrap())
        );
    }

    #[test]
    fn an_extended_lease_ends_at_its_new_time_under_its_receipt() {
        let mut q = Queues::new(Config::default());
        q.send("jobs", json!(1), true, 0).unwrap();
        let d = lease(&mut q, "jobs", 100, 0);
        let r = d.receipt.unwrap();
        let extended = q.extend(r, 500, 50).unwrap();
        assert_eq!(extended.value, 550);
        assert_eq!(q.next_deadline(), Some(550));
        assert!(q.expire(549).value.is_empty());
        assert_eq!(extended.effects.records.len(), 1);
        assert!(matches!(
            q.item("jobs", 0).unwrap().state,
            ItemState::Leased { until_ms: 550, .. }
        ));
        assert_eq!(q.expire(550).value.len(), 1);
        assert_eq!(
            q.extend(r, 500, 600).unwrap_err(),
            QueueError::UnknownReceipt(r)
        );
        let d = lease(&mut q, "jobs", 100, 600);
        assert_eq!(
            q.extend(d.receipt.unwrap(), 10, 700).unwrap_err(),
            QueueError::LeaseExpired(d.receipt.unwrap())
        );
    }

    #[test]
    fn receive_expires_lazily() {
        let mut q = Queues::new(Config::default());
        q.send("jobs", json!("a"), true, 0).unwrap();
        let first = lease(&mut q, "jobs", 50, 0);
        assert_eq!(q.receive("jobs", "w", Some(50), 49).unwrap().value, None);
        let got = q.receive("jobs", "w", Some(50), 50).unwrap();
        let second = got.value.unwrap();
        assert_eq!(second.item.seq, first.item.seq);
        assert_eq!(second.item.attempts, 2);
        assert!(got.effects.records.len() >= 3);
    }

    #[test]
    fn ack_removes_and_nack_returns_in_order() {
        let mut q = Queues::new(Config::default());
        for n in 0..3 {
            q.send("jobs", json!(n), true, n).unwrap();
        }
        let a = lease(&mut q, "jobs", 1000, 10);
        let b = lease(&mut q, "jobs", 1000, 10);
        assert_eq!(q.oldest_waiting_age_ms("jobs", 10), Some(Some(8)));
        let acked = q.ack(b.receipt.unwrap(), 20).unwrap();
        assert_eq!(acked.value.state, ItemState::Done);
        assert_eq!(acked.value.seq, 1);
        assert_eq!(
            acked.effects.records,
            vec![Record::Delete(Key::Item {
                queue: "jobs".into(),
                seq: 1
            })]
        );
        let nacked = q.nack(a.receipt.unwrap(), 20).unwrap();
        assert_eq!(nacked.value, Returned::Waiting);
        assert_eq!(nacked.effects.ready, vec!["jobs".to_owned()]);
        assert_eq!(q.oldest_waiting_age_ms("jobs", 10), Some(Some(10)));
        let next = lease(&mut q, "jobs", 1000, 30);
        assert_eq!(next.item.seq, 0);
        assert_eq!(
            q.nack(b.receipt.unwrap(), 30).unwrap_err(),
            QueueError::UnknownReceipt(b.receipt.unwrap())
        );
        assert_eq!(q.ack(999, 30).unwrap_err(), QueueError::UnknownReceipt(999));
        assert_eq!(
            q.ack(next.receipt.unwrap(), 1030).unwrap_err(),
            QueueError::LeaseExpired(next.receipt.unwrap())
        );
        assert_eq!(q.done_count("jobs"), Some(1));
    }

    #[test]
    fn receipts_are_unique_across_queues() {
        let mut q = Queues::new(Config::default());
        let mut receipts = BTreeSet::new();
        for round in 0..10 {
            for name in ["a", "b", "c"] {
                q.send(name, json!(round), true, 0).unwrap();
                let d = lease(&mut q, name, 5, round);
                assert!(receipts.insert(d.receipt.unwrap()));
            }
        }
    }

    #[test]
    fn items_are_dead_lettered_after_max_attempts() {
        let config = Config {
            max_attempts: 3,
            ..Config::default()
        };
        let mut q = Queues::new(config);
        q.send("jobs", json!("poison"), true, 0).unwrap();
        q.send("jobs", json!("fine"), true, 0).unwrap();
        for attempt in 1..3 {
            let d = lease(&mut q, "jobs", 10, 0);
            assert_eq!(d.item.attempts, attempt);
            assert_eq!(
                q.nack(d.receipt.unwrap(), 1).unwrap().value,
                Returned::Waiting
            );
        }
        let d = lease(&mut q, "jobs", 10, 0);
        assert_eq!(d.item.attempts, 3);
        let expired = q.expire(10);
        assert_eq!(
            expired.value[0].returned,
            Returned::DeadLettered {
                queue: "jobs.dead".into(),
                seq: 0
            }
        );
        assert_eq!(expired.effects.ready, vec!["jobs.dead".to_owned()]);
        assert_eq!(q.depth("jobs"), Some(1));
        assert_eq!(q.dead("jobs"), Some(1));
        let dead = q.item("jobs.dead", 0).unwrap();
        assert_eq!(dead.attempts, 3);
        assert_eq!(dead.message, json!("poison"));
        assert_eq!(
            dead.origin,
            Some(Origin {
                queue: "jobs".into(),
                seq: 0
            })
        );
        // A dead-lettered item is not dead-lettered again.
        let d = lease(&mut q, "jobs.dead", 10, 20);
        assert_eq!(
            q.nack(d.receipt.unwrap(), 21).unwrap().value,
            Returned::Waiting
        );
        assert_eq!(
            q.list(),
            vec![
                QueueInfo {
                    name: "jobs".into(),
                    size: 1
                },
                QueueInfo {
                    name: "jobs.dead".into(),
                    size: 1
                },
            ]
        );
    }

    #[test]
    fn per_queue_settings_and_held_dead_items() {
        let config = Config {
            max_queues: 2,
            ..Config::default()
        };
        let mut q = Queues::new(config);
        q.open("jobs").unwrap();
        assert_eq!(
            q.configure(
                "jobs",
                QueueSettings {
                    max_attempts: Some(1),
                    dead_letter: Some("jobs".into())
                }
            )
            .unwrap_err(),
            QueueError::SelfDeadLetter
        );
        q.configure(
            "jobs",
            QueueSettings {
                max_attempts: Some(1),
                dead_letter: Some("graveyard".into()),
            },
        )
        .unwrap();
        q.open("other").unwrap();
        q.send("jobs", json!(1), false, 0).unwrap();
        let d = lease(&mut q, "jobs", 10, 0);
        // No room for a third queue: the item stays, dead.
        assert_eq!(
            q.nack(d.receipt.unwrap(), 1).unwrap().value,
            Returned::HeldDead
        );
        assert_eq!(q.depth("jobs"), Some(0));
        assert_eq!(q.dead("jobs"), Some(1));
        assert_eq!(q.list()[0].size, 0);
        assert_eq!(q.receive("jobs", "w", None, 2).unwrap().value, None);
        assert_eq!(
            q.document_view("jobs").unwrap(),
            json!([{ "seq": 0, "state": "dead", "attempts": 1, "enqueued_ms": 0 }])
        );
        assert_eq!(q.drain("jobs").unwrap().value, 1);
        assert_eq!(q.dead("jobs"), Some(0));
        // With room, it goes to the configured dead-letter queue.
        q.close("other").unwrap();
        q.send("jobs", json!(2), false, 5).unwrap();
        let d = lease(&mut q, "jobs", 10, 5);
        assert_eq!(
            q.nack(d.receipt.unwrap(), 6).unwrap().value,
            Returned::DeadLettered {
                queue: "graveyard".into(),
                seq: 0
            }
        );
        assert_eq!(q.dead("jobs"), Some(1));
    }

    #[test]
    fn bounds_are_errors() {
        let config = Config {
            max_queues: 2,
            max_items_per_queue: 2,
            max_message_bytes: 10,
            ..Config::default()
        };
        let mut q = Queues::new(config);
        assert_eq!(
            q.send("a", json!("0123456789"), true, 0).unwrap_err(),
            QueueError::MessageTooLarge { bytes: 12, max: 10 }
        );
        assert!(q.list().is_empty());
        q.send("a", json!("01234567"), true, 0).unwrap();
        q.send("a", json!(1), true, 0).unwrap();
        assert_eq!(
            q.send("a", json!(2), true, 0).unwrap_err(),
            QueueError::QueueFull {
                queue: "a".into(),
                max: 2
            }
        );
        q.open("b").unwrap();
        assert_eq!(
            q.open("c").unwrap_err(),
            QueueError::TooManyQueues { max: 2 }
        );
        assert_eq!(
            q.send("c", json!(1), true, 0).unwrap_err(),
            QueueError::TooManyQueues { max: 2 }
        );
        // A leased item still counts against the queue's bound.
        lease(&mut q, "a", 10, 0);
        assert!(q.send("a", json!(3), true, 0).is_err());
        // So do the bytes of every message held, whatever the counts.
        let mut q = Queues::new(Config {
            max_total_bytes: 10,
            ..Config::default()
        });
        q.send("a", json!("123456"), true, 0).unwrap();
        assert_eq!(
            q.send("b", json!("12"), true, 0).unwrap_err(),
            QueueError::TooManyBytes { max: 10 }
        );
        assert!(!q.contains("b"));
        q.send("b", json!(1), true, 0).unwrap();
        assert_eq!(q.totals().bytes, 9);
        q.receive("a", "w", None, 0).unwrap();
        assert_eq!(q.totals().bytes, 1);
        q.send("b", json!("1234567"), true, 0).unwrap();
    }

    #[test]
    fn drain_keeps_leases_and_close_ends_them() {
        let mut q = Queues::new(Config::default());
        for n in 0..4 {
            q.send("jobs", json!(n), true, 0).unwrap();
        }
        let d = lease(&mut q, "jobs", 100, 0);
        let drained = q.drain("jobs").unwrap();
        assert_eq!(drained.value, 3);
        assert_eq!(drained.effects.records.len(), 3);
        assert_eq!(q.depth("jobs"), Some(0));
        assert_eq!(q.leased("jobs"), Some(1));
        assert_eq!(q.list()[0].size, 1);
        assert!(q.nack(d.receipt.unwrap(), 1).is_ok());
        assert_eq!(q.depth("jobs"), Some(1));
        let d = lease(&mut q, "jobs", 100, 2);
        let closed = q.close("jobs").unwrap();
        assert_eq!(closed.value, 1);
        assert_eq!(
            closed.effects.records.last(),
            Some(&Record::Delete(Key::Queue("jobs".into())))
        );
        assert_eq!(q.next_deadline(), None);
        assert!(q.list().is_empty());
        assert_eq!(
            q.ack(d.receipt.unwrap(), 3).unwrap_err(),
            QueueError::UnknownReceipt(d.receipt.unwrap())
        );
        assert_eq!(
            q.drain("jobs").unwrap_err(),
            QueueError::NoSuchQueue("jobs".into())
        );
        assert_eq!(q.depth("jobs"), None);
    }

    #[test]
    fn restore_keeps_outstanding_leases_and_counters() {
        let config = Config::default();
        let mut q = Queues::new(config.clone());
        let mut store = BTreeMap::new();
        for n in 0..3 {
            store_of(
                &q.send("jobs", json!(n), true, 0).unwrap().effects.records,
                &mut store,
            );
        }
        let got = q.receive("jobs", "w", Some(100), 10).unwrap();
        store_of(&got.effects.records, &mut store);
        let leased = got.value.unwrap();
        let got = q.receive("jobs", "w", Some(100), 10).unwrap();
        store_of(&got.effects.records, &mut store);
        let acked = got.value.unwrap();
        store_of(
            &q.ack(acked.receipt.unwrap(), 11).unwrap().effects.records,
            &mut store,
        );

        let mut back = restored(&store, config);
        assert_eq!(back.records(), q.records());
        assert_eq!(back.next_deadline(), Some(110));
        assert_eq!(back.depth("jobs"), Some(1));
        assert_eq!(back.leased("jobs"), Some(1));
        // The acked item's receipt is not issued again.
        let next = lease(&mut back, "jobs", 100, 20);
        assert!(next.receipt.unwrap() > acked.receipt.unwrap());
        // The lease outstanding at the crash expires and its item is delivered again.
        assert_eq!(back.expire(110).value.len(), 1);
        let again = lease(&mut back, "jobs", 100, 120);
        assert_eq!(again.item.seq, leased.item.seq);
        assert_eq!(again.item.attempts, 2);
        // Sequence numbers continue too.
        assert_eq!(back.send("jobs", json!(9), true, 0).unwrap().value, 3);
    }

    #[test]
    fn restore_refuses_corrupt_records() {
        assert!(Record::decode(b"receipts", b"not json").is_err());
        let put = Record::Put(Stored::Receipts { next: 4 });
        let value = put.encode().unwrap();
        assert_eq!(Record::decode(b"receipts", &value).unwrap(), put);
        assert!(Record::decode(b"queue/x", &value).is_err());
        let orphan = Record::Put(Stored::Item {
            queue: "gone".into(),
            item: Item {
                seq: 0,
                message: json!(null),
                enqueued_ms: 0,
                attempts: 0,
                state: ItemState::Waiting,
                origin: None,
                send: None,
            },
        });
        assert!(matches!(
            Queues::restore(Config::default(), [orphan]),
            Err(QueueError::Corrupt(_))
        ));
    }

    #[test]
    fn totals_and_stats_count_every_state() {
        let config = Config {
            max_attempts: 1,
            max_queues: 1,
            ..Config::default()
        };
        let mut q = Queues::new(config);
        assert_eq!(q.totals(), Totals::default());
        for n in 0..4 {
            q.send("jobs", json!(n), true, 10 + n).unwrap();
        }
        let a = lease(&mut q, "jobs", 100, 20);
        let b = lease(&mut q, "jobs", 100, 20);
        // No room for `jobs.dead`: the item is held dead.
        assert_eq!(
            q.nack(b.receipt.unwrap(), 21).unwrap().value,
            Returned::HeldDead
        );
        assert_eq!(q.lease_queue(a.receipt.unwrap()), Some("jobs"));
        assert_eq!(q.lease_queue(b.receipt.unwrap()), None);
        assert_eq!(
            q.totals(),
            Totals {
                queues: 1,
                waiting: 2,
                leased: 1,
                dead: 1,
                oldest_enqueued_ms: Some(12),
                bytes: 4,
            }
        );
        assert_eq!(
            q.stats(30),
            vec![QueueStats {
                name: "jobs".into(),
                depth: 2,
                leased: 1,
                dead: 1,
                oldest_age_ms: Some(18),
            }]
        );
        let drained = q.drain("jobs").unwrap();
        assert_eq!(drained.effects.queues_changed(), vec!["jobs"]);
        assert_eq!(q.totals().dead, 0);
        assert_eq!(q.totals().oldest_enqueued_ms, None);
        assert!(q.contains("jobs"));
        assert!(!q.contains("jobs.dead"));
    }

    #[test]
    fn item_keys_sort_in_fifo_order_under_their_queue() {
        let key = |queue: &str, seq| {
            Key::Item {
                queue: queue.into(),
                seq,
            }
            .encode()
        };
        assert!(key("a", 255) < key("a", 256));
        assert!(key("a", u64::MAX) < key("a/b", 0));
        assert!(key("a", 1).starts_with(b"item/a\0"));
        assert!(!key("a/b", 1).starts_with(b"item/a\0"));
    }

    #[test]
    fn a_documents_send_is_found_again_after_a_restore() {
        let mut q = Queues::new(Config::default());
        let mut records = Vec::new();
        let sent = q
            .send_from("jobs", json!({"n": 1}), true, 10, "7:3")
            .unwrap();
        records.extend(sent.effects.records);
        records.extend(
            q.send("jobs", json!({"n": 2}), false, 11)
                .unwrap()
                .effects
                .records,
        );
        assert_eq!(q.find_send("jobs", "7:3"), Some(sent.value));
        assert_eq!(q.find_send("jobs", "7:4"), None);
        let again = Queues::restore(Config::default(), records).unwrap();
        assert_eq!(again.find_send("jobs", "7:3"), Some(sent.value));
        let shown: Vec<u64> = again.items("jobs").map(|i| i.seq).collect();
        assert_eq!(shown, [0, 1]);
        let drained = q.drain("jobs").unwrap();
        assert_eq!(drained.effects.drained, ["jobs"]);
        assert_eq!(q.items("jobs").count(), 0);
        assert!(q.items("nowhere").next().is_none());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Open(usize),
        Send(usize, u8, bool),
        Receive(usize, Option<u64>),
        Ack(u64),
        Nack(u64),
        Extend(u64, u64),
        Expire,
        Drain(usize),
        Close(usize),
        Configure(usize, Option<u32>),
        Wait(u64),
        Restore(bool),
    }

    const NAMES: [&str; 3] = ["a", "b", "a.dead"];

    fn op() -> impl Strategy<Value = Op> {
        let name = 0..NAMES.len();
        prop_oneof![
            1 => name.clone().prop_map(Op::Open),
            4 => (name.clone(), 0u8..120, any::<bool>()).prop_map(|(n, m, c)| Op::Send(n, m, c)),
            4 => (name.clone(), proptest::option::of(0u64..40)).prop_map(|(n, l)| Op::Receive(n, l)),
            2 => (0u64..16).prop_map(Op::Ack),
            2 => (0u64..16).prop_map(Op::Nack),
            1 => (0u64..16, 0u64..40).prop_map(|(r, l)| Op::Extend(r, l)),
            1 => Just(Op::Expire),
            1 => name.clone().prop_map(Op::Drain),
            1 => name.clone().prop_map(Op::Close),
            1 => (name, proptest::option::of(0u32..4)).prop_map(|(n, m)| Op::Configure(n, m)),
            2 => (0u64..30).prop_map(Op::Wait),
            2 => any::<bool>().prop_map(Op::Restore),
        ]
    }

    /// Applies an operation; answers its outcome as text, to compare.
    fn apply(q: &mut Queues, op: &Op, now: u64) -> (String, Vec<Record>) {
        fn out<T: std::fmt::Debug>(r: Result<Outcome<T>, QueueError>) -> (String, Vec<Record>) {
            match r {
                Ok(o) => (format!("{:?} {:?}", o.value, o.effects), o.effects.records),
                Err(e) => (format!("{e:?}"), Vec::new()),
            }
        }
        fn eff(r: Result<Effects, QueueError>) -> (String, Vec<Record>) {
            out(r.map(|effects| Outcome { value: (), effects }))
        }
        match op {
            Op::Open(n) => eff(q.open(NAMES[*n])),
            Op::Send(n, m, c) => out(q.send(NAMES[*n], json!(m), *c, now)),
            Op::Receive(n, l) => out(q.receive(NAMES[*n], "w", *l, now)),
            Op::Ack(r) => out(q.ack(*r, now)),
            Op::Nack(r) => out(q.nack(*r, now)),
            Op::Extend(r, l) => out(q.extend(*r, *l, now)),
            Op::Expire => out(Ok(q.expire(now))),
            Op::Drain(n) => out(q.drain(NAMES[*n])),
            Op::Close(n) => out(q.close(NAMES[*n])),
            Op::Configure(n, m) => eff(q.configure(
                NAMES[*n],
                QueueSettings {
                    max_attempts: *m,
                    dead_letter: None,
                },
            )),
            Op::Wait(_) | Op::Restore(_) => (String::new(), Vec::new()),
        }
    }

    proptest! {
        #[test]
        fn restoring_at_any_point_changes_nothing(ops in proptest::collection::vec(op(), 1..150)) {
            let config = Config {
                max_queues: 3,
                max_items_per_queue: 3,
                max_message_bytes: 2,
                max_total_bytes: 7,
                max_attempts: 2,
                ..Config::default()
            };
            let mut reference = Queues::new(config.clone());
            let mut subject = Queues::new(config.clone());
            let mut store = BTreeMap::new();
            let mut log = Vec::new();
            let mut now = 0;
            for op in &ops {
                match op {
                    Op::Wait(ms) => now += ms,
                    Op::Restore(from_log) => {
                        subject = if *from_log {
                            Queues::restore(config.clone(), log.clone()).unwrap()
                        } else {
                            restored(&store, config.clone())
                        };
                    }
                    _ => {
                        let (expected, _) = apply(&mut reference, op, now);
                        let (got, records) = apply(&mut subject, op, now);
                        prop_assert_eq!(expected, got);
                        store_of(&records, &mut store);
                        log.extend(records);
                    }
                }
                prop_assert!(subject.queues.values().all(Queue::counts_agree));
                prop_assert_eq!(subject.bytes, subject.bytes_of_items());
                prop_assert!(reference.queues.values().all(Queue::counts_agree));
                prop_assert_eq!(subject.totals(), reference.totals());
                prop_assert_eq!(subject.records(), reference.records());
                let mut snapshot = BTreeMap::new();
                store_of(&reference.records(), &mut snapshot);
                prop_assert_eq!(&snapshot, &store);
                prop_assert_eq!(subject.next_deadline(), reference.next_deadline());
                prop_assert_eq!(subject.list(), reference.list());
                for name in NAMES {
                    prop_assert_eq!(subject.depth(name), reference.depth(name));
                    prop_assert_eq!(subject.leased(name), reference.leased(name));
                    prop_assert_eq!(subject.dead(name), reference.dead(name));
                    prop_assert_eq!(subject.document_view(name), reference.document_view(name));
                }
            }
        }
    }
}
