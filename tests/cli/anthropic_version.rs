//! Issue 13: `--header` reaches Anthropic's Message Batches client as it reaches the Messages
//! client, so a user can name a newer `anthropic-version` (the current official Python SDK
//! sends `2026-10-21`) or add `anthropic-beta`; the state file keeps those two, and no other
//! header, for `status` and `collect`. The mock checks the version of every request in a batch
//! with the headers of the request that created it, as Anthropic does.

use crate::util::{MockProcess, TestDir, field, numbered_csv, show};

const STATE: &str = "in.results.batch.json";

fn via_batch(dir: &TestDir, mock: &MockProcess, headers: &[&str]) -> std::process::Output {
    let mut args = vec![
        "run",
        "in.csv",
        "--prompt",
        "{{ text }}",
        "--model",
        "claude-haiku-4-5",
        "--max-tokens",
        "50",
        "--via",
        "batch",
        "--base-url",
        &mock.url,
    ];
    for h in headers {
        args.extend(["--header", h]);
    }
    crate::util::cmd(dir, args)
        .env("ANTHROPIC_API_KEY", "sk-ant-test")
        .output()
        .unwrap()
}

#[test]
fn header_sets_the_anthropic_version_of_a_message_batch() {
    let mock = MockProcess::start(&["--batch-latency-ms", "100"]);
    // A version the API does not know: every request of the batch is refused for it.
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(3));
    let out = via_batch(&dir, &mock, &["anthropic-version: 1999-01-01"]);
    let rows = dir.results("in.results.csv");
    assert_eq!(rows.len(), 3, "{}", show(&out));
    for r in &rows {
        assert_eq!(field(r, "status"), "failed", "{r:?}");
        assert!(field(r, "error").contains("anthropic-version"), "{r:?}");
    }
    // The SDK's current version, a beta, and a gateway secret that must not be kept.
    let dir = TestDir::new();
    dir.create("in.csv", &numbered_csv(3));
    let out = via_batch(
        &dir,
        &mock,
        &[
            "anthropic-version: 2026-10-21",
            "anthropic-beta: message-batches-2024-09-24",
            "x-gateway-token: KEEP-OUT-OF-FILES",
        ],
    );
    let rows = dir.results("in.results.csv");
    assert_eq!(rows.len(), 3, "{}", show(&out));
    assert!(rows.iter().all(|r| field(r, "status") == "ok"), "{rows:?}");
    let state: serde_json::Value = serde_json::from_str(&dir.read(STATE)).unwrap();
    assert_eq!(
        state["api_headers"],
        serde_json::json!([
            "anthropic-version: 2026-10-21",
            "anthropic-beta: message-batches-2024-09-24"
        ])
    );
    assert!(
        !dir.read(STATE).contains("KEEP-OUT"),
        "a header's secret in the state"
    );
}
