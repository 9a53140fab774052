//! Naming conventions that one stage writes and another reads, in one place so that the writer
//! and the readers cannot drift apart.

/// The column of tapped layer `i` (0 = the embedding output, i = the output of block i), as
/// `extract` writes it and `fuse` and `layer_sweep` select it.
pub fn layer_column(i: usize) -> String {
    format!("layer_{i}")
}

/// The layer index of a [`layer_column`] name; `None` for any other column.
pub fn parse_layer_column(name: &str) -> Option<usize> {
    name.strip_prefix("layer_")?.parse().ok()
}

/// The id of augmented copy `k` (1-based) of row `id`, as `augment` writes it.
pub fn augmented_id(id: &str, k: usize) -> String {
    format!("{id}-aug{k}")
}

/// The source row id of an [`augmented_id`] (`<id>-aug<k>`, `k` all digits); `None` for any
/// other id. This is how `contrastive` pairs a row with its copies.
pub fn augmented_source(id: &str) -> Option<&str> {
    let (source, k) = id.rsplit_once("-aug")?;
    (!source.is_empty() && !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit())).then_some(source)
}

/// The predictions file a classifier writes for `split`: `predictions.parquet` for the test split
/// (what `ensemble` and `evaluate` score), `predictions-<split>.parquet` for any other split
/// besides train (an unlabelled split, say).
pub fn predictions_file(split: &str) -> String {
    if split == "test" {
        "predictions.parquet".to_string()
    } else {
        format!("predictions-{split}.parquet")
    }
}

/// The split of a [`predictions_file`] name; `None` for any other file.
pub fn parse_predictions_file(name: &str) -> Option<&str> {
    if name == "predictions.parquet" {
        return Some("test");
    }
    let split = name
        .strip_prefix("predictions-")?
        .strip_suffix(".parquet")?;
    (!split.is_empty() && split != "test").then_some(split)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictions_files_round_trip() {
        for split in ["test", "unlabelled", "dev"] {
            assert_eq!(
                parse_predictions_file(&predictions_file(split)),
                Some(split)
            );
        }
        assert_eq!(predictions_file("test"), "predictions.parquet");
        assert_eq!(predictions_file("new"), "predictions-new.parquet");
        for other in [
            "predictions-.parquet",
            "predictions-test.parquet",
            "model.json",
            "test.parquet",
        ] {
            assert_eq!(parse_predictions_file(other), None, "{other}");
        }
    }

    #[test]
    fn layer_columns_round_trip_and_other_columns_are_not_layers() {
        assert_eq!(layer_column(12), "layer_12");
        assert_eq!(parse_layer_column(&layer_column(12)), Some(12));
        for other in [
            "final_norm",
            "pooler",
            "layer_",
            "layer_x",
            "layer_-1",
            "embedding",
        ] {
            assert_eq!(parse_layer_column(other), None, "{other}");
        }
    }

    #[test]
    fn augmented_ids_round_trip_and_plain_ids_have_no_source() {
        assert_eq!(augmented_id("r7", 2), "r7-aug2");
        assert_eq!(augmented_source(&augmented_id("r7", 2)), Some("r7"));
        assert_eq!(augmented_source("a-aug-aug3"), Some("a-aug"));
        for plain in ["r7", "r7-aug", "-aug1", "r7-augx", "r7-aug1b"] {
            assert_eq!(augmented_source(plain), None, "{plain}");
        }
    }
}
