//! Hot swap: the connector follows a model registry folder and swaps models between
//! batches, without a restart.
//!
//! ```text
//! registry/
//!   base-1/ uwe-1795725884/ ...   versioned model directories (uwe-trainer writes them atomically)
//!   current -> uwe-1795725884      the version to serve (a symlink; `uwe-connect rollback` moves it)
//! ```
//! On a change of `current` (polled, or announced on the control topic), the new model is
//! loaded in the background: checksums verified, target spaces embedded or loaded from the
//! cache, a warm-up batch run. Only then does the encoder thread switch, between two
//! batches. Each batch keeps the spaces of the model that encoded it, so no record mixes
//! two models, and every record names its model version. A model that fails any step is
//! refused with a log line and `uwe_model_swaps_total{outcome="refused"}`; the old one
//! keeps serving. `model.pin` serves one version and never swaps.
//!
//! Shadow scoring: a share of live events (`model.shadow_share`) is kept with the top-k ids
//! the serving model gave them. Before a swap, the loaded candidate ranks those events too,
//! and the mean top-k overlap is logged and exported
//! (`uwe_model_shadow_topk_overlap_ratio`); below `model.min_shadow_overlap` the candidate
//! is refused.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::config::{Mode, PipelineConfig};
use super::enrich::{self, Label, Plan, Target};
use crate::encoder::Encoder;
use crate::error::{ModelError, Result};
use crate::model::ModelDir;
use crate::space::cache;
use crate::telemetry as t;

/// What ranking needs from one model: its embedded target spaces, each with its scorer.
pub struct Serving {
    /// Targets with this model's embeddings of their spaces and its scorer for each.
    pub targets: Vec<Target>,
    /// The model's mention tagger (present whenever a target ranks mentions).
    pub mentions: Option<Arc<crate::mentions::MentionHead>>,
}

/// Servings by model version; batches look theirs up by the version that encoded them.
#[derive(Default)]
pub struct Servings {
    inner: RwLock<HashMap<String, Arc<Serving>>>,
}

impl Servings {
    /// The serving of `version`.
    pub fn get(&self, version: &str) -> Option<Arc<Serving>> {
        self.inner
            .read()
            .expect("servings lock")
            .get(version)
            .cloned()
    }

    /// Adds `version`, keeping only it and `keep` (the one still finishing its batches).
    pub fn insert(&self, version: String, s: Serving, keep: &str) {
        let mut m = self.inner.write().expect("servings lock");
        m.retain(|k, _| k == keep);
        m.insert(version, Arc::new(s));
    }
}

/// The model directory to serve at start: the pin, else the registry's `current`, else
/// `model.dir`.
pub fn initial_model_dir(cfg: &PipelineConfig) -> PathBuf {
    match (&cfg.model.registry, &cfg.model.pin) {
        (Some(r), Some(pin)) => r.join(pin),
        (Some(r), None) if r.join("current").exists() => r.join("current"),
        _ => cfg.model.dir.clone(),
    }
}

/// Loads a model and everything ranking needs; runs a warm-up batch.
pub fn load_serving(
    dir: &Path,
    cfg: &PipelineConfig,
    progress: bool,
) -> Result<(Encoder, Serving)> {
    let model = ModelDir::open(dir)?;
    let mentions = model.mention_head()?.map(Arc::new);
    if let Some(t) = cfg.targets.iter().find(|t| t.mode == Mode::Mentions) {
        if mentions.is_none() {
            return Err(ModelError::Manifest {
                path: model.path.join(crate::model::MANIFEST_FILE),
                msg: format!(
                    "target {:?} ranks mentions, and this model has no mention tagger: attach one \
                     with `uwe-trainer mentions --model {}`, or set `mode = \"sentences\"`",
                    t.name,
                    dir.display()
                ),
            });
        }
    }
    let mut enc = Encoder::load(&model, &cfg.encoder)?;
    let cache_dir = cfg
        .model
        .cache_dir
        .clone()
        .unwrap_or_else(cache::default_cache_dir);
    let mut targets = Vec::new();
    for tc in &cfg.targets {
        let s = cache::load_named(
            &tc.space,
            &cfg.model.data_dir,
            &mut enc,
            &cache_dir,
            progress,
            tc.alias_weight(),
        )?;
        targets.push(Target {
            cfg: tc.clone(),
            space: Arc::new(s),
            scorer: model.manifest.scorer_for(&tc.space),
        });
    }
    let warm = enc.encode(&["warm-up: software engineer with Java and Docker"])?;
    if warm[0].pooled.iter().any(|x| !x.is_finite()) || warm[0].is_empty() {
        return Err(ModelError::Runtime(format!(
            "{}: warm-up produced invalid embeddings",
            dir.display()
        )));
    }
    Ok((enc, Serving { targets, mentions }))
}

/// The version `registry/current` points at, read from its manifest's directory name.
pub fn current_target(registry: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(registry.join("current")).ok()
}

/// Records a swap attempt.
pub fn record_swap(outcome: &'static str) {
    metrics::counter!(t::MODEL_SWAPS_TOTAL, "outcome" => outcome).increment(1);
}

/// Points `registry/current` at `version` atomically (symlink, then rename over).
pub fn set_current(registry: &Path, version: &str) -> std::io::Result<()> {
    if !registry
        .join(version)
        .join(crate::model::MANIFEST_FILE)
        .is_file()
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} has no model version {version:?}", registry.display()),
        ));
    }
    let tmp = registry.join(format!(".current-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp)?;
    std::fs::rename(&tmp, registry.join("current"))
}

/// Published versions in the registry, oldest first (by manifest creation time).
pub fn versions(registry: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(registry)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') || name == "current" || name == "rejected" {
                return None;
            }
            let m = std::fs::read_to_string(e.path().join(crate::model::MANIFEST_FILE)).ok()?;
            let m: crate::model::Manifest = serde_json::from_str(&m).ok()?;
            Some((m.created_at, name))
        })
        .collect();
    v.sort();
    v
}

/// One live event kept for shadow scoring: its texts and, per target, the ids the serving
/// model put in its top k.
#[derive(Debug, Clone)]
pub struct ShadowSample {
    /// The event's plan (texts and units).
    pub plan: Plan,
    /// Target name → label ids in rank order.
    pub ids: BTreeMap<String, Vec<String>>,
}

/// A bounded window of recent live events for shadow scoring, sampled evenly at a share.
pub struct ShadowSamples {
    window: Mutex<VecDeque<ShadowSample>>,
    capacity: usize,
    every: u64,
    seen: AtomicU64,
}

impl ShadowSamples {
    /// Keeps one event in `1 / share` (none at 0), at most `capacity` of the newest.
    pub fn new(share: f64, capacity: usize) -> Self {
        ShadowSamples {
            window: Mutex::new(VecDeque::new()),
            capacity,
            every: if share > 0.0 {
                (1.0 / share).round().max(1.0) as u64
            } else {
                0
            },
            seen: AtomicU64::new(0),
        }
    }

    /// Offers an enriched event; it is kept when its turn in the sampling comes.
    pub fn offer(&self, plan: &Plan, labels: &BTreeMap<String, Vec<Label>>) {
        if self.every == 0
            || !self
                .seen
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(self.every)
        {
            return;
        }
        let ids = labels
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().map(|l| l.id.clone()).collect()))
            .collect();
        let mut w = self.window.lock().expect("shadow window lock");
        if w.len() == self.capacity {
            w.pop_front();
        }
        w.push_back(ShadowSample {
            plan: plan.clone(),
            ids,
        });
    }

    /// A copy of the window.
    pub fn snapshot(&self) -> Vec<ShadowSample> {
        self.window
            .lock()
            .expect("shadow window lock")
            .iter()
            .cloned()
            .collect()
    }
}

/// Mean top-k overlap between the labels the candidate gives `samples` and the ones the
/// serving model gave (|A ∩ B| / max(|A|, |B|) per event and target, over the pairs where
/// either has labels). `None` when there is nothing to compare.
pub fn shadow_overlap(
    enc: &mut Encoder,
    serving: &Serving,
    samples: &[ShadowSample],
) -> Result<Option<(f64, usize)>> {
    // One encoder call for every sample's texts, so the encoder batches them by its token
    // budget instead of running up to 200 small batches.
    let texts: Vec<&str> = samples
        .iter()
        .flat_map(|s| s.plan.texts.iter().map(String::as_str))
        .collect();
    let emb = enc.encode(&texts)?;
    let (mut total, mut n, mut next) = (0f64, 0usize, 0usize);
    for s in samples {
        let range = next..next + s.plan.texts.len();
        next = range.end;
        let got = enrich::labels(
            &s.plan,
            &emb[range],
            &serving.targets,
            serving.mentions.as_deref(),
        );
        for t in &serving.targets {
            let old: HashSet<&String> = s.ids.get(&t.cfg.name).into_iter().flatten().collect();
            let new: HashSet<&String> = got
                .get(&t.cfg.name)
                .into_iter()
                .flatten()
                .map(|l| &l.id)
                .collect();
            let most = old.len().max(new.len());
            if most > 0 {
                total += old.intersection(&new).count() as f64 / most as f64;
                n += 1;
            }
        }
    }
    Ok((n > 0).then(|| (total / n as f64, samples.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(ids: &[&str]) -> BTreeMap<String, Vec<Label>> {
        let ev = enrich::Evidence {
            field: "title".into(),
            start: 0,
            end: 1,
            text: "x".into(),
            sentence: None,
        };
        let v = ids
            .iter()
            .enumerate()
            .map(|(r, id)| Label {
                id: id.to_string(),
                label: id.to_string(),
                score: 0.5,
                rank: r + 1,
                matched: None,
                mentions: None,
                evidence: ev.clone(),
            })
            .collect();
        BTreeMap::from([("occupations".to_string(), v)])
    }

    #[test]
    fn samples_a_share_and_keeps_the_newest() {
        let s = ShadowSamples::new(0.25, 3);
        for i in 0..40 {
            s.offer(&Plan::default(), &labels(&[&format!("c{i}")]));
        }
        let w = s.snapshot();
        // Events 0, 4, 8, …, 36 were sampled; the window keeps the last three.
        let kept: Vec<&str> = w.iter().map(|x| x.ids["occupations"][0].as_str()).collect();
        assert_eq!(kept, ["c28", "c32", "c36"]);
        let off = ShadowSamples::new(0.0, 3);
        off.offer(&Plan::default(), &labels(&["a"]));
        assert!(off.snapshot().is_empty());
    }
}
