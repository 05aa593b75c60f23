//! A Gateway API route's status: one entry per Service parent in
//! `status.parents`, under Weft's controller name, with the spec's
//! `Accepted` and `ResolvedRefs` conditions. Entries of other controllers
//! (a Gateway's, another mesh's) are kept as they are. Written with the
//! object's resourceVersion, so a concurrent writer makes it retry rather
//! than lose an entry.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::crd::gateway::{ParentRef, RouteParentStatus, RouteStatus};
use crate::crd::{GRPCRoute, HTTPRoute};
use crate::index::gateway::{ACCEPTED, RESOLVED_REFS};
use crate::index::problems::{PARENT, Problem};
use crate::index::{Kind, ObjectRef};

/// The controller name in routes' `status.parents`.
pub const CONTROLLER_NAME: &str = "weft.dev/controller";

pub(super) async fn write(
    client: &Client,
    r: &ObjectRef,
    problems: &[Problem],
) -> kube::Result<()> {
    let (ns, name) = (r.namespace.as_str(), r.name.as_str());
    let (version, generation, current) = match r.kind {
        Kind::HTTPRoute => {
            let o = Api::<HTTPRoute>::namespaced(client.clone(), ns)
                .get(name)
                .await?;
            (o.metadata.resource_version, o.metadata.generation, o.status)
        }
        _ => {
            let o = Api::<GRPCRoute>::namespaced(client.clone(), ns)
                .get(name)
                .await?;
            (o.metadata.resource_version, o.metadata.generation, o.status)
        }
    };
    let current = current.unwrap_or_default();
    let parents = parents(&current, problems, generation, Timestamp::now());
    if parents == current.parents {
        return Ok(());
    }
    let patch = Patch::Merge(json!({
        "metadata": {"resourceVersion": version},
        "status": {"parents": parents},
    }));
    let pp = PatchParams::default();
    match r.kind {
        Kind::HTTPRoute => Api::<HTTPRoute>::namespaced(client.clone(), ns)
            .patch_status(name, &pp, &patch)
            .await
            .map(drop),
        _ => Api::<GRPCRoute>::namespaced(client.clone(), ns)
            .patch_status(name, &pp, &patch)
            .await
            .map(drop),
    }
}

/// The route's new `status.parents`: other controllers' entries as they
/// are, then Weft's, one per listed Service parent. A condition keeps its
/// transition time while its status stays the same.
pub fn parents(
    current: &RouteStatus,
    problems: &[Problem],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<RouteParentStatus> {
    let mut out: Vec<RouteParentStatus> = current
        .parents
        .iter()
        .filter(|p| p.controller_name != CONTROLLER_NAME)
        .cloned()
        .collect();
    let listed = problems
        .iter()
        .filter(|p| p.condition == PARENT)
        .filter_map(|p| p.parent.as_ref());
    for parent in listed {
        let previous = current
            .parents
            .iter()
            .find(|p| p.controller_name == CONTROLLER_NAME && p.parent_ref == *parent);
        let conditions = [ACCEPTED, RESOLVED_REFS]
            .into_iter()
            .map(|kind| {
                let mut c = condition(kind, parent, problems, generation, now);
                if let Some(old) = previous
                    .and_then(|p| p.conditions.iter().find(|o| o.type_ == kind))
                    .filter(|old| old.status == c.status)
                {
                    c.last_transition_time = old.last_transition_time.clone();
                }
                c
            })
            .collect();
        out.push(RouteParentStatus {
            parent_ref: parent.clone(),
            controller_name: CONTROLLER_NAME.to_string(),
            conditions,
        });
    }
    out
}

/// One condition for one parent: `False` with the first problem's reason
/// and every problem's message, or `True`.
fn condition(
    kind: &'static str,
    parent: &ParentRef,
    problems: &[Problem],
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let relevant: Vec<&Problem> = problems
        .iter()
        .filter(|p| p.condition == kind && p.parent.as_ref().is_none_or(|q| q == parent))
        .collect();
    let (status, reason, message) = match relevant.first() {
        None => ("True", kind, String::new()),
        Some(first) => (
            "False",
            first.reason,
            relevant
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    Condition {
        type_: kind.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time: Time(now),
        observed_generation: generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, port: Option<u16>) -> ParentRef {
        ParentRef {
            group: Some(String::new()),
            kind: Some("Service".into()),
            name: name.into(),
            port,
            ..ParentRef::default()
        }
    }

    #[test]
    fn one_entry_per_parent_with_its_own_problems_and_others_kept() {
        let (web, api) = (service("web", Some(80)), service("api", None));
        let gateway = RouteParentStatus {
            parent_ref: ParentRef {
                name: "edge".into(),
                ..ParentRef::default()
            },
            controller_name: "example.com/gateway".into(),
            conditions: vec![],
        };
        let current = RouteStatus {
            parents: vec![gateway.clone()],
        };
        let mut missing = Problem::route(
            ACCEPTED,
            "NoMatchingParent",
            "Service shop/api does not exist".into(),
        );
        missing.parent = Some(api.clone());
        let problems = vec![
            Problem::parent_listed(web.clone()),
            Problem::parent_listed(api.clone()),
            missing,
            Problem::route(
                RESOLVED_REFS,
                "BackendNotFound",
                "backendRef shop/v2: gone".into(),
            ),
        ];
        let out = parents(&current, &problems, Some(3), Timestamp::now());
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], gateway);
        let cond = |i: usize, kind: &str| {
            let c = out[i].conditions.iter().find(|c| c.type_ == kind).unwrap();
            (c.status.clone(), c.reason.clone(), c.observed_generation)
        };
        assert_eq!(out[1].parent_ref, web);
        assert_eq!(
            cond(1, ACCEPTED),
            ("True".into(), "Accepted".into(), Some(3))
        );
        assert_eq!(
            cond(1, RESOLVED_REFS),
            ("False".into(), "BackendNotFound".into(), Some(3))
        );
        assert_eq!(out[2].parent_ref, api);
        assert_eq!(
            cond(2, ACCEPTED),
            ("False".into(), "NoMatchingParent".into(), Some(3))
        );
    }

    #[test]
    fn an_unchanged_condition_keeps_its_transition_time() {
        let web = service("web", None);
        let problems = vec![Problem::parent_listed(web)];
        let first = Timestamp::from_second(1_700_000_000).unwrap();
        let before = RouteStatus {
            parents: parents(&RouteStatus::default(), &problems, Some(1), first),
        };
        let again = parents(&before, &problems, Some(1), Timestamp::now());
        assert_eq!(again, before.parents, "nothing to write");
    }
}
