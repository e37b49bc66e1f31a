//! What the trainer's gate needs: the dev tasks, a model's scores on them, and the candidate
//! model directory built from trained weights.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;

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

/// Scores of a model on the dev tasks, by task name, each task ranked with
/// `scorer(space)`: the scorer the model serves the task's space with
/// ([`crate::model::Manifest::scorer_for`]), or one scorer for all (`|_| spec`).
pub fn dev_scores(
    dir: &ModelDir,
    cfg: &EncoderConfig,
    tasks: &[DevTask],
    scorer: &dyn Fn(&str) -> ScorerSpec,
    data_dir: &Path,
    cache_dir: &Path,
) -> Result<BTreeMap<String, Report>> {
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
        let r = eval::evaluate(
            &mut enc,
            &spaces[&key],
            &eval::read_tasks(&t.tasks)?,
            scorer(&t.space),
            false,
        )?;
        out.insert(t.name.clone(), r);
    }
    Ok(out)
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
