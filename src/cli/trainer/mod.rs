//! The `uwe-trainer` binary: one module per subcommand, each with its arguments.

mod memory;
mod mentions;
mod merge;
mod pseudo;
mod publish;
mod serve;
mod train;

use std::process::ExitCode;

use crate::encoder::{Device, EncoderConfig, PrecisionChoice};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "uwe-trainer",
    version,
    about = "Retrain the UWE encoder on work data, gate it on the dev tasks, publish it"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once at start-up: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Train a candidate, evaluate it against the current model, publish it if it is at least as good.
    ///
    /// Examples: uwe-trainer train --registry registry
    ///           uwe-trainer train --train head --steps 600 --lr 5e-4 --registry registry
    ///           uwe-trainer train --train layers:1 --steps 30 --no-gate   (speed only)
    Train(train::TrainArgs),
    /// Interpolate the trained weights of two models of the same base (WiSE-FT: (1 − α)·from
    /// + α·to), gate the result against the current model, publish it if it is at least as good.
    ///
    /// Example: uwe-trainer merge --from models/uwe-minilm-l6 --to registry/rejected/uwe-1796338958 --alpha 0.5
    Merge(merge::MergeArgs),
    /// Train the skill-mention tagger on a model's token embeddings (SkillSpan BIO tags),
    /// measure it on the dev sentences and attach it to the model directory (and to any
    /// further directory holding a manifest of the same model, such as `trained/<name>`).
    ///
    /// Example: uwe-trainer mentions --model models/uwe-minilm-l6 --also trained/uwe-minilm-l6
    Mentions(mentions::MentionsArgs),
    /// Label real job-ad sentences with ESCO skills through their annotated spans (each span
    /// ranked on its own; its top skill kept when confident and clearly ahead), as training
    /// pairs for `train --pseudo-labels`; prints the rule's precision on annotated dev spans.
    ///
    /// Example: uwe-trainer pseudo-label --model models/uwe-minilm-l6 --out pseudo.jsonl
    PseudoLabel(pseudo::PseudoArgs),
    /// Run as a sidecar: store analysts' feedback from the feedback topic (confirm, reject,
    /// add), retrain from the serving model when the trigger fires (rejections as hard
    /// negatives), gate, publish and announce; serves /metrics, /health, /ready.
    ///
    /// Example: uwe-trainer serve --config deploy/trainer.toml
    Serve(serve::ServeArgs),
    /// Validate the service's file, models, data and feedback log, then exit.
    ///
    /// Example: uwe-trainer check --config deploy/trainer.toml
    Check(serve::ServeArgs),
}

/// Encoder settings of every trainer subcommand: CPU, and the f32 graph, the reference
/// every precision is compared with (training and measuring read it); no query cache.
pub(crate) fn reference_encoder(threads: usize) -> EncoderConfig {
    EncoderConfig {
        device: Device::Cpu,
        precision: PrecisionChoice::F32,
        intra_threads: threads,
        cache_bytes: 0,
        ..Default::default()
    }
}

/// Parses the command line, runs the subcommand, and turns an error into exit code 1 with
/// its chain of causes on stderr.
pub fn main() -> ExitCode {
    crate::telemetry::init_logs();
    let r = match Cli::parse().cmd {
        Cmd::Train(a) => train::run(a),
        Cmd::Merge(a) => merge::run(a),
        Cmd::Mentions(a) => mentions::run(a),
        Cmd::PseudoLabel(a) => pseudo::run(a),
        Cmd::Serve(a) => serve::run(a),
        Cmd::Check(a) => serve::check(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
