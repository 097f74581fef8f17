//! Idempotent provisioning: a tenant, and a key only when it needs one.

use kahn_core::{
    ApiKeyId, IssuedApiKey, NewTenant, Result, StorageBackend, StorageBackendExt, Tenant,
};

/// What [`provision`] did.
#[derive(Debug)]
pub struct Provisioned {
    /// The tenant (created, or found by name).
    pub tenant: Tenant,
    /// The key issued, when one was: the tenant had no active key, or `rotate` was asked.
    pub issued: Option<IssuedApiKey>,
    /// Keys revoked by the rotation.
    pub revoked: Vec<ApiKeyId>,
}

/// Creates the tenant of `req` or finds it by name; issues a key when it has no active one;
/// with `rotate`, issues a new key and revokes every active one. Running it twice without
/// `rotate` creates nothing and issues no key.
///
/// # Errors
/// As [`StorageBackend::provision_tenant`] and the key methods.
pub async fn provision(
    store: &dyn StorageBackend,
    req: &NewTenant,
    rotate: bool,
) -> Result<Provisioned> {
    let tenant = store.provision_tenant(req).await?;
    let active: Vec<ApiKeyId> = store
        .list_api_keys(tenant.id)
        .await?
        .into_iter()
        .filter(|k| k.revoked_at.is_none())
        .map(|k| k.id)
        .collect();
    let (issued, revoked) = match active.split_last() {
        None => (Some(store.issue_api_key(tenant.id).await?), Vec::new()),
        Some((newest, older)) if rotate => {
            let issued = store.rotate_api_key(tenant.id, *newest).await?;
            for old in older {
                store.revoke_api_key(tenant.id, *old).await?;
            }
            (Some(issued), active.clone())
        }
        Some(_) => (None, Vec::new()),
    };
    Ok(Provisioned { tenant, issued, revoked })
}
