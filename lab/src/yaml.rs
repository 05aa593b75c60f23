//! Kubernetes objects as the controller's directory source reads them, for
//! tests that build a mesh (namespace `shop`).

/// A Service `shop/<name>` at cluster IP `ip`, port `port` -> `target`,
/// selecting pods labelled `app: <app>`.
pub fn service(name: &str, ip: &str, port: u16, target: u16, app: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{clusterIP: {ip}, selector: {{app: {app}}}, ports: [{{port: {port}, targetPort: {target}}}]}}\n"
    )
}

/// A meshed, running Pod `shop/<name>` labelled `app: <app>`, running as
/// service account `sa`, at `ip`.
pub fn pod(name: &str, app: &str, sa: &str, ip: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: {app}}}, annotations: {{weft.dev/proxy-version: test}}}}\nspec: {{serviceAccountName: {sa}, containers: [{{name: app, image: x}}]}}\nstatus: {{podIP: {ip}, phase: Running}}\n"
    )
}

/// A Service `shop/<name>` at cluster IP `ip`, port 80 (`http`) -> 8080,
/// selecting pods by `selector` (YAML map entries, e.g. `app: web`).
pub fn http_service(name: &str, ip: &str, selector: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{clusterIP: {ip}, selector: {{{selector}}}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n"
    )
}

/// A meshed, running Pod `shop/<name>` with `labels` (YAML map entries),
/// at `ip`.
pub fn labelled_pod(name: &str, labels: &str, ip: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{{labels}}}, annotations: {{weft.dev/proxy-version: test}}}}\nspec: {{containers: [{{name: app, image: x}}]}}\nstatus: {{podIP: {ip}, phase: Running}}\n"
    )
}

/// The SPIFFE ID of service account `shop/<sa>`.
pub fn id(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/shop/sa/{sa}")
}

pub const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";
