//! Load errors: one line naming the file and what is wrong with it, and candle's errors
//! flattened to one line.

use std::path::Path;

use llmembed_core::Error;

pub(crate) fn hex_bytes(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A model file that is there but wrong: `load model: <path>: <what>`, one line.
pub(crate) fn file_error(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::compute("load model", format!("{}: {what}", path.display()))
}

/// A candle error as one line, without the backtrace candle appends to its `Display` when
/// `RUST_BACKTRACE` is set (`Error::WithBacktrace`, added by `bail!` and `bt()`) and with its
/// context and path on the same line.
pub(crate) fn candle_message(e: &candle_core::Error) -> String {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } => candle_message(inner),
        E::Context { inner, context } => format!("{context}: {}", candle_message(inner)),
        E::WithPath { inner, path } => format!("{}: {}", path.display(), candle_message(inner)),
        other => other.to_string().lines().collect::<Vec<_>>().join("; "),
    }
}

/// The innermost candle error under backtraces, contexts and paths.
pub(crate) fn candle_root(e: &candle_core::Error) -> &candle_core::Error {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } | E::Context { inner, .. } | E::WithPath { inner, .. } => {
            candle_root(inner)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candle_message_is_one_line_without_the_backtrace() {
        let e = candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg("tensor needs 10 bytes".into())),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        // candle's own Display appends the backtrace on further lines.
        assert!(e.to_string().contains('\n'));
        assert_eq!(candle_message(&e), "tensor needs 10 bytes");
        let e = e.context("reading x");
        assert_eq!(candle_message(&e), "reading x: tensor needs 10 bytes");
        assert!(matches!(candle_root(&e), candle_core::Error::Msg(_)));
        let e = candle_core::Error::Msg("header too large".into()).with_path("/m/w.safetensors");
        assert_eq!(candle_message(&e), "/m/w.safetensors: header too large");
    }
}
