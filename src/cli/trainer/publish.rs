//! The end of `uwe-trainer train`: gate a candidate on the dev tasks against the current
//! model, then publish it into the registry and announce it, or keep it aside as rejected.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;

use super::train::current_dir;
use crate::encoder::EncoderConfig;
use crate::mentions::train as mtrain;
use crate::model::{self, ModelDir, ScorerSpec};
use crate::space::cache;
use crate::train;

/// A trained candidate, staged in the registry, and what gating and publishing it need.
pub(super) struct Candidate {
    /// The staged model directory.
    pub dir: ModelDir,
    /// Its version name.
    pub version: String,
    /// Where it is staged (`<registry>/.staging-<version>`).
    pub staging: PathBuf,
    /// The late scorer it was trained with.
    pub late: ScorerSpec,
    /// How it was made: the training run's report, or the merge's settings (the gate
    /// report's `train`).
    pub train: serde_json::Value,
    /// `--current`, if given.
    pub current: Option<PathBuf>,
    /// The registry.
    pub registry: PathBuf,
    /// Data directory (dev tasks, SkillSpan).
    pub data_dir: PathBuf,
    /// Encoder settings for the dev scores.
    pub ecfg: EncoderConfig,
    /// How much better than the current model every dev task must be.
    pub margin: f64,
    /// Brokers to announce a published version on.
    pub brokers: Option<String>,
    /// The control topic it is announced on.
    pub control_topic: String,
    /// Dev tasks of the gate by name (empty: all).
    pub tasks: Vec<String>,
    /// librdkafka options of the announcing producer (SASL/SSL).
    pub client_options: Vec<(String, String)>,
}

/// What the gate decided.
#[derive(Debug, Clone)]
pub(super) struct Gated {
    /// The candidate's version.
    pub version: String,
    /// Whether it was published.
    pub published: bool,
    /// The candidate's dev MAP by task.
    pub candidate_map: BTreeMap<String, f64>,
    /// The current model's dev MAP by task.
    pub current_map: BTreeMap<String, f64>,
}

fn mean_map(s: &BTreeMap<String, crate::eval::Report>) -> f64 {
    s.values().map(|r| r.map).sum::<f64>() / s.len().max(1) as f64
}

/// One line per comparison of the gate, for the operator reading the run's log.
fn eprint_deltas(deltas: &BTreeMap<String, crate::eval::PairedDelta>) {
    for (task, d) in deltas {
        eprintln!(
            "  {task} (n = {}): MAP {:+.2} [{:+.2}, {:+.2}], RP@5 {:+.2} [{:+.2}, {:+.2}]",
            d.n,
            d.map_delta,
            d.map_delta_ci95[0],
            d.map_delta_ci95[1],
            d.rp5_delta,
            d.rp5_delta_ci95[0],
            d.rp5_delta_ci95[1]
        );
    }
}

/// Gates the candidate and publishes it when it is at least as good on every dev task.
pub(super) fn gate_and_publish(c: Candidate) -> anyhow::Result<Gated> {
    let Candidate {
        dir: cand,
        version,
        staging,
        late,
        train: made,
        current,
        registry,
        data_dir,
        ecfg,
        margin,
        brokers,
        control_topic,
        tasks: only,
        client_options,
    } = c;
    // Gate: the candidate, with its better scorer, against the current model with its own.
    let cache_dir = cache::default_cache_dir();
    let tasks: Vec<train::DevTask> = train::default_dev_tasks(&data_dir)
        .into_iter()
        .filter(|t| only.is_empty() || only.contains(&t.name))
        .collect();
    let current = current.unwrap_or_else(|| current_dir(None, &registry));
    let cur_dir =
        ModelDir::open(&current).with_context(|| format!("current model {}", current.display()))?;
    // A tagger reads the token embeddings the new layers changed: a current model with one
    // gets a candidate with its own, retrained on the candidate's embeddings (about a minute),
    // so that connectors ranking mentions can swap to it.
    let cand = match &cur_dir.manifest.mentions {
        Some(spec) => {
            let opts = mtrain::TrainOptions {
                hidden: spec.hidden,
                sentence_context: spec.sentence_context,
                context: spec.context,
                layers: spec.layers.clone(),
                ..Default::default()
            };
            let sk = data_dir.join("skillspan");
            mtrain::train_and_attach(
                &cand.path,
                &[],
                &sk.join("sentences_train.jsonl"),
                &sk.join("sentences_dev.jsonl"),
                &opts,
                mtrain::Thresholds::Keep(spec),
                &ecfg,
            )
            .context("retraining the mention tagger on the candidate")?;
            ModelDir::open(&cand.path)?
        }
        None => cand,
    };
    // Each model is judged as it would serve: a space with its own scorer in the manifest
    // (`target_scorers`, carried over to the candidate below) is ranked with it, the others
    // with the default scorer. The candidate's default is its better one of late and pooled
    // on the tasks the default serves.
    let carried = cur_dir.manifest.target_scorers.clone();
    let cur_queries = train::dev_scores(
        &cur_dir,
        &ecfg,
        &tasks,
        &|space| cur_dir.manifest.scorer_for(space),
        &data_dir,
        &cache_dir,
    )?;
    let cur_scores = train::reports(&cur_queries);
    let served = |default: ScorerSpec| {
        let carried = carried.clone();
        move |space: &str| carried.get(space).copied().unwrap_or(default)
    };
    let cand_late_q =
        train::dev_scores(&cand, &ecfg, &tasks, &served(late), &data_dir, &cache_dir)?;
    let cand_pooled_q = train::dev_scores(
        &cand,
        &ecfg,
        &tasks,
        &served(ScorerSpec::Pooled),
        &data_dir,
        &cache_dir,
    )?;
    let (cand_late, cand_pooled) = (train::reports(&cand_late_q), train::reports(&cand_pooled_q));
    let by_default = |s: &BTreeMap<String, crate::eval::Report>| -> f64 {
        let on_default: Vec<f64> = tasks
            .iter()
            .filter(|t| !carried.contains_key(&t.space))
            .map(|t| s[&t.name].map)
            .collect();
        if on_default.is_empty() {
            mean_map(s)
        } else {
            on_default.iter().sum::<f64>() / on_default.len() as f64
        }
    };
    // Keyed by the candidate's default scorer; the spaces in `target_scorers` are ranked
    // with their own scorer under both keys.
    let by_scorer = serde_json::json!({"late": &cand_late, "pooled": &cand_pooled});
    let (scorer, cand_scores, cand_queries) = if by_default(&cand_late) >= by_default(&cand_pooled)
    {
        (late, cand_late, cand_late_q)
    } else {
        (ScorerSpec::Pooled, cand_pooled, cand_pooled_q)
    };
    let wins = tasks
        .iter()
        .all(|t| cand_scores[&t.name].map >= cur_scores[&t.name].map + margin);
    // The decision is on the point MAPs; the intervals say how much of each difference the
    // dev sets can tell from noise.
    let deltas = train::paired_deltas(&tasks, &cur_queries, &cand_queries);
    let gate = serde_json::json!({
        "version": version,
        "current": cur_dir.manifest.version,
        "margin": margin,
        "published": wins,
        "train": made,
        "candidate": cand_scores,
        "current_scores": cur_scores,
        "scorer": scorer,
        "target_scorers": &carried,
        "candidate_by_scorer": by_scorer,
        "deltas": &deltas,
    });
    println!("{gate}");
    let maps = |s: &BTreeMap<String, crate::eval::Report>| -> BTreeMap<String, f64> {
        s.iter().map(|(k, v)| (k.clone(), v.map)).collect()
    };
    let gated = Gated {
        version: version.clone(),
        published: wins,
        candidate_map: maps(&cand_scores),
        current_map: maps(&cur_scores),
    };

    // Record the chosen scorer and dev scores (the manifest is not among the checksummed files).
    let mut m = cand.manifest.clone();
    m.scorer = scorer;
    // Per-space scorers are a choice about the spaces, not the weights: they carry over, so a
    // hot swap never silently changes how skills are scored.
    m.target_scorers = carried;
    m.dev_scores = cand_scores
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap()))
        .collect();
    std::fs::write(
        staging.join(model::MANIFEST_FILE),
        serde_json::to_vec_pretty(&m)?,
    )?;
    std::fs::write(
        staging.join("report.json"),
        serde_json::to_vec_pretty(&gate)?,
    )?;
    if !wins {
        let dest = registry.join("rejected").join(&version);
        std::fs::create_dir_all(dest.parent().unwrap())?;
        std::fs::rename(&staging, &dest)?;
        eprint_deltas(&deltas);
        eprintln!("candidate {version} is not better than {} on every dev task: kept in {} with its report, not published", cur_dir.manifest.version, dest.display());
        return Ok(gated);
    }
    let dest = registry.join(&version);
    std::fs::rename(&staging, &dest)?;
    let link_tmp = registry.join(format!(".current-{version}"));
    let _ = std::fs::remove_file(&link_tmp);
    std::os::unix::fs::symlink(&version, &link_tmp)?;
    std::fs::rename(&link_tmp, registry.join("current"))?;
    eprint_deltas(&deltas);
    eprintln!("published {} (registry/current)", dest.display());
    if let Some(b) = brokers {
        let announce = serde_json::json!({
            "version": version,
            "path": std::fs::canonicalize(&dest)?,
            "sha256": m.files.get(model::ONNX_FILE),
            "dev_scores": m.dev_scores,
        });
        let mut client = rdkafka::ClientConfig::new();
        client.set("bootstrap.servers", &b);
        for (k, v) in &client_options {
            client.set(k, v);
        }
        let producer: rdkafka::producer::BaseProducer = client.create()?;
        let payload = announce.to_string();
        producer
            .send(
                rdkafka::producer::BaseRecord::<str, str>::to(&control_topic)
                    .key(version.as_str())
                    .payload(&payload),
            )
            .map_err(|(e, _)| e)?;
        rdkafka::producer::Producer::flush(&producer, std::time::Duration::from_secs(30))?;
        eprintln!("announced on {control_topic}");
    }
    Ok(gated)
}
