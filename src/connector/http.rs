//! `/metrics`, `/health` and `/ready` over plain HTTP/1.1 (one request per connection),
//! enough for Prometheus scrapes and orchestrator probes without a web framework.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Probe state shared with the pipeline.
#[derive(Debug, Default)]
pub struct Health {
    /// Model and spaces loaded, consumer subscribed.
    pub ready: AtomicBool,
    /// A fatal error happened; the process is shutting down.
    pub failed: AtomicBool,
}

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn install_recorder() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0, 120.0, 300.0,
                ])
                .expect("valid buckets")
                .build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            crate::telemetry::describe_connector();
            handle
        })
        .clone()
}

/// Serves until the listener fails; bind errors are returned at once.
pub async fn serve(
    listen: &str,
    handle: PrometheusHandle,
    health: Arc<Health>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(listen).await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let handle = handle.clone();
            let health = health.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    sock.read(&mut buf),
                )
                .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let req = String::from_utf8_lossy(&buf[..n]);
                let path = req.split_whitespace().nth(1).unwrap_or("/");
                let (status, ctype, body) = match path {
                    "/metrics" => ("200 OK", "text/plain; version=0.0.4", handle.render()),
                    "/health" if health.failed.load(Ordering::Relaxed) => {
                        ("503 Service Unavailable", "text/plain", "failed\n".into())
                    }
                    "/health" => ("200 OK", "text/plain", "ok\n".into()),
                    "/ready" if health.ready.load(Ordering::Relaxed) => {
                        ("200 OK", "text/plain", "ready\n".into())
                    }
                    "/ready" => ("503 Service Unavailable", "text/plain", "starting\n".into()),
                    _ => (
                        "404 Not Found",
                        "text/plain",
                        "try /metrics, /health or /ready\n".into(),
                    ),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    }))
}
