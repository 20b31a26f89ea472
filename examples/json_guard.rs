//! The JSON hard guard around a (simulated) model that answers badly before it answers well.
//!
//! Run with `cargo run --example json_guard`.

use guardrails::json_guard::{Generation, JsonGuardConfig, JsonHardGuard};
use guardrails::prelude::*;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[allow(dead_code, reason = "printed through Debug")]
struct Ticket {
    category: String,
    priority: u8,
    summary: String,
}

fn main() -> guardrails::Result<()> {
    let guard = JsonHardGuard::new(JsonGuardConfig::new())?.with_clock(ManualClock::new());
    let answers = [
        Err(GuardrailError::external_with_class(
            std::io::Error::other("connection reset by the model server"),
            ErrorClass::Retryable,
        )),
        Ok(Generation::from(
            "Here is the ticket: {category: 'billing', priority: 'high'}",
        )),
        Ok(Generation::from(
            "```json\n{'category': 'billing', 'priority': 2, 'summary': 'double charge',}\n```",
        )),
    ];
    let mut answers = answers.into_iter();
    let outcome = guard.run_with_fallback::<Ticket, _, _>(
        |feedback| {
            let message = feedback.message();
            if !message.is_empty() {
                println!("re-ask with:\n{message}\n");
            }
            answers.next().unwrap_or_else(|| Ok(Generation::from("{}")))
        },
        || Ticket {
            category: "unknown".into(),
            priority: 3,
            summary: String::new(),
        },
    )?;
    println!("value: {:?}", outcome.value);
    println!(
        "attempts: {}, fallback used: {}",
        outcome.attempts, outcome.fallback_used
    );
    for fix in &outcome.fixes {
        println!("fix: {fix}");
    }
    for e in &outcome.errors {
        println!("problem: attempt {} {:?}: {e}", e.attempt, e.kind);
    }
    Ok(())
}
