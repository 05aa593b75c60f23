//! The controller's output to the cluster: the problems found in custom
//! resources, written back as status conditions (Gateway API routes: one
//! status per parent, [`route`]). Several controller
//! replicas may run; a Lease elects the one that writes, so they never
//! fight over the same status.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::watch;

use crate::crd::{AuthorizationPolicy, HTTPRouteGroup, RetryPolicy, TrafficSplit};
use crate::hub::Problems;
use crate::index::problems::Problem;
use crate::index::{Kind, ObjectRef};

mod route;

pub const LEASE_NAME: &str = "weft-controller-status";
const LEASE_SECONDS: i32 = 15;
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// While the lease keeps failing the same way, it is logged this often.
const REPEAT_WARNING_EVERY: Duration = Duration::from_secs(300);
/// How long start-up waits for an API server that does not answer yet.
const PREFLIGHT_PATIENCE: Duration = Duration::from_secs(30);

/// Why the status Lease cannot be used; the controller refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "the controller may not {verbs} Lease {namespace}/{LEASE_NAME} (coordination.k8s.io), \
         which it needs to write status conditions. Grant them to its ServiceAccount in namespace \
         {namespace} (the chart's Role and RoleBinding weft-controller), or, if the controller runs \
         in another namespace, set --namespace / WEFT_CONTROLLER_NAMESPACE to it"
    )]
    Forbidden { namespace: String, verbs: String },
    #[error(
        "namespace {namespace} does not exist, so the status Lease {namespace}/{LEASE_NAME} cannot be \
         written: set --namespace / WEFT_CONTROLLER_NAMESPACE to the namespace the controller runs in \
         (the chart's release namespace), or create {namespace}"
    )]
    NoNamespace { namespace: String },
    #[error("the status Lease {namespace}/{LEASE_NAME}: {source}")]
    Api {
        namespace: String,
        #[source]
        source: kube::Error,
    },
}

/// Checks, before anything runs, that this controller can hold the status
/// Lease: its namespace exists and it may get, create and update Leases
/// there. An API server that does not answer yet is waited for (30 s).
pub async fn preflight(client: &Client, namespace: &str) -> Result<(), LeaseError> {
    let deadline = tokio::time::Instant::now() + PREFLIGHT_PATIENCE;
    loop {
        match check_lease_access(client, namespace).await {
            Err(LeaseError::Api { source, .. })
                if is_transient(&source) && tokio::time::Instant::now() < deadline =>
            {
                tracing::info!(error = %source, "waiting for the API server");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => return other,
        }
    }
}

async fn check_lease_access(client: &Client, namespace: &str) -> Result<(), LeaseError> {
    let api_error = |source| LeaseError::Api {
        namespace: namespace.into(),
        source,
    };
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut denied = Vec::new();
    for verb in ["get", "create", "update"] {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(namespace.into()),
                    verb: Some(verb.into()),
                    group: Some("coordination.k8s.io".into()),
                    resource: Some("leases".into()),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let answer = reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(api_error)?;
        if !answer.status.is_some_and(|s| s.allowed) {
            denied.push(verb);
        }
    }
    if !denied.is_empty() {
        return Err(LeaseError::Forbidden {
            namespace: namespace.into(),
            verbs: denied.join(", "),
        });
    }
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    match namespaces.get_opt(namespace).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(LeaseError::NoNamespace {
            namespace: namespace.into(),
        }),
        Err(e) => Err(api_error(e)),
    }
}

/// Errors worth waiting out: no connection yet, or the API server busy.
fn is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code >= 500 || s.code == 429,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// The `Accepted` condition for an object's problems.
pub fn condition(problems: &[Problem], now: Timestamp) -> Condition {
    let (status, reason, message) = match problems.first() {
        None => ("True", "Accepted", "applied".to_string()),
        Some(first) => (
            "False",
            first.reason,
            problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    Condition {
        type_: "Accepted".into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time: Time(now),
        observed_generation: None,
    }
}

/// Writes status while this replica holds the lease.
pub async fn run(client: Client, mut problems: watch::Receiver<Problems>, namespace: String) {
    // Unique per writer, even for replicas sharing a host name.
    let holder = format!(
        "{}-{:08x}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "weft-controller".into()),
        fastrand::u32(..)
    );
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let mut written: BTreeMap<ObjectRef, Vec<Problem>> = BTreeMap::new();
    let mut leader = false;
    let mut failing = Quiet::default();
    loop {
        match try_lead(&leases, &holder).await {
            Ok(held) => {
                if failing.recovered() {
                    tracing::info!(
                        "status lease: the Lease {namespace}/{LEASE_NAME} answers again"
                    );
                }
                if held && !leader {
                    tracing::info!(%holder, "holding the status lease: this replica writes status");
                    written.clear();
                }
                leader = held;
            }
            Err(e) => {
                if let Some(times) = failing.should_log(&e.to_string()) {
                    tracing::warn!(error = %e, failures = times, "status lease: cannot read or renew the Lease {namespace}/{LEASE_NAME}; status is not written until it can");
                }
                leader = false;
            }
        }
        if leader {
            let current = problems.borrow_and_update().clone();
            for (r, ps) in current.iter() {
                if written.get(r) == Some(ps) {
                    continue;
                }
                match write_status(&client, r, ps).await {
                    Ok(()) => {
                        written.insert(r.clone(), ps.clone());
                    }
                    Err(e) => tracing::warn!(object = %r, error = %e, "cannot write status"),
                }
            }
            written.retain(|r, _| current.contains_key(r));
        }
        tokio::select! {
            _ = problems.changed() => {}
            _ = tokio::time::sleep(RENEW_EVERY) => {}
        }
    }
}

/// Logs a repeated failure once, then every [`REPEAT_WARNING_EVERY`] or
/// when it changes, instead of at every retry.
#[derive(Default)]
struct Quiet {
    last: Option<(String, tokio::time::Instant)>,
    times: u64,
}

impl Quiet {
    /// Counts a failure; returns the count when it should be logged.
    fn should_log(&mut self, error: &str) -> Option<u64> {
        self.times += 1;
        let now = tokio::time::Instant::now();
        let log = match &self.last {
            Some((last, at)) => last != error || now.duration_since(*at) >= REPEAT_WARNING_EVERY,
            None => true,
        };
        if log {
            self.last = Some((error.to_string(), now));
            return Some(self.times);
        }
        None
    }

    /// Whether there had been failures (now over).
    fn recovered(&mut self) -> bool {
        self.times = 0;
        self.last.take().is_some()
    }
}

async fn write_status(client: &Client, r: &ObjectRef, problems: &[Problem]) -> kube::Result<()> {
    if r.kind.is_gateway_route() {
        return route::write(client, r, problems).await;
    }
    let patch =
        Patch::Merge(json!({"status": {"conditions": [condition(problems, Timestamp::now())]}}));
    let (ns, name) = (r.namespace.as_str(), r.name.as_str());
    match r.kind {
        Kind::TrafficSplit => patch_status::<TrafficSplit>(client, ns, name, &patch).await,
        Kind::HTTPRouteGroup => patch_status::<HTTPRouteGroup>(client, ns, name, &patch).await,
        Kind::RetryPolicy => patch_status::<RetryPolicy>(client, ns, name, &patch).await,
        Kind::AuthorizationPolicy => {
            patch_status::<AuthorizationPolicy>(client, ns, name, &patch).await
        }
        _ => Ok(()),
    }
}

/// Patches the status subresource of one namespaced custom resource.
async fn patch_status<K>(
    client: &Client,
    ns: &str,
    name: &str,
    patch: &Patch<serde_json::Value>,
) -> kube::Result<()>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    Api::<K>::namespaced(client.clone(), ns)
        .patch_status(name, &PatchParams::default(), patch)
        .await
        .map(drop)
}

/// Takes or renews the lease; whether this replica holds it now.
async fn try_lead(leases: &Api<Lease>, holder: &str) -> kube::Result<bool> {
    let now = Timestamp::now();
    let mine = |rv: Option<String>, acquired: Option<MicroTime>| Lease {
        metadata: ObjectMeta {
            name: Some(LEASE_NAME.into()),
            resource_version: rv,
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            acquire_time: acquired.or(Some(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            ..LeaseSpec::default()
        }),
    };
    let current = match leases.get_opt(LEASE_NAME).await? {
        None => {
            return match leases
                .create(&PostParams::default(), &mine(None, None))
                .await
            {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        }
        Some(l) => l,
    };
    let spec = current.spec.clone().unwrap_or_default();
    let held_by_me = spec.holder_identity.as_deref() == Some(holder);
    let expired = spec.renew_time.as_ref().is_none_or(|t| {
        let ttl =
            SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS) as i64);
        t.0.checked_add(ttl).is_ok_and(|end| end < now)
    });
    if !held_by_me && !expired {
        return Ok(false);
    }
    let acquired = if held_by_me { spec.acquire_time } else { None };
    match leases
        .replace(
            LEASE_NAME,
            &PostParams::default(),
            &mine(current.metadata.resource_version, acquired),
        )
        .await
    {
        Ok(_) => Ok(true),
        // Someone else renewed or took it first.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_repeated_failure_is_logged_once_then_every_five_minutes() {
        let mut q = Quiet::default();
        assert_eq!(q.should_log("forbidden"), Some(1));
        for _ in 0..59 {
            tokio::time::advance(RENEW_EVERY).await;
            assert_eq!(q.should_log("forbidden"), None);
        }
        tokio::time::advance(RENEW_EVERY).await;
        assert_eq!(q.should_log("forbidden"), Some(61));
        assert_eq!(
            q.should_log("timed out"),
            Some(62),
            "a new error is logged at once"
        );
        assert!(q.recovered());
        assert!(!q.recovered());
        assert_eq!(q.should_log("forbidden"), Some(1));
    }

    #[test]
    fn accepted_or_not_with_every_message() {
        let now = Timestamp::now();
        let ok = condition(&[], now);
        assert_eq!(
            (ok.status.as_str(), ok.reason.as_str()),
            ("True", "Accepted")
        );
        let bad = condition(
            &[
                Problem::route("Accepted", "BackendNotFound", "a".into()),
                Problem::route("Accepted", "RouteGroupNotFound", "b".into()),
            ],
            now,
        );
        assert_eq!(
            (
                bad.status.as_str(),
                bad.reason.as_str(),
                bad.message.as_str()
            ),
            ("False", "BackendNotFound", "a; b")
        );
    }
}
