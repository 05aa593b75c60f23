//! What is wrong with the user's objects, as status conditions: every
//! custom resource gets an `Accepted` condition, `True` or `False` with a
//! reason and a message saying what to fix.

use std::collections::BTreeMap;

use regex::Regex;

use super::destination::service_name;
use super::{Index, Kind, ObjectRef};
use crate::crd::gateway::ParentRef;
use crate::crd::retry::ServiceKind;

/// One thing wrong with an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The condition it sets `False`: `Accepted`, or for Gateway API
    /// routes also `ResolvedRefs`.
    pub condition: &'static str,
    /// CamelCase, for the condition's `reason`.
    pub reason: &'static str,
    pub message: String,
    /// A Gateway API route's parent the problem is about; `None`: all.
    pub parent: Option<ParentRef>,
}

/// Not a condition: marks a Service parent that a Gateway API route names
/// (see [`Problem::parent_listed`]).
pub const PARENT: &str = "Parent";

impl Problem {
    /// Not a problem: a Service parent the route names, listed with the
    /// route's problems so that its status (one entry per parent) is
    /// written again when its parents change, even if nothing is wrong.
    pub fn parent_listed(parent: ParentRef) -> Self {
        Problem {
            condition: PARENT,
            reason: "",
            message: String::new(),
            parent: Some(parent),
        }
    }

    /// Whether it is something wrong (not a listed parent).
    pub fn is_problem(&self) -> bool {
        self.condition != PARENT
    }

    /// A problem of a Gateway API route, for `condition`.
    pub fn route(condition: &'static str, reason: &'static str, message: String) -> Self {
        Problem {
            condition,
            reason,
            message,
            parent: None,
        }
    }
}

fn problem(reason: &'static str, message: impl Into<String>) -> Problem {
    Problem {
        condition: "Accepted",
        reason,
        message: message.into(),
        parent: None,
    }
}

/// Objects and what is wrong with each.
type Found = BTreeMap<ObjectRef, Vec<Problem>>;

fn objref(kind: Kind, (ns, name): &(String, String)) -> ObjectRef {
    ObjectRef {
        kind,
        namespace: ns.clone(),
        name: name.clone(),
    }
}

impl Index {
    /// Every custom resource with what is wrong with it (empty: accepted).
    pub fn problems(&self) -> Found {
        let mut out = Found::new();
        self.split_problems(&mut out);
        self.route_group_problems(&mut out);
        self.retry_policy_problems(&mut out);
        self.authz_policy_problems(&mut out);
        for (kind, key, ps) in self.gateway_route_problems() {
            out.insert(objref(kind, key), ps);
        }
        out
    }

    /// TrafficSplits: their apex and backends exist, one split per apex,
    /// some weight, their route groups exist.
    fn split_problems(&self, out: &mut Found) {
        for (key, split) in &self.splits {
            let spec = &split.resource.spec;
            let mut ps = Vec::new();
            let apex = (key.0.clone(), service_name(&spec.service).to_string());
            if !self.services.contains_key(&apex) {
                ps.push(problem(
                    "ApexServiceNotFound",
                    format!("apex service {}/{} does not exist", apex.0, apex.1),
                ));
            } else if self.has_producer_routes(&apex) {
                ps.push(problem(
                    "OverriddenByRoute",
                    format!("an HTTPRoute or GRPCRoute in {} routes {}: the route wins and this split is not applied", apex.0, apex.1),
                ));
            } else if self.active_split(&apex).map(|(k, _)| k) != Some(key) {
                let (winner, _) = self.active_split(&apex).expect("a split exists");
                ps.push(problem(
                    "Conflict",
                    format!("TrafficSplit {}/{} already splits {}; the oldest split of a service is the one in force", winner.0, winner.1, apex.1),
                ));
            }
            for b in &spec.backends {
                if !self
                    .services
                    .contains_key(&(key.0.clone(), b.service.clone()))
                {
                    ps.push(problem(
                        "BackendNotFound",
                        format!(
                            "backend service {}/{} does not exist; its weight is ignored",
                            key.0, b.service
                        ),
                    ));
                }
            }
            if spec.backends.iter().all(|b| b.weight == 0) && !spec.backends.is_empty() {
                ps.push(problem(
                    "NoWeight",
                    "every backend has weight 0: no traffic can be split",
                ));
            }
            for m in spec.matches.iter().flatten() {
                if !self
                    .route_groups
                    .contains_key(&(key.0.clone(), m.name.clone()))
                {
                    ps.push(problem(
                        "RouteGroupNotFound",
                        format!("HTTPRouteGroup {}/{} does not exist", key.0, m.name),
                    ));
                }
            }
            out.insert(objref(Kind::TrafficSplit, key), ps);
        }
    }

    /// HTTPRouteGroups: their regular expressions compile.
    fn route_group_problems(&self, out: &mut Found) {
        for (key, group) in &self.route_groups {
            let mut ps = Vec::new();
            for m in &group.resource.spec.matches {
                let regexes = m.path_regex.iter().map(|r| ("pathRegex", r)).chain(
                    m.headers
                        .iter()
                        .flatten()
                        .flat_map(|h| h.values())
                        .map(|r| ("headers", r)),
                );
                for (field, re) in regexes {
                    if let Err(e) = Regex::new(re) {
                        ps.push(problem(
                            "InvalidRegex",
                            format!(
                                "match {}: {field} '{re}' is not a regular expression: {e}",
                                m.name
                            ),
                        ));
                    }
                }
            }
            out.insert(objref(Kind::HTTPRouteGroup, key), ps);
        }
    }

    /// RetryPolicies: their target exists, one policy per target, the
    /// spec resolves.
    fn retry_policy_problems(&self, out: &mut Found) {
        for (key, rp) in &self.retry_policies {
            let mut ps = Vec::new();
            let target = (key.0.clone(), rp.resource.spec.target_ref.name.clone());
            let route_kind = match rp.resource.spec.target_ref.kind {
                ServiceKind::Service => None,
                ServiceKind::HTTPRoute => {
                    Some((Kind::HTTPRoute, self.http_routes.contains_key(&target)))
                }
                ServiceKind::GRPCRoute => {
                    Some((Kind::GRPCRoute, self.grpc_routes.contains_key(&target)))
                }
            };
            if let Some((kind, exists)) = route_kind {
                if !exists {
                    ps.push(problem(
                        "TargetNotFound",
                        format!("{} {}/{} does not exist", kind.as_str(), target.0, target.1),
                    ));
                }
            } else if !self.services.contains_key(&target) {
                ps.push(problem(
                    "TargetNotFound",
                    format!("service {}/{} does not exist", target.0, target.1),
                ));
            } else if self.active_retry(&target).map(|(k, _)| k) != Some(key) {
                let (winner, _) = self.active_retry(&target).expect("a policy exists");
                ps.push(problem(
                    "Conflict",
                    format!("RetryPolicy {}/{} already targets {}; the oldest policy of a service is the one in force", winner.0, winner.1, target.1),
                ));
            }
            if let Err(errs) = rp.resource.spec.resolve(String::new()) {
                ps.extend(errs.into_iter().map(|e| problem("Invalid", e)));
            }
            out.insert(objref(Kind::RetryPolicy, key), ps);
        }
    }

    /// AuthorizationPolicies: a target that exists, sources that parse,
    /// at least one source.
    fn authz_policy_problems(&self, out: &mut Found) {
        for (key, ap) in &self.authz_policies {
            let spec = &ap.resource.spec;
            let mut ps = Vec::new();
            match (&spec.target_ref, &spec.pod_selector) {
                (None, None) => ps.push(problem(
                    "NoTarget",
                    "set targetRef ({kind: Service, name} or {kind: Namespace}) or podSelector",
                )),
                (Some(t), _) if t.kind == crate::crd::authz::TargetKind::Service => match &t.name {
                    None => ps.push(problem(
                        "NoTarget",
                        "targetRef of kind Service needs a name",
                    )),
                    Some(n) if !self.services.contains_key(&(key.0.clone(), n.clone())) => {
                        ps.push(problem(
                            "TargetNotFound",
                            format!("service {}/{n} does not exist", key.0),
                        ))
                    }
                    _ => {}
                },
                _ => {}
            }
            for sa in spec
                .from
                .iter()
                .flat_map(|s| s.service_accounts.iter().flatten())
            {
                if sa.split('/').count() > 2 || sa.is_empty() {
                    ps.push(problem(
                        "InvalidSource",
                        format!("service account '{sa}' is not namespace/name"),
                    ));
                }
            }
            if spec.from.is_empty() {
                ps.push(problem(
                    "NoSources",
                    "from is empty: the policy matches no client",
                ));
            }
            out.insert(objref(Kind::AuthorizationPolicy, key), ps);
        }
    }
}
