//! `report.md`: the scores side by side, with their intervals and tests, then one section per
//! classifier.

use std::fmt::Write as _;

use crate::significance::Interval;
use crate::{ClassifierMetrics, MetricsFile};

/// Escapes text for a markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

pub(crate) fn render(m: &MetricsFile, pngs: &[String]) -> String {
    let mut r = String::new();
    let _ = writeln!(r, "# Evaluation\n");
    if let Some(notes) = &m.notes {
        let _ = writeln!(r, "{}\n", notes.trim_end());
    }
    if m.unlabelled_rows > 0 {
        let _ = writeln!(
            r,
            "{} labelled test rows scored ({} rows without a label ignored), {} classes: {}.\n",
            m.n_rows,
            m.unlabelled_rows,
            m.label_names.len(),
            m.label_names.join(", ")
        );
    } else {
        let _ = writeln!(
            r,
            "{} test rows, {} classes: {}.\n",
            m.n_rows,
            m.label_names.len(),
            m.label_names.join(", ")
        );
    }
    summary_table(&mut r, m);
    let _ = writeln!(
        r,
        "Intervals: percentile bootstrap over the test rows, {} resamples (seed {}); p-values: \
         exact McNemar test against the baseline on the same rows.\n",
        m.bootstrap.resamples, m.bootstrap.seed
    );
    for (c, png) in m.classifiers.iter().zip(pngs) {
        classifier_section(&mut r, m, c, png);
    }
    r
}

/// One classifier's per-class table, confusion matrix and plot.
fn classifier_section(r: &mut String, m: &MetricsFile, c: &ClassifierMetrics, png: &str) {
    let _ = writeln!(r, "## {}\n", c.name);
    if c.producer != c.name || c.stage_id != c.name {
        let _ = writeln!(r, "Stage `{}`, producer `{}`.\n", c.stage_id, c.producer);
    }
    let _ = writeln!(r, "| class | precision | recall | F1 | support |");
    let _ = writeln!(r, "|---|---:|---:|---:|---:|");
    for k in &c.per_class {
        let _ = writeln!(
            r,
            "| {} | {:.4} | {:.4} | {:.4} | {} |",
            cell(&k.label),
            k.precision,
            k.recall,
            k.f1,
            k.support
        );
    }
    let _ = writeln!(
        r,
        "\nConfusion matrix (rows = true class, columns = predicted class):\n"
    );
    let _ = write!(r, "| true \\ predicted |");
    for l in &m.label_names {
        let _ = write!(r, " {} |", cell(l));
    }
    let _ = write!(r, "\n|---|");
    for _ in &m.label_names {
        r.push_str("---:|");
    }
    r.push('\n');
    for (l, row) in m.label_names.iter().zip(&c.confusion) {
        let _ = write!(r, "| {} |", cell(l));
        for v in row {
            let _ = write!(r, " {v} |");
        }
        r.push('\n');
    }
    let _ = writeln!(r, "\n![confusion matrix of {}]({png})\n", cell(&c.name));
}

/// The table of every classifier's scores (against the baseline when there is one).
fn summary_table(r: &mut String, m: &MetricsFile) {
    let level = format!("{:.0}%", m.bootstrap.confidence * 100.0);
    let ci = |v: f64, i: &Interval| format!("{v:.4} [{:.4}, {:.4}]", i.low, i.high);
    match &m.baseline {
        Some(b) => {
            let _ = writeln!(
                r,
                "| classifier | accuracy [{level} CI] | macro-F1 [{level} CI] | Δ accuracy vs `{}` | McNemar p | beats baseline |",
                cell(b)
            );
            let _ = writeln!(r, "|---|---:|---:|---:|---:|---|");
            for c in &m.classifiers {
                let (delta, p, beats) = match &c.vs_baseline {
                    Some(v) => (
                        format!("{:+.4}", v.delta_accuracy),
                        format!("{:.3}", v.mcnemar.p_value),
                        match (v.beats, v.significant) {
                            (true, true) => "yes",
                            (true, false) => "higher, not significant",
                            (false, true) => "no (significantly lower)",
                            (false, false) => "no",
                        }
                        .to_string(),
                    ),
                    None => ("—".to_string(), "—".to_string(), "(baseline)".to_string()),
                };
                let _ = writeln!(
                    r,
                    "| {} | {} | {} | {delta} | {p} | {beats} |",
                    cell(&c.name),
                    ci(c.accuracy, &c.accuracy_ci),
                    ci(c.macro_f1, &c.macro_f1_ci)
                );
            }
            let winners: Vec<&str> = m
                .classifiers
                .iter()
                .filter(|c| {
                    c.vs_baseline
                        .as_ref()
                        .is_some_and(|v| v.beats && v.significant)
                })
                .map(|c| c.name.as_str())
                .collect();
            if winners.is_empty() {
                let _ = writeln!(r, "\nNone beat the baseline `{b}` significantly.\n");
            } else {
                let _ = writeln!(
                    r,
                    "\nBeat the baseline `{b}` (higher accuracy, McNemar p < {:.2}): {}.\n",
                    1.0 - m.bootstrap.confidence,
                    winners.join(", ")
                );
            }
        }
        None => {
            let _ = writeln!(
                r,
                "| classifier | accuracy [{level} CI] | macro-F1 [{level} CI] |"
            );
            let _ = writeln!(r, "|---|---:|---:|");
            for c in &m.classifiers {
                let _ = writeln!(
                    r,
                    "| {} | {} | {} |",
                    cell(&c.name),
                    ci(c.accuracy, &c.accuracy_ci),
                    ci(c.macro_f1, &c.macro_f1_ci)
                );
            }
            r.push('\n');
        }
    }
}
