//! Reading a GGUF file: metadata by key, tensors dequantized to f32.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::QTensor;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use llmembed_core::{Error, Result};

pub(crate) struct GgufFile {
    pub path: PathBuf,
    content: Content,
    reader: BufReader<File>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io("open gguf", path, e))?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader)
            .map_err(|e| Error::compute("read gguf header", format!("{}: {e}", path.display())))?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader,
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

    pub fn qtensor(&mut self, name: &str) -> Result<QTensor> {
        self.content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .map_err(|e| {
                Error::compute(
                    "read gguf tensor",
                    format!("{}: `{name}`: {e}", self.path.display()),
                )
            })
    }

    /// The tensor dequantized to f32, in the file's (ggml) shape reversed to row-major, so a
    /// linear weight comes out as (out_features, in_features) like PyTorch's.
    pub fn tensor_f32(&mut self, name: &str) -> Result<Tensor> {
        let q = self.qtensor(name)?;
        q.dequantize(&Device::Cpu).map_err(|e| {
            Error::compute(
                "dequantize gguf tensor",
                format!("{}: `{name}` ({:?}): {e}", self.path.display(), q.dtype()),
            )
        })
    }
}
