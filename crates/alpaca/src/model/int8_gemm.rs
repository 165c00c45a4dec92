//! Prompt GEMM with 8-bit activations: `y = x W^T` for many tokens on integer products.
//!
//! The `f32` prompt GEMM ([`kernels::gemm`]) already runs at the `f32` FMA peak; integer
//! dot products do four times the multiply-adds per instruction (`vpdpbusd`: 64 byte
//! products into 16 lanes). Matrices whose activations are [`ActMode::Int8`] (the model's
//! policy, [`int8_decode::auto_mode`]) take this path for prompts:
//!
//! - the `t` activation rows are quantized once per product exactly as for one-token
//!   decode ([`int8_decode::quantize_acts`]: per-32-value `f32` scale, values in
//!   `[-127, 127]`);
//! - weight rows are split into tiles of [`NR`] rows over the thread pool; each tile is
//!   decoded once into an integer panel: per 32-value block, the weights as `i8` (codes
//!   with their integer offset applied: Q5_0 `q - 16`, Q6_K `q - 32`) stored row-interleaved
//!   by 4 (one 32-bit lane = 4 consecutive weights of one row, 16 rows per 512-bit
//!   register), the `f32` scale of each row (per 16-value half for Q6_K) and for Q5_1/Q4_K
//!   the `f32` min;
//! - the micro-kernel broadcasts 4 activation bytes of a token and multiplies them into the
//!   16 row lanes (`vpdpbusd`), for a few tokens at once, then scales each block's integer
//!   sums in `f32`. On VNNI the activations are stored as unsigned `q + 128` and each lane
//!   starts from `-128 * sum(w)` (exact); AVX2 multiplies `|w|` by `x` with `w`'s sign
//!   (`maddubs`, no saturation: `128 * 127 * 2 < 2^15`).
//!
//! The integer sums are exact; the levels differ from the scalar reference (the one-token
//! int8 kernels row by row, [`int8_decode::matvec`]) only in the order of `f32` additions,
//! and from the `f32` GEMM by the activation rounding (see docs/COMPAT.md).

use std::cell::RefCell;

use rayon::prelude::*;

use crate::model::int8_decode::{self, f16le, q4k_sub_block, q5_codes, q6_codes, Level};
use crate::model::kernels::{self, OutPtr};
use crate::model::quant::GgmlType;

#[cfg(target_arch = "x86_64")]
#[path = "int8_gemm_x86.rs"]
mod x86;

/// Weight rows per tile (two 16-lane registers).
pub const NR: usize = 32;

/// 32-value blocks per pass over a tile (the panel slice stays in L1 while every token
/// group goes over it).
const KC: usize = 8;

/// Whether `ty` has an int8 prompt GEMM (the types with int8 decode kernels).
pub fn supported(ty: GgmlType) -> bool {
    int8_decode::supported(ty)
}

/// The shape of a type's panel: sub-blocks per 32-value block with their own scale (2 for
/// Q6_K's 16-value scales) and whether blocks carry a min.
fn shape(ty: GgmlType) -> (usize, bool) {
    match ty {
        GgmlType::Q6K => (2, false),
        GgmlType::Q5_1 | GgmlType::Q4K => (1, true),
        _ => (1, false),
    }
}

/// The quantized activations of a prompt: `q` (`t x cols`, `+128` as unsigned bytes on
/// VNNI), `d` (`t x nb` block scales) and `ds` (`d * sum(q)` per block, for mins).
#[derive(Default)]
struct PromptActs {
    q: Vec<i8>,
    d: Vec<f32>,
    ds: Vec<f32>,
}

/// One tile of decoded weights (see the module docs), plus one row's scratch.
#[derive(Default)]
struct Panel {
    w: Vec<u8>,
    corr: Vec<i32>,
    sc: Vec<f32>,
    mn: Vec<f32>,
    row_w: Vec<u8>,
    row_sc: Vec<f32>,
    row_mn: Vec<f32>,
}

thread_local! {
    static ACTS: RefCell<PromptActs> = RefCell::new(PromptActs::default());
    static PANEL: RefCell<Panel> = RefCell::new(Panel::default());
    static NL: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
}

/// Raw views the micro-kernels index (shapes checked by [`gemm`]): the panel of one tile
/// (`w`: `nb x 8 x NR x 4` bytes, `corr`/`sc`: `nb x sub x NR`, `mn`: `nb x NR`) and the
/// prompt's activations (`x`: rows of `cols` bytes, `d`/`ds`: rows of `nb`).
#[derive(Clone, Copy)]
pub(crate) struct TileArgs {
    pub w: *const u8,
    pub corr: *const i32,
    pub sc: *const f32,
    pub mn: *const f32,
    pub x: *const i8,
    pub d: *const f32,
    pub ds: *const f32,
    pub cols: usize,
    pub nb: usize,
}

/// A micro-kernel: `(tile, first token, block range, add to out?, out, out row stride,
/// valid rows)`. Writes `out[i * ldo + j]` for `mr` tokens (its const parameter) and
/// `j < nr`. Unsafe: needs its CPU features and in-bounds views.
type Kern = unsafe fn(&TileArgs, usize, usize, usize, bool, *mut f32, usize, usize);

/// Decode one weight row into integer weights `w` (`cols` values, `i8` stored as bytes),
/// scales `sc` (per sub-block) and mins `mn` (per 32-value block; only for types with mins).
#[inline(always)]
fn int_row(ty: GgmlType, row: &[u8], w: &mut [u8], sc: &mut [f32], mn: &mut [f32]) {
    use GgmlType::*;
    match ty {
        Q8_0 => {
            for (b, blk) in row.chunks_exact(34).enumerate() {
                sc[b] = f16le(blk, 0);
                w[32 * b..32 * b + 32].copy_from_slice(&blk[2..34]);
            }
        }
        Q5_0 | Q5_1 => {
            let (ts, qo) = if ty == Q5_0 { (22, 2) } else { (24, 4) };
            for (b, blk) in row.chunks_exact(ts).enumerate() {
                let qh = u32::from_le_bytes([blk[qo], blk[qo + 1], blk[qo + 2], blk[qo + 3]]);
                let off = if ty == Q5_0 { 16 } else { 0 };
                for (o, c) in w[32 * b..32 * b + 32]
                    .iter_mut()
                    .zip(q5_codes(qh, &blk[qo + 4..]))
                {
                    *o = (c - off) as u8;
                }
                sc[b] = f16le(blk, 0);
                if ty == Q5_1 {
                    mn[b] = f16le(blk, 2);
                }
            }
        }
        Q4K => {
            for (sb, blk) in row.chunks_exact(144).enumerate() {
                let (d, dmin) = (f16le(blk, 0), f16le(blk, 2));
                for s in 0..8 {
                    let b = sb * 8 + s;
                    (sc[b], mn[b]) = q4k_sub_block(blk, s, d, dmin, &mut w[32 * b..32 * b + 32]);
                }
            }
        }
        Q6K => {
            for (sb, blk) in row.chunks_exact(210).enumerate() {
                for (o, c) in w[256 * sb..256 * sb + 256].iter_mut().zip(q6_codes(blk)) {
                    *o = (c - 32) as u8;
                }
                let d = f16le(blk, 208);
                for (i, s) in sc[16 * sb..16 * sb + 16].iter_mut().enumerate() {
                    *s = d * blk[192 + i] as i8 as f32;
                }
            }
        }
        other => panic!("no int8 prompt kernel for {}", other.name()),
    }
}

impl Panel {
    /// Decode rows `r0..r0 + nr` of `data` (rows of `cols` values in `ty`) into the panel;
    /// missing rows are zero. Compiled for AVX-512 where the CPU has it (the decoders
    /// vectorize).
    fn fill(&mut self, ty: GgmlType, data: &[u8], cols: usize, r0: usize, nr: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
            unsafe fn avx512(p: &mut Panel, ty: GgmlType, d: &[u8], c: usize, r0: usize, n: usize) {
                p.fill_impl(ty, d, c, r0, n)
            }
            if kernels::default_level() == crate::model::ops::SimdLevel::Avx512 {
                // SAFETY: the CPU has the features `avx512` was compiled for.
                return unsafe { avx512(self, ty, data, cols, r0, nr) };
            }
        }
        self.fill_impl(ty, data, cols, r0, nr)
    }

    #[inline(always)]
    fn fill_impl(&mut self, ty: GgmlType, data: &[u8], cols: usize, r0: usize, nr: usize) {
        let (sub, _) = shape(ty);
        let nb = cols / 32;
        let rb = ty.row_bytes(cols);
        self.w.resize(nb * 8 * NR * 4, 0);
        self.corr.resize(nb * sub * NR, 0);
        self.sc.resize(nb * sub * NR, 0.0);
        self.mn.resize(nb * NR, 0.0);
        self.row_w.resize(cols, 0);
        self.row_sc.resize(nb * sub, 0.0);
        self.row_mn.resize(nb, 0.0);
        if nr < NR {
            self.w.fill(0);
            self.corr.fill(0);
            self.sc.fill(0.0);
            self.mn.fill(0.0);
        }
        let len = 32 / sub;
        for j in 0..nr {
            let r = r0 + j;
            int_row(
                ty,
                &data[r * rb..(r + 1) * rb],
                &mut self.row_w,
                &mut self.row_sc,
                &mut self.row_mn,
            );
            for (b, (wb, pb)) in self
                .row_w
                .chunks_exact(32)
                .zip(self.w.chunks_exact_mut(8 * NR * 4))
                .enumerate()
            {
                for (g, p) in wb.chunks_exact(4).zip(pb.chunks_exact_mut(NR * 4)) {
                    p[4 * j..4 * j + 4].copy_from_slice(g);
                }
                for (s, h) in wb.chunks_exact(len).enumerate() {
                    let sum: i32 = h.iter().map(|v| *v as i8 as i32).sum();
                    let o = (b * sub + s) * NR + j;
                    self.corr[o] = -128 * sum;
                    self.sc[o] = self.row_sc[b * sub + s];
                }
                self.mn[b * NR + j] = self.row_mn[b];
            }
        }
    }
}

/// A task of [`quantize_prompt`]: rows of `x` and their `q`, `d`, `ds`.
type Part<'a> = (((&'a [f32], &'a mut [i8]), &'a mut [f32]), &'a mut [f32]);

/// Quantize the `t` rows of `x` into `buf` (in parallel for long prompts); `flip` stores
/// `q + 128` (VNNI's unsigned operand, as the same byte pattern `q ^ 0x80`).
fn quantize_prompt(x: &[f32], t: usize, cols: usize, flip: bool, buf: &mut PromptActs) {
    let nb = cols / 32;
    buf.q.resize(t * cols, 0);
    buf.d.resize(t * nb, 0.0);
    buf.ds.resize(t * nb, 0.0);
    let one = |(((xr, q), d), ds): Part<'_>| {
        NL.with(|nl| {
            let mut nl = nl.borrow_mut();
            nl.resize(8 * nb, 0);
            for (((xr, q), d), ds) in xr
                .chunks_exact(cols)
                .zip(q.chunks_exact_mut(cols))
                .zip(d.chunks_exact_mut(nb))
                .zip(ds.chunks_exact_mut(nb))
            {
                int8_decode::quantize_row(xr, q, d, &mut nl);
                for ((o, s), l) in ds.iter_mut().zip(d.iter()).zip(nl.chunks_exact(8)) {
                    *o = s * -(l.iter().sum::<i32>()) as f32;
                }
                if flip {
                    for v in q.iter_mut() {
                        *v = (*v as u8 ^ 0x80) as i8;
                    }
                }
            }
        })
    };
    // Rows per task: a few tasks per thread, none under ~64 KiB of input.
    let threads = rayon::current_num_threads().max(1);
    let per = t.div_ceil(threads * 4).max((16 << 10) / cols.max(1)).max(1);
    let parts = x[..t * cols]
        .chunks(per * cols)
        .zip(buf.q.chunks_mut(per * cols))
        .zip(buf.d.chunks_mut(per * nb))
        .zip(buf.ds.chunks_mut(per * nb));
    if threads == 1 || t <= per {
        parts.for_each(one);
    } else {
        parts.collect::<Vec<_>>().into_par_iter().for_each(one);
    }
}

/// `y[i, r] = W[r] . x[i]` for `t` tokens on 8-bit activations at `level` (clamped to
/// what the CPU has). Types without int8 kernels take the `f32` GEMM; the scalar level is
/// the one-token int8 reference applied token by token.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    level: Level,
    ty: GgmlType,
    data: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    t: usize,
    y: &mut [f32],
) {
    kernels::check_shapes(ty, data, rows, cols, x, t, y);
    if !supported(ty) || !cols.is_multiple_of(32) || !cols.is_multiple_of(ty.block_size()) {
        return kernels::gemm(kernels::default_level(), ty, data, rows, cols, x, t, y);
    }
    let level = level.min(int8_decode::level_for(crate::model::ops::SimdLevel::Avx512));
    let Some((mr_max, pick)) = micro_kernels(level, ty) else {
        for (xi, yi) in x.chunks_exact(cols).zip(y.chunks_exact_mut(rows)) {
            int8_decode::matvec(Level::Scalar, ty, data, rows, cols, xi, yi);
        }
        return;
    };
    let nb = cols / 32;
    // Taken out of the thread-local for the product (no borrow is held across the
    // fork-join, whose waiting thread may run another product), put back after.
    let mut acts = ACTS.with(|a| a.take());
    quantize_prompt(x, t, cols, level == Level::Vnni, &mut acts);
    {
        let acts = &acts;
        let out = OutPtr::new(y);
        let tiles = rows.div_ceil(NR);
        let body = |tile: usize| {
            let r0 = tile * NR;
            let nr = NR.min(rows - r0);
            PANEL.with(|p| {
                let mut p = p.borrow_mut();
                p.fill(ty, data, cols, r0, nr);
                let args = TileArgs {
                    w: p.w.as_ptr(),
                    corr: p.corr.as_ptr(),
                    sc: p.sc.as_ptr(),
                    mn: p.mn.as_ptr(),
                    x: acts.q.as_ptr(),
                    d: acts.d.as_ptr(),
                    ds: acts.ds.as_ptr(),
                    cols,
                    nb,
                };
                let mut b0 = 0;
                while b0 < nb {
                    let b1 = (b0 + KC).min(nb);
                    let mut i0 = 0;
                    while i0 < t {
                        let mr = mr_max.min(t - i0);
                        // SAFETY: the kernel's level is supported (clamped above); the panel
                        // holds `nb` blocks of this tile and the activations `t` rows
                        // (resized above); tokens `i0..i0 + mr`, blocks `b0..b1 <= nb`; the
                        // output rows `i0..i0 + mr`, columns `r0..r0 + nr` are this tile's.
                        unsafe {
                            pick(mr)(
                                &args,
                                i0,
                                b0,
                                b1,
                                b0 > 0,
                                out.get().add(i0 * rows + r0),
                                rows,
                                nr,
                            )
                        };
                        i0 += mr;
                    }
                    b0 = b1;
                }
            });
        };
        if rayon::current_num_threads() == 1 || tiles == 1 {
            (0..tiles).for_each(body);
        } else {
            (0..tiles).into_par_iter().for_each(body);
        }
    }
    ACTS.with(|a| a.replace(acts));
}

/// The micro-kernels of `level` for `ty`: tokens per call and the kernel for `mr` tokens;
/// `None` at the scalar level.
#[allow(clippy::type_complexity)]
fn micro_kernels(level: Level, ty: GgmlType) -> Option<(usize, fn(usize) -> Kern)> {
    #[cfg(target_arch = "x86_64")]
    {
        let k: fn(usize) -> Kern = match (level, shape(ty)) {
            (Level::Vnni, (2, _)) => x86::vnni::<2, false>,
            (Level::Vnni, (_, true)) => x86::vnni::<1, true>,
            (Level::Vnni, _) => x86::vnni::<1, false>,
            (Level::Avx2, (2, _)) => x86::avx2::<2, false>,
            (Level::Avx2, (_, true)) => x86::avx2::<1, true>,
            (Level::Avx2, _) => x86::avx2::<1, false>,
            (Level::Scalar, _) => return None,
        };
        let mr = if level == Level::Vnni {
            x86::MR_VNNI
        } else {
            x86::MR_AVX2
        };
        Some((mr, k))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (level, ty);
        None
    }
}

#[cfg(test)]
#[path = "int8_gemm_tests.rs"]
mod tests;
