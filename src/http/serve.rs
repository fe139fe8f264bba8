//! The connection loop: accepts TCP connections and serves HTTP/1.1 on each through hyper, with
//! the limits `axum::serve` does not expose. A connection that does not send a complete request
//! head in time (slow headers, or idle between keep-alive requests) is closed; on shutdown no new
//! connection is accepted, idle ones close at once, in-flight requests finish, and whatever is
//! still open when the drain cap runs out is dropped (SageMaker kills the container 30 s after
//! its SIGTERM anyway). Body pauses are timed where the body is read (`read_body`).

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::config::ConnectionTimeouts;

/// Headers a request may carry. hyper refuses more with a bodiless 431. Its default of 100 is
/// below what some proxies and test tools send, and the head's size is bounded anyway
/// (`MAX_HEAD_BYTES`), so we accept up to this many.
pub const MAX_HEADERS: usize = 1024;

/// Bytes a request head (request line and headers) may take; hyper refuses more with a bodiless
/// 431. Without it, the bound is hyper's read buffer (~400 KB), which a head that arrives in one
/// read can exceed.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Serves `router` on `listener` until `shutdown` completes, then drains for at most
/// `timeouts.drain`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    timeouts: ConnectionTimeouts,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(timeouts.header)
        .max_headers(MAX_HEADERS)
        .max_header_size(MAX_HEAD_BYTES);
    let service = TowerToHyperService::new(router);
    let connections = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Server-sent events are many small writes: Nagle's algorithm would hold each one back
        // until the client acknowledges the previous one.
        let _ = stream.set_nodelay(true);
        let connection =
            connections.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // A client that went away, sent garbage or stalled its head: nothing to answer.
                tracing::debug!("connection closed: {e}");
            }
        });
    }
    drop(listener);
    tracing::info!(
        "draining {} connection(s) for at most {} s",
        connections.count(),
        timeouts.drain.as_secs()
    );
    tokio::select! {
        () = connections.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(timeouts.drain) => tracing::warn!(
            "connections still open after {} s (SERVER_SHUTDOWN_DRAIN_SECONDS) are dropped",
            timeouts.drain.as_secs()
        ),
    }
}

/// A failed accept. The client's own failures (reset before accept) are nothing to wait for;
/// anything else (out of file descriptors) is logged and waited out briefly, as hyper 0.14 did,
/// instead of spinning.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!("accept failed: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
