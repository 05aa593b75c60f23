//! A static config file (`WEFT_PROXY_CONFIG`): the same model as the feed,
//! as YAML, for running without a controller.
//!
//! ```yaml
//! destinations:
//!   "198.19.0.10:80": { service: {namespace: shop, name: web}, port: 80, routes: [...] }
//! inbound: { defaultPolicy: all-unauthenticated }
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use weft_proto::model::{Body, Destination, InboundPolicy, Key};

use super::client::resolved;
use super::store::Update;
use crate::routing;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    #[serde(default)]
    pub destinations: BTreeMap<String, Destination>,
    #[serde(default)]
    pub inbound: Option<InboundPolicy>,
}

/// Reads and validates the file; `pod` ("namespace/name") keys the inbound policy.
pub fn load(
    path: &Path,
    pod: Option<&str>,
    routing: &routing::State,
) -> Result<Vec<Update>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let config: StaticConfig =
        serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut updates = Vec::new();
    for (dest, d) in config.destinations {
        let key = Key::Destination(dest);
        let value = resolved(&key, Body::Destination(d), routing)
            .map_err(|e| format!("{}: {key}: {e}", path.display()))?;
        updates.push((key, "static".to_string(), value));
    }
    if let (Some(inbound), Some(pod)) = (config.inbound, pod) {
        let key = Key::Inbound(pod.to_string());
        updates.push((
            key.clone(),
            "static".to_string(),
            resolved(&key, Body::Inbound(inbound), routing)?,
        ));
    }
    Ok(updates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_destinations_and_refuses_unknown_fields() {
        let dir = std::env::temp_dir().join(format!("weft-static-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.yaml");
        std::fs::write(
            &path,
            r#"
destinations:
  "198.19.0.10:80":
    service: {namespace: shop, name: web}
    port: 80
    routes:
    - name: default
      backends:
      - service: {namespace: shop, name: web}
        weight: 1
        endpoints: [{address: "198.18.0.3:8080"}]
inbound: {defaultPolicy: deny}
"#,
        )
        .unwrap();
        let updates = load(&path, Some("shop/web-1"), &routing::State::default()).unwrap();
        assert_eq!(updates.len(), 2);
        std::fs::write(&path, "destinatons: {}").unwrap();
        assert!(
            load(&path, None, &routing::State::default())
                .unwrap_err()
                .contains("unknown field")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
