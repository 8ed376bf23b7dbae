//! What the server reads from and writes into its documents itself: the edits of documents it
//! authors (`.room/participants`), whether a client's update would change a document (for
//! participants that may only read), and a document as JSON.

use yrs::types::ToJson;
use yrs::updates::decoder::Decode;
use yrs::{
    Any, Array, ArrayRef, ClientID, Doc, GetString, Map, Out, ReadTxn, StateVector, Transact,
    Update, WriteTxn,
};

use crate::ydoc::server_options;
use crate::{ApplyError, YDoc};

impl YDoc {
    /// This document, ready for edits of the server's own made as Yjs client `client_id`. A
    /// server-authored document takes a fresh id each time it is loaded, so that an edit lost in
    /// a crash never has its clock reused for another.
    pub fn authored_by(mut self, client_id: u32) -> YDoc {
        let state = self
            .doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let doc = Doc::with_options(yrs::Options {
            client_id: ClientID::new(u64::from(client_id)),
            ..server_options()
        });
        if let Ok(update) = Update::decode_v1(&state) {
            // The state was encoded by yrs from a document that held it.
            let _ = doc.transact_mut().apply_update(update);
        }
        self.doc = doc;
        self.loaded_from = None;
        self
    }

    /// Sets (`Some`) or removes (`None`) entries of the root map `map`, in one transaction of the
    /// server's own. Returns the v1 update to store and send, or `None` when nothing changed.
    pub fn author_map(
        &mut self,
        map: &str,
        changes: &[(&str, Option<&serde_json::Value>)],
    ) -> Option<Vec<u8>> {
        let update = {
            let mut txn = self.doc.transact_mut();
            let root = txn.get_or_insert_map(map);
            for (key, value) in changes {
                match value {
                    Some(v) => {
                        root.insert(&mut txn, *key, json_to_any(v));
                    }
                    None => {
                        root.remove(&mut txn, key);
                    }
                }
            }
            txn.encode_update_v1()
        };
        self.authored(update)
    }

    /// Removes every entry of the root map `map`, as an edit of the server's own.
    pub fn author_clear_map(&mut self, map: &str) -> Option<Vec<u8>> {
        let update = {
            let mut txn = self.doc.transact_mut();
            let root = txn.get_or_insert_map(map);
            root.clear(&mut txn);
            txn.encode_update_v1()
        };
        self.authored(update)
    }

    pub(crate) fn authored(&mut self, update: Vec<u8>) -> Option<Vec<u8>> {
        // A transaction that changed nothing encodes no client and no deletion.
        if update == [0, 0] {
            return None;
        }
        self.bytes_estimate = self.bytes_estimate.saturating_add(update.len());
        self.loaded_from = None;
        Some(update)
    }

    /// Whether applying `update` would change the document: a struct it does not hold yet, or a
    /// deletion of something not deleted in it. Structs waiting for missing ones count as not
    /// held. The update is validated as [`YDoc::apply_update`] would, and nothing is applied.
    pub fn would_change(&self, update: &[u8]) -> Result<bool, ApplyError> {
        let (scan, decoded) = Self::validate(update)?;
        let txn = self.doc.transact();
        let sv = txn.state_vector();
        if scan
            .runs
            .iter()
            .any(|run| run.end > sv.get(&ClientID::new(run.client)))
        {
            return Ok(true);
        }
        if !scan.deletes {
            return Ok(false);
        }
        // Deletions are compared with the document's delete set only when there are some: it
        // takes a walk over the document.
        let deleted = txn.snapshot().delete_set;
        let mut asked = decoded.delete_set().clone();
        asked.diff_with(&deleted);
        Ok(!asked.is_empty())
    }

    /// The document as JSON, each root type by name. yrs knows a root's type only once a client
    /// has named it, and the server never does, so the shape is read from the content: a root
    /// with entries is an object; a sequence of characters (with or without formatting) is a
    /// string; a sequence of XML elements and texts is its XML; any other sequence is an array;
    /// a root with nothing live in it is `null`.
    pub fn to_json(&self) -> serde_json::Value {
        let txn = self.doc.transact();
        let mut out = serde_json::Map::new();
        let mut names: Vec<String> = txn.root_refs().map(|(name, _)| name.to_string()).collect();
        names.sort();
        for name in names {
            let value = root_json(&txn, &name);
            out.insert(name, value);
        }
        serde_json::Value::Object(out)
    }
}

/// Elements deeper than this are left out of [`YDoc::mesh_json`] (a hostile document could nest
/// without bound).
const MESH_DEPTH_MAX: usize = 64;

impl YDoc {
    /// The `xml` root as a MeshDocument's JSON, as the MeshAgent SDKs write it
    /// (`Element.to_json`): `{root_tag: {child: [...]}}`, each element `{tag: {attribute: value,
    /// ..., child: [...]}}` without its `$id`, where `children_of(tag)` names the property that
    /// holds an element's children (none: its children are not shown). Texts are left out.
    pub fn mesh_json(
        &self,
        root_tag: &str,
        children_of: &dyn Fn(&str) -> Option<String>,
    ) -> serde_json::Value {
        use yrs::XmlFragment;
        let txn = self.doc.transact();
        let mut root = serde_json::Map::new();
        if let Some(prop) = children_of(root_tag) {
            let children = match txn.get_xml_fragment("xml") {
                Some(x) => x
                    .children(&txn)
                    .filter_map(|n| element_json(&txn, n, children_of, 1))
                    .collect(),
                None => Vec::new(),
            };
            root.insert(prop, serde_json::Value::Array(children));
        }
        let mut out = serde_json::Map::new();
        out.insert(root_tag.to_string(), serde_json::Value::Object(root));
        serde_json::Value::Object(out)
    }
}

impl YDoc {
    /// An update that appends the elements of Document-JSON `children` (`[{tag: {attribute:
    /// value, ..., child: [...]}}, ...]`, the SDK's form) to the end of the `xml` root, made as
    /// Yjs client `client_id` on top of this document's state. `children_of(tag)` names the
    /// property holding an element's children; `new_id` gives each element its `$id` (unless
    /// the JSON gives one). Apply the update like any other (it is validated and limited then).
    /// `None` when the JSON is not of that form, or nests deeper than 64.
    pub fn mesh_insert(
        &self,
        client_id: u64,
        children: &[serde_json::Value],
        children_of: &dyn Fn(&str) -> Option<String>,
        new_id: &mut dyn FnMut() -> String,
    ) -> Option<Vec<u8>> {
        use yrs::XmlFragment;
        let doc = self.copy_as(client_id)?;
        let mut txn = doc.transact_mut();
        let xml = txn.get_or_insert_xml_fragment("xml");
        for child in children {
            let at = xml.len(&txn);
            insert_element(&mut txn, &xml, at, child, children_of, new_id, 1)?;
        }
        Some(txn.encode_update_v1())
    }
}

pub(crate) fn insert_element<F: yrs::XmlFragment>(
    txn: &mut yrs::TransactionMut,
    parent: &F,
    index: u32,
    json: &serde_json::Value,
    children_of: &dyn Fn(&str) -> Option<String>,
    new_id: &mut dyn FnMut() -> String,
    depth: usize,
) -> Option<()> {
    use yrs::{Xml, XmlElementPrelim};
    if depth > MESH_DEPTH_MAX {
        return None;
    }
    let object = json.as_object()?;
    let (tag, props) = object.iter().next().filter(|_| object.len() == 1)?;
    let props = props.as_object()?;
    let element = parent.insert(txn, index, XmlElementPrelim::empty(tag.as_str()));
    let child_prop = children_of(tag);
    let id = props
        .get("$id")
        .and_then(serde_json::Value::as_str)
        .map_or_else(&mut *new_id, str::to_string);
    element.insert_attribute(txn, "$id", id);
    for (name, value) in props {
        if Some(name) == child_prop.as_ref() || name == "$id" {
            continue;
        }
        element.insert_attribute(txn, name.as_str(), json_to_any(value));
    }
    if let Some(prop) = child_prop {
        if let Some(children) = props.get(&prop).and_then(serde_json::Value::as_array) {
            for (i, c) in children.iter().enumerate() {
                insert_element(txn, &element, i as u32, c, children_of, new_id, depth + 1)?;
            }
        }
    }
    Some(())
}

pub(crate) fn element_json<T: ReadTxn>(
    txn: &T,
    node: yrs::XmlOut,
    children_of: &dyn Fn(&str) -> Option<String>,
    depth: usize,
) -> Option<serde_json::Value> {
    use yrs::{Xml, XmlFragment};
    let yrs::XmlOut::Element(e) = node else {
        return None;
    };
    if depth > MESH_DEPTH_MAX {
        return None;
    }
    let tag = e.tag().to_string();
    let mut props = serde_json::Map::new();
    for (name, value) in e.attributes(txn) {
        if name != "$id" {
            props.insert(name.to_string(), out_json(txn, &value));
        }
    }
    if let Some(prop) = children_of(&tag) {
        let children = e
            .children(txn)
            .filter_map(|n| element_json(txn, n, children_of, depth + 1))
            .collect();
        props.insert(prop, serde_json::Value::Array(children));
    }
    let mut out = serde_json::Map::new();
    out.insert(tag, serde_json::Value::Object(props));
    Some(serde_json::Value::Object(out))
}

/// An attribute's value as JSON (a shared type as its JSON form).
pub(crate) fn out_json<T: ReadTxn>(txn: &T, value: &Out) -> serde_json::Value {
    match value {
        Out::Any(a) => any_to_json(a),
        other => any_to_json(&other.to_json(txn)),
    }
}

fn root_json<T: ReadTxn>(txn: &T, name: &str) -> serde_json::Value {
    if let Some(map) = txn.get_map(name) {
        if map.len(txn) > 0 {
            return any_to_json(&map.to_json(txn));
        }
    }
    let Some(array) = txn.get_array(name) else {
        return serde_json::Value::Null;
    };
    let values: Vec<Out> = array.iter(txn).collect();
    if values.is_empty() {
        // Nothing tells an empty map from an empty text or array.
        return serde_json::Value::Null;
    }
    if values
        .iter()
        .all(|v| matches!(v, Out::Any(Any::String(s)) if s.chars().count() == 1))
    {
        let text = txn.get_text(name).map(|t| t.get_string(txn));
        return serde_json::Value::String(text.unwrap_or_default());
    }
    if values
        .iter()
        .all(|v| matches!(v, Out::YXmlElement(_) | Out::YXmlText(_)))
    {
        let xml = txn.get_xml_fragment(name).map(|x| x.get_string(txn));
        return serde_json::Value::String(xml.unwrap_or_default());
    }
    any_to_json(&ArrayRef::to_json(&array, txn))
}

/// A JSON value as a yrs `Any` (integers stay integers).
pub(crate) fn json_to_any(v: &serde_json::Value) -> Any {
    serde_json::from_value(v.clone()).unwrap_or(Any::Null)
}

/// A yrs `Any` as JSON.
fn any_to_json(a: &Any) -> serde_json::Value {
    serde_json::to_value(a).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DocLimits;
    use yrs::updates::encoder::Encode;
    use yrs::{Text, XmlFragment, XmlTextPrelim};

    fn replica(doc: &YDoc) -> Doc {
        let copy = Doc::with_client_id(99);
        let state = doc
            .diff(&StateVector::default().encode_v1())
            .unwrap_or_default();
        copy.transact_mut()
            .apply_update(Update::decode_v1(&state).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"));
        copy
    }

    #[test]
    fn authored_edits_reach_a_replica_and_survive_a_reload() {
        let mut doc = YDoc::new(DocLimits::DEFAULT).authored_by(4242);
        let alice = serde_json::json!({ "name": "alice", "connections": [1, 2] });
        let u1 = doc
            .author_map(
                "participants",
                &[("p1", Some(&alice)), ("p2", Some(&alice))],
            )
            .unwrap_or_default();
        assert!(!u1.is_empty());
        assert_eq!(doc.author_map("participants", &[("gone", None)]), None);
        let u2 = doc
            .author_map("participants", &[("p2", None)])
            .unwrap_or_default();
        let mut copy = YDoc::new(DocLimits::DEFAULT);
        copy.apply_update(&u1).unwrap_or_else(|e| panic!("{e}"));
        copy.apply_update(&u2).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            copy.to_json(),
            serde_json::json!({ "participants": { "p1": alice } })
        );
        // Loaded again under another id, it goes on from the same state.
        let mut reloaded = YDoc::from_snapshot(DocLimits::DEFAULT, &copy.snapshot())
            .unwrap_or_else(|e| panic!("{e}"))
            .authored_by(7);
        let cleared = reloaded
            .author_clear_map("participants")
            .unwrap_or_default();
        copy.apply_update(&cleared)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(copy.to_json(), serde_json::json!({ "participants": null }));
        let r = replica(&reloaded);
        assert_eq!(
            r.transact()
                .get_map("participants")
                .map(|m| m.len(&r.transact())),
            Some(0)
        );
    }

    #[test]
    fn would_change_tells_new_content_and_new_deletions_from_known_ones() {
        let client = Doc::with_client_id(5);
        let text = client.get_or_insert_text("t");
        let insert = {
            let mut txn = client.transact_mut();
            text.insert(&mut txn, 0, "hello");
            txn.encode_update_v1()
        };
        let delete = {
            let mut txn = client.transact_mut();
            text.remove_range(&mut txn, 0, 2);
            txn.encode_update_v1()
        };
        let mut doc = YDoc::new(DocLimits::DEFAULT);
        assert_eq!(doc.would_change(&insert), Ok(true));
        doc.apply_update(&insert).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(doc.would_change(&insert), Ok(false));
        assert_eq!(doc.would_change(&delete), Ok(true));
        doc.apply_update(&delete).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(doc.would_change(&delete), Ok(false));
        // An empty update (a fresh client's step 2) changes nothing.
        assert_eq!(doc.would_change(&[0, 0]), Ok(false));
        assert!(doc.would_change(&[0xff, 0xff]).is_err());
        assert_eq!(doc.text("t"), "llo");
    }

    #[test]
    fn the_xml_root_reads_as_a_mesh_documents_json() {
        use yrs::{Xml, XmlElementPrelim};
        let client = Doc::with_client_id(3);
        let update = {
            let xml = client.get_or_insert_xml_fragment("xml");
            let mut txn = client.transact_mut();
            let p = xml.push_back(&mut txn, XmlElementPrelim::empty("paragraph"));
            p.insert_attribute(&mut txn, "$id", "a");
            p.insert_attribute(&mut txn, "text", "hello");
            let l = xml.push_back(&mut txn, XmlElementPrelim::empty("list"));
            let i = l.push_back(&mut txn, XmlElementPrelim::empty("item"));
            i.insert_attribute(&mut txn, "checked", "yes");
            xml.push_back(&mut txn, XmlTextPrelim::new("loose text"));
            txn.encode_update_v1()
        };
        let mut doc = YDoc::new(DocLimits::default());
        doc.apply_update(&update).unwrap();
        let children =
            |tag: &str| matches!(tag, "document" | "list").then(|| "children".to_string());
        assert_eq!(
            doc.mesh_json("document", &children),
            serde_json::json!({"document": {"children": [
                {"paragraph": {"text": "hello"}},
                {"list": {"children": [{"item": {"checked": "yes"}}]}},
            ]}})
        );
        let empty = YDoc::new(DocLimits::default());
        assert_eq!(
            empty.mesh_json("document", &children),
            serde_json::json!({"document": {"children": []}})
        );
        // Document-JSON goes in as elements and reads back the same, after what was there.
        let added = serde_json::json!([
            {"list": {"children": [{"item": {"checked": "no"}}]}},
            {"paragraph": {"text": "more"}},
        ]);
        let mut n = 0;
        let update = doc
            .mesh_insert(99, added.as_array().unwrap(), &children, &mut || {
                n += 1;
                format!("id-{n}")
            })
            .unwrap();
        doc.apply_update(&update).unwrap();
        assert_eq!(
            doc.mesh_json("document", &children),
            serde_json::json!({"document": {"children": [
                {"paragraph": {"text": "hello"}},
                {"list": {"children": [{"item": {"checked": "yes"}}]}},
                {"list": {"children": [{"item": {"checked": "no"}}]}},
                {"paragraph": {"text": "more"}},
            ]}})
        );
        assert!(doc
            .mesh_insert(
                100,
                &[serde_json::json!("not an element")],
                &children,
                &mut String::new
            )
            .is_none());
    }

    #[test]
    fn roots_render_as_json_by_their_content() {
        let client = Doc::with_client_id(6);
        let update = {
            let mut txn = client.transact_mut();
            txn.get_or_insert_text("note").insert(&mut txn, 0, "hi");
            let list = txn.get_or_insert_array("list");
            list.push_back(&mut txn, 1);
            list.push_back(&mut txn, "two");
            txn.get_or_insert_map("meta").insert(&mut txn, "k", true);
            let xml = txn.get_or_insert_xml_fragment("prosemirror");
            xml.push_back(&mut txn, XmlTextPrelim::new("para"));
            txn.encode_update_v1()
        };
        let mut doc = YDoc::new(DocLimits::DEFAULT);
        doc.apply_update(&update).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            doc.to_json(),
            serde_json::json!({
                "list": [1, "two"],
                "meta": { "k": true },
                "note": "hi",
                "prosemirror": "para",
            })
        );
    }
}
