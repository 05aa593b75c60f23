//! A pod's inbound policy: the default (pod annotation, else namespace
//! annotation, else the controller's default), its opaque ports, and the
//! AuthorizationPolicies that target it.

use weft_proto::model::{self, AuthorizationRule, Body, DefaultPolicy, InboundPolicy, RateLimit};
use weft_proto::ports::parse_port_list;

use super::Index;
use super::objects::PodInfo;
use crate::crd::authz::{Action, AuthorizationPolicy, TargetKind};

/// Parses a `weft.dev/default-inbound-policy` value.
pub fn parse_default_policy(s: &str) -> Option<DefaultPolicy> {
    Some(match s.trim() {
        "all-unauthenticated" => DefaultPolicy::AllUnauthenticated,
        "all-authenticated" => DefaultPolicy::AllAuthenticated,
        "cluster-authenticated" => DefaultPolicy::ClusterAuthenticated,
        "deny" => DefaultPolicy::Deny,
        _ => return None,
    })
}

impl Index {
    /// The inbound policy of the pod "namespace/name". A pod the index does
    /// not know yet gets its namespace's defaults.
    pub fn inbound(&self, pod: &str) -> Body {
        let Some((ns, name)) = pod.split_once('/') else {
            return Body::Unknown {
                reason: format!("'{pod}' is not namespace/name"),
            };
        };
        let info = self.pods.get(&(ns.to_string(), name.to_string()));
        let ns_info = self.namespaces.get(ns);
        let default_policy = info
            .and_then(|p| p.default_policy.as_deref())
            .or_else(|| ns_info?.default_policy.as_deref())
            .and_then(parse_default_policy)
            .unwrap_or(self.config.default_policy);
        let opaque_ports = info
            .and_then(|p| p.opaque_ports.as_deref())
            .or_else(|| ns_info?.opaque_ports.as_deref())
            .and_then(|list| parse_port_list(list).ok())
            .unwrap_or_default();
        let rules = match info {
            Some(p) => self
                .authz_policies
                .iter()
                .filter(|((pns, _), a)| pns == ns && self.targets(ns, p, &a.resource))
                .map(|((pns, pname), a)| rule(format!("{pns}/{pname}"), ns, &a.resource))
                .collect(),
            None => vec![],
        };
        Body::Inbound(InboundPolicy {
            default_policy,
            opaque_ports,
            rules,
        })
    }

    /// Whether an AuthorizationPolicy of namespace `ns` targets pod `p`.
    pub(crate) fn targets(&self, ns: &str, p: &PodInfo, a: &AuthorizationPolicy) -> bool {
        let by_ref = a.spec.target_ref.as_ref().is_some_and(|t| match t.kind {
            TargetKind::Namespace => true,
            TargetKind::Service => t
                .name
                .as_ref()
                .and_then(|n| self.services.get(&(ns.to_string(), n.clone())))
                .and_then(|s| s.selector.as_ref())
                .is_some_and(|sel| {
                    !sel.is_empty() && sel.iter().all(|(k, v)| p.labels.get(k) == Some(v))
                }),
        });
        let by_selector = a.spec.pod_selector.as_ref().is_some_and(|sel| {
            sel.match_labels
                .iter()
                .flatten()
                .all(|(k, v)| p.labels.get(k) == Some(v))
                && sel.match_expressions.iter().flatten().all(|e| {
                    let value = p.labels.get(&e.key);
                    let values = e.values.clone().unwrap_or_default();
                    match e.operator.as_str() {
                        "In" => value.is_some_and(|v| values.contains(v)),
                        "NotIn" => value.is_none_or(|v| !values.contains(v)),
                        "Exists" => value.is_some(),
                        "DoesNotExist" => value.is_none(),
                        _ => false,
                    }
                })
        });
        by_ref || by_selector
    }
}

fn rule(name: String, ns: &str, a: &AuthorizationPolicy) -> AuthorizationRule {
    AuthorizationRule {
        name,
        action: match a.spec.action.unwrap_or(Action::ALLOW) {
            Action::ALLOW => model::Action::Allow,
            Action::DENY => model::Action::Deny,
        },
        ports: a.spec.ports.iter().flatten().map(|p| p.0).collect(),
        from: a
            .spec
            .from
            .iter()
            .map(|s| model::Source {
                // A bare service account name means one of the policy's namespace.
                service_accounts: s
                    .service_accounts
                    .iter()
                    .flatten()
                    .map(|sa| {
                        if sa.contains('/') {
                            sa.clone()
                        } else {
                            format!("{ns}/{sa}")
                        }
                    })
                    .collect(),
                identities: s.identities.clone().unwrap_or_default(),
                namespaces: s.namespaces.clone().unwrap_or_default(),
                unauthenticated: s.unauthenticated.unwrap_or(false),
            })
            .collect(),
        rate_limit: a.spec.rate_limit.as_ref().map(|r| RateLimit {
            requests_per_second: r.requests_per_second,
            burst: r.burst.unwrap_or(r.requests_per_second),
        }),
    }
}
