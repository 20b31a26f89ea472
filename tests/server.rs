//! The HTTP health server over real loopback HTTP: every endpoint's status and body,
//! details behind the token, and per-model health against a fake model server (healthy,
//! slow, failing until its breaker opens, malformed answers).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::http::{Answer, FakeHttp};
use guardrails::health::{CheckOptions, HealthRegistry};
use guardrails::resource::HealthStatus;
use guardrails::server::config::ServeConfig;
use guardrails::server::{BackgroundServer, HealthServer, Secret, ServerConfig};
use serde_json::Value;

fn get(url: &str, token: Option<&str>) -> (u16, Value) {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build(),
    );
    let mut req = agent.get(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let mut resp = req.call().expect("request");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

fn local() -> ServerConfig {
    ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        token: Some(Secret::new("s3cret")),
        // Every request sees the checks' current answer.
        health_cache_ttl: Duration::ZERO,
        ..ServerConfig::default()
    }
}

struct Registry {
    server: BackgroundServer,
    db_up: Arc<AtomicBool>,
}

fn registry_server() -> Registry {
    let db_up = Arc::new(AtomicBool::new(true));
    let up = Arc::clone(&db_up);
    let mut registry = HealthRegistry::new();
    registry.register(
        "db",
        CheckOptions::required(Duration::from_secs(2)),
        move || {
            if up.load(Ordering::SeqCst) {
                Ok(HealthStatus::Healthy)
            } else {
                Err(guardrails::GuardrailError::external(std::io::Error::other(
                    "connection refused by db:5432",
                )))
            }
        },
    );
    registry.register(
        "cache",
        CheckOptions::optional(Duration::from_secs(2)),
        || Ok(HealthStatus::Unhealthy),
    );
    let server = HealthServer::new(local(), registry)
        .unwrap()
        .start_background()
        .unwrap();
    Registry { server, db_up }
}

#[test]
fn health_live_ready_and_one_check_answer_with_actuator_statuses() {
    let r = registry_server();
    let base = format!("http://{}", r.server.local_addr());

    // An optional unhealthy check degrades, it does not take the service down.
    let (code, body) = get(&format!("{base}/health"), None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "DEGRADED");
    assert_eq!(body["components"]["db"]["status"], "UP");
    assert_eq!(body["components"]["cache"]["status"], "DOWN");
    assert_eq!(get(&format!("{base}/health/ready"), None).0, 200);
    assert_eq!(get(&format!("{base}/health/cache"), None).0, 503);

    r.db_up.store(false, Ordering::SeqCst);
    let (code, body) = get(&format!("{base}/health"), None);
    assert_eq!((code, body["status"].as_str()), (503, Some("DOWN")));
    let (code, body) = get(&format!("{base}/health/ready"), None);
    assert_eq!(code, 503);
    assert!(
        body["components"].get("cache").is_none(),
        "readiness counts required checks only: {body}"
    );
    // Liveness does not run checks: a down dependency must not get the pod restarted.
    assert_eq!(
        get(&format!("{base}/health/live"), None),
        (200, serde_json::json!({"status": "UP"}))
    );
    assert_eq!(get(&format!("{base}/health/db"), None).0, 503);

    let (code, body) = get(&format!("{base}/health/nope"), None);
    assert_eq!(code, 404);
    assert_eq!(body["checks"], serde_json::json!(["db", "cache"]));
    assert_eq!(get(&format!("{base}/nothing/here"), None).0, 404);
    // No exporter configured.
    assert_eq!(get(&format!("{base}/metrics"), None).0, 404);
}

#[test]
fn details_are_shown_only_to_the_bearer_token() {
    let r = registry_server();
    r.db_up.store(false, Ordering::SeqCst);
    let url = format!("http://{}/health", r.server.local_addr());
    for token in [None, Some("wrong"), Some("s3cre"), Some("s3cret-and-more")] {
        let (_, body) = get(&url, token);
        assert!(
            body["components"]["db"].get("details").is_none(),
            "{token:?}: {body}"
        );
        assert!(!body.to_string().contains("connection refused"), "{body}");
    }
    let (_, body) = get(&url, Some("s3cret"));
    let details = &body["components"]["db"]["details"];
    assert!(
        details["error"]
            .as_str()
            .unwrap()
            .contains("connection refused by db:5432"),
        "{body}"
    );
    assert!(details["latency_ms"].as_f64().is_some());
}

/// A fake model: `/ok` answers a chat completion with JSON content, `/slow` answers after
/// 3 s, `/fail` answers 500, `/malformed` answers prose where JSON was asked for.
fn fake_model(calls: Arc<AtomicUsize>) -> FakeHttp {
    FakeHttp::start(move |req| {
        calls.fetch_add(1, Ordering::SeqCst);
        let chat = |content: &str| {
            serde_json::json!({ "choices": [{ "message": { "content": content } }] }).to_string()
        };
        match req.path.as_str() {
            "/ok" => Answer::json(200, &chat(r#"{"ok": true}"#)),
            "/slow" => Answer {
                delay: Duration::from_secs(3),
                ..Answer::json(200, &chat(r#"{"ok": true}"#))
            },
            "/fail" => Answer::json(500, r#"{"error": "overloaded"}"#),
            "/malformed" => Answer::json(200, &chat("Sure! Here is the answer you asked for.")),
            _ => Answer::json(404, "{}"),
        }
    })
}

fn model_toml(name: &str, url: &str, extra: &str) -> String {
    format!(
        r#"
[[models]]
name = "{name}"
[models.health]
probe_timeout = "500ms"
probe_interval = "0s"
[models.probe]
url = "{url}"
body = '{{"model": "{name}", "messages": []}}'
answer_pointer = "/choices/0/message/content"
json_answer = true
{extra}
"#
    )
}

#[test]
fn llm_health_per_model_healthy_slow_failing_and_malformed() {
    let calls = Arc::new(AtomicUsize::new(0));
    let model = fake_model(Arc::clone(&calls));
    let mut toml = String::from(
        "[server]\ndetails = \"always\"\nhealth_cache_ttl = \"0s\"\n[metrics]\nenabled = false\n",
    );
    toml += &model_toml("good", &model.url("/ok"), "");
    toml += &model_toml("slow", &model.url("/slow"), "");
    toml += &model_toml(
        "failing",
        &model.url("/fail"),
        "[models.breaker]\nminimum_calls = 2\nsliding_window_size = 2\n",
    );
    toml += &model_toml("malformed", &model.url("/malformed"), "");
    let mut config = ServeConfig::from_toml(&toml).unwrap();
    config.server.bind = "127.0.0.1:0".parse().unwrap();
    let server = config.build().unwrap().start_background().unwrap();
    let base = format!("http://{}/health/llm", server.local_addr());

    let (code, body) = get(&format!("{base}?model=good"), None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "healthy");
    assert!(body["latency_ms"].as_f64().unwrap() < 500.0);

    let (code, body) = get(&format!("{base}?model=slow"), None);
    assert_eq!(
        (code, body["reason"].as_str()),
        (503, Some("probe_timeout")),
        "{body}"
    );

    let (code, body) = get(&format!("{base}?model=malformed"), None);
    assert_eq!(
        (code, body["reason"].as_str()),
        (503, Some("invalid_answer")),
        "{body}"
    );

    // Two failed probes fill the breaker's window; then the breaker answers, not the model.
    for _ in 0..2 {
        let (code, body) = get(&format!("{base}?model=failing"), None);
        assert_eq!(
            (code, body["reason"].as_str()),
            (503, Some("probe_failed")),
            "{body}"
        );
        assert!(
            body["detail"].as_str().unwrap().contains("status 500"),
            "{body}"
        );
    }
    let before = calls.load(Ordering::SeqCst);
    let (code, body) = get(&format!("{base}?model=failing"), None);
    assert_eq!(
        (code, body["reason"].as_str()),
        (503, Some("circuit_breaker_open")),
        "{body}"
    );
    assert_eq!(body["circuit_state"], "open");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before,
        "an open breaker sends no probe"
    );

    let (code, body) = get(&format!("{base}?model=all"), None);
    assert_eq!(code, 503);
    assert_eq!(body["status"], "unhealthy");
    let models: Vec<&str> = body["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["model"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["failing", "good", "malformed", "slow"]);

    let (code, body) = get(&format!("{base}?model=gpt-9"), None);
    assert_eq!(code, 404);
    assert_eq!(
        body["models"],
        serde_json::json!(["failing", "good", "malformed", "slow"])
    );

    // The models are health checks too.
    let (code, body) = get(&format!("http://{}/health", server.local_addr()), None);
    assert_eq!(code, 503);
    assert_eq!(body["components"]["good"]["status"], "UP");
    assert_eq!(body["components"]["malformed"]["status"], "DOWN");
}

#[test]
fn all_models_healthy_answers_200_and_probes_are_cached() {
    let calls = Arc::new(AtomicUsize::new(0));
    let model = fake_model(Arc::clone(&calls));
    let toml = format!(
        "[metrics]\nenabled = false\n{}",
        model_toml("a", &model.url("/ok"), "")
            .replace("probe_interval = \"0s\"", "probe_interval = \"1h\"")
    );
    let mut config = ServeConfig::from_toml(&toml).unwrap();
    config.server.bind = "127.0.0.1:0".parse().unwrap();
    let server = config.build().unwrap().start_background().unwrap();
    let url = format!("http://{}/health/llm?model=all", server.local_addr());
    for _ in 0..20 {
        let (code, body) = get(&url, None);
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["status"], "healthy");
        // Details are hidden without a token (default `when_authorized`, no token set).
        assert!(body["models"][0].get("latency_ms").is_none(), "{body}");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one probe per interval however many requests"
    );
}

#[test]
fn bad_serve_configs_are_refused_with_the_key() {
    for (toml, key) in [
        ("[server]\nbind = \"nowhere\"", "bind"),
        (
            "[[models]]\nname = \"a\"\n[models.probe]\nurl = \"ftp://x\"",
            "models[0].probe.url",
        ),
        (
            "[[models]]\nname = \"a\"\n[[models]]\nname = \"a\"",
            "models[1].name",
        ),
        (
            "[server]\ntoken_env = \"GUARDRAILS_TEST_UNSET_TOKEN\"",
            "token_env",
        ),
        ("[surprise]\nx = 1", "surprise"),
    ] {
        let err = ServeConfig::from_toml(toml)
            .and_then(|c| {
                let mut c = c;
                c.metrics.enabled = false;
                c.build()
            })
            .unwrap_err();
        assert!(err.to_string().contains(key), "{toml}: {err}");
    }
}

#[test]
fn a_request_past_its_timeout_is_answered_503() {
    let mut registry = HealthRegistry::new();
    registry.register(
        "hangs",
        CheckOptions::required(Duration::from_secs(10)),
        || {
            // The fault itself: a dependency that does not answer.
            std::thread::sleep(Duration::from_secs(3));
            Ok(HealthStatus::Healthy)
        },
    );
    let server = HealthServer::new(
        ServerConfig {
            request_timeout: Duration::from_millis(200),
            ..local()
        },
        registry,
    )
    .unwrap()
    .start_background()
    .unwrap();
    let (code, body) = get(&format!("http://{}/health", server.local_addr()), None);
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["error"], "request timed out");
    // Liveness never waits for checks.
    assert_eq!(
        get(&format!("http://{}/health/live", server.local_addr()), None).0,
        200
    );
}

#[cfg(feature = "json")]
#[test]
fn an_answer_that_breaks_the_probe_schema_is_invalid() {
    let model = FakeHttp::start(|_| Answer::json(200, r#"{"ok": "yes"}"#));
    let toml = format!(
        "[metrics]\nenabled = false\n[server]\ndetails = \"always\"\n\
         [[models]]\nname = \"typed\"\n[models.probe]\nurl = \"{}\"\n\
         schema = {{ type = \"object\", required = [\"ok\"], properties = {{ ok = {{ type = \"boolean\" }} }} }}\n",
        model.url("/")
    );
    let mut config = ServeConfig::from_toml(&toml).unwrap();
    config.server.bind = "127.0.0.1:0".parse().unwrap();
    let server = config.build().unwrap().start_background().unwrap();
    let (code, body) = get(
        &format!("http://{}/health/llm?model=typed", server.local_addr()),
        None,
    );
    assert_eq!(
        (code, body["reason"].as_str()),
        (503, Some("invalid_answer")),
        "{body}"
    );
    assert!(
        body["detail"].as_str().unwrap().starts_with("/ok: "),
        "{body}"
    );
}
