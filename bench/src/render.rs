//! Turns a comparison into the figures section of `BENCHMARKS.md` and its SVG plots.

use std::fmt::Write as _;
use std::path::Path;

use crate::compare::{Outcome, Results, Scale, Step};
use crate::target::Kind;

/// Marks the part of `BENCHMARKS.md` the tool rewrites; the prose around it is kept.
pub const BEGIN: &str = "<!-- figures:begin (written by `roomd-bench compare`) -->";
/// End of the rewritten part.
pub const END: &str = "<!-- figures:end -->";

/// Whether less or more of a figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Better {
    Lower,
    Higher,
    /// Context only (CPU of the generator, counts): no ratio.
    Neither,
}

/// A figure shown in a table row.
#[derive(Debug, Clone, Copy)]
struct Row {
    figure: &'static str,
    label: &'static str,
    better: Better,
}

const fn row(figure: &'static str, label: &'static str, better: Better) -> Row {
    Row {
        figure,
        label,
        better,
    }
}

const LATENCY: [Row; 4] = [
    row("latency_p50_ms", "latency p50 (ms)", Better::Lower),
    row("latency_p99_ms", "latency p99 (ms)", Better::Lower),
    row("latency_p999_ms", "latency p99.9 (ms)", Better::Lower),
    row("latency_max_ms", "latency max (ms)", Better::Lower),
];

const COST: [Row; 3] = [
    row("server_cpu_cores", "server CPU (cores)", Better::Lower),
    row("server_rss_mib", "server RSS (MiB)", Better::Lower),
    row(
        "generator_cpu_cores",
        "generator CPU (cores)",
        Better::Neither,
    ),
];

fn rows_of(step: Step) -> Vec<Row> {
    let delivery = row("delivery_ratio", "delivery ratio", Better::Higher);
    match step {
        Step::Fanout { .. } | Step::Rooms => {
            let mut rows = LATENCY.to_vec();
            rows.push(delivery);
            rows.extend(COST);
            rows
        }
        Step::Throughput => {
            let mut rows = vec![
                row("deliveries_per_sec", "deliveries / s", Better::Higher),
                row(
                    "update_messages_per_sec",
                    "messages carrying them / s",
                    Better::Neither,
                ),
            ];
            rows.extend(LATENCY);
            rows.push(delivery);
            rows.extend(COST);
            rows
        }
        Step::Connect => {
            let mut rows = vec![
                row("connections_per_sec", "connections / s", Better::Higher),
                row(
                    "connections_per_server_cpu_sec",
                    "connections / server CPU second",
                    Better::Higher,
                ),
                row("latency_p50_ms", "connect latency p50 (ms)", Better::Lower),
                row("latency_p99_ms", "connect latency p99 (ms)", Better::Lower),
                row(
                    "latency_p999_ms",
                    "connect latency p99.9 (ms)",
                    Better::Lower,
                ),
                row("latency_max_ms", "connect latency max (ms)", Better::Lower),
                row("failures", "failed connections", Better::Neither),
            ];
            rows.extend(COST);
            rows
        }
        Step::Idle { .. } | Step::IdleLarge { .. } => vec![
            row("kib_per_connection", "KiB per connection", Better::Lower),
            row("added_mib", "MiB added", Better::Lower),
            row("server_rss_after_mib", "server RSS (MiB)", Better::Lower),
        ],
        Step::Replay => {
            let mut rows = vec![
                row("replay_seconds", "replay (s)", Better::Lower),
                row("send_seconds", "writer done sending (s)", Better::Neither),
            ];
            rows.extend(COST);
            rows
        }
        Step::ColdLoad => vec![
            row(
                "cold_load_ms",
                "cold load: state received (ms)",
                Better::Lower,
            ),
            row(
                "cold_load_applied_ms",
                "cold load: state applied by the generator (ms)",
                Better::Lower,
            ),
        ],
    }
}

fn title_of(step: Step, scale: &Scale) -> String {
    match step {
        Step::Fanout { peers } => format!(
            "Fan-out: {peers} peers on one document, {} typing at 6 edits/s",
            peers.min(20)
        ),
        Step::Throughput => "Throughput: 10 peers writing as fast as delivered, window 64".into(),
        Step::Rooms => format!(
            "Many rooms: {} documents × {} peers, one typing per document",
            scale.rooms.0, scale.rooms.1
        ),
        Step::Connect => format!(
            "Connect: {} clients connecting, syncing a {} KiB document and closing, over and over",
            scale.connecting,
            crate::compare::CONNECT_DOC_BYTES >> 10
        ),
        Step::Idle { connections } => {
            format!("Idle: {connections} connections after their handshake")
        }
        Step::IdleLarge { connections } => format!(
            "Idle after a large document: {connections} connections, each sent a {} MiB document",
            crate::compare::LARGE_DOC_BYTES >> 20
        ),
        Step::Replay => "Replay: automerge-paper, 259,778 updates through one writer".into(),
        Step::ColdLoad => "Cold load: the stored automerge-paper document after a restart".into(),
    }
}

fn fmt(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The best peer's value of a figure (lowest or highest), with the peer.
fn best_peer(results: &Results, key: &str, kinds: &[Kind], r: Row) -> Option<(f64, Kind)> {
    let values = kinds
        .iter()
        .filter(|&&k| k != Kind::Roomd)
        .filter_map(|&k| {
            let o = results.get(&(key.to_string(), k))?;
            (o.runs > 0).then_some(())?;
            Some((o.get(r.figure)?, k))
        });
    match r.better {
        Better::Lower => values.min_by(|a, b| a.0.total_cmp(&b.0)),
        Better::Higher => values.max_by(|a, b| a.0.total_cmp(&b.0)),
        Better::Neither => None,
    }
}

fn table(out: &mut String, results: &Results, key: &str, kinds: &[Kind], rows: &[Row]) {
    let _ = write!(out, "| |");
    for k in kinds {
        let _ = write!(out, " {} |", k.name());
    }
    let _ = writeln!(out, " roomd / best peer |");
    let _ = writeln!(out, "|---|{}---|", "---:|".repeat(kinds.len()));
    for &r in rows {
        let _ = write!(out, "| {} |", r.label);
        for &k in kinds {
            let cell = results
                .get(&(key.to_string(), k))
                .filter(|o| o.runs > 0)
                .and_then(|o| o.get(r.figure))
                .map_or_else(|| "—".to_string(), fmt);
            let _ = write!(out, " {cell} |");
        }
        let ratio = results
            .get(&(key.to_string(), Kind::Roomd))
            .and_then(|o| o.get(r.figure))
            .zip(best_peer(results, key, kinds, r))
            .filter(|(_, (best, _))| *best != 0.0)
            .map_or_else(String::new, |(ours, (best, peer))| {
                format!("{:.2} (vs {})", ours / best, peer.name())
            });
        let _ = writeln!(out, " {ratio} |");
    }
}

/// One roomd target and whether the run met it.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// What is asked.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// Met, missed, or not measured (`None`).
    pub met: Option<bool>,
}

fn figure(results: &Results, key: &str, kind: Kind, name: &str) -> Option<f64> {
    results
        .get(&(key.to_string(), kind))
        .filter(|o| o.runs > 0)
        .and_then(|o| o.get(name))
}

fn ratio_verdict(
    results: &Results,
    kinds: &[Kind],
    key: &str,
    r: Row,
    target: String,
    holds: impl Fn(f64, f64) -> bool,
) -> Verdict {
    let ours = figure(results, key, Kind::Roomd, r.figure);
    let best = best_peer(results, key, kinds, r);
    match (ours, best) {
        (Some(o), Some((b, peer))) => Verdict {
            target,
            measured: format!(
                "roomd {} vs {} {} ({:.2}×)",
                fmt(o),
                peer.name(),
                fmt(b),
                if b == 0.0 { f64::NAN } else { o / b }
            ),
            met: Some(holds(o, b)),
        },
        _ => Verdict {
            target,
            measured: "not measured".into(),
            met: None,
        },
    }
}

/// roomd's targets, judged on this run.
pub fn verdicts(results: &Results, kinds: &[Kind], scale: &Scale) -> Vec<Verdict> {
    let mut v = Vec::new();
    let f100 = "fanout-100";
    v.push(ratio_verdict(
        results,
        kinds,
        f100,
        LATENCY[0],
        "fan-out at 100 peers: p50 ≤ ½ of the best peer's".into(),
        |o, b| o <= b / 2.0,
    ));
    v.push(ratio_verdict(
        results,
        kinds,
        f100,
        LATENCY[1],
        "fan-out at 100 peers: p99 ≤ ½ of the best peer's".into(),
        |o, b| o <= b / 2.0,
    ));
    for &peers in scale.sweep {
        let key = format!("fanout-{peers}");
        let lost = figure(results, &key, Kind::Roomd, "delivery_ratio").map(|r| r < 1.0);
        let mut verdict = ratio_verdict(
            results,
            kinds,
            &key,
            LATENCY[1],
            format!("fan-out at {peers} peers: p99 below every peer's, nothing lost"),
            |o, b| o < b,
        );
        if lost == Some(true) {
            verdict.met = Some(false);
            verdict.measured.push_str("; deliveries lost");
        }
        v.push(verdict);
    }
    let thr = row("deliveries_per_sec", "", Better::Higher);
    v.push(ratio_verdict(
        results,
        kinds,
        "throughput",
        thr,
        "throughput: ≥ 3× the best peer's deliveries/s".into(),
        |o, b| o >= 3.0 * b,
    ));
    v.push(ratio_verdict(
        results,
        kinds,
        "throughput",
        LATENCY[1],
        "throughput: p99 no worse than the best peer's".into(),
        |o, b| o <= b,
    ));
    v.push(ratio_verdict(
        results,
        kinds,
        "connect",
        row("connections_per_sec", "", Better::Higher),
        "connect: roomd with auth ≥ 2× the best peer's connections/s".into(),
        |o, b| o >= 2.0 * b,
    ));
    if let Some(&most) = scale.idle.last() {
        let key = format!("idle-{most}");
        v.push(ratio_verdict(
            results,
            kinds,
            &key,
            row("kib_per_connection", "", Better::Lower),
            format!("idle ({most}): ≤ ⅓ of the best peer's memory per connection"),
            |o, b| o <= b / 3.0,
        ));
        let added = figure(results, &key, Kind::Roomd, "added_mib");
        let limit = 40.0 * most as f64 / 10_000.0;
        v.push(Verdict {
            target: format!("idle: {most} connections add ≤ {} MiB", fmt(limit)),
            measured: added.map_or("not measured".into(), |a| format!("{} MiB", fmt(a))),
            met: added.map(|a| a <= limit),
        });
    }
    v.push(ratio_verdict(
        results,
        kinds,
        "replay",
        row("replay_seconds", "", Better::Lower),
        "replay: ≥ 2× faster than the fastest peer".into(),
        |o, b| o <= b / 2.0,
    ));
    let cold = figure(results, "cold-load", Kind::Roomd, "cold_load_ms");
    v.push(Verdict {
        target: "cold load of the whole trace ≤ 15 ms".into(),
        measured: cold.map_or("not measured".into(), |c| format!("{} ms", fmt(c))),
        met: cold.map(|c| c <= 15.0),
    });
    v
}

/// The machine, as `/proc` and `uname` describe it.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cores} cores, {mem_gib:.0} GiB RAM, Linux {}",
        kernel.trim()
    )
}

const COLORS: [&str; 4] = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"];

/// A line chart of `series` (name, points) over categorical x values, as an SVG document.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    xs: &[usize],
    series: &[(String, Vec<Option<f64>>)],
) -> String {
    let (w, h, left, right, top, bottom) = (640.0, 400.0, 70.0, 150.0, 40.0, 50.0);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let y_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().flatten().copied())
        .fold(0.0f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let step = nice_step(y_max / 5.0);
    let y_top = (y_max / step).ceil() * step;
    let x_at = |i: usize| left + plot_w * (i as f64 + 0.5) / xs.len().max(1) as f64;
    let y_at = |v: f64| top + plot_h * (1.0 - v / y_top);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        left + plot_w / 2.0,
        escape(title)
    );
    let mut tick = 0.0;
    while tick <= y_top + step / 2.0 {
        let y = y_at(tick);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + plot_w,
            left - 6.0,
            y + 4.0,
            fmt(tick)
        );
        tick += step;
    }
    for (i, x) in xs.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{x}</text>"#,
            x_at(i),
            top + plot_h + 18.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        left + plot_w / 2.0,
        h - 10.0,
        escape(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"#,
        top + plot_h / 2.0,
        top + plot_h / 2.0,
        escape(y_label)
    );
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888"/>"##
    );
    for (n, (name, points)) in series.iter().enumerate() {
        let color = COLORS[n % COLORS.len()];
        let coords: Vec<String> = points
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.map(|v| format!("{:.1},{:.1}", x_at(i), y_at(v))))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            coords.join(" ")
        );
        for c in &coords {
            let (x, y) = c.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(s, r#"<circle cx="{x}" cy="{y}" r="3.5" fill="{color}"/>"#);
        }
        let ly = top + 10.0 + 20.0 * n as f64;
        let lx = left + plot_w + 14.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            escape(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn nice_step(raw: f64) -> f64 {
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn series(
    results: &Results,
    kinds: &[Kind],
    keys: &[String],
    figure_name: &str,
) -> Vec<(String, Vec<Option<f64>>)> {
    kinds
        .iter()
        .map(|&k| {
            (
                k.name().to_string(),
                keys.iter()
                    .map(|key| figure(results, key, k, figure_name))
                    .collect(),
            )
        })
        .collect()
}

/// Writes the plots into `plots_dir` and returns the figures section (between the markers).
pub fn figures_section(
    results: &Results,
    kinds: &[Kind],
    scale: &Scale,
    runs: usize,
    plots_dir: &Path,
    plots_link: &str,
    versions: &str,
) -> anyhow::Result<String> {
    let mut out = String::new();
    let _ = writeln!(out, "{BEGIN}\n");
    let _ = writeln!(
        out,
        "Measured {} on {}; median of {runs} runs, each on a freshly started server. {versions}\n",
        date(),
        machine()
    );
    let _ = writeln!(out, "### Targets\n\n| target | measured | |\n|---|---|---|");
    for v in verdicts(results, kinds, scale) {
        let mark = match v.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "—",
        };
        let _ = writeln!(out, "| {} | {} | {mark} |", v.target, v.measured);
    }
    out.push('\n');

    std::fs::create_dir_all(plots_dir)?;
    let sweep_keys: Vec<String> = scale.sweep.iter().map(|p| format!("fanout-{p}")).collect();
    for (file, figure_name, label) in [
        ("fanout-p99.svg", "latency_p99_ms", "p99 latency (ms)"),
        ("fanout-p50.svg", "latency_p50_ms", "p50 latency (ms)"),
    ] {
        let svg = line_chart(
            &format!("Fan-out {label} against room size"),
            "peers on the document",
            label,
            scale.sweep,
            &series(results, kinds, &sweep_keys, figure_name),
        );
        std::fs::write(plots_dir.join(file), svg)?;
    }
    let idle_keys: Vec<String> = scale.idle.iter().map(|n| format!("idle-{n}")).collect();
    let svg = line_chart(
        "Server memory added by idle connections",
        "idle connections",
        "MiB added",
        scale.idle,
        &series(results, kinds, &idle_keys, "added_mib"),
    );
    std::fs::write(plots_dir.join("idle-memory.svg"), svg)?;
    let _ = writeln!(
        out,
        "![fan-out p99 against room size]({plots_link}/fanout-p99.svg)\n![fan-out p50 against room size]({plots_link}/fanout-p50.svg)\n![memory against idle connections]({plots_link}/idle-memory.svg)\n"
    );

    for step in scale.steps() {
        let key = step.key();
        let _ = writeln!(out, "### {}\n", title_of(step, scale));
        table(&mut out, results, &key, kinds, &rows_of(step));
        let problems: Vec<String> = kinds
            .iter()
            .filter_map(|&k| results.get(&(key.clone(), k)).map(|o| (k, o)))
            .flat_map(|(k, o): (Kind, &Outcome)| {
                o.problems.iter().map(move |p| format!("{}: {p}", k.name()))
            })
            .collect();
        for p in problems {
            let _ = writeln!(out, "\n- {p}");
        }
        out.push('\n');
    }
    let _ = writeln!(out, "{END}");
    Ok(out)
}

/// Replaces the figures section of `doc` (or appends one).
pub fn splice(doc: &str, section: &str) -> String {
    match (doc.find(BEGIN), doc.find(END)) {
        (Some(a), Some(b)) if a < b => {
            let end = b + END.len();
            let tail = doc[end..].strip_prefix('\n').unwrap_or(&doc[end..]);
            format!("{}{section}{tail}", &doc[..a])
        }
        _ => format!("{doc}\n{section}"),
    }
}

fn date() -> String {
    std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
