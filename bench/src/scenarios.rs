//! The load scenarios: fan-out, throughput, many rooms, connect, idle, replay and cold load.
//! Each returns a [`Report`] of named figures.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::Notify;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, Text, Transact, Update};

use crate::book::Book;
use crate::peer::{ws_config, OnUpdate, Peer, WireStats};
use crate::procstat::{rss_kib, CpuMeter};
use crate::target::Target;
use roomd_crdt::trace::Trace;
use tokio_tungstenite::tungstenite::Message;

/// Connections in their handshake at once while a scenario sets up.
const CONNECTING_MAX: usize = 64;

/// The longest a scenario may take to open its connections: a server that cannot accept a
/// crowd in this time fails the scenario rather than stall the whole comparison.
const SETUP_MAX: Duration = Duration::from_secs(180);

/// The longest a replay may take, sending and delivering.
const REPLAY_MAX: Duration = Duration::from_secs(150);

/// Opens connections, failing once [`SETUP_MAX`] has passed.
async fn within_setup<T>(
    what: &str,
    open: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(SETUP_MAX, open)
        .await
        .map_err(|_| anyhow::anyhow!("opening {what} took longer than {SETUP_MAX:?}"))?
}

/// Idle connections share documents this many at a time (each announces its awareness
/// state, which the server relays to the document's other connections).
const IDLE_PEERS_PER_DOC: usize = 100;

/// Figures of one scenario run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Server name.
    pub server: String,
    /// Named figures, in order.
    pub figures: Vec<(String, f64)>,
    /// Problems seen (lost deliveries, timeouts).
    pub problems: Vec<String>,
}

impl Report {
    fn new(scenario: &str, target: &Target) -> Report {
        Report {
            scenario: scenario.into(),
            server: target.kind.name().into(),
            ..Report::default()
        }
    }

    fn add(&mut self, name: &str, value: f64) {
        self.figures.push((name.into(), value));
    }

    /// The report itself, or an error listing its problems.
    pub fn ensure_clean(self) -> anyhow::Result<Report> {
        anyhow::ensure!(
            self.problems.is_empty(),
            "{} on {}: {}",
            self.scenario,
            self.server,
            self.problems.join("; ")
        );
        Ok(self)
    }

    /// Prints the human-readable lines and the JSON line.
    pub fn print(&self) {
        println!("[{}] {}", self.server, self.scenario);
        for (name, value) in &self.figures {
            println!("    {name:<28} {value:>14.3}");
        }
        for p in &self.problems {
            println!("    PROBLEM: {p}");
        }
        println!("{}", serde_json::to_string(self).unwrap_or_default());
    }
}

/// Distinct random u32 client ids (Yjs draws them as uint32).
fn client_ids(n: usize, seed: u64) -> Vec<u32> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut ids = std::collections::HashSet::new();
    while ids.len() < n {
        ids.insert(rng.random_range(1..u32::MAX));
    }
    ids.into_iter().collect()
}

/// A writer's replica: it types one character at a time at the end of its own text.
struct Typist {
    doc: Doc,
    clock: u32,
}

impl Typist {
    fn new(client_id: u32) -> Typist {
        Typist {
            doc: Doc::with_client_id(u64::from(client_id)),
            clock: 0,
        }
    }

    /// One keystroke: (clock of the new character, the v1 update).
    fn type_char(&mut self) -> (u32, Vec<u8>) {
        let text = self.doc.get_or_insert_text("t");
        let mut txn = self.doc.transact_mut();
        let len = text.len(&txn);
        text.insert(&mut txn, len, "x");
        let clock = self.clock;
        self.clock += 1;
        (clock, txn.encode_update_v1())
    }
}

/// Connects a peer for each of `ids` to `doc`, CONNECTING_MAX at a time; the first `writers`
/// of them write, with writer indices from `first_writer` on.
async fn connect_peers(
    target: &Target,
    doc: &str,
    ids: &[u32],
    writers: usize,
    first_writer: usize,
    book: &Arc<Book>,
    stats: &Arc<WireStats>,
) -> anyhow::Result<(Vec<Peer>, Vec<Vec<Arc<AtomicU64>>>)> {
    let mut watermarks = Vec::with_capacity(ids.len());
    let mut handlers = Vec::with_capacity(ids.len());
    for i in 0..ids.len() {
        let own = (i < writers).then_some(first_writer + i);
        let mut receiver = book.receiver(own);
        watermarks.push(receiver.watermarks.clone());
        let notify = book.progress.clone();
        let on_update: OnUpdate = Box::new(move |u: &[u8]| {
            if receiver.receive(u) > 0 {
                notify.notify_waiters();
            }
        });
        handlers.push(on_update);
    }
    let open = futures_util::stream::iter(ids.iter().zip(handlers))
        .map(|(&id, on_update)| Peer::connect(target, doc, id, stats.clone(), on_update))
        .buffered(CONNECTING_MAX)
        .try_collect();
    let peers = within_setup(&format!("{} connections", ids.len()), open).await?;
    Ok((peers, watermarks))
}

/// Closes peers all at once: a server that has fallen behind makes each close wait for its
/// timeout, and one after another that would add up to hours at 1,000 peers.
async fn close_all(peers: impl IntoIterator<Item = Peer>) {
    futures_util::future::join_all(peers.into_iter().map(Peer::close)).await;
}

/// Waits until `done` holds or `timeout` passes; true if it held.
async fn wait_for(notify: &Notify, timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done() {
        let woken = notify.notified();
        if tokio::time::timeout_at(deadline, async {
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        })
        .await
        .is_err()
        {
            return done();
        }
    }
    true
}

fn latency_figures(report: &mut Report, book: &Book) {
    let h = book.latencies();
    let ms = |us: u64| us as f64 / 1000.0;
    report.add("latency_p50_ms", ms(h.value_at_quantile(0.50)));
    report.add("latency_p99_ms", ms(h.value_at_quantile(0.99)));
    report.add("latency_p999_ms", ms(h.value_at_quantile(0.999)));
    report.add("latency_max_ms", ms(h.max()));
}

/// Parameters of a typing load on one or more documents.
#[derive(Debug, Clone)]
pub struct Typing {
    /// Documents.
    pub docs: usize,
    /// Peers per document.
    pub peers: usize,
    /// Writers per document (the first peers).
    pub writers: usize,
    /// Edits per second of each writer.
    pub rate: f64,
    /// How long writers type.
    pub duration: Duration,
}

/// Fan-out and many-rooms: writers type at a steady rate; every edit must reach every other
/// peer of its document. Latency from send to each arrival, and the delivery ratio.
pub async fn typing(
    target: &Target,
    name: &str,
    p: &Typing,
    server_pid: Option<u32>,
) -> anyhow::Result<Report> {
    let mut report = Report::new(name, target);
    let total_writers = p.docs * p.writers;
    let ids = client_ids(p.docs * p.peers, 7);
    let writer_ids: Vec<u32> = (0..p.docs)
        .flat_map(|d| ids[d * p.peers..d * p.peers + p.writers].iter().copied())
        .collect();
    let clocks_max = (p.rate * p.duration.as_secs_f64() * 1.5) as usize + 64;
    let book = Book::new(&writer_ids, clocks_max);
    let stats = Arc::new(WireStats::default());
    let run = format!("{}-{}", name, std::process::id());
    let mut all_peers = Vec::new();
    for d in 0..p.docs {
        let doc = format!("{run}-{d}");
        target.prepare_doc(&doc).await?;
        // Writer indices in the book are global: document d's writers are d*writers...
        let doc_ids = &ids[d * p.peers..(d + 1) * p.peers];
        let (peers, _) = connect_peers(
            target,
            &doc,
            doc_ids,
            p.writers,
            d * p.writers,
            &book,
            &stats,
        )
        .await?;
        all_peers.push(peers);
    }
    let cpu = CpuMeter::start(server_pid);
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    let all_peers = Arc::new(all_peers);
    for (w, &id) in writer_ids.iter().enumerate().take(total_writers) {
        let (d, i) = (w / p.writers, w % p.writers);
        let (book, sent, peers) = (book.clone(), sent.clone(), all_peers.clone());
        let (rate, duration) = (p.rate, p.duration);
        tasks.push(tokio::spawn(async move {
            let period = Duration::from_secs_f64(1.0 / rate);
            let phase = Duration::from_secs_f64(rand::random::<f64>() / rate);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
            let mut typist = Typist::new(id);
            while start.elapsed() < duration {
                tick.tick().await;
                let (clock, update) = typist.type_char();
                book.sent(w, clock);
                if peers[d][i].send_update(&update).await.is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let sent = sent.load(Ordering::Relaxed);
    let expected = sent * (p.peers as u64 - 1);
    let complete = wait_for(&book.progress, Duration::from_secs(10), || {
        book.delivered.load(Ordering::Relaxed) >= expected
    })
    .await;
    let (gen_cpu, server_cpu) = cpu.stop();
    let rss = server_pid.map_or(0, rss_kib);
    let peers = Arc::try_unwrap(all_peers).unwrap_or_default();
    close_all(peers.into_iter().flatten()).await;
    let delivered = book.delivered.load(Ordering::Relaxed);
    report.add("peers", (p.docs * p.peers) as f64);
    report.add("edits_sent", sent as f64);
    report.add("deliveries_expected", expected as f64);
    report.add("deliveries", delivered as f64);
    report.add("delivery_ratio", delivered as f64 / expected.max(1) as f64);
    report.add("duplicates", book.duplicates.load(Ordering::Relaxed) as f64);
    let missing = (!complete).then(|| expected.saturating_sub(delivered));
    closing_figures(&mut report, &book, (gen_cpu, server_cpu), rss, missing);
    Ok(report)
}

/// Throughput: every peer writes as fast as the server delivers, each keeping at most
/// `window` updates that have not yet reached every other peer.
pub async fn throughput(
    target: &Target,
    peers_n: usize,
    window: u64,
    duration: Duration,
    server_pid: Option<u32>,
) -> anyhow::Result<Report> {
    let mut report = Report::new("throughput", target);
    let ids = client_ids(peers_n, 11);
    let clocks_max = 4_000_000;
    let book = Book::new(&ids, clocks_max);
    let stats = Arc::new(WireStats::default());
    let doc = format!("throughput-{}", std::process::id());
    target.prepare_doc(&doc).await?;
    let (peers, watermarks) = connect_peers(target, &doc, &ids, peers_n, 0, &book, &stats).await?;
    let peers = Arc::new(peers);
    let watermarks = Arc::new(watermarks);
    let cpu = CpuMeter::start(server_pid);
    let start = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..peers_n {
        let (book, peers, watermarks, sent) = (
            book.clone(),
            peers.clone(),
            watermarks.clone(),
            sent.clone(),
        );
        let id = ids[w];
        tasks.push(tokio::spawn(async move {
            let mut typist = Typist::new(id);
            // Confirmed: every other peer has every clock below this.
            let confirmed = |wm: &Vec<Vec<Arc<AtomicU64>>>| {
                (0..wm.len())
                    .filter(|&r| r != w)
                    .map(|r| wm[r][w].load(Ordering::Acquire))
                    .min()
                    .unwrap_or(0)
            };
            while start.elapsed() < duration && (typist.clock as usize) < clocks_max - 1 {
                if u64::from(typist.clock) - confirmed(&watermarks) >= window {
                    let progressed = wait_for(&book.progress, Duration::from_secs(10), || {
                        u64::from(typist.clock) - confirmed(&watermarks) < window
                    })
                    .await;
                    if !progressed {
                        break;
                    }
                    continue;
                }
                let (clock, update) = typist.type_char();
                book.sent(w, clock);
                if peers[w].send_update(&update).await.is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let delivered_in_time = book.delivered.load(Ordering::Relaxed);
    let messages_in_time = stats.update_messages.load(Ordering::Relaxed);
    let sent = sent.load(Ordering::Relaxed);
    let expected = sent * (peers_n as u64 - 1);
    let complete = wait_for(&book.progress, Duration::from_secs(10), || {
        book.delivered.load(Ordering::Relaxed) >= expected
    })
    .await;
    let (gen_cpu, server_cpu) = cpu.stop();
    let rss = server_pid.map_or(0, rss_kib);
    close_all(Arc::try_unwrap(peers).unwrap_or_default()).await;
    let delivered = book.delivered.load(Ordering::Relaxed);
    report.add("peers", peers_n as f64);
    report.add("window", window as f64);
    report.add("updates_sent", sent as f64);
    report.add("deliveries_per_sec", delivered_in_time as f64 / elapsed);
    report.add("update_messages_per_sec", messages_in_time as f64 / elapsed);
    report.add("delivery_ratio", delivered as f64 / expected.max(1) as f64);
    let missing = (!complete).then(|| expected.saturating_sub(delivered));
    closing_figures(&mut report, &book, (gen_cpu, server_cpu), rss, missing);
    Ok(report)
}

/// The figures every delivery scenario ends with: latency, CPU, memory, and a problem when
/// `missing` deliveries never arrived.
fn closing_figures(
    report: &mut Report,
    book: &Book,
    cpu: (f64, f64),
    rss_kib: u64,
    missing: Option<u64>,
) {
    latency_figures(report, book);
    report.add("generator_cpu_cores", cpu.0);
    report.add("server_cpu_cores", cpu.1);
    report.add("server_rss_mib", rss_kib as f64 / 1024.0);
    if let Some(missing) = missing {
        report.problems.push(format!(
            "{missing} deliveries missing 10 s after the last update"
        ));
    }
}

/// Parameters of the connect scenario.
#[derive(Debug, Clone)]
pub struct Connecting {
    /// Clients at once, each connecting, syncing and closing, over and over.
    pub clients: usize,
    /// Bytes of text the document holds before the clients start.
    pub doc_bytes: usize,
    /// How long clients keep starting new connections.
    pub duration: Duration,
}

/// The longest one connection may take from its TCP connect to the server's sync step 2.
const CONNECT_MAX: Duration = Duration::from_secs(10);

/// The longest a client waits for the server to answer its close frame.
const CLOSE_MAX: Duration = Duration::from_secs(5);

/// What one connecting client measured.
struct Connections {
    /// Latency of every connection that completed its handshake.
    latencies: Histogram<u64>,
    /// Connections that completed their handshake before the deadline.
    in_time: u64,
    failures: u64,
    first_failure: Option<String>,
}

/// Connect: `clients` clients, each opening a connection to one document (the WebSocket
/// upgrade with its token, if the target has one, and the sync handshake until the server's
/// step 2 holds the document), closing it, and starting again, for `duration`. Connections per
/// second (those that completed their handshake within `duration`, so that connections still
/// in flight at its end, or stuck there, do not stretch the window) and the latency from the
/// TCP connect to the step 2.
pub async fn connect(
    target: &Target,
    p: &Connecting,
    server_pid: Option<u32>,
) -> anyhow::Result<Report> {
    let mut report = Report::new("connect", target);
    let doc = format!("connect-{}", std::process::id());
    target.prepare_doc(&doc).await?;
    // The document has its content, and a connection keeps it open, before the clients start:
    // they measure joining a document in use, not loading one from storage.
    let holder = Peer::connect(
        target,
        &doc,
        1,
        Arc::new(WireStats::default()),
        Box::new(|_| {}),
    )
    .await?;
    if p.doc_bytes > 0 {
        holder.send_update(&text_update(1, p.doc_bytes)).await?;
        within_setup(
            &format!("a document of {} bytes", p.doc_bytes),
            holds_at_least(target, &doc, p.doc_bytes),
        )
        .await?;
    }
    let cpu = CpuMeter::start(server_pid);
    let start = Instant::now();
    let deadline = start + p.duration;
    let clients: Vec<_> = (0..p.clients)
        .map(|_| {
            let (target, doc, doc_bytes) = (target.clone(), doc.clone(), p.doc_bytes);
            tokio::spawn(async move { connect_until(&target, &doc, doc_bytes, deadline).await })
        })
        .collect();
    // CPU and memory are read over the same window as the connections counted.
    tokio::time::sleep_until(deadline.into()).await;
    let (gen_cpu, server_cpu) = cpu.stop();
    let rss = server_pid.map_or(0, rss_kib);
    let mut latencies = Histogram::<u64>::new_with_bounds(1, CONNECT_MAX.as_micros() as u64, 3)?;
    let (mut in_time, mut failures, mut first_failure) = (0u64, 0u64, None);
    for client in clients {
        let c = client.await??;
        latencies.add(&c.latencies)?;
        in_time += c.in_time;
        failures += c.failures;
        first_failure = first_failure.or(c.first_failure);
    }
    holder.close().await;
    let window = p.duration.as_secs_f64();
    let ms = |us: u64| us as f64 / 1000.0;
    report.add("clients", p.clients as f64);
    report.add("doc_bytes", p.doc_bytes as f64);
    report.add("connections", in_time as f64);
    report.add("failures", failures as f64);
    report.add("connections_per_sec", in_time as f64 / window);
    if !latencies.is_empty() {
        report.add("latency_p50_ms", ms(latencies.value_at_quantile(0.50)));
        report.add("latency_p99_ms", ms(latencies.value_at_quantile(0.99)));
        report.add("latency_p999_ms", ms(latencies.value_at_quantile(0.999)));
        report.add("latency_max_ms", ms(latencies.max()));
    }
    if server_cpu > 0.0 {
        report.add(
            "connections_per_server_cpu_sec",
            in_time as f64 / (server_cpu * window),
        );
    }
    report.add("generator_cpu_cores", gen_cpu);
    report.add("server_cpu_cores", server_cpu);
    report.add("server_rss_mib", rss as f64 / 1024.0);
    if let Some(first) = first_failure {
        report.problems.push(format!(
            "{failures} of {} connections failed (the first: {first})",
            latencies.len() + failures
        ));
    }
    Ok(report)
}

/// One connecting client: connects, syncs and closes until `deadline`.
async fn connect_until(
    target: &Target,
    doc: &str,
    doc_bytes: usize,
    deadline: Instant,
) -> anyhow::Result<Connections> {
    let mut c = Connections {
        latencies: Histogram::new_with_bounds(1, CONNECT_MAX.as_micros() as u64, 3)?,
        in_time: 0,
        failures: 0,
        first_failure: None,
    };
    while Instant::now() < deadline {
        let began = Instant::now();
        match connect_and_sync(target, doc, doc_bytes).await {
            Ok(mut ws) => {
                c.latencies
                    .saturating_record(began.elapsed().as_micros() as u64);
                c.in_time += u64::from(Instant::now() <= deadline);
                // The closing handshake, as a provider that is destroyed does it: our close
                // frame, then the server's answer.
                let _ = tokio::time::timeout(CLOSE_MAX, async {
                    if ws.close(None).await.is_ok() {
                        while let Some(Ok(_)) = ws.next().await {}
                    }
                })
                .await;
            }
            Err(e) => {
                c.failures += 1;
                c.first_failure.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    Ok(c)
}

/// Opens a connection to `doc` and completes the handshake: returns once the server's sync
/// step 2 (with whatever updates came with it) has brought at least `doc_bytes` of updates,
/// within [`CONNECT_MAX`] of the start; a failure says which part did not complete.
async fn connect_and_sync(
    target: &Target,
    doc: &str,
    doc_bytes: usize,
) -> anyhow::Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
> {
    let limit = tokio::time::Instant::now() + CONNECT_MAX;
    let upgrade =
        tokio_tungstenite::connect_async_with_config(target.request(doc)?, Some(ws_config()), true);
    let (mut ws, _) = tokio::time::timeout_at(limit, upgrade)
        .await
        .map_err(|_| anyhow::anyhow!("no WebSocket upgrade within {CONNECT_MAX:?}"))??;
    if let Some(hello) = target.hello(doc) {
        ws.feed(Message::Binary(hello.into())).await?;
    }
    // Our step 1 with an empty state vector: the server answers with the whole document.
    ws.send(Message::Binary(target.frame(doc, &[0, 0, 1, 0]).into()))
        .await?;
    let (mut step2, mut received) = (false, 0usize);
    loop {
        let next = tokio::time::timeout_at(limit, ws.next())
            .await
            .map_err(|_| {
                anyhow::anyhow!("upgraded, but no sync step 2 within {CONNECT_MAX:?} of connecting")
            })?;
        let Some(message) = next else {
            anyhow::bail!("the connection ended before the sync step 2")
        };
        match message? {
            Message::Binary(frame) => {
                for (sub, payload) in target.sync_messages(&frame) {
                    step2 |= sub == 1;
                    if sub == 1 || sub == 2 {
                        received += payload.len();
                    }
                }
                // A server may answer before it holds the document and send it after.
                if step2 && received >= doc_bytes {
                    return Ok(ws);
                }
            }
            Message::Close(frame) => anyhow::bail!(
                "closed before the sync step 2{}",
                frame.map_or(String::new(), |f| format!(" ({} {})", f.code, f.reason))
            ),
            _ => {}
        }
    }
}

/// Idle: `n` connections held after their handshake; the server's resident memory per
/// connection (run on a freshly started server). With `doc_bytes` > 0 each document first
/// receives a text of that many bytes, so every connection's handshake carries it: what a
/// server keeps per connection after sending a large document.
pub async fn idle(
    target: &Target,
    n: usize,
    doc_bytes: usize,
    server_pid: Option<u32>,
) -> anyhow::Result<Report> {
    let mut report = Report::new("idle", target);
    let stats = Arc::new(WireStats::default());
    let docs = n.div_ceil(IDLE_PEERS_PER_DOC);
    let run = format!("idle-{}", std::process::id());
    let mut warm = Vec::new();
    for d in 0..docs {
        let doc = format!("{run}-{d}");
        target.prepare_doc(&doc).await?;
        let peer = Peer::connect(target, &doc, 1, stats.clone(), Box::new(|_| {})).await?;
        if doc_bytes > 0 {
            peer.send_update(&text_update(1, doc_bytes)).await?;
            within_setup(
                &format!("a document of {doc_bytes} bytes"),
                holds_at_least(target, &doc, doc_bytes),
            )
            .await?;
        }
        warm.push(peer);
    }
    let before = server_pid.map_or(0, rss_kib);
    // Connections open CONNECTING_MAX at a time, as a crowd arriving would.
    let open =
        futures_util::stream::iter(0..n)
            .map(|i| {
                let doc = format!("{run}-{}", i % docs);
                let stats = stats.clone();
                async move {
                    Peer::connect(target, &doc, 1000 + i as u32, stats, Box::new(|_| {})).await
                }
            })
            .buffer_unordered(CONNECTING_MAX)
            .try_collect::<Vec<Peer>>();
    let held = within_setup(&format!("{n} idle connections"), open).await?;
    let after = server_pid.map_or(0, rss_kib);
    report.add("connections", n as f64);
    report.add("server_rss_before_mib", before as f64 / 1024.0);
    report.add("server_rss_after_mib", after as f64 / 1024.0);
    report.add("added_mib", after.saturating_sub(before) as f64 / 1024.0);
    report.add(
        "kib_per_connection",
        after.saturating_sub(before) as f64 / n as f64,
    );
    for p in held.into_iter().chain(warm) {
        drop(p);
    }
    Ok(report)
}

/// An update of client `client` inserting a text of `bytes` ASCII bytes.
fn text_update(client: u64, bytes: usize) -> Vec<u8> {
    let doc = Doc::with_client_id(client);
    let text = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    text.insert(&mut txn, 0, &"x".repeat(bytes));
    txn.encode_update_v1()
}

/// Waits until a newcomer to `doc` receives a state of at least `bytes` bytes.
async fn holds_at_least(target: &Target, doc: &str, bytes: usize) -> anyhow::Result<()> {
    loop {
        let largest = Arc::new(AtomicU64::new(0));
        let seen = largest.clone();
        let probe = Peer::connect(
            target,
            doc,
            2,
            Arc::new(WireStats::default()),
            Box::new(move |update| {
                seen.fetch_max(update.len() as u64, Ordering::Relaxed);
            }),
        )
        .await?;
        probe.close().await;
        if largest.load(Ordering::Relaxed) >= bytes as u64 {
            return Ok(());
        }
        // The writer's update is still on its way: ask again shortly.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Replay: every patch of a trace through one writer, pipelined; done when a second client's
/// document equals the trace's end content.
pub async fn replay(
    target: &Target,
    trace: &Trace,
    doc: &str,
    server_pid: Option<u32>,
) -> anyhow::Result<Report> {
    let mut report = Report::new("replay", target);
    let updates = trace.updates(4242, "t");
    target.prepare_doc(doc).await?;
    let stats = Arc::new(WireStats::default());
    let done = Arc::new(Notify::new());
    let finished = Arc::new(AtomicU64::new(0));
    let reader_doc = Doc::with_client_id(1);
    let want = trace.end_content.clone();
    let (d2, f2) = (done.clone(), finished.clone());
    let on_update = Box::new(move |u: &[u8]| {
        if let Ok(update) = Update::decode_v1(u) {
            let _ = reader_doc.transact_mut().apply_update(update);
        }
        // Comparing costs a full string: do it only once the length matches.
        if f2.load(Ordering::Relaxed) == 0 {
            let text = reader_doc.get_or_insert_text("t");
            let txn = reader_doc.transact();
            if text.len(&txn) as usize == want.len() && text.get_string(&txn) == want {
                f2.store(1, Ordering::Release);
                d2.notify_waiters();
            }
        }
    });
    let reader = Peer::connect(target, doc, 1, stats.clone(), on_update).await?;
    let writer = Peer::connect(target, doc, 4242, stats.clone(), Box::new(|_| {})).await?;
    let cpu = CpuMeter::start(server_pid);
    let start = Instant::now();
    let send = async {
        for u in &updates {
            writer.send_update(u).await?;
        }
        anyhow::Ok(())
    };
    let sent = tokio::time::timeout(REPLAY_MAX, send).await;
    let sent_in = start.elapsed();
    let ok = match sent {
        Ok(sent) => {
            sent?;
            wait_for(&done, REPLAY_MAX.saturating_sub(sent_in), || {
                finished.load(Ordering::Acquire) == 1
            })
            .await
        }
        Err(_) => false,
    };
    let elapsed = start.elapsed();
    let (gen_cpu, server_cpu) = cpu.stop();
    report.add("updates", updates.len() as f64);
    report.add("send_seconds", sent_in.as_secs_f64());
    if ok {
        report.add("replay_seconds", elapsed.as_secs_f64());
    }
    report.add("generator_cpu_cores", gen_cpu);
    report.add("server_cpu_cores", server_cpu);
    report.add(
        "server_rss_mib",
        server_pid.map_or(0, rss_kib) as f64 / 1024.0,
    );
    if !ok {
        report.problems.push(format!(
            "the second client did not reach the trace's end content within {REPLAY_MAX:?}"
        ));
    }
    writer.close().await;
    reader.close().await;
    Ok(report)
}

/// Cold load: connect to a stored document (after a restart) and time until the whole state
/// has arrived (`cold_load_ms`, the server's part) and until the generator has integrated it
/// (`cold_load_applied_ms`; the integration costs the same whichever server sent the state).
pub async fn cold_load(target: &Target, trace: &Trace, doc: &str) -> anyhow::Result<Report> {
    /// When the state was whole: the arrival of the update that completed it, and the end of
    /// its integration.
    #[derive(Default)]
    struct Seen {
        whole: Option<(Duration, Duration)>,
    }
    let mut report = Report::new("cold_load", target);
    let stats = Arc::new(WireStats::default());
    let holder = Doc::with_client_id(2);
    let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
    let done = Arc::new(Notify::new());
    let (s2, d2, want) = (seen.clone(), done.clone(), trace.end_content.clone());
    let start = Instant::now();
    // A server may answer the handshake before it has loaded the document (y-websocket binds
    // its persistence asynchronously) and send the content later: the state is held once the
    // client's text equals the trace's end, however many messages that took.
    let on_update = Box::new(move |u: &[u8]| {
        let arrival = start.elapsed();
        if let Ok(update) = Update::decode_v1(u) {
            let _ = holder.transact_mut().apply_update(update);
        }
        let Ok(mut seen) = s2.lock() else { return };
        if seen.whole.is_none() {
            let text = holder.get_or_insert_text("t");
            let txn = holder.transact();
            if text.len(&txn) as usize == want.len() && text.get_string(&txn) == want {
                seen.whole = Some((arrival, start.elapsed()));
                d2.notify_waiters();
            }
        }
    });
    let peer = Peer::connect(target, doc, 2, stats, on_update).await?;
    let whole = || seen.lock().ok().and_then(|s| s.whole);
    wait_for(&done, Duration::from_secs(30), || whole().is_some()).await;
    match whole() {
        Some((received, applied)) => {
            report.add("cold_load_ms", received.as_secs_f64() * 1000.0);
            report.add("cold_load_applied_ms", applied.as_secs_f64() * 1000.0);
        }
        // Time to the wrong state is no cold load: no figure, a problem.
        None => report
            .problems
            .push("the client did not hold the trace's end content within 30 s".into()),
    }
    peer.close().await;
    Ok(report)
}
