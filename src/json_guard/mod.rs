//! `JsonHardGuard`: structured LLM output that is always valid or explicitly a fallback.
//!
//! One attempt runs: size limit → extraction (a ```json fence, else the first balanced
//! object or array in the prose, else the whole text) → strict parse → if that fails and
//! repair is allowed, [repair](Fix) recording every fix → depth limit → JSON Schema
//! validation (feature `json`, compiled once) with every error's instance path → typed
//! deserialization into the caller's `T`.
//!
//! Valid JSON is never changed: the strict parse comes first, and repair only runs on text
//! that does not parse.
//!
//! [`run`](JsonHardGuard::run) drives a generator (the caller's closure that asks the
//! model): a transport error is retried with exponential backoff and jitter and never fed
//! back into the prompt; a parse or schema failure is re-asked at once with [`Feedback`]
//! naming the errors and their paths; output the caller marks as truncated is reported as
//! such in the feedback so the caller can raise its budget. When every attempt fails, the
//! fallback (if enabled) is returned with `fallback_used`, else
//! [`GuardrailError::JsonGuard`] with every attempt's errors.
//!
//! ```
//! use guardrails::json_guard::{JsonGuardConfig, JsonHardGuard};
//! use serde::Deserialize;
//!
//! #[derive(Debug, Deserialize, PartialEq)]
//! struct Verdict { label: String, score: f64 }
//!
//! let guard = JsonHardGuard::new(JsonGuardConfig::new())?;
//! let answer = "Sure! Here it is:\n```json\n{'label': 'spam', score: 0.93,}\n```";
//! let parsed = guard.parse::<Verdict>(answer)?;
//! assert_eq!(parsed.value, Verdict { label: "spam".into(), score: 0.93 });
//! assert_eq!(parsed.fixes.len(), 4); // two single-quoted strings, a bare key, a trailing comma
//! # Ok::<(), guardrails::GuardrailError>(())
//! ```

mod extract;
mod repair;

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::backoff::Backoff;
use crate::clock::{Clock, SharedClock, SystemClock};
use crate::error::{GuardrailError, Result};

pub use repair::{Fix, FixKind};

/// The cap on one transport backoff delay.
const MAX_TRANSPORT_DELAY: Duration = Duration::from_secs(60);

/// The `[json_guard]` section.
///
/// | key | default | meaning |
/// |---|---|---|
/// | `enabled` | `true` | off: text is parsed strictly, no repair, no retries |
/// | `max_retries` | `3` | attempts after the first |
/// | `backoff_base` | `"1s"` | first delay after a transport error, doubled each time |
/// | `max_jitter` | `"500ms"` | up to this much random time added to each delay (the key `jitter` is still read) |
/// | `fallback_enabled` | `true` | return the fallback when every attempt fails |
/// | `strict_schema` | `true` | schema errors fail the attempt (off: they are recorded, the value is kept) |
/// | `repair` | `true` | repair malformed JSON (the CLI's `--strict` turns it off) |
/// | `max_bytes` | `1048576` | larger outputs are refused before parsing |
/// | `max_depth` | `64` | deeper nesting is refused (at most 127, what serde_json parses) |
/// | `exact` | `false` | only one JSON text passes: no extraction, no repair, no trailing text |
/// | `all_values` | `false` | several JSON values in one answer come back as one array (off: the first) |
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct JsonGuardConfig {
    /// Whether the guard repairs and retries at all.
    pub enabled: bool,
    /// Attempts after the first.
    pub max_retries: u32,
    /// First delay after a transport error.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    /// Largest random addition to a delay. (Not [`Jitter`](crate::backoff::Jitter), the
    /// retry loop's mode: this one only adds time.)
    #[serde(with = "humantime_serde", alias = "jitter")]
    pub max_jitter: Duration,
    /// Whether the fallback is used when every attempt fails.
    pub fallback_enabled: bool,
    /// Whether schema errors fail an attempt.
    pub strict_schema: bool,
    /// Whether malformed JSON is repaired.
    pub repair: bool,
    /// Size limit of one output, bytes.
    pub max_bytes: usize,
    /// Nesting limit (at most [`MAX_DEPTH`]).
    pub max_depth: usize,
    /// Exact mode: the text must be one JSON text and nothing else (whitespace aside) —
    /// no extraction from fences or prose, no repair, no trailing text (RFC 8259's
    /// grammar, as JSONTestSuite's y_/n_ files test it). Off by default.
    pub exact: bool,
    /// Several values: an answer holding more than one JSON value (`{"a": 1} {"b": 2}`,
    /// two fenced blocks) gives them all, in order, as one array, as json_repair does;
    /// empty objects and arrays among them are dropped, and one value stays itself. Off by
    /// default: the first value is the answer and the rest is dropped text.
    pub all_values: bool,
}

impl JsonGuardConfig {
    /// The defaults in the table.
    pub const fn new() -> Self {
        Self {
            enabled: true,
            max_retries: 3,
            backoff_base: Duration::from_secs(1),
            max_jitter: Duration::from_millis(500),
            fallback_enabled: true,
            strict_schema: true,
            repair: true,
            max_bytes: 1 << 20,
            max_depth: 64,
            exact: false,
            all_values: false,
        }
    }

    /// Turns exact mode on or off.
    #[must_use]
    pub const fn with_exact(mut self, exact: bool) -> Self {
        self.exact = exact;
        self
    }

    /// Gives every JSON value in an answer, as one array, instead of the first.
    #[must_use]
    pub const fn with_all_values(mut self, all_values: bool) -> Self {
        self.all_values = all_values;
        self
    }

    /// Turns repair on or off.
    #[must_use]
    pub const fn with_repair(mut self, repair: bool) -> Self {
        self.repair = repair;
        self
    }

    /// Sets the retries.
    #[must_use]
    pub const fn with_max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Sets the size limit.
    #[must_use]
    pub const fn with_max_bytes(mut self, n: usize) -> Self {
        self.max_bytes = n;
        self
    }

    /// Sets the nesting limit.
    #[must_use]
    pub const fn with_max_depth(mut self, n: usize) -> Self {
        self.max_depth = n;
        self
    }

    /// Sets the fallback switch.
    #[must_use]
    pub const fn with_fallback(mut self, enabled: bool) -> Self {
        self.fallback_enabled = enabled;
        self
    }

    /// Rejects zero limits.
    pub fn validate(&self) -> Result<()> {
        if self.max_bytes == 0 {
            return Err(GuardrailError::config("max_bytes", "must be at least 1"));
        }
        // serde_json parses at most 127 levels (its limit of 128 counts the value it is
        // in); a deeper limit would call valid deep documents malformed, so it is refused.
        if self.max_depth == 0 || self.max_depth > MAX_DEPTH {
            return Err(GuardrailError::config(
                "max_depth",
                format!(
                    "must be in 1..={MAX_DEPTH} (the deepest serde_json parses), got {}",
                    self.max_depth
                ),
            ));
        }
        Ok(())
    }
}

/// The deepest nesting `max_depth` may allow: what serde_json's recursion limit parses.
pub const MAX_DEPTH: usize = 127;

impl Default for JsonGuardConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// What went wrong in one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProblemKind {
    /// The generator failed (network, rate limit…): retried with backoff, never fed back.
    Transport,
    /// The output was larger than `max_bytes`.
    TooLarge,
    /// Nothing in the output could be read as JSON.
    NoJson,
    /// The JSON was malformed (and repair was off or did not help).
    Parse,
    /// Nested deeper than `max_depth`.
    TooDeep,
    /// The value did not match the schema.
    Schema,
    /// The value did not fit the caller's type.
    Type,
    /// The caller said the output was cut off (e.g. finish reason "length").
    Truncated,
}

/// One problem of one attempt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    /// Attempt number, 1-based.
    pub attempt: u32,
    /// What kind of problem.
    pub kind: ProblemKind,
    /// Where in the value (a JSON pointer such as `/items/2/price`), for schema and type
    /// problems.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.path {
            Some(p) if !p.is_empty() => write!(f, "{p}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

/// A parsed value and the fixes that made it parse.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed<T> {
    /// The value. As a [`Value`], a number follows serde_json: an integer past 64 bits
    /// becomes the nearest `f64` and an integer `-0` is `0`; [`json`](Self::json) keeps it
    /// as written, and a typed [`parse`](JsonHardGuard::parse) is read from that text, so a
    /// `u128`, an `i128` or a decimal type gets the exact number.
    pub value: T,
    /// The JSON text the value was read from, every number exactly as written: valid input
    /// as it came (trimmed, or the part extracted from prose or a code fence), repaired input
    /// as repaired. [`to_compact_json`](Self::to_compact_json) drops its whitespace.
    pub json: String,
    /// Every repair applied (empty for valid JSON).
    pub fixes: Vec<Fix>,
    /// Schema problems kept because `strict_schema` is off.
    pub warnings: Vec<Problem>,
}

impl<T> Parsed<T> {
    /// [`json`](Self::json) without whitespace between tokens: the document as one line,
    /// numbers, key order and string escapes exactly as in the text.
    pub fn to_compact_json(&self) -> String {
        let mut out = String::with_capacity(self.json.len());
        let (mut in_string, mut escaped) = (false, false);
        for c in self.json.chars() {
            if in_string {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_string = false;
                }
            } else if matches!(c, ' ' | '\t' | '\n' | '\r') {
                continue;
            } else if c == '"' {
                in_string = true;
            }
            out.push(c);
        }
        out
    }
}

/// One output of the caller's generator.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Generation {
    /// The model's text.
    pub text: String,
    /// Whether it was cut off (finish reason "length" or similar).
    pub truncated: bool,
}

impl From<String> for Generation {
    fn from(text: String) -> Self {
        Self {
            text,
            truncated: false,
        }
    }
}

impl From<&str> for Generation {
    fn from(text: &str) -> Self {
        Self::from(text.to_string())
    }
}

/// What the generator is told about the previous attempt, for the re-ask prompt.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Feedback {
    /// The attempt about to run, 1-based.
    pub attempt: u32,
    /// The previous output's parse and schema problems (transport errors are never here).
    pub problems: Vec<Problem>,
    /// The previous output was cut off: raise the output budget rather than ask again.
    pub truncated: bool,
}

impl Feedback {
    /// A concise message for the re-ask prompt; empty on the first attempt.
    pub fn message(&self) -> String {
        if self.problems.is_empty() && !self.truncated {
            return String::new();
        }
        let mut m =
            String::from("Your previous answer was not valid JSON for the requested format.");
        if self.truncated {
            m.push_str(" It was cut off before the end; answer more briefly.");
        }
        for p in self.problems.iter().take(10) {
            m.push_str("\n- ");
            m.push_str(&p.to_string());
        }
        m.push_str("\nAnswer with the corrected JSON only.");
        m
    }
}

/// The result of [`JsonHardGuard::run`]: data, not only a value.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome<T> {
    /// The value (the fallback when `fallback_used`).
    pub value: T,
    /// Attempts made.
    pub attempts: u32,
    /// Fixes applied to the accepted output.
    pub fixes: Vec<Fix>,
    /// Whether the value is the fallback.
    pub fallback_used: bool,
    /// Every problem of every attempt (schema warnings of the accepted output included).
    pub errors: Vec<Problem>,
}

/// The guard; see the [module docs](self). Cheap to share: the schema is compiled once.
#[derive(Clone)]
pub struct JsonHardGuard {
    config: JsonGuardConfig,
    #[cfg(feature = "json")]
    schema: Option<Arc<jsonschema::Validator>>,
    clock: SharedClock,
    seed: Option<u64>,
}

impl std::fmt::Debug for JsonHardGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonHardGuard")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl JsonHardGuard {
    /// A guard without a schema; `config` is validated.
    pub fn new(config: JsonGuardConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            #[cfg(feature = "json")]
            schema: None,
            clock: Arc::new(SystemClock),
            seed: None,
        })
    }

    /// Validates every value against `schema` (compiled here, once).
    #[cfg(feature = "json")]
    #[cfg_attr(docsrs, doc(cfg(feature = "json")))]
    pub fn with_schema(mut self, schema: &Value) -> Result<Self> {
        let validator = jsonschema::validator_for(schema)
            .map_err(|e| GuardrailError::config("schema", e.to_string()))?;
        self.schema = Some(Arc::new(validator));
        Ok(self)
    }

    /// Sleeps between transport retries on `clock` (a [`ManualClock`](crate::ManualClock)
    /// in tests).
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Makes the jitter reproducible.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &JsonGuardConfig {
        &self.config
    }

    /// One attempt on `text`, as a JSON value.
    pub fn parse_value(&self, text: &str) -> std::result::Result<Parsed<Value>, Vec<Problem>> {
        self.attempt_value(text, 1)
    }

    /// One attempt on `text`, deserialized into `T`. Problems become
    /// [`GuardrailError::JsonGuard`].
    pub fn parse<T: DeserializeOwned>(&self, text: &str) -> Result<Parsed<T>> {
        self.attempt::<T>(text, 1)
            .map_err(|problems| json_error(1, &problems))
    }

    fn attempt<T: DeserializeOwned>(
        &self,
        text: &str,
        attempt: u32,
    ) -> std::result::Result<Parsed<T>, Vec<Problem>> {
        let parsed = self.attempt_value(text, attempt)?;
        // From the text, not the `Value`: the text has every number exactly.
        let mut de = serde_json::Deserializer::from_str(&parsed.json);
        match serde_path_to_error::deserialize::<_, T>(&mut de) {
            Ok(value) => Ok(Parsed {
                value,
                json: parsed.json,
                fixes: parsed.fixes,
                warnings: parsed.warnings,
            }),
            Err(e) => Err(vec![Problem {
                attempt,
                kind: ProblemKind::Type,
                path: Some(json_pointer(e.path())),
                message: e.inner().to_string(),
            }]),
        }
    }

    fn attempt_value(
        &self,
        text: &str,
        attempt: u32,
    ) -> std::result::Result<Parsed<Value>, Vec<Problem>> {
        let result = self.judge_value(text, attempt);
        let decision = match &result {
            Ok(parsed) if !parsed.fixes.is_empty() => Some(crate::events::Decision::JsonRepaired),
            Err(_) => Some(crate::events::Decision::ValidationFailed {
                check: "json_answer",
            }),
            Ok(_) => None,
        };
        if let Some(decision) = decision {
            crate::events::emit(|| crate::events::GuardEvent {
                guard: crate::events::GuardKind::JsonGuard,
                name: "json_guard",
                decision,
            });
        }
        result
    }

    fn judge_value(
        &self,
        text: &str,
        attempt: u32,
    ) -> std::result::Result<Parsed<Value>, Vec<Problem>> {
        let problem = |kind, message: String| {
            vec![Problem {
                attempt,
                kind,
                path: None,
                message,
            }]
        };
        if text.len() > self.config.max_bytes {
            return Err(problem(
                ProblemKind::TooLarge,
                format!(
                    "output of {} bytes is over the limit of {}",
                    text.len(),
                    self.config.max_bytes
                ),
            ));
        }
        let too_deep = || {
            problem(
                ProblemKind::TooDeep,
                format!("nesting deeper than {}", self.config.max_depth),
            )
        };
        // Valid JSON is taken as it is: repair never sees it, and no scan runs before the
        // parse (serde_json refuses nesting past 128 levels on its own).
        // Exact mode trims only what JSON calls whitespace (serde_json skips it itself);
        // `str::trim` would also take a form feed or a no-break space.
        let whole = if self.config.exact {
            text.trim_matches([' ', '\t', '\n', '\r'])
        } else {
            text.trim()
        };
        let (value, json, fixes) = match serde_json::from_str::<Value>(whole) {
            Ok(v) if value_depth(&v) > self.config.max_depth => return Err(too_deep()),
            Ok(v) => (v, whole.to_string(), Vec::new()),
            Err(e) if self.config.exact => {
                return Err(problem(
                    ProblemKind::Parse,
                    format!("not exactly one JSON text (exact mode): {e}"),
                ));
            }
            Err(whole_error) => {
                let candidate = extract::extract(text);
                if candidate.depth > self.config.max_depth {
                    return Err(too_deep());
                }
                let first =
                    self.read_candidate(&candidate, Some(whole_error), whole.len(), &problem)?;
                if self.config.all_values {
                    self.further_values(text, candidate.end, first, &problem)?
                } else {
                    first
                }
            }
        };
        let schema_problems = self.schema_problems(&value, attempt);
        if !schema_problems.is_empty() && self.config.strict_schema {
            return Err(schema_problems);
        }
        Ok(Parsed {
            value,
            json,
            fixes,
            warnings: schema_problems,
        })
    }

    /// With `all_values`: the values after the first (from `from` on), each in a fence or
    /// brackets, read as the first was, and all of them as one array.
    fn further_values(
        &self,
        text: &str,
        mut from: usize,
        first: (Value, String, Vec<Fix>),
        problem: &dyn Fn(ProblemKind, String) -> Vec<Problem>,
    ) -> std::result::Result<(Value, String, Vec<Fix>), Vec<Problem>> {
        let mut values = vec![first];
        let fences: Vec<usize> = text.match_indices("```").map(|(at, _)| at).collect();
        let mut next_fence = 0;
        while from < text.len() {
            // Each value costs what it reads: a fence is looked for only when one comes
            // before the next bracket.
            let bracket = text[from..]
                .find(['{', '['])
                .map_or(text.len(), |at| from + at);
            while fences.get(next_fence).is_some_and(|&at| at < from) {
                next_fence += 1;
            }
            let fence = fences.get(next_fence).is_some_and(|&at| at < bracket);
            let mut next = extract::extract_from(&text[from..], fence, false);
            // Prose after the last value (`… 42`) is no value.
            if !(next.fenced || next.text.starts_with(['{', '['])) || next.text.trim().is_empty() {
                break;
            }
            next.offset += from;
            next.end += from;
            if next.depth > self.config.max_depth {
                return Err(problem(
                    ProblemKind::TooDeep,
                    format!("nesting deeper than {}", self.config.max_depth),
                ));
            }
            values.push(self.read_candidate(&next, None, 0, problem)?);
            if next.end <= from {
                break;
            }
            from = next.end;
        }
        // `[]{"key": "value"}`: an empty container beside other values is a placeholder.
        let empty = |v: &Value| {
            v.as_array().is_some_and(Vec::is_empty)
                || v.as_object().is_some_and(serde_json::Map::is_empty)
        };
        if values.iter().any(|(v, _, _)| !empty(v)) {
            values.retain(|(v, _, _)| !empty(v));
        } else {
            values.truncate(1);
        }
        if values.len() == 1
            && let Some(only) = values.pop()
        {
            return Ok(only);
        }
        let json = format!(
            "[{}]",
            values
                .iter()
                .map(|(_, j, _)| j.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        let fixes = values
            .iter_mut()
            .flat_map(|(_, _, f)| std::mem::take(f))
            .collect();
        let value = Value::Array(values.into_iter().map(|(v, _, _)| v).collect());
        Ok((value, json, fixes))
    }

    /// The value of an answer that is not valid JSON as a whole: the JSON extracted from it,
    /// else that JSON repaired. `whole_error` is the whole answer's parse error, reused when
    /// the candidate is the whole answer (`whole_len` long).
    fn read_candidate(
        &self,
        candidate: &extract::Candidate<'_>,
        whole_error: Option<serde_json::Error>,
        whole_len: usize,
        problem: &dyn Fn(ProblemKind, String) -> Vec<Problem>,
    ) -> std::result::Result<(Value, String, Vec<Fix>), Vec<Problem>> {
        // Parse the extracted candidate only when extraction found something smaller.
        let strict = match whole_error {
            Some(e) if candidate.text.len() == whole_len => Err(e),
            _ => serde_json::from_str::<Value>(candidate.text),
        };
        Ok(match strict {
            Ok(v) => (v, candidate.text.to_string(), Vec::new()),
            Err(e) if !(self.config.repair && self.config.enabled) => {
                return Err(problem(ProblemKind::Parse, format!("malformed JSON: {e}")));
            }
            // Valid JSON whose number no f64 holds (1E400): repair would make it a string,
            // a different value, so it is refused instead (RFC 8259 §6 lets a reader limit
            // the range). serde_json says so only in its message.
            Err(e) if e.to_string().starts_with("number out of range") => {
                return Err(problem(
                    ProblemKind::Parse,
                    format!("a number is beyond the range of a 64-bit float: {e}"),
                ));
            }
            // Prose without a bracket or a quote holds no JSON to repair: a bare word would
            // otherwise "repair" into a string.
            Err(_)
                if !(candidate
                    .text
                    .starts_with(['{', '[', '"', '\'', '\u{201C}', '\u{2018}'])
                    || is_tuple(candidate.text)) =>
            {
                return Err(problem(
                    ProblemKind::NoJson,
                    "no JSON found in the output".into(),
                ));
            }
            Err(_) => {
                let (repaired, fixes) =
                    repair::repair(candidate.text, candidate.offset, self.config.max_depth)
                        .map_err(|e| match e {
                            repair::RepairError::TooDeep(d) => {
                                problem(ProblemKind::TooDeep, format!("nesting deeper than {d}"))
                            }
                            repair::RepairError::Empty => {
                                problem(ProblemKind::NoJson, "no JSON found in the output".into())
                            }
                            repair::RepairError::Ambiguous(what, at) => problem(
                                ProblemKind::Parse,
                                format!(
                                    "malformed JSON, not repaired: {what} at byte {at}; any repair would have to invent or move members"
                                ),
                            ),
                        })?;
                match serde_json::from_str::<Value>(&repaired) {
                    Ok(v) => (v, repaired, fixes),
                    Err(e) => {
                        return Err(problem(
                            ProblemKind::Parse,
                            format!("malformed JSON, not repairable: {e}"),
                        ));
                    }
                }
            }
        })
    }

    #[cfg(feature = "json")]
    fn schema_problems(&self, value: &Value, attempt: u32) -> Vec<Problem> {
        match &self.schema {
            // The common case, a valid value, takes the validator's short path; the errors
            // are collected only when there are some.
            Some(v) if v.is_valid(value) => Vec::new(),
            Some(v) => v
                .iter_errors(value)
                .map(|e| Problem {
                    attempt,
                    kind: ProblemKind::Schema,
                    path: Some(e.instance_path().to_string()),
                    message: e.to_string(),
                })
                .collect(),
            None => Vec::new(),
        }
    }

    #[cfg(not(feature = "json"))]
    fn schema_problems(&self, _value: &Value, _attempt: u32) -> Vec<Problem> {
        Vec::new()
    }

    fn transport_delay(&self, transport_failures: u32, rng: &mut fastrand::Rng) -> Duration {
        let schedule = Backoff::new(self.config.backoff_base, MAX_TRANSPORT_DELAY, 2.0);
        let delay = schedule.delay(transport_failures.saturating_sub(1));
        crate::backoff::with_added_jitter(delay, self.config.max_jitter, rng)
    }

    /// Runs `generator` until its output passes, the attempts run out, and then falls back
    /// or fails; see the [module docs](self).
    pub fn run<T, G>(&self, generator: G) -> Result<Outcome<T>>
    where
        T: DeserializeOwned,
        G: FnMut(&Feedback) -> Result<Generation>,
    {
        self.run_inner(generator, None::<fn() -> T>)
    }

    /// [`run`](Self::run) with a fallback for when every attempt fails (used if
    /// `fallback_enabled`).
    pub fn run_with_fallback<T, G, F>(&self, generator: G, fallback: F) -> Result<Outcome<T>>
    where
        T: DeserializeOwned,
        G: FnMut(&Feedback) -> Result<Generation>,
        F: FnOnce() -> T,
    {
        self.run_inner(generator, Some(fallback))
    }

    fn attempts_allowed(&self) -> u32 {
        if self.config.enabled {
            self.config.max_retries.saturating_add(1)
        } else {
            1
        }
    }

    fn run_inner<T, G, F>(&self, mut generator: G, fallback: Option<F>) -> Result<Outcome<T>>
    where
        T: DeserializeOwned,
        G: FnMut(&Feedback) -> Result<Generation>,
        F: FnOnce() -> T,
    {
        let mut run = Run::new(self);
        for attempt in 1..=run.allowed {
            run.feedback.attempt = attempt;
            let step = match generator(&run.feedback) {
                Ok(g) => run.output(attempt, &g),
                Err(e) => run.transport_failed(attempt, &e),
            };
            match step {
                Step::Done(outcome) => return Ok(outcome),
                Step::Wait(delay) => self.clock.sleep(delay),
                Step::Next => {}
            }
        }
        run.give_up(fallback)
    }

    /// Async [`run`](Self::run): `generator` returns a future; transport backoff waits with
    /// the guard's clock's [`sleep_async`](crate::Clock::sleep_async) (tokio's timer on the
    /// default clock; a [`ManualClock`](crate::ManualClock) advances instead).
    #[cfg(feature = "async")]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub async fn run_async<T, G, Fut>(&self, generator: G) -> Result<Outcome<T>>
    where
        T: DeserializeOwned,
        G: FnMut(Feedback) -> Fut,
        Fut: std::future::Future<Output = Result<Generation>>,
    {
        self.run_async_inner(generator, None::<fn() -> T>).await
    }

    /// Async [`run_with_fallback`](Self::run_with_fallback).
    #[cfg(feature = "async")]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub async fn run_async_with_fallback<T, G, Fut, F>(
        &self,
        generator: G,
        fallback: F,
    ) -> Result<Outcome<T>>
    where
        T: DeserializeOwned,
        G: FnMut(Feedback) -> Fut,
        Fut: std::future::Future<Output = Result<Generation>>,
        F: FnOnce() -> T,
    {
        self.run_async_inner(generator, Some(fallback)).await
    }

    #[cfg(feature = "async")]
    async fn run_async_inner<T, G, Fut, F>(
        &self,
        mut generator: G,
        fallback: Option<F>,
    ) -> Result<Outcome<T>>
    where
        T: DeserializeOwned,
        G: FnMut(Feedback) -> Fut,
        Fut: std::future::Future<Output = Result<Generation>>,
        F: FnOnce() -> T,
    {
        let mut run = Run::new(self);
        for attempt in 1..=run.allowed {
            run.feedback.attempt = attempt;
            let step = match generator(run.feedback.clone()).await {
                Ok(g) => run.output(attempt, &g),
                Err(e) => run.transport_failed(attempt, &e),
            };
            match step {
                Step::Done(outcome) => return Ok(outcome),
                Step::Wait(delay) => self.clock.sleep_async(delay).await,
                Step::Next => {}
            }
        }
        run.give_up(fallback)
    }
}

/// What a run does after one attempt.
enum Step<T> {
    Done(Outcome<T>),
    Wait(Duration),
    Next,
}

/// The bookkeeping of one `run`, shared by the sync and async loops.
struct Run<'g> {
    guard: &'g JsonHardGuard,
    allowed: u32,
    errors: Vec<Problem>,
    feedback: Feedback,
    transport_failures: u32,
    rng: fastrand::Rng,
}

impl<'g> Run<'g> {
    fn new(guard: &'g JsonHardGuard) -> Self {
        Self {
            guard,
            allowed: guard.attempts_allowed(),
            errors: Vec::new(),
            feedback: Feedback {
                attempt: 1,
                ..Feedback::default()
            },
            transport_failures: 0,
            rng: guard
                .seed
                .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed),
        }
    }

    fn transport_failed<T>(&mut self, attempt: u32, e: &GuardrailError) -> Step<T> {
        self.transport_failures += 1;
        tracing::warn!(attempt, error = %e.report(), "json guard: generator failed");
        self.errors.push(Problem {
            attempt,
            kind: ProblemKind::Transport,
            path: None,
            message: e.report().to_string(),
        });
        // The feedback of the last parse failure stands: a transport error is not the
        // model's fault and is never put into the prompt.
        if attempt < self.allowed {
            Step::Wait(
                self.guard
                    .transport_delay(self.transport_failures, &mut self.rng),
            )
        } else {
            Step::Next
        }
    }

    fn output<T: DeserializeOwned>(&mut self, attempt: u32, generation: &Generation) -> Step<T> {
        match self.guard.attempt::<T>(&generation.text, attempt) {
            Ok(parsed) => {
                self.errors.extend(parsed.warnings);
                Step::Done(Outcome {
                    value: parsed.value,
                    attempts: attempt,
                    fixes: parsed.fixes,
                    fallback_used: false,
                    errors: std::mem::take(&mut self.errors),
                })
            }
            Err(mut problems) => {
                if generation.truncated {
                    problems.insert(
                        0,
                        Problem {
                            attempt,
                            kind: ProblemKind::Truncated,
                            path: None,
                            message: "the output was cut off before the end".into(),
                        },
                    );
                }
                for p in &problems {
                    tracing::warn!(attempt, kind = ?p.kind, problem = %p, "json guard: attempt failed");
                }
                self.feedback.truncated = generation.truncated;
                self.feedback.problems = problems.clone();
                self.errors.extend(problems);
                Step::Next
            }
        }
    }

    fn give_up<T, F: FnOnce() -> T>(self, fallback: Option<F>) -> Result<Outcome<T>> {
        crate::events::emit(|| crate::events::GuardEvent {
            guard: crate::events::GuardKind::JsonGuard,
            name: "json_guard",
            decision: crate::events::Decision::JsonFallback,
        });
        match fallback {
            Some(f) if self.guard.config.fallback_enabled => {
                tracing::error!(
                    attempts = self.allowed,
                    problems = self.errors.len(),
                    "json guard: every attempt failed, using the fallback"
                );
                Ok(Outcome {
                    value: f(),
                    attempts: self.allowed,
                    fixes: Vec::new(),
                    fallback_used: true,
                    errors: self.errors,
                })
            }
            _ => {
                tracing::error!(
                    attempts = self.allowed,
                    problems = self.errors.len(),
                    "json guard: every attempt failed"
                );
                Err(json_error(self.allowed, &self.errors))
            }
        }
    }
}

/// A serde path (`items[2].price`) as a JSON pointer (`/items/2/price`), the form schema
/// errors use.
fn json_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        out.push('/');
        match segment {
            Segment::Seq { index } => out.push_str(&index.to_string()),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                out.push_str(&key.replace('~', "~0").replace('/', "~1"))
            }
            Segment::Unknown => out.push('?'),
        }
    }
    out
}

fn json_error(attempts: u32, problems: &[Problem]) -> GuardrailError {
    GuardrailError::JsonGuard {
        attempts,
        problems: problems
            .iter()
            .map(|p| format!("attempt {}: {p}", p.attempt))
            .collect(),
    }
}

/// Whether `text` is a Python tuple of values (`(1, 2)`, `("a",)`), not prose in
/// parentheses: what follows the opening parentheses starts a value.
fn is_tuple(text: &str) -> bool {
    text.strip_prefix('(').is_some_and(|rest| {
        rest.trim_start_matches(|c: char| c == '(' || c.is_whitespace())
            .starts_with(|c: char| {
                c.is_ascii_digit() || matches!(c, '"' | '\'' | '-' | '[' | '{' | ')')
            })
    })
}

/// How deeply arrays and objects nest in `v` (a scalar is 0), the measure the extraction
/// scan takes of text.
fn value_depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(value_depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(value_depth).max().unwrap_or(0),
        _ => 0,
    }
}
