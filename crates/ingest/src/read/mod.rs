//! One split file into a polars frame, by extension (Parquet, CSV/TSV, JSON Lines), and the
//! errors that name a bad row with its lines in the file.

mod check;
pub(crate) mod locate;

use std::fs::File;
use std::path::Path;

use llmembed_core::{Error, Result};
use polars::prelude::{
    CsvParseOptions, CsvReadOptions, DataFrame, JsonFormat, JsonReader, ParquetReader, SerReader,
};

use check::{check_csv_records, check_json_lines, check_utf8};
use locate::{CsvRecords, json_lines, lines_note};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Parquet,
    Csv(u8),
    JsonLines,
}

pub(crate) fn format_of(path: &Path) -> Result<Format> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "parquet" | "pq" => Ok(Format::Parquet),
        "csv" => Ok(Format::Csv(b',')),
        "tsv" | "tab" => Ok(Format::Csv(b'\t')),
        "jsonl" | "ndjson" => Ok(Format::JsonLines),
        _ => Err(Error::schema(
            path,
            "-",
            "unknown file type (expected .parquet, .pq, .csv, .tsv, .tab, .jsonl or .ndjson)",
        )),
    }
}

/// `split` read from `path` has no data rows.
fn no_rows(split: &str, path: &Path) -> Error {
    Error::mismatch(
        "ingest",
        format!("split `{split}` of {} has no rows", path.display()),
    )
}

pub(crate) fn read_frame(split: &str, path: &Path) -> Result<DataFrame> {
    let format = format_of(path)?;
    let df = match format {
        Format::Parquet => {
            let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
            ParquetReader::new(file)
                .finish()
                .map_err(|e| Error::parquet("read", path, e))?
        }
        Format::Csv(sep) => {
            let bytes = read_bytes(path)?;
            check_utf8(path, &bytes, Some(sep))?;
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Err(no_rows(split, path));
            }
            let read = CsvReadOptions::default()
                .with_has_header(true)
                .with_infer_schema_length(None)
                .with_parse_options(CsvParseOptions::default().with_separator(sep))
                .into_reader_with_file_handle(std::io::Cursor::new(&bytes[..]))
                .finish();
            match read {
                // Polars fails on a row with more fields than the header, without saying where:
                // find the first row of the wrong width. Other failures keep polars' words.
                Err(e) => {
                    check_csv_records(path, &bytes, sep)?;
                    return Err(Error::schema(path, "-", format!("cannot read as CSV: {e}")));
                }
                // Polars fills the fields missing from a short (or empty) row with nulls, so a
                // file without nulls in its last column has none: only then look at the rows.
                Ok(df) => {
                    if df.columns().last().is_some_and(|c| c.null_count() > 0) {
                        check_csv_records(path, &bytes, sep)?;
                    }
                    df
                }
            }
        }
        Format::JsonLines => {
            let bytes = read_bytes(path)?;
            check_utf8(path, &bytes, None)?;
            if json_lines(&bytes).next().is_none() {
                return Err(no_rows(split, path));
            }
            let read = JsonReader::new(std::io::Cursor::new(&bytes[..]))
                .with_json_format(JsonFormat::JsonLines)
                .infer_schema_len(None)
                .finish();
            match read {
                // Polars names neither the line nor the problem in its own words: find the
                // first line that is not a JSON object.
                Err(e) => {
                    check_json_lines(path, &bytes)?;
                    return Err(Error::schema(
                        path,
                        "-",
                        format!("cannot read as JSON Lines: {e}"),
                    ));
                }
                Ok(df) => df,
            }
        }
    };
    if df.height() == 0 {
        return Err(no_rows(split, path));
    }
    Ok(df)
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", path, e))?;
    Ok(bytes)
}

/// A bad value in data row `row` (0-based, as polars read it) of `path`. For CSV and JSON Lines
/// the message says which line(s) of the file hold the row; the file is read again for that,
/// which is fine on the way out.
pub(crate) fn bad_row(path: &Path, row: usize, field: &str, message: impl Into<String>) -> Error {
    let mut message = message.into();
    let lines = match format_of(path) {
        Ok(Format::Csv(sep)) => std::fs::read(path).ok().and_then(|bytes| {
            CsvRecords::new(&bytes, sep)
                .nth(row + 1)
                .map(|r| lines_note(r.line, r.quoted_breaks))
        }),
        Ok(Format::JsonLines) => std::fs::read(path)
            .ok()
            .and_then(|bytes| json_lines(&bytes).nth(row).map(|(l, _)| lines_note(l, 0))),
        _ => None,
    };
    if let Some(lines) = lines {
        message.push_str(&format!(" ({lines})"));
    }
    Error::row(path, row, field, message)
}

/// How a missing value reads in this file's format.
pub(crate) fn null_word(path: &Path) -> &'static str {
    match format_of(path) {
        Ok(Format::Csv(_)) => "empty",
        Ok(Format::JsonLines) => "null or missing",
        _ => "null",
    }
}
