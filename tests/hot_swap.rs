//! Hot swap with live traffic on the real broker: records before and after a swap carry
//! the right model versions, none is lost, and a corrupt model is refused while the old
//! one keeps serving.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use uwe_connect::connector::swap;
use uwe_connect::model::{self, ModelDir, ScorerSpec};
use uwe_connect::train;

#[test]
fn swap_under_traffic_and_refuse_a_corrupt_model() {
    let reg = tempfile::tempdir().unwrap();
    let registry = reg.path();
    copy_model(&base_model_dir(), &registry.join("base-1"), "base-1");
    swap::set_current(registry, "base-1").unwrap();
    // Version 2: the base with a (slightly perturbed) projection head, as uwe-trainer writes it.
    let dim = 384;
    let w: Vec<f32> = (0..dim * dim)
        .map(|i| {
            if i % (dim + 1) == 0 {
                1.0
            } else {
                ((i % 7) as f32 - 3.0) * 1e-3
            }
        })
        .collect();
    let head = registry.join(train::TRAINED_FILE);
    let w = candle_core::Tensor::from_vec(w, (dim, dim), &candle_core::Device::Cpu).unwrap();
    train::write_trained(&head, &[(model::graph::HEAD_WEIGHT.to_string(), w)]).unwrap();
    train::build_candidate(
        &open_base(),
        &root().join(".uwe/base"),
        &head,
        &registry.join("v-2"),
        "v-2",
        ScorerSpec::Pooled,
        vec![],
    )
    .unwrap();
    // Version 3: corrupt (one byte of the graph flipped after publishing).
    copy_model(&registry.join("v-2"), &registry.join("bad-3"), "bad-3");
    let p = registry.join("bad-3/model.onnx");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[4096] ^= 0x11;
    std::fs::write(&p, bytes).unwrap();
    assert!(ModelDir::open(&registry.join("bad-3")).is_err());

    let t = topics("swap", 2);
    let http = free_addr();
    // A small custom space keeps each model's space embedding instant: this test is about the swap.
    let tiny = root().join("tests/data/tiny_space.jsonl");
    let toml = t
        .pipeline("swap", "vacancy", "json", "at-least-once", &http)
        .replace(
            "[model]\n",
            &format!(
                "[model]\nregistry = \"{}\"\nwatch_interval_ms = 300\nshadow_share = 0.5\n",
                registry.display()
            ),
        )
        .replace("\"esco-skills\"", &format!("\"{}\"", tiny.display()))
        .replace("\"esco-occupations\"", &format!("\"{}\"", tiny.display()))
        .replace("min_score = 0.3", "min_score = -1.0");
    let mut c = Connector::start(&toml);
    let events: Vec<(String, Vec<u8>)> = json_events(vacancy_events(400, 200));
    let versions_of = |g: &[Got]| -> HashMap<String, String> {
        g.iter()
            .map(|r| {
                let v = r.json();
                (
                    v["source"]["id"].as_str().unwrap().to_string(),
                    v["model_version"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };

    // Phase 1: base-1 serves.
    produce(&t.input, 2, &events[..30]);
    let out = consume_until(&t.output, Duration::from_secs(240), |g| g.len() >= 30);
    assert!(
        versions_of(&out).values().all(|v| v == "base-1"),
        "log:\n{}",
        c.log()
    );

    // Phase 2: publish v-2 while traffic keeps flowing, until v-2 answers.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = {
        let (input, stop) = (t.input.clone(), stop.clone());
        let evs = events[30..370].to_vec();
        std::thread::spawn(move || {
            let mut sent = 0;
            for chunk in evs.chunks(2) {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                produce(&input, 2, chunk);
                sent += chunk.len();
                std::thread::sleep(Duration::from_millis(200));
            }
            sent
        })
    };
    swap::set_current(registry, "v-2").unwrap();
    let out = consume_until(&t.output, Duration::from_secs(240), |g| {
        versions_of(g).values().any(|v| v == "v-2")
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = 30 + feeder.join().unwrap();
    assert!(
        versions_of(&out).values().any(|v| v == "v-2"),
        "no record from v-2; log:\n{}",
        c.log()
    );

    // v-2 was shadow-scored on live events first: a slightly perturbed head keeps most labels,
    // but not necessarily all of them.
    let overlap =
        metric(&http, "uwe_model_shadow_topk_overlap_ratio").expect("shadow overlap exported");
    assert!((0.5..=1.0).contains(&overlap), "shadow overlap {overlap}");
    assert!(
        c.log().contains("shadow-scored live events"),
        "log:\n{}",
        c.log()
    );

    // Phase 3: a corrupt model is refused; v-2 keeps serving.
    swap::set_current(registry, "bad-3").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    produce(&t.input, 2, &events[370..]);
    let total = sent + 30;
    let out = consume_until(&t.output, Duration::from_secs(240), |g| {
        versions_of(g).len() >= total
    });
    let seen = versions_of(&out);
    assert_eq!(
        seen.len(),
        total,
        "every event has an output; log:\n{}",
        c.log()
    );
    for (id, v) in &seen {
        let i: usize = id.trim_start_matches("v-").parse().unwrap();
        if i >= 370 {
            assert_eq!(v, "v-2", "{id} after the refused swap");
        }
        assert_ne!(v, "bad-3");
    }
    // Within each partition, versions only move forward.
    let mut by_part: HashMap<i64, Vec<(i64, String)>> = HashMap::new();
    for r in &out {
        let v = r.json();
        by_part
            .entry(v["source"]["partition"].as_i64().unwrap())
            .or_default()
            .push((
                v["source"]["offset"].as_i64().unwrap(),
                v["model_version"].as_str().unwrap().to_string(),
            ));
    }
    for recs in by_part.values_mut() {
        recs.sort();
        let first_v2 = recs.iter().position(|r| r.1 == "v-2").unwrap_or(recs.len());
        assert!(recs[first_v2..].iter().all(|r| r.1 == "v-2"), "{recs:?}");
    }
    assert!(metric(&http, "uwe_model_swaps_total{outcome=\"refused\"}").unwrap_or(0.0) >= 1.0);
    assert!(metric(&http, "uwe_model_swaps_total{outcome=\"swapped\"}").unwrap_or(0.0) >= 1.0);
    assert!(c.log().contains("model refused"), "log:\n{}", c.log());
    assert!(c.terminate().success());
}
