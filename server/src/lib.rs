//! The roomd server: HTTP and WebSocket routes, one task per active room, sled storage.
//!
//! [`Server::start`] binds, opens the store and serves until [`Server::shutdown`] (or a signal,
//! in the binary) stops accepting, closes every socket with "going away", folds and flushes
//! every room, and returns.

mod config;
mod http;
mod metrics;
mod outbox;
mod registry;
mod room;
mod store;
mod websocket;
mod ws;

use axum::serve::ListenerExt as _;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Config, Limits};
pub use metrics::Metrics;
pub use store::{DocKey, Store};

/// What every task of the server shares.
#[derive(Debug)]
pub struct AppCtx {
    /// The configuration in force.
    pub config: Config,
    /// The durable store.
    pub store: Store,
    /// Process metrics.
    pub metrics: Metrics,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// Owns every room and connection task.
    pub tracker: TaskTracker,
}

/// The router's state.
#[derive(Debug)]
pub struct App {
    ctx: Arc<AppCtx>,
    rooms: Arc<registry::Rooms>,
    next_conn: AtomicU64,
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    ctx: Arc<AppCtx>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Validates `config`, opens the store, binds the listener and starts serving.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        config.validate().map_err(anyhow::Error::msg)?;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
        let store = {
            let (dir, cache) = (config.data_dir.clone(), config.store_cache_bytes);
            tokio::task::spawn_blocking(move || Store::open(&dir, cache))
                .await?
                .with_context(|| format!("opening the store in {}", config.data_dir.display()))?
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let ctx = Arc::new(AppCtx {
            config,
            metrics: Metrics::new(&store),
            store,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        let app = Arc::new(App {
            rooms: registry::Rooms::new(ctx.clone()),
            ctx: ctx.clone(),
            next_conn: AtomicU64::new(1),
        });
        let task = tokio::spawn(serve(listener, app));
        tracing::info!(addr = %local_addr, data_dir = %ctx.config.data_dir.display(), "roomd listening");
        Ok(Server {
            local_addr,
            ctx,
            task,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The shared context (metrics, store), for tests and tools.
    pub fn ctx(&self) -> &Arc<AppCtx> {
        &self.ctx
    }

    /// Shuts down gracefully and waits until every room is flushed.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.ctx.shutdown.cancel();
        self.task.await?
    }

    /// Serves until `signal` completes, then shuts down gracefully.
    pub async fn run_until(
        self,
        signal: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        signal.await;
        tracing::info!("shutting down");
        self.shutdown().await
    }
}

async fn serve(listener: tokio::net::TcpListener, app: Arc<App>) -> anyhow::Result<()> {
    let ctx = app.ctx.clone();
    let flusher = tokio::spawn(flush_loop(ctx.clone()));
    let router = http::router(app);
    let shutdown = ctx.shutdown.clone();
    // Small frames (a keystroke, a cursor move) go out at once instead of waiting for the
    // peer's delayed ACK.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("serving HTTP")?;
    // Connection tasks see the same token: they close with "going away" and leave their rooms;
    // room tasks fold and flush their documents, then end.
    ctx.tracker.close();
    ctx.tracker.wait().await;
    flusher.await?;
    let store = ctx.store.clone();
    tokio::task::spawn_blocking(move || store.flush())
        .await?
        .context("final flush")?;
    tracing::info!("roomd stopped");
    Ok(())
}

/// The group commit: every `flush_interval`, makes all writes issued so far durable.
async fn flush_loop(ctx: Arc<AppCtx>) {
    let mut tick = tokio::time::interval(ctx.config.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if ctx.store.durable() >= ctx.store.written() {
            continue;
        }
        let store = ctx.store.clone();
        let started = std::time::Instant::now();
        let flushed = tokio::task::spawn_blocking(move || store.flush()).await;
        ctx.metrics
            .flush_seconds
            .observe(started.elapsed().as_secs_f64());
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                ctx.metrics.storage_errors_total.inc();
                tracing::error!(error = %e, "flush failed");
            }
            Err(e) => tracing::error!(error = %e, "flush task failed"),
        }
    }
}
