//! Exporting runs as NDJSON files `kahn push` accepts as they are (`kahn export`): for
//! backups, and for moving runs between tenants or stores.
//!
//! One file per run, `<run_id>.ndjson`: a metadata line first when the run has metadata
//! (`{"kind":"run","run_id":…,"source":…,"graph":…,"labels":…}`), then every transition with
//! its `run_id` and `seq`, its body exactly as stored (canonical JSON). Pushed anywhere, the
//! file reproduces every content hash, so the run's head is the same: `kahn push
//! DIR/<run_id>.ndjson` (the run id is the file's stem; the lines carry it too, so pushing
//! under another run id is refused).
//!
//! While writing, each transition's content hash and chain link are checked against what is
//! stored, and the file is complete only when its chain ends at the run's stored head; a file
//! is written beside its final name and renamed into place, so a failed export never leaves a
//! truncated file under a run's name.

use std::io::Write;
use std::path::{Path, PathBuf};

use kahn_core::{
    Digest, Error, MAX_PAGE_SIZE, ReadScope, Result, RunId, RunMeta, RunQuery, RunSummary, Seq,
    StorageBackend, TransitionBody, chain_link,
};
use serde::Serialize;

/// One exported run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExportedRun {
    /// The run.
    pub run_id: RunId,
    /// The file written.
    pub path: PathBuf,
    /// Transitions written (the run's `next_seq` when the export started).
    pub transitions: u64,
    /// Whether a metadata line was written.
    pub metadata: bool,
    /// The chain head of the file's transitions: the stored head, verified.
    pub head_hash: Digest,
    /// Bytes written.
    pub bytes: u64,
}

/// What an export did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExportReport {
    /// Each run exported, in listing order.
    pub runs: Vec<ExportedRun>,
    /// Transitions written over all runs.
    pub transitions: u64,
}

/// The file name of `run`'s export: `<run_id>.ndjson` (run ids hold only `A-Za-z0-9._:-`
/// and are never `.` or `..`, so the name is always one path component).
pub fn file_name(run: &RunId) -> String {
    format!("{run}.ndjson")
}

/// Exports every run of the scope's tenant (or only `only`) into `dir` (created when
/// missing), one `<run_id>.ndjson` per run, replacing files of the same names.
///
/// # Errors
/// [`Error::NotFound`] when `only` names no run of the tenant; [`Error::InvalidInput`]
/// naming `out` when `dir` cannot be created or written; [`Error::Integrity`] when a stored
/// run does not verify (that run's file is not written, and the export stops).
pub async fn export(
    store: &dyn StorageBackend,
    scope: &ReadScope,
    dir: &Path,
    only: Option<&RunId>,
) -> Result<ExportReport> {
    let runs: Vec<RunId> = match only {
        Some(run) => vec![store.get_run(scope, run).await?.info.run_id],
        None => {
            let mut ids = Vec::new();
            let mut cursor = None;
            loop {
                let query = RunQuery { limit: MAX_PAGE_SIZE, cursor, ..RunQuery::default() };
                let page = store.list_runs(scope, &query).await?;
                ids.extend(page.runs.into_iter().map(|r| r.run_id));
                match page.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            ids
        }
    };
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| Error::invalid("out", format!("{}: {e}", dir.display())))?;
    let mut report = ExportReport::default();
    for run in &runs {
        let exported = export_run(store, scope, run, dir).await?;
        report.transitions += exported.transitions;
        report.runs.push(exported);
    }
    Ok(report)
}

/// Exports one run into `dir/<run_id>.ndjson`, up to the `next_seq` read first (a run still
/// receiving appends is exported as it was then).
///
/// # Errors
/// As [`export`].
pub async fn export_run(
    store: &dyn StorageBackend,
    scope: &ReadScope,
    run: &RunId,
    dir: &Path,
) -> Result<ExportedRun> {
    let summary = store.get_run(scope, run).await?;
    let path = dir.join(file_name(run));
    let partial = dir.join(format!(".{}.partial", file_name(run)));
    let out_error =
        |e: std::io::Error| Error::invalid("out", format!("{}: {e}", partial.display()));
    let file = std::fs::File::create(&partial).map_err(out_error)?;
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, file);
    let written = write_run(store, scope, &summary, &mut out).await;
    let finished = written.and_then(|(transitions, metadata, bytes)| {
        out.flush().map_err(out_error)?;
        out.get_ref().sync_all().map_err(out_error)?;
        Ok((transitions, metadata, bytes))
    });
    let (transitions, metadata, bytes) = match finished {
        Ok(done) => done,
        Err(e) => {
            drop(out);
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    drop(out);
    std::fs::rename(&partial, &path)
        .map_err(|e| Error::invalid("out", format!("{}: {e}", path.display())))?;
    Ok(ExportedRun {
        run_id: run.clone(),
        path,
        transitions,
        metadata,
        head_hash: summary.info.head_hash,
        bytes,
    })
}

/// The run's metadata as [`RunMeta`], for the metadata line.
///
/// # Errors
/// [`Error::Integrity`] when what is stored is not valid metadata.
fn stored_meta(run: &RunSummary) -> Result<RunMeta> {
    let info = &run.info;
    let corrupt = |e: Error| Error::Integrity {
        run_id: Some(info.run_id.clone()),
        seq: None,
        message: format!("the stored metadata is not valid: {e}"),
    };
    let mut meta = RunMeta::new();
    if let Some(source) = &info.source {
        meta = meta.with_source(source.as_str()).map_err(corrupt)?;
    }
    if let Some(graph) = &run.graph {
        meta = meta.with_graph(graph.clone()).map_err(corrupt)?;
    }
    for (key, value) in &info.labels {
        meta = meta.with_label(key.as_str(), value.as_str()).map_err(corrupt)?;
    }
    Ok(meta)
}

/// Writes the run's lines; returns transitions written, whether a metadata line was, and
/// bytes written.
async fn write_run(
    store: &dyn StorageBackend,
    scope: &ReadScope,
    summary: &RunSummary,
    out: &mut impl Write,
) -> Result<(u64, bool, u64)> {
    let run = &summary.info.run_id;
    let n = summary.info.next_seq;
    let io = |e: std::io::Error| Error::invalid("out", e.to_string());
    let mut bytes = 0u64;
    // Lines are written by kahn-core's one NDJSON encoder, into one buffer reused per line.
    let mut line = String::new();
    let meta = stored_meta(summary)?;
    let metadata = !meta.is_empty();
    if metadata {
        kahn_core::ndjson::write_run(&mut line, run, &meta);
        out.write_all(line.as_bytes()).map_err(io)?;
        bytes += line.len() as u64;
    }
    let corrupt = |seq: u64, message: String| Error::Integrity {
        run_id: Some(run.clone()),
        seq: Some(seq),
        message,
    };
    let mut head = Digest::ZERO;
    let mut next = 0u64;
    while next < n {
        let after = next.checked_sub(1).map(Seq::new).transpose()?;
        let page = store.read_transitions(scope, run, after, MAX_PAGE_SIZE).await?;
        if page.first().is_none_or(|t| t.seq.get() != next) {
            return Err(corrupt(next, format!("next_seq is {n} but seq {next} cannot be read")));
        }
        for t in page.into_iter().take_while(|t| t.seq.get() < n) {
            if t.seq.get() != next {
                return Err(corrupt(next, format!("expected seq {next}, read {}", t.seq)));
            }
            let (content, link) = (t.content_hash, t.chain_hash);
            let body = TransitionBody::new(t.body)
                .map_err(|e| corrupt(next, format!("the stored body is not a transition: {e}")))?;
            if body.content_hash() != content {
                return Err(corrupt(
                    next,
                    format!("the body hashes to {}, stored {content}", body.content_hash()),
                ));
            }
            head = chain_link(&head, &content);
            if head != link {
                return Err(corrupt(next, format!("the chain link is {head}, stored {link}")));
            }
            line.clear();
            kahn_core::ndjson::write_transition(&mut line, run, next, &body);
            out.write_all(line.as_bytes()).map_err(io)?;
            bytes += line.len() as u64;
            next += 1;
        }
    }
    if head != summary.info.head_hash {
        return Err(Error::Integrity {
            run_id: Some(run.clone()),
            seq: n.checked_sub(1),
            message: format!(
                "the transitions chain to {head}, the stored head is {}",
                summary.info.head_hash
            ),
        });
    }
    Ok((n, metadata, bytes))
}

#[cfg(test)]
mod tests {
    use kahn_core::{AppendBatch, MemoryBackend, NewTenant, StorageBackendExt};

    use super::*;

    #[tokio::test]
    async fn an_exported_file_rebuilds_the_same_run() {
        let store = MemoryBackend::new();
        let tenant = store.provision_tenant(&NewTenant::new("t").unwrap()).await.unwrap();
        let scope = store.operator_write_scope(tenant.id).await.unwrap();
        let text = concat!(
            r#"{"kind":"run","run_id":"r:1","source":"choco","graph":{"b":[1,2.50,{"z":null}],"a":"é"},"labels":{"k":"v"}}"#,
            "\n",
            r#"{"run_id":"r:1","seq":0,"ts":"2026-01-01T00:00:00+02:00","to":"running","attrs":{"n":1e2,"s":"\u0000x"}}"#,
            "\n",
            r#"{"run_id":"r:1","seq":1,"ts":"2026-01-01T00:00:01Z","to":"done","extra":[0.1,-0.0]}"#,
            "\n",
        );
        store.append(&scope, &AppendBatch::from_ndjson(text).unwrap()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let report = export(&store, &scope.read(), dir.path(), None).await.unwrap();
        assert_eq!((report.runs.len(), report.transitions), (1, 2));
        let file = std::fs::read_to_string(dir.path().join("r:1.ndjson")).unwrap();
        assert!(file.starts_with(r#"{"kind":"run","#), "{file}");
        assert!(!dir.path().join(".r:1.ndjson.partial").exists());

        // Into another tenant, as pushed lines: the same head and metadata.
        let other = store.provision_tenant(&NewTenant::new("o").unwrap()).await.unwrap();
        let other = store.operator_write_scope(other.id).await.unwrap();
        store.append(&other, &AppendBatch::from_ndjson(&file).unwrap()).await.unwrap();
        let run = RunId::new("r:1").unwrap();
        let (a, b) = (
            store.get_run(&scope.read(), &run).await.unwrap(),
            store.get_run(&other.read(), &run).await.unwrap(),
        );
        assert_eq!(a.info.head_hash, b.info.head_hash);
        assert_eq!(
            (a.graph, a.info.labels, a.info.source),
            (b.graph, b.info.labels, b.info.source)
        );
        assert_eq!(report.runs[0].head_hash, a.info.head_hash);
    }

    #[tokio::test]
    async fn an_unknown_run_is_not_found_and_writes_nothing() {
        let store = MemoryBackend::new();
        let tenant = store.provision_tenant(&NewTenant::new("t").unwrap()).await.unwrap();
        let scope = store.resolve_admin_override(tenant.id).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let missing = RunId::new("nope").unwrap();
        let err = export(&store, &scope, &out, Some(&missing)).await.unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
        assert!(!out.exists());
    }
}
