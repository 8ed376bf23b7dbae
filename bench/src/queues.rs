//! Work queues under load: producers send items, competing consumers take each with a lease
//! and acknowledge it. roomd's `queues` toolkit (each send answered once the item is durable)
//! beside a real `redis-server` doing the same with Streams (XADD, XREADGROUP into one
//! consumer group, XACK, with `appendfsync everysec`), in one run. Each item carries the time
//! it was sent, so a consumer records the send-to-receive latency; items per second run from
//! the first send to the last acknowledgement. Producers keep a window of sends in flight (a
//! pipeline on Redis, concurrent calls on roomd); each consumer keeps `workers` items in hand,
//! each taken by a worker of its own (a connection of its own on both) that receives one item,
//! acknowledges it, and receives the next, as a consumer process with a pool of workers does.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::scenarios::Report;

/// The load.
#[derive(Debug, Clone, Copy)]
pub struct QueueLoad {
    /// Producers, each on a connection of its own.
    pub producers: usize,
    /// Consumers.
    pub consumers: usize,
    /// Workers of each consumer, each on a connection of its own, each with one item in hand.
    pub workers: usize,
    /// Items in all.
    pub items: usize,
    /// Sends a producer keeps in flight.
    pub window: usize,
    /// Items per second sent in all, paced evenly over the producers; `None`: as fast as the
    /// window allows. A paced run measures latency with no backlog; an unpaced one,
    /// throughput.
    pub rate: Option<f64>,
}

/// A producer's pace: a tick per item when the load is paced.
fn pace(load: &QueueLoad) -> Option<tokio::time::Interval> {
    let rate = load.rate?;
    let every = Duration::from_secs_f64(load.producers as f64 / rate.max(1e-3));
    let mut i = tokio::time::interval(every);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    Some(i)
}

/// The longest the run may take.
const RUN_MAX: Duration = Duration::from_secs(300);

/// What every consumer shares: the items received (to tell a second delivery), the latency
/// of each, and when the last one was acknowledged.
#[derive(Debug)]
pub struct Tally {
    seen: Mutex<HashSet<u64>>,
    latency: Mutex<Histogram<u64>>,
    done: AtomicU64,
    duplicates: AtomicU64,
    started: Instant,
    last_ack_us: AtomicU64,
    all_done: tokio::sync::Notify,
}

impl Tally {
    /// A tally starting now.
    pub fn new() -> anyhow::Result<Tally> {
        Ok(Tally {
            seen: Mutex::new(HashSet::new()),
            latency: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
            done: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            started: Instant::now(),
            last_ack_us: AtomicU64::new(0),
            all_done: tokio::sync::Notify::new(),
        })
    }

    /// Microseconds since the run started: what an item carries as its send time.
    pub fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// Item `n`, sent at `sent_us`, was received now.
    pub fn received(&self, n: u64, sent_us: u64) {
        let now = self.now_us();
        if let Ok(mut h) = self.latency.lock() {
            let _ = h.record(now.saturating_sub(sent_us).max(1));
        }
        let fresh = self.seen.lock().map(|mut s| s.insert(n)).unwrap_or(true);
        if !fresh {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An item was acknowledged; true once all `items` have been.
    pub fn acked(&self, items: usize) -> bool {
        self.last_ack_us.fetch_max(self.now_us(), Ordering::Relaxed);
        let all = self.done.fetch_add(1, Ordering::Relaxed) + 1 >= items as u64;
        if all {
            self.all_done.notify_one();
        }
        all
    }

    /// Whether all `items` were acknowledged.
    pub fn finished(&self, items: usize) -> bool {
        self.done.load(Ordering::Relaxed) >= items as u64
    }

    /// The report of a run against `server`.
    pub fn report(&self, server: &str, load: &QueueLoad) -> Report {
        let mut report = Report {
            scenario: if load.rate.is_some() {
                "queues-latency".into()
            } else {
                "queues-throughput".into()
            },
            server: server.into(),
            ..Report::default()
        };
        let seconds = self.last_ack_us.load(Ordering::Relaxed) as f64 / 1e6;
        let done = self.done.load(Ordering::Relaxed) as f64;
        let distinct = self.seen.lock().map(|s| s.len()).unwrap_or(0) as f64;
        report
            .figures
            .push(("items_per_s".into(), done / seconds.max(1e-9)));
        if let Ok(h) = self.latency.lock() {
            let ms = |us: u64| us as f64 / 1000.0;
            report
                .figures
                .push(("p50_ms".into(), ms(h.value_at_quantile(0.5))));
            report
                .figures
                .push(("p99_ms".into(), ms(h.value_at_quantile(0.99))));
            report.figures.push(("max_ms".into(), ms(h.max())));
        }
        report.figures.push(("items".into(), load.items as f64));
        report.figures.push(("received".into(), distinct));
        report.figures.push((
            "duplicates".into(),
            self.duplicates.load(Ordering::Relaxed) as f64,
        ));
        report
    }
}

/// The items producer `p` of `load` sends: every `producers`th from `p`.
fn items_of(p: usize, load: &QueueLoad) -> impl Iterator<Item = u64> {
    (p..load.items).step_by(load.producers).map(|n| n as u64)
}

/// Starts `redis-server` (Debian's package) on `port` with its data in `dir`, append-only
/// with `appendfsync everysec`; waits until it answers.
pub async fn start_redis(dir: &Path, port: u16) -> anyhow::Result<tokio::process::Child> {
    let child = tokio::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir)
        .args(["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!("redis-server could not start ({e}): install it with `apt-get install redis-server`")
        })?;
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut c) = client.get_multiplexed_async_connection().await {
            let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut c).await;
            if pong.is_ok() {
                return Ok(child);
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "redis-server did not answer");
        tokio::time::sleep(Duration::from_millis(20)).await; // polling readiness
    }
}

/// The load through Redis Streams on `port`: producers XADD (pipelined, `window` in flight),
/// consumers of one group XREADGROUP one item at a time, blocking, then XACK it.
pub async fn redis_streams(port: u16, load: QueueLoad) -> anyhow::Result<Report> {
    const STREAM: &str = "jobs";
    const GROUP: &str = "workers";
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let mut admin = client.get_multiplexed_async_connection().await?;
    let _: redis::Value = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg(GROUP)
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut admin)
        .await?;
    let tally = Arc::new(Tally::new()?);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..load.consumers * load.workers {
        // A blocking read holds its connection: one of its own per worker.
        let mut con = client.get_multiplexed_async_connection().await?;
        let tally = tally.clone();
        tasks.spawn(async move {
            let name = format!("c{c}");
            while !tally.finished(load.items) {
                let got: redis::Value = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(&name)
                    .arg("COUNT")
                    .arg(1)
                    .arg("BLOCK")
                    .arg(100)
                    .arg("STREAMS")
                    .arg(STREAM)
                    .arg(">")
                    .query_async(&mut con)
                    .await?;
                for (id, fields) in stream_entries(&got) {
                    let field = |k: &str| {
                        fields
                            .iter()
                            .find(|(f, _)| f == k)
                            .and_then(|(_, v)| v.parse::<u64>().ok())
                    };
                    if let (Some(n), Some(t)) = (field("n"), field("t")) {
                        tally.received(n, t);
                    }
                    let _: u64 = redis::cmd("XACK")
                        .arg(STREAM)
                        .arg(GROUP)
                        .arg(&id)
                        .query_async(&mut con)
                        .await?;
                    tally.acked(load.items);
                }
            }
            anyhow::Ok(())
        });
    }
    for p in 0..load.producers {
        let con = client.get_multiplexed_async_connection().await?;
        let tally = tally.clone();
        tasks.spawn(async move {
            let window = Arc::new(tokio::sync::Semaphore::new(load.window));
            let mut sends = tokio::task::JoinSet::new();
            let mut pace = pace(&load);
            for n in items_of(p, &load) {
                if let Some(pace) = pace.as_mut() {
                    pace.tick().await;
                }
                let permit = window.clone().acquire_owned().await?;
                let mut con = con.clone();
                let t = tally.now_us();
                sends.spawn(async move {
                    let _id: String = redis::cmd("XADD")
                        .arg(STREAM)
                        .arg("*")
                        .arg("n")
                        .arg(n)
                        .arg("t")
                        .arg(t)
                        .query_async(&mut con)
                        .await?;
                    drop(permit);
                    anyhow::Ok(())
                });
                while let Some(r) = sends.try_join_next() {
                    r??;
                }
            }
            while let Some(r) = sends.join_next().await {
                r??;
            }
            anyhow::Ok(())
        });
    }
    tokio::time::timeout(RUN_MAX, async {
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        anyhow::Ok(())
    })
    .await
    .map_err(|_| anyhow::anyhow!("the Redis run did not finish in time"))??;
    Ok(tally.report("redis", &load))
}

/// The entries of an XREADGROUP answer: (id, [(field, value)]).
fn stream_entries(v: &redis::Value) -> Vec<(String, Vec<(String, String)>)> {
    use redis::Value as V;
    let text = |v: &V| match v {
        V::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        V::SimpleString(s) => s.clone(),
        _ => String::new(),
    };
    let mut out = Vec::new();
    let streams: Vec<&V> = match v {
        V::Array(a) => a.iter().collect(),
        V::Map(m) => m.iter().map(|(_, v)| v).collect(),
        _ => Vec::new(),
    };
    for s in streams {
        // RESP2: [name, entries]; RESP3 map values: entries.
        let entries = match s {
            V::Array(pair) if pair.len() == 2 && matches!(pair[1], V::Array(_)) => &pair[1],
            other => other,
        };
        let V::Array(entries) = entries else { continue };
        for e in entries {
            let V::Array(parts) = e else { continue };
            let [id, V::Array(kv)] = parts.as_slice() else {
                continue;
            };
            let fields = kv
                .chunks(2)
                .filter_map(|c| match c {
                    [k, v] => Some((text(k), text(v))),
                    _ => None,
                })
                .collect();
            out.push((text(id), fields));
        }
    }
    out
}

/// The queue the roomd run uses.
const QUEUE: &str = "jobs";

/// The load through roomd's `queues` toolkit at `target`: producers `send` (each answered once
/// the item is durable; `window` in flight on each connection), each consumer's workers
/// `receive` with a lease and `wait` (a long poll), one item at a time, then `ack` the receipt
/// (answered once durable).
pub async fn roomd_queues(
    target: &crate::target::Target,
    load: QueueLoad,
) -> anyhow::Result<Report> {
    use crate::room::{conn, invoke_json};
    use serde_json::json;
    let calls = Arc::new(AtomicU64::new(0));
    let call = {
        let calls = calls.clone();
        move || calls.fetch_add(1, Ordering::Relaxed)
    };
    let mut first = conn(target, target.token.clone()).await?;
    first
        .send(invoke_json(
            "queues",
            "open",
            call(),
            json!({"name": QUEUE}),
        ))
        .await?;
    let opened = first.response("queues.open").await?;
    anyhow::ensure!(
        opened.header["type"] == "empty",
        "open: {:?}",
        opened.header
    );
    let tally = Arc::new(Tally::new()?);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..load.consumers * load.workers {
        let mut c = conn(target, target.token.clone()).await?;
        let tally = tally.clone();
        let call = call.clone();
        tasks.spawn(async move {
            while !tally.finished(load.items) {
                let args = json!({"name": QUEUE, "create": true, "wait": true, "lease_ms": 30_000});
                c.send(invoke_json("queues", "receive", call(), args))
                    .await?;
                let got = c.response("queues.receive").await?;
                let answer = &got.header;
                if answer["type"] == "empty" {
                    continue;
                }
                anyhow::ensure!(answer["type"] == "json", "receive: {answer:?}");
                let json = &answer["json"];
                let message = &json["message"];
                let (Some(n), Some(t)) = (message["n"].as_u64(), message["t"].as_u64()) else {
                    anyhow::bail!("receive answered {json}");
                };
                tally.received(n, t);
                let receipt = json["receipt"].clone();
                c.send(invoke_json(
                    "queues",
                    "ack",
                    call(),
                    json!({"receipt": receipt}),
                ))
                .await?;
                let acked = c.response("queues.ack").await?;
                anyhow::ensure!(acked.header["type"] != "error", "ack: {:?}", acked.header);
                tally.acked(load.items);
            }
            anyhow::Ok(())
        });
    }
    for p in 0..load.producers {
        let crate::room::Conn {
            mut sink,
            mut reader,
        } = conn(target, target.token.clone()).await?;
        let tally = tally.clone();
        let call = call.clone();
        let window = Arc::new(tokio::sync::Semaphore::new(load.window));
        let sent = items_of(p, &load).count();
        let answers = window.clone();
        // The answers, in any order: each frees a place in the window.
        tasks.spawn(async move {
            for _ in 0..sent {
                let (m, payload) = tokio::time::timeout(RUN_MAX, reader.next())
                    .await
                    .map_err(|_| anyhow::anyhow!("a send was not answered"))?
                    .ok_or_else(|| anyhow::anyhow!("a producer's connection ended"))?;
                if m.kind != "__response__" {
                    continue;
                }
                anyhow::ensure!(
                    payload.header["type"] == "empty",
                    "send: {:?}",
                    payload.header
                );
                answers.add_permits(1);
            }
            anyhow::Ok(())
        });
        tasks.spawn(async move {
            let mut pace = pace(&load);
            for n in items_of(p, &load) {
                if let Some(pace) = pace.as_mut() {
                    pace.tick().await;
                }
                window.acquire().await?.forget();
                let message = json!({"n": n, "t": tally.now_us()});
                let args = json!({"name": QUEUE, "create": true, "message": message});
                crate::room::send_now(&mut sink, invoke_json("queues", "send", call(), args))
                    .await?;
            }
            anyhow::Ok(())
        });
    }
    // Consumers still waiting in a long poll when the last item is acknowledged are let go.
    tokio::time::timeout(RUN_MAX, async {
        loop {
            tokio::select! {
                r = tasks.join_next() => match r {
                    Some(r) => r??,
                    None => break,
                },
                () = tally.all_done.notified() => break,
            }
        }
        anyhow::Ok(())
    })
    .await
    .map_err(|_| anyhow::anyhow!("the roomd run did not finish in time"))??;
    tasks.abort_all();
    Ok(tally.report("roomd", &load))
}
