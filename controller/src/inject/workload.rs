//! Workloads in YAML: where each kind keeps its pod template, and editing a
//! multi-document stream so that only the documents that change are
//! rewritten; every other byte comes out as it went in.

use std::collections::BTreeMap;

use serde_json::Value;

/// The pod (template) of a workload: `{metadata, spec}`, or `None` for a
/// kind that runs no pods.
pub fn pod_template_mut(doc: &mut Value) -> Option<&mut Value> {
    let kind = doc["kind"].as_str()?.to_string();
    match kind.as_str() {
        "Pod" => Some(doc),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => doc.get_mut("spec")?.get_mut("template"),
        "CronJob" => doc
            .get_mut("spec")?
            .get_mut("jobTemplate")?
            .get_mut("spec")?
            .get_mut("template"),
        _ => None,
    }
}

/// What happened to one workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// `Kind/name`.
    pub workload: String,
    /// `None`: changed; `Some(why)`: left alone.
    pub skipped: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("document {index} is not valid YAML: {error}")]
    Yaml { index: usize, error: String },
    #[error("document {index} ({workload}): {error}")]
    Edit {
        index: usize,
        workload: String,
        error: String,
    },
}

/// Applies `edit` to the pod template of every workload in a multi-document
/// YAML stream (a `List`'s items too). `edit` returns `Ok(None)` when it
/// changed the pod, `Ok(Some(why))` when it left it alone. Documents with no
/// workload, or whose workloads were all left alone, are copied verbatim.
pub fn edit_documents(
    text: &str,
    mut edit: impl FnMut(&mut Value) -> Result<Option<String>, String>,
) -> Result<(String, Vec<Outcome>), EditError> {
    let mut out = String::with_capacity(text.len() + 2048);
    let mut outcomes = Vec::new();
    for (index, doc) in split_documents(text).into_iter().enumerate() {
        out.push_str(doc.separator);
        if doc.body.trim().is_empty() || only_comments(doc.body) {
            out.push_str(doc.body);
            continue;
        }
        let mut value: Value = serde_yaml_ng::from_str(doc.body).map_err(|e| EditError::Yaml {
            index,
            error: e.to_string(),
        })?;
        let mut changed = false;
        let mut edit_one = |w: &mut Value| -> Result<(), EditError> {
            let workload = name_of(w);
            let Some(pod) = pod_template_mut(w) else {
                return Ok(());
            };
            let skipped = edit(pod).map_err(|error| EditError::Edit {
                index,
                workload: workload.clone(),
                error,
            })?;
            changed |= skipped.is_none();
            outcomes.push(Outcome { workload, skipped });
            Ok(())
        };
        if value["kind"] == "List" {
            if let Some(items) = value.get_mut("items").and_then(Value::as_array_mut) {
                for item in items {
                    edit_one(item)?;
                }
            }
        } else {
            edit_one(&mut value)?;
        }
        if changed {
            let yaml = serde_yaml_ng::to_string(&value).expect("JSON values serialize as YAML");
            out.push_str(&yaml);
        } else {
            out.push_str(doc.body);
        }
    }
    Ok((out, outcomes))
}

fn name_of(w: &Value) -> String {
    format!(
        "{}/{}",
        w["kind"].as_str().unwrap_or("?"),
        w["metadata"]["name"].as_str().unwrap_or("?")
    )
}

fn only_comments(body: &str) -> bool {
    body.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#')
    })
}

struct Document<'a> {
    /// The `---` line before the document (with its newline), or "".
    separator: &'a str,
    body: &'a str,
}

/// Splits at `---` lines (a separator may carry a comment), keeping every
/// byte: concatenating separators and bodies gives back the input.
fn split_documents(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut separator = "";
    let mut start = 0;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        let is_separator = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t");
        if is_separator {
            docs.push(Document {
                separator,
                body: &text[start..pos],
            });
            separator = &text[pos..pos + line.len()];
            start = pos + line.len();
        }
        pos += line.len();
    }
    docs.push(Document {
        separator,
        body: &text[start..],
    });
    docs
}

/// Namespace annotations when editing files: none (a workload is injected
/// because it was asked to be, not because of its namespace).
pub fn no_namespace() -> BTreeMap<String, String> {
    BTreeMap::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitting_keeps_every_byte() {
        for text in [
            "",
            "a: 1\n",
            "---\na: 1\n---\nb: 2\n",
            "# head\n--- # first\na: 1\n---\n\n---\r\nb: 2",
            "a: '---'\nb: |\n  ---x\n",
        ] {
            let joined: String = split_documents(text)
                .iter()
                .map(|d| format!("{}{}", d.separator, d.body))
                .collect();
            assert_eq!(joined, text);
        }
        assert_eq!(split_documents("a: 1\n---\nb: 2\n").len(), 2);
    }

    #[test]
    fn each_kind_has_its_template() {
        for (kind, path) in [
            ("Deployment", "/spec/template"),
            ("StatefulSet", "/spec/template"),
            ("DaemonSet", "/spec/template"),
            ("Job", "/spec/template"),
            ("CronJob", "/spec/jobTemplate/spec/template"),
        ] {
            let mut full = serde_json::json!({"kind": kind});
            let mut cursor = &mut full;
            for part in path.split('/').skip(1) {
                cursor[part] = serde_json::json!({});
                cursor = &mut cursor[part];
            }
            *cursor = serde_json::json!({"marker": kind});
            assert_eq!(
                pod_template_mut(&mut full).unwrap()["marker"],
                kind,
                "{kind}"
            );
        }
        let mut pod = serde_json::json!({"kind": "Pod", "spec": {}});
        assert!(pod_template_mut(&mut pod).unwrap()["spec"].is_object());
        let mut svc = serde_json::json!({"kind": "Service", "spec": {"template": {}}});
        assert!(pod_template_mut(&mut svc).is_none());
    }
}
