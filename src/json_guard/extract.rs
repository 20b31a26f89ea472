//! Finding the JSON in an LLM's answer: a fenced block, else the first balanced object or
//! array in the prose (brackets inside strings ignored), else the whole text. One linear
//! scan, which also measures the nesting depth.

/// The candidate text and what the scan learned about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate<'a> {
    pub text: &'a str,
    /// Byte offset of `text` in the original.
    pub offset: usize,
    /// Deepest bracket nesting seen (strings excluded).
    pub depth: usize,
    /// The brackets never balanced: the answer was cut short.
    pub unbalanced: bool,
}

/// The body of the first ``` fence, preferring one tagged `json`; an unclosed fence runs
/// to the end (a truncated answer).
fn fenced(text: &str) -> Option<(usize, &str)> {
    let mut search = 0;
    let mut first: Option<(usize, &str)> = None;
    while let Some(rel) = text[search..].find("```") {
        let open = search + rel;
        let after = open + 3;
        let line_end = text[after..].find('\n').map_or(text.len(), |i| after + i);
        let tag = text[after..line_end].trim().to_ascii_lowercase();
        let body_start = (line_end + 1).min(text.len());
        let (body_end, next) = match text[body_start..].find("```") {
            Some(i) => (body_start + i, body_start + i + 3),
            None => (text.len(), text.len()),
        };
        let body = (body_start, &text[body_start..body_end]);
        if tag == "json" || tag == "jsonc" || tag == "json5" {
            return Some(body);
        }
        first.get_or_insert(body);
        search = next;
        if search >= text.len() {
            break;
        }
    }
    first
}

/// Scans from the first `{` or `[` to the bracket that closes it.
fn balanced(text: &str) -> Option<(usize, usize, usize, bool)> {
    let start = text.find(['{', '['])?;
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut max_depth = 0usize;
    let mut quote: Option<u8> = None;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate().skip(start) {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == q {
                quote = None;
            }
            continue;
        }
        match b {
            b'"' | b'\'' => quote = Some(b),
            b'{' | b'[' => {
                depth += 1;
                max_depth = max_depth.max(depth);
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Some((start, i + 1, max_depth, false));
                }
            }
            _ => {}
        }
    }
    Some((start, text.len(), max_depth, true))
}

pub(crate) fn extract(text: &str) -> Candidate<'_> {
    let (base, region) = fenced(text).unwrap_or((0, text));
    match balanced(region) {
        Some((start, end, depth, unbalanced)) => Candidate {
            text: &region[start..end],
            offset: base + start,
            depth,
            unbalanced,
        },
        None => {
            let trimmed = region.trim();
            let offset = base + (region.len() - region.trim_start().len());
            Candidate {
                text: trimmed,
                offset,
                depth: 0,
                unbalanced: false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_prose_and_strings() {
        let c = extract("Sure! ```json\n{\"a\": 1}\n``` hope that helps");
        assert_eq!(c.text, "{\"a\": 1}");
        let c = extract("```\n[1,2]\n```");
        assert_eq!(c.text, "[1,2]");
        let c = extract(
            "Here you go: {\"k\": \"a } brace\", \"n\": [1, {\"x\": 2}]} -- done {not this}",
        );
        assert_eq!(c.text, "{\"k\": \"a } brace\", \"n\": [1, {\"x\": 2}]}");
        assert_eq!(c.depth, 3);
        let c = extract("{\"a\": [1, 2");
        assert!(c.unbalanced);
        assert_eq!(c.text, "{\"a\": [1, 2");
        let c = extract("  42  ");
        assert_eq!((c.text, c.offset), ("42", 2));
        let c = extract("```json\n{\"cut\": ");
        assert_eq!(c.text, "{\"cut\": ");
    }
}
