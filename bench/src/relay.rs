//! The floor of fan-out latency on a machine: the cheapest relay of the y-websocket protocol.
//!
//! It keeps no document, stores nothing and checks nothing. A client's sync step 1 is answered
//! with an empty step 2, and every other message is written, unchanged, straight from the task
//! that read it to the other connections of the same URL path: no queue, no task wake-up per
//! delivery. A server that keeps documents does strictly more per edit, so `roomd-bench fanout`
//! against this relay measures what the machine, its loopback TCP and the generator cost on
//! their own.
//!
//! A benchmark tool on loopback, not a server: a peer that stops reading stalls the writer.

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
/// The sync step 2 of an empty document: `varUint 0, varUint 1, varBytes [0, 0]`.
const EMPTY_STEP2: [u8; 5] = [0, 1, 2, 0, 0];
type Sink = Arc<tokio::sync::Mutex<SplitSink<WebSocketStream<TcpStream>, Message>>>;
type Rooms = Arc<Mutex<HashMap<String, Vec<(u64, Sink)>>>>;
fn lock(rooms: &Rooms) -> std::sync::MutexGuard<'_, HashMap<String, Vec<(u64, Sink)>>> {
    rooms.lock().unwrap_or_else(PoisonError::into_inner)
}
/// Serves until the process ends.
pub async fn serve(listener: TcpListener) -> anyhow::Result<()> {
    let rooms = Rooms::default();
    let mut next_id = 0u64;
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        next_id += 1;
        tokio::spawn(connection(tcp, next_id, rooms.clone()));
    }
}
async fn connection(tcp: TcpStream, id: u64, rooms: Rooms) {
    let mut path = String::new();
    // The handshake callback's signature is tungstenite's.
    #[allow(clippy::result_large_err)]
    let record_path = |request: &Request, response: Response| {
        path = request.uri().path().to_owned();
        Ok(response)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, record_path).await else {
        return;
    };
    let (sink, mut stream) = ws.split();
    let sink: Sink = Arc::new(tokio::sync::Mutex::new(sink));
    lock(&rooms)
        .entry(path.clone())
        .or_default()
        .push((id, sink.clone()));
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Binary(data) = msg else { continue };
        if data.starts_with(&[0, 0]) {
            if sink
                .lock()
                .await
                .send(Message::Binary(bytes::Bytes::from_static(&EMPTY_STEP2)))
                .await
                .is_err()
            {
                break;
            }
            continue;
        }
        let others: Vec<Sink> = lock(&rooms)
            .get(&path)
            .into_iter()
            .flatten()
            .filter(|(o, _)| *o != id)
            .map(|(_, s)| s.clone())
            .collect();
        for other in others {
            let _ = other.lock().await.send(Message::Binary(data.clone())).await;
        }
    }
    let mut rooms = lock(&rooms);
    if let Some(peers) = rooms.get_mut(&path) {
        peers.retain(|(other, _)| *other != id);
    }
}
