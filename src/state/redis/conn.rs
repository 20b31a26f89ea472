//! One connection to Redis (a server or a cluster) shared by every Redis-backed guard, with
//! the error classes, retries and the bridge that lets synchronous guards call it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{ErrorKind, RedisError, RetryMethod, Value};

use crate::error::{ErrorClass, GuardrailError, Result};

/// How a [`RedisConnection`] talks to the server.
///
/// | field | default | meaning |
/// |---|---|---|
/// | `connect_timeout` | 2 s | one connection attempt |
/// | `response_timeout` | 1 s | one command's answer; past it the call fails retryable |
/// | `attempts` | 3 | tries of one guard operation on a dropped connection or timeout (the first command after the server's idle timeout can fail with a broken pipe) |
/// | `retry_delay` | 20 ms | the wait before the second try, doubling after |
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisConfig {
    /// One connection attempt.
    pub connect_timeout: Duration,
    /// One command's answer.
    pub response_timeout: Duration,
    /// Tries of one operation (at least 1).
    pub attempts: u32,
    /// The wait before the second try; it doubles after each.
    pub retry_delay: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(1),
            attempts: 3,
            retry_delay: Duration::from_millis(20),
        }
    }
}

impl RedisConfig {
    /// With `timeout` for one command's answer.
    #[must_use]
    pub fn with_response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// With `timeout` for one connection attempt.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// With `attempts` tries of one operation.
    #[must_use]
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }

    fn validate(&self) -> Result<()> {
        if self.attempts == 0 {
            return Err(GuardrailError::config(
                "redis.attempts",
                "at least 1 try of each operation",
            ));
        }
        for (key, d) in [
            ("redis.connect_timeout", self.connect_timeout),
            ("redis.response_timeout", self.response_timeout),
        ] {
            if d.is_zero() {
                return Err(GuardrailError::config(key, "a timeout above zero"));
            }
        }
        Ok(())
    }
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A connection to Redis or a Redis Cluster, cheap to clone, shared by the Redis-backed
/// guards ([`RedisStore`](super::RedisStore), the safety check).
///
/// It reconnects by itself (redis-rs's `ConnectionManager`, or its cluster connection), and
/// every guard operation is a Lua script run through `EVALSHA` that reloads itself after a
/// restart, a failover or `SCRIPT FLUSH`. The URL's password is kept out of its `Debug`
/// output and out of every error: both name the server as `redis://host:port/db`.
///
/// The connection's own tasks run on a small tokio runtime on one background thread, so the
/// guards work in programs without tokio and a synchronous call cannot starve them; async
/// callers use the `*_async` methods, which run on the caller's runtime.
///
/// ```no_run
/// use guardrails::state::{RedisConfig, RedisConnection};
///
/// let redis = RedisConnection::connect("redis://:secret@127.0.0.1:6379/0", RedisConfig::default())?;
/// assert_eq!(format!("{redis:?}"), "RedisConnection(redis://127.0.0.1:6379/0)");
/// # Ok::<(), guardrails::GuardrailError>(())
/// ```
#[derive(Clone)]
pub struct RedisConnection {
    inner: Arc<Inner>,
}

struct Inner {
    label: String,
    /// Words that must never reach an error message: the URL's password and user.
    secrets: Vec<String>,
    conn: Conn,
    config: RedisConfig,
    bridge: Bridge,
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisConnection({})", self.inner.label)
    }
}

impl RedisConnection {
    /// Connects to the server at `url` (`redis://`, `rediss://` for TLS, with
    /// `user:password@` for AUTH, `/N` for the database). Unreachable is a retryable error.
    pub fn connect(url: &str, config: RedisConfig) -> Result<Self> {
        let bridge = Bridge::start()?;
        let url = url.to_string();
        let c = config.clone();
        let conn = bridge.run(async move { connect_single(&url, &c).await })??;
        Self::assemble(conn, config, bridge)
    }

    /// Connects to a Redis Cluster through any of `urls` (its other nodes are discovered).
    pub fn connect_cluster(urls: &[&str], config: RedisConfig) -> Result<Self> {
        let bridge = Bridge::start()?;
        let urls: Vec<String> = urls.iter().map(|u| (*u).to_string()).collect();
        let c = config.clone();
        let conn = bridge.run(async move { connect_cluster(&urls, &c).await })??;
        Self::assemble(conn, config, bridge)
    }

    fn assemble(conn: Connected, config: RedisConfig, bridge: Bridge) -> Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                label: conn.label,
                secrets: conn.secrets,
                conn: conn.conn,
                config,
                bridge,
            }),
        })
    }

    /// The server as errors name it: `redis://host:port/db`, no credentials.
    pub fn label(&self) -> &str {
        &self.inner.label
    }

    /// The redis-rs connection manager, for the caller's own commands on the same
    /// connection (`None` for a cluster).
    pub fn manager(&self) -> Option<ConnectionManager> {
        match &self.inner.conn {
            Conn::Single(m) => Some(m.clone()),
            Conn::Cluster(_) => None,
        }
    }

    /// Runs `script` with `keys` and `args`, retrying a dropped connection or a timeout
    /// `attempts` times. Every script the crate runs is safe to run twice.
    pub(crate) async fn eval(
        &self,
        operation: &str,
        script: &redis::Script,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<Value> {
        let mut invocation = script.prepare_invoke();
        for k in keys {
            invocation.key(*k);
        }
        for a in args {
            invocation.arg(*a);
        }
        let backoff = self.backoff();
        let mut attempt = 1;
        loop {
            let result: std::result::Result<Value, RedisError> = match &self.inner.conn {
                Conn::Single(m) => invocation.invoke_async(&mut m.clone()).await,
                Conn::Cluster(c) => invocation.invoke_async(&mut c.clone()).await,
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e)
                    if attempt < self.inner.config.attempts
                        && class_of(&e) == ErrorClass::Retryable =>
                {
                    tracing::debug!(store = %self.inner.label, operation, attempt, error = %self.scrub(&e.to_string()), "redis operation retried");
                    tokio::time::sleep(backoff.delay(attempt - 1)).await;
                    attempt += 1;
                }
                Err(e) => return Err(self.error(operation, &e)),
            }
        }
    }

    fn backoff(&self) -> crate::backoff::Backoff {
        let first = self.inner.config.retry_delay;
        crate::backoff::Backoff::new(first, first.saturating_mul(16), 2.0)
    }

    /// Runs one plain command (`INFO`, `CONFIG GET`, `COMMAND INFO`) with the same retries.
    pub(crate) async fn command(&self, operation: &str, cmd: &redis::Cmd) -> Result<Value> {
        let backoff = self.backoff();
        let mut attempt = 1;
        loop {
            let result: std::result::Result<Value, RedisError> = match &self.inner.conn {
                Conn::Single(m) => cmd.query_async(&mut m.clone()).await,
                Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e)
                    if attempt < self.inner.config.attempts
                        && class_of(&e) == ErrorClass::Retryable =>
                {
                    tokio::time::sleep(backoff.delay(attempt - 1)).await;
                    attempt += 1;
                }
                Err(e) => return Err(self.error(operation, &e)),
            }
        }
    }

    /// Runs `future` to its end from synchronous code (on the connection's background
    /// runtime, so it works inside and outside tokio).
    pub(crate) fn block_on<T: Send + 'static>(
        &self,
        future: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        self.inner.bridge.run(future)?
    }

    /// The error for `e` during `operation`, with its class and no credentials.
    pub(crate) fn error(&self, operation: &str, e: &RedisError) -> GuardrailError {
        GuardrailError::Store {
            store: self.inner.label.clone(),
            operation: operation.to_string(),
            reason: self.scrub(&e.to_string()),
            class: class_of(e),
            source: None,
        }
    }

    /// An error of the store's own making (a reply it did not expect).
    pub(crate) fn protocol_error(&self, operation: &str, reason: String) -> GuardrailError {
        GuardrailError::Store {
            store: self.inner.label.clone(),
            operation: operation.to_string(),
            reason: self.scrub(&reason),
            class: ErrorClass::Fatal,
            source: None,
        }
    }

    fn scrub(&self, text: &str) -> String {
        scrub_with(&self.inner.secrets, text)
    }
}

struct Connected {
    label: String,
    secrets: Vec<String>,
    conn: Conn,
}

fn parse_info(url: &str) -> Result<(redis::ConnectionInfo, String, Vec<String>)> {
    use redis::IntoConnectionInfo;
    // The URL may hold a password: the error names the scheme only.
    let info = url.into_connection_info().map_err(|e| {
        GuardrailError::config(
            "redis.url",
            format!(
                "a redis://, rediss:// or redis+unix:// URL ({})",
                match e.kind() {
                    ErrorKind::InvalidClientConfig => "this one does not parse",
                    _ => "this one is refused",
                }
            ),
        )
    })?;
    let settings = info.redis_settings();
    let mut secrets = Vec::new();
    if let Some(p) = settings.password().filter(|p| !p.is_empty()) {
        secrets.push(p.to_string());
    }
    let label = label_of(&info);
    Ok((info, label, secrets))
}

fn label_of(info: &redis::ConnectionInfo) -> String {
    let db = info.redis_settings().db();
    match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => format!("redis://{host}:{port}/{db}"),
        redis::ConnectionAddr::TcpTls { host, port, .. } => format!("rediss://{host}:{port}/{db}"),
        redis::ConnectionAddr::Unix(path) => format!("redis+unix://{}", path.display()),
        other => format!("redis://{other}/{db}"),
    }
}

fn install_tls_provider() {
    // rediss:// builds a rustls config, which panics when the program's dependencies enable
    // two crypto providers and none is installed. Install ring (the one this crate brings)
    // only then: a provider the program chose wins. ring's default lacks post-quantum key
    // exchange, which is why rustls deprecates it; it avoids building aws-lc.
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

async fn connect_single(url: &str, config: &RedisConfig) -> Result<Connected> {
    config.validate()?;
    let (info, label, secrets) = parse_info(url)?;
    install_tls_provider();
    let fail = |e: RedisError| GuardrailError::Store {
        store: label.clone(),
        operation: "connect".to_string(),
        reason: scrub_with(&secrets, &e.to_string()),
        class: class_of(&e),
        source: None,
    };
    let client = redis::Client::open(info).map_err(fail)?;
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.response_timeout))
        .set_number_of_retries(1);
    let manager = tokio::time::timeout(
        config.connect_timeout.saturating_mul(2),
        client.get_connection_manager_with_config(manager_config),
    )
    .await
    .map_err(|_| GuardrailError::Store {
        store: label.clone(),
        operation: "connect".to_string(),
        reason: format!("no connection within {:?}", config.connect_timeout * 2),
        class: ErrorClass::Retryable,
        source: None,
    })?
    .map_err(fail)?;
    Ok(Connected {
        label,
        secrets,
        conn: Conn::Single(manager),
    })
}

async fn connect_cluster(urls: &[String], config: &RedisConfig) -> Result<Connected> {
    config.validate()?;
    let mut infos = Vec::new();
    let mut secrets = Vec::new();
    let mut labels = Vec::new();
    for u in urls {
        let (info, label, s) = parse_info(u)?;
        infos.push(info);
        secrets.extend(s);
        labels.push(label);
    }
    if infos.is_empty() {
        return Err(GuardrailError::config(
            "redis.cluster",
            "at least one node URL",
        ));
    }
    install_tls_provider();
    let label = format!("cluster {}", labels.join(","));
    let fail = |e: RedisError| GuardrailError::Store {
        store: label.clone(),
        operation: "connect".to_string(),
        reason: scrub_with(&secrets, &e.to_string()),
        class: class_of(&e),
        source: None,
    };
    let client = redis::cluster::ClusterClient::builder(infos)
        .connection_timeout(config.connect_timeout)
        .response_timeout(config.response_timeout)
        .retries(2)
        .build()
        .map_err(fail)?;
    let conn = tokio::time::timeout(
        config.connect_timeout.saturating_mul(2),
        client.get_async_connection(),
    )
    .await
    .map_err(|_| GuardrailError::Store {
        store: label.clone(),
        operation: "connect".to_string(),
        reason: format!("no connection within {:?}", config.connect_timeout * 2),
        class: ErrorClass::Retryable,
        source: None,
    })?
    .map_err(fail)?;
    Ok(Connected {
        label,
        secrets,
        conn: Conn::Cluster(conn),
    })
}

fn scrub_with(secrets: &[String], text: &str) -> String {
    let mut out = text.to_string();
    for s in secrets {
        out = out.replace(s.as_str(), "***");
    }
    out
}

/// What a caller should do about `e`: a dropped connection, a timeout, a server that is
/// loading, read-only after a failover, out of memory or busy is worth a retry; a refused
/// password, a wrong type or a script error is not.
pub(crate) fn class_of(e: &RedisError) -> ErrorClass {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return ErrorClass::Retryable;
    }
    if matches!(
        e.code(),
        Some("LOADING" | "READONLY" | "MASTERDOWN" | "BUSY" | "TRYAGAIN" | "CLUSTERDOWN" | "OOM")
    ) {
        return ErrorClass::Retryable;
    }
    match e.kind() {
        ErrorKind::AuthenticationFailed | ErrorKind::InvalidClientConfig => ErrorClass::Fatal,
        _ => match e.retry_method() {
            RetryMethod::NoRetry => ErrorClass::Fatal,
            _ => ErrorClass::Retryable,
        },
    }
}

fn runtime_error(e: std::io::Error) -> GuardrailError {
    GuardrailError::Store {
        store: "redis".to_string(),
        operation: "start the connection's runtime".to_string(),
        reason: e.to_string(),
        class: ErrorClass::Recoverable,
        source: None,
    }
}

/// A tokio runtime on one background thread that synchronous callers hand futures to.
struct Bridge {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Bridge {
    fn start() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(runtime_error)?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("guardrails-redis".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(runtime_error)?;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn run<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv().map_err(|_| GuardrailError::Store {
            store: "redis".to_string(),
            operation: "run".to_string(),
            reason: "the connection's runtime stopped".to_string(),
            class: ErrorClass::Fatal,
            source: None,
        })
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            // Dropped from the bridge's own thread (the last clone released by a task on
            // it) it cannot join itself.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}
