//! The config document: loading, defaults, and refusal of unknown keys and bad values.

use std::time::Duration;

use guardrails::prelude::*;

fn field_and_reason(err: &GuardrailError) -> (String, String) {
    match err {
        GuardrailError::Config { field, reason } => (field.clone(), reason.clone()),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn empty_document_gives_the_seed_defaults() {
    let cfg = GuardrailsConfig::from_toml_str("").unwrap();
    assert_eq!(cfg, GuardrailsConfig::default());
    assert_eq!(cfg.retry.max_retries, 3);
    assert_eq!(cfg.retry.initial_delay, Duration::from_secs(1));
    assert_eq!(cfg.retry.max_delay, Duration::from_secs(60));
    assert_eq!(cfg.retry.base, 2.0);
    assert_eq!(cfg.retry.jitter, Jitter::None);
}

#[test]
fn unknown_key_is_rejected_by_its_full_name() {
    let err = GuardrailsConfig::from_toml_str("[retry]\nmax_retires = 5\n").unwrap_err();
    let (field, reason) = field_and_reason(&err);
    assert_eq!(field, "retry.max_retires");
    assert_eq!(reason, "unknown key");
    assert_eq!(
        err.to_string(),
        "invalid config: retry.max_retires: unknown key"
    );
    assert_eq!(err.class(), ErrorClass::Fatal);

    let err = GuardrailsConfig::from_toml_str("[retyr]\n").unwrap_err();
    assert_eq!(field_and_reason(&err).0, "retyr");
}

#[test]
fn value_of_the_wrong_type_names_key_reason_and_line() {
    let err = GuardrailsConfig::from_toml_str("\n[retry]\nmax_retries = \"three\"\n").unwrap_err();
    let (field, reason) = field_and_reason(&err);
    assert_eq!(field, "retry.max_retries");
    assert!(reason.contains("invalid type"), "{reason}");
    assert!(reason.contains("line 3"), "{reason}");

    let err = GuardrailsConfig::from_toml_str("[retry]\nmax_delay = \"soon\"\n").unwrap_err();
    let (field, reason) = field_and_reason(&err);
    assert_eq!(field, "retry.max_delay");
    assert!(reason.contains("duration"), "{reason}");
}

#[test]
fn out_of_range_values_are_rejected() {
    for (text, key, why) in [
        ("[retry]\nbase = nan\n", "retry.base", "finite"),
        ("[retry]\nbase = 0.5\n", "retry.base", ">= 1.0"),
        (
            "[retry]\ninitial_delay = \"2m\"\nmax_delay = \"1m\"\n",
            "retry.initial_delay",
            "max_delay",
        ),
        (
            "[retry]\ntotal_budget = \"0s\"\n",
            "retry.total_budget",
            "greater than zero",
        ),
    ] {
        let err = GuardrailsConfig::from_toml_str(text).unwrap_err();
        let (field, reason) = field_and_reason(&err);
        assert_eq!(field, key, "{text}");
        assert!(reason.contains(why), "{text}: {reason}");
    }
}

#[test]
fn diagnose_reports_every_problem() {
    let problems = GuardrailsConfig::diagnose("[retry]\nbase = 0.1\nfoo = 1\n[bar]\n").unwrap_err();
    let fields: Vec<String> = problems.iter().map(|p| field_and_reason(p).0).collect();
    assert_eq!(fields, ["bar", "retry.foo", "retry.base"]);
}

#[test]
fn syntax_errors_are_config_errors_with_a_line() {
    let err = GuardrailsConfig::from_toml_str("[retry]\nmax_retries = = 3\n").unwrap_err();
    let (_, reason) = field_and_reason(&err);
    assert!(reason.contains("line 2"), "{reason}");
}

#[test]
fn from_path_reads_files_and_names_missing_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("guardrails.toml");
    std::fs::write(&path, "[retry]\nmax_retries = 7\njitter = \"equal\"\n").unwrap();
    let cfg = GuardrailsConfig::from_path(&path).unwrap();
    assert_eq!(cfg.retry.max_retries, 7);
    assert_eq!(cfg.retry.jitter, Jitter::Equal);

    let missing = dir.path().join("nope.toml");
    let err = GuardrailsConfig::from_path(&missing).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.to_string().contains("nope.toml"), "{err}");
}

#[test]
fn oversized_file_is_refused_without_reading_it_all() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.toml");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(64 * 1024 * 1024).unwrap();
    let err = GuardrailsConfig::from_path(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("limit for a config file"), "{err}");
}

#[test]
fn defaults_round_trip_through_toml() {
    let cfg = GuardrailsConfig::new();
    let text = cfg.to_toml_string().unwrap();
    assert_eq!(GuardrailsConfig::from_toml_str(&text).unwrap(), cfg);
    let tuned = GuardrailsConfig::new().with_retry(
        RetryConfig::new()
            .with_total_budget(Duration::from_secs(90))
            .with_jitter(Jitter::Full),
    );
    let text = tuned.to_toml_string().unwrap();
    assert_eq!(GuardrailsConfig::from_toml_str(&text).unwrap(), tuned);
}

#[test]
fn retry_delays_grow_and_are_capped() {
    let cfg = RetryConfig::new().with_max_retries(8);
    let secs: Vec<u64> = cfg.delays().map(|d| d.as_secs()).collect();
    assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60]);
    // Huge exponents cap instead of overflowing.
    assert_eq!(cfg.delay_for(u32::MAX), Duration::from_secs(60));
}

#[test]
fn the_retry_analytics_and_history_sections_are_read_and_checked() {
    let config = GuardrailsConfig::from_toml_str(
        r#"
        [retry_analytics.spike]
        interval = "30s"
        multiplier = 4.0
        [retry_analytics.anomalies]
        max_attempts = 6
        "#,
    )
    .unwrap();
    assert_eq!(
        config.retry_analytics.spike.interval,
        Duration::from_secs(30)
    );
    assert_eq!(config.retry_analytics.spike.multiplier, 4.0);
    assert_eq!(
        config.retry_analytics.spike.baseline_intervals, 12,
        "unset keys keep defaults"
    );
    assert_eq!(config.retry_analytics.anomalies.max_attempts, 6);

    let problems = GuardrailsConfig::diagnose(
        r#"
        [retry_analytics.spike]
        multiplier = 1.0
        intervall = "5s"
        "#,
    )
    .unwrap_err();
    let fields: Vec<String> = problems.iter().map(|e| field_and_reason(e).0).collect();
    assert!(
        fields.contains(&"retry_analytics.spike.intervall".to_string()),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"retry_analytics.spike.multiplier".to_string()),
        "{fields:?}"
    );
}

#[cfg(feature = "history")]
#[test]
fn the_history_section_is_read_and_checked() {
    let config = GuardrailsConfig::from_toml_str(
        "[history]\nmax_bytes = 104857600\ndownsample_after = \"2h\"\n",
    )
    .unwrap();
    assert_eq!(config.history.max_bytes, 100 << 20);
    assert_eq!(config.history.downsample_after, Duration::from_secs(7200));
    let err = GuardrailsConfig::from_toml_str("[history]\nbatch_size = 0\n").unwrap_err();
    assert_eq!(field_and_reason(&err).0, "history.batch_size");
}
