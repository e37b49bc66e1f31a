//! `mentions` mode with the real shipped model (its tagger included) and the real ESCO
//! skills: a posting's skill lines give labels whose evidence is the span itself, header and
//! boilerplate lines give none, and bad input stays bounded.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::root;
use uwe_connect::connector::config::{Mode, PipelineConfig};
use uwe_connect::connector::enrich::{self, Label};
use uwe_connect::connector::event::{Event, Vacancy};
use uwe_connect::connector::swap::{self, Serving};
use uwe_connect::encoder::Encoder;

/// The shipped vacancy pipeline over the trained model built by `scripts/setup`.
fn serving(max_mentions: usize) -> (Encoder, Serving, PipelineConfig) {
    let mut cfg = PipelineConfig::load(&root().join("connectors/vacancies.toml")).unwrap();
    cfg.model.dir = std::env::var_os("UWE_TEST_TRAINED_MODEL")
        .map(Into::into)
        .unwrap_or_else(|| root().join("models/uwe-minilm-l6"));
    cfg.model.data_dir = root().join("data");
    cfg.model.cache_dir = Some(root().join("target/test-space-cache"));
    cfg.encoder.onnxruntime = Some(root().join(".uwe/lib/libonnxruntime.so"));
    cfg.encoder.intra_threads = 2;
    // Only the skills target: the occupations space is not under test here.
    cfg.targets.retain(|t| t.name == "skills");
    assert_eq!(cfg.targets[0].mode, Mode::Mentions, "shipped default");
    cfg.targets[0].max_mentions = max_mentions;
    let (enc, s) = swap::load_serving(&cfg.model.dir, &cfg, false).unwrap_or_else(|e| {
        panic!("{e}\nThese tests need the trained model with its tagger: run scripts/setup")
    });
    assert!(s.mentions.is_some(), "the shipped model carries a tagger");
    (enc, s, cfg)
}

fn enrich(enc: &mut Encoder, s: &Serving, cfg: &PipelineConfig, description: &str) -> Vec<Label> {
    let ev = Event::Vacancy(Vacancy {
        id: "t-1".into(),
        title: "Data engineer".into(),
        description: description.into(),
        location: None,
        language: None,
        posted_date: None,
        source: None,
    });
    let plan = enrich::plan(&ev, &cfg.targets);
    let embs = enc.encode(&plan.texts).unwrap();
    let mut out = enrich::labels(&plan, &embs, &s.targets, s.mentions.as_deref());
    out.remove("skills").unwrap_or_default()
}

fn char_slice(s: &str, a: usize, b: usize) -> String {
    s.chars().skip(a).take(b - a).collect()
}

#[test]
fn skill_lines_give_span_evidence_and_headers_give_none() {
    let (mut enc, s, cfg) = serving(200);
    // Lines from real postings that gave labels in `sentences` mode. ("Financial Services",
    // a sector header, is still tagged as knowledge by the shipped tagger: not listed here.)
    let headers = "Job description\nResponsibilities\nPublic\nStart date: as soon as possible\nBenefits\nAbout us\nWhat we offer\n<ORGANIZATION> is an equal opportunity employer.";
    let skills = "You have strong communication skills and experience in project management and you develop machine learning models in Python.";
    let text = format!("{headers}\n{skills}\nWe offer sports offers and a pension plan.");
    let labels = enrich(&mut enc, &s, &cfg, &text);
    assert!(!labels.is_empty(), "a line naming skills gives labels");
    let skill_line_start = headers.chars().count() + 1;
    let skill_line_end = skill_line_start + skills.chars().count();
    let mut ids = std::collections::HashSet::new();
    for l in &labels {
        let e = &l.evidence;
        assert_eq!(e.field, "description");
        assert_eq!(
            char_slice(&text, e.start, e.end),
            e.text,
            "offsets name the span"
        );
        assert!(
            e.start >= skill_line_start && e.end <= skill_line_end,
            "label {} from {:?} outside the skill line",
            l.label,
            e.text
        );
        let sentence = e
            .sentence
            .as_deref()
            .expect("mentions carry their sentence");
        assert!(sentence.contains(&e.text));
        assert!(e.text.len() < sentence.len(), "a span, not the whole line");
        assert!(l.mentions.unwrap_or(0) >= 1);
        assert!(ids.insert(l.id.clone()), "each concept once: {}", l.id);
        assert!(l.score >= s.mentions.as_ref().unwrap().label_threshold);
    }
    let names: Vec<String> = labels.iter().map(|l| l.label.to_lowercase()).collect();
    assert!(
        ["project management", "python (computer programming)"]
            .iter()
            .all(|want| names.iter().any(|n| n == want)),
        "project management and Python found: {:?}",
        labels.iter().map(|l| &l.label).collect::<Vec<_>>()
    );

    // Headers and boilerplate alone: no label at all.
    let none = enrich(&mut enc, &s, &cfg, headers);
    assert!(
        none.is_empty(),
        "header lines gave {:?}",
        none.iter()
            .map(|l| (&l.evidence.text, &l.label))
            .collect::<Vec<_>>()
    );
}

#[test]
fn bad_input_is_bounded_and_still_enriched() {
    let max = 25;
    let (mut enc, s, cfg) = serving(max);
    let k = cfg.targets[0].k;
    let long_word = "abcdefghij".repeat(30_000);
    let many = (0..2000)
        .map(|i| format!("Experience with Kubernetes and Docker in team {i}."))
        .collect::<Vec<_>>()
        .join(" ");
    let markup = "<ORGANIZATION> <ADDRESS> <b>Requirements</b>: <ul><li>Java</li><li>SQL</li></ul> &amp; <LOCATION>";
    for text in ["", "   \n\t ", long_word.as_str(), many.as_str(), markup] {
        let labels = enrich(&mut enc, &s, &cfg, text);
        assert!(labels.len() <= k, "at most k labels");
        let total: usize = labels.iter().filter_map(|l| l.mentions).sum();
        assert!(total <= max, "{total} mentions ranked, max_mentions {max}");
        for l in &labels {
            assert_eq!(
                char_slice(text, l.evidence.start, l.evidence.end),
                l.evidence.text
            );
        }
        if text.trim().is_empty() || text == long_word {
            assert!(labels.is_empty(), "no skill in {:.40?}", text);
        }
    }
    // The bound keeps the most confident mentions of a long description.
    let plan = enrich::plan(
        &Event::Vacancy(Vacancy {
            id: "t-2".into(),
            title: String::new(),
            description: many.clone(),
            location: None,
            language: None,
            posted_date: None,
            source: None,
        }),
        &cfg.targets,
    );
    let embs: Vec<Arc<_>> = enc.encode(&plan.texts).unwrap();
    let units: Vec<_> = plan.units.iter().collect();
    let found = enrich::find_mentions(&units, &embs, s.mentions.as_deref().unwrap(), max);
    assert_eq!(
        found.len(),
        max,
        "2,000 sentences have more than {max} mentions"
    );
}

#[test]
fn mentions_mode_through_the_broker_sends_every_record_out() {
    use common::{consume_until, free_addr, json_events, produce, topics, Connector};
    let t = topics("mentions", 2);
    let base = common::base_model_dir().display().to_string();
    let trained = root().join("models/uwe-minilm-l6").display().to_string();
    let toml = t
        .pipeline("men", "vacancy", "json", "at-least-once", &free_addr())
        .replace(
            "mode = \"sentences\"",
            "mode = \"mentions\"\nmax_mentions = 20",
        )
        .replace("max_event_bytes = 65536", "max_event_bytes = 4194304")
        .replace(
            &format!("dir = \"{base}\""),
            &format!("dir = \"{trained}\""),
        );
    assert!(toml.contains("mode = \"mentions\"") && toml.contains(&trained));
    let many = (0..2000)
        .map(|i| format!("Experience with Kubernetes and Docker in team {i}."))
        .collect::<Vec<_>>()
        .join(" ");
    let descriptions = [
        "You have strong communication skills and experience in project management.".to_string(),
        String::new(),
        "   \n\t ".to_string(),
        "abcdefghij".repeat(30_000),
        many,
        "<ORGANIZATION> <ADDRESS> <b>Requirements</b>: <ul><li>Java</li><li>SQL</li></ul>"
            .to_string(),
    ];
    let events: Vec<(String, serde_json::Value)> = descriptions
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let id = format!("m-{i}");
            (
                id.clone(),
                serde_json::json!({"id": id, "title": "Software engineer", "description": d}),
            )
        })
        .collect();
    produce(&t.input, 2, &json_events(events));
    let mut c = Connector::start(&toml);
    let out = consume_until(&t.output, Duration::from_secs(300), |g| g.len() >= 6);
    assert_eq!(out.len(), 6, "every record goes out; log:\n{}", c.log());
    for g in &out {
        let v = g.json();
        let skills = v["labels"]["skills"].as_array().expect("a skills list");
        let ranked: u64 = skills.iter().filter_map(|l| l["mentions"].as_u64()).sum();
        assert!(ranked <= 20, "max_mentions bounds the ranking: {ranked}");
        for l in skills {
            assert!(l["evidence"]["sentence"].is_string(), "{l}");
        }
        if v["source"]["id"] == "m-0" {
            assert!(!skills.is_empty(), "a skill line gives labels");
        }
        if ["m-1", "m-2", "m-3"].contains(&v["source"]["id"].as_str().unwrap()) {
            assert!(skills.is_empty(), "no skill named: {skills:?}");
        }
    }
    assert!(c.terminate().success());
}

#[test]
fn a_threshold_sweep_matches_single_runs_and_its_folds_pool() {
    use uwe_connect::eval::postings::{self, OperatingPoint};
    let (mut enc, s, _) = serving(200);
    let ps = postings::read_postings(&root().join("data/skillspan/postings_dev.jsonl")).unwrap();
    let ps = &ps[..4];
    let t = postings::pick_target(&s, None).unwrap();
    let head = s.mentions.as_deref().unwrap();
    let here = OperatingPoint::of(head);
    let strict = OperatingPoint {
        label_threshold: here.label_threshold + 0.1,
        ..here
    };
    let swept = postings::sweep(&mut enc, &s, t.clone(), ps, &[here, strict]).unwrap();
    assert_eq!(swept.len(), 2);
    let single = postings::evaluate(&mut enc, &s, t.clone(), None, ps, false, false).unwrap();
    let (p0, r0) = &swept[0];
    assert_eq!(*p0, here);
    assert!(r0.totals.labels > 0, "four real postings give labels");
    assert_eq!(
        r0.totals.labels, single.totals.labels,
        "one encoding, same labels"
    );
    assert_eq!(r0.totals.noise, single.totals.noise);
    assert_eq!(r0.noise_share, single.noise_share);
    assert_eq!(
        serde_json::to_value(r0.spans).unwrap(),
        serde_json::to_value(single.spans).unwrap()
    );
    // A higher label threshold keeps fewer labels, the same as a single run at that point.
    let (_, r1) = &swept[1];
    assert!(r1.totals.labels < r0.totals.labels);
    let at_strict = Serving {
        targets: s.targets.clone(),
        mentions: Some(Arc::new(strict.apply(head))),
    };
    let single_strict =
        postings::evaluate(&mut enc, &at_strict, t.clone(), None, ps, false, false).unwrap();
    assert_eq!(r1.totals.labels, single_strict.totals.labels);
    assert_eq!(r1.totals.noise, single_strict.totals.noise);
    // Reports of disjoint posting sets pool by their totals.
    let a = postings::sweep(&mut enc, &s, t.clone(), &ps[..2], &[here]).unwrap();
    let b = postings::sweep(&mut enc, &s, t, &ps[2..], &[here]).unwrap();
    assert_eq!(
        a[0].1.totals.labels + b[0].1.totals.labels,
        r0.totals.labels
    );
    assert_eq!(a[0].1.totals.noise + b[0].1.totals.noise, r0.totals.noise);
}

/// `uwe-trainer pseudo-label`'s core with the real model and skills: a confident span labels
/// its whole sentence, once per skill; a rule no score can meet labels nothing; the rule's
/// check counts only spans with an ESCO label.
#[test]
fn pseudo_labels_come_from_confident_spans_and_label_their_sentence() {
    use uwe_connect::mentions::TaggedSentence;
    use uwe_connect::model::ScorerSpec;
    use uwe_connect::train::pseudo;

    let (mut enc, s, _) = serving(200);
    let space = s.targets[0].space.clone();
    let sentence: TaggedSentence = serde_json::from_value(serde_json::json!({
        "idx": 1, "source": "tech",
        "tokens": ["Experience", "with", "Python", ",", "more", "Python", "and", "Kubernetes", "."],
        "tags_skill": ["O", "O", "O", "O", "O", "O", "O", "O", "O"],
        "tags_knowledge": ["O", "O", "B", "O", "O", "B", "O", "B", "O"],
    }))
    .unwrap();
    let rule = pseudo::Rule {
        min_score: 0.7,
        min_margin: 0.05,
    };
    let (pairs, spans) = pseudo::pseudo_pairs(
        &mut enc,
        &space,
        std::slice::from_ref(&sentence),
        rule,
        ScorerSpec::Pooled,
    )
    .unwrap();
    assert_eq!(spans, 3);
    let text = "Experience with Python , more Python and Kubernetes .";
    let label = |id: &str| {
        space
            .space
            .concepts
            .iter()
            .find(|c| c.id == id)
            .unwrap()
            .label
            .clone()
    };
    let python: Vec<_> = pairs
        .iter()
        .filter(|p| label(&p.label_id) == "Python (computer programming)")
        .collect();
    assert_eq!(python.len(), 1, "two spans, one skill, one pair: {pairs:?}");
    assert_eq!(python[0].text, text);
    assert!(pairs
        .iter()
        .all(|p| p.score >= 0.7 && p.margin >= 0.05 && p.text == text));
    let never = pseudo::Rule {
        min_score: 1.5,
        min_margin: 0.0,
    };
    let (none, _) =
        pseudo::pseudo_pairs(&mut enc, &space, &[sentence], never, ScorerSpec::Pooled).unwrap();
    assert!(none.is_empty());

    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("annotations.csv");
    std::fs::write(
        &csv,
        "sentence,span,sub_span,label\n\
         Experience with Python,Python,,Python (computer programming)\n\
         Experience with Python,Experience,,LABEL NOT PRESENT\n",
    )
    .unwrap();
    let c =
        pseudo::check_rule(&mut enc, &space, &[csv.as_path()], rule, ScorerSpec::Pooled).unwrap();
    assert_eq!((c.spans, c.kept), (1, 1));
    assert_eq!((c.precision, c.top1_accuracy), (100.0, 100.0));
}
