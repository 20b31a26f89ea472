//! The TOML document `guardrails serve --config FILE` reads: the server, the metrics
//! exporter, and each model's health check with an HTTP probe.
//!
//! ```toml
//! [server]
//! bind = "127.0.0.1:9898"
//! details = "when_authorized"           # never | always | when_authorized
//! token_env = "GUARDRAILS_HEALTH_TOKEN" # the bearer token comes from the environment
//! request_timeout = "10s"
//! health_cache_ttl = "1s"
//!
//! [metrics]
//! enabled = true
//!
//! [[models]]
//! name = "qwen"
//! required = true
//! [models.health]                      # ModelHealthConfig
//! probe_timeout = "5s"
//! probe_interval = "30s"
//! [models.probe]
//! url = "http://127.0.0.1:8000/v1/chat/completions"
//! method = "POST"
//! body = '{"model": "qwen", "messages": [{"role": "user", "content": "Answer {\"ok\": true}"}]}'
//! expected_status = 200
//! answer_pointer = "/choices/0/message/content"   # the answer inside the response
//! json_answer = true                               # the JSON guard must accept it
//! # schema = { type = "object", required = ["ok"] } # and this schema (feature `json`)
//! bearer_token_env = "QWEN_API_KEY"
//! [models.breaker]                     # optional: probe failures open it
//! minimum_calls = 3
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{HealthServer, Secret, ServerConfig, ShowDetails};
use crate::error::{ErrorClass, GuardrailError, Result, ResultExt};
use crate::health::{CheckOptions, HealthRegistry};
use crate::observe::model_health::{ModelHealthCheck, ModelHealthConfig};
use crate::observe::prometheus::{PrometheusConfig, PrometheusExporter};
use crate::resilience::breaker::{BreakerConfig, CircuitBreaker};
use crate::resource::HealthStatus;

/// The largest config file read.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The whole document.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// How the server listens.
    pub server: ServerSection,
    /// The Prometheus exporter behind `/metrics`.
    pub metrics: MetricsSection,
    /// One health check per model.
    pub models: Vec<ModelSection>,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    /// Address to bind.
    pub bind: std::net::SocketAddr,
    /// Who sees details.
    pub details: ShowDetails,
    /// Environment variable holding the bearer token.
    pub token_env: Option<String>,
    /// File holding the bearer token (its first line).
    pub token_file: Option<PathBuf>,
    /// Per-request timeout.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Largest request body.
    pub body_limit: usize,
    /// How long a health report is reused.
    #[serde(with = "humantime_serde")]
    pub health_cache_ttl: Duration,
}

impl Default for ServerSection {
    fn default() -> Self {
        let d = ServerConfig::default();
        Self {
            bind: d.bind,
            details: d.details,
            token_env: None,
            token_file: None,
            request_timeout: d.request_timeout,
            body_limit: d.body_limit,
            health_cache_ttl: d.health_cache_ttl,
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSection {
    /// Whether `/metrics` is served (installs the process's recorder).
    pub enabled: bool,
    /// The exporter's setup.
    #[serde(flatten)]
    pub prometheus: PrometheusConfig,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            enabled: true,
            prometheus: PrometheusConfig::default(),
        }
    }
}

/// `[[models]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// The model's name (in `/health/llm?model=NAME` and `/health/{name}`).
    pub name: String,
    /// Whether it counts for `/health/ready`.
    #[serde(default = "yes")]
    pub required: bool,
    /// Thresholds and intervals.
    #[serde(default)]
    pub health: ModelHealthConfig,
    /// The probe; without one only the breaker judges.
    pub probe: Option<HttpProbe>,
    /// A breaker the probe's outcomes feed.
    pub breaker: Option<BreakerConfig>,
}

fn yes() -> bool {
    true
}

/// `[models.probe]`: one HTTP request to the model.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProbe {
    /// Where to send it (`http://` or `https://`).
    pub url: String,
    /// `GET`, `POST` or `PUT`; `POST` when there is a body, else `GET`.
    pub method: Option<String>,
    /// The request body (JSON for chat endpoints).
    pub body: Option<String>,
    /// Extra headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Environment variable holding a bearer token for the model's API.
    pub bearer_token_env: Option<String>,
    /// The status a healthy model answers.
    #[serde(default = "ok_status")]
    pub expected_status: u16,
    /// JSON pointer of the answer's text inside the response (OpenAI:
    /// `/choices/0/message/content`); the whole body without it.
    pub answer_pointer: Option<String>,
    /// Whether the answer must pass the JSON guard.
    #[serde(default)]
    pub json_answer: bool,
    /// A JSON Schema the answer must match (feature `json`; implies `json_answer`).
    pub schema: Option<serde_json::Value>,
    /// The most response bytes read.
    #[serde(default = "max_body")]
    pub max_body: u64,
}

fn ok_status() -> u16 {
    200
}

fn max_body() -> u64 {
    1024 * 1024
}

impl std::fmt::Debug for HttpProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Headers may carry credentials: only their names are shown.
        f.debug_struct("HttpProbe")
            .field("url", &self.url)
            .field("method", &self.method)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("expected_status", &self.expected_status)
            .field("answer_pointer", &self.answer_pointer)
            .finish_non_exhaustive()
    }
}

impl ServeConfig {
    /// Parses `text`.
    ///
    /// # Errors
    /// [`GuardrailError::Config`] naming the key.
    pub fn from_toml(text: &str) -> Result<Self> {
        crate::config::parse_toml(text)
    }

    /// Reads and parses `path` (at most 1 MiB).
    ///
    /// # Errors
    /// [`GuardrailError::Io`] when it cannot be read, [`GuardrailError::Config`] when it is
    /// invalid.
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::config::read_text_bounded(path, MAX_CONFIG_BYTES, ".", "serve config")?;
        Self::from_toml(&text).operation(format!("read {}", path.display()))
    }

    /// The server this document describes, its models registered as health checks too, and
    /// — with `[metrics] enabled` — the process's Prometheus recorder installed.
    ///
    /// # Errors
    /// [`GuardrailError::Config`] for a missing token variable, a duplicate model, a bad
    /// probe or schema; the exporter's errors.
    pub fn build(&self) -> Result<HealthServer> {
        let token = self.token()?;
        let config = ServerConfig {
            bind: self.server.bind,
            details: self.server.details,
            token,
            request_timeout: self.server.request_timeout,
            body_limit: self.server.body_limit,
            health_cache_ttl: self.server.health_cache_ttl,
        };
        let mut registry = HealthRegistry::new();
        let mut checks = Vec::new();
        for (i, m) in self.models.iter().enumerate() {
            if self.models[..i].iter().any(|o| o.name == m.name) {
                return Err(GuardrailError::config(
                    format!("models[{i}].name"),
                    format!("model {:?} is named twice", m.name),
                ));
            }
            let check = Arc::new(model_check(i, m)?);
            let for_registry = Arc::clone(&check);
            let options = CheckOptions {
                required: m.required,
                // The probe's own timeout bounds the check; a little more lets it report.
                timeout: m.health.probe_timeout + Duration::from_secs(1),
            };
            registry.register(m.name.clone(), options, move || {
                let h = for_registry.check();
                if h.healthy {
                    Ok(HealthStatus::Healthy)
                } else {
                    Err(GuardrailError::external_with_class(
                        std::io::Error::other(format!(
                            "{}{}",
                            h.reason.unwrap_or("unhealthy"),
                            h.detail.map(|d| format!(": {d}")).unwrap_or_default()
                        )),
                        ErrorClass::Recoverable,
                    ))
                }
            });
            checks.push(check);
        }
        let mut server = HealthServer::new(config, registry)?;
        for check in checks {
            server = server.with_model(check);
        }
        if self.metrics.enabled {
            let exporter = PrometheusExporter::install(self.metrics.prometheus.clone())?;
            server = server.with_metrics(Arc::new(exporter));
        }
        Ok(server)
    }

    fn token(&self) -> Result<Option<Secret>> {
        if let Some(var) = &self.server.token_env {
            return match std::env::var(var) {
                Ok(t) if !t.trim().is_empty() => Ok(Some(Secret::new(t.trim()))),
                _ => Err(GuardrailError::config(
                    "server.token_env",
                    format!("environment variable {var} is not set or empty"),
                )),
            };
        }
        if let Some(path) = &self.server.token_file {
            let text = std::fs::read_to_string(path).map_err(|e| GuardrailError::io(path, e))?;
            let line = text.lines().next().unwrap_or("").trim();
            if line.is_empty() {
                return Err(GuardrailError::config(
                    "server.token_file",
                    format!("{} is empty", path.display()),
                ));
            }
            return Ok(Some(Secret::new(line)));
        }
        Ok(None)
    }
}

fn model_check(i: usize, m: &ModelSection) -> Result<ModelHealthCheck> {
    let mut check = ModelHealthCheck::new(m.name.clone(), m.health.clone())?;
    let breaker = match &m.breaker {
        Some(config) => {
            let b = Arc::new(CircuitBreaker::new(m.name.clone(), config.clone())?);
            check = check.with_breaker(Arc::clone(&b));
            Some(b)
        }
        None => None,
    };
    let Some(probe) = &m.probe else {
        return Ok(check);
    };
    let field = |k: &str| format!("models[{i}].probe.{k}");
    if !(probe.url.starts_with("http://") || probe.url.starts_with("https://")) {
        return Err(GuardrailError::config(
            field("url"),
            "must start with http:// or https://",
        ));
    }
    let method = probe
        .method
        .clone()
        .unwrap_or_else(|| if probe.body.is_some() { "POST" } else { "GET" }.into())
        .to_ascii_uppercase();
    if !matches!(method.as_str(), "GET" | "POST" | "PUT") {
        return Err(GuardrailError::config(
            field("method"),
            format!("{method:?} is not GET, POST or PUT"),
        ));
    }
    let bearer = match &probe.bearer_token_env {
        Some(var) => match std::env::var(var) {
            Ok(t) if !t.is_empty() => Some(Secret::new(t)),
            _ => {
                return Err(GuardrailError::config(
                    field("bearer_token_env"),
                    format!("environment variable {var} is not set or empty"),
                ));
            }
        },
        None => None,
    };
    if probe.json_answer || probe.schema.is_some() {
        check = check.with_json_guard(Arc::new(answer_guard(i, probe)?));
    }
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(m.health.probe_timeout))
            .http_status_as_error(false)
            .build(),
    );
    let probe = Arc::new(probe.clone());
    let model = m.name.clone();
    let run = move || http_probe(&agent, &model, &method, &probe, bearer.as_ref());
    Ok(match breaker {
        Some(b) => check.with_probe(move || b.call(&run)),
        None => check.with_probe(run),
    })
}

fn answer_guard(i: usize, probe: &HttpProbe) -> Result<crate::json_guard::JsonHardGuard> {
    let guard = crate::json_guard::JsonHardGuard::new(Default::default())?;
    match &probe.schema {
        None => Ok(guard),
        #[cfg(feature = "json")]
        Some(schema) => guard.with_schema(schema),
        #[cfg(not(feature = "json"))]
        Some(_) => {
            let _ = guard;
            Err(GuardrailError::config(
                format!("models[{i}].probe.schema"),
                "a schema needs the `json` feature",
            ))
        }
    }
    .map_err(|e| match e {
        GuardrailError::Config { reason, .. } => {
            GuardrailError::config(format!("models[{i}].probe.schema"), reason)
        }
        other => other,
    })
}

fn probe_error(model: &str, what: String) -> GuardrailError {
    GuardrailError::external_with_class(
        std::io::Error::other(format!("probe of {model}: {what}")),
        ErrorClass::Retryable,
    )
}

fn http_probe(
    agent: &ureq::Agent,
    model: &str,
    method: &str,
    probe: &HttpProbe,
    bearer: Option<&Secret>,
) -> Result<String> {
    let answered = {
        let body = probe.body.clone().unwrap_or_default();
        macro_rules! with_headers {
            ($req:expr) => {{
                let mut req = $req;
                for (k, v) in &probe.headers {
                    req = req.header(k.as_str(), v.as_str());
                }
                if let Some(token) = bearer {
                    req = req.header("authorization", format!("Bearer {}", token.0));
                }
                req
            }};
        }
        match method {
            "GET" => with_headers!(agent.get(&probe.url)).call(),
            "PUT" => with_headers!(agent.put(&probe.url))
                .header("content-type", "application/json")
                .send(body),
            _ => with_headers!(agent.post(&probe.url))
                .header("content-type", "application/json")
                .send(body),
        }
    };
    // ureq's errors name the URL, never the headers, so no token reaches the message.
    let mut response = answered.map_err(|e| probe_error(model, e.to_string()))?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(probe.max_body)
        .read_to_string()
        .map_err(|e| probe_error(model, format!("reading the answer: {e}")))?;
    if status != probe.expected_status {
        return Err(probe_error(
            model,
            format!("status {status}, expected {}", probe.expected_status),
        ));
    }
    let Some(pointer) = &probe.answer_pointer else {
        return Ok(text);
    };
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| probe_error(model, format!("the response is not JSON: {e}")))?;
    match value.pointer(pointer) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(other) => Ok(other.to_string()),
        None => Err(probe_error(
            model,
            format!("the response has nothing at {pointer}"),
        )),
    }
}
