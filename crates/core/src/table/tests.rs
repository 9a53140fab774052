use super::*;

fn names() -> Vec<String> {
    vec!["a".into(), "b".into()]
}

#[test]
fn text_table_round_trips_with_label_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.parquet");
    let mut t = TextTable::new(
        vec!["r0".into(), "r1".into()],
        vec!["héllo".into(), "world".into()],
        vec![0, 1],
        names(),
    );
    t.source_ids[1] = Some("r0".into());
    t.augment_ops[1] = Some("swap".into());
    write_text_table(&path, &t).unwrap();
    assert_eq!(read_text_table(&path).unwrap(), t);
}

#[test]
fn embeddings_round_trip_in_f32_and_f16_and_select_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.parquet");
    let t = EmbeddingTable {
        ids: vec!["x".into(), "y".into(), "z".into()],
        labels: vec![1, 0, 1],
        label_names: names(),
        columns: vec![
            VectorColumn::new("layer_0", 2, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            VectorColumn::new("layer_1", 1, vec![0.5, 0.25, -1.0]),
        ],
    };
    write_embedding_table(&path, &t, Precision::F32).unwrap();
    assert_eq!(read_embedding_table(&path, None).unwrap(), t);
    let only = read_embedding_table(&path, Some(&["layer_1"])).unwrap();
    assert_eq!(only.columns.len(), 1);
    assert_eq!(only.columns[0].values, vec![0.5, 0.25, -1.0]);

    write_embedding_table(&path, &t, Precision::F16).unwrap();
    // These values are exact in f16.
    assert_eq!(read_embedding_table(&path, None).unwrap(), t);
}

#[test]
fn predictions_round_trip_and_shape_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.parquet");
    let p = Predictions {
        ids: vec!["x".into()],
        labels: vec![1],
        preds: vec![0],
        probs: vec![0.75, 0.25],
        label_names: names(),
        producer: "lr".into(),
    };
    write_predictions(&path, &p).unwrap();
    assert_eq!(read_predictions(&path).unwrap(), p);
    let bad = Predictions {
        probs: vec![1.0],
        ..p
    };
    let err = write_predictions(&path, &bad).unwrap_err().to_string();
    assert_eq!(
        err,
        "write predictions: 1 probabilities for 1 rows x 2 classes"
    );
}

#[test]
fn missing_column_names_file_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.parquet");
    let t = EmbeddingTable {
        ids: vec!["x".into()],
        labels: vec![0],
        label_names: names(),
        columns: vec![VectorColumn::new("layer_0", 1, vec![1.0])],
    };
    write_embedding_table(&path, &t, Precision::F32).unwrap();
    let err = read_embedding_table(&path, Some(&["layer_9"])).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("e.parquet") && msg.contains("layer_9"),
        "{msg}"
    );
}

#[test]
fn sparse_tables_round_trip_and_bad_rows_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.parquet");
    let mut t = SparseTable::new("embedding", 5, names());
    t.push_row("a".into(), 0, &[(1, 0.5), (4, -2.0)]);
    t.push_row("b".into(), 1, &[]);
    t.push_row("c".into(), 1, &[(0, 1.0)]);
    write_sparse_table(&path, &t).unwrap();
    assert_eq!(sparse_column(&path).unwrap(), Some(("embedding".into(), 5)));
    let back = read_sparse_table(&path).unwrap();
    assert_eq!(back, t);
    assert_eq!(back.dense_row(0), vec![0.0, 0.5, 0.0, 0.0, -2.0]);
    assert_eq!(back.row(1), (&[][..], &[][..]));
    // A dense embedding file has no sparse column, and reading it as sparse says so.
    let dense = dir.path().join("d.parquet");
    let e = EmbeddingTable {
        ids: vec!["x".into()],
        labels: vec![0],
        label_names: names(),
        columns: vec![VectorColumn::new("embedding", 2, vec![1.0, 2.0])],
    };
    write_embedding_table(&dense, &e, Precision::F32).unwrap();
    assert_eq!(sparse_column(&dense).unwrap(), None);
    let err = read_sparse_table(&dense).unwrap_err().to_string();
    assert!(err.contains("no sparse vector column"), "{err}");
    // An index past the width is refused, naming the row.
    let mut bad = SparseTable::new("embedding", 3, names());
    bad.push_row("a".into(), 0, &[(0, 1.0)]);
    bad.push_row("b".into(), 0, &[(1, 1.0), (3, 1.0)]);
    let err = write_sparse_table(&dir.path().join("bad.parquet"), &bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("row 1") && err.contains("index 3 outside the width 3"),
        "{err}"
    );
}
