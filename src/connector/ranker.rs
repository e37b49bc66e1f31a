//! The ranker stage: awaits each batch's encoding, ranks its texts against the target spaces
//! of the model that encoded it, builds one output per event (an enriched record or a dead
//! letter), and hands them to the sink.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use super::batcher::Dispatched;
use super::config::EventType;
use super::enrich::{self, EnrichedRecord, SourceRef};
use super::kafka::OutRecord;
use super::sink::{dead_letter, DeadLetterSource, Pending, Sink};
use super::source::{Item, Verdict};
use super::swap::{Servings, ShadowSamples};
use crate::encoder::service::Encoded;
use crate::telemetry as t;

/// What the ranker needs: the served spaces, the shadow sample, and where outputs go.
pub(super) struct Ranker {
    /// Pipeline name, for dead letters and errors.
    pub pipeline: String,
    /// The event type written into each enriched record.
    pub event_type: EventType,
    /// Enriched records go here.
    pub output_topic: String,
    /// Dead letters go here.
    pub dead_letter_topic: String,
    /// The spaces of each model with batches in flight.
    pub servings: Arc<Servings>,
    /// Samples kept for shadow-scoring a candidate model.
    pub shadow: Arc<ShadowSamples>,
}

impl Ranker {
    /// Runs until `rx` closes; a failed encoding or a sink error is sent to `fatal` and
    /// ends the stage, leaving those events uncommitted, to be re-delivered after a restart.
    pub async fn run<S: Sink>(
        self,
        sink: S,
        mut rx: mpsc::Receiver<Dispatched>,
        fatal: watch::Sender<Option<String>>,
    ) {
        let this = Arc::new(self);
        while let Some((batch, handle)) = rx.recv().await {
            let encoded = match handle.await {
                Ok(Ok(enc)) => enc,
                // The encoder thread is gone or the model broke: nothing later would work.
                Ok(Err(e)) => {
                    let _ = fatal.send(Some(format!("encoder failed: {e}")));
                    return;
                }
                Err(e) => {
                    let _ = fatal.send(Some(format!("encode task failed: {e}")));
                    return;
                }
            };
            let started = Instant::now();
            let me = this.clone();
            let (batch, outs) = tokio::task::spawn_blocking(move || {
                let outs = me.outputs(&batch, &encoded);
                (batch, outs)
            })
            .await
            .expect("ranking does not panic");
            metrics::histogram!(t::RANK_SECONDS).record(started.elapsed().as_secs_f64());
            let pending = batch
                .into_iter()
                .map(|i| Pending {
                    tp: i.tp,
                    offset: i.offset,
                    epoch: i.epoch,
                    timestamp_ms: i.timestamp_ms,
                    permit: i.permit,
                })
                .collect();
            if let Err(e) = sink.send(pending, outs).await {
                let _ = fatal.send(Some(format!("pipeline {}: {e}", this.pipeline)));
                return;
            }
        }
    }

    /// Builds the output record of each item of a batch, in order.
    fn outputs(&self, batch: &[Item], enc: &Encoded) -> Vec<OutRecord> {
        let mut next = 0usize;
        let now = crate::model::now_rfc3339();
        // The spaces of the model that encoded this batch, even if another serves by now.
        let serving = self
            .servings
            .get(&enc.model.version)
            .expect("a model's spaces stay registered while its batches are in flight");
        let taxonomy_versions: BTreeMap<String, String> = serving
            .targets
            .iter()
            .map(|t| (t.cfg.name.clone(), t.space.space.taxonomy_version.clone()))
            .collect();
        batch
            .iter()
            .map(|item| match &item.verdict {
                Verdict::Good(ev, plan) => {
                    let range = next..next + plan.texts.len();
                    next = range.end;
                    let labels = enrich::labels(
                        plan,
                        &enc.embeddings[range],
                        &serving.targets,
                        serving.mentions.as_deref(),
                    );
                    self.shadow.offer(plan, &labels);
                    let rec = EnrichedRecord {
                        source: SourceRef {
                            id: ev.id().to_string(),
                            topic: item.tp.0.clone(),
                            partition: item.tp.1,
                            offset: item.offset,
                            timestamp_ms: item.timestamp_ms,
                        },
                        event_type: self.event_type.as_str().into(),
                        labels,
                        model_version: enc.model.version.clone(),
                        taxonomy_versions: taxonomy_versions.clone(),
                        processed_at: now.clone(),
                    };
                    OutRecord {
                        topic: self.output_topic.clone(),
                        key: item.key.clone(),
                        payload: serde_json::to_vec(&rec).expect("record serialises"),
                        headers: item.headers.clone(),
                        dead: None,
                    }
                }
                Verdict::Dead(e) => dead_letter(
                    &self.dead_letter_topic,
                    &self.pipeline,
                    DeadLetterSource {
                        tp: &item.tp,
                        offset: item.offset,
                        key: &item.key,
                        payload: &item.payload,
                        headers: &item.headers,
                    },
                    e.class,
                    e.reason,
                    &e.msg,
                ),
            })
            .collect()
    }
}
