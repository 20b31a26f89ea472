//! Whether a Redis server is safe to keep guard state on: it persists, never evicts guard
//! keys, has memory left, and accepts writes.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::conn::RedisConnection;
use crate::error::{GuardrailError, Result};
use crate::health::{CheckOptions, HealthRegistry};
use crate::resource::HealthStatus;

/// How safe one aspect of the server is, worst last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SafetyLevel {
    /// Safe.
    Ok,
    /// The server hides what this check needs (a managed Redis without `CONFIG`).
    Unknown,
    /// Works, with a risk worth knowing (RDB snapshots only, memory filling up).
    Warning,
    /// Guard state can be lost: keys evicted, writes forgotten on restart.
    Error,
    /// Guard state cannot work at all: a replica refuses writes, memory is full.
    Critical,
}

impl SafetyLevel {
    /// `OK`, `UNKNOWN`, `WARNING`, `ERROR` or `CRITICAL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Unknown => "UNKNOWN",
            Self::Warning => "WARNING",
            Self::Error => "ERROR",
            Self::Critical => "CRITICAL",
        }
    }
}

impl std::fmt::Display for SafetyLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One check's finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SafetyFinding {
    /// `persistence`, `maxmemory_policy`, `memory_headroom` or `role`.
    pub check: &'static str,
    /// How bad.
    pub level: SafetyLevel,
    /// What was found and what to do, in words.
    pub message: String,
    /// Whether an ERROR was acknowledged (and so reported as a WARNING).
    pub acknowledged: bool,
}

/// Every finding about one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SafetyReport {
    /// The server, without credentials.
    pub server: String,
    /// The worst level of any finding.
    pub level: SafetyLevel,
    /// Whether nothing is ERROR or CRITICAL.
    pub safe: bool,
    /// The findings, in check order.
    pub checks: Vec<SafetyFinding>,
}

impl SafetyReport {
    fn new(server: String, checks: Vec<SafetyFinding>) -> Self {
        let level = checks
            .iter()
            .map(|c| c.level)
            .max()
            .unwrap_or(SafetyLevel::Ok);
        Self {
            server,
            level,
            safe: level < SafetyLevel::Error,
            checks,
        }
    }

    /// The finding of `check`, if it ran.
    pub fn finding(&self, check: &str) -> Option<&SafetyFinding> {
        self.checks.iter().find(|c| c.check == check)
    }

    /// The report as a health status: OK healthy, UNKNOWN or WARNING degraded, ERROR
    /// unhealthy, CRITICAL critical.
    pub fn health(&self) -> HealthStatus {
        match self.level {
            SafetyLevel::Ok => HealthStatus::Healthy,
            SafetyLevel::Unknown | SafetyLevel::Warning => HealthStatus::Degraded,
            SafetyLevel::Error => HealthStatus::Unhealthy,
            SafetyLevel::Critical => HealthStatus::Critical,
        }
    }
}

/// The names of the checks, for [`RedisSafety::acknowledge`].
pub const SAFETY_CHECKS: [&str; 4] = ["persistence", "maxmemory_policy", "memory_headroom", "role"];

/// The Redis runtime safety check: persistence (AOF with `everysec` or `always`, or RDB
/// saves), `maxmemory-policy` (`noeviction`: guard keys carry a TTL, so `volatile-*`
/// evicts them first and `allkeys-*` may), memory headroom (used against `maxmemory`) and
/// role (a replica refuses writes).
///
/// It reads `INFO` first and `CONFIG GET` only for what `INFO` does not say, so a managed
/// Redis that hides `CONFIG` gets UNKNOWN where it must, not an error. A shared Redis the
/// user cannot reconfigure can be accepted check by check with
/// [`acknowledge`](Self::acknowledge): that ERROR is reported as a WARNING (CRITICAL is
/// never acknowledged).
///
/// ```no_run
/// use guardrails::state::{RedisConfig, RedisConnection, RedisSafety};
///
/// let redis = RedisConnection::connect("redis://127.0.0.1:6379/0", RedisConfig::default())?;
/// let report = RedisSafety::new()
///     .acknowledge("persistence", "a cache-only Redis; effects are re-checked at the sink")
///     .validate_on_startup(&redis)?; // an error when anything is ERROR or CRITICAL
/// for finding in &report.checks {
///     println!("{} {}: {}", finding.level, finding.check, finding.message);
/// }
/// # Ok::<(), guardrails::GuardrailError>(())
/// ```
#[derive(Debug, Clone)]
pub struct RedisSafety {
    acknowledged: BTreeMap<String, String>,
    warn_ratio: f64,
    error_ratio: f64,
}

impl Default for RedisSafety {
    fn default() -> Self {
        Self::new()
    }
}

impl RedisSafety {
    /// The checks with memory headroom WARNING from 80 % of `maxmemory`, ERROR from 95 %.
    pub fn new() -> Self {
        Self {
            acknowledged: BTreeMap::new(),
            warn_ratio: 0.80,
            error_ratio: 0.95,
        }
    }

    /// Accepts an ERROR of `check` (one of [`SAFETY_CHECKS`]) as a WARNING, for `reason`
    /// (shown in the finding).
    #[must_use]
    pub fn acknowledge(mut self, check: &str, reason: &str) -> Self {
        self.acknowledged
            .insert(check.to_string(), reason.to_string());
        self
    }

    /// With memory headroom WARNING from `warn` and ERROR from `error` (fractions of
    /// `maxmemory`; full memory is always CRITICAL).
    #[must_use]
    pub fn with_memory_thresholds(mut self, warn: f64, error: f64) -> Self {
        self.warn_ratio = warn;
        self.error_ratio = error;
        self
    }

    /// Checks the server behind `conn`. An unreachable server is the connection's
    /// (retryable) error, not a finding.
    pub fn check(&self, conn: &RedisConnection) -> Result<SafetyReport> {
        let (me, c) = (self.clone(), conn.clone());
        conn.block_on(async move { me.check_async(&c).await })
    }

    /// [`check`](Self::check) on the caller's tokio runtime.
    pub async fn check_async(&self, conn: &RedisConnection) -> Result<SafetyReport> {
        for key in self.acknowledged.keys() {
            if !SAFETY_CHECKS.contains(&key.as_str()) {
                return Err(GuardrailError::config(
                    "redis_safety.acknowledge",
                    format!("one of {SAFETY_CHECKS:?}, not {key:?}"),
                ));
            }
        }
        // On a cluster INFO and CONFIG GET go to every primary and answer a map by node:
        // each node is judged, and a check reports its worst node.
        let info = by_node(conn.command("INFO", &redis::cmd("INFO")).await?);
        let appendfsync = config_get(conn, "appendfsync").await;
        let save = config_get(conn, "save").await;
        let policy = config_get(conn, "maxmemory-policy").await;
        let mut per_node: Vec<(String, Vec<SafetyFinding>)> = Vec::new();
        for (node, text) in &info {
            let pick = |m: &Option<Vec<(String, String)>>| -> Option<String> {
                let m = m.as_ref()?;
                m.iter()
                    .find(|(n, _)| n == node)
                    .or_else(|| m.first())
                    .map(|(_, v)| v.clone())
            };
            let server = Server {
                info: parse_info(text),
                appendfsync: pick(&appendfsync),
                save: pick(&save),
                policy_config: pick(&policy),
            };
            per_node.push((
                node.clone(),
                vec![
                    self.ack(persistence(&server)),
                    self.ack(eviction(&server)),
                    self.ack(self.headroom(&server)),
                    self.ack(role(&server)),
                ],
            ));
        }
        let several = per_node.len() > 1;
        let checks = (0..SAFETY_CHECKS.len())
            .filter_map(|i| {
                per_node
                    .iter()
                    .filter_map(|(node, findings)| findings.get(i).map(|f| (node, f)))
                    .max_by_key(|(_, f)| f.level)
                    .map(|(node, f)| {
                        let mut f = f.clone();
                        if several {
                            f.message = format!("{node}: {}", f.message);
                        }
                        f
                    })
            })
            .collect();
        Ok(SafetyReport::new(conn.label().to_string(), checks))
    }

    /// Checks the server and refuses it (a fatal configuration error listing every ERROR
    /// and CRITICAL finding) unless it is safe; WARNING and UNKNOWN findings are logged.
    pub fn validate_on_startup(&self, conn: &RedisConnection) -> Result<SafetyReport> {
        let report = self.check(conn)?;
        for f in &report.checks {
            if matches!(f.level, SafetyLevel::Warning | SafetyLevel::Unknown) {
                tracing::warn!(server = %report.server, check = f.check, level = %f.level, "{}", f.message);
            }
        }
        if report.safe {
            return Ok(report);
        }
        let problems: Vec<String> = report
            .checks
            .iter()
            .filter(|f| f.level >= SafetyLevel::Error)
            .map(|f| format!("{} {}: {}", f.level, f.check, f.message))
            .collect();
        Err(GuardrailError::config(
            "redis_safety",
            format!(
                "a Redis safe for guard state; {} is not: {}",
                report.server,
                problems.join("; ")
            ),
        ))
    }

    /// Registers the check as the required health check `name` (timeout 5 s): OK healthy,
    /// UNKNOWN or WARNING degraded, ERROR unhealthy, CRITICAL critical, unreachable an
    /// error.
    pub fn register(self, registry: &mut HealthRegistry, name: &str, conn: RedisConnection) {
        let me = Arc::new(self);
        registry.register(
            name,
            CheckOptions::required(std::time::Duration::from_secs(5)),
            move || me.check(&conn).map(|r| r.health()),
        );
    }

    fn ack(&self, mut finding: SafetyFinding) -> SafetyFinding {
        if finding.level == SafetyLevel::Error
            && let Some(reason) = self.acknowledged.get(finding.check)
        {
            finding.level = SafetyLevel::Warning;
            finding.acknowledged = true;
            finding.message = format!("{} (acknowledged: {reason})", finding.message);
        }
        finding
    }

    fn headroom(&self, s: &Server) -> SafetyFinding {
        let check = "memory_headroom";
        let used = s.number("used_memory");
        let max = s.number("maxmemory");
        let system = s.number("total_system_memory");
        match (used, max) {
            (Some(used), Some(max)) if max > 0 => {
                let ratio = used as f64 / max as f64;
                let words = format!(
                    "{} of maxmemory {} used ({:.0} %)",
                    bytes(used),
                    bytes(max),
                    ratio * 100.0
                );
                let level = if used >= max {
                    SafetyLevel::Critical
                } else if ratio >= self.error_ratio {
                    SafetyLevel::Error
                } else if ratio >= self.warn_ratio {
                    SafetyLevel::Warning
                } else {
                    SafetyLevel::Ok
                };
                let advice = match level {
                    SafetyLevel::Ok => String::new(),
                    SafetyLevel::Critical => {
                        ": writes are refused (noeviction) or keys evicted".to_string()
                    }
                    _ => ": raise maxmemory or move other data off this Redis".to_string(),
                };
                finding(check, level, format!("{words}{advice}"))
            }
            (Some(used), _) => match system.filter(|&t| t > 0) {
                Some(total) if used as f64 >= self.warn_ratio * total as f64 => finding(
                    check,
                    SafetyLevel::Warning,
                    format!(
                        "no maxmemory and {} of the machine's {} used: set maxmemory so Redis refuses writes before the OS kills it",
                        bytes(used),
                        bytes(total)
                    ),
                ),
                _ => finding(
                    check,
                    SafetyLevel::Ok,
                    format!("{} used, no maxmemory set", bytes(used)),
                ),
            },
            _ => finding(
                check,
                SafetyLevel::Unknown,
                "INFO does not report used_memory".to_string(),
            ),
        }
    }
}

struct Server {
    info: BTreeMap<String, String>,
    appendfsync: Option<String>,
    save: Option<String>,
    policy_config: Option<String>,
}

impl Server {
    fn get(&self, field: &str) -> Option<&str> {
        self.info.get(field).map(String::as_str)
    }

    fn number(&self, field: &str) -> Option<u64> {
        self.get(field).and_then(|v| v.trim().parse().ok())
    }
}

fn finding(check: &'static str, level: SafetyLevel, message: String) -> SafetyFinding {
    SafetyFinding {
        check,
        level,
        message,
        acknowledged: false,
    }
}

fn persistence(s: &Server) -> SafetyFinding {
    let check = "persistence";
    let aof = s.get("aof_enabled");
    match (aof, s.appendfsync.as_deref()) {
        (Some("1"), Some("always" | "everysec")) => finding(
            check,
            SafetyLevel::Ok,
            format!(
                "AOF on with appendfsync {}",
                s.appendfsync.as_deref().unwrap_or("")
            ),
        ),
        (Some("1"), Some(other)) => finding(
            check,
            SafetyLevel::Warning,
            format!(
                "AOF on with appendfsync {other}: the OS decides when writes reach disk (up to ~30 s lost on a crash); use everysec"
            ),
        ),
        (Some("1"), None) => finding(
            check,
            SafetyLevel::Unknown,
            "AOF on; its fsync policy is hidden (CONFIG GET refused)".to_string(),
        ),
        (Some("0"), _) => match s.save.as_deref() {
            Some(save) if !save.trim().is_empty() => finding(
                check,
                SafetyLevel::Warning,
                format!(
                    "RDB snapshots only (save {save:?}): a crash forgets claims and results since the last snapshot; turn on appendonly with everysec"
                ),
            ),
            Some(_) => finding(
                check,
                SafetyLevel::Error,
                "no persistence (appendonly no, no RDB saves): a restart forgets every claim and completed key, so effects run again".to_string(),
            ),
            None => finding(
                check,
                SafetyLevel::Unknown,
                "AOF off; the RDB save schedule is hidden (CONFIG GET refused)".to_string(),
            ),
        },
        _ => finding(
            check,
            SafetyLevel::Unknown,
            "INFO does not report aof_enabled".to_string(),
        ),
    }
}

fn eviction(s: &Server) -> SafetyFinding {
    let check = "maxmemory_policy";
    let policy = s
        .get("maxmemory_policy")
        .map(str::to_string)
        .or_else(|| s.policy_config.clone());
    match policy.as_deref() {
        Some("noeviction") => finding(
            check,
            SafetyLevel::Ok,
            "noeviction: guard keys are never evicted".to_string(),
        ),
        Some(p) if p.starts_with("volatile-") => finding(
            check,
            SafetyLevel::Error,
            format!(
                "{p}: keys with a TTL are evicted first, and every guard key has one; set maxmemory-policy noeviction"
            ),
        ),
        Some(p) if p.starts_with("allkeys-") => finding(
            check,
            SafetyLevel::Error,
            format!(
                "{p}: any key may be evicted under memory pressure, guard keys included; set maxmemory-policy noeviction"
            ),
        ),
        Some(p) => finding(
            check,
            SafetyLevel::Warning,
            format!("{p}: a policy this check does not know"),
        ),
        None => finding(
            check,
            SafetyLevel::Unknown,
            "the eviction policy is hidden (not in INFO, CONFIG GET refused)".to_string(),
        ),
    }
}

fn role(s: &Server) -> SafetyFinding {
    let check = "role";
    match s.get("role") {
        Some("master") => finding(check, SafetyLevel::Ok, "master: accepts writes".to_string()),
        Some("slave" | "replica") => finding(
            check,
            SafetyLevel::Critical,
            format!(
                "a replica of {}:{}: it refuses writes; point the guards at the master",
                s.get("master_host").unwrap_or("?"),
                s.get("master_port").unwrap_or("?")
            ),
        ),
        Some(other) => finding(
            check,
            SafetyLevel::Warning,
            format!("role {other}: not a master"),
        ),
        None => finding(
            check,
            SafetyLevel::Unknown,
            "INFO does not report the role".to_string(),
        ),
    }
}

fn bytes(n: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if n >= 1024 * 1024 * 1024 {
        format!("{:.1} GiB", n as f64 / (MIB * 1024.0))
    } else {
        format!("{:.1} MiB", n as f64 / MIB)
    }
}

/// `field:value` lines of an `INFO` reply (a managed Redis may drop sections).
fn parse_info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn text(v: redis::Value) -> String {
    match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis::Value::SimpleString(s) => s,
        redis::Value::VerbatimString { text, .. } => text,
        _ => String::new(),
    }
}

/// `CONFIG GET name` by node (one unnamed entry from a single server), or `None` where the
/// server refuses `CONFIG` (managed Redis renames or disables it).
async fn config_get(conn: &RedisConnection, name: &str) -> Option<Vec<(String, String)>> {
    let reply = conn
        .command("CONFIG GET", redis::cmd("CONFIG").arg("GET").arg(name))
        .await
        .ok()?;
    let value_of = |v: redis::Value| -> Option<String> {
        let pair = match v {
            redis::Value::Array(items) => items,
            redis::Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => return None,
        };
        let mut it = pair.into_iter();
        let _name = it.next()?;
        Some(text(it.next()?))
    };
    match reply {
        // A cluster's answer: node address → that node's reply.
        redis::Value::Map(pairs)
            if pairs.first().is_some_and(|(_, v)| {
                matches!(v, redis::Value::Array(_) | redis::Value::Map(_))
            }) =>
        {
            let nodes: Vec<(String, String)> = pairs
                .into_iter()
                .filter_map(|(node, v)| Some((text(node), value_of(v)?)))
                .collect();
            (!nodes.is_empty()).then_some(nodes)
        }
        other => value_of(other).map(|v| vec![(String::new(), v)]),
    }
}

/// An `INFO` reply by node: a cluster answers a map of node address → text.
fn by_node(reply: redis::Value) -> Vec<(String, String)> {
    match reply {
        redis::Value::Map(pairs) => pairs.into_iter().map(|(n, v)| (text(n), text(v))).collect(),
        other => vec![(String::new(), text(other))],
    }
}
