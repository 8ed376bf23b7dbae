//! `roomd-bench`: drives the same load against roomd and the peer servers and prints figures
//! (human-readable lines, then one JSON line per scenario).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use roomd_bench::scenarios::{self, Connecting, Report, Typing};
use roomd_bench::target::{Kind, Target};
use roomd_bench::{compare, load_trace, render};

#[derive(Debug, Parser)]
#[command(name = "roomd-bench", about = "Load generator for roomd and its peers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// Which server is listening.
    #[arg(long, value_enum, default_value = "roomd")]
    server: Kind,
    /// Its address.
    #[arg(long, default_value = "127.0.0.1:8787")]
    addr: String,
    /// Its process id, to read its CPU time and resident memory.
    #[arg(long)]
    pid: Option<u32>,
    /// A participant token every connection presents (`Authorization: Bearer`), for a roomd
    /// whose store holds an API key (`roomd token --key KEY --room bench ...`).
    #[arg(long, env = "ROOMD_BENCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every scenario against roomd and each peer in turn, each run on a freshly started
    /// server; writes the figures into BENCHMARKS.md and the plots beside it.
    Compare {
        /// Runs of each scenario on each server (the median is kept).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Servers to run, in order.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "roomd,y-websocket,hocuspocus,y-sweet"
        )]
        servers: Vec<Kind>,
        /// Only the scenarios whose key starts with one of these (fanout, throughput, rooms,
        /// connect, idle, replay, cold-load; fanout-100, idle-5000, ...).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Run roomd with authentication on in every scenario: an API key in its store (made
        /// with `roomd key create`) and a token (`roomd token`) on every connection. Without
        /// it, only the connect scenario runs roomd with authentication on.
        #[arg(long)]
        auth: bool,
        /// A few seconds per scenario instead of the full sizes.
        #[arg(long)]
        smoke: bool,
        /// The roomd binary.
        #[arg(long, default_value = "target/release/roomd")]
        roomd: PathBuf,
        /// Where bench/peers/install put the peers.
        #[arg(long, default_value = "bench/peers")]
        peers: PathBuf,
        /// The editing trace of the replay and cold-load scenarios.
        #[arg(
            long,
            default_value = "../shared/data/editing-traces/automerge-paper.json.gz"
        )]
        trace: PathBuf,
        /// The document whose figures section is rewritten (created when missing).
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: PathBuf,
        /// Where the SVG plots go (linked from `out` by this relative path).
        #[arg(long, default_value = "docs/bench")]
        plots: PathBuf,
    },
    /// One document, many peers, some of them typing: latency to every other peer.
    Fanout {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long, default_value_t = 100)]
        peers: usize,
        #[arg(long, default_value_t = 20)]
        writers: usize,
        #[arg(long, default_value_t = 6.0)]
        rate: f64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Many documents with a few peers each.
    Rooms {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long, default_value_t = 200)]
        docs: usize,
        #[arg(long, default_value_t = 4)]
        peers: usize,
        #[arg(long, default_value_t = 6.0)]
        rate: f64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Every peer writes as fast as the server delivers, within a window of unconfirmed updates.
    Throughput {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long, default_value_t = 10)]
        peers: usize,
        #[arg(long, default_value_t = 64)]
        window: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// The cheapest relay of the y-websocket protocol (no document, no storage), to run the
    /// scenarios against: the floor this machine puts under every server's latency.
    Relay {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8788")]
        listen: String,
    },
    /// Clients connecting, syncing and closing, over and over: connections per second and the
    /// latency from the TCP connect to the server's sync step 2.
    Connect {
        #[command(flatten)]
        server: ServerArgs,
        /// Clients connecting at once.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Bytes of text the document holds.
        #[arg(long, default_value_t = compare::CONNECT_DOC_BYTES)]
        doc_bytes: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Connections held after their handshake: the server's memory per connection.
    Idle {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Bytes of text each document holds before the connections open (0: empty).
        #[arg(long, default_value_t = 0)]
        doc_bytes: usize,
    },
    /// Replays an editing trace through one writer until a second client holds its end state.
    Replay {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        trace: TraceArgs,
    },
    /// The room protocol on a freshly started roomd with authentication on, in one run:
    /// fan-out over it beside the y-websocket endpoint, a tool call's round trip between two
    /// participants beside a bare WebSocket echo (the floor), and messaging broadcast.
    RoomProtocol {
        /// The roomd binary.
        #[arg(long, default_value = "target/release/roomd")]
        roomd: PathBuf,
        /// Peers on the fan-out document.
        #[arg(long, default_value_t = 100)]
        peers: usize,
        /// Of them, typing.
        #[arg(long, default_value_t = 20)]
        writers: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Tool calls made one after another.
        #[arg(long, default_value_t = 2000)]
        calls: usize,
        /// Participants receiving each broadcast (besides its sender).
        #[arg(long, default_value_t = 100)]
        receivers: usize,
        /// Messages broadcast, at 20 a second.
        #[arg(long, default_value_t = 200)]
        messages: usize,
    },
    /// Work queues in one run: roomd's `queues` toolkit (sends answered once durable, receives
    /// with a lease, acknowledgements) beside a real `redis-server` with Streams (XADD,
    /// XREADGROUP, XACK, `appendfsync everysec`), each started fresh by the benchmark.
    Queues {
        /// The roomd binary.
        #[arg(long, default_value = "target/release/roomd")]
        roomd: PathBuf,
        #[arg(long, default_value_t = 4)]
        producers: usize,
        #[arg(long, default_value_t = 4)]
        consumers: usize,
        /// Workers of each consumer, each with one item in hand at a time.
        #[arg(long, default_value_t = 16)]
        workers: usize,
        #[arg(long, default_value_t = 20_000)]
        items: usize,
        /// Sends each producer keeps in flight.
        #[arg(long, default_value_t = 16)]
        window: usize,
        /// Items per second of the latency run (paced, so that nothing waits in a backlog).
        #[arg(long, default_value_t = 2_000.0)]
        rate: f64,
        /// Items of the latency run.
        #[arg(long, default_value_t = 10_000)]
        latency_items: usize,
    },
    /// Times loading a stored document (run `replay` first, then restart the server).
    ColdLoad {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        trace: TraceArgs,
    },
}

/// The trace to replay and the document that holds it.
#[derive(Debug, clap::Args)]
struct TraceArgs {
    /// A gzipped editing trace (automerge-paper.json.gz).
    #[arg(long)]
    trace: PathBuf,
    #[arg(long, default_value = "replay")]
    doc: String,
}

fn target(s: &ServerArgs) -> Target {
    Target {
        kind: s.server,
        addr: s.addr.clone(),
        token: s.token.clone(),
        room_protocol: false,
    }
}

/// Starts a fresh roomd with an API key in its store; returns it, the key and the directory.
async fn fresh_roomd(
    programs: &compare::Programs,
) -> anyhow::Result<(compare::ServerProcess, String, tempfile::TempDir)> {
    let data = tempfile::tempdir()?;
    let key = compare::roomd_key(programs, data.path()).await?;
    let server = compare::ServerProcess::start(Kind::Roomd, programs, data.path(), None).await?;
    Ok((server, key, data))
}

/// The `queues` subcommand (see [`Command::Queues`]): each load on a fresh `redis-server`,
/// then on a fresh roomd with authentication on; the figures, then roomd's as ratios of
/// Redis's.
async fn queues(roomd: PathBuf, loads: [roomd_bench::queues::QueueLoad; 2]) -> anyhow::Result<()> {
    let programs = compare::Programs {
        roomd,
        peers: PathBuf::from("bench/peers"),
    };
    let mut pairs = Vec::new();
    for load in loads {
        let dir = tempfile::tempdir()?;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let mut redis = roomd_bench::queues::start_redis(dir.path(), port).await?;
        let r = roomd_bench::queues::redis_streams(port, load).await?;
        r.print();
        redis.kill().await?;
        let (server, key, _data) = fresh_roomd(&programs).await?;
        let token = compare::roomd_mint(&programs, &key, "bench").await?;
        let target = Target {
            token: Some(token),
            room_protocol: true,
            ..server.target.clone()
        };
        let ours = roomd_bench::queues::roomd_queues(&target, load).await?;
        ours.print();
        server.stop().await;
        pairs.push((r, ours));
    }
    println!("roomd / redis:");
    for (redis, ours) in &pairs {
        for (name, value) in &ours.figures {
            let theirs = redis
                .figures
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| *v);
            if let Some(theirs) = theirs.filter(|t| *t > 0.0) {
                println!(
                    "    {:<20} {name:<14} {:>8.2}",
                    ours.scenario,
                    value / theirs
                );
            }
        }
    }
    Ok(())
}

/// The `room-protocol` subcommand (see [`Command::RoomProtocol`]).
async fn room_protocol(
    roomd: PathBuf,
    peers: usize,
    writers: usize,
    seconds: u64,
    calls: usize,
    receivers: usize,
    messages: usize,
) -> anyhow::Result<()> {
    let programs = compare::Programs {
        roomd,
        peers: PathBuf::from("bench/peers"),
    };
    let p = Typing {
        docs: 1,
        peers,
        writers,
        rate: 6.0,
        duration: Duration::from_secs(seconds),
    };
    let mut reports = Vec::new();
    for room in [false, true] {
        let (server, key, _data) = fresh_roomd(&programs).await?;
        let token = compare::roomd_mint(&programs, &key, "bench").await?;
        let target = Target {
            token: Some(token),
            room_protocol: room,
            ..server.target.clone()
        };
        let name = if room {
            "fanout-room-protocol"
        } else {
            "fanout-yjs"
        };
        let r = scenarios::typing(&target, name, &p, Some(server.pid)).await?;
        r.print();
        reports.push(r);
        server.stop().await;
    }
    let (server, key, _data) = fresh_roomd(&programs).await?;
    let target = Target {
        room_protocol: true,
        ..server.target.clone()
    };
    let host = compare::roomd_mint(&programs, &key, "host").await?;
    let caller = compare::roomd_mint(&programs, &key, "caller").await?;
    let r = roomd_bench::room::tool_calls(&target, Some(host), Some(caller), calls).await?;
    r.print();
    reports.push(r);
    let mut tokens = Vec::with_capacity(receivers + 1);
    for i in 0..=receivers {
        tokens.push(Some(
            compare::roomd_mint(&programs, &key, &format!("p{i}")).await?,
        ));
    }
    let r = roomd_bench::room::broadcast(&target, tokens, messages, 20.0).await?;
    r.print();
    reports.push(r);
    server.stop().await;
    let fig = |r: &Report, name: &str| {
        r.figures
            .iter()
            .find(|(n, _)| n == name)
            .map_or(f64::NAN, |(_, v)| *v)
    };
    println!("\n| | y-websocket endpoint | room protocol | ratio |\n|---|---:|---:|---:|");
    for (label, name) in [
        ("fan-out p50 (ms)", "latency_p50_ms"),
        ("fan-out p99 (ms)", "latency_p99_ms"),
    ] {
        let (a, b) = (fig(&reports[0], name), fig(&reports[1], name));
        println!("| {label} | {a:.2} | {b:.2} | {:.2} |", b / a);
    }
    let t = &reports[2];
    println!("\n| | tool call | bare WebSocket echo | ratio |\n|---|---:|---:|---:|");
    for q in ["p50", "p99"] {
        let (a, b) = (
            fig(t, &format!("tool_call_{q}_ms")),
            fig(t, &format!("echo_floor_{q}_ms")),
        );
        println!("| round trip {q} (ms) | {a:.3} | {b:.3} | {:.2} |", a / b);
    }
    let b = &reports[3];
    println!(
        "\nbroadcast to {} participants: {} of {} delivered, p50 {:.2} ms, p99 {:.2} ms",
        receivers,
        fig(b, "deliveries"),
        fig(b, "deliveries_expected"),
        fig(b, "latency_p50_ms"),
        fig(b, "latency_p99_ms")
    );
    let problems: usize = reports.iter().map(|r| r.problems.len()).sum();
    anyhow::ensure!(problems == 0, "{problems} problem(s) during the run");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let report: Report = match cli.command {
        Command::Relay { listen } => {
            let listener = tokio::net::TcpListener::bind(&listen).await?;
            println!("relay listening on {}", listener.local_addr()?);
            return roomd_bench::relay::serve(listener).await;
        }
        Command::Compare {
            runs,
            servers,
            only,
            auth,
            smoke,
            roomd,
            peers,
            trace,
            out,
            plots,
        } => {
            let scale = if smoke {
                compare::Scale::SMOKE
            } else {
                compare::Scale::FULL
            };
            let steps: Vec<compare::Step> = scale
                .steps()
                .into_iter()
                .filter(|s| only.is_empty() || only.iter().any(|o| s.key().starts_with(o)))
                .collect();
            let programs = compare::Programs { roomd, peers };
            let trace = load_trace(&trace)?;
            let results =
                compare::compare(&servers, &scale, &steps, runs, auth, &programs, &trace).await?;
            let versions = format!(
                "{} {}",
                compare::versions(&programs, &servers),
                compare::auth_note(auth)
            );
            let section = render::figures_section(
                &results,
                &servers,
                &scale,
                runs,
                &plots,
                &plots.display().to_string(),
                &versions,
            )?;
            let doc = std::fs::read_to_string(&out).unwrap_or_else(|_| "# Benchmarks\n".into());
            std::fs::write(&out, render::splice(&doc, &section))?;
            println!(
                "wrote {} and the plots in {}",
                out.display(),
                plots.display()
            );
            let failed: usize = results.values().map(|o| o.problems.len()).sum();
            anyhow::ensure!(
                failed == 0,
                "{failed} problem(s) during the comparison (see {})",
                out.display()
            );
            return Ok(());
        }
        Command::Queues {
            roomd,
            producers,
            consumers,
            workers,
            items,
            window,
            rate,
            latency_items,
        } => {
            let throughput = roomd_bench::queues::QueueLoad {
                producers,
                consumers,
                workers,
                items,
                window,
                rate: None,
            };
            let latency = roomd_bench::queues::QueueLoad {
                items: latency_items,
                rate: Some(rate),
                ..throughput
            };
            return queues(roomd, [throughput, latency]).await;
        }
        Command::RoomProtocol {
            roomd,
            peers,
            writers,
            seconds,
            calls,
            receivers,
            messages,
        } => {
            return room_protocol(roomd, peers, writers, seconds, calls, receivers, messages).await;
        }
        Command::Fanout {
            server,
            peers,
            writers,
            rate,
            seconds,
        } => {
            let p = Typing {
                docs: 1,
                peers,
                // At most every peer types.
                writers: writers.min(peers),
                rate,
                duration: Duration::from_secs(seconds),
            };
            scenarios::typing(&target(&server), "fanout", &p, server.pid).await?
        }
        Command::Rooms {
            server,
            docs,
            peers,
            rate,
            seconds,
        } => {
            let p = Typing {
                docs,
                peers,
                writers: 1,
                rate,
                duration: Duration::from_secs(seconds),
            };
            scenarios::typing(&target(&server), "rooms", &p, server.pid).await?
        }
        Command::Throughput {
            server,
            peers,
            window,
            seconds,
        } => {
            scenarios::throughput(
                &target(&server),
                peers,
                window,
                Duration::from_secs(seconds),
                server.pid,
            )
            .await?
        }
        Command::Connect {
            server,
            clients,
            doc_bytes,
            seconds,
        } => {
            let p = Connecting {
                clients,
                doc_bytes,
                duration: Duration::from_secs(seconds),
            };
            scenarios::connect(&target(&server), &p, server.pid).await?
        }
        Command::Idle {
            server,
            connections,
            doc_bytes,
        } => scenarios::idle(&target(&server), connections, doc_bytes, server.pid).await?,
        Command::Replay { server, trace } => {
            let doc = trace.doc;
            let trace = load_trace(&trace.trace)?;
            scenarios::replay(&target(&server), &trace, &doc, server.pid).await?
        }
        Command::ColdLoad { server, trace } => {
            let doc = trace.doc;
            let trace = load_trace(&trace.trace)?;
            scenarios::cold_load(&target(&server), &trace, &doc).await?
        }
    };
    report.print();
    if report.problems.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} problem(s) in {}",
            report.problems.len(),
            report.scenario
        )
    }
}
