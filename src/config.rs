//! One TOML document that configures every component.
//!
//! Each component owns its section type next to its code (for example
//! [`RetryConfig`] in `resilience/retry.rs`); this module only assembles them into
//! [`GuardrailsConfig`], loads it, and reports problems with the dotted key that caused them.
//! Every section is optional and falls back to its documented defaults.
//!
//! Loading rejects what a typo would otherwise hide: an unknown key anywhere, a value of the
//! wrong type, and a value out of range. Each problem is a [`GuardrailError::Config`] whose
//! `field` is the full dotted key, such as `retry.base`.
//!
//! ```
//! use guardrails::config::GuardrailsConfig;
//! use std::time::Duration;
//!
//! let cfg: GuardrailsConfig = r#"
//!     [retry]
//!     max_retries = 5
//!     initial_delay = "250ms"
//!     jitter = "full"
//! "#.parse()?;
//! assert_eq!(cfg.retry.max_retries, 5);
//! assert_eq!(cfg.retry.initial_delay, Duration::from_millis(250));
//! assert_eq!(cfg.retry.max_delay, Duration::from_secs(60)); // default kept
//!
//! let err = "[retry]\nbase = -1.0".parse::<GuardrailsConfig>().unwrap_err();
//! assert_eq!(err.to_string(), "invalid config: retry.base: must be a finite number >= 1.0, got -1");
//! # Ok::<(), guardrails::GuardrailError>(())
//! ```

use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{GuardrailError, Result};
use std::collections::BTreeMap;

use crate::cache::CacheConfig;
use crate::json_guard::JsonGuardConfig;
use crate::resilience::{BreakerRegistryConfig, BulkheadConfig, RateLimitConfig, RetryConfig};
use crate::resource::ResourceLimits;

/// Largest config file read; a config is a few kilobytes, anything near this is a mistake.
const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// The whole configuration document; one field per section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct GuardrailsConfig {
    /// `[retry]`: see [`RetryConfig`].
    pub retry: RetryConfig,
    /// `[breakers]`: see [`BreakerRegistryConfig`].
    pub breakers: BreakerRegistryConfig,
    /// `[bulkheads.<name>]`: see [`BulkheadConfig`].
    pub bulkheads: BTreeMap<String, BulkheadConfig>,
    /// `[rate_limits.<name>]`: see [`RateLimitConfig`].
    pub rate_limits: BTreeMap<String, RateLimitConfig>,
    /// `[caches.<name>]`: see [`CacheConfig`].
    pub caches: BTreeMap<String, CacheConfig>,
    /// `[resources]`: see [`ResourceLimits`].
    pub resources: ResourceLimits,
    /// `[json_guard]`: see [`JsonGuardConfig`].
    pub json_guard: JsonGuardConfig,
    /// `[pipeline]`: see [`PipelineConfig`](crate::pipeline::PipelineConfig).
    #[cfg(all(feature = "pipeline", unix))]
    pub pipeline: crate::pipeline::PipelineConfig,
    /// `[stages.<name>]`: see [`StageSpec`](crate::pipeline::StageSpec).
    #[cfg(all(feature = "pipeline", unix))]
    pub stages: BTreeMap<String, crate::pipeline::StageSpec>,
    /// `[retry_analytics]`: see
    /// [`RetryAnalyticsConfig`](crate::observe::retry_analytics::RetryAnalyticsConfig).
    pub retry_analytics: crate::observe::retry_analytics::RetryAnalyticsConfig,
    /// `[history]`: see
    /// [`SqliteHistoryConfig`](crate::observe::history::SqliteHistoryConfig).
    #[cfg(feature = "history")]
    pub history: crate::observe::history::SqliteHistoryConfig,
}

impl GuardrailsConfig {
    /// The defaults of every section.
    pub const fn new() -> Self {
        Self {
            retry: RetryConfig::new(),
            breakers: BreakerRegistryConfig {
                defaults: crate::resilience::BreakerConfig::new(),
                per_name: BTreeMap::new(),
            },
            bulkheads: BTreeMap::new(),
            rate_limits: BTreeMap::new(),
            caches: BTreeMap::new(),
            resources: ResourceLimits::new(),
            json_guard: JsonGuardConfig::new(),
            #[cfg(all(feature = "pipeline", unix))]
            pipeline: crate::pipeline::PipelineConfig::new(),
            #[cfg(all(feature = "pipeline", unix))]
            stages: BTreeMap::new(),
            retry_analytics: crate::observe::retry_analytics::RetryAnalyticsConfig::new(),
            #[cfg(feature = "history")]
            history: crate::observe::history::SqliteHistoryConfig::new(),
        }
    }

    /// Sets the `[retry]` section.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryConfig) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the `[breakers]` section.
    #[must_use]
    pub fn with_breakers(mut self, breakers: BreakerRegistryConfig) -> Self {
        self.breakers = breakers;
        self
    }

    /// Reads, parses and validates the TOML file at `path`; the first problem is returned.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        Self::diagnose_path(path).map_err(first_problem)
    }

    /// Parses and validates a TOML document; the first problem is returned.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        Self::diagnose(text).map_err(first_problem)
    }

    /// Parses and validates a TOML document and returns every problem found: all unknown
    /// keys and each section's validation error. A syntax or type error stops parsing, so it
    /// comes alone.
    pub fn diagnose(text: &str) -> std::result::Result<Self, Vec<GuardrailError>> {
        let de = toml::Deserializer::parse(text).map_err(|e| vec![toml_problem(text, ".", &e)])?;
        let mut unknown = Vec::new();
        let mut record = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
        let ignoring = serde_ignored::Deserializer::new(de, &mut record);
        let parsed: std::result::Result<Self, _> = serde_path_to_error::deserialize(ignoring);
        let config = parsed.map_err(|e| {
            let field = e.path().to_string();
            vec![toml_problem(text, &field, e.inner())]
        })?;

        let mut problems: Vec<GuardrailError> = unknown
            .into_iter()
            .map(|key| GuardrailError::config(key, "unknown key"))
            .collect();
        problems.extend(config.problems());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    /// Like [`diagnose`](Self::diagnose), reading the file first. The file is read with a
    /// size cap, so a wrong path to a huge file cannot exhaust memory.
    pub fn diagnose_path(path: impl AsRef<Path>) -> std::result::Result<Self, Vec<GuardrailError>> {
        let path = path.as_ref();
        let text =
            read_text_bounded(path, MAX_CONFIG_BYTES, ".", "config file").map_err(|e| vec![e])?;
        Self::diagnose(&text)
    }

    /// Checks every section's values; the first problem is returned.
    pub fn validate(&self) -> Result<()> {
        match self.problems().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The document as TOML, with every default written out: a starting point to edit.
    pub fn to_toml_string(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| GuardrailError::config(".", e.to_string()))
    }

    fn problems(&self) -> Vec<GuardrailError> {
        let mut sections: Vec<(String, Result<()>)> = vec![
            ("retry".into(), self.retry.validate()),
            ("breakers".into(), self.breakers.validate()),
            ("resources".into(), self.resources.validate()),
            ("json_guard".into(), self.json_guard.validate()),
            ("retry_analytics".into(), self.retry_analytics.validate()),
            #[cfg(feature = "history")]
            ("history".into(), self.history.validate()),
        ];
        for (name, c) in &self.bulkheads {
            sections.push((format!("bulkheads.{name}"), c.validate()));
        }
        for (name, c) in &self.rate_limits {
            sections.push((format!("rate_limits.{name}"), c.validate()));
        }
        for (name, c) in &self.caches {
            sections.push((format!("caches.{name}"), c.validate()));
        }
        #[cfg_attr(not(all(feature = "pipeline", unix)), allow(unused_mut))]
        let mut problems: Vec<GuardrailError> = sections
            .into_iter()
            .filter_map(|(name, result)| result.err().map(|e| in_section(&name, e)))
            .collect();
        // Stage problems already carry their full key (`stages.NAME.…`).
        #[cfg(all(feature = "pipeline", unix))]
        problems.extend(crate::pipeline::plan_problems(&self.stages));
        problems
    }
}

impl FromStr for GuardrailsConfig {
    type Err = GuardrailError;

    fn from_str(s: &str) -> Result<Self> {
        Self::from_toml_str(s)
    }
}

fn first_problem(mut problems: Vec<GuardrailError>) -> GuardrailError {
    if problems.is_empty() {
        GuardrailError::config(".", "invalid configuration")
    } else {
        problems.swap_remove(0)
    }
}

/// Prefixes a section's relative field name with the section's key.
pub(crate) fn in_section(section: &str, err: GuardrailError) -> GuardrailError {
    match err {
        GuardrailError::Config { field, reason } => GuardrailError::Config {
            field: format!("{section}.{field}"),
            reason,
        },
        other => other,
    }
}

/// Parses a TOML document into `T`; an error names the key's dotted path and the line.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    let de = toml::Deserializer::parse(text).map_err(|e| toml_problem(text, ".", &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        toml_problem(text, &field, e.inner())
    })
}

fn toml_problem(text: &str, field: &str, e: &toml::de::Error) -> GuardrailError {
    let mut reason = e.message().trim_end_matches('\n').to_string();
    if let Some(span) = e.span() {
        let line = text
            .get(..span.start)
            .map_or(1, |before| before.matches('\n').count() + 1);
        reason.push_str(&format!(" (line {line})"));
    }
    GuardrailError::config(field, reason)
}

/// Reads a text file of at most `max_bytes`: a larger file is refused with a
/// [`GuardrailError::Config`] naming `field`, the file and `what` it is, before more than `max_bytes + 1`
/// bytes are read, so a config or schema path pointed at `/dev/zero` or a 50 GB log cannot
/// exhaust memory.
///
/// ```
/// use guardrails::config::read_text_bounded;
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("schema.json");
/// std::fs::write(&path, r#"{"type": "object"}"#)?;
/// assert!(read_text_bounded(&path, 1024, "schema", "schema file").is_ok());
/// let err = read_text_bounded(&path, 4, "schema", "schema file").unwrap_err();
/// assert!(err.to_string().contains("larger than 4 bytes, the limit for a schema file"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn read_text_bounded(path: &Path, max_bytes: u64, field: &str, what: &str) -> Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| GuardrailError::io(path, e))?;
    let mut text = String::new();
    file.take(max_bytes.saturating_add(1))
        .read_to_string(&mut text)
        .map_err(|e| GuardrailError::io(path, e))?;
    if text.len() as u64 > max_bytes {
        return Err(GuardrailError::config(
            field,
            format!(
                "{} is larger than {max_bytes} bytes, the limit for a {what}",
                path.display()
            ),
        ));
    }
    Ok(text)
}
