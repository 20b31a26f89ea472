//! A real `redis-server` per test, on a free loopback port, stopped (SIGKILL) on drop.
#![allow(dead_code)] // each test crate uses its own subset

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One server. `args` are `redis-server` options (`--appendonly yes`, `--requirepass x`).
pub(crate) struct RedisServer {
    child: Option<Child>,
    pub(crate) port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
    /// Serves TLS only (on `port`), with the test CA's server certificate.
    tls: bool,
}

/// A port nothing listens on now.
pub(crate) fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl RedisServer {
    /// A server without persistence.
    pub(crate) fn start() -> Self {
        Self::with_args(&["--save", "", "--appendonly", "no"])
    }

    /// A server with `args` on top of a loopback port and a data dir of its own.
    pub(crate) fn with_args(args: &[&str]) -> Self {
        let mut s = Self {
            child: None,
            port: 0,
            dir: tempfile::tempdir().unwrap(),
            args: args.iter().map(|a| (*a).to_string()).collect(),
            tls: false,
        };
        // Another test may take the port between our probe and the bind: try a few.
        for _ in 0..5 {
            s.port = free_port();
            if s.spawn() {
                return s;
            }
        }
        panic!("redis-server did not start on a free port: {}", s.log());
    }

    /// A server that speaks TLS only, with the certificate of `tests/fixtures/tls` (its CA
    /// in `ca.pem`), AOF on.
    pub(crate) fn tls() -> Self {
        let mut s = Self {
            child: None,
            port: 0,
            dir: tempfile::tempdir().unwrap(),
            args: vec!["--appendonly".into(), "yes".into()],
            tls: true,
        };
        for _ in 0..5 {
            s.port = free_port();
            if s.spawn() {
                return s;
            }
        }
        panic!("redis-server did not start with TLS: {}", s.log());
    }

    /// The test CA that signed the TLS server's certificate.
    pub(crate) fn tls_ca() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls/ca.pem")
    }

    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        if self.tls {
            let tls = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
            cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(tls.join("server.pem"))
                .arg("--tls-key-file")
                .arg(tls.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(tls.join("ca.pem"))
                .args(["--tls-auth-clients", "no"]);
        } else {
            cmd.arg("--port").arg(self.port.to_string());
        }
        cmd.args(["--bind", "127.0.0.1", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!(
                "redis-server could not be started ({e}); the Redis tests need it: apt-get install redis-server"
            ),
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                self.child = None;
                return false;
            }
            // A TLS server is ready once it listens; the others once they answer PING.
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() && (self.tls || self.ping()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        false
    }

    fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url_with(self.password().as_deref())) else {
            return false;
        };
        let Ok(mut c) = client.get_connection_with_timeout(Duration::from_secs(1)) else {
            return false;
        };
        // A server loading its AOF answers LOADING: not ready yet.
        redis::cmd("PING").query::<String>(&mut c).is_ok()
    }

    fn password(&self) -> Option<String> {
        let i = self.args.iter().position(|a| a == "--requirepass")?;
        self.args.get(i + 1).cloned()
    }

    /// `redis://127.0.0.1:PORT/0`, no password.
    pub(crate) fn url(&self) -> String {
        self.url_with(None)
    }

    /// The URL with `password` for AUTH.
    pub(crate) fn url_with(&self, password: Option<&str>) -> String {
        match password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// A plain connection for the test's own commands.
    pub(crate) fn client(&self) -> redis::Connection {
        redis::Client::open(self.url_with(self.password().as_deref()))
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap()
    }

    /// SIGKILLs the server (its data dir stays, so `restart` reads its AOF).
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data dir.
    pub(crate) fn restart(&mut self) {
        self.kill();
        assert!(self.spawn(), "redis-server did not restart: {}", self.log());
    }

    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log(&self) -> String {
        let p: PathBuf = self.dir.path().join("redis.log");
        std::fs::read_to_string(p).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of three masters (no replicas) on free loopback ports, each a
/// [`RedisServer`] stopped on drop.
pub(crate) struct RedisCluster {
    pub(crate) nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub(crate) fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::with_args(&[
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Bounded wait until every node sees every slot served.
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &nodes {
            loop {
                let mut c = n.client();
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut c).unwrap();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster did not come up: {info}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Self { nodes }
    }

    /// The nodes' URLs.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}
