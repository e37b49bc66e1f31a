//! From token scores to word spans: BIO decoding, snapping a token range to whole words,
//! and trimming function words off a mention's edges.

/// Token spans `(first, end, mean confidence)` from per-token `[P(O), P(B), P(I)]`.
///
/// A token is inside when `P(B) + P(I) > threshold`; a span starts at an inside token that
/// follows an outside one or whose `P(B)` beats `P(I)`, and runs while tokens stay inside and
/// lean to `I`.
pub fn decode_bio<'a>(
    n: usize,
    threshold: f32,
    probs: impl Fn(usize) -> &'a [f32],
) -> Vec<(usize, usize, f32)> {
    let mut spans = Vec::new();
    let mut cur: Option<(usize, f32)> = None;
    for i in 0..n {
        let p = probs(i);
        let inside = p[1] + p[2] > threshold;
        let begins = p[1] > p[2];
        match (cur, inside) {
            (Some((a, s)), true) if !begins => cur = Some((a, s + p[1] + p[2])),
            (Some((a, s)), true) => {
                spans.push((a, i, s / (i - a) as f32));
                cur = Some((i, p[1] + p[2]));
            }
            (Some((a, s)), false) => {
                spans.push((a, i, s / (i - a) as f32));
                cur = None;
            }
            (None, true) => cur = Some((i, p[1] + p[2])),
            (None, false) => {}
        }
    }
    if let Some((a, s)) = cur {
        spans.push((a, n, s / (n - a) as f32));
    }
    spans
}

/// Widens the byte range `a..b` of `text` to whole words (a word piece that starts or ends
/// inside a word takes the word) and trims punctuation at its ends; `None` when nothing
/// alphanumeric is left.
pub fn snap_to_words(text: &str, a: usize, b: usize) -> Option<(usize, usize)> {
    let (mut a, mut b) = (a.min(text.len()), b.min(text.len()));
    if a >= b || !text.is_char_boundary(a) || !text.is_char_boundary(b) {
        return None;
    }
    // Grow only from inside a word: a span starting right after a word is not part of it.
    if text[a..].chars().next().is_some_and(char::is_alphanumeric) {
        while let Some(c) = text[..a].chars().next_back() {
            if !c.is_alphanumeric() {
                break;
            }
            a -= c.len_utf8();
        }
    }
    if text[..b]
        .chars()
        .next_back()
        .is_some_and(char::is_alphanumeric)
    {
        while let Some(c) = text[b..].chars().next() {
            if !c.is_alphanumeric() {
                break;
            }
            b += c.len_utf8();
        }
    }
    let s = &text[a..b];
    let lead = s.len() - s.trim_start_matches(|c: char| !c.is_alphanumeric()).len();
    // "C++", "C#", "F#": a trailing plus or hash belongs to the name.
    let trail = s.len()
        - s.trim_end_matches(|c: char| !c.is_alphanumeric() && c != '+' && c != '#')
            .len();
    (lead + trail < s.len()).then(|| (a + lead, b - trail))
}

/// Words that neither start nor end a skill mention in English ("Java and", "the quality",
/// "of problems"); a mention made only of them ("our", "it") is none.
const FUNCTION_WORDS: &[&str] = &[
    "a", "an", "and", "any", "as", "at", "be", "by", "for", "from", "in", "into", "is", "it",
    "its", "of", "on", "or", "our", "such", "that", "the", "their", "them", "these", "they",
    "this", "those", "to", "up", "us", "we", "which", "who", "will", "with", "you", "your",
];

/// `[a, b)` of `text` without leading and trailing function words and the spaces and
/// punctuation around them; `None` when nothing else is left.
pub fn trim_function_words(text: &str, a: usize, b: usize) -> Option<(usize, usize)> {
    let mut words: Vec<(usize, usize)> = Vec::new();
    let mut start = None;
    for (i, c) in text[a..b].char_indices() {
        let i = a + i;
        match (
            c.is_alphanumeric() || c == '+' || c == '#' || c == '.',
            start,
        ) {
            (true, None) => start = Some(i),
            (false, Some(st)) => {
                words.push((st, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(st) = start {
        words.push((st, b));
    }
    let is_fn = |&(x, y): &(usize, usize)| {
        let w = text[x..y].trim_end_matches('.').to_lowercase();
        FUNCTION_WORDS.contains(&w.as_str())
    };
    let first = words.iter().position(|w| !is_fn(w))?;
    let last = words.iter().rposition(|w| !is_fn(w))?;
    if first == 0 && last + 1 == words.len() {
        return Some((a, b));
    }
    let (s, e) = (words[first].0, words[last].1);
    snap_to_words(text, s, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bio_decoding_splits_on_begin_and_outside() {
        // O B I O I B B I
        let p: Vec<[f32; 3]> = vec![
            [0.9, 0.05, 0.05],
            [0.1, 0.8, 0.1],
            [0.2, 0.1, 0.7],
            [0.9, 0.05, 0.05],
            [0.3, 0.2, 0.5],
            [0.1, 0.6, 0.3],
            [0.1, 0.6, 0.3],
            [0.1, 0.2, 0.7],
        ];
        let spans: Vec<(usize, usize)> = decode_bio(p.len(), 0.5, |i| &p[i][..])
            .into_iter()
            .map(|(a, b, _)| (a, b))
            .collect();
        assert_eq!(spans, vec![(1, 3), (4, 5), (5, 6), (6, 8)]);
        assert!(decode_bio(0, 0.5, |i| &p[i][..]).is_empty());
    }

    #[test]
    fn function_words_are_trimmed_from_the_edges() {
        let t = "Java and the quality of code, or our";
        let cut = |a: usize, b: usize| trim_function_words(t, a, b).map(|(x, y)| &t[x..y]);
        assert_eq!(cut(0, 8), Some("Java"));
        assert_eq!(cut(9, 28), Some("quality of code"), "inside words stay");
        assert_eq!(cut(30, 36), None, "function words alone are no mention");
        assert_eq!(cut(0, 4), Some("Java"));
        assert_eq!(trim_function_words("C++ and C#", 0, 10), Some((0, 10)));
    }

    #[test]
    fn snapping_takes_whole_words_and_drops_punctuation() {
        let t = "Experience with Kubernetes, Docker.";
        let k = t.find("Kube").unwrap();
        assert_eq!(snap_to_words(t, k + 2, k + 6), Some((k, k + 10)));
        let d = t.find("Docker").unwrap();
        assert_eq!(snap_to_words(t, d, t.len()), Some((d, d + 6)));
        assert_eq!(snap_to_words(t, k + 10, k + 11), None, "a comma alone");
        assert_eq!(snap_to_words("Zürich", 1, 2), None, "inside a character");
        assert_eq!(snap_to_words("Zürich", 0, 1), Some((0, "Zürich".len())));
    }
}
