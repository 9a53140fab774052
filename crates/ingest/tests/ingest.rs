use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use llmembed_core::{Context, Env, External, Stage, TextTable, read_text_table};
use llmembed_ingest::{HubSource, Ingest, IngestParams, Sample, SplitSpec};
use polars::prelude::*;

/// The shared data folder (`LLMEMBED_DATA_DIR`, else `<repo>/../shared/data`) holding AG News,
/// or `None`: the test skips, or fails under `LLMEMBED_REQUIRE_TEST_INPUTS=1`.
fn data_dir() -> Option<PathBuf> {
    llmembed_testkit::needs("AG News", llmembed_testkit::ag_news_dir())
}

fn env(data_dir: &Path, pipeline_dir: &Path, seed: u64) -> Env {
    Env {
        data_dir: data_dir.to_path_buf(),
        models_dir: pipeline_dir.join("models"),
        pipeline_dir: pipeline_dir.to_path_buf(),
        seed,
        quiet: true,
    }
}

/// Checks and runs the stage into a fresh `out` folder under `root`.
fn run(p: &IngestParams, env: &Env, root: &Path, out: &str) -> llmembed_core::Result<PathBuf> {
    Ingest::check(p)?;
    let out_dir = root.join(out);
    std::fs::create_dir_all(&out_dir).unwrap();
    let ctx = Context {
        env,
        out_dir: out_dir.clone(),
        store_dir: root.join("store"),
        seed: env.seed,
    };
    Ingest::run(p, &[], &ctx)?;
    Ok(out_dir)
}

fn splits(items: &[(&str, Option<Sample>)]) -> BTreeMap<String, SplitSpec> {
    items
        .iter()
        .map(|(s, sample)| (s.to_string(), SplitSpec { sample: *sample }))
        .collect()
}

fn per_class_counts(t: &TextTable) -> Vec<usize> {
    let mut counts = vec![0; t.label_names.len()];
    for &l in &t.labels {
        counts[l as usize] += 1;
    }
    counts
}

fn read(out: &Path, split: &str) -> TextTable {
    read_text_table(&out.join(format!("{split}.parquet"))).unwrap()
}

fn bytes(out: &Path, split: &str) -> Vec<u8> {
    std::fs::read(out.join(format!("{split}.parquet"))).unwrap()
}

#[test]
fn ag_news_class_balanced_sample_is_deterministic() {
    let Some(data) = data_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let p = IngestParams {
        dataset: Some("ag_news".into()),
        splits: splits(&[
            ("train", Some(Sample::Total(2000))),
            ("test", Some(Sample::PerClass(125))),
        ]),
        ..Default::default()
    };
    let e = env(&data, root, 13);
    let out = run(&p, &e, root, "a").unwrap();
    let train = read(&out, "train");
    let test = read(&out, "test");
    assert_eq!(
        train.label_names,
        ["World", "Sports", "Business", "Sci/Tech"]
    );
    assert_eq!(per_class_counts(&train), [500; 4]);
    assert_eq!(per_class_counts(&test), [125; 4]);
    assert_eq!(train.len(), 2000);
    assert_eq!(test.len(), 500);

    // Ids name source rows: `<split>-<index>`, increasing, and the text/label are that row's.
    let src = ParquetReader::new(std::fs::File::open(data.join("ag_news/train.parquet")).unwrap())
        .finish()
        .unwrap();
    let src_text = src.column("text").unwrap().str().unwrap().clone();
    let src_label = src.column("label").unwrap().cast(&DataType::Int64).unwrap();
    let src_label = src_label.i64().unwrap();
    let mut last = None;
    for i in 0..train.len() {
        let idx: usize = train.ids[i]
            .strip_prefix("train-")
            .unwrap()
            .parse()
            .unwrap();
        assert!(last.is_none_or(|l| l < idx), "ids in source order");
        last = Some(idx);
        assert_eq!(src_text.get(idx).unwrap(), train.texts[i]);
        assert_eq!(src_label.get(idx).unwrap(), train.labels[i]);
    }
    assert!(test.ids.iter().all(|id| id.starts_with("test-")));

    // Same params and seed: same bytes.
    let again = run(&p, &e, root, "b").unwrap();
    assert_eq!(bytes(&out, "train"), bytes(&again, "train"));
    assert_eq!(bytes(&out, "test"), bytes(&again, "test"));

    // Another pipeline seed: another sample.
    let other = run(&p, &env(&data, root, 14), root, "c").unwrap();
    let other_train = read(&other, "train");
    assert_ne!(other_train.ids, train.ids);
    assert_eq!(per_class_counts(&other_train), [500; 4]);

    // The stage's own seed overrides the pipeline's.
    let pinned = IngestParams {
        seed: Some(13),
        ..p.clone()
    };
    let overridden = run(&pinned, &env(&data, root, 99), root, "d").unwrap();
    assert_eq!(bytes(&out, "train"), bytes(&overridden, "train"));

    // Externals: every local file read.
    let ext = Ingest::externals(&p, &e).unwrap();
    let files: Vec<&Path> = ext
        .iter()
        .map(|x| match x {
            External::File { path, .. } => path.as_path(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(files.len(), 3, "{ext:?}");
    assert!(files.iter().any(|f| f.ends_with("ag_news/train.parquet")));
    assert!(files.iter().any(|f| f.ends_with("ag_news/test.parquet")));
    assert!(files.iter().any(|f| f.ends_with("ag_news/labels.txt")));
}

#[test]
fn sst2_all_splits_and_ids_survive_resampling() {
    let Some(data) = data_dir() else { return };
    if llmembed_testkit::needs("SST-2", llmembed_testkit::dataset_dir("sst2", "train")).is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let e = env(&data, root, 1);
    let all = IngestParams {
        dataset: Some("sst2".into()),
        ..Default::default()
    };
    let out = run(&all, &e, root, "all").unwrap();
    let (train, dev, test) = (read(&out, "train"), read(&out, "dev"), read(&out, "test"));
    assert_eq!((train.len(), dev.len(), test.len()), (6920, 872, 1821));
    assert_eq!(per_class_counts(&dev), [428, 444]);
    assert_eq!(train.label_names, ["negative", "positive"]);
    assert_eq!(train.ids[17], "train-17");

    let sampled = IngestParams {
        splits: splits(&[("dev", Some(Sample::PerClass(100)))]),
        ..all
    };
    let out = run(&sampled, &e, root, "sampled").unwrap();
    assert!(!out.join("train.parquet").exists());
    let small = read(&out, "dev");
    assert_eq!(per_class_counts(&small), [100, 100]);
    for (i, id) in small.ids.iter().enumerate() {
        let j = dev.ids.iter().position(|x| x == id).unwrap();
        assert_eq!(
            (&dev.texts[j], dev.labels[j]),
            (&small.texts[i], small.labels[i])
        );
    }
}

const ROWS: &[(&str, &str, &str)] = &[
    (
        "Stocks rally",
        "Markets rose on Friday, \"sharply\".",
        "Business",
    ),
    ("Cup final", "A late goal won it", "Sports"),
    ("New chip", "Faster and cooler", "Sci/Tech"),
    ("Cup final", "A late goal won it", "Sports"),
    ("Summit ends", "Leaders agree, tabs and\tall", "World"),
    ("Überraschung", "Grüße aus Köln — ok", "World"),
];
const NAMES: [&str; 4] = ["World", "Sports", "Business", "Sci/Tech"];

fn label_id(name: &str) -> i64 {
    NAMES.iter().position(|n| *n == name).unwrap() as i64
}

fn csv_field(s: &str, sep: char) -> String {
    if s.contains(sep) || s.contains('"') || s.contains('\n') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn write_delimited(path: &Path, sep: char, names_as_labels: bool) {
    let mut s = format!("title{sep}description{sep}label\n");
    for (t, d, l) in ROWS {
        let label = if names_as_labels {
            l.to_string()
        } else {
            label_id(l).to_string()
        };
        s.push_str(&format!(
            "{}{sep}{}{sep}{}\n",
            csv_field(t, sep),
            csv_field(d, sep),
            csv_field(&label, sep)
        ));
    }
    std::fs::write(path, s).unwrap();
}

fn write_jsonl(path: &Path) {
    let mut s = String::new();
    for (t, d, l) in ROWS {
        s.push_str(
            &serde_json::json!({"title": t, "description": d, "label": label_id(l), "extra": 1.5})
                .to_string(),
        );
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

fn write_parquet(path: &Path) {
    let mut df = polars::df!(
        "title" => ROWS.iter().map(|r| r.0).collect::<Vec<_>>(),
        "description" => ROWS.iter().map(|r| r.1).collect::<Vec<_>>(),
        "label" => ROWS.iter().map(|r| label_id(r.2) as i32).collect::<Vec<_>>(),
    )
    .unwrap();
    ParquetWriter::new(std::fs::File::create(path).unwrap())
        .finish(&mut df)
        .unwrap();
}

fn local(files: &[(&str, &Path)]) -> IngestParams {
    IngestParams {
        files: Some(
            files
                .iter()
                .map(|(s, p)| (s.to_string(), p.to_path_buf()))
                .collect(),
        ),
        text_columns: vec!["title".into(), "description".into()],
        label_names: Some(NAMES.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
}

#[test]
fn reads_csv_tsv_jsonl_and_parquet_alike() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_delimited(&root.join("a.csv"), ',', true);
    write_delimited(&root.join("b.tsv"), '\t', false);
    write_jsonl(&root.join("c.jsonl"));
    write_parquet(&root.join("d.parquet"));
    let e = env(&root.join("no-data"), root, 0);
    // Relative paths resolve against the pipeline folder.
    let p = local(&[
        ("csv", Path::new("a.csv")),
        ("tsv", Path::new("b.tsv")),
        ("jsonl", Path::new("c.jsonl")),
        ("parquet", &root.join("d.parquet")),
    ]);
    let out = run(&p, &e, root, "out").unwrap();
    let expected_texts: Vec<String> = ROWS.iter().map(|(t, d, _)| format!("{t} {d}")).collect();
    let expected_labels: Vec<i64> = ROWS.iter().map(|r| label_id(r.2)).collect();
    for split in ["csv", "tsv", "jsonl", "parquet"] {
        let t = read(&out, split);
        assert_eq!(t.texts, expected_texts, "{split}");
        assert_eq!(t.labels, expected_labels, "{split}");
        assert_eq!(t.ids[5], format!("{split}-5"));
        assert_eq!(t.label_names, NAMES);
    }
    let ext = Ingest::externals(&p, &e).unwrap();
    assert_eq!(ext.len(), 4);
    assert!(ext.contains(&External::File {
        name: "split:csv".into(),
        path: root.join("a.csv")
    }));

    // Dedup drops the repeated row 3 and keeps ids of the others.
    let dedup = IngestParams {
        dedup: true,
        ..local(&[("train", &root.join("a.csv"))])
    };
    let out = run(&dedup, &e, root, "dedup").unwrap();
    let t = read(&out, "train");
    assert_eq!(
        t.ids,
        ["train-0", "train-1", "train-2", "train-4", "train-5"]
    );

    // No label names given: string labels give the sorted names, integer ids "0".."max".
    let derived = IngestParams {
        label_names: None,
        ..local(&[("train", &root.join("a.csv"))])
    };
    let t = read(&run(&derived, &e, root, "derived").unwrap(), "train");
    assert_eq!(t.label_names, ["Business", "Sci/Tech", "Sports", "World"]);
    assert_eq!(t.texts[0], expected_texts[0]);
    assert_eq!(t.labels[0], 0);
    let derived = IngestParams {
        label_names: None,
        ..local(&[("train", &root.join("c.jsonl"))])
    };
    let t = read(&run(&derived, &e, root, "derived_ids").unwrap(), "train");
    assert_eq!(t.label_names, ["0", "1", "2", "3"]);
}

fn err(p: &IngestParams, root: &Path) -> String {
    let e = env(&root.join("no-data"), root, 0);
    let out = format!("err-{}", rand_suffix());
    run(p, &e, root, &out).unwrap_err().to_string()
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn bad_input_is_named_by_file_row_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let f = |name: &str, content: &[u8]| {
        let path = root.join(name);
        std::fs::write(&path, content).unwrap();
        path
    };
    let single = |path: &Path| IngestParams {
        files: Some([("train".to_string(), path.to_path_buf())].into()),
        label_names: Some(vec!["neg".into(), "pos".into()]),
        ..Default::default()
    };

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

/// Writes `content` to `root/name` and ingests it as split `test` (label names neg, pos unless
/// `names` is false), returning the error and its text with `root` shortened to `<dir>`.
fn refuse(root: &Path, name: &str, content: &[u8], names: bool) -> String {
    let path = root.join(name);
    std::fs::write(&path, content).unwrap();
    let p = IngestParams {
        files: Some([("test".to_string(), path)].into()),
        label_names: names.then(|| vec!["neg".into(), "pos".into()]),
        ..Default::default()
    };
    let e = env(&root.join("no-data"), root, 0);
    let out = format!("err-{}", rand_suffix());
    let e = run(&p, &e, root, &out).unwrap_err();
    // One message: nothing chained below it that a caller would print a second time.
    assert!(std::error::Error::source(&e).is_none(), "{e:?}");
    e.to_string().replace(&root.display().to_string(), "<dir>")
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
        label_column: "y".into(),
        ..Default::default()
    };
    let e = err(&p, root).replace(&root.display().to_string(), "<dir>");
    assert_eq!(
        e,
        format!(
            "<dir>/neg.csv: row 1, field `y`: label id -1 is negative {}",
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

#[test]
fn params_parse_with_defaults_and_reject_unknown_fields() {
    let json = serde_json::json!({
        "dataset": "ag_news",
        "splits": {"train": {"sample": {"total": 2000}}, "test": {"sample": {"per_class": 125}}, "dev": {}},
    });
    let p: IngestParams = serde_json::from_value(json).unwrap();
    assert_eq!(p.text_columns, ["text"]);
    assert_eq!(p.label_column, "label");
    assert_eq!(p.splits["train"].sample, Some(Sample::Total(2000)));
    assert_eq!(p.splits["test"].sample, Some(Sample::PerClass(125)));
    assert_eq!(p.splits["dev"].sample, None);
    let e = serde_json::from_value::<IngestParams>(serde_json::json!({"dataset": "x", "sed": 1}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `sed`"), "{e}");
}

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// A hub cache laid out as hf-hub and huggingface_hub write it.
fn hub_cache(root: &Path, repo: &str, with_ref: bool, files: &[(&str, &[u8])]) -> PathBuf {
    let cache = root.join("hub");
    let repo_dir = cache.join(format!("datasets--{}", repo.replace('/', "--")));
    if with_ref {
        std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
        std::fs::write(repo_dir.join("refs/main"), SHA).unwrap();
    }
    for (name, content) in files {
        let path = repo_dir.join("snapshots").join(SHA).join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    cache
}

#[test]
fn hub_dataset_from_cache_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_parquet(&root.join("src.parquet"));
    let parquet = std::fs::read(root.join("src.parquet")).unwrap();
    let cache = hub_cache(
        root,
        "someorg/tiny_news",
        true,
        &[
            ("data/train-00000-of-00001.parquet", &parquet),
            (
                "data/test.jsonl",
                b"{\"title\": \"t\", \"description\": \"d\", \"label\": 2}\n",
            ),
        ],
    );
    let e = env(&root.join("no-data"), root, 0);
    let mut p = IngestParams {
        hub: Some(HubSource {
            repo: "someorg/tiny_news".into(),
            revision: "main".into(),
            files: [
                (
                    "train".to_string(),
                    "data/train-00000-of-00001.parquet".to_string(),
                ),
                ("test".to_string(), "data/test.jsonl".to_string()),
            ]
            .into(),
        }),
        hub_cache_dir: Some(cache.clone()),
        ..local(&[])
    };
    p.files = None;
    let ext = Ingest::externals(&p, &e).unwrap();
    assert_eq!(
        ext,
        [External::Value {
            name: "hub:someorg/tiny_news".into(),
            value: SHA.into()
        }]
    );
    let out = run(&p, &e, root, "main").unwrap();
    let train = read(&out, "train");
    assert_eq!(train.len(), ROWS.len());
    assert_eq!(train.texts[1], "Cup final A late goal won it");
    assert_eq!(read(&out, "test").labels, [2]);

    // A pinned sha needs no ref (Python's huggingface_hub writes none for it).
    std::fs::remove_file(cache.join("datasets--someorg--tiny_news/refs/main")).unwrap();
    let pinned = IngestParams {
        hub: Some(HubSource {
            revision: SHA.to_uppercase(),
            ..p.hub.clone().unwrap()
        }),
        ..p.clone()
    };
    assert_eq!(Ingest::externals(&pinned, &e).unwrap(), ext);
    let out2 = run(&pinned, &e, root, "pinned").unwrap();
    assert_eq!(bytes(&out, "train"), bytes(&out2, "train"));
}

#[test]
fn named_dataset_falls_back_to_hub_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let line =
        |t: &str, l: i64| format!("{{\"text\": \"{t}\", \"label\": {l}, \"label_text\": \"x\"}}\n");
    let train = format!(
        "{}{}{}",
        line("a fine film", 1),
        line("dull", 0),
        line("great fun", 1)
    );
    let dev = line("meh", 0);
    let test = format!("{}{}", line("superb", 1), line("awful", 0));
    let cache = hub_cache(
        root,
        "SetFit/sst2",
        true,
        &[
            ("train.jsonl", train.as_bytes()),
            ("validation.jsonl", dev.as_bytes()),
            ("test.jsonl", test.as_bytes()),
        ],
    );
    // An empty data directory: sst2 is not there, so the hub (cache) is used.
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let e = env(&data, root, 0);
    let p = IngestParams {
        dataset: Some("sst2".into()),
        hub_cache_dir: Some(cache),
        ..Default::default()
    };
    assert_eq!(
        Ingest::externals(&p, &e).unwrap(),
        [External::Value {
            name: "hub:SetFit/sst2".into(),
            value: SHA.into()
        }]
    );
    let out = run(&p, &e, root, "out").unwrap();
    let t = read(&out, "train");
    assert_eq!(t.label_names, ["negative", "positive"]);
    assert_eq!(t.labels, [1, 0, 1]);
    assert_eq!(read(&out, "dev").ids, ["dev-0"]);
    assert_eq!(read(&out, "test").texts, ["superb", "awful"]);
}
