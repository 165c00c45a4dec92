//! Building the exported GGUF: the weight type of each tensor, parallel requantization, and
//! the metadata (the base's, with `general.file_type` and provenance updated).
//!
//! Type rules follow `llama-quantize`: 1-D tensors (norms) are F32; a matrix whose row length
//! is not a multiple of the requested block size falls back to the type llama.cpp uses
//! (Q4_K -> Q5_0, Q6_K -> Q8_0, else F16); the token embeddings and the output matrix take
//! `keep_embeddings` when given. A tensor already in its target type keeps its bytes.

use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;

use super::provenance::Provenance;
use crate::error::{Error, Result};
use crate::model::gguf::{Gguf, GgufWriter, TensorInfo, Value};
use crate::model::quant::{dequantize_row, quantize_row, GgmlType};

/// The weight types `alpaca export --quant` writes.
pub const QUANT_TYPES: [GgmlType; 8] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q4K,
    GgmlType::Q6K,
];

/// `f32|f16|...` for messages.
pub fn quant_names() -> String {
    QUANT_TYPES
        .iter()
        .map(|t| t.name().to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join("|")
}

/// llama.cpp's `general.file_type` (`llama_ftype`) for a file mostly of type `ty`. A pure
/// Q4_K file is closest to `Q4_K_S`.
pub fn file_type(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::Q4K => 14,
        GgmlType::Q5K => 16,
        GgmlType::Q6K => 18,
        GgmlType::BF16 => 32,
        _ => 0,
    }
}

/// The type a row of `n` weights can take when `ty` was asked for (llama.cpp's fallbacks
/// for incompatible tensors).
pub fn fallback_type(ty: GgmlType, n: usize) -> GgmlType {
    if n.is_multiple_of(ty.block_size()) {
        return ty;
    }
    let alt = match ty {
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q5K => GgmlType::Q5_1,
        GgmlType::Q6K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    };
    if n.is_multiple_of(alt.block_size()) {
        alt
    } else {
        GgmlType::F16
    }
}

fn is_quantized(ty: GgmlType) -> bool {
    !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

/// What to write.
pub struct Plan<'a> {
    pub quant: GgmlType,
    pub keep_embeddings: Option<GgmlType>,
    /// Names the base model when its metadata has no `general.name`.
    pub base_path: &'a Path,
    pub provenance: Option<&'a Provenance>,
}

/// Counts for the summary.
#[derive(Debug, Default)]
pub struct Stats {
    pub n_tensors: usize,
    pub per_type: BTreeMap<String, usize>,
    pub fallbacks: Vec<(String, GgmlType)>,
}

/// The type of one tensor, and whether it is a fallback.
pub fn target_type(info: &TensorInfo, plan: &Plan) -> (GgmlType, bool) {
    if info.dims.len() < 2 {
        return (GgmlType::F32, false);
    }
    let want = match info.name.as_str() {
        "token_embd.weight" | "output.weight" => plan.keep_embeddings.unwrap_or(plan.quant),
        _ => plan.quant,
    };
    let got = fallback_type(want, info.dims[0] as usize);
    (got, got != want)
}

/// Convert every tensor of `model` and build the output file in memory.
pub fn build(
    model: &Gguf,
    plan: &Plan,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(GgufWriter, Stats)> {
    let mut w = GgufWriter::new();
    for (k, v) in &model.metadata {
        if k != "general.file_type" && k != "general.quantization_version" {
            w.set(k.clone(), v.clone());
        }
    }
    w.set("general.file_type", Value::U32(file_type(plan.quant)));
    let types: Vec<(GgmlType, bool)> = model.tensors.iter().map(|t| target_type(t, plan)).collect();
    if types.iter().any(|(t, _)| is_quantized(*t)) {
        w.set("general.quantization_version", Value::U32(2));
    }
    if let Some(p) = plan.provenance {
        let base_name = match model.get("general.name").and_then(|v| v.as_str()) {
            Some(n) => n.to_string(),
            None => plan
                .base_path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        p.write(&mut w, &base_name);
    }

    let total: usize = model.tensors.iter().map(|t| t.n_elements() as usize).sum();
    let mut done = 0usize;
    progress(0, total);
    let mut stats = Stats::default();
    for (info, &(ty, fell_back)) in model.tensors.iter().zip(&types) {
        let data = convert(model, info, ty, &mut |n| {
            done += n;
            progress(done, total);
        })?;
        w.add_tensor(info.name.clone(), info.dims.clone(), ty, data);
        stats.n_tensors += 1;
        *stats.per_type.entry(ty.name().to_string()).or_default() += 1;
        if fell_back {
            stats.fallbacks.push((info.name.clone(), ty));
        }
    }
    Ok((w, stats))
}

/// Weights per parallel work unit between progress reports.
const CHUNK_WEIGHTS: usize = 1 << 20;

/// The bytes of `info` in type `ty`: its own bytes when already `ty`, else dequantized and
/// requantized row by row, rows in parallel.
fn convert(
    model: &Gguf,
    info: &TensorInfo,
    ty: GgmlType,
    advance: &mut dyn FnMut(usize),
) -> Result<Vec<u8>> {
    let src = model.tensor_data(info);
    let n = info.n_elements() as usize;
    if info.ty == ty {
        advance(n);
        return Ok(src.to_vec());
    }
    if !info.ty.is_supported_weight() {
        return Err(Error::UnsupportedType {
            name: info.name.clone(),
            ty: info.ty.name().into(),
        });
    }
    let cols = info.dims[0] as usize;
    // A 1-D tensor is one row.
    let cols = if cols == 0 { 1 } else { cols };
    let (sb, db) = (info.ty.row_bytes(cols), ty.row_bytes(cols));
    let rows_per_chunk = (CHUNK_WEIGHTS / cols).max(1);
    let mut out = Vec::with_capacity(ty.row_bytes(cols) * (n / cols));
    for chunk in src.chunks(sb * rows_per_chunk) {
        let parts: Vec<Option<Vec<u8>>> = chunk
            .par_chunks(sb)
            .map(|row| {
                let mut x = vec![0f32; cols];
                dequantize_row(info.ty, row, &mut x);
                quantize_row(ty, &x)
            })
            .collect();
        for p in parts {
            let p = p.ok_or_else(|| Error::Tensor {
                name: info.name.clone(),
                reason: format!("cannot quantize a row of {cols} weights to {}", ty.name()),
            })?;
            debug_assert_eq!(p.len(), db);
            out.extend_from_slice(&p);
        }
        advance(chunk.len() / sb * cols);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallbacks_follow_llama_cpp() {
        assert_eq!(fallback_type(GgmlType::Q4K, 512), GgmlType::Q4K);
        assert_eq!(fallback_type(GgmlType::Q4K, 576), GgmlType::Q5_0);
        assert_eq!(fallback_type(GgmlType::Q6K, 576), GgmlType::Q8_0);
        assert_eq!(fallback_type(GgmlType::Q4_0, 48), GgmlType::F16);
        assert_eq!(fallback_type(GgmlType::Q4K, 48), GgmlType::F16);
        assert_eq!(fallback_type(GgmlType::F16, 7), GgmlType::F16);
    }

    #[test]
    fn every_export_type_has_its_file_type() {
        for t in QUANT_TYPES {
            assert!(t == GgmlType::F32 || file_type(t) != 0, "{}", t.name());
        }
    }
}
