//! `uwe-connect bench`: encoder, whole-pipeline and hot-swap benchmarks.

use std::path::PathBuf;

use super::args::*;
use crate::connector::config::Mode;
use crate::encoder::PrecisionChoice;

/// Arguments of `uwe-connect bench`.
#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    #[arg(value_enum, default_value = "encoder")]
    kind: BenchKind,
    /// Texts per measurement (encoder).
    #[arg(long, default_value_t = 512)]
    n: usize,
    /// Events to feed (pipeline).
    #[arg(long, default_value_t = 140)]
    events: usize,
    /// Broker (pipeline).
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// The connector's batching.max_batch_tokens (pipeline).
    #[arg(long, default_value_t = 16384)]
    max_batch_tokens: usize,
    /// Modes of the skills target to measure one after the other (pipeline).
    #[arg(long, value_delimiter = ',', default_value = "sentences,mentions")]
    skill_modes: Vec<String>,
    /// Precisions to compare in the same run (encoder, pipeline): f32, int8; default
    /// f32 and, when the model has an int8 graph, int8.
    #[arg(long, value_delimiter = ',')]
    precisions: Vec<PrecisionChoice>,
    /// Pipeline file whose target spaces a swap embeds (swap).
    #[arg(long, default_value = "connectors/vacancies.toml")]
    pipeline: PathBuf,
    #[command(flatten)]
    rt: RuntimeArgs,
}

/// What `bench` measures.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum BenchKind {
    /// Bare ONNX Runtime session vs the encoder; ranking cost.
    Encoder,
    /// Real vacancy events through the broker and the connector vs the bare encoder.
    Pipeline,
    /// What a hot swap spends between seeing a new model and serving it.
    Swap,
}

/// Runs `uwe-connect bench` with these arguments.
pub(crate) fn run(a: BenchArgs) -> anyhow::Result<()> {
    match a {
        BenchArgs {
            kind: BenchKind::Encoder,
            n,
            precisions,
            rt,
            ..
        } => crate::bench::run_encoder_bench(
            &rt.encoder_config(),
            &rt.model(),
            &rt.data_dir,
            &rt.cache_dir(),
            n,
            &precisions,
        )?,
        BenchArgs {
            kind: BenchKind::Swap,
            pipeline,
            rt,
            ..
        } => crate::bench::run_swap_bench(
            &pipeline,
            &rt.model(),
            &rt.encoder_config(),
            &rt.data_dir,
        )?,
        BenchArgs {
            kind: BenchKind::Pipeline,
            events,
            brokers,
            max_batch_tokens,
            skill_modes,
            precisions,
            rt,
            ..
        } => {
            let skill_modes = skill_modes
                .iter()
                .map(|m| match m.as_str() {
                    "whole" => Ok(Mode::Whole),
                    "sentences" => Ok(Mode::Sentences),
                    "mentions" => Ok(Mode::Mentions),
                    m => Err(anyhow::anyhow!(
                        "--skill-modes {m}: expected whole, sentences or mentions"
                    )),
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let o = crate::bench::PipelineBench {
                skill_modes,
                brokers,
                events,
                encoder: rt.encoder_config(),
                model: rt.model(),
                data_dir: rt.data_dir.clone(),
                max_batch_tokens,
                precisions,
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(crate::bench::run_pipeline_bench(o))?
        }
    }
    Ok(())
}
