//! The first program a new user runs: load a config, see an error's class and context.
//!
//! Run it with `cargo run --example quickstart`. It grows as parts of the crate land.

use std::time::Duration;

use guardrails::prelude::*;

fn read_manifest(path: &str) -> guardrails::Result<String> {
    std::fs::read_to_string(path)
        .path(path)
        .stage("ingest")
        .hint("run the export stage first")
}

fn main() -> guardrails::Result<()> {
    let config: GuardrailsConfig = r#"
        [retry]
        max_retries = 4
        initial_delay = "250ms"
        max_delay = "2s"
        jitter = "full"
    "#
    .parse()?;
    let delays: Vec<Duration> = config.retry.delays().collect();
    println!("retry delays before jitter: {delays:?}");

    match "[retry]\nbase = 0.5\nmax_retires = 2\n".parse::<GuardrailsConfig>() {
        Ok(_) => println!("unexpected: a bad config was accepted"),
        Err(e) => println!("bad config refused: {e}"),
    }

    let err = match read_manifest("/nonexistent/manifest.csv") {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    println!("error:   {}", err.report());
    println!(
        "class:   {} (retry it? {})",
        err.class(),
        err.class().is_retryable()
    );
    let json = serde_json::to_string_pretty(&err).map_err(GuardrailError::external)?;
    println!("as json: {json}");
    Ok(())
}
