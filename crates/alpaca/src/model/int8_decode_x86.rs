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

/// The 32 nibbles of 16 bytes at `p`: low nibbles in bytes 0..16, high nibbles in 16..32.
#[inline(always)]
pub(crate) unsafe fn nibbles32(p: *const u8) -> __m256i {
    let t = _mm_loadu_si128(p as *const __m128i);
    let v = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
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

/// Byte `i` = 0x10 where bit `i` of `qh` is set, else 0 (AVX2).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn bits_avx2(qh: u32) -> __m256i {
    let shuf = _mm256_setr_epi64x(
        0,
        0x0101010101010101,
        0x0202020202020202,
        0x0303030303030303,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), shuf);
    let bit = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// [`bits_avx2`] by a byte mask (AVX-512 BW).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn bits_vnni(qh: u32) -> __m256i {
    _mm256_maskz_mov_epi8(qh, _mm256_set1_epi8(0x10))
}

macro_rules! int8_kernels {
    ($feat:tt, $dp:ident, $bits:ident, $q8_0:ident, $q5_0:ident, $q5_1:ident, $q4_k:ident, $q6_k:ident) => {
        #[target_feature(enable = $feat)]
        pub unsafe fn $q8_0(row: &[u8], a: Acts<'_>) -> f32 {
            let nb = a.q.len() / 32;
            let (rp, xp, dp) = (row.as_ptr(), a.q.as_ptr(), a.d.as_ptr());
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut b = 0;
            while b + 2 <= nb {
                let d0 = f16_1(rp.add(b * 34)) * *dp.add(b);
                let d1 = f16_1(rp.add(b * 34 + 34)) * *dp.add(b + 1);
                a0 = _mm256_fmadd_ps(q8_blk(rp, xp, b), _mm256_set1_ps(d0), a0);
                a1 = _mm256_fmadd_ps(q8_blk(rp, xp, b + 1), _mm256_set1_ps(d1), a1);
                b += 2;
            }
            if b < nb {
                let d0 = f16_1(rp.add(b * 34)) * *dp.add(b);
                a0 = _mm256_fmadd_ps(q8_blk(rp, xp, b), _mm256_set1_ps(d0), a0);
            }
            hsum(a0, a1)
        }

        /// Block `b` of a Q8_0 row: the integer dot with the activations, as f32 lanes.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn q8_blk(rp: *const u8, xp: *const i8, b: usize) -> __m256 {
            let w = _mm256_loadu_si256(rp.add(b * 34 + 2) as *const __m256i);
            let x = _mm256_loadu_si256(xp.add(b * 32) as *const __m256i);
            let zero = _mm256_setzero_si256();
            _mm256_cvtepi32_ps($dp(zero, _mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w)))
        }

        /// Block `b` of a Q5_0 (`min = false`: codes minus 16, `ts = 22`) or Q5_1 row
        /// (`ts = 24`; its min is added by the caller), as f32 lanes.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn q5_blk(
            rp: *const u8,
            xp: *const i8,
            lp: *const i32,
            b: usize,
            min: bool,
        ) -> __m256 {
            let (ts, qo) = if min { (24, 4) } else { (22, 2) };
            let p = rp.add(b * ts);
            let qh = (p.add(qo) as *const u32).read_unaligned();
            let w = _mm256_or_si256(nibbles32(p.add(qo + 4)), $bits(qh));
            let x = _mm256_loadu_si256(xp.add(b * 32) as *const __m256i);
            // Q5_0's codes are offset by 16: start from 16 * -(lane sums of x).
            let init = if min {
                _mm256_setzero_si256()
            } else {
                _mm256_slli_epi32(_mm256_loadu_si256(lp.add(b * 8) as *const __m256i), 4)
            };
            _mm256_cvtepi32_ps($dp(init, w, x))
        }

        /// Q5_0 (`min = false`: codes minus 16) and Q5_1 (`min = true`: plus `m`).
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn q5(row: &[u8], a: Acts<'_>, min: bool) -> f32 {
            let ts = if min { 24 } else { 22 };
            let nb = a.q.len() / 32;
            let (rp, xp, dp, lp) = (row.as_ptr(), a.q.as_ptr(), a.d.as_ptr(), a.nl.as_ptr());
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            // Q5_1's mins, in two partial sums.
            let (mut c0, mut c1) = (0f32, 0f32);
            let mut b = 0;
            while b + 2 <= nb {
                let (p0, p1) = (rp.add(b * ts), rp.add(b * ts + ts));
                let (x0, x1) = (*dp.add(b), *dp.add(b + 1));
                let (d0, d1) = (f16_1(p0) * x0, f16_1(p1) * x1);
                a0 = _mm256_fmadd_ps(q5_blk(rp, xp, lp, b, min), _mm256_set1_ps(d0), a0);
                a1 = _mm256_fmadd_ps(q5_blk(rp, xp, lp, b + 1, min), _mm256_set1_ps(d1), a1);
                if min {
                    c0 += f16_1(p0.add(2)) * x0 * a.sum(b) as f32;
                    c1 += f16_1(p1.add(2)) * x1 * a.sum(b + 1) as f32;
                }
                b += 2;
            }
            if b < nb {
                let p0 = rp.add(b * ts);
                let x0 = *dp.add(b);
                a0 = _mm256_fmadd_ps(
                    q5_blk(rp, xp, lp, b, min),
                    _mm256_set1_ps(f16_1(p0) * x0),
                    a0,
                );
                if min {
                    c0 += f16_1(p0.add(2)) * x0 * a.sum(b) as f32;
                }
            }
            hsum(a0, a1) + (c0 + c1)
        }

        #[target_feature(enable = $feat)]
        pub unsafe fn $q5_0(row: &[u8], a: Acts<'_>) -> f32 {
            q5(row, a, false)
        }

        #[target_feature(enable = $feat)]
        pub unsafe fn $q5_1(row: &[u8], a: Acts<'_>) -> f32 {
            q5(row, a, true)
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

        /// Q6_K codes are offset by 32: group `g` starts from 32 * -(lane sums of x).
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn q6_init(lg: *const i32, g: usize) -> __m256i {
            _mm256_slli_epi32(_mm256_loadu_si256(lg.add(g * 8) as *const __m256i), 5)
        }

        /// The scales of group `g`'s two halves, four lanes each.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn q6_scale(fs: &[f32; 16], g: usize, halves: __m256i) -> __m256 {
            let pair = _mm_castpd_ps(_mm_load_sd(fs.as_ptr().add(2 * g) as *const f64));
            _mm256_permutevar8x32_ps(_mm256_castps128_ps256(pair), halves)
        }

        #[target_feature(enable = $feat)]
        pub unsafe fn $q6_k(row: &[u8], a: Acts<'_>) -> f32 {
            let nsb = a.q.len() / 256;
            let (rp, xp, lp) = (row.as_ptr(), a.q.as_ptr(), a.nl.as_ptr());
            let (m4, m30) = (_mm256_set1_epi8(0xF), _mm256_set1_epi8(0x30));
            // Lanes 0..4 take the first 16-value half's scale, lanes 4..8 the second's.
            let halves = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for sb in 0..nsb {
                let p = rp.add(sb * 210);
                let d = f16_1(p.add(208));
                // fs[2g + h]: d * d_x * scale of half h of group g.
                let mut fs = [0f32; 16];
                for g in 0..8 {
                    let b = sb * 8 + g;
                    let dd = d * *a.d.get_unchecked(b);
                    for h in 0..2 {
                        let sc = *p.add(192 + 2 * g + h) as i8 as f32;
                        fs[2 * g + h] = dd * sc;
                    }
                }
                let xb = xp.add(sb * 256);
                let lg = lp.add(sb * 64);
                for n in 0..2 {
                    let l0 = _mm256_loadu_si256(p.add(64 * n) as *const __m256i);
                    let l1 = _mm256_loadu_si256(p.add(64 * n + 32) as *const __m256i);
                    let qh = _mm256_loadu_si256(p.add(128 + 32 * n) as *const __m256i);
                    let q = [
                        _mm256_or_si256(
                            _mm256_and_si256(l0, m4),
                            _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(l1, m4),
                            _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                            _mm256_and_si256(qh, m30),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                            _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30),
                        ),
                    ];
                    for k in (0..4).step_by(2) {
                        let g = 4 * n + k;
                        let x0 = _mm256_loadu_si256(xb.add(32 * g) as *const __m256i);
                        let x1 = _mm256_loadu_si256(xb.add(32 * g + 32) as *const __m256i);
                        let i0 = _mm256_cvtepi32_ps($dp(q6_init(lg, g), q[k], x0));
                        let i1 = _mm256_cvtepi32_ps($dp(q6_init(lg, g + 1), q[k + 1], x1));
                        a0 = _mm256_fmadd_ps(i0, q6_scale(&fs, g, halves), a0);
                        a1 = _mm256_fmadd_ps(i1, q6_scale(&fs, g + 1, halves), a1);
                    }
                }
            }
            hsum(a0, a1)
        }
    };
}

mod avx2 {
    use super::*;
    int8_kernels!(
        "avx2,fma,f16c",
        dp_avx2,
        bits_avx2,
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
