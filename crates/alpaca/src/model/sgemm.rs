//! Our own `f32` GEMM: `c[m,n] = alpha * a[m,k] b[k,n] + beta * c`, any strides.
//!
//! GotoBLAS/BLIS structure: for each `nc`-wide block of columns and `kc`-deep slice of `k`,
//! B is packed into `kc x NR` micro-panels (L3 resident); for each `mc`-tall block of rows,
//! A is packed into `MR x kc` micro-panels (L2 resident); a register-blocked micro-kernel
//! then walks the B micro-panels (L1 resident) against every A micro-panel. Edge tiles go
//! through a stack tile. Micro-kernels: AVX-512 (`8 x 48`; `8 x 32` for attention's 64-wide
//! outputs, [`plan_wide32`]), AVX2+FMA (`6 x 16`) and a portable one, chosen at run time
//! ([`simd_level`]). Parallel with rayon over blocks of the output; serial (no rayon) when the
//! pool has one thread. Packing buffers are thread-local and reused, so steady-state calls do
//! not allocate.

// BLAS-style signatures: the dimensions are the arguments.
#![allow(clippy::too_many_arguments)]

use std::cell::Cell;

use rayon::prelude::*;

use crate::model::ops::{hw_simd_level, simd_level, SimdLevel};
#[cfg(target_arch = "x86_64")]
use crate::model::sgemm_x86 as x86;

/// `(kc, a panel, b panel, c, c row stride, alpha, beta)`: one full tile, see `sgemm_x86`.
type MicroKernel = unsafe fn(usize, *const f32, *const f32, *mut f32, usize, f32, f32);

/// Register tile and cache blocking of one micro-kernel.
#[derive(Clone, Copy)]
pub struct Plan {
    pub mr: usize,
    pub nr: usize,
    pub kc: usize,
    pub mc: usize,
    pub nc: usize,
    /// Whether AVX2 packing (8 x 8 transposes) may be used.
    simd: bool,
    kern: MicroKernel,
}

/// The largest `mr * nr` of any plan (edge tiles go through a stack buffer this big).
const MAX_TILE: usize = 512;

/// The plan of `level` (clamped to what the CPU supports).
pub fn plan(level: SimdLevel) -> Plan {
    match level.min(hw_simd_level()) {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => Plan {
            mr: 8,
            nr: 48,
            kc: 288,
            mc: 256,
            nc: 3072,
            simd: true,
            kern: x86::kern512::<8, 3>,
        },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => Plan {
            mr: 6,
            nr: 16,
            kc: 256,
            mc: 240,
            nc: 3072,
            simd: true,
            kern: x86::kern256::<6, 2>,
        },
        _ => Plan {
            mr: 4,
            nr: 16,
            kc: 256,
            mc: 128,
            nc: 2048,
            simd: false,
            kern: kern_scalar::<4, 16>,
        },
    }
}

/// The plan for products whose output width is a multiple of 32 (attention: the head dim 64
/// and the causal key blocks): the AVX-512 `8 x 32` tile, where the `8 x 48` one covers 64
/// columns with a two-thirds-empty edge panel (attention forward 1.15x, backward 1.34x at
/// SmolLM2's shape, `attention_timing`). Other levels keep their tile (16 divides 32).
pub fn plan_wide32(level: SimdLevel) -> Plan {
    let p = plan(level);
    #[cfg(target_arch = "x86_64")]
    if p.nr == 48 {
        return Plan {
            mr: 8,
            nr: 32,
            kc: 256,
            mc: 256,
            kern: x86::kern512::<8, 2>,
            ..p
        };
    }
    p
}

/// Alternative AVX-512 tiles, for the benchmark (`None` without AVX-512).
pub fn plan_variants() -> Vec<(&'static str, Plan)> {
    #[allow(unused_mut)]
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    if hw_simd_level() == SimdLevel::Avx512 {
        let p = plan(SimdLevel::Avx512);
        let k = |mr, nr, kc, mc, kern| Plan {
            mr,
            nr,
            kc,
            mc,
            kern,
            ..p
        };
        v.push(("8x48 kc288", p));
        v.push(("8x48 kc128", k(8, 48, 128, 256, x86::kern512::<8, 3>)));
        v.push(("8x48 kc256", k(8, 48, 256, 256, x86::kern512::<8, 3>)));
        v.push(("14x32 kc256", k(14, 32, 256, 252, x86::kern512::<14, 2>)));
        v.push(("6x64 kc192", k(6, 64, 192, 252, x86::kern512::<6, 4>)));
    }
    v
}

/// Portable micro-kernel (same contract as the SIMD ones).
unsafe fn kern_scalar<const MR: usize, const NR: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    crs: usize,
    alpha: f32,
    beta: f32,
) {
    let mut acc = [[0f32; NR]; MR];
    for p in 0..kc {
        // SAFETY: the caller guarantees `kc * MR` values in `a` and `kc * NR` in `b`.
        let (ap, bp) = unsafe {
            (
                std::slice::from_raw_parts(a.add(p * MR), MR),
                std::slice::from_raw_parts(b.add(p * NR), NR),
            )
        };
        for (row, &ai) in acc.iter_mut().zip(ap) {
            for (x, &bj) in row.iter_mut().zip(bp) {
                *x = ai.mul_add(bj, *x);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (j, x) in row.iter().enumerate() {
            // SAFETY: the caller guarantees a full `MR x NR` tile at `c` with row stride `crs`.
            let p = unsafe { c.add(i * crs + j) };
            unsafe {
                *p = if beta == 0.0 {
                    alpha * x
                } else {
                    alpha * x + beta * *p
                }
            };
        }
    }
}

/// `c[m,n] = alpha * a[m,k] b[k,n] + beta * c`, with explicit (row, column) strides. With
/// `beta == 0`, `c` is never read (it may hold NaN). Panics if a slice is too small.
pub fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    a_st: (usize, usize),
    b: &[f32],
    b_st: (usize, usize),
    beta: f32,
    c: &mut [f32],
    c_st: (usize, usize),
) {
    sgemm_with(
        &plan(simd_level()),
        m,
        k,
        n,
        alpha,
        a,
        a_st,
        b,
        b_st,
        beta,
        c,
        c_st,
    );
}

/// [`sgemm`] with an explicit plan (tests and benchmarks run every level through it).
pub fn sgemm_with(
    plan: &Plan,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    (ars, acs): (usize, usize),
    b: &[f32],
    (brs, bcs): (usize, usize),
    beta: f32,
    c: &mut [f32],
    (crs, ccs): (usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    if n < plan.nr && m > n {
        // Narrow outputs (LoRA ranks) waste most of each register tile: `c^T = b^T a^T`.
        let (at, bt, ct) = ((acs, ars), (bcs, brs), (ccs, crs));
        return sgemm_with(plan, n, k, m, alpha, b, bt, a, at, beta, c, ct);
    }
    let last = |r: usize, c: usize, rs: usize, cs: usize| (r - 1) * rs + (c - 1) * cs;
    if k > 0 {
        assert!(last(m, k, ars, acs) < a.len(), "sgemm: a too small");
        assert!(last(k, n, brs, bcs) < b.len(), "sgemm: b too small");
    }
    assert!(last(m, n, crs, ccs) < c.len(), "sgemm: c too small");
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                let x = &mut c[i * crs + j * ccs];
                *x = if beta == 0.0 { 0.0 } else { beta * *x };
            }
        }
        return;
    }
    let g = Gemm {
        p: *plan,
        a: Ptr(a.as_ptr() as *mut f32),
        ars,
        acs,
        b: Ptr(b.as_ptr() as *mut f32),
        brs,
        bcs,
        c: Ptr(c.as_mut_ptr()),
        crs,
        ccs,
        alpha,
    };
    // SAFETY: every index the product touches was bounds-checked above; `c` is exclusively
    // borrowed and cannot alias `a` or `b`.
    unsafe { g.run(m, k, n, beta) };
}

/// `dst.copy_from_slice(src[..dst.len()])`, with the register-tile widths as fixed-size copies
/// (inline moves instead of a `memcpy` call per packed row).
///
/// # Safety
/// `src` must be valid for `dst.len()` reads.
#[inline(always)]
unsafe fn copy_row(src: *const f32, dst: &mut [f32]) {
    /// `N` values as `N / 8` copies of 8 (inline vector moves: one copy of 48 was a call to
    /// `memmove`, 2% of a training step).
    #[inline(always)]
    unsafe fn fixed<const N: usize>(src: *const f32, dst: &mut [f32]) {
        for c in 0..N / 8 {
            // SAFETY: `dst.len() == N` (checked by the caller's match) and `src` is readable.
            unsafe {
                *(dst.as_mut_ptr().add(8 * c) as *mut [f32; 8]) =
                    std::ptr::read_unaligned(src.add(8 * c) as *const [f32; 8])
            };
        }
    }
    // SAFETY: forwarded from the caller.
    unsafe {
        match dst.len() {
            8 => fixed::<8>(src, dst),
            16 => fixed::<16>(src, dst),
            32 => fixed::<32>(src, dst),
            48 => fixed::<48>(src, dst),
            64 => fixed::<64>(src, dst),
            n => dst.copy_from_slice(std::slice::from_raw_parts(src, n)),
        }
    }
}

#[derive(Clone, Copy)]
struct Ptr(*mut f32);
// SAFETY: tasks write disjoint tiles of `c` and only read `a`, `b` and the packed B block.
unsafe impl Send for Ptr {}
unsafe impl Sync for Ptr {}

impl Ptr {
    /// The pointer (a method, so closures capture the `Send` wrapper, not the raw field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

struct Gemm {
    p: Plan,
    a: Ptr,
    ars: usize,
    acs: usize,
    b: Ptr,
    brs: usize,
    bcs: usize,
    c: Ptr,
    crs: usize,
    ccs: usize,
    alpha: f32,
}

thread_local! {
    static PACK_A: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static PACK_B: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Run `f` on a 64-byte aligned slice of `len` values from a thread-local buffer. The buffer
/// is taken out of the cell for the duration, so a nested call (rayon work stealing) gets a
/// fresh one instead of a double borrow.
fn with_buf<R>(
    key: &'static std::thread::LocalKey<Cell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    let mut v = key.with(|c| c.take());
    if v.len() < len + 16 {
        v.resize(len + 16, 0.0);
    }
    let off = v.as_ptr().align_offset(64).min(16);
    let r = f(&mut v[off..off + len]);
    key.with(|c| c.set(v));
    r
}

impl Gemm {
    unsafe fn run(&self, m: usize, k: usize, n: usize, beta: f32) {
        let p = &self.p;
        let threads = rayon::current_num_threads();
        let kc = k.div_ceil(k.div_ceil(p.kc));
        // Row blocks: about `mc` tall, a multiple of the thread count when parallel.
        let mut n_ic = m.div_ceil(p.mc);
        if threads > 1 {
            n_ic = n_ic.div_ceil(threads) * threads;
        }
        n_ic = n_ic.min(m.div_ceil(p.mr));
        let mc = m.div_ceil(n_ic).div_ceil(p.mr) * p.mr;
        let n_ic = m.div_ceil(mc);
        let nc = p.nc.min(n.div_ceil(p.nr) * p.nr);
        with_buf(&PACK_B, kc * nc, |pb| {
            for jc in (0..n).step_by(nc) {
                let nb = nc.min(n - jc);
                let panels = nb.div_ceil(p.nr);
                // Column splits of each row block, when there are too few row blocks.
                let n_js = if threads > 1 && n_ic < threads {
                    threads.div_ceil(n_ic).min(panels)
                } else {
                    1
                };
                for pc in (0..k).step_by(kc) {
                    let kb = kc.min(k - pc);
                    let pb = &mut pb[..panels * kb * p.nr];
                    self.pack_b(pc, kb, jc, nb, pb, threads);
                    let bt = if pc == 0 { beta } else { 1.0 };
                    let pb: &[f32] = pb;
                    let task = |t: usize| {
                        let (ic, js) = (t / n_js, t % n_js);
                        let i0 = ic * mc;
                        let mb = mc.min(m - i0);
                        let (q0, q1) = (js * panels / n_js, (js + 1) * panels / n_js);
                        // SAFETY: this task owns rows i0..i0+mb x panels q0..q1 of `c`.
                        unsafe { self.block(i0, mb, pc, kb, jc, nb, pb, q0..q1, bt) };
                    };
                    let tasks = n_ic * n_js;
                    if threads == 1 || tasks == 1 {
                        (0..tasks).for_each(task);
                    } else {
                        (0..tasks).into_par_iter().for_each(task);
                    }
                }
            }
        });
    }

    /// Pack `b[pc..pc+kb, jc..jc+nb]` into `kb x NR` micro-panels, zero-padded.
    fn pack_b(&self, pc: usize, kb: usize, jc: usize, nb: usize, pb: &mut [f32], threads: usize) {
        let nr = self.p.nr;
        let (b, brs, bcs) = (self.b, self.brs, self.bcs);
        let simd = self.p.simd;
        let pack = |q: usize, dst: &mut [f32]| {
            let j0 = jc + q * nr;
            let w = nr.min(jc + nb - j0);
            let bp = b.get();
            // SAFETY: indices are inside the bounds-checked `k x n` region of `b`.
            let at = |p: usize, j: usize| unsafe { *bp.add((pc + p) * brs + (j0 + j) * bcs) };
            let mut p0 = 0;
            if w == nr && bcs == 1 {
                for (p, d) in dst.chunks_exact_mut(nr).enumerate() {
                    // SAFETY: row `pc + p`, columns `j0..j0 + nr` are inside `b`.
                    unsafe { copy_row(bp.add((pc + p) * brs + j0), d) };
                }
                return;
            }
            #[cfg(target_arch = "x86_64")]
            if simd && w == nr && brs == 1 && nr.is_multiple_of(8) {
                p0 = kb / 8 * 8;
                for g in (0..nr).step_by(8) {
                    for p in (0..p0).step_by(8) {
                        // SAFETY: AVX2 is present (`simd`); the 8 x 8 blocks are in bounds.
                        unsafe {
                            x86::transpose8(
                                bp.add((j0 + g) * bcs + pc + p),
                                bcs,
                                dst.as_mut_ptr().add(p * nr + g),
                                nr,
                            )
                        };
                    }
                }
            }
            let _ = simd;
            for j in 0..nr {
                for p in p0..kb {
                    dst[p * nr + j] = if j < w { at(p, j) } else { 0.0 };
                }
            }
        };
        let chunks = pb.chunks_exact_mut(kb * nr);
        if threads > 1 && kb * nb >= 1 << 16 {
            chunks
                .collect::<Vec<_>>()
                .into_par_iter()
                .enumerate()
                .for_each(|(q, d)| pack(q, d));
        } else {
            chunks.enumerate().for_each(|(q, d)| pack(q, d));
        }
    }

    /// Pack `a[i0..i0+mb, pc..pc+kb]` into `MR x kb` micro-panels, zero-padded.
    fn pack_a(&self, i0: usize, mb: usize, pc: usize, kb: usize, pa: &mut [f32]) {
        let mr = self.p.mr;
        let (a, ars, acs) = (self.a, self.ars, self.acs);
        // SAFETY: indices are inside the bounds-checked `m x k` region of `a`.
        let at = |i: usize, p: usize| unsafe { *a.get().add((i0 + i) * ars + (pc + p) * acs) };
        let ap = a.get();
        for (q, dst) in pa.chunks_exact_mut(kb * mr).enumerate() {
            let r0 = q * mr;
            let h = mr.min(mb - r0);
            let mut p0 = 0;
            if h == mr && ars == 1 {
                for (p, d) in dst.chunks_exact_mut(mr).enumerate() {
                    // SAFETY: column `pc + p`, rows `i0 + r0..+mr` are inside `a`.
                    unsafe { copy_row(ap.add(i0 + r0 + (pc + p) * acs), d) };
                }
                continue;
            }
            #[cfg(target_arch = "x86_64")]
            if self.p.simd && h == mr && acs == 1 && mr.is_multiple_of(8) {
                p0 = kb / 8 * 8;
                for g in (0..mr).step_by(8) {
                    for p in (0..p0).step_by(8) {
                        // SAFETY: AVX2 is present (`simd`); the 8 x 8 blocks are in bounds.
                        unsafe {
                            x86::transpose8(
                                ap.add((i0 + r0 + g) * ars + pc + p),
                                ars,
                                dst.as_mut_ptr().add(p * mr + g),
                                mr,
                            )
                        };
                    }
                }
            }
            for i in 0..mr {
                for p in p0..kb {
                    dst[p * mr + i] = if i < h { at(r0 + i, p) } else { 0.0 };
                }
            }
        }
    }

    /// Multiply one packed row block against B micro-panels `qs`, updating `c`.
    unsafe fn block(
        &self,
        i0: usize,
        mb: usize,
        pc: usize,
        kb: usize,
        jc: usize,
        nb: usize,
        pb: &[f32],
        qs: std::ops::Range<usize>,
        beta: f32,
    ) {
        let Plan { mr, nr, kern, .. } = self.p;
        let rpanels = mb.div_ceil(mr);
        with_buf(&PACK_A, rpanels * mr * kb, |pa| {
            self.pack_a(i0, mb, pc, kb, pa);
            let mut tile = [0f32; MAX_TILE];
            for q in qs {
                let j0 = jc + q * nr;
                let w = nr.min(jc + nb - j0);
                let bp = pb[q * kb * nr..].as_ptr();
                for r in 0..rpanels {
                    let ri = i0 + r * mr;
                    let h = mr.min(i0 + mb - ri);
                    let ap = pa[r * kb * mr..].as_ptr();
                    // SAFETY: panels hold `kb` steps; the tile is inside `c` (bounds-checked)
                    // or is the stack tile.
                    unsafe {
                        let c = self.c.0.add(ri * self.crs + j0 * self.ccs);
                        if h == mr && w == nr && self.ccs == 1 {
                            kern(kb, ap, bp, c, self.crs, self.alpha, beta);
                        } else {
                            kern(kb, ap, bp, tile.as_mut_ptr(), nr, 1.0, 0.0);
                            for i in 0..h {
                                for j in 0..w {
                                    let x = c.add(i * self.crs + j * self.ccs);
                                    let v = self.alpha * tile[i * nr + j];
                                    *x = if beta == 0.0 { v } else { v + beta * *x };
                                }
                            }
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
#[path = "sgemm_tests.rs"]
mod tests;
