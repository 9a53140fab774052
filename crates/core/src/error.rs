//! One error type for every stage. Each variant names the operation and the place (file, row,
//! column, field) so that a user can go straight to the bad input.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The cause is part of the message and deliberately not a `source`: error chains printed
    // with `{:#}` would say it twice.
    #[error("{op} {path}: {cause}")]
    Io {
        op: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },

    #[error("parquet {op} {path}: {message}")]
    Parquet {
        op: &'static str,
        path: PathBuf,
        message: String,
    },

    /// The file is readable but does not have the columns or types a stage needs.
    #[error("{path}: column `{column}`: {message}")]
    Schema {
        path: PathBuf,
        column: String,
        message: String,
    },

    /// One row of an input is wrong. `row` is 0-based within the file.
    #[error("{path}: row {row}, field `{field}`: {message}")]
    Row {
        path: PathBuf,
        row: usize,
        field: String,
        message: String,
    },

    /// A stage parameter is acceptable to the parser but not to the stage.
    #[error("param `{param}`: {message}")]
    Param { param: String, message: String },

    /// Two inputs that must agree do not (row sets, label names, widths).
    #[error("{op}: {message}")]
    Mismatch { op: &'static str, message: String },

    /// Numerical or model failure inside a stage, with the operation that failed.
    #[error("{op}: {message}")]
    Compute { op: &'static str, message: String },
}

impl Error {
    pub fn io(op: &'static str, path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.as_ref().to_path_buf(),
            cause: source,
        }
    }

    pub fn parquet(op: &'static str, path: impl AsRef<Path>, err: impl std::fmt::Display) -> Self {
        Error::Parquet {
            op,
            path: path.as_ref().to_path_buf(),
            message: err.to_string(),
        }
    }

    pub fn schema(path: impl AsRef<Path>, column: &str, message: impl Into<String>) -> Self {
        Error::Schema {
            path: path.as_ref().to_path_buf(),
            column: column.to_string(),
            message: message.into(),
        }
    }

    pub fn row(
        path: impl AsRef<Path>,
        row: usize,
        field: &str,
        message: impl Into<String>,
    ) -> Self {
        Error::Row {
            path: path.as_ref().to_path_buf(),
            row,
            field: field.to_string(),
            message: message.into(),
        }
    }

    pub fn param(param: &str, message: impl Into<String>) -> Self {
        Error::Param {
            param: param.to_string(),
            message: message.into(),
        }
    }

    pub fn mismatch(op: &'static str, message: impl Into<String>) -> Self {
        Error::Mismatch {
            op,
            message: message.into(),
        }
    }

    pub fn compute(op: &'static str, err: impl std::fmt::Display) -> Self {
        Error::Compute {
            op,
            message: err.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_says_its_cause_once_in_a_chain() {
        let err = Error::io(
            "open",
            "/no/such/file",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert_eq!(err.to_string(), "open /no/such/file: entity not found");
        // No source: a chain printer (anyhow's `{:#}`) would repeat the cause.
        assert!(std::error::Error::source(&err).is_none());
    }
}
