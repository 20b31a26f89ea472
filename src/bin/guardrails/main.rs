//! `guardrails`: the command-line face of the library, for scripts and CI.
//!
//! Exit codes are a contract: 0 all good, 1 a check failed, 2 bad usage or config, 3 nothing
//! failed but a file could not be verified (it uses a feature the checker cannot read);
//! `once` exits with its command's code, or 75 (EX_TEMPFAIL) to say "try again later".

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod config_cmd;
mod health_cmd;
mod history_cmd;
mod json_cmd;
mod once_cmd;
mod output;
mod pipeline_cmd;
mod redis_cmd;
mod runs_cmd;
mod serve_cmd;
mod validate_cmd;

use output::{Format, Output};

/// Guards for data and ML pipelines.
#[derive(Debug, Parser)]
#[command(name = "guardrails", version, about, propagate_version = true)]
struct Cli {
    /// Output format; `human` is coloured only on a terminal.
    #[arg(long, global = true, value_enum, default_value_t = Format::Human)]
    format: Format,

    /// More log output on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,

    /// Less log output on stderr (-q errors only, -qq nothing).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    quiet: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with configuration files.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Check memory, CPU, disk, file descriptors and GPUs against limits. Exit 1 when the
    /// status is at or above --fail-on.
    Health(health_cmd::HealthArgs),
    /// Read a metrics history file: one metric's points, the detectors' anomalies.
    #[command(subcommand)]
    History(history_cmd::HistoryCommand),
    /// Read an LLM's answer on stdin and print the valid JSON in it (repaired unless
    /// --strict). Exit 1 when no valid JSON could be produced.
    Json(json_cmd::JsonArgs),
    /// Check whether a declared pipeline's stages can start: the machine, each upstream
    /// stage committed (in the registry's newest run) with its outputs re-validated, every
    /// input. Exit 0 ready, 1 not ready, 2 usage or config error.
    Preflight(pipeline_cmd::PreflightArgs),
    /// Show the gate results recorded for a run of a declared pipeline. Exit 0 no
    /// mandatory gate failed, 1 one did, 2 usage, config or unknown run.
    Gates(pipeline_cmd::GatesArgs),
    /// Run a command once per key across every worker sharing the store: a later call
    /// replays its stdout and exit code; exit 75 while another worker runs it.
    Once(once_cmd::OnceArgs),
    /// Check a Redis before guards keep state on it.
    #[command(subcommand)]
    Redis(redis_cmd::RedisCommand),
    /// Read a pipeline's run registry: runs, stage attempts, artifacts, consistency.
    #[command(subcommand)]
    Runs(runs_cmd::RunsCommand),
    /// Serve health and metrics over HTTP (/health, /health/{name}, /health/live,
    /// /health/ready, /health/llm?model=NAME|all, /metrics) until SIGINT or SIGTERM. Exit 0
    /// after a clean stop, 2 for a bad config or an address that cannot be bound.
    Serve(serve_cmd::ServeArgs),
    /// Check data files before a pipeline uses them.
    #[command(subcommand)]
    Validate(validate_cmd::ValidateCommand),
}

/// The process exit status of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Everything checked out.
    Ok = 0,
    /// A check ran and failed.
    CheckFailed = 1,
    /// Bad usage or bad configuration.
    Usage = 2,
    /// Nothing failed, but a file uses a feature the checker cannot read.
    Unsupported = 3,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout with code 0, usage errors to stderr with 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                Status::Usage as u8
            } else {
                0
            });
        }
    };
    init_tracing(cli.verbose, cli.quiet);
    let out = Output::new(cli.format);
    let status = match cli.command {
        Command::Config(cmd) => config_cmd::run(cmd, &out),
        Command::Health(args) => health_cmd::run(args, &out),
        Command::History(cmd) => history_cmd::run(cmd, &out),
        Command::Json(args) => json_cmd::run(args, &out),
        Command::Preflight(args) => pipeline_cmd::preflight(args, &out),
        Command::Gates(args) => pipeline_cmd::gates(args, &out),
        Command::Once(args) => return once_cmd::run(args),
        Command::Redis(cmd) => redis_cmd::run(cmd, &out),
        Command::Runs(cmd) => runs_cmd::run(cmd, &out),
        Command::Serve(args) => serve_cmd::run(args, &out),
        Command::Validate(cmd) => validate_cmd::run(cmd, &out),
    };
    ExitCode::from(status as u8)
}

fn init_tracing(verbose: u8, quiet: u8) {
    use tracing_subscriber::EnvFilter;
    // Without -v the CLI prints every integrity finding and JSON-guard problem itself, in
    // its report; the library's events for the same findings would say each one twice.
    // mp4parse's notes on fields it reads leniently are not findings of the file.
    let level = match (verbose, quiet) {
        (0, 0) => {
            "warn,guardrails::integrity=off,guardrails::json_guard=off,guardrails::pipeline=off,mp4parse=off"
        }
        (1, _) => "info",
        (2, _) => "debug",
        (v, _) if v >= 3 => "trace",
        (_, 1) => {
            "error,guardrails::integrity=off,guardrails::json_guard=off,guardrails::pipeline=off,mp4parse=off"
        }
        _ => "off",
    };
    // RUST_LOG, when set, wins: it is how users ask for one module's logs.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
