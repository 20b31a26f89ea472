//! Repair of malformed JSON in one linear pass with an explicit stack (no recursion, so
//! nesting cannot overflow the stack), recording every fix it applies.

use std::borrow::Cow;
use std::fmt;

use serde::Serialize;

/// One kind of repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FixKind {
    /// A comma before `}` or `]` was dropped.
    TrailingComma,
    /// A repeated comma was dropped.
    ExtraComma,
    /// A missing comma between two values or members was added.
    MissingComma,
    /// A single-quoted string was requoted.
    SingleQuotes,
    /// A string in typographic quotes was requoted.
    SmartQuotes,
    /// A bare object key was quoted.
    UnquotedKey,
    /// A bare word value was quoted as a string.
    UnquotedString,
    /// `True`, `False`, `None`, `undefined`, `NaN`, `Infinity` became JSON.
    Constant,
    /// A number in a form JSON does not accept (`+1`, `.5`, `1.`, `0x1F`) was rewritten.
    Number,
    /// A `//`, `#` or `/* */` comment was removed.
    Comment,
    /// A raw newline, tab or other control character in a string was escaped.
    ControlCharacter,
    /// A `"` inside a string was escaped.
    InnerQuote,
    /// An escape JSON does not know (`\'`) was replaced.
    InvalidEscape,
    /// A string cut off by the end of the text was closed.
    UnterminatedString,
    /// A member left without a value by the end of the text got `null`.
    MissingValue,
    /// Brackets left open by the end of the text were closed.
    ClosedBracket,
    /// A closing bracket that closed nothing was dropped.
    StrayCloser,
    /// A character that belongs nowhere was dropped.
    StrayCharacter,
    /// Text after the complete value was dropped.
    TrailingText,
    /// A missing `:` between a key and its value was added.
    MissingColon,
    /// Words in a key's place that no colon follows (`{"a": 1, NOTE "b": 2}`) were dropped.
    DroppedWords,
    /// A member or element cut off by the end of the text before it held anything (a key
    /// without its colon, an empty unterminated string in an array) was dropped.
    CutMember,
    /// A Python tuple `(1, 2)` became an array (and `(1)` its one value).
    Tuple,
    /// `"key": value` pairs written in an array became an object in it.
    PairsInArray,
    /// An array written where a key belongs continued the array before it
    /// (`{"k": [1], [2]}` → `{"k": [1, 2]}`).
    ContinuedArray,
    /// A closer that came too early was undone because members follow it and the text
    /// closes again later (`{"a": 1}, "b": 2}`).
    EarlyCloser,
    /// A closer of the wrong kind (`}` for `]`) closed the bracket it stood for.
    WrongCloser,
    /// A doubled quote (`""key""`) was read as one.
    DoubledQuote,
    /// A Python set `{'a', 'b'}` became an array.
    Set,
    /// A key whose closing quote was lost before its colon (`{"key:value}`) was split there.
    SplitKey,
    /// An object opened and closed by a bracket of the other kind at once (`[{]`) was
    /// dropped.
    EmptyWrongClose,
}

/// A repair and where in the candidate text it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fix {
    /// What was done.
    pub kind: FixKind,
    /// Byte offset in the original text.
    pub at: usize,
}

impl fmt::Display for Fix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            FixKind::TrailingComma => "removed a trailing comma",
            FixKind::ExtraComma => "removed an extra comma",
            FixKind::MissingComma => "added a missing comma",
            FixKind::SingleQuotes => "replaced single quotes",
            FixKind::SmartQuotes => "replaced typographic quotes",
            FixKind::UnquotedKey => "quoted a bare key",
            FixKind::UnquotedString => "quoted a bare word",
            FixKind::Constant => "replaced a Python/JavaScript constant",
            FixKind::Number => "rewrote a number",
            FixKind::Comment => "removed a comment",
            FixKind::ControlCharacter => "escaped a control character in a string",
            FixKind::InnerQuote => "escaped a quote inside a string",
            FixKind::InvalidEscape => "replaced an invalid escape",
            FixKind::UnterminatedString => "closed an unterminated string",
            FixKind::MissingValue => "added null for a missing value",
            FixKind::ClosedBracket => "closed an unclosed bracket",
            FixKind::StrayCloser => "removed a stray closing bracket",
            FixKind::StrayCharacter => "removed a stray character",
            FixKind::TrailingText => "dropped text after the value",
            FixKind::MissingColon => "added a missing colon",
            FixKind::DroppedWords => "dropped words that are neither key nor value",
            FixKind::CutMember => "dropped a member cut off before it held anything",
            FixKind::Tuple => "made a tuple an array",
            FixKind::PairsInArray => "wrapped key-value pairs in an array into an object",
            FixKind::ContinuedArray => "continued an array written where a key belongs",
            FixKind::EarlyCloser => "undid a closing bracket that came too early",
            FixKind::WrongCloser => "read a closing bracket of the wrong kind as the right one",
            FixKind::DoubledQuote => "read doubled quotes as one",
            FixKind::Set => "made a set an array",
            FixKind::SplitKey => "split a key from its value at a colon inside its quotes",
            FixKind::EmptyWrongClose => "dropped a bracket closed at once by one of the other kind",
        };
        write!(f, "{what} at byte {}", self.at)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    Object,
    Array,
    /// `( … )`, written as an array; `start` is where its `[` is in the output, so that a
    /// one-value tuple without a comma (`(1)`) can become its value.
    Tuple {
        start: usize,
        items: usize,
        comma: bool,
    },
    /// `{'a', 'b'}`, a Python set: braces around values, written as an array.
    Set,
}

impl Frame {
    fn is_list(self) -> bool {
        !matches!(self, Frame::Object)
    }

    fn closer(self) -> char {
        match self {
            Frame::Object | Frame::Set => '}',
            Frame::Array => ']',
            Frame::Tuple { .. } => ')',
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A value (top level, after `:` or in an array after `,`).
    Value,
    /// A key or `}`.
    Key,
    /// `:` after a key.
    Colon,
    /// `,` or the container's end.
    CommaOrEnd,
    /// The top-level value is complete.
    Done,
}

/// What a string being read is, which decides what may follow its closing quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Key,
    /// A member's value.
    MemberValue,
    /// An array element.
    Element,
    /// The top-level value.
    Top,
}

/// Why repair gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RepairError {
    /// Deeper than allowed.
    TooDeep(usize),
    /// Nothing that could be a JSON value.
    Empty,
    /// The text can be read more than one way, and the ways give different keys: the
    /// guard refuses rather than invent a member (what, where).
    Ambiguous(&'static str, usize),
}

struct Repairer<'a> {
    src: &'a str,
    base: usize,
    out: String,
    fixes: Vec<Fix>,
    stack: Vec<Frame>,
    expect: Expect,
    /// A comma seen and not yet written: written before the next member, dropped before a
    /// closer (that is how a trailing comma goes without rewriting the output).
    pending_comma: Option<usize>,
    /// Where the current member or element starts in the output, its comma included (a
    /// member cut by the end of the text is cut back to here).
    item_start: usize,
    /// Where the current member's or element's own text starts in the output.
    value_start: usize,
    /// The last item was a string the end of the text cut before it held anything.
    cut_empty: bool,
    /// Where each kind of quote last occurs in the text, so that "does a quote follow?"
    /// costs nothing.
    last_quotes: [(char, usize); 4],
    /// Closers undone so far (`{"a": 1}, "b": 2}`), bounded so repair stays linear.
    early_closers: usize,
    max_depth: usize,
}

/// How far the heuristics look ahead, bytes: far enough for a key, a word or a line of
/// prose, and a bound that keeps repair linear in the text however it is built.
const LOOKAHEAD: usize = 1024;

/// How many top-level closers one repair undoes (each costs a scan of the rest).
const MAX_EARLY_CLOSERS: usize = 4;

/// The first [`LOOKAHEAD`] bytes of `text` (at a char boundary).
fn window(text: &str) -> &str {
    if text.len() <= LOOKAHEAD {
        return text;
    }
    let mut end = LOOKAHEAD;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Whether `rest` starts (after a comma, if any) with a member: a quoted key or a bare
/// word followed by a colon.
fn member_follows(rest: &str) -> bool {
    let rest = window(rest).trim_start();
    let rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    quoted_key_at(rest) || {
        let word = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        word > 0 && rest[word..].trim_start().starts_with(':')
    }
}

/// Whether `text` starts with a closed quoted string followed by a colon.
fn quoted_key_at(text: &str) -> bool {
    let Some(closes) = text.chars().next().and_then(closing_quotes) else {
        return false;
    };
    let body = &text[text.chars().next().map_or(0, char::len_utf8)..];
    body.find(closes).is_some_and(|end| {
        body[end..]
            .trim_start_matches(closes)
            .trim_start()
            .starts_with(':')
    })
}

/// Whether a comma after a quote in a member's value ends the value. It does unless prose
/// follows it — words that are neither a key (`b: 1`) nor words before a quoted key
/// (`NOTE "b": 1`): `"lorem "ipsum", sic."` is one value.
fn comma_ends_value(after_comma: &str) -> bool {
    let rest = after_comma.trim_start();
    if after_comma[..after_comma.len() - rest.len()].contains('\n')
        || !rest.starts_with(char::is_alphanumeric)
    {
        return true;
    }
    let words = rest
        .find(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | ' ' | '-' | '.')))
        .unwrap_or(rest.len());
    let after = &rest[words..];
    after.starts_with(':') || (rest[..words].ends_with(' ') && quoted_key_at(after))
}

/// The quotes that close a string opened by `open`, if `open` opens one.
fn closing_quotes(open: char) -> Option<&'static [char]> {
    Some(match open {
        '\u{201C}' | '\u{201D}' => &['\u{201D}', '"'],
        '\u{2018}' | '\u{2019}' => &['\u{2019}', '\''],
        '\'' => &['\''],
        '"' => &['"'],
        _ => return None,
    })
}

/// `rest` starts with a delimiter, or with one word and then a delimiter or the end.
fn at_most_a_word_then_delimiter(rest: &str) -> bool {
    let rest = rest.trim_start();
    let word = rest
        .find(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '+' | '.')))
        .unwrap_or(rest.len());
    let after = rest[word..].trim_start();
    after.is_empty() || after.starts_with([',', '}', ']', ')'])
}

/// In an array, whether a quote followed by a bare phrase and then a stray quote or a
/// delimiter (`["value1" value2", …]`) closes the string: the phrase is the next element,
/// its opening quote forgotten.
fn element_then_bare_phrase(rest: &str) -> bool {
    let Some(first) = window(rest).strip_prefix(' ') else {
        return false;
    };
    let end = first
        .find(['"', ',', ']', '}', '\n', '[', '{', ':'])
        .unwrap_or(first.len());
    let phrase = first[..end].trim();
    if phrase.is_empty() {
        return false;
    }
    let after = &first[end..];
    let after = after.strip_prefix('"').unwrap_or(after).trim_start();
    after.starts_with([',', ']'])
}

fn is_closing_quote_context(rest: &str, later_quote: bool, role: Role) -> bool {
    let rest = window(rest);
    // After a real closing quote comes a delimiter, the start of another member (a missing
    // comma), a line break, or the end of the text. Anything else means the quote was
    // inside the string: `"he said "hi" to me"` — unless no quote follows to close it and
    // what follows is no more than a word (`["a" "b" "c" 1`).
    let trimmed = rest.trim_start();
    if rest[..rest.len() - trimmed.len()].contains('\n') {
        return true;
    }
    if !later_quote && at_most_a_word_then_delimiter(rest) {
        return true;
    }
    // A comment after the value (`"v" // note`) also ends the string.
    if trimmed.starts_with("//") || trimmed.starts_with("/*") || trimmed.starts_with('#') {
        return true;
    }
    // A fence right after the value closes the answer (`{"k": "v"```).
    if trimmed.starts_with("```") {
        return true;
    }
    match trimmed.chars().next() {
        None => true,
        Some(',') if role == Role::MemberValue => comma_ends_value(&trimmed[1..]),
        Some(c) => matches!(c, ',' | '}' | ']' | ':' | '"' | '{' | '['),
    }
}

/// How a string read ended.
struct ReadString {
    text: String,
    /// The byte just past it.
    next: usize,
    /// Cut by the end of the text.
    cut: bool,
    /// An element that ran on past quotes into a colon.
    swallowed: bool,
}

impl<'a> Repairer<'a> {
    fn fix(&mut self, kind: FixKind, at: usize) {
        self.fixes.push(Fix {
            kind,
            at: self.base + at,
        });
    }

    /// Whether a quote that closes a string opened by `open` occurs at or after `from`.
    fn quote_after(&self, from: usize, open: char) -> bool {
        let closes = closing_quotes(open).unwrap_or(&['"']);
        self.last_quotes
            .iter()
            .any(|&(q, at)| closes.contains(&q) && at != usize::MAX && at >= from)
    }

    fn after_comma(&self) -> Expect {
        match self.stack.last() {
            Some(Frame::Object) => Expect::Key,
            _ => Expect::Value,
        }
    }

    /// Before a value or key: settles commas (writes a pending one, or adds a missing one).
    fn begin_item(&mut self, at: usize) {
        self.item_start = self.out.len();
        self.cut_empty = false;
        if self.pending_comma.take().is_some() {
            self.out.push(',');
        } else if self.expect == Expect::CommaOrEnd {
            self.fix(FixKind::MissingComma, at);
            self.out.push(',');
            self.expect = self.after_comma();
        }
        if let Some(Frame::Tuple { items, .. }) = self.stack.last_mut()
            && self.expect == Expect::Value
        {
            *items += 1;
        }
        self.value_start = self.out.len();
    }

    /// After a complete value.
    fn end_value(&mut self) {
        self.expect = if self.stack.is_empty() {
            Expect::Done
        } else {
            Expect::CommaOrEnd
        };
    }

    fn push_string(&mut self, content: &str) {
        self.out.push('"');
        for c in content.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                '\t' => self.out.push_str("\\t"),
                c if (c as u32) < 0x20 => self.out.push_str(&format!("\\u{:04x}", c as u32)),
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }

    /// The text of a string the end of the text cut: what closes the open brackets at its
    /// end (`{"k": ["v]}`, `{"k": "v}```) belonged to them, not to the string.
    fn cut_string_text(&self, mut text: String) -> String {
        let is_tail = |c: char| c.is_whitespace() || matches!(c, '`' | '}' | ']' | ')');
        let tail_start = text.trim_end_matches(is_tail).len();
        let tail = &text[tail_start..];
        let closers: String = tail
            .chars()
            .filter(|c| matches!(c, '}' | ']' | ')'))
            .collect();
        // The closers must be the open brackets' own, innermost first.
        let expected: String = self
            .stack
            .iter()
            .rev()
            .take(closers.chars().count())
            .map(|f| f.closer())
            .collect();
        if (closers.is_empty() && tail.contains('`'))
            || (!closers.is_empty() && closers == expected)
        {
            text.truncate(tail_start);
        }
        text
    }

    /// Reads a string starting at `start` (at its opening quote).
    fn read_string(&mut self, start: usize, open: char, role: Role) -> ReadString {
        let closes = closing_quotes(open).unwrap_or(&['"']);
        let mut text = String::new();
        let mut body = start + open.len_utf8();
        // `""key""`, `''text''`: quotes doubled as CSV escapes them.
        let doubled = matches!(open, '"' | '\'')
            && self.src[body..].starts_with(open)
            && !is_closing_quote_context(
                &self.src[body + 1..],
                self.quote_after(body + 1, open),
                role,
            );
        if doubled {
            self.fix(FixKind::DoubledQuote, body);
            body += 1;
        }
        // The last quote taken as inside the string: where it is, and how much text came
        // before it (a value that ran into the next key is cut back to there).
        let mut last_inner: Option<(usize, usize)> = None;
        let mut chars = self.src[body..].char_indices().peekable();
        while let Some((rel, c)) = chars.next() {
            let i = body + rel;
            if c == '\\' {
                match chars.next() {
                    Some((_, e @ ('"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't'))) => {
                        text.push(match e {
                            'b' => '\u{8}',
                            'f' => '\u{c}',
                            'n' => '\n',
                            'r' => '\r',
                            't' => '\t',
                            other => other,
                        });
                    }
                    Some((urel, 'u')) => {
                        let hex_start = body + urel + 1;
                        let hex = self.src.get(hex_start..hex_start + 4);
                        match hex.and_then(|h| u32::from_str_radix(h, 16).ok()) {
                            // Lone surrogates cannot be a char: U+FFFD stands in.
                            Some(code) => {
                                text.push(char::from_u32(code).unwrap_or('\u{FFFD}'));
                                for _ in 0..4 {
                                    chars.next();
                                }
                            }
                            None => {
                                self.fix(FixKind::InvalidEscape, i);
                                text.push_str("\\u");
                            }
                        }
                    }
                    // JavaScript's `\'` is an apostrophe; any other unknown escape keeps
                    // its backslash, as Python and JSON5 read it (`\l` is two characters).
                    Some((_, '\'')) => {
                        self.fix(FixKind::InvalidEscape, i);
                        text.push('\'');
                    }
                    Some((_, other)) => {
                        self.fix(FixKind::InvalidEscape, i);
                        text.push('\\');
                        text.push(other);
                    }
                    None => {}
                }
                continue;
            }
            if closes.contains(&c) {
                let mut after = i + c.len_utf8();
                if doubled && self.src[after..].starts_with(c) {
                    after += c.len_utf8();
                }
                let closing =
                    is_closing_quote_context(&self.src[after..], self.quote_after(after, c), role)
                        || (role == Role::Element
                            && last_inner.is_none()
                            && element_then_bare_phrase(&self.src[after..]));
                if !closing {
                    if open == '"' {
                        self.fix(FixKind::InnerQuote, i);
                    }
                    // An apostrophe inside a single-quoted string ("it's") needs no fix.
                    last_inner = Some((i, text.len()));
                    text.push(c);
                    continue;
                }
                let colon_follows = self.src[after..].trim_start().starts_with(':');
                if role == Role::Element && colon_follows && last_inner.is_some() {
                    // An element that ran on into `"key": …`: the text around it is not
                    // the structure it looks like.
                    return ReadString {
                        text,
                        next: after,
                        cut: false,
                        swallowed: true,
                    };
                }
                // A member's value that runs on into `"next": …` swallowed the next key's
                // opening quote: the value ends before that quote.
                if role == Role::MemberValue
                    && colon_follows
                    && let Some((quote_at, len)) = last_inner
                {
                    self.fixes
                        .pop_if(|f| f.kind == FixKind::InnerQuote && f.at == self.base + quote_at);
                    text.truncate(len);
                    let kept = text.trim_end().trim_end_matches(',').trim_end().len();
                    text.truncate(kept);
                    self.fix(FixKind::UnterminatedString, quote_at);
                    return ReadString {
                        text,
                        next: quote_at,
                        cut: false,
                        swallowed: false,
                    };
                }
                return ReadString {
                    text,
                    next: after,
                    cut: false,
                    swallowed: false,
                };
            }
            if (c as u32) < 0x20 {
                self.fix(FixKind::ControlCharacter, i);
            }
            text.push(c);
        }
        self.fix(FixKind::UnterminatedString, self.src.len());
        ReadString {
            text: self.cut_string_text(text),
            next: self.src.len(),
            cut: true,
            swallowed: false,
        }
    }

    fn word_end(&self, start: usize) -> usize {
        let src = self.src;
        let bytes = src.as_bytes();
        let mut i = start;
        while i < bytes.len() {
            let b = bytes[i];
            if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'+' | b'.' | b'$') {
                i += 1;
            } else if b == b'/' {
                // `1/3` is one word; `//` and `/*` start comments.
                if matches!(bytes.get(i + 1), Some(b'/' | b'*')) {
                    break;
                }
                i += 1;
            } else if b >= 0x80 {
                match src[i..].chars().next() {
                    Some(c) if c.is_alphanumeric() => i += c.len_utf8(),
                    _ => break,
                }
            } else {
                break;
            }
        }
        i
    }

    /// The end of a bare phrase in a value's place (`New York`, `words{in brackets}`):
    /// up to a delimiter, a quote, a line break or a comment, brackets inside it kept
    /// when they balance. Trailing spaces are not part of it.
    fn phrase_end(&self, start: usize) -> usize {
        let src = self.src;
        let mut depth = 0usize;
        let mut end = src.len();
        for (rel, c) in src[start..].char_indices() {
            let i = start + rel;
            match c {
                '{' | '[' | '(' => depth += 1,
                '}' | ']' | ')' if depth > 0 => depth -= 1,
                ',' | '}' | ']' | ')' | '"' | '\n' | ':' if depth == 0 => {
                    end = i;
                    break;
                }
                '/' if depth == 0 && matches!(src[i + 1..].chars().next(), Some('/' | '*')) => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        if depth > 0 {
            return self.word_end(start);
        }
        start + src[start..end].trim_end().len()
    }

    /// The JSON number `word` spells, if it spells one.
    fn number(word: &str) -> Option<Cow<'_, str>> {
        if !word.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '-' | '+' | '.')) {
            return None;
        }
        if serde_json::from_str::<serde_json::Number>(word).is_ok() {
            return Some(Cow::Borrowed(word));
        }
        let hex = word
            .strip_prefix("0x")
            .or_else(|| word.strip_prefix("0X"))
            .and_then(|h| i64::from_str_radix(h, 16).ok());
        let int = word.strip_prefix('+').unwrap_or(word).parse::<i64>().ok();
        if let Some(n) = hex.or(int) {
            return Some(Cow::Owned(n.to_string()));
        }
        let float = |w: &str| {
            w.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .and_then(serde_json::Number::from_f64)
                .map(|n| Cow::Owned(n.to_string()))
        };
        // `1_000` (digit groups, as Python and Rust write them) and `1e` (an exponent the
        // text lost) are the numbers they spell.
        let grouped = word.contains('_')
            && word.split('_').all(|g| {
                g.starts_with(|c: char| c.is_ascii_digit())
                    && g.ends_with(|c: char| c.is_ascii_digit())
            });
        if grouped {
            let plain: String = word.chars().filter(|&c| c != '_').collect();
            return Self::number(&plain).map(|n| Cow::Owned(n.into_owned()));
        }
        let lost_exponent = word.trim_end_matches(['e', 'E', '+', '-']);
        if lost_exponent.len() < word.len() && lost_exponent.ends_with(|c: char| c.is_ascii_digit())
        {
            return Self::number(lost_exponent);
        }
        float(word)
    }

    /// Writes a constant or number (`True`, `0x1F`, `1_000`) as JSON; false, writing
    /// nothing, when the word is neither.
    fn json_word(&mut self, word: &str, at: usize) -> bool {
        let constant = match word {
            "true" | "false" | "null" => {
                self.out.push_str(word);
                return true;
            }
            "True" | "TRUE" => "true",
            "False" | "FALSE" => "false",
            "None" | "none" | "NULL" | "Null" | "nil" | "undefined" | "NaN" | "nan"
            | "Infinity" | "-Infinity" | "+Infinity" | "inf" | "-inf" => "null",
            _ => match Self::number(word) {
                Some(n) => {
                    if n != word {
                        self.fix(FixKind::Number, at);
                    }
                    self.out.push_str(&n);
                    return true;
                }
                None => return false,
            },
        };
        self.fix(FixKind::Constant, at);
        self.out.push_str(constant);
        true
    }

    fn close(&mut self, frame: Frame) {
        match frame {
            Frame::Object => self.out.push('}'),
            Frame::Array | Frame::Set => self.out.push(']'),
            Frame::Tuple {
                start,
                items,
                comma,
            } => {
                if items == 1 && !comma && self.out[start..].starts_with('[') {
                    // `(1)` is 1, as Python reads it.
                    self.out.remove(start);
                } else {
                    self.out.push(']');
                }
            }
        }
    }

    fn open(&mut self, c: char, i: usize) -> Result<(), RepairError> {
        self.begin_item(i);
        if self.stack.len() >= self.max_depth {
            return Err(RepairError::TooDeep(self.max_depth));
        }
        let frame = match c {
            '{' => Frame::Object,
            '[' => Frame::Array,
            _ => {
                self.fix(FixKind::Tuple, i);
                Frame::Tuple {
                    start: self.out.len(),
                    items: 0,
                    comma: false,
                }
            }
        };
        self.stack.push(frame);
        self.out.push(if c == '{' { '{' } else { '[' });
        self.expect = if c == '{' { Expect::Key } else { Expect::Value };
        Ok(())
    }

    fn closer(&mut self, c: char, i: usize) -> Result<(), RepairError> {
        let matches = |f: &Frame| match c {
            '}' => matches!(f, Frame::Object | Frame::Set),
            ']' => *f == Frame::Array,
            _ => matches!(f, Frame::Tuple { .. }),
        };
        let wrong_kind_for_list = c == '}'
            && matches!(self.stack.last(), Some(Frame::Array | Frame::Tuple { .. }))
            && self.stack.contains(&Frame::Object)
            && member_follows(&self.src[i + 1..])
            && self.src[i + 1..].trim_start().starts_with(',');
        if wrong_kind_for_list {
            // `{"k": [1, 2}, "next": …`: the `}` stands for the array's `]`.
            self.fix(FixKind::WrongCloser, i);
            if let Some(at) = self.pending_comma.take() {
                self.fix(FixKind::TrailingComma, at);
            }
            if let Some(top) = self.stack.pop() {
                self.close(top);
            }
            self.end_value();
            return Ok(());
        }
        if c == ']' && self.stack.last() == Some(&Frame::Object) && self.out.ends_with('{') {
            // `[{]`: the `{` closed at once by a `]` opened nothing.
            self.fix(FixKind::EmptyWrongClose, i);
            self.stack.pop();
            self.out.truncate(self.item_start);
            self.pending_comma = None;
        }
        if !self.stack.iter().any(matches) {
            self.fix(FixKind::StrayCloser, i);
            return Ok(());
        }
        if let Some(at) = self.pending_comma.take() {
            self.fix(FixKind::TrailingComma, at);
        }
        if self.expect == Expect::Colon {
            // A key with neither colon nor value before the object closes, mid-text: a
            // value was read as a key, so the members are not the ones written.
            return Err(RepairError::Ambiguous(
                "a member without a colon or value before the object closes",
                self.base + i,
            ));
        } else if self.expect == Expect::Value && self.out.ends_with(':') {
            self.fix(FixKind::MissingValue, i);
            self.out.push_str("null");
        }
        // Close frames the text forgot to close before this one.
        while let Some(top) = self.stack.pop() {
            self.close(top);
            if matches(&top) {
                break;
            }
            self.fix(FixKind::ClosedBracket, i);
        }
        self.end_value();
        Ok(())
    }

    /// A bare word where a key belongs: the key, if a colon follows it (a phrase may be
    /// a key: `first name: "x"`); else words between members, dropped. Returns where
    /// reading goes on.
    fn bare_key(&mut self, i: usize) -> usize {
        let src = self.src;
        // The common case, one word and its colon, needs no phrase scan.
        let word_end = self.word_end(i);
        let end = if src[word_end..].trim_start().starts_with(':') {
            word_end
        } else {
            self.phrase_end(i)
        };
        let end = end.max(i + src[i..].chars().next().map_or(1, char::len_utf8));
        if src[end..].trim_start().starts_with(':') {
            self.begin_item(i);
            self.fix(FixKind::UnquotedKey, i);
            self.push_string(&src[i..end]);
            self.expect = Expect::Colon;
        } else {
            self.fix(FixKind::DroppedWords, i);
            // A quote right after the words closed nothing (`COMMENT" "b": 1`).
            if src[end..].starts_with('"') && !member_follows(&src[end..]) {
                return end + 1;
            }
        }
        end
    }

    /// A bare word where a value belongs: a constant or number, else a phrase up to the
    /// next delimiter. Returns where reading goes on.
    fn bare_value(&mut self, i: usize) -> usize {
        let src = self.src;
        let word_end = self
            .word_end(i)
            .max(i + src[i..].chars().next().map_or(1, char::len_utf8));
        let word = &src[i..word_end];
        if matches!(word, "-" | "+" | "..." | "\u{2026}") {
            // A placeholder or a lone sign is no value: `[1, 2, ...]`.
            self.fix(FixKind::StrayCharacter, i);
            return word_end;
        }
        self.begin_item(i);
        let end = if self.json_word(word, i) {
            word_end
        } else {
            let mut end = self.phrase_end(i).max(word_end);
            if self.stack.last() == Some(&Frame::Object) && src[end..].starts_with(',') {
                // `{"k": ipsum, sic, datum.",}`: a value whose opening quote was lost runs
                // to the quote that closes it, commas and all.
                let ahead = window(&src[end..]);
                let line = &ahead[..ahead.find('\n').unwrap_or(ahead.len())];
                if let Some(q) = line.find(['"', ':', '{', '[', '}', ']']) {
                    let after = line[q + 1..].trim_start();
                    if line[q..].starts_with('"')
                        && (after.is_empty() || after.starts_with([',', '}']))
                    {
                        end += q;
                    }
                }
            }
            self.fix(FixKind::UnquotedString, i);
            self.push_string(&src[i..end]);
            end
        };
        self.end_value();
        // `abcdef",`: the quote after a bare value closes a string whose opening quote
        // was forgotten.
        if src[end..].starts_with('"')
            && matches!(
                src[end + 1..].trim_start().chars().next(),
                None | Some(',' | '}' | ']')
            )
        {
            self.fix(FixKind::StrayCharacter, end);
            return end + 1;
        }
        end
    }

    fn string(&mut self, c: char, i: usize) -> Result<usize, RepairError> {
        let kind = match c {
            '"' => None,
            '\'' => Some(FixKind::SingleQuotes),
            _ => Some(FixKind::SmartQuotes),
        };
        if let Some(kind) = kind {
            self.fix(kind, i);
        }
        if self.expect == Expect::Colon {
            // `{"key" "value"}`, when the second string ends the member; anything else
            // (`{"a" "b" "c": 1}`) has no one reading.
            let body = window(&self.src[i + c.len_utf8()..]);
            let ends_member = closing_quotes(c)
                .and_then(|q| body.find(q))
                .is_some_and(|end| {
                    let quote_len = body[end..].chars().next().map_or(1, char::len_utf8);
                    let after = body[end + quote_len..].trim_start();
                    after.is_empty() || after.starts_with([',', '}'])
                });
            if !ends_member {
                return Err(RepairError::Ambiguous(
                    "a key followed by a string that is neither its value nor a key",
                    self.base + i,
                ));
            }
            self.fix(FixKind::MissingColon, i);
            self.out.push(':');
            self.expect = Expect::Value;
        }
        self.begin_item(i);
        let as_key = self.expect == Expect::Key;
        let role = if as_key {
            Role::Key
        } else if self.stack.last() == Some(&Frame::Object) {
            Role::MemberValue
        } else if self.stack.is_empty() {
            Role::Top
        } else {
            Role::Element
        };
        let read = self.read_string(i, c, role);
        if read.swallowed {
            return Err(RepairError::Ambiguous(
                "an array element that runs on into a key",
                self.base + i,
            ));
        }
        let mut text = read.text;
        if as_key && !self.src[read.next..].trim_start().starts_with(':') {
            // `{"key:value}`, `{"key:"value"}`: the key's closing quote was lost before
            // its colon.
            if let Some((key, value)) = text.split_once(':') {
                let value = value.trim().trim_matches('"');
                if !key.trim().is_empty() && !value.is_empty() {
                    self.fix(FixKind::SplitKey, i);
                    self.push_string(key.trim());
                    self.out.push(':');
                    if !self.json_word(value, i) {
                        self.push_string(value);
                    }
                    self.end_value();
                    return Ok(read.next);
                }
            }
        }
        if as_key {
            // A raw line break at a key's edge is layout, not part of the name.
            let trimmed = text.trim_matches(['\n', '\r', '\t']);
            if trimmed.len() != text.len() {
                self.fix(FixKind::ControlCharacter, i);
                text = trimmed.to_string();
            }
        }
        self.push_string(&text);
        self.cut_empty = read.cut && text.is_empty();
        if as_key {
            self.expect = Expect::Colon;
        } else {
            self.end_value();
        }
        Ok(read.next)
    }

    fn run(mut self) -> Result<(String, Vec<Fix>), RepairError> {
        let src = self.src;
        let mut i = 0;
        while i < src.len() {
            let Some(c) = src[i..].chars().next() else {
                break;
            };
            let len = c.len_utf8();
            if self.expect == Expect::Done {
                let rest = &src[i..];
                if self.out.ends_with('}')
                    && self.early_closers < MAX_EARLY_CLOSERS
                    && super::extract::continues_after_close(rest)
                {
                    self.early_closers += 1;
                    // `{"a": 1}, "b": 2}`: the object goes on.
                    self.fix(FixKind::EarlyCloser, i);
                    self.out.pop();
                    self.stack.push(Frame::Object);
                    self.expect = Expect::CommaOrEnd;
                    continue;
                }
                if !rest.trim().is_empty() {
                    self.fix(FixKind::TrailingText, i);
                }
                break;
            }
            let in_object = self.stack.last() == Some(&Frame::Object);
            match c {
                c if c.is_whitespace() => {
                    i += len;
                }
                '/' if src[i..].starts_with("//") => {
                    self.fix(FixKind::Comment, i);
                    i = src[i..].find('\n').map_or(src.len(), |n| i + n);
                }
                '/' if src[i..].starts_with("/*") => {
                    self.fix(FixKind::Comment, i);
                    i = src[i + 2..].find("*/").map_or(src.len(), |n| i + 2 + n + 2);
                }
                '#' => {
                    self.fix(FixKind::Comment, i);
                    i = src[i..].find('\n').map_or(src.len(), |n| i + n);
                }
                '`' if src[i..].starts_with("```") => {
                    // A fence closing the answer.
                    self.fix(FixKind::TrailingText, i);
                    i += src[i..].len() - src[i..].trim_start_matches('`').len();
                }
                '[' if in_object
                    && matches!(self.expect, Expect::Key | Expect::CommaOrEnd)
                    && self.out.ends_with(']') =>
                {
                    // `{"k": [1], [2]}`: the array goes on.
                    self.fix(FixKind::ContinuedArray, i);
                    self.pending_comma = None;
                    self.out.pop();
                    if !self.out.ends_with('[') {
                        self.pending_comma = Some(i);
                    }
                    self.stack.push(Frame::Array);
                    self.expect = Expect::Value;
                    i += len;
                }
                '{' | '[' | '('
                    if matches!(self.expect, Expect::Value | Expect::CommaOrEnd)
                        && !(self.expect == Expect::CommaOrEnd && in_object) =>
                {
                    self.open(c, i)?;
                    i += len;
                }
                '}' | ']' | ')' => {
                    self.closer(c, i)?;
                    i += len;
                }
                ',' => {
                    if let Some(Frame::Tuple { comma, .. }) = self.stack.last_mut() {
                        *comma = true;
                    }
                    if self.expect == Expect::Value && in_object && self.out.ends_with(':') {
                        // `"key": ,`: the value is missing, not the comma; without the null
                        // the next key would become this one's value.
                        self.fix(FixKind::MissingValue, i);
                        self.out.push_str("null");
                        self.pending_comma = Some(i);
                        self.expect = Expect::Key;
                    } else if self.expect == Expect::Colon
                        && self.out[..self.item_start].ends_with('{')
                    {
                        // `{'a', 'b'}`: the first member has no colon and a comma follows
                        // it — a Python set, whose values become an array.
                        self.fix(FixKind::Set, i);
                        self.out
                            .replace_range(self.item_start - 1..self.item_start, "[");
                        if let Some(top) = self.stack.last_mut() {
                            *top = Frame::Set;
                        }
                        self.pending_comma = Some(i);
                        self.expect = Expect::Value;
                    } else if self.expect == Expect::Colon {
                        // `{"a": 1, "b", "c": 2}`: a key with no value — no one reading.
                        return Err(RepairError::Ambiguous(
                            "a key followed by a comma",
                            self.base + i,
                        ));
                    } else if self.expect == Expect::CommaOrEnd {
                        self.pending_comma = Some(i);
                        self.expect = self.after_comma();
                    } else {
                        self.fix(FixKind::ExtraComma, i);
                    }
                    i += len;
                }
                ':' => {
                    if self.expect == Expect::Colon {
                        self.out.push(':');
                        self.expect = Expect::Value;
                    } else if in_object {
                        // A colon where none belongs in an object: keys and values have
                        // come apart, and any reading of the rest shifts them.
                        return Err(RepairError::Ambiguous(
                            "a colon where a key or value belongs",
                            self.base + i,
                        ));
                    } else if self.expect == Expect::CommaOrEnd
                        && self.stack.last() == Some(&Frame::Array)
                        && self.out.ends_with('"')
                        && self.stack.len() < self.max_depth
                    {
                        // `["key": "value"]`: the string was a key of an object the text
                        // forgot to open.
                        self.fix(FixKind::PairsInArray, i);
                        self.out.insert(self.value_start, '{');
                        self.out.push(':');
                        self.stack.push(Frame::Object);
                        self.expect = Expect::Value;
                    } else {
                        self.fix(FixKind::StrayCharacter, i);
                    }
                    i += len;
                }
                '"' | '\'' | '\u{201C}' | '\u{201D}' | '\u{2018}' | '\u{2019}' => {
                    i = self.string(c, i)?;
                }
                c if c.is_alphanumeric() || matches!(c, '_' | '-' | '+' | '.' | '$') => {
                    if self.expect == Expect::Key
                        || (self.expect == Expect::CommaOrEnd && in_object)
                    {
                        i = self.bare_key(i);
                    } else if self.expect == Expect::Colon {
                        // Two bare words in a row where a colon belongs: keep going as if
                        // the first was the key.
                        self.fix(FixKind::StrayCharacter, i);
                        i = self.word_end(i).max(i + len);
                    } else {
                        i = self.bare_value(i);
                    }
                }
                _ => {
                    self.fix(FixKind::StrayCharacter, i);
                    i += len;
                }
            }
        }
        // The end of the text: finish what was left open (a truncated answer).
        if let Some(at) = self.pending_comma.take() {
            self.fix(FixKind::TrailingComma, at);
        }
        let cut_list_item = self.cut_empty && self.stack.last().is_some_and(|f| f.is_list());
        match self.expect {
            Expect::Colon => {
                // A key the end of the text cut off before its colon: no member to keep.
                self.fix(FixKind::CutMember, src.len());
                self.out.truncate(self.item_start);
            }
            Expect::Value if self.out.ends_with(':') => {
                self.fix(FixKind::MissingValue, src.len());
                self.out.push_str("null");
            }
            Expect::CommaOrEnd if cut_list_item => {
                self.fix(FixKind::CutMember, src.len());
                self.out.truncate(self.item_start);
            }
            _ => {}
        }
        if !self.stack.is_empty() {
            self.fix(FixKind::ClosedBracket, src.len());
        }
        while let Some(top) = self.stack.pop() {
            self.close(top);
        }
        if self.out.is_empty() {
            return Err(RepairError::Empty);
        }
        Ok((self.out, self.fixes))
    }
}

fn last_quotes(src: &str) -> [(char, usize); 4] {
    ['"', '\'', '\u{201D}', '\u{2019}'].map(|q| (q, src.rfind(q).unwrap_or(usize::MAX)))
}

/// Repairs `src` (found at byte `base` of the original) into JSON text.
pub(crate) fn repair(
    src: &str,
    base: usize,
    max_depth: usize,
) -> Result<(String, Vec<Fix>), RepairError> {
    Repairer {
        src,
        base,
        out: String::with_capacity(src.len() + 16),
        fixes: Vec::new(),
        stack: Vec::new(),
        expect: Expect::Value,
        pending_comma: None,
        item_start: 0,
        value_start: 0,
        cut_empty: false,
        last_quotes: last_quotes(src),
        early_closers: 0,
        max_depth,
    }
    .run()
}
