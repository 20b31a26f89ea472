//! The shared window and open flag of fleet-wide breakers on Redis, behind
//! [`SharedBreakerState`].

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::{Script, Value};

use super::conn::RedisConnection;
use crate::error::Result;
use crate::resilience::{FleetConfig, FleetView, SharedBreakerState};

// One flush: the worker's counts into the current bucket (server time), buckets that left
// the window dropped, the window's totals and the open flag's time left in one answer.
// While the fleet is open the counts are dropped: they are the calls that opened it, and
// added to the window that started over they would reopen it after its recovery.
const FLUSH_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dc, df = tonumber(ARGV[1]), tonumber(ARGV[2])
local bucket_ms, n = tonumber(ARGV[3]), tonumber(ARGV[4])
local b = math.floor(now / bucket_ms)
local field = string.format('%d', b)
local ttl = string.format('%d', bucket_ms * (n + 1))
local open = redis.call('PTTL', KEYS[3])
if open > 0 then dc, df = 0, 0 end
if dc > 0 then
  redis.call('HINCRBY', KEYS[1], field, dc)
  redis.call('PEXPIRE', KEYS[1], ttl)
end
if df > 0 then
  redis.call('HINCRBY', KEYS[2], field, df)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
local function window(key)
  local total = 0
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    local k = tonumber(all[i])
    if k and k > b - n and k <= b then
      total = total + (tonumber(all[i + 1]) or 0)
    else
      redis.call('HDEL', key, all[i])
    end
  end
  return total
end
return {window(KEYS[1]), window(KEYS[2]), open}
";

// The first worker to publish sets the flag and starts the window over; a later one gets
// the time left of the flag already there.
const PUBLISH_LUA: &str = r"
if redis.call('SET', KEYS[3], '1', 'PX', ARGV[1], 'NX') then
  redis.call('DEL', KEYS[1], KEYS[2])
  return tonumber(ARGV[1])
end
return redis.call('PTTL', KEYS[3])
";

static FLUSH: LazyLock<Script> = LazyLock::new(|| Script::new(FLUSH_LUA));
static PUBLISH: LazyLock<Script> = LazyLock::new(|| Script::new(PUBLISH_LUA));

/// The state of fleet-wide [`FleetBreaker`](crate::resilience::FleetBreaker)s on Redis:
/// per breaker a hash of calls and a hash of failures by time bucket, and an open flag
/// whose TTL is the fleet's wait. All three share the hash tag `{PREFIX:NAME}`, so a Redis
/// Cluster keeps them in one slot and each flush is one script.
///
/// ```no_run
/// use std::sync::Arc;
/// use guardrails::resilience::{BreakerConfig, CircuitBreaker, FleetBreaker, FleetConfig};
/// use guardrails::state::{RedisBreakerState, RedisConfig, RedisConnection};
///
/// let redis = RedisConnection::connect("redis://127.0.0.1:6379/0", RedisConfig::default())?;
/// let breaker = Arc::new(CircuitBreaker::new("llm", BreakerConfig::new())?);
/// let _fleet = FleetBreaker::new(
///     breaker.clone(),
///     Arc::new(RedisBreakerState::new(redis)),
///     FleetConfig::default(),
/// )?;
/// let answer = breaker.call(|| Ok("called"))?; // the local hot path, flushed every second
/// # Ok::<(), guardrails::GuardrailError>(())
/// ```
#[derive(Debug, Clone)]
pub struct RedisBreakerState {
    conn: RedisConnection,
    prefix: Arc<str>,
}

impl RedisBreakerState {
    /// Breaker keys under the prefix `guardrails:breaker`.
    pub fn new(conn: RedisConnection) -> Self {
        Self {
            conn,
            prefix: Arc::from("guardrails:breaker"),
        }
    }

    /// Breaker keys under `prefix`.
    #[must_use]
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = Arc::from(prefix);
        self
    }

    /// The Redis keys of the breaker `name`: calls, failures and the open flag.
    pub fn keys(&self, name: &str) -> [String; 3] {
        let tag = format!("{{{}:{name}}}", self.prefix);
        [
            format!("{tag}:calls"),
            format!("{tag}:failures"),
            format!("{tag}:open"),
        ]
    }

    /// [`SharedBreakerState::flush`] on the caller's tokio runtime.
    pub async fn flush_async(
        &self,
        name: &str,
        calls: u64,
        failures: u64,
        config: &FleetConfig,
    ) -> Result<FleetView> {
        let keys = self.keys(name);
        let bucket_ms = u64::try_from(config.interval.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let reply = self
            .conn
            .eval(
                "flush breaker",
                &FLUSH,
                &[keys[0].as_bytes(), keys[1].as_bytes(), keys[2].as_bytes()],
                &[
                    calls.to_string().as_bytes(),
                    failures.to_string().as_bytes(),
                    bucket_ms.to_string().as_bytes(),
                    config.buckets.to_string().as_bytes(),
                ],
            )
            .await?;
        match reply {
            Value::Array(items) => match items.as_slice() {
                [Value::Int(calls), Value::Int(failures), Value::Int(open)] => Ok(FleetView {
                    calls: u64::try_from(*calls).unwrap_or(0),
                    failures: u64::try_from(*failures).unwrap_or(0),
                    open_for: u64::try_from(*open)
                        .ok()
                        .filter(|&ms| ms > 0)
                        .map(Duration::from_millis),
                }),
                other => Err(self
                    .conn
                    .protocol_error("flush breaker", format!("unexpected reply {other:?}"))),
            },
            other => Err(self
                .conn
                .protocol_error("flush breaker", format!("unexpected reply {other:?}"))),
        }
    }

    /// [`SharedBreakerState::publish_open`] on the caller's tokio runtime.
    pub async fn publish_open_async(&self, name: &str, wait: Duration) -> Result<Duration> {
        let keys = self.keys(name);
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        let reply = self
            .conn
            .eval(
                "publish breaker open",
                &PUBLISH,
                &[keys[0].as_bytes(), keys[1].as_bytes(), keys[2].as_bytes()],
                &[wait_ms.to_string().as_bytes()],
            )
            .await?;
        match reply {
            Value::Int(ms) => Ok(Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
            other => Err(self.conn.protocol_error(
                "publish breaker open",
                format!("unexpected reply {other:?}"),
            )),
        }
    }
}

impl SharedBreakerState for RedisBreakerState {
    fn flush(
        &self,
        name: &str,
        calls: u64,
        failures: u64,
        config: &FleetConfig,
    ) -> Result<FleetView> {
        let (me, name, config) = (self.clone(), name.to_string(), config.clone());
        self.conn
            .block_on(async move { me.flush_async(&name, calls, failures, &config).await })
    }

    fn publish_open(&self, name: &str, wait: Duration, _config: &FleetConfig) -> Result<Duration> {
        let (me, name) = (self.clone(), name.to_string());
        self.conn
            .block_on(async move { me.publish_open_async(&name, wait).await })
    }
}
