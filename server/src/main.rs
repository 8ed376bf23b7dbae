//! The `roomd` command: `roomd serve` runs the server on its embedded store; `project`, `key`
//! and `token` manage projects and API keys and mint participant tokens, through the running
//! server or on the store directly when none runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use roomd::{Config, IssuerAlgorithm, Limits, Server};

/// mimalloc rather than the system allocator: the server allocates and frees small buffers
/// across its worker threads on every message, which glibc's allocator serves slowly.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Manage projects (the tenants that own rooms and API keys).
    #[command(subcommand)]
    Project(ProjectCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Mint a participant token signed with an API key; prints the JWT alone.
    Token(TokenArgs),
}

/// Where the store is, for the admin commands.
#[derive(Debug, Args)]
struct StoreArgs {
    /// Directory of the embedded store (the server's, if one runs on it).
    #[arg(long, env = "ROOMD_DATA_DIR", default_value = "roomd-data")]
    data_dir: PathBuf,
    /// The master key sealing API key secrets (default: `master.key` in the data directory).
    #[arg(long, env = "ROOMD_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
}

impl StoreArgs {
    fn config(&self) -> Config {
        let mut c = Config::with_data_dir(&self.data_dir);
        c.master_key_file = self.master_key_file.clone();
        c
    }
}

#[derive(Debug, Subcommand)]
enum ProjectCommand {
    /// Create a project; prints its id.
    Create {
        /// Its name, unique in the store.
        name: String,
        /// Accept tokens without `exp` for it.
        #[arg(long)]
        allow_tokens_without_expiry: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List projects, one per line: id, name.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Change whether a project accepts tokens without expiry.
    Set {
        /// The project's id or name.
        project: String,
        /// Accept tokens without `exp`.
        #[arg(long, action = clap::ArgAction::Set)]
        allow_tokens_without_expiry: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Create an API key; prints it alone (`ma-…`), the only time its secret is shown.
    Create {
        /// The project's id or name.
        #[arg(long)]
        project: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List keys, one per line: id, project, created, revoked.
    List {
        /// Only this project's keys (id or name).
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a key (by its id, a UUID): tokens it signed are refused from then on.
    Revoke {
        /// The key's id.
        key_id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Preset {
    User,
    Agent,
    Full,
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// The API key to sign with (`ma-…`).
    #[arg(long, env = "ROOMD_API_KEY", hide_env_values = true)]
    key: String,
    /// The room: a name, or a prefix ending in `*`.
    #[arg(long)]
    room: String,
    /// The participant's name.
    #[arg(long)]
    name: String,
    /// The participant's role.
    #[arg(long, value_parser = ["user", "agent", "tool"], default_value = "user")]
    role: String,
    /// The API scope as JSON (the MeshAgent `ApiScope`).
    #[arg(long, conflicts_with = "preset")]
    api: Option<String>,
    /// An API scope preset, as the MeshAgent SDK defines them.
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// How long the token is valid (`90s`, `1h`, `7d`), or `none` for no expiry.
    #[arg(long, default_value = "1h")]
    ttl: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AuthMode {
    /// Open development mode while the store holds no API key; tokens needed once one exists.
    Auto,
    /// Refuse to start without an API key or a token issuer.
    Required,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum IssuerAlg {
    Eddsa,
    Rs256,
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
    /// `required` refuses to start in open development mode.
    #[arg(long, env = "ROOMD_AUTH", value_enum, default_value = "auto")]
    auth: AuthMode,
    /// The master key sealing API key secrets (default: `master.key` in the data directory,
    /// created on first start).
    #[arg(long, env = "ROOMD_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// An external token issuer's public key (PEM), whose tokens are accepted too.
    #[arg(long, env = "ROOMD_TOKEN_ISSUER_KEY", requires = "token_issuer_alg")]
    token_issuer_key: Option<PathBuf>,
    /// The external issuer's algorithm.
    #[arg(long, env = "ROOMD_TOKEN_ISSUER_ALG", value_enum)]
    token_issuer_alg: Option<IssuerAlg>,
    /// Failed authentication attempts allowed per source address per minute.
    #[arg(long, env = "ROOMD_AUTH_FAILURES_PER_MINUTE_MAX", default_value_t = 30)]
    auth_failures_per_minute_max: u32,
    /// Developer events kept per room.
    #[arg(long, env = "ROOMD_EVENTS_PER_ROOM_MAX", default_value_t = 10_000)]
    events_per_room_max: u64,
    /// Age after which a developer event is pruned (`7d`, `12h`).
    #[arg(long, env = "ROOMD_EVENTS_MAX_AGE", default_value = "7d", value_parser = humantime::parse_duration)]
    events_max_age: Duration,
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
        c.auth_required = self.auth == AuthMode::Required;
        c.master_key_file = self.master_key_file;
        c.token_issuer = self
            .token_issuer_key
            .zip(self.token_issuer_alg)
            .map(|(k, a)| {
                (
                    k,
                    match a {
                        IssuerAlg::Eddsa => IssuerAlgorithm::EdDsa,
                        IssuerAlg::Rs256 => IssuerAlgorithm::Rs256,
                    },
                )
            });
        c.auth_failures_per_minute_max = self.auth_failures_per_minute_max;
        c.events_per_room_max = self.events_per_room_max;
        c.events_age_max = self.events_max_age;
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
        .with_writer(std::io::stderr)
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
        Command::Project(cmd) => runtime.block_on(project(cmd)),
        Command::Key(cmd) => runtime.block_on(key(cmd)),
        Command::Token(args) => token(args),
    }
}

/// Sends an admin request and returns its body, or fails with the API's error message.
async fn admin(
    store: &StoreArgs,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let answer = roomd::control::request(&store.config(), method, path, body).await?;
    if (200..300).contains(&answer.status) {
        return Ok(answer.body);
    }
    let message = answer.body["error"]["message"]
        .as_str()
        .unwrap_or("the request failed")
        .to_string();
    anyhow::bail!("{message} (status {})", answer.status)
}

fn text(v: &serde_json::Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// Percent-encodes a path segment.
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn project(cmd: ProjectCommand) -> anyhow::Result<()> {
    match cmd {
        ProjectCommand::Create {
            name,
            allow_tokens_without_expiry,
            store,
        } => {
            let body = serde_json::json!({
                "name": name,
                "allow_tokens_without_expiry": allow_tokens_without_expiry,
            });
            let p = admin(&store, "POST", "/v1/projects", Some(body)).await?;
            println!("{}", text(&p["id"]));
        }
        ProjectCommand::List { store } => {
            let all = admin(&store, "GET", "/v1/projects", None).await?;
            for p in all["projects"].as_array().into_iter().flatten() {
                println!("{}\t{}", text(&p["id"]), text(&p["name"]));
            }
        }
        ProjectCommand::Set {
            project,
            allow_tokens_without_expiry,
            store,
        } => {
            let body =
                serde_json::json!({ "allow_tokens_without_expiry": allow_tokens_without_expiry });
            let path = format!("/v1/projects/{}", segment(&project));
            admin(&store, "PATCH", &path, Some(body)).await?;
        }
    }
    Ok(())
}

async fn key(cmd: KeyCommand) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Create { project, store } => {
            let path = format!("/v1/projects/{}/keys", segment(&project));
            let k = admin(&store, "POST", &path, None).await?;
            println!("{}", text(&k["key"]));
        }
        KeyCommand::List { project, store } => {
            let projects = match project {
                Some(p) => vec![p],
                None => admin(&store, "GET", "/v1/projects", None).await?["projects"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| text(&p["id"]).to_string())
                    .collect(),
            };
            for p in projects {
                let path = format!("/v1/projects/{}/keys", segment(&p));
                let keys = admin(&store, "GET", &path, None).await?;
                for k in keys["keys"].as_array().into_iter().flatten() {
                    println!(
                        "{}\t{}\t{}\t{}",
                        text(&k["id"]),
                        text(&k["project"]),
                        text(&k["created"]),
                        k["revoked"].as_str().map_or("active", |_| "revoked")
                    );
                }
            }
        }
        KeyCommand::Revoke { key_id, store } => {
            let projects = admin(&store, "GET", "/v1/projects", None).await?;
            let mut revoked = false;
            for p in projects["projects"].as_array().into_iter().flatten() {
                let path = format!("/v1/projects/{}/keys", text(&p["id"]));
                let keys = admin(&store, "GET", &path, None).await?;
                let owns = keys["keys"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|k| text(&k["id"]) == key_id);
                if owns {
                    let path = format!("{path}/{}", segment(&key_id));
                    admin(&store, "DELETE", &path, None).await?;
                    revoked = true;
                }
            }
            anyhow::ensure!(revoked, "no API key {key_id}");
        }
    }
    Ok(())
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let key = roomd_room_apis::ApiKey::parse(&args.key)
        .map_err(|e| anyhow::anyhow!("--key is not an API key: {e}"))?;
    let api = match (&args.api, args.preset) {
        (Some(json), _) => serde_json::from_str(json)
            .map_err(|e| anyhow::anyhow!("--api is not an ApiScope: {e}"))?,
        (None, preset) => roomd::auth::preset(match preset.unwrap_or(Preset::User) {
            Preset::User => "user",
            Preset::Agent => "agent",
            Preset::Full => "full",
        })
        .ok_or_else(|| anyhow::anyhow!("unknown preset"))?,
    };
    let role = serde_json::from_value(serde_json::Value::String(args.role))?;
    let ttl = roomd::parse_ttl(&args.ttl).map_err(anyhow::Error::msg)?;
    let request = roomd::auth::TokenRequest {
        room: args.room,
        name: args.name,
        role,
        api,
        ttl,
    };
    let (jwt, _) = roomd::auth::mint_token(&key, &request).map_err(anyhow::Error::msg)?;
    println!("{jwt}");
    Ok(())
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
