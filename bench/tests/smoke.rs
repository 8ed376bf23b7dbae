//! A short run of every scenario against the real roomd binary, through the same path as
//! `roomd-bench compare`, so that the bench tooling cannot rot: every scenario must complete
//! with no lost delivery, report its figures, and render into a figures section and plots.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use roomd_bench::compare::{self, Programs, Scale, ServerProcess};
use roomd_bench::render;
use roomd_bench::scenarios::{self, Connecting};
use roomd_bench::target::Kind;
use roomd_tests::{repo_root, roomd_bin};

fn programs() -> Programs {
    Programs {
        roomd: roomd_bin(),
        peers: repo_root().join("bench/peers"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_against_roomd() {
    let trace_path = repo_root().join("../shared/data/editing-traces/automerge-paper.json.gz");
    let trace = roomd_bench::load_trace(&trace_path)
        .unwrap()
        // The whole trace takes long in a debug build; its first 3,000 patches do the same work.
        .prefix(3_000);
    let programs = programs();
    let scale = Scale::SMOKE;
    let steps = scale.steps();
    // With authentication on, so that every scenario presents the token it minted.
    let results = compare::compare(&[Kind::Roomd], &scale, &steps, 1, true, &programs, &trace)
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
    let connect = &results[&("connect".to_string(), Kind::Roomd)];
    assert!(connect.get("connections_per_sec").unwrap() > 0.0);
    assert!(connect.get("latency_p99_ms").unwrap() > 0.0);
    assert_eq!(connect.get("failures"), Some(0.0));
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
        &format!("roomd only. {}", compare::auth_note(true)),
    )
    .unwrap();
    assert!(section.starts_with(render::BEGIN) && section.trim_end().ends_with(render::END));
    assert!(section.contains("### Fan-out: 10 peers"));
    assert!(section.contains("### Connect: 4 clients"));
    assert!(section.contains("roomd ran with authentication on in every scenario"));
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

/// The figures with authentication on are those of admitted connections: once the harness has
/// put a key in roomd's store, a client without the token gets no handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roomd_with_a_key_refuses_clients_without_the_token() {
    let programs = programs();
    let data = tempfile::tempdir().unwrap();
    let token = compare::roomd_token(&programs, data.path()).await.unwrap();
    let server = ServerProcess::start(Kind::Roomd, &programs, data.path(), None)
        .await
        .unwrap();
    let p = Connecting {
        clients: 1,
        doc_bytes: 16,
        duration: Duration::from_millis(200),
    };
    let refused = scenarios::connect(&server.target, &p, None).await;
    assert!(refused.is_err(), "{refused:?}");
    let mut admitted = server.target.clone();
    admitted.token = Some(token);
    let report = scenarios::connect(&admitted, &p, None).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    server.stop().await;
}

/// The room-protocol scenarios (fan-out over `sync.open`, tool calls, broadcast) complete with
/// nothing lost against the real binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_protocol_scenarios_run_against_roomd() {
    let programs = programs();
    let data = tempfile::tempdir().unwrap();
    let key = compare::roomd_key(&programs, data.path()).await.unwrap();
    let server = ServerProcess::start(Kind::Roomd, &programs, data.path(), None)
        .await
        .unwrap();
    let token = |name: &'static str| {
        let (programs, key) = (&programs, &key);
        async move { Some(compare::roomd_mint(programs, key, name).await.unwrap()) }
    };
    let target = roomd_bench::target::Target {
        token: token("typist").await,
        room_protocol: true,
        ..server.target.clone()
    };
    let p = scenarios::Typing {
        docs: 1,
        peers: 5,
        writers: 2,
        rate: 6.0,
        duration: Duration::from_secs(1),
    };
    let r = scenarios::typing(&target, "fanout-room-protocol", &p, Some(server.pid))
        .await
        .unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    let ratio = r
        .figures
        .iter()
        .find(|(n, _)| n == "delivery_ratio")
        .unwrap()
        .1;
    assert_eq!(ratio, 1.0);
    let r = roomd_bench::room::tool_calls(&target, token("host").await, token("caller").await, 20)
        .await
        .unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    let mut tokens = Vec::new();
    for name in ["p0", "p1", "p2", "p3"] {
        tokens.push(token(name).await);
    }
    let r = roomd_bench::room::broadcast(&target, tokens, 10, 50.0)
        .await
        .unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    server.stop().await;
}

/// The work-queue load (producers sending, consumers leasing with a long poll and acknowledging)
/// completes through roomd's `queues` toolkit with every item acknowledged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queues_load_runs_against_roomd() {
    let programs = programs();
    let data = tempfile::tempdir().unwrap();
    let key = compare::roomd_key(&programs, data.path()).await.unwrap();
    let server = ServerProcess::start(Kind::Roomd, &programs, data.path(), None)
        .await
        .unwrap();
    let target = roomd_bench::target::Target {
        token: Some(compare::roomd_mint(&programs, &key, "bench").await.unwrap()),
        room_protocol: true,
        ..server.target.clone()
    };
    let load = roomd_bench::queues::QueueLoad {
        producers: 2,
        consumers: 3,
        workers: 2,
        items: 300,
        window: 16,
        rate: None,
    };
    let r = roomd_bench::queues::roomd_queues(&target, load)
        .await
        .unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    server.stop().await;
}
