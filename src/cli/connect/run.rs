//! `uwe-connect run`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use crate::connector::{http, PipelineConfig};

/// Arguments of `uwe-connect run`.
#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// Pipeline file.
    #[arg(long, short)]
    config: PathBuf,
}

/// Runs `uwe-connect run` with these arguments.
pub(crate) fn run(a: RunArgs) -> anyhow::Result<()> {
    let RunArgs { config } = a;
    let cfg = PipelineConfig::load(&config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_pipeline(cfg))?;
    Ok(())
}

/// Serves metrics and health, wires SIGTERM/SIGINT to a clean drain, runs the pipeline.
async fn run_pipeline(cfg: PipelineConfig) -> anyhow::Result<()> {
    let handle = http::install_recorder();
    let health = Arc::new(http::Health::default());
    if !cfg.http.listen.is_empty() {
        http::serve(&cfg.http.listen, handle.clone(), health.clone())
            .await
            .with_context(|| {
                format!(
                    "http.listen {}: cannot bind; change it or free the port",
                    cfg.http.listen
                )
            })?;
    }
    // Histogram upkeep for the Prometheus recorder.
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            handle.run_upkeep();
        }
    });
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutdown requested: draining in-flight work");
        let _ = tx.send(true);
    });
    crate::connector::run(cfg, rx, health).await?;
    Ok(())
}
