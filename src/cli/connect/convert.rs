//! `uwe-connect convert`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::eval;
use crate::space::TargetSpace;

/// Arguments of `uwe-connect convert`.
#[derive(clap::Args)]
pub(crate) struct ConvertArgs {
    #[arg(value_enum)]
    kind: ConvertKind,
    /// Input CSV files.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    /// job-normalization: also split off a training share, by title, into this file as
    /// labelled titles (`{"text", "label_id"}`, what `uwe-trainer` reads); `--out` then
    /// gets only the titles held back from it.
    #[arg(long)]
    train_out: Option<PathBuf>,
    /// Share of the titles that goes to `--train-out`, in percent.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=100))]
    train_percent: u64,
    #[arg(long, env = "UWE_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
}

/// Runs `uwe-connect convert` with these arguments.
pub(crate) fn run(a: ConvertArgs) -> anyhow::Result<()> {
    let ConvertArgs {
        kind,
        inputs,
        out,
        train_out,
        train_percent,
        data_dir,
    } = a;
    if train_out.is_some() && !matches!(kind, ConvertKind::JobNormalization) {
        bail!("--train-out splits job-normalization titles only");
    }
    let tasks = match kind {
        ConvertKind::SkillExtraction | ConvertKind::Skillskape => {
            let skills = TargetSpace::resolve("esco-skills", &data_dir)?;
            let paths: Vec<&Path> = inputs.iter().map(|p| p.as_path()).collect();
            let convert = match kind {
                ConvertKind::Skillskape => eval::convert_skillskape,
                _ => eval::convert_skill_extraction,
            };
            let (t, unresolved) = convert(&paths, &skills)?;
            eprintln!(
                "{} tasks; {unresolved} labels not in ESCO v1.1.1 dropped",
                t.len()
            );
            t
        }
        ConvertKind::JobNormalization => {
            if inputs.len() != 1 {
                bail!("job-normalization takes one CSV file");
            }
            let all = eval::convert_job_normalization(&inputs[0])?;
            match &train_out {
                Some(path) => {
                    let (train, dev) = eval::split_by_title(all, train_percent);
                    write_labelled_titles(path, &train, &data_dir)?;
                    dev
                }
                None => all,
            }
        }
    };
    let mut s = String::new();
    for t in &tasks {
        s.push_str(&serde_json::to_string(t)?);
        s.push('\n');
    }
    std::fs::write(&out, s).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("wrote {} tasks to {}", tasks.len(), out.display());
    Ok(())
}

/// The public dev sets `convert` reads.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum ConvertKind {
    /// Skill-extraction annotation CSVs (tech, house).
    SkillExtraction,
    /// JobBERT job titles CSV.
    JobNormalization,
    /// SkillSkape job-ad sentence CSVs (`,sentence,skills`).
    Skillskape,
}

/// Writes job-normalisation tasks as labelled titles for `uwe-trainer`, leaving out those
/// whose occupation is not in the shipped ESCO version (a trainer could not embed them).
fn write_labelled_titles(path: &Path, tasks: &[eval::Task], data_dir: &Path) -> anyhow::Result<()> {
    let occs = TargetSpace::resolve("esco-occupations", data_dir)?;
    let known: std::collections::HashSet<&str> =
        occs.concepts.iter().map(|c| c.id.as_str()).collect();
    let mut s = String::new();
    let mut dropped = 0;
    for t in tasks {
        match t.relevant.first() {
            Some(id) if known.contains(id.as_str()) => {
                s.push_str(&serde_json::json!({"text": t.query, "label_id": id}).to_string());
                s.push('\n');
            }
            _ => dropped += 1,
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "wrote {} labelled titles to {} ({dropped} with an occupation not in ESCO v1.1.1 left out)",
        tasks.len() - dropped,
        path.display()
    );
    Ok(())
}
