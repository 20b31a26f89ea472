//! Repair of malformed JSON in one linear pass with an explicit stack (no recursion, so
//! nesting cannot overflow the stack), recording every fix it applies.

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
        };
        write!(f, "{what} at byte {}", self.at)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    Object,
    Array,
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
    max_depth: usize,
}

fn is_closing_quote_context(rest: &str) -> bool {
    // After a real closing quote comes a delimiter, the start of another member (a missing
    // comma), a line break, or the end of the text. Anything else means the quote was
    // inside the string: `"he said "hi" to me"`.
    let trimmed = rest.trim_start();
    if rest[..rest.len() - trimmed.len()].contains('\n') {
        return true;
    }
    // A comment after the value (`"v" // note`) also ends the string.
    if trimmed.starts_with("//") || trimmed.starts_with("/*") || trimmed.starts_with('#') {
        return true;
    }
    match trimmed.chars().next() {
        None => true,
        Some(c) => matches!(c, ',' | '}' | ']' | ':' | '"' | '{' | '['),
    }
}

impl<'a> Repairer<'a> {
    fn fix(&mut self, kind: FixKind, at: usize) {
        self.fixes.push(Fix {
            kind,
            at: self.base + at,
        });
    }

    /// Before a value or key: settles commas (writes a pending one, or adds a missing one).
    fn begin_item(&mut self, at: usize) {
        if self.pending_comma.take().is_some() {
            self.out.push(',');
        } else if self.expect == Expect::CommaOrEnd {
            self.fix(FixKind::MissingComma, at);
            self.out.push(',');
            self.expect = match self.stack.last() {
                Some(Frame::Object) => Expect::Key,
                _ => Expect::Value,
            };
        }
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

    /// Reads a string starting at `start` (at its opening quote); returns its decoded text
    /// and the byte just past it.
    fn read_string(&mut self, start: usize, open: char) -> (String, usize) {
        let closes: &[char] = match open {
            '\u{201C}' | '\u{201D}' => &['\u{201D}', '"'],
            '\u{2018}' | '\u{2019}' => &['\u{2019}', '\''],
            '\'' => &['\''],
            _ => &['"'],
        };
        let mut text = String::new();
        let body = start + open.len_utf8();
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
                                text.push('u');
                            }
                        }
                    }
                    Some((_, other)) => {
                        self.fix(FixKind::InvalidEscape, i);
                        text.push(other);
                    }
                    None => {}
                }
                continue;
            }
            if closes.contains(&c) {
                if open == '"' && !is_closing_quote_context(&self.src[i + 1..]) {
                    self.fix(FixKind::InnerQuote, i);
                    text.push('"');
                    continue;
                }
                if open == '\'' && !is_closing_quote_context(&self.src[i + c.len_utf8()..]) {
                    // An apostrophe inside a single-quoted string ("it's").
                    text.push(c);
                    continue;
                }
                return (text, i + c.len_utf8());
            }
            if (c as u32) < 0x20 {
                self.fix(FixKind::ControlCharacter, i);
            }
            text.push(c);
        }
        self.fix(FixKind::UnterminatedString, self.src.len());
        (text, self.src.len())
    }

    fn word_end(&self, start: usize) -> usize {
        self.src[start..]
            .char_indices()
            .find(|&(_, c)| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '+' | '.' | '$')))
            .map_or(self.src.len(), |(i, _)| start + i)
    }

    fn value_word(&mut self, word: &str, at: usize) {
        let valid_number = serde_json::from_str::<serde_json::Number>(word).is_ok();
        match word {
            "true" | "false" | "null" => self.out.push_str(word),
            _ if valid_number => self.out.push_str(word),
            "True" | "TRUE" => {
                self.fix(FixKind::Constant, at);
                self.out.push_str("true");
            }
            "False" | "FALSE" => {
                self.fix(FixKind::Constant, at);
                self.out.push_str("false");
            }
            "None" | "none" | "NULL" | "Null" | "nil" | "undefined" | "NaN" | "nan"
            | "Infinity" | "-Infinity" | "+Infinity" | "inf" | "-inf" => {
                self.fix(FixKind::Constant, at);
                self.out.push_str("null");
            }
            _ => {
                let hex = word
                    .strip_prefix("0x")
                    .or_else(|| word.strip_prefix("0X"))
                    .and_then(|h| i64::from_str_radix(h, 16).ok());
                let int = word.strip_prefix('+').unwrap_or(word).parse::<i64>().ok();
                let float = word
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .and_then(serde_json::Number::from_f64);
                if let Some(n) = hex.or(int) {
                    self.fix(FixKind::Number, at);
                    self.out.push_str(&n.to_string());
                } else if let Some(n) = float {
                    self.fix(FixKind::Number, at);
                    self.out.push_str(&n.to_string());
                } else {
                    self.fix(FixKind::UnquotedString, at);
                    self.push_string(word);
                }
            }
        }
    }

    fn close(&mut self, frame: Frame) {
        self.out.push(match frame {
            Frame::Object => '}',
            Frame::Array => ']',
        });
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
                if !src[i..].trim().is_empty() {
                    self.fix(FixKind::TrailingText, i);
                }
                break;
            }
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
                '{' | '['
                    if matches!(self.expect, Expect::Value | Expect::CommaOrEnd)
                        && !(self.expect == Expect::CommaOrEnd
                            && self.stack.last() == Some(&Frame::Object)) =>
                {
                    self.begin_item(i);
                    if self.stack.len() >= self.max_depth {
                        return Err(RepairError::TooDeep(self.max_depth));
                    }
                    let frame = if c == '{' {
                        Frame::Object
                    } else {
                        Frame::Array
                    };
                    self.stack.push(frame);
                    self.out.push(c);
                    self.expect = if c == '{' { Expect::Key } else { Expect::Value };
                    i += len;
                }
                '}' | ']' => {
                    let frame = if c == '}' {
                        Frame::Object
                    } else {
                        Frame::Array
                    };
                    if !self.stack.contains(&frame) {
                        self.fix(FixKind::StrayCloser, i);
                        i += len;
                        continue;
                    }
                    if let Some(at) = self.pending_comma.take() {
                        self.fix(FixKind::TrailingComma, at);
                    }
                    if self.expect == Expect::Colon {
                        // A key with neither colon nor value before the object closes,
                        // mid-text: a value was read as a key (`{"a": 1/3}` gives key
                        // "3"), so the members are not the ones written.
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
                        if top == frame {
                            break;
                        }
                        self.fix(FixKind::ClosedBracket, i);
                    }
                    self.end_value();
                    i += len;
                }
                ',' => {
                    if self.expect == Expect::Value
                        && self.stack.last() == Some(&Frame::Object)
                        && self.out.ends_with(':')
                    {
                        // `"key": ,`: the value is missing, not the comma; without the null
                        // the next key would become this one's value.
                        self.fix(FixKind::MissingValue, i);
                        self.out.push_str("null");
                        self.end_value();
                        self.pending_comma = Some(i);
                        self.expect = Expect::Key;
                    } else if self.expect == Expect::CommaOrEnd {
                        self.pending_comma = Some(i);
                        self.expect = match self.stack.last() {
                            Some(Frame::Object) => Expect::Key,
                            _ => Expect::Value,
                        };
                    } else {
                        self.fix(FixKind::ExtraComma, i);
                    }
                    i += len;
                }
                ':' => {
                    if self.expect == Expect::Colon {
                        self.out.push(':');
                        self.expect = Expect::Value;
                    } else if self.stack.last() == Some(&Frame::Object) {
                        // A colon where none belongs in an object: keys and values have
                        // come apart, and any reading of the rest shifts them.
                        return Err(RepairError::Ambiguous(
                            "a colon where a key or value belongs",
                            self.base + i,
                        ));
                    } else {
                        self.fix(FixKind::StrayCharacter, i);
                    }
                    i += len;
                }
                '"' | '\'' | '\u{201C}' | '\u{201D}' | '\u{2018}' | '\u{2019}' => {
                    let kind = match c {
                        '"' => None,
                        '\'' => Some(FixKind::SingleQuotes),
                        _ => Some(FixKind::SmartQuotes),
                    };
                    if let Some(kind) = kind {
                        self.fix(kind, i);
                    }
                    self.begin_item(i);
                    let as_key = self.expect == Expect::Key;
                    let (text, next) = self.read_string(i, c);
                    self.push_string(&text);
                    if as_key {
                        self.expect = Expect::Colon;
                    } else {
                        self.end_value();
                    }
                    i = next;
                }
                c if c.is_alphanumeric() || matches!(c, '_' | '-' | '+' | '.' | '$') => {
                    let end = self.word_end(i);
                    let word = &src[i..end];
                    self.begin_item(i);
                    if self.expect == Expect::Key {
                        self.fix(FixKind::UnquotedKey, i);
                        self.push_string(word);
                        self.expect = Expect::Colon;
                    } else if self.expect == Expect::Colon {
                        // Two bare words in a row where a colon belongs: keep going as if
                        // the first was the key.
                        self.fix(FixKind::StrayCharacter, i);
                    } else {
                        self.value_word(word, i);
                        self.end_value();
                    }
                    i = end.max(i + len);
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
        match self.expect {
            Expect::Colon => {
                self.fix(FixKind::MissingValue, src.len());
                self.out.push_str(":null");
            }
            Expect::Value if self.out.ends_with(':') => {
                self.fix(FixKind::MissingValue, src.len());
                self.out.push_str("null");
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
        max_depth,
    }
    .run()
}
