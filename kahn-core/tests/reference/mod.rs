//! Running an independent Python implementation (standard library only) from a test: the
//! request goes to its stdin as JSON, its answer comes back as one JSON object. Without
//! `python3` the test fails saying so; it never skips.

use std::io::Write as _;
use std::process::{Command, Stdio};

use serde_json::Value;

/// Runs `tests/<script>` on `request`; `what` names the check for the message when python3
/// cannot be run.
pub(crate) fn python(script: &str, what: &str, request: &Value) -> Value {
    let script = format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new("python3")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "python3 is needed for the independent {what} check: install python3 \
                 (running it failed: {e})"
            )
        });
    // The scripts read all of stdin before they write anything.
    let mut stdin = child.stdin.take().expect("python3's stdin is piped");
    stdin.write_all(request.to_string().as_bytes()).expect("send the request to python3");
    drop(stdin);
    let out = child.wait_with_output().expect("wait for python3");
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python3 answers one JSON object")
}
