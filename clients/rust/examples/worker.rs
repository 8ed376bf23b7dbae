//! A worker that takes jobs from a queue and posts each result to a thread.
//!
//! ```sh
//! roomd serve &
//! MESHAGENT_ROOM_URL=ws://127.0.0.1:8787 MESHAGENT_ROOM=demo \
//!     cargo run -p roomd-client --example worker -- jobs results.thread
//! ```
//!
//! A job is a JSON object `{"text": "…"}` (optionally `"work_ms"`: how long the job takes, to
//! watch it at work). Its result, `"<n> words, <m> characters"`, is posted to the thread as a
//! message whose id is the job's (`job-<queue>-<seq>`), and only then is the job acknowledged.
//! Each job is taken with a lease (`--lease-ms`, 30 s by default): a worker killed in the middle
//! of a job loses nothing, since the server gives the job out again when its lease ends, and a
//! job whose result was posted before the worker died is not posted twice: the thread holds its
//! message already, so the job is only acknowledged. A job that is not an object with a `text`
//! gets a result saying so and is acknowledged: it would fail every time. The lease must outlast
//! the longest job: a job not acknowledged within it is given out again (and once its attempts
//! are spent, moved to the dead-letter queue, `<queue>.dead`).
//!
//! It prints one line per step (`working jobs#3 attempt 1`, `done jobs#3`), for scripts to
//! follow.

use std::io::Write;
use std::time::Duration;

use roomd_client::{Config, ErrorCode, Leased, RoomClient};

/// What the worker is told on its command line.
struct Args {
    queue: String,
    thread: String,
    lease: Duration,
}

fn args() -> Result<Args, String> {
    let usage = "usage: worker QUEUE THREAD [--lease-ms N]";
    let mut positional = Vec::new();
    let mut lease = Duration::from_secs(30);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "--lease-ms" {
            let ms = it.next().and_then(|v| v.parse::<u64>().ok());
            lease = Duration::from_millis(ms.filter(|&ms| ms > 0).ok_or(usage)?);
        } else {
            positional.push(a);
        }
    }
    let [queue, thread] = <[String; 2]>::try_from(positional).map_err(|_| usage)?;
    Ok(Args {
        queue,
        thread,
        lease,
    })
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The result of a job's message.
async fn work(message: &serde_json::Value) -> String {
    let Some(text) = message.get("text").and_then(|t| t.as_str()) else {
        return format!("not a job: {message}");
    };
    if let Some(ms) = message.get("work_ms").and_then(|v| v.as_u64()) {
        // The job's own work: it takes this long.
        tokio::time::sleep(Duration::from_millis(ms.min(600_000))).await;
    }
    format!(
        "{} words, {} characters",
        text.split_whitespace().count(),
        text.chars().count()
    )
}

/// Does one leased job: its result posted once, then the job acknowledged.
async fn complete(
    client: &RoomClient,
    args: &Args,
    job: &Leased,
) -> Result<(), roomd_client::Error> {
    let label = format!("{}#{}", job.queue, job.seq);
    say(&format!("working {label} attempt {}", job.attempts));
    let result = work(&job.message).await;
    let id = format!("job-{}-{}", job.queue, job.seq);
    let posted = client.post_message_once(&args.thread, &id, &result).await?;
    client.queue(&args.queue).ack(job.receipt).await?;
    say(&match posted {
        Some(_) => format!("done {label}"),
        None => format!("done {label} (its result was posted before)"),
    });
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = args()?;
    let client = RoomClient::connect(Config::from_env()?).await?;
    match client.create_thread(&args.thread).await {
        Ok(()) => {}
        Err(e) if e.code() == Some(ErrorCode::AlreadyExists) => {}
        Err(e) => return Err(e.into()),
    }
    let queue = client.queue(&args.queue);
    say(&format!("ready: {} -> {}", args.queue, args.thread));
    loop {
        let taken = tokio::select! {
            taken = queue.lease(args.lease, true) => taken,
            _ = tokio::signal::ctrl_c() => break,
        };
        let outcome = match taken {
            Ok(Some(job)) => complete(&client, &args, &job).await,
            Ok(None) => continue,
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            // Not acknowledged: the job comes back when its lease ends.
            tracing::warn!(error = %e, "a job was not completed");
            client.connected().await?;
        }
    }
    client.close().await;
    Ok(())
}
