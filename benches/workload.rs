//! The benches' workload: realistic orchestrator transitions, the same bytes for KAHN and for
//! its peers (this file is included by path in the peers' separate workspace too).
//!
//! A line is ~300 bytes of JSON: `ts`, `node` (one of a few hundred), `from`/`to`, and nested
//! `attrs` (attempt, host, timing, outputs, resources). Deterministic: the same `(run, seq)`
//! always gives the same line.

#![allow(dead_code, unreachable_pub)]

/// Nodes of the workflow graph a run moves through.
pub const NODES: u64 = 300;
/// The chunk size the pusher cuts (1 MiB of NDJSON).
pub const CHUNK_BYTES: usize = 1024 * 1024;

const STATES: [&str; 5] = ["pending", "queued", "running", "succeeded", "failed"];
const HOSTS: [&str; 4] =
    ["runner-01.ci.internal", "runner-02.ci.internal", "gpu-07.ci.internal", "arm-03.ci.internal"];

/// One transition line (no trailing newline) of `run` at `seq`, ~300 bytes. `ts` advances
/// 50 ms per seq from 2026-11-01, so a 1 GiB run stays within a few days.
pub fn line(run: &str, seq: u64) -> String {
    let ms = seq * 50;
    let (day, rem) = (1 + ms / 86_400_000, ms % 86_400_000);
    let (h, m, s, frac) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    let node = seq.wrapping_mul(7919) % NODES;
    let from = STATES[(seq % 4) as usize];
    let to = STATES[(seq % 4 + 1) as usize];
    let host = HOSTS[(seq % 4) as usize];
    format!(
        concat!(
            r#"{{"ts":"2026-11-{:02}T{:02}:{:02}:{:02}.{:03}Z","node":"stage-{}/task-{:03}","#,
            r#""from":"{}","to":"{}","attrs":{{"attempt":{},"host":"{}","#,
            r#""timing":{{"queued_ms":{},"ran_ms":{}}},"exit":{},"#,
            r#""outputs":["s3://artifacts/{}/{}.tar.zst",null],"#,
            r#""resources":{{"cpu":{{"req":"500m","lim":"2"}},"mem_mb":{}}}}}}}"#
        ),
        day,
        h,
        m,
        s,
        frac,
        node / 30,
        node,
        from,
        to,
        1 + seq % 3,
        host,
        seq * 3 % 5000,
        seq * 17 % 100_000,
        if to == "failed" { 1 } else { 0 },
        run,
        seq,
        256 << (seq % 4),
    )
}

/// `n` lines of `run`, each ending in `\n`.
pub fn ndjson(run: &str, n: u64) -> String {
    let mut out = String::with_capacity(n as usize * 320);
    for seq in 0..n {
        out.push_str(&line(run, seq));
        out.push('\n');
    }
    out
}

/// Writes `n` lines of `run` to `path` without holding them in memory; returns the bytes.
pub fn write_file(path: &std::path::Path, run: &str, n: u64) -> std::io::Result<u64> {
    use std::io::Write;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut bytes = 0;
    for seq in 0..n {
        let l = line(run, seq);
        w.write_all(l.as_bytes())?;
        w.write_all(b"\n")?;
        bytes += l.len() as u64 + 1;
    }
    w.flush()?;
    Ok(bytes)
}

/// The line ranges `[start, end)` the pusher cuts: as many whole lines as fit in 1 MiB.
pub fn chunks(lines: &[String]) -> Vec<(usize, usize)> {
    let (mut out, mut start, mut size) = (Vec::new(), 0, 0);
    for (i, l) in lines.iter().enumerate() {
        if size + l.len() + 1 > CHUNK_BYTES && i > start {
            out.push((start, i));
            start = i;
            size = 0;
        }
        size += l.len() + 1;
    }
    if start < lines.len() {
        out.push((start, lines.len()));
    }
    out
}

/// Median of `xs` (sorted in place); 0 when empty.
pub fn median(xs: &mut [f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2.0 }
}
