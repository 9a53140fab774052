//! The tables in memory.

pub const LABEL_NAMES_KEY: &str = "llmembed.label_names";
/// Free-form name of what produced a predictions table (a classifier or an ensemble).
pub const PRODUCER_KEY: &str = "llmembed.producer";

/// The `label` of a row that has none (new texts to classify, a split marked unlabelled). Stored
/// as is, as the Hugging Face GLUE test splits store theirs, so the column stays non-null and a
/// labelled table's bytes do not change. Such rows flow through every stage but are never used to
/// fit or to score.
pub const UNLABELLED: i64 = -1;

/// A split of a text dataset.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TextTable {
    /// Stable row ids, unique within the table.
    pub ids: Vec<String>,
    pub texts: Vec<String>,
    /// Class index into `label_names`.
    pub labels: Vec<i64>,
    pub label_names: Vec<String>,
    /// For augmented rows, the id of the row they were made from.
    pub source_ids: Vec<Option<String>>,
    /// For augmented rows, the operations applied (e.g. `"synonym,swap"`).
    pub augment_ops: Vec<Option<String>>,
}

impl TextTable {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// A table of original rows (no augmentation provenance).
    pub fn new(
        ids: Vec<String>,
        texts: Vec<String>,
        labels: Vec<i64>,
        label_names: Vec<String>,
    ) -> Self {
        let n = ids.len();
        TextTable {
            ids,
            texts,
            labels,
            label_names,
            source_ids: vec![None; n],
            augment_ops: vec![None; n],
        }
    }
}

/// A matrix of `rows x dim` f32 values, row-major: one vector per table row.
#[derive(Clone, Debug, PartialEq)]
pub struct VectorColumn {
    pub name: String,
    pub dim: usize,
    pub values: Vec<f32>,
}

impl VectorColumn {
    pub fn new(name: impl Into<String>, dim: usize, values: Vec<f32>) -> Self {
        assert!(
            dim > 0 && values.len().is_multiple_of(dim),
            "vector column shape"
        );
        VectorColumn {
            name: name.into(),
            dim,
            values,
        }
    }

    pub fn rows(&self) -> usize {
        self.values.len() / self.dim
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }
}

/// How vectors are stored on disk. In memory they are always f32.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    F16,
}

/// Vectors for a split, keyed by row id.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EmbeddingTable {
    pub ids: Vec<String>,
    pub labels: Vec<i64>,
    pub label_names: Vec<String>,
    pub columns: Vec<VectorColumn>,
}

impl EmbeddingTable {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn column(&self, name: &str) -> Option<&VectorColumn> {
        self.columns.iter().find(|c| c.name == name)
    }

    pub fn column_names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.name.clone()).collect()
    }
}

/// Class predictions for a split.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Predictions {
    pub ids: Vec<String>,
    /// True labels.
    pub labels: Vec<i64>,
    pub preds: Vec<i64>,
    /// `rows x label_names.len()` class probabilities, row-major.
    pub probs: Vec<f32>,
    pub label_names: Vec<String>,
    /// What produced these predictions (shown in reports).
    pub producer: String,
}

impl Predictions {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn num_classes(&self) -> usize {
        self.label_names.len()
    }

    pub fn row_probs(&self, i: usize) -> &[f32] {
        let c = self.num_classes();
        &self.probs[i * c..(i + 1) * c]
    }
}
