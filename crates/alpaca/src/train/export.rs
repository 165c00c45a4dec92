//! What a run leaves behind: a PEFT-compatible LoRA adapter (`adapter_model.safetensors` +
//! `adapter_config.json`) or a full model in Hugging Face layout (`model.safetensors` +
//! `config.json`), and the reverse: loading an adapter onto an inference [`Model`].
//!
//! GGUF stores LLaMA q/k rows permuted for adjacent-pair RoPE (llama.cpp's `permute`);
//! Hugging Face uses rotate-half. Training works in GGUF layout, so output rows of LLaMA q/k
//! weights (and of LoRA `B` for q/k) are un-permuted on export and permuted back on load.
//! Gemma 3 uses rotate-half in GGUF too (no permutation), and its GGUF norms hold `1 + w`,
//! so a full Gemma export subtracts the 1 (Hugging Face's `Gemma3RMSNorm` adds it).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;

use super::checkpoint::{read_safetensors, write_safetensors, TensorRef};
use super::gemma3::{TGemma3, GEMMA_NORM_NAMES};
use super::llama::TLlama;
use super::model::{linear_parent, Method, Norm, TLinear, TrainModel, Weight, LINEAR_NAMES};
use crate::error::{Error, Result};
use crate::model::gemma3::{Gemma3, Gemma3Config};
use crate::model::linear::{Linear, LoraAdapter};
use crate::model::llama::{Llama, LlamaConfig};
use crate::model::Model;

/// Rows of a q/k matrix (`heads * hd` rows of `cols`) from GGUF to HF order:
/// HF row `h*hd + p*hd/2 + i` is GGUF row `h*hd + 2i + p`.
pub fn unpermute_rows(w: &[f32], heads: usize, hd: usize, cols: usize) -> Vec<f32> {
    reorder_rope_rows(w, heads, hd, cols, true)
}

/// Inverse of [`unpermute_rows`]: HF order to GGUF order.
pub fn permute_rows(w: &[f32], heads: usize, hd: usize, cols: usize) -> Vec<f32> {
    reorder_rope_rows(w, heads, hd, cols, false)
}

/// The one row mapping behind both directions: GGUF row `h*hd + 2i + p` <-> HF row
/// `h*hd + p*hd/2 + i`.
fn reorder_rope_rows(w: &[f32], heads: usize, hd: usize, cols: usize, to_hf: bool) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    let half = hd / 2;
    for h in 0..heads {
        for i in 0..half {
            for p in 0..2 {
                let (gguf, hf) = (h * hd + 2 * i + p, h * hd + p * half + i);
                let (src, dst) = if to_hf { (gguf, hf) } else { (hf, gguf) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Heads of linear `j` whose rows are RoPE-permuted (q, k), if any.
fn rope_heads(cfg: &LlamaConfig, j: usize) -> Option<usize> {
    match j {
        0 => Some(cfg.n_heads),
        1 => Some(cfg.n_kv_heads),
        _ => None,
    }
}

/// Write `adapter_model.safetensors` and `adapter_config.json` (PEFT) into `dir`.
pub fn save_adapter(dir: &Path, m: &TrainModel, method: &Method, base: &str) -> Result<()> {
    let Method::Lora {
        r,
        alpha,
        dropout,
        targets,
    } = method
    else {
        return Err(Error::Internal("save_adapter on a full fine-tune".into()));
    };
    let mut owned: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    // LLaMA q/k rows are RoPE-permuted in GGUF: (heads, head_dim) of linear j, if so.
    let (blocks, perm): (Vec<&[TLinear; 7]>, RowPerm) = match m {
        TrainModel::Llama(l) => {
            let c = &l.cfg;
            let perm = std::array::from_fn(|j| rope_heads(c, j).map(|h| (h, c.head_dim)));
            (l.blocks.iter().map(|b| &b.lin).collect(), perm)
        }
        TrainModel::Gemma3(g) => (g.blocks.iter().map(|b| &b.lin).collect(), [None; 7]),
    };
    for lin in blocks {
        for (j, l) in lin.iter().enumerate() {
            let Some(lo) = &l.lora else { continue };
            owned.push((
                lo.a.name.clone(),
                vec![lo.a.rows, lo.a.cols],
                lo.a.w.clone(),
            ));
            let bw = match perm[j] {
                Some((h, hd)) => unpermute_rows(&lo.b.w, h, hd, lo.b.cols),
                None => lo.b.w.clone(),
            };
            owned.push((lo.b.name.clone(), vec![lo.b.rows, lo.b.cols], bw));
        }
    }
    let tensors: Vec<TensorRef> = owned
        .iter()
        .map(|(n, s, v)| (n.clone(), s.clone(), v.as_slice()))
        .collect();
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    write_safetensors(&dir.join("adapter_model.safetensors"), &tensors, &meta)?;
    let modules: Vec<&str> = (0..7)
        .filter(|&j| targets[j])
        .map(|j| LINEAR_NAMES[j])
        .collect();
    let cfg = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": r,
        "lora_alpha": alpha,
        // Rounded so that 0.05f32 reads back as 0.05, not 0.05000000074505806.
        "lora_dropout": (*dropout as f64 * 1e6).round() / 1e6,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": null,
    });
    write_json(&dir.join("adapter_config.json"), &cfg)
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::Internal(e.to_string()))?;
    crate::data::io::write_atomic(path, text.as_bytes())
}

/// Tensors of a full export, collected then written as one safetensors file.
#[derive(Default)]
struct Tensors(Vec<(String, Vec<usize>, Vec<f32>)>);

impl Tensors {
    /// Starting with the `[vocab, dim]` token embeddings.
    fn with_embeddings(embd: &Weight, vocab: usize, dim: usize) -> Tensors {
        let mut t = Tensors::default();
        t.push(
            "model.embed_tokens.weight".into(),
            vocab,
            dim,
            embd.f32().into_owned(),
        );
        t
    }

    /// A `[rows, cols]` tensor (`[cols]` when `rows` is 1).
    fn push(&mut self, name: String, rows: usize, cols: usize, w: Vec<f32>) {
        let shape = if rows == 1 {
            vec![cols]
        } else {
            vec![rows, cols]
        };
        self.0.push((name, shape, w));
    }

    /// A norm weight, `minus` subtracted (Gemma: 1).
    fn norm(&mut self, name: String, n: &Norm, minus: f32) {
        let w = match n {
            Norm::Frozen(w) => w.clone(),
            Norm::Train(p) => p.w.clone(),
        };
        let len = w.len();
        self.push(name, 1, len, w.into_iter().map(|v| v - minus).collect());
    }

    /// Layer `i`'s seven linears; `perm(j)`: (heads, head_dim) of a RoPE-permuted one.
    fn linears(
        &mut self,
        i: usize,
        lin: &[TLinear; 7],
        perm: impl Fn(usize) -> Option<(usize, usize)>,
    ) {
        for (j, l) in lin.iter().enumerate() {
            let (rows, cols) = (l.w.rows(), l.w.cols());
            let w = l.w.f32().into_owned();
            let w = match perm(j) {
                Some((h, hd)) => unpermute_rows(&w, h, hd, cols),
                None => w,
            };
            let name = format!(
                "model.layers.{i}.{}.{}.weight",
                linear_parent(j),
                LINEAR_NAMES[j]
            );
            self.push(name, rows, cols, w);
        }
    }

    /// The final norm and, when untied, the `[vocab, dim]` output head.
    fn head(
        &mut self,
        out_norm: &Norm,
        minus: f32,
        head: Option<&Weight>,
        vocab: usize,
        dim: usize,
    ) {
        self.norm("model.norm.weight".into(), out_norm, minus);
        if let Some(h) = head {
            self.push("lm_head.weight".into(), vocab, dim, h.f32().into_owned());
        }
    }

    fn write(&self, dir: &Path, config: &serde_json::Value) -> Result<()> {
        let tensors: Vec<TensorRef> = self
            .0
            .iter()
            .map(|(n, s, v)| (n.clone(), s.clone(), v.as_slice()))
            .collect();
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        write_safetensors(&dir.join("model.safetensors"), &tensors, &meta)?;
        write_json(&dir.join("config.json"), config)
    }
}

/// Write a fully fine-tuned model as `model.safetensors` + `config.json` (Hugging Face
/// `LlamaForCausalLM` / `Gemma3ForCausalLM` names and layout).
pub fn save_full(dir: &Path, m: &TrainModel) -> Result<()> {
    match m {
        TrainModel::Llama(m) => save_full_llama(dir, m),
        TrainModel::Gemma3(m) => save_full_gemma3(dir, m),
    }
}

fn save_full_llama(dir: &Path, m: &TLlama) -> Result<()> {
    let c = &m.cfg;
    let mut t = Tensors::with_embeddings(&m.embd, c.vocab_size, c.dim);
    for (i, b) in m.blocks.iter().enumerate() {
        let p = format!("model.layers.{i}");
        t.norm(format!("{p}.input_layernorm.weight"), &b.attn_norm, 0.0);
        t.norm(
            format!("{p}.post_attention_layernorm.weight"),
            &b.ffn_norm,
            0.0,
        );
        t.linears(i, &b.lin, |j| rope_heads(c, j).map(|h| (h, c.head_dim)));
    }
    t.head(&m.out_norm, 0.0, m.head.as_ref(), c.vocab_size, c.dim);
    t.write(dir, &hf_config(c, m.head.is_none()))
}

fn save_full_gemma3(dir: &Path, m: &TGemma3) -> Result<()> {
    let c = &m.cfg;
    let mut t = Tensors::with_embeddings(&m.embd, c.vocab_size, c.dim);
    for (i, b) in m.blocks.iter().enumerate() {
        for (name, n) in GEMMA_NORM_NAMES.iter().zip(b.norms()) {
            t.norm(format!("model.layers.{i}.{name}.weight"), n, 1.0);
        }
        t.linears(i, &b.lin, |_| None);
    }
    t.head(&m.out_norm, 1.0, m.head.as_ref(), c.vocab_size, c.dim);
    t.write(dir, &hf_config_gemma3(c, m.head.is_none()))
}

/// A Hugging Face `config.json` for a Gemma 3 text model of this shape (`gemma3_text`).
pub fn hf_config_gemma3(c: &Gemma3Config, tied: bool) -> serde_json::Value {
    let layer_types: Vec<&str> = c
        .global_layers
        .iter()
        .map(|&g| {
            if g {
                "full_attention"
            } else {
                "sliding_attention"
            }
        })
        .collect();
    json!({
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "hidden_size": c.dim,
        "intermediate_size": c.ffn_dim,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.context_length,
        "rms_norm_eps": c.rms_eps,
        "query_pre_attn_scalar": (1.0 / (c.attn_scale as f64).powi(2)).round() as u64,
        "sliding_window": c.sliding_window,
        "layer_types": layer_types,
        "rope_parameters": {
            "full_attention": {"rope_theta": c.rope_base_global, "rope_type": "default"},
            "sliding_attention": {"rope_theta": c.rope_base_local, "rope_type": "default"},
        },
        // The same, as transformers 4.x reads them.
        "rope_theta": c.rope_base_global,
        "rope_local_base_freq": c.rope_base_local,
        "final_logit_softcapping": c.final_softcap,
        "attn_logit_softcapping": c.attn_softcap,
        "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": tied,
        "attention_bias": false,
        "torch_dtype": "float32",
    })
}

/// A Hugging Face `config.json` for a LLaMA of this shape.
pub fn hf_config(c: &LlamaConfig, tied: bool) -> serde_json::Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": c.dim,
        "intermediate_size": c.ffn_dim,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.context_length,
        "rms_norm_eps": c.rms_eps,
        "rope_theta": c.rope_base,
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "torch_dtype": "float32",
    })
}

/// `(heads, head_dim)` of each of a block's seven linears whose rows are RoPE-permuted in
/// GGUF (LLaMA q and k), else `None`.
pub type RowPerm = [Option<(usize, usize)>; 7];

/// An inference model a LoRA adapter can be attached to: each block's seven linears (q, k,
/// v, o, gate, up, down) and which of them are RoPE-permuted.
pub trait AdapterTarget {
    fn adapter_slots(&mut self) -> (Vec<[&mut Linear; 7]>, RowPerm);
}

/// A block's seven linears in [`LINEAR_NAMES`] order (LLaMA and Gemma 3 blocks name them
/// alike).
macro_rules! seven_linears {
    ($b:expr) => {
        [
            &mut $b.wq,
            &mut $b.wk,
            &mut $b.wv,
            &mut $b.wo,
            &mut $b.w_gate,
            &mut $b.w_up,
            &mut $b.w_down,
        ]
    };
}

impl AdapterTarget for Llama {
    fn adapter_slots(&mut self) -> (Vec<[&mut Linear; 7]>, RowPerm) {
        let c = &self.cfg;
        let perm = std::array::from_fn(|j| rope_heads(c, j).map(|h| (h, c.head_dim)));
        let blocks = self.blocks.iter_mut().map(|b| seven_linears!(b)).collect();
        (blocks, perm)
    }
}

impl AdapterTarget for Gemma3 {
    fn adapter_slots(&mut self) -> (Vec<[&mut Linear; 7]>, RowPerm) {
        let blocks = self.blocks.iter_mut().map(|b| seven_linears!(b)).collect();
        (blocks, [None; 7])
    }
}

impl AdapterTarget for Model {
    fn adapter_slots(&mut self) -> (Vec<[&mut Linear; 7]>, RowPerm) {
        match self {
            Model::Llama(m) => m.adapter_slots(),
            Model::Gemma3(m) => m.adapter_slots(),
        }
    }
}

/// Attach a PEFT LoRA adapter directory (or its `adapter_model.safetensors`) to an inference
/// model: every `lora_A`/`lora_B` pair found becomes the [`LoraAdapter`] of its linear.
/// Returns how many linears got an adapter.
pub fn load_adapter(path: &Path, m: &mut impl AdapterTarget) -> Result<usize> {
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().unwrap_or(Path::new(".")).to_path_buf()
    };
    let file = if path.is_dir() {
        dir.join("adapter_model.safetensors")
    } else {
        path.to_path_buf()
    };
    let cfg_path = dir.join("adapter_config.json");
    let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let cfg: serde_json::Value = serde_json::from_str(&cfg_text).map_err(|e| Error::Data {
        path: cfg_path.clone(),
        line: e.line(),
        reason: e.to_string(),
    })?;
    let r = cfg["r"].as_u64().unwrap_or(0) as usize;
    let alpha = cfg["lora_alpha"].as_f64().unwrap_or(r as f64) as f32;
    if r == 0 {
        return Err(Error::Train(format!(
            "{}: `r` must be a positive integer",
            cfg_path.display()
        )));
    }
    let mut st = read_safetensors(&file)?;
    let (blocks, perm) = m.adapter_slots();
    let mut count = 0;
    for (i, lins) in blocks.into_iter().enumerate() {
        for (j, lin) in lins.into_iter().enumerate() {
            let key = format!(
                "base_model.model.model.layers.{i}.{}.{}",
                linear_parent(j),
                LINEAR_NAMES[j]
            );
            let a = st.tensors.remove(&format!("{key}.lora_A.weight"));
            let bm = st.tensors.remove(&format!("{key}.lora_B.weight"));
            let (Some((sa, a)), Some((sb, bw))) = (a, bm) else {
                continue;
            };
            let (rows, cols) = (lin.out_features(), lin.in_features());
            if sa != [r, cols] || sb != [rows, r] {
                return Err(Error::Tensor {
                    name: key,
                    reason: format!(
                        "adapter shapes {sa:?}/{sb:?} do not fit a {rows}x{cols} linear at r={r}"
                    ),
                });
            }
            let bw = match perm[j] {
                Some((h, hd)) => permute_rows(&bw, h, hd, r),
                None => bw,
            };
            lin.lora = Some(LoraAdapter {
                a,
                b: bw,
                r,
                scale: alpha / r as f32,
            });
            count += 1;
        }
    }
    if count == 0 {
        return Err(Error::Train(format!(
            "{}: no LoRA tensors for this model",
            file.display()
        )));
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_round_trips_and_matches_llama_cpp() {
        // 1 head of dim 4, 1 column: GGUF rows [a0 b0 a1 b1] are HF rows [a0 a1 b0 b1].
        let g = [0.0, 1.0, 2.0, 3.0];
        assert_eq!(unpermute_rows(&g, 1, 4, 1), vec![0.0, 2.0, 1.0, 3.0]);
        let w: Vec<f32> = (0..2 * 8 * 3).map(|i| i as f32).collect();
        assert_eq!(permute_rows(&unpermute_rows(&w, 2, 8, 3), 2, 8, 3), w);
    }
}
