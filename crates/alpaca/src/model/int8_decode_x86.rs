//! x86-64 int8-activation row kernels (see `int8_decode.rs`): each kernel is written once in
//! `int8_kernels!` and compiled twice, with the integer dot `u8 x i8 -> i32` of 4-byte groups
//! done by `vpdpbusd` (AVX-512 VL + VNNI, 256-bit registers: Zen 4 splits 512-bit ops in two
//! anyway) or by `maddubs` + `madd` (AVX2; no saturation: every unsigned operand here is at
//! most 128, so a pair of products stays below 2^15).
//!
//! Per-block scales are converted inside the loop from a fresh register (`vmovd` then
//! `vcvtph2ps`: no false dependency on an accumulator); a separate scale pass was slower
//! (the compiler vectorized it into address extractions). Two accumulators alternate to hide
//! the FMA latency.
//!
//! `Q8_0` and `Q5_0` (the bulk of the q8_0 and q4_k_m files) instead go eight rows per call
//! ([`Int8Dot8`](super::Int8Dot8)): each activation block is loaded once for eight rows, the
//! eight rows' integer dots are reduced to one vector of eight block sums (`sum8`), and one
//! `vcvtph2ps` of the eight rows' f16 scales, one multiply by the activation scale and one FMA
//! apply them: the per-row horizontal sum disappears (lane `k` of the accumulator is row
//! `k`'s result). On a Zen 4 that is ~2.3x fewer cycles per block than the one-row kernels
//! in cache. Each row's result is one FMA chain in block order
//! (`acc = isum_b * (d_w * d_x) + acc`), the same arithmetic as the scalar reference, so the
//! results do not depend on which lane or call computes a row.
//!
//! Safety contract of every `unsafe fn` here: the CPU has the enabled features and the
//! lengths are those of [`Int8Dot`](super::Int8Dot).

#![allow(clippy::missing_safety_doc, clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::Acts;
use crate::model::quant::scale_min_k4;

/// One f16 at `p` as f32.
#[inline(always)]
pub(crate) unsafe fn f16_1(p: *const u8) -> f32 {
    let h = (p as *const u16).read_unaligned() as i32;
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)))
}

#[inline(always)]
unsafe fn hsum(a: __m256, b: __m256) -> f32 {
    let x = _mm256_add_ps(a, b);
    let mut r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    _mm_cvtss_f32(r)
}

/// The 32 nibbles of 16 bytes at `p`: low nibbles in bytes 0..16, high nibbles in 16..32
/// (one broadcast load, one variable shift of the high half, one mask).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn nibbles32(p: *const u8) -> __m256i {
    let t = _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i));
    let v = _mm256_srlv_epi32(t, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
    _mm256_and_si256(v, _mm256_set1_epi8(0xF))
}

/// `acc + sum of u[4i..4i+4] * s[4i..4i+4]` per 32-bit lane, AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dp_avx2(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
    _mm256_add_epi32(acc, p)
}

/// [`dp_avx2`] by `vpdpbusd`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn dp_vnni(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, u, s)
}

/// The 5-bit codes: `nib` plus 0x10 in byte `i` where bit `i` of `qh` is set (AVX2).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn bits_avx2(nib: __m256i, qh: u32) -> __m256i {
    let shuf = _mm256_setr_epi64x(
        0,
        0x0101010101010101,
        0x0202020202020202,
        0x0303030303030303,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), shuf);
    let bit = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
    _mm256_or_si256(nib, _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
}

/// [`bits_avx2`] by one byte-masked add (AVX-512 BW).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn bits_vnni(nib: __m256i, qh: u32) -> __m256i {
    _mm256_mask_add_epi8(nib, qh, nib, _mm256_set1_epi8(0x10))
}

/// Lane `k` = the sum of the eight lanes of `v[k]` (a transpose-add: 21 one-cycle ops for
/// eight vectors).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sum8(v: &[__m256i; 8]) -> __m256i {
    let (h0, h1) = halves8(v);
    _mm256_add_epi32(h0, h1)
}

/// Lane `k` of the first vector = the sum of lanes 0..4 of `v[k]`, of the second = the sum
/// of lanes 4..8.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn halves8(v: &[__m256i; 8]) -> (__m256i, __m256i) {
    let pair = |a, b| _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b));
    let (t0, t1) = (pair(v[0], v[1]), pair(v[2], v[3]));
    let (t2, t3) = (pair(v[4], v[5]), pair(v[6], v[7]));
    let quad = |a, b| _mm256_add_epi32(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b));
    // Lanes 0..4: rows 0..4 (u0) or 4..8 (u1), low 128 bits; lanes 4..8: high 128 bits.
    let (u0, u1) = (quad(t0, t1), quad(t2, t3));
    (
        _mm256_permute2x128_si256(u0, u1, 0x20),
        _mm256_permute2x128_si256(u0, u1, 0x31),
    )
}

/// The eight f16 at `p[k] + off` as f32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_8(p: &[*const u8; 8], off: usize) -> __m256 {
    let h = |k: usize| (p[k].add(off) as *const i16).read_unaligned();
    _mm256_cvtph_ps(_mm_setr_epi16(
        h(0),
        h(1),
        h(2),
        h(3),
        h(4),
        h(5),
        h(6),
        h(7),
    ))
}

/// Lane `k` of `v` to `out[k * stride]` (the stores in lane order: with `stride == 0` the
/// last lane wins).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store8(v: __m256, out: *mut f32, stride: usize) {
    let (lo, hi) = (_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    for (k, h) in [lo, hi].into_iter().enumerate() {
        let o = out.add(4 * k * stride);
        *o = _mm_cvtss_f32(h);
        *o.add(stride) = f32::from_bits(_mm_extract_ps(h, 1) as u32);
        *o.add(2 * stride) = f32::from_bits(_mm_extract_ps(h, 2) as u32);
        *o.add(3 * stride) = f32::from_bits(_mm_extract_ps(h, 3) as u32);
    }
}

/// A Q8_0 block's integer dot per lane, AVX2: the sign trick (`|w|` times `x` with `w`'s
/// sign; `maddubs` would saturate on the unsigned-offset form). `_l` is unused.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_dot_avx2(_l: __m256i, w: __m256i, x: __m256i) -> __m256i {
    let zero = _mm256_setzero_si256();
    dp_avx2(zero, _mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
}

/// [`q8_dot_avx2`] by the unsigned offset: `(w + 128) . x` from `l << 7`, where `l` holds
/// minus the lane sums of `x` (one `vpxor` instead of two `vpsignb` per row).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q8_dot_vnni(l: __m256i, w: __m256i, x: __m256i) -> __m256i {
    let u = _mm256_xor_si256(w, _mm256_set1_epi8(-128));
    _mm256_dpbusd_epi32(_mm256_slli_epi32(l, 7), u, x)
}

macro_rules! int8_kernels {
    ($feat:tt, $dp:ident, $bits:ident, $q8dot:ident, $q8_0:ident, $q5_0:ident, $q5_1:ident, $q4_k:ident, $q6_k:ident) => {
        /// Rows `row0 + k * stride` (`k < 8`) of `nb` blocks of `ts` bytes (f16 scale
        /// first) into `out[k * ostride]`: `dot(p, x, l)` is the integer dot of the block at
        /// `p` with the activation block (`x` its values, `l` minus its lane sums).
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn rows8(
            row0: *const u8,
            stride: usize,
            a: Acts<'_>,
            out: *mut f32,
            ostride: usize,
            ts: usize,
            dot: impl Fn(*const u8, __m256i, __m256i) -> __m256i,
        ) {
            let nb = a.q.len() / 32;
            let (xp, dp, lp) = (a.q.as_ptr(), a.d.as_ptr(), a.nl.as_ptr());
            let rows: [*const u8; 8] = std::array::from_fn(|k| row0.add(k * stride));
            let mut acc = _mm256_setzero_ps();
            for b in 0..nb {
                let x = _mm256_loadu_si256(xp.add(b * 32) as *const __m256i);
                let l = _mm256_loadu_si256(lp.add(b * 8) as *const __m256i);
                let mut v = [_mm256_setzero_si256(); 8];
                for k in 0..8 {
                    v[k] = dot(rows[k].add(b * ts), x, l);
                }
                let s = _mm256_mul_ps(f16_8(&rows, b * ts), _mm256_set1_ps(*dp.add(b)));
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum8(&v)), s, acc);
            }
            store8(acc, out, ostride);
        }

        #[target_feature(enable = $feat)]
        pub unsafe fn $q8_0(row0: *const u8, st: usize, a: Acts<'_>, out: *mut f32, os: usize) {
            rows8(row0, st, a, out, os, 34, |p, x, l| {
                $q8dot(l, _mm256_loadu_si256(p.add(2) as *const __m256i), x)
            })
        }

        #[target_feature(enable = $feat)]
        pub unsafe fn $q5_0(row0: *const u8, st: usize, a: Acts<'_>, out: *mut f32, os: usize) {
            rows8(row0, st, a, out, os, 22, |p, x, l| {
                let qh = (p.add(2) as *const u32).read_unaligned();
                let w = $bits(nibbles32(p.add(6)), qh);
                // The codes are offset by 16: start from 16 * -(lane sums of x).
                $dp(_mm256_slli_epi32(l, 4), w, x)
            })
        }

        /// Block `b` of a Q5_1 row (its min is added by the caller), as f32 lanes.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn q5_1_blk(rp: *const u8, xp: *const i8, b: usize) -> __m256 {
            let p = rp.add(b * 24);
            let qh = (p.add(4) as *const u32).read_unaligned();
            let w = $bits(nibbles32(p.add(8)), qh);
            let x = _mm256_loadu_si256(xp.add(b * 32) as *const __m256i);
            _mm256_cvtepi32_ps($dp(_mm256_setzero_si256(), w, x))
        }

        /// Q5_1: codes times `d`, plus `m` times the activation sums.
        #[target_feature(enable = $feat)]
        pub unsafe fn $q5_1(row: &[u8], a: Acts<'_>) -> f32 {
            let nb = a.q.len() / 32;
            let (rp, xp, dp) = (row.as_ptr(), a.q.as_ptr(), a.d.as_ptr());
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            // The mins, in two partial sums.
            let (mut c0, mut c1) = (0f32, 0f32);
            let mut b = 0;
            while b + 2 <= nb {
                let (p0, p1) = (rp.add(b * 24), rp.add(b * 24 + 24));
                let (x0, x1) = (*dp.add(b), *dp.add(b + 1));
                let (d0, d1) = (f16_1(p0) * x0, f16_1(p1) * x1);
                a0 = _mm256_fmadd_ps(q5_1_blk(rp, xp, b), _mm256_set1_ps(d0), a0);
                a1 = _mm256_fmadd_ps(q5_1_blk(rp, xp, b + 1), _mm256_set1_ps(d1), a1);
                c0 += f16_1(p0.add(2)) * x0 * a.sum(b) as f32;
                c1 += f16_1(p1.add(2)) * x1 * a.sum(b + 1) as f32;
                b += 2;
            }
            if b < nb {
                let p0 = rp.add(b * 24);
                let x0 = *dp.add(b);
                let d0 = f16_1(p0) * x0;
                a0 = _mm256_fmadd_ps(q5_1_blk(rp, xp, b), _mm256_set1_ps(d0), a0);
                c0 += f16_1(p0.add(2)) * x0 * a.sum(b) as f32;
            }
            hsum(a0, a1) + (c0 + c1)
        }

        #[target_feature(enable = $feat)]
        pub unsafe fn $q4_k(row: &[u8], a: Acts<'_>) -> f32 {
            let nsb = a.q.len() / 256;
            let (rp, xp) = (row.as_ptr(), a.q.as_ptr());
            let zero = _mm256_setzero_si256();
            let m4 = _mm256_set1_epi8(0xF);
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut corr = [0f32; 8];
            for sb in 0..nsb {
                let blk = std::slice::from_raw_parts(rp.add(sb * 144), 144);
                let (d, dmin) = (f16_1(rp.add(sb * 144)), f16_1(rp.add(sb * 144 + 2)));
                let mut fs = [0f32; 8];
                for s in 0..8 {
                    let b = sb * 8 + s;
                    let (sc, m) = scale_min_k4(s, &blk[4..16]);
                    let dx = *a.d.get_unchecked(b);
                    fs[s] = d * sc as f32 * dx;
                    corr[s] -= dmin * m as f32 * dx * a.sum(b) as f32;
                }
                let qp = rp.add(sb * 144 + 16);
                let xb = xp.add(sb * 256);
                for j in 0..4 {
                    let q = _mm256_loadu_si256(qp.add(32 * j) as *const __m256i);
                    let lo = _mm256_and_si256(q, m4);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                    let x0 = _mm256_loadu_si256(xb.add(64 * j) as *const __m256i);
                    let x1 = _mm256_loadu_si256(xb.add(64 * j + 32) as *const __m256i);
                    let i0 = _mm256_cvtepi32_ps($dp(zero, lo, x0));
                    let i1 = _mm256_cvtepi32_ps($dp(zero, hi, x1));
                    a0 = _mm256_fmadd_ps(i0, _mm256_set1_ps(fs[2 * j]), a0);
                    a1 = _mm256_fmadd_ps(i1, _mm256_set1_ps(fs[2 * j + 1]), a1);
                }
            }
            hsum(a0, a1) + corr.iter().sum::<f32>()
        }

        /// Group `4 n + J` (32 values) of the Q6_K super-blocks at `p[k]` (eight rows): the
        /// integer dots `sum_h sc_h * sum (code - 32) x` (lane `k` = row `k`; the codes are
        /// offset by 32: each half starts from 32 * -(lane sums of x)).
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn q6_group<const J: usize>(
            p: &[*const u8; 8],
            n: usize,
            x: __m256i,
            l: __m256i,
        ) -> __m256i {
            let (m4, m30) = (_mm256_set1_epi8(0xF), _mm256_set1_epi8(0x30));
            let init = _mm256_slli_epi32(l, 5);
            let mut v = [_mm256_setzero_si256(); 8];
            for k in 0..8 {
                let ql = _mm256_loadu_si256(p[k].add(64 * n + 32 * (J % 2)) as *const __m256i);
                let qh = _mm256_loadu_si256(p[k].add(128 + 32 * n) as *const __m256i);
                let lo = if J < 2 { ql } else { _mm256_srli_epi16(ql, 4) };
                let hi = match J {
                    0 => _mm256_slli_epi16(qh, 4),
                    1 => _mm256_slli_epi16(qh, 2),
                    2 => qh,
                    _ => _mm256_srli_epi16(qh, 2),
                };
                let code = _mm256_or_si256(_mm256_and_si256(lo, m4), _mm256_and_si256(hi, m30));
                v[k] = $dp(init, code, x);
            }
            let (h0, h1) = halves8(&v);
            // The two halves' i8 scales, as one i16 per row.
            let sc = |k: usize| (p[k].add(192 + 2 * (4 * n + J)) as *const i16).read_unaligned();
            let sc = _mm_setr_epi16(sc(0), sc(1), sc(2), sc(3), sc(4), sc(5), sc(6), sc(7));
            let s0 = _mm256_cvtepi16_epi32(_mm_srai_epi16(_mm_slli_epi16(sc, 8), 8));
            let s1 = _mm256_cvtepi16_epi32(_mm_srai_epi16(sc, 8));
            _mm256_add_epi32(_mm256_mullo_epi32(h0, s0), _mm256_mullo_epi32(h1, s1))
        }

        /// Q6_K, eight rows per call (see [`Int8Dot8`](super::Int8Dot8)): per 32 values one
        /// FMA `isum * (d * d_x)`.
        #[target_feature(enable = $feat)]
        pub unsafe fn $q6_k(row0: *const u8, st: usize, a: Acts<'_>, out: *mut f32, os: usize) {
            let nsb = a.q.len() / 256;
            let (xp, dp, lp) = (a.q.as_ptr(), a.d.as_ptr(), a.nl.as_ptr());
            let mut acc = _mm256_setzero_ps();
            for sb in 0..nsb {
                let p: [*const u8; 8] = std::array::from_fn(|k| row0.add(k * st + sb * 210));
                let d = f16_8(&p, 208);
                for n in 0..2 {
                    let b = sb * 8 + 4 * n;
                    let x = |j: usize| _mm256_loadu_si256(xp.add(32 * (b + j)) as *const __m256i);
                    let l = |j: usize| _mm256_loadu_si256(lp.add(8 * (b + j)) as *const __m256i);
                    let i = [
                        q6_group::<0>(&p, n, x(0), l(0)),
                        q6_group::<1>(&p, n, x(1), l(1)),
                        q6_group::<2>(&p, n, x(2), l(2)),
                        q6_group::<3>(&p, n, x(3), l(3)),
                    ];
                    for (j, i) in i.into_iter().enumerate() {
                        let s = _mm256_mul_ps(d, _mm256_set1_ps(*dp.add(b + j)));
                        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), s, acc);
                    }
                }
            }
            store8(acc, out, os);
        }
    };
}

mod avx2 {
    use super::*;
    int8_kernels!(
        "avx2,fma,f16c",
        dp_avx2,
        bits_avx2,
        q8_dot_avx2,
        q8_0_avx2,
        q5_0_avx2,
        q5_1_avx2,
        q4_k_avx2,
        q6_k_avx2
    );
}

mod vnni {
    use super::*;
    int8_kernels!(
        "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
        dp_vnni,
        bits_vnni,
        q8_dot_vnni,
        q8_0_vnni,
        q5_0_vnni,
        q5_1_vnni,
        q4_k_vnni,
        q6_k_vnni
    );
}

pub use avx2::{q4_k_avx2, q5_0_avx2, q5_1_avx2, q6_k_avx2, q8_0_avx2};
pub use vnni::{q4_k_vnni, q5_0_vnni, q5_1_vnni, q6_k_vnni, q8_0_vnni};

/// [`quantize_impl`](super::quantize_impl) on AVX-512 with the same arithmetic (max of
/// `|x|`, `127 / max`, products rounded to nearest even by `vcvtps2dq`, clamp to 127):
/// bit-identical results. Lengths as checked by [`quantize_row`](super::quantize_row).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn quantize_512(x: &[f32], q: &mut [i8], d: &mut [f32], nl: &mut [i32]) {
    let (xp, qp, dp, lp) = (x.as_ptr(), q.as_mut_ptr(), d.as_mut_ptr(), nl.as_mut_ptr());
    let (lo, hi) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127));
    let (ones8, ones16) = (_mm256_set1_epi8(1), _mm256_set1_epi16(1));
    for b in 0..x.len() / 32 {
        let v0 = _mm512_loadu_ps(xp.add(32 * b));
        let v1 = _mm512_loadu_ps(xp.add(32 * b + 16));
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        *dp.add(b) = amax / 127.0;
        let idv = _mm512_set1_ps(id);
        let i0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, idv));
        let i1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, idv));
        let i0 = _mm512_max_epi32(_mm512_min_epi32(i0, hi), lo);
        let i1 = _mm512_max_epi32(_mm512_min_epi32(i1, hi), lo);
        let b8 = _mm256_set_m128i(_mm512_cvtepi32_epi8(i1), _mm512_cvtepi32_epi8(i0));
        _mm256_storeu_si256(qp.add(32 * b) as *mut __m256i, b8);
        let s = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, b8), ones16);
        _mm256_storeu_si256(
            lp.add(8 * b) as *mut __m256i,
            _mm256_sub_epi32(_mm256_setzero_si256(), s),
        );
    }
}
