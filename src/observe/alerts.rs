//! Alert hooks: rules that turn guard events into alerts, and the sinks that deliver them
//! (a log line, a metric, a closure, an Alertmanager-shaped webhook).
//!
//! A rule says which events alert, at what severity, and how long the same alert
//! (rule + guard name) stays quiet after it fired (its cool-down); a rule may also say
//! which event resolves it (the breaker that closes again), which sends a `resolved`
//! alert at once. [`AlertHooks::default_rules`] holds the rules most pipelines want.
//!
//! Sinks run on the thread of the guard that decided, so every sink must be quick: the
//! webhook sink (feature `http`, [`WebhookSink`]) only puts the alert on a bounded queue
//! that a thread of its own drains — with a timeout per request, retries with backoff,
//! and, when the queue is full, the alert dropped and counted. The guarded call is never
//! blocked or failed by an alert.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use guardrails::observe::alerts::{AlertHooks, AlertSink};
//! use guardrails::resilience::{BreakerConfig, CircuitBreaker};
//!
//! let fired = Arc::new(Mutex::new(Vec::new()));
//! let into = Arc::clone(&fired);
//! let hooks = Arc::new(
//!     AlertHooks::new(AlertHooks::default_rules())
//!         .with_sink(AlertSink::log())
//!         .with_sink(AlertSink::event(move |a| into.lock().unwrap().push(a.name.clone()))),
//! );
//! let _subscription = hooks.subscribe();
//! let breaker = CircuitBreaker::new("doc-alerts", BreakerConfig::new().with_minimum_calls(1))?;
//! let _ = breaker.call(|| -> guardrails::Result<()> { Err(std::io::Error::other("down").into()) });
//! assert_eq!(*fired.lock().unwrap(), ["CircuitBreakerOpen"]);
//! # Ok::<(), guardrails::GuardrailError>(())
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use hashbrown::HashMap;
use parking_lot::Mutex;
use serde::Serialize;

use crate::clock::{SharedClock, SystemClock};
use crate::events::{self, Decision, GuardEvent, GuardKind, Subscription};

/// How bad an alert is (the `severity` label receivers route on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Needs attention soon.
    Warning,
    /// Page someone.
    Critical,
}

impl Severity {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

/// Whether an alert starts or ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    /// It fired.
    Firing,
    /// What fired it is over.
    Resolved,
}

/// One alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// The rule's name (`alertname`).
    pub name: String,
    /// Firing or resolved.
    pub status: AlertStatus,
    /// Its severity.
    pub severity: Severity,
    /// `alertname`, `severity`, `guard`, `name` and the decision's own labels.
    pub labels: BTreeMap<String, String>,
    /// `summary` and `description`.
    pub annotations: BTreeMap<String, String>,
    /// When it fired.
    pub starts_at: SystemTime,
    /// When it resolved.
    pub ends_at: Option<SystemTime>,
    /// A stable hash of the labels (16 hex digits), as Alertmanager's.
    pub fingerprint: String,
}

type Matcher = Arc<dyn Fn(&GuardEvent<'_>) -> bool + Send + Sync>;

/// Which events alert, at what severity, with what cool-down.
#[derive(Clone)]
pub struct AlertRule {
    name: String,
    severity: Severity,
    fires: Matcher,
    resolves: Option<Matcher>,
    cooldown: Duration,
    summary: String,
}

impl std::fmt::Debug for AlertRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertRule")
            .field("name", &self.name)
            .field("severity", &self.severity)
            .field("cooldown", &self.cooldown)
            .finish_non_exhaustive()
    }
}

impl AlertRule {
    /// A rule named `name` (the alert's `alertname`) that fires on events `fires` accepts;
    /// cool-down 5 minutes.
    pub fn new<F>(name: impl Into<String>, severity: Severity, fires: F) -> Self
    where
        F: Fn(&GuardEvent<'_>) -> bool + Send + Sync + 'static,
    {
        let name = name.into();
        Self {
            summary: name.clone(),
            name,
            severity,
            fires: Arc::new(fires),
            resolves: None,
            cooldown: Duration::from_secs(300),
        }
    }

    /// Events `resolves` accepts end an active alert of this rule (same guard name).
    pub fn resolved_by<F>(mut self, resolves: F) -> Self
    where
        F: Fn(&GuardEvent<'_>) -> bool + Send + Sync + 'static,
    {
        self.resolves = Some(Arc::new(resolves));
        self
    }

    /// How long the same alert stays quiet after it fired.
    pub fn cooldown(mut self, cooldown: Duration) -> Self {
        self.cooldown = cooldown;
        self
    }

    /// The `summary` annotation (`{name}` is replaced by the guard's name).
    pub fn summary(mut self, summary: impl Into<String>) -> Self {
        self.summary = summary.into();
        self
    }

    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

type EventSink = Arc<dyn Fn(&Alert) + Send + Sync>;

/// Where alerts go.
#[derive(Clone)]
pub enum AlertSink {
    /// A `tracing` event: ERROR for critical, WARN for warning, INFO for info.
    Log,
    /// The counter `guardrails_alerts_total{alertname, severity, status}` (feature `metrics`;
    /// without it, nothing).
    Metric,
    /// A closure (it runs on the guard's thread: keep it short).
    Event(EventSink),
    /// The Alertmanager-shaped webhook (feature `http`).
    #[cfg(feature = "http")]
    Webhook(Arc<WebhookSink>),
}

impl std::fmt::Debug for AlertSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Log => f.write_str("Log"),
            Self::Metric => f.write_str("Metric"),
            Self::Event(_) => f.write_str("Event(..)"),
            #[cfg(feature = "http")]
            Self::Webhook(w) => f.debug_tuple("Webhook").field(w).finish(),
        }
    }
}

impl AlertSink {
    /// A log sink.
    pub fn log() -> Self {
        Self::Log
    }

    /// A metric sink.
    pub fn metric() -> Self {
        Self::Metric
    }

    /// A closure sink.
    pub fn event(f: impl Fn(&Alert) + Send + Sync + 'static) -> Self {
        Self::Event(Arc::new(f))
    }

    fn deliver(&self, alert: &Alert) {
        match self {
            Self::Log => {
                let summary = alert.annotations.get("summary").map_or("", String::as_str);
                match (alert.status, alert.severity) {
                    (AlertStatus::Resolved, _) | (_, Severity::Info) => {
                        tracing::info!(alert = %alert.name, status = ?alert.status, summary, "alert")
                    }
                    (_, Severity::Warning) => {
                        tracing::warn!(alert = %alert.name, summary, "alert")
                    }
                    (_, Severity::Critical) => {
                        tracing::error!(alert = %alert.name, summary, "alert")
                    }
                }
            }
            Self::Metric => {
                #[cfg(feature = "metrics")]
                metrics::counter!(
                    super::metrics::ALERTS,
                    "alertname" => alert.name.clone(),
                    "severity" => alert.severity.as_str(),
                    "status" => match alert.status {
                        AlertStatus::Firing => "firing",
                        AlertStatus::Resolved => "resolved",
                    }
                )
                .increment(1);
            }
            Self::Event(f) => f(alert),
            #[cfg(feature = "http")]
            Self::Webhook(w) => w.enqueue(alert.clone()),
        }
    }
}

/// The most distinct (rule, guard name) pairs remembered for cool-downs; the oldest half is
/// forgotten past it, so the memory stays bounded whatever the guards are named.
const MAX_REMEMBERED: usize = 10_000;

/// Rules, sinks and the cool-down memory; see the [module docs](self).
pub struct AlertHooks {
    rules: Vec<AlertRule>,
    sinks: Vec<AlertSink>,
    /// (rule index, guard name) → when it last fired; present = active.
    last: Mutex<HashMap<(usize, String), Instant>>,
    clock: SharedClock,
    fired: AtomicU64,
    suppressed: AtomicU64,
}

impl std::fmt::Debug for AlertHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertHooks")
            .field("rules", &self.rules)
            .field("sinks", &self.sinks)
            .field("fired", &self.fired())
            .field("suppressed", &self.suppressed())
            .finish_non_exhaustive()
    }
}

impl AlertHooks {
    /// Hooks with `rules` and no sink yet.
    pub fn new(rules: Vec<AlertRule>) -> Self {
        Self {
            rules,
            sinks: Vec::new(),
            last: Mutex::new(HashMap::new()),
            clock: Arc::new(SystemClock),
            fired: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// The rules most pipelines want: a breaker opened (critical, resolved when it closes),
    /// retries exhausted, a resource limit hit, the JSON guard's fallback served (warning),
    /// a mandatory stage gate failed and a stale fence refused (critical).
    pub fn default_rules() -> Vec<AlertRule> {
        vec![
            AlertRule::new("CircuitBreakerOpen", Severity::Critical, |e| {
                matches!(
                    e.decision,
                    Decision::BreakerTransition {
                        to: "open" | "forced_open",
                        ..
                    }
                )
            })
            .resolved_by(|e| matches!(e.decision, Decision::BreakerTransition { to: "closed", .. }))
            .summary("circuit breaker {name} opened"),
            AlertRule::new("RetriesExhausted", Severity::Warning, |e| {
                matches!(e.decision, Decision::RetriesExhausted { .. })
            })
            .summary("{name} gave up after its retries"),
            AlertRule::new("ResourceLimitHit", Severity::Warning, |e| {
                matches!(e.decision, Decision::LimitHit { .. })
            })
            .summary("{name} refused work: a resource limit was hit"),
            AlertRule::new("LlmJsonFallbackUsed", Severity::Warning, |e| {
                matches!(e.decision, Decision::JsonFallback)
            })
            .summary("the JSON guard served its fallback"),
            AlertRule::new("StageGateFailed", Severity::Critical, |e| {
                matches!(
                    e.decision,
                    Decision::GateResult {
                        passed: false,
                        mandatory: true,
                        ..
                    }
                )
            })
            .summary("stage {name}: a mandatory gate failed"),
            AlertRule::new("StaleFenceRefused", Severity::Critical, |e| {
                e.guard == GuardKind::Idempotency
                    && matches!(
                        e.decision,
                        Decision::Idempotency {
                            outcome: "stale_fence"
                        }
                    )
            })
            .summary("{name}: a stalled worker's result was refused (fencing)"),
            AlertRule::new("SupervisorGaveUp", Severity::Critical, |e| {
                e.guard == GuardKind::Supervisor && e.decision == Decision::GaveUp
            })
            .summary("supervisor {name} gave up: its task is down"),
        ]
    }

    /// Adds a sink.
    pub fn with_sink(mut self, sink: AlertSink) -> Self {
        self.sinks.push(sink);
        self
    }

    /// Reads time from `clock` (cool-downs; tests use a [`ManualClock`](crate::ManualClock)).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Subscribes to the guard events; alerting stops when the subscription is dropped.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let this = Arc::clone(self);
        events::subscribe(move |e| this.on_event(e))
    }

    /// Alerts delivered so far (firing and resolved).
    pub fn fired(&self) -> u64 {
        self.fired.load(Ordering::Relaxed)
    }

    /// Alerts held back by a cool-down.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }

    /// Judges one event against every rule (what the subscription does).
    pub fn on_event(&self, e: &GuardEvent<'_>) {
        for (i, rule) in self.rules.iter().enumerate() {
            if (rule.fires)(e) {
                self.fire(i, rule, e);
            } else if rule.resolves.as_ref().is_some_and(|r| r(e)) {
                self.resolve(i, rule, e);
            }
        }
    }

    fn fire(&self, i: usize, rule: &AlertRule, e: &GuardEvent<'_>) {
        let now = self.clock.now();
        {
            let mut last = self.last.lock();
            let key = (i, e.name.to_string());
            if let Some(at) = last.get(&key)
                && now.saturating_duration_since(*at) < rule.cooldown
            {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if last.len() >= MAX_REMEMBERED {
                let mut ages: Vec<Instant> = last.values().copied().collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 2];
                last.retain(|_, at| *at > cut);
            }
            last.insert(key, now);
        }
        self.send(&self.alert(rule, e, AlertStatus::Firing));
    }

    fn resolve(&self, i: usize, rule: &AlertRule, e: &GuardEvent<'_>) {
        if self.last.lock().remove(&(i, e.name.to_string())).is_some() {
            self.send(&self.alert(rule, e, AlertStatus::Resolved));
        }
    }

    fn send(&self, alert: &Alert) {
        self.fired.fetch_add(1, Ordering::Relaxed);
        for sink in &self.sinks {
            // A sink that panics must not break the guard that decided.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink.deliver(alert)));
        }
    }

    fn alert(&self, rule: &AlertRule, e: &GuardEvent<'_>, status: AlertStatus) -> Alert {
        let mut labels = BTreeMap::new();
        labels.insert("alertname".to_string(), rule.name.clone());
        labels.insert("severity".to_string(), rule.severity.as_str().to_string());
        labels.insert("guard".to_string(), e.guard.as_str().to_string());
        labels.insert("name".to_string(), e.name.to_string());
        // The fingerprint covers the labels that identify the alert, not the decision's
        // figures, so a resolve matches its firing.
        let fingerprint = fingerprint(&labels);
        labels.insert("decision".to_string(), e.decision.label().to_string());
        let mut annotations = BTreeMap::new();
        annotations.insert(
            "summary".to_string(),
            rule.summary.replace("{name}", e.name),
        );
        annotations.insert("description".to_string(), format!("{:?}", e.decision));
        let now = self.clock.system_time();
        Alert {
            name: rule.name.clone(),
            status,
            severity: rule.severity,
            labels,
            annotations,
            starts_at: now,
            ends_at: (status == AlertStatus::Resolved).then_some(now),
            fingerprint,
        }
    }
}

fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut text = String::new();
    for (k, v) in labels {
        text.push_str(k);
        text.push('\u{1}');
        text.push_str(v);
        text.push('\u{2}');
    }
    format!("{:016x}", twox_hash::XxHash3_64::oneshot(text.as_bytes()))
}

#[cfg(feature = "http")]
pub use webhook::{WebhookConfig, WebhookSink, WebhookStats};

#[cfg(feature = "http")]
mod webhook {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
    use std::thread::JoinHandle;
    use std::time::{Duration, SystemTime};

    use parking_lot::{Condvar, Mutex};
    use serde_json::{Value, json};

    use super::{Alert, AlertStatus};
    use crate::backoff::Backoff;
    use crate::error::{GuardrailError, Result};

    /// Where and how the webhook posts.
    #[derive(Debug, Clone)]
    pub struct WebhookConfig {
        /// The receiver's URL (`http://` or `https://`).
        pub url: String,
        /// The `receiver` field of the payload.
        pub receiver: String,
        /// Per-request timeout.
        pub timeout: Duration,
        /// Alerts waiting to be sent at most; more are dropped and counted.
        pub queue_capacity: usize,
        /// Attempts per alert (the first included).
        pub max_attempts: u32,
        /// Waits between attempts.
        pub backoff: Backoff,
    }

    impl WebhookConfig {
        /// Defaults for `url`: receiver `guardrails`, 5 s timeout, 1 024 queued, 4 attempts
        /// 0.5 s → 8 s apart.
        pub fn new(url: impl Into<String>) -> Self {
            Self {
                url: url.into(),
                receiver: "guardrails".into(),
                timeout: Duration::from_secs(5),
                queue_capacity: 1024,
                max_attempts: 4,
                backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(8), 2.0),
            }
        }
    }

    /// What the webhook did so far.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct WebhookStats {
        /// Alerts queued.
        pub queued: u64,
        /// Alerts the receiver accepted (2xx).
        pub sent: u64,
        /// Alerts given up after every attempt.
        pub failed: u64,
        /// Alerts dropped because the queue was full.
        pub dropped: u64,
        /// Attempts after a first one failed.
        pub retries: u64,
    }

    #[derive(Default)]
    struct Counters {
        queued: AtomicU64,
        sent: AtomicU64,
        failed: AtomicU64,
        dropped: AtomicU64,
        retries: AtomicU64,
        /// Queued and not yet sent or given up.
        pending: Mutex<u64>,
        settled: Condvar,
        stop: AtomicBool,
    }

    /// Posts alerts in Alertmanager's webhook payload shape (version 4) from a thread of its
    /// own; see the [module docs](super).
    pub struct WebhookSink {
        /// `None` only while dropping (the sender thread ends when it is gone).
        tx: Option<SyncSender<Alert>>,
        counters: Arc<Counters>,
        thread: Option<JoinHandle<()>>,
        url: String,
    }

    impl std::fmt::Debug for WebhookSink {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            // The URL may carry a token in its query: only scheme and host are shown.
            let shown = self.url.split(['?', '#']).next().unwrap_or("");
            f.debug_struct("WebhookSink")
                .field("url", &shown)
                .field("stats", &self.stats())
                .finish()
        }
    }

    impl WebhookSink {
        /// Starts the sender thread.
        ///
        /// # Errors
        /// [`GuardrailError::Config`] for a URL that is not http(s), a zero queue or zero
        /// attempts; [`GuardrailError::Io`] when the thread cannot start.
        pub fn start(config: WebhookConfig) -> Result<Self> {
            if !(config.url.starts_with("http://") || config.url.starts_with("https://")) {
                return Err(GuardrailError::config(
                    "alerts.webhook.url",
                    "must start with http:// or https://",
                ));
            }
            if config.queue_capacity == 0 || config.max_attempts == 0 || config.timeout.is_zero() {
                return Err(GuardrailError::config(
                    "alerts.webhook",
                    "queue_capacity, max_attempts and timeout must be above zero",
                ));
            }
            let (tx, rx) = mpsc::sync_channel(config.queue_capacity);
            let counters = Arc::new(Counters::default());
            let url = config.url.clone();
            let worker = Arc::clone(&counters);
            let thread = std::thread::Builder::new()
                .name("guardrails-alert-webhook".into())
                .spawn(move || drain(&config, &rx, &worker))
                .map_err(|source| GuardrailError::Io { path: None, source })?;
            Ok(Self {
                tx: Some(tx),
                counters,
                thread: Some(thread),
                url,
            })
        }

        /// Queues `alert`, or drops and counts it when the queue is full; never blocks.
        pub fn enqueue(&self, alert: Alert) {
            let c = &self.counters;
            let Some(tx) = self.tx.as_ref() else {
                c.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            };
            *c.pending.lock() += 1;
            match tx.try_send(alert) {
                Ok(()) => {
                    c.queued.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    c.dropped.fetch_add(1, Ordering::Relaxed);
                    settle(c);
                }
            }
        }

        /// The counts so far.
        pub fn stats(&self) -> WebhookStats {
            let c = &self.counters;
            WebhookStats {
                queued: c.queued.load(Ordering::Relaxed),
                sent: c.sent.load(Ordering::Relaxed),
                failed: c.failed.load(Ordering::Relaxed),
                dropped: c.dropped.load(Ordering::Relaxed),
                retries: c.retries.load(Ordering::Relaxed),
            }
        }

        /// Waits until every queued alert was sent or given up, for at most `limit`; whether
        /// the queue is empty.
        pub fn flush(&self, limit: Duration) -> bool {
            let deadline = std::time::Instant::now() + limit;
            let mut pending = self.counters.pending.lock();
            while *pending > 0 {
                if self
                    .counters
                    .settled
                    .wait_until(&mut pending, deadline)
                    .timed_out()
                {
                    return *pending == 0;
                }
            }
            true
        }
    }

    impl Drop for WebhookSink {
        fn drop(&mut self) {
            // Queued alerts are still tried once each; retries stop.
            self.counters.stop.store(true, Ordering::Release);
            self.tx.take();
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn settle(c: &Counters) {
        let mut pending = c.pending.lock();
        *pending = pending.saturating_sub(1);
        if *pending == 0 {
            c.settled.notify_all();
        }
    }

    fn drain(config: &WebhookConfig, rx: &Receiver<Alert>, c: &Counters) {
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_global(Some(config.timeout))
                .http_status_as_error(false)
                .build(),
        );
        while let Ok(alert) = rx.recv() {
            let body = payload(&config.receiver, &alert).to_string();
            let mut attempt = 0;
            let sent = loop {
                let answer = agent
                    .post(&config.url)
                    .header("content-type", "application/json")
                    .send(body.as_str());
                let outcome = match answer {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!("status {}", r.status().as_u16())),
                    Err(e) => Err(e.to_string()),
                };
                attempt += 1;
                match outcome {
                    Ok(()) => break true,
                    Err(why)
                        if attempt >= config.max_attempts || c.stop.load(Ordering::Acquire) =>
                    {
                        tracing::warn!(alert = %alert.name, attempts = attempt, error = %why, "alert webhook gave up");
                        break false;
                    }
                    Err(_) => {
                        c.retries.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(config.backoff.delay(attempt - 1));
                    }
                }
            };
            if sent {
                c.sent.fetch_add(1, Ordering::Relaxed);
            } else {
                c.failed.fetch_add(1, Ordering::Relaxed);
            }
            settle(c);
        }
    }

    fn rfc3339(t: SystemTime) -> String {
        humantime::format_rfc3339_millis(t).to_string()
    }

    /// Alertmanager's webhook payload (version 4) for one alert.
    pub(super) fn payload(receiver: &str, alert: &Alert) -> Value {
        let status = match alert.status {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        };
        let group = json!({ "alertname": alert.name });
        json!({
            "version": "4",
            "groupKey": format!("{{}}:{{alertname=\"{}\"}}", alert.name),
            "truncatedAlerts": 0,
            "status": status,
            "receiver": receiver,
            "groupLabels": group,
            "commonLabels": alert.labels,
            "commonAnnotations": alert.annotations,
            "externalURL": "",
            "alerts": [{
                "status": status,
                "labels": alert.labels,
                "annotations": alert.annotations,
                "startsAt": rfc3339(alert.starts_at),
                // Alertmanager's zero time means "not ended".
                "endsAt": alert.ends_at.map_or_else(|| "0001-01-01T00:00:00Z".to_string(), rfc3339),
                "generatorURL": "",
                "fingerprint": alert.fingerprint,
            }],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn opened(name: &str) -> GuardEvent<'_> {
        GuardEvent {
            guard: GuardKind::Breaker,
            name,
            decision: Decision::BreakerTransition {
                from: "closed",
                to: "open",
                failure_rate: Some(1.0),
            },
        }
    }

    #[test]
    fn cooldown_is_per_rule_and_guard_and_a_resolve_ends_it() {
        let clock = Arc::new(ManualClock::new());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = Arc::clone(&seen);
        let hooks = AlertHooks::new(AlertHooks::default_rules())
            .with_clock(clock.clone())
            .with_sink(AlertSink::event(move |a| {
                into.lock()
                    .push((a.labels["name"].clone(), a.status, a.fingerprint.clone()))
            }));
        hooks.on_event(&opened("a"));
        hooks.on_event(&opened("a"));
        hooks.on_event(&opened("b"));
        assert_eq!(hooks.suppressed(), 1);
        clock.advance(Duration::from_secs(301));
        hooks.on_event(&opened("a"));
        hooks.on_event(&GuardEvent {
            guard: GuardKind::Breaker,
            name: "a",
            decision: Decision::BreakerTransition {
                from: "half_open",
                to: "closed",
                failure_rate: None,
            },
        });
        // A second close resolves nothing: the alert is no longer active.
        hooks.on_event(&GuardEvent {
            guard: GuardKind::Breaker,
            name: "a",
            decision: Decision::BreakerTransition {
                from: "half_open",
                to: "closed",
                failure_rate: None,
            },
        });
        let seen = seen.lock().clone();
        let statuses: Vec<(&str, AlertStatus)> =
            seen.iter().map(|(n, s, _)| (n.as_str(), *s)).collect();
        assert_eq!(
            statuses,
            [
                ("a", AlertStatus::Firing),
                ("b", AlertStatus::Firing),
                ("a", AlertStatus::Firing),
                ("a", AlertStatus::Resolved),
            ]
        );
        assert_eq!(
            seen[0].2, seen[3].2,
            "a resolve has its firing's fingerprint"
        );
        assert_ne!(seen[0].2, seen[1].2);
    }

    #[cfg(feature = "http")]
    #[test]
    fn the_payload_has_alertmanagers_shape() {
        let hooks = AlertHooks::new(AlertHooks::default_rules());
        let alert = hooks.alert(&hooks.rules[0], &opened("llm"), AlertStatus::Firing);
        let p = webhook::payload("ops", &alert);
        assert_eq!(p["version"], "4");
        assert_eq!(p["status"], "firing");
        assert_eq!(p["receiver"], "ops");
        let a = &p["alerts"][0];
        assert_eq!(a["labels"]["alertname"], "CircuitBreakerOpen");
        assert_eq!(a["labels"]["severity"], "critical");
        assert_eq!(a["annotations"]["summary"], "circuit breaker llm opened");
        assert_eq!(a["endsAt"], "0001-01-01T00:00:00Z");
        assert!(a["startsAt"].as_str().unwrap().ends_with('Z'));
        assert_eq!(a["fingerprint"].as_str().unwrap().len(), 16);
    }
}
