//! What a stage fitted, saved in formats other tools read: tensors as safetensors (f32, or f64
//! where a stage computes in f64 and its predictions must be reproduced bit for bit; row-major,
//! little-endian; `safetensors.numpy.load_file` in Python), metadata as JSON.
//! Both are written atomically. The safetensors header carries no free-form metadata: its map
//! has no fixed order, and the same fit must give the same bytes; metadata goes in the JSON file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

/// Writes `tensors` (name, shape, row-major values) to a safetensors file at `path`.
pub fn save_tensors(path: &Path, tensors: &[(&str, &[usize], &[f32])]) -> Result<()> {
    let typed: Vec<(&str, &[usize], TensorValues<'_>)> = tensors
        .iter()
        .map(|&(name, shape, values)| (name, shape, TensorValues::F32(values)))
        .collect();
    save_typed_tensors(path, &typed)
}

/// The values of one tensor to save, in the dtype it is saved with.
#[derive(Clone, Copy, Debug)]
pub enum TensorValues<'a> {
    F32(&'a [f32]),
    /// For values a stage computes with in f64 (a logistic regression's weights, a
    /// standardiser's statistics): saved as they are, so that applying them gives the same bits.
    F64(&'a [f64]),
}

impl TensorValues<'_> {
    fn len(&self) -> usize {
        match self {
            TensorValues::F32(v) => v.len(),
            TensorValues::F64(v) => v.len(),
        }
    }

    fn dtype(&self) -> Dtype {
        match self {
            TensorValues::F32(_) => Dtype::F32,
            TensorValues::F64(_) => Dtype::F64,
        }
    }

    fn le_bytes(&self) -> Vec<u8> {
        match self {
            TensorValues::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorValues::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// [`save_tensors`] with each tensor's dtype chosen (a file may mix f32 and f64 tensors).
pub fn save_typed_tensors(
    path: &Path,
    tensors: &[(&str, &[usize], TensorValues<'_>)],
) -> Result<()> {
    // Little-endian copies of the values: the format's byte order, without `unsafe` casts.
    let mut buffers: Vec<Vec<u8>> = Vec::with_capacity(tensors.len());
    for (name, shape, values) in tensors {
        let expected: usize = shape.iter().product();
        if expected != values.len() {
            return Err(Error::mismatch(
                "save tensors",
                format!(
                    "{}: tensor `{name}` of shape {shape:?} needs {expected} values, got {}",
                    path.display(),
                    values.len()
                ),
            ));
        }
        buffers.push(values.le_bytes());
    }
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, shape, values), bytes) in tensors.iter().zip(&buffers) {
        let view = TensorView::new(values.dtype(), shape.to_vec(), bytes)
            .map_err(|e| Error::compute("save tensors", format!("`{name}`: {e}")))?;
        views.push((*name, view));
    }
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| Error::compute("save tensors", format!("{}: {e}", path.display())))?;
    write_atomic(path, |out| {
        std::io::Write::write_all(out, &bytes).map_err(|e| Error::io("write", path, e))
    })
}

/// Writes `value` as pretty JSON (keys in the order of its fields), atomically.
pub fn save_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::compute("serialize", format!("{}: {e}", path.display())))?;
    bytes.push(b'\n');
    write_atomic(path, |out| {
        std::io::Write::write_all(out, &bytes).map_err(|e| Error::io("write", path, e))
    })
}

/// Reads JSON written by [`save_json`]; an error names the file, line and column.
pub fn load_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::mismatch(
            "read saved model",
            format!(
                "{}: line {} column {}: {e}",
                path.display(),
                e.line(),
                e.column()
            ),
        )
    })
}

/// A tensor's values as read, in its saved dtype.
#[derive(Debug)]
enum Loaded {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// The tensors of a safetensors file, read in full (fitted heads are small).
#[derive(Debug)]
pub struct SavedTensors {
    path: PathBuf,
    tensors: HashMap<String, (Vec<usize>, Loaded)>,
}

impl SavedTensors {
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
        let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
            Error::mismatch("read saved tensors", format!("{}: {e}", path.display()))
        })?;
        let mut tensors = HashMap::new();
        for (name, view) in file.tensors() {
            let values = match view.dtype() {
                Dtype::F32 => Loaded::F32(
                    view.data()
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                ),
                Dtype::F64 => Loaded::F64(
                    view.data()
                        .chunks_exact(8)
                        .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
                        .collect(),
                ),
                other => {
                    return Err(Error::mismatch(
                        "read saved tensors",
                        format!(
                            "{}: tensor `{name}` is {other:?}, expected F32 or F64",
                            path.display()
                        ),
                    ));
                }
            };
            tensors.insert(name, (view.shape().to_vec(), values));
        }
        Ok(SavedTensors {
            path: path.to_path_buf(),
            tensors,
        })
    }

    /// The values of the f32 tensor `name`, which must have shape `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<&[f32]> {
        match self.find(name, shape)? {
            Loaded::F32(v) => Ok(v),
            Loaded::F64(_) => Err(self.wrong_dtype(name, "F64", "F32")),
        }
    }

    /// The values of the f64 tensor `name`, which must have shape `shape`.
    pub fn get_f64(&self, name: &str, shape: &[usize]) -> Result<&[f64]> {
        match self.find(name, shape)? {
            Loaded::F64(v) => Ok(v),
            Loaded::F32(_) => Err(self.wrong_dtype(name, "F32", "F64")),
        }
    }

    fn wrong_dtype(&self, name: &str, found: &str, expected: &str) -> Error {
        Error::mismatch(
            "read saved tensors",
            format!(
                "{}: tensor `{name}` is {found}, expected {expected}",
                self.path.display()
            ),
        )
    }

    fn find(&self, name: &str, shape: &[usize]) -> Result<&Loaded> {
        let (found, values) = self.tensors.get(name).ok_or_else(|| {
            let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
            names.sort_unstable();
            Error::mismatch(
                "read saved tensors",
                format!(
                    "{}: no tensor `{name}` (it has: {})",
                    self.path.display(),
                    names.join(", ")
                ),
            )
        })?;
        if found != shape {
            return Err(Error::mismatch(
                "read saved tensors",
                format!(
                    "{}: tensor `{name}` has shape {found:?}, expected {shape:?}",
                    self.path.display()
                ),
            ));
        }
        Ok(values)
    }

    /// The shape of tensor `name`, if the file has it.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|(s, _)| s.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_round_trip_and_same_bytes_twice() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.safetensors");
        let b = dir.path().join("b.safetensors");
        let w: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
        let bias = [0.25f32, -3.0];
        for p in [&a, &b] {
            save_tensors(p, &[("weight", &[2, 3], &w), ("bias", &[2], &bias)]).unwrap();
        }
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let saved = SavedTensors::load(&a).unwrap();
        assert_eq!(saved.get("weight", &[2, 3]).unwrap(), &w[..]);
        assert_eq!(saved.get("bias", &[2]).unwrap(), &bias[..]);
        let err = saved.get("weight", &[3, 2]).unwrap_err().to_string();
        assert!(err.contains("shape [2, 3], expected [3, 2]"), "{err}");
        let err = saved.get("scale", &[2]).unwrap_err().to_string();
        assert!(
            err.contains("no tensor `scale` (it has: bias, weight)"),
            "{err}"
        );
    }

    #[test]
    fn f64_and_f32_tensors_in_one_file_keep_their_bits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        // TensorValues that f32 would round: f64 must come back bit for bit.
        let mean = [0.1f64, 1.0 / 3.0, -2.5e-300];
        let w = [1.5f32, -0.25];
        save_typed_tensors(
            &path,
            &[
                ("mean", &[3], TensorValues::F64(&mean)),
                ("w", &[1, 2], TensorValues::F32(&w)),
            ],
        )
        .unwrap();
        let saved = SavedTensors::load(&path).unwrap();
        let back = saved.get_f64("mean", &[3]).unwrap();
        assert!(
            back.iter()
                .zip(&mean)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
        assert_eq!(saved.get("w", &[1, 2]).unwrap(), &w[..]);
        let err = saved.get("mean", &[3]).unwrap_err().to_string();
        assert!(err.contains("tensor `mean` is F64, expected F32"), "{err}");
        let err = saved.get_f64("w", &[1, 2]).unwrap_err().to_string();
        assert!(err.contains("tensor `w` is F32, expected F64"), "{err}");
    }

    #[test]
    fn wrong_value_count_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = save_tensors(&dir.path().join("x.safetensors"), &[("w", &[2, 2], &[1.0])])
            .unwrap_err()
            .to_string();
        assert!(err.contains("shape [2, 2] needs 4 values, got 1"), "{err}");
    }
}
