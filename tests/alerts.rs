//! Alert hooks against loopback webhook receivers that accept, hang, fail and are down:
//! the payload is Alertmanager's, the guarded call never waits for a receiver, and the
//! counts of sent, retried, failed and dropped alerts are exact.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::http::{Answer, FakeHttp, Received};
use guardrails::backoff::Backoff;
use guardrails::events::{Decision, GuardEvent, GuardKind};
use guardrails::observe::alerts::{
    AlertHooks, AlertSink, WebhookConfig, WebhookSink, WebhookStats,
};
use guardrails::resilience::{BreakerConfig, CircuitBreaker};

fn fast(url: String) -> WebhookConfig {
    WebhookConfig {
        max_attempts: 3,
        backoff: Backoff::new(Duration::from_millis(5), Duration::from_millis(20), 2.0),
        timeout: Duration::from_secs(5),
        ..WebhookConfig::new(url)
    }
}

fn opened(name: &str) -> GuardEvent<'_> {
    GuardEvent {
        guard: GuardKind::Breaker,
        name,
        decision: Decision::BreakerTransition {
            from: "closed",
            to: "open",
            failure_rate: Some(1.0),
        },
    }
}

#[test]
fn a_breaker_that_opens_posts_an_alertmanager_payload() {
    let (tx, rx) = mpsc::channel::<Received>();
    let tx = Mutex::new(tx);
    let receiver = FakeHttp::start(move |req| {
        let _ = tx.lock().unwrap().send(req.clone());
        Answer::json(200, "{}")
    });
    let webhook = Arc::new(WebhookSink::start(fast(receiver.url("/hook"))).unwrap());
    let hooks = Arc::new(
        AlertHooks::new(AlertHooks::default_rules())
            .with_sink(AlertSink::Webhook(Arc::clone(&webhook))),
    );
    let _subscription = hooks.subscribe();
    let breaker =
        CircuitBreaker::new("alert-llm", BreakerConfig::new().with_minimum_calls(1)).unwrap();
    let _ =
        breaker.call(|| -> guardrails::Result<()> { Err(std::io::Error::other("down").into()) });
    assert!(webhook.flush(Duration::from_secs(10)));
    let got = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!((got.method.as_str(), got.path.as_str()), ("POST", "/hook"));
    assert!(
        got.headers
            .iter()
            .any(|(k, v)| k == "content-type" && v == "application/json")
    );
    let body: serde_json::Value = serde_json::from_str(&got.body).unwrap();
    assert_eq!(body["status"], "firing");
    let alert = &body["alerts"][0];
    assert_eq!(alert["labels"]["alertname"], "CircuitBreakerOpen");
    assert_eq!(alert["labels"]["name"], "alert-llm");
    assert_eq!(alert["labels"]["severity"], "critical");
    assert_eq!(
        webhook.stats(),
        WebhookStats {
            queued: 1,
            sent: 1,
            ..WebhookStats::default()
        }
    );
}

/// A receiver that holds every request until the test opens the gate, and says when one
/// arrived.
struct Held {
    server: FakeHttp,
    arrived: mpsc::Receiver<()>,
    gate: Arc<(Mutex<bool>, Condvar)>,
}

impl Held {
    fn start() -> Self {
        let (tx, arrived) = mpsc::channel();
        let tx = Mutex::new(tx);
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let held = Arc::clone(&gate);
        let server = FakeHttp::start(move |_| {
            let _ = tx.lock().unwrap().send(());
            let (open, cv) = &*held;
            let mut open = open.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            Answer::json(200, "{}")
        });
        Self {
            server,
            arrived,
            gate,
        }
    }

    fn open(&self) {
        *self.gate.0.lock().unwrap() = true;
        self.gate.1.notify_all();
    }
}

#[test]
fn a_hung_receiver_never_holds_the_caller_and_a_full_queue_drops_with_a_count() {
    let held = Held::start();
    let webhook = Arc::new(
        WebhookSink::start(WebhookConfig {
            queue_capacity: 2,
            ..fast(held.server.url("/hook"))
        })
        .unwrap(),
    );
    let hooks = AlertHooks::new(AlertHooks::default_rules())
        .with_sink(AlertSink::Webhook(Arc::clone(&webhook)));

    hooks.on_event(&opened("m0"));
    // The first alert is at the receiver, which holds it; the caller is long gone.
    held.arrived.recv_timeout(Duration::from_secs(5)).unwrap();
    let names: Vec<String> = (1..10).map(|i| format!("m{i}")).collect();
    for name in &names {
        hooks.on_event(&opened(name));
    }
    // One in flight, two queued, seven dropped — while the receiver still holds the first.
    let stats = webhook.stats();
    assert_eq!(
        (stats.queued, stats.dropped, stats.sent),
        (3, 7, 0),
        "{stats:?}"
    );
    held.open();
    assert!(webhook.flush(Duration::from_secs(10)));
    let stats = webhook.stats();
    assert_eq!(
        (stats.sent, stats.dropped, stats.failed),
        (3, 7, 0),
        "{stats:?}"
    );
    assert_eq!(hooks.fired(), 10);
}

#[test]
fn a_failing_receiver_is_retried_then_given_up_and_a_down_one_too() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    let failing = FakeHttp::start(move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
        Answer::json(500, "{}")
    });
    let webhook = Arc::new(WebhookSink::start(fast(failing.url("/hook"))).unwrap());
    let hooks = AlertHooks::new(AlertHooks::default_rules())
        .with_sink(AlertSink::Webhook(Arc::clone(&webhook)));
    hooks.on_event(&opened("x"));
    assert!(webhook.flush(Duration::from_secs(10)));
    assert_eq!(
        hits.load(Ordering::SeqCst),
        3,
        "three attempts, then given up"
    );
    let stats = webhook.stats();
    assert_eq!(
        (stats.failed, stats.retries, stats.sent),
        (1, 2, 0),
        "{stats:?}"
    );

    // Nothing listens on this port (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = Arc::new(WebhookSink::start(fast(format!("http://127.0.0.1:{port}/hook"))).unwrap());
    let hooks = AlertHooks::new(AlertHooks::default_rules())
        .with_sink(AlertSink::Webhook(Arc::clone(&down)));
    hooks.on_event(&opened("y"));
    assert!(down.flush(Duration::from_secs(10)));
    let stats = down.stats();
    assert_eq!(
        (stats.failed, stats.retries, stats.sent),
        (1, 2, 0),
        "{stats:?}"
    );
}
