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
/// [`StorageBackendExt::resolve_api_key`](crate::StorageBackendExt::resolve_api_key).
///
/// It keeps the key it was resolved from, so a backend that forwards calls (the HTTP client)
/// can present it; the key never prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteScope {
    tenant: TenantId,
    key: ApiKey,
}

impl WriteScope {
    pub(crate) fn from_resolved_api_key(tenant: TenantId, key: ApiKey) -> Self {
        Self { tenant, key }
    }

    /// The tenant written to.
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// The API key this scope was resolved from.
    pub fn api_key(&self) -> &ApiKey {
        &self.key
    }

    /// The read scope of the same tenant.
    pub fn read(&self) -> ReadScope {
        ReadScope { tenant: self.tenant, source: TenantSource::ApiKey, key: Some(self.key.clone()) }
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
