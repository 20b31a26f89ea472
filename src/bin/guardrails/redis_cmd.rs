//! `guardrails redis check URL`: whether a Redis is safe to keep guard state on.

use std::time::Duration;

use clap::{Args, Subcommand};
use guardrails::state::{RedisConfig, RedisConnection, RedisSafety, SafetyLevel};

use crate::Status;
use crate::output::{Format, Output};

#[derive(Debug, Subcommand)]
pub(crate) enum RedisCommand {
    /// Check persistence, eviction policy, memory headroom and role. Exit 0 when nothing is
    /// ERROR or CRITICAL, 1 otherwise, 2 usage or unreachable.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The server: `redis://[user:password@]host:port/db` or `rediss://…`.
    url: String,
    /// Accept an ERROR of this check as a WARNING (repeatable): `persistence`,
    /// `maxmemory_policy`, `memory_headroom`.
    #[arg(long = "acknowledge", value_name = "CHECK")]
    acknowledge: Vec<String>,
}

pub(crate) fn run(cmd: RedisCommand, out: &Output) -> Status {
    match cmd {
        RedisCommand::Check(args) => check(&args, out),
    }
}

fn check(args: &CheckArgs, out: &Output) -> Status {
    let config = RedisConfig::default()
        .with_connect_timeout(Duration::from_secs(3))
        .with_response_timeout(Duration::from_secs(3))
        .with_attempts(2);
    let mut safety = RedisSafety::new();
    for check in &args.acknowledge {
        safety = safety.acknowledge(check, "acknowledged on the command line");
    }
    let report = match RedisConnection::connect(&args.url, config).and_then(|c| safety.check(&c)) {
        Ok(r) => r,
        Err(e) => {
            // The URL may hold a password: the error names the server without it.
            out.problem("redis", &e);
            return Status::Usage;
        }
    };
    match out.format() {
        Format::Json => out.json(&serde_json::to_value(&report).unwrap_or_default()),
        Format::Human => {
            let mut text = format!("{}: {}\n", report.server, report.level);
            for f in &report.checks {
                text.push_str(&format!(
                    "  {:<8} {:<16} {}\n",
                    f.level.as_str(),
                    f.check,
                    f.message
                ));
            }
            out.text(&text);
        }
    }
    if report.level >= SafetyLevel::Error {
        Status::CheckFailed
    } else {
        Status::Ok
    }
}
