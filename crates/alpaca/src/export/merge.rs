//! Merging a LoRA adapter into its base: `W' = W + (alpha / r) * B A`, in f32.
//!
//! The adapter is read by the same code that applies it at inference
//! ([`load_adapter`](crate::train::export::load_adapter): PEFT names, shape checks, and the
//! RoPE row permutation of `B` for q/k), so a merged model computes what `--lora` computes.
//! Merged matrices are stored F32 in the in-memory GGUF; every other tensor keeps its bytes.
//! Works for every architecture `load_adapter` knows (llama, gemma3).

use std::path::Path;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::model::gguf::{Gguf, GgufWriter};
use crate::model::linear::LoraAdapter;
use crate::model::quant::{dequantize_row, GgmlType};
use crate::model::Model;
use crate::train::export::{load_adapter, AdapterTarget};

/// GGUF names of a block's linears, in the order of `LINEAR_NAMES` (q, k, v, o, gate, up,
/// down).
const GGUF_LINEARS: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

/// Merge the adapter at `adapter` (a PEFT directory, a run directory of `alpaca train`, or
/// its `adapter_model.safetensors`) into `base`. Returns the merged model (in memory) and the
/// number of linears that changed.
pub fn merge_lora(base: &Gguf, adapter: &Path) -> Result<(Gguf, usize)> {
    let mut model = Model::from_gguf(base)?;
    let n = load_adapter(adapter, &mut model)?;

    let mut w = GgufWriter::new();
    for (k, v) in &base.metadata {
        w.set(k.clone(), v.clone());
    }
    let mut merged = std::collections::HashMap::new();
    let (blocks, _) = model.adapter_slots();
    for (i, lins) in blocks.into_iter().enumerate() {
        for (lin, short) in lins.into_iter().zip(GGUF_LINEARS) {
            let lin: &crate::model::linear::Linear = lin;
            if let Some(lo) = &lin.lora {
                merged.insert(format!("blk.{i}.{short}.weight"), lo);
            }
        }
    }
    for info in &base.tensors {
        let data = base.tensor_data(info);
        match merged.get(info.name.as_str()) {
            Some(lo) => {
                let w32 = merge_matrix(base, info, data, lo)?;
                let bytes = w32.iter().flat_map(|v| v.to_le_bytes()).collect();
                w.add_tensor(info.name.clone(), info.dims.clone(), GgmlType::F32, bytes);
            }
            None => w.add_tensor(info.name.clone(), info.dims.clone(), info.ty, data.to_vec()),
        }
    }
    let name = format!("{} + {}", base.path.display(), adapter.display());
    Ok((Gguf::from_bytes(name, &w.to_bytes())?, n))
}

/// `W + scale * B A` for one matrix stored as `info` in `base`.
fn merge_matrix(
    base: &Gguf,
    info: &crate::model::gguf::TensorInfo,
    data: &[u8],
    lo: &LoraAdapter,
) -> Result<Vec<f32>> {
    let cols = info.dims[0] as usize;
    let rows = (info.n_elements() as usize) / cols.max(1);
    if !info.ty.is_supported_weight() {
        return Err(Error::UnsupportedType {
            name: info.name.clone(),
            ty: info.ty.name().into(),
        });
    }
    if lo.a.len() != lo.r * cols || lo.b.len() != rows * lo.r {
        return Err(Error::Tensor {
            name: info.name.clone(),
            reason: format!(
                "{}: adapter of rank {} does not fit a {rows}x{cols} matrix",
                base.path.display(),
                lo.r
            ),
        });
    }
    let rb = info.ty.row_bytes(cols);
    let mut w = vec![0f32; rows * cols];
    w.par_chunks_mut(cols)
        .zip(data.par_chunks(rb))
        .zip(lo.b.par_chunks(lo.r))
        .for_each(|((row, src), brow)| {
            dequantize_row(info.ty, src, row);
            for (k, &bk) in brow.iter().enumerate() {
                let c = lo.scale * bk;
                if c == 0.0 {
                    continue;
                }
                for (o, &a) in row.iter_mut().zip(&lo.a[k * cols..(k + 1) * cols]) {
                    *o += c * a;
                }
            }
        });
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fresh::{random_llama_gguf, tiny_llama_config};
    use crate::model::llama::Llama;
    use crate::rng::Rng;
    use crate::tokenizer::tiny_test_vocab;
    use crate::train::model::{linear_parent, LINEAR_NAMES};

    /// A random PEFT adapter (HF layout) for a tiny llama, on q, k, v and down.
    pub(crate) fn random_adapter(dir: &Path, cfg: &crate::model::llama::LlamaConfig, r: usize) {
        let mut rng = Rng::new(42);
        let mut owned: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
        let shapes = [
            (cfg.q_dim(), cfg.dim),
            (cfg.kv_dim(), cfg.dim),
            (cfg.kv_dim(), cfg.dim),
            (cfg.dim, cfg.q_dim()),
            (cfg.ffn_dim, cfg.dim),
            (cfg.ffn_dim, cfg.dim),
            (cfg.dim, cfg.ffn_dim),
        ];
        for i in 0..cfg.n_layers {
            for j in [0usize, 1, 2, 6] {
                let (rows, cols) = shapes[j];
                let key = format!(
                    "base_model.model.model.layers.{i}.{}.{}",
                    linear_parent(j),
                    LINEAR_NAMES[j]
                );
                let mut rnd = |n: usize| -> Vec<f32> {
                    (0..n).map(|_| (rng.next_f32() - 0.5) * 0.2).collect()
                };
                owned.push((format!("{key}.lora_A.weight"), vec![r, cols], rnd(r * cols)));
                owned.push((format!("{key}.lora_B.weight"), vec![rows, r], rnd(rows * r)));
            }
        }
        let cfg_json = serde_json::json!({"peft_type": "LORA", "r": r, "lora_alpha": 2 * r,
            "target_modules": ["q_proj", "k_proj", "v_proj", "down_proj"]});
        crate::export::peft::write_adapter_dir(dir, &owned, &cfg_json).expect("write adapter");
    }

    fn logits(m: &Model, toks: &[u32]) -> Vec<f32> {
        let mut cache = m.new_cache(64);
        m.forward(toks, &mut cache, toks.len()).expect("forward")
    }

    /// Merged weights give the logits of the base with the adapter applied at inference.
    #[test]
    fn merged_model_matches_adapter_at_inference() {
        let tok = tiny_test_vocab();
        let cfg = tiny_llama_config(tok.tokens.len());
        for ty in [GgmlType::F32, GgmlType::Q8_0] {
            let bytes = random_llama_gguf(&cfg, &tok, ty, 3)
                .expect("model")
                .to_bytes();
            let base = Gguf::from_bytes("<tiny>", &bytes).expect("gguf");
            let dir = std::env::temp_dir().join(format!("alpaca-merge-{}", std::process::id()));
            random_adapter(&dir, &cfg, 4);

            let mut with = Llama::from_gguf(&base).expect("llama");
            assert_eq!(load_adapter(&dir, &mut with).expect("adapter"), 8);
            let (merged, n) = merge_lora(&base, &dir).expect("merge");
            assert_eq!(n, 8);
            assert_eq!(
                merged.tensor("blk.0.attn_q.weight").map(|t| t.ty),
                Some(GgmlType::F32)
            );
            assert_eq!(
                merged.tensor("blk.1.attn_output.weight").map(|t| t.ty),
                Some(ty)
            );
            let plain = Model::from_gguf(&base).expect("plain");
            let merged = Model::from_gguf(&merged).expect("merged");
            let with = Model::Llama(with);
            let toks = [1u32, 5, 9, 3, 7, 2, 11, 4];
            let (a, b, c) = (
                logits(&with, &toks),
                logits(&merged, &toks),
                logits(&plain, &toks),
            );
            let max_diff = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            let lora_effect = a
                .iter()
                .zip(&c)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                max_diff < 1e-3,
                "{}: merged vs adapter {max_diff}",
                ty.name()
            );
            assert!(
                lora_effect > 50.0 * max_diff.max(1e-5),
                "adapter too weak: {lora_effect}"
            );
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn refuses_missing_adapters() {
        let tok = tiny_test_vocab();
        let cfg = tiny_llama_config(tok.tokens.len());
        let bytes = random_llama_gguf(&cfg, &tok, GgmlType::F32, 3)
            .expect("model")
            .to_bytes();
        let base = Gguf::from_bytes("<tiny>", &bytes).expect("gguf");
        let missing = std::env::temp_dir().join("alpaca-merge-no-such-adapter");
        assert!(merge_lora(&base, &missing).is_err());
    }
}
