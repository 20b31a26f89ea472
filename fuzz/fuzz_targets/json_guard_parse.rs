//! Any bytes through the JSON guard's extraction, repair and parse: never a panic, and a
//! value that comes back is valid JSON that survives a round trip.
#![no_main]

use guardrails::json_guard::{JsonGuardConfig, JsonHardGuard};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let guard = JsonHardGuard::new(JsonGuardConfig::new()).expect("default config is valid");
    if let Ok(parsed) = guard.parse_value(&text) {
        let again = serde_json::to_string(&parsed.value).expect("a value serializes");
        let reparsed = guard.parse_value(&again).expect("its own output parses");
        assert!(reparsed.fixes.is_empty(), "valid JSON needed fixes: {again}");
    }
});
