//! The Redis backend of [`StateStore`]: each operation one Lua script on one key.

use std::sync::LazyLock;
use std::time::Duration;

use redis::{Script, Value};

use super::conn::{RedisConfig, RedisConnection};
use crate::error::Result;
use crate::state::{
    Claim, ClaimRequest, Fence, Record, RecordState, StateStore, check_fence, check_key,
    finish_operation, ms,
};

// The claim rules of `state::decide`, in Lua so that read-decide-write is one atomic step in
// Redis. Time is the server's (`TIME`), never a worker's. Fences start at the server's now
// in ms and grow by one on each takeover, so a key that expired and is claimed again still
// gets a fence above any it had. Numbers go through `%d`: Lua would print large ones in
// exponent form.
const CLAIM_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key = KEYS[1]
local fp, owner = ARGV[1], ARGV[2]
local lease, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local r = redis.call('HMGET', key, 'f', 'o', 'p', 's', 'l', 'v')
local fence = tonumber(r[1])
local function acquire(takeover)
  local nf = now
  if fence and fence >= nf then nf = fence + 1 end
  local f = string.format('%d', nf)
  redis.call('HSET', key, 'f', f, 'o', owner, 'p', fp, 's', 'i',
    'l', string.format('%d', now + lease), 'v', '')
  redis.call('PEXPIREAT', key, string.format('%d', now + ttl))
  return {'acquired', f, takeover}
end
if (not fence) or r[4] == 'r' then return acquire(0) end
if r[3] ~= fp then return {'mismatch', r[3] or ''} end
if r[4] == 'c' then return {'completed', r[6] or ''} end
if r[4] == 'f' then return {'failed', r[6] or ''} end
local until_ms = tonumber(r[5]) or 0
if until_ms > now then
  if r[2] == owner then
    redis.call('HSET', key, 'l', string.format('%d', now + lease))
    return {'acquired', r[1], 0}
  end
  return {'in_progress', until_ms - now}
end
return acquire(1)
";

// Completion and failure are compare-and-set on the fence. The same fence finishing the same
// way again is a retried call whose first answer was lost: it succeeds without a write.
const FINISH_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local r = redis.call('HMGET', KEYS[1], 'f', 's')
if not r[1] then return {'expired'} end
if r[1] ~= ARGV[1] then return {'stale', r[1], r[2] or ''} end
if r[2] == ARGV[2] then return {'ok'} end
if r[2] ~= 'i' then return {'stale', r[1], r[2] or ''} end
redis.call('HSET', KEYS[1], 's', ARGV[2], 'v', ARGV[3], 'o', '')
redis.call('PEXPIREAT', KEYS[1], string.format('%d', now + tonumber(ARGV[4])))
return {'ok'}
";

const RENEW_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local r = redis.call('HMGET', KEYS[1], 'f', 's')
if r[1] == ARGV[1] and r[2] == 'i' then
  redis.call('HSET', KEYS[1], 'l', string.format('%d', now + tonumber(ARGV[2])))
  return 1
end
return 0
";

// A released claim keeps its record (and fence) so the next claim's fence is above it.
const RELEASE_LUA: &str = r"
local r = redis.call('HMGET', KEYS[1], 'f', 's')
if r[1] == ARGV[1] and r[2] == 'i' then
  redis.call('HSET', KEYS[1], 's', 'r', 'l', '0', 'o', '')
  return 1
end
return 0
";

static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(CLAIM_LUA));
static FINISH: LazyLock<Script> = LazyLock::new(|| Script::new(FINISH_LUA));
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW_LUA));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_LUA));

/// Guard state on Redis (feature `redis`): a fleet of workers on many machines shares it.
///
/// Each key is one hash, and each operation one Lua script on that key alone, so it works
/// on a Redis Cluster as it does on one server, and time (leases, expiries) is the server's.
/// The key's Redis TTL is the record's, so Redis forgets completed keys by itself. Run it
/// on a Redis that persists (AOF) and never evicts (`maxmemory-policy noeviction`):
/// [`RedisSafety`](super::RedisSafety) checks both.
///
/// ```no_run
/// use std::sync::Arc;
/// use guardrails::state::{Idempotency, Outcome, RedisConfig, RedisStore};
///
/// let store = RedisStore::connect("redis://127.0.0.1:6379/0", RedisConfig::default())?;
/// let effects = Idempotency::new(Arc::new(store));
/// let key = effects.key("ledger", "order-17");
/// match effects.run(&key, "fp", |fence| Ok(format!("written with fence {fence}")))? {
///     Outcome::Executed(r) | Outcome::Cached(r) => println!("{r}"),
///     other => println!("not now: {other:?}"),
/// }
/// # Ok::<(), guardrails::GuardrailError>(())
/// ```
#[derive(Debug, Clone)]
pub struct RedisStore {
    conn: RedisConnection,
}

/// A claim request that owns its strings, to cross into the connection's runtime.
struct OwnedClaim {
    key: String,
    fingerprint: String,
    owner: String,
    lease: Duration,
    ttl: Duration,
}

impl RedisStore {
    /// The store on `conn` (shared with the other Redis-backed guards).
    pub fn new(conn: RedisConnection) -> Self {
        Self { conn }
    }

    /// Connects to the server at `url` (see [`RedisConnection::connect`]).
    pub fn connect(url: &str, config: RedisConfig) -> Result<Self> {
        RedisConnection::connect(url, config).map(Self::new)
    }

    /// The connection it runs on.
    pub fn connection(&self) -> &RedisConnection {
        &self.conn
    }

    /// [`StateStore::claim`] on the caller's tokio runtime.
    pub async fn claim_async(&self, request: &ClaimRequest<'_>) -> Result<Claim> {
        check_key(request.key)?;
        let operation = "claim";
        let reply = self
            .conn
            .eval(
                operation,
                &CLAIM,
                &[request.key.as_bytes()],
                &[
                    request.fingerprint.as_bytes(),
                    request.owner.as_bytes(),
                    ms(request.lease).max(1).to_string().as_bytes(),
                    ms(request.ttl).max(1).to_string().as_bytes(),
                ],
            )
            .await?;
        self.parse_claim(request.key, reply)
    }

    /// [`StateStore::renew`] on the caller's tokio runtime.
    pub async fn renew_async(&self, key: &str, fence: Fence, lease: Duration) -> Result<bool> {
        check_key(key)?;
        let reply = self
            .conn
            .eval(
                "renew",
                &RENEW,
                &[key.as_bytes()],
                &[
                    fence.0.to_string().as_bytes(),
                    ms(lease).max(1).to_string().as_bytes(),
                ],
            )
            .await?;
        Ok(matches!(reply, Value::Int(1)))
    }

    /// [`StateStore::complete`] on the caller's tokio runtime.
    pub async fn complete_async(
        &self,
        key: &str,
        fence: Fence,
        result: &[u8],
        ttl: Duration,
    ) -> Result<()> {
        self.finish(key, fence, RecordState::Completed, result, ttl)
            .await
    }

    /// [`StateStore::fail`] on the caller's tokio runtime.
    pub async fn fail_async(
        &self,
        key: &str,
        fence: Fence,
        message: &str,
        ttl: Duration,
    ) -> Result<()> {
        self.finish(key, fence, RecordState::Failed, message.as_bytes(), ttl)
            .await
    }

    /// [`StateStore::release`] on the caller's tokio runtime.
    pub async fn release_async(&self, key: &str, fence: Fence) -> Result<()> {
        check_key(key)?;
        self.conn
            .eval(
                "release",
                &RELEASE,
                &[key.as_bytes()],
                &[fence.0.to_string().as_bytes()],
            )
            .await?;
        Ok(())
    }

    async fn finish(
        &self,
        key: &str,
        fence: Fence,
        state: RecordState,
        payload: &[u8],
        ttl: Duration,
    ) -> Result<()> {
        check_key(key)?;
        let letter: &[u8] = match state {
            RecordState::Completed => b"c",
            _ => b"f",
        };
        let operation = finish_operation(state);
        let reply = self
            .conn
            .eval(
                operation,
                &FINISH,
                &[key.as_bytes()],
                &[
                    fence.0.to_string().as_bytes(),
                    letter,
                    payload,
                    ms(ttl).max(1).to_string().as_bytes(),
                ],
            )
            .await?;
        let parts = self.array(operation, reply)?;
        match parts.first().map(Vec::as_slice) {
            Some(b"ok") => Ok(()),
            Some(b"expired") => check_fence(self.conn.label(), key, None, fence, operation),
            Some(b"stale") => {
                let held = parts
                    .get(1)
                    .and_then(|f| std::str::from_utf8(f).ok())
                    .and_then(|f| f.parse::<u64>().ok())
                    .unwrap_or(0);
                let state = parts.get(2).map(Vec::as_slice);
                let record = state_of(state).map(|state| Record {
                    fence: held,
                    owner: String::new(),
                    fingerprint: String::new(),
                    state,
                    lease_until_ms: 0,
                    expires_ms: 0,
                    payload: Vec::new(),
                });
                check_fence(self.conn.label(), key, record.as_ref(), fence, operation)
            }
            _ => Err(self.unexpected(operation, &parts)),
        }
    }

    fn parse_claim(&self, key: &str, reply: Value) -> Result<Claim> {
        let operation = "claim";
        let parts = self.array(operation, reply)?;
        let text = |i: usize| {
            parts
                .get(i)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        let number = |i: usize| {
            parts
                .get(i)
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|s| s.parse::<i64>().ok())
        };
        Ok(match parts.first().map(Vec::as_slice) {
            Some(b"acquired") => match (number(1), number(2)) {
                (Some(fence), Some(takeover)) => Claim::Acquired {
                    fence: Fence(u64::try_from(fence).unwrap_or(0)),
                    takeover: takeover == 1,
                },
                _ => return Err(self.unexpected(operation, &parts)),
            },
            Some(b"completed") => Claim::Completed {
                result: parts.get(1).cloned().unwrap_or_default(),
            },
            Some(b"failed") => Claim::Failed { message: text(1) },
            Some(b"in_progress") => Claim::InProgress {
                retry_after: Duration::from_millis(
                    number(1).and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
                ),
            },
            Some(b"mismatch") => Claim::Mismatch { stored: text(1) },
            _ => {
                return Err(self
                    .conn
                    .protocol_error(&format!("{operation} {key}"), describe(&parts)));
            }
        })
    }

    /// A script's reply as the byte strings of its array (integers in decimal).
    fn array(&self, operation: &str, reply: Value) -> Result<Vec<Vec<u8>>> {
        let Value::Array(items) = reply else {
            return Err(self
                .conn
                .protocol_error(operation, format!("expected an array, got {reply:?}")));
        };
        items
            .into_iter()
            .map(|v| match v {
                Value::BulkString(b) => Ok(b),
                Value::SimpleString(s) => Ok(s.into_bytes()),
                Value::Int(n) => Ok(n.to_string().into_bytes()),
                Value::Nil => Ok(Vec::new()),
                other => Err(self.conn.protocol_error(
                    operation,
                    format!("expected strings and integers, got {other:?}"),
                )),
            })
            .collect()
    }

    fn unexpected(&self, operation: &str, parts: &[Vec<u8>]) -> crate::GuardrailError {
        self.conn.protocol_error(operation, describe(parts))
    }
}

impl StateStore for RedisStore {
    fn claim(&self, request: &ClaimRequest<'_>) -> Result<Claim> {
        let store = self.clone();
        let owned = OwnedClaim {
            key: request.key.to_string(),
            fingerprint: request.fingerprint.to_string(),
            owner: request.owner.to_string(),
            lease: request.lease,
            ttl: request.ttl,
        };
        self.conn.block_on(async move {
            let request = ClaimRequest {
                key: &owned.key,
                fingerprint: &owned.fingerprint,
                owner: &owned.owner,
                lease: owned.lease,
                ttl: owned.ttl,
            };
            store.claim_async(&request).await
        })
    }

    fn renew(&self, key: &str, fence: Fence, lease: Duration) -> Result<bool> {
        let (store, key) = (self.clone(), key.to_string());
        self.conn
            .block_on(async move { store.renew_async(&key, fence, lease).await })
    }

    fn complete(&self, key: &str, fence: Fence, result: &[u8], ttl: Duration) -> Result<()> {
        let (store, key, result) = (self.clone(), key.to_string(), result.to_vec());
        self.conn
            .block_on(async move { store.complete_async(&key, fence, &result, ttl).await })
    }

    fn fail(&self, key: &str, fence: Fence, message: &str, ttl: Duration) -> Result<()> {
        let (store, key, message) = (self.clone(), key.to_string(), message.to_string());
        self.conn
            .block_on(async move { store.fail_async(&key, fence, &message, ttl).await })
    }

    fn release(&self, key: &str, fence: Fence) -> Result<()> {
        let (store, key) = (self.clone(), key.to_string());
        self.conn
            .block_on(async move { store.release_async(&key, fence).await })
    }
}

fn state_of(letter: Option<&[u8]>) -> Option<RecordState> {
    match letter {
        Some(b"i") => Some(RecordState::InProgress),
        Some(b"c") => Some(RecordState::Completed),
        Some(b"f") => Some(RecordState::Failed),
        _ => None,
    }
}

fn describe(parts: &[Vec<u8>]) -> String {
    let words: Vec<String> = parts
        .iter()
        .take(4)
        .map(|p| String::from_utf8_lossy(&p[..p.len().min(64)]).into_owned())
        .collect();
    format!("the script answered an unknown reply {words:?}")
}
