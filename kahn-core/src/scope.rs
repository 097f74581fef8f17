//! Scopes: tenancy by construction. Every tenant-data method takes one, never a bare id.
//!
//! Neither scope can be built from a bare tenant id outside this crate: a [`WriteScope`] comes
//! only from an API key resolved by a backend; a [`ReadScope`] from a write scope, from an
//! org or subject resolved by a backend, or from an admin override that can only ever be read.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::id::TenantId;
use crate::secret::ApiKey;

/// How a scope's tenant was resolved; the HTTP layer reports it as `X-KAHN-Tenant-Source`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantSource {
    /// From an API key.
    ApiKey,
    /// From a JWT's `org_id`.
    Org,
    /// From a JWT's `sub` (the personal tenant).
    Sub,
    /// From an admin's `X-KAHN-Tenant` override.
    AdminOverride,
}

impl TenantSource {
    /// The wire name (`api_key`, `org`, `sub`, `admin_override`).
    pub const fn as_str(self) -> &'static str {
        match self {
            TenantSource::ApiKey => "api_key",
            TenantSource::Org => "org",
            TenantSource::Sub => "sub",
            TenantSource::AdminOverride => "admin_override",
        }
    }
}

impl fmt::Display for TenantSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Permission to append to one tenant's runs. Made only by
/// [`StorageBackendExt::resolve_api_key`](crate::StorageBackendExt::resolve_api_key), or for
/// an operator moving runs between stores by
/// [`StorageBackendExt::operator_write_scope`](crate::StorageBackendExt::operator_write_scope).
///
/// A scope resolved from a key keeps it, so a backend that forwards calls (the HTTP client)
/// can present it and a backend can refuse the scope once the key is revoked or expired; the
/// key never prints. An operator's scope has no key and cannot be forwarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteScope {
    tenant: TenantId,
    key: Option<ApiKey>,
}

impl WriteScope {
    pub(crate) fn from_resolved_api_key(tenant: TenantId, key: ApiKey) -> Self {
        Self { tenant, key: Some(key) }
    }

    pub(crate) fn operator(tenant: TenantId) -> Self {
        Self { tenant, key: None }
    }

    /// The tenant written to.
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// The API key this scope was resolved from; `None` for an operator's scope.
    pub fn api_key(&self) -> Option<&ApiKey> {
        self.key.as_ref()
    }

    /// The read scope of the same tenant.
    pub fn read(&self) -> ReadScope {
        let source =
            if self.key.is_some() { TenantSource::ApiKey } else { TenantSource::AdminOverride };
        ReadScope { tenant: self.tenant, source, key: self.key.clone() }
    }
}

/// Permission to read one tenant's runs. There is no way to turn it into a [`WriteScope`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadScope {
    tenant: TenantId,
    source: TenantSource,
    key: Option<ApiKey>,
}

impl ReadScope {
    pub(crate) fn resolved(tenant: TenantId, source: TenantSource) -> Self {
        Self { tenant, source, key: None }
    }

    /// The API key this scope was resolved from, when it came from one.
    pub fn api_key(&self) -> Option<&ApiKey> {
        self.key.as_ref()
    }

    /// The tenant read from.
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// How the tenant was resolved.
    pub fn source(&self) -> TenantSource {
        self.source
    }
}

impl From<&WriteScope> for ReadScope {
    fn from(w: &WriteScope) -> Self {
        w.read()
    }
}
