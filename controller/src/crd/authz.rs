//! AuthorizationPolicy (weft.dev/v1alpha1): who may talk to a server.
//! Enforced by the inbound proxy (see the identity and mTLS work); the
//! controller resolves which pods each policy targets.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crd::Status;

/// Allows or denies sources to reach a service, a namespace or selected pods.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    namespaced,
    shortname = "authz",
    status = "Status",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// What the policy protects: `{kind: Service, name}` (the pods it
    /// selects) or `{kind: Namespace}` (every pod of the policy's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetRef>,
    /// Alternatively, the pods of the policy's namespace these labels select.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Ports the policy covers; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<Port>>,
    /// ALLOW (default) or DENY; DENY wins over ALLOW.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// Sources the policy matches: any entry matching is a match.
    pub from: Vec<Source>,
    /// A per-source-identity rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct PolicyTargetRef {
    pub kind: TargetKind,
    /// The Service's name (not used for Namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum TargetKind {
    Service,
    Namespace,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(transparent)]
pub struct Port(#[schemars(range(min = 1, max = 65535))] pub u16);

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum Action {
    ALLOW,
    DENY,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// Service accounts as `namespace/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<Vec<String>>,
    /// SPIFFE IDs; a trailing `*` matches any rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identities: Option<Vec<String>>,
    /// Any authenticated workload of these namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
    /// Clients without a mesh identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unauthenticated: Option<bool>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    #[schemars(range(min = 1))]
    pub requests_per_second: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}
