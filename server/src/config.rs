//! Server configuration: every limit and interval, with documented defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Limits that bound every buffer and queue of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest WebSocket message accepted, in bytes (default 8 MiB).
    pub message_bytes_max: usize,
    /// Largest document, in encoded bytes (default 256 MiB).
    pub doc_bytes_max: usize,
    /// WebSocket connections open at once in the process (default 20,000).
    pub connections_max: usize,
    /// Connections syncing one document at once (default 2,000).
    pub doc_connections_max: usize,
    /// Documents loaded at once in one room (default 1,000).
    pub room_docs_max: usize,
    /// Messages queued for one connection before it is closed as too slow (default 1,024).
    pub outbox_messages_max: usize,
    /// Bytes queued for one connection before it is closed as too slow (default 32 MiB).
    pub outbox_bytes_max: usize,
    /// Commands queued for one room task before connections wait (default 4,096).
    pub room_inbox_messages_max: usize,
    /// Awareness states one connection may announce (default 16).
    pub awareness_states_per_conn_max: usize,
    /// Sustained messages per second read from one connection (default 50,000). A faster
    /// writer is throttled: its connection stops reading until the rate allows more, and TCP
    /// backpressure slows the writer.
    pub conn_messages_per_sec_max: u32,
    /// Burst of messages above the sustained rate (default 100,000).
    pub conn_messages_burst_max: u32,
    /// How long a connection may stay throttled without a pause before it is closed as a
    /// flood (default 10 s).
    pub conn_throttled_max: Duration,
    /// How long a call to a participant's tool may wait for its answer (default 60 s); a
    /// streamed answer, once open, has no limit.
    pub tool_call_timeout: Duration,
    /// Calls to participants' tools one connection may have waiting at once (default 64).
    pub tool_calls_per_conn_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            message_bytes_max: 8 * 1024 * 1024,
            doc_bytes_max: 256 * 1024 * 1024,
            connections_max: 20_000,
            doc_connections_max: 2_000,
            room_docs_max: 1_000,
            outbox_messages_max: 1_024,
            outbox_bytes_max: 32 * 1024 * 1024,
            room_inbox_messages_max: 4_096,
            awareness_states_per_conn_max: 16,
            conn_messages_per_sec_max: 50_000,
            conn_messages_burst_max: 100_000,
            conn_throttled_max: Duration::from_secs(10),
            tool_call_timeout: Duration::from_secs(60),
            tool_calls_per_conn_max: 64,
        }
    }
}

/// The algorithm of an external token issuer's public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuerAlgorithm {
    /// Ed25519 signatures.
    EdDsa,
    /// RSA PKCS#1 v1.5 with SHA-256.
    Rs256,
}

/// Everything `roomd serve` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Address to listen on (default `127.0.0.1:8787`).
    pub listen: SocketAddr,
    /// Directory of the sled store (default `./roomd-data`).
    pub data_dir: PathBuf,
    /// Allow a non-loopback listen address without authentication configured.
    pub insecure_dev: bool,
    /// Refuse to start in open development mode (no API key, no external issuer).
    pub auth_required: bool,
    /// The master key sealing API key secrets; by default `master.key` in the data directory,
    /// created on first start.
    pub master_key_file: Option<PathBuf>,
    /// An external issuer's public key (PEM) and algorithm, whose tokens are accepted too.
    pub token_issuer: Option<(PathBuf, IssuerAlgorithm)>,
    /// Failed authentication attempts allowed per source address per minute (default 30).
    pub auth_failures_per_minute_max: u32,
    /// Interval of the group commit: accepted updates are durable at most this long after
    /// they are applied (default 20 ms).
    pub flush_interval: Duration,
    /// How long a room with no connection stays loaded (default 30 s).
    pub room_idle_timeout: Duration,
    /// Interval of WebSocket pings and keep-alive messages; a connection that answers nothing
    /// for two intervals is dropped (default 15 s).
    pub keepalive_interval: Duration,
    /// How long the closing handshake (our close frame out, the client's back) may take before
    /// the socket is dropped (default 5 s).
    pub close_timeout: Duration,
    /// Log bytes of one document after which the log is folded into a snapshot (default 1 MiB).
    pub compact_log_bytes: usize,
    /// sled page cache, in bytes (default 64 MiB).
    pub store_cache_bytes: u64,
    /// Developer events kept per room (default 10,000).
    pub events_per_room_max: u64,
    /// Age after which a developer event is pruned (default 7 days).
    pub events_age_max: Duration,
    /// Buffer and queue bounds.
    pub limits: Limits,
}

impl Config {
    /// The defaults, with the given data directory.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            data_dir: data_dir.into(),
            insecure_dev: false,
            auth_required: false,
            master_key_file: None,
            token_issuer: None,
            auth_failures_per_minute_max: 30,
            flush_interval: Duration::from_millis(20),
            room_idle_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(15),
            close_timeout: Duration::from_secs(5),
            compact_log_bytes: 1024 * 1024,
            store_cache_bytes: 64 * 1024 * 1024,
            events_per_room_max: 10_000,
            events_age_max: Duration::from_secs(7 * 24 * 3600),
            limits: Limits::default(),
        }
    }

    /// Refuses to run open (no key, no issuer) where that would be unsafe or was refused.
    pub fn validate_open(&self) -> Result<(), String> {
        if self.auth_required {
            return Err(
                "--auth required, but the store holds no API key and no token issuer is \
                 configured: create a key with `roomd key create --project default` first"
                    .into(),
            );
        }
        if !self.listen.ip().is_loopback() && !self.insecure_dev {
            return Err(format!(
                "refusing to listen on non-loopback address {} without authentication; \
                 create an API key (`roomd key create --project default`) or pass \
                 --insecure-dev to do it anyway",
                self.listen
            ));
        }
        Ok(())
    }

    /// Refuses configurations that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        let l = &self.limits;
        if l.message_bytes_max < 1024 {
            return Err("message_bytes_max must be at least 1024".into());
        }
        if l.doc_bytes_max < l.message_bytes_max {
            return Err("doc_bytes_max must be at least message_bytes_max".into());
        }
        if l.outbox_bytes_max < l.message_bytes_max {
            return Err("outbox_bytes_max must be at least message_bytes_max".into());
        }
        if l.conn_messages_per_sec_max == 0 || l.conn_messages_burst_max == 0 {
            return Err("the message rate and burst must be positive".into());
        }
        if l.outbox_messages_max == 0 || l.room_inbox_messages_max == 0 {
            return Err("queue bounds must be positive".into());
        }
        if self.flush_interval.is_zero() || self.keepalive_interval.is_zero() {
            return Err("intervals must be positive".into());
        }
        Ok(())
    }
}
