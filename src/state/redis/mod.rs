//! Guard state on Redis (feature `redis`): the connection every Redis-backed guard shares,
//! the [`RedisStore`] backend of [`StateStore`](super::StateStore), and the [`RedisSafety`]
//! check of the server itself.

mod breaker;
mod conn;
mod rate;
mod safety;
mod store;
mod window;

pub use breaker::RedisBreakerState;
pub use conn::{RedisConfig, RedisConnection};
pub use rate::RedisRateLimit;
pub use safety::{RedisSafety, SAFETY_CHECKS, SafetyFinding, SafetyLevel, SafetyReport};
pub use store::RedisStore;
pub use window::RedisWindowCounts;
