//! `uwe-trainer merge`: interpolate the trained weights of two models of the same base
//! (WiSE-FT, Wortsman et al. 2022), then gate and publish the result like a trained
//! candidate.
//!
//! A fine-tune on skills moves the shared layers; the gate asks every dev task to hold. The
//! straight line between the weights a fine-tune started from and the ones it reached
//! often keeps most of the gain at a fraction of the loss, with no further training: a
//! cheap way to trade between the two models, measured by the same gate.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::publish;
use super::train::{current_dir, stage_candidate, GateArgs, Stage};
use crate::model::{ModelDir, ScorerSpec};
use crate::train;

/// Arguments of `uwe-trainer merge`.
#[derive(clap::Args)]
pub(crate) struct MergeArgs {
    /// The model the interpolation starts from (α = 0): a model directory with a
    /// `trained.safetensors`, usually the one the fine-tune started from.
    #[arg(long)]
    from: PathBuf,
    /// The model it moves towards (α = 1), of the same base and trained part: a fine-tune.
    #[arg(long)]
    to: PathBuf,
    /// How far from `--from` towards `--to`, in [0, 1]: weights (1 − α)·from + α·to.
    #[arg(long)]
    alpha: f64,
    #[command(flatten)]
    gate: GateArgs,
}

/// `(1 − alpha)·from + alpha·to`, tensor by tensor, in `to`'s order. The two must name the
/// same tensors with the same shapes: weights of the same trained part.
pub(crate) fn interpolate(
    from: &std::collections::HashMap<String, candle_core::Tensor>,
    to: &std::collections::HashMap<String, candle_core::Tensor>,
    alpha: f64,
) -> anyhow::Result<Vec<(String, candle_core::Tensor)>> {
    if !(0.0..=1.0).contains(&alpha) {
        anyhow::bail!("--alpha {alpha}: give a number from 0 (--from) to 1 (--to)");
    }
    if let Some(extra) = from.keys().find(|k| !to.contains_key(*k)) {
        anyhow::bail!("tensor {extra} is in --from but not in --to: the two models must have the same trained part (same --train)");
    }
    let mut names: Vec<&String> = to.keys().collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let b = &to[name];
            let a = from.get(name).with_context(|| {
                format!("tensor {name} is in --to but not in --from: the two models must have the same trained part (same --train)")
            })?;
            if a.dims() != b.dims() {
                anyhow::bail!(
                    "tensor {name} has shape {:?} in --from and {:?} in --to: not the same model",
                    a.dims(),
                    b.dims()
                );
            }
            let mixed = ((a * (1.0 - alpha))? + (b * alpha)?)?;
            Ok((name.clone(), mixed))
        })
        .collect()
}

/// A model directory's trained weights and manifest.
fn open(dir: &Path, flag: &str) -> anyhow::Result<(ModelDir, PathBuf)> {
    let m = ModelDir::open(dir).with_context(|| format!("{flag} {}", dir.display()))?;
    let trained = dir.join(train::TRAINED_FILE);
    if !trained.is_file() {
        anyhow::bail!(
            "{flag} {}: no {} there; give a model directory the trainer wrote",
            dir.display(),
            train::TRAINED_FILE
        );
    }
    Ok((m, trained))
}

pub(crate) fn run(a: MergeArgs) -> anyhow::Result<()> {
    let MergeArgs {
        from,
        to,
        alpha,
        gate:
            GateArgs {
                base,
                base_files,
                registry,
                current,
                margin,
                brokers,
                control_topic,
                data_dir,
                threads,
            },
    } = a;
    let (from_dir, from_trained) = open(&from, "--from")?;
    let (to_dir, to_trained) = open(&to, "--to")?;
    if from_dir.manifest.weights_sha256 != to_dir.manifest.weights_sha256 {
        anyhow::bail!(
            "--from {} and --to {} were trained on different base weights: interpolation needs one base",
            from.display(),
            to.display()
        );
    }
    let base_dir =
        ModelDir::open(&base).with_context(|| format!("base model {}", base.display()))?;
    if base_dir.manifest.weights_sha256 != to_dir.manifest.weights_sha256 {
        anyhow::bail!(
            "--base {} has other base weights than --to {}: give the base both were trained from",
            base.display(),
            to.display()
        );
    }
    let weights = interpolate(
        &train::read_trained(&from_trained)?,
        &train::read_trained(&to_trained)?,
        alpha,
    )?;

    let version = format!("uwe-{}", time::OffsetDateTime::now_utc().unix_timestamp());
    let mut training_data = vec![format!(
        "weights interpolated (WiSE-FT): {:.2} x {} + {alpha:.2} x {}",
        1.0 - alpha,
        from_dir.manifest.version,
        to_dir.manifest.version
    )];
    training_data.extend(
        to_dir
            .manifest
            .training_data
            .iter()
            .map(|l| format!("{}: {l}", to_dir.manifest.version)),
    );
    // The late scorer the fine-tune recorded, else the trainer's default.
    let late = match to_dir.manifest.scorer {
        l @ ScorerSpec::Late { .. } => l,
        _ => ScorerSpec::Late {
            temperature: 0.05,
            rerank_top: 100,
        },
    };
    let (cand, staging) = stage_candidate(&Stage {
        base: &base_dir,
        base_files: &base_files,
        registry: &registry,
        current: &current_dir(current.as_deref(), &registry),
        version: &version,
        weights,
        late,
        training_data,
    })?;
    let ecfg = super::reference_encoder(threads);
    publish::gate_and_publish(publish::Candidate {
        dir: cand,
        version,
        staging,
        late,
        train: serde_json::json!({
            "merge": {
                "from": from_dir.manifest.version,
                "to": to_dir.manifest.version,
                "alpha": alpha,
            }
        }),
        current,
        registry,
        data_dir,
        ecfg,
        margin,
        brokers,
        control_topic,
        tasks: vec![],
        client_options: vec![],
    })
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use std::collections::HashMap;

    fn named(pairs: &[(&str, &[f32])]) -> HashMap<String, Tensor> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), Tensor::new(*v, &Device::Cpu).unwrap()))
            .collect()
    }

    #[test]
    fn interpolation_is_linear_per_tensor_and_refuses_other_models() {
        let a = named(&[("l.w", &[0.0, 2.0]), ("l.b", &[1.0])]);
        let b = named(&[("l.w", &[4.0, 2.0]), ("l.b", &[-1.0])]);
        let m = interpolate(&a, &b, 0.25).unwrap();
        let got: HashMap<String, Vec<f32>> = m
            .into_iter()
            .map(|(n, t)| (n, t.to_vec1().unwrap()))
            .collect();
        assert_eq!(got["l.w"], vec![1.0, 2.0]);
        assert_eq!(got["l.b"], vec![0.5]);
        // The ends are the models themselves.
        let end: Vec<f32> = interpolate(&a, &b, 1.0).unwrap()[1].1.to_vec1().unwrap();
        assert_eq!(end, vec![4.0, 2.0]);

        assert!(interpolate(&a, &b, 1.5).is_err(), "alpha outside [0, 1]");
        let other = named(&[("l.w", &[4.0, 2.0, 0.0]), ("l.b", &[-1.0])]);
        let e = interpolate(&a, &other, 0.5).unwrap_err().to_string();
        assert!(e.contains("l.w") && e.contains("shape"), "{e}");
        let fewer = named(&[("l.w", &[4.0, 2.0])]);
        let e = interpolate(&a, &fewer, 0.5).unwrap_err().to_string();
        assert!(e.contains("l.b"), "{e}");
    }
}
