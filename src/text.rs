//! Text utilities: sentence splitting with spans, byte ↔ character offsets.

/// Splits `text` into sentences and returns their byte spans, whitespace trimmed.
///
/// Boundaries: line breaks, bullet characters, and `.`, `!`, `?` or `;` followed by
/// whitespace. Job ads are mostly lists and short lines, so this simple rule set holds up
/// better there than on prose; a span is never empty.
pub fn sentence_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = 0usize;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let next_is_space = chars
            .peek()
            .map(|&(_, n)| n.is_whitespace())
            .unwrap_or(true);
        let boundary_here = match c {
            '\n' | '\r' | '•' | '●' | '▪' | '·' => Some(i),
            '.' | '!' | '?' | ';' if next_is_space => Some(i + c.len_utf8()),
            _ => None,
        };
        if let Some(end) = boundary_here {
            push_trimmed(text, start, end, &mut spans);
            start = i + c.len_utf8();
        }
    }
    push_trimmed(text, start, text.len(), &mut spans);
    spans
}

fn push_trimmed(text: &str, start: usize, end: usize, out: &mut Vec<(usize, usize)>) {
    if start >= end {
        return;
    }
    let s = &text[start..end];
    let lead = s.len() - s.trim_start().len();
    let trimmed = s.trim();
    if trimmed.is_empty() {
        return;
    }
    // A line that is only a list marker ("-", "*") carries no sentence.
    if trimmed.chars().all(|c| !c.is_alphanumeric()) {
        return;
    }
    let a = start + lead;
    out.push((a, a + trimmed.len()));
}

/// Converts a byte offset into `text` to a character (Unicode scalar) offset.
pub fn char_offset(text: &str, byte: usize) -> usize {
    text[..byte.min(text.len())].chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_and_sentences() {
        let t = "Senior QA Engineer\n\nYou test code. You write Java; fast!\n - \n• Docker";
        let s: Vec<&str> = sentence_spans(t).iter().map(|&(a, b)| &t[a..b]).collect();
        assert_eq!(
            s,
            vec![
                "Senior QA Engineer",
                "You test code.",
                "You write Java;",
                "fast!",
                "Docker"
            ]
        );
    }

    #[test]
    fn keeps_decimals_and_handles_unicode() {
        let t = "Salary 3.5k € — Zürich.Next";
        let s = sentence_spans(t);
        assert_eq!(s.len(), 1);
        assert_eq!(&t[s[0].0..s[0].1], t);
        assert_eq!(char_offset(t, t.find('—').unwrap()), 14);
    }

    #[test]
    fn empty_and_blank() {
        assert!(sentence_spans("").is_empty());
        assert!(sentence_spans("  \n\t ").is_empty());
    }
}
