//! Finding the JSON in an LLM's answer: a fenced block, else the first balanced object or
//! array in the prose (brackets inside strings ignored), else the whole text. One linear
//! scan, which also measures the nesting depth.

use std::ops::ControlFlow;

/// The candidate text and what the scan learned about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate<'a> {
    pub text: &'a str,
    /// Byte offset of `text` in the original.
    pub offset: usize,
    /// Byte offset just past what this candidate used up (its closing fence included):
    /// where a search for a further value starts.
    pub end: usize,
    /// Deepest bracket nesting seen (strings excluded).
    pub depth: usize,
    /// The brackets never balanced: the answer was cut short.
    pub unbalanced: bool,
    /// Found in a ``` fence.
    pub fenced: bool,
}

/// Whether the ``` at `open` opens a fence around the answer rather than sitting inside
/// the JSON (`{"k": "```json"}`, `{...}```` closing nothing): it does when it starts its
/// line or comes before the first bracket.
fn opens_fence(text: &str, open: usize) -> bool {
    let line_start = text[..open].rfind('\n').map_or(0, |i| i + 1);
    text[line_start..open].trim().is_empty() || text[..open].find(['{', '[']).is_none()
}

/// The body of the first ``` fence, preferring one tagged `json` (body start, body, the
/// byte past the closing fence); an unclosed fence runs to the end (a truncated answer).
fn fenced(text: &str) -> Option<(usize, &str, usize)> {
    let mut search = 0;
    let mut first: Option<(usize, &str, usize)> = None;
    while let Some(rel) = text[search..].find("```") {
        let open = search + rel;
        let after = open + text[open..].len() - text[open..].trim_start_matches('`').len();
        if !opens_fence(text, open) {
            search = after;
            continue;
        }
        // The tag is the word right after the backticks; the body starts on the next line,
        // or right after the tag when the fence is inline (```json {"a": 1} ```).
        let tag_len = text[after..]
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(text.len() - after);
        let tag = text[after..after + tag_len].to_ascii_lowercase();
        let line_end = text[after..].find('\n').map_or(text.len(), |i| after + i);
        let body_start = if text[after + tag_len..line_end].trim().is_empty() {
            (line_end + 1).min(text.len())
        } else {
            after + tag_len
        };
        let (body_end, next) = match text[body_start..].find("```") {
            Some(i) => {
                let close = body_start + i;
                let past =
                    close + text[close..].len() - text[close..].trim_start_matches('`').len();
                (close, past)
            }
            None => (text.len(), text.len()),
        };
        let body = (body_start, &text[body_start..body_end], next);
        if body.1.trim().is_empty() {
            search = next;
            if search >= text.len() {
                break;
            }
            continue;
        }
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

/// Calls `f` on each byte of `text` outside strings quoted with one of `quotes` (the
/// quotes themselves included), with its offset, until `f` breaks.
fn scan_outside_strings<R>(
    text: &str,
    quotes: &[u8],
    mut f: impl FnMut(usize, u8) -> ControlFlow<R>,
) -> Option<R> {
    let mut quote: Option<u8> = None;
    let mut escaped = false;
    for (i, &b) in text.as_bytes().iter().enumerate() {
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
        if quotes.contains(&b) {
            quote = Some(b);
        }
        if let ControlFlow::Break(r) = f(i, b) {
            return Some(r);
        }
    }
    None
}

/// Bracket balance of `text` outside strings: `}`/`]` seen minus `{`/`[` seen.
pub(crate) fn excess_closers(text: &str) -> isize {
    let mut net = 0isize;
    scan_outside_strings(text, b"\"", |_, b| {
        match b {
            b'{' | b'[' => net -= 1,
            b'}' | b']' => net += 1,
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    net
}

/// Whether the text after a closed value continues the same value: a comma, then members,
/// and more closers than openers (`{"a": 1}, "b": 2}` — the first `}` came too early).
pub(crate) fn continues_after_close(rest: &str) -> bool {
    rest.trim_start().starts_with(',') && excess_closers(rest) > 0
}

/// Scans from the first `{` or `[` to the bracket that closes it (a closer that does not
/// match the innermost open bracket is a typo and closes nothing); with `continuation`, on
/// past a closer that came too early.
fn balanced(text: &str, continuation: bool) -> Option<(usize, usize, usize, bool)> {
    let start = text.find(['{', '['])?;
    let mut open: Vec<u8> = Vec::new();
    let mut max_depth = 0usize;
    let closed = scan_outside_strings(&text[start..], b"\"'", |rel, b| {
        match b {
            b'{' | b'[' => {
                open.push(b);
                max_depth = max_depth.max(open.len());
            }
            b'}' | b']' => {
                let opener = if b == b'}' { b'{' } else { b'[' };
                if open.last() == Some(&opener) {
                    open.pop();
                }
                if open.is_empty() {
                    let i = start + rel;
                    if continuation && continues_after_close(&text[i + 1..]) {
                        return ControlFlow::Break(text.len());
                    }
                    return ControlFlow::Break(i + 1);
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    });
    Some(match closed {
        Some(end) => (start, end, max_depth, false),
        None => (start, text.len(), max_depth, true),
    })
}

pub(crate) fn extract(text: &str) -> Candidate<'_> {
    extract_from(text, true, true)
}

/// [`extract`], where a caller reading value after value (each scan costing only what it
/// reads) says whether a fence may come first and whether a value may go on past an early
/// closer (which costs a scan of the rest).
pub(crate) fn extract_from(text: &str, fence: bool, continuation: bool) -> Candidate<'_> {
    let (base, region, end, fenced) = match if fence { fenced(text) } else { None } {
        Some((base, body, end)) => (base, body, end, true),
        None => (0, text, text.len(), false),
    };
    match balanced(region, continuation) {
        Some((start, stop, depth, unbalanced)) => Candidate {
            text: &region[start..stop],
            offset: base + start,
            end: if fenced { end } else { base + stop },
            depth,
            unbalanced,
            fenced,
        },
        None => {
            let trimmed = region.trim();
            let offset = base + (region.len() - region.trim_start().len());
            Candidate {
                text: trimmed,
                offset,
                end,
                depth: 0,
                unbalanced: false,
                fenced,
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
        // Inline and four-backtick fences; a fence inside the JSON or after it is no fence.
        assert_eq!(extract("see: ```json {\"a\": 1} ``` ok").text, "{\"a\": 1}");
        assert_eq!(extract("````{\"a\": 1}```").text, "{\"a\": 1}");
        assert_eq!(extract("{\"k\": \"```json\"}").text, "{\"k\": \"```json\"}");
        assert_eq!(extract("{\"a\": 1}\n}```").text, "{\"a\": 1}");
        // A closer of the wrong kind closes nothing; one that came too early is passed.
        assert_eq!(
            extract("[{\"a\":1}},{\"b\":2}] x").text,
            "[{\"a\":1}},{\"b\":2}]"
        );
        assert_eq!(
            extract("{\"a\": 1}, \"b\": 2}").text,
            "{\"a\": 1}, \"b\": 2}"
        );
        assert_eq!(extract("{\"a\": 1}, {\"b\": 2}").text, "{\"a\": 1}");
    }
}
