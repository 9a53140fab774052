//! `llmembed params [KIND] [--json]`: what each stage kind takes, from the JSON Schema of its
//! params type (`StageKind::params_schema`), so that the listing cannot drift from what the
//! runner validates with. `--json` gives a JSON Schema of whole pipeline files, for editors.

use anyhow::{Result, bail};
use serde_json::{Map, Value, json};

use crate::registry::{self, StageKind};

/// One param of a stage kind, as listed.
#[derive(Debug, PartialEq)]
pub struct ParamInfo {
    pub name: String,
    /// A short type: `integer`, `string`, `array of number`, `"all" | array of integer`, ...
    pub ty: String,
    /// The default, as JSON; `None` when the param is required.
    pub default: Option<Value>,
    /// The first line of the field's doc comment.
    pub help: String,
}

/// The params of `kind`, in the schema's order (the struct's field order).
pub fn params_of(kind: &dyn StageKind) -> Vec<ParamInfo> {
    let schema = kind.params_schema().to_value();
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = schema["properties"].as_object() else {
        return Vec::new();
    };
    props
        .iter()
        .map(|(name, p)| ParamInfo {
            name: name.clone(),
            ty: type_of(p),
            default: if required.contains(&name.as_str()) {
                None
            } else {
                Some(p.get("default").cloned().unwrap_or(Value::Null))
            },
            help: p["description"]
                .as_str()
                .and_then(|d| d.lines().next())
                .unwrap_or("")
                .to_string(),
        })
        .collect()
}

/// A one-line type for a property schema.
fn type_of(p: &Value) -> String {
    if let Some(c) = p.get("const") {
        return c.to_string();
    }
    if let Some(values) = p.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join(" | ");
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(alts) = p.get(key).and_then(Value::as_array) {
            return alts.iter().map(type_of).collect::<Vec<_>>().join(" | ");
        }
    }
    match &p["type"] {
        Value::String(t) if t == "array" => format!("array of {}", type_of(&p["items"])),
        Value::String(t) => t.clone(),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" | "),
        _ if p.get("properties").is_some() => "map".into(),
        _ => "any".into(),
    }
}

/// Prints the kinds (no `kind`), or one kind's params as a table.
pub fn print(kind: Option<&str>) -> Result<()> {
    let Some(kind) = kind else {
        for k in registry::all() {
            crate::outln!("{:<12} {}", k.kind(), k.inputs());
        }
        crate::outln!("`llmembed params KIND` lists a kind's params.");
        return Ok(());
    };
    let k = find(kind)?;
    for p in params_of(k) {
        let default = match &p.default {
            None => "(required)".to_string(),
            Some(v) => format!("default {v}"),
        };
        crate::outln!("{:<18} {:<28} {default}", p.name, p.ty);
        if !p.help.is_empty() {
            crate::outln!("{:<18} {}", "", p.help);
        }
    }
    Ok(())
}

fn find(kind: &str) -> Result<&'static dyn StageKind> {
    match registry::find(kind) {
        Some(k) => Ok(k),
        None => {
            let known: Vec<&str> = registry::all().iter().map(|k| k.kind()).collect();
            bail!(
                "unknown stage kind `{kind}`: expected one of {}",
                known.join(", ")
            )
        }
    }
}

/// The JSON Schema of `kind`'s params, or (no `kind`) of a whole pipeline file: `name`,
/// `settings`, and `stages` whose `params` follow the schema of their `kind`.
pub fn json_schema(kind: Option<&str>) -> Result<Value> {
    if let Some(kind) = kind {
        return Ok(find(kind)?.params_schema().to_value());
    }
    let stages: Vec<Value> = registry::all()
        .iter()
        .map(|k| {
            let mut params = k.params_schema().to_value();
            if let Some(obj) = params.as_object_mut() {
                obj.remove("$schema");
            }
            json!({
                "if": {"properties": {"kind": {"const": k.kind()}}, "required": ["kind"]},
                "then": {"properties": {"params": params}}
            })
        })
        .collect();
    let kinds: Vec<&str> = registry::all().iter().map(|k| k.kind()).collect();
    let mut stage = Map::new();
    stage.insert("type".into(), json!("object"));
    stage.insert("required".into(), json!(["id", "kind"]));
    stage.insert(
        "properties".into(),
        json!({
            "id": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
            "kind": {"enum": kinds},
            "inputs": {"type": "array", "items": {"type": "string"}},
            "params": {"type": "object"}
        }),
    );
    stage.insert("additionalProperties".into(), json!(false));
    stage.insert("allOf".into(), Value::Array(stages));
    Ok(json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "llmembed pipeline",
        "type": "object",
        "required": ["name", "stages"],
        "additionalProperties": false,
        "properties": {
            "name": {"type": "string"},
            "settings": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "seed": {"type": "integer", "minimum": 0},
                    "data_dir": {"type": "string"},
                    "models_dir": {"type": "string"},
                    "remote": {"type": "string"}
                }
            },
            "stages": {"type": "array", "minItems": 1, "items": Value::Object(stage)}
        }
    }))
}
