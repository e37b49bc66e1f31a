//! The `uwe-connect` binary: one module per subcommand, each with its arguments beside the
//! code it runs; `args` holds the runtime and scorer arguments they share.

mod args;
mod bench;
mod build_model;
mod check;
mod convert;
mod demo;
mod eval;
mod rank;
mod rollback;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "uwe-connect",
    version,
    about = "Enrich job vacancy and CV events with ESCO skills and occupations"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a pipeline: consume events, enrich them, publish enriched records (SIGTERM/SIGINT drain and commit).
    ///
    /// Example: uwe-connect run --config connectors/vacancies.toml
    Run(run::RunArgs),
    /// Publish sample vacancies and CVs, enrich them with the shipped pipelines and print the result.
    ///
    /// Example: uwe-connect demo --brokers 127.0.0.1:9092   (scripts/demo also starts a local broker)
    Demo(demo::DemoArgs),
    /// Point a model registry's `current` at an earlier version; running connectors swap to it.
    ///
    /// Example: uwe-connect rollback --registry registry            (the version before current)
    ///          uwe-connect rollback --registry registry --to base-1
    Rollback(rollback::RollbackArgs),
    /// Validate a pipeline file and say what is wrong.
    ///
    /// Example: uwe-connect check --config connectors/cvs.toml
    Check(check::CheckArgs),
    /// Score a model on a task file: prints one JSON line with n, MAP, RP@5, RP@10, MRR.
    ///
    /// Example: uwe-connect eval --space esco-occupations --tasks data/eval/job_normalization_dev.jsonl
    ///
    /// With --postings, runs a pipeline's skill target over whole annotated postings instead
    /// and prints labels per posting, noise share, span P/R/F1 and label P/R:
    ///   uwe-connect eval --postings data/skillspan/postings_dev.jsonl --config connectors/vacancies.toml
    Eval(eval::EvalArgs),
    /// Rank a text (or each stdin line) against a space and print the top k.
    ///
    /// Example: uwe-connect rank --space esco-skills "We need a Java developer who knows Docker"
    Rank(rank::RankArgs),
    /// Build a model directory from Hugging Face BERT files (config.json, safetensors, tokenizer.json).
    ///
    /// Example: uwe-connect build-model --weights model.safetensors --config config.json --tokenizer tokenizer.json --out models/base
    BuildModel(build_model::BuildModelArgs),
    /// Convert a public dev set into a task file.
    ///
    /// Examples: uwe-connect convert skill-extraction tech.csv house.csv --out skills.jsonl
    ///           uwe-connect convert job-normalization titles.csv --out dev.jsonl --train-out train.jsonl
    Convert(convert::ConvertArgs),
    /// Speed benchmarks (figures in BENCHMARKS.md).
    ///
    /// Examples: uwe-connect bench encoder --device cpu --threads 2
    ///           uwe-connect bench pipeline --brokers 127.0.0.1:9092 --events 140 --device cpu --threads 2
    ///           uwe-connect bench swap --pipeline connectors/vacancies.toml --model models/default --threads 2
    Bench(bench::BenchArgs),
}

/// Parses the command line, runs the subcommand, and turns an error into exit code 1 with
/// its chain of causes on stderr.
pub fn main() -> ExitCode {
    crate::telemetry::init_logs();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run(a) => run::run(a),
        Cmd::Demo(a) => demo::run(a),
        Cmd::Rollback(a) => rollback::run(a),
        Cmd::Check(a) => check::run(a),
        Cmd::Eval(a) => eval::run(a),
        Cmd::Rank(a) => rank::run(a),
        Cmd::BuildModel(a) => build_model::run(a),
        Cmd::Convert(a) => convert::run(a),
        Cmd::Bench(a) => bench::run(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
