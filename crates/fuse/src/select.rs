//! Each source's selection (`layers`, `columns`) resolved against the columns of its train file.

use std::collections::HashSet;

use llmembed_core::table::embedding_columns;
use llmembed_core::{Error, Input, Layers, Result, parse_layer_column};

use crate::params::{FuseParams, Method, SourceSpec};

/// One input's selection resolved to column names, with their widths.
pub(crate) struct Resolved {
    pub stage_id: String,
    pub columns: Vec<(String, usize)>,
}

/// Resolves a source's selection against the columns of its train file.
pub(crate) fn resolve(i: usize, spec: &SourceSpec, input: &Input) -> Result<Resolved> {
    let path = input.split("train")?;
    let available = embedding_columns(&path)?;
    let mut layer_cols: Vec<(usize, &(String, usize))> = available
        .iter()
        .filter_map(|c| parse_layer_column(&c.0).map(|n| (n, c)))
        .collect();
    layer_cols.sort_by_key(|(n, _)| *n);
    // Layer numbers, ascending; two names of one number (`layer_5`, `layer_05`) count once.
    let mut numbers: Vec<usize> = layer_cols.iter().map(|(n, _)| *n).collect();
    numbers.dedup();
    let names_of = || {
        available
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut columns: Vec<(String, usize)> = Vec::new();
    if let Some(layers) = &spec.layers {
        if layer_cols.is_empty() && *layers == Layers::All {
            return Err(Error::schema(
                &path,
                "layer_*",
                format!(
                    "sources[{i}] asks for all layers but there are no layer columns (has: {})",
                    names_of()
                ),
            ));
        }
        let picked = layers.resolve(&numbers).map_err(|l| {
            Error::schema(
                &path,
                &format!("layer {l}"),
                format!("sources[{i}] asks for it; the file has: {}", names_of()),
            )
        })?;
        for n in picked {
            let (_, c) = layer_cols[numbers.partition_point(|&m| m < n)];
            columns.push(c.clone());
        }
    }
    for name in &spec.columns {
        let c = available.iter().find(|(n, _)| n == name).ok_or_else(|| {
            Error::schema(
                &path,
                name,
                format!("sources[{i}] asks for it; the file has: {}", names_of()),
            )
        })?;
        columns.push(c.clone());
    }
    let mut seen = HashSet::new();
    for (n, _) in &columns {
        if !seen.insert(n) {
            return Err(Error::param(
                &format!("sources[{i}]"),
                format!("column `{n}` of `{}` is selected twice", input.stage_id),
            ));
        }
    }
    Ok(Resolved {
        stage_id: input.stage_id.clone(),
        columns,
    })
}

fn describe(r: &Resolved) -> String {
    r.columns
        .iter()
        .map(|(n, d)| format!("{n}={d}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Methods that combine vectors element-wise need one width per source.
pub(crate) fn check_widths(p: &FuseParams, resolved: &[Resolved]) -> Result<()> {
    let same_width = |r: &Resolved| r.columns.iter().all(|(_, d)| *d == r.columns[0].1);
    let which: Vec<&Resolved> = match p.method {
        Method::Mean | Method::Max | Method::Weighted => resolved.iter().collect(),
        Method::Cooccurrence => resolved.iter().take(1).collect(),
        Method::Concat => Vec::new(),
    };
    for r in which {
        if !same_width(r) {
            return Err(Error::mismatch(
                "fuse",
                format!(
                    "method {:?} combines the selected vectors of `{}` element-wise, but their \
                     widths differ ({}); select vectors of one width or use `concat`",
                    p.method,
                    r.stage_id,
                    describe(r)
                ),
            ));
        }
    }
    Ok(())
}
