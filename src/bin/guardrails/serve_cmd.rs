//! `guardrails serve --config FILE`: the HTTP health server for Kubernetes probes, canary
//! gates and Prometheus.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use guardrails::GuardrailError;
use guardrails::server::config::ServeConfig;

use crate::Status;
use crate::output::{Format, Output};

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The TOML document: `[server]`, `[metrics]`, `[[models]]` with their probes.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Listen here instead of `server.bind` (port 0 picks a free port; the address is
    /// printed on stdout).
    #[arg(long, value_name = "ADDR")]
    bind: Option<SocketAddr>,
}

pub(crate) fn run(args: ServeArgs, out: &Output) -> Status {
    let mut config = match ServeConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            out.problem("serve", &e);
            return Status::Usage;
        }
    };
    if let Some(bind) = args.bind {
        config.server.bind = bind;
    }
    // SIGINT and SIGTERM are blocked before any thread starts, so every thread inherits the
    // mask and this thread alone takes them (with sigwait, below).
    let mut signals = nix::sys::signal::SigSet::empty();
    signals.add(nix::sys::signal::Signal::SIGINT);
    signals.add(nix::sys::signal::Signal::SIGTERM);
    if let Err(errno) = signals.thread_block() {
        let e = GuardrailError::Io {
            path: None,
            source: std::io::Error::from(errno),
        };
        out.problem("serve: blocking SIGINT and SIGTERM", &e);
        return Status::Usage;
    }
    let server = match config.build().and_then(|s| s.start_background()) {
        Ok(s) => s,
        Err(e) => {
            out.problem("serve", &e);
            return Status::Usage;
        }
    };
    let addr = server.local_addr();
    match out.format() {
        Format::Json => out.json(&serde_json::json!({ "listening": addr.to_string() })),
        Format::Human => out.text(&format!("listening on http://{addr}\n")),
    }
    // Scripts read the address before they send the first request.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let signal = signals.wait();
    tracing::info!(?signal, "stopping the health server");
    server.shutdown();
    Status::Ok
}
