//! Hand-written x86-64 kernels: fused dequantize + dot for one weight row against `f32`
//! activations (AVX-512 and AVX2+FMA), and the `f32` GEMM micro-kernels of prompt processing.
//!
//! Every row kernel has the signature `(row bytes, x, xs) -> f32` where `xs[b]` is the sum of
//! `x` over 32-value block `b` (see `kernels::block_sums`): the per-block offset of Q4_1,
//! Q5_1 and the K-quant mins is factored out as `m_b * xs[b]`, so the inner loop is only
//! `q * x` on integers converted to `f32`, scaled once per block. Activations stay `f32`
//! (greedy parity with the f32 reference depends on it).
//!
//! Safety contract of every `unsafe fn` here: the CPU supports the enabled target features
//! (callers check `ops::simd_level`), `row.len() == ty.row_bytes(x.len())`,
//! `x.len()` is a multiple of the block size and `xs.len() >= x.len() / 32` where used.

#![allow(clippy::missing_safety_doc, clippy::needless_range_loop)]

use std::arch::x86_64::*;

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

/// One f16 at `p` as f32.
#[inline(always)]
unsafe fn f16_1(p: *const u8) -> f32 {
    let h = (p as *const u16).read_unaligned() as i32;
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)))
}

/// Two consecutive f16 at `p` (e.g. `d`, `m`) as f32.
#[inline(always)]
unsafe fn f16_2(p: *const u8) -> (f32, f32) {
    let h = (p as *const u32).read_unaligned() as i32;
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(h));
    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
}

#[inline(always)]
unsafe fn load16(p: *const u8) -> __m128i {
    _mm_loadu_si128(p as *const __m128i)
}

/// Run `$body` (which yields `(partial sums, scale)` for block `$b`) for `$b in 0..$nb`,
/// alternating two register accumulators: `acc = fma(partial, scale, acc)`.
macro_rules! blocks2 {
    ($nb:expr, $a0:ident, $a1:ident, $fma:path, |$b:ident| $body:expr) => {{
        let nb = $nb;
        let mut $b = 0;
        while $b + 2 <= nb {
            let (t0, s0) = $body;
            $b += 1;
            let (t1, s1) = $body;
            $b += 1;
            $a0 = $fma(t0, s0, $a0);
            $a1 = $fma(t1, s1, $a1);
        }
        if $b < nb {
            let (t0, s0) = $body;
            $a0 = $fma(t0, s0, $a0);
        }
    }};
}

// ------------------------------------------------------------------------------------------
// AVX-512 row kernels (16 lanes)
// ------------------------------------------------------------------------------------------

macro_rules! avx512_fn {
    ($(#[$m:meta])* fn $name:ident($($a:ident: $t:ty),*) -> $r:ty $body:block) => {
        $(#[$m])*
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
        pub unsafe fn $name($($a: $t),*) -> $r $body
    };
}

macro_rules! avx2_fn {
    ($(#[$m:meta])* fn $name:ident($($a:ident: $t:ty),*) -> $r:ty $body:block) => {
        $(#[$m])*
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $name($($a: $t),*) -> $r $body
    };
}

// Multi-row decode kernels (unpackers and tiles), in their own file; declared here so they
// share the helpers and macros above.
#[path = "kernels_x86_multi.rs"]
pub mod multi;

avx512_fn! {
    /// 16 dwords of `u8` from `p`, as i32.
    #[inline]
    fn u8x16(p: *const u8) -> __m512i { _mm512_cvtepu8_epi32(load16(p)) }
}

avx512_fn! {
    #[inline]
    fn hsum512(a: __m512, b: __m512) -> f32 { _mm512_reduce_add_ps(_mm512_add_ps(a, b)) }
}

avx512_fn! {
    fn q4_0_512(row: &[u8], x: &[f32], _xs: &[f32]) -> f32 {
        let nb = x.len() / 32;
        let (rp, xp) = (row.as_ptr(), x.as_ptr());
        let (m4, k8) = (_mm512_set1_epi32(0xF), _mm512_set1_epi32(8));
        let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        blocks2!(nb, a0, a1, _mm512_fmadd_ps, |b| {
            let bp = rp.add(b * 18);
            let d = f16_1(bp);
            let q = u8x16(bp.add(2));
            let lo = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_and_si512(q, m4), k8));
            let hi = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_srli_epi32(q, 4), k8));
            let t = _mm512_mul_ps(lo, _mm512_loadu_ps(xp.add(b * 32)));
            (_mm512_fmadd_ps(hi, _mm512_loadu_ps(xp.add(b * 32 + 16)), t), _mm512_set1_ps(d))
        });
        hsum512(a0, a1)
    }
}

avx512_fn! {
    fn q4_1_512(row: &[u8], x: &[f32], xs: &[f32]) -> f32 {
        let nb = x.len() / 32;
        let (rp, xp) = (row.as_ptr(), x.as_ptr());
        let m4 = _mm512_set1_epi32(0xF);
        let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut msum = 0f32;
        blocks2!(nb, a0, a1, _mm512_fmadd_ps, |b| {
            let bp = rp.add(b * 20);
            let (d, m) = f16_2(bp);
            let q = u8x16(bp.add(4));
            let lo = _mm512_cvtepi32_ps(_mm512_and_si512(q, m4));
            let hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(q, 4));
            let t = _mm512_mul_ps(lo, _mm512_loadu_ps(xp.add(b * 32)));
            msum = m.mul_add(*xs.get_unchecked(b), msum);
            (_mm512_fmadd_ps(hi, _mm512_loadu_ps(xp.add(b * 32 + 16)), t), _mm512_set1_ps(d))
        });
        hsum512(a0, a1) + msum
    }
}

avx512_fn! {
    /// Q5_0 (`offset = true`, values `q - 16`) and Q5_1 (`d * q + m`).
    #[inline]
    fn q5_512(row: &[u8], x: &[f32], xs: &[f32], q5_1: bool) -> f32 {
        let nb = x.len() / 32;
        let bs = if q5_1 { 24 } else { 22 };
        let (rp, xp) = (row.as_ptr(), x.as_ptr());
        let (m4, k16) = (_mm512_set1_epi32(0xF), _mm512_set1_epi32(16));
        let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut msum = 0f32;
        blocks2!(nb, a0, a1, _mm512_fmadd_ps, |b| {
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
            let t = _mm512_mul_ps(_mm512_cvtepi32_ps(lo), _mm512_loadu_ps(xp.add(b * 32)));
            let t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), _mm512_loadu_ps(xp.add(b * 32 + 16)), t);
            if q5_1 {
                msum = m.mul_add(*xs.get_unchecked(b), msum);
            }
            (t, _mm512_set1_ps(d))
        });
        hsum512(a0, a1) + msum
    }
}

avx512_fn! {
    fn q5_0_512(row: &[u8], x: &[f32], xs: &[f32]) -> f32 { q5_512(row, x, xs, false) }
}
avx512_fn! {
    fn q5_1_512(row: &[u8], x: &[f32], xs: &[f32]) -> f32 { q5_512(row, x, xs, true) }
}

avx512_fn! {
    fn q8_0_512(row: &[u8], x: &[f32], _xs: &[f32]) -> f32 {
        let nb = x.len() / 32;
        let (rp, xp) = (row.as_ptr(), x.as_ptr());
        let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        blocks2!(nb, a0, a1, _mm512_fmadd_ps, |b| {
            let bp = rp.add(b * 34);
            let d = f16_1(bp);
            let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(load16(bp.add(2))));
            let hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(load16(bp.add(18))));
            let t = _mm512_mul_ps(lo, _mm512_loadu_ps(xp.add(b * 32)));
            (_mm512_fmadd_ps(hi, _mm512_loadu_ps(xp.add(b * 32 + 16)), t), _mm512_set1_ps(d))
        });
        hsum512(a0, a1)
    }
}

/// The 8 (scale, min) pairs of a Q4_K/Q5_K super-block, as f32 multiplied by `d`/`dmin`.
#[inline(always)]
fn k4_scales(sc: &[u8], d: f32, dmin: f32) -> ([f32; 8], [f32; 8]) {
    let mut s = [0f32; 8];
    let mut m = [0f32; 8];
    for j in 0..8 {
        let (a, b) = crate::model::quant::scale_min_k4(j, sc);
        s[j] = d * a as f32;
        m[j] = dmin * b as f32;
    }
    (s, m)
}

avx512_fn! {
    /// Q4_K (`qh = None`) and Q5_K.
    #[inline]
    fn qk45_512(row: &[u8], x: &[f32], xs: &[f32], five: bool) -> f32 {
        let nb = x.len() / 256;
        let bs = if five { 176 } else { 144 };
        let (rp, xp) = (row.as_ptr(), x.as_ptr());
        let (m4, k16) = (_mm512_set1_epi32(0xF), _mm512_set1_epi32(16));
        let mut acc = [_mm512_setzero_ps(); 2];
        let mut msum = 0f32;
        for i in 0..nb {
            let bp = rp.add(i * bs);
            let (d, dmin) = f16_2(bp);
            let (s, m) = k4_scales(std::slice::from_raw_parts(bp.add(4), 12), d, dmin);
            for j in 0..8 {
                msum = m[j].mul_add(*xs.get_unchecked(8 * i + j), msum);
            }
            let qs = bp.add(if five { 48 } else { 16 });
            let (qha, qhb) = if five {
                (u8x16(bp.add(16)), u8x16(bp.add(32)))
            } else {
                (_mm512_setzero_si512(), _mm512_setzero_si512())
            };
            let xb = xp.add(256 * i);
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
                let x0 = xb.add(64 * k);
                let t1 = _mm512_mul_ps(_mm512_cvtepi32_ps(la), _mm512_loadu_ps(x0));
                let t1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lb), _mm512_loadu_ps(x0.add(16)), t1);
                let t2 = _mm512_mul_ps(_mm512_cvtepi32_ps(ha), _mm512_loadu_ps(x0.add(32)));
                let t2 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hb), _mm512_loadu_ps(x0.add(48)), t2);
                acc[0] = _mm512_fmadd_ps(t1, _mm512_set1_ps(s[2 * k]), acc[0]);
                acc[1] = _mm512_fmadd_ps(t2, _mm512_set1_ps(s[2 * k + 1]), acc[1]);
            }
        }
        hsum512(acc[0], acc[1]) - msum
    }
}

avx512_fn! {
    fn q4_k_512(row: &[u8], x: &[f32], xs: &[f32]) -> f32 { qk45_512(row, x, xs, false) }
}
avx512_fn! {
    fn q5_k_512(row: &[u8], x: &[f32], xs: &[f32]) -> f32 { qk45_512(row, x, xs, true) }
}

avx512_fn! {
    fn q6_k_512(row: &[u8], x: &[f32], _xs: &[f32]) -> f32 {
        let nb = x.len() / 256;
        let (rp, xp) = (row.as_ptr(), x.as_ptr());
        let (m4, m30, k32) = (_mm512_set1_epi32(0xF), _mm512_set1_epi32(0x30), _mm512_set1_epi32(32));
        let mut acc = [_mm512_setzero_ps(); 4];
        for i in 0..nb {
            let bp = rp.add(i * 210);
            let d = f16_1(bp.add(208));
            for n in 0..2 {
                let ql = bp.add(64 * n);
                let qh = bp.add(128 + 32 * n);
                let sc = bp.add(192 + 8 * n);
                let xb = xp.add(256 * i + 128 * n);
                for c in 0..2 {
                    let a = u8x16(ql.add(16 * c));
                    let b = u8x16(ql.add(32 + 16 * c));
                    let h = u8x16(qh.add(16 * c));
                    let q1 = _mm512_or_si512(_mm512_and_si512(a, m4), _mm512_and_si512(_mm512_slli_epi32(h, 4), m30));
                    let q2 = _mm512_or_si512(_mm512_and_si512(b, m4), _mm512_and_si512(_mm512_slli_epi32(h, 2), m30));
                    let q3 = _mm512_or_si512(_mm512_srli_epi32(a, 4), _mm512_and_si512(h, m30));
                    let q4 = _mm512_or_si512(_mm512_srli_epi32(b, 4), _mm512_and_si512(_mm512_srli_epi32(h, 2), m30));
                    for (j, q) in [q1, q2, q3, q4].into_iter().enumerate() {
                        let qf = _mm512_cvtepi32_ps(_mm512_sub_epi32(q, k32));
                        let t = _mm512_mul_ps(qf, _mm512_loadu_ps(xb.add(32 * j + 16 * c)));
                        let s = d * (*sc.add(c + 2 * j) as i8) as f32;
                        acc[j] = _mm512_fmadd_ps(t, _mm512_set1_ps(s), acc[j]);
                    }
                }
            }
        }
        hsum512(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]))
    }
}

avx512_fn! {
    fn f32_512(row: &[u8], x: &[f32], _xs: &[f32]) -> f32 {
        let (rp, xp) = (row.as_ptr() as *const f32, x.as_ptr());
        let n = x.len();
        let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        blocks2!(n / 16, a0, a1, _mm512_fmadd_ps, |b| {
            (_mm512_loadu_ps(rp.add(16 * b)), _mm512_loadu_ps(xp.add(16 * b)))
        });
        let mut i = n / 16 * 16;
        let mut s = hsum512(a0, a1);
        while i < n {
            s = (rp.add(i).read_unaligned()).mul_add(*xp.add(i), s);
            i += 1;
        }
        s
    }
}

avx512_fn! {
    fn f16_512(row: &[u8], x: &[f32], _xs: &[f32]) -> f32 {
        let (rp, xp) = (row.as_ptr(), x.as_ptr());
        let n = x.len();
        let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        blocks2!(n / 16, a0, a1, _mm512_fmadd_ps, |b| {
            let a = _mm512_cvtph_ps(_mm256_loadu_si256(rp.add(32 * b) as *const __m256i));
            (a, _mm512_loadu_ps(xp.add(16 * b)))
        });
        let mut i = n / 16 * 16;
        let mut s = hsum512(a0, a1);
        while i < n {
            s = f16_1(rp.add(2 * i)).mul_add(*xp.add(i), s);
            i += 1;
        }
        s
    }
}

// ------------------------------------------------------------------------------------------
// AVX2 row kernels (8 lanes)
// ------------------------------------------------------------------------------------------

avx2_fn! {
    #[inline]
    fn hsum256(a: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }
}

avx2_fn! {
    /// `sum_j q[j] * x[j]` for the 32 values of a block whose 16 packed bytes hold the low
    /// 4 bits (`lo` nibbles = values 0..16, `hi` = 16..32), plus `extra_lo`/`extra_hi` added
    /// per lane before conversion (the fifth bits; `bias` subtracted from every value).
    #[inline]
    fn nib32_256(qs: *const u8, xp: *const f32, ext: [__m256i; 4], bias: __m256i) -> __m256 {
        let m4 = _mm256_set1_epi32(0xF);
        let v = load16(qs);
        let a = _mm256_cvtepu8_epi32(v);
        let b = _mm256_cvtepu8_epi32(_mm_srli_si128(v, 8));
        let q0 = _mm256_sub_epi32(_mm256_or_si256(_mm256_and_si256(a, m4), ext[0]), bias);
        let q1 = _mm256_sub_epi32(_mm256_or_si256(_mm256_and_si256(b, m4), ext[1]), bias);
        let q2 = _mm256_sub_epi32(_mm256_or_si256(_mm256_srli_epi32(a, 4), ext[2]), bias);
        let q3 = _mm256_sub_epi32(_mm256_or_si256(_mm256_srli_epi32(b, 4), ext[3]), bias);
        let t = _mm256_mul_ps(_mm256_cvtepi32_ps(q0), _mm256_loadu_ps(xp));
        let t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q1), _mm256_loadu_ps(xp.add(8)), t);
        let t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q2), _mm256_loadu_ps(xp.add(16)), t);
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(q3), _mm256_loadu_ps(xp.add(24)), t)
    }
}

avx2_fn! {
    /// Lanes `16` where bit `j0 + lane` of `bits` is set, else 0 (8 lanes).
    #[inline]
    fn bit16_256(bits: u32, j0: u32) -> __m256i {
        let sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        let v = _mm256_and_si256(_mm256_set1_epi32((bits >> j0) as i32), sel);
        _mm256_and_si256(_mm256_cmpeq_epi32(v, sel), _mm256_set1_epi32(16))
    }
}

avx2_fn! {
    /// The simple 32-value types: Q4_0, Q4_1, Q5_0, Q5_1.
    #[inline]
    fn simple_256(row: &[u8], x: &[f32], xs: &[f32], bs: usize, has_m: bool, five: bool, bias: i32) -> f32 {
        let nb = x.len() / 32;
        let (rp, xp) = (row.as_ptr(), x.as_ptr());
        let z = _mm256_setzero_si256();
        let bias = _mm256_set1_epi32(bias);
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut msum = 0f32;
        blocks2!(nb, a0, a1, _mm256_fmadd_ps, |b| {
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
            let t = nib32_256(bp.add(o), xp.add(32 * b), ext, bias);
            if has_m {
                msum = m.mul_add(*xs.get_unchecked(b), msum);
            }
            (t, _mm256_set1_ps(d))
        });
        hsum256(_mm256_add_ps(a0, a1)) + msum
    }
}

avx2_fn! { fn q4_0_256(r: &[u8], x: &[f32], xs: &[f32]) -> f32 { simple_256(r, x, xs, 18, false, false, 8) } }
avx2_fn! { fn q4_1_256(r: &[u8], x: &[f32], xs: &[f32]) -> f32 { simple_256(r, x, xs, 20, true, false, 0) } }
avx2_fn! { fn q5_0_256(r: &[u8], x: &[f32], xs: &[f32]) -> f32 { simple_256(r, x, xs, 22, false, true, 16) } }
avx2_fn! { fn q5_1_256(r: &[u8], x: &[f32], xs: &[f32]) -> f32 { simple_256(r, x, xs, 24, true, true, 0) } }

avx2_fn! {
    fn q8_0_256(row: &[u8], x: &[f32], _xs: &[f32]) -> f32 {
        let nb = x.len() / 32;
        let (rp, xp) = (row.as_ptr(), x.as_ptr());
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        blocks2!(nb, a0, a1, _mm256_fmadd_ps, |b| {
            let bp = rp.add(b * 34);
            let d = f16_1(bp);
            let v0 = load16(bp.add(2));
            let v1 = load16(bp.add(18));
            let q = [
                _mm256_cvtepi8_epi32(v0),
                _mm256_cvtepi8_epi32(_mm_srli_si128(v0, 8)),
                _mm256_cvtepi8_epi32(v1),
                _mm256_cvtepi8_epi32(_mm_srli_si128(v1, 8)),
            ];
            let x0 = xp.add(32 * b);
            let t = _mm256_mul_ps(_mm256_cvtepi32_ps(q[0]), _mm256_loadu_ps(x0));
            let t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q[1]), _mm256_loadu_ps(x0.add(8)), t);
            let t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q[2]), _mm256_loadu_ps(x0.add(16)), t);
            let t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q[3]), _mm256_loadu_ps(x0.add(24)), t);
            (t, _mm256_set1_ps(d))
        });
        hsum256(_mm256_add_ps(a0, a1))
    }
}

avx2_fn! {
    /// `sum q*x` over 8 lanes of `u8` values at `p` with `ext` or-ed in.
    #[inline]
    fn u8x8_dot(v: __m256i, xp: *const f32, acc: __m256) -> __m256 {
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), _mm256_loadu_ps(xp), acc)
    }
}

avx2_fn! {
    #[inline]
    fn qk45_256(row: &[u8], x: &[f32], xs: &[f32], five: bool) -> f32 {
        let nb = x.len() / 256;
        let bs = if five { 176 } else { 144 };
        let (rp, xp) = (row.as_ptr(), x.as_ptr());
        let m4 = _mm256_set1_epi32(0xF);
        let k16 = _mm256_set1_epi32(16);
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut msum = 0f32;
        for i in 0..nb {
            let bp = rp.add(i * bs);
            let (d, dmin) = f16_2(bp);
            let (s, m) = k4_scales(std::slice::from_raw_parts(bp.add(4), 12), d, dmin);
            for j in 0..8 {
                msum = m[j].mul_add(*xs.get_unchecked(8 * i + j), msum);
            }
            let qs = bp.add(if five { 48 } else { 16 });
            let xb = xp.add(256 * i);
            for k in 0..4 {
                let mut t1 = _mm256_setzero_ps();
                let mut t2 = _mm256_setzero_ps();
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
                    t1 = u8x8_dot(lo, xb.add(64 * k + 8 * c), t1);
                    t2 = u8x8_dot(hi, xb.add(64 * k + 32 + 8 * c), t2);
                }
                acc[0] = _mm256_fmadd_ps(t1, _mm256_set1_ps(s[2 * k]), acc[0]);
                acc[1] = _mm256_fmadd_ps(t2, _mm256_set1_ps(s[2 * k + 1]), acc[1]);
            }
        }
        hsum256(_mm256_add_ps(acc[0], acc[1])) - msum
    }
}

avx2_fn! { fn q4_k_256(r: &[u8], x: &[f32], xs: &[f32]) -> f32 { qk45_256(r, x, xs, false) } }
avx2_fn! { fn q5_k_256(r: &[u8], x: &[f32], xs: &[f32]) -> f32 { qk45_256(r, x, xs, true) } }

avx2_fn! {
    fn q6_k_256(row: &[u8], x: &[f32], _xs: &[f32]) -> f32 {
        let nb = x.len() / 256;
        let (rp, xp) = (row.as_ptr(), x.as_ptr());
        let (m4, m30, k32) = (_mm256_set1_epi32(0xF), _mm256_set1_epi32(0x30), _mm256_set1_epi32(32));
        let mut acc = [_mm256_setzero_ps(); 4];
        for i in 0..nb {
            let bp = rp.add(i * 210);
            let d = f16_1(bp.add(208));
            for n in 0..2 {
                let ql = bp.add(64 * n);
                let qh = bp.add(128 + 32 * n);
                let sc = bp.add(192 + 8 * n);
                let xb = xp.add(256 * i + 128 * n);
                for c in 0..2 {
                    let mut t = [_mm256_setzero_ps(); 4];
                    for e in 0..2 {
                        let off = 16 * c + 8 * e;
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
                            t[j] = u8x8_dot(_mm256_sub_epi32(q[j], k32), xb.add(32 * j + off), t[j]);
                        }
                    }
                    for j in 0..4 {
                        let s = d * (*sc.add(c + 2 * j) as i8) as f32;
                        acc[j] = _mm256_fmadd_ps(t[j], _mm256_set1_ps(s), acc[j]);
                    }
                }
            }
        }
        hsum256(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])))
    }
}

// ------------------------------------------------------------------------------------------
// GEMM micro-kernels: `out[i][r] = sum_k x[i*ldx + k] * panel[k*32 + r]` for `MR` tokens and
// one 32-row panel of dequantized weights (k-major, 32 rows wide).
// ------------------------------------------------------------------------------------------

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn gemm_512_mr<const MR: usize>(
    panel: &[f32],
    x: &[f32],
    ldx: usize,
    k: usize,
    out: &mut [f32],
) {
    let (pp, xp) = (panel.as_ptr(), x.as_ptr());
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for kk in 0..k {
        let w0 = _mm512_loadu_ps(pp.add(kk * 32));
        let w1 = _mm512_loadu_ps(pp.add(kk * 32 + 16));
        for i in 0..MR {
            let b = _mm512_set1_ps(*xp.add(i * ldx + kk));
            acc[i][0] = _mm512_fmadd_ps(w0, b, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(w1, b, acc[i][1]);
        }
    }
    let op = out.as_mut_ptr();
    for i in 0..MR {
        _mm512_storeu_ps(op.add(32 * i), acc[i][0]);
        _mm512_storeu_ps(op.add(32 * i + 16), acc[i][1]);
    }
}

/// Tokens per AVX-512 micro-kernel call.
pub const MR_512: usize = 12;

avx512_fn! {
    /// `mr <= MR_512` tokens; `out` holds `mr x 32`.
    fn gemm_512(panel: &[f32], x: &[f32], ldx: usize, k: usize, mr: usize, out: &mut [f32]) -> () {
        match mr {
            12 => gemm_512_mr::<12>(panel, x, ldx, k, out),
            11 => gemm_512_mr::<11>(panel, x, ldx, k, out),
            10 => gemm_512_mr::<10>(panel, x, ldx, k, out),
            9 => gemm_512_mr::<9>(panel, x, ldx, k, out),
            8 => gemm_512_mr::<8>(panel, x, ldx, k, out),
            7 => gemm_512_mr::<7>(panel, x, ldx, k, out),
            6 => gemm_512_mr::<6>(panel, x, ldx, k, out),
            5 => gemm_512_mr::<5>(panel, x, ldx, k, out),
            4 => gemm_512_mr::<4>(panel, x, ldx, k, out),
            3 => gemm_512_mr::<3>(panel, x, ldx, k, out),
            2 => gemm_512_mr::<2>(panel, x, ldx, k, out),
            _ => gemm_512_mr::<1>(panel, x, ldx, k, out),
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemm_256_mr<const MR: usize>(
    panel: &[f32],
    x: &[f32],
    ldx: usize,
    k: usize,
    out: &mut [f32],
) {
    let (pp, xp) = (panel.as_ptr(), x.as_ptr());
    // Two passes of 16 rows: 2 x MR accumulators each.
    for half in 0..2 {
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        for kk in 0..k {
            let w0 = _mm256_loadu_ps(pp.add(kk * 32 + 16 * half));
            let w1 = _mm256_loadu_ps(pp.add(kk * 32 + 16 * half + 8));
            for i in 0..MR {
                let b = _mm256_set1_ps(*xp.add(i * ldx + kk));
                acc[i][0] = _mm256_fmadd_ps(w0, b, acc[i][0]);
                acc[i][1] = _mm256_fmadd_ps(w1, b, acc[i][1]);
            }
        }
        let op = out.as_mut_ptr();
        for i in 0..MR {
            _mm256_storeu_ps(op.add(32 * i + 16 * half), acc[i][0]);
            _mm256_storeu_ps(op.add(32 * i + 16 * half + 8), acc[i][1]);
        }
    }
}

/// Tokens per AVX2 micro-kernel call.
pub const MR_256: usize = 6;

avx2_fn! {
    fn gemm_256(panel: &[f32], x: &[f32], ldx: usize, k: usize, mr: usize, out: &mut [f32]) -> () {
        match mr {
            6 => gemm_256_mr::<6>(panel, x, ldx, k, out),
            5 => gemm_256_mr::<5>(panel, x, ldx, k, out),
            4 => gemm_256_mr::<4>(panel, x, ldx, k, out),
            3 => gemm_256_mr::<3>(panel, x, ldx, k, out),
            2 => gemm_256_mr::<2>(panel, x, ldx, k, out),
            _ => gemm_256_mr::<1>(panel, x, ldx, k, out),
        }
    }
}
