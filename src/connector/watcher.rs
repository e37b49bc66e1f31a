//! The registry watcher: follows `registry/current` (polled, and woken by announcements on
//! the control topic), loads a new model and its spaces in the background, shadow-scores it
//! on recent live events, and swaps it into the encoder between batches, or refuses it and
//! keeps serving the current one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio::sync::watch;

use super::config::PipelineConfig;
use super::swap::{self, Servings, ShadowSamples};
use crate::encoder::service::EncoderService;
use crate::telemetry as t;

/// What the watcher needs of the running pipeline.
pub(super) struct Watcher {
    /// The pipeline's configuration (`model.*` and the Kafka settings of the control topic).
    pub cfg: PipelineConfig,
    /// Servings by model version; a new model's spaces are registered here before the swap.
    pub servings: Arc<Servings>,
    /// The encoder thread, whose model is swapped.
    pub encoder: EncoderService,
    /// Recent live events, for shadow scoring.
    pub shadow: Arc<ShadowSamples>,
}

/// Follows `registry/current` and swaps models between batches (see [`swap`]).
pub(super) async fn watch_registry(
    w: Watcher,
    registry: std::path::PathBuf,
    mut serving: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = w.cfg.pipeline.name.clone();
    let every = Duration::from_millis(w.cfg.model.watch_interval_ms);
    let mut announcements = w.cfg.model.control_topic.as_ref().and_then(|topic| {
        let c: Result<StreamConsumer, _> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &w.cfg.kafka.brokers)
            .set("group.id", format!("{}-control-{}", w.cfg.kafka.group_id, std::process::id()))
            .set("auto.offset.reset", "latest")
            .create();
        match c.and_then(|c| c.subscribe(&[topic]).map(|_| c)) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, topic, "cannot follow the control topic; polling the registry only");
                None
            }
        }
    });
    let mut refused: Option<std::path::PathBuf> = None;
    let mut serving_path = swap::current_target(&registry);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {},
            _ = shutdown.changed() => return,
            m = async { match &announcements { Some(c) => c.recv().await.map(|_| ()), None => std::future::pending().await } } => {
                if let Err(e) = m {
                    tracing::warn!(error = %e, "control topic error");
                    announcements = None;
                }
            }
        }
        let Some(target) = swap::current_target(&registry) else {
            continue;
        };
        if Some(&target) == serving_path.as_ref() || Some(&target) == refused.as_ref() {
            continue;
        }
        tracing::info!(pipeline = %name, candidate = %target.display(), "new model in the registry, loading it in the background");
        let started = Instant::now();
        let cfg = w.cfg.clone();
        let dir = target.clone();
        let samples = w.shadow.snapshot();
        let loaded = tokio::task::spawn_blocking(move || {
            let (mut enc, serving) = swap::load_serving(&dir, &cfg, false)?;
            let overlap = swap::shadow_overlap(&mut enc, &serving, &samples)?;
            Ok::<_, crate::error::ModelError>((enc, serving, overlap))
        })
        .await;
        let (encoder, new_serving, overlap) = match loaded {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                tracing::error!(pipeline = %name, model = %target.display(), error = %e, "model refused; the current model keeps serving");
                swap::record_swap("refused");
                refused = Some(target);
                continue;
            }
            Err(e) => {
                tracing::error!(pipeline = %name, model = %target.display(), error = %e, "model loader crashed; the current model keeps serving");
                swap::record_swap("refused");
                refused = Some(target);
                continue;
            }
        };
        let version = encoder.manifest().version.clone();
        if let Some((ratio, events)) = overlap {
            metrics::gauge!(t::MODEL_SHADOW_OVERLAP_RATIO, "pipeline" => name.clone()).set(ratio);
            tracing::info!(pipeline = %name, candidate = %version, serving = %serving, events, top_k_overlap = ratio, "shadow-scored live events");
            if ratio < w.cfg.model.min_shadow_overlap {
                tracing::error!(pipeline = %name, candidate = %version, top_k_overlap = ratio, min = w.cfg.model.min_shadow_overlap, "model refused: its labels differ from the serving model's more than model.min_shadow_overlap allows; the current model keeps serving");
                swap::record_swap("refused");
                refused = Some(target);
                continue;
            }
        }
        w.servings.insert(version.clone(), new_serving, &serving);
        if let Err(e) = w.encoder.swap(encoder).await {
            tracing::error!(error = %e, "swap failed");
            swap::record_swap("refused");
            refused = Some(target);
            continue;
        }
        metrics::gauge!(t::MODEL_INFO, "pipeline" => name.clone(), "version" => serving.clone())
            .set(0.0);
        metrics::gauge!(t::MODEL_INFO, "pipeline" => name.clone(), "version" => version.clone())
            .set(1.0);
        metrics::histogram!(t::MODEL_SWAP_SECONDS).record(started.elapsed().as_secs_f64());
        swap::record_swap("swapped");
        tracing::info!(pipeline = %name, from = %serving, to = %version, seconds = started.elapsed().as_secs_f64(), "model swapped");
        serving = version;
        serving_path = Some(target);
        refused = None;
    }
}
