//! A short run of every scenario against the real roomd binary, through the same path as
//! `roomd-bench compare`, so that the bench tooling cannot rot: every scenario must complete
//! with no lost delivery, report its figures, and render into a figures section and plots.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use roomd_bench::compare::{self, Programs, Scale};
use roomd_bench::render;
use roomd_bench::target::Kind;
use roomd_tests::{repo_root, roomd_bin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_against_roomd() {
    let trace_path = repo_root().join("../shared/data/editing-traces/automerge-paper.json.gz");
    let trace = roomd_bench::load_trace(&trace_path)
        .unwrap()
        // The whole trace takes long in a debug build; its first 3,000 patches do the same work.
        .prefix(3_000);
    let programs = Programs {
        roomd: roomd_bin(),
        peers: repo_root().join("bench/peers"),
    };
    let scale = Scale::SMOKE;
    let steps = scale.steps();
    let results = compare::compare(&[Kind::Roomd], &scale, &steps, 1, &programs, &trace)
        .await
        .unwrap();
    for step in &steps {
        let outcome = &results[&(step.key(), Kind::Roomd)];
        assert_eq!(
            outcome.runs,
            1,
            "{} did not complete: {:?}",
            step.key(),
            outcome.problems
        );
        assert!(
            outcome.problems.is_empty(),
            "{}: {:?}",
            step.key(),
            outcome.problems
        );
        assert!(
            !outcome.figures.is_empty(),
            "{} reported no figures",
            step.key()
        );
    }
    for key in ["fanout-10", "throughput", "rooms"] {
        let o = &results[&(key.to_string(), Kind::Roomd)];
        assert_eq!(o.get("delivery_ratio"), Some(1.0), "{key}");
        assert!(o.get("latency_p99_ms").unwrap() > 0.0, "{key}");
    }
    assert!(
        results[&("idle-100".to_string(), Kind::Roomd)]
            .get("kib_per_connection")
            .unwrap()
            > 0.0
    );
    assert!(
        results[&("cold-load".to_string(), Kind::Roomd)]
            .get("cold_load_ms")
            .unwrap()
            > 0.0
    );

    let plots = tempfile::tempdir().unwrap();
    let section = render::figures_section(
        &results,
        &[Kind::Roomd],
        &scale,
        1,
        plots.path(),
        "plots",
        "roomd only",
    )
    .unwrap();
    assert!(section.starts_with(render::BEGIN) && section.trim_end().ends_with(render::END));
    assert!(section.contains("### Fan-out: 10 peers"));
    for svg in ["fanout-p99.svg", "fanout-p50.svg", "idle-memory.svg"] {
        let text = std::fs::read_to_string(plots.path().join(svg)).unwrap();
        assert!(
            text.starts_with("<svg") && text.contains("polyline"),
            "{svg}"
        );
    }
    let doc = render::splice("# B\n\nprose\n", &section);
    assert_eq!(
        render::splice(&doc, &section),
        doc,
        "splicing twice changes nothing"
    );
}
