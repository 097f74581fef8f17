//! CI bridges: turn a producer's run, as it exists in a CI job, into KAHN pushes through any
//! [`StorageBackend`] — the HTTP client in CI, SQLite locally.
//!
//! A bridge derives a deterministic run id from the CI environment, so a retried step
//! re-pushes idempotently; records CI metadata (commit, ref, job URL) as run labels; and
//! onboards its product (tenant and key, idempotently). choco, stratt and traceo are three
//! [`Profile`]s of this one bridge; more can be defined in TOML.

use std::collections::BTreeMap;
use std::path::Path;

use kahn_core::{Error, NewTenant, Result, RunId, RunMeta, StorageBackend, WriteScope};
use serde::Deserialize;

use crate::provision::{KeyPlan, Provisioned, provision};
use crate::push::{self, Progress, PushOptions, PushReport, RunSource};

/// One product's bridge settings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The profile's name (`choco`).
    pub name: String,
    /// The tenant its runs go to.
    pub tenant: String,
    /// The `source` recorded on its runs.
    pub source: String,
}

impl Profile {
    fn builtin(name: &str) -> Self {
        Self { name: name.into(), tenant: name.into(), source: name.into() }
    }
}

/// The built-in profiles.
pub fn builtin_profiles() -> Vec<Profile> {
    ["choco", "stratt", "traceo"].into_iter().map(Profile::builtin).collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    #[serde(default)]
    profile: Vec<Profile>,
}

/// Reads user-defined profiles from TOML (`[[profile]] name = "…" tenant = "…" source = "…"`).
///
/// # Errors
/// [`Error::InvalidInput`] naming `profiles` when the text is not such a document.
pub fn parse_profiles(toml_text: &str) -> Result<Vec<Profile>> {
    toml::from_str::<ProfileFile>(toml_text)
        .map(|f| f.profile)
        .map_err(|e| Error::invalid("profiles", e.to_string()))
}

/// Finds `name` among the built-in profiles and `extra` (which take precedence).
///
/// # Errors
/// [`Error::InvalidInput`] naming `profile` for an unknown name, listing the known ones.
pub fn find_profile(name: &str, extra: &[Profile]) -> Result<Profile> {
    let all: Vec<Profile> = extra.iter().cloned().chain(builtin_profiles()).collect();
    all.iter().find(|p| p.name == name).cloned().ok_or_else(|| {
        let known: Vec<&str> = all.iter().map(|p| p.name.as_str()).collect();
        Error::invalid(
            "profile",
            format!("{name:?} is not a profile (known: {})", known.join(", ")),
        )
    })
}

/// The CI system a job runs in, and what the bridge reads of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CiContext {
    /// `github`, `gitlab` or `generic`.
    pub provider: &'static str,
    /// The run id derived from the job's identity (without the profile prefix).
    pub job_key: String,
    /// Labels to record: commit, ref, job URL, provider.
    pub labels: BTreeMap<String, String>,
}

impl CiContext {
    /// Reads the CI environment through `var` (e.g. `|k| std::env::var(k).ok()`).
    /// GitHub Actions: repository, run id, run attempt and job, and for a matrix leg its
    /// values (`KAHN_MATRIX`, the `matrix` context as JSON; or `KAHN_RUN_SUFFIX`). GitLab CI: project, pipeline, job. Anywhere else: `explicit_id`, or
    /// `KAHN_RUN_ID`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `run_id` when no CI is detected and no id is given, or a
    /// CI variable the id needs is missing.
    pub fn detect(var: impl Fn(&str) -> Option<String>, explicit_id: Option<&str>) -> Result<Self> {
        let need = |k: &str| {
            var(k).filter(|v| !v.is_empty()).ok_or_else(|| {
                Error::invalid("run_id", format!("CI variable {k} is not set; pass --run-id"))
            })
        };
        let mut labels = BTreeMap::new();
        let mut label = |k: &str, v: Option<String>| {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                labels.insert(k.to_owned(), v);
            }
        };
        if let Some(id) = explicit_id.map(str::to_owned).or_else(|| var("KAHN_RUN_ID")) {
            label("ci", Some("generic".into()));
            return Ok(Self { provider: "generic", job_key: id, labels });
        }
        if var("GITHUB_ACTIONS").as_deref() == Some("true") {
            let repo = need("GITHUB_REPOSITORY")?;
            let run = need("GITHUB_RUN_ID")?;
            let attempt = var("GITHUB_RUN_ATTEMPT").unwrap_or_else(|| "1".into());
            // Several jobs (and matrix legs, via KAHN_RUN_SUFFIX) of one workflow run push
            // runs of their own.
            let job = need("GITHUB_JOB")?;
            label("ci", Some("github".into()));
            label("commit", var("GITHUB_SHA"));
            label("ref", var("GITHUB_REF"));
            let server = var("GITHUB_SERVER_URL").unwrap_or_else(|| "https://github.com".into());
            label(
                "job_url",
                Some(format!("{server}/{repo}/actions/runs/{run}/attempts/{attempt}")),
            );
            // A matrix leg is told apart by its values (KAHN_MATRIX: the `matrix` context as
            // JSON, which KAHN's action passes on), or by KAHN_RUN_SUFFIX when given.
            let suffix = var("KAHN_RUN_SUFFIX")
                .filter(|s| !s.is_empty())
                .or_else(|| var("KAHN_MATRIX").and_then(|m| matrix_suffix(&m)))
                .map(|s| format!(":{s}"))
                .unwrap_or_default();
            if let Some(leg) = suffix.strip_prefix(':') {
                label("matrix", Some(leg.to_owned()));
            }
            let job_key = format!("gh:{repo}:{run}:{attempt}:{job}{suffix}");
            return Ok(Self { provider: "github", job_key, labels });
        }
        if var("GITLAB_CI").as_deref() == Some("true") {
            let project = need("CI_PROJECT_PATH")?;
            let pipeline = need("CI_PIPELINE_ID")?;
            let job = need("CI_JOB_ID")?;
            label("ci", Some("gitlab".into()));
            label("commit", var("CI_COMMIT_SHA"));
            label("ref", var("CI_COMMIT_REF_NAME"));
            label("job_url", var("CI_JOB_URL"));
            return Ok(Self {
                provider: "gitlab",
                job_key: format!("gl:{project}:{pipeline}:{job}"),
                labels,
            });
        }
        Err(Error::invalid(
            "run_id",
            "no CI detected (GitHub Actions or GitLab CI); pass --run-id or set KAHN_RUN_ID",
        ))
    }

    /// The run id for `profile`: `<profile>:<job key>`, with `/` written `:` (so
    /// `owner/repo` becomes `owner:repo`; repository and project paths hold no `:`, so this
    /// keeps distinct paths distinct) and any other character outside the run id alphabet
    /// written `_`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the result is still not a valid run id (e.g. too long).
    pub fn run_id(&self, profile: &Profile) -> Result<RunId> {
        let raw = format!("{}:{}", profile.name, self.job_key);
        let cleaned: String = raw
            .chars()
            .map(|c| match c {
                '/' => ':',
                c if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-') => c,
                _ => '_',
            })
            .collect();
        RunId::new(cleaned)
    }
}

/// A matrix leg's values as a run id part: `{"os":"ubuntu","rust":"1.94"}` →
/// `os=ubuntu,rust=1.94` (keys sorted, as the JSON object's are); `None` for no matrix (`null`,
/// `{}`, not an object).
fn matrix_suffix(json: &str) -> Option<String> {
    let serde_json::Value::Object(values) = serde_json::from_str(json).ok()? else {
        return None;
    };
    let parts: Vec<String> = values
        .iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(","))
}

/// A product's bridge: its profile, over any store.
#[derive(Clone, Debug)]
pub struct Bridge {
    profile: Profile,
}

impl Bridge {
    /// The bridge of `profile`.
    pub fn new(profile: Profile) -> Self {
        Self { profile }
    }

    /// The profile.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Provisions the product's tenant and, when it has no active key (or `rotate`), a key.
    /// Idempotent: a second call creates nothing and issues no key.
    ///
    /// # Errors
    /// As [`provision`].
    pub async fn onboard(&self, store: &dyn StorageBackend, rotate: bool) -> Result<Provisioned> {
        let plan = if rotate { KeyPlan::rotate() } else { KeyPlan::default() };
        provision(store, &NewTenant::new(self.profile.tenant.clone())?, &plan).await
    }

    /// Pushes the run at `path` under the run id derived from `ci`, with the profile's source
    /// and the CI labels. Re-running the same job pushes nothing new.
    ///
    /// # Errors
    /// As [`push::push`], and [`Error::InvalidInput`] for a bad path or run id.
    pub async fn push(
        &self,
        store: &dyn StorageBackend,
        scope: &WriteScope,
        ci: &CiContext,
        path: &Path,
        max_retries: u32,
        progress: &dyn Progress,
    ) -> Result<PushReport> {
        let run_id = ci.run_id(&self.profile)?;
        let source = RunSource::from_path(path, Some(run_id))?;
        let mut meta = RunMeta::new().with_source(self.profile.source.clone())?;
        for (k, v) in &ci.labels {
            meta = meta.with_label(k.clone(), v.clone())?;
        }
        let opts = PushOptions { max_retries, meta, ..PushOptions::default() };
        push::push(store, scope, &source, &opts, progress).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> =
            pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn github_actions_ids_are_deterministic_and_valid() {
        let vars = env(&[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_REPOSITORY", "acme/choco"),
            ("GITHUB_RUN_ID", "987"),
            ("GITHUB_RUN_ATTEMPT", "2"),
            ("GITHUB_JOB", "build"),
            ("GITHUB_SHA", "abc123"),
        ]);
        let ci = CiContext::detect(&vars, None).unwrap();
        let profile = find_profile("choco", &[]).unwrap();
        assert_eq!(ci.run_id(&profile).unwrap().as_str(), "choco:gh:acme:choco:987:2:build");
        assert_eq!(ci.labels["commit"], "abc123");
        assert_eq!(CiContext::detect(&vars, None).unwrap(), ci);
    }

    #[test]
    fn matrix_legs_of_one_job_get_runs_of_their_own() {
        let leg = |matrix: &str| {
            let pairs = [
                ("GITHUB_ACTIONS", "true"),
                ("GITHUB_REPOSITORY", "acme/choco"),
                ("GITHUB_RUN_ID", "987"),
                ("GITHUB_RUN_ATTEMPT", "1"),
                ("GITHUB_JOB", "test"),
                ("KAHN_MATRIX", matrix),
            ];
            let vars = env(&pairs);
            let ci = CiContext::detect(&vars, None).unwrap();
            ci.run_id(&find_profile("choco", &[]).unwrap()).unwrap().as_str().to_owned()
        };
        let a = leg(r#"{"os":"ubuntu-24.04","rust":"1.94"}"#);
        let b = leg(r#"{"rust":"stable","os":"ubuntu-24.04"}"#);
        // `=` and `,` are outside the run id alphabet: written `_` there (the `matrix` label
        // keeps them).
        assert_eq!(a, "choco:gh:acme:choco:987:1:test:os_ubuntu-24.04_rust_1.94");
        assert_eq!(b, "choco:gh:acme:choco:987:1:test:os_ubuntu-24.04_rust_stable");
        assert_eq!(a, leg(r#"{"rust":"1.94","os":"ubuntu-24.04"}"#), "same leg, same run");
        // No matrix: the job's run.
        for none in ["null", "{}", "", "not json"] {
            assert_eq!(leg(none), "choco:gh:acme:choco:987:1:test", "{none:?}");
        }
        // A number, an array: written as JSON, then cleaned to the run id alphabet.
        assert_eq!(
            leg(r#"{"n":3,"f":["a","b"]}"#),
            "choco:gh:acme:choco:987:1:test:f___a___b___n_3"
        );
    }

    #[test]
    fn gitlab_and_generic_and_missing() {
        let gl = env(&[
            ("GITLAB_CI", "true"),
            ("CI_PROJECT_PATH", "g/sub/p"),
            ("CI_PIPELINE_ID", "5"),
            ("CI_JOB_ID", "6"),
        ]);
        let ci = CiContext::detect(&gl, None).unwrap();
        assert_eq!(
            ci.run_id(&Profile::builtin("traceo")).unwrap().as_str(),
            "traceo:gl:g:sub:p:5:6"
        );
        let generic = CiContext::detect(env(&[]), Some("nightly-1")).unwrap();
        assert_eq!(
            generic.run_id(&Profile::builtin("stratt")).unwrap().as_str(),
            "stratt:nightly-1"
        );
        assert!(CiContext::detect(env(&[]), None).is_err());
        assert!(CiContext::detect(env(&[("GITHUB_ACTIONS", "true")]), None).is_err());
    }

    #[test]
    fn user_profiles_from_toml() {
        let extra = parse_profiles(
            "[[profile]]\nname = \"acme\"\ntenant = \"acme-ci\"\nsource = \"acme\"\n",
        )
        .unwrap();
        assert_eq!(find_profile("acme", &extra).unwrap().tenant, "acme-ci");
        assert!(find_profile("nope", &extra).unwrap_err().to_string().contains("choco"));
        assert!(parse_profiles("[[profile]]\nname = 1").is_err());
    }
}
