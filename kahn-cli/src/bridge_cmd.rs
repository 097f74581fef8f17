//! `kahn bridge onboard` and `kahn bridge push`: a product's tenant and key, and a CI job's
//! run under a run id derived from the CI environment.

use kahn_core::{Error, StorageBackend, WriteScope};
use kahn_push::bridge::{self, Bridge, CiContext, Profile};
use kahn_push::push::{self, Progress};

use crate::args::{BridgeCommand, KeyTarget, ProfilesArg};
use crate::failure::{CliResult, Failure};
use crate::print::{Lines, print_json, print_provisioned};
use crate::store::{Named, create_db, named_store, open_target, resolve_key_retrying};

impl ProfilesArg {
    /// The profile `name`: built in, or from the `--profiles` file (which takes precedence).
    fn find(&self, name: &str) -> CliResult<Profile> {
        let extra = match &self.profiles {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::invalid("profiles", format!("{}: {e}", path.display())))?;
                bridge::parse_profiles(&text)?
            }
            None => Vec::new(),
        };
        Ok(bridge::find_profile(name, &extra)?)
    }
}

/// Refuses, before anything is pushed, a key of another tenant than the profile's: a choco
/// job holding stratt's key would otherwise file choco's runs in stratt's history, labelled
/// choco.
async fn same_tenant(
    store: &dyn StorageBackend,
    scope: &WriteScope,
    target: &KeyTarget,
    profile: &Profile,
) -> CliResult {
    let name = match named_store(target)? {
        Named::Server(url) => match scope.api_key() {
            Some(key) => kahn_http::HttpBackend::new(url)?.tenant_name(key).await?,
            None => None,
        },
        Named::Database => Some(store.get_tenant(scope.tenant()).await?.name),
    };
    match name {
        Some(name) if name != profile.tenant => Err(Failure::new(
            2,
            format!(
                "the key belongs to tenant {name:?}, but profile {} pushes to tenant {:?}; \
                 nothing was pushed\nhint: use the key `kahn bridge onboard {}` printed (the CI \
                 secret KAHN_API_KEY of this product), or the profile of tenant {name:?}",
                profile.name, profile.tenant, profile.name
            ),
        )),
        _ => Ok(()),
    }
}

/// Runs `kahn bridge …`.
pub(crate) async fn run(cmd: BridgeCommand) -> CliResult {
    match cmd {
        BridgeCommand::Onboard { profile, rotate, json, profiles, db } => {
            let bridge = Bridge::new(profiles.find(&profile)?);
            let store = create_db(&db).await?;
            let done = bridge.onboard(store.as_ref(), rotate).await?;
            print_provisioned(&done, json, "the CI secret KAHN_API_KEY")
        }
        BridgeCommand::Push { profile, path, run_id, max_retries, json, profiles, target } => {
            let bridge = Bridge::new(profiles.find(&profile)?);
            let ci = CiContext::detect(|k| std::env::var(k).ok(), run_id.as_deref())?;
            let store = open_target(&target).await?;
            let progress: &dyn Progress = if json { &push::Quiet } else { &Lines };
            // The first call is retried too: a server still starting, or a proxy's 502.
            let scope =
                resolve_key_retrying(store.as_ref(), &target.key, max_retries, progress).await?;
            same_tenant(store.as_ref(), &scope, &target, bridge.profile()).await?;
            let report =
                bridge.push(store.as_ref(), &scope, &ci, &path, max_retries, progress).await?;
            if json {
                return print_json(&report);
            }
            out!(
                "{} run {} ({}): {} appended, {} already stored",
                bridge.profile().name,
                report.run_id,
                ci.provider,
                report.appended,
                report.already_stored + report.skipped
            );
            Ok(())
        }
    }
}
