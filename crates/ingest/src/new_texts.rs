//! New texts to classify (`predict`): a user's file of texts without labels in, and the
//! classified rows out, by extension (Parquet, CSV/TSV, JSON Lines). A row that cannot be read as
//! text (bytes that are not UTF-8, a missing text) gets its own error instead of failing the
//! file: the other rows are still classified.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use llmembed_core::{Error, Result};
use polars::prelude::{
    Column, CsvParseOptions, CsvReadOptions, CsvWriter, DataFrame, DataType, JsonFormat,
    JsonReader, ParquetReader, ParquetWriter, SerReader, SerWriter,
};

use crate::read::locate::{CsvRecords, json_lines, lines_note};
use crate::read::{Format, format_of};

/// Texts read from a file, one entry per data row, in file order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NewTexts {
    /// The id column's values, or the 1-based row number when the file has no id column.
    pub ids: Vec<String>,
    /// The text (bytes that are not UTF-8 replaced by U+FFFD, so that the row can be shown).
    pub texts: Vec<String>,
    /// Why a row cannot be classified, where it cannot (not UTF-8, no text).
    pub errors: Vec<Option<String>>,
}

/// Reads the texts of `path` (by extension). `id_column`: the ids (default: `id` when the file
/// has such a column, else the row numbers from 1); ids must be unique.
pub fn read_new_texts(path: &Path, text_column: &str, id_column: Option<&str>) -> Result<NewTexts> {
    let format = format_of(path)?;
    let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    read_new_texts_from(path, format, &bytes, text_column, id_column)
}

/// [`read_new_texts`] of JSON Lines bytes (standard input); `name` stands for the file in
/// messages.
pub fn read_new_texts_jsonl(
    name: &Path,
    bytes: &[u8],
    text_column: &str,
    id_column: Option<&str>,
) -> Result<NewTexts> {
    read_new_texts_from(name, Format::JsonLines, bytes, text_column, id_column)
}

fn read_new_texts_from(
    path: &Path,
    format: Format,
    bytes: &[u8],
    text_column: &str,
    id_column: Option<&str>,
) -> Result<NewTexts> {
    let (df, not_utf8) = read_frame(path, format, bytes)?;
    let texts = text_values(path, &df, text_column)?;
    let ids = ids(path, &df, id_column)?;
    let mut errors: Vec<Option<String>> = vec![None; texts.len()];
    for (row, text) in texts.iter().enumerate() {
        if text.is_none() {
            errors[row] = Some(format!("no text in column `{text_column}`"));
        }
    }
    for (row, lines) in not_utf8 {
        if let Some(e) = errors.get_mut(row) {
            *e = Some(format!("text is not valid UTF-8 ({lines})"));
        }
    }
    Ok(NewTexts {
        ids,
        texts: texts.into_iter().map(Option::unwrap_or_default).collect(),
        errors,
    })
}

/// The frame of a file, and the data rows (0-based) whose bytes are not UTF-8, with where they
/// are in the file. Such bytes are replaced by U+FFFD before polars reads the file: a byte that
/// is not UTF-8 is at least 0x80, so the replacement moves no separator, quote or line break.
fn read_frame(
    path: &Path,
    format: Format,
    bytes: &[u8],
) -> Result<(DataFrame, Vec<(usize, String)>)> {
    match format {
        Format::Parquet => {
            let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
            let df = ParquetReader::new(file)
                .finish()
                .map_err(|e| Error::parquet("read", path, e))?;
            Ok((df, Vec::new()))
        }
        Format::Csv(sep) => {
            let (text, bad) = match std::str::from_utf8(bytes) {
                Ok(_) => (std::borrow::Cow::Borrowed(bytes), Vec::new()),
                Err(_) => {
                    let mut records = CsvRecords::new(bytes, sep);
                    let header = records.next();
                    if header.is_some_and(|h| std::str::from_utf8(&bytes[h.start..h.end]).is_err())
                    {
                        return Err(Error::schema(path, "-", "the header is not valid UTF-8"));
                    }
                    let bad = records
                        .enumerate()
                        .filter(|(_, r)| std::str::from_utf8(&bytes[r.start..r.end]).is_err())
                        .map(|(row, r)| (row, lines_note(r.line, r.quoted_breaks)))
                        .collect();
                    let lossy = String::from_utf8_lossy(bytes).into_owned().into_bytes();
                    (std::borrow::Cow::Owned(lossy), bad)
                }
            };
            // Every column as text: ids such as `007` keep their zeros, numbers are texts too.
            let df = CsvReadOptions::default()
                .with_has_header(true)
                .with_infer_schema_length(Some(0))
                .with_parse_options(CsvParseOptions::default().with_separator(sep))
                .into_reader_with_file_handle(std::io::Cursor::new(&text[..]))
                .finish()
                .map_err(|e| Error::schema(path, "-", format!("cannot read as CSV: {e}")))?;
            Ok((df, bad))
        }
        Format::JsonLines => {
            let bad: Vec<(usize, String)> = json_lines(bytes)
                .enumerate()
                .filter(|(_, (_, l))| std::str::from_utf8(l).is_err())
                .map(|(row, (line, _))| (row, lines_note(line, 0)))
                .collect();
            let text = if bad.is_empty() {
                std::borrow::Cow::Borrowed(bytes)
            } else {
                std::borrow::Cow::Owned(String::from_utf8_lossy(bytes).into_owned().into_bytes())
            };
            // Polars names neither the line nor the problem.
            type Object = serde_json::Map<String, serde_json::Value>;
            if let Some((line, _)) =
                json_lines(&text).find(|(_, l)| serde_json::from_slice::<Object>(l).is_err())
            {
                return Err(Error::schema(
                    path,
                    "-",
                    format!("{} is not one JSON object", lines_note(line, 0)),
                ));
            }
            if json_lines(&text).next().is_none() {
                return Ok((DataFrame::empty(), bad));
            }
            let df = JsonReader::new(std::io::Cursor::new(&text[..]))
                .with_json_format(JsonFormat::JsonLines)
                .infer_schema_len(None)
                .finish()
                .map_err(|e| Error::schema(path, "-", format!("cannot read as JSON Lines: {e}")))?;
            Ok((df, bad))
        }
    }
}

fn column_list(df: &DataFrame) -> String {
    df.get_column_names()
        .iter()
        .map(|c| c.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn column<'a>(path: &Path, df: &'a DataFrame, name: &str) -> Result<&'a Column> {
    df.column(name).map_err(|_| {
        Error::schema(
            path,
            name,
            format!("missing (the file has: {})", column_list(df)),
        )
    })
}

/// The text column: strings, or binary values checked as UTF-8 row by row (Parquet).
fn text_values(path: &Path, df: &DataFrame, name: &str) -> Result<Vec<Option<String>>> {
    if df.height() == 0 {
        return Ok(Vec::new());
    }
    let col = column(path, df, name)?;
    match col.dtype() {
        DataType::String => Ok(col
            .str()
            .map_err(|e| Error::schema(path, name, e.to_string()))?
            .iter()
            .map(|v| v.map(str::to_string))
            .collect()),
        DataType::Binary => Ok(col
            .binary()
            .map_err(|e| Error::schema(path, name, e.to_string()))?
            .iter()
            .map(|v| v.map(|b| String::from_utf8_lossy(b).into_owned()))
            .collect()),
        other => Err(Error::schema(
            path,
            name,
            format!("holds {other}, not text"),
        )),
    }
}

/// Row ids: the id column (any scalar type, as text), else the row numbers from 1.
fn ids(path: &Path, df: &DataFrame, id_column: Option<&str>) -> Result<Vec<String>> {
    let name = match id_column {
        Some(name) => Some(name),
        None => df.column("id").is_ok().then_some("id"),
    };
    let Some(name) = name else {
        return Ok((1..=df.height()).map(|i| i.to_string()).collect());
    };
    let col = column(path, df, name)?
        .cast(&DataType::String)
        .map_err(|e| Error::schema(path, name, format!("cannot be read as ids: {e}")))?;
    let values = col
        .str()
        .map_err(|e| Error::schema(path, name, e.to_string()))?;
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut out = Vec::with_capacity(values.len());
    for (row, v) in values.iter().enumerate() {
        let v = v.ok_or_else(|| Error::row(path, row, name, "no id"))?;
        if let Some(first) = seen.insert(v, row) {
            return Err(Error::row(
                path,
                row,
                name,
                format!("id `{v}` repeats data row {first}'s (ids must be unique)"),
            ));
        }
        out.push(v.to_string());
    }
    Ok(out)
}

/// Classified rows, written by [`write_classified`].
#[derive(Clone, Debug, Default)]
pub struct Classified {
    pub ids: Vec<String>,
    pub texts: Vec<String>,
    pub class_names: Vec<String>,
    /// The predicted class name; `None` for a row with an error.
    pub labels: Vec<Option<String>>,
    /// The predicted class's probability.
    pub probabilities: Vec<Option<f32>>,
    /// Every class's probability, in `class_names` order.
    pub probs: Vec<Option<Vec<f32>>>,
    pub errors: Vec<Option<String>>,
}

/// The fixed columns of [`write_classified`]'s output, before one column per class.
pub const CLASSIFIED_COLUMNS: [&str; 5] = ["id", "text", "label", "probability", "error"];

/// Writes `rows` to a Parquet or CSV/TSV file (by extension): `id`, `text`, `label` (the
/// predicted class), `probability` (its probability), one column per class (named after the
/// class), `error`.
pub fn write_classified(path: &Path, rows: &Classified) -> Result<()> {
    let format = format_of(path)?;
    let n = rows.ids.len();
    let mut columns = vec![
        Column::new("id".into(), &rows.ids),
        Column::new("text".into(), &rows.texts),
        Column::new("label".into(), &rows.labels),
        Column::new("probability".into(), &rows.probabilities),
    ];
    for (c, name) in rows.class_names.iter().enumerate() {
        let values: Vec<Option<f32>> = (0..n)
            .map(|i| rows.probs[i].as_ref().map(|p| p[c]))
            .collect();
        columns.push(Column::new(name.as_str().into(), values));
    }
    columns.push(Column::new("error".into(), &rows.errors));
    let mut df = DataFrame::new(n, columns)
        .map_err(|e| Error::schema(path, "-", format!("cannot make the output table: {e}")))?;
    llmembed_core::fsutil::write_atomic(path, |out| {
        let written = match format {
            Format::Parquet => ParquetWriter::new(out).finish(&mut df).map(|_| ()),
            Format::Csv(sep) => CsvWriter::new(out)
                .include_header(true)
                .with_separator(sep)
                .finish(&mut df),
            Format::JsonLines => {
                return Err(Error::schema(
                    path,
                    "-",
                    "JSON Lines is written by the caller, not here",
                ));
            }
        };
        written.map_err(|e| Error::parquet("write", path, e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn a_csv_row_that_is_not_utf8_gets_its_own_error_and_the_others_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = b"id,text\na,\"first, quoted\"\nb,bad \xff byte\nc,007\nd,\n".to_vec();
        bytes.extend_from_slice(b"e,last\n");
        let p = write(dir.path(), "new.csv", &bytes);
        let t = read_new_texts(&p, "text", None).unwrap();
        assert_eq!(t.ids, ["a", "b", "c", "d", "e"]);
        assert_eq!(t.texts[0], "first, quoted");
        assert_eq!(t.texts[1], "bad \u{fffd} byte");
        assert_eq!(t.texts[2], "007", "every CSV column is read as text");
        assert_eq!(t.errors[0], None);
        let e = t.errors[1].as_deref().unwrap();
        assert!(e.contains("not valid UTF-8") && e.contains("line 3"), "{e}");
        assert_eq!(t.errors[2], None);
        assert!(t.errors[3].as_deref().unwrap().contains("no text"));
        assert_eq!(t.errors[4], None);
    }

    #[test]
    fn json_lines_without_ids_are_numbered_and_a_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "new.jsonl",
            b"{\"text\": \"one\"}\n\n{\"text\": \"t\xc3wo\"}\n{\"text\": \"three\"}\n",
        );
        let t = read_new_texts(&p, "text", None).unwrap();
        assert_eq!(t.ids, ["1", "2", "3"]);
        assert_eq!(t.texts[2], "three");
        assert!(t.errors[1].as_deref().unwrap().contains("line 3"));
        let bad = write(dir.path(), "bad.jsonl", b"{\"text\": \"one\"}\n[1, 2]\n");
        let e = read_new_texts(&bad, "text", None).unwrap_err().to_string();
        assert!(
            e.contains("line 2") && e.contains("not one JSON object"),
            "{e}"
        );
        let stdin = read_new_texts_jsonl(
            Path::new("<stdin>"),
            b"{\"t\": \"x\", \"k\": 7}\n",
            "t",
            Some("k"),
        )
        .unwrap();
        assert_eq!(
            (stdin.ids, stdin.texts),
            (vec!["7".to_string()], vec!["x".to_string()])
        );
    }

    #[test]
    fn missing_columns_and_repeated_ids_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "new.csv", b"id,body\na,x\na,y\n");
        let e = read_new_texts(&p, "text", None).unwrap_err().to_string();
        assert!(e.contains("text") && e.contains("id, body"), "{e}");
        let e = read_new_texts(&p, "body", None).unwrap_err().to_string();
        assert!(e.contains("repeats") && e.contains("`a`"), "{e}");
        let e = read_new_texts(&p, "body", Some("key"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("key"), "{e}");
    }

    #[test]
    fn classified_rows_are_written_as_csv_and_parquet_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let rows = Classified {
            ids: vec!["a".into(), "b".into()],
            texts: vec!["x".into(), String::new()],
            class_names: vec!["World".into(), "Sports".into()],
            labels: vec![Some("Sports".into()), None],
            probabilities: vec![Some(0.75), None],
            probs: vec![Some(vec![0.25, 0.75]), None],
            errors: vec![None, Some("empty text".into())],
        };
        for name in ["out.csv", "out.parquet"] {
            let p = dir.path().join(name);
            write_classified(&p, &rows).unwrap();
            let df = crate::read::read_frame("out", &p).unwrap();
            let names: Vec<&str> = df.get_column_names().iter().map(|c| c.as_str()).collect();
            assert_eq!(
                names,
                [
                    "id",
                    "text",
                    "label",
                    "probability",
                    "World",
                    "Sports",
                    "error"
                ]
            );
            let sports = df
                .column("Sports")
                .unwrap()
                .cast(&DataType::Float64)
                .unwrap();
            assert_eq!(sports.f64().unwrap().get(0), Some(0.75));
            assert_eq!(sports.f64().unwrap().get(1), None);
            let err = df.column("error").unwrap();
            assert_eq!(err.str().unwrap().get(1), Some("empty text"));
        }
    }
}
