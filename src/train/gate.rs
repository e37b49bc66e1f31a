//! What the trainer's gate needs: the dev tasks, a model's scores on them, and the candidate
//! model directory built from trained weights.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;
use crate::eval::PairedDelta;

/// A dev task of the gate.
#[derive(Debug, Clone)]
pub struct DevTask {
    /// Name in reports.
    pub name: String,
    /// Space it ranks.
    pub space: String,
    /// Task file.
    pub tasks: PathBuf,
    /// Alias weight when the space's aliases are matched too, as the shipped connectors do.
    pub alias_weight: Option<f32>,
}

/// The default dev tasks in `data/eval/`, ranked as the shipped connectors rank: job
/// titles against occupations and their aliases, sentences against skill labels. The two
/// human-annotated skill sets hold 75 and 61 sentences; the SkillSkape dev split (1,227
/// synthetic job-ad sentences, never trained on) makes the skill side of the gate large
/// enough that a noise-sized gain on those two does not decide it alone.
pub fn default_dev_tasks(data_dir: &Path) -> Vec<DevTask> {
    let aliases = Some(crate::connector::config::DEFAULT_ALIAS_WEIGHT);
    [
        ("skill_extraction_tech", "esco-skills", None),
        ("skill_extraction_house", "esco-skills", None),
        ("skill_extraction_skillskape", "esco-skills", None),
        ("job_normalization", "esco-occupations", aliases),
    ]
    .iter()
    .map(|&(n, s, a)| DevTask {
        name: n.to_string(),
        space: s.to_string(),
        tasks: data_dir.join(format!("eval/{n}_dev.jsonl")),
        alias_weight: a,
    })
    .collect()
}

/// Per-query scores of a model on the dev tasks, by task name, each task ranked with
/// `scorer(space)`: the scorer the model serves the task's space with
/// ([`crate::model::Manifest::scorer_for`]), or one scorer for all (`|_| spec`).
/// [`reports`] gives their means; [`paired_deltas`] compares two models on them.
pub fn dev_scores(
    dir: &ModelDir,
    cfg: &EncoderConfig,
    tasks: &[DevTask],
    scorer: &dyn Fn(&str) -> ScorerSpec,
    data_dir: &Path,
    cache_dir: &Path,
) -> Result<BTreeMap<String, eval::QueryScores>> {
    let mut enc = Encoder::load(dir, cfg)?;
    let mut spaces: HashMap<(String, Option<u32>), cache::EncodedSpace> = HashMap::new();
    let mut out = BTreeMap::new();
    for t in tasks {
        let key = (t.space.clone(), t.alias_weight.map(f32::to_bits));
        if !spaces.contains_key(&key) {
            let s = cache::load_named(
                &t.space,
                data_dir,
                &mut enc,
                cache_dir,
                false,
                t.alias_weight,
            )?;
            spaces.insert(key.clone(), s);
        }
        let q = eval::score_queries(
            &mut enc,
            &spaces[&key],
            &eval::read_tasks(&t.tasks)?,
            scorer(&t.space),
            false,
        )?;
        out.insert(t.name.clone(), q);
    }
    Ok(out)
}

/// The mean scores of each task of [`dev_scores`].
pub fn reports(scores: &BTreeMap<String, eval::QueryScores>) -> BTreeMap<String, Report> {
    scores
        .iter()
        .map(|(k, q)| (k.clone(), q.report()))
        .collect()
}

/// The gate's comparisons with intervals: one per task, and `pooled:<space>` over the
/// queries of every task that ranks the same space, where two or more do (the skill dev
/// sets pooled: the comparison large enough to trust, where a 61-sentence task alone is
/// noise). A task whose two query lists differ in length (they cannot, on one space) is left
/// out rather than paired wrongly.
pub fn paired_deltas(
    tasks: &[DevTask],
    current: &BTreeMap<String, eval::QueryScores>,
    candidate: &BTreeMap<String, eval::QueryScores>,
) -> BTreeMap<String, PairedDelta> {
    let mut out = BTreeMap::new();
    let mut by_space: BTreeMap<&str, Vec<(&eval::QueryScores, &eval::QueryScores)>> =
        BTreeMap::new();
    for t in tasks {
        let (Some(a), Some(b)) = (current.get(&t.name), candidate.get(&t.name)) else {
            continue;
        };
        if a.queries.len() != b.queries.len() {
            continue;
        }
        out.insert(t.name.clone(), PairedDelta::between(a, b));
        by_space.entry(&t.space).or_default().push((a, b));
    }
    // A pool of one task would repeat that task's line.
    for (space, pairs) in by_space.into_iter().filter(|(_, p)| p.len() >= 2) {
        let concat = |parts: Vec<&eval::QueryScores>| eval::QueryScores {
            queries: parts
                .iter()
                .flat_map(|q| q.queries.iter().copied())
                .collect(),
            skipped: 0,
        };
        let (a, b): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
        let (a, b) = (concat(a), concat(b));
        out.insert(format!("pooled:{space}"), PairedDelta::between(&a, &b));
    }
    out
}

/// Builds a candidate model directory from the base and the trained weights.
pub fn build_candidate(
    base: &ModelDir,
    base_files: &Path,
    trained: &Path,
    out: &Path,
    version: &str,
    scorer: ScorerSpec,
    training_data: Vec<String>,
) -> Result<ModelDir> {
    let spec = BuildSpec {
        config: base_files.join("config.json"),
        weights: base_files.join("model.safetensors"),
        tokenizer: base.tokenizer_path(),
        trained: Some(trained.to_path_buf()),
        name: "uwe-minilm-l6".into(),
        version: version.into(),
        base_model: base.manifest.base_model.clone(),
        max_seq_len: base.manifest.max_seq_len,
        scorer,
        // The candidate's publisher carries the current model's per-space scorers forward.
        target_scorers: BTreeMap::new(),
        target_text: TargetText::Label,
        training_data,
        dev_scores: BTreeMap::new(),
        mentions: None,
        int8: false,
    };
    model::build_model_dir(&spec, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(aps: &[f64]) -> eval::QueryScores {
        eval::QueryScores {
            queries: aps.iter().map(|&a| [a, a, a, a]).collect(),
            skipped: 0,
        }
    }

    fn task(name: &str, space: &str) -> DevTask {
        DevTask {
            name: name.into(),
            space: space.into(),
            tasks: PathBuf::new(),
            alias_weight: None,
        }
    }

    #[test]
    fn paired_deltas_compare_each_task_and_pool_the_tasks_of_one_space() {
        let tasks = [
            task("a", "esco-skills"),
            task("b", "esco-skills"),
            task("titles", "esco-occupations"),
            task("short", "esco-occupations"),
        ];
        let by = |v: [(&str, &[f64]); 4]| -> BTreeMap<String, eval::QueryScores> {
            v.iter().map(|(k, a)| (k.to_string(), scores(a))).collect()
        };
        let current = by([
            ("a", &[0.5, 0.5]),
            ("b", &[0.2, 0.4, 0.6]),
            ("titles", &[0.3]),
            ("short", &[0.1, 0.1]),
        ]);
        let candidate = by([
            ("a", &[0.6, 0.7]),
            ("b", &[0.2, 0.4, 0.6]),
            ("titles", &[0.2]),
            ("short", &[0.1]),
        ]);
        let d = paired_deltas(&tasks, &current, &candidate);
        let keys: Vec<&str> = d.keys().map(String::as_str).collect();
        // `short`'s lists differ in length: left out, and so is the occupations' pool (one
        // task left in it).
        assert_eq!(keys, ["a", "b", "pooled:esco-skills", "titles"]);
        assert_eq!((d["a"].n, d["a"].map_delta), (2, 15.0));
        let [lo, hi] = d["a"].map_delta_ci95;
        assert!(
            (10.0..=15.0).contains(&lo) && (15.0..=20.0).contains(&hi),
            "{lo} {hi}"
        );
        assert_eq!(d["b"].map_delta_ci95, [0.0, 0.0]);
        assert_eq!(d["titles"].map_delta, -10.0);
        assert_eq!(d["titles"].rp5_delta, -10.0);
        // Pooled: the five skill queries together, (0.1 + 0.2) / 5.
        assert_eq!(
            (d["pooled:esco-skills"].n, d["pooled:esco-skills"].map_delta),
            (5, 6.0)
        );
    }
}
