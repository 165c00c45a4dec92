//! Multi-row decode (`t >= 2` tokens, below the GEMM): `y[i, r] = W[r] . x[i]` where each
//! weight row is unpacked once into an L1-resident `f32` buffer (scale and min applied,
//! SIMD), then a tile of `R` unpacked rows is dotted against groups of `G` tokens with
//! `R x G` register accumulators. The fused row kernels ([`RowDot`](super::RowDot)) decode
//! every block again for every token; here decoding is paid once per weight row, so a decode
//! step of `t` sequences costs one unpack plus `t` `f32` dots per row.
//!
//! The x86 unpackers and tiles are in `kernels_x86_multi.rs`; the portable ones here are the
//! fallback and, with `quant::dequantize_row`, the reference.

use std::cell::RefCell;

use super::{available, check_shapes, par_rows, OutPtr};
use crate::model::ops::{dispatch, hw_simd_level, SimdLevel};
use crate::model::quant::{dequantize_row, GgmlType};

#[cfg(target_arch = "x86_64")]
use crate::model::kernels_x86::multi as x86m;

/// A hand-written SIMD unpacker (see [`Unpacker::Simd`]).
type SimdUnpack = unsafe fn(&[u8], &mut [f32]);

/// How one weight row is unpacked to `f32`.
#[derive(Clone, Copy)]
enum Unpacker {
    /// A hand-written SIMD unpacker: `(row bytes, out)`. Unsafe to call: it uses CPU
    /// features ([`unpacker`] hands out only supported ones) and needs
    /// `row.len() == ty.row_bytes(out.len())`.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Simd(SimdUnpack),
    /// `dequantize_row` compiled for the CPU's level (types without a hand-written one).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Dispatched,
    /// The portable reference decoder.
    Scalar,
}

impl Unpacker {
    /// `out = W` row. Safety: see [`Unpacker::Simd`].
    unsafe fn run(self, ty: GgmlType, row: &[u8], out: &mut [f32]) {
        match self {
            Unpacker::Simd(f) => f(row, out),
            Unpacker::Dispatched => dequant(ty, row, out),
            Unpacker::Scalar => dequantize_row(ty, row, out),
        }
    }
}

dispatch!(dequant(ty: GgmlType, row: &[u8], out: &mut [f32]) -> () {
    dequantize_row(ty, row, out)
});

/// The unpacker of `ty` at `level` (already clamped to the CPU).
fn unpacker(level: SimdLevel, ty: GgmlType) -> Unpacker {
    #[cfg(target_arch = "x86_64")]
    {
        use GgmlType::*;
        let f: Option<SimdUnpack> = match level {
            SimdLevel::Avx512 => match ty {
                Q4_0 => Some(x86m::unpack_q4_0_512),
                Q4_1 => Some(x86m::unpack_q4_1_512),
                Q5_0 => Some(x86m::unpack_q5_0_512),
                Q5_1 => Some(x86m::unpack_q5_1_512),
                Q8_0 => Some(x86m::unpack_q8_0_512),
                Q4K => Some(x86m::unpack_q4_k_512),
                Q5K => Some(x86m::unpack_q5_k_512),
                Q6K => Some(x86m::unpack_q6_k_512),
                F16 => Some(x86m::unpack_f16_512),
                F32 => Some(x86m::unpack_f32),
                _ => None,
            },
            SimdLevel::Avx2 => match ty {
                Q4_0 => Some(x86m::unpack_q4_0_256),
                Q4_1 => Some(x86m::unpack_q4_1_256),
                Q5_0 => Some(x86m::unpack_q5_0_256),
                Q5_1 => Some(x86m::unpack_q5_1_256),
                Q8_0 => Some(x86m::unpack_q8_0_256),
                Q4K => Some(x86m::unpack_q4_k_256),
                Q5K => Some(x86m::unpack_q5_k_256),
                Q6K => Some(x86m::unpack_q6_k_256),
                F16 => Some(x86m::unpack_f16_256),
                F32 => Some(x86m::unpack_f32),
                _ => None,
            },
            SimdLevel::Scalar => return Unpacker::Scalar,
        };
        return f.map_or(Unpacker::Dispatched, Unpacker::Simd);
    }
    #[allow(unreachable_code)]
    {
        let _ = (level, ty);
        Unpacker::Scalar
    }
}

/// Row `W[r]` as `f32` through the unpacker of `level` (tests call every level directly).
/// Panics if the CPU lacks `level` or the lengths do not match.
pub fn unpack_row_at(level: SimdLevel, ty: GgmlType, row: &[u8], out: &mut [f32]) {
    assert!(available(level), "CPU lacks {level:?}");
    assert_eq!(row.len(), ty.row_bytes(out.len()));
    // SAFETY: the level is supported and the lengths were checked.
    unsafe { unpacker(level, ty).run(ty, row, out) }
}

/// Rows `r0..r0 + nr` (`nr <= NR`) of `W` into the k-major GEMM panel, `panel[k * NR + j]`,
/// rows past `nr` zero. On x86 with SIMD, 8 rows at a time are unpacked row-major into `buf`
/// by the SIMD unpackers and transposed in registers (the scalar decode and strided scatter
/// of [`dequant_rows`](super::dequant_rows), the reference, cost about twice the GEMM itself
/// for a 40-token prompt). Needs `buf.len() >= 8 * cols`, `panel.len() >= NR * cols`.
#[allow(clippy::too_many_arguments)]
pub(super) fn fill_panel(
    level: SimdLevel,
    ty: GgmlType,
    data: &[u8],
    cols: usize,
    r0: usize,
    nr: usize,
    buf: &mut [f32],
    panel: &mut [f32],
) {
    const NR: usize = super::NR;
    assert!(nr <= NR && buf.len() >= 8 * cols && panel.len() >= NR * cols);
    let rb = ty.row_bytes(cols);
    assert!(data.len() >= (r0 + nr) * rb);
    let level = level.min(hw_simd_level());
    #[cfg(target_arch = "x86_64")]
    if level >= SimdLevel::Avx2 && cols > 0 {
        let un = unpacker(level, ty);
        let buf = &mut buf[..8 * cols];
        for j0 in (0..NR).step_by(8) {
            for (j, dst) in buf.chunks_exact_mut(cols).enumerate() {
                let r = j0 + j;
                if r < nr {
                    let row = &data[(r0 + r) * rb..(r0 + r + 1) * rb];
                    // SAFETY: the unpacker is of a supported level; lengths match.
                    unsafe { un.run(ty, row, dst) };
                } else {
                    dst.fill(0.0);
                }
            }
            // SAFETY: AVX2 is supported (level >= Avx2); `buf` holds 8 rows of `cols`, and
            // `panel[j0..]` reaches `(cols - 1) * NR + 8` (`j0 + 8 <= NR`).
            unsafe { x86m::transpose8_256(buf, cols, &mut panel[j0..], NR) };
        }
        return;
    }
    super::dequant_rows(ty, data, cols, r0, nr, &mut buf[..cols], panel);
}

/// A tile kernel: `(w, x, cols, g, out)`, `out[i * R + r] = w[r] . x[i]` for the `R` rows of
/// `w` and `g <= G` rows of `x` (both of stride `cols`). Unsafe: CPU features, lengths.
type Tile = unsafe fn(&[f32], &[f32], usize, usize, &mut [f32]);

/// Rows per portable tile.
const R_SCALAR: usize = 4;

/// Portable tile of `R_SCALAR` rows and `g` tokens (8 partial sums per dot).
unsafe fn tile_scalar(w: &[f32], x: &[f32], cols: usize, g: usize, out: &mut [f32]) {
    for i in 0..g {
        let xi = &x[i * cols..(i + 1) * cols];
        for r in 0..R_SCALAR {
            let wr = &w[r * cols..(r + 1) * cols];
            let mut a = [0f32; 8];
            for (j, (u, v)) in wr.iter().zip(xi).enumerate() {
                a[j % 8] = u.mul_add(*v, a[j % 8]);
            }
            out[i * R_SCALAR + r] =
                ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
        }
    }
}

/// `(rows, most tokens)` per tile and the tile kernel of `level` (clamped to the CPU).
fn tile_kernel(level: SimdLevel) -> ((usize, usize), Tile) {
    match level {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => (x86m::TILE_512, x86m::tile_512),
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => (x86m::TILE_256, x86m::tile_256),
        _ => ((R_SCALAR, 8), tile_scalar),
    }
}

thread_local! {
    static ROWS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The fused multi-row kernel of `ty` at `level` (already clamped), where there is one:
/// AVX-512 and `cols` a multiple of 16.
#[cfg(target_arch = "x86_64")]
fn fused_kernel(level: SimdLevel, ty: GgmlType, cols: usize) -> Option<x86m::MultiFn> {
    use GgmlType::*;
    if level != SimdLevel::Avx512 || !cols.is_multiple_of(16) {
        return None;
    }
    Some(match ty {
        Q4_0 => x86m::multi_q4_0_512,
        Q4_1 => x86m::multi_q4_1_512,
        Q5_0 => x86m::multi_q5_0_512,
        Q5_1 => x86m::multi_q5_1_512,
        Q8_0 => x86m::multi_q8_0_512,
        Q4K => x86m::multi_q4_k_512,
        Q5K => x86m::multi_q5_k_512,
        Q6K => x86m::multi_q6_k_512,
        F16 => x86m::multi_f16_512,
        F32 => x86m::multi_f32_512,
        _ => return None,
    })
}

/// Up to this many tokens, AVX-512 decodes blocks into registers ([`matvec_fused_multi`]);
/// from it on the tiled path wins. Measured (`multi_row_timing`, one SmolLM2-135M layer on
/// one thread, AMD EPYC with AVX-512): t=2 fused-multi 268 us vs tiled 294 us; t=3 330 vs
/// 318; t=8 693 vs 527; t=16 1462 vs 1024.
const FUSED_MAX_T: usize = 2;

/// `y[i, r] = W[r] . x[i]` for `t` tokens, each weight block decoded once for all of them
/// (or once per 8 tokens): [`matvec_pair`] where it has a kernel (AVX-512, Q4_0/Q4_1/Q8_0),
/// else [`matvec_fused_multi`] for 2 tokens where available, else [`matvec_tiled`]. Same
/// contract as [`matvec`](super::matvec).
///
/// Two-row kernels measured against the others (`multi_row_timing`, one SmolLM2-135M Q4_1
/// layer plus a Q8_0 head slice, one thread, AMD EPYC Zen 4, best of 15, noisy machine):
/// t=2 pair 355 us vs fused-multi 408; t=3 414 vs tiled 545; t=4 471 vs 625; t=8 772 vs
/// 989; t=16 1558 vs 1732; t=32 3239 vs 3410 (GEMM 3420).
#[allow(clippy::too_many_arguments)]
pub fn matvec_multi(
    level: SimdLevel,
    ty: GgmlType,
    data: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    t: usize,
    y: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if pair_kernel(level.min(hw_simd_level()), ty, cols).is_some() {
        return matvec_pair(level, ty, data, rows, cols, x, t, y);
    }
    if t <= FUSED_MAX_T {
        matvec_fused_multi(level, ty, data, rows, cols, x, t, y)
    } else {
        matvec_tiled(level, ty, data, rows, cols, x, t, y)
    }
}

/// The two-row fused kernel of `ty` at `level` (already clamped), where there is one:
/// AVX-512, a type with a hand-written block decoder, and `cols` a multiple of 32.
#[cfg(target_arch = "x86_64")]
fn pair_kernel(level: SimdLevel, ty: GgmlType, cols: usize) -> Option<x86m::PairFn> {
    if level != SimdLevel::Avx512 || !cols.is_multiple_of(32) {
        return None;
    }
    match ty {
        GgmlType::Q4_0 => Some(x86m::pair_q4_0_512),
        GgmlType::Q4_1 => Some(x86m::pair_q4_1_512),
        GgmlType::Q8_0 => Some(x86m::pair_q8_0_512),
        _ => None,
    }
}

/// `y[i, r] = W[r] . x[i]` for `t` tokens: on AVX-512, for Q4_0, Q4_1 and Q8_0, two weight
/// rows at a time are decoded block by block into registers and dotted with up to 8 tokens
/// (an odd last row through the one-row fused kernel); elsewhere [`matvec_tiled`]. Same
/// contract as [`matvec`](super::matvec).
#[allow(clippy::too_many_arguments)]
pub fn matvec_pair(
    level: SimdLevel,
    ty: GgmlType,
    data: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    t: usize,
    y: &mut [f32],
) {
    check_shapes(ty, data, rows, cols, x, t, y);
    let level = level.min(hw_simd_level());
    #[cfg(target_arch = "x86_64")]
    if let (Some(k), Some(one)) = (pair_kernel(level, ty, cols), fused_kernel(level, ty, cols)) {
        let rb = ty.row_bytes(cols);
        let out = OutPtr(y.as_mut_ptr());
        par_rows(rows, rb, 16, |range| {
            let mut r = range.start;
            while r < range.end {
                let two = r + 2 <= range.end;
                let (step, most) = if two {
                    (2, x86m::PAIR_512)
                } else {
                    (1, x86m::MULTI_512)
                };
                let w = &data[r * rb..(r + step) * rb];
                let mut i0 = 0;
                while i0 < t {
                    let g = most.min(t - i0);
                    let o = out.get();
                    // SAFETY: AVX-512 is supported; `w` holds `step` rows of `cols` (a
                    // multiple of 32) weights, `x[i0 * cols..]` holds `g` rows; outputs
                    // `(i0 + i) * rows + r + j` (j < step) are in bounds and owned by this
                    // task's rows.
                    unsafe {
                        if two {
                            k(w, rb, &x[i0 * cols..], cols, g, o.add(i0 * rows + r), rows)
                        } else {
                            one(w, &x[i0 * cols..], cols, g, o.add(i0 * rows + r), rows)
                        }
                    };
                    i0 += g;
                }
                r += step;
            }
        });
        return;
    }
    matvec_tiled(level, ty, data, rows, cols, x, t, y)
}

/// `y[i, r] = W[r] . x[i]` for `t` tokens: on AVX-512 each 16 weights are decoded once into a
/// register and dotted with up to 16 tokens at a time; elsewhere (or for `cols` not a
/// multiple of 16) through [`matvec_tiled`]. Same contract as [`matvec`](super::matvec).
#[allow(clippy::too_many_arguments)]
pub fn matvec_fused_multi(
    level: SimdLevel,
    ty: GgmlType,
    data: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    t: usize,
    y: &mut [f32],
) {
    check_shapes(ty, data, rows, cols, x, t, y);
    let level = level.min(hw_simd_level());
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = fused_kernel(level, ty, cols) {
        let rb = ty.row_bytes(cols);
        let out = OutPtr(y.as_mut_ptr());
        par_rows(rows, rb, 16, |range| {
            for r in range {
                let row = &data[r * rb..(r + 1) * rb];
                let mut i0 = 0;
                while i0 < t {
                    let g = x86m::MULTI_512.min(t - i0);
                    // SAFETY: AVX-512 is supported; `row` is one row of `cols` (a multiple
                    // of 16) weights, `x[i0 * cols..]` holds `g` rows; outputs
                    // `(i0 + i) * rows + r` are in bounds and owned by this task's rows.
                    unsafe {
                        k(
                            row,
                            &x[i0 * cols..],
                            cols,
                            g,
                            out.get().add(i0 * rows + r),
                            rows,
                        )
                    };
                    i0 += g;
                }
            }
        });
        return;
    }
    matvec_tiled(level, ty, data, rows, cols, x, t, y)
}

/// `y[i, r] = W[r] . x[i]` for `t` tokens: unpack `R` weight rows at a time into an `f32`
/// buffer, then dot them with every token in groups of `G`. Same contract as
/// [`matvec`](super::matvec).
#[allow(clippy::too_many_arguments)]
pub fn matvec_tiled(
    level: SimdLevel,
    ty: GgmlType,
    data: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    t: usize,
    y: &mut [f32],
) {
    check_shapes(ty, data, rows, cols, x, t, y);
    let level = level.min(hw_simd_level());
    let un = unpacker(level, ty);
    let ((rt, gt), tile) = tile_kernel(level);
    let rb = ty.row_bytes(cols);
    let out = OutPtr(y.as_mut_ptr());
    par_rows(rows, rb, 16, |range| {
        ROWS.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.resize(rt * cols, 0.0);
            let mut tmp = [0f32; 64];
            let mut r0 = range.start;
            while r0 < range.end {
                let nr = rt.min(range.end - r0);
                for (j, dst) in buf.chunks_exact_mut(cols).enumerate() {
                    if j < nr {
                        let r = r0 + j;
                        // SAFETY: the unpacker is of a supported level; lengths match.
                        unsafe { un.run(ty, &data[r * rb..(r + 1) * rb], dst) };
                    } else {
                        dst.fill(0.0);
                    }
                }
                let mut i0 = 0;
                while i0 < t {
                    let g = gt.min(t - i0);
                    // SAFETY: the tile is of a supported level; `buf` holds `rt` rows and
                    // `x[i0 * cols..]` at least `g` rows of `cols`; `tmp` holds `g x rt`.
                    unsafe { tile(&buf, &x[i0 * cols..], cols, g, &mut tmp) };
                    for i in 0..g {
                        for j in 0..nr {
                            // SAFETY: row `r0 + j` belongs to this task's range; in bounds.
                            unsafe { *out.get().add((i0 + i) * rows + r0 + j) = tmp[i * rt + j] };
                        }
                    }
                    i0 += g;
                }
                r0 += nr;
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::super::tests::{levels, naive, random_matrix, Lcg, TYPES};
    use super::*;

    #[test]
    fn unpackers_equal_the_reference_decoder() {
        let mut rng = Lcg(3);
        for ty in TYPES {
            let bs = ty.block_size();
            let cols = if bs == 1 { 77 } else { bs.max(32) * 3 };
            let data = random_matrix(ty, 2, cols, &mut rng);
            let rb = ty.row_bytes(cols);
            for r in 0..2 {
                let row = &data[r * rb..(r + 1) * rb];
                let mut want = vec![0f32; cols];
                dequantize_row(ty, row, &mut want);
                for level in levels() {
                    let mut got = vec![f32::NAN; cols];
                    unpack_row_at(level, ty, row, &mut got);
                    for (k, (a, b)) in got.iter().zip(&want).enumerate() {
                        // fma vs mul + add: one rounding apart at most.
                        assert!(
                            (a - b).abs() <= 1e-6 * b.abs().max(1e-3),
                            "{} {level:?} [{k}]: {a} vs {b}",
                            ty.name()
                        );
                    }
                }
            }
        }
    }

    /// The SIMD panel fill equals the scalar `dequant_rows` reference (one rounding apart:
    /// fma vs mul + add), for full and partial tiles and odd column counts.
    #[test]
    fn panels_equal_the_scalar_reference() {
        const NR: usize = super::super::NR;
        let mut rng = Lcg(21);
        for ty in TYPES {
            let bs = ty.block_size();
            let cols = if bs == 1 { 77 } else { bs.max(32) * 3 };
            let rows = 45;
            let data = random_matrix(ty, rows, cols, &mut rng);
            for (r0, nr) in [(0, NR), (NR, rows - NR), (3, 5)] {
                let mut buf = vec![0f32; cols];
                let mut want = vec![f32::NAN; NR * cols];
                super::super::dequant_rows(ty, &data, cols, r0, nr, &mut buf, &mut want);
                for level in levels() {
                    let mut buf = vec![f32::NAN; 8 * cols];
                    let mut got = vec![f32::NAN; NR * cols];
                    fill_panel(level, ty, &data, cols, r0, nr, &mut buf, &mut got);
                    for (k, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (a - b).abs() <= 1e-6 * b.abs().max(1e-3),
                            "{} {level:?} r0={r0} nr={nr} [{k}]: {a} vs {b}",
                            ty.name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn multi_row_matvec_matches_reference_for_every_type_level_and_t() {
        let mut rng = Lcg(13);
        type Path = fn(SimdLevel, GgmlType, &[u8], usize, usize, &[f32], usize, &mut [f32]);
        let paths: [(&str, Path); 4] = [
            ("multi", matvec_multi),
            ("fused_multi", matvec_fused_multi),
            ("tiled", matvec_tiled),
            ("pair", matvec_pair),
        ];
        for ty in TYPES {
            let bs = ty.block_size();
            let col_choices: Vec<usize> = if bs == 1 {
                vec![5, 37, 48, 101]
            } else {
                vec![bs.max(32), bs.max(32) * 3]
            };
            for cols in col_choices {
                for rows in [1, 6, 9] {
                    let data = random_matrix(ty, rows, cols, &mut rng);
                    for t in 1..=17 {
                        let x: Vec<f32> = (0..t * cols).map(|_| rng.unit()).collect();
                        let want = naive(ty, &data, rows, cols, &x, t);
                        for level in levels() {
                            for (name, f) in paths {
                                let mut y = vec![f32::NAN; t * rows];
                                f(level, ty, &data, rows, cols, &x, t, &mut y);
                                for (j, &(w, mag)) in want.iter().enumerate() {
                                    assert!(
                                        (y[j] as f64 - w).abs() < 2e-6 * mag + 1e-6,
                                        "{name} {} {level:?} cols={cols} rows={rows} t={t} [{j}]: {} vs {w}",
                                        ty.name(),
                                        y[j]
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod bench {
    use std::time::Instant;

    use super::super::tests::{smollm2_layer, Lcg};
    use super::super::{default_level, gemm, matvec_fused};
    use super::*;

    /// One SmolLM2-135M layer (Q4_1) plus a slice of its Q8_0 head, by path and token count
    /// (timing only; run by hand, single thread):
    /// `RAYON_NUM_THREADS=1 cargo test --release -p alpaca --lib multi_row_timing -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn multi_row_timing() {
        let mut rng = Lcg(1);
        let mats = smollm2_layer(&mut rng);
        let level = default_level();
        type Path = fn(SimdLevel, GgmlType, &[u8], usize, usize, &[f32], usize, &mut [f32]);
        let paths: [(&str, Path); 5] = [
            ("fused", matvec_fused),
            ("multi", matvec_fused_multi),
            ("tiled", matvec_tiled),
            ("gemm", gemm),
            ("pair", matvec_pair),
        ];
        for t in [0usize, 1, 2, 3, 4, 8, 12, 16, 24, 32, 40, 48, 64] {
            let x: Vec<f32> = (0..t * 1536).map(|_| rng.unit()).collect();
            let mut best = [f64::INFINITY; 5];
            for _ in 0..15 {
                for (p, (_, f)) in paths.iter().enumerate() {
                    let t0 = Instant::now();
                    for (ty, r, c, d) in &mats {
                        let mut y = vec![0f32; t * r];
                        f(level, *ty, d, *r, *c, &x[..t * c], t, &mut y);
                    }
                    best[p] = best[p].min(t0.elapsed().as_secs_f64());
                }
            }
            eprintln!(
                "t={t:2}: fused {:7.1} us  multi {:7.1} us  tiled {:7.1} us  gemm {:7.1} us  pair {:7.1} us",
                best[0] * 1e6,
                best[1] * 1e6,
                best[2] * 1e6,
                best[3] * 1e6,
                best[4] * 1e6
            );
        }
    }
}
