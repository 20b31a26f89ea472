//! A fleet-wide GCRA allowance on Redis, behind [`SharedRateState`].

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::{Script, Value};

use super::conn::RedisConnection;
use crate::error::Result;
use crate::resilience::{RateLimitConfig, SharedRateState};

// GCRA as redis-cell and Redis's own GCRA command do it: the key holds the theoretical
// arrival time (µs on the server's clock), a call is allowed when it is no further ahead
// of now than the burst's worth of intervals. The same key format as the native command,
// so a fleet can mix servers with and without it.
const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local variance = tonumber(ARGV[2])
local increment = interval * tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]))
if (not tat) or tat < now then tat = now end
local new_tat = tat + increment
local wait = new_tat - variance - now
if wait > 0 then return {1, string.format('%d', wait)} end
redis.call('SET', KEYS[1], string.format('%d', new_tat),
  'PX', string.format('%d', math.ceil((new_tat - now) / 1000) + 1))
return {0, 0}
";

static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA_LUA));

const UNPROBED: u8 = 0;
const LUA: u8 = 1;
const NATIVE: u8 = 2;

/// The shared allowance of fleet-wide [`RateLimiter`](crate::resilience::RateLimiter)s
/// on Redis: one key per limiter (`{PREFIX:NAME}`), one round trip per call.
///
/// It runs Redis's own `GCRA` command where `COMMAND INFO GCRA` reports it (its
/// `retry_after` is in whole seconds) and the same algorithm as a Lua script elsewhere
/// (`retry_after` to the microsecond). Time is the server's.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use guardrails::resilience::{RateLimitConfig, RateLimiter};
/// use guardrails::state::{RedisConfig, RedisConnection, RedisRateLimit};
///
/// let redis = RedisConnection::connect("redis://127.0.0.1:6379/0", RedisConfig::default())?;
/// let fleet = Arc::new(RedisRateLimit::new(redis));
/// // 100 calls a second for every worker together.
/// let limiter = RateLimiter::shared("llm", RateLimitConfig::per(100, Duration::from_secs(1)), fleet)?;
/// limiter.check()?;
/// # Ok::<(), guardrails::GuardrailError>(())
/// ```
#[derive(Debug, Clone)]
pub struct RedisRateLimit {
    conn: RedisConnection,
    prefix: Arc<str>,
    mode: Arc<AtomicU8>,
}

impl RedisRateLimit {
    /// Limiter keys under the prefix `guardrails:rate`.
    pub fn new(conn: RedisConnection) -> Self {
        Self {
            conn,
            prefix: Arc::from("guardrails:rate"),
            mode: Arc::new(AtomicU8::new(UNPROBED)),
        }
    }

    /// Limiter keys under `prefix`.
    #[must_use]
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = Arc::from(prefix);
        self
    }

    /// Always the Lua script, even where the server has `GCRA` (for comparisons).
    #[must_use]
    pub fn lua_only(self) -> Self {
        self.mode.store(LUA, Ordering::Relaxed);
        self
    }

    /// Whether calls go to the server's own `GCRA` command (probed on first use).
    pub fn uses_native(&self) -> bool {
        self.mode.load(Ordering::Relaxed) == NATIVE
    }

    /// The Redis key of the limiter `name`: hash-tagged, so a cluster keeps it whole.
    pub fn key(&self, name: &str) -> String {
        format!("{{{}:{name}}}", self.prefix)
    }

    /// [`SharedRateState::acquire`] on the caller's tokio runtime.
    pub async fn acquire_async(
        &self,
        name: &str,
        config: &RateLimitConfig,
        cost: u32,
    ) -> Result<Option<Duration>> {
        config.validate()?;
        let key = self.key(name);
        let burst = u64::from(config.burst.unwrap_or(config.rate));
        if self.mode.load(Ordering::Relaxed) == UNPROBED {
            let native = self.probe_native().await.unwrap_or(false);
            let _ = self.mode.compare_exchange(
                UNPROBED,
                if native { NATIVE } else { LUA },
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        if self.uses_native() {
            let mut cmd = redis::cmd("GCRA");
            cmd.arg(&key)
                .arg(burst.saturating_sub(1))
                .arg(config.rate)
                .arg(config.period.as_secs_f64())
                .arg("TOKENS")
                .arg(cost.max(1));
            let reply = self.conn.command("GCRA", &cmd).await?;
            return self.native_answer(reply);
        }
        // The emission interval rounded as the native command rounds it.
        let period_us = config.period.as_secs_f64() * 1e6;
        let interval = ((period_us / f64::from(config.rate)) + 0.5).max(1.0) as u64;
        let variance = interval.saturating_mul(burst);
        let reply = self
            .conn
            .eval(
                "rate limit",
                &GCRA,
                &[key.as_bytes()],
                &[
                    interval.to_string().as_bytes(),
                    variance.to_string().as_bytes(),
                    cost.max(1).to_string().as_bytes(),
                ],
            )
            .await?;
        match reply {
            Value::Array(items) => match (items.first(), items.get(1)) {
                (Some(Value::Int(0)), _) => Ok(None),
                (Some(Value::Int(1)), Some(wait)) => {
                    let us = match wait {
                        Value::BulkString(b) => std::str::from_utf8(b)
                            .ok()
                            .and_then(|s| s.parse::<u64>().ok()),
                        Value::Int(n) => u64::try_from(*n).ok(),
                        _ => None,
                    }
                    .unwrap_or(0);
                    Ok(Some(Duration::from_micros(us)))
                }
                _ => Err(self
                    .conn
                    .protocol_error("rate limit", format!("unexpected reply {items:?}"))),
            },
            other => Err(self
                .conn
                .protocol_error("rate limit", format!("unexpected reply {other:?}"))),
        }
    }

    async fn probe_native(&self) -> Result<bool> {
        let reply = self
            .conn
            .command(
                "COMMAND INFO",
                redis::cmd("COMMAND").arg("INFO").arg("GCRA"),
            )
            .await?;
        Ok(match reply {
            Value::Array(items) => items.first().is_some_and(|v| !matches!(v, Value::Nil)),
            _ => false,
        })
    }

    fn native_answer(&self, reply: Value) -> Result<Option<Duration>> {
        let Value::Array(items) = reply else {
            return Err(self
                .conn
                .protocol_error("GCRA", format!("unexpected reply {reply:?}")));
        };
        match (items.first(), items.get(3)) {
            (Some(Value::Int(0)), _) => Ok(None),
            (Some(Value::Int(1)), Some(Value::Int(secs))) => Ok(Some(Duration::from_secs(
                // -1: the cost is above the burst, never allowed; say a full period.
                u64::try_from(*secs).unwrap_or(1).max(1),
            ))),
            _ => Err(self
                .conn
                .protocol_error("GCRA", format!("unexpected reply {items:?}"))),
        }
    }
}

impl SharedRateState for RedisRateLimit {
    fn acquire(&self, name: &str, config: &RateLimitConfig, cost: u32) -> Result<Option<Duration>> {
        let (me, name, config) = (self.clone(), name.to_string(), config.clone());
        self.conn
            .block_on(async move { me.acquire_async(&name, &config, cost).await })
    }
}
