//! KAHN has one MSRV, the workspace's `rust-version`, which every crate inherits; it is no
//! lower than what anything the crates reach in the locked graph needs (kahn-pg's sqlx,
//! kahn-sqlite's rusqlite). A declared MSRV that the graph does not build with is a false
//! promise; this test reads `cargo metadata` and fails the day a dependency's requirement
//! rises above it, or a crate declares another.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// A `rust-version` (`1.94`, `1.89.0`) as comparable numbers.
fn parse(version: &str) -> Vec<u64> {
    let mut parts: Vec<u64> = version
        .split('.')
        .map(|p| p.parse().unwrap_or_else(|_| panic!("rust-version {version:?} is not x.y[.z]")))
        .collect();
    parts.resize(3, 0);
    parts
}

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

/// The workspace's resolved graph with every feature on (so optional dependencies count):
/// package id → (name, version, rust-version), the normal and build dependencies of each,
/// and the workspace's members.
struct Graph {
    packages: BTreeMap<String, (String, String, Option<String>)>,
    deps: BTreeMap<String, Vec<String>>,
    members: Vec<String>,
}

fn graph() -> Graph {
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
    let text = |v: &Value| v.as_str().expect("a string").to_owned();
    let packages = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            let rust_version = p["rust_version"].as_str().map(str::to_owned);
            (text(&p["id"]), (text(&p["name"]), text(&p["version"]), rust_version))
        })
        .collect();
    let deps = meta["resolve"]["nodes"]
        .as_array()
        .expect("resolve.nodes")
        .iter()
        .map(|node| {
            // Dev-dependencies build only the crate's own tests, never what depends on it.
            let deps = node["deps"]
                .as_array()
                .expect("deps")
                .iter()
                .filter(|d| {
                    d["dep_kinds"].as_array().expect("dep_kinds").iter().any(|k| k["kind"] != "dev")
                })
                .map(|d| text(&d["pkg"]))
                .collect();
            (text(&node["id"]), deps)
        })
        .collect();
    let members = meta["workspace_members"].as_array().expect("members").iter().map(text).collect();
    Graph { packages, deps, members }
}

impl Graph {
    /// Every package `id` reaches through normal and build dependencies.
    fn reaches(&self, id: &str) -> BTreeSet<String> {
        let (mut seen, mut stack) = (BTreeSet::new(), vec![id.to_owned()]);
        while let Some(id) = stack.pop() {
            for dep in &self.deps[&id] {
                if seen.insert(dep.clone()) {
                    stack.push(dep.clone());
                }
            }
        }
        seen
    }

    /// For each member, what it reaches that needs a newer Rust than it declares.
    fn violations(&self) -> Vec<String> {
        let mut found = Vec::new();
        for member in &self.members {
            let (name, _, declared) = &self.packages[member];
            let Some(declared) = declared else {
                found.push(format!("{name} declares no rust-version"));
                continue;
            };
            for dep in self.reaches(member) {
                let (dep_name, dep_version, needs) = &self.packages[&dep];
                if let Some(needs) = needs
                    && parse(needs) > parse(declared)
                {
                    let via = if self.members.contains(&dep) { " (a workspace crate)" } else { "" };
                    found.push(format!(
                        "{name} declares rust-version {declared}, but {dep_name} {dep_version}{via} needs {needs}"
                    ));
                }
            }
        }
        found
    }
}

#[test]
fn every_crate_declares_at_least_the_rust_version_its_dependencies_need() {
    let graph = graph();
    let names: BTreeSet<&str> =
        graph.members.iter().map(|m| graph.packages[m].0.as_str()).collect();
    for crate_name in
        ["kahn", "kahn-core", "kahn-sqlite", "kahn-pg", "kahn-http", "kahn-push", "kahn-cli"]
    {
        assert!(names.contains(crate_name), "{crate_name} is a workspace member: {names:?}");
    }
    let violations = graph.violations();
    assert!(violations.is_empty(), "raise these rust-versions:\n{}", violations.join("\n"));
}

#[test]
fn every_crate_has_the_one_workspace_msrv() {
    let graph = graph();
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .expect("the root manifest");
    let workspace: toml::Value = toml::from_str(&manifest).expect("the root manifest is TOML");
    let msrv = workspace["workspace"]["package"]["rust-version"]
        .as_str()
        .expect("[workspace.package] rust-version");
    for member in &graph.members {
        let (name, _, declared) = &graph.packages[member];
        assert_eq!(declared.as_deref(), Some(msrv), "{name}: inherit rust-version.workspace");
    }
}

#[test]
fn the_check_sees_a_declaration_below_a_dependency() {
    // The walk is only worth something if it finds a real requirement: lower a crate that
    // depends on kahn-pg (sqlx 0.9 needs 1.94) to 1.88 and it must complain.
    let mut graph = graph();
    let cli = graph
        .members
        .iter()
        .find(|m| graph.packages[*m].0 == "kahn-cli")
        .expect("kahn-cli is a member")
        .clone();
    graph.packages.get_mut(&cli).expect("kahn-cli's package").2 = Some("1.88".into());
    let violations = graph.violations();
    assert!(
        violations.iter().any(|v| v.starts_with("kahn-cli declares") && v.contains("kahn-pg")),
        "lowering kahn-cli below kahn-pg is caught: {violations:?}"
    );
}
