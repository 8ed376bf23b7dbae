//! Threads: the `threads` toolkit of the room protocol and its REST twin, and the index
//! document the room keeps of each directory's threads.
//!
//! A thread is a MeshDocument at a path ending in `.thread` (the builtin `thread` schema, under
//! the rules of `room_apis::rules`). The toolkit's edits are made on a participant's behalf:
//! built as updates of a Yjs client of the server's own on a replica of the thread it keeps
//! while the thread is loaded, then applied like any client's, through the same rules, with the
//! participant as the principal. The index of the
//! directory `dir` is `.threads/<dir>/index.thread_list` (`.threads/index.thread_list` for the
//! room's top level), a document only the server writes (the `thread_list` schema: one `thread`
//! per thread, with `name`, `path`, `created_at`, `modified_at`); it follows every thread's
//! creation, its changes (at most one index write per second) and its deletion.

use std::collections::HashMap;
use std::sync::Arc;

use roomd_crdt::{MeshError, Replica};
use roomd_sync::{CloseCode, Principal};
use serde_json::{json, Map, Value};
use tokio::time::{Duration, Instant};

use super::rest::RestError;
use super::Room;
use crate::store::WriteSeq;

/// The longest an index waits to show a thread's change.
const INDEX_DELAY: Duration = Duration::from_secs(1);
/// Messages one `read` returns, at most.
const PAGE_MAX: usize = 500;
/// Messages one `read` returns when it does not say.
const PAGE_DEFAULT: usize = 50;
/// Bytes of a message's text, at most.
const TEXT_BYTES_MAX: usize = 256 << 10;
/// Threads the index waits to show at once, at most; past it the index is written at once.
const PENDING_MAX: usize = 1024;

/// Why a thread call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThreadError {
    /// The arguments are wrong.
    Invalid(String),
    /// No such thread or message.
    NotFound(String),
    /// The thread exists.
    Exists(String),
    /// The participant may not do this (a grant, or a rule of the thread).
    Forbidden(String),
    /// The room cannot take it now.
    Unavailable(String),
    /// The server failed.
    Internal,
}

impl std::fmt::Display for ThreadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ThreadError::Invalid(m)
            | ThreadError::NotFound(m)
            | ThreadError::Exists(m)
            | ThreadError::Forbidden(m)
            | ThreadError::Unavailable(m) => f.write_str(m),
            ThreadError::Internal => f.write_str("the room could not complete the request"),
        }
    }
}

impl From<RestError> for ThreadError {
    fn from(e: RestError) -> ThreadError {
        match e {
            RestError::NotFound => ThreadError::NotFound("no such thread".into()),
            RestError::Invalid(m) | RestError::TooLarge(m) => ThreadError::Invalid(m),
            RestError::Forbidden(m) => ThreadError::Forbidden(m),
            RestError::Unavailable(m) => ThreadError::Unavailable(m),
            RestError::Internal => ThreadError::Internal,
        }
    }
}

/// What a call needs to be allowed: the document it reads or writes, and whether it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needs {
    /// The document.
    pub doc: String,
    /// It writes the document.
    pub writes: bool,
}

fn str_arg<'a>(args: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, ThreadError> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ThreadError::Invalid(format!("{name} must be a string"))),
    }
}

fn required<'a>(args: &'a Map<String, Value>, name: &str) -> Result<&'a str, ThreadError> {
    str_arg(args, name)?.ok_or_else(|| ThreadError::Invalid(format!("{name} is required")))
}

fn count_arg(args: &Map<String, Value>, name: &str, default: usize) -> Result<usize, ThreadError> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| ThreadError::Invalid(format!("{name} must be a non-negative integer"))),
    }
}

/// A thread's path, checked: a document name ending in `.thread`, not reserved.
fn thread_path(args: &Map<String, Value>) -> Result<String, ThreadError> {
    let path = roomd_room_apis::normalize_doc_path(required(args, "path")?);
    crate::http::check_doc_name(path).map_err(ThreadError::Invalid)?;
    if !path.ends_with(".thread") || path.rsplit('/').next() == Some(".thread") {
        return Err(ThreadError::Invalid(format!(
            "a thread's path ends in .thread: {path}"
        )));
    }
    if crate::http::is_reserved(path) {
        return Err(ThreadError::Invalid(format!("{path} is reserved")));
    }
    Ok(path.to_string())
}

/// The directory argument of `list`: a path without leading or trailing `/`.
fn directory_arg(args: &Map<String, Value>) -> Result<String, ThreadError> {
    let dir = str_arg(args, "directory")?.unwrap_or("").trim_matches('/');
    if !dir.is_empty() {
        crate::http::check_doc_name(dir).map_err(ThreadError::Invalid)?;
    }
    Ok(dir.to_string())
}

/// The index document of the directory `dir` (empty: the top level).
pub fn index_of_dir(dir: &str) -> String {
    if dir.is_empty() {
        ".threads/index.thread_list".into()
    } else {
        format!(".threads/{dir}/index.thread_list")
    }
}

/// The index document that lists the thread at `path`.
pub fn index_of(path: &str) -> String {
    index_of_dir(path.rsplit_once('/').map_or("", |(dir, _)| dir))
}

/// True for the path of an index document.
pub fn is_index(path: &str) -> bool {
    path.starts_with(".threads/") && path.ends_with("/index.thread_list")
        || path == ".threads/index.thread_list"
}

/// True for the path of a thread.
pub fn is_thread(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .and_then(|last| last.rsplit_once('.'))
        .is_some_and(|(_, ext)| ext == "thread")
}

/// What the call `tool` with `args` needs.
pub fn needs(tool: &str, args: &Map<String, Value>) -> Result<Needs, ThreadError> {
    match tool {
        "list" => Ok(Needs {
            doc: index_of_dir(&directory_arg(args)?),
            writes: false,
        }),
        "read" => Ok(Needs {
            doc: thread_path(args)?,
            writes: false,
        }),
        "create" | "post" | "edit" | "delete" => Ok(Needs {
            doc: thread_path(args)?,
            writes: true,
        }),
        _ => Err(ThreadError::NotFound(format!(
            "no tool {tool} in toolkit threads"
        ))),
    }
}

fn now_iso() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A Yjs client id for one edit made on a participant's behalf.
fn edit_client() -> u64 {
    u64::from(u32::from_le_bytes(crate::master_key::random_bytes()))
}

fn thread_schema() -> &'static Value {
    static SCHEMA: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| roomd_room_apis::schema::builtin("thread").unwrap_or_default())
}

fn children_of(tag: &str) -> Option<String> {
    roomd_room_apis::schema::child_property(thread_schema(), tag)
}

/// Threads changed since the index last showed them, and when it is to.
#[derive(Debug, Default)]
pub struct ThreadIndex {
    /// By thread: whether it is new, or gone.
    pending: HashMap<Arc<str>, Touch>,
    /// When the pending changes are written.
    pub due: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Touch {
    Created,
    Modified,
    Deleted,
}

impl Room {
    /// Notes that thread `doc` was written (`created`: for the first time): its index shows
    /// it within [`INDEX_DELAY`].
    pub(super) fn thread_touched(&mut self, doc: &Arc<str>, created: bool) {
        let touch = if created {
            Touch::Created
        } else {
            Touch::Modified
        };
        let entry = self.threads.pending.entry(doc.clone()).or_insert(touch);
        if created {
            *entry = Touch::Created;
        }
        self.threads
            .due
            .get_or_insert_with(|| Instant::now() + INDEX_DELAY);
        if self.threads.pending.len() >= PENDING_MAX {
            self.threads.due = Some(Instant::now());
        }
    }

    /// Notes that thread `doc` was deleted.
    pub(super) fn thread_deleted(&mut self, doc: &Arc<str>) {
        self.threads.pending.insert(doc.clone(), Touch::Deleted);
        self.threads.due = Some(Instant::now());
    }

    /// Writes what the indexes are to show of the threads changed since the last time.
    pub(super) async fn flush_thread_index(&mut self) {
        self.threads.due = None;
        let pending = std::mem::take(&mut self.threads.pending);
        let now = now_iso();
        let mut by_index: HashMap<String, Vec<(Arc<str>, Touch)>> = HashMap::new();
        for (doc, touch) in pending {
            by_index
                .entry(index_of(&doc))
                .or_default()
                .push((doc, touch));
        }
        for (index, threads) in by_index {
            let name: Arc<str> = index.as_str().into();
            let d = match self.doc_for_rest(&name, true).await {
                Ok(Some(d)) => d,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(room = %self.name, %index, error = %e, "thread index not written");
                    continue;
                }
            };
            let mut out = Vec::new();
            for (doc, touch) in threads {
                let update = match touch {
                    Touch::Deleted => d
                        .session
                        .doc_mut()
                        .author_xml_remove("thread", "path", &doc),
                    Touch::Created | Touch::Modified => {
                        let stem = doc.rsplit('/').next().unwrap_or(&doc);
                        let stem = stem.strip_suffix(".thread").unwrap_or(stem);
                        let mut attrs = vec![
                            ("name", Value::String(stem.to_string())),
                            ("modified_at", Value::String(now.clone())),
                        ];
                        if touch == Touch::Created {
                            attrs.push(("created_at", Value::String(now.clone())));
                        }
                        d.session.doc_mut().author_xml_upsert(
                            "thread",
                            "path",
                            &doc,
                            &attrs,
                            &mut new_id,
                        )
                    }
                };
                if let Some(update) = update {
                    d.session.publish(update, &mut out);
                }
            }
            self.carry_out(&name, out);
        }
    }

    /// Runs the threads tool `tool` with `args` for `who`, whose access to the document
    /// [`needs`] names the caller has checked. Answers the result and the write to wait for
    /// before telling the caller.
    pub(super) async fn thread_call(
        &mut self,
        who: &Principal,
        tool: &str,
        args: &Map<String, Value>,
    ) -> Result<(Value, Option<WriteSeq>), ThreadError> {
        match tool {
            "list" => {
                if !self.threads.pending.is_empty() {
                    self.flush_thread_index().await;
                }
                let index: Arc<str> = index_of_dir(&directory_arg(args)?).into();
                let entries = match self.doc_for_rest(&index, false).await? {
                    Some(d) if !d.new => {
                        let list = |t: &str| (t == "thread_list").then(|| "threads".to_string());
                        d.session.doc().mesh_json("thread_list", &list)["thread_list"]["threads"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default()
                    }
                    _ => Vec::new(),
                };
                let threads: Vec<Value> = entries
                    .into_iter()
                    .filter_map(|e| e.get("thread").cloned())
                    .collect();
                Ok((json!({ "threads": threads }), None))
            }
            "create" => self.thread_create(who, args).await,
            "post" => self.thread_post(who, args).await,
            "edit" => {
                let text = required(args, "text")?;
                check_text(text)?;
                let mut attrs = Map::new();
                attrs.insert("text".into(), Value::String(text.into()));
                self.thread_edit(who, args, Edit::Set(attrs)).await
            }
            "delete" => self.thread_edit(who, args, Edit::Remove).await,
            "read" => {
                let path: Arc<str> = thread_path(args)?.into();
                let offset = count_arg(args, "offset", 0)?;
                let limit = count_arg(args, "limit", PAGE_DEFAULT)?.min(PAGE_MAX);
                let d = self.existing_thread(&path).await?;
                let (messages, total) = d
                    .session
                    .doc()
                    .mesh_page("messages", offset, limit, &children_of)
                    .unwrap_or_default();
                Ok((
                    json!({ "messages": messages, "offset": offset, "total": total }),
                    None,
                ))
            }
            _ => Err(ThreadError::NotFound(format!(
                "no tool {tool} in toolkit threads"
            ))),
        }
    }

    async fn existing_thread(
        &mut self,
        path: &Arc<str>,
    ) -> Result<&mut super::DocState, ThreadError> {
        match self.doc_for_rest(path, false).await? {
            Some(d) if !d.new => Ok(d),
            _ => Err(ThreadError::NotFound(format!("no thread at {path}"))),
        }
    }

    /// Applies an edit made on `who`'s behalf to `doc`, through its rules.
    fn apply_for(
        &mut self,
        doc: &Arc<str>,
        who: &Principal,
        update: &[u8],
    ) -> Result<Option<WriteSeq>, ThreadError> {
        let Some(d) = self.docs.get_mut(doc) else {
            return Err(ThreadError::Internal);
        };
        let mut out = Vec::new();
        let applied = d.session.apply_external(who, update, &mut out);
        if applied.is_err() {
            d.replica = None;
        }
        match applied {
            Ok(_) => Ok(self.carry_out(doc, out)),
            Err((CloseCode::Forbidden, rule)) => {
                let participant = crate::events::EventParticipant {
                    id: String::new(),
                    name: who.name.to_string(),
                };
                self.refused(doc, Some(&participant), Some(&rule));
                Err(ThreadError::Forbidden(rule))
            }
            Err((CloseCode::TooLarge, reason)) => Err(ThreadError::Invalid(reason)),
            Err((_, reason)) => {
                tracing::error!(room = %self.name, %doc, %reason, "a thread edit failed");
                Err(ThreadError::Internal)
            }
        }
    }

    async fn thread_create(
        &mut self,
        who: &Principal,
        args: &Map<String, Value>,
    ) -> Result<(Value, Option<WriteSeq>), ThreadError> {
        let path: Arc<str> = thread_path(args)?.into();
        let exists = || ThreadError::Exists(format!("a thread exists at {path}"));
        let d = match self.doc_for_rest(&path, true).await? {
            Some(d) if d.new => d,
            _ => return Err(exists()),
        };
        let update = d
            .session
            .doc()
            .mesh_init(edit_client(), &["members", "messages"], &mut new_id)
            .ok_or_else(exists)?;
        let written = self.apply_for(&path, who, &update)?;
        self.thread_touched(&path, true);
        self.flush_thread_index().await;
        Ok((json!({ "path": &*path }), written))
    }

    async fn thread_post(
        &mut self,
        who: &Principal,
        args: &Map<String, Value>,
    ) -> Result<(Value, Option<WriteSeq>), ThreadError> {
        let path: Arc<str> = thread_path(args)?.into();
        let text = required(args, "text")?;
        check_text(text)?;
        let id = match str_arg(args, "id")? {
            Some(id) if !id.is_empty() && id.len() <= 128 => id.to_string(),
            Some(_) => return Err(ThreadError::Invalid("id must be 1 to 128 bytes".into())),
            None => new_id(),
        };
        let created_at = now_iso();
        let mut message = Map::new();
        message.insert("$id".into(), Value::String(id.clone()));
        message.insert("id".into(), Value::String(id.clone()));
        message.insert("text".into(), Value::String(text.into()));
        message.insert("created_at".into(), Value::String(created_at.clone()));
        message.insert("author_name".into(), Value::String(who.name.to_string()));
        if let Some(role) = str_arg(args, "role")? {
            message.insert("role".into(), Value::String(role.into()));
        }
        if let Some(turn) = str_arg(args, "turn_id")? {
            message.insert("turn_id".into(), Value::String(turn.into()));
        }
        match args.get("attachments") {
            None | Some(Value::Null) => {}
            Some(Value::Array(a)) => {
                message.insert("attachments".into(), Value::Array(a.clone()));
            }
            Some(_) => {
                return Err(ThreadError::Invalid(
                    "attachments must be a list of Document-JSON elements".into(),
                ))
            }
        }
        let element = json!({ "message": message });
        let d = self.existing_thread(&path).await?;
        if d.session
            .doc()
            .mesh_get("messages", &id, &children_of)
            .is_some()
        {
            return Err(ThreadError::Exists(format!("a message {id} exists")));
        }
        let update = edit_on_replica(d, |r| {
            r.mesh_append("messages", &[element], &children_of, &mut new_id)
        })
        .map_err(|e| ThreadError::Invalid(e.to_string()))?;
        let written = self.apply_for(&path, who, &update)?;
        Ok((json!({ "id": id, "created_at": created_at }), written))
    }

    async fn thread_edit(
        &mut self,
        who: &Principal,
        args: &Map<String, Value>,
        edit: Edit,
    ) -> Result<(Value, Option<WriteSeq>), ThreadError> {
        let path: Arc<str> = thread_path(args)?.into();
        let id = required(args, "id")?.to_string();
        let d = self.existing_thread(&path).await?;
        let made = edit_on_replica(d, |r| match &edit {
            Edit::Set(attrs) => r.mesh_set("messages", &id, attrs),
            Edit::Remove => r.mesh_remove("messages", &id),
        });
        let update = made.map_err(|e| match e {
            MeshError::NoElement(_) | MeshError::NoContainer(_) => {
                ThreadError::NotFound(format!("no message {id} in {path}"))
            }
            MeshError::Invalid => ThreadError::Invalid(e.to_string()),
        })?;
        let written = self.apply_for(&path, who, &update)?;
        Ok((json!({ "id": id }), written))
    }
}

/// The update `edit` makes on the document's replica, caught up first (or made on first use).
/// A replica whose edit failed may hold part of it: it is dropped, as is one whose update the
/// document then refuses ([`Room::apply_for`]).
fn edit_on_replica(
    d: &mut super::DocState,
    edit: impl FnOnce(&mut Replica) -> Result<Vec<u8>, MeshError>,
) -> Result<Vec<u8>, MeshError> {
    let mut replica = match d.replica.take() {
        Some(mut r) => {
            r.catch_up(d.session.doc())?;
            r
        }
        None => Replica::of(d.session.doc(), edit_client()).ok_or(MeshError::Invalid)?,
    };
    let update = edit(&mut replica)?;
    d.replica = Some(replica);
    Ok(update)
}

enum Edit {
    Set(Map<String, Value>),
    Remove,
}

fn check_text(text: &str) -> Result<(), ThreadError> {
    if text.len() > TEXT_BYTES_MAX {
        return Err(ThreadError::Invalid(format!(
            "a message's text is at most {TEXT_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_directory_has_its_index() {
        assert_eq!(index_of("general.thread"), ".threads/index.thread_list");
        assert_eq!(
            index_of("chats/a/b.thread"),
            ".threads/chats/a/index.thread_list"
        );
        assert!(is_index(".threads/index.thread_list"));
        assert!(is_index(".threads/chats/index.thread_list"));
        assert!(!is_index("chats/index.thread_list"));
        assert!(is_thread("chats/b.thread"));
        assert!(!is_thread("chats/b.threads"));
        let args = |v: Value| v.as_object().cloned().unwrap_or_default();
        assert_eq!(
            needs("list", &args(json!({"directory": "/chats/"}))),
            Ok(Needs {
                doc: ".threads/chats/index.thread_list".into(),
                writes: false
            })
        );
        assert!(needs("post", &args(json!({"path": "notes.doc"}))).is_err());
        assert!(needs("post", &args(json!({"path": ".threads/x.thread"}))).is_err());
        assert!(needs("post", &args(json!({"path": 5}))).is_err());
        assert!(needs("nope", &args(json!({}))).is_err());
    }
}
