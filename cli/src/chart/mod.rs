//! The Helm chart (charts/weft), embedded and rendered without Helm: the
//! same templates `helm install` renders, with Go's template language from
//! gtmpl plus the few Helm functions the chart uses (funcs.rs). docs/install.md
//! lists the subset the templates keep to so both render alike.

mod funcs;
pub mod values;

use std::collections::HashMap;

use gtmpl::{Context, Template};
use gtmpl_value::Value as TValue;
use serde_json::Value;

pub use values::{ValuesError, default_values, merge, set_path, validate};

pub const CHART_YAML: &str = include_str!("../../../charts/weft/Chart.yaml");
pub const VALUES_YAML: &str = include_str!("../../../charts/weft/values.yaml");
pub const SCHEMA_JSON: &str = include_str!("../../../charts/weft/values.schema.json");

/// Every template, by file name (a test checks none is missing).
pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "serviceaccount.yaml",
        include_str!("../../../charts/weft/templates/serviceaccount.yaml"),
    ),
    (
        "rbac.yaml",
        include_str!("../../../charts/weft/templates/rbac.yaml"),
    ),
    (
        "secrets.yaml",
        include_str!("../../../charts/weft/templates/secrets.yaml"),
    ),
    (
        "injector-config.yaml",
        include_str!("../../../charts/weft/templates/injector-config.yaml"),
    ),
    (
        "services.yaml",
        include_str!("../../../charts/weft/templates/services.yaml"),
    ),
    (
        "controller.yaml",
        include_str!("../../../charts/weft/templates/controller.yaml"),
    ),
    (
        "pdb.yaml",
        include_str!("../../../charts/weft/templates/pdb.yaml"),
    ),
    (
        "webhook.yaml",
        include_str!("../../../charts/weft/templates/webhook.yaml"),
    ),
    (
        "prometheus.yaml",
        include_str!("../../../charts/weft/templates/prometheus.yaml"),
    ),
];

/// The CRDs (charts/weft/crds, generated from the controller's types).
pub const CRDS: &[(&str, &str)] = &[
    (
        "trafficsplits.split.smi-spec.io.yaml",
        include_str!("../../../charts/weft/crds/trafficsplits.split.smi-spec.io.yaml"),
    ),
    (
        "httproutegroups.specs.smi-spec.io.yaml",
        include_str!("../../../charts/weft/crds/httproutegroups.specs.smi-spec.io.yaml"),
    ),
    (
        "retrypolicies.weft.dev.yaml",
        include_str!("../../../charts/weft/crds/retrypolicies.weft.dev.yaml"),
    ),
    (
        "authorizationpolicies.weft.dev.yaml",
        include_str!("../../../charts/weft/crds/authorizationpolicies.weft.dev.yaml"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Values(#[from] ValuesError),
    #[error("templates/{file}: {error}")]
    Template { file: &'static str, error: String },
    #[error(
        "templates/{file}: uses a value that values.yaml does not define (rendered '<no value>')"
    )]
    MissingValue { file: &'static str },
}

/// Who the manifests are for: Helm's `.Release`.
#[derive(Clone, Debug)]
pub struct Release {
    pub name: String,
    pub namespace: String,
}

/// One rendered template.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// `weft/templates/<file>` or `weft/crds/<file>`, as Helm names sources.
    pub source: String,
    pub text: String,
}

/// Renders every template with `values` (already merged over the chart's
/// defaults and validated against the schema). Templates that render to
/// nothing but comments are left out, as Helm leaves out empty ones.
pub fn render(values: &Value, release: &Release) -> Result<Vec<Manifest>, RenderError> {
    validate(values)?;
    let chart: Value = serde_yaml_ng::from_str(CHART_YAML).expect("Chart.yaml is valid YAML");
    let root = serde_json::json!({
        "Values": values,
        "Release": {"Name": release.name, "Namespace": release.namespace, "Service": "Helm"},
        "Chart": {
            "Name": chart["name"],
            "Version": chart["version"],
            "AppVersion": chart["appVersion"],
        },
    });
    let root = to_template_value(&root);
    let mut out = Vec::new();
    for (file, text) in TEMPLATES {
        let mut t = Template::default();
        t.add_funcs(funcs::HELM);
        t.parse(*text).map_err(|e| RenderError::Template {
            file,
            error: e.to_string(),
        })?;
        let rendered =
            t.render(&Context::from(root.clone()))
                .map_err(|e| RenderError::Template {
                    file,
                    error: e.to_string(),
                })?;
        if rendered.contains("<no value>") {
            return Err(RenderError::MissingValue { file });
        }
        let meaningful = rendered.lines().any(|l| {
            let l = l.trim();
            !l.is_empty() && !l.starts_with('#') && l != "---"
        });
        if meaningful {
            out.push(Manifest {
                source: format!("weft/templates/{file}"),
                text: rendered,
            });
        }
    }
    Ok(out)
}

/// The CRDs as manifests (Helm installs them from crds/ before the rest).
pub fn crds() -> Vec<Manifest> {
    CRDS.iter()
        .map(|(file, text)| Manifest {
            source: format!("weft/crds/{file}"),
            text: text.to_string(),
        })
        .collect()
}

/// Manifests as one multi-document stream, each headed like Helm's
/// `# Source:` comment.
pub fn to_stream(manifests: &[Manifest]) -> String {
    let mut s = String::new();
    for m in manifests {
        s.push_str("---\n# Source: ");
        s.push_str(&m.source);
        s.push('\n');
        s.push_str(m.text.trim_start_matches('\n'));
        if !s.ends_with('\n') {
            s.push('\n');
        }
    }
    s
}

/// JSON to the template engine's values (objects become maps, so a missing
/// key reads as "no value", as in Go).
fn to_template_value(v: &Value) -> TValue {
    match v {
        Value::Null => TValue::Nil,
        Value::Bool(b) => TValue::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => TValue::from(u),
            (_, Some(i), _) => TValue::from(i),
            (_, _, f) => TValue::from(f.unwrap_or_default()),
        },
        Value::String(s) => TValue::String(s.clone()),
        Value::Array(a) => TValue::Array(a.iter().map(to_template_value).collect()),
        Value::Object(o) => TValue::Map(
            o.iter()
                .map(|(k, v)| (k.clone(), to_template_value(v)))
                .collect::<HashMap<_, _>>(),
        ),
    }
}

/// The template engine's values back to JSON, with map keys sorted (as Go's
/// YAML encoder writes them).
fn from_template_value(v: &TValue) -> Value {
    match v {
        TValue::NoValue | TValue::Nil | TValue::Function(_) => Value::Null,
        TValue::Bool(b) => Value::Bool(*b),
        TValue::String(s) => Value::String(s.clone()),
        TValue::Number(n) => {
            if let Some(u) = n.as_u64() {
                u.into()
            } else if let Some(i) = n.as_i64() {
                i.into()
            } else {
                n.as_f64().map(Value::from).unwrap_or(Value::Null)
            }
        }
        TValue::Array(a) => Value::Array(a.iter().map(from_template_value).collect()),
        TValue::Map(m) | TValue::Object(m) => {
            let mut keys: Vec<_> = m.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), from_template_value(&m[k])))
                    .collect(),
            )
        }
    }
}
