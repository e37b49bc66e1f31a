//! `uwe-connect demo`.

use std::path::PathBuf;

/// Arguments of `uwe-connect demo`.
#[derive(clap::Args)]
pub(crate) struct DemoArgs {
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Pipeline files.
    #[arg(long, default_values = ["connectors/vacancies.toml", "connectors/cvs.toml"])]
    pipeline: Vec<PathBuf>,
    /// Sample vacancies to publish.
    #[arg(long, default_value_t = 5)]
    vacancies: usize,
    #[arg(long, env = "UWE_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
}

/// Runs `uwe-connect demo` with these arguments.
pub(crate) fn run(a: DemoArgs) -> anyhow::Result<()> {
    let DemoArgs {
        brokers,
        pipeline,
        vacancies,
        data_dir,
    } = a;
    let o = crate::demo::Demo {
        brokers,
        pipelines: pipeline,
        vacancies,
        data_dir,
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(crate::demo::run(o))?;
    Ok(())
}
