//! Multi-row decode kernels (x86-64): unpack quantized weight rows into `f32` once with SIMD
//! (scale and min applied), then dot a tile of `R` unpacked rows against `G` activation rows
//! with `R x G` register accumulators, so each block is decoded once however many tokens
//! share the step. The portable driver and the reference are in `kernels_multi.rs`.
//!
//! Safety contract of every `unsafe fn` here: the CPU supports the enabled target features;
//! for unpackers `row.len() == ty.row_bytes(out.len())`; for tiles `w` holds `R` rows and `x`
//! `G` rows of `cols` values (row stride `cols`).

#![allow(clippy::missing_safety_doc, clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::{f16_1, f16_2, k4_scales, load16, u8x16};

// ------------------------------------------------------------------------------------------
// AVX-512 decoders: `each_*(row, n, f)` calls `f(k, W[k..k + 16])` for every full 16 values of
// the first `n` weights of a row, in order; `unpack_*` store them, `multi_*` dot them.
// ------------------------------------------------------------------------------------------

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn each_q4_0_512<F: FnMut(usize, __m512)>(row: &[u8], n: usize, mut f: F) {
    let rp = row.as_ptr();
    let (m4, k8) = (_mm512_set1_epi32(0xF), _mm512_set1_epi32(8));
    for b in 0..n / 32 {
        let bp = rp.add(b * 18);
        let d = _mm512_set1_ps(f16_1(bp));
        let q = u8x16(bp.add(2));
        let lo = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_and_si512(q, m4), k8));
        let hi = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_srli_epi32(q, 4), k8));
        f(32 * b, _mm512_mul_ps(lo, d));
        f(32 * b + 16, _mm512_mul_ps(hi, d));
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn each_q4_1_512<F: FnMut(usize, __m512)>(row: &[u8], n: usize, mut f: F) {
    let rp = row.as_ptr();
    let m4 = _mm512_set1_epi32(0xF);
    for b in 0..n / 32 {
        let bp = rp.add(b * 20);
        let (d, m) = f16_2(bp);
        let (d, m) = (_mm512_set1_ps(d), _mm512_set1_ps(m));
        let q = u8x16(bp.add(4));
        let lo = _mm512_cvtepi32_ps(_mm512_and_si512(q, m4));
        let hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(q, 4));
        f(32 * b, _mm512_fmadd_ps(lo, d, m));
        f(32 * b + 16, _mm512_fmadd_ps(hi, d, m));
    }
}

/// Visit Q5_0 (`q5_1 = false`, values `d (q - 16)`) and Q5_1 (`d q + m`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn each_q5_512<F: FnMut(usize, __m512)>(row: &[u8], n: usize, q5_1: bool, mut f: F) {
    let bs = if q5_1 { 24 } else { 22 };
    let rp = row.as_ptr();
    let (m4, k16) = (_mm512_set1_epi32(0xF), _mm512_set1_epi32(16));
    for b in 0..n / 32 {
        let bp = rp.add(b * bs);
        let (d, m, o) = if q5_1 {
            let (d, m) = f16_2(bp);
            (d, m, 4)
        } else {
            (f16_1(bp), 0.0, 2)
        };
        let qh = (bp.add(o) as *const u32).read_unaligned();
        let q = u8x16(bp.add(o + 4));
        let lo = _mm512_and_si512(q, m4);
        let mut lo = _mm512_mask_or_epi32(lo, qh as u16, lo, k16);
        let hi = _mm512_srli_epi32(q, 4);
        let mut hi = _mm512_mask_or_epi32(hi, (qh >> 16) as u16, hi, k16);
        if !q5_1 {
            lo = _mm512_sub_epi32(lo, k16);
            hi = _mm512_sub_epi32(hi, k16);
        }
        let (d, m) = (_mm512_set1_ps(d), _mm512_set1_ps(m));
        f(32 * b, _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), d, m));
        f(32 * b + 16, _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), d, m));
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn each_q8_0_512<F: FnMut(usize, __m512)>(row: &[u8], n: usize, mut f: F) {
    let rp = row.as_ptr();
    for b in 0..n / 32 {
        let bp = rp.add(b * 34);
        let d = _mm512_set1_ps(f16_1(bp));
        let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(load16(bp.add(2))));
        let hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(load16(bp.add(18))));
        f(32 * b, _mm512_mul_ps(lo, d));
        f(32 * b + 16, _mm512_mul_ps(hi, d));
    }
}

/// Q4_K (`five = false`) and Q5_K: `d sc q - dmin m` per 32-value sub-block.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn each_qk45_512<F: FnMut(usize, __m512)>(row: &[u8], n: usize, five: bool, mut f: F) {
    let bs = if five { 176 } else { 144 };
    let rp = row.as_ptr();
    let (m4, k16) = (_mm512_set1_epi32(0xF), _mm512_set1_epi32(16));
    for i in 0..n / 256 {
        let bp = rp.add(i * bs);
        let (d, dmin) = f16_2(bp);
        let (s, m) = k4_scales(std::slice::from_raw_parts(bp.add(4), 12), d, dmin);
        let qs = bp.add(if five { 48 } else { 16 });
        let (qha, qhb) = if five {
            (u8x16(bp.add(16)), u8x16(bp.add(32)))
        } else {
            (_mm512_setzero_si512(), _mm512_setzero_si512())
        };
        let ob = 256 * i;
        for k in 0..4 {
            let a = u8x16(qs.add(32 * k));
            let b = u8x16(qs.add(32 * k + 16));
            let (mut la, mut lb) = (_mm512_and_si512(a, m4), _mm512_and_si512(b, m4));
            let (mut ha, mut hb) = (_mm512_srli_epi32(a, 4), _mm512_srli_epi32(b, 4));
            if five {
                let u1 = _mm512_set1_epi32(1 << (2 * k));
                let u2 = _mm512_set1_epi32(2 << (2 * k));
                la = _mm512_mask_add_epi32(la, _mm512_test_epi32_mask(qha, u1), la, k16);
                lb = _mm512_mask_add_epi32(lb, _mm512_test_epi32_mask(qhb, u1), lb, k16);
                ha = _mm512_mask_add_epi32(ha, _mm512_test_epi32_mask(qha, u2), ha, k16);
                hb = _mm512_mask_add_epi32(hb, _mm512_test_epi32_mask(qhb, u2), hb, k16);
            }
            let (s1, m1) = (_mm512_set1_ps(s[2 * k]), _mm512_set1_ps(m[2 * k]));
            let (s2, m2) = (_mm512_set1_ps(s[2 * k + 1]), _mm512_set1_ps(m[2 * k + 1]));
            let o = ob + 64 * k;
            f(o, _mm512_fmsub_ps(_mm512_cvtepi32_ps(la), s1, m1));
            f(o + 16, _mm512_fmsub_ps(_mm512_cvtepi32_ps(lb), s1, m1));
            f(o + 32, _mm512_fmsub_ps(_mm512_cvtepi32_ps(ha), s2, m2));
            f(o + 48, _mm512_fmsub_ps(_mm512_cvtepi32_ps(hb), s2, m2));
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn each_q6_k_512<F: FnMut(usize, __m512)>(row: &[u8], n: usize, mut f: F) {
    let rp = row.as_ptr();
    let (m4, m30, k32) = (
        _mm512_set1_epi32(0xF),
        _mm512_set1_epi32(0x30),
        _mm512_set1_epi32(32),
    );
    for i in 0..n / 256 {
        let bp = rp.add(i * 210);
        let d = f16_1(bp.add(208));
        for n in 0..2 {
            let ql = bp.add(64 * n);
            let qh = bp.add(128 + 32 * n);
            let sc = bp.add(192 + 8 * n);
            let ob = 256 * i + 128 * n;
            for c in 0..2 {
                let a = u8x16(ql.add(16 * c));
                let b = u8x16(ql.add(32 + 16 * c));
                let h = u8x16(qh.add(16 * c));
                let q1 = _mm512_or_si512(
                    _mm512_and_si512(a, m4),
                    _mm512_and_si512(_mm512_slli_epi32(h, 4), m30),
                );
                let q2 = _mm512_or_si512(
                    _mm512_and_si512(b, m4),
                    _mm512_and_si512(_mm512_slli_epi32(h, 2), m30),
                );
                let q3 = _mm512_or_si512(_mm512_srli_epi32(a, 4), _mm512_and_si512(h, m30));
                let q4 = _mm512_or_si512(
                    _mm512_srli_epi32(b, 4),
                    _mm512_and_si512(_mm512_srli_epi32(h, 2), m30),
                );
                for (j, q) in [q1, q2, q3, q4].into_iter().enumerate() {
                    let qf = _mm512_cvtepi32_ps(_mm512_sub_epi32(q, k32));
                    let s = _mm512_set1_ps(d * (*sc.add(c + 2 * j) as i8) as f32);
                    f(ob + 32 * j + 16 * c, _mm512_mul_ps(qf, s));
                }
            }
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn each_f16_512<F: FnMut(usize, __m512)>(row: &[u8], n: usize, mut f: F) {
    let rp = row.as_ptr();
    for b in 0..n / 16 {
        let v = _mm512_cvtph_ps(_mm256_loadu_si256(rp.add(32 * b) as *const __m256i));
        f(16 * b, v);
    }
}

macro_rules! unpack512 {
    ($($name:ident = $each:ident $(, $arg:expr)?;)*) => {$(
        avx512_fn! {
            fn $name(row: &[u8], out: &mut [f32]) -> () {
                let op = out.as_mut_ptr();
                $each(row, out.len(), $($arg,)? |k, v| _mm512_storeu_ps(op.add(k), v));
            }
        }
    )*};
}

unpack512! {
    unpack_q4_0_512 = each_q4_0_512;
    unpack_q4_1_512 = each_q4_1_512;
    unpack_q5_0_512 = each_q5_512, false;
    unpack_q5_1_512 = each_q5_512, true;
    unpack_q8_0_512 = each_q8_0_512;
    unpack_q4_k_512 = each_qk45_512, false;
    unpack_q5_k_512 = each_qk45_512, true;
    unpack_q6_k_512 = each_q6_k_512;
}

avx512_fn! {
    fn unpack_f16_512(row: &[u8], out: &mut [f32]) -> () {
        let (n, op) = (out.len(), out.as_mut_ptr());
        each_f16_512(row, n, |k, v| _mm512_storeu_ps(op.add(k), v));
        for i in n / 16 * 16..n {
            *op.add(i) = f16_1(row.as_ptr().add(2 * i));
        }
    }
}

// ------------------------------------------------------------------------------------------
// AVX-512 fused multi-row kernels: decode each 16 weights once into a register and FMA it
// against the same 16 values of up to `MULTI_512` tokens (one accumulator per token).
// ------------------------------------------------------------------------------------------

/// Most tokens per fused AVX-512 call.
pub const MULTI_512: usize = 16;

/// `(row, x, cols, g, out, ldo)`: `out[i * ldo] = W . x[i]` for `g <= MULTI_512` rows of `x`
/// (stride `cols`, a multiple of 16).
pub type MultiFn = unsafe fn(&[u8], &[f32], usize, usize, *mut f32, usize);

macro_rules! multi512 {
    ($($name:ident = $each:ident $(, $arg:expr)?;)*) => {$(
        pub unsafe fn $name(row: &[u8], x: &[f32], cols: usize, g: usize, out: *mut f32, ldo: usize) {
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
            unsafe fn imp<const G: usize>(row: &[u8], x: *const f32, cols: usize, out: *mut f32, ldo: usize) {
                let mut acc = [_mm512_setzero_ps(); G];
                $each(row, cols, $($arg,)? |k, w| {
                    for i in 0..G {
                        acc[i] = _mm512_fmadd_ps(w, _mm512_loadu_ps(x.add(i * cols + k)), acc[i]);
                    }
                });
                for i in 0..G {
                    *out.add(i * ldo) = _mm512_reduce_add_ps(acc[i]);
                }
            }
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
            unsafe fn go(row: &[u8], x: *const f32, cols: usize, g: usize, out: *mut f32, ldo: usize) {
                match g {
                    16 => imp::<16>(row, x, cols, out, ldo),
                    15 => imp::<15>(row, x, cols, out, ldo),
                    14 => imp::<14>(row, x, cols, out, ldo),
                    13 => imp::<13>(row, x, cols, out, ldo),
                    12 => imp::<12>(row, x, cols, out, ldo),
                    11 => imp::<11>(row, x, cols, out, ldo),
                    10 => imp::<10>(row, x, cols, out, ldo),
                    9 => imp::<9>(row, x, cols, out, ldo),
                    8 => imp::<8>(row, x, cols, out, ldo),
                    7 => imp::<7>(row, x, cols, out, ldo),
                    6 => imp::<6>(row, x, cols, out, ldo),
                    5 => imp::<5>(row, x, cols, out, ldo),
                    4 => imp::<4>(row, x, cols, out, ldo),
                    3 => imp::<3>(row, x, cols, out, ldo),
                    2 => imp::<2>(row, x, cols, out, ldo),
                    _ => imp::<1>(row, x, cols, out, ldo),
                }
            }
            go(row, x.as_ptr(), cols, g, out, ldo)
        }
    )*};
}

multi512! {
    multi_q4_0_512 = each_q4_0_512;
    multi_q4_1_512 = each_q4_1_512;
    multi_q5_0_512 = each_q5_512, false;
    multi_q5_1_512 = each_q5_512, true;
    multi_q8_0_512 = each_q8_0_512;
    multi_q4_k_512 = each_qk45_512, false;
    multi_q5_k_512 = each_qk45_512, true;
    multi_q6_k_512 = each_q6_k_512;
    multi_f16_512 = each_f16_512;
    multi_f32_512 = each_f32_512;
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn each_f32_512<F: FnMut(usize, __m512)>(row: &[u8], n: usize, mut f: F) {
    let rp = row.as_ptr() as *const f32;
    for b in 0..n / 16 {
        f(16 * b, _mm512_loadu_ps(rp.add(16 * b)));
    }
}

/// `f32` rows are copied as they are (any level).
pub unsafe fn unpack_f32(row: &[u8], out: &mut [f32]) {
    std::ptr::copy_nonoverlapping(row.as_ptr(), out.as_mut_ptr() as *mut u8, 4 * out.len());
}

// ------------------------------------------------------------------------------------------
// AVX2 unpackers
// ------------------------------------------------------------------------------------------

avx2_fn! {
    /// Q4_0, Q4_1, Q5_0, Q5_1: block of `bs` bytes, `d (q | fifth bit) - bias d + m`.
    #[inline]
    fn unpack_simple_256(row: &[u8], out: &mut [f32], bs: usize, has_m: bool, five: bool, bias: i32) -> () {
        let (rp, op) = (row.as_ptr(), out.as_mut_ptr());
        let m4 = _mm256_set1_epi32(0xF);
        let z = _mm256_setzero_si256();
        let bias = _mm256_set1_epi32(bias);
        for b in 0..out.len() / 32 {
            let bp = rp.add(b * bs);
            let (d, m) = if has_m { f16_2(bp) } else { (f16_1(bp), 0.0) };
            let mut o = if has_m { 4 } else { 2 };
            let ext = if five {
                let qh = (bp.add(o) as *const u32).read_unaligned();
                o += 4;
                [bit16_256(qh, 0), bit16_256(qh, 8), bit16_256(qh, 16), bit16_256(qh, 24)]
            } else {
                [z; 4]
            };
            let v = load16(bp.add(o));
            let a = _mm256_cvtepu8_epi32(v);
            let c = _mm256_cvtepu8_epi32(_mm_srli_si128(v, 8));
            let q = [
                _mm256_and_si256(a, m4),
                _mm256_and_si256(c, m4),
                _mm256_srli_epi32(a, 4),
                _mm256_srli_epi32(c, 4),
            ];
            let (d, m) = (_mm256_set1_ps(d), _mm256_set1_ps(m));
            for j in 0..4 {
                let qj = _mm256_sub_epi32(_mm256_or_si256(q[j], ext[j]), bias);
                _mm256_storeu_ps(op.add(32 * b + 8 * j), _mm256_fmadd_ps(_mm256_cvtepi32_ps(qj), d, m));
            }
        }
    }
}

avx2_fn! { fn unpack_q4_0_256(r: &[u8], o: &mut [f32]) -> () { unpack_simple_256(r, o, 18, false, false, 8) } }
avx2_fn! { fn unpack_q4_1_256(r: &[u8], o: &mut [f32]) -> () { unpack_simple_256(r, o, 20, true, false, 0) } }
avx2_fn! { fn unpack_q5_0_256(r: &[u8], o: &mut [f32]) -> () { unpack_simple_256(r, o, 22, false, true, 16) } }
avx2_fn! { fn unpack_q5_1_256(r: &[u8], o: &mut [f32]) -> () { unpack_simple_256(r, o, 24, true, true, 0) } }

avx2_fn! {
    /// Lanes `16` where bit `j0 + lane` of `bits` is set, else 0.
    #[inline]
    fn bit16_256(bits: u32, j0: u32) -> __m256i {
        let sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        let v = _mm256_and_si256(_mm256_set1_epi32((bits >> j0) as i32), sel);
        _mm256_and_si256(_mm256_cmpeq_epi32(v, sel), _mm256_set1_epi32(16))
    }
}

avx2_fn! {
    fn unpack_q8_0_256(row: &[u8], out: &mut [f32]) -> () {
        let (rp, op) = (row.as_ptr(), out.as_mut_ptr());
        for b in 0..out.len() / 32 {
            let bp = rp.add(b * 34);
            let d = _mm256_set1_ps(f16_1(bp));
            for j in 0..4 {
                let q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(bp.add(2 + 8 * j) as *const __m128i));
                _mm256_storeu_ps(op.add(32 * b + 8 * j), _mm256_mul_ps(_mm256_cvtepi32_ps(q), d));
            }
        }
    }
}

avx2_fn! {
    #[inline]
    fn unpack_qk45_256(row: &[u8], out: &mut [f32], five: bool) -> () {
        let bs = if five { 176 } else { 144 };
        let (rp, op) = (row.as_ptr(), out.as_mut_ptr());
        let (m4, k16) = (_mm256_set1_epi32(0xF), _mm256_set1_epi32(16));
        for i in 0..out.len() / 256 {
            let bp = rp.add(i * bs);
            let (d, dmin) = f16_2(bp);
            let (s, m) = k4_scales(std::slice::from_raw_parts(bp.add(4), 12), d, dmin);
            let qs = bp.add(if five { 48 } else { 16 });
            let ob = op.add(256 * i);
            for k in 0..4 {
                let (s1, m1) = (_mm256_set1_ps(s[2 * k]), _mm256_set1_ps(m[2 * k]));
                let (s2, m2) = (_mm256_set1_ps(s[2 * k + 1]), _mm256_set1_ps(m[2 * k + 1]));
                for c in 0..4 {
                    let v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(qs.add(32 * k + 8 * c) as *const __m128i));
                    let mut lo = _mm256_and_si256(v, m4);
                    let mut hi = _mm256_srli_epi32(v, 4);
                    if five {
                        let h = _mm256_cvtepu8_epi32(_mm_loadl_epi64(bp.add(16 + 8 * c) as *const __m128i));
                        let u1 = _mm256_set1_epi32(1 << (2 * k));
                        let u2 = _mm256_set1_epi32(2 << (2 * k));
                        let h1 = _mm256_cmpeq_epi32(_mm256_and_si256(h, u1), u1);
                        let h2 = _mm256_cmpeq_epi32(_mm256_and_si256(h, u2), u2);
                        lo = _mm256_add_epi32(lo, _mm256_and_si256(h1, k16));
                        hi = _mm256_add_epi32(hi, _mm256_and_si256(h2, k16));
                    }
                    let o = ob.add(64 * k + 8 * c);
                    _mm256_storeu_ps(o, _mm256_fmsub_ps(_mm256_cvtepi32_ps(lo), s1, m1));
                    _mm256_storeu_ps(o.add(32), _mm256_fmsub_ps(_mm256_cvtepi32_ps(hi), s2, m2));
                }
            }
        }
    }
}

avx2_fn! { fn unpack_q4_k_256(r: &[u8], o: &mut [f32]) -> () { unpack_qk45_256(r, o, false) } }
avx2_fn! { fn unpack_q5_k_256(r: &[u8], o: &mut [f32]) -> () { unpack_qk45_256(r, o, true) } }

avx2_fn! {
    fn unpack_q6_k_256(row: &[u8], out: &mut [f32]) -> () {
        let (rp, op) = (row.as_ptr(), out.as_mut_ptr());
        let (m4, m30, k32) = (_mm256_set1_epi32(0xF), _mm256_set1_epi32(0x30), _mm256_set1_epi32(32));
        for i in 0..out.len() / 256 {
            let bp = rp.add(i * 210);
            let d = f16_1(bp.add(208));
            for n in 0..2 {
                let ql = bp.add(64 * n);
                let qh = bp.add(128 + 32 * n);
                let sc = bp.add(192 + 8 * n);
                let ob = op.add(256 * i + 128 * n);
                for off in [0, 8, 16, 24] {
                    let ld = |p: *const u8| _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i));
                    let a = ld(ql.add(off));
                    let b = ld(ql.add(32 + off));
                    let h = ld(qh.add(off));
                    let q = [
                        _mm256_or_si256(_mm256_and_si256(a, m4), _mm256_and_si256(_mm256_slli_epi32(h, 4), m30)),
                        _mm256_or_si256(_mm256_and_si256(b, m4), _mm256_and_si256(_mm256_slli_epi32(h, 2), m30)),
                        _mm256_or_si256(_mm256_srli_epi32(a, 4), _mm256_and_si256(h, m30)),
                        _mm256_or_si256(_mm256_srli_epi32(b, 4), _mm256_and_si256(_mm256_srli_epi32(h, 2), m30)),
                    ];
                    for j in 0..4 {
                        let s = _mm256_set1_ps(d * (*sc.add(off / 16 + 2 * j) as i8) as f32);
                        let qf = _mm256_cvtepi32_ps(_mm256_sub_epi32(q[j], k32));
                        _mm256_storeu_ps(ob.add(32 * j + off), _mm256_mul_ps(qf, s));
                    }
                }
            }
        }
    }
}

avx2_fn! {
    fn unpack_f16_256(row: &[u8], out: &mut [f32]) -> () {
        let (rp, op) = (row.as_ptr(), out.as_mut_ptr());
        let n = out.len();
        for b in 0..n / 8 {
            let v = _mm256_cvtph_ps(_mm_loadu_si128(rp.add(16 * b) as *const __m128i));
            _mm256_storeu_ps(op.add(8 * b), v);
        }
        for i in n / 8 * 8..n {
            *op.add(i) = f16_1(rp.add(2 * i));
        }
    }
}

// ------------------------------------------------------------------------------------------
// Tiles: `out[i * R + r] = w[r] . x[i]` for `R` unpacked rows and `G` tokens
// ------------------------------------------------------------------------------------------

/// Rows and most tokens per AVX-512 tile (16 accumulators).
pub const TILE_512: (usize, usize) = (4, 4);
/// Rows and most tokens per AVX2 tile (8 accumulators of 16 registers).
pub const TILE_256: (usize, usize) = (4, 2);

/// The scalar tail `k0..cols` of every dot of a tile.
#[inline(always)]
unsafe fn tail<const R: usize, const G: usize>(
    w: *const f32,
    x: *const f32,
    cols: usize,
    k0: usize,
    out: &mut [f32],
) {
    for i in 0..G {
        for r in 0..R {
            let mut s = 0f32;
            for k in k0..cols {
                s = (*w.add(r * cols + k)).mul_add(*x.add(i * cols + k), s);
            }
            out[i * R + r] += s;
        }
    }
}

/// `[sum(a), sum(b), sum(c), sum(d)]` by a transposing tree (13 shuffles and adds instead
/// of 4 full reductions).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn sum4_512(a: __m512, b: __m512, c: __m512, d: __m512) -> __m128 {
    // Per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3], then [a, b, c, d] partials.
    let ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    let cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    let v = _mm512_add_ps(
        _mm512_shuffle_ps::<0x44>(ab, cd),
        _mm512_shuffle_ps::<0xEE>(ab, cd),
    );
    // Sum the four 128-bit lanes.
    let h = _mm256_add_ps(
        _mm512_castps512_ps256(v),
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))),
    );
    _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn tile_512_g<const R: usize, const G: usize>(
    w: &[f32],
    x: &[f32],
    cols: usize,
    out: &mut [f32],
) {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut acc = [[_mm512_setzero_ps(); G]; R];
    let mut k = 0;
    while k + 16 <= cols {
        let mut wv = [_mm512_setzero_ps(); R];
        for r in 0..R {
            wv[r] = _mm512_loadu_ps(wp.add(r * cols + k));
        }
        for i in 0..G {
            let xv = _mm512_loadu_ps(xp.add(i * cols + k));
            for r in 0..R {
                acc[r][i] = _mm512_fmadd_ps(wv[r], xv, acc[r][i]);
            }
        }
        k += 16;
    }
    for i in 0..G {
        if R == 4 {
            let s = sum4_512(acc[0][i], acc[1][i], acc[2][i], acc[3][i]);
            _mm_storeu_ps(out.as_mut_ptr().add(i * R), s);
        } else {
            for r in 0..R {
                out[i * R + r] = _mm512_reduce_add_ps(acc[r][i]);
            }
        }
    }
    tail::<R, G>(wp, xp, cols, k, out);
}

avx512_fn! {
    /// `g <= TILE_512.1` tokens against `TILE_512.0` rows; `out` holds `g x R`.
    fn tile_512(w: &[f32], x: &[f32], cols: usize, g: usize, out: &mut [f32]) -> () {
        const R: usize = TILE_512.0;
        match g {
            4 => tile_512_g::<R, 4>(w, x, cols, out),
            3 => tile_512_g::<R, 3>(w, x, cols, out),
            2 => tile_512_g::<R, 2>(w, x, cols, out),
            _ => tile_512_g::<R, 1>(w, x, cols, out),
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_256(a: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_256_g<const R: usize, const G: usize>(
    w: &[f32],
    x: &[f32],
    cols: usize,
    out: &mut [f32],
) {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); G]; R];
    let mut k = 0;
    while k + 8 <= cols {
        let mut wv = [_mm256_setzero_ps(); R];
        for r in 0..R {
            wv[r] = _mm256_loadu_ps(wp.add(r * cols + k));
        }
        for i in 0..G {
            let xv = _mm256_loadu_ps(xp.add(i * cols + k));
            for r in 0..R {
                acc[r][i] = _mm256_fmadd_ps(wv[r], xv, acc[r][i]);
            }
        }
        k += 8;
    }
    for i in 0..G {
        for r in 0..R {
            out[i * R + r] = hsum_256(acc[r][i]);
        }
    }
    tail::<R, G>(wp, xp, cols, k, out);
}

avx2_fn! {
    /// `g <= TILE_256.1` tokens against `TILE_256.0` rows; `out` holds `g x R`.
    fn tile_256(w: &[f32], x: &[f32], cols: usize, g: usize, out: &mut [f32]) -> () {
        const R: usize = TILE_256.0;
        match g {
            2 => tile_256_g::<R, 2>(w, x, cols, out),
            _ => tile_256_g::<R, 1>(w, x, cols, out),
        }
    }
}

// ------------------------------------------------------------------------------------------
// GEMM panels: 8 unpacked rows, transposed into the k-major panel
// ------------------------------------------------------------------------------------------

avx2_fn! {
    /// `panel[k * ldp + j] = rows[j * cols + k]` for `j < 8`, `k < cols`: 8x8 blocks
    /// transposed in registers, the `cols % 8` tail by scalar stores. Needs
    /// `rows.len() >= 8 * cols` and `panel.len() >= (cols - 1) * ldp + 8`.
    fn transpose8_256(rows: &[f32], cols: usize, panel: &mut [f32], ldp: usize) -> () {
        let (sp, dp) = (rows.as_ptr(), panel.as_mut_ptr());
        let mut k = 0;
        while k + 8 <= cols {
            let r: [__m256; 8] = std::array::from_fn(|j| _mm256_loadu_ps(sp.add(j * cols + k)));
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let o = [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ];
            for (i, v) in o.iter().enumerate() {
                _mm256_storeu_ps(dp.add((k + i) * ldp), *v);
            }
            k += 8;
        }
        for kk in k..cols {
            for j in 0..8 {
                *dp.add(kk * ldp + j) = *sp.add(j * cols + kk);
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// AVX-512 two-row fused kernels: two weight rows decoded per 32-value block into registers
// and dotted with up to `PAIR_512` tokens (2 x G accumulators): no unpacked buffer stored
// and reloaded, and each x load feeds two FMAs.
// ------------------------------------------------------------------------------------------

/// Most tokens per two-row call.
pub const PAIR_512: usize = 8;

/// `(rows, rb, x, cols, g, out, ldo)`: `out[i * ldo + j] = W[j] . x[i]` for the two rows of
/// `rb` bytes at `rows` and `g <= PAIR_512` rows of `x` (stride `cols`, a multiple of 32).
pub type PairFn = unsafe fn(&[u8], usize, &[f32], usize, usize, *mut f32, usize);

/// The two 16-value halves of the Q4_0 block at `p`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn block_q4_0(p: *const u8) -> (__m512, __m512) {
    let d = _mm512_set1_ps(f16_1(p));
    let q = u8x16(p.add(2));
    let k8 = _mm512_set1_epi32(8);
    let lo = _mm512_sub_epi32(_mm512_and_si512(q, _mm512_set1_epi32(0xF)), k8);
    let hi = _mm512_sub_epi32(_mm512_srli_epi32(q, 4), k8);
    (
        _mm512_mul_ps(_mm512_cvtepi32_ps(lo), d),
        _mm512_mul_ps(_mm512_cvtepi32_ps(hi), d),
    )
}

/// The two 16-value halves of the Q4_1 block at `p`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn block_q4_1(p: *const u8) -> (__m512, __m512) {
    let (d, m) = f16_2(p);
    let (d, m) = (_mm512_set1_ps(d), _mm512_set1_ps(m));
    let q = u8x16(p.add(4));
    let lo = _mm512_cvtepi32_ps(_mm512_and_si512(q, _mm512_set1_epi32(0xF)));
    let hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(q, 4));
    (_mm512_fmadd_ps(lo, d, m), _mm512_fmadd_ps(hi, d, m))
}

/// The two 16-value halves of the Q8_0 block at `p`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn block_q8_0(p: *const u8) -> (__m512, __m512) {
    let d = _mm512_set1_ps(f16_1(p));
    let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(load16(p.add(2))));
    let hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(load16(p.add(18))));
    (_mm512_mul_ps(lo, d), _mm512_mul_ps(hi, d))
}

macro_rules! pair512 {
    ($($name:ident = $block:ident, $bs:expr;)*) => {$(
        pub unsafe fn $name(w: &[u8], rb: usize, x: &[f32], cols: usize, g: usize, out: *mut f32, ldo: usize) {
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
            unsafe fn imp<const G: usize>(w: *const u8, rb: usize, x: *const f32, cols: usize, out: *mut f32, ldo: usize) {
                let mut a0 = [_mm512_setzero_ps(); G];
                let mut a1 = [_mm512_setzero_ps(); G];
                for b in 0..cols / 32 {
                    let (l0, h0) = $block(w.add(b * $bs));
                    let (l1, h1) = $block(w.add(rb + b * $bs));
                    for i in 0..G {
                        let xv = _mm512_loadu_ps(x.add(i * cols + 32 * b));
                        a0[i] = _mm512_fmadd_ps(l0, xv, a0[i]);
                        a1[i] = _mm512_fmadd_ps(l1, xv, a1[i]);
                    }
                    for i in 0..G {
                        let xv = _mm512_loadu_ps(x.add(i * cols + 32 * b + 16));
                        a0[i] = _mm512_fmadd_ps(h0, xv, a0[i]);
                        a1[i] = _mm512_fmadd_ps(h1, xv, a1[i]);
                    }
                }
                // Two tokens' two sums per transposing reduction.
                let mut i = 0;
                while i + 2 <= G {
                    let s = sum4_512(a0[i], a1[i], a0[i + 1], a1[i + 1]);
                    _mm_storel_epi64(out.add(i * ldo) as *mut __m128i, _mm_castps_si128(s));
                    let hi = _mm_castps_si128(_mm_movehl_ps(s, s));
                    _mm_storel_epi64(out.add((i + 1) * ldo) as *mut __m128i, hi);
                    i += 2;
                }
                if i < G {
                    *out.add(i * ldo) = _mm512_reduce_add_ps(a0[i]);
                    *out.add(i * ldo + 1) = _mm512_reduce_add_ps(a1[i]);
                }
            }
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
            unsafe fn go(w: *const u8, rb: usize, x: *const f32, cols: usize, g: usize, out: *mut f32, ldo: usize) {
                match g {
                    8 => imp::<8>(w, rb, x, cols, out, ldo),
                    7 => imp::<7>(w, rb, x, cols, out, ldo),
                    6 => imp::<6>(w, rb, x, cols, out, ldo),
                    5 => imp::<5>(w, rb, x, cols, out, ldo),
                    4 => imp::<4>(w, rb, x, cols, out, ldo),
                    3 => imp::<3>(w, rb, x, cols, out, ldo),
                    2 => imp::<2>(w, rb, x, cols, out, ldo),
                    _ => imp::<1>(w, rb, x, cols, out, ldo),
                }
            }
            go(w.as_ptr(), rb, x.as_ptr(), cols, g, out, ldo)
        }
    )*};
}

pair512! {
    pair_q4_0_512 = block_q4_0, 18;
    pair_q4_1_512 = block_q4_1, 20;
    pair_q8_0_512 = block_q8_0, 34;
}
