//! Conversion between the SMI versions Weft serves, through v1alpha4 (the
//! storage version), without loss: what an older version cannot say is
//! kept in an annotation and given back when the object returns to a
//! version that can. The API server calls this through the conversion
//! webhook (`POST /convert`); the directory source calls it directly.
//!
//! - TrafficSplit v1alpha1 weights are quantities (`500m`). Whole ones stay
//!   as they are; otherwise the weights become the smallest whole numbers
//!   in the same proportion (`500m`, `1` -> 1, 2). The quantities as
//!   written are kept in [`WEIGHTS`] and given back to v1alpha1 readers
//!   while the weights are unchanged.
//! - TrafficSplit v1alpha1 and v1alpha2 have no `matches`: kept in
//!   [`SPLIT_MATCHES`].
//! - HTTPRouteGroup v1alpha1 and v1alpha2 have their `matches` at the top
//!   level, not under `spec`; v1alpha1's have no `headers`: kept in
//!   [`HEADERS`], by match name.

use serde_json::{Map, Value, json};

use super::quantity;

/// TrafficSplit v1alpha1 weights as written, a JSON list of strings.
pub const WEIGHTS: &str = "split.weft.dev/v1alpha1-weights";
/// TrafficSplit `spec.matches` of an object read as v1alpha1 or v1alpha2.
pub const SPLIT_MATCHES: &str = "split.weft.dev/matches";
/// HTTPRouteGroup match headers of an object read as v1alpha1, by match.
pub const HEADERS: &str = "specs.weft.dev/v1alpha1-headers";

/// The versions served, oldest first; the last is the storage version.
pub const VERSIONS: [&str; 4] = ["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvertError {
    #[error("apiVersion '{0}' is not one Weft serves for {1}")]
    Version(String, String),
    #[error("kind '{0}' has no conversion")]
    Kind(String),
    #[error("spec.backends[{index}].weight: {why}")]
    Weight { index: usize, why: String },
    #[error("the weights cannot be whole numbers below 2^32 in the same proportion")]
    WeightsTooFarApart,
}

/// `obj` (any served version of TrafficSplit or HTTPRouteGroup) as
/// `desired` (an apiVersion such as `split.smi-spec.io/v1alpha1`).
pub fn convert(mut obj: Value, desired: &str) -> Result<Value, ConvertError> {
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    let from = version_of(&obj["apiVersion"], &kind)?;
    let to = version_of(&Value::from(desired), &kind)?;
    if from != to {
        match kind.as_str() {
            "TrafficSplit" => {
                split_to_hub(&mut obj, from)?;
                split_from_hub(&mut obj, to);
            }
            "HTTPRouteGroup" => {
                group_to_hub(&mut obj, from);
                group_from_hub(&mut obj, to);
            }
            other => return Err(ConvertError::Kind(other.to_string())),
        }
    }
    obj["apiVersion"] = Value::from(desired);
    Ok(obj)
}

/// The version part of an apiVersion of `kind`'s group.
fn version_of(api_version: &Value, kind: &str) -> Result<&'static str, ConvertError> {
    let group = match kind {
        "TrafficSplit" => "split.smi-spec.io",
        "HTTPRouteGroup" => "specs.smi-spec.io",
        other => return Err(ConvertError::Kind(other.to_string())),
    };
    let v = api_version.as_str().unwrap_or_default();
    v.strip_prefix(group)
        .and_then(|rest| rest.strip_prefix('/'))
        .and_then(|version| VERSIONS.iter().find(|known| **known == version).copied())
        .ok_or_else(|| ConvertError::Version(v.to_string(), kind.to_string()))
}

fn annotations(obj: &mut Value) -> &mut Map<String, Value> {
    let meta = &mut obj["metadata"];
    if !meta["annotations"].is_object() {
        meta["annotations"] = json!({});
    }
    meta["annotations"]
        .as_object_mut()
        .expect("just made an object")
}

/// Takes annotation `key`, parsed as JSON.
fn take_annotation(obj: &mut Value, key: &str) -> Option<Value> {
    // Through pointers: indexing would add the keys it looks for.
    let a = obj.pointer_mut("/metadata/annotations")?.as_object_mut()?;
    let v = a.remove(key)?;
    if a.is_empty() {
        obj.pointer_mut("/metadata")?
            .as_object_mut()?
            .remove("annotations");
    }
    serde_json::from_str(v.as_str()?).ok()
}

fn put_annotation(obj: &mut Value, key: &str, v: &Value) {
    annotations(obj).insert(key.to_string(), Value::from(v.to_string()));
}

fn split_to_hub(obj: &mut Value, from: &str) -> Result<(), ConvertError> {
    if matches!(from, "v1alpha1" | "v1alpha2")
        && let Some(m) = take_annotation(obj, SPLIT_MATCHES)
    {
        obj["spec"]["matches"] = m;
    }
    if from != "v1alpha1" {
        return Ok(());
    }
    let literals: Vec<Value> = obj["spec"]["backends"]
        .as_array()
        .map(|bs| bs.iter().map(|b| b["weight"].clone()).collect())
        .unwrap_or_default();
    let weights = whole_weights(&literals)?;
    let unchanged = literals.iter().zip(&weights).all(|(l, w)| {
        l.as_u64() == Some(u64::from(*w)) || l.as_str() == Some(w.to_string().as_str())
    });
    if let Some(bs) = obj["spec"]["backends"].as_array_mut() {
        for (b, w) in bs.iter_mut().zip(&weights) {
            b["weight"] = Value::from(*w);
        }
    }
    take_annotation(obj, WEIGHTS);
    if !unchanged {
        let written: Vec<Value> = literals.iter().map(literal).collect();
        put_annotation(obj, WEIGHTS, &Value::from(written));
    }
    Ok(())
}

fn split_from_hub(obj: &mut Value, to: &str) {
    if !matches!(to, "v1alpha1" | "v1alpha2") {
        return;
    }
    let matches = obj
        .pointer_mut("/spec")
        .and_then(Value::as_object_mut)
        .and_then(|s| s.remove("matches"));
    match matches {
        Some(m) if m.as_array().is_some_and(|a| !a.is_empty()) => {
            put_annotation(obj, SPLIT_MATCHES, &m)
        }
        _ => {
            take_annotation(obj, SPLIT_MATCHES);
        }
    }
    if to != "v1alpha1" {
        return;
    }
    let weights: Vec<u64> = obj["spec"]["backends"]
        .as_array()
        .map(|bs| {
            bs.iter()
                .map(|b| b["weight"].as_u64().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default();
    // The quantities as written, while they still say these weights (the
    // object then carries them itself: the annotation goes).
    let written = take_annotation(obj, WEIGHTS)
        .and_then(|v| serde_json::from_value::<Vec<Value>>(v).ok())
        .filter(|w| {
            w.len() == weights.len()
                && whole_weights(w)
                    .is_ok_and(|ws| ws.iter().map(|x| u64::from(*x)).eq(weights.iter().copied()))
        });
    if let Some(bs) = obj["spec"]["backends"].as_array_mut() {
        for (i, b) in bs.iter_mut().enumerate() {
            b["weight"] = match &written {
                Some(w) => w[i].clone(),
                None => Value::from(weights[i].to_string()),
            };
        }
    }
}

/// A weight as written: the string of a quantity, or a JSON number.
fn literal(v: &Value) -> Value {
    match v {
        Value::Number(n) => Value::from(n.to_string()),
        other => other.clone(),
    }
}

/// v1alpha1 weights (quantities) as whole numbers in the same proportion:
/// unchanged when they are whole already, else the smallest such.
fn whole_weights(literals: &[Value]) -> Result<Vec<u32>, ConvertError> {
    const UNIT: i128 = 1_000_000_000;
    let nanos = literals
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let q = match v {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.clone(),
                _ => String::new(),
            };
            quantity::nanos(&q).map_err(|why| ConvertError::Weight { index, why })
        })
        .collect::<Result<Vec<i128>, _>>()?;
    let divisor = if nanos.iter().all(|n| n % UNIT == 0) {
        UNIT
    } else {
        nanos.iter().fold(0, |g, n| gcd(g, *n)).max(1)
    };
    nanos
        .iter()
        .map(|n| u32::try_from(n / divisor).map_err(|_| ConvertError::WeightsTooFarApart))
        .collect()
}

fn gcd(a: i128, b: i128) -> i128 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn group_to_hub(obj: &mut Value, from: &str) {
    if !matches!(from, "v1alpha1" | "v1alpha2") {
        return;
    }
    let matches = obj
        .as_object_mut()
        .and_then(|o| o.remove("matches"))
        .unwrap_or_else(|| json!([]));
    obj["spec"] = json!({ "matches": matches });
    if from == "v1alpha1"
        && let Some(Value::Object(headers)) = take_annotation(obj, HEADERS)
        && let Some(ms) = obj["spec"]["matches"].as_array_mut()
    {
        for m in ms {
            let name = m["name"].as_str().unwrap_or_default();
            if let Some(h) = headers.get(name) {
                m["headers"] = h.clone();
            }
        }
    }
}

fn group_from_hub(obj: &mut Value, to: &str) {
    if !matches!(to, "v1alpha1" | "v1alpha2") {
        return;
    }
    let mut matches = obj
        .as_object_mut()
        .and_then(|o| o.remove("spec"))
        .map(|mut s| s["matches"].take())
        .unwrap_or_else(|| json!([]));
    if to == "v1alpha1" {
        let mut headers = Map::new();
        for m in matches.as_array_mut().into_iter().flatten() {
            if let Some(h) = m.as_object_mut().and_then(|m| m.remove("headers")) {
                let name = m["name"].as_str().unwrap_or_default().to_string();
                headers.insert(name, h);
            }
        }
        take_annotation(obj, HEADERS);
        if !headers.is_empty() {
            put_annotation(obj, HEADERS, &Value::Object(headers));
        }
    }
    obj["matches"] = matches;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(version: &str, weights: Value, matches: Option<Value>) -> Value {
        let mut o = json!({
            "apiVersion": format!("split.smi-spec.io/{version}"),
            "kind": "TrafficSplit",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"service": "web", "backends": [
                {"service": "web-v1", "weight": weights[0]},
                {"service": "web-v2", "weight": weights[1]},
            ]},
        });
        if let Some(m) = matches {
            o["spec"]["matches"] = m;
        }
        o
    }

    fn weights(o: &Value) -> Vec<Value> {
        o["spec"]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["weight"].clone())
            .collect()
    }

    fn to(o: &Value, version: &str) -> Value {
        let group = if o["kind"] == "TrafficSplit" {
            "split.smi-spec.io"
        } else {
            "specs.smi-spec.io"
        };
        convert(o.clone(), &format!("{group}/{version}")).unwrap()
    }

    #[test]
    fn v1alpha1_quantities_keep_their_proportion_and_come_back_as_written() {
        let v1 = split("v1alpha1", json!(["500m", "1"]), None);
        let hub = to(&v1, "v1alpha4");
        assert_eq!(weights(&hub), [json!(1), json!(2)]);
        assert_eq!(to(&hub, "v1alpha1"), v1, "v1alpha1 -> v1alpha4 -> v1alpha1");
        // Whole quantities (as Flagger's linkerd provider writes them) stay.
        let flagger = split("v1alpha1", json!(["90", "10"]), None);
        let hub = to(&flagger, "v1alpha4");
        assert_eq!(weights(&hub), [json!(90), json!(10)]);
        assert!(hub["metadata"].get("annotations").is_none(), "{hub}");
        assert_eq!(to(&hub, "v1alpha1"), flagger);
    }

    #[test]
    fn weights_changed_in_a_newer_version_are_not_overridden_by_what_was_written() {
        let v1 = split("v1alpha1", json!(["500m", "500m"]), None);
        let mut hub = to(&v1, "v1alpha4");
        assert_eq!(weights(&hub), [json!(1), json!(1)]);
        hub["spec"]["backends"][0]["weight"] = json!(3);
        let back = to(&hub, "v1alpha1");
        assert_eq!(weights(&back), [json!("3"), json!("1")]);
    }

    #[test]
    fn matches_survive_a_trip_through_versions_without_them() {
        let m = json!([{"kind": "HTTPRouteGroup", "name": "ab"}]);
        let v4 = split("v1alpha4", json!([90, 10]), Some(m.clone()));
        for old in ["v1alpha1", "v1alpha2"] {
            let down = to(&v4, old);
            assert!(down["spec"].get("matches").is_none(), "{old}: {down}");
            let up = to(&down, "v1alpha3");
            assert_eq!(up["spec"]["matches"], m, "{old}");
            assert_eq!(to(&up, "v1alpha4"), v4, "{old}: nothing lost");
        }
    }

    #[test]
    fn every_version_round_trips_through_every_other() {
        let objects = [
            split("v1alpha1", json!(["1500m", "250m"]), None),
            split("v1alpha2", json!([0, 100]), None),
            split(
                "v1alpha3",
                json!([1, 4]),
                Some(json!([{"kind": "HTTPRouteGroup", "name": "x"}])),
            ),
            route_group("v1alpha1", false),
            route_group("v1alpha2", true),
            route_group("v1alpha4", true),
        ];
        for o in objects {
            let start = o["apiVersion"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap();
            for v in VERSIONS {
                let back = to(&to(&o, v), start);
                assert_eq!(back, o, "{start} -> {v} -> {start}");
            }
        }
    }

    fn route_group(version: &str, headers: bool) -> Value {
        let mut m = json!({"name": "android", "pathRegex": "/api/.*", "methods": ["GET"]});
        if headers {
            m["headers"] = json!([{"user-agent": ".*Android.*"}]);
        }
        let mut o = json!({
            "apiVersion": format!("specs.smi-spec.io/{version}"),
            "kind": "HTTPRouteGroup",
            "metadata": {"name": "ab", "namespace": "shop"},
        });
        if matches!(version, "v1alpha1" | "v1alpha2") {
            o["matches"] = json!([m]);
        } else {
            o["spec"] = json!({"matches": [m]});
        }
        o
    }

    #[test]
    fn route_group_matches_move_under_spec_and_v1alpha1_keeps_no_headers() {
        let v4 = route_group("v1alpha4", true);
        let v1 = to(&v4, "v1alpha1");
        assert!(v1.get("spec").is_none());
        assert!(v1["matches"][0].get("headers").is_none());
        assert_eq!(to(&v1, "v1alpha4"), v4, "the headers come back");
        let v2 = to(&v4, "v1alpha2");
        assert_eq!(
            v2["matches"][0]["headers"],
            json!([{"user-agent": ".*Android.*"}])
        );
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let v1 = split("v1alpha1", json!(["-1", "1"]), None);
        assert!(matches!(
            convert(v1, "split.smi-spec.io/v1alpha4"),
            Err(ConvertError::Weight { index: 0, .. })
        ));
        let v9 = split("v9", json!([1, 1]), None);
        assert!(matches!(
            convert(v9, "split.smi-spec.io/v1alpha4"),
            Err(ConvertError::Version(..))
        ));
        let apart = split("v1alpha1", json!(["1n", "100E"]), None);
        assert_eq!(
            convert(apart, "split.smi-spec.io/v1alpha4"),
            Err(ConvertError::WeightsTooFarApart)
        );
    }
}
