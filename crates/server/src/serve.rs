//! The HTTP/1.1 accept loop (hyper directly, not `axum::serve`, which sets no timeouts): a
//! header read timeout per connection (a client that opens a connection and sends its headers
//! slowly, or idles between keep-alive requests, is cut off), and graceful shutdown: on the
//! signal, stop accepting, let in-flight requests finish for up to the grace period, then
//! cancel what is left (the engine ends those requests) and close.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// Connection settings.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// The request line and headers must arrive within this time (also the keep-alive idle
    /// limit between requests).
    pub header_read_timeout: Duration,
    /// After the shutdown signal, how long in-flight requests may take before they are cancelled.
    pub shutdown_grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_read_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// `--metrics-port`: serves `app` (the `/metrics` route) on `addr` from a thread and
/// current-thread runtime of its own, so a scrape never waits behind the main runtime's work
/// (the streams' token events after every step). Binds before it returns (the error names the
/// address); serves until the process ends.
pub fn spawn_on_own_thread(
    addr: std::net::SocketAddr,
    app: Router,
    opts: ServeOptions,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("cordial-metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(l) => {
                        let never = std::future::pending::<()>();
                        if let Err(e) = serve(l, app, opts, never, || {}).await {
                            tracing::error!("the metrics listener stopped: {e}");
                        }
                    }
                    Err(e) => tracing::error!("the metrics listener cannot start: {e}"),
                }
            })
        })?;
    Ok(local)
}

/// Serves `app` on `listener` until `shutdown` resolves; then drains. `cancel` is called when
/// the grace period is over with requests still in flight (it should stop the engine, which
/// ends them); the connections then get a short time to send their last bytes.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
    cancel: impl FnOnce(),
) -> std::io::Result<()> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.as_mut() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
    drop(listener);
    tracing::info!(
        "no longer accepting; waiting up to {:?} for in-flight requests",
        opts.shutdown_grace
    );
    let mut drained = std::pin::pin!(graceful.shutdown());
    tokio::select! {
        () = drained.as_mut() => {
            tracing::info!("every connection closed");
            cancel();
        }
        () = tokio::time::sleep(opts.shutdown_grace) => {
            tracing::warn!("grace period over; cancelling the requests still in flight");
            cancel();
            if tokio::time::timeout(Duration::from_secs(5), drained).await.is_err() {
                tracing::warn!("connections still open after cancelling; closing them");
            }
        }
    }
    Ok(())
}
