//! Multi-token decode with 8-bit activations (`2 <= t`, the batched decode step): our own
//! design, not ggml's arithmetic.
//!
//! The `f32` multi-row kernels ([`kernels_multi`](crate::model::kernels_multi)) decode each
//! weight block once and FMA it with every token: with 8 tokens that is 8 `f32` FMAs per
//! weight, and a batched decode step becomes compute-bound. Here every token's activation
//! row is quantized once per product ([`quantize_acts`]) and the integer dots run on
//! `vpdpbusd` (4 multiply-adds per 32-bit lane), laid out so that the per-block scaling is
//! paid once per 8 tokens rather than once per token:
//!
//! - weights: a tile of [`R`] rows is decoded into unsigned codes (`value = scale * (code -
//!   offset) + min` per 32-value block; [`Format`]), one byte per weight, plus `f32` scales
//!   and mins per block;
//! - activations: a group of `T` tokens (8, or 4, 2, 1 for the last few) is interleaved per
//!   32-value block into `T` vectors of 8 lanes: lane `l` holds 4 bytes of token
//!   `l / (8 / T)`. A weight vector is the matching `32 / T` code bytes broadcast to every
//!   token's lanes, so one integer dot advances all `T` tokens at once;
//! - an integer offset (`Q4_0`: 8, `Q5_0`: 16, `Q8_0` stored as `w + 128`: 128) starts the
//!   accumulators at `offset * -(lane sums of the activations)` (exact); float mins add
//!   `min * d_x * sum(q_x)` per block and lane;
//! - per block and row: one conversion, one multiply by the lanes' activation scales and one
//!   FMA by the weight scale, for all `T` tokens.
//!
//! The integer sums are exact, so the levels (scalar reference, AVX2, AVX-512 VNNI) differ
//! only in the order of the `f32` additions, and the results differ from the `f32` kernels
//! by the activation rounding (as in [`int8_decode`]). When this path runs is the policy of
//! [`ActMode`](crate::model::int8_decode::ActMode) (see docs/COMPAT.md).

use std::cell::RefCell;

use crate::model::int8_decode::{
    f16le, level_for, q4k_sub_block, q5_codes, quantize_acts, ActBuf, Level,
};
use crate::model::kernels::{self, OutPtr};
use crate::model::ops::{dispatch, SimdLevel};
use crate::model::quant::GgmlType;

#[cfg(target_arch = "x86_64")]
#[path = "int8_multi_x86.rs"]
mod x86;

/// Weight rows per tile (decoded together, sharing every activation load).
pub const R: usize = 4;

/// Whether `ty` has multi-token int8 kernels.
pub fn supported(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4K)
}

/// How decoded codes become weights: `scale * (code - 2^shift) + min` per 32-value block
/// (`shift == 32`: no offset). `signed`: the codes are signed bytes without offset (`Q8_0`
/// on AVX2, whose `maddubs` would saturate on `w + 128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    pub shift: u32,
    pub min: bool,
    pub signed: bool,
}

/// The decoded form of `ty` at `level`.
fn format(ty: GgmlType, level: Level) -> Format {
    use GgmlType::*;
    let (shift, min, signed) = match ty {
        Q4_0 => (3, false, false),
        Q5_0 => (4, false, false),
        Q8_0 if level == Level::Avx2 => (32, false, true),
        Q8_0 => (7, false, false),
        Q4_1 | Q5_1 | Q4K => (32, true, false),
        other => panic!("no multi-token int8 kernel for {}", other.name()),
    };
    Format { shift, min, signed }
}

/// A tile of [`R`] decoded weight rows: `codes[r * cols + k]`, `scale[r * nb + b]`,
/// `min[r * nb + b]` (`nb = cols / 32`); rows past the matrix are all zero.
#[derive(Clone, Copy)]
pub struct Tile<'a> {
    pub codes: &'a [u8],
    pub scale: &'a [f32],
    pub min: &'a [f32],
    pub fmt: Format,
}

/// A group of `tt` tokens (`tt` in 1, 2, 4, 8) interleaved for the kernels, per block `b`:
/// `q[(b * tt + j) * 32..]` the `j`-th vector of 8 lanes of 4 bytes (lane `l`: token
/// `l / (8 / tt)`, 4-value group `j * (8 / tt) + l % (8 / tt)`), and per lane `dx` (the
/// token's scale), `nl` (minus the lane's sum of `q` over the `tt` vectors) and
/// `ms = dx * -nl`, at `[b * 8 + l]`. Lanes of tokens past the real ones are zero.
#[derive(Clone, Copy)]
pub struct Group<'a> {
    pub tt: usize,
    pub q: &'a [i8],
    pub dx: &'a [f32],
    pub nl: &'a [i32],
    pub ms: &'a [f32],
}

/// A tile kernel: `out[r * 8 + i]` = row `r` of the tile dotted with token `i` of the
/// group. Unsafe: CPU features; `tile` and `group` of `cols` values as documented.
type Kernel = unsafe fn(Tile<'_>, Group<'_>, usize, &mut [f32; 8 * R]);

/// The kernel of `level` (clamped to the CPU); `None` for the scalar reference.
fn kernel(level: Level) -> Option<Kernel> {
    #[cfg(target_arch = "x86_64")]
    match level.min(level_for(SimdLevel::Avx512)) {
        Level::Vnni => return Some(x86::tile_vnni),
        Level::Avx2 => return Some(x86::tile_avx2),
        Level::Scalar => {}
    }
    let _ = level;
    None
}

/// Tokens per group for `rem` tokens left: 8 while 5 or more are left (the last group
/// padded), then 4 (3 or 4 left), 2 or 1.
fn group_size(rem: usize) -> usize {
    match rem {
        5.. => 8,
        3..=4 => 4,
        n => n,
    }
}

/// The activations of `t` tokens: each row quantized, then interleaved into groups.
#[derive(Default)]
struct Packed {
    rows: Vec<ActBuf>,
    /// The input last packed and its `(cols, t, interleaved)`.
    x: Vec<f32>,
    key: (usize, usize, bool),
    /// `(first token, tokens, tt, offset in q, offset in the per-lane arrays)` per group.
    groups: Vec<(usize, usize, usize, usize, usize)>,
    q: Vec<i8>,
    dx: Vec<f32>,
    nl: Vec<i32>,
    ms: Vec<f32>,
}

impl Packed {
    fn build(&mut self, x: &[f32], cols: usize, t: usize, interleave: bool) {
        // The batched step multiplies the same activations by several matrices (q, k, v;
        // gate, up): reuse the packing when the input is the same as last time.
        // Bitwise equality (one `memcmp`; a float compare loop was a serial 1% of the step).
        if self.key == (cols, t, interleave) && as_bits(&self.x) == as_bits(x) {
            return;
        }
        self.key = (cols, t, interleave);
        self.x.clear();
        self.x.extend_from_slice(x);
        if self.rows.len() < t {
            self.rows.resize_with(t, ActBuf::default);
        }
        for (buf, xr) in self.rows.iter_mut().zip(x.chunks_exact(cols)) {
            quantize_acts(xr, buf);
        }
        self.groups.clear();
        if !interleave {
            return;
        }
        let nb = cols / 32;
        let mut i0 = 0;
        let (mut qo, mut lo) = (0, 0);
        while i0 < t {
            let tt = group_size(t - i0);
            let n = tt.min(t - i0);
            self.groups.push((i0, n, tt, qo, lo));
            i0 += n;
            qo += nb * tt * 32;
            lo += nb * 8;
        }
        self.q.resize(qo, 0);
        self.dx.resize(lo, 0.0);
        self.nl.resize(lo, 0);
        self.ms.resize(lo, 0.0);
        for &(i0, n, tt, qo, lo) in &self.groups {
            let per = 8 / tt;
            let q = &mut self.q[qo..qo + nb * tt * 32];
            let (dx, nl, ms) = (
                &mut self.dx[lo..lo + nb * 8],
                &mut self.nl[lo..lo + nb * 8],
                &mut self.ms[lo..lo + nb * 8],
            );
            q.fill(0);
            dx.fill(0.0);
            nl.fill(0);
            // Token `tk` owns lanes `tk * per..(tk + 1) * per`; its 4-value group `g` goes to
            // vector `g / per`, lane `tk * per + g % per` (`per` a power of two: shifts).
            let sh = per.trailing_zeros();
            for (tk, a) in self.rows[i0..i0 + n].iter().enumerate() {
                for b in 0..nb {
                    let src = &a.q[32 * b..32 * b + 32];
                    let dst = &mut q[b * tt * 32..(b + 1) * tt * 32];
                    for (g, four) in src.chunks_exact(4).enumerate() {
                        let (j, l) = (g >> sh, tk * per + (g & (per - 1)));
                        dst[j * 32 + 4 * l..j * 32 + 4 * l + 4].copy_from_slice(four);
                        nl[8 * b + l] += a.nl[8 * b + g];
                    }
                    dx[8 * b + tk * per..8 * b + (tk + 1) * per].fill(a.d[b]);
                }
            }
            for ((m, d), s) in ms.iter_mut().zip(dx.iter()).zip(nl.iter()) {
                *m = d * -*s as f32;
            }
        }
    }

    fn group(&self, k: usize, nb: usize) -> Group<'_> {
        let (_, _, tt, qo, lo) = self.groups[k];
        Group {
            tt,
            q: &self.q[qo..qo + nb * tt * 32],
            dx: &self.dx[lo..lo + nb * 8],
            nl: &self.nl[lo..lo + nb * 8],
            ms: &self.ms[lo..lo + nb * 8],
        }
    }
}

/// The bits of `x` (so that slices compare with one `memcmp`, NaN and signed zeros
/// included).
fn as_bits(x: &[f32]) -> &[u32] {
    // SAFETY: `f32` and `u32` have the same size and alignment, and every bit pattern is a
    // valid `u32`; the slice borrows `x`.
    unsafe { std::slice::from_raw_parts(x.as_ptr() as *const u32, x.len()) }
}

/// Per-thread buffers: the caller's packed activations and each task's decoded tile.
#[derive(Default)]
struct TileBuf {
    codes: Vec<u8>,
    scale: Vec<f32>,
    min: Vec<f32>,
}

thread_local! {
    static PACKED: RefCell<Packed> = RefCell::new(Packed::default());
    static TILE: RefCell<TileBuf> = RefCell::new(TileBuf::default());
}

/// `y[i, r] = W[r] . x[i]` for `t` tokens through the int8 kernels of `level` (clamped to
/// the CPU): the activations are quantized and interleaved once, then tiles of [`R`] weight
/// rows are decoded and dotted with every group of tokens, split over the thread pool like
/// the `f32` products. Types without kernels (or rows that are not whole 32-value blocks)
/// take [`kernels::matvec`]. Same contract as [`kernels::matvec`].
#[allow(clippy::too_many_arguments)]
pub fn matmul(
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
        let f = kernels::default_level();
        return kernels::matvec(f, ty, data, rows, cols, x, t, y);
    }
    let level = level.min(level_for(SimdLevel::Avx512));
    let kern = kernel(level);
    let fmt = format(ty, level);
    // Held across the parallel loop: see `with_scratch`.
    kernels::with_scratch(&PACKED, |p| {
        run(kern, fmt, ty, data, rows, cols, x, t, y, p)
    });
}

#[allow(clippy::too_many_arguments)]
fn run(
    kern: Option<Kernel>,
    fmt: Format,
    ty: GgmlType,
    data: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    t: usize,
    y: &mut [f32],
    p: &mut Packed,
) {
    p.build(x, cols, t, kern.is_some());
    let p = &*p;
    let nb = cols / 32;
    let rb = ty.row_bytes(cols);
    let out = OutPtr::new(y);
    kernels::par_rows(rows, rb, 16, |range| {
        kernels::with_scratch(&TILE, |tb| {
            tb.codes.resize(R * cols, 0);
            tb.scale.resize(R * nb, 0.0);
            tb.min.resize(R * nb, 0.0);
            let mut res = [0f32; 8 * R];
            let mut r0 = range.start;
            while r0 < range.end {
                let nr = R.min(range.end - r0);
                decode_tile(
                    ty,
                    fmt,
                    kern.is_some(),
                    &data[r0 * rb..(r0 + nr) * rb],
                    cols,
                    tb,
                );
                #[cfg(target_arch = "x86_64")]
                {
                    let next = (r0 + nr).min(range.end);
                    let end = (next + R).min(range.end);
                    x86::prefetch(&data[next * rb..end * rb]);
                }
                let tile = Tile {
                    codes: &tb.codes,
                    scale: &tb.scale,
                    min: &tb.min,
                    fmt,
                };
                let emit = |i: usize, r: usize, v: f32| {
                    // SAFETY: `i < t`, row `r0 + r` is in this task's range: in bounds and
                    // written by this task only.
                    unsafe { *out.get().add(i * rows + r0 + r) = v };
                };
                match kern {
                    Some(k) => {
                        for g in 0..p.groups.len() {
                            let (i0, n, ..) = p.groups[g];
                            // SAFETY: the kernel is of a supported level; the tile holds `R`
                            // rows of `cols` and the group `cols` values per token.
                            unsafe { k(tile, p.group(g, nb), cols, &mut res) };
                            for r in 0..nr {
                                for i in 0..n {
                                    emit(i0 + i, r, res[r * 8 + i]);
                                }
                            }
                        }
                    }
                    None => {
                        for r in 0..nr {
                            for (i, a) in p.rows[..t].iter().enumerate() {
                                emit(i, r, scalar_dot(tile, r, cols, a));
                            }
                        }
                    }
                }
                r0 += nr;
            }
        });
    });
}

/// The portable reference: row `r` of the tile dotted with one quantized token.
fn scalar_dot(tile: Tile<'_>, r: usize, cols: usize, a: &ActBuf) -> f32 {
    let nb = cols / 32;
    let off = if tile.fmt.shift < 32 {
        1 << tile.fmt.shift
    } else {
        0
    };
    let mut acc = 0f32;
    for b in 0..nb {
        let codes = &tile.codes[r * cols + 32 * b..r * cols + 32 * b + 32];
        let xq = &a.q[32 * b..32 * b + 32];
        let mut i = 0i32;
        for (c, x) in codes.iter().zip(xq) {
            let w = if tile.fmt.signed {
                *c as i8 as i32
            } else {
                *c as i32 - off
            };
            i += w * *x as i32;
        }
        let s = -a.nl[8 * b..8 * b + 8].iter().sum::<i32>();
        let (sc, mn) = (tile.scale[r * nb + b], tile.min[r * nb + b]);
        acc += a.d[b] * (sc * i as f32 + mn * s as f32);
    }
    acc
}

/// Decode `rows.len() / row_bytes` (at most [`R`]) rows into the tile buffers, zeroing the
/// rest; `simd`: through the AVX2 decoder (the CPU has it).
fn decode_tile(ty: GgmlType, fmt: Format, simd: bool, rows: &[u8], cols: usize, tb: &mut TileBuf) {
    let nb = cols / 32;
    let rb = ty.row_bytes(cols);
    let nr = rows.len() / rb;
    for r in 0..R {
        let codes = &mut tb.codes[r * cols..(r + 1) * cols];
        let scale = &mut tb.scale[r * nb..(r + 1) * nb];
        let min = &mut tb.min[r * nb..(r + 1) * nb];
        if r < nr {
            let row = &rows[r * rb..(r + 1) * rb];
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: AVX2 is available (a SIMD level); `row` holds `cols` weights and
                // the outputs `cols` codes and `cols / 32` scales and mins.
                unsafe { x86::decode_row_avx2(ty, fmt.signed, row, codes, scale, min) };
                continue;
            }
            decode_row(ty, fmt.signed, row, codes, scale, min);
        } else {
            codes.fill(0);
            scale.fill(0.0);
            min.fill(0.0);
        }
    }
}

dispatch!(decode_row(ty: GgmlType, signed: bool, row: &[u8], codes: &mut [u8], scale: &mut [f32], min: &mut [f32]) -> () {
    use GgmlType::*;
    let nibbles = |qs: &[u8], c: &mut [u8]| {
        for j in 0..16 {
            c[j] = qs[j] & 0xF;
            c[j + 16] = qs[j] >> 4;
        }
    };
    match ty {
        Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 => {
            let ts = ty.type_size();
            for (b, (blk, c)) in row.chunks_exact(ts).zip(codes.chunks_exact_mut(32)).enumerate() {
                scale[b] = f16le(blk, 0);
                min[b] = if matches!(ty, Q4_1 | Q5_1) { f16le(blk, 2) } else { 0.0 };
                match ty {
                    Q4_0 => nibbles(&blk[2..18], c),
                    Q4_1 => nibbles(&blk[4..20], c),
                    Q5_0 | Q5_1 => {
                        let o = if ty == Q5_0 { 2 } else { 4 };
                        let qh = u32::from_le_bytes([blk[o], blk[o + 1], blk[o + 2], blk[o + 3]]);
                        for (d, v) in c.iter_mut().zip(q5_codes(qh, &blk[o + 4..])) {
                            *d = v as u8;
                        }
                    }
                    _ => {
                        let flip = if signed { 0 } else { 0x80 };
                        for (d, w) in c.iter_mut().zip(&blk[2..34]) {
                            *d = w ^ flip;
                        }
                    }
                }
            }
        }
        Q4K => {
            for (sb, blk) in row.chunks_exact(144).enumerate() {
                let (d, dmin) = (f16le(blk, 0), f16le(blk, 2));
                for s in 0..8 {
                    let b = sb * 8 + s;
                    let c = &mut codes[32 * b..32 * b + 32];
                    (scale[b], min[b]) = q4k_sub_block(blk, s, d, dmin, c);
                }
            }
        }
        other => panic!("no multi-token int8 kernel for {}", other.name()),
    }
});

#[cfg(test)]
#[path = "int8_multi_tests.rs"]
mod tests;
