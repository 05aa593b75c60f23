//! The Helm (sprig) functions the chart uses, with Go's argument order: in
//! `x | f a`, `x` is the last argument.

use base64::Engine;
use gtmpl::FuncError;
use gtmpl_value::{Func, Value};

use super::from_template_value;

pub const HELM: &[(&str, Func)] = &[
    ("quote", quote),
    ("default", default),
    ("toYaml", to_yaml),
    ("indent", indent),
    ("nindent", nindent),
    ("b64enc", b64enc),
    ("required", required),
    ("trimSuffix", trim_suffix),
];

fn text(v: &Value) -> String {
    match v {
        Value::NoValue | Value::Nil => String::new(),
        other => other.to_string(),
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::NoValue | Value::Nil => false,
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Map(m) | Value::Object(m) => !m.is_empty(),
        Value::Number(n) => n
            .as_f64()
            .map(|f| f != 0.0)
            .or(n.as_u64().map(|u| u != 0))
            .unwrap_or(true),
        Value::Function(_) => true,
    }
}

fn exactly(name: &str, args: &[Value], n: usize) -> Result<(), FuncError> {
    if args.len() == n {
        Ok(())
    } else {
        Err(FuncError::ExactlyXArgs(name.into(), n))
    }
}

fn count(name: &str, v: &Value) -> Result<usize, FuncError> {
    match v {
        Value::Number(n) => n.as_u64().map(|u| u as usize),
        _ => None,
    }
    .ok_or_else(|| FuncError::Generic(format!("{name}: the count must be a number, not {v}")))
}

/// Go's strconv.Quote for the characters YAML values meet.
fn quote(args: &[Value]) -> Result<Value, FuncError> {
    let quoted: Vec<String> = args
        .iter()
        .filter(|v| !matches!(v, Value::Nil | Value::NoValue))
        .map(|v| {
            let mut s = String::from("\"");
            for c in text(v).chars() {
                match c {
                    '"' => s.push_str("\\\""),
                    '\\' => s.push_str("\\\\"),
                    '\n' => s.push_str("\\n"),
                    '\t' => s.push_str("\\t"),
                    '\r' => s.push_str("\\r"),
                    c if (c as u32) < 0x20 => s.push_str(&format!("\\x{:02x}", c as u32)),
                    c => s.push(c),
                }
            }
            s.push('"');
            s
        })
        .collect();
    Ok(Value::String(quoted.join(" ")))
}

fn default(args: &[Value]) -> Result<Value, FuncError> {
    match args {
        [fallback] => Ok(fallback.clone()),
        [fallback, given] => Ok(if truthy(given) {
            given.clone()
        } else {
            fallback.clone()
        }),
        _ => Err(FuncError::AtLeastXArgs("default".into(), 1)),
    }
}

/// Helm's toYaml: keys sorted, no trailing newline.
fn to_yaml(args: &[Value]) -> Result<Value, FuncError> {
    exactly("toYaml", args, 1)?;
    let json = from_template_value(&args[0]);
    let yaml = serde_yaml_ng::to_string(&json).map_err(|e| FuncError::Generic(e.to_string()))?;
    Ok(Value::String(yaml.trim_end_matches('\n').to_string()))
}

fn indent_by(n: usize, s: &str) -> String {
    let pad = " ".repeat(n);
    s.split('\n')
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn indent(args: &[Value]) -> Result<Value, FuncError> {
    exactly("indent", args, 2)?;
    Ok(Value::String(indent_by(
        count("indent", &args[0])?,
        &text(&args[1]),
    )))
}

fn nindent(args: &[Value]) -> Result<Value, FuncError> {
    exactly("nindent", args, 2)?;
    Ok(Value::String(format!(
        "\n{}",
        indent_by(count("nindent", &args[0])?, &text(&args[1]))
    )))
}

fn b64enc(args: &[Value]) -> Result<Value, FuncError> {
    exactly("b64enc", args, 1)?;
    Ok(Value::String(
        base64::engine::general_purpose::STANDARD.encode(text(&args[0])),
    ))
}

/// `required "message" value`: the message is the render error.
fn required(args: &[Value]) -> Result<Value, FuncError> {
    exactly("required", args, 2)?;
    match &args[1] {
        Value::NoValue | Value::Nil => Err(FuncError::Generic(text(&args[0]))),
        Value::String(s) if s.is_empty() => Err(FuncError::Generic(text(&args[0]))),
        v => Ok(v.clone()),
    }
}

fn trim_suffix(args: &[Value]) -> Result<Value, FuncError> {
    exactly("trimSuffix", args, 2)?;
    let (suffix, s) = (text(&args[0]), text(&args[1]));
    Ok(Value::String(
        s.strip_suffix(suffix.as_str()).unwrap_or(&s).to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Value {
        Value::String(v.into())
    }

    #[test]
    fn functions_behave_like_sprig() {
        assert_eq!(quote(&[s("a\"b\\c")]).unwrap(), s("\"a\\\"b\\\\c\""));
        assert_eq!(default(&[s("x"), s("")]).unwrap(), s("x"));
        assert_eq!(default(&[s("x"), s("y")]).unwrap(), s("y"));
        assert_eq!(default(&[s("x"), Value::NoValue]).unwrap(), s("x"));
        assert_eq!(
            nindent(&[Value::from(2u64), s("a: 1\nb: 2")]).unwrap(),
            s("\n  a: 1\n  b: 2")
        );
        assert_eq!(indent(&[Value::from(4u64), s("a")]).unwrap(), s("    a"));
        assert_eq!(b64enc(&[s("hi")]).unwrap(), s("aGk="));
        assert_eq!(trim_suffix(&[s("/"), s("reg/")]).unwrap(), s("reg"));
        assert_eq!(required(&[s("need x"), s("v")]).unwrap(), s("v"));
        let e = required(&[s("need x"), s("")]).unwrap_err();
        assert_eq!(e.to_string(), "need x");
        let map: std::collections::HashMap<String, Value> = [
            ("b".to_string(), Value::from(1u64)),
            ("a".to_string(), s("x")),
        ]
        .into();
        assert_eq!(to_yaml(&[Value::Map(map)]).unwrap(), s("a: x\nb: 1"));
    }
}
