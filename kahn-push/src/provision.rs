//! Idempotent provisioning: a tenant, and a key only when it needs one.

use chrono::{DateTime, Duration, Utc};
use kahn_core::{
    ApiKeyId, IssuedApiKey, NewApiKey, NewTenant, Result, RetiredKeys, StorageBackend, Tenant,
};

/// Which key [`provision`] issues, and what happens to the tenant's other keys.
#[derive(Clone, Debug, Default)]
pub struct KeyPlan {
    /// Issue a new key even when the tenant has an active one, and retire every active one.
    pub rotate: bool,
    /// With `rotate`: the retired keys keep working this long (`None`: they stop at once).
    pub grace: Option<Duration>,
    /// The new key's own settings (its expiry).
    pub key: NewApiKey,
}

impl KeyPlan {
    /// Rotate: a new key, the active ones revoked at once.
    pub fn rotate() -> Self {
        Self { rotate: true, ..Self::default() }
    }
}

/// What [`provision`] did.
#[derive(Debug)]
pub struct Provisioned {
    /// The tenant (created, or found by name).
    pub tenant: Tenant,
    /// The key issued, when one was: the tenant had no active key, or a rotation was asked.
    pub issued: Option<IssuedApiKey>,
    /// When the issued key expires, if it does.
    pub expires_at: Option<DateTime<Utc>>,
    /// Keys the rotation retired.
    pub retired: Vec<ApiKeyId>,
    /// When the retired keys stop working: `None` when they were revoked at once.
    pub retired_at: Option<DateTime<Utc>>,
}

/// Creates the tenant of `req` or finds it by name; issues a key when it has no active one;
/// with [`KeyPlan::rotate`], issues a new key and retires every active one — at once, or
/// after the plan's grace period — in one transaction. Running it twice without `rotate`
/// creates nothing and issues no key.
///
/// # Errors
/// As [`StorageBackend::provision_tenant`] and [`StorageBackend::create_api_key`];
/// [`kahn_core::Error::InvalidInput`] naming `grace` for a grace period that is not positive.
pub async fn provision(
    store: &dyn StorageBackend,
    req: &NewTenant,
    plan: &KeyPlan,
) -> Result<Provisioned> {
    let tenant = store.provision_tenant(req).await?;
    let now = Utc::now();
    let active: Vec<ApiKeyId> = store
        .list_api_keys(tenant.id)
        .await?
        .into_iter()
        .filter(|k| k.is_active(now))
        .map(|k| k.id)
        .collect();
    if !active.is_empty() && !plan.rotate {
        return Ok(Provisioned {
            tenant,
            issued: None,
            expires_at: None,
            retired: Vec::new(),
            retired_at: None,
        });
    }
    let key = match plan.grace {
        _ if active.is_empty() => plan.key.clone(),
        None => plan.key.clone().retiring(RetiredKeys::AllActive),
        Some(grace) => plan.key.clone().retiring_after(RetiredKeys::AllActive, grace)?,
    };
    let issued = store.create_api_key(tenant.id, &key).await?;
    let retired_at = key.retirement().and_then(|(_, at)| at);
    Ok(Provisioned {
        tenant,
        issued: Some(issued),
        expires_at: key.expiry(),
        retired: active,
        retired_at,
    })
}
