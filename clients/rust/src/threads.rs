//! Threads: the server's `threads` toolkit, and a thread kept in sync as a document, whose new
//! messages arrive as a stream and to which a message may be posted offline.
//!
//! A thread is a MeshDocument (its `xml` root holds `members`, then `messages`, each item a
//! `message` element with `id`, `text`, `author_name`, `created_at`, …). The server checks
//! every change to it: a message's author is the participant who posts it, and only its author
//! changes it, so [`Thread::post`] names this participant, and a post made offline is checked
//! when it reaches the server.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;
use yrs::types::xml::XmlEvent;
use yrs::types::{Change as YChange, Observable};
use yrs::{Out, ReadTxn, Transact, Xml, XmlElementPrelim, XmlElementRef, XmlFragment, XmlOut};

use crate::error::{Error, Result};
use crate::{Document, OpenOptions, RoomClient};

/// New messages a [`NewMessages`] stream holds for a slow reader, at most.
pub const NEW_MESSAGES_BUFFER: usize = 1024;

/// A thread in its directory's index.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ThreadEntry {
    /// The file name without `.thread`.
    #[serde(default)]
    pub name: String,
    /// The thread's path.
    pub path: String,
    /// When it was created (RFC 3339).
    #[serde(default)]
    pub created_at: String,
    /// When it last changed (RFC 3339).
    #[serde(default)]
    pub modified_at: String,
}

/// A message of a thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its id (its `$id`, or its `id` attribute).
    pub id: String,
    /// Its text.
    pub text: String,
    /// Who wrote it.
    pub author_name: String,
    /// When (RFC 3339), as its author said.
    pub created_at: String,
    /// Its author's role, if given.
    pub role: Option<String>,
}

impl Message {
    fn from_element<T: ReadTxn>(txn: &T, e: &XmlElementRef) -> Option<Message> {
        if &**e.tag() != "message" {
            return None;
        }
        let attr = |k: &str| e.get_attribute(txn, k).map(|v| v.to_string(txn));
        Some(Message {
            id: attr("$id").or_else(|| attr("id")).unwrap_or_default(),
            text: attr("text").unwrap_or_default(),
            author_name: attr("author_name").unwrap_or_default(),
            created_at: attr("created_at").unwrap_or_default(),
            role: attr("role"),
        })
    }

    fn from_json(v: &Value) -> Option<Message> {
        let m = v.get("message")?;
        let s = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
        Some(Message {
            id: s("$id").or_else(|| s("id")).unwrap_or_default(),
            text: s("text").unwrap_or_default(),
            author_name: s("author_name").unwrap_or_default(),
            created_at: s("created_at").unwrap_or_default(),
            role: s("role"),
        })
    }
}

/// A page of a thread's messages ([`RoomClient::read_messages`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The messages, in order.
    pub messages: Vec<Message>,
    /// The index of the first.
    pub offset: usize,
    /// How many the thread holds.
    pub total: usize,
}

/// A message the server posted ([`RoomClient::post_message`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Posted {
    /// Its id.
    pub id: String,
    /// When it was posted (RFC 3339).
    pub created_at: String,
}

impl RoomClient {
    async fn threads_call(&self, tool: &str, args: Value) -> Result<Value> {
        self.call("threads", tool, &args).await
    }

    /// Creates the thread at `path` (ending in `.thread`), empty; fails if a document is there.
    pub async fn create_thread(&self, path: &str) -> Result<()> {
        self.threads_call("create", json!({ "path": path })).await?;
        Ok(())
    }

    /// The threads of `directory` (`""`: the room's top level), from its index.
    pub async fn list_threads(&self, directory: &str) -> Result<Vec<ThreadEntry>> {
        let answer = self
            .threads_call("list", json!({ "directory": directory }))
            .await?;
        Ok(serde_json::from_value(answer["threads"].clone())?)
    }

    /// Posts `text` to the thread at `path` as this participant; answered once durable.
    pub async fn post_message(&self, path: &str, text: &str) -> Result<Posted> {
        let answer = self
            .threads_call("post", json!({ "path": path, "text": text }))
            .await?;
        Ok(serde_json::from_value(answer)?)
    }

    /// Posts `text` to the thread at `path` as this participant under the message id `id`,
    /// unless the thread holds a message `id` already (`None` then): posting again what may
    /// have been posted before, as a worker redoing a job does, posts it once.
    pub async fn post_message_once(
        &self,
        path: &str,
        id: &str,
        text: &str,
    ) -> Result<Option<Posted>> {
        let args = json!({ "path": path, "id": id, "text": text });
        match self.threads_call("post", args).await {
            Ok(answer) => Ok(Some(serde_json::from_value(answer)?)),
            Err(e) if e.code() == Some(crate::ErrorCode::AlreadyExists) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets the text of message `id` (this participant's) of the thread at `path`.
    pub async fn edit_message(&self, path: &str, id: &str, text: &str) -> Result<()> {
        self.threads_call("edit", json!({ "path": path, "id": id, "text": text }))
            .await?;
        Ok(())
    }

    /// Deletes message `id` (this participant's, or any with an admin token).
    pub async fn delete_message(&self, path: &str, id: &str) -> Result<()> {
        self.threads_call("delete", json!({ "path": path, "id": id }))
            .await?;
        Ok(())
    }

    /// Up to `limit` messages of the thread at `path` from index `offset`.
    pub async fn read_messages(&self, path: &str, offset: usize, limit: usize) -> Result<Page> {
        let answer = self
            .threads_call(
                "read",
                json!({ "path": path, "offset": offset, "limit": limit }),
            )
            .await?;
        let messages = answer["messages"]
            .as_array()
            .map(|a| a.iter().filter_map(Message::from_json).collect())
            .unwrap_or_default();
        let count = |k: &str| answer[k].as_u64().unwrap_or(0) as usize;
        Ok(Page {
            messages,
            offset: count("offset"),
            total: count("total"),
        })
    }

    /// Opens the thread at `path` (which must exist) as a document kept in sync.
    pub async fn open_thread(&self, path: &str) -> Result<Thread> {
        let mut options = OpenOptions::new(path);
        options.create = false;
        let doc = self.open_with(options).await?;
        if messages_of(&doc).is_none() {
            return Err(Error::Protocol(format!("{path} holds no messages list")));
        }
        Ok(Thread {
            doc,
            author: self.name(),
        })
    }
}

/// The `messages` element of a thread document.
fn messages_of(doc: &Document) -> Option<XmlElementRef> {
    let xml = doc.doc().get_or_insert_xml_fragment("xml");
    let txn = doc.doc().transact();
    let found = xml.children(&txn).find_map(|n| match n {
        XmlOut::Element(e) if &**e.tag() == "messages" => Some(e),
        _ => None,
    });
    found
}

/// A thread kept in sync ([`RoomClient::open_thread`]).
#[derive(Debug, Clone)]
pub struct Thread {
    doc: Document,
    author: String,
}

impl Thread {
    /// The thread's document.
    pub fn document(&self) -> &Document {
        &self.doc
    }

    /// Its messages, as this client holds them.
    pub fn messages(&self) -> Vec<Message> {
        let Some(list) = messages_of(&self.doc) else {
            return Vec::new();
        };
        let txn = self.doc.doc().transact();
        let messages = list
            .children(&txn)
            .filter_map(|n| match n {
                XmlOut::Element(e) => Message::from_element(&txn, &e),
                _ => None,
            })
            .collect();
        messages
    }

    /// Posts `text` as this participant, in this client's copy of the thread: it is sent when
    /// the client is connected (now, or when the connection comes back) and checked by the
    /// server then; [`Document::durable`] resolves once it is stored. Returns its id.
    pub fn post(&self, text: &str) -> Result<String> {
        let list = messages_of(&self.doc).ok_or(Error::Closed)?;
        let id = new_id();
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let mut txn = self.doc.doc().transact_mut();
        let m = list.push_back(&mut txn, XmlElementPrelim::empty("message"));
        m.insert_attribute(&mut txn, "$id", id.clone());
        m.insert_attribute(&mut txn, "id", id.clone());
        m.insert_attribute(&mut txn, "text", text);
        m.insert_attribute(&mut txn, "author_name", self.author.clone());
        m.insert_attribute(&mut txn, "created_at", now);
        Ok(id)
    }

    /// A stream of the messages added to this client's copy of the thread from now on, by
    /// anyone (this client included), in the order it sees them. A message whose attributes arrive after it (some clients set them in
    /// updates of their own) is given as it was when it arrived.
    pub fn new_messages(&self) -> Result<NewMessages> {
        let list = messages_of(&self.doc).ok_or(Error::Closed)?;
        static KEYS: AtomicU64 = AtomicU64::new(0);
        let key = format!(
            "roomd-new-messages-{}",
            KEYS.fetch_add(1, Ordering::Relaxed)
        );
        let (tx, rx) = broadcast::channel(NEW_MESSAGES_BUFFER);
        list.observe(key.as_str(), move |txn, event: &XmlEvent| {
            for change in event.delta(txn) {
                if let YChange::Added(items) = change {
                    for item in items {
                        if let Out::YXmlElement(e) = item {
                            if let Some(m) = Message::from_element(txn, e) {
                                let _ = tx.send(m);
                            }
                        }
                    }
                }
            }
        });
        Ok(NewMessages {
            rx,
            doc: self.doc.clone(),
            key,
        })
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// New messages of a thread ([`Thread::new_messages`]).
pub struct NewMessages {
    rx: broadcast::Receiver<Message>,
    /// The thread, and the key its observer is registered under.
    doc: Document,
    key: String,
}

impl Drop for NewMessages {
    fn drop(&mut self) {
        if let Some(list) = messages_of(&self.doc) {
            list.unobserve(self.key.as_str());
        }
    }
}

impl std::fmt::Debug for NewMessages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewMessages").finish_non_exhaustive()
    }
}

impl NewMessages {
    /// The next new message. A reader that fell more than [`NEW_MESSAGES_BUFFER`] behind gets
    /// `Err(Error::Lagged(n))` once.
    pub async fn next(&mut self) -> Option<Result<Message>> {
        match self.rx.recv().await {
            Ok(m) => Some(Ok(m)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Err(Error::Lagged(n))),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}
