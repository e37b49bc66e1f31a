//! Tiny training runs, for the projection head and for the top transformer layer: the loss
//! falls, and the exported model, run by ONNX Runtime, matches candle's forward of the
//! trained part on the same inputs.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use uwe_connect::encoder::Encoder;
use uwe_connect::model::{ModelDir, ScorerSpec};
use uwe_connect::train::{self, data, head, TrainSpec, Trained};

/// `n` pairs spread evenly over the occupation aliases (and SkillSkape, with `skillskape`).
fn stride_sample(skillskape: bool, titles: bool, n: usize) -> Vec<data::Pair> {
    let data_dir = root().join("data");
    let spec = data::DataSpec {
        occupation_aliases: true,
        occupation_titles: false,
        skill_aliases: false,
        skill_descriptions: false,
        skill_sentences: false,
        occupation_skills: 0,
        skillskape: skillskape.then(|| data_dir.join("training/skillskape/train.csv")),
        job_titles: titles.then(|| data_dir.join("training/job_titles/train.jsonl")),
        pseudo_labels: None,
        feedback: None,
    };
    let pairs = data::build_pairs(&data_dir, &spec).unwrap();
    pairs
        .iter()
        .step_by(pairs.len() / n)
        .take(n)
        .cloned()
        .collect()
}

fn tiny_run(what: Trained, lr: f64) {
    let sample = stride_sample(true, false, 400);
    let (train_pairs, dev_pairs) = data::split_dev(sample, 100);
    assert!(!dev_pairs.is_empty());
    let base = open_base();
    let scratch = tempfile::tempdir().unwrap();
    let (mut enc, model) = train::prepare(
        &base,
        &root().join(".uwe/base"),
        what,
        &cpu_config(),
        scratch.path(),
    )
    .unwrap();
    let ts = TrainSpec {
        batch: 16,
        steps: 40,
        lr,
        warmup: 5,
        objective: head::Objective::late_and_pooled(0.05, 0.05),
        seed: 7,
        checkpoint_dir: None,
        checkpoint_every: 0,
        resume: false,
        progress: false,
        max_text_tokens: 0,
        anchor_teacher: None,
        anchor: None,
    };
    let report =
        train::train(&mut enc, model.as_ref(), &train_pairs, &dev_pairs, &[], &ts).unwrap();
    assert!(report.loss_end < report.loss_start * 0.9, "{report:?}");
    // 360 pairs overfit within 40 steps, so held-out loss is only checked to be measured here;
    // the shipped model's card records it for a real run.
    assert!(
        report.dev_loss_after.is_finite() && report.dev_loss_before.is_finite(),
        "{report:?}"
    );

    // Export and load the candidate in ONNX Runtime.
    let dir = tempfile::tempdir().unwrap();
    let trained_path = dir.path().join(train::TRAINED_FILE);
    train::write_trained(&trained_path, &model.export().unwrap()).unwrap();
    let cand = train::build_candidate(
        &base,
        &root().join(".uwe/base"),
        &trained_path,
        &dir.path().join("cand"),
        "test-1",
        ScorerSpec::Pooled,
        vec![],
    )
    .unwrap();
    let mut cand_enc = Encoder::load(&ModelDir::open(&cand.path).unwrap(), &cpu_config()).unwrap();

    // Candle: the trained part on the frozen encoder's states.
    let texts = [
        "Senior Java developer",
        "You will administer medication to patients.",
    ];
    let hidden = enc.hidden_states(&texts).unwrap();
    let ort = cand_enc.encode(&texts).unwrap();
    for (hs, o) in hidden.iter().zip(&ort) {
        let n = hs.len() / 384;
        let x = Tensor::from_vec(hs.clone(), (1, n, 384), &Device::Cpu).unwrap();
        let mask = Tensor::ones((1, n), DType::F32, &Device::Cpu).unwrap();
        let y = model.forward(&x, &mask).unwrap();
        let (pooled, tokens) = head::pool(&y, &mask).unwrap();
        let pooled: Vec<f32> = pooled.flatten_all().unwrap().to_vec1().unwrap();
        let diff = pooled
            .iter()
            .zip(&o.pooled)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-4, "{what:?}: pooled differs by {diff}");
        // Word-piece rows (without [CLS] and [SEP]) match the runtime's normalised tokens.
        let tokens: Vec<f32> = tokens.flatten_all().unwrap().to_vec1().unwrap();
        let inner = &tokens[384..(n - 1) * 384];
        let diff = inner
            .iter()
            .zip(&o.tokens)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert_eq!(inner.len(), o.tokens.len());
        assert!(diff < 1e-4, "{what:?}: tokens differ by {diff}");
    }
    // The export changed the model: the candidate is not the base.
    let mut base_enc = base_encoder();
    let b = base_enc.encode(&texts[..1]).unwrap();
    let moved = b[0]
        .pooled
        .iter()
        .zip(&ort[0].pooled)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(moved > 1e-3, "{what:?}: training left the model unchanged");
}

#[test]
fn tiny_head_run_loss_falls_and_export_matches_candle() {
    tiny_run(Trained::Head, 3e-3);
}

#[test]
fn tiny_top_layer_run_loss_falls_and_export_matches_candle() {
    tiny_run(Trained::TopLayers(1), 1e-4);
}

/// `--anchor-to` on the real transformer layers: the titles are held where the shipped
/// model has them, their ranking of the occupation names measured against the shipped
/// model's, and the run still starts from its own weights. The teacher's weights are
/// loaded into the same variables the run trains, so a shallow copy of the starting weights
/// would start the run from the teacher instead.
#[test]
fn an_anchor_teacher_of_real_layers_holds_titles_there_and_the_run_starts_from_its_own() {
    let sample = stride_sample(false, true, 64);
    assert!(
        sample.iter().any(|p| p.source == "job_title"),
        "the sample should hold job titles to rank"
    );
    let base = open_base();
    let scratch = tempfile::tempdir().unwrap();
    let (mut enc, model) = train::prepare(
        &base,
        &root().join(".uwe/base"),
        Trained::TopLayers(3),
        &cpu_config(),
        scratch.path(),
    )
    .unwrap();
    let start = model.export().unwrap();
    let teacher = root()
        .join("trained/uwe-minilm-l6")
        .join(train::TRAINED_FILE);
    let mut run = |anchor_teacher: Option<std::path::PathBuf>| {
        let ts = TrainSpec {
            batch: 8,
            steps: 1,
            // Too small to move the weights: what the anchor measures is where it holds.
            lr: 1e-12,
            warmup: 0,
            objective: head::Objective::late_and_pooled(0.05, 0.05),
            seed: 7,
            checkpoint_dir: None,
            checkpoint_every: 0,
            resume: false,
            progress: false,
            max_text_tokens: 0,
            anchor_teacher,
            anchor: train::Anchor::from_settings(16, 1.0, false)
                .unwrap()
                .map(|a| {
                    a.with_title_share(0.5)
                        .unwrap()
                        .with_rank_weight(1.0)
                        .unwrap()
                }),
        };
        let r = train::train(&mut enc, model.as_ref(), &sample, &[], &[], &ts).unwrap();
        (
            r.anchor_drift_after.expect("an anchored run reports drift"),
            r.anchor_rank_after
                .expect("a ranking anchor reports the titles' divergence"),
        )
    };
    let (own, own_rank) = run(None);
    let (taught, taught_rank) = run(Some(teacher));
    // The base's titles sit away from where the shipped model has them, and at the base's own.
    assert!(own < 1e-4, "drift from its own starting rows: {own}");
    assert!(
        taught > 10.0 * own.max(1e-5),
        "the shipped model's rows should be away from the base's: drift {taught}"
    );
    // And they rank the occupation names otherwise than the shipped model does.
    assert!(
        own_rank < 1e-3,
        "divergence from its own ranking: {own_rank}"
    );
    assert!(
        taught_rank > 10.0 * own_rank.max(1e-4),
        "the shipped model should rank the names otherwise: divergence {taught_rank}"
    );
    // The run trained the base's weights, not the teacher's.
    for (name, w) in model.export().unwrap() {
        let (_, s) = start.iter().find(|(n, _)| *n == name).unwrap();
        let diff = (w - s)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            diff < 1e-6,
            "{name} moved by {diff}: the run started from the teacher"
        );
    }
}

#[test]
fn trained_weights_the_graph_does_not_read_are_refused() {
    // A seventh layer's weight in a file for a six-layer base: building must fail, naming
    // it, instead of silently writing the base model.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(train::TRAINED_FILE);
    let t = Tensor::zeros(384, DType::F32, &Device::Cpu).unwrap();
    train::write_trained(
        &path,
        &[("encoder.layer.6.output.dense.bias".to_string(), t)],
    )
    .unwrap();
    let e = train::build_candidate(
        &open_base(),
        &root().join(".uwe/base"),
        &path,
        &dir.path().join("cand"),
        "test-bad",
        ScorerSpec::Pooled,
        vec![],
    )
    .expect_err("refused");
    assert!(
        e.to_string().contains("encoder.layer.6.output.dense.bias"),
        "{e}"
    );
    assert!(!dir.path().join("cand").exists());
}

#[test]
fn shipped_job_titles_are_the_training_half_of_the_split_and_share_no_dev_title() {
    // The trainer learns from data/training/job_titles; job normalisation is scored on
    // data/eval/job_normalization_dev.jsonl. Both must come from the one documented split
    // of the raw JobBERT file, and no title (case and spacing aside) may be in both.
    let data = root().join("data");
    let raw = uwe_connect::eval::convert_job_normalization(
        &data.join("eval/raw/job_normalization/jobbert_titles_dev.csv"),
    )
    .unwrap();
    let (train_half, dev_half) = uwe_connect::eval::split_by_title(raw, 50);
    let dev =
        uwe_connect::eval::read_tasks(&data.join("eval/job_normalization_dev.jsonl")).unwrap();
    assert_eq!(
        dev, dev_half,
        "the dev file is not the held-back half of the split"
    );

    let shipped: Vec<(String, String)> =
        std::fs::read_to_string(data.join("training/job_titles/train.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["text"].as_str().unwrap().to_string(),
                    v["label_id"].as_str().unwrap().to_string(),
                )
            })
            .collect();
    // Every shipped pair is from the training half; only titles whose occupation is not in
    // ESCO v1.1.1 are left out.
    let expected: Vec<(String, String)> = train_half
        .iter()
        .map(|t| (t.query.clone(), t.relevant[0].clone()))
        .collect();
    assert!(shipped.len() <= expected.len() && expected.len() - shipped.len() < 10);
    let mut rest = expected.iter();
    assert!(
        shipped.iter().all(|p| rest.any(|e| e == p)),
        "the training file is not the training half, in order"
    );
    let key = |q: &str| {
        q.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase()
    };
    let dev_keys: std::collections::HashSet<String> = dev.iter().map(|t| key(&t.query)).collect();
    let leaked: Vec<&String> = shipped
        .iter()
        .map(|(q, _)| q)
        .filter(|q| dev_keys.contains(&key(q)))
        .collect();
    assert!(
        leaked.is_empty(),
        "dev titles in the training file: {leaked:?}"
    );
    assert!(dev.len() > 7000 && shipped.len() > 7000);
}

#[test]
fn esco_skill_hierarchy_knows_programming_languages_are_siblings_under_programming() {
    use uwe_connect::space::TargetSpace;
    use uwe_connect::train::mine::Hierarchy;
    let data_dir = root().join("data");
    let space = TargetSpace::resolve("esco-skills", &data_dir).unwrap();
    let h = Hierarchy::load(&data_dir, &space).unwrap();
    let at = |label: &str| {
        space
            .concepts
            .iter()
            .position(|c| c.label == label)
            .unwrap_or_else(|| panic!("{label} is an ESCO v1.1.1 skill"))
    };
    let (python, java, programming, nursing) = (
        at("Python (computer programming)"),
        at("Java (computer programming)"),
        at("computer programming"),
        at("plan nursing care"),
    );
    assert!(h.siblings(python, java), "both under computer programming");
    assert!(h.nested(python, programming) && h.nested(programming, java));
    assert!(!h.nested(python, java));
    assert!(!h.siblings(python, nursing) && !h.nested(python, nursing));
}
