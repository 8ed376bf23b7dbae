//! One simulated client: a WebSocket that completes the sync handshake, hands every received
//! update to its owner, sends what it is given, and renews its awareness like real providers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use roomd_sync::lib0::{write_var_bytes, write_var_u64};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::target::Target;

/// Interval of awareness renewals (y-protocols renews every 15 s; Hocuspocus drops sockets
/// silent for 60 s).
const AWARENESS_RENEWAL: Duration = Duration::from_secs(15);

/// Frames a peer may have queued for sending.
pub(crate) const SEND_QUEUE_MAX: usize = 4096;

/// Small buffers, as a browser's would be: tungstenite's default 128 KiB read buffer is
/// zeroed on every read, which would make the generator, not the server, the bottleneck.
pub(crate) fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
}

/// Counts shared by every peer of a scenario.
#[derive(Debug, Default)]
pub struct WireStats {
    /// WebSocket messages received that carried at least one update.
    pub update_messages: AtomicU64,
}

/// A connected client.
#[derive(Debug)]
pub struct Peer {
    pub(crate) tx: mpsc::Sender<Vec<u8>>,
    pub(crate) target: Target,
    pub(crate) doc: Arc<str>,
    pub(crate) reader: tokio::task::JoinHandle<()>,
}

/// Called with every update payload the peer receives.
pub type OnUpdate = Box<dyn FnMut(&[u8]) + Send>;

impl Peer {
    /// Connects to `doc`, completes the handshake (the server's step 2 has arrived), and
    /// from then on calls `on_update` for every update received.
    pub async fn connect(
        target: &Target,
        doc: &str,
        client_id: u32,
        stats: Arc<WireStats>,
        on_update: OnUpdate,
    ) -> anyhow::Result<Peer> {
        if target.room_protocol {
            return crate::room::connect_peer(target, doc, stats, on_update).await;
        }
        let url = target.doc_url(doc);
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(30),
            tokio_tungstenite::connect_async_with_config(
                target.request(doc)?,
                Some(ws_config()),
                true,
            ),
        )
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {url} timed out"))??;
        let (mut sink, mut stream) = ws.split();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(SEND_QUEUE_MAX);
        let doc: Arc<str> = doc.into();
        if let Some(hello) = target.hello(&doc) {
            sink.send(Message::Binary(hello.into())).await?;
        }
        // Our step 1 with an empty state vector.
        sink.send(Message::Binary(target.frame(&doc, &[0, 0, 1, 0]).into()))
            .await?;
        let writer_target = target.clone();
        let writer_doc = doc.clone();
        tokio::spawn(async move {
            let mut renew = tokio::time::interval(AWARENESS_RENEWAL);
            let mut clock = 0u64;
            loop {
                tokio::select! {
                    frame = rx.recv() => {
                        let Some(frame) = frame else { break };
                        if sink.feed(Message::Binary(frame.into())).await.is_err() { break }
                        while let Ok(frame) = rx.try_recv() {
                            if sink.feed(Message::Binary(frame.into())).await.is_err() { return }
                        }
                        if sink.flush().await.is_err() { break }
                    }
                    _ = renew.tick() => {
                        clock += 1;
                        let msg = awareness_message(client_id, clock);
                        if sink.send(Message::Binary(writer_target.frame(&writer_doc, &msg).into())).await.is_err() { break }
                    }
                }
            }
            let _ = sink.close().await;
        });
        let (synced_tx, synced_rx) = oneshot::channel();
        let reader_target = target.clone();
        let reader_doc = doc.clone();
        let reply = tx.downgrade();
        let reader = tokio::spawn(async move {
            let mut synced = Some(synced_tx);
            let mut on_update = on_update;
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Binary(frame) = msg else {
                    continue;
                };
                for (sub, payload) in reader_target.sync_messages(&frame) {
                    match sub {
                        0 => {
                            // The server's step 1: we hold nothing, so answer with an empty update.
                            if let Some(reply) = reply.upgrade() {
                                let _ = reply
                                    .try_send(reader_target.frame(&reader_doc, &[0, 1, 2, 0, 0]));
                            }
                        }
                        1 | 2 => {
                            stats.update_messages.fetch_add(1, Ordering::Relaxed);
                            on_update(payload);
                            if sub == 1 {
                                if let Some(s) = synced.take() {
                                    let _ = s.send(());
                                }
                            }
                        }
                        _ => break,
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(30), synced_rx)
            .await
            .map_err(|_| anyhow::anyhow!("no sync step 2 from {url}"))?
            .map_err(|_| anyhow::anyhow!("connection to {url} ended during the handshake"))?;
        Ok(Peer {
            tx,
            target: target.clone(),
            doc,
            reader,
        })
    }

    /// Closes the connection and waits (briefly) for the reader to finish, so that whatever
    /// its update handler accumulated is complete.
    pub async fn close(self) {
        drop(self.tx);
        let mut reader = self.reader;
        if tokio::time::timeout(Duration::from_secs(5), &mut reader)
            .await
            .is_err()
        {
            reader.abort();
            let _ = reader.await;
        }
    }

    /// Sends a v1 update as a sync update message, waiting if the send queue is full.
    pub async fn send_update(&self, update: &[u8]) -> anyhow::Result<()> {
        if self.target.room_protocol {
            return self
                .tx
                .send(crate::room::sync_message(update))
                .await
                .map_err(|_| anyhow::anyhow!("connection closed"));
        }
        let mut msg = Vec::with_capacity(update.len() + 6);
        write_var_u64(&mut msg, 0);
        write_var_u64(&mut msg, 2);
        write_var_bytes(&mut msg, update);
        self.tx
            .send(self.target.frame(&self.doc, &msg))
            .await
            .map_err(|_| anyhow::anyhow!("connection closed"))
    }
}

fn awareness_message(client_id: u32, clock: u64) -> Vec<u8> {
    let mut update = Vec::new();
    write_var_u64(&mut update, 1);
    write_var_u64(&mut update, u64::from(client_id));
    write_var_u64(&mut update, clock);
    write_var_bytes(&mut update, b"{}");
    let mut msg = Vec::new();
    write_var_u64(&mut msg, 1);
    write_var_bytes(&mut msg, &update);
    msg
}
