//! The error type: classification, context, display and JSON.

use std::error::Error as _;
use std::io;
use std::time::Duration;

use guardrails::prelude::*;

fn io_err(kind: io::ErrorKind) -> GuardrailError {
    GuardrailError::io("/data/x", io::Error::new(kind, "boom"))
}

fn timeout() -> GuardrailError {
    GuardrailError::Timeout {
        operation: "decode".into(),
        elapsed: Duration::from_millis(1500),
        limit: Duration::from_secs(1),
    }
}

#[test]
fn every_variant_has_its_class() {
    use ErrorClass::*;
    let cases: Vec<(GuardrailError, ErrorKind, ErrorClass)> = vec![
        (
            GuardrailError::ResourceExhausted {
                resource: "memory".into(),
                used: 3.0,
                limit: 2.0,
                unit: "bytes".into(),
            },
            ErrorKind::ResourceExhausted,
            Recoverable,
        ),
        (timeout(), ErrorKind::Timeout, Retryable),
        (
            GuardrailError::DataIntegrity {
                path: "a.parquet".into(),
                check: "min_rows".into(),
                expected: ">= 10".into(),
                found: "3".into(),
            },
            ErrorKind::DataIntegrity,
            Validation,
        ),
        (
            GuardrailError::CircuitOpen {
                name: "llm".into(),
                retry_after: Some(Duration::from_secs(5)),
            },
            ErrorKind::CircuitOpen,
            Recoverable,
        ),
        (
            GuardrailError::RetriesExhausted {
                attempts: 4,
                last: Box::new(timeout()),
            },
            ErrorKind::RetriesExhausted,
            Recoverable,
        ),
        (
            GuardrailError::RateLimited {
                name: "api".into(),
                retry_after: Duration::from_millis(20),
            },
            ErrorKind::RateLimited,
            Retryable,
        ),
        (
            GuardrailError::BulkheadFull {
                name: "gpu".into(),
                max_concurrent: 2,
            },
            ErrorKind::BulkheadFull,
            Retryable,
        ),
        (
            GuardrailError::config("retry.base", "bad"),
            ErrorKind::Config,
            Fatal,
        ),
        (
            GuardrailError::Cancelled {
                operation: "train".into(),
            },
            ErrorKind::Cancelled,
            Fatal,
        ),
        (
            GuardrailError::external(io::Error::other("mine")),
            ErrorKind::External,
            Fatal,
        ),
        (
            GuardrailError::external_with_class(io::Error::other("flaky"), Retryable),
            ErrorKind::External,
            Retryable,
        ),
    ];
    for (err, kind, class) in cases {
        assert_eq!(err.kind(), kind, "{err}");
        assert_eq!(err.class(), class, "{err}");
        assert_eq!(err.to_json()["class"], class.as_str(), "{err}");
        assert_eq!(err.to_json()["kind"], kind.as_str(), "{err}");
    }
}

#[test]
fn io_errors_are_classified_by_kind() {
    use io::ErrorKind as K;
    let retryable = [
        K::Interrupted,
        K::TimedOut,
        K::ConnectionReset,
        K::ConnectionRefused,
        K::ConnectionAborted,
        K::WouldBlock,
    ];
    for kind in retryable {
        assert_eq!(io_err(kind).class(), ErrorClass::Retryable, "{kind:?}");
    }
    for kind in [K::NotFound, K::PermissionDenied, K::AlreadyExists] {
        assert_eq!(io_err(kind).class(), ErrorClass::Fatal, "{kind:?}");
    }
    assert_eq!(io_err(K::StorageFull).class(), ErrorClass::Recoverable);
    assert_eq!(io_err(K::InvalidData).class(), ErrorClass::Validation);
    assert_eq!(io_err(K::UnexpectedEof).class(), ErrorClass::Validation);
}

#[test]
fn messages_are_lowercase_without_trailing_punctuation() {
    let errs = [
        timeout(),
        io_err(io::ErrorKind::NotFound),
        GuardrailError::config("retry.base", "must be >= 1.0"),
        GuardrailError::CircuitOpen {
            name: "llm".into(),
            retry_after: None,
        },
    ];
    for e in errs {
        let msg = e.to_string();
        let first = msg.chars().next().unwrap();
        assert!(!first.is_uppercase(), "{msg}");
        assert!(!msg.ends_with(['.', '!', '?']), "{msg}");
    }
    assert_eq!(
        timeout().to_string(),
        "timeout: decode ran 1.500s, limit 1s"
    );
    assert_eq!(
        GuardrailError::CircuitOpen {
            name: "llm".into(),
            retry_after: None
        }
        .to_string(),
        "circuit open: llm"
    );
}

#[test]
fn wrapped_causes_are_sources_not_repeated_in_the_message() {
    let err = io_err(io::ErrorKind::NotFound);
    assert_eq!(err.to_string(), "i/o error on /data/x");
    assert_eq!(err.source().map(|s| s.to_string()).as_deref(), Some("boom"));
    assert_eq!(err.report().to_string(), "i/o error on /data/x: boom");

    let exhausted = GuardrailError::RetriesExhausted {
        attempts: 3,
        last: Box::new(err),
    };
    assert_eq!(
        exhausted.report().to_string(),
        "retries exhausted after 3 attempts: i/o error on /data/x: boom"
    );
}

fn inner_step() -> guardrails::Result<u32> {
    Err(timeout()).operation("load frames")
}

fn outer_stage() -> guardrails::Result<u32> {
    let n = inner_step().stage("decode").context(
        ErrorContext::new()
            .correlation_id("run-7")
            .operation("ignored"),
    )?;
    Ok(n + 1)
}

#[test]
fn context_survives_question_mark_and_keeps_the_variant() {
    let err = outer_stage().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(err.class(), ErrorClass::Retryable);
    assert!(matches!(err.inner(), GuardrailError::Timeout { .. }));
    let ctx = err.context().expect("context attached");
    // The operation set closest to the failure wins; the outer layers fill the gaps.
    assert_eq!(ctx.operation.as_deref(), Some("load frames"));
    assert_eq!(ctx.stage.as_deref(), Some("decode"));
    assert_eq!(ctx.correlation_id.as_deref(), Some("run-7"));
    assert_eq!(
        err.to_string(),
        "stage decode, operation load frames, correlation id run-7: timeout: decode ran 1.500s, limit 1s"
    );
    // Context adds no link to the chain.
    assert!(err.source().is_none());
}

#[test]
fn result_ext_converts_foreign_errors_and_names_paths() {
    let r: Result<(), io::Error> = Err(io::Error::new(io::ErrorKind::NotFound, "gone"));
    let err = r
        .path("/in/table.parquet")
        .hint("run the export first")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert_eq!(err.class(), ErrorClass::Fatal);
    assert_eq!(
        err.context().and_then(|c| c.hint.as_deref()),
        Some("run the export first")
    );
    assert!(err.to_string().contains("/in/table.parquet"), "{err}");
}

#[test]
fn external_errors_downcast_back() {
    #[derive(Debug, thiserror::Error)]
    #[error("model server said no")]
    struct Mine;
    let err = GuardrailError::external(Mine);
    assert_eq!(err.to_string(), "model server said no");
    match err {
        GuardrailError::External(e) => assert!(e.downcast::<Mine>().is_ok()),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn nested_error_serializes_with_fields_context_and_source_chain() {
    let last =
        io_err(io::ErrorKind::ConnectionReset).with_context(ErrorContext::new().operation("fetch"));
    let err = GuardrailError::RetriesExhausted {
        attempts: 4,
        last: Box::new(last),
    }
    .with_context(
        ErrorContext::new()
            .stage("download")
            .correlation_id("abc")
            .hint("check the network"),
    );
    let v = serde_json::to_value(&err).unwrap();
    assert_eq!(v["kind"], "retries_exhausted");
    assert_eq!(v["class"], "recoverable");
    assert_eq!(v["message"], "retries exhausted after 4 attempts");
    assert_eq!(v["fields"]["attempts"], 4);
    assert_eq!(v["context"]["stage"], "download");
    assert_eq!(v["context"]["correlation_id"], "abc");
    assert_eq!(v["context"]["hint"], "check the network");
    // The nested guard error keeps its structure …
    assert_eq!(v["source"]["kind"], "io");
    assert_eq!(v["source"]["class"], "retryable");
    assert_eq!(v["source"]["fields"]["path"], "/data/x");
    assert_eq!(v["source"]["fields"]["io_kind"], "ConnectionReset");
    assert_eq!(v["source"]["context"]["operation"], "fetch");
    // … and the chain lists every cause, outermost first.
    assert_eq!(
        v["chain"],
        serde_json::json!(["operation fetch: i/o error on /data/x", "boom"])
    );
    // Round-trips through text, as a log line would.
    let text = serde_json::to_string(&err).unwrap();
    let back: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(back, v);
}

#[test]
fn timeout_fields_are_seconds() {
    let v = timeout().to_json();
    assert_eq!(v["fields"]["elapsed_secs"], 1.5);
    assert_eq!(v["fields"]["limit_secs"], 1.0);
    assert_eq!(v["fields"]["operation"], "decode");
    assert!(v.get("context").is_none());
}
