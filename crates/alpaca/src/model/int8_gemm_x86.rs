//! x86-64 micro-kernels of the int8 prompt GEMM (see `int8_gemm.rs`): `MR` tokens times
//! one tile of [`NR`] weight rows over a range of 32-value blocks.
//!
//! Panel layout per block `b`: 8 steps of 4 values, each `NR` rows x 4 bytes (lane `j` of
//! a 16-lane register = row `j` of a 16-row group); `corr`, `sc` per (block, sub-block,
//! row), `mn` per (block, row).
//!
//! Safety contract of every `unsafe fn` here: the CPU has the enabled features and the
//! views of [`TileArgs`] are in bounds for tokens `i0..i0 + MR` and blocks `b0..b1`;
//! `out` has `MR` rows of stride `ldo` with `nr <= NR` writable values each.

#![allow(
    clippy::missing_safety_doc,
    clippy::needless_range_loop,
    clippy::too_many_arguments
)]

use std::arch::x86_64::*;

use super::{Kern, TileArgs, NR};

/// Tokens per VNNI micro-kernel call.
pub const MR_VNNI: usize = 4;
/// Tokens per AVX2 micro-kernel call.
pub const MR_AVX2: usize = 2;

/// The VNNI kernel for `mr` tokens (`1..=MR_VNNI`).
pub fn vnni<const SUB: usize, const MIN: bool>(mr: usize) -> Kern {
    match mr {
        4 => tile_vnni::<4, SUB, MIN>,
        3 => tile_vnni::<3, SUB, MIN>,
        2 => tile_vnni::<2, SUB, MIN>,
        _ => tile_vnni::<1, SUB, MIN>,
    }
}

/// The AVX2 kernel for `mr` tokens (`1..=MR_AVX2`).
pub fn avx2<const SUB: usize, const MIN: bool>(mr: usize) -> Kern {
    match mr {
        2 => tile_avx2::<2, SUB, MIN>,
        _ => tile_avx2::<1, SUB, MIN>,
    }
}

/// 4 activation bytes of token `i` at value `k`, in every 32-bit lane.
#[inline(always)]
unsafe fn x4(a: &TileArgs, i: usize, k: usize) -> i32 {
    (a.x.add(i * a.cols + k) as *const i32).read_unaligned()
}

/// Activations are `q + 128` (unsigned): every lane starts at `-128 * sum(w)` of its row.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_vnni<const MR: usize, const SUB: usize, const MIN: bool>(
    a: &TileArgs,
    i0: usize,
    b0: usize,
    b1: usize,
    add: bool,
    out: *mut f32,
    ldo: usize,
    nr: usize,
) {
    let m0: __mmask16 = if nr >= 16 {
        0xFFFF
    } else {
        (1u32 << nr) as u16 - 1
    };
    let m1: __mmask16 = if nr >= 32 {
        0xFFFF
    } else if nr <= 16 {
        0
    } else {
        (1u32 << (nr - 16)) as u16 - 1
    };
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    if add {
        for i in 0..MR {
            acc[i][0] = _mm512_maskz_loadu_ps(m0, out.add(i * ldo));
            acc[i][1] = _mm512_maskz_loadu_ps(m1, out.add(i * ldo + 16));
        }
    }
    let steps = 8 / SUB;
    for b in b0..b1 {
        for s in 0..SUB {
            let o = (b * SUB + s) * NR;
            let c0 = _mm512_loadu_si512(a.corr.add(o) as *const _);
            let c1 = _mm512_loadu_si512(a.corr.add(o + 16) as *const _);
            let mut ia = [[c0, c1]; MR];
            for ks in 0..steps {
                let k = s * steps + ks;
                let wp = a.w.add((b * 8 + k) * NR * 4);
                let w0 = _mm512_loadu_si512(wp as *const _);
                let w1 = _mm512_loadu_si512(wp.add(64) as *const _);
                for i in 0..MR {
                    let xv = _mm512_set1_epi32(x4(a, i0 + i, 32 * b + 4 * k));
                    ia[i][0] = _mm512_dpbusd_epi32(ia[i][0], xv, w0);
                    ia[i][1] = _mm512_dpbusd_epi32(ia[i][1], xv, w1);
                }
            }
            let s0 = _mm512_loadu_ps(a.sc.add(o));
            let s1 = _mm512_loadu_ps(a.sc.add(o + 16));
            for i in 0..MR {
                let d = _mm512_set1_ps(*a.d.add((i0 + i) * a.nb + b));
                let f0 = _mm512_cvtepi32_ps(ia[i][0]);
                let f1 = _mm512_cvtepi32_ps(ia[i][1]);
                acc[i][0] = _mm512_fmadd_ps(f0, _mm512_mul_ps(s0, d), acc[i][0]);
                acc[i][1] = _mm512_fmadd_ps(f1, _mm512_mul_ps(s1, d), acc[i][1]);
            }
        }
        if MIN {
            let n0 = _mm512_loadu_ps(a.mn.add(b * NR));
            let n1 = _mm512_loadu_ps(a.mn.add(b * NR + 16));
            for i in 0..MR {
                let e = _mm512_set1_ps(*a.ds.add((i0 + i) * a.nb + b));
                acc[i][0] = _mm512_fmadd_ps(n0, e, acc[i][0]);
                acc[i][1] = _mm512_fmadd_ps(n1, e, acc[i][1]);
            }
        }
    }
    for i in 0..MR {
        _mm512_mask_storeu_ps(out.add(i * ldo), m0, acc[i][0]);
        _mm512_mask_storeu_ps(out.add(i * ldo + 16), m1, acc[i][1]);
    }
}

/// Activations are signed `q`: `maddubs(|w|, sign(x, w))`, one 16-row group at a time.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_avx2<const MR: usize, const SUB: usize, const MIN: bool>(
    a: &TileArgs,
    i0: usize,
    b0: usize,
    b1: usize,
    add: bool,
    out: *mut f32,
    ldo: usize,
    nr: usize,
) {
    let ones = _mm256_set1_epi16(1);
    let steps = 8 / SUB;
    for g in 0..NR / 16 {
        if nr <= 16 * g {
            break;
        }
        let n = (nr - 16 * g).min(16);
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        if add {
            for i in 0..MR {
                let mut tmp = [0f32; 16];
                std::ptr::copy_nonoverlapping(out.add(i * ldo + 16 * g), tmp.as_mut_ptr(), n);
                acc[i][0] = _mm256_loadu_ps(tmp.as_ptr());
                acc[i][1] = _mm256_loadu_ps(tmp.as_ptr().add(8));
            }
        }
        for b in b0..b1 {
            for s in 0..SUB {
                let mut ia = [[_mm256_setzero_si256(); 2]; MR];
                for ks in 0..steps {
                    let k = s * steps + ks;
                    let wp = a.w.add((b * 8 + k) * NR * 4 + 64 * g);
                    let w0 = _mm256_loadu_si256(wp as *const _);
                    let w1 = _mm256_loadu_si256(wp.add(32) as *const _);
                    let (u0, u1) = (_mm256_abs_epi8(w0), _mm256_abs_epi8(w1));
                    for i in 0..MR {
                        let xv = _mm256_set1_epi32(x4(a, i0 + i, 32 * b + 4 * k));
                        let p0 = _mm256_maddubs_epi16(u0, _mm256_sign_epi8(xv, w0));
                        let p1 = _mm256_maddubs_epi16(u1, _mm256_sign_epi8(xv, w1));
                        ia[i][0] = _mm256_add_epi32(ia[i][0], _mm256_madd_epi16(p0, ones));
                        ia[i][1] = _mm256_add_epi32(ia[i][1], _mm256_madd_epi16(p1, ones));
                    }
                }
                let o = (b * SUB + s) * NR + 16 * g;
                let s0 = _mm256_loadu_ps(a.sc.add(o));
                let s1 = _mm256_loadu_ps(a.sc.add(o + 8));
                for i in 0..MR {
                    let d = _mm256_set1_ps(*a.d.add((i0 + i) * a.nb + b));
                    let f0 = _mm256_cvtepi32_ps(ia[i][0]);
                    let f1 = _mm256_cvtepi32_ps(ia[i][1]);
                    acc[i][0] = _mm256_fmadd_ps(f0, _mm256_mul_ps(s0, d), acc[i][0]);
                    acc[i][1] = _mm256_fmadd_ps(f1, _mm256_mul_ps(s1, d), acc[i][1]);
                }
            }
            if MIN {
                let o = b * NR + 16 * g;
                let n0 = _mm256_loadu_ps(a.mn.add(o));
                let n1 = _mm256_loadu_ps(a.mn.add(o + 8));
                for i in 0..MR {
                    let e = _mm256_set1_ps(*a.ds.add((i0 + i) * a.nb + b));
                    acc[i][0] = _mm256_fmadd_ps(n0, e, acc[i][0]);
                    acc[i][1] = _mm256_fmadd_ps(n1, e, acc[i][1]);
                }
            }
        }
        for i in 0..MR {
            let mut tmp = [0f32; 16];
            _mm256_storeu_ps(tmp.as_mut_ptr(), acc[i][0]);
            _mm256_storeu_ps(tmp.as_mut_ptr().add(8), acc[i][1]);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), out.add(i * ldo + 16 * g), n);
        }
    }
}
