//! Safetensors files (written and read here: F32, F16, BF16) and training
//! checkpoints.
//!
//! A checkpoint is one safetensors file holding the trainable tensors (`param.<name>`),
//! AdamW's moments (`adam_m.<name>`, `adam_v.<name>`) and, in the `__metadata__`, the
//! [`TrainState`] (step, data position, seeds, config) as JSON. It is written atomically:
//! a temporary file in the same directory, flushed and synced, then renamed over the old
//! one. A failed write (a full disk) removes the temporary file and leaves the previous
//! checkpoint valid.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::model::Param;
use super::optim::AdamW;
use crate::error::{Error, Result};

/// One tensor to write: name, shape, values.
pub type TensorRef<'a> = (String, Vec<usize>, &'a [f32]);

/// Element type of a written safetensors file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StDtype {
    F32,
    F16,
    BF16,
}

impl StDtype {
    /// The safetensors `dtype` string.
    pub fn name(self) -> &'static str {
        match self {
            StDtype::F32 => "F32",
            StDtype::F16 => "F16",
            StDtype::BF16 => "BF16",
        }
    }

    fn size(self) -> usize {
        match self {
            StDtype::F32 => 4,
            _ => 2,
        }
    }

    fn put(self, v: f32, buf: &mut Vec<u8>) {
        match self {
            StDtype::F32 => buf.extend_from_slice(&v.to_le_bytes()),
            StDtype::F16 => buf.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
            StDtype::BF16 => buf.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
        }
    }
}

/// Write a safetensors file atomically (temporary file, sync, rename).
pub fn write_safetensors(
    path: &Path,
    tensors: &[TensorRef<'_>],
    meta: &BTreeMap<String, String>,
) -> Result<()> {
    write_safetensors_as(path, tensors, meta, StDtype::F32)
}

/// [`write_safetensors`] with every tensor stored as `dtype` (rounded to nearest).
pub fn write_safetensors_as(
    path: &Path,
    tensors: &[TensorRef<'_>],
    meta: &BTreeMap<String, String>,
    dtype: StDtype,
) -> Result<()> {
    let mut header = serde_json::Map::new();
    if !meta.is_empty() {
        header.insert("__metadata__".into(), json!(meta));
    }
    let mut offset = 0usize;
    for (name, shape, data) in tensors {
        let end = offset + data.len() * dtype.size();
        header.insert(
            name.clone(),
            json!({"dtype": dtype.name(), "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut h = serde_json::to_vec(&Value::Object(header))
        .map_err(|e| Error::Internal(format!("safetensors header: {e}")))?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    write_atomic_with(path, |w| {
        w.write_all(&(h.len() as u64).to_le_bytes())?;
        w.write_all(&h)?;
        let mut buf = Vec::with_capacity(1 << 16);
        for (_, _, data) in tensors {
            for chunk in data.chunks(1 << 14) {
                buf.clear();
                chunk.iter().for_each(|&v| dtype.put(v, &mut buf));
                w.write_all(&buf)?;
            }
        }
        Ok(())
    })
}

/// Write through `f` into `path.tmp`, then rename over `path`. On failure the temporary
/// file is removed and `path` is untouched.
pub fn write_atomic_with(
    path: &Path,
    f: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let res = (|| {
        let file = File::create(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        f(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Persist the rename; not every platform can open a directory, so best effort.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    })();
    res.map_err(|e: std::io::Error| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// A safetensors file read into memory (values converted to f32).
#[derive(Debug, Default)]
pub struct SafeTensors {
    pub meta: BTreeMap<String, String>,
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// Each tensor's stored `dtype` (`F32`, `F16`, `BF16`).
    pub dtypes: BTreeMap<String, String>,
}

/// Read a safetensors file of F32, F16 or BF16 tensors.
pub fn read_safetensors(path: &Path) -> Result<SafeTensors> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |r: String| {
        Error::Config(format!(
            "{}: not a valid safetensors file: {r}",
            path.display()
        ))
    };
    if bytes.len() < 8 {
        return Err(bad("shorter than its header".into()));
    }
    let hlen = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let hend = 8usize
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| bad("header runs past the end".into()))?;
    let data = &bytes[hend..];
    let header: serde_json::Map<String, Value> =
        serde_json::from_slice(&bytes[8..hend]).map_err(|e| bad(e.to_string()))?;
    let mut st = SafeTensors::default();
    for (name, v) in header {
        if name == "__metadata__" {
            if let Some(m) = v.as_object() {
                for (k, v) in m {
                    st.meta
                        .insert(k.clone(), v.as_str().unwrap_or_default().to_string());
                }
            }
            continue;
        }
        let dtype = v["dtype"].as_str().unwrap_or("");
        let shape: Vec<usize> = v["shape"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_u64())
                    .map(|x| x as usize)
                    .collect()
            })
            .unwrap_or_default();
        let off: Vec<usize> = v["data_offsets"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_u64())
                    .map(|x| x as usize)
                    .collect()
            })
            .unwrap_or_default();
        let (b, e) = match off[..] {
            [b, e] if b <= e && e <= data.len() => (b, e),
            _ => {
                return Err(bad(format!(
                    "tensor `{name}` has bad data offsets (truncated file?)"
                )))
            }
        };
        let raw = &data[b..e];
        let vals: Vec<f32> = match dtype {
            "F32" => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            "F16" => raw
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            "BF16" => raw
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            o => return Err(bad(format!("tensor `{name}` has unsupported dtype {o}"))),
        };
        if vals.len() != shape.iter().product::<usize>() {
            return Err(bad(format!(
                "tensor `{name}`: size does not match shape {shape:?}"
            )));
        }
        st.dtypes.insert(name.clone(), dtype.to_string());
        st.tensors.insert(name, (shape, vals));
    }
    Ok(st)
}

/// Everything but tensors needed to continue a run exactly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Micro-batches consumed (the data position; epochs and order follow from the seed).
    pub micro_pos: u64,
    pub seed: u64,
    /// The run's settings that must not change on resume.
    pub config: Value,
}

const STATE_KEY: &str = "alpaca.train_state";

/// Write a checkpoint atomically.
pub fn save(path: &Path, params: &[&mut Param], opt: &AdamW, state: &TrainState) -> Result<()> {
    let mut tensors: Vec<TensorRef> = Vec::with_capacity(params.len() * 3);
    for (i, p) in params.iter().enumerate() {
        let shape = vec![p.rows, p.cols];
        tensors.push((format!("param.{}", p.name), shape.clone(), &p.w));
        tensors.push((format!("adam_m.{}", p.name), shape.clone(), &opt.m[i]));
        tensors.push((format!("adam_v.{}", p.name), shape, &opt.v[i]));
    }
    let mut meta = BTreeMap::new();
    meta.insert(
        STATE_KEY.to_string(),
        serde_json::to_string(state).map_err(|e| Error::Internal(e.to_string()))?,
    );
    meta.insert("alpaca.adam_t".to_string(), opt.t.to_string());
    write_safetensors(path, &tensors, &meta)
}

/// Load a checkpoint into `params` and `opt`; returns its state.
pub fn load(path: &Path, params: &mut [&mut Param], opt: &mut AdamW) -> Result<TrainState> {
    let mut st = read_safetensors(path)?;
    let bad = |r: String| Error::Train(format!("checkpoint {}: {r}", path.display()));
    let state: TrainState = serde_json::from_str(
        st.meta
            .get(STATE_KEY)
            .ok_or_else(|| bad("no training state".into()))?,
    )
    .map_err(|e| bad(e.to_string()))?;
    opt.t = st
        .meta
        .get("alpaca.adam_t")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| bad("no optimizer step count".into()))?;
    for (i, p) in params.iter_mut().enumerate() {
        let mut take = |prefix: &str| -> Result<Vec<f32>> {
            let key = format!("{prefix}.{}", p.name);
            let (shape, v) = st
                .tensors
                .remove(&key)
                .ok_or_else(|| bad(format!("missing tensor `{key}`")))?;
            if shape != [p.rows, p.cols] {
                return Err(bad(format!(
                    "`{key}` has shape {shape:?}, expected [{}, {}]",
                    p.rows, p.cols
                )));
            }
            Ok(v)
        };
        p.w = take("param")?;
        opt.m[i] = take("adam_m")?;
        opt.v[i] = take("adam_v")?;
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_round_trip_and_failed_write_keeps_old_file() {
        let dir = std::env::temp_dir().join(format!("alpaca-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("a.safetensors");
        let w = [1.0f32, -2.5, 3.25];
        let mut meta = BTreeMap::new();
        meta.insert("k".to_string(), "v".to_string());
        write_safetensors(&path, &[("x".into(), vec![1, 3], &w)], &meta).expect("write");
        let st = read_safetensors(&path).expect("read");
        assert_eq!(st.tensors["x"], (vec![1, 3], w.to_vec()));
        assert_eq!(st.meta["k"], "v");
        // A write that fails part-way leaves the previous file as it was.
        let r = write_atomic_with(&path, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(r.is_err());
        assert_eq!(
            read_safetensors(&path).expect("still valid").tensors["x"].1,
            w
        );
        assert!(!dir.join("a.safetensors.tmp").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
