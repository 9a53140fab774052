//! Reading a GGUF file: metadata by key, tensors dequantized to f32.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::quantized::QTensor;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use llmembed_core::{Error, Result};

use super::errors::{candle_message, candle_root, file_error};

pub(crate) struct GgufFile {
    pub path: PathBuf,
    content: Content,
    /// Behind a lock so that several threads can read tensors (a model's blocks load in
    /// parallel), one read at a time.
    reader: Mutex<BufReader<File>>,
}

impl GgufFile {
    /// Reads the header and checks that every tensor it lists lies inside the file, so that a
    /// truncated file is named as such here rather than when its first missing tensor is read.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io("open gguf", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("open gguf", path, e))?
            .len();
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| {
            let what = if is_truncation(&e) {
                format!(
                    "truncated GGUF file: the header (metadata and tensor list) runs past the \
                     end of the file ({len} bytes)"
                )
            } else {
                format!("bad GGUF header: {}", candle_message(&e))
            };
            file_error(path, what)
        })?;
        check_extents(&content, len).map_err(|what| file_error(path, what))?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader: Mutex::new(reader),
        })
    }

    fn value(&self, key: &str) -> Result<&Value> {
        self.content.metadata.get(key).ok_or_else(|| {
            Error::compute(
                "read gguf metadata",
                format!("{}: key `{key}` is missing", self.path.display()),
            )
        })
    }

    pub fn has(&self, key: &str) -> bool {
        self.content.metadata.contains_key(key)
    }

    fn bad(&self, key: &str, e: impl std::fmt::Display) -> Error {
        Error::compute(
            "read gguf metadata",
            format!("{}: key `{key}`: {e}", self.path.display()),
        )
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.value(key)?
            .to_string()
            .map(|s| s.as_str())
            .map_err(|e| self.bad(key, e))
    }

    /// Any integer type, as u64 (GGUF writers disagree on u32/i32/u64).
    pub fn get_uint(&self, key: &str) -> Result<u64> {
        let v = self.value(key)?;
        let n = match v {
            Value::U8(x) => *x as u64,
            Value::I8(x) => *x as u64,
            Value::U16(x) => *x as u64,
            Value::I16(x) => *x as u64,
            Value::U32(x) => *x as u64,
            Value::I32(x) => *x as u64,
            Value::U64(x) => *x,
            Value::I64(x) => *x as u64,
            other => return Err(self.bad(key, format!("expected an integer, got {other:?}"))),
        };
        Ok(n)
    }

    pub fn get_usize(&self, key: &str) -> Result<usize> {
        Ok(self.get_uint(key)? as usize)
    }

    pub fn get_f32(&self, key: &str) -> Result<f32> {
        match self.value(key)? {
            Value::F32(x) => Ok(*x),
            Value::F64(x) => Ok(*x as f32),
            other => Err(self.bad(key, format!("expected a float, got {other:?}"))),
        }
    }

    pub fn get_bool_or(&self, key: &str, default: bool) -> Result<bool> {
        if !self.has(key) {
            return Ok(default);
        }
        self.value(key)?.to_bool().map_err(|e| self.bad(key, e))
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<String>> {
        let arr = self.value(key)?.to_vec().map_err(|e| self.bad(key, e))?;
        arr.iter()
            .map(|v| v.to_string().cloned().map_err(|e| self.bad(key, e)))
            .collect()
    }

    pub fn get_int_array(&self, key: &str) -> Result<Vec<i64>> {
        let arr = self.value(key)?.to_vec().map_err(|e| self.bad(key, e))?;
        arr.iter()
            .map(|v| match v {
                Value::I32(x) => Ok(*x as i64),
                Value::U32(x) => Ok(*x as i64),
                Value::I64(x) => Ok(*x),
                Value::U8(x) => Ok(*x as i64),
                Value::I8(x) => Ok(*x as i64),
                other => Err(self.bad(key, format!("expected integers, got {other:?}"))),
            })
            .collect()
    }

    pub fn qtensor(&self, name: &str) -> Result<QTensor> {
        if !self.content.tensor_infos.contains_key(name) {
            return Err(file_error(
                &self.path,
                format!("tensor `{name}` is missing"),
            ));
        }
        // A reader left mid-read by a thread that panicked is still positioned by each read.
        let mut reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        self.content
            .tensor(&mut *reader, name, &Device::Cpu)
            .map_err(|e| {
                Error::compute(
                    "read gguf tensor",
                    format!("{}: `{name}`: {}", self.path.display(), candle_message(&e)),
                )
            })
    }

    /// The tensor dequantized to f32, in the file's (ggml) shape reversed to row-major, so a
    /// linear weight comes out as (out_features, in_features) like PyTorch's.
    pub fn tensor_f32(&self, name: &str) -> Result<Tensor> {
        let q = self.qtensor(name)?;
        q.dequantize(&Device::Cpu).map_err(|e| {
            Error::compute(
                "dequantize gguf tensor",
                format!(
                    "{}: `{name}` ({:?}): {}",
                    self.path.display(),
                    q.dtype(),
                    candle_message(&e)
                ),
            )
        })
    }
}

/// Whether reading the header failed because the file ended (candle checks lengths against the
/// bytes remaining, or the read itself hits the end).
fn is_truncation(e: &candle_core::Error) -> bool {
    match candle_root(e) {
        candle_core::Error::Io(io) => io.kind() == std::io::ErrorKind::UnexpectedEof,
        candle_core::Error::Msg(m) => m.contains("remaining"),
        _ => false,
    }
}

/// Checks that each tensor's bytes lie inside a file of `len` bytes; names the first tensor (in
/// file order) that does not.
fn check_extents(content: &Content, len: u64) -> std::result::Result<(), String> {
    let mut first_cut: Option<(u64, u64, &str)> = None;
    for (name, info) in &content.tensor_infos {
        let dims = info.shape.dims();
        let block = info.ggml_dtype.block_size() as u64;
        let elems = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
        let size = match elems {
            Some(n) if !n.is_multiple_of(block) => {
                return Err(format!(
                    "bad GGUF header: tensor `{name}` has shape {dims:?}, not a whole number of \
                     {:?} blocks of {block}",
                    info.ggml_dtype
                ));
            }
            Some(n) => (n / block).checked_mul(info.ggml_dtype.type_size() as u64),
            None => None,
        };
        let Some(size) = size else {
            return Err(format!(
                "bad GGUF header: tensor `{name}` has an impossible shape {dims:?}"
            ));
        };
        let start = content.tensor_data_offset.saturating_add(info.offset);
        let end = start.saturating_add(size);
        if end > len && first_cut.is_none_or(|(s, _, n)| (start, name.as_str()) < (s, n)) {
            first_cut = Some((start, end, name));
        }
    }
    match first_cut {
        Some((start, end, name)) => Err(format!(
            "truncated GGUF file: tensor `{name}` needs bytes {start}..{end}, the file has {len} \
             bytes"
        )),
        None => Ok(()),
    }
}
