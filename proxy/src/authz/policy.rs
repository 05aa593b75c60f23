//! Deciding one inbound connection or request against the pod's inbound
//! policy: pure, so the whole decision table is unit-tested.
//!
//! The order: a matching DENY rule refuses; else, when ALLOW rules apply to
//! the port, a matching one admits and no match refuses; else the default
//! policy decides.

use weft_proto::model::{Action, AuthorizationRule, DefaultPolicy, InboundPolicy, Source};
use weft_proto::spiffe::{SpiffeId, matches_pattern};

/// What decided.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum By<'p> {
    Rule(&'p AuthorizationRule),
    Default(DefaultPolicy),
}

impl By<'_> {
    /// The policy's name for metrics and errors: the AuthorizationPolicy
    /// (`namespace/name`) or `default:<policy>`.
    pub fn name(&self) -> std::borrow::Cow<'_, str> {
        match self {
            By::Rule(r) => r.name.as_str().into(),
            By::Default(d) => format!("default:{}", default_name(*d)).into(),
        }
    }
}

pub fn default_name(d: DefaultPolicy) -> &'static str {
    match d {
        DefaultPolicy::AllUnauthenticated => "all-unauthenticated",
        DefaultPolicy::AllAuthenticated => "all-authenticated",
        DefaultPolicy::ClusterAuthenticated => "cluster-authenticated",
        DefaultPolicy::Deny => "deny",
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict<'p> {
    Allow(By<'p>),
    Deny(By<'p>),
}

/// Who is asking: the verified mesh identity, if the client has one.
#[derive(Clone, Copy, Debug)]
pub struct Client<'a> {
    pub id: Option<&'a SpiffeId>,
    /// This proxy's trust domain (for `cluster-authenticated`).
    pub trust_domain: &'a str,
}

pub fn decide<'p>(policy: &'p InboundPolicy, port: u16, client: Client<'_>) -> Verdict<'p> {
    let applies = |r: &&'p AuthorizationRule| r.ports.is_empty() || r.ports.contains(&port);
    let matching = |r: &&'p AuthorizationRule| r.from.iter().any(|s| source_matches(s, client));
    let rules = || policy.rules.iter().filter(applies);
    if let Some(r) = rules().filter(|r| r.action == Action::Deny).find(matching) {
        return Verdict::Deny(By::Rule(r));
    }
    let mut allows = rules().filter(|r| r.action == Action::Allow).peekable();
    if let Some(&first) = allows.peek() {
        return match allows.find(matching) {
            Some(r) => Verdict::Allow(By::Rule(r)),
            // Not allowed by any: refused, named after the first ALLOW.
            None => Verdict::Deny(By::Rule(first)),
        };
    }
    let by = By::Default(policy.default_policy);
    let allowed = match policy.default_policy {
        DefaultPolicy::AllUnauthenticated => true,
        DefaultPolicy::AllAuthenticated => client.id.is_some(),
        DefaultPolicy::ClusterAuthenticated => client
            .id
            .is_some_and(|id| id.trust_domain == client.trust_domain),
        DefaultPolicy::Deny => false,
    };
    if allowed {
        Verdict::Allow(by)
    } else {
        Verdict::Deny(by)
    }
}

/// Whether one `from` entry matches the client. `unauthenticated: true`
/// matches every client, identity or not (no identity required); the other
/// fields need a verified identity.
fn source_matches(s: &Source, client: Client<'_>) -> bool {
    if s.unauthenticated {
        return true;
    }
    let Some(id) = client.id else {
        return false;
    };
    let local = id.trust_domain == client.trust_domain;
    s.service_accounts.iter().any(|sa| {
        sa.split_once('/')
            .is_some_and(|(ns, name)| local && ns == id.namespace && name == id.service_account)
    }) || (local && s.namespaces.contains(&id.namespace))
        || (!s.identities.is_empty() && {
            let id = id.to_string();
            s.identities.iter().any(|p| matches_pattern(p, &id))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::model::RateLimit;

    const TD: &str = "cluster.local";

    fn id(ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::new(TD, ns, sa)
    }

    fn rule(name: &str, action: Action, ports: &[u16], from: Vec<Source>) -> AuthorizationRule {
        AuthorizationRule {
            name: name.into(),
            action,
            ports: ports.to_vec(),
            from,
            rate_limit: None::<RateLimit>,
        }
    }

    fn sas(list: &[&str]) -> Source {
        Source {
            service_accounts: list.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn verdict(policy: &InboundPolicy, port: u16, who: Option<&SpiffeId>) -> (bool, String) {
        let client = Client {
            id: who,
            trust_domain: TD,
        };
        match decide(policy, port, client) {
            Verdict::Allow(by) => (true, by.name().into_owned()),
            Verdict::Deny(by) => (false, by.name().into_owned()),
        }
    }

    #[test]
    fn default_policies() {
        let local = id("shop", "web");
        let foreign = SpiffeId::new("other.example", "shop", "web");
        let table = [
            (DefaultPolicy::AllUnauthenticated, [true, true, true]),
            (DefaultPolicy::AllAuthenticated, [false, true, true]),
            (DefaultPolicy::ClusterAuthenticated, [false, true, false]),
            (DefaultPolicy::Deny, [false, false, false]),
        ];
        for (default, expect) in table {
            let p = InboundPolicy {
                default_policy: default,
                ..Default::default()
            };
            for (who, want) in [None, Some(&local), Some(&foreign)].into_iter().zip(expect) {
                let (allowed, by) = verdict(&p, 8080, who);
                assert_eq!(allowed, want, "{default:?} for {who:?}");
                assert_eq!(by, format!("default:{}", default_name(default)));
            }
        }
    }

    #[test]
    fn deny_wins_over_allow() {
        let web = id("shop", "web");
        let p = InboundPolicy {
            rules: vec![
                rule(
                    "shop/allow-web",
                    Action::Allow,
                    &[],
                    vec![sas(&["shop/web"])],
                ),
                rule("shop/deny-web", Action::Deny, &[], vec![sas(&["shop/web"])]),
            ],
            ..Default::default()
        };
        assert_eq!(verdict(&p, 80, Some(&web)), (false, "shop/deny-web".into()));
    }

    #[test]
    fn an_allow_rule_refuses_everyone_it_does_not_name() {
        let p = InboundPolicy {
            rules: vec![rule(
                "shop/readers",
                Action::Allow,
                &[],
                vec![sas(&["shop/web"])],
            )],
            ..Default::default()
        };
        assert_eq!(
            verdict(&p, 80, Some(&id("shop", "web"))),
            (true, "shop/readers".into())
        );
        assert_eq!(
            verdict(&p, 80, Some(&id("shop", "batch"))),
            (false, "shop/readers".into())
        );
        assert_eq!(verdict(&p, 80, None), (false, "shop/readers".into()));
    }

    #[test]
    fn rules_apply_to_their_ports_only() {
        let p = InboundPolicy {
            default_policy: DefaultPolicy::AllUnauthenticated,
            rules: vec![
                rule(
                    "shop/admin-port",
                    Action::Allow,
                    &[9000],
                    vec![sas(&["shop/ops"])],
                ),
                rule(
                    "shop/no-batch",
                    Action::Deny,
                    &[8080],
                    vec![sas(&["shop/batch"])],
                ),
            ],
            ..Default::default()
        };
        let batch = id("shop", "batch");
        assert!(!verdict(&p, 9000, Some(&batch)).0, "9000 is ALLOW-listed");
        assert!(verdict(&p, 9000, Some(&id("shop", "ops"))).0);
        assert!(!verdict(&p, 8080, Some(&batch)).0, "denied on 8080");
        assert_eq!(
            verdict(&p, 8081, Some(&batch)),
            (true, "default:all-unauthenticated".into())
        );
    }

    #[test]
    fn source_kinds() {
        let cases: [(Source, Option<SpiffeId>, bool); 9] = [
            (sas(&["shop/web"]), Some(id("shop", "web")), true),
            (
                sas(&["shop/web"]),
                Some(SpiffeId::new("other.example", "shop", "web")),
                false,
            ),
            (sas(&["shop/web"]), None, false),
            (
                Source {
                    namespaces: vec!["monitoring".into()],
                    ..Default::default()
                },
                Some(id("monitoring", "prometheus")),
                true,
            ),
            (
                Source {
                    namespaces: vec!["monitoring".into()],
                    ..Default::default()
                },
                Some(id("shop", "prometheus")),
                false,
            ),
            (
                Source {
                    identities: vec!["spiffe://cluster.local/ns/batch/*".into()],
                    ..Default::default()
                },
                Some(id("batch", "worker")),
                true,
            ),
            (
                Source {
                    identities: vec!["spiffe://cluster.local/ns/batch/*".into()],
                    ..Default::default()
                },
                Some(id("batchx", "worker")),
                false,
            ),
            (
                Source {
                    unauthenticated: true,
                    ..Default::default()
                },
                None,
                true,
            ),
            (
                Source {
                    unauthenticated: true,
                    ..Default::default()
                },
                Some(id("shop", "web")),
                true,
            ),
        ];
        for (source, who, want) in cases {
            let client = Client {
                id: who.as_ref(),
                trust_domain: TD,
            };
            assert_eq!(
                source_matches(&source, client),
                want,
                "{source:?} vs {who:?}"
            );
        }
    }
}
