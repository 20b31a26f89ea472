//! The HTTP health server (feature `http`, axum): what Kubernetes probes, a canary gate and
//! Prometheus ask a guarded process.
//!
//! | endpoint | answers | 503 when |
//! |---|---|---|
//! | `GET /health` | every check of the [`HealthRegistry`], aggregated | the aggregate is unhealthy or critical |
//! | `GET /health/{name}` | one check (404 with the list for an unknown name) | that check is unhealthy or critical |
//! | `GET /health/live` | liveness: the process answers (no checks) | never |
//! | `GET /health/ready` | readiness: the required checks | a required check is unhealthy or critical |
//! | `GET /health/llm?model=NAME\|all` | per-model health ([`ModelHealthCheck`]) | the model (any model, for `all`) is unhealthy |
//! | `GET /metrics` | Prometheus text format (404 without an exporter) | — |
//!
//! Statuses follow Spring Boot Actuator: `UP`, `DEGRADED` (answers 200), `DOWN` (503).
//! Details — error messages, latencies, error rates — are shown per
//! [`ServerConfig::details`]: never, always, or only to a request that presents the bearer
//! token (the default; without a token configured, never). The token is compared in
//! constant time and never logged or printed by `Debug`.
//!
//! Health results are cached for [`ServerConfig::health_cache_ttl`] and refreshed by one
//! request at a time, so a probe storm runs the checks at most once per interval. Each
//! request has a timeout and a body limit; the server binds `127.0.0.1` unless told
//! otherwise.
//!
//! ```
//! use std::time::Duration;
//! use guardrails::health::{CheckOptions, HealthRegistry};
//! use guardrails::resource::HealthStatus;
//! use guardrails::server::{HealthServer, ServerConfig};
//!
//! let mut registry = HealthRegistry::new();
//! registry.register("db", CheckOptions::required(Duration::from_secs(1)), || Ok(HealthStatus::Healthy));
//! let config = ServerConfig { bind: "127.0.0.1:0".parse().unwrap(), ..ServerConfig::default() };
//! let server = HealthServer::new(config, registry)?.start_background()?;
//! let addr = server.local_addr();
//! let answer = std::process::Command::new("curl").args(["-s", &format!("http://{addr}/health/ready")]).output();
//! # drop(answer); // curl may be missing; the tests talk HTTP themselves
//! server.shutdown();
//! # Ok::<(), guardrails::GuardrailError>(())
//! ```

pub mod config;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{GuardrailError, Result};
use crate::health::{CheckResult, HealthRegistry, RegistryReport};
use crate::observe::model_health::{ModelHealth, ModelHealthCheck};
use crate::observe::prometheus::PrometheusExporter;
use crate::resource::HealthStatus;

/// Who sees details (messages, figures) in health answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShowDetails {
    /// Nobody: statuses only.
    Never,
    /// Everybody (a server only trusted clients reach).
    Always,
    /// Requests with `Authorization: Bearer <token>`.
    #[default]
    WhenAuthorized,
}

/// A bearer token; `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps `token`.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// Constant-time comparison (the length is not hidden).
    fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How the server listens and answers.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind; `127.0.0.1:9898` by default (loopback only).
    pub bind: SocketAddr,
    /// Who sees details.
    pub details: ShowDetails,
    /// The bearer token that unlocks details (with `WhenAuthorized`).
    pub token: Option<Secret>,
    /// How long one request may take before it is answered 503.
    pub request_timeout: Duration,
    /// The most bytes a request body may have.
    pub body_limit: usize,
    /// How long a health report is reused.
    pub health_cache_ttl: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 9898)),
            details: ShowDetails::WhenAuthorized,
            token: None,
            request_timeout: Duration::from_secs(10),
            body_limit: 16 * 1024,
            health_cache_ttl: Duration::from_secs(1),
        }
    }
}

struct AppState {
    config: ServerConfig,
    registry: Arc<HealthRegistry>,
    models: BTreeMap<String, Arc<ModelHealthCheck>>,
    exporter: Option<Arc<PrometheusExporter>>,
    /// The cached report; the async mutex makes one request refresh while others wait.
    report: tokio::sync::Mutex<Option<(Instant, Arc<RegistryReport>)>>,
}

/// The health server; see the [module docs](self).
pub struct HealthServer {
    config: ServerConfig,
    registry: Arc<HealthRegistry>,
    models: BTreeMap<String, Arc<ModelHealthCheck>>,
    exporter: Option<Arc<PrometheusExporter>>,
}

impl std::fmt::Debug for HealthServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthServer")
            .field("config", &self.config)
            .field("models", &self.models.keys().collect::<Vec<_>>())
            .field("metrics", &self.exporter.is_some())
            .finish_non_exhaustive()
    }
}

impl HealthServer {
    /// A server answering for `registry`.
    ///
    /// # Errors
    /// [`GuardrailError::Config`] for a zero timeout or body limit.
    pub fn new(config: ServerConfig, registry: HealthRegistry) -> Result<Self> {
        if config.request_timeout.is_zero() || config.body_limit == 0 {
            return Err(GuardrailError::config(
                "server.request_timeout",
                "request_timeout and body_limit must be above zero",
            ));
        }
        Ok(Self {
            config,
            registry: Arc::new(registry),
            models: BTreeMap::new(),
            exporter: None,
        })
    }

    /// Answers `/health/llm` for `check`'s model too.
    pub fn with_model(mut self, check: Arc<ModelHealthCheck>) -> Self {
        self.models.insert(check.model().to_string(), check);
        self
    }

    /// Serves `/metrics` from `exporter`.
    pub fn with_metrics(mut self, exporter: Arc<PrometheusExporter>) -> Self {
        self.exporter = Some(exporter);
        self
    }

    /// The axum router, to nest into an application's own server (each router caches its
    /// own health report).
    pub fn router(&self) -> Router {
        let state = Arc::new(AppState {
            config: self.config.clone(),
            registry: Arc::clone(&self.registry),
            models: self.models.clone(),
            exporter: self.exporter.clone(),
            report: tokio::sync::Mutex::new(None),
        });
        let timeout = state.config.request_timeout;
        Router::new()
            .route("/health", get(health))
            .route("/health/live", get(live))
            .route("/health/ready", get(ready))
            .route("/health/llm", get(llm))
            .route("/health/{name}", get(one))
            .route("/metrics", get(metrics_text))
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(state.config.body_limit))
            .layer(middleware::from_fn(move |req: Request, next: Next| {
                request_timeout(timeout, req, next)
            }))
            .with_state(state)
    }

    /// Binds and serves on the current tokio runtime until `shutdown` completes.
    ///
    /// # Errors
    /// [`GuardrailError::Io`] when the address cannot be bound or serving fails.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let listener = tokio::net::TcpListener::bind(self.config.bind)
            .await
            .map_err(|source| GuardrailError::Io { path: None, source })?;
        tracing::info!(addr = %self.config.bind, "health server listening");
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|source| GuardrailError::Io { path: None, source })
    }

    /// Binds now and serves on a runtime of its own, on a thread of its own, until the
    /// handle is shut down or dropped (for programs that do not run tokio).
    ///
    /// # Errors
    /// [`GuardrailError::Io`] when the runtime cannot start or the address cannot be bound.
    pub fn start_background(self) -> Result<BackgroundServer> {
        let io = |source| GuardrailError::Io { path: None, source };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("guardrails-http")
            .enable_all()
            .build()
            .map_err(io)?;
        let std_listener = std::net::TcpListener::bind(self.config.bind).map_err(io)?;
        std_listener.set_nonblocking(true).map_err(io)?;
        let local_addr = std_listener.local_addr().map_err(io)?;
        let listener = {
            let _enter = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener).map_err(io)?
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let router = self.router();
        let thread = std::thread::Builder::new()
            .name("guardrails-http-serve".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let served = axum::serve(listener, router)
                        .with_graceful_shutdown(async move {
                            let _ = stopped.await;
                        })
                        .await;
                    if let Err(e) = served {
                        tracing::error!(error = %e, "health server stopped");
                    }
                });
            })
            .map_err(io)?;
        tracing::info!(addr = %local_addr, "health server listening");
        Ok(BackgroundServer {
            local_addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// A server running on its own thread; dropping it shuts it down.
#[derive(Debug)]
pub struct BackgroundServer {
    local_addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BackgroundServer {
    /// The address it listens on (the port chosen, for a bind to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets requests in flight finish, and joins the thread.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for BackgroundServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

async fn request_timeout(limit: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": "request timed out", "timeout_ms": limit.as_millis() as u64 }),
        ),
    }
}

fn error_response(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, json!({ "error": "not found" }))
}

impl AppState {
    fn details_allowed(&self, headers: &HeaderMap) -> bool {
        match self.config.details {
            ShowDetails::Never => false,
            ShowDetails::Always => true,
            ShowDetails::WhenAuthorized => {
                let Some(token) = &self.config.token else {
                    return false;
                };
                headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .is_some_and(|given| token.matches(given.trim()))
            }
        }
    }

    async fn report(&self) -> Arc<RegistryReport> {
        let mut cached = self.report.lock().await;
        if let Some((at, report)) = cached.as_ref()
            && at.elapsed() < self.config.health_cache_ttl
        {
            return Arc::clone(report);
        }
        let registry = Arc::clone(&self.registry);
        // Checks block (they run on the crate's deadline pool and wait for it).
        let report = tokio::task::spawn_blocking(move || registry.run())
            .await
            .unwrap_or_else(|e| RegistryReport {
                status: HealthStatus::Critical,
                checks: vec![CheckResult {
                    name: "health".into(),
                    status: HealthStatus::Critical,
                    required: true,
                    latency: Duration::ZERO,
                    error: Some(format!("the checks did not finish: {e}")),
                    last_error: None,
                }],
            });
        let report = Arc::new(report);
        *cached = Some((Instant::now(), Arc::clone(&report)));
        report
    }
}

/// Actuator's word for a status.
fn word(status: HealthStatus) -> &'static str {
    match status {
        HealthStatus::Healthy => "UP",
        HealthStatus::Degraded => "DEGRADED",
        HealthStatus::Unhealthy | HealthStatus::Critical => "DOWN",
    }
}

fn code(status: HealthStatus) -> StatusCode {
    if status >= HealthStatus::Unhealthy {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

fn component(c: &CheckResult, details: bool) -> Value {
    let mut v = json!({ "status": word(c.status), "required": c.required });
    if details {
        v["details"] = json!({
            "health": c.status.to_string(),
            "latency_ms": c.latency.as_secs_f64() * 1e3,
            "error": c.error,
            "last_error": c.last_error,
        });
    }
    v
}

fn aggregate_body(status: HealthStatus, checks: &[&CheckResult], details: bool) -> Value {
    let components: serde_json::Map<String, Value> = checks
        .iter()
        .map(|c| (c.name.clone(), component(c, details)))
        .collect();
    json!({ "status": word(status), "components": components })
}

async fn health(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let details = state.details_allowed(&headers);
    let report = state.report().await;
    let checks: Vec<&CheckResult> = report.checks.iter().collect();
    (
        code(report.status),
        axum::Json(aggregate_body(report.status, &checks, details)),
    )
        .into_response()
}

async fn live() -> Response {
    (StatusCode::OK, axum::Json(json!({ "status": "UP" }))).into_response()
}

async fn ready(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let details = state.details_allowed(&headers);
    let report = state.report().await;
    let required: Vec<&CheckResult> = report.checks.iter().filter(|c| c.required).collect();
    let status = required
        .iter()
        .map(|c| c.status)
        .max()
        .unwrap_or(HealthStatus::Healthy);
    (
        code(status),
        axum::Json(aggregate_body(status, &required, details)),
    )
        .into_response()
}

async fn one(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let details = state.details_allowed(&headers);
    let report = state.report().await;
    match report.checks.iter().find(|c| c.name == name) {
        Some(c) => (code(c.status), axum::Json(component(c, details))).into_response(),
        None => error_response(
            StatusCode::NOT_FOUND,
            json!({
                "error": "unknown check",
                "checks": report.checks.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            }),
        ),
    }
}

#[derive(Debug, Deserialize)]
struct LlmQuery {
    model: Option<String>,
}

fn model_body(h: &ModelHealth, details: bool) -> Value {
    let mut v = json!({
        "model": h.model,
        "status": h.status,
        "circuit_state": h.circuit_state,
        "reason": h.reason,
    });
    if details {
        v["latency_ms"] = json!(h.latency_ms);
        v["detail"] = json!(h.detail);
        v["error_rate"] = json!(h.error_rate);
        v["calls"] = json!(h.calls);
        v["probe_cached"] = json!(h.probe_cached);
    }
    v
}

async fn llm(
    State(state): State<Arc<AppState>>,
    Query(query): Query<LlmQuery>,
    headers: HeaderMap,
) -> Response {
    let details = state.details_allowed(&headers);
    let wanted = query.model.unwrap_or_else(|| "all".into());
    let checks: Vec<Arc<ModelHealthCheck>> = if wanted == "all" {
        state.models.values().cloned().collect()
    } else {
        match state.models.get(&wanted) {
            Some(c) => vec![Arc::clone(c)],
            None => {
                return error_response(
                    StatusCode::NOT_FOUND,
                    json!({
                        "error": "unknown model",
                        "models": state.models.keys().collect::<Vec<_>>(),
                    }),
                );
            }
        }
    };
    // Probes block (each runs under its own timeout on the deadline pool); all models are
    // judged at once.
    let judged = checks
        .into_iter()
        .map(|c| tokio::task::spawn_blocking(move || c.check()));
    let mut results = Vec::new();
    for j in judged {
        match j.await {
            Ok(h) => results.push(h),
            Err(e) => {
                return error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({ "error": format!("model check did not finish: {e}") }),
                );
            }
        }
    }
    let healthy = results.iter().all(|h| h.healthy);
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = if wanted == "all" {
        json!({
            "status": if healthy { "healthy" } else { "unhealthy" },
            "models": results.iter().map(|h| model_body(h, details)).collect::<Vec<_>>(),
        })
    } else {
        results
            .first()
            .map(|h| model_body(h, details))
            .unwrap_or(Value::Null)
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let Some(exporter) = state.exporter.clone() else {
        return error_response(
            StatusCode::NOT_FOUND,
            json!({ "error": "no metrics exporter configured" }),
        );
    };
    let text = match tokio::task::spawn_blocking(move || exporter.render()).await {
        Ok(text) => text,
        Err(e) => {
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({ "error": format!("rendering the metrics did not finish: {e}") }),
            );
        }
    };
    let mut response = (StatusCode::OK, text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
