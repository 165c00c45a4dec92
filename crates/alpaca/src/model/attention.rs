//! The KV cache and causal grouped-query attention, shared by every architecture.
//!
//! Cache layout: per layer, keys and values are `[position][kv_dim]` (`kv_dim = n_kv_heads *
//! head_dim`), so one head's history is a strided stream read once per token. The cache grows
//! with use (never past its capacity), so a short chat does not reserve the whole context.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::model::attention_tiled::{attention_tiled, MIN_TOKENS};
use crate::model::ops::{dispatch, dot_inline, softmax};

/// Activation buffers of a forward pass, kept between calls (owned by the [`KvCache`]) so
/// decoding allocates nothing per token once the buffers have grown.
#[derive(Debug, Clone, Default)]
pub struct Scratch {
    bufs: Vec<Vec<f32>>,
}

impl Scratch {
    /// Take the `n` buffers out (reuse them with [`Scratch::restore`]), each cleared and
    /// zero-filled to `sizes[i]` values.
    pub fn take(&mut self, sizes: &[usize]) -> Vec<Vec<f32>> {
        let mut bufs = std::mem::take(&mut self.bufs);
        bufs.resize_with(sizes.len().max(bufs.len()), Vec::new);
        for (b, &n) in bufs.iter_mut().zip(sizes) {
            b.clear();
            b.resize(n, 0.0);
        }
        bufs
    }

    pub fn restore(&mut self, bufs: Vec<Vec<f32>>) {
        self.bufs = bufs;
    }
}

/// Keys and values of past positions, for every layer.
#[derive(Debug, Clone)]
pub struct KvCache {
    kv_dim: usize,
    capacity: usize,
    len: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// Reusable buffers of the model's forward pass.
    pub scratch: Scratch,
}

impl KvCache {
    pub fn new(n_layers: usize, kv_dim: usize, capacity: usize) -> Self {
        KvCache {
            kv_dim,
            capacity,
            len: 0,
            k: vec![Vec::new(); n_layers],
            v: vec![Vec::new(); n_layers],
            scratch: Scratch::default(),
        }
    }

    /// Positions stored (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Most positions this cache may hold (the model's context length or less).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forget everything (a new conversation).
    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Keep only the first `len` positions (e.g. to reuse a shared prompt prefix).
    pub fn truncate(&mut self, len: usize) {
        let len = len.min(self.len);
        for l in 0..self.k.len() {
            self.k[l].truncate(len * self.kv_dim);
            self.v[l].truncate(len * self.kv_dim);
        }
        self.len = len;
    }

    /// Fill this empty cache with the first `len` positions of `other` (a cache of the same
    /// model): a shared prompt prefix computed once. Returns false, changing nothing, when
    /// this cache is not empty, the shapes differ, or `len` exceeds `other` or the capacity.
    pub fn copy_prefix(&mut self, other: &KvCache, len: usize) -> bool {
        if self.len != 0
            || self.kv_dim != other.kv_dim
            || self.k.len() != other.k.len()
            || len > other.len
            || len > self.capacity
        {
            return false;
        }
        let n = len * self.kv_dim;
        for l in 0..self.k.len() {
            self.k[l].extend_from_slice(&other.k[l][..n]);
            self.v[l].extend_from_slice(&other.v[l][..n]);
        }
        self.len = len;
        true
    }

    /// Append `t` positions of keys and values for `layer` (each `t x kv_dim`). The caller
    /// appends every layer, then calls [`KvCache::advance`].
    pub fn push(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        self.k[layer].extend_from_slice(k);
        self.v[layer].extend_from_slice(v);
    }

    pub fn advance(&mut self, t: usize) {
        self.len += t;
    }

    pub fn keys(&self, layer: usize) -> &[f32] {
        &self.k[layer]
    }

    pub fn values(&self, layer: usize) -> &[f32] {
        &self.v[layer]
    }
}

/// Shape of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplier of q.k (usually `1/sqrt(head_dim)`).
    pub scale: f32,
    /// Sliding window: a query at position p sees keys in `(p - window, p]`. None = global.
    pub window: Option<usize>,
    /// Soft-cap applied to scores as `cap * tanh(s / cap)` (Gemma 2); None for most models.
    pub softcap: Option<f32>,
}

/// Causal attention for `t` new queries whose first position is `pos0`, against keys and
/// values for positions `0..pos0 + t` (`keys`/`values`: `[position][n_kv_heads * head_dim]`).
/// `q`: `t x n_heads * head_dim`; `out`: same shape. Batches of at least [`MIN_TOKENS`]
/// (prompts) take the tiled path of [`attention_tiled`]; shorter ones (decoding) the
/// per-token one, [`attention_per_token`].
pub fn attention(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    pos0: usize,
    t: usize,
    s: AttnShape,
    out: &mut [f32],
) {
    if t >= MIN_TOKENS {
        attention_tiled(q, keys, values, pos0, t, s, out);
    } else {
        attention_per_token(q, keys, values, pos0, t, s, out);
    }
}

/// [`attention`] one query token at a time (the whole score row of each, then softmax).
pub fn attention_per_token(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    pos0: usize,
    t: usize,
    s: AttnShape,
    out: &mut [f32],
) {
    let hd = s.head_dim;
    let q_dim = s.n_heads * hd;
    let kv_dim = s.n_kv_heads * hd;
    let group = s.n_heads / s.n_kv_heads;
    debug_assert_eq!(out.len(), t * q_dim);
    debug_assert!(keys.len() >= (pos0 + t) * kv_dim);
    // One task per (token, kv head): the `group` query heads sharing a kv head are done
    // together, so each key and value row is loaded once for all of them. Their outputs
    // are contiguous (`group * hd` values).
    let one = |idx: usize, o: &mut [f32], scores: &mut Vec<f32>| {
        let (i, kvh) = (idx / s.n_kv_heads, idx % s.n_kv_heads);
        let pos = pos0 + i;
        let first = match s.window {
            Some(w) => (pos + 1).saturating_sub(w),
            None => 0,
        };
        let q0 = i * q_dim + kvh * group * hd;
        let span = Span {
            kv_dim,
            off: kvh * hd,
            first,
            last: pos,
        };
        attend_group(&q[q0..q0 + group * hd], keys, values, span, s, scores, o);
    };
    // Serial when one thread or little work (decoding a short context): no fork-join, and
    // the scores buffer is reused across calls (no allocation per token).
    let work = t * s.n_heads * (pos0 + t) * hd;
    let chunk = group * hd;
    if rayon::current_num_threads() == 1 || work < (1 << 16) {
        SCORES.with(|sc| {
            let mut sc = sc.borrow_mut();
            for (idx, o) in out.chunks_mut(chunk).enumerate() {
                one(idx, o, &mut sc);
            }
        });
        return;
    }
    out.par_chunks_mut(chunk).enumerate().for_each_init(
        || SCORES.with(|sc| std::mem::take(&mut *sc.borrow_mut())),
        |scores, (idx, o)| one(idx, o, scores),
    );
}

/// Which cache rows one attention task reads: positions `first..=last`, columns
/// `off..off + head_dim` of rows `kv_dim` wide.
#[derive(Clone, Copy)]
pub struct Span {
    kv_dim: usize,
    off: usize,
    first: usize,
    last: usize,
}

dispatch!(attend_group(q: &[f32], keys: &[f32], values: &[f32], sp: Span, s: AttnShape, scores: &mut Vec<f32>, out: &mut [f32]) -> () {
    let hd = s.head_dim;
    let g = q.len() / hd;
    let n = sp.last + 1 - sp.first;
    scores.clear();
    scores.resize(g * n, 0.0);
    for (j, p) in (sp.first..=sp.last).enumerate() {
        let k = &keys[p * sp.kv_dim + sp.off..p * sp.kv_dim + sp.off + hd];
        for (h, qh) in q.chunks_exact(hd).enumerate() {
            let mut sc = dot_inline(qh, k) * s.scale;
            if let Some(cap) = s.softcap {
                sc = cap * (sc / cap).tanh();
            }
            scores[h * n + j] = sc;
        }
    }
    for row in scores.chunks_exact_mut(n) {
        softmax(row);
    }
    out.fill(0.0);
    for (j, p) in (sp.first..=sp.last).enumerate() {
        let v = &values[p * sp.kv_dim + sp.off..p * sp.kv_dim + sp.off + hd];
        for (h, o) in out.chunks_exact_mut(hd).enumerate() {
            let a = scores[h * n + j];
            for (oi, vi) in o.iter_mut().zip(v) {
                *oi = a.mul_add(*vi, *oi);
            }
        }
    }
});

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_position_returns_its_value() {
        let s = AttnShape {
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 4,
            scale: 0.5,
            window: None,
            softcap: None,
        };
        let q = vec![1.0; 8];
        let k = vec![0.3; 4];
        let v = vec![1.0, 2.0, 3.0, 4.0];
        let mut out = vec![0.0; 8];
        attention(&q, &k, &v, 0, 1, s, &mut out);
        assert_eq!(out, vec![1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn batched_equals_incremental() {
        let s = AttnShape {
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 8,
            scale: 0.35,
            window: Some(3),
            softcap: None,
        };
        let t = 5;
        let q: Vec<f32> = (0..t * 32).map(|i| (i as f32 * 0.17).sin()).collect();
        let k: Vec<f32> = (0..t * 16).map(|i| (i as f32 * 0.07).cos()).collect();
        let v: Vec<f32> = (0..t * 16).map(|i| (i as f32 * 0.13).sin()).collect();
        let mut all = vec![0.0; t * 32];
        attention(&q, &k, &v, 0, t, s, &mut all);
        for i in 0..t {
            let mut one = vec![0.0; 32];
            attention(&q[i * 32..(i + 1) * 32], &k, &v, i, 1, s, &mut one);
            for (a, b) in one.iter().zip(&all[i * 32..(i + 1) * 32]) {
                assert!((a - b).abs() < 1e-6);
            }
        }
    }
}
