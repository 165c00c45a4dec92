//! The linear layer: one type for every weight format, so models never branch on format.
//!
//! A [`QMatrix`] is a `rows x cols` weight matrix in any supported ggml type, stored either in
//! the memory-mapped model file (no copy: resident memory stays near the file size) or in an
//! owned buffer. [`QMatrix::matmul`] computes `y = x W^T` for a batch of `t` activation rows
//! with the kernels of [`kernels`]: fused dequantize + dot per row when decoding (each weight
//! read once), a tiled GEMM over dequantized panels for prompts.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::int8_decode::{self, ActMode};
use crate::model::int8_gemm;
use crate::model::kernels;
use crate::model::ops::dispatch;
use crate::model::quant::{dequantize_row, GgmlType};

/// Bytes of a tensor: a window of a shared memory map, or an owned buffer.
#[derive(Clone)]
pub enum Storage {
    Mapped {
        map: Arc<memmap2::Mmap>,
        offset: usize,
        len: usize,
    },
    Owned(Arc<Vec<u8>>),
}

impl Storage {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped { map, offset, len } => &map[*offset..*offset + *len],
            Storage::Owned(v) => v,
        }
    }
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Storage({} bytes)", self.bytes().len())
    }
}

/// A `rows x cols` matrix of weights in ggml type `ty`, row-major (each row `cols` weights).
#[derive(Clone, Debug)]
pub struct QMatrix {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: Storage,
    /// Activations of one-token products and prompts (the model's policy, see
    /// [`int8_decode`]).
    pub act: ActMode,
}

impl QMatrix {
    /// Validate type and size; `name` is used in errors.
    pub fn new(name: &str, ty: GgmlType, rows: usize, cols: usize, data: Storage) -> Result<Self> {
        if !ty.is_supported_weight() {
            return Err(Error::UnsupportedType {
                name: name.into(),
                ty: ty.name().into(),
            });
        }
        if !cols.is_multiple_of(ty.block_size()) || data.bytes().len() != rows * ty.row_bytes(cols)
        {
            return Err(Error::Tensor {
                name: name.into(),
                reason: format!(
                    "{} bytes do not hold a {rows} x {cols} {} matrix",
                    data.bytes().len(),
                    ty.name()
                ),
            });
        }
        Ok(QMatrix {
            ty,
            rows,
            cols,
            data,
            act: ActMode::F32,
        })
    }

    /// Build from f32 values (row-major), quantizing to `ty` (tests, fresh models).
    pub fn from_f32(name: &str, ty: GgmlType, rows: usize, cols: usize, x: &[f32]) -> Result<Self> {
        let mut bytes = Vec::with_capacity(rows * ty.row_bytes(cols));
        for r in x.chunks_exact(cols) {
            let q =
                crate::model::quant::quantize_row(ty, r).ok_or_else(|| Error::UnsupportedType {
                    name: name.into(),
                    ty: ty.name().into(),
                })?;
            bytes.extend_from_slice(&q);
        }
        Self::new(name, ty, rows, cols, Storage::Owned(Arc::new(bytes)))
    }

    pub fn row_bytes(&self) -> usize {
        self.ty.row_bytes(self.cols)
    }

    /// Raw bytes of row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data.bytes()[r * rb..(r + 1) * rb]
    }

    /// Dequantize row `r` into `out` (`cols` values), e.g. an embedding lookup.
    pub fn dequantize_row_into(&self, r: usize, out: &mut [f32]) {
        dequant(self.ty, self.row(r), out);
    }

    /// Row `r` as `f32` through the CPU's SIMD unpacker, the one the prompt GEMM's panels
    /// use: [`Self::dequantize_row_into`] up to one rounding (fma instead of mul + add),
    /// several times faster for the types whose reference decoder does not vectorize (Q4_1
    /// was 2% of a LoRA training step).
    pub fn unpack_row_into(&self, r: usize, out: &mut [f32]) {
        let level = kernels::default_level().min(crate::model::ops::hw_simd_level());
        kernels::unpack_row_at(level, self.ty, self.row(r), out);
    }

    /// The whole matrix as f32 (row-major).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, o) in out.chunks_exact_mut(self.cols).enumerate() {
            self.dequantize_row_into(r, o);
        }
        out
    }

    /// `y[i, r] = sum_k x[i, k] * W[r, k]` for `t` rows of `x` (`t x cols`), writing
    /// `y` (`t x rows`). Fused dequantize + dot per weight row for few tokens, a tiled GEMM
    /// for prompts: over dequantized `f32` panels (see [`kernels`]), or on 8-bit activations
    /// under [`ActMode::Int8`] (see [`int8_gemm`]). Parallel over weight rows.
    pub fn matmul(&self, x: &[f32], t: usize, y: &mut [f32]) {
        if t >= kernels::GEMM_MIN_T && !self.int8() {
            let data = self.data.bytes();
            let level = kernels::default_level();
            // The integer GEMM only where VNNI makes it pay: with AVX2's `maddubs` it is
            // slower than the f32 GEMM (docs/COMPAT.md), so such CPUs keep f32 prompts.
            let int8_level = int8_decode::level_for(level);
            if self.act == ActMode::Int8
                && int8_level == int8_decode::Level::Vnni
                && int8_gemm::supported(self.ty)
                && !crate::model::int8::enabled()
            {
                int8_gemm::gemm(int8_level, self.ty, data, self.rows, self.cols, x, t, y);
            } else {
                kernels::gemm(level, self.ty, data, self.rows, self.cols, x, t, y);
            }
        } else {
            self.matmul_rows(x, t, y);
        }
    }

    /// [`matmul`](Self::matmul) without the prompt GEMM, whatever `t`: the row kernels (one
    /// token fused, several through the multi-row kernels), or llama.cpp's int8 Q8_0 products
    /// under `--int8-activations`, or for one token under [`ActMode::Int8`] our int8 kernels.
    /// The batched decode step falls back to it ([`matmul_batch`](Self::matmul_batch)).
    pub fn matmul_rows(&self, x: &[f32], t: usize, y: &mut [f32]) {
        let data = self.data.bytes();
        if self.int8() {
            crate::model::int8::matmul_q8_0(data, self.rows, self.cols, x, t, y);
        } else if t == 1 && self.act == ActMode::Int8 && !crate::model::int8::enabled() {
            let level = int8_decode::level_for(kernels::default_level());
            int8_decode::matvec(level, self.ty, data, self.rows, self.cols, x, y);
        } else {
            let level = kernels::default_level();
            kernels::matvec(level, self.ty, data, self.rows, self.cols, x, t, y);
        }
    }

    /// The batched decode step's product (`t` sequences, one row each): under
    /// [`ActMode::Int8Batch`] or [`ActMode::Int8`], 2+ rows take the multi-token int8
    /// kernels ([`int8_multi`](crate::model::int8_multi)) where the type has them; otherwise
    /// (and for one row) [`matmul_rows`](Self::matmul_rows). Single-sequence paths never
    /// come here, so their arithmetic does not depend on the batch policy.
    pub fn matmul_batch(&self, x: &[f32], t: usize, y: &mut [f32]) {
        use crate::model::int8_multi;
        if t >= 2
            && self.act != ActMode::F32
            && int8_multi::supported(self.ty)
            && !crate::model::int8::enabled()
        {
            let level = int8_decode::level_for(kernels::default_level());
            let data = self.data.bytes();
            int8_multi::matmul(level, self.ty, data, self.rows, self.cols, x, t, y);
        } else {
            self.matmul_rows(x, t, y);
        }
    }

    /// Whether products with this matrix take the int8-activation path.
    fn int8(&self) -> bool {
        self.ty == GgmlType::Q8_0 && crate::model::int8::enabled()
    }
}

dispatch!(dequant(ty: GgmlType, row: &[u8], out: &mut [f32]) -> () {
    dequantize_row(ty, row, out)
});

/// One linear projection of a model. Today: the frozen weight. LoRA adapters attach here,
/// so the model code never changes when a layer gains an adapter.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: QMatrix,
    /// Optional LoRA adapter applied after the base product (`alpaca run --lora`).
    pub lora: Option<LoraAdapter>,
}

/// A LoRA adapter on a linear: `y += scale * (x A^T) B^T`.
#[derive(Clone, Debug)]
pub struct LoraAdapter {
    pub a: Vec<f32>, // [r, in]
    pub b: Vec<f32>, // [out, r]
    pub r: usize,
    /// `alpha / r`.
    pub scale: f32,
}

impl LoraAdapter {
    /// `y[t, out] += scale * (x[t, in] A^T) B^T`.
    pub fn apply(&self, x: &[f32], t: usize, y: &mut [f32]) {
        let cols = self.a.len() / self.r;
        let rows = self.b.len() / self.r;
        for (xr, yr) in x.chunks_exact(cols).zip(y.chunks_exact_mut(rows)).take(t) {
            let u: Vec<f32> = self
                .a
                .chunks_exact(cols)
                .map(|a| crate::model::ops::dot(xr, a) * self.scale)
                .collect();
            for (yv, br) in yr.iter_mut().zip(self.b.chunks_exact(self.r)) {
                *yv += crate::model::ops::dot(&u, br);
            }
        }
    }
}

impl Linear {
    pub fn new(weight: QMatrix) -> Self {
        Linear { weight, lora: None }
    }
    pub fn in_features(&self) -> usize {
        self.weight.cols
    }
    pub fn out_features(&self) -> usize {
        self.weight.rows
    }
    /// `y = x W^T` for `t` rows.
    pub fn forward(&self, x: &[f32], t: usize, y: &mut [f32]) {
        self.weight.matmul(x, t, y);
        if let Some(l) = &self.lora {
            l.apply(x, t, y);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(w: &[f32], rows: usize, cols: usize, x: &[f32], t: usize) -> Vec<f32> {
        let mut y = vec![0f32; t * rows];
        for i in 0..t {
            for r in 0..rows {
                y[i * rows + r] = (0..cols).map(|k| x[i * cols + k] * w[r * cols + k]).sum();
            }
        }
        y
    }

    #[test]
    fn matmul_matches_naive_for_each_type_and_batch() {
        let (rows, cols) = (37, 64);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
            .collect();
        for ty in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
        ] {
            let q = QMatrix::from_f32("w", ty, rows, cols, &w).expect("quantize");
            let wd = q.to_f32();
            for t in [1, 3] {
                let x: Vec<f32> = (0..t * cols).map(|i| (i as f32 * 0.3).sin()).collect();
                let mut y = vec![0f32; t * rows];
                q.matmul(&x, t, &mut y);
                let want = naive(&wd, rows, cols, &x, t);
                for (a, b) in y.iter().zip(&want) {
                    assert!((a - b).abs() < 1e-4, "{} t={t}: {a} vs {b}", ty.name());
                }
            }
        }
    }

    #[test]
    fn rejects_wrong_sizes_and_types() {
        let s = Storage::Owned(Arc::new(vec![0u8; 10]));
        assert!(QMatrix::new("w", GgmlType::F32, 2, 2, s.clone()).is_err());
        assert!(matches!(
            QMatrix::new("w", GgmlType::Q2K, 1, 256, s),
            Err(Error::UnsupportedType { .. })
        ));
    }
}
