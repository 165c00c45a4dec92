//! The KV cache and causal grouped-query attention, shared by every architecture.
//!
//! Cache layout: per layer, keys and values are `[position][kv_dim]` (`kv_dim = n_kv_heads *
//! head_dim`), so one head's history is a strided stream read once per token. The cache grows
//! with use (never past its capacity), so a short chat does not reserve the whole context.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::model::attention_tiled::{attention_tiled, MIN_TOKENS};
use crate::model::ops::{dispatch, dot_inline, simd_level, softmax, SimdLevel};

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

#[cfg(test)]
impl AttnShape {
    /// SmolLM2-135M's attention (9 heads over 3 kv heads of 64, global), for timing tests.
    pub(crate) fn smollm2() -> AttnShape {
        AttnShape {
            n_heads: 9,
            n_kv_heads: 3,
            head_dim: 64,
            scale: 0.125,
            window: None,
            softcap: None,
        }
    }
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
    #[cfg(target_arch = "x86_64")]
    let simd = hd.is_multiple_of(16) && simd_level() == SimdLevel::Avx512;
    #[cfg(not(target_arch = "x86_64"))]
    let simd = false;
    if simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 is supported (checked); `q` holds `g` heads of `hd` (a multiple
        // of 16), the cache rows `first..=last` hold `off + hd <= kv_dim` values each, and
        // `scores` holds `g x n`.
        unsafe {
            x86::scores_512(q, keys, sp, hd, s.scale, scores)
        };
    } else {
        for (j, p) in (sp.first..=sp.last).enumerate() {
            let k = &keys[p * sp.kv_dim + sp.off..p * sp.kv_dim + sp.off + hd];
            for (h, qh) in q.chunks_exact(hd).enumerate() {
                scores[h * n + j] = dot_inline(qh, k) * s.scale;
            }
        }
    }
    if let Some(cap) = s.softcap {
        for sc in scores.iter_mut() {
            *sc = cap * (*sc / cap).tanh();
        }
    }
    for row in scores.chunks_exact_mut(n) {
        softmax(row);
    }
    if simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above; `out` holds `g x hd`.
        unsafe {
            x86::weighted_values_512(scores, values, sp, hd, out)
        };
        return;
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

/// AVX-512 parts of [`attend_group`] for head dims that are multiples of 16, in the same
/// arithmetic order as the portable loops (16-lane partial sums reduced as
/// [`hsum16`](crate::model::ops::hsum16) does; values summed over positions in order), so
/// results are unchanged; the portable score loop compiled to 2-wide operations and was
/// ~45% of the server's attention time.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Span;

    /// `scores[h * n + j] = (q_h . k_{first + j}) * scale` (`n` positions).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub unsafe fn scores_512(
        q: &[f32],
        keys: &[f32],
        sp: Span,
        hd: usize,
        scale: f32,
        scores: &mut [f32],
    ) {
        let g = q.len() / hd;
        let n = sp.last + 1 - sp.first;
        debug_assert!(scores.len() >= g * n && keys.len() >= sp.last * sp.kv_dim + sp.off + hd);
        let (qp, kp, sp_out) = (q.as_ptr(), keys.as_ptr(), scores.as_mut_ptr());
        for j in 0..n {
            let k = kp.add((sp.first + j) * sp.kv_dim + sp.off);
            if j + AHEAD < n {
                prefetch_row(k.add(AHEAD * sp.kv_dim), hd);
            }
            for h in 0..g {
                let qh = qp.add(h * hd);
                let mut acc = _mm512_setzero_ps();
                let mut c = 0;
                while c < hd {
                    acc =
                        _mm512_fmadd_ps(_mm512_loadu_ps(qh.add(c)), _mm512_loadu_ps(k.add(c)), acc);
                    c += 16;
                }
                *sp_out.add(h * n + j) = hsum16_512(acc) * scale;
            }
        }
    }

    /// Rows ahead of the one being read whose columns are prefetched: with several
    /// sequences the caches outgrow L3 and these loops wait on memory (one head's columns
    /// of strided rows). Measured by `batched_attention_timing`: 3.9 -> 3.5 ms per step.
    const AHEAD: usize = 8;

    /// Prefetch the `len` f32 starting at `p` (a hint: no fault, no architectural effect).
    #[inline(always)]
    unsafe fn prefetch_row(p: *const f32, len: usize) {
        let mut c = 0;
        while c < len {
            _mm_prefetch::<_MM_HINT_T0>(p.add(c) as *const i8);
            c += 16;
        }
    }

    /// `hsum16` on a register: halves added, then quarters, then `(a0 + a2) + (a1 + a3)`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn hsum16_512(v: __m512) -> f32 {
        let lo = _mm512_castps512_ps256(v);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        let a8 = _mm256_add_ps(lo, hi);
        let a4 = _mm_add_ps(_mm256_castps256_ps128(a8), _mm256_extractf128_ps::<1>(a8));
        let a2 = _mm_add_ps(a4, _mm_movehl_ps(a4, a4));
        _mm_cvtss_f32(_mm_add_ss(a2, _mm_movehdup_ps(a2)))
    }

    /// `out[h] = sum_j scores[h * n + j] v_{first + j}` with the head's output in registers.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub unsafe fn weighted_values_512(
        scores: &[f32],
        values: &[f32],
        sp: Span,
        hd: usize,
        out: &mut [f32],
    ) {
        // All heads of the group in one pass over the value rows (each row loaded once,
        // G x C independent accumulators instead of C), where the registers allow.
        match (out.len() / hd, hd / 16) {
            (2, 4) => return wv_heads::<2, 4>(scores, values, sp, out),
            (3, 4) => return wv_heads::<3, 4>(scores, values, sp, out),
            (4, 4) => return wv_heads::<4, 4>(scores, values, sp, out),
            (2, 8) => return wv_heads::<2, 8>(scores, values, sp, out),
            _ => {}
        }
        match hd / 16 {
            4 => wv::<4>(scores, values, sp, out),
            8 => wv::<8>(scores, values, sp, out),
            2 => wv::<2>(scores, values, sp, out),
            c => {
                for (h, o) in out.chunks_exact_mut(hd).enumerate() {
                    let mut acc = vec![_mm512_setzero_ps(); c];
                    weighted_row(scores, values, sp, h, &mut acc);
                    for (i, a) in acc.iter().enumerate() {
                        _mm512_storeu_ps(o.as_mut_ptr().add(16 * i), *a);
                    }
                }
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn wv<const C: usize>(scores: &[f32], values: &[f32], sp: Span, out: &mut [f32]) {
        for (h, o) in out.chunks_exact_mut(16 * C).enumerate() {
            let mut acc = [_mm512_setzero_ps(); C];
            weighted_row(scores, values, sp, h, &mut acc);
            for (i, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(o.as_mut_ptr().add(16 * i), *a);
            }
        }
    }

    /// [`wv`] for the `G` heads of `out` at once: per head the same accumulation (from
    /// zero, positions in order), so the results are those of [`wv`].
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn wv_heads<const G: usize, const C: usize>(
        scores: &[f32],
        values: &[f32],
        sp: Span,
        out: &mut [f32],
    ) {
        debug_assert_eq!(out.len(), G * C * 16);
        let n = sp.last + 1 - sp.first;
        let vp = values.as_ptr();
        let mut acc = [[_mm512_setzero_ps(); C]; G];
        for j in 0..n {
            let v = vp.add((sp.first + j) * sp.kv_dim + sp.off);
            if j + AHEAD < n {
                prefetch_row(v.add(AHEAD * sp.kv_dim), 16 * C);
            }
            let mut vs = [_mm512_setzero_ps(); C];
            for (i, x) in vs.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(v.add(16 * i));
            }
            for (h, ah) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*scores.get_unchecked(h * n + j));
                for (x, vi) in ah.iter_mut().zip(&vs) {
                    *x = _mm512_fmadd_ps(a, *vi, *x);
                }
            }
        }
        for (h, ah) in acc.iter().enumerate() {
            for (i, a) in ah.iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr().add((h * C + i) * 16), *a);
            }
        }
    }

    #[inline(always)]
    unsafe fn weighted_row(scores: &[f32], values: &[f32], sp: Span, h: usize, acc: &mut [__m512]) {
        let n = sp.last + 1 - sp.first;
        let vp = values.as_ptr();
        for j in 0..n {
            let a = _mm512_set1_ps(*scores.get_unchecked(h * n + j));
            let v = vp.add((sp.first + j) * sp.kv_dim + sp.off);
            if j + AHEAD < n {
                prefetch_row(v.add(AHEAD * sp.kv_dim), 16 * acc.len());
            }
            for (i, x) in acc.iter_mut().enumerate() {
                *x = _mm512_fmadd_ps(a, _mm512_loadu_ps(v.add(16 * i)), *x);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention of an 8-sequence decode step over 128-token contexts (SmolLM2-135M's
    /// shape: 30 layers, 9 heads over 3 kv heads of 64), with 1 MiB of other memory read
    /// between layers as the weights would be (timing only; run by hand):
    /// `cargo test --release -p alpaca --lib batched_attention_timing -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn batched_attention_timing() {
        use rayon::prelude::*;
        let shape = AttnShape::smollm2();
        let (b, layers, kvd, qd, ctx) = (8usize, 30usize, 192usize, 576usize, 128usize);
        let mut seed = 1u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        let mut caches: Vec<KvCache> = (0..b).map(|_| KvCache::new(layers, kvd, 1024)).collect();
        for c in caches.iter_mut() {
            for _ in 0..ctx {
                for l in 0..layers {
                    let k: Vec<f32> = (0..kvd).map(|_| rnd()).collect();
                    let v: Vec<f32> = (0..kvd).map(|_| rnd()).collect();
                    c.push(l, &k, &v);
                }
                c.advance(1);
            }
        }
        let q: Vec<f32> = (0..b * qd).map(|_| rnd()).collect();
        let mut out = vec![0f32; b * qd];
        let other = vec![1u8; layers << 20];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("pool");
        let mut times = Vec::new();
        pool.install(|| {
            for _ in 0..31 {
                let mut t = 0f64;
                for l in 0..layers {
                    let sum: u64 = other[l << 20..(l + 1) << 20]
                        .par_chunks(1 << 16)
                        .map(|c| c.iter().step_by(64).map(|&x| x as u64).sum::<u64>())
                        .sum();
                    std::hint::black_box(sum);
                    let t0 = std::time::Instant::now();
                    out.par_chunks_mut(qd)
                        .zip(q.par_chunks(qd))
                        .zip(caches.par_iter())
                        .for_each(|((o, qi), c)| {
                            attention(qi, c.keys(l), c.values(l), c.len() - 1, 1, shape, o)
                        });
                    t += t0.elapsed().as_secs_f64();
                }
                times.push(t);
            }
        });
        times.sort_by(f64::total_cmp);
        eprintln!(
            "{b} sequences x {ctx} positions: attention {:.3} ms per step (median of 31)",
            times[15] * 1e3
        );
    }

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

    /// The server's decode shape (head dim 64, 3 query heads per kv head) through
    /// `attend_group` (the AVX-512 parts where the CPU has them) equals the portable loops
    /// bit for bit.
    #[test]
    fn group_attention_equals_the_portable_loops_bit_for_bit() {
        // Every head-group / head-size pairing of the AVX-512 value pass, and the fallbacks.
        for (hd, g) in [
            (64, 3),
            (64, 1),
            (64, 2),
            (64, 4),
            (128, 2),
            (128, 3),
            (32, 5),
        ] {
            group_attention_case(hd, g);
        }
    }

    fn group_attention_case(hd: usize, g: usize) {
        let (n, first) = (37, 2);
        let (kv_dim, off) = (3 * hd, hd);
        let q: Vec<f32> = (0..g * hd).map(|i| (i as f32 * 0.37).sin()).collect();
        let keys: Vec<f32> = (0..n * kv_dim).map(|i| (i as f32 * 0.11).cos()).collect();
        let values: Vec<f32> = (0..n * kv_dim).map(|i| (i as f32 * 0.07).sin()).collect();
        let sp = Span {
            kv_dim,
            off,
            first,
            last: n - 1,
        };
        let s = AttnShape {
            n_heads: 3 * g,
            n_kv_heads: 3,
            head_dim: hd,
            scale: 0.125,
            window: None,
            softcap: None,
        };
        let mut out = vec![f32::NAN; g * hd];
        attend_group(&q, &keys, &values, sp, s, &mut Vec::new(), &mut out);
        let m = n - first;
        let mut sc = vec![0f32; g * m];
        for j in 0..m {
            let k = &keys[(first + j) * kv_dim + off..][..hd];
            for h in 0..g {
                sc[h * m + j] = dot_inline(&q[h * hd..(h + 1) * hd], k) * s.scale;
            }
        }
        for row in sc.chunks_exact_mut(m) {
            softmax(row);
        }
        let mut want = vec![0f32; g * hd];
        for j in 0..m {
            let v = &values[(first + j) * kv_dim + off..][..hd];
            for h in 0..g {
                let a = sc[h * m + j];
                for (o, vi) in want[h * hd..(h + 1) * hd].iter_mut().zip(v) {
                    *o = a.mul_add(*vi, *o);
                }
            }
        }
        assert_eq!(out, want, "head_dim {hd}, {g} heads per kv head");
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
