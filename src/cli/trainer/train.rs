//! `uwe-trainer train`: train a candidate, gate it on the dev tasks against the current
//! model, publish it into the registry and announce it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{memory, publish};
use crate::model::{self, ModelDir, ScorerSpec};
use crate::rank;
use crate::train::head::{AttendTerm, Objective};
use crate::train::{self, data, TrainSpec};

/// Arguments of `uwe-trainer train`.
#[derive(clap::Args)]
pub(crate) struct TrainArgs {
    #[command(flatten)]
    gate: GateArgs,
    /// What to train: `layers:N` (the top N transformer layers) or `head` (a residual
    /// projection head on the frozen last hidden states).
    #[arg(long = "train", default_value = "layers:3", value_parser = parse_trained)]
    trained: train::Trained,
    /// Optimiser steps (default: 1150 for layers, the shipped recipe; 2000 for the head).
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Peak learning rate (default: 1e-4 for layers, the shipped recipe; 2e-3 for the head).
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// Soft late-interaction temperature τ (recorded in the manifest).
    #[arg(long, default_value_t = 0.05)]
    temperature: f32,
    /// InfoNCE temperature.
    #[arg(long, default_value_t = 0.05)]
    nce_temperature: f32,
    /// Terms of the InfoNCE beside the pooled one, which is always trained: `late` (the
    /// shipped recipe), `attend` (the attend scorer at its default temperature and blend, as
    /// `esco-skills` is served), `attend-skills` (the same on batches of skill pairs only,
    /// occupation pairs keeping the pooled term they are served with), `late` with one of
    /// them, or `none`.
    #[arg(long, default_value = "late", value_parser = parse_objective)]
    objective: ObjectiveTerms,
    /// Trained weights to start from instead of the base model's (a model directory's
    /// `trained.safetensors`, for example the shipped model's): fine-tunes it. They must
    /// be of the part `--train` names or of fewer top layers (the rest start from the base).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Anchor texts per step (0: none): job titles and occupation names from the training
    /// pairs, held at the pooled embeddings the starting weights (`--init`) gave them, so
    /// that skill batches do not move the titles the shared layers also serve.
    #[arg(long, default_value_t = 0)]
    anchor_texts: usize,
    /// Weight of the anchor term (mean cosine distance) beside the InfoNCE.
    #[arg(long, default_value_t = 10.0)]
    anchor_weight: f32,
    /// With --anchor-texts: the occupation-side pairs are anchored only, not trained (their
    /// InfoNCE batches are left out): a fine-tune that trains skills and holds titles.
    #[arg(long)]
    anchor_only: bool,
    /// With --anchor-texts: hold the titles where this model has them instead of where the
    /// starting weights do (a model directory with a `trained.safetensors`, or the file, of
    /// the part --train names). Start from an older model and anchor to the serving one, so
    /// that the gate's title tasks compare like with like.
    #[arg(long, value_name = "MODEL")]
    anchor_to: Option<PathBuf>,
    /// With --anchor-texts: the share of each step's anchor texts drawn from the real job
    /// titles (queries of the `job_title` pairs, a tenth of the occupation-side texts), the
    /// rest uniformly; 0 draws all uniformly. Job normalisation ranks real titles.
    #[arg(long, default_value_t = 0.0, value_name = "SHARE")]
    anchor_title_share: f32,
    /// With --anchor-texts: weight of a ranking term on the step's job titles (0: off), the
    /// KL divergence between the teacher's and this run's softmax (τ 0.05) over the
    /// teacher's rows of the occupation names and aliases: it holds the order of close
    /// occupations for a title, what job normalisation measures, where the cosine term
    /// holds the whole row.
    #[arg(long, default_value_t = 0.0, value_name = "WEIGHT")]
    anchor_rank_weight: f32,
    /// With --anchor-rank-weight: score each title's K closest occupations (the teacher's
    /// top K) with the rows this run gives them now, as serving does, instead of the
    /// teacher's fixed rows (0: all fixed). Fixed rows hold the titles but not the
    /// occupations' own moves, and both move the order job normalisation measures.
    #[arg(long, default_value_t = 0, value_name = "K")]
    anchor_rank_neighbours: usize,
    /// Hard negatives per skill-side text (0: none): skills that `--mine-with` ranks above
    /// every label of the text, masked where one is likely a positive under another name
    /// (`train::mine`). Each is an extra negative of its text in the InfoNCE.
    #[arg(long, default_value_t = 0)]
    hard_negatives: usize,
    /// Sibling negatives per skill-side text (0: none): the skills under the same broader
    /// concept as one of the text's labels in ESCO's skill hierarchy that `--mine-with` ranks
    /// highest for the text, wherever they rank; masked like `--hard-negatives`, and a
    /// label's broader or narrower skill is never one.
    #[arg(long, default_value_t = 0)]
    sibling_negatives: usize,
    /// The model that mines the hard negatives (default: the model the candidate must beat).
    #[arg(long)]
    mine_with: Option<PathBuf>,
    /// Real job-ad sentences with pseudo-labels, JSONL {"text", "label_id", ...}, from
    /// `uwe-trainer pseudo-label` (source `skillspan_pseudo`).
    #[arg(long)]
    pseudo_labels: Option<PathBuf>,
    /// Analysts' feedback pairs, JSONL {"text", "label_id"}.
    #[arg(long)]
    feedback: Option<PathBuf>,
    /// Labelled vacancy titles, JSONL {"text", "label_id"} (default: the training share
    /// of the JobBERT titles in <data-dir>/training/job_titles/train.jsonl).
    #[arg(long)]
    job_titles: Option<PathBuf>,
    /// How many times each pair of a source is drawn per epoch, `SOURCE=N`: real titles
    /// are far fewer than the pairs derived from ESCO, and worth more.
    #[arg(long, value_delimiter = ',', value_parser = parse_repeat, default_value = "job_title=3")]
    repeat: Vec<(String, usize)>,
    /// Sources to leave out: occupation_alias, occupation_title, job_title, skill_alias,
    /// skill_description, skill_sentence, skillskape (`--skip ''` uses all). The default is the shipped
    /// model's recipe: skill aliases and descriptions cost job normalisation.
    #[arg(long, value_delimiter = ',', default_values = data::SHIPPED_SKIP)]
    skip: Vec<String>,
    /// Occupation → essential skills pairs per occupation (0: none, the shipped recipe).
    #[arg(long, default_value_t = 0)]
    occupation_skills: usize,
    /// Use at most this many training pairs (0: all), for quick runs.
    #[arg(long, default_value_t = 0)]
    max_pairs: usize,
    /// Checkpoint folder; with --resume, the run continues from it.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 500)]
    checkpoint_every: usize,
    #[arg(long)]
    resume: bool,
    /// Stop after training and print its report (steps/s, losses): no candidate, no gate.
    #[arg(long)]
    no_gate: bool,
    /// Seed of the batch order and the anchor's draws: runs that differ only in it measure
    /// how much of a dev-set difference is the luck of one run.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// What building, gating and publishing a candidate needs: `train` and `merge` take the same.
#[derive(clap::Args)]
pub(super) struct GateArgs {
    /// Base model directory (the weights training starts from, and the trained ones replace).
    #[arg(long, default_value = "models/base")]
    pub base: PathBuf,
    /// Folder with the base weights (model.safetensors, config.json), from scripts/setup.
    #[arg(long, default_value = ".uwe/base")]
    pub base_files: PathBuf,
    /// Model registry: versions are published as <registry>/<version>, `current` points at the newest.
    #[arg(long, default_value = "registry")]
    pub registry: PathBuf,
    /// Model the candidate must beat (default: <registry>/current, else models/default).
    #[arg(long)]
    pub current: Option<PathBuf>,
    /// Required MAP gain on every dev task (points; negative tolerates a loss).
    #[arg(long, default_value_t = 0.0)]
    pub margin: f64,
    /// Kafka brokers and control topic to announce a published model on.
    #[arg(long)]
    pub brokers: Option<String>,
    #[arg(long, default_value = "uwe.models")]
    pub control_topic: String,
    #[arg(long, env = "UWE_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    #[arg(long, env = "UWE_THREADS", default_value_t = 0)]
    pub threads: usize,
}

fn parse_trained(s: &str) -> Result<train::Trained, String> {
    train::Trained::parse(s)
        .ok_or_else(|| format!("expected `head` or `layers:N` (N ≥ 1), got {s:?}"))
}

/// The loss terms `--objective` names.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ObjectiveTerms {
    late: bool,
    attend: bool,
    /// The attend term on skill batches only.
    skills_only: bool,
}

fn parse_objective(s: &str) -> Result<ObjectiveTerms, String> {
    let mut t = ObjectiveTerms {
        late: false,
        attend: false,
        skills_only: false,
    };
    if s.trim() == "none" {
        return Ok(t);
    }
    for term in s.split(',').map(str::trim) {
        match term {
            "late" => t.late = true,
            "attend" => t.attend = true,
            "attend-skills" => {
                t.attend = true;
                t.skills_only = true;
            }
            "pooled" => {}
            _ => {
                return Err(format!(
                    "expected late, attend, attend-skills, late with one of them, or none; {term:?} is not a term"
                ))
            }
        }
    }
    Ok(t)
}

fn parse_repeat(s: &str) -> Result<(String, usize), String> {
    s.split_once('=')
        .and_then(|(src, n)| Some((src.trim().to_string(), n.trim().parse().ok()?)))
        .filter(|(src, n)| !src.is_empty() && *n >= 1)
        .ok_or_else(|| format!("expected SOURCE=N with N ≥ 1 (for example job_title=3), got {s:?}"))
}

/// Runs `uwe-trainer train` with these arguments.
pub(crate) fn run(a: TrainArgs) -> anyhow::Result<()> {
    let TrainArgs {
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
        trained,
        steps,
        batch,
        lr,
        warmup,
        temperature,
        nce_temperature,
        objective: terms,
        init,
        anchor_texts,
        anchor_weight,
        anchor_only,
        anchor_to,
        anchor_title_share,
        anchor_rank_weight,
        anchor_rank_neighbours,
        hard_negatives,
        sibling_negatives,
        mine_with,
        pseudo_labels,
        feedback,
        job_titles,
        repeat,
        skip,
        occupation_skills,
        max_pairs,
        checkpoint_dir,
        checkpoint_every,
        resume,
        no_gate,
        seed,
    } = a;
    if memory::keep_freed_memory() {
        tracing::debug!("glibc: large blocks served from the heap and kept between steps");
    }
    let (steps, lr) = match trained {
        train::Trained::Head => (steps.unwrap_or(2000), lr.unwrap_or(2e-3)),
        train::Trained::TopLayers(_) => (steps.unwrap_or(1150), lr.unwrap_or(1e-4)),
    };
    // Source names are checked before the slow set-up, so that a typo fails at once.
    if let Some(s) = skip
        .iter()
        .find(|s| !s.is_empty() && !data::SOURCES.contains(&s.as_str()))
    {
        anyhow::bail!("--skip {s}: not a source; use one of {:?}", data::SOURCES);
    }
    if let Some((src, n)) = repeat
        .iter()
        .find(|(src, _)| !data::SOURCES.contains(&src.as_str()))
    {
        anyhow::bail!(
            "--repeat {src}={n}: {src:?} is not a source; use one of {:?}",
            data::SOURCES
        );
    }
    let mining = hard_negatives > 0 || sibling_negatives > 0;
    if !mining {
        if let Some(m) = &mine_with {
            anyhow::bail!(
                "--mine-with {}: give --hard-negatives K or --sibling-negatives K (K ≥ 1) too; without one nothing is mined",
                m.display()
            );
        }
    }
    // Each refusal names the flag it came from.
    let refused = |e: train::AnchorError| match e {
        train::AnchorError::Weight(_) => anyhow::anyhow!("--anchor-weight {anchor_weight}: {e}"),
        train::AnchorError::OnlyWithoutTexts => {
            anyhow::anyhow!("--anchor-only without --anchor-texts N (N ≥ 1): {e}")
        }
        train::AnchorError::TitleShare(_) => {
            anyhow::anyhow!("--anchor-title-share {anchor_title_share}: {e}")
        }
        train::AnchorError::RankWeight(_) => {
            anyhow::anyhow!("--anchor-rank-weight {anchor_rank_weight}: {e}")
        }
        train::AnchorError::NeighboursWithoutRank(_) => {
            anyhow::anyhow!("--anchor-rank-neighbours {anchor_rank_neighbours}: {e}")
        }
    };
    let anchor = match train::Anchor::from_settings(anchor_texts, anchor_weight, anchor_only)
        .map_err(refused)?
    {
        Some(a) => Some(
            a.with_title_share(anchor_title_share)
                .and_then(|a| a.with_rank_weight(anchor_rank_weight))
                .and_then(|a| a.with_rank_neighbours(anchor_rank_neighbours))
                .map_err(refused)?,
        ),
        None if anchor_title_share != 0.0 => anyhow::bail!(
            "--anchor-title-share {anchor_title_share}: give --anchor-texts N (N ≥ 1) too; without anchor texts nothing is drawn"
        ),
        None if anchor_rank_weight != 0.0 || anchor_rank_neighbours != 0 => anyhow::bail!(
            "--anchor-rank-weight {anchor_rank_weight} / --anchor-rank-neighbours {anchor_rank_neighbours}: give --anchor-texts N (N ≥ 1) too; without anchor texts no title is ranked"
        ),
        None => None,
    };
    let anchor_teacher = match (&anchor, anchor_to) {
        (_, None) => None,
        (None, Some(m)) => anyhow::bail!(
            "--anchor-to {}: give --anchor-texts N (N ≥ 1) too; without anchor texts nothing is held",
            m.display()
        ),
        (Some(_), Some(m)) if m.is_dir() => Some(m.join(train::TRAINED_FILE)),
        (Some(_), Some(m)) => Some(m),
    };
    if let Some(t) = anchor_teacher.as_ref().filter(|t| !t.is_file()) {
        anyhow::bail!(
            "--anchor-to: {} does not exist; give a model directory with its trained weights, or the weights file",
            t.display()
        );
    }
    let ecfg = super::reference_encoder(threads);
    let base_dir =
        ModelDir::open(&base).with_context(|| format!("base model {}", base.display()))?;
    let scratch = tempfile::tempdir()?;
    let (mut enc, trainable) =
        train::prepare(&base_dir, &base_files, trained, &ecfg, scratch.path())?;
    if let Some(init) = &init {
        let weights =
            train::read_trained(init).with_context(|| format!("--init {}", init.display()))?;
        let set = trainable.restore_part(&weights).map_err(|e| {
            anyhow::anyhow!(
                "--init {}: {e}; the weights must be of the part --train {trained:?} names, or of fewer top layers",
                init.display()
            )
        })?;
        let all = trainable.vars().len();
        if set < all {
            tracing::info!(
                init = %init.display(),
                set,
                all,
                "--init holds fewer layers than --train names; the lower ones start from the base weights"
            );
        }
    }

    let skip: Vec<&str> = skip.iter().map(String::as_str).collect();
    let mut dspec = data::DataSpec::without(&data_dir, &skip);
    dspec.occupation_skills = occupation_skills;
    if let (Some(t), Some(file)) = (&mut dspec.job_titles, job_titles) {
        *t = file;
    }
    dspec.pseudo_labels = pseudo_labels;
    dspec.feedback = feedback;
    let mut pairs = data::build_pairs(&data_dir, &dspec)?;
    if max_pairs > 0 && pairs.len() > max_pairs {
        pairs = data::sample_evenly(pairs, max_pairs);
    }
    let (mut train_pairs, dev_pairs) = data::split_dev(pairs, 20);
    let mut by_source: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &train_pairs {
        *by_source.entry(p.source).or_default() += 1;
    }
    // Repeat after the dev split, so that a repeated pair is never on both sides.
    for (src, n) in &repeat {
        let extra: Vec<data::Pair> = train_pairs
            .iter()
            .filter(|p| p.source == src)
            .cloned()
            .collect();
        for _ in 1..*n {
            train_pairs.extend(extra.iter().cloned());
        }
    }
    eprintln!(
        "training pairs: {} ({by_source:?}); per epoch, with --repeat {repeat:?}: {}; held out: {}",
        by_source.values().sum::<usize>(),
        train_pairs.len(),
        dev_pairs.len()
    );
    let (negatives, mined) = if mining {
        let dir = mine_with.unwrap_or_else(|| current_dir(current.as_deref(), &registry));
        let m = ModelDir::open(&dir).with_context(|| format!("--mine-with {}", dir.display()))?;
        let scorer = m.manifest.scorer_for("esco-skills");
        let mut menc = crate::encoder::Encoder::load(&m, &ecfg)?;
        let space = crate::space::cache::load_named(
            "esco-skills",
            &data_dir,
            &mut menc,
            &crate::space::cache::default_cache_dir(),
            true,
            None,
        )?;
        let hierarchy = if sibling_negatives > 0 {
            Some(train::mine::Hierarchy::load(&data_dir, &space.space)?)
        } else {
            None
        };
        let spec = train::mine::MineSpec {
            confusions: hard_negatives,
            siblings: sibling_negatives,
            hierarchy: hierarchy.as_ref(),
        };
        let (negs, r) =
            train::mine::negatives(&mut menc, &space, scorer, &train_pairs, &spec, true)?;
        eprintln!(
            "hard negatives mined with {}: {}",
            m.manifest.version,
            serde_json::to_string(&r)?
        );
        (negs, Some((m.manifest.version.clone(), r)))
    } else {
        (vec![], None)
    };
    let objective = Objective {
        late: terms.late,
        attend: terms.attend.then_some(AttendTerm {
            temperature: rank::ATTEND_TEMPERATURE,
            pooled_weight: rank::ATTEND_POOLED_WEIGHT,
            skills_only: terms.skills_only,
        }),
        ..Objective::late_and_pooled(temperature, nce_temperature)
    };
    let spec = TrainSpec {
        batch,
        steps,
        lr,
        warmup,
        objective,
        seed,
        checkpoint_dir: checkpoint_dir.clone(),
        checkpoint_every,
        resume,
        progress: true,
        max_text_tokens: 0,
        anchor,
        anchor_teacher: anchor_teacher.clone(),
    };
    if let Some(d) = &checkpoint_dir {
        std::fs::create_dir_all(d)?;
    }
    let report = train::train(
        &mut enc,
        trainable.as_ref(),
        &train_pairs,
        &dev_pairs,
        &negatives,
        &spec,
    )?;
    eprintln!("{}", serde_json::to_string(&report)?);
    if no_gate {
        println!(
            "{}",
            serde_json::json!({"train": format!("{trained:?}"), "batch": batch, "report": report,
                "pairs_per_second": report.steps_per_second * batch as f64})
        );
        return Ok(());
    }
    drop(enc);

    let version = format!("uwe-{}", time::OffsetDateTime::now_utc().unix_timestamp());
    let mut training_data: Vec<String> = by_source
        .iter()
        .map(|(src, n)| format!("{src}: {n} pairs"))
        .collect();
    training_data.push(format!(
        "held out: {} pairs; repeated per epoch: {repeat:?}; trained: {trained:?}{}; {} steps x {batch} pairs, AdamW lr {lr}, warm-up {warmup}, late tau {temperature}, InfoNCE tau {nce_temperature}, seed {seed}, loss terms: pooled{}{}",
        dev_pairs.len(),
        init.as_ref().map(|p| format!(" from {}", p.display())).unwrap_or_default(),
        report.steps,
        if terms.late { ", late" } else { "" },
        match (terms.attend, terms.skills_only) {
            (true, true) => ", attend (skill batches)",
            (true, false) => ", attend",
            _ => "",
        },
    ));
    if let Some((by, r)) = &mined {
        let siblings = if sibling_negatives > 0 {
            format!(
                ", and up to {sibling_negatives} of its labels' siblings in ESCO's skill hierarchy that {by} ranks highest ({} kept)",
                r.siblings
            )
        } else {
            String::new()
        };
        training_data.push(format!(
            "hard negatives: up to {hard_negatives} per skill-side text, the skills {by} ranked above every label of the text{siblings}: {} negatives on {} of {} texts confused ({} masked as likely positives)",
            r.negatives, r.confused, r.texts, r.masked
        ));
    }
    if let Some(a) = anchor {
        training_data.push(format!(
            "anchor: {} occupation-side texts per step{} held at {} embeddings, weight {}{}{}",
            a.per_step,
            if a.title_share > 0.0 {
                format!(" ({}% of them job titles)", (a.title_share * 100.0).round())
            } else {
                String::new()
            },
            anchor_teacher
                .as_ref()
                .map(|t| format!("{}'s", t.display()))
                .unwrap_or_else(|| "the starting weights'".into()),
            a.weight,
            if a.rank_weight > 0.0 {
                format!(
                    ", their ranking of the occupation names held at weight {} (KL, τ {}{})",
                    a.rank_weight,
                    train::RANK_ANCHOR_TAU,
                    if a.rank_neighbours > 0 {
                        format!(
                            "; each title's {} closest occupations at this run's rows",
                            a.rank_neighbours
                        )
                    } else {
                        String::new()
                    }
                )
            } else {
                String::new()
            },
            if a.only {
                ", occupation pairs anchored only"
            } else {
                ""
            }
        ));
    }
    let late = ScorerSpec::Late {
        temperature,
        rerank_top: 100,
    };
    let (cand, staging) = stage_candidate(&Stage {
        base: &base_dir,
        base_files: &base_files,
        registry: &registry,
        current: &current_dir(current.as_deref(), &registry),
        version: &version,
        weights: trainable.export().map_err(|e| anyhow::anyhow!("{e}"))?,
        late,
        training_data,
    })?;

    publish::gate_and_publish(publish::Candidate {
        dir: cand,
        version,
        staging,
        late,
        train: serde_json::to_value(&report)?,
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

/// What [`stage_candidate`] needs.
pub(super) struct Stage<'a> {
    /// The base model directory.
    pub base: &'a ModelDir,
    /// The base weights.
    pub base_files: &'a Path,
    /// The registry it is staged in.
    pub registry: &'a Path,
    /// The model it would replace (an int8 graph is attached when that one has one).
    pub current: &'a Path,
    /// The candidate's version.
    pub version: &'a str,
    /// The trained weights, named as [`train::head::Trainable::export`] names them.
    pub weights: Vec<(String, candle_core::Tensor)>,
    /// The late scorer it was trained with.
    pub late: ScorerSpec,
    /// The model card's training-data lines.
    pub training_data: Vec<String>,
}

/// Builds the candidate model directory in `<registry>/.staging-<version>` with its trained
/// weights; nothing outside the staging directory is visible until the gate publishes it.
pub(super) fn stage_candidate(s: &Stage<'_>) -> anyhow::Result<(ModelDir, PathBuf)> {
    std::fs::create_dir_all(s.registry)?;
    let staging = s.registry.join(format!(".staging-{}", s.version));
    let trained_path = s
        .registry
        .join(format!(".trained-{}.safetensors", s.version));
    train::write_trained(&trained_path, &s.weights)?;
    let cand = train::build_candidate(
        s.base,
        s.base_files,
        &trained_path,
        &staging,
        s.version,
        s.late,
        s.training_data.clone(),
    )?;
    // A candidate has an int8 graph when the model it would replace has one, so a connector
    // that opted into int8 keeps serving it after a hot swap.
    let cand = match ModelDir::open(s.current) {
        Ok(d) if d.manifest.int8.is_some() => model::attach_int8(
            &cand.path,
            &s.base_files.join("config.json"),
            &s.base_files.join("model.safetensors"),
            Some(&trained_path),
        )?,
        _ => cand,
    };
    std::fs::rename(&trained_path, staging.join(train::TRAINED_FILE))?;
    Ok((cand, staging))
}

/// The model a candidate would replace: `--current`, else the registry's `current`, else
/// `models/default`.
pub(super) fn current_dir(current: Option<&Path>, registry: &Path) -> PathBuf {
    match current {
        Some(c) => c.to_path_buf(),
        None if registry.join("current").exists() => registry.join("current"),
        None => PathBuf::from("models/default"),
    }
}
