//! The architecture invariants that a build alone would not catch: the dependency direction
//! between crates, and the absence of I/O, async and clocks in the pure crates.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use roomd_tests::repo_root;

/// Names of the `[dependencies]` of a manifest (not dev- or build-dependencies).
fn dependencies(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let mut in_deps = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps {
            if let Some((name, _)) = line.split_once('=') {
                out.push(name.trim().split('.').next().unwrap().to_string());
            }
        }
    }
    out
}

fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push((
                path.display().to_string(),
                std::fs::read_to_string(&path).unwrap(),
            ));
        }
    }
    out
}

#[test]
fn dependencies_point_one_way() {
    let root = repo_root();
    let forbidden: [(&str, &[&str]); 4] = [
        (
            "crdt",
            &[
                "roomd-sync",
                "roomd",
                "tokio",
                "axum",
                "sled",
                "tokio-tungstenite",
            ],
        ),
        (
            "sync",
            &[
                "roomd",
                "tokio",
                "axum",
                "sled",
                "tokio-tungstenite",
                "tokio-util",
            ],
        ),
        (
            "room-apis",
            &[
                "roomd",
                "tokio",
                "axum",
                "sled",
                "tokio-tungstenite",
                "hyper",
            ],
        ),
        ("fuzz", &["roomd", "tokio", "axum", "sled"]),
    ];
    for (krate, banned) in forbidden {
        let deps = dependencies(&root.join(krate).join("Cargo.toml"));
        for b in banned {
            assert!(
                !deps.iter().any(|d| d == b),
                "{krate} must not depend on {b}"
            );
        }
    }
    // Nothing but the tests depends on the server.
    for krate in ["crdt", "sync", "room-apis", "fuzz"] {
        assert!(!dependencies(&root.join(krate).join("Cargo.toml")).contains(&"roomd".to_string()));
    }
    assert!(dependencies(&root.join("sync/Cargo.toml")).contains(&"roomd-crdt".to_string()));
}

#[test]
fn pure_crates_have_no_io_async_or_clock() {
    let root = repo_root();
    for krate in ["crdt", "sync", "room-apis"] {
        for (path, text) in sources(&root.join(krate).join("src")) {
            let code: String = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            for banned in [
                "tokio",
                "std::net",
                "std::fs",
                "Instant::now",
                "SystemTime",
                "async fn",
                "thread_rng",
                "rand::",
            ] {
                assert!(!code.contains(banned), "{path} uses {banned}");
            }
        }
    }
}

#[test]
fn every_source_file_says_what_it_is_for() {
    let root = repo_root();
    for dir in [
        "crdt/src",
        "sync/src",
        "room-apis/src",
        "server/src",
        "tests/src",
        "tests/tests",
    ] {
        for (path, text) in sources(&root.join(dir)) {
            assert!(
                text.starts_with("//!"),
                "{path} does not open with a //! line"
            );
        }
    }
}
