//! Admin requests from the `roomd` command: over the control socket of the server that holds
//! the data directory's store, or, when no server runs there, answered in process by the same
//! routes over the store opened directly. Either way the answer is the admin REST API's.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use anyhow::Context;
use axum::body::Body;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt as _;

use crate::{control_socket_path, App, AppCtx, Config};

/// Largest answer read from the control socket.
const ANSWER_BYTES_MAX: usize = 16 * 1024 * 1024;

/// An admin request's answer: its status and its JSON body.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body, as JSON (`null` when empty).
    pub body: serde_json::Value,
}

/// Sends `method path` with an optional JSON body to the server holding `config`'s data
/// directory, or answers it over the store directly when no server runs there.
pub async fn request(
    config: &Config,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<Answer> {
    let socket = control_socket_path(&config.data_dir);
    #[cfg(unix)]
    if let Ok(stream) = tokio::net::UnixStream::connect(&socket).await {
        return over_socket(stream, method, path, body).await;
    }
    in_process(config, method, path, body).await
}

#[cfg(unix)]
async fn over_socket(
    mut stream: tokio::net::UnixStream,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<Answer> {
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: roomd\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        payload.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(payload.as_bytes()).await?;
    let mut raw = Vec::new();
    stream
        .take(ANSWER_BYTES_MAX as u64)
        .read_to_end(&mut raw)
        .await
        .context("reading the server's answer")?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("the server's answer has no body")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("the server's answer has no status")?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(Answer {
        status,
        body: serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    })
}

/// The payload of a chunked body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

async fn in_process(
    config: &Config,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<Answer> {
    let ctx = crate::open_ctx(config.clone(), false).await.map_err(|e| {
        // sled holds an exclusive lock on the store: a server owns it, but its control socket
        // did not answer.
        e.context(format!(
            "opening the store in {} (if a server runs on it, its control socket {} did not answer)",
            config.data_dir.display(),
            control_socket_path(&config.data_dir).display()
        ))
    })?;
    let app = Arc::new(App {
        rooms: crate::registry::Rooms::new(ctx.clone()),
        ctx: ctx.clone(),
        next_conn: AtomicU64::new(1),
    });
    let request = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.map(|b| b.to_string()).unwrap_or_default()))?;
    let response = crate::http::control_router(app)
        .oneshot(request)
        .await
        .unwrap_or_else(|e| match e {});
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), ANSWER_BYTES_MAX).await?;
    finish(&ctx).await?;
    Ok(Answer {
        status,
        body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    })
}

async fn finish(ctx: &Arc<AppCtx>) -> anyhow::Result<()> {
    let store = ctx.store.clone();
    tokio::task::spawn_blocking(move || store.flush())
        .await?
        .context("flushing the store")?;
    Ok(())
}

/// True when a server answers on `data_dir`'s control socket.
pub async fn server_running(data_dir: &Path) -> bool {
    #[cfg(unix)]
    {
        tokio::net::UnixStream::connect(control_socket_path(data_dir))
            .await
            .is_ok()
    }
    #[cfg(not(unix))]
    {
        false
    }
}
