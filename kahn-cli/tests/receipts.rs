//! Signed receipts, end to end and as an attacker with the database file would try them: the
//! real `kahn` binary, a real `kahn serve --receipt-key` on a loopback port, and the SQLite
//! file it serves edited behind its back.
#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should panic right there

use std::path::{Path, PathBuf};

mod support;
use support::{Env, push_json, rewrite_with_recomputed_chain, signing_env, stderr};

/// Pushes a run of `n` transitions with `--receipt-out`; returns the receipt file.
fn push_with_receipt(env: &Env, key: &str, run: &str, n: usize) -> PathBuf {
    let dir = env.run_dir(run, n, "a");
    let receipt = env.dir.path().join(format!("{run}.receipt.json"));
    push_json(env, &dir, key, &["--receipt-out", receipt.to_str().unwrap()]);
    receipt
}

fn verify_receipt(
    env: &Env,
    key: &str,
    run: &str,
    receipt: &Path,
    public: &Path,
) -> std::process::Output {
    env.kahn(
        &[
            "verify",
            run,
            "--receipt",
            receipt.to_str().unwrap(),
            "--public-key",
            public.to_str().unwrap(),
        ],
        Some(key),
    )
}

#[test]
fn a_receipt_proves_the_run_and_a_repush_that_stores_nothing_still_writes_it() {
    let (env, public) = signing_env();
    let key = env.key("choco");
    let receipt = push_with_receipt(&env, &key, "nightly", 20);
    let out = verify_receipt(&env, &key, "nightly", &receipt, &public);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("still extends the receipt: 20 transitions"), "{text}");

    // The server serves the key keygen wrote; `kahn receipt-key` prints it.
    let served = env.ok(&["receipt-key"], None);
    assert_eq!(served.trim(), std::fs::read_to_string(&public).unwrap().trim());

    // A re-push stores nothing, so the server signs nothing: the receipt kept beside the
    // resume cache is written, byte for byte.
    let again = env.dir.path().join("again.json");
    let dir = env.dir.path().join("nightly");
    let report = push_json(&env, &dir, &key, &["--receipt-out", again.to_str().unwrap()]);
    assert_eq!(report["appended"], 0);
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&receipt).unwrap());

    // The run grows: a newer receipt; the old one still holds (the run extends it).
    std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("transitions.ndjson"))
        .and_then(|mut f| {
            std::io::Write::write_all(
                &mut f,
                b"{\"ts\":\"2026-11-23T10:00:00Z\",\"node\":\"n9\",\"to\":\"running\"}\n",
            )
        })
        .unwrap();
    let newer = env.dir.path().join("newer.json");
    push_json(&env, &dir, &key, &["--receipt-out", newer.to_str().unwrap()]);
    assert_ne!(std::fs::read(&newer).unwrap(), std::fs::read(&receipt).unwrap());
    for r in [&receipt, &newer] {
        let out = verify_receipt(&env, &key, "nightly", r, &public);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = verify_receipt(&env, &key, "nightly", &receipt, &public);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("the 1 transitions stored after it are not covered"), "{text}");
}

/// A fresh CI runner has no resume cache: its re-push of a stored run stores nothing, so no
/// ingest signs; the server signs the head it holds (which the pusher just confirmed is the
/// file's). `--receipt-out -` puts the receipt alone on stdout.
#[test]
fn a_repush_from_a_fresh_runner_still_gets_a_receipt_and_dash_is_stdout() {
    let (env, public) = signing_env();
    let key = env.key("choco");
    let dir = env.run_dir("ci-job", 12, "a");
    env.ok(&["push", dir.to_str().unwrap()], Some(&key));
    let fresh = env.dir.path().join("fresh-runner-cache");
    let out = env.kahn_in(
        &["push", dir.to_str().unwrap(), "--receipt-out", "-"],
        Some(&key),
        &[("KAHN_CACHE_DIR", fresh.to_str().unwrap())],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("0 appended, 12 already stored"), "{}", stderr(&out));
    let receipt = env.dir.path().join("from-stdout.json");
    std::fs::write(&receipt, &out.stdout).unwrap();
    let out = verify_receipt(&env, &key, "ci-job", &receipt, &public);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// What could only fail after the push is refused before it: a directory that does not
/// exist, stdout asked for twice.
#[test]
fn an_unwritable_receipt_path_is_refused_before_anything_is_pushed() {
    let (env, _) = signing_env();
    let key = env.key("choco");
    let dir = env.run_dir("early", 3, "a");
    let nowhere = env.dir.path().join("no-such-dir").join("r.json");
    for (extra, needle) in [
        (vec!["--receipt-out", nowhere.to_str().unwrap()], "does not exist"),
        (vec!["--receipt-out", "-", "--json"], "both write stdout"),
    ] {
        let mut args = vec!["push", dir.to_str().unwrap()];
        args.extend(extra);
        let out = env.kahn(&args, Some(&key));
        // With --json the error is JSON on stdout.
        let err = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(needle), "{err}");
    }
    let out = env.kahn(&["runs", "show", "early"], Some(&key));
    assert_eq!(out.status.code(), Some(1), "nothing was pushed: {}", stderr(&out));
}

#[test]
fn the_private_key_given_as_the_public_one_is_named_as_such() {
    let (env, public) = signing_env();
    let key = env.key("choco");
    let receipt = push_with_receipt(&env, &key, "mixup", 3);
    let private = PathBuf::from(public.to_str().unwrap().trim_end_matches(".pub"));
    let out = verify_receipt(&env, &key, "mixup", &receipt, &private);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("holds a PRIVATE KEY, not a PUBLIC KEY") && err.contains(".pub"), "{err}");
}

#[test]
fn an_edit_with_every_hash_recomputed_passes_the_chain_but_not_the_receipt() {
    let (env, public) = signing_env();
    let key = env.key("choco");
    let receipt = push_with_receipt(&env, &key, "release", 30);
    rewrite_with_recomputed_chain(&env.dir.path().join("kahn.db"), "release", 11);

    // The attacker succeeded against the chain alone...
    let out = env.kahn(&["verify", "release"], Some(&key));
    assert!(out.status.success(), "the recomputed chain verifies: {}", stderr(&out));
    // ...but not against the receipt.
    let out = verify_receipt(&env, &key, "release", &receipt, &public);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("BROKEN") && err.contains("no longer extends the receipt"), "{err}");
    assert!(err.contains("seqs 0-29") && err.contains("rewritten"), "{err}");
}

#[test]
fn a_truncated_or_deleted_run_fails_its_receipt() {
    let (env, public) = signing_env();
    let key = env.key("choco");
    let receipt = push_with_receipt(&env, &key, "short", 10);
    let db = env.dir.path().join("kahn.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    // Truncated consistently: the last rows gone, next_seq and head moved back.
    let head: Vec<u8> = conn
        .query_row(
            "SELECT chain_hash FROM transitions WHERE run_id = 'short' AND seq = 5",
            [],
            |r| r.get(0),
        )
        .unwrap();
    conn.execute("DELETE FROM transitions WHERE run_id = 'short' AND seq > 5", []).unwrap();
    conn.execute("UPDATE runs SET next_seq = 6, head_hash = ?1 WHERE run_id = 'short'", [head])
        .unwrap();
    assert!(env.kahn(&["verify", "short"], Some(&key)).status.success());
    let out = verify_receipt(&env, &key, "short", &receipt, &public);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("holds 6 transitions, the receipt acknowledged 10"), "{err}");

    // Deleted outright.
    conn.execute("DELETE FROM transitions WHERE run_id = 'short'", []).unwrap();
    conn.execute("DELETE FROM run_nodes WHERE run_id = 'short'", []).unwrap();
    conn.execute("DELETE FROM runs WHERE run_id = 'short'", []).unwrap();
    let out = verify_receipt(&env, &key, "short", &receipt, &public);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("not stored"), "{err}");
}

#[test]
fn a_run_moved_to_another_tenant_fails_for_both_tenants() {
    let (env, public) = signing_env();
    let choco = env.key("choco");
    let stratt = env.key("stratt");
    let receipt = push_with_receipt(&env, &choco, "moved", 8);
    let conn = rusqlite::Connection::open(env.dir.path().join("kahn.db")).unwrap();
    let to: Vec<u8> =
        conn.query_row("SELECT id FROM tenants WHERE name = 'stratt'", [], |r| r.get(0)).unwrap();
    for table in ["transitions", "run_nodes", "runs"] {
        conn.execute(&format!("UPDATE {table} SET tenant_id = ?1 WHERE run_id = 'moved'"), [&to])
            .unwrap();
    }
    // The owner finds it gone.
    let out = verify_receipt(&env, &choco, "moved", &receipt, &public);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("not stored"), "{err}");
    // The tenant it was moved to cannot claim choco's receipt.
    let out = verify_receipt(&env, &stratt, "moved", &receipt, &public);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is for tenant"), "{err}");
}

#[test]
fn a_receipt_signed_by_another_key_or_altered_is_refused() {
    let (env, public) = signing_env();
    let key = env.key("choco");
    let receipt = push_with_receipt(&env, &key, "signed", 5);
    let other = env.dir.path().join("other.pem");
    env.ok(&["keygen", other.to_str().unwrap()], None);
    let other_public = env.dir.path().join("other.pem.pub");
    let out = verify_receipt(&env, &key, "signed", &receipt, &other_public);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not signed by key"), "{err}");

    // A receipt whose payload was edited (to claim a shorter run) no longer verifies.
    let mut envelope: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&receipt).unwrap()).unwrap();
    let payload = envelope["payload"].as_str().unwrap().to_owned();
    let decoded = String::from_utf8(base64_decode(&payload)).unwrap();
    let forged = decoded.replace("\"next_seq\":5", "\"next_seq\":4");
    assert_ne!(forged, decoded);
    envelope["payload"] = base64_encode(forged.as_bytes()).into();
    let forged_file = env.dir.path().join("forged.json");
    std::fs::write(&forged_file, envelope.to_string()).unwrap();
    let out = verify_receipt(&env, &key, "signed", &forged_file, &public);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("does not verify"), "{err}");
}

#[test]
fn without_a_receipt_key_the_server_says_so() {
    let env = Env::served(&[]);
    let key = env.key("choco");
    let dir = env.run_dir("plain", 3, "a");
    let out = env.kahn(
        &[
            "push",
            dir.to_str().unwrap(),
            "--receipt-out",
            env.dir.path().join("r.json").to_str().unwrap(),
        ],
        Some(&key),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("signs no receipts") && err.contains("nothing was pushed"), "{err}");
    let out = env.kahn(&["runs", "show", "plain"], Some(&key));
    assert_eq!(out.status.code(), Some(1), "refused before pushing: {}", stderr(&out));
    let (status, body) = env.server.as_ref().unwrap().get("/v1/receipts/key", &[]);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("--receipt-key"), "{body}");
}

#[test]
fn serve_refuses_a_receipt_key_others_can_read_and_keygen_never_overwrites() {
    let env = Env::new();
    let private = env.dir.path().join("k.pem");
    env.ok(&["keygen", private.to_str().unwrap()], None);
    let out = env.kahn(&["keygen", private.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("never overwritten"), "{}", stderr(&out));
    // Nor its public half, which may be published already.
    let other = env.dir.path().join("other.pem");
    std::fs::write(env.dir.path().join("other.pem.pub"), "published").unwrap();
    let out = env.kahn(&["keygen", other.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!other.exists(), "nothing written when the .pub exists");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = kahn_testkit::KahnServer::builder(support::KAHN)
            .db(env.db())
            .args(["--receipt-key", private.to_str().unwrap()])
            .stderr(kahn_testkit::ServerStderr::Capture)
            .try_start()
            .expect_err("a world-readable key is refused");
        let text = refused.to_string();
        assert!(
            text.contains("can be read by other users") && text.contains("chmod 600"),
            "{text}"
        );
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text).unwrap()
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
