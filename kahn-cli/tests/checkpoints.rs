//! Tenant checkpoints, end to end and as an attacker with the database file would try them:
//! the real `kahn` binary, a real `kahn serve --receipt-key` on a loopback port, the SQLite
//! file it serves edited behind its back, and `kahn audit` between a checkpoint kept before
//! and one made after.
#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should panic right there

use std::path::{Path, PathBuf};
use std::process::Output;

mod support;
use support::{Env, rewrite_with_recomputed_chain, signing_env, stderr};

/// `kahn checkpoint` for `key`'s tenant through the server; its stdout kept in a file named
/// `name`, as a producer or auditor keeps evidence.
fn checkpoint(env: &Env, key: &str, name: &str) -> PathBuf {
    let (file, out) = checkpoint_out(env, key, name);
    assert!(out.status.success(), "{}", stderr(&out));
    file
}

/// `kahn checkpoint` after someone altered the store: the checkpoint is made and printed (the
/// evidence), and the command says what it recorded, exit 3.
fn checkpoint_recording(env: &Env, key: &str, name: &str, needle: &str) -> PathBuf {
    let (file, out) = checkpoint_out(env, key, name);
    assert_altered(&out, needle);
    assert!(stderr(&out).contains("the checkpoint (kept above) records"), "{}", stderr(&out));
    let kept: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(kept["tree_size"].as_u64().is_some(), "the checkpoint is printed: {kept}");
    file
}

fn checkpoint_out(env: &Env, key: &str, name: &str) -> (PathBuf, Output) {
    let file = env.dir.path().join(format!("{name}.json"));
    let out = env.kahn(&["checkpoint"], Some(key));
    std::fs::write(&file, &out.stdout).unwrap();
    (file, out)
}

fn audit(env: &Env, key: &str, public: &Path, from: &Path, extra: &[&str]) -> Output {
    let mut args =
        vec!["audit", "--from", from.to_str().unwrap(), "--public-key", public.to_str().unwrap()];
    args.extend_from_slice(extra);
    env.kahn(&args, Some(key))
}

fn sqlite(env: &Env) -> rusqlite::Connection {
    rusqlite::Connection::open(env.dir.path().join("kahn.db")).unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts `out` is an audit that found the history altered (exit 3), mentioning `needle`.
fn assert_altered(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("ALTERED") && err.contains(needle), "{err}");
}

/// Removes a run as someone with the database file would: every row of it.
fn delete_run(conn: &rusqlite::Connection, run: &str) {
    for table in ["transitions", "run_nodes", "runs"] {
        conn.execute(&format!("DELETE FROM {table} WHERE run_id = ?1"), [run]).unwrap();
    }
}

#[test]
fn an_honest_history_audits_clean_naming_what_grew_and_what_retention_purged() {
    let (env, public) = signing_env();
    let key = env.key("choco");
    for (run, n) in [("grows", 5), ("expires", 3)] {
        env.ok(&["push", env.run_dir(run, n, "a").to_str().unwrap()], Some(&key));
    }
    // `expires` was received 100 days ago (the binary's clock cannot be moved: its row is
    // dated back before any checkpoint logs it, as if pushed then).
    sqlite(&env)
        .execute(
            "UPDATE runs SET received_at = received_at - 100 * 86400000000 WHERE run_id = 'expires'",
            [],
        )
        .unwrap();
    let c1 = checkpoint(&env, &key, "c1");
    let kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&c1).unwrap()).unwrap();
    assert_eq!(kept["tree_size"], 2, "one leaf per run: {kept}");

    env.ok(&["push", env.run_dir("grows", 8, "a").to_str().unwrap()], Some(&key));
    env.ok(&["push", env.run_dir("added", 2, "b").to_str().unwrap()], Some(&key));
    // Retention (90 days) removes `expires`, through KAHN's own purge.
    let purged = env.ok(&["purge", "--tenant", "choco", "--json"], None);
    assert!(purged.contains("\"runs_removed\": 1"), "{purged}");
    let c2 = checkpoint(&env, &key, "c2");

    let out = audit(&env, &key, &public, &c1, &["--to", c2.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("history only grew from checkpoint 2"), "{text}");
    assert!(text.contains("added: added"), "{text}");
    assert!(text.contains("extended: grows (5 -> 8 transitions)"), "{text}");
    assert!(text.contains("purged by retention: expires (last received 100 days"), "{text}");
    // The 90 days promised held: the purge came after them.
    let out = audit(&env, &key, &public, &c1, &["--retention-days", "90"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The same, as JSON, with --to defaulting to the latest checkpoint the store lists.
    let out = audit(&env, &key, &public, &c1, &["--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["purged"], serde_json::json!(["expires"]), "{report}");
    assert_eq!(report["key"], "pinned");
    let listed = env.ok(&["audit", "--list"], Some(&key));
    assert_eq!(listed.lines().count(), 2, "two checkpoints listed: {listed}");
    // Nothing changed: `kahn checkpoint` answers the latest and adds nothing.
    let again = checkpoint(&env, &key, "c3");
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&c2).unwrap());
}

#[test]
fn an_edit_with_every_hash_recomputed_fails_the_next_audit() {
    let (env, public) = signing_env();
    let key = env.key("choco");
    env.ok(&["push", env.run_dir("release", 30, "a").to_str().unwrap()], Some(&key));
    let c1 = checkpoint(&env, &key, "c1");
    rewrite_with_recomputed_chain(&env.dir.path().join("kahn.db"), "release", 11);
    assert!(env.kahn(&["verify", "release"], Some(&key)).status.success(), "the chain passes");
    checkpoint_recording(&env, &key, "c2", "the run was rewritten");
    assert_altered(&audit(&env, &key, &public, &c1, &[]), "the run was rewritten");
}

#[test]
fn a_run_deleted_outside_retention_fails_the_next_audit() {
    let (env, public) = signing_env();
    let key = env.key("choco");
    for run in ["gone", "kept"] {
        env.ok(&["push", env.run_dir(run, 4, "a").to_str().unwrap()], Some(&key));
    }
    let c1 = checkpoint(&env, &key, "c1");
    delete_run(&sqlite(&env), "gone");
    checkpoint_recording(&env, &key, "c2", "removed outside retention");
    assert_altered(&audit(&env, &key, &public, &c1, &[]), "removed outside retention");
}

#[test]
fn runs_swapped_between_tenants_fail_both_tenants_audits() {
    let (env, public) = signing_env();
    let (choco, stratt) = (env.key("choco"), env.key("stratt"));
    env.ok(&["push", env.run_dir("choco-run", 4, "a").to_str().unwrap()], Some(&choco));
    env.ok(&["push", env.run_dir("stratt-run", 4, "b").to_str().unwrap()], Some(&stratt));
    let kept = [
        (&choco, checkpoint(&env, &choco, "choco-1")),
        (&stratt, checkpoint(&env, &stratt, "stratt-1")),
    ];
    let conn = sqlite(&env);
    let id = |name: &str| -> Vec<u8> {
        conn.query_row("SELECT id FROM tenants WHERE name = ?1", [name], |r| r.get(0)).unwrap()
    };
    let (choco_id, stratt_id) = (id("choco"), id("stratt"));
    for table in ["transitions", "run_nodes", "runs"] {
        let swap = format!("UPDATE {table} SET tenant_id = ?1 WHERE run_id = ?2");
        conn.execute(&swap, rusqlite::params![stratt_id, "choco-run"]).unwrap();
        conn.execute(&swap, rusqlite::params![choco_id, "stratt-run"]).unwrap();
    }
    for (key, c1) in kept {
        checkpoint_recording(&env, key, "after", "removed outside retention");
        assert_altered(&audit(&env, key, &public, &c1, &[]), "removed outside retention");
    }
}

#[test]
fn an_edited_log_or_another_keys_checkpoint_is_caught() {
    let (env, public) = signing_env();
    let key = env.key("choco");
    for run in ["a", "b"] {
        env.ok(&["push", env.run_dir(run, 3, "a").to_str().unwrap()], Some(&key));
    }
    let c1 = checkpoint(&env, &key, "c1");
    env.ok(&["push", env.run_dir("c", 3, "a").to_str().unwrap()], Some(&key));
    checkpoint(&env, &key, "c2");
    assert!(audit(&env, &key, &public, &c1, &[]).status.success());

    // A checkpoint made with another key (someone with the database, signing one of their
    // own) is refused under the pinned key.
    let other = env.dir.path().join("other.pem");
    env.ok(&["keygen", other.to_str().unwrap()], None);
    let db = env.db();
    env.ok(&["push", env.run_dir("d", 3, "a").to_str().unwrap()], Some(&key));
    let forged = env.ok(
        &["checkpoint", "--db", &db, "--receipt-key", other.to_str().unwrap(), "--tenant", "choco"],
        None,
    );
    let forged_file = env.dir.path().join("forged.json");
    std::fs::write(&forged_file, forged).unwrap();
    let out = audit(&env, &key, &public, &c1, &["--to", forged_file.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("REFUSED") && err.contains("not signed by key"), "{err}");

    // The log edited under the kept checkpoint: run `a`'s leaf dropped, the rest renumbered.
    let conn = sqlite(&env);
    conn.execute("DELETE FROM checkpoint_leaves WHERE idx = 0", []).unwrap();
    conn.execute("UPDATE checkpoint_leaves SET idx = idx - 1", []).unwrap();
    assert_altered(&audit(&env, &key, &public, &c1, &["--to", "3"]), "leaves");
    // ...and the server will not sign a checkpoint over the edited log (a fork of its own
    // signed history), nor will an operator's checkpoint.
    env.ok(&["push", env.run_dir("e", 3, "a").to_str().unwrap()], Some(&key));
    for args in [
        vec!["checkpoint"],
        vec!["checkpoint", "--db", &db, "--receipt-key", other.to_str().unwrap()],
    ] {
        let out = env.kahn(&args, Some(&key));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(err.contains("no longer extends its latest signed checkpoint"), "{err}");
    }
}

/// Someone with the database forges a purge record for a run, then deletes it: the log shows
/// a purge. The audit prints how soon after the run's last append it was purged, and with the
/// retention the auditor was promised, calls it what it is.
#[test]
fn a_forged_purge_record_is_caught_by_the_promised_retention() {
    let (env, public) = signing_env();
    let key = env.key("choco");
    env.ok(&["push", env.run_dir("fresh", 4, "a").to_str().unwrap()], Some(&key));
    let c1 = checkpoint(&env, &key, "c1");
    let conn = sqlite(&env);
    conn.execute(
        "INSERT INTO purge_records (tenant_id, run_id, next_seq, head_hash, received_at, purged_at) \
         SELECT tenant_id, run_id, next_seq, head_hash, received_at, received_at FROM runs \
         WHERE run_id = 'fresh'",
        [],
    )
    .unwrap();
    delete_run(&conn, "fresh");
    checkpoint(&env, &key, "c2");
    let out = audit(&env, &key, &public, &c1, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("purged by retention: fresh (last received 0 hours"),
        "{}",
        stdout(&out)
    );
    assert_altered(&audit(&env, &key, &public, &c1, &["--retention-days", "90"]), "forged");
}

/// Someone with the database dates a run back so that KAHN's own retention purge removes it:
/// the purge record carries the backdated time, earlier than the one the log signed.
#[test]
fn a_run_dated_back_to_expire_fails_the_audit() {
    let (env, public) = signing_env();
    let key = env.key("choco");
    env.ok(&["push", env.run_dir("young", 4, "a").to_str().unwrap()], Some(&key));
    let c1 = checkpoint(&env, &key, "c1");
    sqlite(&env)
        .execute(
            "UPDATE runs SET received_at = received_at - 100 * 86400000000 WHERE run_id = 'young'",
            [],
        )
        .unwrap();
    let purged = env.ok(&["purge", "--tenant", "choco", "--json"], None);
    assert!(purged.contains("\"runs_removed\": 1"), "{purged}");
    checkpoint_recording(&env, &key, "c2", "moved back to make it expire");
    assert_altered(&audit(&env, &key, &public, &c1, &[]), "moved back to make it expire");
}
