//! `uwe-connect rank`.

use std::io::BufRead;

use super::args::*;

use anyhow::Context;

use crate::rank;

/// Arguments of `uwe-connect rank`.
#[derive(clap::Args)]
pub(crate) struct RankArgs {
    /// The text; without it, every stdin line is ranked.
    text: Option<String>,
    /// esco-skills, esco-occupations, or a JSONL space file.
    #[arg(long, default_value = "esco-skills")]
    space: String,
    /// How many labels.
    #[arg(short, long, default_value_t = 10)]
    k: usize,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    scorer: ScorerArgs,
    #[command(flatten)]
    rt: RuntimeArgs,
}

/// Runs `uwe-connect rank` with these arguments.
pub(crate) fn run(a: RankArgs) -> anyhow::Result<()> {
    let RankArgs {
        text,
        space,
        k,
        json,
        scorer,
        rt,
    } = a;
    let mut enc = rt.load_encoder()?;
    let s = scorer.resolve(enc.manifest(), &space);
    let sp = rt.load_space(&space, &mut enc)?;
    let lines: Vec<String> = match text {
        Some(t) => vec![t],
        None => std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<_, _>>()
            .context("reading stdin (is it UTF-8?)")?,
    };
    for line in lines {
        let e = enc.encode(&[line.as_str()])?.remove(0);
        let hits = rank::rank(&sp, &e, k, s);
        if json {
            let labels: Vec<_> = hits
                    .iter()
                    .enumerate()
                    .map(|(r, h)| {
                        let c = &sp.space.concepts[h.index];
                        let mut v = serde_json::json!({"rank": r + 1, "id": c.id, "label": c.label, "score": h.score});
                        if let Some(a) = sp.alias_text(h.alias) {
                            v["matched"] = a.into();
                        }
                        v
                    })
                    .collect();
            println!("{}", serde_json::json!({"text": line, "labels": labels}));
        } else {
            println!("{line}");
            if hits.is_empty() {
                println!("  (no labels: empty text)");
            }
            for (r, h) in hits.iter().enumerate() {
                let c = &sp.space.concepts[h.index];
                let label = match sp.alias_text(h.alias) {
                    Some(a) => format!("{} (as \"{a}\")", c.label),
                    None => c.label.clone(),
                };
                println!("  {:>2}. {:.3}  {label:<50} {}", r + 1, h.score, c.id);
            }
        }
    }
    Ok(())
}
