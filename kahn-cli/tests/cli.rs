//! End-to-end: the real `kahn` binary, against a real SQLite file (`--db`) and against a real
//! `kahn serve` on a loopback port (`--url`). Each scenario runs both ways.
#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should panic right there

use std::path::{Path, PathBuf};
use std::process::Command;

use kahn_testkit::{KahnServer, ServerStderr};

mod support;
use support::{Env, KAHN, push_json, write_lines};

fn provisioning_is_idempotent_and_rotation_revokes_the_old_key(env: &Env) {
    let first = env.provision("choco", false);
    let old = first["api_key"].as_str().unwrap().to_owned();
    let again = env.provision("choco", false);
    assert_eq!(again["tenant"]["id"], first["tenant"]["id"]);
    assert!(again["api_key"].is_null(), "a second provision prints no key");
    let human = env.ok(&["tenant", "provision", "choco"], None);
    assert!(!human.contains("kahn_live_sk_"), "{human}");

    let rotated = env.provision("choco", true);
    let new = rotated["api_key"].as_str().unwrap();
    assert_ne!(new, old);
    let out = env.kahn(&["runs", "list"], Some(&old));
    assert_eq!(out.status.code(), Some(4), "the old key is refused with the auth exit code");
    assert!(String::from_utf8_lossy(&out.stderr).contains("hint:"));
    env.ok(&["runs", "list"], Some(new));
}

fn push_then_push_again_appends_nothing_and_verifies(env: &Env) {
    let key = env.key("stratt");
    let run = env.run_dir("nightly-42", 4000, "a");
    let first = push_json(env, &run, &key, &[]);
    assert_eq!((first["appended"].as_u64(), first["next_seq"].as_u64()), (Some(4000), Some(4000)));
    assert!(first["chunks"].as_u64().unwrap() >= 2, "1 MiB chunks: {first}");
    let second = push_json(env, &run, &key, &[]);
    assert_eq!(second["appended"].as_u64(), Some(0));
    assert_eq!(second["already_stored"].as_u64(), Some(4000));
    assert_eq!(second["head_hash"], first["head_hash"]);
    assert_eq!(second["resumed_by_mark"], true, "the resume cache skipped the parse: {second}");
    let third = push_json(env, &run, &key, &["--no-resume-cache"]);
    assert_eq!(
        (third["already_stored"].as_u64(), third["resumed_by_mark"].as_bool()),
        (Some(4000), Some(false))
    );
    assert_eq!(third["head_hash"], first["head_hash"]);
    let shown: serde_json::Value =
        serde_json::from_str(&env.ok(&["runs", "show", "nightly-42", "--json"], Some(&key)))
            .unwrap();
    assert_eq!(shown["graph"]["nodes"][0], "plan", "graph.json is embedded");
    assert!(env.ok(&["verify", "nightly-42"], Some(&key)).starts_with("OK"));
}

fn an_interrupted_push_resumes_and_ends_with_exactly_the_source(env: &Env) {
    let key = env.key("traceo");
    let full = env.run_dir("resume", 3000, "a");
    // What an interrupted pusher left: the first 1234 lines stored.
    let partial = env.dir.path().join("partial.ndjson");
    let text = std::fs::read_to_string(full.join("transitions.ndjson")).unwrap();
    std::fs::write(&partial, text.lines().take(1234).map(|l| format!("{l}\n")).collect::<String>())
        .unwrap();
    push_json(env, &partial, &key, &["--run-id", "resume"]);
    let resumed = push_json(env, &full, &key, &[]);
    assert_eq!(resumed["already_stored"].as_u64(), Some(1234));
    assert_eq!(resumed["resumed_by_mark"], false, "another file's mark is not this file's");
    assert_eq!(resumed["appended"].as_u64(), Some(3000 - 1234));
    assert_eq!(resumed["skipped"].as_u64(), Some(0), "only what is missing is sent");
    let reference = Env::new();
    let ref_key = reference.key("traceo");
    let ref_dir = reference.run_dir("resume", 3000, "a");
    let direct = push_json(&reference, &ref_dir, &ref_key, &[]);
    assert_eq!(
        resumed["head_hash"], direct["head_hash"],
        "the stored log equals the source exactly"
    );
}

/// A growing log: each re-push skips the stored prefix by its mark and sends only the new
/// lines; a prefix edited in place (same length) is not hidden by the stale mark.
fn a_growing_file_resumes_by_mark_and_an_edited_prefix_still_conflicts(env: &Env) {
    let key = env.key("grow");
    let run = env.run_dir("grow", 500, "a");
    let file = run.join("transitions.ndjson");
    push_json(env, &run, &key, &[]);
    let mut text = std::fs::read_to_string(&file).unwrap();
    let extra = env.dir.path().join("extra.ndjson");
    write_lines(&extra, 700, "a");
    text += &std::fs::read_to_string(&extra)
        .unwrap()
        .lines()
        .skip(500)
        .map(|l| format!("{l}\n"))
        .collect::<String>();
    std::fs::write(&file, &text).unwrap();
    let grown = push_json(env, &run, &key, &[]);
    assert_eq!(grown["resumed_by_mark"], true, "{grown}");
    assert_eq!(
        (grown["already_stored"].as_u64(), grown["appended"].as_u64()),
        (Some(500), Some(200))
    );
    // Pushed again unchanged: the mark it was proved by is kept, and proves it again.
    let again = push_json(env, &run, &key, &[]);
    assert_eq!(
        (&again["resumed_by_mark"], again["appended"].as_u64()),
        (&serde_json::Value::Bool(true), Some(0)),
        "{again}"
    );
    std::fs::write(&file, text.replacen("\"tag\":\"a\"", "\"tag\":\"b\"", 1)).unwrap();
    let out = env.kahn(&["push", run.to_str().unwrap()], Some(&key));
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let shown: serde_json::Value =
        serde_json::from_str(&env.ok(&["runs", "show", "grow", "--json"], Some(&key))).unwrap();
    assert_eq!(shown["next_seq"].as_u64(), Some(700));
    assert_eq!(shown["head_hash"], grown["head_hash"]);
}

fn a_divergent_push_exits_3_and_changes_nothing(env: &Env) {
    let key = env.key("choco");
    let run = env.run_dir("div", 100, "a");
    let first = push_json(env, &run, &key, &[]);
    write_lines(&run.join("transitions.ndjson"), 120, "b");
    let out = env.kahn(&["push", run.to_str().unwrap()], Some(&key));
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    // Where, what is stored, what the file says (from where they differ), and what to do.
    assert!(err.contains("other content at seq 0 (line 1 of"), "{err}");
    let stored = err.lines().find(|l| l.trim_start().starts_with("stored:")).unwrap_or_default();
    let incoming =
        err.lines().find(|l| l.trim_start().starts_with("incoming:")).unwrap_or_default();
    assert!(stored.contains(r#""tag":"a""#) && incoming.contains(r#""tag":"b""#), "{err}");
    assert!(err.contains("fix the file (line 1)") && err.contains("--run-id div-2"), "{err}");
    let shown: serde_json::Value =
        serde_json::from_str(&env.ok(&["runs", "show", "div", "--json"], Some(&key))).unwrap();
    assert_eq!(shown["next_seq"].as_u64(), Some(100));
    assert_eq!(shown["head_hash"], first["head_hash"]);
}

fn bad_lines_and_missing_keys_get_exit_codes_and_hints(env: &Env) {
    let key = env.key("choco");
    let file = env.dir.path().join("bad.ndjson");
    std::fs::write(&file, "{\"ts\":\"2026-11-23T09:00:00Z\",\"to\":\"running\"}\n{\"to\":\"x\"}\n")
        .unwrap();
    let out = env.kahn(&["push", file.to_str().unwrap()], Some(&key));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2") && err.contains("ts"), "{err}");
    let out = env.kahn(&["runs", "show", "bad"], Some(&key));
    assert_eq!(out.status.code(), Some(1), "nothing of the bad file was stored");
    let out = env.kahn(&["runs", "list"], None);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KAHN_API_KEY"));
    let out = env.kahn(&["push", "/no/such/dir"], Some(&key));
    assert_eq!(out.status.code(), Some(2));
    // A chunk size the pusher would not honour is refused, not silently raised.
    let out = env.kahn(&["push", file.to_str().unwrap(), "--chunk-bytes", "300"], Some(&key));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1024..=1048576"), "{out:?}");
}

fn verify_detects_a_tampered_sqlite_file(env: &Env) {
    let key = env.key("choco");
    let run = env.run_dir("tamper", 50, "a");
    push_json(env, &run, &key, &[]);
    let altered = alter_stored_body(&env.dir.path().join("kahn.db"));
    assert!(altered, "the row was altered");
    let out = env.kahn(&["verify", "tamper"], Some(&key));
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("BROKEN") && err.contains("seq 17"), "{err}");
    // The hint can work: a re-push cannot mend an altered run (it stops at the first
    // differing seq); a backup can.
    let hint = err.lines().find(|l| l.starts_with("hint:")).unwrap_or_default();
    assert!(hint.contains("backup") && hint.contains("cannot mend"), "{hint}");
    // A body that no longer decodes at all is the same corrupt store, not a backend failure.
    let conn = rusqlite::Connection::open(env.dir.path().join("kahn.db")).unwrap();
    let changed = conn
        .execute(
            "UPDATE transitions SET body = '{not json' WHERE run_id = 'tamper' AND seq = 3",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let out = env.kahn(&["verify", "tamper"], Some(&key));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("BROKEN") && err.contains("seq 3"), "{err}");
}

/// Alters one stored body behind KAHN's back, as an attacker with the file would.
fn alter_stored_body(db: &Path) -> bool {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute(
        "UPDATE transitions SET body = replace(body, '\"i\":17', '\"i\":71') WHERE seq = 17",
        [],
    )
    .unwrap()
        == 1
}

fn bridges_onboard_idempotently_and_repush_a_retried_job_as_one_run(env: &Env) {
    let onboard = |json: &str| -> serde_json::Value { serde_json::from_str(json).unwrap() };
    let first = onboard(&env.ok(&["bridge", "onboard", "choco", "--json"], None));
    let key = first["api_key"].as_str().expect("first onboarding issues a key").to_owned();
    let again = onboard(&env.ok(&["bridge", "onboard", "choco", "--json"], None));
    assert!(again["api_key"].is_null(), "onboarding twice issues nothing");
    assert_eq!(again["tenant"]["name"], "choco");

    let run = env.run_dir("out", 300, "a");
    let github = [
        ("GITHUB_ACTIONS", "true"),
        ("GITHUB_REPOSITORY", "acme/choco"),
        ("GITHUB_RUN_ID", "4242"),
        ("GITHUB_RUN_ATTEMPT", "1"),
        ("GITHUB_JOB", "build"),
        ("GITHUB_SHA", "0123abc"),
        ("GITHUB_REF", "refs/heads/main"),
    ];
    let gitlab = [
        ("GITLAB_CI", "true"),
        ("CI_PROJECT_PATH", "acme/choco"),
        ("CI_PIPELINE_ID", "77"),
        ("CI_JOB_ID", "78"),
        ("CI_JOB_URL", "https://gitlab.example/acme/choco/-/jobs/78"),
    ];
    for (vars, run_id, appended) in [
        (&github[..], "choco:gh:acme:choco:4242:1:build", 300),
        (&github[..], "choco:gh:acme:choco:4242:1:build", 0),
        (&gitlab[..], "choco:gl:acme:choco:77:78", 300),
        (&gitlab[..], "choco:gl:acme:choco:77:78", 0),
    ] {
        let args = ["bridge", "push", "--profile", "choco", run.to_str().unwrap(), "--json"];
        let out = env.kahn_in(&args, Some(&key), vars);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            (report["run_id"].as_str(), report["appended"].as_u64()),
            (Some(run_id), Some(appended))
        );
    }
    let runs: serde_json::Value =
        serde_json::from_str(&env.ok(&["runs", "list", "--json"], Some(&key))).unwrap();
    let runs = runs["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "two CI jobs, two runs, no duplicates: {runs:?}");
    let gh = runs.iter().find(|r| r["run_id"] == "choco:gh:acme:choco:4242:1:build").unwrap();
    assert_eq!((gh["source"].as_str(), gh["next_seq"].as_u64()), (Some("choco"), Some(300)));
    assert_eq!(gh["labels"]["commit"], "0123abc");
    assert_eq!(gh["labels"]["ci"], "github");

    let out =
        env.kahn(&["bridge", "push", "--profile", "choco", run.to_str().unwrap()], Some(&key));
    assert_eq!(out.status.code(), Some(2), "outside CI without --run-id");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--run-id"));
    let out = env.kahn(&["bridge", "onboard", "nope"], None);
    assert_eq!(out.status.code(), Some(2));

    // Another product's key under this profile is refused before anything is pushed.
    let stratt = onboard(&env.ok(&["bridge", "onboard", "stratt", "--json"], None));
    let stratt_key = stratt["api_key"].as_str().unwrap();
    let args = ["bridge", "push", "--profile", "choco", run.to_str().unwrap()];
    let out = env.kahn_in(&args, Some(stratt_key), &github);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("belongs to tenant \"stratt\"") && err.contains("nothing was pushed"),
        "{err}"
    );
    let runs: serde_json::Value =
        serde_json::from_str(&env.ok(&["runs", "list", "--json"], Some(stratt_key))).unwrap();
    assert_eq!(runs["runs"].as_array().unwrap().len(), 0, "{runs}");
}

fn a_pusher_killed_mid_run_is_resumed_by_a_rerun_and_the_log_equals_the_source(env: &Env) {
    let key = env.key("choco");
    let run = env.run_dir("killed", 24_000, "a"); // about 9 MiB: several chunks
    let mut child = Command::new(KAHN)
        .args(["push", run.to_str().unwrap(), "--chunk-bytes", "262144"])
        .env("KAHN_DATABASE_URL", env.db())
        .env("KAHN_API_KEY", &key)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once some, but not all, chunks are committed.
    let db = env.dir.path().join("kahn.db");
    let stored = |db: &Path| -> u64 {
        let Ok(conn) =
            rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        else {
            return 0;
        };
        conn.query_row("SELECT coalesce(max(next_seq), 0) FROM runs", [], |r| r.get::<_, i64>(0))
            .unwrap_or(0) as u64
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while stored(&db) == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let at_kill = stored(&db);
    assert!(at_kill > 0 && at_kill < 24_000, "killed mid-run (at {at_kill} of 24000)");

    let resumed = push_json(env, &run, &key, &[]);
    assert_eq!(resumed["next_seq"].as_u64(), Some(24_000));
    assert_eq!(
        resumed["already_stored"].as_u64().unwrap() + resumed["appended"].as_u64().unwrap(),
        24_000
    );
    assert!(env.ok(&["verify", "killed"], Some(&key)).starts_with("OK"));
    let reference = Env::new();
    let ref_key = reference.key("choco");
    let direct = push_json(&reference, &reference.run_dir("killed", 24_000, "a"), &ref_key, &[]);
    assert_eq!(
        resumed["head_hash"], direct["head_hash"],
        "the stored log equals the source exactly"
    );
}

/// The issue's CI run: `migrate-db` fails, `notify` then succeeds. Every reader calls the run
/// failed — `runs list`, `--status failed`, `runs show` (its node table, failed first) — and
/// `runs transitions` prints the log, as text and as NDJSON `kahn push` takes back.
fn a_failed_node_reads_as_a_failed_run_everywhere(env: &Env) {
    let key = env.key("ci");
    let file = env.dir.path().join("ci-7.ndjson");
    let lines = [
        r#"{"ts":"2026-11-30T10:00:00Z","node":"migrate-db","to":"running"}"#,
        r#"{"ts":"2026-11-30T10:00:41Z","node":"migrate-db","from":"running","to":"failed"}"#,
        r#"{"ts":"2026-11-30T10:00:42Z","node":"notify","to":"running"}"#,
        r#"{"ts":"2026-11-30T10:00:43Z","node":"notify","from":"running","to":"succeeded"}"#,
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    push_json(env, &file, &key, &[]);

    let list = env.ok(&["runs", "list"], Some(&key));
    assert!(list.contains("ci-7") && list.contains("failed") && list.contains("43s"), "{list}");
    let failed = env.ok(&["runs", "list", "--status", "failed", "--json"], Some(&key));
    let failed: serde_json::Value = serde_json::from_str(&failed).unwrap();
    assert_eq!(failed["runs"][0]["run_id"], "ci-7", "{failed}");
    let succeeded = env.ok(&["runs", "list", "--status", "succeeded", "--json"], Some(&key));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&succeeded).unwrap()["runs"],
        serde_json::json!([])
    );

    let show = env.ok(&["runs", "show", "ci-7"], Some(&key));
    assert!(show.contains("status     failed"), "{show}");
    assert!(show.contains("nodes      1 failed, 1 succeeded"), "{show}");
    assert!(show.contains("duration   43s"), "{show}");
    let table: Vec<&str> = show.lines().skip_while(|l| !l.starts_with("NODE")).collect();
    assert!(table[1].starts_with("migrate-db") && table[1].contains("41s"), "{show}");
    assert!(table[2].starts_with("notify"), "{show}");

    let text = env.ok(&["runs", "transitions", "ci-7", "--after-seq", "1"], Some(&key));
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(rows[0].contains("notify") && rows[0].contains("→ running"), "{text}");
    let three = env.ok(&["runs", "transitions", "ci-7", "--json", "--limit", "3"], Some(&key));
    assert_eq!(three.lines().count(), 3, "{three}");
    let ndjson = env.ok(&["runs", "transitions", "ci-7", "--json"], Some(&key));
    assert!(ndjson.starts_with(three.as_str()), "{ndjson}");
    let back = env.dir.path().join("back.ndjson");
    std::fs::write(&back, &ndjson).unwrap();
    let again = push_json(env, &back, &key, &["--run-id", "ci-7"]);
    assert_eq!((again["appended"].as_u64(), again["already_stored"].as_u64()), (Some(0), Some(4)));
}

/// A file in every spelling a producer might use (keys in any order, run ids and seqs given
/// or not, whitespace, CRLF, escaped keys, metadata lines), long enough for several chunks.
/// Line `bad` (from 1), when given, lacks its `ts` (an odd one is indented, so the pusher
/// parses it itself; an even one it only looks at, and the server refuses).
fn spelled_file(path: &Path, run: &str, bad: Option<usize>) {
    let mut text = String::new();
    let mut seq = 0;
    for line_no in 1..=3000 {
        let ts = format!("2026-11-23T09:{:02}:{:02}Z", line_no / 60 % 60, line_no % 60);
        let line = match line_no % 10 {
            _ if Some(line_no) == bad => format!(
                r#"{}{{"to":"running","node":"n{line_no}"}}"#,
                if line_no % 2 == 1 { " " } else { "" }
            ),
            0 => format!(r#"{{"ts":"{ts}","to":"running","node":"n{line_no}"}}"#),
            1 => format!(r#"{{"run_id":"{run}","seq":{seq},"to":"done","ts":"{ts}"}}"#),
            2 => format!(
                r#"{{ "seq" : {seq} , "ts":"{ts}", "to":"x", "attrs":{{"b":[1.50,{{"kind":"y","seq":1}}],"a":"}}{{\"q\u00e9 é"}} }}"#
            ),
            3 => format!("{{\"ts\":\"{ts}\",\"to\":\"y\"}}\r"),
            4 => format!(r#"  {{"ts":"{ts}","to":"y"}}"#),
            5 => format!(r#"{{"\u0074s":"{ts}","to":"z","attrs":{{"n":1e2}}}}"#),
            6 => String::new(),
            7 if line_no == 7 => r#"{"kind":"run","source":"traceo","labels":{"ci":"x"}}"#.into(),
            8 => format!(r#"{{"run_id":"{run}","ts":"{ts}","to":"w","attrs":{{}}}}"#),
            _ => format!(r#"{{"ts":"{ts}","to":"v","attrs":{{"pad":"{}"}}}}"#, "p".repeat(400)),
        };
        let is_transition = !line.trim().is_empty() && !line.contains("\"kind\":\"run\"");
        text.push_str(&line);
        text.push('\n');
        seq += u64::from(is_transition);
    }
    std::fs::write(path, text).unwrap();
}

/// Over HTTP the pusher forwards most lines as they are written and the server reads them;
/// that must store exactly what a push straight into a database stores, and name a bad line
/// by the same line of the file in the same words.
fn every_spelling_stores_and_fails_as_a_direct_push_does(env: &Env) {
    let direct = Env::new();
    let (key, direct_key) = (env.key("traceo"), direct.key("traceo"));
    let file = env.dir.path().join("spelled.ndjson");
    spelled_file(&file, "spelled", None);
    let pushed = push_json(env, &file, &key, &[]);
    let reference = push_json(&direct, &file, &direct_key, &[]);
    assert!(pushed["chunks"].as_u64().unwrap() >= 3, "{pushed}");
    for field in ["appended", "next_seq", "head_hash"] {
        assert_eq!(pushed[field], reference[field], "{field}: {pushed} vs {reference}");
    }
    let shown = |env: &Env, key: &str| {
        let text = env.ok(&["runs", "show", "spelled", "--json"], Some(key));
        let shown: serde_json::Value = serde_json::from_str(&text).unwrap();
        (shown["source"].clone(), shown["labels"].clone(), shown["head_hash"].clone())
    };
    assert_eq!(shown(env, &key), shown(&direct, &direct_key));

    // Bad lines: in the first chunk, one the server refuses and one the pusher parses itself;
    // and one chunks later.
    for bad in [2, 5, 2_998] {
        let run = format!("bad-{bad}");
        let file = env.dir.path().join(format!("{run}.ndjson"));
        spelled_file(&file, &run, Some(bad));
        let args = ["push", file.to_str().unwrap()];
        let (out, reference) = (env.kahn(&args, Some(&key)), direct.kahn(&args, Some(&direct_key)));
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("line {bad}:")) && err.contains("ts"), "{err}");
        // The progress lines differ (where chunks end); the error and its hint do not.
        let error = |stderr: &str| -> Vec<String> {
            stderr.lines().filter(|l| !l.starts_with("push: ")).map(str::to_owned).collect()
        };
        let direct_err = String::from_utf8_lossy(&reference.stderr);
        assert_eq!(error(&err), error(&direct_err), "the same words both ways");
        // What chunks came before the bad one are stored (where chunks end differs: lines
        // forwarded as written are not their canonical size); nothing from the bad line on.
        let out = env.kahn(&["runs", "show", &run, "--json"], Some(&key));
        let stored = match out.status.code() {
            Some(0) => {
                serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["next_seq"]
                    .as_u64()
                    .unwrap()
            }
            _ => 0,
        };
        assert!(stored < bad as u64, "{stored} stored before line {bad}");
        if stored > 0 {
            env.ok(&["verify", &run], Some(&key));
        }
    }

    // A file still being written: its last line stops inside a string, after a backslash.
    let file = env.dir.path().join("unfinished.ndjson");
    std::fs::write(
        &file,
        "{\"ts\":\"2026-11-23T09:00:00Z\",\"to\":\"x\"}\n{\"to\":\"x\",\"a\":\"\\",
    )
    .unwrap();
    let args = ["push", file.to_str().unwrap()];
    let (out, reference) = (env.kahn(&args, Some(&key)), direct.kahn(&args, Some(&direct_key)));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2:"), "{err}");
    assert_eq!(err, String::from_utf8_lossy(&reference.stderr), "the same words both ways");
}

/// Each scenario once against the SQLite file, once through a real `kahn serve`.
macro_rules! over_db_and_http {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn over_sqlite() {
                    super::$name(&super::Env::new());
                }

                #[test]
                fn over_http() {
                    super::$name(&super::Env::served(&[]));
                }
            }
        )*
    };
}

over_db_and_http!(
    provisioning_is_idempotent_and_rotation_revokes_the_old_key,
    push_then_push_again_appends_nothing_and_verifies,
    an_interrupted_push_resumes_and_ends_with_exactly_the_source,
    a_growing_file_resumes_by_mark_and_an_edited_prefix_still_conflicts,
    a_divergent_push_exits_3_and_changes_nothing,
    bad_lines_and_missing_keys_get_exit_codes_and_hints,
    verify_detects_a_tampered_sqlite_file,
    bridges_onboard_idempotently_and_repush_a_retried_job_as_one_run,
    a_pusher_killed_mid_run_is_resumed_by_a_rerun_and_the_log_equals_the_source,
    a_failed_node_reads_as_a_failed_run_everywhere,
    every_spelling_stores_and_fails_as_a_direct_push_does,
);

/// The server's count of ingests it refused for now (429), from `/metrics`.
fn rate_limited_total(env: &Env) -> f64 {
    let metrics = env.http_get("/metrics");
    metrics
        .lines()
        .find(|l| l.starts_with("kahn_ingest_rate_limited_total"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no rate-limit metric in {metrics}"))
}

/// A server that answers 429 for a while: the pusher waits as told and finishes, and the log
/// is exact.
#[test]
fn the_pusher_waits_out_rate_limits_and_finishes() {
    let env = Env::served(&["--ingest-rate", "1"]);
    let key = env.key("choco");
    let run = env.run_dir("limited", 1500, "a");
    let report = push_json(&env, &run, &key, &["--chunk-bytes", "131072"]);
    assert_eq!(report["next_seq"].as_u64(), Some(1500));
    assert!(report["chunks"].as_u64().unwrap() >= 4, "{report}");
    let limited = rate_limited_total(&env);
    assert!(limited >= 1.0, "the server did answer 429 ({limited} times)");
    assert!(env.ok(&["verify", "limited"], Some(&key)).starts_with("OK"));
}

/// The pusher keeps two chunks of a run in flight. With a cap of one ingest in flight per
/// tenant every second request is refused (429 `too_many_in_flight`): each is sent again once
/// the one before it is stored, and the log is exact.
#[test]
fn a_pipelined_push_refused_its_second_request_sends_it_again_and_is_exact() {
    let env = Env::served(&["--max-ingests-in-flight", "1"]);
    let key = env.key("choco");
    let run = env.run_dir("capped", 3000, "a");
    let report = push_json(&env, &run, &key, &["--chunk-bytes", "65536"]);
    assert_eq!(report["next_seq"].as_u64(), Some(3000), "{report}");
    assert_eq!(report["appended"].as_u64(), Some(3000), "{report}");
    assert!(report["chunks"].as_u64().unwrap() >= 10, "{report}");
    let limited = rate_limited_total(&env);
    assert!(limited >= 1.0, "a second request in flight was refused ({limited} times)");
    assert!(report["retries"].as_u64().unwrap() >= 1, "{report}");
    assert!(env.ok(&["verify", "capped"], Some(&key)).starts_with("OK"));
}

#[test]
fn serve_prints_where_it_listens_and_what_to_do_next() {
    let env = Env::served(&[]);
    let health = env.http_get("/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let out = Command::new(KAHN).args(["serve", "--listen", "nonsense"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("hint:"));
}

/// The test kit's server guard: dropping it kills `kahn serve` and reaps it (no process, not
/// even a zombie, is left).
#[test]
fn a_dropped_server_guard_leaves_no_process_behind() {
    let env = Env::new();
    let server = KahnServer::start(KAHN, env.db());
    let pid = server.id();
    assert_eq!(server.get("/healthz", &[]).0, 200);
    assert!(server.stdout().contains(server.url()), "the banner names the URL");
    drop(server);
    let proc = PathBuf::from(format!("/proc/{pid}"));
    assert!(!proc.exists(), "kahn serve (pid {pid}) is still there, running or a zombie");
}

// ---------------------------------------------------------------------------------------
// `kahn serve` security settings: JWT issuer/audience, the audit log, the failed-auth limit

/// An Ed25519 key for signing test JWTs (a fixed seed: these are throwaway test keys).
struct Idp {
    encoding: jsonwebtoken::EncodingKey,
    public_pem: PathBuf,
}

impl Idp {
    fn new(dir: &Path) -> Self {
        use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
        use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
        let signing = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let private = signing.to_pkcs8_pem(LineEnding::LF).unwrap();
        let public = signing.verifying_key().to_public_key_pem(LineEnding::LF).unwrap();
        let public_pem = dir.join("idp.pub.pem");
        std::fs::write(&public_pem, public).unwrap();
        Self {
            encoding: jsonwebtoken::EncodingKey::from_ed_pem(private.as_bytes()).unwrap(),
            public_pem,
        }
    }

    fn sign(&self, claims: &serde_json::Value) -> String {
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Starts `kahn serve` over `env`'s database with `args` and `vars`, at its default log
/// level, its log kept; `Err` carries the exit code and stderr when it does not start.
fn serve(
    env: &Env,
    args: &[&str],
    vars: &[(&str, &str)],
) -> Result<KahnServer, (Option<i32>, String)> {
    let mut server = KahnServer::builder(KAHN)
        .db(env.db())
        .args(args)
        .env_remove("KAHN_LOG")
        .stderr(ServerStderr::Capture);
    for (k, v) in vars {
        server = server.env(k, v);
    }
    server.try_start().map_err(|e| (e.code(), e.stderr))
}

const JWT_FLAGS: [&str; 4] = ["--jwt-issuer", "https://idp.test", "--jwt-audience", "kahn"];

/// A JWT `sub` holding a newline and a fake log line prints exactly one audit line, with the
/// newline escaped — in the human format and in JSON — and audit events are printed even when
/// `KAHN_LOG=warn` silences everything else at info.
#[test]
fn serve_audit_lines_cannot_be_forged_and_survive_kahn_log_warn() {
    let env = Env::new();
    let idp = Idp::new(env.dir.path());
    let tenant = env.provision("audited", false)["tenant"]["id"].as_str().unwrap().to_owned();
    let forged = "kahn-admin\n2026-01-01T00:00:00.000000Z  INFO kahn::audit: admin override honoured event=\"admin_override\" sub=root";
    let token = idp.sign(&serde_json::json!({
        "sub": forged, "role": "admin", "iss": "https://idp.test", "aud": "kahn",
        "exp": now() + 600,
    }));
    let auth = format!("Bearer {token}");
    let pem = idp.public_pem.to_str().unwrap();
    for format in ["pretty", "json"] {
        let mut args = vec!["--jwt-public-key", pem, "--log-format", format];
        args.extend(JWT_FLAGS);
        let server = serve(&env, &args, &[("KAHN_LOG", "warn")]).unwrap();
        let (status, response) =
            server.get("/v1/whoami", &[("Authorization", &auth), ("X-KAHN-Tenant", &tenant)]);
        assert_eq!(status, 200, "{response}");
        let log = server.stop();
        let audit: Vec<&str> = log.lines().filter(|l| l.contains("kahn::audit")).collect();
        assert_eq!(audit.len(), 1, "{format}: exactly one audit line:\n{log}");
        assert!(
            !log.lines().any(|l| l.starts_with("2026-01-01")),
            "{format}: a forged line:\n{log}"
        );
        assert!(!log.contains("listening"), "{format}: KAHN_LOG=warn hides info events:\n{log}");
        if format == "pretty" {
            assert!(audit[0].contains(r#"sub="kahn-admin\n2026-01-01T00:00:00.000000Z  INFO kahn::audit: admin override honoured event=\"admin_override\" sub=root""#), "{log}");
            assert!(audit[0].contains("outcome=honoured"), "{log}");
            assert!(audit[0].contains(&format!("tenant={tenant}")), "{log}");
            assert!(audit[0].contains("iss=https://idp.test"), "{log}");
            assert!(audit[0].contains("peer=127.0.0.1:"), "{log}");
        } else {
            for line in log.lines() {
                let _: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line:?}"));
            }
            let event: serde_json::Value = serde_json::from_str(audit[0]).unwrap();
            assert_eq!(event["target"], "kahn::audit", "{event}");
            assert_eq!(event["fields"]["sub"], forged, "{event}");
            assert_eq!(event["fields"]["outcome"], "honoured", "{event}");
            assert_eq!(event["fields"]["iss"], "https://idp.test", "{event}");
            assert!(event["fields"]["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{event}");
        }
    }
}

/// A JWT key without an issuer and an audience would accept any token the key ever signed for
/// another service: `kahn serve` refuses to start, naming the missing flags, unless the
/// loudly named opt-out is given — which it then warns about.
#[test]
fn serve_refuses_a_jwt_key_without_issuer_and_audience_unless_opted_out() {
    let env = Env::new();
    let idp = Idp::new(env.dir.path());
    let pem = idp.public_pem.to_str().unwrap();
    for (extra, names) in [
        (&[][..], "--jwt-issuer and --jwt-audience are not set"),
        (&["--jwt-issuer", "https://idp.test"][..], "--jwt-audience is not set"),
        (&["--jwt-audience", "kahn"][..], "--jwt-issuer is not set"),
    ] {
        let mut args = vec!["--jwt-public-key", pem];
        args.extend(extra);
        let Err((code, err)) = serve(&env, &args, &[]) else {
            panic!("kahn serve started with {extra:?}");
        };
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains(names), "{extra:?}: {err}");
        assert!(err.contains("another service") && err.contains("hint:"), "{err}");
    }
    let server =
        serve(&env, &["--jwt-public-key", pem, "--jwt-insecure-no-issuer-audience-check"], &[])
            .unwrap();
    let token = idp.sign(&serde_json::json!({"sub": "someone", "exp": now() + 600}));
    let (status, response) =
        server.get("/v1/whoami", &[("Authorization", &format!("Bearer {token}"))]);
    assert_eq!(status, 200, "{response}");
    let log = server.stop();
    assert!(log.contains("WARN") && log.contains("INSECURE"), "a startup warning:\n{log}");
}

/// `--auth-failures-per-minute`: a client address past its failed authentications gets 429
/// with Retry-After, its valid key included.
#[test]
fn serve_limits_failed_authentications_per_address() {
    let env = Env::new();
    let key = env.key("guarded");
    let server = serve(&env, &["--auth-failures-per-minute", "3"], &[]).unwrap();
    let bearer = |k: &str| format!("Bearer {k}");
    let bad = bearer("kahn_live_sk_not-a-real-key");
    for _ in 0..3 {
        assert_eq!(server.get("/v1/runs", &[("Authorization", &bad)]).0, 401);
    }
    let (status, response) = server.get("/v1/runs", &[("Authorization", &bearer(&key))]);
    assert_eq!(status, 429, "{response}");
    assert!(response.to_ascii_lowercase().contains("retry-after: "), "{response}");
    assert_eq!(server.get("/healthz", &[]).0, 200);
    drop(server.stop());
}

/// A config file's error excerpt quotes the faulty line: a DSN on it is shown without its
/// password (the same redaction as the banner and `kahn migrate`, see tests/postgres.rs).
#[test]
fn a_config_error_quoting_a_dsn_does_not_show_its_password() {
    let env = Env::new();
    let file = env.dir.path().join("kahn.toml");
    std::fs::write(&file, "db = postgres://kahn_app:CfgPw-0d9a4b@db.internal/kahn\n").unwrap();
    let out = Command::new(KAHN)
        .args(["serve", "--config", file.to_str().unwrap()])
        .env_remove("KAHN_DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("CfgPw-0d9a4b"), "the error shows the password: {text}");
    assert!(text.contains("postgres://kahn_app:***@db.internal/kahn"), "{text}");
}

/// A wrapped error prints each layer once: the message names only its own layer and the CLI
/// walks the source chain, so the cause (SQLite's own error under KAHN's hint) is shown —
/// once, not once in the message and again as a cause.
#[test]
fn a_wrapped_error_prints_its_cause_once() {
    let env = Env::new();
    let file = env.dir.path().join("garbage.db");
    std::fs::write(&file, vec![0x5a; 8192]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kahn"))
        .args(["tenant", "list", "--db", &format!("sqlite://{}", file.display())])
        .env_remove("KAHN_DATABASE_URL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for cause in ["not a KAHN SQLite database", "file is not a database"] {
        assert_eq!(text.matches(cause).count(), 1, "{cause:?} once: {text}");
    }
    assert!(text.contains("\n  cause: "), "the causes are listed: {text}");
    assert!(text.contains("hint:"), "{text}");
}

/// A run's graph.json is read as strictly as a line: a number no double holds (`1e-400`,
/// which would be stored as 0) is refused naming the graph, and nothing is pushed.
#[test]
fn a_graph_with_a_number_no_double_holds_is_refused() {
    let env = Env::new();
    let key = env.key("choco");
    let dir = env.run_dir("tiny", 3, "a");
    std::fs::write(dir.join("graph.json"), r#"{"nodes":["plan"],"weight":1e-400}"#).unwrap();
    let out = env.kahn(&["push", dir.to_str().unwrap()], Some(&key));
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("graph") && text.contains("1e-400"), "{text}");
    let listed = env.ok(&["runs", "list"], Some(&key));
    assert!(listed.contains("no runs yet"), "{listed}");
}

// ---------------------------------------------------------------------------------------
// Data lifecycle: retention by receipt, tenant administration, key rollover

/// A `kahn serve` with the default retention timer (a purge at start, then hourly).
fn serve_with_retention(env: &Env) -> KahnServer {
    KahnServer::builder(KAHN)
        .db(env.db())
        .retention_timer(true)
        .env("KAHN_LOG", "kahn_http::server=debug,kahn_http::retention=info,warn")
        .stderr(ServerStderr::Capture)
        .start()
}

/// A backfill dated a year ago is accepted, survives a server restart (which purges at start)
/// with the default 90-day retention, and `kahn purge` finds nothing to remove: retention
/// counts from receipt, not from the producer's `ts`.
#[test]
fn a_run_dated_a_year_ago_survives_a_restart_with_retention_90() {
    let env = Env::new();
    let key = env.key("backfill");
    let run = env.dir.path().join("last-year.ndjson");
    let year_ago = chrono::Utc::now() - chrono::Duration::days(365);
    let text: String = (0..50)
        .map(|i| {
            let ts = (year_ago + chrono::Duration::seconds(i)).to_rfc3339();
            format!("{{\"ts\":\"{ts}\",\"node\":\"n{}\",\"to\":\"succeeded\"}}\n", i % 3)
        })
        .collect();
    std::fs::write(&run, text).unwrap();

    let first = serve_with_retention(&env);
    let url = first.url().to_owned();
    let out = env.kahn(&["push", run.to_str().unwrap(), "--url", &url, "--json"], Some(&key));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = first.stop();
    assert!(log.contains("retention purge ran"), "the first server purged at start: {log}");

    let second = serve_with_retention(&env);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (status, body) =
        second.get("/v1/runs/last-year", &[("Authorization", &format!("Bearer {key}"))]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"next_seq\":50"), "the backfill is intact after the restart: {body}");
    let log = second.stop();
    assert!(log.contains("retention purge ran"), "the restarted server purged at start: {log}");
    assert!(!log.contains("runs_removed"), "it removed nothing: {log}");

    let dry = env.ok(&["purge", "--dry-run"], None);
    assert!(dry.contains("nothing to purge"), "{dry}");
    assert!(env.ok(&["verify", "last-year"], Some(&key)).starts_with("OK"));
}

fn fails(env: &Env, args: &[&str], code: i32, needle: &str) -> String {
    let out = env.kahn(args, None);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "kahn {args:?}: {err}");
    assert!(err.contains(needle), "kahn {args:?} must say {needle:?}: {err}");
    assert!(err.contains("hint:"), "kahn {args:?} gives a hint: {err}");
    err
}

/// Retention and tenant settings as operators change them, each bad input refused with a
/// hint and nothing changed.
#[test]
fn operators_change_retention_names_and_orgs_and_bad_input_changes_nothing() {
    let env = Env::new();
    env.key("team");
    let err =
        fails(&env, &["tenant", "provision", "team", "--retention-days", "30"], 2, "retention");
    assert!(err.contains("kahn tenant set-retention team 30"), "{err}");
    env.ok(&["tenant", "provision", "team", "--retention-days", "90"], None);
    fails(&env, &["tenant", "set-retention", "team", "0"], 2, "retention_days");
    fails(&env, &["tenant", "set-retention", "nobody", "30"], 1, "no tenant named \"nobody\"");
    let set = env.ok(&["tenant", "set-retention", "team", "30"], None);
    assert!(set.contains("30 days"), "{set}");
    env.ok(&["tenant", "provision", "team", "--retention-days", "30"], None);
    let listed = env.ok(&["tenant", "list"], None);
    assert!(listed.contains("retention=30d"), "{listed}");

    env.key("other");
    fails(&env, &["tenant", "rename", "team", "other"], 2, "name");
    env.ok(&["tenant", "rename", "team", "team-ci"], None);
    fails(&env, &["tenant", "rename", "team", "x"], 1, "no tenant named \"team\"");
    env.ok(&["tenant", "link-org", "team-ci", "org_42"], None);
    fails(&env, &["tenant", "link-org", "other", "org_42"], 2, "org_id");
    let unlinked = env.ok(&["tenant", "unlink-org", "team-ci"], None);
    assert!(unlinked.contains("no longer linked to org org_42"), "{unlinked}");
    let again = env.ok(&["tenant", "unlink-org", "team-ci"], None);
    assert!(again.contains("nothing changed"), "{again}");
    env.ok(&["tenant", "link-org", "other", "org_42"], None);

    let dry: serde_json::Value = serde_json::from_str(
        &env.ok(&["purge", "--dry-run", "--tenant", "team-ci", "--json"], None),
    )
    .unwrap();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["tenants"], serde_json::json!([]));
    fails(&env, &["purge", "--tenant", "nobody"], 1, "no tenant named");
}

/// Key rollover without an outage: the old key keeps working through the grace period while
/// the new one works at once; `tenant keys` shows each key's dates; an expiry that is not in
/// the future is refused.
#[test]
fn keys_roll_over_with_a_grace_period_and_are_listed_with_their_dates() {
    let env = Env::new();
    let old = env.key("rolling");
    let run = env.run_dir("r1", 5, "a");
    push_json(&env, &run, &old, &[]);
    let rotated: serde_json::Value = serde_json::from_str(
        &env.ok(&["tenant", "provision", "rolling", "--rotate", "--grace", "24h", "--json"], None),
    )
    .unwrap();
    let new = rotated["api_key"].as_str().unwrap().to_owned();
    assert!(rotated["retired_at"].is_string(), "{rotated}");
    env.ok(&["runs", "list"], Some(&old));
    env.ok(&["runs", "list"], Some(&new));
    let human = env.ok(&["tenant", "provision", "other", "--rotate", "--grace", "1h"], None);
    assert!(human.contains("API key"), "{human}");

    let keys = env.ok(&["tenant", "keys", "rolling"], None);
    let header = keys.lines().next().unwrap();
    for column in ["ID", "STATE", "CREATED", "EXPIRES", "REVOKED", "LAST USED"] {
        assert!(header.contains(column), "{keys}");
    }
    assert_eq!(keys.lines().count(), 3, "{keys}");
    assert_eq!(keys.matches("active").count(), 2, "both work during the grace: {keys}");

    let issued: serde_json::Value = serde_json::from_str(
        &env.ok(&["tenant", "issue-key", "rolling", "--expires-in", "30d", "--json"], None),
    )
    .unwrap();
    assert!(issued["expires_at"].is_string(), "{issued}");
    env.ok(&["runs", "list"], Some(issued["api_key"].as_str().unwrap()));
    fails(&env, &["tenant", "issue-key", "rolling", "--expires-in", "0s"], 2, "expires_in");
    let out = env.kahn(&["tenant", "issue-key", "rolling", "--expires-in", "soon"], None);
    assert_eq!(out.status.code(), Some(2), "clap refuses a non-duration");
    let out = env.kahn(&["tenant", "provision", "rolling", "--grace", "1h"], None);
    assert_eq!(out.status.code(), Some(2), "--grace needs --rotate");
    assert_eq!(env.ok(&["tenant", "keys", "rolling"], None).lines().count(), 4, "no key added");

    // Without a grace, a rotation stops the old keys at once.
    let now = env.provision("rolling", true)["api_key"].as_str().unwrap().to_owned();
    assert_eq!(env.kahn(&["runs", "list"], Some(&new)).status.code(), Some(4));
    env.ok(&["runs", "list"], Some(&now));
}

/// Deleting a tenant needs --yes, removes its runs and keys, and is audited.
#[test]
fn deleting_a_tenant_needs_yes_and_is_audited() {
    let env = Env::new();
    let key = env.key("doomed");
    push_json(&env, &env.run_dir("d1", 7, "a"), &key, &[]);
    fails(&env, &["tenant", "delete", "doomed"], 2, "--yes");
    env.ok(&["runs", "list"], Some(&key));
    let out = env.kahn(&["tenant", "delete", "doomed", "--yes"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("1 runs, 7 transitions"), "{said}");
    let audit = String::from_utf8_lossy(&out.stderr);
    assert!(audit.contains("kahn::audit") && audit.contains("tenant_deleted"), "{audit}");
    assert_eq!(env.kahn(&["runs", "list"], Some(&key)).status.code(), Some(4));
    fails(&env, &["tenant", "delete", "doomed", "--yes"], 1, "no tenant named");
}

/// Sign-in with an identity provider that cannot be read stops the start with the reason and
/// a hint (exit 5: the provider may come back); flags that cannot work are usage errors.
#[test]
fn serve_refuses_to_start_without_a_readable_identity_provider() {
    let env = Env::new();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let issuer = format!("http://127.0.0.1:{port}");
    let Err((code, err)) =
        serve(&env, &["--oidc-issuer", &issuer, "--oidc-client-id", "kahn"], &[])
    else {
        panic!("kahn serve started without its provider");
    };
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains("discovery document could not be read"), "{err}");
    assert!(err.contains("hint: is the identity provider up"), "{err}");

    for (args, says) in [
        (vec!["--oidc-issuer", "https://idp.example.com"], "--oidc-client-id"),
        (
            vec![
                "--oidc-issuer",
                "https://idp.example.com",
                "--oidc-client-id",
                "kahn",
                "--oidc-claim",
                "org",
            ],
            "FIELD=CLAIM",
        ),
        (
            vec![
                "--oidc-issuer",
                "https://idp.example.com",
                "--oidc-client-id",
                "kahn",
                "--oidc-claim",
                "sub=user",
            ],
            "not a mapped field",
        ),
        (vec!["--session-ttl", "0"], "longer than zero"),
        (vec!["--cors-origin", "*"], "scheme://host[:port]"),
    ] {
        let Err((code, err)) = serve(&env, &args, &[]) else {
            panic!("kahn serve started with {args:?}");
        };
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// A reader that goes away (`kahn tenant list | head -0`) ends `kahn` quietly with success,
/// as Unix tools do: no panic, no exit 101.
#[test]
fn a_closed_stdout_is_not_a_panic() {
    let env = Env::new();
    env.ok(&["tenant", "provision", "pipe-a"], None);
    env.ok(&["tenant", "provision", "pipe-b"], None);
    for args in [&["tenant", "list"][..], &["tenant", "list", "--json"][..]] {
        let mut child = Command::new(KAHN)
            .args(args)
            .env("KAHN_DATABASE_URL", env.db())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reader is gone before `kahn` has opened its database.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}

/// `kahn completions SHELL` prints a script the shell accepts; bash's completes kahn's
/// commands once sourced.
#[test]
fn completions_for_each_shell_and_bash_completes_commands() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = Command::new(KAHN).args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout.len() > 1000, "{shell}: a real script");
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("kahn.bash");
    let out = Command::new(KAHN).args(["completions", "bash"]).output().unwrap();
    std::fs::write(&script, &out.stdout).unwrap();
    // Complete `kahn ten<TAB>` and `kahn tenant pro<TAB>` with the generated function.
    let probe = format!(
        "source {}; complete -p kahn >/dev/null || exit 9; \
         COMP_WORDS=(kahn ten); COMP_CWORD=1; _kahn kahn ten kahn; echo \"${{COMPREPLY[@]}}\"; \
         COMP_WORDS=(kahn tenant pro); COMP_CWORD=2; _kahn kahn pro tenant; echo \"${{COMPREPLY[@]}}\"",
        script.display()
    );
    let out = Command::new("bash").args(["--noprofile", "--norc", "-c", &probe]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.first().copied(), Some("tenant"), "{said}");
    assert!(lines.get(1).is_some_and(|l| l.split(' ').any(|w| w == "provision")), "{said}");
}

/// `kahn man` prints kahn(1); `--out-dir` writes a page per command, as kahn(1)'s
/// SUBCOMMANDS section names them, each rendering cleanly with groff.
#[test]
fn man_pages_for_every_command_render_cleanly() {
    let out = Command::new(KAHN).arg("man").output().unwrap();
    assert!(out.status.success());
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH kahn 1") && page.contains("kahn\\-tenant(1)"), "{page}");
    assert!(page.contains("tamper\\-evident"), "NAME is what kahn is, not the crate's blurb");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(KAHN).args(["man", "--out-dir"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for want in
        ["kahn.1", "kahn-push.1", "kahn-serve.1", "kahn-tenant-provision.1", "kahn-runs-list.1"]
    {
        assert!(pages.iter().any(|p| p == want), "{want} in {pages:?}");
    }
    for page in &pages {
        let rendered = Command::new("groff")
            .args(["-k", "-man", "-Tutf8", "-ww", "-z"])
            .arg(dir.path().join(page))
            .output()
            .expect("groff renders the pages (Debian: apt-get install groff-base)");
        let warnings = String::from_utf8_lossy(&rendered.stderr);
        assert!(rendered.status.success() && warnings.is_empty(), "{page}: {warnings}");
    }
}

/// A forgotten `--url`/`--db` is an error naming both, never a fresh `./kahn.db` answering
/// "unknown key"; a `--db` naming no file is refused, not created; `kahn migrate` (like
/// `kahn serve`) still defaults to `sqlite://kahn.db`.
#[test]
fn data_commands_need_a_named_store_and_create_no_database() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("nightly-42");
    std::fs::create_dir_all(&run).unwrap();
    write_lines(&run.join("transitions.ndjson"), 3, "a");
    let kahn = |args: &[&str]| {
        let mut cmd = Command::new(KAHN);
        cmd.args(args).current_dir(dir.path());
        for var in ["KAHN_URL", "KAHN_DATABASE_URL", "KAHN_API_KEY", "KAHN_CONFIG"] {
            cmd.env_remove(var);
        }
        cmd.env("KAHN_CACHE_DIR", dir.path().join("cache"));
        let out = cmd.output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let key = "kahn_live_sk_0000000000000000000000000000000000000000000000000000000000000000";
    let run = run.to_str().unwrap();
    for (args, says) in [
        (vec!["tenant", "list"], "no database named"),
        (vec!["tenant", "provision", "my-team"], "no database named"),
        (vec!["push", run, "--key", key], "no server or database named"),
        (vec!["runs", "list", "--key", key], "no server or database named"),
        (vec!["verify", "nightly-42", "--key", key], "no server or database named"),
        (vec!["runs", "list", "--key", key, "--db", "sqlite://elsewhere.db"], "no database at"),
        (vec!["tenant", "list", "--db", "sqlite://elsewhere.db"], "no database at"),
    ] {
        let (code, err) = kahn(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(says) && err.contains("hint:"), "{args:?}: {err}");
        let made: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".db"))
            .collect();
        assert!(made.is_empty(), "{args:?} created a database");
    }
    let (code, err) = kahn(&["migrate"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(dir.path().join("kahn.db").exists(), "kahn migrate creates ./kahn.db");
    let (code, err) = kahn(&["tenant", "provision", "my-team", "--db", "sqlite://kahn.db"]);
    assert_eq!(code, Some(0), "{err}");
}

/// Every command that reports takes --json, and with it a failure is JSON on stdout too
/// (`{"error", "exit_code", "message", "hint"}`), so a script never parses prose.
#[test]
fn every_command_speaks_json_and_so_do_its_errors() {
    let env = Env::new();
    let json = |args: &[&str]| -> serde_json::Value {
        let out = env.kahn(args, None);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("{args:?} printed no JSON ({e}): {text}{}", String::from_utf8_lossy(&out.stderr))
        })
    };
    assert_eq!(json(&["migrate", "--json"])["schema"], "current");
    let made = json(&["tenant", "provision", "jsonny", "--json"]);
    let key = made["api_key"].as_str().unwrap().to_owned();
    let key_id = made["key_id"].as_str().unwrap().to_owned();
    let run = env.run_dir("j-run", 3, "a");
    push_json(&env, &run, &key, &[]);
    let verified = env.kahn(&["verify", "j-run", "--json"], Some(&key));
    let verified: serde_json::Value = serde_json::from_slice(&verified.stdout).unwrap();
    assert_eq!(verified["verified"], true);
    assert_eq!(
        json(&["tenant", "set-retention", "jsonny", "30", "--json"])["tenant"]["retention_days"],
        30
    );
    assert_eq!(
        json(&["tenant", "link-org", "jsonny", "org_j", "--json"])["tenant"]["airlock_org_id"],
        "org_j"
    );
    assert_eq!(json(&["tenant", "unlink-org", "jsonny", "--json"])["unlinked_org"], "org_j");
    assert_eq!(
        json(&["tenant", "rename", "jsonny", "jsonier", "--json"])["tenant"]["name"],
        "jsonier"
    );
    assert_eq!(
        json(&["tenant", "revoke-key", "jsonier", &key_id, "--json"])["revoked_key_id"],
        key_id
    );
    assert_eq!(json(&["tenant", "delete", "jsonier", "--yes", "--json"])["runs_removed"], 1);

    // Errors: JSON on stdout, the exit code unchanged.
    let out = env.kahn(&["verify", "no-such-run", "--json"], Some(&key));
    assert_eq!(out.status.code(), Some(4), "the key was revoked above");
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(err["error"], "unauthorized", "{err}");
    assert!(err["hint"].as_str().is_some_and(|h| !h.is_empty()), "{err}");
    let out = env.kahn(&["tenant", "rename", "nobody-here", "x", "--json"], None);
    assert_eq!(out.status.code(), Some(1));
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(err["message"].as_str().is_some_and(|m| m.contains("nobody-here")), "{err}");
}

/// `kahn serve` logs one access line per request at its default level: method, route (the
/// template, not the path), status, duration, the tenant and the request id, and the W3C
/// trace id of a `traceparent`.
#[test]
fn serve_logs_an_access_line_per_request_with_its_request_id() {
    let env = Env::new();
    let key = env.key("choco");
    let server = serve(&env, &[], &[]).unwrap();
    let (status, _) = server.get(
        "/v1/runs/nightly-9",
        &[
            ("Authorization", &format!("Bearer {key}")),
            ("X-Request-Id", "req-abc-123"),
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ],
    );
    assert_eq!(status, 404);
    let auth = format!("Bearer {key}");
    let (status, _) =
        server.get("/v1/runs", &[("Authorization", &auth), ("X-Request-Id", "req-tenant-1")]);
    assert_eq!(status, 200);
    let log = server.stop();
    let listed = log.lines().find(|l| l.contains("req-tenant-1")).unwrap_or_default();
    let tenant = env.provision("choco", false)["tenant"]["id"].as_str().unwrap().to_owned();
    assert!(listed.contains(&format!("tenant={tenant}")), "the tenant read: {listed}");
    let line = log
        .lines()
        .find(|l| l.contains("kahn_http::access") && l.contains("req-abc-123"))
        .unwrap_or_else(|| panic!("an access line:\n{log}"));
    for field in [
        "method=GET",
        "route=/v1/runs/{run_id}",
        "status=404",
        "duration_ms=",
        "trace_id=4bf92f3577b34da6a3ce929d0e0e4736",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
    assert!(!line.contains("nightly-9"), "the route, not the raw path: {line}");
}

/// `kahn healthcheck` (the container's HEALTHCHECK): 0 against a ready server, 5 when none
/// answers, at once.
#[test]
fn healthcheck_says_whether_a_server_is_ready() {
    let env = Env::new();
    env.ok(&["migrate"], None);
    let server = serve(&env, &[], &[]).unwrap();
    let out =
        Command::new(KAHN).args(["healthcheck", "--url", server.url(), "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(said["ready"], true);
    let url = server.url().to_owned();
    server.stop();
    let started = std::time::Instant::now();
    let out = Command::new(KAHN).args(["healthcheck", "--url", &url]).output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() < std::time::Duration::from_secs(6));
}

/// A typed `--db` beats an exported KAHN_URL (flags beat the environment), both typed is an
/// error; bad filter values are usage errors; the next-page hint is the same command (on
/// stderr); an empty filtered list says the filters matched nothing.
#[test]
fn runs_list_reads_what_was_typed() {
    let env = Env::new();
    let key = env.key("choco");
    let run = env.run_dir("page-a", 2, "a");
    push_json(&env, &run, &key, &[]);
    let run = env.run_dir("page-b", 2, "b");
    push_json(&env, &run, &key, &[]);
    let dead = "http://127.0.0.1:9";
    let out = env.kahn_in(&["runs", "list", "--db", &env.db()], Some(&key), &[("KAHN_URL", dead)]);
    assert!(
        out.status.success(),
        "--db typed wins over KAHN_URL: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.kahn(&["runs", "list", "--db", &env.db(), "--url", dead], Some(&key));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("both --url and --db"));
    for bad in [&["--status", "bogus"][..], &["--limit", "0"][..], &["--limit", "1001"][..]] {
        let mut args = vec!["runs", "list"];
        args.extend_from_slice(bad);
        assert_eq!(env.kahn(&args, Some(&key)).status.code(), Some(2), "{bad:?}");
    }
    let out = env.kahn(&["runs", "list", "--limit", "1", "--prefix", "page-"], Some(&key));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "one run on stdout, nothing else: {stdout}");
    let more =
        stderr.lines().find(|l| l.starts_with("more: ")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(more.contains("--limit 1 --prefix page- --cursor "), "{more}");
    // --json is the API's shape, whichever store: the counts and durations /v1/runs has.
    let listed: serde_json::Value =
        serde_json::from_str(&env.ok(&["runs", "list", "--json"], Some(&key))).unwrap();
    let first = &listed["runs"][0];
    assert_eq!(first["transition_count"], 2, "{first}");
    assert!(first.get("duration_ms").is_some(), "{first}");
    let shown: serde_json::Value =
        serde_json::from_str(&env.ok(&["runs", "show", "page-a", "--json"], Some(&key))).unwrap();
    assert!(shown["nodes"].as_array().is_some_and(|n| !n.is_empty()), "{shown}");
    let out = env.kahn(&["runs", "list", "--prefix", "zzz"], Some(&key));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no run matches these filters");
}
