//! Work queues: the room's `queues` toolkit of the room protocol, over the sans-IO engine of
//! `room_apis::queue`, durable in the store's `queues` tree.
//!
//! The room task owns its [`Queues`] (loaded from the store at the room's first queue call, or
//! when its info is asked for) and every mutation of them goes through one method,
//! [`Room::queue_effects`]: it writes the records the engine returns (in order, as
//! `Store::write_queue_records` does), wakes the receivers parked on a queue in which an item became available, in the
//! order they parked, answers those parked on a queue that was removed, and publishes the
//! room's counts to the metrics. A `send` and an `ack` (and `open`, `drain`, `close`, `extend`)
//! are answered once the flush covering their records has completed, so what they report
//! survives `kill -9`; receives and returns are answered at once, their records written and
//! durable at the next flush, since losing one to a crash only delivers an item again. Leases
//! end on a timer of the room's run loop at the engine's next deadline; a lease outstanding
//! when the server stopped ends after restart at its time, and its item is delivered again.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use roomd_room_apis::queue::{
    self, Config, Delivery, Effects, Key, QueueError, Queues, Record, Returned,
};
use roomd_room_apis::scope::QueuesGrant;
use roomd_sync::room_protocol::{Content, ErrorCode};
use roomd_sync::ConnId;
use serde_json::{json, Map, Value};
use tokio::time::{Duration, Instant};

use super::Room;
use crate::store::{now_ms, WriteSeq};

/// Queues of one room, dead-letter queues included, at most.
pub const QUEUES_PER_ROOM_MAX: usize = 256;
/// Items one queue holds (waiting, leased and held dead), at most.
pub const ITEMS_PER_QUEUE_MAX: usize = 100_000;
/// Bytes of a message's JSON text, at most.
pub const MESSAGE_BYTES_MAX: usize = 256 << 10;
/// Bytes of messages (their JSON text) one room's queues hold together, at most: what bounds
/// their memory, whatever the counts allow.
pub const QUEUE_BYTES_PER_ROOM_MAX: usize = 64 << 20;
/// Deliveries after which a returned item is dead-lettered.
pub const ATTEMPTS_DEFAULT: u32 = 5;
/// Receivers one connection may have parked at once, at most.
pub const WAITERS_PER_CONN_MAX: usize = 64;
/// Receivers parked in one room at once, at most.
pub const WAITERS_PER_ROOM_MAX: usize = 4096;
/// The longest a receiver waits for an item (and what `wait: true` waits).
pub const WAIT_MAX_MS: u64 = 30_000;
/// The longest lease.
pub const LEASE_MAX_MS: u64 = 12 * 3600 * 1000;
/// The lease of `lease: true`.
pub const LEASE_DEFAULT_MS: u64 = 30_000;

const _: () = assert!(WAITERS_PER_CONN_MAX <= WAITERS_PER_ROOM_MAX);
const _: () = assert!(LEASE_DEFAULT_MS <= LEASE_MAX_MS);
const _: () = assert!(MESSAGE_BYTES_MAX <= QUEUE_BYTES_PER_ROOM_MAX);

/// The engine's bounds in a room.
fn engine_config() -> Config {
    Config {
        max_queues: QUEUES_PER_ROOM_MAX,
        max_items_per_queue: ITEMS_PER_QUEUE_MAX,
        max_message_bytes: MESSAGE_BYTES_MAX,
        max_total_bytes: QUEUE_BYTES_PER_ROOM_MAX,
        max_attempts: ATTEMPTS_DEFAULT,
        ..Config::default()
    }
}

/// What writing a mutation's records came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Persisted {
    /// Nothing to write.
    Nothing,
    /// Written; durable once this write is.
    Written(WriteSeq),
    /// The store refused; the change is not durable.
    Failed,
}

/// When a call that wrote records is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Once the flush covering the records has completed: what the answer reports must
    /// survive a crash (a sent item, a queue made or emptied, a lease's new end).
    Durable,
    /// At once, the records written: a crash before the flush can only deliver an item again
    /// (a receive's removal or lease, a return), never lose one.
    Written,
}

/// A receiver parked on an empty queue.
#[derive(Debug)]
struct Waiter {
    conn: ConnId,
    /// The id of its `room.invoke_tool`, which the answer goes under.
    id: u64,
    queue: String,
    /// Who receives, to the engine (the participant's id).
    consumer: String,
    lease_ms: Option<u64>,
    deadline: Instant,
}

/// A room's queues and the receivers parked on them.
#[derive(Debug, Default)]
pub(super) struct RoomQueues {
    /// `None` until loaded from the store.
    engine: Option<Queues>,
    /// Parked receivers by arrival.
    parked: BTreeMap<u64, Waiter>,
    /// Parked receivers of each queue, in arrival order.
    by_queue: HashMap<String, VecDeque<u64>>,
    /// Parked receivers by the end of their wait.
    deadlines: BTreeSet<(Instant, u64)>,
    /// Parked receivers of each connection.
    per_conn: HashMap<ConnId, usize>,
    next_waiter: u64,
    /// The room's counts, as the metrics read them.
    gauge: Option<std::sync::Arc<crate::metrics::RoomQueueGauge>>,
}

impl RoomQueues {
    fn park(&mut self, w: Waiter) -> Result<(), Content> {
        if self.parked.len() >= WAITERS_PER_ROOM_MAX {
            return Err(Content::error(
                ErrorCode::InvalidState,
                format!("more than {WAITERS_PER_ROOM_MAX} receivers waiting in this room"),
            ));
        }
        let mine = self.per_conn.entry(w.conn).or_default();
        if *mine >= WAITERS_PER_CONN_MAX {
            return Err(Content::error(
                ErrorCode::InvalidState,
                format!("more than {WAITERS_PER_CONN_MAX} receivers waiting on this connection"),
            ));
        }
        *mine += 1;
        let wid = self.next_waiter;
        self.next_waiter += 1;
        self.by_queue
            .entry(w.queue.clone())
            .or_default()
            .push_back(wid);
        self.deadlines.insert((w.deadline, wid));
        self.parked.insert(wid, w);
        Ok(())
    }

    fn unpark(&mut self, wid: u64) -> Option<Waiter> {
        let w = self.parked.remove(&wid)?;
        self.deadlines.remove(&(w.deadline, wid));
        if let Some(q) = self.by_queue.get_mut(&w.queue) {
            q.retain(|&x| x != wid);
            if q.is_empty() {
                self.by_queue.remove(&w.queue);
            }
        }
        if let Some(n) = self.per_conn.get_mut(&w.conn) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_conn.remove(&w.conn);
            }
        }
        Some(w)
    }

    /// The receiver parked first on `queue`.
    fn first_on(&self, queue: &str) -> Option<u64> {
        self.by_queue.get(queue).and_then(|q| q.front().copied())
    }

    /// The receivers parked on `queue`.
    fn all_on(&self, queue: &str) -> Vec<u64> {
        self.by_queue
            .get(queue)
            .map(|q| q.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// The tools of the toolkit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    List,
    Open,
    Send,
    Receive,
    Ack,
    Nack,
    Extend,
    Drain,
    Close,
}

impl Tool {
    fn parse(tool: &str) -> Option<Tool> {
        Some(match tool {
            "list" => Tool::List,
            "open" => Tool::Open,
            "send" => Tool::Send,
            "receive" => Tool::Receive,
            "ack" => Tool::Ack,
            "nack" => Tool::Nack,
            "extend" => Tool::Extend,
            "drain" => Tool::Drain,
            "close" => Tool::Close,
            _ => return None,
        })
    }
}

fn invalid(m: impl Into<String>) -> Content {
    Content::error(ErrorCode::InvalidRequest, m)
}

fn denied(m: impl Into<String>) -> Content {
    Content::error(ErrorCode::PermissionDenied, m)
}

/// The answer for an engine's refusal.
fn refused(e: &QueueError) -> Content {
    let code = match e {
        QueueError::NameLength
        | QueueError::NameControl
        | QueueError::MessageTooLarge { .. }
        | QueueError::SelfDeadLetter => ErrorCode::InvalidRequest,
        QueueError::NoSuchQueue(_) | QueueError::UnknownReceipt(_) => ErrorCode::NotFound,
        QueueError::TooManyQueues { .. }
        | QueueError::QueueFull { .. }
        | QueueError::TooManyBytes { .. }
        | QueueError::LeaseExpired(_) => ErrorCode::InvalidState,
        QueueError::Corrupt(_) => ErrorCode::OperationFailed,
    };
    Content::error(code, e.to_string())
}

fn name_arg(args: &Map<String, Value>) -> Result<&str, Content> {
    let name = match args.get("name") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(invalid("name must be a string")),
        None => return Err(invalid("a queue name is required")),
    };
    queue::validate_name(name).map_err(|e| invalid(e.to_string()))?;
    Ok(name)
}

fn bool_arg(args: &Map<String, Value>, name: &str, default: bool) -> Result<bool, Content> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(invalid(format!("{name} must be true or false"))),
    }
}

/// A whole number of milliseconds from `min` to `max`, if given.
fn ms_arg(
    args: &Map<String, Value>,
    name: &str,
    min: u64,
    max: u64,
) -> Result<Option<u64>, Content> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(ms) if (min..=max).contains(&ms) => Ok(Some(ms)),
            _ => Err(invalid(format!(
                "{name} must be a whole number of milliseconds from {min} to {max}"
            ))),
        },
    }
}

fn receipt_arg(args: &Map<String, Value>) -> Result<u64, Content> {
    args.get("receipt")
        .and_then(Value::as_u64)
        .ok_or_else(|| invalid("receipt must be the number a leased receive answered"))
}

/// The lease a `receive` asks for: `lease_ms`, or `lease: true` (the default lease).
fn lease_arg(args: &Map<String, Value>) -> Result<Option<u64>, Content> {
    let ms = ms_arg(args, "lease_ms", 1, LEASE_MAX_MS)?;
    let flag = bool_arg(args, "lease", false)?;
    Ok(ms.or(flag.then_some(LEASE_DEFAULT_MS)))
}

/// What a receive answers: the message alone, as the stock SDK reads it, or, for a leased
/// receive, the message with its lease.
fn delivery_content(d: Delivery) -> Content {
    match d.receipt {
        None => Content::Json(d.item.message),
        Some(receipt) => Content::Json(json!({
            "queue": d.queue,
            "seq": d.item.seq,
            "message": d.item.message,
            "receipt": receipt,
            "attempts": d.item.attempts,
        })),
    }
}

fn returned_json(r: &Returned) -> Value {
    match r {
        Returned::Waiting => json!({ "returned": "waiting" }),
        Returned::DeadLettered { queue, seq } => {
            json!({ "returned": "dead_lettered", "dead_letter_queue": queue, "dead_letter_seq": seq })
        }
        Returned::HeldDead => json!({ "returned": "held_dead" }),
    }
}

/// Turns a wall-clock time in ms since the epoch into an instant of the runtime's clock (a
/// millisecond late, so that the engine, reading the wall clock, sees the time as passed).
fn instant_at(at_ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(at_ms.saturating_sub(now_ms()).saturating_add(1))
}

impl Room {
    /// A call of the `queues` toolkit by `conn`, whose token grants `grant` and whose
    /// participant is `consumer`.
    pub(super) async fn queues_tool(
        &mut self,
        conn: ConnId,
        id: u64,
        tool: &str,
        arguments: &Content,
        grant: Option<QueuesGrant>,
        consumer: String,
    ) -> Result<Option<Content>, Content> {
        let Some(tool) = Tool::parse(tool) else {
            return Err(Content::error(
                ErrorCode::NotFound,
                format!("no tool {tool} in toolkit queues"),
            ));
        };
        let grant = grant.ok_or_else(|| denied("the token has no queues grant"))?;
        let empty = Map::new();
        let args = match arguments {
            Content::Json(Value::Object(args)) => args,
            Content::Empty => &empty,
            _ => return Err(invalid("the queues toolkit takes JSON arguments")),
        };
        // What the grant says is checked before the queues are read.
        match tool {
            Tool::List if !grant.list => {
                return Err(denied("the token's queues grant does not allow listing"))
            }
            Tool::Send | Tool::Receive | Tool::Open | Tool::Drain | Tool::Close => {
                let name = name_arg(args)?;
                let (send, receive) = (grant.can_send(name), grant.can_receive(name));
                let allowed = match tool {
                    Tool::Send => send,
                    Tool::Receive | Tool::Drain => receive,
                    Tool::Open => send || receive,
                    _ => send && receive,
                };
                if !allowed {
                    return Err(denied(format!(
                        "the token's queues grant does not allow {} on queue {name}",
                        match tool {
                            Tool::Send => "send",
                            Tool::Receive => "receive",
                            Tool::Drain => "drain",
                            Tool::Open => "open",
                            _ => "close",
                        }
                    )));
                }
            }
            _ => {}
        }
        self.load_queues().await?;
        let now = now_ms();
        match tool {
            Tool::List => {
                let queues: Vec<Value> = self
                    .engine()?
                    .list()
                    .into_iter()
                    .map(|q| json!({ "name": q.name, "size": q.size }))
                    .collect();
                Ok(Some(Content::Json(json!({ "queues": queues }))))
            }
            Tool::Open => {
                let effects = self
                    .engine()?
                    .open(name_arg(args)?)
                    .map_err(|e| refused(&e))?;
                let persisted = self.queue_effects(effects);
                Ok(self.answer_after(conn, id, Content::Empty, persisted, Answer::Durable))
            }
            Tool::Send => {
                let name = name_arg(args)?;
                let create = bool_arg(args, "create", true)?;
                // A null message would come back as a receive that found nothing.
                let message = args
                    .get("message")
                    .filter(|m| !m.is_null())
                    .cloned()
                    .ok_or_else(|| invalid("send needs a message, not null"))?;
                let sent = self
                    .engine()?
                    .send(name, message, create, now)
                    .map_err(|e| refused(&e))?;
                let persisted = self.queue_effects(sent.effects);
                Ok(self.answer_after(conn, id, Content::Empty, persisted, Answer::Durable))
            }
            Tool::Receive => self.queue_receive(conn, id, args, consumer, now),
            Tool::Ack | Tool::Nack | Tool::Extend => {
                let receipt = receipt_arg(args)?;
                let lease_ms = match tool {
                    Tool::Extend => ms_arg(args, "lease_ms", 1, LEASE_MAX_MS)?
                        .ok_or_else(|| invalid("extend needs lease_ms"))?,
                    _ => 0,
                };
                let engine = self.engine()?;
                let Some(queue) = engine.lease_queue(receipt) else {
                    return Err(refused(&QueueError::UnknownReceipt(receipt)));
                };
                if !grant.can_receive(queue) {
                    return Err(denied(format!(
                        "the token's queues grant does not allow receive on queue {queue}"
                    )));
                }
                let (answer, effects) = match tool {
                    Tool::Ack => {
                        let acked = engine.ack(receipt, now).map_err(|e| refused(&e))?;
                        (Content::Empty, acked.effects)
                    }
                    Tool::Nack => {
                        let nacked = engine.nack(receipt, now).map_err(|e| refused(&e))?;
                        (Content::Json(returned_json(&nacked.value)), nacked.effects)
                    }
                    _ => {
                        let extended = engine
                            .extend(receipt, lease_ms, now)
                            .map_err(|e| refused(&e))?;
                        let until = json!({ "until_ms": extended.value });
                        (Content::Json(until), extended.effects)
                    }
                };
                let persisted = self.queue_effects(effects);
                // An acknowledged item is never delivered again, and a lease is never shorter
                // than the one answered; a return lost to a crash only delivers its item again.
                let when = match tool {
                    Tool::Ack | Tool::Extend => Answer::Durable,
                    _ => Answer::Written,
                };
                Ok(self.answer_after(conn, id, answer, persisted, when))
            }
            Tool::Drain | Tool::Close => {
                let name = name_arg(args)?;
                let engine = self.engine()?;
                let outcome = if tool == Tool::Drain {
                    engine.drain(name)
                } else {
                    engine.close(name)
                };
                let effects = outcome.map_err(|e| refused(&e))?.effects;
                let persisted = self.queue_effects(effects);
                Ok(self.answer_after(conn, id, Content::Empty, persisted, Answer::Durable))
            }
        }
    }

    /// `receive {name, create, wait, wait_ms, lease_ms | lease}`.
    fn queue_receive(
        &mut self,
        conn: ConnId,
        id: u64,
        args: &Map<String, Value>,
        consumer: String,
        now: u64,
    ) -> Result<Option<Content>, Content> {
        let name = name_arg(args)?;
        let create = bool_arg(args, "create", true)?;
        let wait = bool_arg(args, "wait", true)?;
        let wait_ms = ms_arg(args, "wait_ms", 0, WAIT_MAX_MS)?.unwrap_or(WAIT_MAX_MS);
        let lease_ms = lease_arg(args)?;
        // Leases whose time is up return their items first, to the receivers parked before
        // this one.
        let expired = self.engine()?.expire(now).effects;
        self.queue_effects(expired);
        if !self.engine()?.contains(name) {
            if !create {
                return Err(refused(&QueueError::NoSuchQueue(name.to_owned())));
            }
            let effects = self.engine()?.open(name).map_err(|e| refused(&e))?;
            if self.queue_effects(effects) == Persisted::Failed {
                return Err(not_stored());
            }
        }
        let got = self
            .engine()?
            .receive(name, &consumer, lease_ms, now)
            .map_err(|e| refused(&e))?;
        let persisted = self.queue_effects(got.effects);
        match got.value {
            Some(delivery) => Ok(self.answer_after(
                conn,
                id,
                delivery_content(delivery),
                persisted,
                Answer::Written,
            )),
            None if wait && wait_ms > 0 => {
                let waiter = Waiter {
                    conn,
                    id,
                    queue: name.to_owned(),
                    consumer,
                    lease_ms,
                    deadline: Instant::now() + Duration::from_millis(wait_ms),
                };
                self.queues.park(waiter)?;
                Ok(None)
            }
            None => Ok(Some(Content::Empty)),
        }
    }

    pub(super) fn engine(&mut self) -> Result<&mut Queues, Content> {
        self.queues
            .engine
            .as_mut()
            .ok_or_else(|| Content::error(ErrorCode::OperationFailed, "the queues are not loaded"))
    }

    /// Loads the room's queues from the store, once. Leases that ended while the room was not
    /// loaded end now.
    pub(super) async fn load_queues(&mut self) -> Result<(), Content> {
        if self.queues.engine.is_some() {
            return Ok(());
        }
        let failed = || {
            Content::error(
                ErrorCode::OperationFailed,
                "the room's queues could not be loaded",
            )
        };
        let (store, key) = (self.ctx.store.clone(), self.key.clone());
        let records = tokio::task::spawn_blocking(move || store.queue_records(&key))
            .await
            .map_err(|_| failed())?
            .map_err(|e| {
                tracing::error!(room = %self.name, error = %e, "reading the queues failed");
                failed()
            })?;
        let engine = Queues::restore(engine_config(), records).map_err(|e| {
            tracing::error!(room = %self.name, error = %e, "the stored queues do not restore");
            failed()
        })?;
        let expired = {
            let mut engine = engine;
            let expired = engine.expire(now_ms()).effects;
            self.queues.engine = Some(engine);
            expired
        };
        self.queues.gauge = Some(self.ctx.metrics.queues.register());
        self.queue_effects(expired);
        Ok(())
    }

    /// **The one place every mutation of the room's queues goes through.** Every engine call
    /// that changes them hands its [`Effects`] here, and nothing else writes queue records or
    /// wakes receivers:
    ///
    /// 1. the records are written to the store, in order, and so are those of each
    ///    receive made here for a parked receiver;
    /// 2. receivers parked on a queue named in `effects.ready` are served in the order they
    ///    parked, as long as the queue has an item for them, each answered once its receive's
    ///    records are durable (a receive may return expired leases' items to other queues,
    ///    whose receivers are served in turn);
    /// 3. receivers parked on a queue the records remove are answered `empty`;
    /// 4. the room's counts are published to the metrics.
    ///
    /// What changed is in the records: [`Effects::queues_changed`] names the queues (created,
    /// removed, or an item's state changed), and each record's key the item. Returns how
    /// writing `effects`' own records went, for the caller to answer once durable.
    pub(super) fn queue_effects(&mut self, effects: Effects) -> Persisted {
        let persisted = self.write_queue_records(&effects.records);
        self.queue_docs_note(&effects.records, &effects.drained);
        for record in &effects.records {
            if let Record::Delete(Key::Queue(name)) = record {
                for wid in self.queues.all_on(name) {
                    if let Some(w) = self.queues.unpark(wid) {
                        self.respond_queue(w.conn, w.id, Content::Empty);
                    }
                }
            }
        }
        let mut ready: VecDeque<String> = effects.ready.into();
        while let Some(queue) = ready.pop_front() {
            while let Some(wid) = self.queues.first_on(&queue) {
                let Some(w) = self.queues.parked.get(&wid) else {
                    break;
                };
                let (consumer, lease_ms) = (w.consumer.clone(), w.lease_ms);
                let Some(engine) = self.queues.engine.as_mut() else {
                    break;
                };
                match engine.receive(&queue, &consumer, lease_ms, now_ms()) {
                    Ok(got) => {
                        let written = self.write_queue_records(&got.effects.records);
                        self.queue_docs_note(&got.effects.records, &[]);
                        for q in got.effects.ready {
                            if q != queue && !ready.contains(&q) {
                                ready.push_back(q);
                            }
                        }
                        let Some(delivery) = got.value else {
                            break;
                        };
                        if let Some(w) = self.queues.unpark(wid) {
                            let content = delivery_content(delivery);
                            let when = Answer::Written;
                            if let Some(now) =
                                self.answer_after(w.conn, w.id, content, written, when)
                            {
                                self.respond_queue(w.conn, w.id, now);
                            }
                        }
                    }
                    Err(e) => {
                        // The queue is gone: its receivers are answered as if their wait ended.
                        tracing::debug!(room = %self.name, %queue, error = %e, "parked receive failed");
                        if let Some(w) = self.queues.unpark(wid) {
                            self.respond_queue(w.conn, w.id, Content::Empty);
                        }
                    }
                }
            }
        }
        if let (Some(engine), Some(gauge)) = (&self.queues.engine, &self.queues.gauge) {
            gauge.set(&engine.totals());
        }
        persisted
    }

    /// Writes queue records to the store; only [`Room::queue_effects`] calls it.
    fn write_queue_records(&mut self, records: &[Record]) -> Persisted {
        if records.is_empty() {
            return Persisted::Nothing;
        }
        match self.ctx.store.write_queue_records(&self.key, records) {
            Ok(write) => Persisted::Written(write),
            Err(e) => {
                self.ctx.metrics.storage_errors_total.inc();
                tracing::error!(room = %self.name, error = %e, "writing queue records failed");
                Persisted::Failed
            }
        }
    }

    /// `content` for request `id` of `conn`: returned for the caller to send at once, or
    /// sent once durable when `when` asks for that and something was written; an error if the
    /// write failed.
    fn answer_after(
        &mut self,
        conn: ConnId,
        id: u64,
        content: Content,
        persisted: Persisted,
        when: Answer,
    ) -> Option<Content> {
        match (persisted, when) {
            (Persisted::Failed, _) => Some(not_stored()),
            (Persisted::Written(_), Answer::Durable) => {
                self.answer_when_durable(conn, id, content);
                None
            }
            (Persisted::Nothing | Persisted::Written(_), _) => Some(content),
        }
    }

    /// When the next lease ends or the next parked receiver's wait does.
    pub(super) fn next_queue_timer(&self) -> Option<Instant> {
        let lease = self
            .queues
            .engine
            .as_ref()
            .and_then(Queues::next_deadline)
            .map(instant_at);
        let wait = self.queues.deadlines.first().map(|&(at, _)| at);
        match (lease, wait) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The queue timer: leases that ended return their items (waking receivers), and parked
    /// receivers whose wait is over are answered `empty`.
    pub(super) fn queue_timer(&mut self) {
        if let Some(engine) = self.queues.engine.as_mut() {
            let expired = engine.expire(now_ms());
            if !expired.value.is_empty() {
                self.queue_effects(expired.effects);
            }
        }
        let now = Instant::now();
        while let Some(&(at, wid)) = self.queues.deadlines.first() {
            if at > now {
                break;
            }
            if let Some(w) = self.queues.unpark(wid) {
                self.respond_queue(w.conn, w.id, Content::Empty);
            } else {
                self.queues.deadlines.pop_first();
            }
        }
    }

    /// A connection left: its parked receivers go. (Its leases stay until they end: a
    /// consumer that crashed does not lose the items, which are delivered again then.)
    pub(super) fn queue_conn_gone(&mut self, conn: ConnId) {
        if !self.queues.per_conn.contains_key(&conn) {
            return;
        }
        let mine: Vec<u64> = self
            .queues
            .parked
            .iter()
            .filter(|(_, w)| w.conn == conn)
            .map(|(&wid, _)| wid)
            .collect();
        for wid in mine {
            self.queues.unpark(wid);
        }
    }

    /// Drops the room's queues from memory (the room was deleted; the store's are gone).
    pub(super) fn forget_queues(&mut self) {
        self.queues = RoomQueues::default();
    }

    /// The room unloads: the store folds its queues' journal soon.
    pub(super) fn unload_queues(&self) {
        if self.queues.engine.is_some() {
            self.ctx.store.queues_unloaded(&self.key);
        }
    }

    /// Each queue's counts, loading the queues if need be: the room's info.
    pub(super) async fn queue_stats(&mut self) -> Vec<queue::QueueStats> {
        if self.load_queues().await.is_err() {
            return Vec::new();
        }
        self.queues
            .engine
            .as_ref()
            .map(|e| e.stats(now_ms()))
            .unwrap_or_default()
    }
}

fn not_stored() -> Content {
    Content::error(
        ErrorCode::OperationFailed,
        "the queue could not be stored; try again",
    )
}

/// Each queue's counts as JSON `{name, depth, leased, dead, oldest_age_ms}`.
pub fn stats_json(stats: &[queue::QueueStats]) -> Value {
    Value::Array(
        stats
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "depth": s.depth,
                    "leased": s.leased,
                    "dead": s.dead,
                    "oldest_age_ms": s.oldest_age_ms,
                })
            })
            .collect(),
    )
}

/// The counts of a room's queues read from the store, for a room that is not loaded.
pub fn stored_stats(
    store: &crate::store::Store,
    room: &crate::store::RoomKey,
) -> Result<Vec<queue::QueueStats>, crate::store::StoreError> {
    let records = store.queue_records(room)?;
    let engine = Queues::restore(engine_config(), records)
        .map_err(|e| crate::store::StoreError::Corrupt(e.to_string()))?;
    Ok(engine.stats(now_ms()))
}
