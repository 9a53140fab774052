//! Refused input: each error names the file, the row, its lines and the field.

use std::path::{Path, PathBuf};

use llmembed_core::Stage;
use llmembed_ingest::{Ingest, IngestParams, Sample};
use polars::prelude::ParquetWriter;

use crate::common::*;

/// Writes `content` to `root/name`, returning its path.
fn file(root: &Path, name: &str, content: &[u8]) -> PathBuf {
    let path = root.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

/// `path` as the one split `train`, label names neg, pos.
fn single(path: &Path) -> IngestParams {
    IngestParams {
        files: Some([("train".to_string(), path.to_path_buf())].into()),
        label_names: Some(vec!["neg".into(), "pos".into()]),
        ..Default::default()
    }
}

#[test]
fn bad_columns_and_values_are_named_by_file_row_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let f = |name: &str, content: &[u8]| file(root, name, content);

    // Missing column.
    let p = f("nolabel.csv", b"text,lab\nhello,0\n");
    let e = err(&single(&p), root);
    assert!(
        e.contains("nolabel.csv: column `label`: missing (columns: text, lab)"),
        "{e}"
    );
    let e = err(
        &IngestParams {
            text_columns: vec!["body".into()],
            ..single(&p)
        },
        root,
    );
    assert!(e.contains("column `body`: missing"), "{e}");

    // Null text (JSON Lines) and empty text (CSV), with the 0-based data row.
    let p = f(
        "null.jsonl",
        b"{\"text\": \"fine\", \"label\": 0}\n{\"text\": null, \"label\": 1}\n",
    );
    let e = err(&single(&p), root);
    assert!(
        e.contains("null.jsonl: row 1, field `text`: null or missing text (line 2 of the file"),
        "{e}"
    );
    let p = f("empty.csv", b"text,label\nfine,0\nalso fine,1\n\"  \",1\n");
    let e = err(&single(&p), root);
    assert!(
        e.contains("empty.csv: row 2, field `text`: empty text"),
        "{e}"
    );

    // Labels outside the label set, as ids and as names.
    let p = f("badid.csv", b"text,label\na,0\nb,2\n");
    let e = err(&single(&p), root);
    assert!(
        e.contains("badid.csv: row 1, field `label`: label id 2 is outside the 2 label names"),
        "{e}"
    );
    let p = f("badname.tsv", b"text\tlabel\na\tpos\nb\tneutral\n");
    let e = err(&single(&p), root);
    assert!(
        e.contains("badname.tsv: row 1, field `label`: label `neutral` is not one of"),
        "{e}"
    );
    let p = f(
        "nulllabel.jsonl",
        b"{\"text\": \"a\", \"label\": 0}\n{\"text\": \"b\", \"label\": null}\n",
    );
    let e = err(&single(&p), root);
    assert!(
        e.contains("nulllabel.jsonl: row 1, field `label`: null or missing label (line 2"),
        "{e}"
    );
    let p = f("floatlabel.jsonl", b"{\"text\": \"a\", \"label\": 1.0}\n");
    let e = err(&single(&p), root);
    assert!(
        e.contains("column `label`: expected integer ids or string names"),
        "{e}"
    );
}

#[test]
fn unsampleable_and_unreadable_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let f = |name: &str, content: &[u8]| file(root, name, content);

    // A split missing a class when sampling per class, and too few rows of one.
    let p = f("oneclass.csv", b"text,label\na,0\nb,0\nc,0\n");
    let sampled = |path: &Path, n| IngestParams {
        splits: splits(&[("train", Some(Sample::PerClass(n)))]),
        ..single(path)
    };
    let e = err(&sampled(&p, 2), root);
    assert!(
        e.contains(
            "oneclass.csv: column `label`: split `train` has no rows of class `pos` (index 1)"
        ),
        "{e}"
    );
    let p = f("few.csv", b"text,label\na,0\nb,0\nc,1\n");
    let e = err(&sampled(&p, 2), root);
    assert!(e.contains("has only 1 rows of class `pos`"), "{e}");
    let e = err(
        &IngestParams {
            splits: splits(&[("train", Some(Sample::Total(3)))]),
            ..single(&p)
        },
        root,
    );
    assert!(
        e.contains("param `splits.train.sample.total`: 3 is not a multiple of the 2 classes"),
        "{e}"
    );

    // Unreadable files: missing, not Parquet, unknown type.
    let e = err(&single(&root.join("absent.csv")), root);
    assert!(e.contains("open") && e.contains("absent.csv"), "{e}");
    let p = f("garbage.parquet", b"this is not parquet");
    let e = err(&single(&p), root);
    assert!(
        e.starts_with("parquet read") && e.contains("garbage.parquet"),
        "{e}"
    );
    let p = f("data.xlsx", b"PK");
    let e = err(&single(&p), root);
    assert!(
        e.contains("data.xlsx") && e.contains("unknown file type"),
        "{e}"
    );

    // Non-UTF-8 text in CSV: row and column named.
    let p = f("latin1.csv", b"label,text\n0,fine\n1,caf\xe9 au lait\n");
    let e = err(&single(&p), root);
    assert!(
        e.ends_with(
            "latin1.csv: row 1, field `text`: text is not valid UTF-8 at byte offset 23 \
             (line 3 of the file, counting from 1)"
        ),
        "{e}"
    );
}

#[test]
fn params_no_source_satisfies_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let p = file(root, "ok.csv", b"text,label\na,0\n");

    // Param checks before running.
    let e = Ingest::check(&IngestParams::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("exactly one source, got 0"), "{e}");
    let both = IngestParams {
        dataset: Some("ag_news".into()),
        ..single(&p)
    };
    let e = Ingest::check(&both).unwrap_err().to_string();
    assert_eq!(
        e,
        "param `dataset/files/hub`: give exactly one source, got 2"
    );
    let e = err(
        &IngestParams {
            splits: splits(&[("dev", None)]),
            ..single(&p)
        },
        root,
    );
    assert!(
        e.contains("split `dev` is not in `files` (it has: train)"),
        "{e}"
    );
    let e = err(
        &IngestParams {
            dataset: Some("imdb".into()),
            ..Default::default()
        },
        root,
    );
    assert!(
        e.contains("`imdb` is neither a folder of the data directory"),
        "{e}"
    );
}

#[test]
fn ragged_csv_rows_name_file_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // More fields than the header; the quoted line break makes row 2 start on line 5.
    let e = refuse(
        root,
        "long.csv",
        b"text,label\nfine,0\n\"two\nlines, one row\",1\nextra,1,2\nok,0\n",
        true,
    );
    assert_eq!(
        e,
        "<dir>/long.csv: row 2, field `#3`: 3 fields, but the header has 2 \
         (line 5 of the file, counting from 1)"
    );
    let e = refuse(root, "long.tsv", b"text\tlabel\na\t0\nb\t1\t\tx\n", true);
    assert_eq!(
        e,
        "<dir>/long.tsv: row 1, field `#3`: 4 fields, but the header has 2 \
         (line 3 of the file, counting from 1)"
    );
    // Fewer fields than the header, even when the missing one is not used.
    let e = refuse(
        root,
        "short.csv",
        b"text,label,source\na,0,web\nb,1\nc,1,web\n",
        true,
    );
    assert_eq!(
        e,
        "<dir>/short.csv: row 1, field `source`: 2 fields, but the header has 3 \
         (line 3 of the file, counting from 1)"
    );
    // A row that spans lines, and an empty line.
    let e = refuse(root, "short2.csv", b"text,label\na,0\n\"b\nc\"\n", true);
    assert_eq!(
        e,
        "<dir>/short2.csv: row 1, field `label`: 1 field, but the header has 2 \
         (lines 3-4 of the file, counting from 1)"
    );
    let e = refuse(root, "blank.csv", b"text,label\r\na,0\r\n\r\nb,1\r\n", true);
    assert_eq!(
        e,
        "<dir>/blank.csv: row 1, field `-`: empty line, but the header has 2 fields \
         (line 3 of the file, counting from 1)"
    );
}

#[test]
fn broken_json_lines_name_file_line_and_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // Blank lines are skipped, so row 1 is on line 3.
    let e = refuse(
        root,
        "comma.jsonl",
        b"{\"text\": \"a\", \"label\": 0}\n\n{\"text\": \"b\", \"label\": 1,}\n",
        true,
    );
    assert_eq!(
        e,
        "<dir>/comma.jsonl: row 1, field `-`: invalid JSON at column 26: trailing comma \
         (line 3 of the file, counting from 1)"
    );
    let e = refuse(
        root,
        "array.jsonl",
        b"{\"text\": \"a\", \"label\": 0}\n[\"b\", 1]\n",
        true,
    );
    assert_eq!(
        e,
        "<dir>/array.jsonl: row 1, field `-`: not a JSON object: an array \
         (line 2 of the file, counting from 1)"
    );
}

#[test]
fn empty_splits_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for names in [true, false] {
        let e = refuse(root, "header.csv", b"text,label\n", names);
        assert_eq!(e, "ingest: split `test` of <dir>/header.csv has no rows");
    }
    let e = refuse(root, "nothing.tsv", b"", true);
    assert_eq!(e, "ingest: split `test` of <dir>/nothing.tsv has no rows");
    let e = refuse(root, "blank.jsonl", b"\n  \n", true);
    assert_eq!(e, "ingest: split `test` of <dir>/blank.jsonl has no rows");
    let mut df = polars::df!("text" => Vec::<&str>::new(), "label" => Vec::<i64>::new()).unwrap();
    let path = root.join("empty.parquet");
    ParquetWriter::new(std::fs::File::create(&path).unwrap())
        .finish(&mut df)
        .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let e = refuse(root, "empty.parquet", &bytes, true);
    assert_eq!(e, "ingest: split `test` of <dir>/empty.parquet has no rows");
}

#[test]
fn non_string_text_columns_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let e = refuse(root, "numbers.csv", b"text,label\n12,0\n7,1\n", true);
    assert_eq!(
        e,
        "<dir>/numbers.csv: column `text`: expected text, found i64"
    );
    let e = refuse(
        root,
        "flags.jsonl",
        b"{\"text\": true, \"label\": 0}\n",
        true,
    );
    assert_eq!(
        e,
        "<dir>/flags.jsonl: column `text`: expected text, found bool"
    );
}

#[test]
fn bad_values_name_file_row_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let line = |n: usize| format!("(line {n} of the file, counting from 1)");
    // Empty text and label fields in CSV; the quoted line break moves the lines on.
    let e = refuse(root, "t.csv", b"text,label\n\"a\nb\",0\n,1\n", true);
    assert_eq!(
        e,
        format!("<dir>/t.csv: row 1, field `text`: empty text {}", line(4))
    );
    let e = refuse(root, "l.csv", b"text,label\na,0\nb,\n", true);
    assert_eq!(
        e,
        format!("<dir>/l.csv: row 1, field `label`: empty label {}", line(3))
    );
    // A stray value in a column of integer ids: named, whether or not label names are given
    // (before, it turned the column into names: `label_names` 0, x or "`0` is not one of").
    for names in [true, false] {
        let e = refuse(root, "x.csv", b"text,label\na,0\nb,1\nc,x\n", names);
        assert_eq!(
            e,
            format!(
                "<dir>/x.csv: row 2, field `label`: label `x` is not an integer id, but row 0's \
                 label `0` is {}",
                line(4)
            )
        );
    }
    let e = refuse(
        root,
        "mixed.jsonl",
        b"{\"text\": \"a\", \"label\": \"pos\"}\n{\"text\": \"b\", \"label\": 0}\n",
        true,
    );
    assert_eq!(
        e,
        format!(
            "<dir>/mixed.jsonl: row 1, field `label`: label `0` is an integer id, but row 0's \
             label `pos` is a name {}",
            line(2)
        )
    );
    let e = refuse(root, "f.csv", b"text,label\na,0\nb,1.5\n", true);
    assert_eq!(
        e,
        format!(
            "<dir>/f.csv: row 1, field `label`: label `1.5` is not an integer id {}",
            line(3)
        )
    );
    // Unknown names, ids out of range or negative (the field is the label column's name).
    let e = refuse(root, "n.tsv", b"text\tlabel\na\tpos\nb\tneutral\n", true);
    assert_eq!(
        e,
        format!(
            "<dir>/n.tsv: row 1, field `label`: label `neutral` is not one of the label names \
             [\"neg\", \"pos\"] {}",
            line(3)
        )
    );
    let e = refuse(root, "id.jsonl", b"{\"text\": \"a\", \"label\": 2}\n", true);
    assert_eq!(
        e,
        format!(
            "<dir>/id.jsonl: row 0, field `label`: label id 2 is outside the 2 label names \
             [\"neg\", \"pos\"] {}",
            line(1)
        )
    );
    let path = root.join("neg.csv");
    std::fs::write(&path, b"body,y\na,0\nb,-1\n").unwrap();
    let p = IngestParams {
        files: Some([("test".to_string(), path)].into()),
        text_columns: vec!["body".into()],
        label_column: Some("y".into()),
        ..Default::default()
    };
    let e = err(&p, root).replace(&root.display().to_string(), "<dir>");
    assert_eq!(
        e,
        format!(
            "<dir>/neg.csv: row 1, field `y`: label id -1 is negative (a split whose labels are \
             hidden as -1: mark it `unlabelled: true` under `splits`) {}",
            line(3)
        )
    );
    // Parquet has no lines: the row alone.
    let mut df = polars::df!("text" => ["a", "b"], "label" => [Some(0i64), None]).unwrap();
    let path = root.join("null.parquet");
    ParquetWriter::new(std::fs::File::create(&path).unwrap())
        .finish(&mut df)
        .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let e = refuse(root, "null.parquet", &bytes, true);
    assert_eq!(e, "<dir>/null.parquet: row 1, field `label`: null label");
}
