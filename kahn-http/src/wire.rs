//! The JSON bodies the server sends and [`HttpBackend`](crate::HttpBackend) reads: one set of
//! types for both sides, and the source of the OpenAPI schemas.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use kahn_core::checkpoint::{CheckpointLog, Leaf, RunProof, StoredCheckpoint};
use kahn_core::receipt::Envelope;
use kahn_core::{
    AppendReport, ClassCounts, Digest, Labels, NodeSummary, OrgId, RunAppendReport, RunId, RunInfo,
    RunSummary, Seq, StateClass, StoredTransition, TenantId, TenantSummary,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// Every error response: `error` is a stable code, `message` says what happened; the other
/// fields appear where they apply.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable code: `invalid_line`, `invalid_input`, `unauthorized`, `forbidden`,
    /// `not_found`, `conflict`, `gap`, `payload_too_large`, `unsupported_media_type`,
    /// `rate_limited`, `method_not_allowed`, `not_implemented`, `unavailable`, `integrity`,
    /// `internal`.
    pub error: String,
    /// Human-readable explanation.
    pub message: String,
    /// `invalid_line`: the 1-based line number of the first bad line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// `invalid_line`, `invalid_input`: the offending field; `conflict` on run metadata: the
    /// metadata field (`source`, `graph`, `labels.<key>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// `conflict`, `gap`, `integrity`: the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// `conflict`: the first seq whose content differs; `gap`: the seq the batch started at;
    /// `integrity`: the first seq failing its check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// `gap`: the run's next seq, where a batch must start at the latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<u64>,
    /// `conflict`: hash of what is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_hash: Option<String>,
    /// `conflict`: hash of what was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incoming_hash: Option<String>,
    /// `not_found`: what kind of thing (`run`, `tenant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub what: Option<String>,
    /// `not_found`: which one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `payload_too_large`: the limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// `rate_limited`: seconds to wait (also in `Retry-After`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

impl ErrorBody {
    /// A body with just a code and a message.
    pub fn new(error: impl Into<String>, message: impl Into<String>) -> Self {
        Self { error: error.into(), message: message.into(), ..Self::default() }
    }
}

/// A run as listed: everything but the graph.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunView {
    /// The run id.
    #[schema(value_type = String, example = "gh-1234-1")]
    pub run_id: RunId,
    /// The producer (`choco`, `stratt`, …), once set.
    pub source: Option<String>,
    /// Labels, set once each.
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub labels: Labels,
    /// The next seq to append.
    pub next_seq: u64,
    /// Number of transitions stored (equals `next_seq`).
    pub transition_count: u64,
    /// Last link of the hash chain, 64 hex digits (all zeros for no transitions).
    #[schema(value_type = String)]
    pub head_hash: Digest,
    /// The run's status: the `to` of its latest run-level transition (one without `node`)
    /// when it has one, otherwise derived from its nodes' latest states (any active →
    /// `running`; else any failed → `failed`; else any waiting → `pending`; else any cancelled
    /// → `cancelled`; else `succeeded`); `pending` for a run with neither.
    #[schema(example = "failed")]
    pub status: String,
    /// The class of `status`: `failed`, `cancelled`, `active`, `waiting`, `succeeded`,
    /// `skipped` or `other`.
    #[schema(value_type = String, example = "failed")]
    pub status_class: StateClass,
    /// How many of the run's nodes are in each class, by their latest state.
    pub node_counts: NodeCounts,
    /// The first transition's `ts`.
    pub started_at: Option<DateTime<Utc>>,
    /// The `ts` of the transition that made the status terminal; absent while it is not.
    pub ended_at: Option<DateTime<Utc>>,
    /// `ended_at - started_at` in milliseconds, once the run has ended.
    #[serde(default, skip_deserializing)]
    pub duration_ms: Option<i64>,
    /// Earliest transition `ts`.
    pub first_ts: Option<DateTime<Utc>>,
    /// Latest transition `ts`.
    pub last_ts: Option<DateTime<Utc>>,
    /// When the store first saw the run.
    pub created_at: DateTime<Utc>,
    /// The store's clock at the last append that stored something for the run: retention
    /// counts from it (the run is purged `retention_days` after it), never from `ts`.
    pub received_at: DateTime<Utc>,
}

impl From<RunInfo> for RunView {
    fn from(r: RunInfo) -> Self {
        Self {
            transition_count: r.transition_count(),
            duration_ms: r.duration().map(|d| d.num_milliseconds()),
            run_id: r.run_id,
            source: r.source,
            labels: r.labels,
            next_seq: r.next_seq,
            head_hash: r.head_hash,
            status: r.status,
            status_class: r.status_class,
            node_counts: r.node_counts.into(),
            started_at: r.started_at,
            ended_at: r.ended_at,
            first_ts: r.first_ts,
            last_ts: r.last_ts,
            created_at: r.created_at,
            received_at: r.received_at,
        }
    }
}

impl From<RunView> for RunInfo {
    fn from(r: RunView) -> Self {
        Self {
            run_id: r.run_id,
            source: r.source,
            labels: r.labels,
            next_seq: r.next_seq,
            head_hash: r.head_hash,
            status: r.status,
            status_class: r.status_class,
            node_counts: r.node_counts.into(),
            started_at: r.started_at,
            ended_at: r.ended_at,
            first_ts: r.first_ts,
            last_ts: r.last_ts,
            created_at: r.created_at,
            received_at: r.received_at,
        }
    }
}

/// How many of a run's nodes are in each class (DESIGN.md "Run status and durations").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeCounts {
    /// Nodes whose latest state is failed (failed, error, timed_out, …).
    pub failed: u64,
    /// … cancelled (cancelled, aborted, killed, …).
    pub cancelled: u64,
    /// … active (running, in_progress, retrying, …).
    pub active: u64,
    /// … waiting (pending, queued, scheduled, …).
    pub waiting: u64,
    /// … succeeded (succeeded, success, done, …).
    pub succeeded: u64,
    /// … skipped (skipped, upstream_skipped, excluded).
    pub skipped: u64,
    /// … of no known class.
    pub other: u64,
}

impl From<ClassCounts> for NodeCounts {
    fn from(c: ClassCounts) -> Self {
        let ClassCounts { failed, cancelled, active, waiting, succeeded, skipped, other } = c;
        Self { failed, cancelled, active, waiting, succeeded, skipped, other }
    }
}

impl From<NodeCounts> for ClassCounts {
    fn from(c: NodeCounts) -> Self {
        let NodeCounts { failed, cancelled, active, waiting, succeeded, skipped, other } = c;
        Self { failed, cancelled, active, waiting, succeeded, skipped, other }
    }
}

/// One node of a run: its latest state and its times, maintained as transitions arrive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    /// The node (`node` of its transitions).
    pub node: String,
    /// Its latest state (`to` of its latest transition).
    pub state: String,
    /// The class of `state`.
    #[schema(value_type = String, example = "succeeded")]
    pub class: StateClass,
    /// Its first active transition's `ts`.
    pub started_at: Option<DateTime<Utc>>,
    /// Its first terminal transition's `ts` since it last became active; absent while it is
    /// active again (a retry) or has not ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// `ended_at - started_at` in milliseconds, when both are known.
    #[serde(default, skip_deserializing)]
    pub duration_ms: Option<i64>,
    /// How many times it became active.
    pub attempts: u64,
    /// The seq of its first transition.
    pub first_seq: u64,
    /// The seq of its latest transition.
    pub last_seq: u64,
}

impl From<NodeSummary> for NodeView {
    fn from(n: NodeSummary) -> Self {
        Self {
            duration_ms: n.duration().map(|d| d.num_milliseconds()),
            node: n.node,
            state: n.state,
            class: n.class,
            started_at: n.started_at,
            ended_at: n.ended_at,
            attempts: n.attempts,
            first_seq: n.first_seq,
            last_seq: n.last_seq,
        }
    }
}

impl From<NodeView> for NodeSummary {
    fn from(n: NodeView) -> Self {
        Self {
            node: n.node,
            state: n.state,
            class: n.class,
            started_at: n.started_at,
            ended_at: n.ended_at,
            attempts: n.attempts,
            first_seq: n.first_seq,
            last_seq: n.last_seq,
        }
    }
}

/// A page of runs, newest activity first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunsPage {
    /// The runs.
    pub runs: Vec<RunView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// One run with its graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunDetail {
    /// Everything listed.
    #[serde(flatten)]
    pub run: RunView,
    /// The DAG (`graph.json`), once set.
    #[schema(value_type = Option<Object>)]
    pub graph: Option<Value>,
    /// Every node's summary, in node order: read from summaries kept at append time, never
    /// from the run's transitions.
    pub nodes: Vec<NodeView>,
}

impl From<RunSummary> for RunDetail {
    fn from(s: RunSummary) -> Self {
        Self {
            run: s.info.into(),
            graph: s.graph,
            nodes: s.nodes.into_iter().map(NodeView::from).collect(),
        }
    }
}

impl From<RunDetail> for RunSummary {
    fn from(d: RunDetail) -> Self {
        Self {
            info: d.run.into(),
            graph: d.graph,
            nodes: d.nodes.into_iter().map(NodeSummary::from).collect(),
        }
    }
}

/// A stored transition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TransitionView {
    /// Its seq.
    #[schema(value_type = u64)]
    pub seq: Seq,
    /// Its body: every field sent except `run_id` and `seq` (keys sorted).
    #[schema(value_type = Object)]
    pub body: Map<String, Value>,
    /// SHA-256 of the body's RFC 8785 canonical form, 64 hex digits.
    #[schema(value_type = String)]
    pub content_hash: Digest,
    /// The chain link up to and including this transition.
    #[schema(value_type = String)]
    pub chain_hash: Digest,
}

impl From<StoredTransition> for TransitionView {
    fn from(t: StoredTransition) -> Self {
        Self { seq: t.seq, body: t.body, content_hash: t.content_hash, chain_hash: t.chain_hash }
    }
}

impl From<TransitionView> for StoredTransition {
    fn from(t: TransitionView) -> Self {
        Self { seq: t.seq, body: t.body, content_hash: t.content_hash, chain_hash: t.chain_hash }
    }
}

/// A page of a run's transitions, in seq order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TransitionsPage {
    /// The run.
    #[schema(value_type = String)]
    pub run_id: RunId,
    /// The transitions.
    pub transitions: Vec<TransitionView>,
}

/// What one ingest did to one run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunAppendView {
    /// The run.
    #[schema(value_type = String)]
    pub run_id: RunId,
    /// Transitions newly stored.
    pub appended: u64,
    /// Transitions already stored with the same content.
    pub skipped: u64,
    /// The run's next seq after the ingest.
    pub next_seq: u64,
    /// The run's head hash after the ingest.
    #[schema(value_type = String)]
    pub head_hash: Digest,
    /// The server's signed receipt for the run's new head (a DSSE envelope), when the server
    /// signs receipts (`--receipt-key`) and this ingest stored something in the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<EnvelopeView>)]
    pub receipt: Option<Envelope>,
}

/// A signed receipt: a DSSE envelope whose payload (base64) is the RFC 8785 JSON of
/// `{tenant_id, run_id, next_seq, head_hash, received_at, key_id}`, signed with Ed25519 over
/// DSSE's `PAE(payloadType, payload)`. (The schema of [`Envelope`], which is the type used.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EnvelopeView {
    /// `application/vnd.kahn.receipt.v1+json`.
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// The receipt's canonical JSON, base64.
    pub payload: String,
    /// The signatures (one: the server's receipt key).
    pub signatures: Vec<EnvelopeSignatureView>,
}

/// One signature of a receipt envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EnvelopeSignatureView {
    /// The key id: hex SHA-256 of the raw Ed25519 public key.
    pub keyid: String,
    /// The Ed25519 signature, base64.
    pub sig: String,
}

/// The public key the server signs receipts with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReceiptKeyView {
    /// The key id receipts name: hex SHA-256 of the raw 32-byte public key.
    pub key_id: String,
    /// Always `ed25519`.
    pub algorithm: String,
    /// The public key, PEM (SubjectPublicKeyInfo): what `kahn verify --receipt` and any DSSE
    /// verifier take.
    pub public_key_pem: String,
}

/// What one ingest did, per run in the order they first appeared in the body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IngestReport {
    /// Per run.
    pub runs: Vec<RunAppendView>,
    /// Transitions newly stored, over all runs.
    pub appended: u64,
    /// Duplicates skipped, over all runs.
    pub skipped: u64,
}

impl From<AppendReport> for IngestReport {
    fn from(r: AppendReport) -> Self {
        Self {
            appended: r.appended(),
            skipped: r.skipped(),
            runs: r
                .runs
                .into_iter()
                .map(|r| RunAppendView {
                    run_id: r.run_id,
                    appended: r.appended,
                    skipped: r.skipped,
                    next_seq: r.next_seq,
                    head_hash: r.head_hash,
                    receipt: r.receipt,
                })
                .collect(),
        }
    }
}

impl From<IngestReport> for AppendReport {
    fn from(r: IngestReport) -> Self {
        Self {
            runs: r
                .runs
                .into_iter()
                .map(|r| RunAppendReport {
                    run_id: r.run_id,
                    appended: r.appended,
                    skipped: r.skipped,
                    next_seq: r.next_seq,
                    head_hash: r.head_hash,
                    receipt: r.receipt,
                })
                .collect(),
        }
    }
}

/// Who is calling, as the server authenticated them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PrincipalView {
    /// `api_key`, `jwt` (a bearer token) or `session` (signed in with the identity provider;
    /// the claims are the ID token's).
    pub kind: String,
    /// JWT `sub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// JWT `email`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// JWT `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// JWT `role`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// JWT `org_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
}

/// The caller, the tenant whose data they see, and how it was resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// The caller.
    pub principal: PrincipalView,
    /// The effective tenant; absent when the caller has none.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub tenant_id: Option<TenantId>,
    /// The effective tenant's name (what a person recognises); absent when there is none.
    #[serde(default)]
    pub tenant_name: Option<String>,
    /// `api_key`, `org`, `sub`, `admin_override`, or `none`.
    pub tenant_source: String,
    /// What that means, in words.
    pub message: String,
}

/// A tenant with its run count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TenantView {
    /// Its id.
    #[schema(value_type = String, format = Uuid)]
    pub id: TenantId,
    /// Unique name.
    pub name: String,
    /// JWT `sub` of the owner of a personal tenant.
    pub owner_sub: Option<String>,
    /// Linked organisation.
    #[schema(value_type = Option<String>)]
    pub airlock_org_id: Option<OrgId>,
    /// Retention in days.
    pub retention_days: u32,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Number of runs.
    pub run_count: u64,
}

impl From<TenantSummary> for TenantView {
    fn from(s: TenantSummary) -> Self {
        let t = s.tenant;
        Self {
            id: t.id,
            name: t.name,
            owner_sub: t.owner_sub,
            airlock_org_id: t.airlock_org_id,
            retention_days: t.retention_days,
            created_at: t.created_at,
            run_count: s.run_count,
        }
    }
}

impl From<TenantView> for TenantSummary {
    fn from(v: TenantView) -> Self {
        Self {
            tenant: kahn_core::Tenant {
                id: v.id,
                name: v.name,
                owner_sub: v.owner_sub,
                airlock_org_id: v.airlock_org_id,
                retention_days: v.retention_days,
                created_at: v.created_at,
            },
            run_count: v.run_count,
        }
    }
}

/// Every tenant, for administrators.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TenantsList {
    /// The tenants, by name.
    pub tenants: Vec<TenantView>,
}

/// Liveness and readiness.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// What is degraded without making the server unready: keys fetched by URL that could
    /// not be refreshed (the last good keys stay in use). Absent when nothing is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A signed tenant checkpoint as the server keeps it: "the tenant's leaf log had `tree_size`
/// leaves with this Merkle root", a DSSE envelope of type
/// `application/vnd.kahn.checkpoint.v1+json` signed with the receipt key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckpointView {
    /// The number of leaves it covers.
    pub tree_size: u64,
    /// The signed checkpoint.
    #[schema(value_type = EnvelopeView)]
    pub envelope: Envelope,
}

impl From<StoredCheckpoint> for CheckpointView {
    fn from(c: StoredCheckpoint) -> Self {
        Self { tree_size: c.tree_size, envelope: c.envelope }
    }
}

impl From<CheckpointView> for StoredCheckpoint {
    fn from(c: CheckpointView) -> Self {
        Self { tree_size: c.tree_size, envelope: c.envelope }
    }
}

/// A tenant's whole checkpoint log: every leaf (base64 of its encoding, as `kahn_core::checkpoint`
/// lays it out) and every signed checkpoint, oldest first. An auditor recomputes the roots
/// from the leaves and checks them against the signed checkpoints it kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckpointLogView {
    /// The leaves, in log order.
    pub leaves: Vec<String>,
    /// The checkpoints, by increasing size.
    pub checkpoints: Vec<CheckpointView>,
}

impl From<CheckpointLog> for CheckpointLogView {
    fn from(log: CheckpointLog) -> Self {
        Self {
            leaves: log.leaves.iter().map(|l| BASE64.encode(l.encode())).collect(),
            checkpoints: log.checkpoints.into_iter().map(CheckpointView::from).collect(),
        }
    }
}

impl TryFrom<CheckpointLogView> for CheckpointLog {
    type Error = kahn_core::Error;

    fn try_from(view: CheckpointLogView) -> Result<Self, kahn_core::Error> {
        let leaves = view
            .leaves
            .iter()
            .enumerate()
            .map(|(i, l)| {
                decode_leaf(l)
                    .map_err(|e| kahn_core::Error::invalid(format!("leaves[{i}]"), e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let checkpoints = view.checkpoints.into_iter().map(StoredCheckpoint::from).collect();
        Ok(CheckpointLog { leaves, checkpoints })
    }
}

fn decode_leaf(text: &str) -> Result<Leaf, kahn_core::Error> {
    let bytes = BASE64
        .decode(text)
        .map_err(|e| kahn_core::Error::invalid("checkpoint leaf", format!("not base64: {e}")))?;
    Leaf::decode(&bytes)
}

/// The proof that a run's latest state is in a checkpoint: its leaf, the leaf's index and
/// the RFC 9162 inclusion proof against the checkpoint's signed root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunProofView {
    /// The signed checkpoint.
    pub checkpoint: CheckpointView,
    /// The run's latest leaf in it, base64 of its encoding.
    pub leaf: String,
    /// The leaf's index in the log.
    pub leaf_index: u64,
    /// The inclusion proof's hashes, hex, from the leaf up.
    #[schema(value_type = Vec<String>)]
    pub audit_path: Vec<Digest>,
}

impl From<RunProof> for RunProofView {
    fn from(p: RunProof) -> Self {
        Self {
            checkpoint: p.checkpoint.into(),
            leaf: BASE64.encode(p.leaf.encode()),
            leaf_index: p.leaf_index,
            audit_path: p.audit_path,
        }
    }
}

impl TryFrom<RunProofView> for RunProof {
    type Error = kahn_core::Error;

    fn try_from(view: RunProofView) -> Result<Self, kahn_core::Error> {
        Ok(RunProof {
            checkpoint: view.checkpoint.into(),
            leaf: decode_leaf(&view.leaf)?,
            leaf_index: view.leaf_index,
            audit_path: view.audit_path,
        })
    }
}

/// An RFC 9162 consistency proof between two sizes of a tenant's leaf log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConsistencyView {
    /// The older size.
    pub from: u64,
    /// The newer size.
    pub to: u64,
    /// The proof's hashes, hex.
    #[schema(value_type = Vec<String>)]
    pub proof: Vec<Digest>,
}
