//! Server-side rules of a MeshDocument: what an update may insert (its MeshSchema) and whose
//! elements it may change (ownership), judged on what the update changes, before the document
//! sees it.
//!
//! A MeshDocument keeps its root element in the root type `xml` (an XML element: the root's
//! values are its attributes, its children follow the root's child property); each element is
//! an XML element whose values are attributes and whose children are elements (or XML texts,
//! which schemas do not describe and which hold text only). The rules read an update through a
//! [`Structure`] of the document: every new item is placed under its parent, so each is judged
//! by a lookup or two, however large the document.
//!
//! **Schema.** An element inserted under a parent must have a tag the parent's child property
//! lists; an attribute set on an element must be `$id` (a string) or one of its tag's value
//! properties, of that property's type (`null` always allowed: values are optional); nothing
//! but elements and XML texts go among an element's children; no other root type is written.
//! The number and order of `prefixItems` children are not checked.
//!
//! **Ownership.** Some tags are owned: an element of one belongs to the participant whose
//! update inserted it, and names its owner in a field (`message` in `author_name`, `reaction` in
//! `user_name` in threads), which, whenever it is set, must name that owner (as must a message's
//! `author_ref`, if set and not empty). The stock SDK inserts an element and sets its attributes
//! in separate updates, so the owner is not read from the inserting update's attributes but
//! noted when it is accepted; a document loaded from storage reads its owners from their owner
//! fields, and an owned element whose field was never set belongs to no one. Anything inside an
//! owned element (its attributes, its children and theirs, deleted or inserted) may be changed
//! by its owner only, except that an admin may delete anything. The nearest owned ancestor
//! governs, so anyone may add a reaction of their own to another's message. Container tags
//! (`members`, `messages`) may be deleted by an admin only.

use std::collections::HashMap;
use std::sync::Arc;

use roomd_crdt::structure::{AnyValue, Changes, Kind, Parent, StructContent, Structure};
use roomd_sync::{Principal, UpdateRules};
use serde_json::Value;

/// The root type a MeshDocument keeps its root element in.
pub const ROOT: &str = "xml";

/// How deep the rules follow an item's ancestors, at most; deeper items are refused.
const DEPTH_MAX: usize = 64;

/// A value property's types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueType {
    String,
    Number,
    Boolean,
    Null,
}

impl ValueType {
    fn parse(s: &str) -> Option<ValueType> {
        Some(match s {
            "string" => ValueType::String,
            "number" | "integer" => ValueType::Number,
            "boolean" => ValueType::Boolean,
            "null" => ValueType::Null,
            _ => return None,
        })
    }

    fn fits(self, v: &AnyValue) -> bool {
        matches!(
            (self, v),
            (ValueType::String, AnyValue::String(_))
                | (ValueType::Number, AnyValue::Number(_))
                | (ValueType::Boolean, AnyValue::Bool(_))
        )
    }
}

/// What one tag may hold.
#[derive(Debug, Clone, Default)]
struct ElementRule {
    values: HashMap<String, Vec<ValueType>>,
    /// The tags its child property allows; `None` when it has none.
    children: Option<Vec<String>>,
}

/// A MeshSchema, compiled for judging updates.
#[derive(Debug, Clone)]
pub struct Schema {
    root: String,
    elements: HashMap<String, ElementRule>,
}

fn refs(v: &Value) -> Vec<String> {
    let one = |r: &Value| {
        r.get("$ref")
            .and_then(Value::as_str)
            .and_then(|s| s.strip_prefix("#/$defs/"))
            .map(str::to_string)
    };
    if let Some(list) = v.as_array() {
        return list.iter().filter_map(one).collect();
    }
    if let Some(any) = v.get("anyOf").and_then(Value::as_array) {
        return any.iter().filter_map(one).collect();
    }
    one(v).into_iter().collect()
}

impl Schema {
    /// Compiles a schema in the SDK's JSON form (as [`crate::schema::check`] accepts it).
    pub fn compile(schema: &Value) -> Result<Schema, String> {
        crate::schema::check(schema)?;
        let root = crate::schema::root_tag(schema)
            .ok_or("a schema needs a root tag")?
            .to_string();
        let defs = schema
            .get("$defs")
            .and_then(Value::as_object)
            .ok_or("a schema needs `$defs`")?;
        let mut elements = HashMap::new();
        for (tag, def) in defs {
            let props = def["properties"][tag.as_str()]["properties"]
                .as_object()
                .ok_or_else(|| format!("element {tag} has no properties object"))?;
            let mut rule = ElementRule::default();
            for (name, p) in props {
                let ty = p.get("type");
                if ty.and_then(Value::as_str) == Some("array") {
                    let mut tags = Vec::new();
                    if let Some(prefix) = p.get("prefixItems") {
                        tags.extend(refs(prefix));
                    }
                    if let Some(items) = p.get("items").filter(|i| i.is_object()) {
                        tags.extend(refs(items));
                    }
                    rule.children = Some(tags);
                    continue;
                }
                let types: Vec<ValueType> = match ty {
                    Some(Value::String(s)) => ValueType::parse(s).into_iter().collect(),
                    Some(Value::Array(list)) => list
                        .iter()
                        .filter_map(Value::as_str)
                        .filter_map(ValueType::parse)
                        .collect(),
                    _ => Vec::new(),
                };
                if types.is_empty() {
                    return Err(format!("property {name} of {tag} has no type roomd knows"));
                }
                rule.values.insert(name.clone(), types);
            }
            elements.insert(tag.clone(), rule);
        }
        Ok(Schema { root, elements })
    }

    fn rule(&self, tag: &str) -> Result<&ElementRule, String> {
        self.elements
            .get(tag)
            .ok_or_else(|| format!("the schema has no element {tag}"))
    }
}

/// An owned tag and the field naming its owner.
#[derive(Debug, Clone)]
pub struct Owned {
    /// The tag.
    pub tag: &'static str,
    /// The attribute naming the owner.
    pub field: &'static str,
    /// Another attribute that, when set, must name the owner too.
    pub also: Option<&'static str>,
}

/// Who owns what in a document.
#[derive(Debug, Clone, Default)]
pub struct Ownership {
    /// Owned tags.
    pub owned: Vec<Owned>,
    /// Tags only an admin may delete.
    pub protected: Vec<&'static str>,
}

impl Ownership {
    /// A thread's: messages are their authors', reactions their users'; the `members` and
    /// `messages` lists are kept.
    pub fn thread() -> Ownership {
        Ownership {
            owned: vec![
                Owned {
                    tag: "message",
                    field: "author_name",
                    also: Some("author_ref"),
                },
                Owned {
                    tag: "reaction",
                    field: "user_name",
                    also: None,
                },
            ],
            protected: vec!["members", "messages"],
        }
    }

    fn owned(&self, tag: &str) -> Option<&Owned> {
        self.owned.iter().find(|o| o.tag == tag)
    }
}

/// The rules of one MeshDocument, with what it has noted of the document.
#[derive(Debug, Clone)]
pub struct DocumentRules {
    schema: Arc<Schema>,
    ownership: Arc<Ownership>,
    structure: Structure,
    /// The owner of each owned element, by its id.
    owners: HashMap<(u64, u32), Arc<str>>,
}

/// A type an update inserts, as the rules need it.
struct NewType<'a> {
    kind: Kind,
    parent: Option<&'a Parent>,
}

/// What the rules know of an item that holds a type.
enum TypeItem<'a> {
    Element(&'a str, Option<&'a Parent>),
    Text(Option<&'a Parent>),
    Unknown,
}

impl DocumentRules {
    /// The rules of a document whose whole state `snapshot` encodes (a v1 update; empty for a
    /// new document).
    pub fn new(schema: Arc<Schema>, ownership: Arc<Ownership>, snapshot: &[u8]) -> DocumentRules {
        let mut rules = DocumentRules {
            schema,
            ownership,
            structure: Structure::new(),
            owners: HashMap::new(),
        };
        rules.reset(snapshot);
        rules
    }

    /// A thread's rules: the builtin `thread` schema and [`Ownership::thread`].
    pub fn thread(snapshot: &[u8]) -> DocumentRules {
        static SCHEMA: std::sync::OnceLock<(Arc<Schema>, Arc<Ownership>)> =
            std::sync::OnceLock::new();
        let (schema, ownership) = SCHEMA.get_or_init(|| {
            let json = crate::schema::builtin("thread").unwrap_or_default();
            let schema = Schema::compile(&json).unwrap_or_else(|_| Schema {
                root: "thread".into(),
                elements: HashMap::new(),
            });
            (Arc::new(schema), Arc::new(Ownership::thread()))
        });
        DocumentRules::new(schema.clone(), ownership.clone(), snapshot)
    }

    /// The owner of the element at `id`, as noted.
    pub fn owner(&self, id: (u64, u32)) -> Option<&str> {
        self.owners.get(&id).map(|s| &**s)
    }

    fn type_item<'a>(
        &'a self,
        new: &'a HashMap<(u64, u32), NewType<'a>>,
        id: (u64, u32),
    ) -> TypeItem<'a> {
        if let Some(n) = new.get(&id) {
            return match &n.kind {
                Kind::Element(tag) => TypeItem::Element(tag, n.parent),
                Kind::Type => TypeItem::Text(n.parent),
                Kind::Content => TypeItem::Unknown,
            };
        }
        match self.structure.span_at(id.0, id.1) {
            Some((_, span)) => match &span.kind {
                Kind::Element(tag) => TypeItem::Element(tag, span.parent.as_ref()),
                Kind::Type => TypeItem::Text(span.parent.as_ref()),
                Kind::Content => TypeItem::Unknown,
            },
            None => TypeItem::Unknown,
        }
    }

    /// The nearest owned element at or above `start` (an element's id, or a root), with its
    /// owner as the document or the update names it.
    fn governing<'a>(
        &'a self,
        new: &'a HashMap<(u64, u32), NewType<'a>>,
        new_owners: &'a HashMap<(u64, u32), &'a str>,
        start: Option<&'a Parent>,
    ) -> Result<Option<(&'a str, Option<&'a str>)>, String> {
        let mut at = start;
        for _ in 0..DEPTH_MAX {
            let Some(Parent::Item(c, k)) = at else {
                return Ok(None);
            };
            let id = (*c, *k);
            match self.type_item(new, id) {
                TypeItem::Element(tag, parent) => {
                    if let Some(o) = self.ownership.owned(tag) {
                        let owner = self
                            .owners
                            .get(&id)
                            .map(|s| &**s)
                            .or_else(|| new_owners.get(&id).copied());
                        return Ok(Some((o.tag, owner)));
                    }
                    at = parent;
                }
                TypeItem::Text(parent) => at = parent,
                TypeItem::Unknown => return Ok(None),
            }
        }
        Err(format!("elements nest deeper than {DEPTH_MAX}"))
    }

    fn judge(&self, who: &Principal, changes: &Changes) -> Result<(), String> {
        if changes.unresolved > 0 {
            return Err("the update builds on items this document does not hold".into());
        }
        let new: HashMap<(u64, u32), NewType<'_>> = changes
            .inserted
            .iter()
            .filter(|i| {
                matches!(
                    i.content,
                    StructContent::Element(_) | StructContent::XmlText | StructContent::Type(_)
                )
            })
            .map(|i| {
                let kind = match &i.content {
                    StructContent::Element(tag) => Kind::Element(tag.as_str().into()),
                    _ => Kind::Type,
                };
                let parent = i.parent.as_ref();
                ((i.client, i.clock), NewType { kind, parent })
            })
            .collect();
        // The owned elements the update inserts are the inserting participant's.
        let new_owners: HashMap<(u64, u32), &str> = changes
            .inserted
            .iter()
            .filter(|i| {
                matches!(&i.content, StructContent::Element(tag) if self.ownership.owned(tag).is_some())
            })
            .map(|i| ((i.client, i.clock), &*who.name))
            .collect();
        // Owner fields name the element's owner.
        for i in &changes.inserted {
            let (Some(Parent::Item(c, k)), Some(key)) = (&i.parent, &i.key) else {
                continue;
            };
            let id = (*c, *k);
            let TypeItem::Element(tag, _) = self.type_item(&new, id) else {
                continue;
            };
            let Some(owned) = self.ownership.owned(tag) else {
                continue;
            };
            if &**key != owned.field && Some(&**key) != owned.also {
                continue;
            }
            let owner = self
                .owners
                .get(&id)
                .map(|s| &**s)
                .or_else(|| new_owners.get(&id).copied());
            let value = match &i.content {
                StructContent::Values(v) => match v.as_slice() {
                    [AnyValue::String(s)] => Some(s.as_str()),
                    _ => None,
                },
                _ => None,
            };
            match (value, owner) {
                (Some(v), Some(o)) if v == o => {}
                (Some(""), _) if Some(&**key) == owned.also => {}
                (_, Some(o)) => return Err(format!("{key} of a {tag} must name its author, {o}")),
                (_, None) => return Err(format!("the {tag} has no author to name")),
            }
        }
        for i in &changes.inserted {
            self.check_insert(who, &new, &new_owners, i)?;
        }
        // Deleting a type deletes what it holds: what lies inside an element the update deletes
        // is judged as that element's deletion.
        let mut gone: Vec<(u64, u32, u32)> = changes
            .deleted
            .iter()
            .map(|d| (d.client, d.clock, d.clock.saturating_add(d.len)))
            .collect();
        gone.sort_unstable();
        let is_gone = |(c, k): (u64, u32)| {
            let at = gone.partition_point(|&(gc, gk, _)| (gc, gk) <= (c, k));
            at.checked_sub(1)
                .and_then(|i| gone.get(i))
                .is_some_and(|&(gc, _, end)| gc == c && k < end)
        };
        for d in &changes.deleted {
            if d.parent.is_none() || who.admin {
                continue;
            }
            if self.inside_deleted(&new, d.parent.as_ref(), &is_gone)? {
                continue;
            }
            if let Kind::Element(tag) = &d.kind {
                if self.ownership.protected.contains(&&**tag) {
                    return Err(format!("only an admin deletes the {tag} list"));
                }
                if self.ownership.owned(tag).is_some() {
                    // Each element is a range of one.
                    for clock in d.clock..d.clock.saturating_add(d.len) {
                        let owner = self.owners.get(&(d.client, clock)).map(|s| &**s);
                        if owner != Some(&*who.name) {
                            return Err(format!("only its author deletes a {tag}"));
                        }
                    }
                    continue;
                }
            }
            if let Some((tag, owner)) = self.governing(&new, &new_owners, d.parent.as_ref())? {
                if owner != Some(&*who.name) {
                    return Err(format!("only its author changes a {tag}"));
                }
            }
        }
        Ok(())
    }

    /// True when an element at or above `start` is one the update deletes.
    fn inside_deleted(
        &self,
        new: &HashMap<(u64, u32), NewType<'_>>,
        start: Option<&Parent>,
        is_gone: &dyn Fn((u64, u32)) -> bool,
    ) -> Result<bool, String> {
        let mut at = start;
        for _ in 0..DEPTH_MAX {
            let Some(Parent::Item(c, k)) = at else {
                return Ok(false);
            };
            if is_gone((*c, *k)) {
                return Ok(true);
            }
            at = match self.type_item(new, (*c, *k)) {
                TypeItem::Element(_, parent) | TypeItem::Text(parent) => parent,
                TypeItem::Unknown => return Ok(false),
            };
        }
        Err(format!("elements nest deeper than {DEPTH_MAX}"))
    }

    fn check_insert(
        &self,
        who: &Principal,
        new: &HashMap<(u64, u32), NewType<'_>>,
        new_owners: &HashMap<(u64, u32), &str>,
        i: &roomd_crdt::structure::Inserted,
    ) -> Result<(), String> {
        let Some(parent) = &i.parent else {
            // No parent: the document drops it as garbage.
            return Ok(());
        };
        // The tag whose rule applies.
        let tag: &str = match parent {
            Parent::Root(name) if &**name == ROOT => &self.schema.root,
            Parent::Root(name) => {
                return Err(format!("a MeshDocument keeps nothing in the root {name}"))
            }
            Parent::Item(c, k) => match self.type_item(new, (*c, *k)) {
                TypeItem::Element(tag, _) => tag,
                TypeItem::Text(_) => {
                    // Inside a text: text, formatting and embeds, nothing structured.
                    if matches!(
                        i.content,
                        StructContent::Element(_) | StructContent::XmlText | StructContent::Type(_)
                    ) {
                        return Err("a text holds no elements".into());
                    }
                    return self.check_owner(who, new, new_owners, i);
                }
                TypeItem::Unknown => return Err("the update's parent is not an element".into()),
            },
        };
        let rule = self.schema.rule(tag)?;
        match &i.key {
            Some(key) => {
                let types: &[ValueType] = if &**key == "$id" {
                    &[ValueType::String]
                } else {
                    rule.values
                        .get(&**key)
                        .map(Vec::as_slice)
                        .ok_or_else(|| format!("{tag} has no attribute {key}"))?
                };
                match &i.content {
                    StructContent::Gone => {}
                    StructContent::Values(v) => match v.as_slice() {
                        [AnyValue::Null | AnyValue::Undefined] => {}
                        [v] if types.iter().any(|t| t.fits(v)) => {}
                        _ => {
                            let want: Vec<&str> = types
                                .iter()
                                .filter(|t| **t != ValueType::Null)
                                .map(|t| match t {
                                    ValueType::String => "string",
                                    ValueType::Number => "number",
                                    ValueType::Boolean => "boolean",
                                    ValueType::Null => "null",
                                })
                                .collect();
                            return Err(format!("{key} of {tag} must be a {}", want.join(" or ")));
                        }
                    },
                    _ => return Err(format!("{key} of {tag} must be a value")),
                }
            }
            None => match &i.content {
                StructContent::Gone => {}
                StructContent::Element(child) => {
                    let allowed = rule.children.as_deref().unwrap_or_default();
                    if !allowed.iter().any(|t| t == child) {
                        return Err(format!("{tag} may not hold a {child}"));
                    }
                    self.schema.rule(child)?;
                }
                StructContent::XmlText if rule.children.is_some() => {}
                _ => return Err(format!("{tag} holds only elements")),
            },
        }
        self.check_owner(who, new, new_owners, i)
    }

    /// The item's nearest owned ancestor (or itself, when it is an owned element) is `who`'s.
    fn check_owner(
        &self,
        who: &Principal,
        new: &HashMap<(u64, u32), NewType<'_>>,
        new_owners: &HashMap<(u64, u32), &str>,
        i: &roomd_crdt::structure::Inserted,
    ) -> Result<(), String> {
        if let StructContent::Element(tag) = &i.content {
            if self.ownership.owned(tag).is_some() {
                // A new owned element is its inserter's.
                return Ok(());
            }
        }
        if let Some((tag, owner)) = self.governing(new, new_owners, i.parent.as_ref())? {
            if owner != Some(&*who.name) {
                return Err(format!("only its author changes a {tag}"));
            }
        }
        Ok(())
    }

    /// Notes the owners of the owned elements an accepted update inserts: `who`, when a
    /// participant's update inserts them, else (the server's own edits, a snapshot) the
    /// participant their owner field names.
    fn note_owners(&mut self, who: Option<&Principal>, changes: &Changes) {
        let mut found: Vec<((u64, u32), Arc<str>)> = Vec::new();
        for i in &changes.inserted {
            if let StructContent::Element(tag) = &i.content {
                if let (Some(who), Some(_)) = (who, self.ownership.owned(tag)) {
                    found.push(((i.client, i.clock), who.name.clone()));
                }
            }
        }
        if who.is_none() {
            let tags: HashMap<(u64, u32), &str> = changes
                .inserted
                .iter()
                .filter_map(|i| match &i.content {
                    StructContent::Element(tag) => Some(((i.client, i.clock), tag.as_str())),
                    _ => None,
                })
                .collect();
            for i in &changes.inserted {
                let (Some(Parent::Item(c, k)), Some(key)) = (&i.parent, &i.key) else {
                    continue;
                };
                let id = (*c, *k);
                let tag = match tags.get(&id) {
                    Some(tag) => Some(*tag),
                    None => self.structure.element(id.0, id.1).map(|(t, _)| &**t),
                };
                let field = tag.and_then(|t| self.ownership.owned(t)).map(|o| o.field);
                if field != Some(&**key) {
                    continue;
                }
                if let StructContent::Values(v) = &i.content {
                    if let [AnyValue::String(s)] = v.as_slice() {
                        found.push((id, Arc::<str>::from(s.as_str())));
                    }
                }
            }
        }
        for (id, owner) in found {
            self.owners.entry(id).or_insert(owner);
        }
    }
}

/// The rules of the document at `path`, if its kind has any (a `.thread`), over the state
/// `snapshot` gives (asked for only then).
pub fn for_path(path: &str, snapshot: impl FnOnce() -> Vec<u8>) -> Option<DocumentRules> {
    let last = path.rsplit('/').next().unwrap_or(path);
    match last.rsplit_once('.') {
        Some((_, "thread")) => Some(DocumentRules::thread(&snapshot())),
        _ => None,
    }
}

impl UpdateRules for DocumentRules {
    fn check(&self, who: &Principal, update: &[u8]) -> Result<(), String> {
        let changes = self
            .structure
            .changes(update)
            .map_err(|e| format!("unreadable update: {e}"))?;
        self.judge(who, &changes)
    }

    fn accepted(&mut self, who: Option<&Principal>, update: &[u8]) {
        // The document took it, so it reads: an error leaves the index as it was.
        if let Ok(changes) = self.structure.changes(update) {
            self.note_owners(who, &changes);
        }
        let _ = self.structure.record(update);
    }

    fn reset(&mut self, snapshot: &[u8]) {
        self.structure = Structure::new();
        self.owners.clear();
        self.accepted(None, snapshot);
    }
}

/// The rules of a queue's document (`.queues/<name>`): the server writes its items and their
/// states; a participant (whose grant lets it send to the queue, which the server checks
/// when it joins) may only append `send` elements, each with its `message` (JSON text) and
/// `$id`, to the root's `inbox` element, in one update each, and deletes and changes nothing.
#[derive(Debug, Clone, Default)]
pub struct InboxRules {
    structure: Structure,
}

/// The tag of the element that holds a queue document's sends.
pub const INBOX: &str = "inbox";
/// The tag of a send appended to the inbox.
pub const SEND: &str = "send";

impl InboxRules {
    /// The rules of a queue document whose whole state `snapshot` encodes.
    pub fn new(snapshot: &[u8]) -> InboxRules {
        let mut rules = InboxRules::default();
        rules.reset(snapshot);
        rules
    }

    /// The tag and parent of the element at `id`, in the update's new elements or the
    /// document.
    fn element<'a>(
        &'a self,
        new: &'a HashMap<(u64, u32), (&'a str, Option<&'a Parent>)>,
        id: (u64, u32),
    ) -> Option<(&'a str, Option<&'a Parent>)> {
        if let Some((tag, parent)) = new.get(&id) {
            return Some((tag, *parent));
        }
        self.structure
            .element(id.0, id.1)
            .map(|(tag, parent)| (&**tag, parent))
    }
}

const SERVER_ONLY: &str =
    "only the server writes a queue's items: a client appends sends to its inbox";

impl UpdateRules for InboxRules {
    fn check(&self, _who: &Principal, update: &[u8]) -> Result<(), String> {
        let changes = self
            .structure
            .changes(update)
            .map_err(|e| format!("unreadable update: {e}"))?;
        if changes.unresolved > 0 {
            return Err("the update builds on items this document does not hold".into());
        }
        if changes.deleted.iter().any(|d| d.parent.is_some()) {
            return Err(SERVER_ONLY.into());
        }
        let new: HashMap<(u64, u32), (&str, Option<&Parent>)> = changes
            .inserted
            .iter()
            .filter_map(|i| match &i.content {
                StructContent::Element(tag) => {
                    Some(((i.client, i.clock), (tag.as_str(), i.parent.as_ref())))
                }
                _ => None,
            })
            .collect();
        let mut with_message = std::collections::HashSet::new();
        for i in &changes.inserted {
            let Some(parent) = &i.parent else { continue };
            match (&i.content, &i.key, parent) {
                // A send, appended to the inbox.
                (StructContent::Element(tag), None, Parent::Item(c, k)) if tag == SEND => {
                    match self.element(&new, (*c, *k)) {
                        Some((INBOX, Some(Parent::Root(root)))) if &**root == ROOT => {}
                        _ => return Err(SERVER_ONLY.into()),
                    }
                }
                // Its `$id` and `message`, set with it.
                (StructContent::Values(v), Some(key), Parent::Item(c, k))
                    if matches!(&**key, "$id" | "message")
                        && matches!(new.get(&(*c, *k)), Some((SEND, _))) =>
                {
                    if !matches!(v.as_slice(), [AnyValue::String(_)]) {
                        return Err(format!("a send's {key} is a string"));
                    }
                    if &**key == "message" {
                        with_message.insert((*c, *k));
                    }
                }
                _ => return Err(SERVER_ONLY.into()),
            }
        }
        for (id, (tag, _)) in &new {
            if *tag == SEND && !with_message.contains(id) {
                return Err("a send carries its message (JSON text) in the same update".into());
            }
        }
        Ok(())
    }

    fn accepted(&mut self, _who: Option<&Principal>, update: &[u8]) {
        let _ = self.structure.record(update);
    }

    fn reset(&mut self, snapshot: &[u8]) {
        self.structure = Structure::new();
        let _ = self.structure.record(snapshot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::{
        Doc, GetString, ReadTxn, StateVector, Transact, Update, Xml, XmlElementPrelim,
        XmlElementRef, XmlFragment, XmlOut, XmlTextPrelim,
    };

    /// A server's copy of a thread and its rules; participants edit copies of their own.
    struct World {
        server: Doc,
        rules: DocumentRules,
        next_client: u64,
    }

    fn alice() -> Principal {
        Principal::new("alice", false)
    }
    fn bob() -> Principal {
        Principal::new("bob", false)
    }
    fn admin() -> Principal {
        Principal::new("operator", true)
    }

    fn state(doc: &Doc) -> Vec<u8> {
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    impl World {
        /// A thread with its `members` and `messages`, as the server makes it.
        fn new() -> World {
            let mut w = World {
                server: Doc::with_client_id(1),
                rules: DocumentRules::thread(&[]),
                next_client: 10,
            };
            let setup = Doc::with_client_id(2);
            let xml = setup.get_or_insert_xml_fragment(ROOT);
            let update = {
                let mut txn = setup.transact_mut();
                xml.push_back(&mut txn, XmlElementPrelim::empty("members"));
                xml.push_back(&mut txn, XmlElementPrelim::empty("messages"));
                txn.encode_update_v1()
            };
            w.submit(&admin(), &update).unwrap();
            w
        }

        fn submit(&mut self, who: &Principal, update: &[u8]) -> Result<(), String> {
            self.rules.check(who, update)?;
            self.server
                .transact_mut()
                .apply_update(Update::decode_v1(update).unwrap())
                .unwrap();
            self.rules.accepted(Some(who), update);
            Ok(())
        }

        /// Runs `edit` on a fresh copy of the thread and submits what it changed as `who`.
        fn edit(
            &mut self,
            who: &Principal,
            edit: impl FnOnce(&mut yrs::TransactionMut, XmlElementRef),
        ) -> Result<(), String> {
            self.next_client += 1;
            let copy = Doc::with_client_id(self.next_client);
            let xml = copy.get_or_insert_xml_fragment(ROOT);
            copy.transact_mut()
                .apply_update(Update::decode_v1(&state(&self.server)).unwrap())
                .unwrap();
            let update = {
                let mut txn = copy.transact_mut();
                let messages = match xml.get(&txn, 1) {
                    Some(XmlOut::Element(e)) => e,
                    other => panic!("no messages list: {other:?}"),
                };
                edit(&mut txn, messages);
                txn.encode_update_v1()
            };
            self.submit(who, &update)
        }

        fn messages(&self) -> String {
            let xml = self.server.get_or_insert_xml_fragment(ROOT);
            xml.get_string(&self.server.transact())
        }
    }

    fn post(
        txn: &mut yrs::TransactionMut,
        messages: &XmlElementRef,
        author: &str,
        text: &str,
    ) -> XmlElementRef {
        let m = messages.push_back(txn, XmlElementPrelim::empty("message"));
        m.insert_attribute(txn, "$id", format!("m-{text}"));
        m.insert_attribute(txn, "text", text);
        m.insert_attribute(txn, "author_name", author);
        m
    }

    fn nth(txn: &yrs::TransactionMut, list: &XmlElementRef, i: u32) -> XmlElementRef {
        match list.get(txn, i) {
            Some(XmlOut::Element(e)) => e,
            other => panic!("no element {i}: {other:?}"),
        }
    }

    #[test]
    fn a_message_names_the_participant_who_posts_it() {
        let mut w = World::new();
        w.edit(&alice(), |txn, m| {
            post(txn, &m, "alice", "hi");
        })
        .unwrap();
        let forged = w.edit(&bob(), |txn, m| {
            post(txn, &m, "alice", "forged");
        });
        assert_eq!(
            forged,
            Err("author_name of a message must name its author, bob".into())
        );
        assert!(!w.messages().contains("forged"));
        // A message inserted without its author's name is still its inserter's: the stock SDK
        // sets attributes in updates of their own.
        w.edit(&bob(), |txn, m| {
            let e = m.push_back(txn, XmlElementPrelim::empty("message"));
            e.insert_attribute(txn, "$id", "later-named");
        })
        .unwrap();
        let claimed = w.edit(&alice(), |txn, m| {
            nth(txn, &m, 1).insert_attribute(txn, "author_name", "alice");
        });
        assert_eq!(
            claimed,
            Err("author_name of a message must name its author, bob".into())
        );
        w.edit(&bob(), |txn, m| {
            nth(txn, &m, 1).insert_attribute(txn, "author_name", "bob");
        })
        .unwrap();
        let before = w.messages();
        let bad_ref = w.edit(&bob(), |txn, m| {
            let e = post(txn, &m, "bob", "ref");
            e.insert_attribute(txn, "author_ref", "alice");
        });
        assert!(bad_ref.unwrap_err().contains("author_ref"));
        assert_eq!(w.messages(), before);
        assert!(before.contains("later-named") && before.contains("bob"));
        w.edit(&bob(), |txn, m| {
            let e = post(txn, &m, "bob", "mine");
            e.insert_attribute(txn, "author_ref", "bob");
        })
        .unwrap();
        assert!(w.messages().contains("mine"));
    }

    #[test]
    fn only_the_author_edits_and_deletes_a_message_and_an_admin_may_delete_it() {
        let mut w = World::new();
        w.edit(&alice(), |txn, m| {
            post(txn, &m, "alice", "hi");
        })
        .unwrap();
        let before = w.messages();
        let edit = |txn: &mut yrs::TransactionMut, m: XmlElementRef| {
            nth(txn, &m, 0).insert_attribute(txn, "text", "changed");
        };
        assert_eq!(
            w.edit(&bob(), edit),
            Err("only its author changes a message".into())
        );
        let retitle = w.edit(&alice(), |txn, m| {
            nth(txn, &m, 0).insert_attribute(txn, "author_name", "bob");
        });
        assert!(retitle.unwrap_err().contains("must name its author"));
        let text_inside = w.edit(&bob(), |txn, m| {
            let msg = nth(txn, &m, 0);
            msg.push_back(txn, XmlTextPrelim::new("appended"));
        });
        assert!(text_inside.is_err());
        let delete = |txn: &mut yrs::TransactionMut, m: XmlElementRef| {
            m.remove_range(txn, 0, 1);
        };
        assert_eq!(
            w.edit(&bob(), delete),
            Err("only its author deletes a message".into())
        );
        assert_eq!(w.messages(), before);
        w.edit(&alice(), edit).unwrap();
        assert!(w.messages().contains("changed"));
        // Another reacts to it with a reaction of its own, not as someone else.
        let react = |user: &'static str| {
            move |txn: &mut yrs::TransactionMut, m: XmlElementRef| {
                let msg = nth(txn, &m, 0);
                let r = msg.push_back(txn, XmlElementPrelim::empty("reaction"));
                r.insert_attribute(txn, "user_name", user);
                r.insert_attribute(txn, "value", "+1");
            }
        };
        assert!(w.edit(&bob(), react("alice")).is_err());
        w.edit(&bob(), react("bob")).unwrap();
        // Its author deletes it, another's reaction with it; an admin deletes any.
        w.edit(&alice(), delete).unwrap();
        assert!(!w.messages().contains("changed"));
        w.edit(&bob(), |txn, m| {
            post(txn, &m, "bob", "later");
        })
        .unwrap();
        w.edit(&admin(), delete).unwrap();
        assert!(!w.messages().contains("later"));
        // The lists themselves are an admin's to delete.
        let wipe = w.edit(&bob(), |txn, _| {
            let xml = yrs::WriteTxn::get_or_insert_xml_fragment(txn, ROOT);
            xml.remove_range(txn, 0, 2);
        });
        assert_eq!(wipe, Err("only an admin deletes the members list".into()));
    }

    type Edit = dyn FnOnce(&mut yrs::TransactionMut, XmlElementRef);

    #[test]
    fn the_schema_decides_which_elements_and_attributes_go_where() {
        let mut w = World::new();
        let cases: Vec<(&str, Box<Edit>)> = vec![
            (
                "messages may not hold a paragraph",
                Box::new(|txn, m| {
                    m.push_back(txn, XmlElementPrelim::empty("paragraph"));
                }),
            ),
            (
                "message has no attribute colour",
                Box::new(|txn, m| {
                    post(txn, &m, "alice", "x").insert_attribute(txn, "colour", "red");
                }),
            ),
            (
                "text of message must be a string",
                Box::new(|txn, m| {
                    let e = post(txn, &m, "alice", "x");
                    e.insert_attribute(txn, "text", 5);
                }),
            ),
            (
                "a MeshDocument keeps nothing in the root notes",
                Box::new(|txn, _| {
                    let t = yrs::WriteTxn::get_or_insert_text(txn, "notes");
                    yrs::Text::insert(&t, txn, 0, "loose");
                }),
            ),
        ];
        for (want, edit) in cases {
            assert_eq!(w.edit(&alice(), edit), Err(want.to_string()));
        }
        // What fits goes in: an event with logs, a file attachment, numbers where numbers go.
        w.edit(&alice(), |txn, m| {
            let e = m.push_back(txn, XmlElementPrelim::empty("exec"));
            e.insert_attribute(txn, "command", "ls");
            e.insert_attribute(txn, "exit_code", 0);
            let msg = post(txn, &m, "alice", "with file");
            let f = msg.push_back(txn, XmlElementPrelim::empty("file"));
            f.insert_attribute(txn, "path", "a.txt");
        })
        .unwrap();
        assert!(w.messages().contains("a.txt"));
    }

    #[test]
    fn owners_are_known_again_from_a_snapshot() {
        let mut w = World::new();
        w.edit(&alice(), |txn, m| {
            post(txn, &m, "alice", "kept");
        })
        .unwrap();
        w.edit(&bob(), |txn, m| {
            m.push_back(txn, XmlElementPrelim::empty("message"));
        })
        .unwrap();
        w.rules = DocumentRules::thread(&state(&w.server));
        // One whose author was never named belongs to no one after a reload.
        for who in [bob(), alice()] {
            let named = w.edit(&who, |txn, m| {
                nth(txn, &m, 1).insert_attribute(txn, "author_name", who.name.to_string());
            });
            assert_eq!(named, Err("the message has no author to name".into()));
        }
        assert!(w
            .edit(&bob(), |txn, m| {
                nth(txn, &m, 0).insert_attribute(txn, "text", "x");
            })
            .is_err());
        w.edit(&alice(), |txn, m| {
            nth(txn, &m, 0).insert_attribute(txn, "text", "again");
        })
        .unwrap();
        assert!(w.messages().contains("again"));
    }

    #[test]
    fn an_update_that_builds_on_missing_items_cannot_be_judged() {
        let mut w = World::new();
        let copy = Doc::with_client_id(50);
        let xml = copy.get_or_insert_xml_fragment(ROOT);
        copy.transact_mut()
            .apply_update(Update::decode_v1(&state(&w.server)).unwrap())
            .unwrap();
        let messages = |txn: &yrs::TransactionMut| match xml.get(txn, 1) {
            Some(XmlOut::Element(e)) => e,
            other => panic!("{other:?}"),
        };
        let posted = {
            let mut txn = copy.transact_mut();
            let m = messages(&txn);
            post(&mut txn, &m, "alice", "one");
            txn.encode_update_v1()
        };
        let edited = {
            let mut txn = copy.transact_mut();
            let m = messages(&txn);
            nth(&txn, &m, 0).insert_attribute(&mut txn, "text", "two");
            txn.encode_update_v1()
        };
        assert_eq!(
            w.submit(&alice(), &edited),
            Err("the update builds on items this document does not hold".into())
        );
        w.submit(&alice(), &posted).unwrap();
        w.submit(&alice(), &edited).unwrap();
        assert!(w.messages().contains("two"));
    }

    /// A queue document as the server starts it: `items`, then `inbox`.
    fn queue_doc() -> (Doc, InboxRules) {
        let server = Doc::with_client_id(1);
        let xml = server.get_or_insert_xml_fragment(ROOT);
        let update = {
            let mut txn = server.transact_mut();
            let items = xml.push_back(&mut txn, XmlElementPrelim::empty("items"));
            let item = items.push_back(&mut txn, XmlElementPrelim::empty("item"));
            item.insert_attribute(&mut txn, "state", "waiting");
            xml.push_back(&mut txn, XmlElementPrelim::empty(INBOX));
            txn.encode_update_v1()
        };
        let mut rules = InboxRules::new(&[]);
        rules.accepted(None, &update);
        (server, rules)
    }

    fn queue_edit(
        server: &Doc,
        edit: impl FnOnce(&mut yrs::TransactionMut, XmlElementRef, XmlElementRef),
    ) -> Vec<u8> {
        let copy = Doc::with_client_id(77);
        let xml = copy.get_or_insert_xml_fragment(ROOT);
        copy.transact_mut()
            .apply_update(Update::decode_v1(&state(server)).unwrap())
            .unwrap();
        let mut txn = copy.transact_mut();
        let (items, inbox) = (nth_root(&txn, &xml, 0), nth_root(&txn, &xml, 1));
        edit(&mut txn, items, inbox);
        txn.encode_update_v1()
    }

    fn nth_root(txn: &yrs::TransactionMut, xml: &yrs::XmlFragmentRef, i: u32) -> XmlElementRef {
        match xml.get(txn, i) {
            Some(XmlOut::Element(e)) => e,
            other => panic!("no element {i}: {other:?}"),
        }
    }

    #[test]
    fn a_client_only_appends_sends_to_a_queues_inbox() {
        let (server, rules) = queue_doc();
        let who = alice();
        let send = queue_edit(&server, |txn, _, inbox| {
            let s = inbox.push_back(txn, XmlElementPrelim::empty(SEND));
            s.insert_attribute(txn, "$id", "s1");
            s.insert_attribute(txn, "message", r#"{"job": 1}"#);
        });
        rules.check(&who, &send).unwrap();
        let refused = |update: &[u8]| rules.check(&who, update).unwrap_err();
        let no_message = queue_edit(&server, |txn, _, inbox| {
            inbox.push_back(txn, XmlElementPrelim::empty(SEND));
        });
        assert!(refused(&no_message).contains("carries its message"));
        let state = queue_edit(&server, |txn, items, _| {
            nth(txn, &items, 0).insert_attribute(txn, "state", "done");
        });
        assert_eq!(refused(&state), SERVER_ONLY);
        let item = queue_edit(&server, |txn, items, _| {
            let s = items.push_back(txn, XmlElementPrelim::empty(SEND));
            s.insert_attribute(txn, "message", "{}");
        });
        assert_eq!(refused(&item), SERVER_ONLY);
        let delete = queue_edit(&server, |txn, items, _| items.remove_range(txn, 0, 1));
        assert_eq!(refused(&delete), SERVER_ONLY);
        let number = queue_edit(&server, |txn, _, inbox| {
            let s = inbox.push_back(txn, XmlElementPrelim::empty(SEND));
            s.insert_attribute(txn, "message", 5);
        });
        assert!(refused(&number).contains("is a string"));
        let other = queue_edit(&server, |txn, _, inbox| {
            let s = inbox.push_back(txn, XmlElementPrelim::empty(SEND));
            s.insert_attribute(txn, "message", "{}");
            s.insert_attribute(txn, "state", "done");
        });
        assert_eq!(refused(&other), SERVER_ONLY);
    }
}
