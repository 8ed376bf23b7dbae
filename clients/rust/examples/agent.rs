//! An agent that follows a document people edit in their editors, keeps a derived document
//! with its word count up to date, and offers a `words` toolkit to the room's other
//! participants.
//!
//! ```sh
//! roomd serve &    # or with a token: MESHAGENT_TOKEN=$(roomd token … --preset agent)
//! MESHAGENT_ROOM_URL=ws://127.0.0.1:8787 MESHAGENT_ROOM=demo \
//!     cargo run -p roomd-client --example agent -- notes/plan.doc
//! ```
//!
//! It reads the text of the document's MeshDocument elements (the `text` attributes of the
//! elements in its `xml` root, and any XML text in them) and of a `text` root (a plain
//! `Y.Text`), and writes to `<path>.stats` one `block` element (`kind` `word-count`, `text` like "12 words in 3 blocks", `data` the figures as JSON). Its tools:
//! `words.count {text}` counts the words of a text, `words.stats {}` answers the followed
//! document's figures.

use std::sync::{Arc, Mutex};

use roomd_client::{
    Author, Config, DocEvent, Document, Error, RoomClient, Tool, ToolError, Toolkit,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use yrs::types::xml::XmlOut;
use yrs::{GetString, ReadTxn, Transact, Xml, XmlElementPrelim, XmlFragment, XmlFragmentRef};

/// The figures the agent keeps.
#[derive(Debug, Clone, Default, Serialize)]
struct Stats {
    path: String,
    words: usize,
    characters: usize,
    blocks: usize,
    /// The participant whose change the figures last followed.
    last_author: Option<String>,
}

#[derive(Deserialize)]
struct CountInput {
    text: String,
}

fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

/// Every text of the document: element `text` attributes, XML text, the `text` root.
fn texts<T: ReadTxn>(
    txn: &T,
    xml: Option<XmlFragmentRef>,
    plain: Option<String>,
) -> (Vec<String>, usize) {
    let mut out = Vec::new();
    let mut blocks = 0;
    if let Some(xml) = xml {
        for node in xml.successors(txn) {
            match node {
                XmlOut::Element(e) => {
                    blocks += 1;
                    if let Some(t) = e.get_attribute(txn, "text") {
                        out.push(t.to_string(txn));
                    }
                }
                XmlOut::Text(t) => out.push(t.get_string(txn)),
                XmlOut::Fragment(_) => {}
            }
        }
    }
    out.extend(plain);
    (out, blocks)
}

fn measure(source: &Document) -> Stats {
    let txn = source.doc().transact();
    let xml = txn.get_xml_fragment("xml");
    let plain = txn.get_text("text").map(|t| t.get_string(&txn));
    let (all, blocks) = texts(&txn, xml, plain);
    Stats {
        path: source.path().to_string(),
        words: all.iter().map(|t| words(t)).sum(),
        characters: all.iter().map(|t| t.chars().count()).sum(),
        blocks,
        last_author: None,
    }
}

/// Writes the figures into the derived document's `word-count` block.
fn publish(derived: &Document, stats: &Stats) {
    let text = format!("{} words in {} blocks", stats.words, stats.blocks);
    let data = serde_json::to_string(stats).unwrap_or_default();
    let xml = derived.doc().get_or_insert_xml_fragment("xml");
    let mut txn = derived.doc().transact_mut();
    let existing = xml.children(&txn).find_map(|n| match n {
        XmlOut::Element(e)
            if e.get_attribute(&txn, "kind")
                .map(|v| v.to_string(&txn))
                .as_deref()
                == Some("word-count") =>
        {
            Some(e)
        }
        _ => None,
    });
    let block = match existing {
        Some(e) => e,
        None => {
            let e = xml.push_back(&mut txn, XmlElementPrelim::empty("block"));
            e.insert_attribute(&mut txn, "$id", "word-count");
            e.insert_attribute(&mut txn, "kind", "word-count");
            e
        }
    };
    block.insert_attribute(&mut txn, "text", text);
    block.insert_attribute(&mut txn, "data", data);
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "notes/plan.doc".to_string());
    let client = RoomClient::connect(Config::from_env()?).await?;
    let source = client.open(&path).await?;
    let derived = client.open(&format!("{path}.stats")).await?;
    let latest = Arc::new(Mutex::new(measure(&source)));

    let shared = latest.clone();
    let toolkit = Toolkit::new("words")
        .title("Word counts")
        .description("counts words, and reports the followed document's figures")
        .tool(
            Tool::typed("count", |input: CountInput| async move {
                Ok::<_, ToolError>(json!({
                    "words": words(&input.text),
                    "characters": input.text.chars().count(),
                }))
            })
            .description("counts the words and characters of a text")
            .input_schema(json!({
                "type": "object",
                "properties": {"text": {"type": "string"}},
                "required": ["text"],
                "additionalProperties": false,
            })),
        )
        .tool(
            Tool::typed("stats", move |_: serde_json::Value| {
                let stats = shared.lock().map(|s| s.clone()).unwrap_or_default();
                async move { Ok::<_, ToolError>(stats) }
            })
            .description("the figures of the document the agent follows"),
        );
    let _hosted = client.host(toolkit).await?;

    let mut changes = source.changes();
    let first = measure(&source);
    publish(&derived, &first);
    println!("following {path}: {} words", first.words);
    loop {
        let author = tokio::select! {
            event = changes.next() => match event {
                None => break,
                Some(Ok(DocEvent::Changed(change))) => match change.author {
                    Author::Participants(ids) => ids.first().cloned(),
                    Author::Server | Author::Local => None,
                },
                // Behind or resynchronised: the figures are read afresh from the document.
                Some(Ok(_)) | Some(Err(_)) => None,
            },
            _ = tokio::signal::ctrl_c() => break,
        };
        let mut stats = measure(&source);
        stats.last_author = author;
        let changed = latest
            .lock()
            .map(|l| {
                (l.words, l.characters, l.blocks) != (stats.words, stats.characters, stats.blocks)
            })
            .unwrap_or(true);
        if let Ok(mut l) = latest.lock() {
            *l = stats.clone();
        }
        if changed {
            publish(&derived, &stats);
            println!("{path}: {} words in {} blocks", stats.words, stats.blocks);
        }
    }
    derived.durable().await?;
    client.close().await;
    Ok(())
}
