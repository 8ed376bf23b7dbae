//! The example workers, in Rust (`clients/rust/examples/worker.rs`) and with the stock Python
//! SDK (`examples/queue_worker.py`): each takes jobs from a queue and posts each result to a
//! thread once, and, killed in the middle of a job, loses nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use roomd_client::RoomClient;
use roomd_room_apis::ApiScope;
use roomd_tests::WAIT;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// How long a worker's lease lasts: longer than the slow job takes, short enough that a killed
/// worker's job comes back soon.
const LEASE_MS: &str = "3000";

struct Worker {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    seen: Vec<String>,
}

impl Worker {
    fn start(python: bool, base: &str, room: &str, token: &str) -> Worker {
        let mut command = if python {
            let mut c = Command::new(roomd_tests::sdk_python());
            c.arg(roomd_tests::repo_root().join("examples/queue_worker.py"));
            c
        } else {
            Command::new(roomd_tests::example_bin("worker"))
        };
        let mut child = command
            .args(["jobs", "results.thread", "--lease-ms", LEASE_MS])
            .env("MESHAGENT_ROOM_URL", base)
            .env("MESHAGENT_ROOM", room)
            .env("MESHAGENT_TOKEN", token)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Worker {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads the worker's lines until one starts with `prefix`; answers it.
    async fn until(&mut self, prefix: &str) -> String {
        let read = async {
            loop {
                match self.lines.next_line().await.unwrap() {
                    Some(line) => {
                        self.seen.push(line.clone());
                        if line.starts_with(prefix) {
                            return line;
                        }
                    }
                    None => panic!("the worker ended; it said {:?}", self.seen),
                }
            }
        };
        match tokio::time::timeout(WAIT, read).await {
            Ok(line) => line,
            Err(_) => panic!("the worker never said {prefix:?}; it said {:?}", self.seen),
        }
    }
}

async fn client(base: &str, room: &str, token: String) -> RoomClient {
    roomd_tests::rust_client(base, room, token).await
}

/// Three jobs, the first slow; the worker is killed in the middle of it, and an earlier
/// worker died after posting the third's result but before acknowledging it. A second worker
/// completes every job once: the thread holds one result per job, and the queue is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_workers_complete_every_job_once_though_killed_mid_job() {
    let (server, key) = roomd_tests::server_with_key().await;
    let base = format!("ws://{}", server.addr());
    for (room, python) in [("rust-worker", false), ("python-worker", true)] {
        let token =
            |name: &str| roomd_tests::agent_token(&key, name, room, ApiScope::agent_default());
        let producer = client(&base, room, token("producer")).await;
        let jobs = producer.queue("jobs");
        for job in [
            json!({"text": "alpha beta gamma", "work_ms": 1500}),
            json!({"text": "delta"}),
            json!({"text": "one two three four"}),
        ] {
            jobs.send(&job).await.unwrap();
        }

        // A worker that died after posting the third job's result, before its ack: it took
        // the jobs with a lease, handed back the first two, and left the third leased.
        let dead = client(&base, room, token("worker")).await;
        producer.create_thread("results.thread").await.unwrap();
        let lease = Duration::from_millis(1000);
        let mut taken = Vec::new();
        for _ in 0..3 {
            taken.push(
                dead.queue("jobs")
                    .lease(lease, false)
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        let third = taken.pop().unwrap();
        for job in &taken {
            dead.queue("jobs").nack(job.receipt).await.unwrap();
        }
        let id = format!("job-jobs-{}", third.seq);
        dead.post_message_once("results.thread", &id, "4 words, 18 characters")
            .await
            .unwrap()
            .expect("the first post of the third job's result");
        dead.close().await;

        let mut first = Worker::start(python, &base, room, &token("worker"));
        first.until("ready").await;
        let working = first.until("working ").await;
        assert!(working.ends_with("attempt 2"), "{room}: {working}");
        let slow = working["working ".len()..]
            .split(' ')
            .next()
            .unwrap()
            .to_string();
        first.child.kill().await.unwrap();

        let mut second = Worker::start(python, &base, room, &token("worker"));
        let mut done = BTreeMap::new();
        while done.len() < 3 {
            let line = second.until("done ").await;
            let label = line["done ".len()..].split(' ').next().unwrap().to_string();
            assert!(
                done.insert(label.clone(), line.clone()).is_none(),
                "{room}: {label} done twice: {:?}",
                second.seen
            );
        }
        let third_label = format!("jobs#{}", third.seq);
        assert!(
            done[&third_label].contains("posted before"),
            "{room}: {:?}",
            second.seen
        );
        assert!(
            second
                .seen
                .iter()
                .any(|l| l.starts_with(&format!("working {slow} attempt 3"))),
            "{room}: the killed worker's job came back: {:?}",
            second.seen
        );

        let page = producer
            .read_messages("results.thread", 0, 100)
            .await
            .unwrap();
        let mut results: Vec<(String, String, String)> = page
            .messages
            .iter()
            .map(|m| (m.id.clone(), m.text.clone(), m.author_name.clone()))
            .collect();
        results.sort();
        let mut want: Vec<(String, String, String)> = taken
            .iter()
            .chain([&third])
            .map(|job| {
                let text = job.message["text"].as_str().unwrap();
                (
                    format!("job-jobs-{}", job.seq),
                    format!(
                        "{} words, {} characters",
                        text.split_whitespace().count(),
                        text.chars().count()
                    ),
                    "worker".to_string(),
                )
            })
            .collect();
        want.sort();
        assert_eq!(results, want, "{room}: one result per job");
        let queues = producer.list_queues().await.unwrap();
        let size = queues.iter().find(|q| q.name == "jobs").map(|q| q.size);
        assert_eq!(size, Some(0), "{room}: {queues:?}");
        second.child.kill().await.unwrap();
        producer.close().await;
    }
    server.stop().await;
}
