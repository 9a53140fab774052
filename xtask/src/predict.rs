//! `predict`: a file of new texts classified by a pipeline's trained stages (see `apply.rs`),
//! written as Parquet, CSV/TSV or JSON Lines (`-`: standard input and output, JSON Lines).
//! A row that cannot be classified gets an `error` and the others still get predictions.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use llmembed_ingest::{CLASSIFIED_COLUMNS, Classified, NewTexts};
use serde::ser::{SerializeMap, Serializer};

use crate::apply::{Chain, refuse_text};
use crate::pipeline::Plan;
use crate::runner::Workspace;

/// Texts per call of the chain: bounds the memory of the intermediate tables (every layer of
/// every text), not the extractor's own batches.
const CHUNK: usize = 512;

/// What `predict` takes besides the pipeline.
#[derive(Clone, Debug)]
pub struct PredictOptions {
    pub stage: String,
    /// A file, or `-` for JSON Lines on standard input.
    pub input: PathBuf,
    pub text_column: String,
    pub id_column: Option<String>,
    /// A file, or `-` for JSON Lines on standard output.
    pub out: PathBuf,
    pub max_text_bytes: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum OutFormat {
    JsonLines,
    /// Parquet or CSV/TSV, written by the ingest crate.
    Table,
}

fn out_format(path: &Path) -> Result<OutFormat> {
    if path == Path::new("-") {
        return Ok(OutFormat::JsonLines);
    }
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "jsonl" | "ndjson" => Ok(OutFormat::JsonLines),
        "parquet" | "pq" | "csv" | "tsv" | "tab" => Ok(OutFormat::Table),
        _ => bail!(
            "--out {}: unknown file type (expected .parquet, .csv, .tsv, .jsonl, or - for JSON Lines on standard output)",
            path.display()
        ),
    }
}

fn read_input(opts: &PredictOptions) -> Result<NewTexts> {
    let id_column = opts.id_column.as_deref();
    if opts.input == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("read standard input")?;
        Ok(llmembed_ingest::read_new_texts_jsonl(
            Path::new("<standard input>"),
            &bytes,
            &opts.text_column,
            id_column,
        )?)
    } else {
        Ok(llmembed_ingest::read_new_texts(
            &opts.input,
            &opts.text_column,
            id_column,
        )?)
    }
}

/// Runs `predict`: reads, loads the chain, classifies, writes. `program` names the command in
/// messages.
pub fn predict(plan: &Plan, ws: &Workspace, opts: &PredictOptions, program: &str) -> Result<()> {
    let format = out_format(&opts.out)?;
    let new = read_input(opts)?;
    let chain = Chain::load(plan, ws, &opts.stage, program, None)?;
    if let Some(c) = chain
        .info
        .classes
        .iter()
        .find(|c| CLASSIFIED_COLUMNS.contains(&c.as_str()))
    {
        bail!(
            "class `{c}` has the name of one of the output's own columns ({}): its probabilities cannot have a column of their own",
            CLASSIFIED_COLUMNS.join(", ")
        );
    }
    let classified = classify(&chain, new, opts.max_text_bytes, ws.quiet)?;
    let failed = classified.errors.iter().filter(|e| e.is_some()).count();
    match format {
        OutFormat::JsonLines => write_json_lines(&opts.out, &classified)?,
        OutFormat::Table => llmembed_ingest::write_classified(&opts.out, &classified)?,
    }
    log::info!(
        "{}: {} text(s) classified by `{}`, {failed} refused{}",
        plan.name,
        classified.ids.len() - failed,
        opts.stage,
        if opts.out == Path::new("-") {
            String::new()
        } else {
            format!(", written to {}", opts.out.display())
        }
    );
    Ok(())
}

/// Every row of `new` classified, or given the reason it is not.
pub fn classify(
    chain: &Chain,
    new: NewTexts,
    max_text_bytes: usize,
    quiet: bool,
) -> Result<Classified> {
    let n = new.ids.len();
    let mut errors = new.errors;
    for (e, text) in errors.iter_mut().zip(&new.texts) {
        if e.is_none() {
            *e = refuse_text(text, max_text_bytes);
        }
    }
    let ok: Vec<usize> = (0..n).filter(|&i| errors[i].is_none()).collect();
    let mut out = Classified {
        ids: new.ids,
        texts: new.texts,
        class_names: chain.info.classes.clone(),
        labels: vec![None; n],
        probabilities: vec![None; n],
        probs: vec![None; n],
        errors,
    };
    for (done, rows) in ok.chunks(CHUNK).enumerate() {
        if !quiet && ok.len() > CHUNK {
            log::info!(
                "classifying texts {}-{} of {}",
                done * CHUNK + 1,
                done * CHUNK + rows.len(),
                ok.len()
            );
        }
        let ids = rows.iter().map(|&i| out.ids[i].clone()).collect();
        let texts = rows.iter().map(|&i| out.texts[i].clone()).collect();
        let p = chain.classify(ids, texts)?;
        for (k, &i) in rows.iter().enumerate() {
            let pred = usize::try_from(p.preds[k]).ok();
            let name = pred.and_then(|c| out.class_names.get(c));
            let Some((c, name)) = pred.zip(name) else {
                bail!(
                    "class {} predicted for text `{}` is not among the classes",
                    p.preds[k],
                    out.ids[i]
                );
            };
            out.labels[i] = Some(name.clone());
            out.probabilities[i] = Some(p.row_probs(k)[c]);
            out.probs[i] = Some(p.row_probs(k).to_vec());
        }
    }
    Ok(out)
}

/// One output row as a JSON object: `id`, `text`, `label`, `probability`, a key per class (in
/// class order), `error` when there is one.
struct JsonRow<'a> {
    rows: &'a Classified,
    i: usize,
}

impl serde::Serialize for JsonRow<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let (r, i) = (self.rows, self.i);
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("id", &r.ids[i])?;
        map.serialize_entry("text", &r.texts[i])?;
        map.serialize_entry("label", &r.labels[i])?;
        map.serialize_entry("probability", &r.probabilities[i])?;
        for (c, name) in r.class_names.iter().enumerate() {
            map.serialize_entry(name, &r.probs[i].as_ref().map(|p| p[c]))?;
        }
        if let Some(e) = &r.errors[i] {
            map.serialize_entry("error", e)?;
        }
        map.end()
    }
}

fn write_json_lines(path: &Path, rows: &Classified) -> Result<()> {
    let mut text = String::new();
    for i in 0..rows.ids.len() {
        text.push_str(&serde_json::to_string(&JsonRow { rows, i })?);
        text.push('\n');
    }
    if path == Path::new("-") {
        crate::out!("{text}");
        Ok(())
    } else {
        Ok(llmembed_core::fsutil::write_bytes_atomic(
            path,
            text.as_bytes(),
        )?)
    }
}
