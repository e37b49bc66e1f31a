//! `uwe-connect check`.

use std::path::PathBuf;

use anyhow::Context;

use crate::connector::PipelineConfig;
use crate::model::ModelDir;
use crate::space::TargetSpace;

/// Arguments of `uwe-connect check`.
#[derive(clap::Args)]
pub(crate) struct CheckArgs {
    /// Pipeline file.
    #[arg(long, short)]
    config: PathBuf,
}

/// Runs `uwe-connect check` with these arguments.
pub(crate) fn run(a: CheckArgs) -> anyhow::Result<()> {
    let CheckArgs { config } = a;
    let cfg = PipelineConfig::load(&config)?;
    crate::connector::codec::Codec::new(&cfg.codec, cfg.pipeline.event_type)?;
    for t in &cfg.targets {
        TargetSpace::resolve(&t.space, &cfg.model.data_dir)
            .with_context(|| format!("targets {:?}: space {:?}", t.name, t.space))?;
    }
    ModelDir::open(&cfg.model.dir)
        .with_context(|| format!("model.dir {}", cfg.model.dir.display()))?;
    println!(
        "{}: ok (pipeline {}, {} events from {:?} to {}, dead letters to {}, {:?})",
        config.display(),
        cfg.pipeline.name,
        cfg.pipeline.event_type.as_str(),
        cfg.kafka.input_topics,
        cfg.kafka.output_topic,
        cfg.kafka.dead_letter_topic,
        cfg.kafka.delivery
    );
    Ok(())
}
