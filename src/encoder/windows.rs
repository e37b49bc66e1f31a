//! Long texts into model windows (cut at sentence boundaries first), and windows into
//! token-budget batches padded to their longest member.

use super::{Encoder, TokenOffsets};
use crate::error::{ModelError, Result};
use crate::text::sentence_spans;

/// One model window: word-piece ids (without specials) and which text it belongs to.
pub(super) struct Window {
    pub text: usize,
    pub ids: Vec<u32>,
}

impl Encoder {
    /// Splits each text into windows of at most `max_seq_len - 2` word pieces, cutting at
    /// sentence boundaries first and inside a sentence only when it alone is too long.
    /// Also returns each text's token byte offsets, in window order.
    pub(super) fn windows(&self, texts: &[&str]) -> Result<(Vec<Window>, Vec<TokenOffsets>)> {
        let encs = self
            .tokenizer
            .encode_batch(texts.to_vec(), false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let limit = self.manifest.max_seq_len - 2;
        let mut windows = Vec::new();
        let mut all_offsets = Vec::with_capacity(texts.len());
        for (ti, (text, enc)) in texts.iter().zip(encs).enumerate() {
            let ids = enc.get_ids();
            all_offsets.push(
                enc.get_offsets()
                    .iter()
                    .map(|&(a, b)| (a as u32, b as u32))
                    .collect(),
            );
            if ids.len() <= limit {
                windows.push(Window {
                    text: ti,
                    ids: ids.to_vec(),
                });
                continue;
            }
            // Token index where each sentence starts, from the tokens' byte offsets.
            let spans = sentence_spans(text);
            let offsets = enc.get_offsets();
            let mut cuts = vec![0usize];
            let mut s = 0usize;
            for (k, &(a, _)) in offsets.iter().enumerate() {
                while s + 1 < spans.len() && a >= spans[s + 1].0 {
                    s += 1;
                    if k > *cuts.last().unwrap() {
                        cuts.push(k);
                    }
                }
            }
            cuts.push(ids.len());
            let mut cur: Vec<u32> = Vec::new();
            for w in cuts.windows(2) {
                let sent = &ids[w[0]..w[1]];
                if cur.len() + sent.len() > limit && !cur.is_empty() {
                    windows.push(Window {
                        text: ti,
                        ids: std::mem::take(&mut cur),
                    });
                }
                if sent.len() > limit {
                    for piece in sent.chunks(limit) {
                        windows.push(Window {
                            text: ti,
                            ids: piece.to_vec(),
                        });
                    }
                } else {
                    cur.extend_from_slice(sent);
                }
            }
            if !cur.is_empty() {
                windows.push(Window { text: ti, ids: cur });
            }
        }
        Ok((windows, all_offsets))
    }

    /// Groups windows into batches: sorted by length so that each pads little, closed at the
    /// padded-token budget or the batch size. Returns each batch's window indices and padded
    /// length (special tokens included).
    pub(super) fn plan_batches(&self, windows: &[Window]) -> Vec<(Vec<usize>, usize)> {
        let mut order: Vec<usize> = (0..windows.len()).collect();
        order.sort_by_key(|&i| windows[i].ids.len());
        let mut batches = Vec::new();
        let mut start = 0;
        while start < order.len() {
            let mut end = start;
            let mut longest = 0;
            while end < order.len() {
                let l = longest.max(windows[order[end]].ids.len() + 2);
                let n = end - start + 1;
                if end > start && (n * l > self.cfg.max_batch_tokens || n > self.cfg.max_batch_size)
                {
                    break;
                }
                longest = l;
                end += 1;
            }
            batches.push((order[start..end].to_vec(), longest));
            start = end;
        }
        batches
    }
}
