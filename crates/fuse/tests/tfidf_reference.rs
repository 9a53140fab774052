//! The `tfidf` stage against scikit-learn's `TfidfVectorizer` (fixture written by
//! `scripts/reference/make_tfidf_reference.py`), and on real AG News texts.

mod common;

use common::*;
use llmembed_core::{ApplyEnv, Input, Rows, Stage, TextTable, read_sparse_table, write_text_table};
use llmembed_fuse::{Tfidf, TfidfParams};

fn text_input(root: &std::path::Path, splits: &[(&str, &TextTable)]) -> Input {
    let dir = root.join("ingest");
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for (split, t) in splits {
        let f = format!("{split}.parquet");
        write_text_table(&dir.join(&f), t).unwrap();
        files.push(f);
    }
    Input {
        stage_id: "ingest".into(),
        dir,
        files,
    }
}

fn texts_table(prefix: &str, texts: Vec<String>) -> TextTable {
    let n = texts.len();
    TextTable::new(ids(prefix, n), texts, vec![0; n], label_names())
}

#[test]
fn matches_scikit_learn_tfidf_vectorizer() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tfidf_reference.json"
    );
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let train = texts_table("tr", strings(&fixture["train"]));
    let test = texts_table("te", strings(&fixture["test"]));
    let dir = tempfile::tempdir().unwrap();
    let input = text_input(dir.path(), &[("train", &train), ("test", &test)]);
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let params: TfidfParams = serde_json::from_value(case["params"].clone()).unwrap();
        let (out, summary) =
            run_stage::<Tfidf>(dir.path(), name, &params, std::slice::from_ref(&input)).unwrap();
        assert_eq!(summary.rows_out, train.len() + test.len());
        let vocab: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("vocabulary.json")).unwrap()).unwrap();
        assert_eq!(
            strings(&vocab["terms"]),
            strings(&case["features"]),
            "{name}: features"
        );
        for (got, want) in vocab["idf"]
            .as_array()
            .unwrap()
            .iter()
            .zip(case["idf"].as_array().unwrap())
        {
            assert!(
                (got.as_f64().unwrap() - want.as_f64().unwrap()).abs() < 1e-12,
                "{name}: idf"
            );
        }
        for (split, key) in [("train", "train_matrix"), ("test", "test_matrix")] {
            let t = read_sparse_table(&out.join(format!("{split}.parquet"))).unwrap();
            let want = case[key].as_array().unwrap();
            assert_eq!(t.len(), want.len());
            for (r, wrow) in want.iter().enumerate() {
                let wrow = wrow.as_array().unwrap();
                assert_eq!(t.dim, wrow.len(), "{name}: width");
                let dense = t.dense_row(r);
                for (j, w) in wrow.iter().enumerate() {
                    let (g, w) = (f64::from(dense[j]), w.as_f64().unwrap());
                    assert!(
                        (g - w).abs() < 1e-6,
                        "{name} {split} row {r} col {j}: {g} vs {w}"
                    );
                }
            }
        }
    }
}

#[test]
fn ag_news_rows_are_unit_length_and_use_the_train_vocabulary() {
    let Some((tr, trl)) = ag_news("train", 300) else {
        return;
    };
    let Some((te, tel)) = ag_news("test", 100) else {
        return;
    };
    let train = TextTable::new(ids("tr", 300), tr, trl, label_names());
    let test = TextTable::new(ids("te", 100), te, tel, label_names());
    let dir = tempfile::tempdir().unwrap();
    let input = text_input(dir.path(), &[("train", &train), ("test", &test)]);
    let p = TfidfParams {
        max_features: Some(1000),
        ..TfidfParams::default()
    };
    let (out, _) = run_stage::<Tfidf>(dir.path(), "o", &p, std::slice::from_ref(&input)).unwrap();
    let vocab: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("vocabulary.json")).unwrap()).unwrap();
    let terms = vocab["terms"].as_array().unwrap();
    // 300 news texts have 1,830 1-2 grams seen at least twice: the cap of 1000 applies.
    assert_eq!(terms.len(), 1000);
    assert!(
        vocab["df"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d.as_u64().unwrap() >= 2)
    );
    let tr_out = read_sparse_table(&out.join("train.parquet")).unwrap();
    let te_out = read_sparse_table(&out.join("test.parquet")).unwrap();
    assert_eq!(tr_out.ids, train.ids);
    assert_eq!(te_out.labels, test.labels);
    assert_eq!(tr_out.label_names, label_names());
    for t in [&tr_out, &te_out] {
        assert_eq!(t.dim, 1000);
        for r in 0..t.len() {
            let (idx, val) = t.row(r);
            let n: f64 = val.iter().map(|&v| f64::from(v).powi(2)).sum();
            // Every news text shares some frequent term with the train vocabulary.
            assert!((n - 1.0).abs() < 1e-5, "row {r}: squared norm {n}");
            assert!(
                val.iter().all(|&v| v > 0.0),
                "row {r}: only non-zero entries"
            );
            assert!(idx.windows(2).all(|w| w[0] < w[1]), "row {r}: column order");
        }
    }
    // Sparse: a news text has tens of the 1,000 terms, not all of them.
    assert!(
        tr_out.nnz() < 100 * tr_out.len(),
        "{} entries",
        tr_out.nnz()
    );
    // Deterministic: same bytes twice.
    let (again, _) =
        run_stage::<Tfidf>(dir.path(), "o2", &p, std::slice::from_ref(&input)).unwrap();
    llmembed_testkit::assert_same_output_bytes(
        &out,
        &again,
        &[
            "train.parquet",
            "test.parquet",
            "vocabulary.json",
            "idf.safetensors",
        ],
    );

    // The applier, loaded from the artifact alone, gives the test texts exactly the rows `run`
    // wrote for them (ids, labels, indices and f32 values bit for bit).
    let fitted = Input {
        stage_id: "tfidf".into(),
        dir: out.clone(),
        files: [
            "train.parquet",
            "test.parquet",
            "vocabulary.json",
            "idf.safetensors",
        ]
        .map(String::from)
        .to_vec(),
    };
    let env = ApplyEnv {
        env: llmembed_testkit::stage_env(0),
        store_dir: dir.path().join("store"),
    };
    let applier = Tfidf::applier(&p, &fitted, &env)
        .unwrap()
        .expect("tfidf applies");
    match applier.apply(&[Rows::Text(test.clone())]).unwrap() {
        Rows::Sparse(rows) => assert_eq!(rows, te_out),
        other => panic!("expected sparse rows, got {}", other.kind()),
    }
    let err = applier
        .apply(&[Rows::Sparse(te_out.clone())])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("expected text rows, got sparse rows"), "{err}");
    // A vocabulary whose idf does not match its tensor is refused, naming the term.
    let json = std::fs::read_to_string(out.join("vocabulary.json")).unwrap();
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["n_train"] = serde_json::json!(301);
    std::fs::write(broken.join("vocabulary.json"), v.to_string()).unwrap();
    std::fs::copy(out.join("idf.safetensors"), broken.join("idf.safetensors")).unwrap();
    let bad = Input {
        dir: broken,
        ..fitted
    };
    let err = Tfidf::applier(&p, &bad, &env).err().unwrap().to_string();
    assert!(
        err.contains("idf of `") && err.contains("301 train texts"),
        "{err}"
    );
}

#[test]
fn tfidf_params_check() {
    let p: TfidfParams = serde_saphyr::from_str("{}").unwrap();
    assert_eq!(p, TfidfParams::default());
    assert_eq!(p.min_df, 2);
    assert_eq!(p.max_features, Some(20000));
    use llmembed_core::Stage;
    let bad = TfidfParams {
        ngram_range: [2, 1],
        ..TfidfParams::default()
    };
    let err = Tfidf::check(&bad).unwrap_err().to_string();
    assert_eq!(err, "param `ngram_range`: [2, 1]: need 1 <= min <= max");
    let err = serde_saphyr::from_str::<TfidfParams>("min_dff: 3")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `min_dff`"), "{err}");
}
