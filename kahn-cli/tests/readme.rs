//! The README's first run, verbatim: the shell block of "From `kahn serve` to your first run"
//! is run command by command (bash, `kahn` being this build's binary) against a real
//! `kahn serve` over `./kahn.db`, as a newcomer would paste it; every output line the README
//! shows (`#   …` under a command) must be printed by that command, in order (`…` stands for
//! what varies: hashes, ids, the rest of a table). Only the port differs: the server listens
//! where the machine has room, and `127.0.0.1:8080` in the block is read as that address.
#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should panic right there

use std::path::Path;
use std::process::Command;

use kahn_testkit::KahnServer;

const KAHN: &str = env!("CARGO_BIN_EXE_kahn");

/// The first ```sh block after the heading.
fn first_run_block(readme: &str) -> Vec<String> {
    let at = readme.find("## From `kahn serve` to your first run").expect("the first-run section");
    let rest = &readme[at..];
    let start = rest.find("```sh\n").expect("its shell block") + "```sh\n".len();
    let end = rest[start..].find("```").expect("the block's end");
    rest[start..start + end].lines().map(str::to_owned).collect()
}

/// One command and the output lines the README shows for it.
struct Step {
    command: String,
    shown: Vec<String>,
}

fn steps(block: &[String]) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for line in block {
        // Output is `#   text`; a comment's continuation is `#    text` (indented further).
        if let Some(shown) = line.strip_prefix("#   ").filter(|s| !s.starts_with(' ')) {
            steps.last_mut().expect("output under a command").shown.push(shown.to_owned());
        } else if line.starts_with("kahn ") || line.starts_with("export ") {
            steps.push(Step { command: line.clone(), shown: Vec::new() });
        }
    }
    steps
}

fn squeeze(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether `line` is `shown`, `…` matching anything.
fn matches(shown: &str, line: &str) -> bool {
    let (shown, line) = (squeeze(shown), squeeze(line));
    let mut parts = shown.split('…');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = line.strip_prefix(first.trim_end()) else { return false };
    for part in parts {
        let part = part.trim();
        if part.is_empty() {
            return true;
        }
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.is_empty() || shown.ends_with('…')
}

#[test]
fn the_readme_first_run_prints_what_the_readme_shows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let steps = steps(&first_run_block(&readme));
    assert!(steps.len() >= 10, "the block has its steps: {}", steps.len());

    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        root.join("examples").canonicalize().unwrap(),
        dir.path().join("examples"),
    )
    .unwrap();
    let db = format!("sqlite://{}", dir.path().join("kahn.db").display());
    let server = KahnServer::builder(KAHN).db(db).start();
    let url = server.url().to_owned();

    let mut key = String::new();
    for step in &steps {
        let command = step.command.replace("http://127.0.0.1:8080", &url);
        if command.starts_with("export KAHN_API_KEY=") {
            assert!(!key.is_empty(), "a key was printed before: {command}");
            continue;
        }
        let out = Command::new("bash")
            .args(["--noprofile", "--norc", "-c"])
            .arg(format!("kahn() {{ \"$KAHN_BIN\" \"$@\"; }}; {command}"))
            .current_dir(dir.path())
            .env("KAHN_BIN", KAHN)
            .env("KAHN_API_KEY", &key)
            .env("KAHN_CACHE_DIR", dir.path().join("cache"))
            .env_remove("KAHN_URL")
            .env_remove("KAHN_DATABASE_URL")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "README step failed: {command}\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(line) = stdout.lines().find(|l| l.starts_with("API key (shown once")) {
            key = line.rsplit(' ').next().unwrap().to_owned();
        }
        // Every line shown, in order, among the lines printed ("…" alone: any lines).
        let mut printed = stdout.lines();
        for shown in step.shown.iter().filter(|s| s.trim() != "…") {
            assert!(
                printed.any(|line| matches(shown, line)),
                "README step `{command}` shows\n  {shown}\nbut printed:\n{stdout}"
            );
        }
    }
    assert!(key.starts_with("kahn_live_sk_"), "step 1 printed a key");
}

#[test]
fn the_matcher_reads_the_ellipsis_as_what_varies() {
    assert!(matches("run a: 1 appended, head 8931ad9b…", "run a: 1 appended, head 8931ad9bffee"));
    assert!(!matches("run a: 1 appended, head 8931ad9b…", "run a: 2 appended, head 8931ad9bffee"));
    assert!(matches(
        "migrate-db  failed   …  41s  1",
        "migrate-db failed 2026-11-23T10:01:52+00:00 41s 1"
    ));
    assert!(!matches("status     failed", "status succeeded"));
}
