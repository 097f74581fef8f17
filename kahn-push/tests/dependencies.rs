//! kahn-push is the pusher an embedder can take without a database driver, an HTTP stack or a
//! CLI: it must never depend, directly or through another crate, on an adapter, a driver or
//! client, or the binary's terminal crates. This reads the resolved dependency graph from
//! `cargo metadata` and fails the day one of them creeps in. Small general crates are fine;
//! backon (retries) is checked to stay one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Crates kahn-push must not reach through its normal or build dependencies.
const FORBIDDEN: &[&str] = &[
    // The adapters, the binary and the facade that bundles them.
    "kahn-sqlite",
    "kahn-pg",
    "kahn-http",
    "kahn-cli",
    "kahn",
    // Drivers, server and client.
    "sqlx",
    "sqlx-core",
    "sqlx-postgres",
    "rusqlite",
    "libsqlite3-sys",
    "axum",
    "hyper",
    "reqwest",
    // The binary's terminal crates.
    "clap",
    "indicatif",
];

/// The host's target triple, so `cargo metadata` resolves (and fetches) only what builds here.
fn host() -> String {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc).arg("-vV").output().expect("rustc -vV runs");
    let text = String::from_utf8(out.stdout).expect("rustc -vV prints UTF-8");
    text.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_owned()
}

/// The workspace's resolved graph: package id → (name, ids of its normal and build
/// dependencies). Dev-dependencies are left out: they never reach an embedder.
fn graph() -> (BTreeMap<String, (String, Vec<String>)>, Value) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--all-features", "--filter-platform"])
        .arg(host())
        .arg("--manifest-path")
        .arg(&manifest)
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let names: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().expect("id"), p["name"].as_str().expect("name")))
        .collect();
    let mut graph = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().expect("resolve.nodes") {
        let id = node["id"].as_str().expect("node id");
        let deps = node["deps"]
            .as_array()
            .expect("deps")
            .iter()
            .filter(|d| {
                d["dep_kinds"].as_array().expect("dep_kinds").iter().any(|k| k["kind"] != "dev")
            })
            .map(|d| d["pkg"].as_str().expect("pkg").to_owned())
            .collect();
        graph.insert(id.to_owned(), (names[id].to_owned(), deps));
    }
    (graph, meta)
}

/// The names of every crate `name` reaches through normal and build dependencies.
fn reaches(graph: &BTreeMap<String, (String, Vec<String>)>, name: &str) -> BTreeSet<String> {
    let start = graph
        .iter()
        .find(|(_, (n, _))| n == name)
        .map(|(id, _)| id.clone())
        .unwrap_or_else(|| panic!("{name} is in the workspace's graph"));
    let (mut seen, mut stack) = (BTreeSet::new(), vec![start]);
    while let Some(id) = stack.pop() {
        for dep in &graph[&id].1 {
            if seen.insert(dep.clone()) {
                stack.push(dep.clone());
            }
        }
    }
    seen.into_iter().map(|id| graph[&id].0.clone()).collect()
}

#[test]
fn kahn_push_reaches_no_adapter_driver_or_cli_crate() {
    let (graph, meta) = graph();
    // The check can fail: the binary, which wires the pusher to the adapters, reaches them.
    let cli = reaches(&graph, "kahn-cli");
    for name in ["kahn-push", "kahn-sqlite", "kahn-pg", "kahn-http", "clap", "indicatif"] {
        assert!(cli.contains(name), "kahn-cli reaches {name}: the walk sees the graph");
    }

    let push = reaches(&graph, "kahn-push");
    let found: Vec<&str> = FORBIDDEN.iter().copied().filter(|f| push.contains(*f)).collect();
    assert!(
        found.is_empty(),
        "kahn-push must depend on kahn-core and small general crates only, but reaches {found:?}"
    );

    // backon, the retry crate behind `push::with_retries`, is allowed: small and
    // runtime-agnostic (its sleeper is tokio's timer, which kahn-push uses anyway). It must
    // stay that small: besides tokio it may bring fastrand (its jitter) and nothing else.
    assert!(push.contains("backon"), "the walk sees backon");
    let tokio = reaches(&graph, "tokio");
    let extra: Vec<String> = reaches(&graph, "backon")
        .into_iter()
        .filter(|n| !["tokio", "fastrand"].contains(&n.as_str()) && !tokio.contains(n))
        .collect();
    assert!(extra.is_empty(), "backon brings {extra:?} besides tokio and fastrand");

    // Of the workspace's crates, only kahn-core is a dependency (dev-dependencies aside).
    let workspace: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .expect("workspace_members")
        .iter()
        .map(|id| graph[id.as_str().expect("member id")].0.as_str())
        .collect();
    let inner: Vec<&String> =
        push.iter().filter(|n| workspace.contains(n.as_str()) && *n != "kahn-core").collect();
    assert!(inner.is_empty(), "kahn-push depends on workspace crates {inner:?}; only kahn-core");
}
