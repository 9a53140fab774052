//! `logreg` on sparse rows (what `tfidf` writes): the fit on CSR rows is the fit on the same rows
//! made dense (no standardisation on either side), the stage writes what the dense path writes,
//! and what sparse rows cannot take is refused with a reason.

use llmembed_core::{SparseTable, read_predictions, write_sparse_table};
use ndarray::Array2;

use super::*;
use crate::logreg_fit::fit_exact;
use crate::sparse::csr;

/// `bow_log` rows of `t`, each scaled to unit length, as a sparse table (zeros left out).
fn sparse_of(t: &EmbeddingTable) -> SparseTable {
    let col = t.columns.iter().find(|c| c.name == "bow_log").unwrap();
    let mut s = SparseTable::new("embedding", col.dim, t.label_names.clone());
    for i in 0..t.len() {
        let row = col.row(i);
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        let entries: Vec<(u32, f32)> = row
            .iter()
            .enumerate()
            .filter(|(_, v)| **v != 0.0)
            .map(|(j, v)| (j as u32, v / norm))
            .collect();
        s.push_row(t.ids[i].clone(), t.labels[i], &entries);
    }
    s
}

fn sparse_artifact(train: &SparseTable, test: &SparseTable) -> (tempfile::TempDir, Input) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tfidf");
    std::fs::create_dir_all(&out).unwrap();
    write_sparse_table(&out.join("train.parquet"), train).unwrap();
    write_sparse_table(&out.join("test.parquet"), test).unwrap();
    let input = Input {
        stage_id: "tfidf".into(),
        dir: out,
        files: vec!["test.parquet".into(), "train.parquet".into()],
    };
    (dir, input)
}

#[test]
fn sparse_fit_equals_the_dense_fit_of_the_same_rows() {
    let Some(bow) = bow() else { return };
    let train = sparse_of(&take(&bow.train, 800));
    let x = csr(&train);
    let dense = Array2::from_shape_vec(
        (train.len(), train.dim),
        (0..train.len())
            .flat_map(|i| train.dense_row(i))
            .map(f64::from)
            .collect(),
    )
    .unwrap();
    // Most of a row is zero: the reason to keep them sparse.
    assert!(
        train.nnz() * 10 < train.len() * train.dim,
        "{} entries",
        train.nnz()
    );
    let s = fit_exact(&x, &train.labels, 4, train.dim, 1.0, 1e-6, 1000);
    let d = fit_exact(dense.view(), &train.labels, 4, train.dim, 1.0, 1e-6, 1000);
    assert!(s.converged && d.converged);
    // Same objective and same start: the two paths differ only in the order of the products'
    // sums, and land on the same minimiser.
    let gap = (&s.w - &d.w).iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(gap < 1e-4, "weights differ by {gap}");
    let (ps, pd) = (s.probabilities(&x), d.probabilities(dense.view()));
    let gap = ps
        .iter()
        .zip(&pd)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(gap < 1e-5, "probabilities differ by {gap}");
    // And it is scikit-learn's optimum: the gradient of J_sk vanishes there.
    let onehot = Array2::from_shape_fn((train.len(), 4), |(i, j)| {
        f64::from(u8::from(train.labels[i] == j as i64))
    });
    let (_, gw, gb) = sklearn_objective(&x, &onehot, &s.w, &s.b, 1.0);
    let g = gw
        .iter()
        .chain(gb.iter())
        .fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(g < 1e-6 * train.len() as f64, "gradient {g}");
}

#[test]
fn logreg_stage_on_sparse_rows_selects_c_and_writes_predictions() {
    let Some(bow) = bow() else { return };
    let (train, test) = (sparse_of(&take(&bow.train, 800)), sparse_of(&bow.test));
    let (_dir, input) = sparse_artifact(&train, &test);
    let p = LogRegParams {
        select: Some(LogRegSelect {
            c: vec![0.1, 1.0, 10.0],
            folds: 3,
        }),
        tol: 1e-6,
        ..LogRegParams::default()
    };
    let out = run_stage::<LogReg>(&p, std::slice::from_ref(&input), 42).unwrap();
    let preds = read_predictions(&out.path().join("predictions.parquet")).unwrap();
    assert_eq!(preds.ids, test.ids);
    assert_eq!(preds.labels, test.labels);
    // Unit-length log counts of 500 words: far better than chance (0.25) on 400 test rows (0.71).
    assert!(acc(&preds) > 0.65, "accuracy {}", acc(&preds));
    let m = model_json(out.path());
    assert_eq!(m["sparse"], true);
    assert_eq!(m["input_dim"], 500);
    assert_eq!(m["converged"], true);
    assert_eq!(m["select"]["table"].as_array().unwrap().len(), 3);
    assert_no_timing_keys(&m);
    // The saved model, applied to the test rows, gives the stage's predictions to the last bit.
    let mut files: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    let fitted = Input {
        stage_id: "tfidf_lr".into(),
        dir: out.path().to_path_buf(),
        files,
    };
    let env = apply_env();
    let apply = LogReg::applier(&p, &fitted, &env)
        .unwrap()
        .expect("logreg has an applier");
    let applied = match apply
        .apply(&[llmembed_core::Rows::Sparse(test.clone())])
        .unwrap()
    {
        llmembed_core::Rows::Predictions(p) => p,
        other => panic!("got {} rows", other.kind()),
    };
    assert_eq!(applied.ids, preds.ids);
    assert_eq!(applied.preds, preds.preds);
    assert_eq!(applied.producer, preds.producer);
    let bits = |p: &Predictions| p.probs.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&applied), bits(&preds), "probabilities");
    // Dense rows are refused with a reason.
    let err = apply
        .apply(&[llmembed_core::Rows::Embedding(bow.test.clone())])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("fitted on sparse rows"), "{err}");
    // Same inputs, same bytes.
    let again = run_stage::<LogReg>(&p, std::slice::from_ref(&input), 42).unwrap();
    assert_same_output_bytes(
        out.path(),
        again.path(),
        &["predictions.parquet", "model.json"],
    );

    let linfa = LogRegParams {
        solver: LogRegSolver::Linfa,
        ..LogRegParams::default()
    };
    let err = run_stage::<LogReg>(&linfa, std::slice::from_ref(&input), 42)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("linfa takes dense features only"), "{err}");
    let column = LogRegParams {
        column: Some("layer_3".into()),
        ..LogRegParams::default()
    };
    let err = run_stage::<LogReg>(&column, &[input], 42)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("one sparse column, `embedding`"), "{err}");
}
