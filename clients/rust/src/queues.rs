//! Work queues: the server's `queues` toolkit, with its lease extension.
//!
//! A queue holds JSON messages in order. [`Queue::receive`] takes one and completes it at once,
//! as the stock SDKs do; [`Queue::lease`] takes one for a while instead: the item stays the
//! consumer's until [`Queue::ack`] completes it or [`Queue::nack`] returns it, and if neither
//! comes before the lease ends (the consumer crashed, or lost its connection) the server gives
//! it to another consumer. After the queue's attempts are spent an item moves to its dead-letter
//! queue (`<name>.dead`). A [`Queue::send`] returns once the item is durable on the server.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::{Content, RoomClient};

/// A queue and its size ([`RoomClient::list_queues`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct QueueInfo {
    /// Its name.
    pub name: String,
    /// The items waiting in it.
    pub size: u64,
}

/// An item taken with a lease ([`Queue::lease`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Leased {
    /// The queue it came from.
    pub queue: String,
    /// Its place in the queue.
    pub seq: u64,
    /// The message.
    pub message: Value,
    /// What [`Queue::ack`] and [`Queue::nack`] name it by while the lease lasts.
    pub receipt: u64,
    /// How many times it was delivered, this time included.
    pub attempts: u32,
}

/// What became of an item handed back ([`Queue::nack`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returned {
    /// It waits in its queue again, at its place.
    Waiting,
    /// Its attempts are spent: it moved to the dead-letter queue.
    DeadLettered,
    /// Its attempts are spent and it stays in its queue, dead (a dead-letter queue's own item).
    HeldDead,
}

/// A queue of the room ([`RoomClient::queue`]): a name and the client that calls for it.
#[derive(Debug, Clone)]
pub struct Queue {
    client: RoomClient,
    name: String,
}

impl RoomClient {
    /// The queue `name` (it need not exist yet: [`Queue::send`] and [`Queue::lease`] create it).
    pub fn queue(&self, name: &str) -> Queue {
        Queue {
            client: self.clone(),
            name: name.to_string(),
        }
    }

    /// The room's queues and how many items wait in each.
    pub async fn list_queues(&self) -> Result<Vec<QueueInfo>> {
        let answer: Value = self.call("queues", "list", &json!({})).await?;
        Ok(serde_json::from_value(answer["queues"].clone())?)
    }
}

impl Queue {
    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    async fn invoke(&self, tool: &str, args: Value) -> Result<Content> {
        self.client
            .invoke("queues", tool, Content::Json(args))
            .await
    }

    async fn expect_empty(&self, tool: &str, args: Value) -> Result<()> {
        match self.invoke(tool, args).await? {
            Content::Empty => Ok(()),
            other => Err(unexpected(tool, &other)),
        }
    }

    /// Creates the queue if it does not exist.
    pub async fn open(&self) -> Result<()> {
        self.expect_empty("open", json!({ "name": self.name }))
            .await
    }

    /// Appends `message`, creating the queue if need be; returns once the item is durable.
    pub async fn send(&self, message: &Value) -> Result<()> {
        self.expect_empty(
            "send",
            json!({ "name": self.name, "message": message, "create": true }),
        )
        .await
    }

    /// Removes every waiting item.
    pub async fn drain(&self) -> Result<()> {
        self.expect_empty("drain", json!({ "name": self.name }))
            .await
    }

    /// Removes the queue and its items.
    pub async fn close(&self) -> Result<()> {
        self.expect_empty("close", json!({ "name": self.name }))
            .await
    }

    /// Takes the oldest waiting message and completes it, as the stock SDKs receive. With
    /// `wait`, an empty queue is waited on until an item arrives or the server's wait ends
    /// (`None` then, as when the queue is empty without `wait`).
    pub async fn receive(&self, wait: bool) -> Result<Option<Value>> {
        let args = json!({ "name": self.name, "create": true, "wait": wait });
        match self.invoke("receive", args).await? {
            Content::Empty => Ok(None),
            Content::Json(v) => Ok(Some(v)),
            Content::Text(t) => Ok(Some(Value::String(t))),
            other => Err(unexpected("receive", &other)),
        }
    }

    /// Takes the oldest waiting item with a lease of `lease`: it is this consumer's until
    /// acknowledged, handed back, or the lease ends. `wait` as in [`Queue::receive`].
    pub async fn lease(&self, lease: Duration, wait: bool) -> Result<Option<Leased>> {
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        let args = json!({
            "name": self.name, "create": true, "wait": wait, "lease_ms": lease_ms,
        });
        match self.invoke("receive", args).await? {
            Content::Empty => Ok(None),
            Content::Json(v) => Ok(Some(serde_json::from_value(v)?)),
            other => Err(unexpected("receive", &other)),
        }
    }

    /// Completes a leased item. Fails if its lease has ended (it may be another's now).
    pub async fn ack(&self, receipt: u64) -> Result<()> {
        self.expect_empty("ack", json!({ "receipt": receipt }))
            .await
    }

    /// Hands a leased item back before its lease ends.
    pub async fn nack(&self, receipt: u64) -> Result<Returned> {
        let answer = self.invoke("nack", json!({ "receipt": receipt })).await?;
        let Content::Json(v) = &answer else {
            return Err(unexpected("nack", &answer));
        };
        match v["returned"].as_str() {
            Some("waiting") => Ok(Returned::Waiting),
            Some("dead_lettered") => Ok(Returned::DeadLettered),
            Some("held_dead") => Ok(Returned::HeldDead),
            _ => Err(unexpected("nack", &answer)),
        }
    }
}

fn unexpected(tool: &str, answer: &Content) -> Error {
    Error::Protocol(format!("queues.{tool} answered {answer:?}"))
}
