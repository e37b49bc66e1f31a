//! The model runtime against the real all-MiniLM-L6-v2 weights and ONNX Runtime.

mod common;

use std::sync::Arc;

use common::*;
use uwe_connect::encoder::Encoder;
use uwe_connect::error::ModelError;
use uwe_connect::model::{ModelDir, ScorerSpec};
use uwe_connect::rank::rank;
use uwe_connect::space::{cache, load_jsonl};

fn cos(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    d / (na * nb)
}

#[test]
fn pooled_embeddings_match_sentence_transformers() {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/data/st_reference.json")).unwrap(),
    )
    .unwrap();
    let texts: Vec<String> = serde_json::from_value(reference["texts"].clone()).unwrap();
    let want: Vec<Vec<f32>> = serde_json::from_value(reference["embeddings"].clone()).unwrap();
    let mut enc = base_encoder();
    let got = enc.encode(&texts).unwrap();
    for ((t, g), w) in texts.iter().zip(&got).zip(&want) {
        let c = cos(&g.pooled, w);
        assert!(c > 0.9999, "cosine {c} for {t:?}");
        assert_eq!(g.n_windows, 1);
    }
}

#[test]
fn batching_does_not_change_embeddings() {
    let mut enc = base_encoder();
    let texts = [
        "nurse",
        "We use Kubernetes, Terraform and AWS every day to ship our platform.",
        "chef de partie",
    ];
    let batched = enc.encode(&texts).unwrap();
    for (t, b) in texts.iter().zip(&batched) {
        let single = enc.encode(&[format!("{t} ")]).unwrap().remove(0);
        assert!(cos(&single.pooled, &b.pooled) > 0.99999, "{t}");
        assert_eq!(single.n_tokens, b.n_tokens);
    }
}

#[test]
fn long_text_is_split_into_windows_not_truncated() {
    let mut enc = base_encoder();
    let sentence = "You will maintain our Java services and mentor junior engineers. ";
    let text = sentence.repeat(300); // thousands of word pieces
    let e = enc.encode(&[text.as_str()]).unwrap().remove(0);
    let pieces = enc.count_tokens(&text).unwrap();
    let window = enc.manifest().max_seq_len - 2;
    // Windows end at sentence boundaries, so there are at least as many as a plain cut makes.
    assert!(
        e.n_windows >= pieces.div_ceil(window) && e.n_windows > 1,
        "windows {} for {pieces} pieces",
        e.n_windows
    );
    assert_eq!(e.n_tokens, pieces, "every word piece has an embedding");
    let one = enc
        .encode(&[sentence.trim(), "prepare meals in a restaurant kitchen"])
        .unwrap();
    let (same, other) = (
        cos(&e.pooled, &one[0].pooled),
        cos(&e.pooled, &one[1].pooled),
    );
    assert!(
        same > 0.6 && same > other + 0.4,
        "same {same}, other {other}"
    );
}

#[test]
fn earlier_layers_come_with_every_token_across_windows_and_batches() {
    let mut enc = base_encoder();
    let dim = enc.manifest().dim;
    let short = "We use Kubernetes, Terraform and AWS every day to ship our platform.";
    let long = "You will maintain our Java services and mentor junior engineers. ".repeat(40);
    let plain = enc.encode(&[short, long.as_str()]).unwrap();
    assert!(
        plain.iter().all(|e| e.layer_rows.is_empty()),
        "none asked for"
    );
    enc.set_feature_layers(&[4, 5]).unwrap();
    let got = enc.encode(&[short, long.as_str()]).unwrap();
    assert!(got[1].n_windows > 1);
    for (g, p) in got.iter().zip(&plain) {
        assert_eq!(g.tokens, p.tokens, "the final rows do not change");
        assert_eq!(g.layer_rows.len(), g.n_tokens * 2 * dim);
        for row in g.layer_rows.chunks(dim) {
            let n: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((n - 1.0).abs() < 1e-4, "each layer row is normalised: {n}");
        }
        // Layer 4's row of a token is not its final row.
        assert!(cos(&g.layer_rows[..dim], &g.tokens[..dim]) < 0.99);
    }
    // A text's earlier rows do not depend on its batch.
    let alone = enc.encode(&[format!("{short} ")]).unwrap().remove(0);
    let d = alone
        .layer_rows
        .iter()
        .zip(&got[0].layer_rows)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(d < 1e-4, "alone vs batched: {d}");
    // The last layer is the token embeddings, not an extra output; 0 is no layer.
    for bad in [[6usize], [0]] {
        let e = enc.set_feature_layers(&bad).unwrap_err().to_string();
        assert!(e.contains("rebuild the model directory"), "{e}");
    }
}

#[test]
fn empty_text_has_no_labels() {
    let mut enc = base_encoder();
    let space = Arc::new(load_jsonl(&root().join("tests/data/tiny_space.jsonl")).unwrap());
    let s = cache::encode(space, &mut enc, false).unwrap();
    for t in ["", "   \n\t"] {
        let e = enc.encode(&[t]).unwrap().remove(0);
        assert!(e.is_empty());
        assert!(rank(&s, &e, 5, ScorerSpec::Pooled).is_empty());
    }
}

#[test]
fn custom_space_ranks_and_caches_on_disk() {
    let mut enc = base_encoder();
    let dir = tempfile::tempdir().unwrap();
    let space = Arc::new(load_jsonl(&root().join("tests/data/tiny_space.jsonl")).unwrap());
    let a = cache::load_or_encode(space.clone(), &mut enc, dir.path(), false).unwrap();
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(files.len(), 1, "one cache file written");
    let b = cache::load_or_encode(space.clone(), &mut enc, dir.path(), false).unwrap();
    assert_eq!(a.pooled, b.pooled);
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.offsets, b.offsets);
    let q = enc
        .encode(&["We need someone who can weld steel pipes"])
        .unwrap()
        .remove(0);
    for scorer in [
        ScorerSpec::Pooled,
        ScorerSpec::Late {
            temperature: 0.05,
            rerank_top: 2,
        },
    ] {
        let hits = rank(&b, &q, 3, scorer);
        assert_eq!(space.concepts[hits[0].index].id, "weld", "{scorer:?}");
    }
    // A corrupt cache file is detected and recomputed.
    let f = std::fs::read_dir(dir.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&f).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&f, bytes).unwrap();
    let c = cache::load_or_encode(space, &mut enc, dir.path(), false).unwrap();
    assert_eq!(a.pooled, c.pooled);
}

#[test]
fn aliases_find_a_title_the_preferred_label_misses() {
    let mut enc = base_encoder();
    let dir = tempfile::tempdir().unwrap();
    let path = root().join("tests/data/tiny_occupations.jsonl");
    let load = |enc: &mut Encoder, w: Option<f32>| {
        cache::load_named(path.to_str().unwrap(), &root(), enc, dir.path(), false, w).unwrap()
    };
    let plain = load(&mut enc, None);
    let with = load(&mut enc, Some(0.9));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "labels and aliases are cached apart"
    );
    let ids = |s: &cache::EncodedSpace, hits: &[uwe_connect::rank::Hit]| -> Vec<String> {
        hits.iter()
            .map(|h| s.space.concepts[h.index].id.clone())
            .collect()
    };
    let q = enc.encode(&["Croupier (m/f/d)"]).unwrap().remove(0);
    // "gambling dealer" does not look like "croupier"; its alias "croupier" does.
    let before = ids(&plain, &rank(&plain, &q, 6, ScorerSpec::Pooled));
    assert_ne!(before[0], "croupier", "{before:?}");
    for scorer in [
        ScorerSpec::Pooled,
        ScorerSpec::Late {
            temperature: 0.05,
            rerank_top: 3,
        },
    ] {
        let hits = rank(&with, &q, 3, scorer);
        assert_eq!(ids(&with, &hits)[0], "croupier", "{scorer:?}: {hits:?}");
    }
    // A concept's score is its label's or 0.9 × its best alias's, whichever is higher.
    let hits = rank(&with, &q, 6, ScorerSpec::Pooled);
    let alias = enc.encode(&["croupier", "blackjack dealer"]).unwrap();
    let best = alias
        .iter()
        .map(|a| cos(&q.pooled, &a.pooled))
        .fold(f64::MIN, f64::max);
    assert!(
        (hits[0].score as f64 - 0.9 * best).abs() < 1e-3,
        "{hits:?} vs {best}"
    );
    // Cached alias rows come back identical.
    let again = load(&mut enc, Some(0.9));
    assert_eq!(
        again.aliases.as_ref().unwrap().rows.pooled,
        with.aliases.as_ref().unwrap().rows.pooled
    );
}

fn copy_model(to: &std::path::Path) {
    for f in ["manifest.json", "model.onnx", "tokenizer.json"] {
        std::fs::copy(base_model_dir().join(f), to.join(f)).unwrap();
    }
}

#[test]
fn corrupt_model_file_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    let p = dir.path().join("model.onnx");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[1000] ^= 0x5a;
    std::fs::write(&p, &bytes).unwrap();
    let e = ModelDir::open(dir.path()).unwrap_err();
    assert!(matches!(e, ModelError::Checksum { .. }), "{e}");
    assert!(e.to_string().contains("model.onnx"), "{e}");

    // Garbage whose checksum is (re)recorded still fails cleanly in ONNX Runtime.
    std::fs::write(&p, b"not an onnx graph").unwrap();
    let mpath = dir.path().join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&mpath).unwrap()).unwrap();
    m["files"]["model.onnx"] = uwe_connect::model::sha256_bytes(b"not an onnx graph").into();
    std::fs::write(&mpath, m.to_string()).unwrap();
    let dirm = ModelDir::open(dir.path()).unwrap();
    let e = Encoder::load(&dirm, &cpu_config())
        .err()
        .expect("garbage graph refused");
    assert!(e.to_string().contains("model.onnx"), "{e}");

    // A missing file names itself.
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let e = ModelDir::open(dir.path()).unwrap_err();
    assert!(e.to_string().contains("tokenizer.json"), "{e}");
}

#[test]
fn tokenizer_model_mismatch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    let mpath = dir.path().join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&mpath).unwrap()).unwrap();
    m["bert"]["vocab_size"] = 1000.into();
    std::fs::write(&mpath, m.to_string()).unwrap();
    let e = Encoder::load(&ModelDir::open(dir.path()).unwrap(), &cpu_config())
        .err()
        .expect("mismatch refused");
    assert!(e.to_string().contains("do not match"), "{e}");
}

/// Builds the base model again, with its int8 graph, into a temporary directory.
fn base_with_int8() -> (tempfile::TempDir, ModelDir) {
    let base = root().join(".uwe/base");
    let dir = tempfile::tempdir().unwrap();
    let spec = uwe_connect::model::BuildSpec {
        config: base.join("config.json"),
        weights: base.join("model.safetensors"),
        tokenizer: base.join("tokenizer.json"),
        trained: None,
        name: "int8-test".into(),
        version: "int8-test-1".into(),
        base_model: "all-MiniLM-L6-v2".into(),
        max_seq_len: 256,
        scorer: ScorerSpec::Pooled,
        target_scorers: Default::default(),
        target_text: Default::default(),
        training_data: vec![],
        dev_scores: Default::default(),
        mentions: None,
        int8: true,
    };
    let m = uwe_connect::model::build_model_dir(&spec, &dir.path().join("m")).unwrap();
    (dir, m)
}

#[test]
fn int8_graph_is_close_to_f32_batch_independent_served_by_default_and_caches_apart() {
    use uwe_connect::encoder::PrecisionChoice;
    use uwe_connect::model::Precision;
    let (_tmp, m) = base_with_int8();
    // The f32 graph beside it is byte for byte the one written without int8.
    assert_eq!(
        m.manifest.files["model.onnx"],
        open_base().manifest.files["model.onnx"]
    );
    let load = |p: PrecisionChoice| {
        Encoder::load(
            &m,
            &uwe_connect::encoder::EncoderConfig {
                precision: p,
                ..cpu_config()
            },
        )
        .unwrap()
    };
    let mut f = load(PrecisionChoice::F32);
    let mut q = load(PrecisionChoice::Int8);
    assert_eq!(f.precision(), Precision::F32);
    assert_eq!(q.precision(), Precision::Int8);
    assert_eq!(load(PrecisionChoice::Auto).precision(), Precision::Int8);
    // Default settings serve int8 on CPU.
    assert_eq!(
        Encoder::load(&m, &cpu_config()).unwrap().precision(),
        Precision::Int8
    );
    assert_ne!(
        f.model_key(),
        q.model_key(),
        "int8 and f32 share a cache key"
    );
    // The activation outliers were measured and are multiplied in f32.
    let scheme = &m.manifest.int8.as_ref().unwrap().scheme;
    assert!(
        scheme.contains("outlier input channels") && !scheme.contains("; 0 outlier"),
        "{scheme}"
    );
    let texts = [
        "Experience with Docker and Kubernetes",
        "You will manage a small team of nurses",
        "Fluent German and English, written and spoken",
        "Accountant",
        "As a member of our <ORGANIZATION> team you develop, test and roll out new features of our e-commerce platform in close cooperation with product management.",
    ];
    let a = f.encode(&texts).unwrap();
    let b = q.encode(&texts).unwrap();
    let mut identical = true;
    for ((t, x), y) in texts.iter().zip(&a).zip(&b) {
        let c = cos(&x.pooled, &y.pooled);
        // Measured on the 136 skill dev sentences with the shipped model: min 0.987 without
        // the f32 outlier channels, 0.998 with them.
        assert!(c > 0.995, "int8 pooled cosine {c} for {t:?}");
        assert_eq!(x.n_tokens, y.n_tokens);
        identical &= c > 0.999999;
    }
    assert!(
        !identical,
        "the int8 encoder computed exactly the f32 embeddings"
    );
    // Activations are quantised per token, so a text's embedding does not depend on the
    // texts batched with it (with one scale per call, the lone sentence below moved by up to
    // 7e-3 per dimension). A fresh encoder without a cache runs each text on its own.
    let mut alone = Encoder::load(
        &m,
        &uwe_connect::encoder::EncoderConfig {
            precision: PrecisionChoice::Int8,
            cache_bytes: 0,
            ..cpu_config()
        },
    )
    .unwrap();
    for (t, batched) in texts.iter().zip(&b) {
        let single = alone.encode(&[t]).unwrap().remove(0);
        let diff = single
            .pooled
            .iter()
            .zip(&batched.pooled)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff < 1e-5, "{t:?} alone vs batched: max |Δ| {diff}");
    }
}

#[test]
fn int8_asked_of_a_model_without_it_names_the_fix() {
    use uwe_connect::encoder::PrecisionChoice;
    let cfg = uwe_connect::encoder::EncoderConfig {
        precision: PrecisionChoice::Int8,
        ..cpu_config()
    };
    let e = Encoder::load(&open_base(), &cfg)
        .err()
        .expect("no int8 graph");
    assert!(e.to_string().contains("--quantize int8"), "{e}");
    // auto falls back to f32 there.
    let auto = uwe_connect::encoder::EncoderConfig {
        precision: PrecisionChoice::Auto,
        ..cpu_config()
    };
    let enc = Encoder::load(&open_base(), &auto).unwrap();
    assert_eq!(enc.precision(), uwe_connect::model::Precision::F32);
}

#[test]
fn int8_graph_attached_later_is_the_one_built_with_the_model() {
    let (_tmp, built) = base_with_int8();
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    let base = root().join(".uwe/base");
    let m = uwe_connect::model::attach_int8(
        dir.path(),
        &base.join("config.json"),
        &base.join("model.safetensors"),
        None,
    )
    .unwrap();
    assert_eq!(
        m.manifest.files["model.int8.onnx"],
        built.manifest.files["model.int8.onnx"]
    );
    // Weights the model was not built from are refused.
    let e = uwe_connect::model::attach_int8(
        dir.path(),
        &base.join("config.json"),
        &base.join("tokenizer.json"),
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("not the ones"), "{e}");
}

#[test]
fn mined_hard_negatives_are_confusions_never_positives() {
    use uwe_connect::train::{data::Pair, mine};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("skills.jsonl");
    let skill = |id: &str, label: &str| {
        format!("{{\"id\": \"http://data.europa.eu/esco/skill/{id}\", \"label\": \"{label}\"}}\n")
    };
    std::fs::write(
        &path,
        [
            skill("java", "Java (computer programming)"),
            skill("javascript", "JavaScript"),
            skill("python-prog", "Python (computer programming)"),
            skill("python", "Python"),
            skill("nurse", "provide nursing care"),
            skill("cook", "prepare meals"),
            skill("weld", "welding"),
        ]
        .concat(),
    )
    .unwrap();
    let mut enc = base_encoder();
    let space = cache::encode(Arc::new(load_jsonl(&path).unwrap()), &mut enc, false).unwrap();
    let id = |s: &str| format!("http://data.europa.eu/esco/skill/{s}");
    let pair = |q: &str, target: &str, target_id: String| Pair {
        query: q.into(),
        target: target.into(),
        target_id,
        source: "skillskape",
    };
    let java = "We need someone who writes Java code every day.";
    // The exact text of a near-duplicate of its label: ranked first, and masked.
    let python = "Python";
    let title = "Senior Java developer";
    let pairs = vec![
        // A wrong label on purpose: the model ranks Java above it, a confusion.
        pair(java, "prepare meals", id("cook")),
        pair(python, "Python (computer programming)", id("python-prog")),
        // Not a skill: never mined.
        pair(
            title,
            "software developer",
            "http://data.europa.eu/esco/occupation/x".into(),
        ),
    ];
    let scorer = ScorerSpec::Pooled;
    let (negs, report) = mine::negatives(
        &mut enc,
        &space,
        scorer,
        &pairs,
        &mine::MineSpec {
            confusions: 2,
            ..Default::default()
        },
        false,
    )
    .unwrap();
    assert_eq!(report.texts, 2, "{report:?}");
    assert!(
        report.masked >= 1,
        "'Python' above its label is masked: {report:?}"
    );
    assert_eq!(report.negatives, negs.len());
    assert!(
        negs.iter()
            .any(|n| n.query == java && n.target_id == id("java")),
        "Java is ranked above the wrong label: {negs:?}"
    );
    assert!(
        negs.iter().filter(|n| n.query == java).count() <= 2,
        "at most 2 per text"
    );
    for n in &negs {
        assert_ne!(n.query, title, "an occupation-side text is not mined");
        assert!(
            !pairs
                .iter()
                .any(|p| p.query == n.query && p.target_id == n.target_id),
            "a positive mined as a negative: {n:?}"
        );
        assert!(
            !(n.query == python && n.target_id == id("python")),
            "'Python' is inside the positive's label: masked, {negs:?}"
        );
        // Every one was ranked above the text's label.
        let e = enc.encode(&[n.query.as_str()]).unwrap();
        let hits = rank(&space, &e[0], 0, scorer);
        let at = |want: &str| {
            hits.iter()
                .position(|h| space.space.concepts[h.index].id == want)
        };
        let positive = pairs.iter().find(|p| p.query == n.query).unwrap();
        assert!(at(&n.target_id) < at(&positive.target_id), "{n:?}");
    }
}
