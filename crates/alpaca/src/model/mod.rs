//! The model room: file formats, weight types, kernels and the model architectures.
//!
//! It knows nothing about tokenization, sampling, training loops or the command line. A
//! model is built from one weights source (today GGUF) and exposes one `forward`.

pub mod attention;
pub mod attention_tiled;
pub mod batch;
pub mod fresh;
pub mod gemma3;
pub mod ggml_compat;
pub mod gguf;
pub mod hf;
pub mod int8;
pub mod int8_decode;
pub mod int8_gemm;
pub mod int8_multi;
pub mod kernels;
#[cfg(target_arch = "x86_64")]
pub mod kernels_x86;
pub mod kquant;
pub mod linear;
pub mod llama;
pub mod ops;
pub mod quant;
pub mod sgemm;
#[cfg(target_arch = "x86_64")]
pub mod sgemm_x86;

use std::path::Path;

use crate::error::{Error, Result};
pub use attention::KvCache;
use gemma3::Gemma3;
use gguf::Gguf;
use llama::Llama;

/// A loaded model of one of the supported architectures. Closed set: one variant per file.
#[derive(Debug, Clone)]
pub enum Model {
    Llama(Llama),
    Gemma3(Gemma3),
}

impl Model {
    /// Build the model described by an opened GGUF file.
    pub fn from_gguf(g: &Gguf) -> Result<Model> {
        let arch = g.get_str("general.architecture")?;
        match arch {
            "llama" => Ok(Model::Llama(Llama::from_gguf(g)?)),
            "gemma3" => Ok(Model::Gemma3(Gemma3::from_gguf(g)?)),
            other => Err(Error::UnsupportedArch(other.to_string())),
        }
    }

    pub fn arch(&self) -> &'static str {
        match self {
            Model::Llama(_) => "llama",
            Model::Gemma3(_) => "gemma3",
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Model::Llama(m) => m.cfg.vocab_size,
            Model::Gemma3(m) => m.cfg.vocab_size,
        }
    }

    pub fn context_length(&self) -> usize {
        match self {
            Model::Llama(m) => m.cfg.context_length,
            Model::Gemma3(m) => m.cfg.context_length,
        }
    }

    /// An empty KV cache for up to `capacity` positions (capped at the context length).
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        match self {
            Model::Llama(m) => m.new_cache(capacity),
            Model::Gemma3(m) => m.new_cache(capacity),
        }
    }

    /// Run a batch of tokens; logits (`n x vocab`) for the last `n_logits` of them.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        n_logits: usize,
    ) -> Result<Vec<f32>> {
        match self {
            Model::Llama(m) => m.forward(tokens, cache, n_logits),
            Model::Gemma3(m) => m.forward(tokens, cache, n_logits),
        }
    }

    /// Every linear layer (blocks, then the output head).
    pub fn linears_mut(&mut self) -> Vec<&mut linear::Linear> {
        macro_rules! all {
            ($m:expr) => {{
                let mut v: Vec<&mut linear::Linear> = Vec::new();
                for b in $m.blocks.iter_mut() {
                    v.extend([
                        &mut b.wq,
                        &mut b.wk,
                        &mut b.wv,
                        &mut b.wo,
                        &mut b.w_gate,
                        &mut b.w_up,
                        &mut b.w_down,
                    ]);
                }
                v.push(&mut $m.output);
                v
            }};
        }
        match self {
            Model::Llama(m) => all!(m),
            Model::Gemma3(m) => all!(m),
        }
    }

    /// The weight type holding the most bytes of the linear layers.
    pub fn dominant_weight_type(&mut self) -> quant::GgmlType {
        let mut bytes: Vec<(quant::GgmlType, usize)> = Vec::new();
        for l in self.linears_mut() {
            let (ty, n) = (l.weight.ty, l.weight.data.bytes().len());
            match bytes.iter_mut().find(|(t, _)| *t == ty) {
                Some(e) => e.1 += n,
                None => bytes.push((ty, n)),
            }
        }
        bytes
            .into_iter()
            .max_by_key(|e| e.1)
            .map_or(quant::GgmlType::F32, |e| e.0)
    }

    /// Use `mode` for the one-token products of every linear layer.
    pub fn set_act_mode(&mut self, mode: int8_decode::ActMode) {
        for l in self.linears_mut() {
            l.weight.act = mode;
        }
    }

    /// The "auto" activation policy ([`int8_decode::auto_mode`] of the dominant type).
    pub fn set_auto_act_mode(&mut self) {
        let ty = self.dominant_weight_type();
        self.set_act_mode(int8_decode::auto_mode(ty));
    }

    /// Bytes of weights read to decode one token (every matrix once), for bandwidth bounds.
    pub fn weight_bytes_per_token(&self) -> usize {
        match self {
            Model::Llama(m) => {
                let lin = |l: &linear::Linear| l.weight.data.bytes().len();
                let blocks: usize = m
                    .blocks
                    .iter()
                    .map(|b| {
                        lin(&b.wq)
                            + lin(&b.wk)
                            + lin(&b.wv)
                            + lin(&b.wo)
                            + lin(&b.w_gate)
                            + lin(&b.w_up)
                            + lin(&b.w_down)
                    })
                    .sum();
                blocks + lin(&m.output)
            }
            Model::Gemma3(m) => m.weight_bytes_per_token(),
        }
    }
}

/// What a model path is: detected from the path itself, never from a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    Gguf,
    HfDir,
}

pub fn detect_format(path: &Path) -> Result<ModelFormat> {
    if path.is_dir() {
        if path.join("config.json").is_file() {
            return Ok(ModelFormat::HfDir);
        }
        return Err(Error::ModelNotFound {
            path: path.to_path_buf(),
            hint: "A model directory needs config.json, model.safetensors and tokenizer.json."
                .into(),
        });
    }
    Ok(ModelFormat::Gguf)
}
