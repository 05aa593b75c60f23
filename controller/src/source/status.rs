//! Writing problems back as status conditions on the custom resources.
//! Several controller replicas may run; a Lease elects the one that
//! writes, so they never fight over the same status.

use std::collections::BTreeMap;
use std::time::Duration;

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

pub const LEASE_NAME: &str = "weft-controller-status";
const LEASE_SECONDS: i32 = 15;
const RENEW_EVERY: Duration = Duration::from_secs(5);

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
    loop {
        match try_lead(&leases, &holder).await {
            Ok(true) if !leader => {
                tracing::info!(%holder, "holding the status lease: this replica writes status");
                leader = true;
                written.clear();
            }
            Ok(true) => {}
            Ok(false) => leader = false,
            Err(e) => {
                tracing::warn!(error = %e, "status lease: cannot read or renew the Lease {namespace}/{LEASE_NAME}");
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

async fn write_status(client: &Client, r: &ObjectRef, problems: &[Problem]) -> kube::Result<()> {
    let patch =
        Patch::Merge(json!({"status": {"conditions": [condition(problems, Timestamp::now())]}}));
    let pp = PatchParams::default();
    let ns = &r.namespace;
    match r.kind {
        Kind::TrafficSplit => Api::<TrafficSplit>::namespaced(client.clone(), ns)
            .patch_status(&r.name, &pp, &patch)
            .await
            .map(drop),
        Kind::HTTPRouteGroup => Api::<HTTPRouteGroup>::namespaced(client.clone(), ns)
            .patch_status(&r.name, &pp, &patch)
            .await
            .map(drop),
        Kind::RetryPolicy => Api::<RetryPolicy>::namespaced(client.clone(), ns)
            .patch_status(&r.name, &pp, &patch)
            .await
            .map(drop),
        Kind::AuthorizationPolicy => Api::<AuthorizationPolicy>::namespaced(client.clone(), ns)
            .patch_status(&r.name, &pp, &patch)
            .await
            .map(drop),
        _ => Ok(()),
    }
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
                Problem {
                    reason: "BackendNotFound",
                    message: "a".into(),
                },
                Problem {
                    reason: "RouteGroupNotFound",
                    message: "b".into(),
                },
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
