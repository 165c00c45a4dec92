//! Opt-in llama.cpp-compatible Q8_0 products: activations quantized to 8 bits, integer dots.
//!
//! The default engine keeps activations in `f32` (transformers parity depends on it). llama.cpp
//! instead quantizes each activation row to Q8_0 and multiplies Q8_0 weights with integer dot
//! products. With `set_int8_activations(true)` (`--int8-activations` on the command line),
//! every Q8_0 weight product of inference goes through [`matmul_q8_0`], which reproduces
//! ggml's x86 arithmetic step by step:
//!
//! - [`quantize_row_q8_0`] is ggml-cpu's x86 `quantize_row_q8_0` (the AVX2 one llama.cpp runs
//!   on these CPUs, not `quantize_row_q8_0_ref`): per 32 values `d = amax / 127` stored as
//!   fp16, `q = round_half_even(x * (127 / amax))`, saturated to `i8`.
//! - [`dot_q8_0`] is ggml's x86 Q8_0 x Q8_0 dot (`ggml_vec_dot_q8_0_q8_0` and llamafile's
//!   `tinyBLAS_Q0_AVX`, which agree): eight `f32` lanes, lane `i` accumulating
//!   `fma(d_w * d_x, sum(q_w q_x over bytes 4i..4i+4 of the block), acc_i)` block after block,
//!   then the `hsum` reduction `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`. The integer sums are
//!   exact, so the scalar, AVX2 (`maddubs` with the sign trick) and AVX-512 VNNI
//!   (`dpbusd` on 256-bit registers) kernels give the same bits.

use std::sync::atomic::{AtomicBool, Ordering};

use half::f16;
use rayon::prelude::*;

use crate::model::ops::{hw_simd_level, simd_level, SimdLevel};

/// Values per Q8_0 block.
pub const QK: usize = 32;
/// Bytes per Q8_0 block: an fp16 scale and 32 signed bytes.
pub const BLOCK_BYTES: usize = 34;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turn the int8-activation path on or off for the whole process.
pub fn set_int8_activations(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether Q8_0 products quantize their activations (see [`set_int8_activations`]).
pub fn int8_activations() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Short name used at the dispatch sites.
pub fn enabled() -> bool {
    int8_activations()
}

/// The kernel family used for the dot products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Scalar,
    /// AVX2 + FMA + F16C, `maddubs`/`madd` integer sums (ggml's AVX2 path).
    Avx2,
    /// AVX-512 VL + VNNI: `dpbusd` (a two-rows-per-512-bit-register version measured 2x
    /// slower than this at decode).
    Avx512Vnni,
}

/// The best level this CPU supports (honours `ALPACA_SIMD`, like the f32 kernels).
pub fn default_level() -> Level {
    level_for(simd_level())
}

/// Whether the CPU can run `level`.
pub fn available(level: Level) -> bool {
    match level {
        Level::Scalar => true,
        Level::Avx2 => hw_simd_level() >= SimdLevel::Avx2,
        Level::Avx512Vnni => level_for(hw_simd_level()) == Level::Avx512Vnni,
    }
}

fn level_for(s: SimdLevel) -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        if s == SimdLevel::Avx512 && is_x86_feature_detected!("avx512vnni") {
            return Level::Avx512Vnni;
        }
        if s >= SimdLevel::Avx2 {
            return Level::Avx2;
        }
    }
    let _ = s;
    Level::Scalar
}

/// Bytes of a Q8_0 row of `cols` values.
pub fn row_bytes(cols: usize) -> usize {
    cols / QK * BLOCK_BYTES
}

#[inline(always)]
fn scale(block: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([block[0], block[1]])).to_f32()
}

/// Quantize `x` (a multiple of 32 values) into ggml Q8_0 blocks in `out`
/// (`row_bytes(x.len())` bytes), bit for bit as ggml-cpu's x86 `quantize_row_q8_0`.
pub fn quantize_row_q8_0(x: &[f32], out: &mut [u8]) {
    assert!(x.len().is_multiple_of(QK), "Q8_0 rows hold whole blocks");
    assert_eq!(out.len(), row_bytes(x.len()));
    #[cfg(target_arch = "x86_64")]
    if hw_simd_level() >= SimdLevel::Avx2 {
        // SAFETY: the CPU has AVX2 and F16C; lengths were checked above.
        unsafe { x86::quantize_avx2(x, out) };
        return;
    }
    quantize_scalar(x, out);
}

/// The portable version of [`quantize_row_q8_0`] (same bits).
pub fn quantize_scalar(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(BLOCK_BYTES)) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        ob[..2].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        for (o, v) in ob[2..].iter_mut().zip(xb) {
            *o = cvt_pack((v * id).round_ties_even()) as u8;
        }
    }
}

/// `_mm256_cvtps_epi32` of an integral value (NaN and out-of-range give `i32::MIN`, the
/// "integer indefinite": with a tiny `amax`, `127 / amax` is infinite), then the saturating
/// 32 -> 16 -> 8 bit packs.
#[inline(always)]
fn cvt_pack(q: f32) -> i8 {
    let i = if !(-2147483648.0..2147483648.0).contains(&q) {
        i32::MIN
    } else {
        q as i32
    };
    i.clamp(-128, 127) as i8
}

/// `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`: ggml's `hsum_float_8`.
#[inline(always)]
fn hsum8(a: [f32; 8]) -> f32 {
    let b = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    (b[0] + b[2]) + (b[1] + b[3])
}

/// Portable Q8_0 x Q8_0 dot of two rows of ggml blocks (the reference for the fast ones).
pub fn dot_scalar(w: &[u8], x: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    for (bw, bx) in w.chunks_exact(BLOCK_BYTES).zip(x.chunks_exact(BLOCK_BYTES)) {
        let d = scale(bw) * scale(bx);
        let (qw, qx) = (&bw[2..], &bx[2..]);
        for (i, a) in acc.iter_mut().enumerate() {
            let s: i32 = (4 * i..4 * i + 4)
                .map(|j| qw[j] as i8 as i32 * qx[j] as i8 as i32)
                .sum();
            *a = d.mul_add(s as f32, *a);
        }
    }
    hsum8(acc)
}

/// `W[r] . x` for one Q8_0 weight row and one quantized activation row at `level`.
/// Panics if the CPU lacks `level` or the lengths differ.
pub fn dot_q8_0(level: Level, w: &[u8], x: &[u8]) -> f32 {
    assert!(available(level), "CPU lacks {level:?}");
    assert_eq!(w.len(), x.len());
    assert!(w.len().is_multiple_of(BLOCK_BYTES));
    match level {
        Level::Scalar => dot_scalar(w, x),
        // SAFETY: the level is available and the lengths were checked.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { x86::dot_avx2(w, x) },
        #[cfg(target_arch = "x86_64")]
        Level::Avx512Vnni => unsafe { x86::dot_vnni(w, x) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => dot_scalar(w, x),
    }
}

/// Weight rows per parallel task.
const CHUNK: usize = 32;

/// `y[i, r] = W[r] . q8(x[i])` for `t` activation rows `x` (`t x cols`) and the Q8_0 weight
/// matrix `data` (`rows x cols`), writing `y` (`t x rows`): each activation row is quantized
/// once, then weight rows are the outer loop (read once), in parallel.
pub fn matmul_q8_0(data: &[u8], rows: usize, cols: usize, x: &[f32], t: usize, y: &mut [f32]) {
    matmul_q8_0_at(default_level(), data, rows, cols, x, t, y);
}

/// [`matmul_q8_0`] with an explicit kernel level (tests run every level).
pub fn matmul_q8_0_at(
    level: Level,
    data: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    t: usize,
    y: &mut [f32],
) {
    assert!(available(level), "CPU lacks {level:?}");
    let rb = row_bytes(cols);
    assert!(cols.is_multiple_of(QK));
    assert_eq!(data.len(), rows * rb);
    assert_eq!(x.len(), t * cols);
    assert_eq!(y.len(), t * rows);
    if rows == 0 || t == 0 {
        return;
    }
    let mut xq = vec![0u8; t * rb];
    for (xr, qr) in x.chunks_exact(cols).zip(xq.chunks_exact_mut(rb)) {
        quantize_row_q8_0(xr, qr);
    }
    // Results weight-row major (`rows x t`): for one token that is `y` itself.
    let mut yt_buf = Vec::new();
    let yt: &mut [f32] = if t == 1 {
        y
    } else {
        yt_buf.resize(rows * t, 0f32);
        &mut yt_buf
    };
    let work = |(c, out): (usize, &mut [f32])| {
        rows_block(level, data, rb, c * CHUNK, &xq, t, out);
    };
    if rayon::current_num_threads() == 1 || rows * rb < (64 << 10) {
        yt.chunks_mut(CHUNK * t).enumerate().for_each(work);
    } else {
        yt.par_chunks_mut(CHUNK * t).enumerate().for_each(work);
    }
    if t > 1 {
        for (r, yr) in yt_buf.chunks_exact(t).enumerate() {
            for (i, v) in yr.iter().enumerate() {
                y[i * rows + r] = *v;
            }
        }
    }
}

/// Rows `r0 ..` of the weights (as many as `out` holds, `out` is `n x t`) against every
/// quantized activation row.
fn rows_block(
    level: Level,
    data: &[u8],
    rb: usize,
    r0: usize,
    xq: &[u8],
    t: usize,
    out: &mut [f32],
) {
    let n = out.len() / t;
    let row = |r: usize| &data[(r0 + r) * rb..(r0 + r + 1) * rb];
    for r in 0..n {
        let w = row(r);
        let mut i0 = 0;
        #[cfg(target_arch = "x86_64")]
        if level == Level::Avx512Vnni {
            while i0 + 4 <= t {
                let x4 = [0, 1, 2, 3].map(|k| &xq[(i0 + k) * rb..(i0 + k + 1) * rb]);
                // SAFETY: VNNI was checked by the caller; all rows are `rb` bytes.
                let y4 = unsafe { x86::dot4_vnni(w, x4) };
                out[r * t + i0..r * t + i0 + 4].copy_from_slice(&y4);
                i0 += 4;
            }
        }
        for (i, xi) in xq.chunks_exact(rb).enumerate().skip(i0) {
            out[r * t + i] = match level {
                Level::Scalar => dot_scalar(w, xi),
                // SAFETY: the level was checked by the caller; lengths match.
                #[cfg(target_arch = "x86_64")]
                Level::Avx2 => unsafe { x86::dot_avx2(w, xi) },
                #[cfg(target_arch = "x86_64")]
                Level::Avx512Vnni => unsafe { x86::dot_vnni(w, xi) },
                #[cfg(not(target_arch = "x86_64"))]
                _ => dot_scalar(w, xi),
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{BLOCK_BYTES, QK};

    /// ggml's `hsum_float_8`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum256(x: __m256) -> f32 {
        let mut r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
        r = _mm_add_ps(r, _mm_movehl_ps(r, r));
        r = _mm_add_ss(r, _mm_movehdup_ps(r));
        _mm_cvtss_f32(r)
    }

    /// fp16 -> f32 of the scale at the start of a block.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scale(p: *const u8) -> f32 {
        let bits = (p as *const u16).read_unaligned();
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(bits as i16)))
    }

    /// Blocks whose combined scales are converted ahead of the integer loop.
    const SCALES: usize = 64;

    /// `ds[j] = d_w * d_x` of blocks `b0 + j` (up to `SCALES` of them, stopping at `nb`).
    ///
    /// A separate pass: converting each scale inside the dot loop let the compiler build the
    /// fp16 operand in the accumulator's register (its upper lanes are "don't care"), which
    /// chained every block to the previous FMA and made decoding 2x slower.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block_scales(
        wp: *const u8,
        xp: *const u8,
        b0: usize,
        nb: usize,
        ds: &mut [f32; SCALES],
    ) {
        for (j, d) in ds.iter_mut().enumerate().take(nb - b0) {
            let o = (b0 + j) * BLOCK_BYTES;
            *d = scale(wp.add(o)) * scale(xp.add(o));
        }
    }

    /// A literal port of ggml-cpu's x86 `quantize_row_q8_0` (AVX2 branch).
    ///
    /// # Safety
    /// AVX2 and F16C; `out.len() == x.len() / 32 * 34`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize_avx2(x: &[f32], out: &mut [u8]) {
        let nb = x.len() / QK;
        let (mut xp, op) = (x.as_ptr(), out.as_mut_ptr());
        let sign_bit = _mm256_set1_ps(-0.0);
        let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for i in 0..nb {
            let mut v0 = _mm256_loadu_ps(xp);
            let mut v1 = _mm256_loadu_ps(xp.add(8));
            let mut v2 = _mm256_loadu_ps(xp.add(16));
            let mut v3 = _mm256_loadu_ps(xp.add(24));
            xp = xp.add(32);
            let mut max_abs = _mm256_andnot_ps(sign_bit, v0);
            max_abs = _mm256_max_ps(max_abs, _mm256_andnot_ps(sign_bit, v1));
            max_abs = _mm256_max_ps(max_abs, _mm256_andnot_ps(sign_bit, v2));
            max_abs = _mm256_max_ps(max_abs, _mm256_andnot_ps(sign_bit, v3));
            let mut max4 = _mm_max_ps(
                _mm256_extractf128_ps(max_abs, 1),
                _mm256_castps256_ps128(max_abs),
            );
            max4 = _mm_max_ps(max4, _mm_movehl_ps(max4, max4));
            max4 = _mm_max_ss(max4, _mm_movehdup_ps(max4));
            let max_scalar = _mm_cvtss_f32(max4);
            let d = max_scalar / 127.0;
            let dh =
                _mm_cvtsi128_si32(_mm_cvtps_ph(_mm_set_ss(d), _MM_FROUND_TO_NEAREST_INT)) as u16;
            let ob = op.add(i * BLOCK_BYTES);
            (ob as *mut u16).write_unaligned(dh.to_le());
            let id = if max_scalar != 0.0 {
                127.0 / max_scalar
            } else {
                0.0
            };
            let mul = _mm256_set1_ps(id);
            v0 = _mm256_round_ps(_mm256_mul_ps(v0, mul), _MM_FROUND_TO_NEAREST_INT);
            v1 = _mm256_round_ps(_mm256_mul_ps(v1, mul), _MM_FROUND_TO_NEAREST_INT);
            v2 = _mm256_round_ps(_mm256_mul_ps(v2, mul), _MM_FROUND_TO_NEAREST_INT);
            v3 = _mm256_round_ps(_mm256_mul_ps(v3, mul), _MM_FROUND_TO_NEAREST_INT);
            let i0 = _mm256_cvtps_epi32(v0);
            let i1 = _mm256_cvtps_epi32(v1);
            let i2 = _mm256_cvtps_epi32(v2);
            let i3 = _mm256_cvtps_epi32(v3);
            let a = _mm256_packs_epi32(i0, i1);
            let b = _mm256_packs_epi32(i2, i3);
            let q = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(a, b), perm);
            _mm256_storeu_si256(ob.add(2) as *mut __m256i, q);
        }
    }

    /// ggml's AVX2 `ggml_vec_dot_q8_0_q8_0`.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; `w.len() == x.len()`, a multiple of 34.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_avx2(w: &[u8], x: &[u8]) -> f32 {
        let nb = w.len() / BLOCK_BYTES;
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        let mut ds = [0f32; SCALES];
        for b in 0..nb {
            if b % SCALES == 0 {
                block_scales(wp, xp, b, nb, &mut ds);
            }
            let (pw, px) = (wp.add(b * BLOCK_BYTES), xp.add(b * BLOCK_BYTES));
            let d = _mm256_set1_ps(ds[b % SCALES]);
            let qw = _mm256_loadu_si256(pw.add(2) as *const __m256i);
            let qx = _mm256_loadu_si256(px.add(2) as *const __m256i);
            let ax = _mm256_sign_epi8(qw, qw);
            let sy = _mm256_sign_epi8(qx, qw);
            let dot = _mm256_madd_epi16(ones, _mm256_maddubs_epi16(ax, sy));
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot), acc);
        }
        hsum256(acc)
    }

    /// One weight row against four activation rows: four independent accumulators, each
    /// exactly [`dot_vnni`]'s, sharing the weight loads (prompts).
    ///
    /// # Safety
    /// As [`dot_vnni`], for `w` and every row of `x`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn dot4_vnni(w: &[u8], x: [&[u8]; 4]) -> [f32; 4] {
        let nb = w.len() / BLOCK_BYTES;
        let wp = w.as_ptr();
        let xp = x.map(|r| r.as_ptr());
        let zero = _mm256_setzero_si256();
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut ds = [[0f32; SCALES]; 4];
        for b in 0..nb {
            if b % SCALES == 0 {
                for k in 0..4 {
                    block_scales(wp, xp[k], b, nb, &mut ds[k]);
                }
            }
            let o = b * BLOCK_BYTES;
            let qw = _mm256_loadu_si256(wp.add(o + 2) as *const __m256i);
            let u = _mm256_sign_epi8(qw, qw);
            for k in 0..4 {
                let qx = _mm256_loadu_si256(xp[k].add(o + 2) as *const __m256i);
                let dot = _mm256_dpbusd_epi32(zero, u, _mm256_sign_epi8(qx, qw));
                let d = _mm256_set1_ps(ds[k][b % SCALES]);
                acc[k] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot), acc[k]);
            }
        }
        acc.map(|a| hsum256(a))
    }

    /// [`dot_avx2`] with the VNNI `dpbusd` integer dot (same lanes, same exact sums).
    ///
    /// # Safety
    /// AVX-512 VL/VNNI, AVX2, FMA, F16C; `w.len() == x.len()`, a multiple of 34.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn dot_vnni(w: &[u8], x: &[u8]) -> f32 {
        let nb = w.len() / BLOCK_BYTES;
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let zero = _mm256_setzero_si256();
        let mut acc = _mm256_setzero_ps();
        let mut ds = [0f32; SCALES];
        for b in 0..nb {
            if b % SCALES == 0 {
                block_scales(wp, xp, b, nb, &mut ds);
            }
            let (pw, px) = (wp.add(b * BLOCK_BYTES), xp.add(b * BLOCK_BYTES));
            let d = _mm256_set1_ps(ds[b % SCALES]);
            let qw = _mm256_loadu_si256(pw.add(2) as *const __m256i);
            let qx = _mm256_loadu_si256(px.add(2) as *const __m256i);
            // The sign trick: |w| (unsigned) times x with w's sign.
            let dot = _mm256_dpbusd_epi32(zero, _mm256_sign_epi8(qw, qw), _mm256_sign_epi8(qx, qw));
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot), acc);
        }
        hsum256(acc)
    }
}

#[cfg(test)]
#[path = "int8_tests.rs"]
mod tests;
