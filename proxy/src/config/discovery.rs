//! Who this proxy serves, and where its config comes from: the
//! controller's discovery feed, a static file, or neither (pass-through).

use std::path::PathBuf;
use std::time::Duration;

use super::ConfigError;
use super::settings::Vars;

/// Who this proxy serves (set by the injector from the downward API).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    pub namespace: Option<String>,
    pub pod_name: Option<String>,
    pub service_account: Option<String>,
    /// The node the pod runs on, told to the controller.
    pub node_name: Option<String>,
}

impl Workload {
    pub(super) fn load(v: &Vars) -> Self {
        Self {
            namespace: v.opt("WEFT_PROXY_NAMESPACE"),
            pod_name: v.opt("WEFT_PROXY_POD_NAME"),
            service_account: v.opt("WEFT_PROXY_SERVICE_ACCOUNT"),
            node_name: v.opt("WEFT_PROXY_NODE_NAME"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovery {
    /// The controller's discovery address (host:port).
    pub controller_addr: Option<String>,
    /// A static config file, used when there is no controller.
    pub config_file: Option<PathBuf>,
    /// How long the first connection to a new destination waits for its
    /// config before it is forwarded as addressed.
    pub wait: Duration,
}

impl Discovery {
    pub(super) fn load(v: &Vars) -> Result<Self, ConfigError> {
        let controller_addr = v.opt("WEFT_PROXY_CONTROLLER_ADDR");
        if let Some(a) = &controller_addr
            && a.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(v.invalid(
                "WEFT_PROXY_CONTROLLER_ADDR",
                "not host:port",
                "the controller's discovery address, e.g. weft-controller.weft.svc:8086",
            ));
        }
        let config_file = v.opt("WEFT_PROXY_CONFIG").map(PathBuf::from);
        if controller_addr.is_some() && config_file.is_some() {
            return Err(ConfigError::ControllerAndFile);
        }
        Ok(Self {
            controller_addr,
            config_file,
            wait: v.duration("WEFT_PROXY_DISCOVERY_WAIT")?,
        })
    }
}
