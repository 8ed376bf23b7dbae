//! The side-by-side run: every scenario against roomd and each peer in turn, each run on a
//! freshly started server on loopback, the median of several runs kept.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use roomd_crdt::trace::Trace;

use crate::scenarios::{self, Connecting, Report, Typing};
use crate::target::{Kind, Target, ROOM};

/// Where the servers' programs are.
#[derive(Debug, Clone)]
pub struct Programs {
    /// The `roomd` binary (a release build).
    pub roomd: PathBuf,
    /// `bench/peers`, after `bench/peers/install`.
    pub peers: PathBuf,
}

impl Programs {
    /// Checks that every program `kinds` need is installed.
    pub fn check(&self, kinds: &[Kind]) -> anyhow::Result<()> {
        for &kind in kinds {
            let path = match kind {
                Kind::Roomd => self.roomd.clone(),
                Kind::YWebsocket => self.peers.join("node_modules/y-websocket/bin/server.js"),
                Kind::Hocuspocus => self.peers.join("node_modules/@hocuspocus/server"),
                Kind::YSweet => self.peers.join("y-sweet/bin/y-sweet"),
            };
            anyhow::ensure!(
                path.exists(),
                "{} is not installed ({} is missing): run bench/peers/install{}",
                kind.name(),
                path.display(),
                if kind == Kind::Roomd {
                    " and cargo build --release -p roomd"
                } else {
                    ""
                }
            );
        }
        Ok(())
    }
}

/// A server process started for one run, on a fresh data directory and port.
#[derive(Debug)]
pub struct ServerProcess {
    child: tokio::process::Child,
    /// How to reach it.
    pub target: Target,
    /// Its process id.
    pub pid: u32,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs a `roomd` admin command and returns what it printed.
async fn roomd_command(
    what: &'static str,
    cmd: &mut tokio::process::Command,
) -> anyhow::Result<String> {
    let output = cmd
        .stdin(Stdio::null())
        .env("RUST_LOG", "warn")
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("running roomd {what}: {e}"))?;
    anyhow::ensure!(
        output.status.success(),
        "roomd {what} failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Puts an API key in the roomd store at `data_dir` (which turns its authentication on) and
/// returns it, with the `roomd` binary's own command, as an operator would.
pub async fn roomd_key(programs: &Programs, data_dir: &Path) -> anyhow::Result<String> {
    roomd_command(
        "key create",
        tokio::process::Command::new(&programs.roomd)
            .args(["key", "create", "--project", "default", "--data-dir"])
            .arg(data_dir),
    )
    .await
}

/// Mints a participant token named `name` with `key`: valid for an hour, in room [`ROOM`],
/// with the `user` preset.
pub async fn roomd_mint(programs: &Programs, key: &str, name: &str) -> anyhow::Result<String> {
    // The key goes by the environment, which other users cannot read, not the command line.
    roomd_command(
        "token",
        tokio::process::Command::new(&programs.roomd)
            .args(["token", "--room", ROOM, "--name", name])
            .args(["--preset", "user", "--ttl", "1h"])
            .env("ROOMD_API_KEY", key),
    )
    .await
}

/// Puts an API key in the roomd store at `data_dir` and mints a participant token with it
/// (see [`roomd_key`] and [`roomd_mint`]).
pub async fn roomd_token(programs: &Programs, data_dir: &Path) -> anyhow::Result<String> {
    let key = roomd_key(programs, data_dir).await?;
    roomd_mint(programs, &key, "roomd-bench").await
}

impl ServerProcess {
    /// Starts `kind` with its data in `data_dir` and waits until it accepts connections; its
    /// clients present `token` (roomd with a key in its store).
    pub async fn start(
        kind: Kind,
        programs: &Programs,
        data_dir: &Path,
        token: Option<String>,
    ) -> anyhow::Result<ServerProcess> {
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = match kind {
            Kind::Roomd => {
                let mut c = tokio::process::Command::new(&programs.roomd);
                c.arg("serve")
                    .arg("--listen")
                    .arg(&addr)
                    .arg("--data-dir")
                    .arg(data_dir)
                    .env("RUST_LOG", "warn");
                c
            }
            Kind::YWebsocket => {
                let mut c = tokio::process::Command::new("node");
                c.arg(
                    programs
                        .peers
                        .join("node_modules/y-websocket/bin/server.js"),
                )
                .env("HOST", "127.0.0.1")
                .env("PORT", port.to_string())
                // Its optional LevelDB persistence, so that cold load has something to load.
                .env("YPERSISTENCE", data_dir);
                c
            }
            Kind::Hocuspocus => {
                let mut c = tokio::process::Command::new("node");
                c.arg(programs.peers.join("hocuspocus.mjs"))
                    .arg(port.to_string());
                c
            }
            Kind::YSweet => {
                let mut c =
                    tokio::process::Command::new(programs.peers.join("y-sweet/bin/y-sweet"));
                c.arg("serve")
                    .arg(data_dir)
                    .arg("--host")
                    .arg("127.0.0.1")
                    .arg("--port")
                    .arg(port.to_string());
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", kind.name()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow::anyhow!("{} exited at once", kind.name()))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} did not listen on {addr} within 30 s",
                kind.name()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(ServerProcess {
            child,
            target: Target {
                kind,
                addr,
                token,
                room_protocol: false,
            },
            pid,
        })
    }

    /// Stops the server the way an operator would (SIGTERM, so that it persists what it
    /// holds), killing it after 30 s.
    pub async fn stop(mut self) {
        let _ = tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// One measured configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// Typing fan-out on one document.
    Fanout {
        /// Peers on the document.
        peers: usize,
    },
    /// 10 peers writing as fast as delivered, window 64.
    Throughput,
    /// 200 documents × 4 peers.
    Rooms,
    /// Clients connecting, syncing a small document and closing, over and over.
    Connect,
    /// Idle connections on a fresh server.
    Idle {
        /// Connections held.
        connections: usize,
    },
    /// Idle connections, each of which received a document of [`LARGE_DOC_BYTES`].
    IdleLarge {
        /// Connections held.
        connections: usize,
    },
    /// The automerge-paper trace through one writer.
    Replay,
    /// Loading the stored trace after a restart.
    ColdLoad,
}

impl Step {
    /// A stable key: `fanout-100`, `idle-5000`, `throughput`, …
    pub fn key(self) -> String {
        match self {
            Step::Fanout { peers } => format!("fanout-{peers}"),
            Step::Throughput => "throughput".into(),
            Step::Rooms => "rooms".into(),
            Step::Connect => "connect".into(),
            Step::Idle { connections } => format!("idle-{connections}"),
            Step::IdleLarge { connections } => format!("idle-large-{connections}"),
            Step::Replay => "replay".into(),
            Step::ColdLoad => "cold-load".into(),
        }
    }
}

/// The text each document holds in the idle-after-a-large-document scenario: 1 MiB.
pub const LARGE_DOC_BYTES: usize = 1 << 20;

/// The text the document of the connect scenario holds: 1 KiB.
pub const CONNECT_DOC_BYTES: usize = 1 << 10;

/// How long and how large the scenarios run.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    /// Seconds of load in the timed scenarios.
    pub seconds: u64,
    /// Room sizes of the fan-out sweep (100 is the headline).
    pub sweep: &'static [usize],
    /// Connection counts of the idle scenario.
    pub idle: &'static [usize],
    /// Connections held on documents of [`LARGE_DOC_BYTES`].
    pub idle_large: usize,
    /// Documents × peers of the many-rooms scenario.
    pub rooms: (usize, usize),
    /// Clients connecting at once in the connect scenario.
    pub connecting: usize,
}

impl Scale {
    /// The full run of `BENCHMARKS.md`.
    pub const FULL: Scale = Scale {
        seconds: 10,
        sweep: &[10, 100, 500, 1000],
        idle: &[1000, 5000, 10_000],
        idle_large: 200,
        rooms: (200, 4),
        connecting: 32,
    };
    /// A few seconds per scenario, for the test suite.
    pub const SMOKE: Scale = Scale {
        seconds: 1,
        sweep: &[10],
        idle: &[100],
        idle_large: 10,
        rooms: (10, 3),
        connecting: 4,
    };

    /// Every step at this scale, in the order they run.
    pub fn steps(&self) -> Vec<Step> {
        let mut steps: Vec<Step> = self
            .sweep
            .iter()
            .map(|&peers| Step::Fanout { peers })
            .collect();
        steps.push(Step::Throughput);
        steps.push(Step::Rooms);
        steps.push(Step::Connect);
        steps.extend(
            self.idle
                .iter()
                .map(|&connections| Step::Idle { connections }),
        );
        steps.push(Step::IdleLarge {
            connections: self.idle_large,
        });
        steps.push(Step::Replay);
        steps.push(Step::ColdLoad);
        steps
    }
}

/// Whether `kind` can run `step` at all (Hocuspocus without extensions stores nothing, so
/// it has nothing to cold-load).
pub fn supports(kind: Kind, step: Step) -> bool {
    !(kind == Kind::Hocuspocus && step == Step::ColdLoad)
}

/// Whether roomd runs `step` with authentication on (an API key in its store, a token on every
/// connection): always for connect, whose figure is the cost of admitting a connection; for
/// every step when `auth` is asked for.
pub fn roomd_auth(step: Step, auth: bool) -> bool {
    auth || step == Step::Connect
}

/// Runs one step against a freshly started server and returns its report; roomd runs with
/// authentication on where [`roomd_auth`] says so.
pub async fn run_step(
    step: Step,
    kind: Kind,
    scale: &Scale,
    auth: bool,
    programs: &Programs,
    trace: &Trace,
) -> anyhow::Result<Report> {
    let data = tempfile::tempdir()?;
    let token = if kind == Kind::Roomd && roomd_auth(step, auth) {
        Some(roomd_token(programs, data.path()).await?)
    } else {
        None
    };
    let server = ServerProcess::start(kind, programs, data.path(), token.clone()).await?;
    let pid = Some(server.pid);
    let secs = Duration::from_secs(scale.seconds);
    let result = match step {
        Step::Fanout { peers } => {
            let p = Typing {
                docs: 1,
                peers,
                writers: peers.min(20),
                rate: 6.0,
                duration: secs,
            };
            scenarios::typing(&server.target, &step.key(), &p, pid).await
        }
        Step::Throughput => scenarios::throughput(&server.target, 10, 64, secs, pid).await,
        Step::Rooms => {
            let p = Typing {
                docs: scale.rooms.0,
                peers: scale.rooms.1,
                writers: 1,
                rate: 6.0,
                duration: secs,
            };
            scenarios::typing(&server.target, "rooms", &p, pid).await
        }
        Step::Connect => {
            let p = Connecting {
                clients: scale.connecting,
                doc_bytes: CONNECT_DOC_BYTES,
                duration: secs,
            };
            scenarios::connect(&server.target, &p, pid).await
        }
        Step::Idle { connections } => scenarios::idle(&server.target, connections, 0, pid).await,
        Step::IdleLarge { connections } => {
            scenarios::idle(&server.target, connections, LARGE_DOC_BYTES, pid).await
        }
        Step::Replay => scenarios::replay(&server.target, trace, "replay", pid).await,
        Step::ColdLoad => {
            let stored = scenarios::replay(&server.target, trace, "replay", pid).await;
            // Servers that write behind (y-websocket queues one LevelDB write per update) get
            // the time to finish before they are stopped: a stop must not lose the document.
            settle(data.path()).await;
            server.stop().await;
            stored?.ensure_clean()?;
            let server = ServerProcess::start(kind, programs, data.path(), token).await?;
            let report = scenarios::cold_load(&server.target, trace, "replay").await;
            server.stop().await;
            return report;
        }
    };
    server.stop().await;
    result
}

/// Waits until nothing under `dir` has grown or shrunk for two seconds (at most two minutes).
async fn settle(dir: &Path) {
    fn size(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => size(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = size(dir);
    let mut still = 0;
    while still < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await; // sampling the directory's size
        let now = size(dir);
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
}

/// Median figures of the runs of one step on one server.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Figure name → median over the runs.
    pub figures: BTreeMap<String, f64>,
    /// Runs that completed.
    pub runs: usize,
    /// Problems of any run, and runs that failed.
    pub problems: Vec<String>,
}

impl Outcome {
    /// The median of a figure.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.figures.get(name).copied()
    }
}

/// The median of each figure over `reports`.
pub fn medians(reports: &[Report]) -> BTreeMap<String, f64> {
    let mut values: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in reports {
        for (name, v) in &r.figures {
            values.entry(name.clone()).or_default().push(*v);
        }
    }
    values
        .into_iter()
        .map(|(name, mut v)| {
            v.sort_by(f64::total_cmp);
            let n = v.len();
            let median = if n % 2 == 1 {
                v[n / 2]
            } else {
                (v[n / 2 - 1] + v[n / 2]) / 2.0
            };
            (name, median)
        })
        .collect()
}

/// All outcomes of a comparison: (step key, server) → outcome.
pub type Results = BTreeMap<(String, Kind), Outcome>;

/// Runs every step against every server, `runs` times each, printing each report as it
/// arrives; roomd runs with authentication on where [`roomd_auth`] says so.
pub async fn compare(
    kinds: &[Kind],
    scale: &Scale,
    steps: &[Step],
    runs: usize,
    auth: bool,
    programs: &Programs,
    trace: &Trace,
) -> anyhow::Result<Results> {
    programs.check(kinds)?;
    let mut results = Results::new();
    for &step in steps {
        for &kind in kinds {
            if !supports(kind, step) {
                continue;
            }
            let mut reports = Vec::new();
            let mut problems = Vec::new();
            for run in 1..=runs {
                let with_auth = if kind == Kind::Roomd && roomd_auth(step, auth) {
                    " with auth"
                } else {
                    ""
                };
                eprintln!(
                    "== {} on {}{with_auth} (run {run}/{runs})",
                    step.key(),
                    kind.name()
                );
                match run_step(step, kind, scale, auth, programs, trace).await {
                    Ok(report) => {
                        report.print();
                        problems.extend(report.problems.iter().map(|p| format!("run {run}: {p}")));
                        reports.push(report);
                    }
                    Err(e) => {
                        eprintln!("   failed: {e:#}");
                        problems.push(format!("run {run} failed: {e:#}"));
                    }
                }
            }
            results.insert(
                (step.key(), kind),
                Outcome {
                    figures: medians(&reports),
                    runs: reports.len(),
                    problems,
                },
            );
        }
    }
    Ok(results)
}

/// How roomd was run, as one sentence for the figures section.
pub fn auth_note(auth: bool) -> &'static str {
    if auth {
        "roomd ran with authentication on in every scenario: an API key in its store, and every connection presenting a participant token (`Authorization: Bearer`); the peers ran without authentication."
    } else {
        "roomd ran open (no API key in its store) in every scenario but connect, where an API key was in its store and every connection presented a participant token (`Authorization: Bearer`); the peers ran without authentication."
    }
}

/// The versions of the servers compared, as one sentence.
pub fn versions(programs: &Programs, kinds: &[Kind]) -> String {
    let npm_version = |package: &str| {
        std::fs::read_to_string(
            programs
                .peers
                .join("node_modules")
                .join(package)
                .join("package.json"),
        )
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|v| {
            v.get("version")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".into())
    };
    let output = |program: &Path, arg: &str| {
        std::process::Command::new(program)
            .arg(arg)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    let names: Vec<String> = kinds
        .iter()
        .map(|&k| match k {
            Kind::Roomd => output(&programs.roomd, "--version"),
            Kind::YWebsocket => format!("y-websocket {}", npm_version("y-websocket")),
            Kind::Hocuspocus => format!("@hocuspocus/server {}", npm_version("@hocuspocus/server")),
            // y-sweet has no --version; cargo install records what it installed.
            Kind::YSweet => std::fs::read_to_string(programs.peers.join("y-sweet/.crates.toml"))
                .ok()
                .and_then(|text| {
                    text.lines()
                        .find_map(|l| l.strip_prefix("\"y-sweet "))
                        .and_then(|rest| rest.split(' ').next())
                        .map(|v| format!("y-sweet {v}"))
                })
                .unwrap_or_else(|| "y-sweet ?".into()),
        })
        .collect();
    format!(
        "Servers: {}; Node {}.",
        names.join(", "),
        output(Path::new("node"), "--version")
    )
}
