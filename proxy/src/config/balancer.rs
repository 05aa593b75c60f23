//! How endpoints are chosen and judged: the balancer and failure accrual
//! (crate::routing::balance, crate::upstream::endpoint).

use std::time::Duration;

use super::ConfigError;
use super::settings::Vars;

/// How endpoints are chosen and judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BalancerSettings {
    pub mode: BalanceMode,
    /// RTT assumed of an endpoint with no measurement yet.
    pub default_rtt: Duration,
    /// How fast old latency measurements are forgotten.
    pub decay: Duration,
    /// Consecutive failures that eject an endpoint.
    pub failure_threshold: u32,
    /// First ejection's penalty; each failed probe doubles it, up to `max_penalty`.
    pub base_penalty: Duration,
    pub max_penalty: Duration,
}

impl Default for BalancerSettings {
    /// Linkerd's defaults: 30 ms default RTT, 10 s decay, 7 consecutive
    /// failures, 1 s to 1 min penalties.
    fn default() -> Self {
        Self {
            mode: BalanceMode::PeakEwma,
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
            failure_threshold: 7,
            base_penalty: Duration::from_secs(1),
            max_penalty: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BalanceMode {
    /// Power of two choices over peak-EWMA latency times requests in flight.
    PeakEwma,
    RoundRobin,
}

impl std::str::FromStr for BalanceMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "p2c-ewma" | "peak-ewma" => Ok(BalanceMode::PeakEwma),
            "round-robin" => Ok(BalanceMode::RoundRobin),
            _ => Err("not a balancer".into()),
        }
    }
}

impl BalancerSettings {
    pub(super) fn load(v: &Vars) -> Result<Self, ConfigError> {
        let mode = v.get("WEFT_PROXY_BALANCER").parse().map_err(|_| {
            v.invalid(
                "WEFT_PROXY_BALANCER",
                "not a balancer",
                "p2c-ewma or round-robin",
            )
        })?;
        let failure_threshold = match v.get("WEFT_PROXY_FAILURE_ACCRUAL").trim().parse::<u32>() {
            Ok(0) => u32::MAX,
            Ok(n) => n,
            Err(_) => {
                return Err(v.invalid(
                    "WEFT_PROXY_FAILURE_ACCRUAL",
                    "not a whole number",
                    "consecutive failures before ejection, e.g. 7 (0: never eject)",
                ));
            }
        };
        Ok(Self {
            mode,
            failure_threshold,
            ..Default::default()
        })
    }
}
