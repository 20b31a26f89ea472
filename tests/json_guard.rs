//! The JSON hard guard: a corpus of malformed LLM outputs, valid JSON untouched, hostile
//! input, schemas with paths, and the re-ask / backoff / fallback flow on ManualClock.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use guardrails::json_guard::{FixKind, Generation, JsonGuardConfig, JsonHardGuard, ProblemKind};
use guardrails::prelude::*;
use proptest::prelude::*;
use serde_json::{Value, json};

fn guard() -> JsonHardGuard {
    JsonHardGuard::new(JsonGuardConfig::new()).unwrap()
}

#[test]
fn corpus_of_malformed_outputs_is_recovered() {
    let corpus = include_str!("fixtures/json/corpus.jsonl");
    let g = guard();
    let mut count = 0;
    for line in corpus.lines() {
        let case: Value = serde_json::from_str(line).unwrap();
        let input = case["input"].as_str().unwrap();
        let category = case["category"].as_str().unwrap();
        count += 1;
        if let Some(kind) = case.get("expected_error") {
            let problems = g.parse_value(input).unwrap_err();
            assert_eq!(kind, "no_json", "{category}");
            assert_eq!(
                problems[0].kind,
                ProblemKind::NoJson,
                "{category}: {input:?}"
            );
            continue;
        }
        let parsed = g
            .parse_value(input)
            .unwrap_or_else(|p| panic!("{category}: {input:?} failed: {p:?}"));
        assert_eq!(parsed.value, case["expected"], "{category}: {input:?}");
        // These need extraction only; everything else needs a repair, which must be recorded.
        let extraction_only = [
            "valid",
            "fence",
            "prose",
            "comment_before",
            "text_after_value",
        ];
        if extraction_only.iter().any(|c| category.starts_with(c)) {
            assert!(parsed.fixes.is_empty(), "{category}: {:?}", parsed.fixes);
        } else {
            assert!(
                !parsed.fixes.is_empty(),
                "{category}: repaired without a recorded fix"
            );
        }
    }
    assert!(count >= 100, "the corpus has {count} cases");
}

#[test]
fn fixes_name_what_was_done() {
    let parsed = guard()
        .parse_value("{'a': True, b: [1 2,], // note\n \"c\": \"x\ny\"")
        .unwrap();
    let kinds: Vec<FixKind> = parsed.fixes.iter().map(|f| f.kind).collect();
    for k in [
        FixKind::SingleQuotes,
        FixKind::Constant,
        FixKind::UnquotedKey,
        FixKind::MissingComma,
        FixKind::TrailingComma,
        FixKind::Comment,
        FixKind::ControlCharacter,
        FixKind::ClosedBracket,
    ] {
        assert!(kinds.contains(&k), "{k:?} missing from {kinds:?}");
    }
    assert_eq!(parsed.value, json!({"a": true, "b": [1, 2], "c": "x\ny"}));
    assert!(parsed.fixes[0].to_string().contains("at byte"));
}

#[test]
fn strict_mode_refuses_what_repair_would_fix() {
    let g = JsonHardGuard::new(JsonGuardConfig::new().with_repair(false)).unwrap();
    let problems = g.parse_value("{'a': 1}").unwrap_err();
    assert_eq!(problems[0].kind, ProblemKind::Parse);
    assert_eq!(g.parse_value("{\"a\": 1}").unwrap().value, json!({"a": 1}));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn valid_json_is_returned_unchanged_without_fixes(v in arb_json()) {
        let text = serde_json::to_string(&v).unwrap();
        let parsed = guard().parse_value(&text).unwrap();
        prop_assert_eq!(&parsed.value, &v);
        prop_assert!(parsed.fixes.is_empty());
        // Pretty-printed too.
        let pretty = serde_json::to_string_pretty(&v).unwrap();
        let parsed = guard().parse_value(&pretty).unwrap();
        prop_assert_eq!(parsed.value, v);
        prop_assert!(parsed.fixes.is_empty());
    }

    #[test]
    fn arbitrary_text_never_panics(s in ".{0,200}") {
        let _ = guard().parse_value(&s);
    }

    /// Text made of JSON's punctuation, quotes of every kind and words, where the repair
    /// heuristics act: never a panic, and whatever passes is valid JSON.
    #[test]
    fn json_like_text_never_panics(s in "[{}()\\[\\]\"'\u{201C}\u{201D}\u{2019}:,#/*` a-z0-9_.\n\\\\-]{0,120}") {
        for all_values in [false, true] {
            let g = JsonHardGuard::new(JsonGuardConfig::new().with_all_values(all_values)).unwrap();
            if let Ok(parsed) = g.parse_value(&s) {
                prop_assert_eq!(serde_json::from_str::<Value>(&parsed.json).ok(), Some(parsed.value));
            }
        }
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e9f64..1e9).prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn hostile_inputs_get_errors_in_linear_time() {
    let g = guard();
    let start = Instant::now();
    // 100 000 nested brackets: refused by depth, no stack overflow, valid or not.
    let deep_valid = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(
        g.parse_value(&deep_valid).unwrap_err()[0].kind,
        ProblemKind::TooDeep
    );
    let deep_open = "{\"a\":".repeat(100_000);
    assert_eq!(
        g.parse_value(&deep_open).unwrap_err()[0].kind,
        ProblemKind::TooDeep
    );
    // A 100 MB string is refused by size before any parsing.
    let huge = format!("{{\"s\": \"{}\"}}", "x".repeat(100 << 20));
    assert_eq!(
        g.parse_value(&huge).unwrap_err()[0].kind,
        ProblemKind::TooLarge
    );
    // With the limit raised, a 20 MB unterminated string is closed in one pass.
    let big = JsonHardGuard::new(JsonGuardConfig::new().with_max_bytes(64 << 20)).unwrap();
    let open_string = format!("{{\"s\": \"{}", "y".repeat(20 << 20));
    let parsed = big.parse_value(&open_string).unwrap();
    assert_eq!(parsed.value["s"].as_str().unwrap().len(), 20 << 20);
    // Inputs that make a naive scanner quadratic: many unclosed strings and brackets.
    let many_quotes = "{\"a\": \"".repeat(20_000);
    let _ = big.parse_value(&many_quotes);
    // The quote heuristics look ahead a bounded window: quotes inside prose, commas
    // followed by words, bare phrases, early closers and several values stay linear.
    let quoted_prose = format!("{{\"a\": \"{}\"}}", "x \"y\" z, w ".repeat(200_000));
    let _ = big.parse_value(&quoted_prose);
    let bare_phrases = format!("{{\"a\": {}}}", "lorem ipsum, ".repeat(200_000));
    let _ = big.parse_value(&bare_phrases);
    let elements = format!("[{}]", "\"v\" w\", ".repeat(200_000));
    let _ = big.parse_value(&elements);
    let early = format!("{{\"a\": 1}}{}", ", \"b\": 2}".repeat(200_000));
    let _ = big.parse_value(&early);
    let all = JsonHardGuard::new(
        JsonGuardConfig::new()
            .with_max_bytes(64 << 20)
            .with_all_values(true),
    )
    .unwrap();
    assert_eq!(
        all.parse_value(&"{\"a\": 1} ".repeat(200_000))
            .unwrap()
            .value
            .as_array()
            .map(Vec::len),
        Some(200_000)
    );
    let many_commas = format!("[{}]", ",".repeat(1_000_000));
    assert_eq!(big.parse_value(&many_commas).unwrap().value, json!([]));
    // NUL bytes, lone surrogate escapes, invalid UTF-8 turned lossy by the caller.
    assert!(g.parse_value("{\"a\": \"x\0y\"}").is_ok());
    let surrogate = g.parse_value(r#"{'s': '\ud800'}"#).unwrap();
    assert_eq!(surrogate.value["s"], "\u{FFFD}");
    let lossy = String::from_utf8_lossy(b"{\"a\": \"\xff\xfe\"}").into_owned();
    assert!(g.parse_value(&lossy).is_ok());
    // Generous bound for a debug build on a shared machine: quadratic behaviour on these
    // inputs would take minutes.
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "{:?}",
        start.elapsed()
    );
}

#[cfg(feature = "json")]
#[test]
fn schema_errors_carry_instance_paths() {
    let schema = json!({
        "type": "object",
        "required": ["items"],
        "properties": {
            "items": {"type": "array", "items": {
                "type": "object",
                "required": ["price"],
                "properties": {"price": {"type": "number", "minimum": 0}}
            }}
        }
    });
    let g = guard().with_schema(&schema).unwrap();
    let problems = g
        .parse_value(r#"{"items": [{"price": 1}, {"price": -2}, {"price": "x"}]}"#)
        .unwrap_err();
    let paths: Vec<&str> = problems.iter().filter_map(|p| p.path.as_deref()).collect();
    assert!(paths.contains(&"/items/1/price"), "{paths:?}");
    assert!(paths.contains(&"/items/2/price"), "{paths:?}");
    assert!(problems.iter().all(|p| p.kind == ProblemKind::Schema));
    assert!(g.parse_value(r#"{"items": []}"#).is_ok());

    let mut lenient = JsonGuardConfig::new();
    lenient.strict_schema = false;
    let g = JsonHardGuard::new(lenient)
        .unwrap()
        .with_schema(&schema)
        .unwrap();
    let parsed = g.parse_value(r#"{"items": [{"price": -1}]}"#).unwrap();
    assert_eq!(parsed.warnings.len(), 1);

    let err = guard().with_schema(&json!({"type": 12})).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}

#[derive(Debug, serde::Deserialize, PartialEq)]
struct Answer {
    label: String,
    score: f64,
}

#[test]
fn reask_with_feedback_then_success() {
    let clock = ManualClock::new();
    let g = guard().with_clock(clock.clone()).with_seed(1);
    let feedbacks = RefCell::new(Vec::new());
    let mut outputs = vec![
        Ok::<Generation, GuardrailError>("{\"label\": \"spam\"}".into()), // missing score: a type problem
        Ok("{\"label\": \"spam\", \"score\": 0.9}".into()),
    ]
    .into_iter();
    let outcome = g
        .run::<Answer, _>(|f| {
            feedbacks.borrow_mut().push(f.clone());
            outputs.next().unwrap()
        })
        .unwrap();
    assert_eq!(
        outcome.value,
        Answer {
            label: "spam".into(),
            score: 0.9
        }
    );
    assert_eq!(outcome.attempts, 2);
    assert!(!outcome.fallback_used);
    assert_eq!(outcome.errors.len(), 1);
    assert_eq!(outcome.errors[0].kind, ProblemKind::Type);
    let fb = feedbacks.borrow();
    assert_eq!(fb[0].message(), "", "no feedback before the first attempt");
    assert!(fb[1].message().contains("score"), "{}", fb[1].message());
    assert!(clock.sleeps().is_empty(), "re-asks are not delayed");
}

#[test]
fn transport_errors_back_off_with_jitter_and_never_reach_the_prompt() {
    let clock = ManualClock::new();
    let g = guard().with_clock(clock.clone()).with_seed(7);
    let feedbacks = RefCell::new(Vec::new());
    let mut outputs = vec![
        Err(GuardrailError::external_with_class(
            std::io::Error::other("connection reset"),
            ErrorClass::Retryable,
        )),
        Ok::<Generation, GuardrailError>("{'label': 'ham', 'score': 0.1".into()),
    ]
    .into_iter();
    let outcome = g
        .run::<Answer, _>(|f| {
            feedbacks.borrow_mut().push(f.clone());
            outputs.next().unwrap()
        })
        .unwrap();
    assert_eq!(outcome.value.label, "ham");
    assert!(
        !outcome.fixes.is_empty(),
        "the accepted output was repaired"
    );
    assert_eq!(outcome.errors[0].kind, ProblemKind::Transport);
    let fb = feedbacks.borrow();
    assert!(
        fb[1].problems.is_empty(),
        "the transport error is not fed back"
    );
    assert_eq!(fb[1].message(), "");
    let sleeps = clock.sleeps();
    assert_eq!(sleeps.len(), 1);
    assert!(
        sleeps[0] >= Duration::from_secs(1) && sleeps[0] <= Duration::from_millis(1500),
        "{sleeps:?}"
    );
}

#[test]
fn truncated_output_is_reported_as_such() {
    let g = guard();
    let feedbacks = RefCell::new(Vec::new());
    let mut n = 0;
    let outcome = g
        .run_with_fallback::<Answer, _, _>(
            |f| {
                feedbacks.borrow_mut().push(f.clone());
                n += 1;
                Ok(Generation {
                    text: "{\"label\": \"sp".into(),
                    truncated: true,
                })
            },
            || Answer {
                label: "unknown".into(),
                score: 0.0,
            },
        )
        .unwrap();
    assert!(outcome.fallback_used);
    assert_eq!(outcome.value.label, "unknown");
    assert_eq!(n, 4);
    let fb = feedbacks.borrow();
    assert!(fb[1].truncated);
    assert!(fb[1].message().contains("cut off"));
    assert!(
        outcome
            .errors
            .iter()
            .any(|e| e.kind == ProblemKind::Truncated)
    );
}

#[test]
fn without_fallback_every_attempt_is_in_the_error() {
    let g = JsonHardGuard::new(JsonGuardConfig::new().with_max_retries(2)).unwrap();
    let err = g
        .run::<Answer, _>(|_| Ok("I cannot answer that.".into()))
        .unwrap_err();
    match &err {
        GuardrailError::JsonGuard { attempts, problems } => {
            assert_eq!(*attempts, 3);
            assert_eq!(problems.len(), 3);
            assert!(problems[2].starts_with("attempt 3: no JSON found"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(err.class(), ErrorClass::Validation);
    // Fallback disabled in config: the error even when a fallback is offered.
    let g = JsonHardGuard::new(
        JsonGuardConfig::new()
            .with_max_retries(0)
            .with_fallback(false),
    )
    .unwrap();
    assert!(
        g.run_with_fallback::<Answer, _, _>(
            |_| Ok("nope".into()),
            || Answer {
                label: String::new(),
                score: 0.0
            }
        )
        .is_err()
    );
}

#[test]
fn json_guard_section_loads_and_validates() {
    let cfg: GuardrailsConfig =
        "[json_guard]\nmax_retries = 5\njitter = \"250ms\"\nmax_depth = 32\n"
            .parse()
            .unwrap();
    assert_eq!(cfg.json_guard.max_retries, 5);
    // `jitter`, the key's old name, is still read as `max_jitter`.
    assert_eq!(cfg.json_guard.max_jitter, Duration::from_millis(250));
    let cfg: GuardrailsConfig = "[json_guard]\nmax_jitter = \"1s\"\n".parse().unwrap();
    assert_eq!(cfg.json_guard.max_jitter, Duration::from_secs(1));
    let err = "[json_guard]\nmax_depth = 0\n"
        .parse::<GuardrailsConfig>()
        .unwrap_err();
    assert!(err.to_string().contains("json_guard.max_depth"));
}

#[cfg(feature = "async")]
#[tokio::test(start_paused = true)]
async fn async_run_retries_transport_on_tokio_time_and_reasks() {
    let g = guard().with_seed(3);
    let start = tokio::time::Instant::now();
    let mut n = 0;
    let outcome = g
        .run_async::<Answer, _, _>(|feedback| {
            n += 1;
            let attempt = n;
            async move {
                match attempt {
                    1 => Err(GuardrailError::RateLimited {
                        name: "llm".into(),
                        retry_after: Duration::from_secs(1),
                    }),
                    2 => Ok(Generation::from("{\"label\": 3}")),
                    _ => {
                        assert!(
                            feedback.message().contains("label"),
                            "{}",
                            feedback.message()
                        );
                        Ok(Generation::from("{\"label\": \"ok\", \"score\": 1}"))
                    }
                }
            }
        })
        .await
        .unwrap();
    assert_eq!((outcome.attempts, outcome.value.label.as_str()), (3, "ok"));
    // One transport backoff: 1 s plus up to 0.5 s of jitter, on the paused clock.
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited <= Duration::from_millis(1500),
        "{waited:?}"
    );
}

/// Numbers come back as the model wrote them: integers past 64 bits, `-0`, long decimals
/// and exponents, in valid documents with and without a schema, and through repair.
#[cfg(feature = "json")]
#[test]
fn numbers_survive_exactly_as_written() {
    let cases = [
        r#"{"n":123456789012345678901234}"#,
        r#"{"n":-0}"#,
        r#"{"n":-0.0}"#,
        r#"{"n":18446744073709551616}"#,
        r#"{"n":-9223372036854775809}"#,
        r#"{"n":0.1000000000000000055511151231257827}"#,
        r#"{"n":2.5e-3}"#,
        r#"[1,-0,340282366920938463463374607431768211456]"#,
    ];
    let schema = json!({"type": ["object", "array"]});
    let numeric = json!({
        "type": "object",
        "properties": {"n": {"type": "number", "minimum": -1}}
    });
    for text in cases {
        for g in [guard(), guard().with_schema(&schema).unwrap()] {
            // Spaced out, in prose and in a fence: the text comes back token for token.
            for input in [
                text.to_string(),
                text.replace(':', " : ").replace(',', " ,\n "),
                format!("Here it is:\n```json\n{text}\n```"),
            ] {
                let parsed = g.parse_value(&input).unwrap();
                assert_eq!(parsed.to_compact_json(), text, "{input}");
                assert!(parsed.fixes.is_empty(), "{text}: {:?}", parsed.fixes);
            }
        }
    }
    // A number past any f64 is refused, not repaired into a string.
    let problems = guard().parse_value(r#"{"n":1E400}"#).unwrap_err();
    assert!(
        problems[0].message.contains("beyond the range"),
        "{problems:?}"
    );
    // Repair keeps each number's text too, and the keys' order.
    let parsed = guard()
        .parse_value(r#"{"n": 123456789012345678901234, "m": -0,}"#)
        .unwrap();
    assert!(!parsed.fixes.is_empty());
    assert_eq!(
        parsed.to_compact_json(),
        r#"{"n":123456789012345678901234,"m":-0}"#
    );
    // A typed parse reads the text, so wide integers are exact.
    #[derive(serde::Deserialize)]
    struct Wide {
        big: u128,
        neg: i128,
    }
    let wide: Wide = guard()
        .parse(r#"{"big": 340282366920938463463374607431768211455, "neg": -170141183460469231731687303715884105728}"#)
        .unwrap()
        .value;
    assert_eq!(wide.big, u128::MAX);
    assert_eq!(wide.neg, i128::MIN);
    // Strings with spaces, quotes and escapes are not touched by compaction.
    let text = r#"{"s":"a \"b\" \\ c\n d","t":[ "x y" ]}"#;
    assert_eq!(
        guard().parse_value(text).unwrap().to_compact_json(),
        r#"{"s":"a \"b\" \\ c\n d","t":["x y"]}"#
    );
    // The schema still sees the value of a big number.
    let g = guard().with_schema(&numeric).unwrap();
    assert!(g.parse_value(r#"{"n":123456789012345678901234}"#).is_ok());
    assert!(g.parse_value(r#"{"n":-123456789012345678901234}"#).is_err());
}

/// An injected clock is what the async run waits on: a manual clock records the transport
/// backoff and no real or tokio time passes.
#[cfg(feature = "async")]
#[tokio::test]
async fn async_run_waits_on_the_injected_clock() {
    let clock = ManualClock::new();
    let g = guard().with_seed(3).with_clock(clock.clone());
    let start = std::time::Instant::now();
    let mut n = 0;
    let outcome = g
        .run_async::<Value, _, _>(|_| {
            n += 1;
            let attempt = n;
            async move {
                if attempt < 3 {
                    Err(GuardrailError::RateLimited {
                        name: "llm".into(),
                        retry_after: Duration::from_secs(1),
                    })
                } else {
                    Ok(Generation::from("{\"ok\": true}"))
                }
            }
        })
        .await
        .unwrap();
    assert_eq!(outcome.attempts, 3);
    let sleeps = clock.sleeps();
    assert_eq!(sleeps.len(), 2, "{sleeps:?}");
    // 1 s then 2 s, each plus up to 0.5 s of jitter.
    assert!(sleeps[0] >= Duration::from_secs(1) && sleeps[0] <= Duration::from_millis(1500));
    assert!(sleeps[1] >= Duration::from_secs(2) && sleeps[1] <= Duration::from_millis(2500));
    // Real time did not wait out 3 s of backoff (a bound far above scheduling noise).
    assert!(start.elapsed() < Duration::from_secs(2));
}

/// The crate must not change serde_json for the rest of the user's build: with serde_json's
/// `arbitrary_precision` on (cargo unifies features), untagged enums and `#[serde(flatten)]`
/// holding numbers fail to deserialize. Exact numbers come from the kept text instead.
#[test]
fn serde_json_keeps_its_default_number_model() {
    #[derive(serde::Deserialize, Debug, PartialEq)]
    #[serde(untagged)]
    enum Reading {
        Number { n: f64 },
        Text { s: String },
    }
    #[derive(serde::Deserialize, Debug)]
    struct Outer {
        #[serde(flatten)]
        inner: std::collections::BTreeMap<String, f64>,
    }
    assert_eq!(
        serde_json::from_str::<Reading>(r#"{"n": 1.5}"#).unwrap(),
        Reading::Number { n: 1.5 }
    );
    let outer: Outer = serde_json::from_str(r#"{"b": 2.5}"#).unwrap();
    assert_eq!(outer.inner["b"], 2.5);
    // And through the guard's typed parse.
    let r: Reading = guard().parse(r#"{'n': 1.5,}"#).unwrap().value;
    assert_eq!(r, Reading::Number { n: 1.5 });
}

/// What each repair heuristic makes of the text it is for — and the readings it refuses
/// because every repair would invent, drop or move a member.
#[test]
fn repairs_keep_the_members_written_and_refuse_the_rest() {
    let g = guard();
    let repaired = [
        // The issue's cases: a fence inside a string, a missing value, a stray closer.
        (
            r#"{"a": "x", "b": "see ```code```", }"#,
            json!({"a": "x", "b": "see ```code```"}),
        ),
        (
            r#"{"key": , "key2": "value2"}"#,
            json!({"key": null, "key2": "value2"}),
        ),
        (
            r#"[{"key":"value"}},{"key":"value"}]"#,
            json!([{"key": "value"}, {"key": "value"}]),
        ),
        (r#"{"city": New York}"#, json!({"city": "New York"})),
        (r#"{"key": 1/3}"#, json!({"key": "1/3"})),
        (r#"{"tex": "$\sqrt{x}$"}"#, json!({"tex": "$\\sqrt{x}$"})),
        // A key cut before its colon may be a cut name: dropped, never kept with null.
        (r#"{"a": 1, "b"#, json!({"a": 1})),
        (r#"{""#, json!({})),
        (r#"["a", ""#, json!(["a"])),
        // Python literals.
        ("(1, 2)", json!([1, 2])),
        ("(1)", json!(1)),
        (r#"{"p": (), "q": ("x",)}"#, json!({"p": [], "q": ["x"]})),
        ("{'a', 'b'}", json!(["a", "b"])),
        (
            r#"{"n": 82_461_110, "e": 1e}"#,
            json!({"n": 82_461_110, "e": 1}),
        ),
        ("[1, 2, ...]", json!([1, 2])),
        // Structure the text got slightly wrong.
        (r#"{"a": 1}, "b": 2}"#, json!({"a": 1, "b": 2})),
        (r#"{"k": [1, 2}, "n": 3}"#, json!({"k": [1, 2], "n": 3})),
        (r#"["k": "v"]"#, json!([{"k": "v"}])),
        (r#"{"k": [1], [2]}"#, json!({"k": [1, 2]})),
        (r#"{"k" "v"}"#, json!({"k": "v"})),
        ("[{]", json!([])),
        // Quotes: lost, doubled, inside prose.
        (
            r#"{"name": "John", "city": "New York, "gender": "male"}"#,
            json!({"name": "John", "city": "New York", "gender": "male"}),
        ),
        (
            r#"{"notes": "lorem "ipsum", sic." }"#,
            json!({"notes": "lorem \"ipsum\", sic."}),
        ),
        (r#"{"w": abc", "n": 1}"#, json!({"w": "abc", "n": 1})),
        (
            r#"["value1" value2", "value3"]"#,
            json!(["value1", "value2", "value3"]),
        ),
        (r#"{""answer"":""5""}"#, json!({"answer": "5"})),
        (r#"{"key:value}"#, json!({"key": "value"})),
        (
            r#"{"a": true, NOTE "b": 2 DONE }"#,
            json!({"a": true, "b": 2}),
        ),
        (r#"{"k": ["v]}"#, json!({"k": ["v"]})),
        ("{\"k\": \"v\"```", json!({"k": "v"})),
        ("```json {\"a\": 1} ```", json!({"a": 1})),
        ("{\"a\": 1}\n```", json!({"a": 1})),
    ];
    for (text, want) in repaired {
        match g.parse_value(text) {
            Ok(p) => assert_eq!(p.value, want, "{text}: {:?}", p.fixes),
            Err(e) => panic!("{text}: {e:?}"),
        }
    }
    let refused = [
        // A key with no value between members: which value is whose?
        r#"{"a": 1, "b", "c": 2}"#,
        // A colon where a value belongs.
        r#"{"a": "b": 1}"#,
        // A key followed by two strings.
        r#"{"a" "b" "c": 1}"#,
        // An element that runs past an inner quote into a colon: `"a "b"` is no key.
        r#"["a "b": 1]"#,
    ];
    for text in refused {
        let problems = g.parse_value(text).unwrap_err();
        assert!(
            problems[0].message.contains("invent or move members"),
            "{text}: {problems:?}"
        );
    }
    // Prose in parentheses is no tuple.
    assert_eq!(
        g.parse_value("(see the docs)").unwrap_err()[0].kind,
        ProblemKind::NoJson
    );
}

/// Several values: the first by default (the rest is dropped text), all of them as one
/// array on request, empty placeholders dropped.
#[test]
fn several_values_first_or_all() {
    let text = "lorem ```json {\"key\":\"value\"} ``` ipsum ```json [1,2,3,True] ``` 42";
    let first = guard().parse_value(text).unwrap();
    assert_eq!(first.value, json!({"key": "value"}));
    let all = JsonHardGuard::new(JsonGuardConfig::new().with_all_values(true)).unwrap();
    let both = all.parse_value(text).unwrap();
    assert_eq!(both.value, json!([{"key": "value"}, [1, 2, 3, true]]));
    assert_eq!(
        serde_json::from_str::<Value>(&both.json).unwrap(),
        both.value
    );
    assert!(both.fixes.iter().any(|f| f.kind == FixKind::Constant));
    assert_eq!(
        all.parse_value("[]{\"a\": 1}").unwrap().value,
        json!({"a": 1})
    );
    assert_eq!(
        all.parse_value("{\"a\": 1}, {\"a\": 2}").unwrap().value,
        json!([{"a": 1}, {"a": 2}])
    );
    assert_eq!(all.parse_value("[]{}").unwrap().value, json!([]));
}
