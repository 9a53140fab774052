//! `params` lists what the validator accepts: for every stage of every pipeline in
//! `pipelines/`, the canonical params (what `check` made of the file) have the listed names (a
//! param added later is left out at its default, so older keys stay as they were), and every listed default not given in the file is the value `check` filled in; fed
//! back through the validator, the listed defaults are accepted as they are.

use std::collections::BTreeSet;

use serde_json::{Map, Value};
use xtask::params::{json_schema, params_of};
use xtask::{pipeline, registry};

#[test]
fn listed_params_and_defaults_are_what_the_validator_fills_in() {
    let dir = llmembed_testkit::repo_root().join("pipelines");
    let mut kinds_seen = BTreeSet::new();
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let file = entry.unwrap().path();
        let plan = pipeline::load(&file).unwrap_or_else(|e| panic!("{e}"));
        for stage in &plan.stages {
            kinds_seen.insert(stage.kind.kind());
            let listed = params_of(stage.kind);
            let names: BTreeSet<&str> = listed.iter().map(|p| p.name.as_str()).collect();
            let canonical = stage.params.as_object().unwrap();
            let canonical_names: BTreeSet<&str> = canonical.keys().map(String::as_str).collect();
            assert!(
                canonical_names.is_subset(&names),
                "{}: {}: canonical {canonical_names:?}, listed {names:?}",
                file.display(),
                stage.id
            );
            // A param added later is left out of the canonical form at its default (`prompt`,
            // `sentence`), so that the keys of pipelines that do not use it stay as they were.
            for p in listed.iter().filter(|p| !canonical.contains_key(&p.name)) {
                assert!(
                    !stage.params_at.each.contains_key(&p.name)
                        && matches!(
                            p.default,
                            None | Some(Value::Null) | Some(Value::Bool(false))
                        ),
                    "{}: `{}` param `{}` is missing from the canonical params",
                    file.display(),
                    stage.id,
                    p.name
                );
            }
            for p in &listed {
                if let Some(default) = &p.default
                    && !stage.params_at.each.contains_key(&p.name)
                    && canonical.contains_key(&p.name)
                {
                    assert_eq!(
                        &canonical[&p.name],
                        default,
                        "{}: `{}` param `{}`",
                        file.display(),
                        stage.id,
                        p.name
                    );
                    checked += 1;
                }
            }
        }
    }
    // Every kind appears in some pipeline, so every kind's listing was compared.
    let all: BTreeSet<&str> = registry::all().iter().map(|k| k.kind()).collect();
    assert_eq!(kinds_seen, all);
    assert!(checked > 50, "only {checked} defaults compared");
}

#[test]
fn listed_defaults_pass_validation_unchanged() {
    let mut compared = 0;
    for kind in registry::all() {
        let listed = params_of(*kind);
        let defaults: Map<String, Value> = listed
            .iter()
            .filter_map(|p| p.default.clone().map(|d| (p.name.clone(), d)))
            .collect();
        let required: Vec<&str> = listed
            .iter()
            .filter(|p| p.default.is_none())
            .map(|p| p.name.as_str())
            .collect();
        if !required.is_empty() {
            // Kinds with required params (a dataset, a model, sources...) are compared through
            // the pipelines above instead.
            continue;
        }
        let inputs = match kind.inputs().to_string().as_str() {
            s if s.starts_with("at least 2") => 2,
            s if s.starts_with("no") => 0,
            _ => 1,
        };
        // Some kinds need one of several optional params (ingest: a dataset, files or a hub
        // repo); with none given, `check` refuses them, with or without the listed defaults.
        let Ok(empty) = kind.validate(Value::Object(Map::new()), inputs) else {
            continue;
        };
        let canonical = kind
            .validate(Value::Object(defaults.clone()), inputs)
            .unwrap_or_else(|e| panic!("{}: {e:?}", kind.kind()));
        // An optional param listed with a null default may be left out of the canonical params
        // (`#[serde(skip_serializing_if = "Option::is_none")]`, as `ensemble`'s `c`, so that the
        // other methods' keys stay what they were): null is its absence.
        let present: Map<String, Value> = defaults
            .into_iter()
            .filter(|(name, v)| !v.is_null() || canonical.get(name).is_some())
            .collect();
        assert_eq!(canonical, Value::Object(present), "{}", kind.kind());
        assert_eq!(canonical, empty, "{}", kind.kind());
        compared += 1;
    }
    assert!(compared >= 5, "only {compared} kinds compared");
}

#[test]
fn the_pipeline_schema_names_every_kind() {
    let schema = json_schema(None).unwrap();
    let kinds = &schema["properties"]["stages"]["items"]["properties"]["kind"]["enum"];
    assert_eq!(kinds.as_array().unwrap().len(), registry::all().len());
    let rules = schema["properties"]["stages"]["items"]["allOf"]
        .as_array()
        .unwrap();
    assert_eq!(rules.len(), registry::all().len());
    // Each kind's rule holds that kind's params schema, without `$defs` (all inlined).
    assert!(!serde_json::to_string(&schema).unwrap().contains("$defs"));
    let logreg = json_schema(Some("logreg")).unwrap();
    assert!(logreg["properties"]["c"].is_object());
    let err = json_schema(Some("nope")).unwrap_err().to_string();
    assert!(
        err.starts_with("unknown stage kind `nope`: expected one of ingest"),
        "{err}"
    );
}
