//! Reading safetensors checkpoints: the files behind a weights path (one file, or the shards an
//! index lists), a framing check that names what is wrong before anything is read, and the
//! tensors read into memory.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::BufferedSafetensors;
use candle_core::{Device, Tensor};
use llmembed_core::{Error, Result};
use serde_json::Value;

use super::errors::{file_error, hex_bytes};

/// The safetensors files behind `weights`: the file itself, or the shards its index lists.
pub(crate) fn weight_files(weights: &Path) -> Result<Vec<PathBuf>> {
    let name = weights.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !name.ends_with(".index.json") {
        return Ok(vec![weights.to_path_buf()]);
    }
    let raw = std::fs::read_to_string(weights)
        .map_err(|e| Error::io("read safetensors index", weights, e))?;
    let index: Value =
        serde_json::from_str(&raw).map_err(|e| file_error(weights, format!("not JSON: {e}")))?;
    let map = index
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| file_error(weights, "field `weight_map` is missing or not a map"))?;
    let dir = weights.parent().unwrap_or(Path::new("."));
    let mut shards = BTreeSet::new();
    for (tensor, file) in map {
        let f = file.as_str().ok_or_else(|| {
            file_error(
                weights,
                format!("field `weight_map`: `{tensor}`: not a file name"),
            )
        })?;
        shards.insert(f.to_string());
    }
    Ok(shards.into_iter().map(|f| dir.join(f)).collect())
}

/// The tensors of one or more safetensors files, read into memory.
///
/// Why not mapped: mapping a file is `unsafe` (another process could change it under the map),
/// and `unsafe` is kept to the kernels crate; the files are read once at load and dropped once
/// the weights are packed, so reading costs their size in memory for the duration of the load.
pub(crate) struct Shards {
    files: Vec<BufferedSafetensors>,
    /// Tensor name -> file; a name in several files is taken from the last (as candle's
    /// `MmapedSafetensors::multi` does).
    routing: HashMap<String, usize>,
}

impl Shards {
    pub fn read(paths: &[PathBuf]) -> candle_core::Result<Shards> {
        let mut files = Vec::with_capacity(paths.len());
        let mut routing = HashMap::new();
        for (index, p) in paths.iter().enumerate() {
            let bytes = std::fs::read(p).map_err(|e| candle_core::Error::from(e).with_path(p))?;
            let st = BufferedSafetensors::new(bytes).map_err(|e| e.with_path(p))?;
            for (name, _) in st.tensors() {
                routing.insert(name, index);
            }
            files.push(st);
        }
        Ok(Shards { files, routing })
    }

    fn file(&self, name: &str) -> candle_core::Result<&BufferedSafetensors> {
        match self.routing.get(name) {
            Some(&i) => Ok(&self.files[i]),
            None => Err(candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt()),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.file(name).and_then(|f| f.get(name)).is_ok()
    }

    /// The tensor's dtype in the file, as safetensors names it (`BF16`, `F32`, ...).
    pub fn dtype(&self, name: &str) -> candle_core::Result<String> {
        Ok(format!("{:?}", self.file(name)?.get(name)?.dtype()))
    }

    pub fn load(&self, name: &str, dev: &Device) -> candle_core::Result<Tensor> {
        self.file(name)?.load(name, dev)
    }
}

/// safetensors' limit on the JSON header.
const MAX_HEADER: u64 = 100_000_000;

/// Checks a safetensors file's framing before it is mapped: the 8-byte header length, the JSON
/// header, and that every tensor's bytes lie inside the file (naming the first one, in file
/// order, that does not). What this cannot judge is left to the safetensors reader.
pub(crate) fn check_safetensors(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io("open safetensors", path, e))?;
    let len = f
        .metadata()
        .map_err(|e| Error::io("open safetensors", path, e))?
        .len();
    let bad = |what: String| file_error(path, what);
    let mut head = [0u8; 8];
    if len < 8 {
        return Err(bad(format!(
            "not a safetensors file (it has only {len} bytes; safetensors files start with an \
             8-byte header length)"
        )));
    }
    f.read_exact(&mut head)
        .map_err(|e| Error::io("read safetensors", path, e))?;
    let n = u64::from_le_bytes(head);
    if n > MAX_HEADER || n > len - 8 {
        return Err(bad(format!(
            "not a safetensors file, or truncated: it starts with bytes {}, a header length of \
             {n} bytes, and the file has {len} bytes",
            hex_bytes(&head)
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|e| Error::io("read safetensors", path, e))?;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&header).map_err(|e| {
        bad(format!(
            "not a safetensors file (its header is not a JSON map: {e})"
        ))
    })?;
    let data_start = 8 + n;
    let mut first_cut: Option<(u64, u64, &str)> = None;
    for (name, info) in &header {
        let offsets = info
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|o| Some((o.first()?.as_u64()?, o.get(1)?.as_u64()?)));
        let Some((a, b)) = offsets else {
            continue; // `__metadata__`, or a malformed entry the reader will name
        };
        let (start, end) = (data_start.saturating_add(a), data_start.saturating_add(b));
        if end > len && first_cut.is_none_or(|(s, _, n)| (start, name.as_str()) < (s, n)) {
            first_cut = Some((start, end, name));
        }
    }
    match first_cut {
        Some((start, end, name)) => Err(bad(format!(
            "truncated safetensors file: tensor `{name}` needs bytes {start}..{end}, the file has \
             {len} bytes"
        ))),
        None => Ok(()),
    }
}
