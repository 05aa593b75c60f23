//! Chart values: the defaults (values.yaml), overrides merged over them as
//! Helm merges `-f` files and `--set`, and the schema check Helm runs at
//! install.

use serde_json::Value;

use super::{SCHEMA_JSON, VALUES_YAML};

#[derive(Debug, thiserror::Error)]
pub enum ValuesError {
    #[error("values do not match values.schema.json:\n{}", .0.join("\n"))]
    Schema(Vec<String>),
    #[error("--set {0}: expected key.path=value")]
    BadSet(String),
    #[error("{path}: {problem}")]
    Path { path: String, problem: String },
}

/// values.yaml as JSON.
pub fn default_values() -> Value {
    serde_yaml_ng::from_str(VALUES_YAML).expect("values.yaml is valid YAML")
}

/// Merges `overlay` into `base`: maps key by key, anything else replaced.
pub fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Sets `a.b.c` to `value`, creating maps on the way.
pub fn set_path(values: &mut Value, path: &str, value: Value) -> Result<(), ValuesError> {
    let mut cursor = values;
    let parts: Vec<&str> = path.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(ValuesError::Path {
            path: path.into(),
            problem: "empty key".into(),
        });
    }
    for (i, part) in parts.iter().enumerate() {
        let obj = cursor.as_object_mut().ok_or_else(|| ValuesError::Path {
            path: path.into(),
            problem: format!("{} is not a map", parts[..i].join(".")),
        })?;
        if i + 1 == parts.len() {
            obj.insert(part.to_string(), value);
            return Ok(());
        }
        cursor = obj
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Default::default()));
    }
    unreachable!("the loop returns at the last part")
}

/// `key.path=value` as `--set` reads it: the value is a YAML scalar
/// (`2` a number, `true` a boolean, anything else a string).
pub fn parse_set(arg: &str) -> Result<(String, Value), ValuesError> {
    let (path, raw) = arg
        .split_once('=')
        .ok_or_else(|| ValuesError::BadSet(arg.into()))?;
    let value = match serde_yaml_ng::from_str::<Value>(raw) {
        Ok(v @ (Value::Bool(_) | Value::Number(_))) => v,
        Ok(Value::Null) if raw == "null" => Value::Null,
        _ => Value::String(raw.to_string()),
    };
    Ok((path.to_string(), value))
}

/// Checks values against values.schema.json; every problem is listed with
/// the value's path.
pub fn validate(values: &Value) -> Result<(), ValuesError> {
    let schema: Value = serde_json::from_str(SCHEMA_JSON).expect("values.schema.json is JSON");
    let validator =
        jsonschema::validator_for(&schema).expect("values.schema.json is a valid schema");
    let problems: Vec<String> = validator
        .iter_errors(values)
        .map(|e| {
            let at = e.instance_path().to_string();
            let at = if at.is_empty() {
                "(root)".to_string()
            } else {
                at.trim_start_matches('/').replace('/', ".")
            };
            format!("- {at}: {e}")
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ValuesError::Schema(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merging_and_setting_follow_helm() {
        let mut v = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge(&mut v, json!({"a": {"c": 3}, "l": [9]}));
        assert_eq!(v, json!({"a": {"b": 1, "c": 3}, "l": [9]}));
        set_path(&mut v, "a.d.e", json!("x")).unwrap();
        assert_eq!(v["a"]["d"]["e"], "x");
        assert!(
            set_path(&mut v, "a.b.c", json!(1)).is_err(),
            "a.b is a number"
        );
        assert_eq!(parse_set("x.y=2").unwrap(), ("x.y".into(), json!(2)));
        assert_eq!(parse_set("x=true").unwrap().1, json!(true));
        assert_eq!(parse_set("x=100m").unwrap().1, json!("100m"));
        assert_eq!(parse_set("x=a=b").unwrap().1, json!("a=b"));
        assert!(parse_set("novalue").is_err());
    }

    #[test]
    fn the_defaults_pass_the_schema_and_bad_values_do_not() {
        validate(&default_values()).unwrap();
        let mut bad = default_values();
        set_path(&mut bad, "controller.replicas", json!(0)).unwrap();
        set_path(&mut bad, "webhook.failurePolicy", json!("Sometimes")).unwrap();
        set_path(&mut bad, "controller.replica", json!(2)).unwrap();
        let e = validate(&bad).unwrap_err().to_string();
        assert!(e.contains("controller.replicas"), "{e}");
        assert!(e.contains("webhook.failurePolicy"), "{e}");
        assert!(e.contains("replica"), "a misspelt key is named: {e}");
    }
}
