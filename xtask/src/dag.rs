//! `cargo xtask dag`: the pipeline's graph as text, Mermaid or Graphviz dot.

use std::fmt::Write;

use crate::pipeline::Plan;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DagFormat {
    Text,
    Mermaid,
    Dot,
}

fn edge_label(output: &Option<String>) -> String {
    output.clone().unwrap_or_default()
}

pub fn render(plan: &Plan, format: DagFormat) -> String {
    let mut s = String::new();
    match format {
        DagFormat::Text => {
            let _ = writeln!(s, "pipeline {} ({} stages)", plan.name, plan.stages.len());
            for stage in &plan.stages {
                let inputs: Vec<String> = stage
                    .inputs
                    .iter()
                    .map(|r| match &r.output {
                        Some(o) => format!("{}.{o}", plan.stages[r.stage].id),
                        None => plan.stages[r.stage].id.clone(),
                    })
                    .collect();
                let from = if inputs.is_empty() {
                    String::new()
                } else {
                    format!(" <- {}", inputs.join(", "))
                };
                let _ = writeln!(s, "  {} [{}]{from}", stage.id, stage.kind.kind());
            }
        }
        DagFormat::Mermaid => {
            let _ = writeln!(s, "flowchart LR");
            for stage in &plan.stages {
                let _ = writeln!(
                    s,
                    "  {}[\"{}<br/><small>{}</small>\"]",
                    stage.id,
                    stage.id,
                    stage.kind.kind()
                );
            }
            for stage in &plan.stages {
                for r in &stage.inputs {
                    let label = edge_label(&r.output);
                    if label.is_empty() {
                        let _ = writeln!(s, "  {} --> {}", plan.stages[r.stage].id, stage.id);
                    } else {
                        let _ = writeln!(
                            s,
                            "  {} -- {label} --> {}",
                            plan.stages[r.stage].id, stage.id
                        );
                    }
                }
            }
        }
        DagFormat::Dot => {
            let _ = writeln!(s, "digraph \"{}\" {{\n  rankdir=LR;", plan.name);
            for stage in &plan.stages {
                let _ = writeln!(
                    s,
                    "  \"{}\" [shape=box, label=\"{}\\n({})\"];",
                    stage.id,
                    stage.id,
                    stage.kind.kind()
                );
            }
            for stage in &plan.stages {
                for r in &stage.inputs {
                    let _ = writeln!(
                        s,
                        "  \"{}\" -> \"{}\" [label=\"{}\"];",
                        plan.stages[r.stage].id,
                        stage.id,
                        edge_label(&r.output)
                    );
                }
            }
            let _ = writeln!(s, "}}");
        }
    }
    s
}
