//! Quantized matrix kernels: `y = x W^T` with `W` in its ggml format and `x` in `f32`.
//!
//! - Decode (`t` small): one fused dequantize + dot per weight row ([`RowDot`]). The scale
//!   (and min) of each block is factored out of the inner loop: for Q4_1,
//!   `sum_j (d q_j + m) x_j = d sum_j q_j x_j + m sum_j x_j`, with the per-block sums of `x`
//!   ([`block_sums`]) computed once per matrix-vector product. Hand-written AVX-512 and
//!   AVX2+FMA versions live in `kernels_x86.rs`; the scalar versions here are the portable
//!   fallback and the reference the fast ones are tested against.
//! - Several decode tokens (`2 <= t < GEMM_MIN_T`): multi-row kernels (`kernels_multi.rs`)
//!   decode each weight block once for all tokens and dot it with each of them.
//! - Prompts (`t >= GEMM_MIN_T`): a GEMM tiled over 32 weight rows. Each tile is dequantized
//!   once into a k-major `f32` panel (cache resident), then multiplied against blocks of
//!   tokens by a register-blocked micro-kernel (12 tokens x 32 rows on AVX-512).
//!
//! Activations stay `f32` everywhere, so results equal the dequantize-then-`f32` reference
//! up to summation order (greedy parity with transformers depends on that).

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use crate::model::ops::{dispatch, hw_simd_level, simd_level, SimdLevel};
use crate::model::quant::{dequantize_row, GgmlType};

#[cfg(target_arch = "x86_64")]
use crate::model::kernels_x86 as x86;

#[path = "kernels_multi.rs"]
mod multi;
pub use multi::{matvec_fused_multi, matvec_multi, matvec_pair, matvec_tiled, unpack_row_at};

/// A fused row kernel: `(row bytes, x, block sums of x) -> W[r] . x`.
///
/// Unsafe to call: the kernel may use CPU features; [`row_kernel`] only hands out kernels of
/// levels the CPU supports, and lengths must match (`row.len() == ty.row_bytes(x.len())`,
/// `xs.len() >= x.len() / 32` when `x.len() >= 32`).
pub type RowDot = unsafe fn(&[u8], &[f32], &[f32]) -> f32;

/// Below this many tokens, [`QMatrix::matmul`](crate::model::linear::QMatrix::matmul) uses
/// [`matvec`] (multi-row kernels from 2 tokens); from it on, the tiled GEMM. Measured on one
/// thread over one SmolLM2-135M layer (`multi_row_timing`): multi-row vs GEMM 527 vs
/// 3196 us at t=8, 1024 vs 3498 at t=16, 2091 vs 4096 at t=32: the GEMM's up-front
/// dequantization into panels only pays off for long prompts.
pub const GEMM_MIN_T: usize = 32;

/// Rows per GEMM panel.
const NR: usize = 32;

/// Whether the CPU can run kernels of `level`.
pub fn available(level: SimdLevel) -> bool {
    level <= hw_simd_level()
}

/// The row kernel of `ty` at `level` (clamped to what the CPU supports).
pub fn row_kernel(level: SimdLevel, ty: GgmlType) -> RowDot {
    let level = level.min(hw_simd_level());
    #[cfg(target_arch = "x86_64")]
    {
        use GgmlType::*;
        let k: Option<RowDot> = match level {
            SimdLevel::Avx512 => match ty {
                Q4_0 => Some(x86::q4_0_512),
                Q4_1 => Some(x86::q4_1_512),
                Q5_0 => Some(x86::q5_0_512),
                Q5_1 => Some(x86::q5_1_512),
                Q8_0 => Some(x86::q8_0_512),
                Q4K => Some(x86::q4_k_512),
                Q5K => Some(x86::q5_k_512),
                Q6K => Some(x86::q6_k_512),
                F32 => Some(x86::f32_512),
                F16 => Some(x86::f16_512),
                _ => None,
            },
            SimdLevel::Avx2 => match ty {
                Q4_0 => Some(x86::q4_0_256),
                Q4_1 => Some(x86::q4_1_256),
                Q5_0 => Some(x86::q5_0_256),
                Q5_1 => Some(x86::q5_1_256),
                Q8_0 => Some(x86::q8_0_256),
                Q4K => Some(x86::q4_k_256),
                Q5K => Some(x86::q5_k_256),
                Q6K => Some(x86::q6_k_256),
                _ => None,
            },
            SimdLevel::Scalar => None,
        };
        if let Some(k) = k {
            return k;
        }
    }
    generic_kernel(ty)
}

/// `W[r] . x` for one row through the kernel of `level` (tests call every level directly).
/// Panics if the CPU lacks `level` or the lengths do not match.
pub fn dot_row_at(level: SimdLevel, ty: GgmlType, row: &[u8], x: &[f32], xs: &[f32]) -> f32 {
    assert!(available(level), "CPU lacks {level:?}");
    assert_eq!(row.len(), ty.row_bytes(x.len()));
    assert!(xs.len() >= x.len() / 32);
    // SAFETY: the level is supported and the lengths were checked.
    unsafe { row_kernel(level, ty)(row, x, xs) }
}

/// `out[b] = sum(x[32 b .. 32 b + 32])` (the last partial block too).
pub fn block_sums(x: &[f32], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(x.chunks(32)) {
        let mut a = [0f32; 8];
        for (i, v) in c.iter().enumerate() {
            a[i % 8] += v;
        }
        *o = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
    }
}

// ------------------------------------------------------------------------------------------
// Portable kernels (the reference)
// ------------------------------------------------------------------------------------------

/// Weights decoded per step by the generic kernel (a multiple of every block size).
const STEP: usize = 256;

fn generic_kernel(ty: GgmlType) -> RowDot {
    use GgmlType::*;
    match ty {
        Q4_0 => scalar_q4_0,
        Q4_1 => scalar_q4_1,
        Q8_0 => scalar_q8_0,
        F32 => generic_dot::<0>,
        F16 => generic_dot::<1>,
        Q5_0 => generic_dot::<6>,
        Q5_1 => generic_dot::<7>,
        Q4K => generic_dot::<12>,
        Q5K => generic_dot::<13>,
        Q6K => generic_dot::<14>,
        BF16 => generic_dot::<30>,
        other => panic!("no kernel for weight type {}", other.name()),
    }
}

/// Any supported type (ggml code `C`): decode `STEP` weights into a stack buffer, dot,
/// repeat. Compiled for the current level by `dispatch!` (vector code for F16/BF16 too).
unsafe fn generic_dot<const C: u32>(row: &[u8], x: &[f32], _xs: &[f32]) -> f32 {
    let ty = GgmlType::from_code(C).expect("known code");
    generic_dot_impl(ty, row, x)
}

dispatch!(generic_dot_impl(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    let n = x.len();
    let (bs, ts) = (ty.block_size(), ty.type_size());
    let mut buf = [0f32; STEP];
    let mut acc = 0f32;
    let mut i = 0;
    while i < n {
        let m = STEP.min(n - i);
        let src = &row[i / bs * ts..(i + m) / bs * ts];
        dequantize_row(ty, src, &mut buf[..m]);
        let mut a = [0f32; 8];
        for (j, (w, v)) in buf[..m].iter().zip(&x[i..i + m]).enumerate() {
            a[j % 8] += w * v;
        }
        acc += ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
        i += m;
    }
    acc
});

#[inline(always)]
fn f16le(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

unsafe fn scalar_q4_0(row: &[u8], x: &[f32], _xs: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (blk, xb) in row.chunks_exact(18).zip(x.chunks_exact(32)) {
        let d = f16le(blk, 0);
        let mut s = 0f32;
        for j in 0..16 {
            let q = blk[2 + j];
            s += ((q & 0xF) as i32 - 8) as f32 * xb[j] + ((q >> 4) as i32 - 8) as f32 * xb[j + 16];
        }
        acc += d * s;
    }
    acc
}

unsafe fn scalar_q4_1(row: &[u8], x: &[f32], xs: &[f32]) -> f32 {
    let mut acc = 0f32;
    for ((blk, xb), sx) in row.chunks_exact(20).zip(x.chunks_exact(32)).zip(xs) {
        let (d, m) = (f16le(blk, 0), f16le(blk, 2));
        let mut s = 0f32;
        for j in 0..16 {
            let q = blk[4 + j];
            s += (q & 0xF) as f32 * xb[j] + (q >> 4) as f32 * xb[j + 16];
        }
        acc += d * s + m * sx;
    }
    acc
}

unsafe fn scalar_q8_0(row: &[u8], x: &[f32], _xs: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (blk, xb) in row.chunks_exact(34).zip(x.chunks_exact(32)) {
        let d = f16le(blk, 0);
        let mut s = 0f32;
        for j in 0..32 {
            s += (blk[2 + j] as i8) as f32 * xb[j];
        }
        acc += d * s;
    }
    acc
}

// ------------------------------------------------------------------------------------------
// Drivers
// ------------------------------------------------------------------------------------------

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
pub(super) struct OutPtr(*mut f32);
// SAFETY: tasks only write disjoint indices (each owns a range of weight rows).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    pub(super) fn new(y: &mut [f32]) -> Self {
        OutPtr(y.as_mut_ptr())
    }

    /// The pointer (a method, so closures capture the `Sync` wrapper, not the raw field).
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Run `f` over `0..rows` in contiguous ranges: serially for one thread or little work,
/// else as a few rayon tasks per thread (load balance on a busy machine).
pub(super) fn par_rows(
    rows: usize,
    bytes_per_row: usize,
    align: usize,
    f: impl Fn(Range<usize>) + Sync,
) {
    let threads = rayon::current_num_threads().max(1);
    // Below ~64 KiB of weights a fork-join costs more than it saves.
    if threads == 1 || rows * bytes_per_row < (64 << 10) || rows <= align {
        f(0..rows);
        return;
    }
    let tasks = (threads * 4).min(rows.div_ceil(align));
    let per = rows.div_ceil(tasks).div_ceil(align) * align;
    let tasks = rows.div_ceil(per);
    (0..tasks)
        .into_par_iter()
        .for_each(|i| f(i * per..((i + 1) * per).min(rows)));
}

/// Runs `f` on this thread's `key` buffer, or on a fresh one when this thread already
/// holds it: a thread waiting inside a parallel loop runs other rayon tasks (another
/// product of a `rayon::join`, say), which may land in the same function again.
pub(crate) fn with_scratch<T: Default + 'static, R>(
    key: &'static std::thread::LocalKey<RefCell<T>>,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut b) => f(&mut b),
        Err(_) => f(&mut T::default()),
    })
}

thread_local! {
    static XS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The shapes every matrix product here relies on (its unsafe code indexes by them):
/// `data` holds `rows` rows of `cols` values in `ty`, `x` is `t x cols`, `y` is `t x rows`.
pub(super) fn check_shapes(
    ty: GgmlType,
    data: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    t: usize,
    y: &[f32],
) {
    assert_eq!(data.len(), rows * ty.row_bytes(cols));
    assert_eq!(x.len(), t * cols);
    assert_eq!(y.len(), t * rows);
}

/// `y[i, r] = W[r] . x[i]` for `t` decode tokens, weights `data` of `rows` rows of `cols`
/// values in `ty`: one token through the fused row kernels ([`matvec_fused`]), several
/// through the multi-row kernels ([`matvec_multi`]: each row decoded once for all tokens).
/// Weight rows are the outer loop, so each row is read from memory once.
#[allow(clippy::too_many_arguments)]
pub fn matvec(
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
    if t >= 2 {
        matvec_multi(level, ty, data, rows, cols, x, t, y)
    } else {
        matvec_fused(level, ty, data, rows, cols, x, t, y)
    }
}

/// [`matvec`] through the fused row kernels for every token (the `t = 1` path; with more
/// tokens each block is decoded again per token, which [`matvec_multi`] avoids).
#[allow(clippy::too_many_arguments)]
pub fn matvec_fused(
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
    let kern = row_kernel(level, ty);
    let nb = cols.div_ceil(32);
    let rb = ty.row_bytes(cols);
    // Held across `par_rows`: see `with_scratch`.
    with_scratch(&XS, |xs| {
        xs.resize(t * nb, 0.0);
        for (o, xr) in xs.chunks_exact_mut(nb).zip(x.chunks_exact(cols)) {
            block_sums(xr, o);
        }
        let xs = &xs[..];
        let out = OutPtr(y.as_mut_ptr());
        par_rows(rows, rb, 16, |range| {
            for r in range {
                let row = &data[r * rb..(r + 1) * rb];
                for i in 0..t {
                    let xi = &x[i * cols..(i + 1) * cols];
                    let si = &xs[i * nb..(i + 1) * nb];
                    // SAFETY: `kern` is of a supported level; lengths match (checked above).
                    // `i * rows + r` is in bounds and owned by this task's row range.
                    unsafe { *out.get().add(i * rows + r) = kern(row, xi, si) };
                }
            }
        });
    });
}

dispatch!(dequant_rows(ty: GgmlType, data: &[u8], cols: usize, r0: usize, nr: usize, buf: &mut [f32], panel: &mut [f32]) -> () {
    // Dequantize rows r0..r0+nr and store them k-major, NR wide; missing rows are zero.
    // The portable path and the reference of `multi::fill_panel` (SIMD unpack + transpose).
    let rb = ty.row_bytes(cols);
    for j in 0..NR {
        if j < nr {
            let r = r0 + j;
            dequantize_row(ty, &data[r * rb..(r + 1) * rb], buf);
            for (k, v) in buf.iter().enumerate() {
                panel[k * NR + j] = *v;
            }
        } else {
            for k in 0..cols {
                panel[k * NR + j] = 0.0;
            }
        }
    }
});

/// Portable micro-kernel: `out[i][r] = sum_k x[i][k] panel[k][r]` for `mr` tokens.
fn gemm_scalar(panel: &[f32], x: &[f32], ldx: usize, k: usize, mr: usize, out: &mut [f32]) {
    for i in 0..mr {
        let mut acc = [0f32; NR];
        let xi = &x[i * ldx..i * ldx + k];
        for (kk, b) in xi.iter().enumerate() {
            let w = &panel[kk * NR..kk * NR + NR];
            for r in 0..NR {
                acc[r] += w[r] * b;
            }
        }
        out[i * NR..i * NR + NR].copy_from_slice(&acc);
    }
}

/// `y = x W^T` for `t` tokens by the tiled GEMM.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
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
    let mr_max = match level {
        SimdLevel::Avx512 => MR_512,
        SimdLevel::Avx2 => MR_256,
        SimdLevel::Scalar => 4,
    };
    let out = OutPtr(y.as_mut_ptr());
    let tiles = rows.div_ceil(NR);
    let body = |tile: usize| {
        let r0 = tile * NR;
        let nr = NR.min(rows - r0);
        PANEL.with(|p| {
            let mut p = p.borrow_mut();
            p.resize(cols * (NR + 8), 0.0);
            let (panel, buf) = p.split_at_mut(cols * NR);
            multi::fill_panel(level, ty, data, cols, r0, nr, buf, panel);
            let mut tmp = [0f32; 16 * NR];
            let mut i0 = 0;
            while i0 < t {
                let mr = mr_max.min(t - i0);
                let xs = &x[i0 * cols..];
                match level {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: the CPU supports the level (clamped above); `xs` holds `mr`
                    // rows of `cols`, the panel `cols x NR`, `tmp` `mr x NR`.
                    SimdLevel::Avx512 => unsafe {
                        x86::gemm_512(panel, xs, cols, cols, mr, &mut tmp)
                    },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above.
                    SimdLevel::Avx2 => unsafe {
                        x86::gemm_256(panel, xs, cols, cols, mr, &mut tmp)
                    },
                    _ => gemm_scalar(panel, xs, cols, cols, mr, &mut tmp),
                }
                for i in 0..mr {
                    let src = &tmp[i * NR..i * NR + nr];
                    // SAFETY: row `i0 + i`, columns `r0..r0 + nr` belong to this tile only.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            src.as_ptr(),
                            out.get().add((i0 + i) * rows + r0),
                            nr,
                        )
                    };
                }
                i0 += mr;
            }
        });
    };
    if rayon::current_num_threads() == 1 || tiles == 1 {
        (0..tiles).for_each(body);
    } else {
        (0..tiles).into_par_iter().for_each(body);
    }
}

#[cfg(target_arch = "x86_64")]
use x86::{MR_256, MR_512};
#[cfg(not(target_arch = "x86_64"))]
const MR_512: usize = 4;
#[cfg(not(target_arch = "x86_64"))]
const MR_256: usize = 4;

/// The level [`QMatrix::matmul`](crate::model::linear::QMatrix::matmul) uses.
pub fn default_level() -> SimdLevel {
    simd_level()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use half::{bf16, f16};

    pub(crate) struct Lcg(pub(crate) u64);
    impl Lcg {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        pub(crate) fn unit(&mut self) -> f32 {
            (self.next() as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        }
    }

    pub(super) const TYPES: [GgmlType; 11] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];

    /// One SmolLM2-135M layer's matrices (Q4_1: q, k, v, o, gate, up, down) plus a slice of
    /// its Q8_0 head, as `(type, rows, cols, random bytes)`: the timing tests' workload.
    pub(crate) fn smollm2_layer(rng: &mut Lcg) -> Vec<(GgmlType, usize, usize, Vec<u8>)> {
        let q41 = GgmlType::Q4_1;
        [
            (q41, 576, 576),
            (q41, 192, 576),
            (q41, 192, 576),
            (q41, 576, 576),
            (q41, 1536, 576),
            (q41, 1536, 576),
            (q41, 576, 1536),
            (GgmlType::Q8_0, 1536, 576),
        ]
        .into_iter()
        .map(|(ty, r, c)| (ty, r, c, random_matrix(ty, r, c, rng)))
        .collect()
    }

    /// Random valid bytes of `rows` rows of `cols` weights: random quants, sane f16 scales.
    pub(crate) fn random_matrix(ty: GgmlType, rows: usize, cols: usize, rng: &mut Lcg) -> Vec<u8> {
        let n = rows * cols;
        match ty {
            GgmlType::F32 => (0..n).flat_map(|_| rng.unit().to_le_bytes()).collect(),
            GgmlType::F16 => (0..n)
                .flat_map(|_| f16::from_f32(rng.unit()).to_le_bytes())
                .collect(),
            GgmlType::BF16 => (0..n)
                .flat_map(|_| bf16::from_f32(rng.unit()).to_le_bytes())
                .collect(),
            _ => {
                let ts = ty.type_size();
                let mut b: Vec<u8> = (0..rows * ty.row_bytes(cols))
                    .map(|_| rng.next() as u8)
                    .collect();
                let scales: &[usize] = match ty {
                    GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
                    GgmlType::Q6K => &[208],
                    _ => &[0],
                };
                for blk in b.chunks_exact_mut(ts) {
                    for &o in scales {
                        let v = f16::from_f32(rng.unit() * 0.05).to_le_bytes();
                        blk[o..o + 2].copy_from_slice(&v);
                    }
                }
                b
            }
        }
    }

    pub(super) fn levels() -> Vec<SimdLevel> {
        [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512]
            .into_iter()
            .filter(|l| available(*l))
            .collect()
    }

    /// Reference: dequantize (quant.rs), dot in f64. Returns (value, sum |w x|).
    fn reference(ty: GgmlType, row: &[u8], x: &[f32]) -> (f64, f64) {
        let mut w = vec![0f32; x.len()];
        dequantize_row(ty, row, &mut w);
        let s = w.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64).sum();
        let m = w
            .iter()
            .zip(x)
            .map(|(a, b)| (*a as f64 * *b as f64).abs())
            .sum();
        (s, m)
    }

    #[test]
    fn row_kernels_match_reference_at_every_level() {
        let mut rng = Lcg(7);
        for ty in TYPES {
            let bs = ty.block_size().max(32);
            for nblocks in [1, 2, 3, 7] {
                let cols = bs * nblocks + if ty.block_size() == 1 { 5 } else { 0 };
                let rows = 5;
                let data = random_matrix(ty, rows, cols, &mut rng);
                let x: Vec<f32> = (0..cols).map(|_| rng.unit()).collect();
                let mut xs = vec![0f32; cols.div_ceil(32)];
                block_sums(&x, &mut xs);
                let rb = ty.row_bytes(cols);
                for level in levels() {
                    for r in 0..rows {
                        let row = &data[r * rb..(r + 1) * rb];
                        let got = dot_row_at(level, ty, row, &x, &xs) as f64;
                        let (want, mag) = reference(ty, row, &x);
                        assert!(
                            (got - want).abs() <= 2e-6 * mag + 1e-6,
                            "{} {level:?} cols={cols} row {r}: {got} vs {want}",
                            ty.name()
                        );
                    }
                }
            }
        }
    }

    /// Reference `(value, magnitude)` of every output.
    pub(super) fn naive(
        ty: GgmlType,
        data: &[u8],
        rows: usize,
        cols: usize,
        x: &[f32],
        t: usize,
    ) -> Vec<(f64, f64)> {
        let rb = ty.row_bytes(cols);
        let mut y = vec![(0f64, 0f64); t * rows];
        for i in 0..t {
            for r in 0..rows {
                let (row, xi) = (&data[r * rb..(r + 1) * rb], &x[i * cols..(i + 1) * cols]);
                y[i * rows + r] = reference(ty, row, xi);
            }
        }
        y
    }

    fn check_drivers(ty: GgmlType, rows: usize, cols: usize, ts: &[usize], rng: &mut Lcg) {
        let data = random_matrix(ty, rows, cols, rng);
        for &t in ts {
            let x: Vec<f32> = (0..t * cols).map(|_| rng.unit()).collect();
            let want = naive(ty, &data, rows, cols, &x, t);
            for level in levels() {
                let mut y = vec![f32::NAN; t * rows];
                matvec(level, ty, &data, rows, cols, &x, t, &mut y);
                let mut g = vec![f32::NAN; t * rows];
                gemm(level, ty, &data, rows, cols, &x, t, &mut g);
                for (j, &(w, mag)) in want.iter().enumerate() {
                    let tol = 2e-6 * mag + 1e-6;
                    assert!(
                        (y[j] as f64 - w).abs() < tol,
                        "matvec {} {level:?} t={t} [{j}]: {} vs {w}",
                        ty.name(),
                        y[j]
                    );
                    assert!(
                        (g[j] as f64 - w).abs() < tol,
                        "gemm {} {level:?} t={t} [{j}]: {} vs {w}",
                        ty.name(),
                        g[j]
                    );
                }
            }
        }
    }

    #[test]
    fn matvec_and_gemm_match_reference_on_odd_shapes() {
        let mut rng = Lcg(11);
        for ty in TYPES {
            let cols = ty.block_size().max(32) * 3;
            for rows in [1, 31, 33, 70] {
                check_drivers(ty, rows, cols, &[1, 2, 3, 4, 5, 13, 17], &mut rng);
            }
        }
    }

    #[test]
    fn parallel_drivers_match_reference() {
        // Big enough to split into tasks: 300 rows x 512 cols of F32 = 600 KiB.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .expect("pool");
        pool.install(|| {
            let mut rng = Lcg(5);
            for ty in [GgmlType::F32, GgmlType::Q4_1, GgmlType::Q6K] {
                check_drivers(ty, 300, 512, &[1, 3, 29], &mut rng);
            }
        });
    }

    /// One-token products run concurrently under `rayon::join` (as the batched step does)
    /// equal the products run one by one. A thread waiting inside one product's parallel
    /// loop may run another product, so the buffer it holds across the loop is taken with
    /// `try_borrow_mut` and a fresh one otherwise; this schedule may or may not hit that
    /// re-entry on a given run (rayon steals the oldest job first).
    #[test]
    fn joined_products_on_a_pool_equal_serial_ones() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .expect("pool");
        let mut rng = Lcg(9);
        let (rows, cols) = (256, 512);
        let level = default_level();
        for ty in [GgmlType::F32, GgmlType::Q4_1, GgmlType::Q8_0] {
            let data: Vec<Vec<u8>> = (0..3)
                .map(|_| random_matrix(ty, rows, cols, &mut rng))
                .collect();
            let x: Vec<f32> = (0..cols).map(|_| rng.unit()).collect();
            let mut want = vec![vec![0f32; rows]; 3];
            for (d, w) in data.iter().zip(want.iter_mut()) {
                matvec(level, ty, d, rows, cols, &x, 1, w);
            }
            pool.install(|| {
                for _ in 0..200 {
                    let mut got = vec![vec![f32::NAN; rows]; 3];
                    let [a, b, c] = &mut got[..] else {
                        unreachable!()
                    };
                    rayon::join(
                        || matvec(level, ty, &data[0], rows, cols, &x, 1, a),
                        || {
                            rayon::join(
                                || matvec(level, ty, &data[1], rows, cols, &x, 1, b),
                                || matvec(level, ty, &data[2], rows, cols, &x, 1, c),
                            )
                        },
                    );
                    assert_eq!(got, want, "{}", ty.name());
                }
            });
        }
    }

    #[test]
    fn block_sums_cover_partial_blocks() {
        let x: Vec<f32> = (0..70).map(|i| i as f32).collect();
        let mut s = vec![0f32; 3];
        block_sums(&x, &mut s);
        assert_eq!(s, vec![496.0, 1520.0, 399.0]);
    }
}
