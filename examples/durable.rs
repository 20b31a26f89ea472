//! A two-stage run killed with SIGKILL in its second stage, then resumed: the first stage's
//! committed outputs are kept and skipped, the second stage's half-written output never
//! became visible, and the resumed run finishes it.
//!
//! `cargo run --example durable --features durable`

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use guardrails::durable::{ResumeOptions, RunId, RunRegistry, RunStatus};

const STAGES: [&str; 2] = ["extract", "transform"];

fn extract(registry: &RunRegistry, run: &RunId, root: &Path) -> guardrails::Result<()> {
    registry.run_stage(run, "extract", |stage| {
        stage.write(root.join("rows.csv"), |w| {
            for i in 0..1000 {
                writeln!(w, "{i},{}", i * 7 % 13)?;
            }
            Ok(())
        })?;
        stage.record("rows", 1000);
        Ok(())
    })
}

fn transform(
    registry: &RunRegistry,
    run: &RunId,
    root: &Path,
    die: bool,
) -> guardrails::Result<()> {
    registry.run_stage(run, "transform", |stage| {
        let rows = std::fs::read_to_string(root.join("rows.csv"))?;
        stage.write(root.join("scores.csv"), |w| {
            for (n, line) in rows.lines().enumerate() {
                writeln!(w, "{line},{}", line.len())?;
                if die && n == 500 {
                    w.flush()?;
                    // Half the output is on disk under a temporary name; the parent kills us.
                    println!("half-way");
                    std::io::stdout().flush()?;
                    std::thread::park();
                }
            }
            Ok(())
        })?;
        stage.checkpoint(&rows.lines().count())?;
        Ok(())
    })
}

/// The first process: starts the run, commits `extract`, and is killed inside `transform`.
fn worker(root: &Path) -> guardrails::Result<()> {
    let registry = RunRegistry::open(RunRegistry::default_path(root))?;
    let run = registry.start_run("example", "config-v1")?;
    println!("run {run}");
    extract(&registry, &run, root)?;
    transform(&registry, &run, root, true)
}

fn main() -> guardrails::Result<()> {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("--worker") {
        let root = args.next().unwrap_or_default();
        return worker(Path::new(&root));
    }
    let root = tempfile::tempdir()?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--worker")
        .arg(root.path())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut run = None;
    for line in BufReader::new(
        child
            .stdout
            .take()
            .ok_or_else(|| guardrails::GuardrailError::external("no stdout"))?,
    )
    .lines()
    {
        let line = line?;
        if let Some(id) = line.strip_prefix("run ") {
            run = Some(RunId::new(id));
        }
        if line == "half-way" {
            break;
        }
    }
    child.kill()?; // SIGKILL
    child.wait()?;
    let run =
        run.ok_or_else(|| guardrails::GuardrailError::external("the worker printed no run id"))?;
    println!("worker killed in the middle of `transform` of run {run}");
    println!(
        "scores.csv visible after the kill: {}",
        root.path().join("scores.csv").exists()
    );

    // A new process: open (recovering any interrupted commit), ask what is left, go on.
    let registry = RunRegistry::open(RunRegistry::default_path(root.path()))?;
    println!(
        "run status: {}",
        registry.run(&run)?.map_or("unknown", |r| r.status.as_str())
    );
    let plan = registry.resume(&run, &ResumeOptions::new().with_stages(STAGES))?;
    for stage in &plan.stages {
        println!("  {:<9} {:?}: {}", stage.stage, stage.state, stage.reason);
    }
    let leftovers = registry.verify(&run)?;
    println!(
        "verify before repair: {} problem(s)",
        leftovers.problems.len()
    );
    let repaired = registry.repair(&run, std::time::Duration::ZERO)?;
    println!(
        "repair removed {} temporary file(s)",
        repaired.removed.len()
    );

    registry.continue_run(&run)?;
    if !plan.is_done("extract") {
        extract(&registry, &run, root.path())?;
    }
    if !plan.is_done("transform") {
        transform(&registry, &run, root.path(), false)?;
    }
    registry.finish_run(&run, RunStatus::Succeeded)?;
    let rows = registry
        .load_checkpoint::<usize>(&run, "transform")?
        .map_or(0, |c| c.value);
    println!(
        "resumed run finished: transform wrote {rows} rows; consistent: {}",
        registry.verify(&run)?.is_consistent()
    );
    Ok(())
}
