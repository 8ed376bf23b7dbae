//! The roomd server: HTTP and WebSocket routes, one task per active room, sled storage.
//!
//! [`Server::start`] binds, opens the store and serves until [`Server::shutdown`] (or a signal,
//! in the binary) stops accepting, closes every socket with "going away", folds and flushes
//! every room, and returns.

pub mod auth;
pub mod blobs;
mod config;
pub mod control;
mod events;
mod http;
mod identity;
mod listener;
mod master_key;
mod metrics;
mod outbox;
mod registry;
mod room;
mod room_socket;
mod store;
mod websocket;
mod ws;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Config, IssuerAlgorithm, Limits};
pub use http::parse_ttl;
pub use metrics::Metrics;
pub use store::{DocKey, RoomKey, Store};

/// What every task of the server shares.
#[derive(Debug)]
pub struct AppCtx {
    /// The configuration in force.
    pub config: Config,
    /// The durable store.
    pub store: Store,
    /// The bytes of stored files.
    pub blobs: blobs::Blobs,
    /// The project of open development mode.
    pub default_project: store::ProjectKey,
    /// Projects, keys and token verification.
    pub auth: auth::Auth,
    /// Process metrics.
    pub metrics: Metrics,
    /// Every room's developer events.
    pub events: events::EventLog,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// Owns every room and connection task.
    pub tracker: TaskTracker,
    /// The newest write known to be durable, published after each flush.
    durable: tokio::sync::watch::Sender<store::WriteSeq>,
    /// Someone waits for a write to be durable: the group commit flushes without waiting for
    /// its tick.
    flush_wanted: tokio::sync::Notify,
}

impl AppCtx {
    /// Publishes that every write up to `seq` is durable.
    pub fn durable_to(&self, seq: store::WriteSeq) {
        self.events.flushed(seq);
        self.durable.send_if_modified(|d| {
            let newer = seq > *d;
            *d = (*d).max(seq);
            newer
        });
    }

    /// Asks the group commit to flush what is written as soon as it can: an answer waits for
    /// it. Requests made while a flush runs are served by the next one, so a busy server still
    /// flushes one batch at a time.
    pub fn flush_soon(&self) {
        self.flush_wanted.notify_one();
    }

    /// Waits until write `seq` is durable, or the server shuts down (false then).
    pub async fn wait_durable(&self, seq: store::WriteSeq) -> bool {
        let mut rx = self.durable.subscribe();
        tokio::select! {
            ok = rx.wait_for(|d| *d >= seq) => ok.is_ok(),
            () = self.shutdown.cancelled() => self.store.durable() >= seq,
        }
    }

    /// Appends a developer event to `room`'s log; a storage failure is logged, not returned:
    /// events never hold up what they describe.
    pub fn emit(
        &self,
        room: &store::RoomKey,
        kind: events::EventKind,
        participant: Option<&events::EventParticipant>,
        body: serde_json::Value,
    ) {
        match self.events.append(room, kind, participant, body) {
            Ok(_) => {
                self.metrics.events_written_total.inc();
            }
            Err(e) => {
                self.metrics.storage_errors_total.inc();
                tracing::error!(room = room.name(), error = %e, "writing a developer event failed");
            }
        }
    }

    /// A receiver of the durable watermark.
    pub fn durable_watch(&self) -> tokio::sync::watch::Receiver<store::WriteSeq> {
        self.durable.subscribe()
    }
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
        let ctx = open_ctx(config, true).await?;
        let listener = tokio::net::TcpListener::bind(ctx.config.listen)
            .await
            .with_context(|| format!("binding {}", ctx.config.listen))?;
        let local_addr = listener.local_addr()?;
        // Bound before the server is said to run, so that an admin command sent as soon as it
        // does reaches it.
        #[cfg(unix)]
        let control = bind_control(&ctx.config.data_dir)?;
        let app = Arc::new(App {
            rooms: registry::Rooms::new(ctx.clone()),
            ctx: ctx.clone(),
            next_conn: AtomicU64::new(1),
        });
        #[cfg(unix)]
        let task = tokio::spawn(serve(listener, control, app));
        #[cfg(not(unix))]
        let task = tokio::spawn(serve(listener, app));
        tracing::info!(
            addr = %local_addr,
            data_dir = %ctx.config.data_dir.display(),
            open = ctx.auth.is_open(),
            "roomd listening"
        );
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

/// Opens what every task shares: the store (migrated if need be), the master key, projects and
/// keys, the event log. A server (`serving`) also refuses to run open where that is unsafe.
pub(crate) async fn open_ctx(config: Config, serving: bool) -> anyhow::Result<Arc<AppCtx>> {
    config.validate().map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let store = {
        let (dir, cache) = (config.data_dir.clone(), config.store_cache_bytes);
        tokio::task::spawn_blocking(move || Store::open(&dir, cache))
            .await?
            .with_context(|| format!("opening the store in {}", config.data_dir.display()))?
    };
    // Opened after the store, whose lock keeps a second process off the data directory: what
    // an upload cut short left behind goes.
    let blobs = {
        let dir = config.data_dir.clone();
        tokio::task::spawn_blocking(move || blobs::Blobs::open(&dir))
            .await?
            .with_context(|| format!("opening the file storage in {}", config.data_dir.display()))?
    };
    let default_project = store
        .project_by_name(store::DEFAULT_PROJECT)?
        .map(|p| p.id)
        .context("the store has no default project")?;
    let master =
        master_key::MasterKey::load_or_create(&config.data_dir, config.master_key_file.as_deref())?;
    let identity = identity::Identity::load(store.clone(), master)?;
    let issuer = match &config.token_issuer {
        None => None,
        Some((path, alg)) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading the token issuer's key {}", path.display()))?;
            let issuer = match alg {
                IssuerAlgorithm::EdDsa => roomd_room_apis::ExternalIssuer::from_ed_pem(&pem),
                IssuerAlgorithm::Rs256 => roomd_room_apis::ExternalIssuer::from_rsa_pem(&pem),
            }
            .with_context(|| format!("the token issuer's key {}", path.display()))?;
            Some(issuer)
        }
    };
    let auth = auth::Auth {
        identity,
        issuer,
        failures: auth::FailureLimiter::new(config.auth_failures_per_minute_max, 65_536),
        default_project,
    };
    if serving && auth.is_open() {
        config.validate_open().map_err(anyhow::Error::msg)?;
    }
    let events = events::EventLog::new(
        store.clone(),
        events::EventLimits {
            per_room_max: config.events_per_room_max,
            age_max: config.events_age_max,
        },
    );
    Ok(Arc::new(AppCtx {
        config,
        metrics: Metrics::new(&store),
        events,
        default_project,
        auth,
        store,
        blobs,
        shutdown: CancellationToken::new(),
        tracker: TaskTracker::new(),
        durable: tokio::sync::watch::Sender::new(0),
        flush_wanted: tokio::sync::Notify::new(),
    }))
}

/// The control socket's path in a data directory: admin requests from the `roomd` command to
/// the server that holds the store.
pub fn control_socket_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join(CONTROL_SOCKET)
}

/// The control socket's file name in the data directory.
const CONTROL_SOCKET: &str = "control.sock";

/// Binds the control socket, readable and writable by the server's user alone.
#[cfg(unix)]
fn bind_control(data_dir: &std::path::Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = control_socket_path(data_dir);
    // Left behind by a process that died; the store's lock says no other server runs here.
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting the control socket {}", path.display()))?;
    Ok(listener)
}

async fn serve(
    listener: tokio::net::TcpListener,
    #[cfg(unix)] control: tokio::net::UnixListener,
    app: Arc<App>,
) -> anyhow::Result<()> {
    let ctx = app.ctx.clone();
    let flusher = tokio::spawn(flush_loop(ctx.clone()));
    let router = http::router(app.clone());
    #[cfg(unix)]
    let control = {
        tokio::spawn(listener::serve_unix(
            control,
            http::control_router(app),
            ctx.shutdown.clone(),
        ))
    };
    listener::serve_tcp(listener, router, ctx.shutdown.clone()).await;
    #[cfg(unix)]
    {
        let _ = control.await;
        let _ = std::fs::remove_file(control_socket_path(&ctx.config.data_dir));
    }
    // Connection tasks see the same token: they close with "going away" and leave their rooms;
    // room tasks fold and flush their documents, then end.
    ctx.tracker.close();
    ctx.tracker.wait().await;
    flusher.await?;
    let store = ctx.store.clone();
    let durable = tokio::task::spawn_blocking(move || store.flush())
        .await?
        .context("final flush")?;
    ctx.durable_to(durable);
    tracing::info!("roomd stopped");
    Ok(())
}

/// The group commit: every `flush_interval`, or at once when an answer waits for durability
/// ([`AppCtx::flush_soon`]), makes all writes issued so far durable.
async fn flush_loop(ctx: Arc<AppCtx>) {
    let mut tick = tokio::time::interval(ctx.config.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tick.tick() => {}
            () = ctx.flush_wanted.notified() => {}
        }
        // Off the flush's path: flushes go on while the queues' journals fold.
        if ctx.store.queue_compaction_due() {
            let ctx = ctx.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = ctx.store.compact_queues() {
                    ctx.metrics.storage_errors_total.inc();
                    tracing::error!(error = %e, "compacting the queues' journal failed");
                }
            });
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
            Ok(Ok(durable)) => ctx.durable_to(durable),
            Ok(Err(e)) => {
                ctx.metrics.storage_errors_total.inc();
                tracing::error!(error = %e, "flush failed");
            }
            Err(e) => tracing::error!(error = %e, "flush task failed"),
        }
    }
}
