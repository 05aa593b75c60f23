//! RetryPolicy (weft.dev/v1alpha1): how clients of a service retry.
//! `policy`, `duration`, `maxInterval` and `maxRetries` mean what they mean
//! in Dapr's resiliency policies.

use std::time::Duration;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use weft_proto::{duration, model};

use crate::crd::Status;

/// Retries for the clients of a service.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "RetryPolicy",
    namespaced,
    shortname = "rp",
    status = "Status",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetRef.name"}"#,
    printcolumn = r#"{"name":"Max retries","type":"integer","jsonPath":".spec.maxRetries"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicySpec {
    /// The service whose clients retry, or the HTTPRoute or GRPCRoute
    /// whose requests do.
    pub target_ref: ServiceTargetRef,
    /// When to retry: `5xx`, `gateway-error` (502/503/504),
    /// `connect-failure`, `reset`, a status code such as `"429"`, or a gRPC
    /// status (`cancelled`, `deadline-exceeded`, `internal`,
    /// `resource-exhausted`, `unavailable`). Default: 5xx, connect-failure, reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<RetryOn>>,
    /// Retries per request; -1 means unbounded (still capped by the budget). Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1))]
    pub max_retries: Option<i32>,
    /// `constant` or `exponential` backoff (with full jitter). Default exponential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<BackoffPolicy>,
    /// The constant interval, or the exponential base. Default 25ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_schema")]
    pub duration: Option<String>,
    /// The cap of exponential backoff. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_schema")]
    pub max_interval: Option<String>,
    /// Timeout of each try. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_schema")]
    pub per_try_timeout: Option<String>,
    /// Timeout of the whole request, retries included. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_schema")]
    pub timeout: Option<String>,
    /// Caps retries to a share of requests so that a failing service never
    /// sees a retry storm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Retry requests that are not idempotent (POST, PATCH, ...). Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_non_idempotent: Option<bool>,
}

/// A Service, or a Gateway API route, in the policy's namespace.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct ServiceTargetRef {
    pub kind: ServiceKind,
    #[schemars(length(min = 1))]
    pub name: String,
}

/// What a RetryPolicy targets: a Service's clients, or the requests a
/// route takes (on top of the route's own `retry`, which wins for what it
/// says).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum ServiceKind {
    Service,
    HTTPRoute,
    GRPCRoute,
}

impl ServiceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Service => "Service",
            ServiceKind::HTTPRoute => "HTTPRoute",
            ServiceKind::GRPCRoute => "GRPCRoute",
        }
    }
}

/// A retry condition or an HTTP status code.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(transparent)]
pub struct RetryOn(
    #[schemars(regex(
        pattern = r"^(5xx|gateway-error|connect-failure|reset|cancelled|deadline-exceeded|internal|resource-exhausted|unavailable|[1-5][0-9][0-9])$"
    ))]
    pub String,
);

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackoffPolicy {
    Constant,
    Exponential,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// Retries allowed as a share of requests over `ttl`. Default 0.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1000.0))]
    pub ratio: Option<f64>,
    /// Retries always allowed per second, whatever the ratio. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retries_per_second: Option<u32>,
    /// The window requests and retries are counted over. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_schema")]
    pub ttl: Option<String>,
}

fn duration_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "pattern": duration::PATTERN,
        "description": "A duration such as 25ms, 1s or 1m30s"
    })
}

pub const DEFAULT_RETRY_ON: [&str; 3] = ["5xx", "connect-failure", "reset"];
pub const DEFAULT_MAX_RETRIES: i32 = 3;
pub const DEFAULT_DURATION: Duration = Duration::from_millis(25);
pub const DEFAULT_MAX_INTERVAL: Duration = Duration::from_secs(1);
pub const BUDGET_TTL_MIN: Duration = Duration::from_secs(1);
pub const BUDGET_TTL_MAX: Duration = Duration::from_secs(60);

impl RetryPolicySpec {
    /// The policy with defaults applied, or what is wrong with it (the API
    /// server checks the schema; this catches what a schema cannot, and
    /// everything in directory mode).
    pub fn resolve(&self, name: String) -> Result<model::RetryPolicy, Vec<String>> {
        let mut problems = Vec::new();
        let mut dur = |field: &str, v: &Option<String>, default: Option<Duration>| match v {
            None => default,
            Some(s) => match duration::parse(s) {
                Ok(d) => Some(d),
                Err(e) => {
                    problems.push(format!(
                        "{field}: '{s}' is not a duration ({e}); write e.g. 25ms or 1s"
                    ));
                    default
                }
            },
        };
        let duration =
            dur("duration", &self.duration, Some(DEFAULT_DURATION)).unwrap_or(DEFAULT_DURATION);
        let max_interval = dur(
            "maxInterval",
            &self.max_interval,
            Some(DEFAULT_MAX_INTERVAL),
        );
        let per_try_timeout = dur("perTryTimeout", &self.per_try_timeout, None);
        let timeout = dur("timeout", &self.timeout, None);
        let defaults = model::RetryBudget::default();
        let budget = match &self.budget {
            None => defaults,
            Some(b) => model::RetryBudget {
                ratio: b.ratio.unwrap_or(defaults.ratio),
                min_retries_per_second: b
                    .min_retries_per_second
                    .unwrap_or(defaults.min_retries_per_second),
                ttl: dur("budget.ttl", &b.ttl, Some(defaults.ttl)).unwrap_or(defaults.ttl),
            },
        };
        let retry_on: Vec<String> = match &self.retry_on {
            Some(v) => v.iter().map(|r| r.0.clone()).collect(),
            None => DEFAULT_RETRY_ON.iter().map(|s| s.to_string()).collect(),
        };
        for r in &retry_on {
            if !is_retry_condition(r) {
                problems.push(format!(
                    "retryOn: '{r}' is not a condition (5xx, gateway-error, connect-failure, reset, a gRPC status) or a status code"
                ));
            }
        }
        let max_retries = self.max_retries.unwrap_or(DEFAULT_MAX_RETRIES);
        if max_retries < -1 {
            problems.push(format!("maxRetries: {max_retries} is below -1"));
        }
        // The window the budget counts requests over (Linkerd's bounds:
        // the proxy's budget keeps ten slots of a tenth of it).
        if !(BUDGET_TTL_MIN..=BUDGET_TTL_MAX).contains(&budget.ttl) {
            problems.push(format!(
                "budget.ttl: {:?} is not between 1s and 60s",
                budget.ttl
            ));
        }
        if !(0.0..=1000.0).contains(&budget.ratio) {
            problems.push(format!(
                "budget.ratio: {} is not between 0 and 1000",
                budget.ratio
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(model::RetryPolicy {
            name,
            retry_on,
            max_retries,
            policy: match self.policy.unwrap_or(BackoffPolicy::Exponential) {
                BackoffPolicy::Constant => model::Backoff::Constant,
                BackoffPolicy::Exponential => model::Backoff::Exponential,
            },
            duration,
            max_interval,
            per_try_timeout,
            timeout,
            budget,
            retry_non_idempotent: self.retry_non_idempotent.unwrap_or(false),
        })
    }
}

fn is_retry_condition(r: &str) -> bool {
    matches!(
        r,
        "5xx"
            | "gateway-error"
            | "connect-failure"
            | "reset"
            | "cancelled"
            | "deadline-exceeded"
            | "internal"
            | "resource-exhausted"
            | "unavailable"
    ) || (r.len() == 3 && r.parse::<u16>().is_ok_and(|c| (100..600).contains(&c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> RetryPolicySpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn defaults_apply() {
        let p = spec("targetRef: {kind: Service, name: web}")
            .resolve("shop/web".into())
            .unwrap();
        assert_eq!(p.retry_on, vec!["5xx", "connect-failure", "reset"]);
        assert_eq!(p.max_retries, 3);
        assert_eq!(p.policy, model::Backoff::Exponential);
        assert_eq!(p.duration, Duration::from_millis(25));
        assert_eq!(p.max_interval, Some(Duration::from_secs(1)));
        assert_eq!(p.budget, model::RetryBudget::default());
        assert!(!p.retry_non_idempotent);
    }

    #[test]
    fn the_design_example_resolves() {
        let p = spec(
            r#"
targetRef: {kind: Service, name: orders}
retryOn: [5xx, gateway-error, connect-failure, reset, "429"]
maxRetries: 3
policy: exponential
duration: 25ms
maxInterval: 1s
perTryTimeout: 500ms
timeout: 3s
budget: {ratio: 0.2, minRetriesPerSecond: 10, ttl: 10s}
retryNonIdempotent: false
"#,
        )
        .resolve("shop/orders".into())
        .unwrap();
        assert_eq!(p.per_try_timeout, Some(Duration::from_millis(500)));
        assert_eq!(p.timeout, Some(Duration::from_secs(3)));
        assert!(p.retry_on.contains(&"429".to_string()));
    }

    #[test]
    fn bad_values_are_reported_together() {
        let errs = spec(
            "targetRef: {kind: Service, name: web}\nretryOn: [sometimes]\nduration: soon\nmaxRetries: -5\nbudget: {ttl: 5m}",
        )
        .resolve("shop/web".into())
        .unwrap_err();
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs.iter().any(|e| e.starts_with("budget.ttl: 300s")));
        assert!(errs.iter().any(|e| e.starts_with("duration: 'soon'")));
        assert!(errs.iter().any(|e| e.starts_with("retryOn: 'sometimes'")));
        assert!(errs.iter().any(|e| e.starts_with("maxRetries: -5")));
    }
}
