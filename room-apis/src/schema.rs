//! MeshSchemas: the shape of a MeshDocument, in the JSON form the MeshAgent SDKs read
//! (`MeshSchema.from_json` of `meshagent/api/schema.py`), and the schemas roomd ships.
//!
//! A MeshDocument is a Yjs document whose `xml` root type holds the children of the schema's
//! root element; each element is an XML element with a `$id` attribute, its values are
//! attributes, and its children follow its one child property. The SDK refuses a tag its
//! schema does not define, so every document roomd serves over the room protocol comes with a
//! schema: the one the client gives, else the builtin named by the path's extension
//! (`notes.thread` → `thread`), else [`DEFAULT_SCHEMA`].

use serde_json::{json, Map, Value};

/// The schema of a document whose path names no builtin and whose client gives none.
pub const DEFAULT_SCHEMA: &str = "document";

/// A property of an element.
#[derive(Debug, Clone, Copy)]
pub enum Prop {
    /// A value: `string`, `number`, `boolean` or `null`; optional unless `required`.
    Value {
        /// The attribute's name.
        name: &'static str,
        /// Its type.
        ty: &'static str,
        /// It must be present.
        required: bool,
    },
    /// The element's children: elements with these tags, in any order, or, when `ordered`,
    /// one of each in the order given (the SDK's `prefixItems` form).
    Children {
        /// The property's name.
        name: &'static str,
        /// The tags allowed.
        tags: &'static [&'static str],
        /// One child of each tag, in that order.
        ordered: bool,
    },
}

/// An element type.
#[derive(Debug, Clone, Copy)]
pub struct Element {
    /// Its tag.
    pub tag: &'static str,
    /// What it is for.
    pub description: &'static str,
    /// Its properties.
    pub props: &'static [Prop],
}

const fn text(name: &'static str) -> Prop {
    Prop::Value {
        name,
        ty: "string",
        required: false,
    }
}

const fn number(name: &'static str) -> Prop {
    Prop::Value {
        name,
        ty: "number",
        required: false,
    }
}

const fn flag(name: &'static str) -> Prop {
    Prop::Value {
        name,
        ty: "boolean",
        required: false,
    }
}

const fn children(name: &'static str, tags: &'static [&'static str]) -> Prop {
    Prop::Children {
        name,
        tags,
        ordered: false,
    }
}

const BLOCKS: &[&str] = &[
    "heading",
    "paragraph",
    "item",
    "code",
    "quote",
    "image",
    "block",
];

/// `document`: a permissive text document, blocks one after another.
const DOCUMENT: &[Element] = &[
    Element {
        tag: "document",
        description: "a document: blocks one after another",
        props: &[children("children", BLOCKS)],
    },
    Element {
        tag: "heading",
        description: "a heading of a level from 1 to 6",
        props: &[text("text"), number("level")],
    },
    Element {
        tag: "paragraph",
        description: "a paragraph of text",
        props: &[text("text")],
    },
    Element {
        tag: "item",
        description: "an item of a list, checked or not",
        props: &[text("text"), flag("checked"), number("indent")],
    },
    Element {
        tag: "code",
        description: "a block of code",
        props: &[text("text"), text("language")],
    },
    Element {
        tag: "quote",
        description: "a quotation",
        props: &[text("text"), text("source")],
    },
    Element {
        tag: "image",
        description: "an image by URL",
        props: &[text("url"), text("alt")],
    },
    Element {
        tag: "block",
        description: "any other block: its kind, its text and data as JSON text",
        props: &[text("kind"), text("text"), text("data")],
    },
];

/// `thread`: a conversation, the MeshAgent thread schema (`meshagent.agents.thread_schema`):
/// the thread's `members`, then its `messages`, each item a message, a command run (`exec`),
/// custom interface data (`ui`), a reasoning trace or a backend event.
const THREAD: &[Element] = &[
    Element {
        tag: "thread",
        description: "a thread of messages",
        props: &[
            text("name"),
            Prop::Children {
                name: "properties",
                tags: &["members", "messages"],
                ordered: true,
            },
        ],
    },
    Element {
        tag: "members",
        description: "the members of this thread",
        props: &[children("items", &["member"])],
    },
    Element {
        tag: "messages",
        description: "the messages of this thread",
        props: &[
            text("external_thread_id"),
            children("items", &["message", "exec", "ui", "reasoning", "event"]),
        ],
    },
    Element {
        tag: "member",
        description: "a member of this thread",
        props: &[text("name")],
    },
    Element {
        tag: "file",
        description: "a file attachment",
        props: &[text("path")],
    },
    Element {
        tag: "image",
        description: "an image attachment stored in the images dataset",
        props: &[
            text("status"),
            number("width"),
            number("height"),
            text("id"),
            text("mime_type"),
            text("created_at"),
            text("created_by"),
        ],
    },
    Element {
        tag: "reasoning",
        description: "a reasoning trace",
        props: &[text("turn_id"), text("summary"), text("created_at")],
    },
    Element {
        tag: "exec",
        description: "a command execution",
        props: &[
            text("turn_id"),
            text("command"),
            text("result"),
            text("outcome"),
            text("stderr"),
            text("stdout"),
            number("exit_code"),
            text("pwd"),
            text("created_at"),
        ],
    },
    Element {
        tag: "ui",
        description: "custom user interface data",
        props: &[
            text("turn_id"),
            text("data"),
            text("renderer"),
            text("widget"),
            number("width"),
            number("height"),
            text("created_at"),
        ],
    },
    Element {
        tag: "event",
        description: "a structured event emitted by an agent backend",
        props: &[
            text("turn_id"),
            text("id"),
            text("source"),
            text("name"),
            text("kind"),
            text("state"),
            text("method"),
            text("item_id"),
            text("item_type"),
            text("path"),
            text("summary"),
            text("headline"),
            text("details"),
            text("preview"),
            children("logs", &["log"]),
            text("data"),
            text("created_at"),
            text("updated_at"),
        ],
    },
    Element {
        tag: "log",
        description: "a single stdout or stderr log line emitted by an event",
        props: &[text("source"), text("text"), text("created_at")],
    },
    Element {
        tag: "reaction",
        description: "a unicode reaction from a user on a message or specific attachment",
        props: &[
            text("user_name"),
            text("value"),
            text("target"),
            text("attachment_ref"),
            text("created_at"),
        ],
    },
    Element {
        tag: "message",
        description: "a message sent in the conversation",
        props: &[
            text("id"),
            text("turn_id"),
            text("text"),
            text("created_at"),
            text("author_name"),
            text("role"),
            text("author_ref"),
            children("attachments", &["file", "image", "reaction"]),
        ],
    },
];

/// `thread_list`: an index of threads (`meshagent.agents.thread_schema`'s `thread_list_schema`).
const THREAD_LIST: &[Element] = &[
    Element {
        tag: "thread_list",
        description: "an index of chat threads",
        props: &[children("threads", &["thread"])],
    },
    Element {
        tag: "thread",
        description: "a thread entry in the index",
        props: &[
            text("name"),
            text("path"),
            text("created_at"),
            text("modified_at"),
        ],
    },
];

/// The schemas roomd ships, by name.
pub fn builtin(name: &str) -> Option<Value> {
    match name {
        "document" => Some(schema_json("document", DOCUMENT)),
        "thread" => Some(schema_json("thread", THREAD)),
        "thread_list" => Some(schema_json("thread_list", THREAD_LIST)),
        _ => None,
    }
}

/// The names of the builtin schemas.
pub const BUILTINS: &[&str] = &["document", "thread", "thread_list"];

/// The schema of the document at `path` when its client names none: the builtin named by the
/// path's extension, else the default.
pub fn for_path(path: &str) -> (String, Value) {
    let last = path.rsplit('/').next().unwrap_or(path);
    if let Some((_, ext)) = last.rsplit_once('.') {
        if let Some(schema) = builtin(ext) {
            return (ext.to_string(), schema);
        }
    }
    (
        DEFAULT_SCHEMA.to_string(),
        schema_json(DEFAULT_SCHEMA, DOCUMENT),
    )
}

/// Checks the outline of a schema a client gives: `$root_tag_ref` naming one of its `$defs`,
/// each an element type of the form [`schema_json`] writes. The SDK's own checks go further;
/// this keeps what roomd hands to other clients readable by them.
pub fn check(schema: &Value) -> Result<(), String> {
    let root = schema
        .get("$root_tag_ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
        .ok_or("a schema needs `$root_tag_ref` of the form #/$defs/<tag>")?;
    let defs = schema
        .get("$defs")
        .and_then(Value::as_object)
        .ok_or("a schema needs `$defs`")?;
    if !defs.contains_key(root) {
        return Err(format!("the root tag {root} is not in `$defs`"));
    }
    for (tag, def) in defs {
        let props = def
            .get("properties")
            .and_then(|p| p.get(tag.as_str()))
            .and_then(|t| t.get("properties"))
            .and_then(Value::as_object);
        if props.is_none() {
            return Err(format!("element {tag} has no properties object"));
        }
    }
    Ok(())
}

/// The root tag of a schema in the SDK's JSON form.
pub fn root_tag(schema: &Value) -> Option<&str> {
    schema
        .get("$root_tag_ref")?
        .as_str()?
        .strip_prefix("#/$defs/")
}

/// The property that holds the children of elements tagged `tag` (its one `array` property),
/// if it has one.
pub fn child_property(schema: &Value, tag: &str) -> Option<String> {
    let props = schema
        .get("$defs")?
        .get(tag)?
        .get("properties")?
        .get(tag)?
        .get("properties")?
        .as_object()?;
    props
        .iter()
        .find(|(_, p)| p.get("type").and_then(Value::as_str) == Some("array"))
        .map(|(name, _)| name.clone())
}

fn element_json(e: &Element) -> Value {
    let mut props = Map::new();
    let mut required = Vec::new();
    for p in e.props {
        match *p {
            Prop::Value {
                name,
                ty,
                required: r,
            } => {
                let ty = if r { json!(ty) } else { json!([ty, "null"]) };
                props.insert(name.into(), json!({ "type": ty }));
                required.push(name);
            }
            Prop::Children {
                name,
                tags,
                ordered,
            } => {
                let refs: Vec<Value> = tags
                    .iter()
                    .map(|t| json!({ "$ref": format!("#/$defs/{t}") }))
                    .collect();
                let prop = if ordered {
                    json!({ "type": "array", "prefixItems": refs, "items": false })
                } else {
                    json!({ "type": "array", "items": { "anyOf": refs } })
                };
                props.insert(name.into(), prop);
                required.push(name);
            }
        }
    }
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": [e.tag],
        "description": e.description,
        "properties": {
            e.tag: {
                "type": "object",
                "additionalProperties": false,
                "required": required,
                "properties": props,
            }
        }
    })
}

/// A schema in the SDK's JSON form: `$root_tag_ref`, the root element's own form, and `$defs`.
pub fn schema_json(root: &str, elements: &[Element]) -> Value {
    let mut defs = Map::new();
    let mut root_json = Value::Null;
    for e in elements {
        let j = element_json(e);
        if e.tag == root {
            root_json = j.clone();
        }
        defs.insert(e.tag.into(), j);
    }
    let mut out = Map::new();
    out.insert("$root_tag_ref".into(), json!(format!("#/$defs/{root}")));
    if let Value::Object(r) = root_json {
        out.extend(r);
    }
    out.insert("$defs".into(), Value::Object(defs));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_extension_names_the_builtin_else_the_default() {
        assert_eq!(for_path("notes/plan.doc").0, "document");
        assert_eq!(for_path("a.document").0, "document");
        assert_eq!(for_path("plain").0, "document");
        assert_eq!(for_path("chats/team.thread").0, "thread");
        assert_eq!(for_path("chats/.index.thread_list").0, "thread_list");
    }

    #[test]
    fn a_thread_holds_its_members_then_its_messages() {
        let s = builtin("thread").unwrap();
        assert_eq!(root_tag(&s), Some("thread"));
        let props = &s["$defs"]["thread"]["properties"]["thread"]["properties"];
        assert_eq!(
            props["properties"],
            json!({"type": "array", "items": false, "prefixItems": [
                {"$ref": "#/$defs/members"}, {"$ref": "#/$defs/messages"}]})
        );
        assert_eq!(child_property(&s, "messages").as_deref(), Some("items"));
        assert_eq!(
            child_property(&s, "message").as_deref(),
            Some("attachments")
        );
    }

    #[test]
    fn the_child_property_is_found_by_tag() {
        let s = builtin("document").unwrap();
        assert_eq!(root_tag(&s), Some("document"));
        assert_eq!(child_property(&s, "document").as_deref(), Some("children"));
        assert_eq!(child_property(&s, "paragraph"), None);
        assert_eq!(child_property(&s, "nope"), None);
    }

    #[test]
    fn builtins_pass_their_own_check() {
        for name in BUILTINS {
            let s = builtin(name).unwrap();
            check(&s).unwrap();
            assert_eq!(s["$root_tag_ref"], json!(format!("#/$defs/{name}")));
        }
        assert!(check(&json!({"$defs": {}})).is_err());
        assert!(check(&json!({"$root_tag_ref": "#/$defs/x", "$defs": {}})).is_err());
    }
}
