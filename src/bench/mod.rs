//! `uwe-connect bench`: the encoder's speed beside a bare ONNX Runtime session on the same
//! texts in the same run, and the cost of ranking one sentence against ESCO skills.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::connector::config::DEFAULT_ALIAS_WEIGHT;
use crate::encoder::{runtime, Encoder, EncoderConfig, PrecisionChoice};
use crate::error::{ModelError, Result};
use crate::model::{graph, ModelDir, ScorerSpec};
use crate::rank::rank;
use crate::space::{cache, TargetSpace};

mod pipeline;

use pipeline::percentile;
pub use pipeline::{run_pipeline_bench, PipelineBench};

/// Feeds padded batches of pre-tokenised ids to a bare session; returns texts/s and tokens/s.
fn bare(
    session: &mut ort::session::Session,
    ids: &[Vec<u32>],
    batch: usize,
    cls: u32,
    sep: u32,
) -> Result<(f64, f64)> {
    let rt = |e: ort::Error| ModelError::Runtime(e.to_string());
    let t0 = Instant::now();
    let mut tokens = 0usize;
    for chunk in ids.chunks(batch) {
        let seq = chunk.iter().map(|c| c.len() + 2).max().unwrap_or(2);
        let mut input = vec![0i64; chunk.len() * seq];
        let mut mask = vec![0i64; chunk.len() * seq];
        for (r, c) in chunk.iter().enumerate() {
            input[r * seq] = cls as i64;
            for (k, &t) in c.iter().enumerate() {
                input[r * seq + k + 1] = t as i64;
            }
            input[r * seq + c.len() + 1] = sep as i64;
            mask[r * seq..r * seq + c.len() + 2].fill(1);
            tokens += c.len() + 2;
        }
        let shape = vec![chunk.len() as i64, seq as i64];
        let a = ort::value::Tensor::from_array((shape.clone(), input)).map_err(rt)?;
        let m = ort::value::Tensor::from_array((shape, mask)).map_err(rt)?;
        let out = session
            .run(ort::inputs!["input_ids" => a, "attention_mask" => m])
            .map_err(rt)?;
        let _ = out[graph::OUTPUT_POOLED]
            .try_extract_tensor::<f32>()
            .map_err(rt)?;
    }
    let s = t0.elapsed().as_secs_f64();
    Ok((ids.len() as f64 / s, tokens as f64 / s))
}

/// Resident set size of this process in MiB (Linux; 0 elsewhere).
pub fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// The precisions a benchmark compares: those asked for, or f32 and (when the model has
/// one) int8.
pub fn precisions_of(dir: &ModelDir, asked: &[PrecisionChoice]) -> Vec<PrecisionChoice> {
    if !asked.is_empty() {
        return asked.to_vec();
    }
    let mut v = vec![PrecisionChoice::F32];
    if dir.manifest.int8.is_some() {
        v.push(PrecisionChoice::Int8);
    }
    v
}

/// Runs the benchmark and prints its figures: encoding in each of `precisions` (bare session
/// and encoder, same texts, same run), then ranking with the encoder `cfg` serves.
pub fn run_encoder_bench(
    cfg: &EncoderConfig,
    model: &Path,
    data_dir: &Path,
    cache_dir: &Path,
    n: usize,
    precisions: &[PrecisionChoice],
) -> Result<()> {
    let dir = ModelDir::open(model)?;
    let mut cfg = cfg.clone();
    cfg.cache_bytes = 0;
    cfg.max_batch_size = 32;
    cfg.max_batch_tokens = 32 * 130;
    let mut tok = tokenizers::Tokenizer::from_file(dir.tokenizer_path())
        .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    tok.with_padding(None);
    let _ = tok.with_truncation(None);
    let cls = tok.token_to_id("[CLS]").unwrap_or(101);
    let sep = tok.token_to_id("[SEP]").unwrap_or(102);
    let skills = Arc::new(TargetSpace::resolve("esco-skills", data_dir)?);
    let occupations = TargetSpace::resolve("esco-occupations", data_dir)?;
    // Short texts: occupation alternative labels (job-title-like, about 5 to 12 tokens).
    let short: Vec<String> = occupations
        .concepts
        .iter()
        .flat_map(|c| c.aliases.iter().take(1).cloned())
        .take(n)
        .collect();
    // 128-token texts: skill descriptions joined and cut at 126 word pieces.
    let mut long = Vec::new();
    let mut buf = String::new();
    for c in &skills.concepts {
        if long.len() >= n / 4 {
            break;
        }
        buf.push_str(c.description.as_deref().unwrap_or(&c.label));
        buf.push(' ');
        let e = tok
            .encode(buf.as_str(), false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        if e.len() >= 126 {
            let end = e.get_offsets()[125].1;
            long.push(buf[..end].to_string());
            buf.clear();
        }
    }
    let ids = |texts: &[String]| -> Result<Vec<Vec<u32>>> {
        texts
            .iter()
            .map(|t| {
                Ok(tok
                    .encode(t.as_str(), false)
                    .map_err(|e| ModelError::Tokenizer(e.to_string()))?
                    .get_ids()
                    .to_vec())
            })
            .collect()
    };
    let short_ids = ids(&short)?;
    let long_ids = ids(&long)?;
    println!(
        "threads: {}, model: {} {}",
        if cfg.intra_threads == 0 {
            "all".to_string()
        } else {
            cfg.intra_threads.to_string()
        },
        dir.manifest.name,
        dir.manifest.version
    );
    // Single sentences, one call each: the latency an event with one short text sees.
    let singles: Vec<String> = long
        .iter()
        .take(50)
        .map(|t| t.split(". ").next().unwrap_or(t).to_string())
        .collect();
    let mut rows = Vec::new();
    for &p in &precisions_of(&dir, precisions) {
        let pcfg = EncoderConfig {
            precision: p,
            ..cfg.clone()
        };
        let rss0 = rss_mib();
        let mut enc = Encoder::load(&dir, &pcfg)?;
        let (mut session, device, precision) = runtime::build_session(&dir, &pcfg)?;
        // Warm-up both.
        bare(
            &mut session,
            &short_ids[..32.min(short_ids.len())],
            32,
            cls,
            sep,
        )?;
        enc.encode(&short[..32.min(short.len())])?;
        let mut row = vec![];
        for (name, texts, tids) in [
            ("short", &short, &short_ids),
            ("128-token", &long, &long_ids),
        ] {
            let avg =
                tids.iter().map(|t| t.len() + 2).sum::<usize>() as f64 / tids.len().max(1) as f64;
            let (bt, btok) = bare(&mut session, tids, 32, cls, sep)?;
            let t0 = Instant::now();
            enc.encode(texts)?;
            let s = t0.elapsed().as_secs_f64();
            let et = texts.len() as f64 / s;
            println!(
                "{precision} {device:?} {name:>9} texts (n={}, {avg:.1} tokens avg), batch 32: bare session {bt:.0} texts/s {btok:.0} tokens/s | encoder (tokenisation included) {et:.0} texts/s {:.0} tokens/s | encoder/bare {:.3}",
                texts.len(),
                et * avg,
                et / bt
            );
            row.push(et);
        }
        let mut lat: Vec<f64> = Vec::with_capacity(singles.len());
        for s in &singles {
            let t0 = Instant::now();
            enc.encode(&[s.as_str()])?;
            lat.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        lat.sort_by(f64::total_cmp);
        let rss = rss_mib();
        println!(
            "{precision} {device:?} one sentence per call (n={}): p50 {:.2} ms, p95 {:.2} ms | RSS {rss:.0} MiB ({:+.0} MiB for encoder and bare session)",
            singles.len(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.95),
            rss - rss0
        );
        rows.push((precision, row));
    }
    if let [(p0, a), (p1, b), ..] = &rows[..] {
        println!(
            "encoder texts/s {p1} / {p0}: short {:.3}, 128-token {:.3} (same run, same texts)",
            b[0] / a[0],
            b[1] / a[1]
        );
    }
    let mut enc = Encoder::load(&dir, &cfg)?;

    // Ranking one sentence against all skills, beside encoding it.
    let space = cache::load_or_encode(skills, &mut enc, cache_dir, true)?;
    let sentences: Vec<String> = long
        .iter()
        .take(50)
        .map(|t| t.split(". ").next().unwrap_or(t).to_string())
        .collect();
    let t0 = Instant::now();
    let mut embs = Vec::new();
    for s in &sentences {
        embs.push(enc.encode(&[s.as_str()])?.remove(0));
    }
    let enc_ms = t0.elapsed().as_secs_f64() * 1000.0 / sentences.len() as f64;
    let tau = match dir.manifest.scorer {
        ScorerSpec::Late { temperature, .. } => temperature,
        ScorerSpec::Pooled | ScorerSpec::Attend { .. } => crate::rank::LATE_TEMPERATURE,
    };
    let timing = |scorer: ScorerSpec| {
        let t0 = Instant::now();
        let r: Vec<_> = embs.iter().map(|e| rank(&space, e, 10, scorer)).collect();
        (t0.elapsed().as_secs_f64() * 1000.0 / embs.len() as f64, r)
    };
    let (p_ms, _) = timing(ScorerSpec::Pooled);
    let (l_ms, reranked) = timing(ScorerSpec::Late {
        temperature: tau,
        rerank_top: 100,
    });
    let (x_ms, exhaustive) = timing(ScorerSpec::Late {
        temperature: tau,
        rerank_top: 0,
    });
    let agree: f64 = reranked
        .iter()
        .zip(&exhaustive)
        .map(|(a, b)| {
            a.iter()
                .filter(|h| b.iter().any(|g| g.index == h.index))
                .count() as f64
                / b.len().max(1) as f64
        })
        .sum::<f64>()
        / reranked.len().max(1) as f64;
    println!(
        "one sentence vs {} skills: encode {enc_ms:.2} ms | rank pooled {p_ms:.2} ms | late rerank top 100 {l_ms:.2} ms | late exhaustive {x_ms:.1} ms | top-10 overlap rerank vs exhaustive {:.1}%",
        space.len(),
        agree * 100.0
    );

    // One job title against the occupations, preferred labels only and with aliases.
    let occ = cache::load_or_encode(Arc::new(occupations), &mut enc, cache_dir, true)?;
    let titles: Vec<&String> = short.iter().take(50).collect();
    let title_embs = enc.encode(&titles)?;
    let plain_ms = {
        let t0 = Instant::now();
        title_embs.iter().for_each(|e| {
            std::hint::black_box(rank(&occ, e, 5, ScorerSpec::Pooled));
        });
        t0.elapsed().as_secs_f64() * 1000.0 / titles.len() as f64
    };
    let occ = cache::with_aliases(occ, DEFAULT_ALIAS_WEIGHT, &mut enc, cache_dir, true)?;
    let alias_ms = {
        let t0 = Instant::now();
        title_embs.iter().for_each(|e| {
            std::hint::black_box(rank(&occ, e, 5, ScorerSpec::Pooled));
        });
        t0.elapsed().as_secs_f64() * 1000.0 / titles.len() as f64
    };
    println!(
        "one title vs {} occupations, pooled: labels only {plain_ms:.2} ms | with {} aliases {alias_ms:.2} ms",
        occ.len(),
        occ.rows() - occ.len()
    );
    Ok(())
}

/// Times what a hot swap does between seeing a new model and serving it
/// ([`crate::connector::swap::load_serving`]: open and verify, load the session, embed or
/// load every target space of the pipeline, warm up), once with an empty space cache (a
/// model the connector has never seen) and once with the cache that run filled (a model the
/// trainer's gate already embedded the spaces for, when they share the cache folder).
pub fn run_swap_bench(
    pipeline: &Path,
    model: &Path,
    encoder: &EncoderConfig,
    data_dir: &Path,
) -> anyhow::Result<()> {
    use crate::connector::{config::PipelineConfig, swap};

    let mut cfg = PipelineConfig::load(pipeline)?;
    let scratch = tempfile::tempdir()?;
    cfg.model.cache_dir = Some(scratch.path().to_path_buf());
    cfg.model.data_dir = data_dir.to_path_buf();
    cfg.encoder = encoder.clone();
    let spaces: Vec<&str> = cfg.targets.iter().map(|t| t.space.as_str()).collect();
    for (label, cold) in [("cold cache", true), ("warm cache", false)] {
        let t0 = Instant::now();
        // The progress bar shows while the cold run embeds the spaces.
        let (_enc, serving) = swap::load_serving(model, &cfg, cold)?;
        let concepts: usize = serving.targets.iter().map(|t| t.space.len()).sum();
        println!(
            "swap load ({label}): {:.1} s for {} with spaces {spaces:?} ({concepts} concepts)",
            t0.elapsed().as_secs_f64(),
            model.display(),
        );
    }
    Ok(())
}
