//! Finds the first bad row of a text file when polars fails or leaves nulls (polars says
//! neither where nor, often, what): bytes that are not UTF-8, CSV rows of the wrong width, JSON
//! Lines rows that are not one object.

use std::path::Path;

use llmembed_core::{Error, Result};

use super::locate::{CsvRecords, json_lines, lines_note};

/// Fails on the first byte that is not UTF-8, naming the data row, its line and, for CSV, the
/// column.
pub(super) fn check_utf8(path: &Path, bytes: &[u8], sep: Option<u8>) -> Result<()> {
    let Err(e) = std::str::from_utf8(bytes) else {
        return Ok(());
    };
    let pos = e.valid_up_to();
    let line = 1 + bytes[..pos].iter().filter(|&&b| b == b'\n').count();
    let msg = format!(
        "text is not valid UTF-8 at byte offset {pos} ({})",
        lines_note(line, 0)
    );
    let Some(sep) = sep else {
        let line_start = bytes[..pos]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let row = json_lines(&bytes[..line_start]).count();
        return Err(Error::row(path, row, "-", msg));
    };
    let mut records = CsvRecords::new(bytes, sep);
    let header = records.next().expect("a byte at `pos`, so a record");
    if pos <= header.end {
        return Err(Error::schema(path, "-", format!("header {msg}")));
    }
    let names = header.field_names(bytes, sep);
    for (row, r) in records.enumerate() {
        if pos <= r.end {
            let field = r
                .field_starts(bytes, sep)
                .iter()
                .filter(|&&s| s <= pos)
                .count()
                - 1;
            let column = names
                .get(field)
                .cloned()
                .unwrap_or_else(|| format!("#{}", field + 1));
            return Err(Error::row(path, row, &column, msg));
        }
    }
    unreachable!("byte {pos} is in a record")
}

/// Fails on the first data row whose number of fields differs from the header's.
pub(super) fn check_csv_records(path: &Path, bytes: &[u8], sep: u8) -> Result<()> {
    let mut records = CsvRecords::new(bytes, sep);
    let Some(header) = records.next() else {
        return Ok(());
    };
    let width = header.fields;
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    for (row, r) in records.enumerate() {
        if r.fields == width {
            continue;
        }
        let at = lines_note(r.line, r.quoted_breaks);
        let (field, message) = if r.is_blank(bytes) {
            (
                "-".to_string(),
                format!("empty line, but the header has {width} fields ({at})"),
            )
        } else if r.fields > width {
            (
                format!("#{}", width + 1),
                format!("{} fields, but the header has {width} ({at})", r.fields),
            )
        } else {
            let names = header.field_names(bytes, sep);
            (
                names[r.fields].clone(),
                format!(
                    "{} field{}, but the header has {width} ({at})",
                    r.fields,
                    plural(r.fields)
                ),
            )
        };
        return Err(Error::row(path, row, &field, message));
    }
    Ok(())
}

/// Fails on the first row that is not one JSON object.
pub(super) fn check_json_lines(path: &Path, bytes: &[u8]) -> Result<()> {
    for (row, (line, text)) in json_lines(bytes).enumerate() {
        let problem = match serde_json::from_slice::<serde_json::Value>(text) {
            Err(e) => {
                let reason = e.to_string();
                let suffix = format!(" at line {} column {}", e.line(), e.column());
                let reason = reason.strip_suffix(&suffix).unwrap_or(&reason);
                format!("invalid JSON at column {}: {reason}", e.column())
            }
            Ok(serde_json::Value::Object(_)) => continue,
            Ok(other) => format!("not a JSON object: {}", json_kind(&other)),
        };
        return Err(Error::row(
            path,
            row,
            "-",
            format!("{problem} ({})", lines_note(line, 0)),
        ));
    }
    Ok(())
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
