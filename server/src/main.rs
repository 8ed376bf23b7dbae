//! The `roomd` command: `roomd serve` runs the server on its embedded store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use roomd::{Config, Limits, Server};

#[derive(Debug, Parser)]
#[command(
    name = "roomd",
    version,
    about = "A server for rooms of shared CRDT state"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve rooms over HTTP and WebSocket, storing them in an embedded sled database.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "ROOMD_LISTEN", default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// Directory of the embedded store.
    #[arg(long, env = "ROOMD_DATA_DIR", default_value = "roomd-data")]
    data_dir: PathBuf,
    /// Allow listening on a non-loopback address without authentication.
    #[arg(long, env = "ROOMD_INSECURE_DEV")]
    insecure_dev: bool,
    /// Group-commit interval: accepted updates are durable at most this long after they apply.
    #[arg(long, env = "ROOMD_FLUSH_INTERVAL_MS", default_value_t = 20)]
    flush_interval_ms: u64,
    /// How long a room with no connection stays loaded.
    #[arg(long, env = "ROOMD_ROOM_IDLE_TIMEOUT_MS", default_value_t = 30_000)]
    room_idle_timeout_ms: u64,
    /// Interval of pings and keep-alive messages.
    #[arg(long, env = "ROOMD_KEEPALIVE_INTERVAL_MS", default_value_t = 15_000)]
    keepalive_interval_ms: u64,
    /// Time allowed for the closing handshake with a slow or silent client.
    #[arg(long, env = "ROOMD_CLOSE_TIMEOUT_MS", default_value_t = 5_000)]
    close_timeout_ms: u64,
    /// Log bytes of a document after which it is folded into a snapshot.
    #[arg(long, env = "ROOMD_COMPACT_LOG_BYTES", default_value_t = 1024 * 1024)]
    compact_log_bytes: usize,
    /// Page cache of the embedded store, in bytes.
    #[arg(long, env = "ROOMD_STORE_CACHE_BYTES", default_value_t = 64 * 1024 * 1024)]
    store_cache_bytes: u64,
    /// Largest WebSocket message accepted.
    #[arg(long, env = "ROOMD_MESSAGE_BYTES_MAX", default_value_t = Limits::default().message_bytes_max)]
    message_bytes_max: usize,
    /// Largest document, in encoded bytes.
    #[arg(long, env = "ROOMD_DOC_BYTES_MAX", default_value_t = Limits::default().doc_bytes_max)]
    doc_bytes_max: usize,
    /// WebSocket connections open at once.
    #[arg(long, env = "ROOMD_CONNECTIONS_MAX", default_value_t = Limits::default().connections_max)]
    connections_max: usize,
    /// Connections syncing one document at once.
    #[arg(long, env = "ROOMD_DOC_CONNECTIONS_MAX", default_value_t = Limits::default().doc_connections_max)]
    doc_connections_max: usize,
    /// Documents loaded at once in one room.
    #[arg(long, env = "ROOMD_ROOM_DOCS_MAX", default_value_t = Limits::default().room_docs_max)]
    room_docs_max: usize,
    /// Frames queued for one connection before it is closed as too slow.
    #[arg(long, env = "ROOMD_OUTBOX_MESSAGES_MAX", default_value_t = Limits::default().outbox_messages_max)]
    outbox_messages_max: usize,
    /// Bytes queued for one connection before it is closed as too slow.
    #[arg(long, env = "ROOMD_OUTBOX_BYTES_MAX", default_value_t = Limits::default().outbox_bytes_max)]
    outbox_bytes_max: usize,
    /// Sustained messages per second accepted from one connection.
    #[arg(long, env = "ROOMD_CONN_MESSAGES_PER_SEC_MAX", default_value_t = Limits::default().conn_messages_per_sec_max)]
    conn_messages_per_sec_max: u32,
    /// Burst of messages above the sustained rate.
    #[arg(long, env = "ROOMD_CONN_MESSAGES_BURST_MAX", default_value_t = Limits::default().conn_messages_burst_max)]
    conn_messages_burst_max: u32,
}

impl ServeArgs {
    fn into_config(self) -> Config {
        let mut c = Config::with_data_dir(self.data_dir);
        c.listen = self.listen;
        c.insecure_dev = self.insecure_dev;
        c.flush_interval = Duration::from_millis(self.flush_interval_ms);
        c.room_idle_timeout = Duration::from_millis(self.room_idle_timeout_ms);
        c.keepalive_interval = Duration::from_millis(self.keepalive_interval_ms);
        c.close_timeout = Duration::from_millis(self.close_timeout_ms);
        c.compact_log_bytes = self.compact_log_bytes;
        c.store_cache_bytes = self.store_cache_bytes;
        let l = &mut c.limits;
        l.message_bytes_max = self.message_bytes_max;
        l.doc_bytes_max = self.doc_bytes_max;
        l.connections_max = self.connections_max;
        l.doc_connections_max = self.doc_connections_max;
        l.room_docs_max = self.room_docs_max;
        l.outbox_messages_max = self.outbox_messages_max;
        l.outbox_bytes_max = self.outbox_bytes_max;
        l.conn_messages_per_sec_max = self.conn_messages_per_sec_max;
        l.conn_messages_burst_max = self.conn_messages_burst_max;
        c
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(async {
            let server = Server::start(args.into_config()).await?;
            server.run_until(shutdown_signal()).await
        }),
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
