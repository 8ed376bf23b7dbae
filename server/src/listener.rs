//! The HTTP/1.1 accept loops: the TCP listener, and the control socket in the data directory.
//!
//! hyper serves each connection with bounds on what a client may hold before it has sent a
//! whole request: at most [`HEADER_BYTES_MAX`] of request head, which must arrive within
//! [`HEADER_READ_TIMEOUT`]. Until then nobody is authenticated, so these bound the memory and the
//! time an unauthenticated client costs. WebSocket connections leave hyper once upgraded and are
//! owned by the server's task tracker.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

/// The largest request head (request line and headers) read before a request is refused. A
/// token in a header may take 16 KiB.
pub const HEADER_BYTES_MAX: usize = 64 * 1024;
/// How long a client may take to send a request's head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

fn builder() -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.max_buf_size(HEADER_BYTES_MAX)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    b
}

/// Serves one connection until it ends or the server shuts down (then gracefully: the
/// request in progress completes).
async fn serve_connection<S>(
    io: S,
    router: Router,
    peer: Option<SocketAddr>,
    stop: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        if let Some(peer) = peer {
            request.extensions_mut().insert(ConnectInfo(peer));
        }
        let router = router.clone();
        async move { Ok::<_, Infallible>(router.oneshot(request).await.unwrap_or_else(|e| match e {})) }
    });
    let conn = builder()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
        }
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Accepts TCP connections until `stop`, then waits for the HTTP connections to finish.
pub async fn serve_tcp(listener: tokio::net::TcpListener, router: Router, stop: CancellationToken) {
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, say: wait a little rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await; // backing off, not synchronising
                continue;
            }
        };
        // Small frames (a keystroke, a cursor move) go out at once instead of waiting for the
        // peer's delayed ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
        connections.spawn(serve_connection(
            tcp,
            router.clone(),
            Some(peer),
            stop.clone(),
        ));
    }
    connections.close();
    connections.wait().await;
}

/// Accepts connections on the control socket until `stop`.
#[cfg(unix)]
pub async fn serve_unix(
    listener: tokio::net::UnixListener,
    router: Router,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        match accepted {
            Ok((stream, _)) => {
                connections.spawn(serve_connection(stream, router.clone(), None, stop.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await; // backing off, not synchronising
            }
        }
    }
    connections.close();
    connections.wait().await;
}
