//! [`SharedWindowCounts`] on Redis: one hash per key, a field per bucket.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::{Script, Value};

use super::conn::RedisConnection;
use crate::error::Result;
use crate::state::SharedWindowCounts;
use crate::state::window::check_window;

// The worker's count into its bucket, buckets that left the window dropped (newer ones,
// from a clock that runs ahead, kept), the window's counts in one answer. Bucket numbers
// are ms / bucket length: far below 2^53, exact as Lua numbers.
const ADD_LUA: &str = r"
local b, n, w = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if n > 0 then redis.call('HINCRBY', KEYS[1], ARGV[1], n) end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local counts = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local k = tonumber(all[i])
  if k == nil or k <= b - w then
    redis.call('HDEL', KEYS[1], all[i])
  else
    counts[k] = tonumber(all[i + 1]) or 0
  end
end
local out = {}
for k = b - w + 1, b do out[#out + 1] = counts[k] or 0 end
return out
";

static ADD: LazyLock<Script> = LazyLock::new(|| Script::new(ADD_LUA));

/// Shared window counts on Redis: the key `PREFIX:KEY` holds a hash of bucket → count,
/// expiring once nobody added to it for a window. One script per add.
///
/// ```no_run
/// use std::time::Duration;
/// use guardrails::state::{RedisConfig, RedisConnection, RedisWindowCounts, SharedWindowCounts};
///
/// let redis = RedisConnection::connect("redis://127.0.0.1:6379/0", RedisConfig::default())?;
/// let counts = RedisWindowCounts::new(redis);
/// let fleet = counts.add("retry:llm", 172_000_000, 3, 13, Duration::from_secs(10))?;
/// # Ok::<(), guardrails::GuardrailError>(())
/// ```
#[derive(Debug, Clone)]
pub struct RedisWindowCounts {
    conn: RedisConnection,
    prefix: Arc<str>,
}

impl RedisWindowCounts {
    /// Keys under the prefix `guardrails:window`.
    pub fn new(conn: RedisConnection) -> Self {
        Self {
            conn,
            prefix: Arc::from("guardrails:window"),
        }
    }

    /// Keys under `prefix`.
    #[must_use]
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = Arc::from(prefix);
        self
    }

    /// The Redis key of `key`.
    pub fn redis_key(&self, key: &str) -> String {
        format!("{}:{key}", self.prefix)
    }

    /// [`SharedWindowCounts::add`] on the caller's tokio runtime.
    ///
    /// # Errors
    /// As [`SharedWindowCounts::add`].
    pub async fn add_async(
        &self,
        key: &str,
        bucket: u64,
        n: u64,
        window: u32,
        bucket_len: Duration,
    ) -> Result<Vec<u64>> {
        check_window(key, window)?;
        let ttl_ms = u64::try_from(bucket_len.as_millis())
            .unwrap_or(u64::MAX / 2)
            .max(1)
            .saturating_mul(u64::from(window) + 1);
        let redis_key = self.redis_key(key);
        let reply = self
            .conn
            .eval(
                "add window counts",
                &ADD,
                &[redis_key.as_bytes()],
                &[
                    bucket.to_string().as_bytes(),
                    n.to_string().as_bytes(),
                    window.to_string().as_bytes(),
                    ttl_ms.to_string().as_bytes(),
                ],
            )
            .await?;
        let bad = |what: String| self.conn.protocol_error("add window counts", what);
        match reply {
            Value::Array(items) if items.len() == window as usize => items
                .iter()
                .map(|v| match v {
                    Value::Int(c) => Ok(u64::try_from(*c).unwrap_or(0)),
                    other => Err(bad(format!("unexpected count {other:?}"))),
                })
                .collect(),
            other => Err(bad(format!("unexpected reply {other:?}"))),
        }
    }
}

impl SharedWindowCounts for RedisWindowCounts {
    fn add(
        &self,
        key: &str,
        bucket: u64,
        n: u64,
        window: u32,
        bucket_len: Duration,
    ) -> Result<Vec<u64>> {
        let (me, key) = (self.clone(), key.to_string());
        self.conn
            .block_on(async move { me.add_async(&key, bucket, n, window, bucket_len).await })
    }
}
