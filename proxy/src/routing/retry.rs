//! Retries per RetryPolicy: which outcomes are retried, how long to wait,
//! and the budget that keeps retries a bounded share of requests.
//!
//! The policy is compiled once per config version ([`CompiledRetry`]); its
//! budget lives across versions (keyed by the policy's name), so editing a
//! policy does not reset what it has spent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::{Method, StatusCode};
use weft_proto::model::{Backoff, RetryBudget, RetryPolicy};

use tower::retry::budget::{Budget as _, TpsBudget};

use crate::backoff::{Growth, Jitter};

/// What one try came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers, with the gRPC status when they carry one (a
    /// trailers-only gRPC response) or, under a retry on gRPC codes, when
    /// the trailers came with the first frame ([`super::peek`]).
    Response {
        status: StatusCode,
        grpc: Option<u16>,
    },
    /// The endpoint could not be connected to: the request was never sent.
    ConnectFailure,
    /// The connection was reset or closed before a response.
    Reset,
    /// No response headers within the per-try timeout.
    Timeout,
    /// No endpoint to try (none ready, or no route): never retried.
    NoEndpoint,
}

impl Outcome {
    /// A short name for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Response { status, grpc }
                if status.is_server_error() || grpc.is_some_and(|c| c != 0) =>
            {
                "failure"
            }
            Outcome::Response { .. } => "success",
            Outcome::ConnectFailure => "connect_failure",
            Outcome::Reset => "reset",
            Outcome::Timeout => "timeout",
            Outcome::NoEndpoint => "no_endpoint",
        }
    }
}

/// A retry condition of `retryOn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Condition {
    FiveXx,
    GatewayError,
    ConnectFailure,
    Reset,
    Status(u16),
    Grpc(u16),
}

fn parse_condition(s: &str) -> Result<Condition, String> {
    Ok(match s {
        "5xx" => Condition::FiveXx,
        "gateway-error" => Condition::GatewayError,
        "connect-failure" => Condition::ConnectFailure,
        "reset" => Condition::Reset,
        "cancelled" => Condition::Grpc(1),
        "deadline-exceeded" => Condition::Grpc(4),
        "resource-exhausted" => Condition::Grpc(8),
        "internal" => Condition::Grpc(13),
        "unavailable" => Condition::Grpc(14),
        code => match code.parse::<u16>() {
            Ok(c) if (100..600).contains(&c) => Condition::Status(c),
            _ => return Err(format!("'{code}' is not a retry condition")),
        },
    })
}

/// A RetryPolicy ready for the data path.
#[derive(Debug)]
pub struct CompiledRetry {
    pub policy: RetryPolicy,
    conditions: Vec<Condition>,
    pub budget: Arc<Budget>,
}

impl CompiledRetry {
    pub fn compile(policy: RetryPolicy, budgets: &Budgets) -> Result<Self, String> {
        let conditions = policy
            .retry_on
            .iter()
            .map(|c| parse_condition(c))
            .collect::<Result<Vec<_>, _>>()?;
        let budget = budgets.get(&policy.name, &policy.budget);
        Ok(Self {
            policy,
            conditions,
            budget,
        })
    }

    /// Whether a gRPC status decides a retry (so a try reads it from the
    /// trailers when the headers lack it).
    pub fn retries_grpc_codes(&self) -> bool {
        self.conditions
            .iter()
            .any(|c| matches!(c, Condition::Grpc(_)))
    }

    /// Retries allowed by count: `maxRetries: -1` sets no count limit, as
    /// documented; the budget, the timeout and the replayable body size
    /// still end them.
    pub fn max_retries(&self) -> u32 {
        match self.policy.max_retries {
            n if n < 0 => u32::MAX,
            n => n as u32,
        }
    }

    /// Whether `outcome` may be retried, and the reason (for metrics).
    /// A connect failure never reached the server, so it is retried whatever
    /// the method; anything else only for idempotent methods unless the
    /// policy says `retryNonIdempotent`.
    pub fn retry_reason(&self, outcome: Outcome, method: &Method) -> Option<&'static str> {
        let has = |c: Condition| self.conditions.contains(&c);
        if outcome == Outcome::ConnectFailure {
            return has(Condition::ConnectFailure).then_some("connect-failure");
        }
        if !(is_idempotent(method) || self.policy.retry_non_idempotent) {
            return None;
        }
        match outcome {
            Outcome::ConnectFailure | Outcome::NoEndpoint => None,
            Outcome::Reset => has(Condition::Reset).then_some("reset"),
            // No answer in time: what a gateway would report as 504 (a
            // Gateway API route's `retry.codes: [504]` retries it too).
            Outcome::Timeout => (has(Condition::FiveXx)
                || has(Condition::GatewayError)
                || has(Condition::Status(504)))
            .then_some("timeout"),
            Outcome::Response { status, grpc } => {
                let code = status.as_u16();
                if let Some(g) = grpc
                    && g != 0
                    && has(Condition::Grpc(g))
                {
                    return Some("grpc-status");
                }
                if has(Condition::Status(code)) {
                    Some("status-code")
                } else if matches!(code, 502..=504) && has(Condition::GatewayError) {
                    Some("gateway-error")
                } else if status.is_server_error() && has(Condition::FiveXx) {
                    Some("5xx")
                } else {
                    None
                }
            }
        }
    }

    /// How long to wait before retry number `retry` (1-based), with jitter:
    /// constant waits 50-100% of `duration`; exponential waits a uniformly
    /// random time up to `duration * 2^(retry-1)`, capped by `maxInterval`
    /// ("full jitter").
    pub fn backoff(&self, retry: u32, rand: f64) -> Duration {
        let base = self.policy.duration;
        let (growth, jitter, cap) = match self.policy.policy {
            // maxInterval is the exponential policy's; a constant one waits
            // what it says.
            Backoff::Constant => (Growth::Constant, Jitter::Equal, base),
            Backoff::Exponential => (
                Growth::Exponential,
                Jitter::Full,
                self.policy.max_interval.unwrap_or(Duration::from_secs(1)),
            ),
        };
        crate::backoff::Backoff {
            base,
            cap,
            growth,
            jitter,
        }
        .delay(retry, rand)
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A retry budget: over the last `ttl`, retries may be at most
/// `ratio` x requests, plus `minRetriesPerSecond` x ttl always. tower's
/// `TpsBudget` keeps the count (Finagle's and Linkerd's budget: ten slots
/// sliding with the clock); it takes `ttl` between 1 s and 60 s (the
/// controller refuses others; a static config file's is clamped, as
/// `TpsBudget` would panic) and a ratio as 1/n (0.3 allows a retry per 3
/// requests).
#[derive(Debug)]
pub struct Budget {
    settings: RetryBudget,
    tokens: TpsBudget,
}

impl Budget {
    pub fn new(settings: RetryBudget) -> Self {
        let ttl = settings
            .ttl
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        let ratio = settings.ratio.clamp(0.0, 1000.0) as f32;
        Self {
            tokens: TpsBudget::new(ttl, settings.min_retries_per_second, ratio),
            settings,
        }
    }

    /// Counts a request (each request earns `ratio` retries).
    pub fn deposit(&self) {
        self.tokens.deposit();
    }

    /// Takes one retry from the budget if it has one.
    pub fn try_withdraw(&self) -> bool {
        self.tokens.withdraw()
    }
}

/// Budgets by policy name, kept while a config uses them.
#[derive(Debug, Default)]
pub struct Budgets {
    budgets: Mutex<HashMap<String, Weak<Budget>>>,
}

impl Budgets {
    pub fn get(&self, name: &str, settings: &RetryBudget) -> Arc<Budget> {
        let mut all = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = all.get(name).and_then(Weak::upgrade)
            && b.settings == *settings
        {
            return b;
        }
        let b = Arc::new(Budget::new(settings.clone()));
        all.insert(name.to_string(), Arc::downgrade(&b));
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(retry_on: &[&str], backoff: Backoff) -> RetryPolicy {
        RetryPolicy {
            name: "shop/web".into(),
            retry_on: retry_on.iter().map(|s| s.to_string()).collect(),
            max_retries: 3,
            policy: backoff,
            duration: Duration::from_millis(25),
            max_interval: Some(Duration::from_secs(1)),
            per_try_timeout: None,
            timeout: None,
            budget: RetryBudget::default(),
            retry_non_idempotent: false,
        }
    }

    fn compiled(retry_on: &[&str]) -> CompiledRetry {
        CompiledRetry::compile(policy(retry_on, Backoff::Exponential), &Budgets::default()).unwrap()
    }

    fn rsp(code: u16) -> Outcome {
        Outcome::Response {
            status: StatusCode::from_u16(code).unwrap(),
            grpc: None,
        }
    }

    #[test]
    fn conditions() {
        let r = compiled(&["5xx", "connect-failure", "reset", "429", "unavailable"]);
        let get = Method::GET;
        assert_eq!(r.retry_reason(rsp(503), &get), Some("5xx"));
        assert_eq!(r.retry_reason(rsp(500), &get), Some("5xx"));
        assert_eq!(r.retry_reason(rsp(429), &get), Some("status-code"));
        assert_eq!(r.retry_reason(rsp(404), &get), None);
        assert_eq!(r.retry_reason(rsp(200), &get), None);
        assert_eq!(r.retry_reason(Outcome::Reset, &get), Some("reset"));
        assert_eq!(r.retry_reason(Outcome::Timeout, &get), Some("timeout"));
        let grpc = Outcome::Response {
            status: StatusCode::OK,
            grpc: Some(14),
        };
        assert_eq!(r.retry_reason(grpc, &get), Some("grpc-status"));
        let other = Outcome::Response {
            status: StatusCode::OK,
            grpc: Some(5),
        };
        assert_eq!(r.retry_reason(other, &get), None);

        let gw = compiled(&["gateway-error"]);
        assert_eq!(gw.retry_reason(rsp(502), &get), Some("gateway-error"));
        assert_eq!(gw.retry_reason(rsp(500), &get), None);
        assert_eq!(gw.retry_reason(Outcome::ConnectFailure, &get), None);
    }

    #[test]
    fn non_idempotent_methods_only_retry_what_was_never_sent() {
        let r = compiled(&["5xx", "connect-failure", "reset"]);
        assert_eq!(r.retry_reason(rsp(503), &Method::POST), None);
        assert_eq!(r.retry_reason(Outcome::Reset, &Method::POST), None);
        assert_eq!(
            r.retry_reason(Outcome::ConnectFailure, &Method::POST),
            Some("connect-failure")
        );
        let mut p = policy(&["5xx"], Backoff::Constant);
        p.retry_non_idempotent = true;
        let r = CompiledRetry::compile(p, &Budgets::default()).unwrap();
        assert_eq!(r.retry_reason(rsp(503), &Method::POST), Some("5xx"));
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let r = compiled(&["5xx"]);
        // Full jitter: anywhere from 0 to 25ms * 2^(n-1), capped at 1 s.
        assert_eq!(r.backoff(1, 1.0), Duration::from_millis(25));
        assert_eq!(r.backoff(3, 1.0), Duration::from_millis(100));
        assert_eq!(r.backoff(3, 0.5), Duration::from_millis(50));
        assert_eq!(r.backoff(10, 1.0), Duration::from_secs(1));
        assert_eq!(r.backoff(40, 1.0), Duration::from_secs(1));
        assert_eq!(r.backoff(2, 0.0), Duration::ZERO);
        let c = CompiledRetry::compile(policy(&["5xx"], Backoff::Constant), &Budgets::default())
            .unwrap();
        assert_eq!(c.backoff(5, 0.0), Duration::from_micros(12_500));
        assert_eq!(c.backoff(5, 1.0), Duration::from_millis(25));
    }

    #[test]
    fn a_per_try_timeout_is_retried_as_a_504() {
        let get = Method::GET;
        assert_eq!(
            compiled(&["504"]).retry_reason(Outcome::Timeout, &get),
            Some("timeout")
        );
        assert_eq!(
            compiled(&["503"]).retry_reason(Outcome::Timeout, &get),
            None
        );
    }

    #[test]
    fn minus_one_sets_no_count_limit() {
        let mut p = policy(&["5xx"], Backoff::Constant);
        p.max_retries = -1;
        let r = CompiledRetry::compile(p, &Budgets::default()).unwrap();
        assert_eq!(r.max_retries(), u32::MAX);
        let mut p = policy(&["5xx"], Backoff::Constant);
        p.max_retries = 150;
        let r = CompiledRetry::compile(p, &Budgets::default()).unwrap();
        assert_eq!(r.max_retries(), 150, "no hidden cap below what is written");
    }

    #[test]
    fn unknown_conditions_fail_compilation() {
        let err = CompiledRetry::compile(
            policy(&["sometimes"], Backoff::Constant),
            &Budgets::default(),
        )
        .unwrap_err();
        assert!(err.contains("'sometimes'"));
    }

    #[tokio::test(start_paused = true)]
    async fn budget_allows_ratio_of_requests_plus_the_reserve() {
        let b = Budget::new(RetryBudget {
            ratio: 0.2,
            min_retries_per_second: 1,
            ttl: Duration::from_secs(10),
        });
        for _ in 0..100 {
            b.deposit();
        }
        // 0.2 x 100 + 1/s x 10 s = 30 retries.
        let granted = (0..100).filter(|_| b.try_withdraw()).count();
        assert_eq!(granted, 30);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_window_slides() {
        let b = Budget::new(RetryBudget {
            ratio: 0.5,
            min_retries_per_second: 0,
            ttl: Duration::from_secs(10),
        });
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!((0..10).filter(|_| b.try_withdraw()).count(), 5);
        // After the ttl, the old requests and retries have left the window.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!b.try_withdraw());
        b.deposit();
        b.deposit();
        assert!(b.try_withdraw());
        assert!(!b.try_withdraw());
    }

    #[test]
    fn budgets_survive_config_versions_with_the_same_settings() {
        let budgets = Budgets::default();
        let a = budgets.get("shop/web", &RetryBudget::default());
        let b = budgets.get("shop/web", &RetryBudget::default());
        assert!(Arc::ptr_eq(&a, &b));
        let other = RetryBudget {
            ratio: 0.5,
            ..RetryBudget::default()
        };
        assert!(!Arc::ptr_eq(&a, &budgets.get("shop/web", &other)));
    }
}
