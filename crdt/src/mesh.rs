//! Edits of a MeshDocument's elements that the server makes on a participant's behalf (a
//! thread's posts, edits and deletions, from the `threads` toolkit), and what it reads of them.
//!
//! An edit on a participant's behalf is made on a [`Replica`] of the document, a Yjs client of
//! its own, and returned as a v1 update: the server then applies it like any client's, through
//! the document's rules. The replica is kept between edits and catches up by what it lacks, so
//! an edit costs what it changes. The index documents the server writes itself (a directory's
//! `thread_list`) are edited in place, as the documents it authors are.

use yrs::updates::decoder::Decode;
use yrs::{
    ClientID, Doc, ReadTxn, StateVector, Transact, Update, WriteTxn, Xml, XmlElementPrelim,
    XmlElementRef, XmlFragment, XmlOut,
};

use crate::views::{element_json, insert_element, json_to_any};
use crate::ydoc::server_options;
use crate::YDoc;

/// The root type a MeshDocument keeps its root element in.
const ROOT: &str = "xml";

/// Why an edit of a MeshDocument could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshError {
    /// The root holds no element with the container's tag.
    #[error("the document holds no {0} element")]
    NoContainer(String),
    /// No element with that `$id` is in the container.
    #[error("no element with id {0}")]
    NoElement(String),
    /// The JSON is not Document-JSON of elements, or nests too deep.
    #[error("the JSON is not Document-JSON of elements")]
    Invalid,
}

/// The first child of the root tagged `tag`.
fn container<T: ReadTxn>(txn: &T, xml: &yrs::XmlFragmentRef, tag: &str) -> Option<XmlElementRef> {
    xml.children(txn).find_map(|n| match n {
        XmlOut::Element(e) if &**e.tag() == tag => Some(e),
        _ => None,
    })
}

/// The child of `parent` whose `$id` (or else `id` attribute) is `id`, with its index.
fn child_by_id<T: ReadTxn>(
    txn: &T,
    parent: &XmlElementRef,
    id: &str,
) -> Option<(u32, XmlElementRef)> {
    let attr = |e: &XmlElementRef, name: &str| e.get_attribute(txn, name).map(|v| v.to_string(txn));
    let children = || {
        parent
            .children(txn)
            .enumerate()
            .filter_map(|(i, n)| match n {
                XmlOut::Element(e) => Some((i as u32, e)),
                _ => None,
            })
    };
    children()
        .find(|(_, e)| attr(e, "$id").as_deref() == Some(id))
        .or_else(|| children().find(|(_, e)| attr(e, "id").as_deref() == Some(id)))
}

/// An element as Document-JSON with its `$id` (`{tag: {"$id": …, attribute: value, …}}`).
fn with_id<T: ReadTxn>(
    txn: &T,
    e: XmlElementRef,
    children_of: &dyn Fn(&str) -> Option<String>,
) -> Option<serde_json::Value> {
    let id = e.get_attribute(txn, "$id").map(|v| v.to_string(txn));
    let mut json = element_json(txn, XmlOut::Element(e), children_of, 1)?;
    if let (Some(id), Some(inner)) = (
        id,
        json.as_object_mut()
            .and_then(|o| o.values_mut().next())
            .and_then(serde_json::Value::as_object_mut),
    ) {
        inner.insert("$id".into(), serde_json::Value::String(id));
    }
    Some(json)
}

/// A copy of a document on which the server makes edits on a participant's behalf, as a Yjs
/// client of its own, and that it keeps for the next: it catches up with the document by what
/// it lacks, so an edit costs what it changes, not the document's size. An edit the document
/// refuses leaves the replica ahead of it: drop the replica then.
#[derive(Debug)]
pub struct Replica {
    doc: Doc,
}

impl Replica {
    /// A replica of `of` whose edits are Yjs client `client_id`'s (one no edit of the document
    /// has used, and that is used by no other replica).
    pub fn of(of: &YDoc, client_id: u64) -> Option<Replica> {
        Some(Replica {
            doc: of.copy_as(client_id)?,
        })
    }

    /// Brings the replica up to `of`'s state: what it lacks, only.
    pub fn catch_up(&mut self, of: &YDoc) -> Result<(), MeshError> {
        let sv = self.doc.transact().state_vector();
        let diff = of.doc.transact().encode_state_as_update_v1(&sv);
        let update = Update::decode_v1(&diff).map_err(|_| MeshError::Invalid)?;
        self.doc
            .transact_mut()
            .apply_update(update)
            .map_err(|_| MeshError::Invalid)
    }

    /// The update `edit` makes on the root's first `container_tag` element of this replica.
    fn edit_container(
        &mut self,
        container_tag: &str,
        edit: impl FnOnce(&mut yrs::TransactionMut, XmlElementRef) -> Result<(), MeshError>,
    ) -> Result<Vec<u8>, MeshError> {
        let mut txn = self.doc.transact_mut();
        let xml = txn.get_or_insert_xml_fragment(ROOT);
        let list = container(&txn, &xml, container_tag)
            .ok_or_else(|| MeshError::NoContainer(container_tag.into()))?;
        edit(&mut txn, list)?;
        Ok(txn.encode_update_v1())
    }

    /// An update that appends the Document-JSON elements `children` to the root's first
    /// `container` element (see [`YDoc::mesh_insert`]).
    pub fn mesh_append(
        &mut self,
        container_tag: &str,
        children: &[serde_json::Value],
        children_of: &dyn Fn(&str) -> Option<String>,
        new_id: &mut dyn FnMut() -> String,
    ) -> Result<Vec<u8>, MeshError> {
        self.edit_container(container_tag, |txn, list| {
            for child in children {
                let at = list.len(txn);
                insert_element(txn, &list, at, child, children_of, new_id, 2)
                    .ok_or(MeshError::Invalid)?;
            }
            Ok(())
        })
    }

    /// An update that sets (a JSON `null` removes) attributes of the element `id` of the root's
    /// first `container` element.
    pub fn mesh_set(
        &mut self,
        container_tag: &str,
        id: &str,
        attributes: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Vec<u8>, MeshError> {
        self.edit_container(container_tag, |txn, list| {
            let (_, e) =
                child_by_id(txn, &list, id).ok_or_else(|| MeshError::NoElement(id.into()))?;
            for (name, value) in attributes {
                if name == "$id" {
                    continue;
                }
                if value.is_null() {
                    e.remove_attribute(txn, name);
                } else {
                    e.insert_attribute(txn, name.as_str(), json_to_any(value));
                }
            }
            Ok(())
        })
    }

    /// An update that deletes the element `id` of the root's first `container` element.
    pub fn mesh_remove(&mut self, container_tag: &str, id: &str) -> Result<Vec<u8>, MeshError> {
        self.edit_container(container_tag, |txn, list| {
            let (at, _) =
                child_by_id(txn, &list, id).ok_or_else(|| MeshError::NoElement(id.into()))?;
            list.remove_range(txn, at, 1);
            Ok(())
        })
    }
}

impl YDoc {
    /// A copy of this document whose edits are Yjs client `client_id`'s.
    pub(crate) fn copy_as(&self, client_id: u64) -> Option<Doc> {
        let state = self
            .doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let doc = Doc::with_options(yrs::Options {
            client_id: ClientID::new(client_id),
            ..server_options()
        });
        doc.transact_mut()
            .apply_update(Update::decode_v1(&state).ok()?)
            .ok()?;
        Some(doc)
    }

    /// An update that gives an empty MeshDocument's root the elements `tags` (each with the
    /// `$id` `new_id` gives), made as `client_id`; `None` when the root holds something already.
    pub fn mesh_init(
        &self,
        client_id: u64,
        tags: &[&str],
        new_id: &mut dyn FnMut() -> String,
    ) -> Option<Vec<u8>> {
        let doc = self.copy_as(client_id)?;
        let mut txn = doc.transact_mut();
        let xml = txn.get_or_insert_xml_fragment(ROOT);
        if xml.len(&txn) > 0 {
            return None;
        }
        for tag in tags {
            let e = xml.push_back(&mut txn, XmlElementPrelim::empty(*tag));
            e.insert_attribute(&mut txn, "$id", new_id());
        }
        Some(txn.encode_update_v1())
    }

    /// The element `id` of the root's first `container` element as Document-JSON with its
    /// `$id`.
    pub fn mesh_get(
        &self,
        container_tag: &str,
        id: &str,
        children_of: &dyn Fn(&str) -> Option<String>,
    ) -> Option<serde_json::Value> {
        let txn = self.doc.transact();
        let xml = txn.get_xml_fragment(ROOT)?;
        let list = container(&txn, &xml, container_tag)?;
        let (_, e) = child_by_id(&txn, &list, id)?;
        with_id(&txn, e, children_of)
    }

    /// Up to `limit` children of the root's first `container` element from index `offset`, as
    /// Document-JSON with their `$id`s, and how many it holds.
    pub fn mesh_page(
        &self,
        container_tag: &str,
        offset: usize,
        limit: usize,
        children_of: &dyn Fn(&str) -> Option<String>,
    ) -> Option<(Vec<serde_json::Value>, usize)> {
        let txn = self.doc.transact();
        let xml = txn.get_xml_fragment(ROOT)?;
        let list = container(&txn, &xml, container_tag)?;
        let total = list.len(&txn) as usize;
        let page = list
            .children(&txn)
            .skip(offset)
            .take(limit)
            .filter_map(|n| match n {
                XmlOut::Element(e) => with_id(&txn, e, children_of),
                _ => None,
            })
            .collect();
        Some((page, total))
    }

    /// Sets the attributes of the root's child `tag` whose `key` attribute is `value`, adding
    /// it (with the `$id` `new_id` gives) if there is none, as an edit of the server's own in a
    /// document it authors. `None` when nothing changed.
    pub fn author_xml_upsert(
        &mut self,
        tag: &str,
        key: &str,
        value: &str,
        attributes: &[(&str, serde_json::Value)],
        new_id: &mut dyn FnMut() -> String,
    ) -> Option<Vec<u8>> {
        let update = {
            let mut txn = self.doc.transact_mut();
            let xml = txn.get_or_insert_xml_fragment(ROOT);
            let found = xml.children(&txn).find_map(|n| match n {
                XmlOut::Element(e)
                    if &**e.tag() == tag
                        && e.get_attribute(&txn, key)
                            .map(|v| v.to_string(&txn))
                            .as_deref()
                            == Some(value) =>
                {
                    Some(e)
                }
                _ => None,
            });
            let e = match found {
                Some(e) => e,
                None => {
                    let e = xml.push_back(&mut txn, XmlElementPrelim::empty(tag));
                    e.insert_attribute(&mut txn, "$id", new_id());
                    e.insert_attribute(&mut txn, key, value);
                    e
                }
            };
            for (name, v) in attributes {
                e.insert_attribute(&mut txn, *name, json_to_any(v));
            }
            txn.encode_update_v1()
        };
        self.authored(update)
    }

    /// Removes the root's children `tag` whose `key` attribute is `value`, as an edit of the
    /// server's own. `None` when there was none.
    pub fn author_xml_remove(&mut self, tag: &str, key: &str, value: &str) -> Option<Vec<u8>> {
        let update = {
            let mut txn = self.doc.transact_mut();
            let xml = txn.get_or_insert_xml_fragment(ROOT);
            let at: Vec<u32> = xml
                .children(&txn)
                .enumerate()
                .filter_map(|(i, n)| match n {
                    XmlOut::Element(e)
                        if &**e.tag() == tag
                            && e.get_attribute(&txn, key)
                                .map(|v| v.to_string(&txn))
                                .as_deref()
                                == Some(value) =>
                    {
                        Some(i as u32)
                    }
                    _ => None,
                })
                .collect();
            for i in at.into_iter().rev() {
                xml.remove_range(&mut txn, i, 1);
            }
            txn.encode_update_v1()
        };
        self.authored(update)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DocLimits;

    fn children(tag: &str) -> Option<String> {
        match tag {
            "messages" | "members" => Some("items".into()),
            "message" => Some("attachments".into()),
            _ => None,
        }
    }

    #[test]
    fn a_thread_is_started_posted_to_edited_and_read_in_pages() {
        let mut doc = YDoc::new(DocLimits::DEFAULT);
        let mut n = 0;
        let mut id = || {
            n += 1;
            format!("id{n}")
        };
        let init = doc.mesh_init(5, &["members", "messages"], &mut id).unwrap();
        doc.apply_update(&init).unwrap();
        assert_eq!(doc.mesh_init(5, &["members", "messages"], &mut id), None);
        let mut replica = Replica::of(&doc, 6).unwrap();
        for text in ["one", "two", "three"] {
            let post = serde_json::json!({"message": {"text": text, "author_name": "alice"}});
            replica.catch_up(&doc).unwrap();
            let u = replica
                .mesh_append("messages", &[post], &children, &mut id)
                .unwrap();
            doc.apply_update(&u).unwrap();
        }
        let (page, total) = doc.mesh_page("messages", 1, 5, &children).unwrap();
        assert_eq!(total, 3);
        assert_eq!(
            page,
            vec![
                serde_json::json!({"message": {"$id": "id4", "text": "two", "author_name": "alice", "attachments": []}}),
                serde_json::json!({"message": {"$id": "id5", "text": "three", "author_name": "alice", "attachments": []}}),
            ]
        );
        // Another client's edit reaches the replica by catching up, and only what it lacks.
        let mut other = Replica::of(&doc, 7).unwrap();
        let mut attrs = serde_json::Map::new();
        attrs.insert("text".into(), "2".into());
        let u = other.mesh_set("messages", "id4", &attrs).unwrap();
        doc.apply_update(&u).unwrap();
        assert_eq!(
            doc.mesh_get("messages", "id4", &children).unwrap()["message"]["text"],
            "2"
        );
        replica.catch_up(&doc).unwrap();
        let u = replica.mesh_remove("messages", "id3").unwrap();
        assert!(
            u.len() < 64,
            "a removal is a small update: {} bytes",
            u.len()
        );
        doc.apply_update(&u).unwrap();
        assert_eq!(doc.mesh_page("messages", 0, 10, &children).unwrap().1, 2);
        assert_eq!(
            replica.mesh_remove("messages", "id3"),
            Err(MeshError::NoElement("id3".into()))
        );
        assert_eq!(
            replica.mesh_append("nowhere", &[], &children, &mut id),
            Err(MeshError::NoContainer("nowhere".into()))
        );
    }

    #[test]
    fn an_index_keeps_one_entry_per_key() {
        let mut doc = YDoc::new(DocLimits::DEFAULT).authored_by(9);
        let mut id = || "e".to_string();
        let path = |p: &str| serde_json::Value::String(p.into());
        let u1 = doc
            .author_xml_upsert(
                "thread",
                "path",
                "a.thread",
                &[("name", path("a"))],
                &mut id,
            )
            .unwrap();
        let u2 = doc
            .author_xml_upsert(
                "thread",
                "path",
                "a.thread",
                &[("name", path("A"))],
                &mut id,
            )
            .unwrap();
        doc.author_xml_upsert("thread", "path", "b.thread", &[], &mut id)
            .unwrap();
        let mut copy = YDoc::new(DocLimits::DEFAULT);
        copy.apply_update(&u1).unwrap();
        copy.apply_update(&u2).unwrap();
        let json = |d: &YDoc| {
            d.mesh_json("thread_list", &|t| {
                (t == "thread_list").then(|| "threads".into())
            })
        };
        assert_eq!(
            json(&copy),
            serde_json::json!({"thread_list": {"threads": [{"thread": {"path": "a.thread", "name": "A"}}]}})
        );
        assert!(doc
            .author_xml_remove("thread", "path", "a.thread")
            .is_some());
        assert_eq!(doc.author_xml_remove("thread", "path", "a.thread"), None);
        assert_eq!(
            json(&doc),
            serde_json::json!({"thread_list": {"threads": [{"thread": {"path": "b.thread"}}]}})
        );
    }
}
