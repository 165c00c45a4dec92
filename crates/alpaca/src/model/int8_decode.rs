//! Fast single-token decode with 8-bit activations: our own design, not ggml's arithmetic.
//!
//! Decoding one token multiplies every weight matrix by one activation row. The `f32`
//! kernels of [`kernels`](crate::model::kernels) dequantize each weight block to `f32` and
//! FMA it with `f32` activations; on a Zen 4 (512-bit ops split in two 256-bit halves) that is
//! ~14 micro-ops per 32 Q8_0 weights and decode becomes compute-bound. Here the activation
//! row is quantized once per product ([`quantize_acts`]) and every weight block is dotted
//! with it on integers (`vpdpbusd` on AVX-512 VNNI, `maddubs`/`madd` on AVX2):
//!
//! - activations: per 32-value block `b`, `x ~= d_b * q` with `q` in `[-127, 127]`,
//!   `d_b = max|x| / 127` kept in `f32`, plus the negated sums of `q` over each group of 4
//!   values (one 32-bit lane of an integer dot);
//! - weights with an integer offset (`Q5_0`: `q - 16`, `Q6_K`: `q - 32`) are dotted as
//!   unsigned bytes into an accumulator that starts at `offset * -lane sums` (one shift per
//!   block, exact); float offsets (`Q5_1`, K-quant mins) add `m * d_x * sum(q_x)` per block;
//! - `Q8_0` uses the unsigned offset too on VNNI (`w + 128`, from `128 * -lane sums`) and
//!   the sign trick (`|w|` unsigned times `x` with `w`'s sign) on AVX2;
//! - `Q8_0`, `Q5_0` and `Q6_K` go eight rows per kernel call ([`Int8Dot8`]), each row one FMA
//!   chain in block order, `acc = isum_b * (d_w * d_x) + acc` (`Q6_K`: the sub-block scales
//!   applied on integers), exactly the scalar reference's arithmetic (so their results are
//!   bit-identical at every level and thread count);
//! - the K-quant sub-block scales are applied in `f32` per 32 values (the activation scale
//!   changes at every 32-value block anyway).
//!
//! The integer sums are exact, so the three levels (scalar reference, AVX2, AVX-512 VNNI)
//! differ only in the order of the `f32` additions. The results differ from the `f32`
//! kernels by the activation rounding (relative error ~1/254 per value, averaging out over
//! a row): the policy of when this path runs lives in [`ActMode`] (see docs/COMPAT.md).

use std::cell::RefCell;

use crate::model::kernels::{self, OutPtr};
use crate::model::ops::{dispatch, hw_simd_level, SimdLevel};
use crate::model::quant::{scale_min_k4, GgmlType};

#[cfg(target_arch = "x86_64")]
#[path = "int8_decode_x86.rs"]
pub(crate) mod x86;

/// Which activations decode products use, stored per matrix
/// ([`QMatrix::act`](crate::model::linear::QMatrix)) and chosen per model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ActMode {
    /// `f32` activations everywhere (transformers parity; `--f32-activations`).
    #[default]
    F32,
    /// `f32` for one-token products and prompts; 8-bit activations in batched decode steps
    /// (2+ sequences, [`int8_multi`](crate::model::int8_multi)) for the types with such
    /// kernels.
    Int8Batch,
    /// 8-bit activations and integer dots for one-token products, prompts
    /// ([`int8_gemm`](crate::model::int8_gemm), on VNNI CPUs) and batched decode steps, for
    /// the weight types that have such kernels ([`supported`]).
    Int8,
}

/// Whether `ty` has int8-activation kernels.
pub fn supported(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, Q8_0 | Q5_0 | Q5_1 | Q4K | Q6K)
}

/// The "auto" policy: int8 activations when the model's dominant weight type (most weight
/// bytes) is one of the types llama.cpp's users pick for quality (`Q8_0`, `Q5_x`, K-quants);
/// for `Q4_0`/`Q4_1`/`F16`/`F32` models `f32` in one-token products (the default Q4_1 model
/// keeps its greedy parity with transformers) and int8 only in batched decode steps, which
/// are compute-bound.
pub fn auto_mode(dominant: GgmlType) -> ActMode {
    use GgmlType::*;
    match dominant {
        Q8_0 | Q5_0 | Q5_1 | Q4K | Q5K | Q6K => ActMode::Int8,
        _ => ActMode::Int8Batch,
    }
}

/// A quantized activation row, borrowed: `q` (`cols` values), `d` (one scale per 32-value
/// block) and `nl` (minus the sum of `q` over each group of 4 values, eight per block).
#[derive(Clone, Copy)]
pub struct Acts<'a> {
    pub q: &'a [i8],
    pub d: &'a [f32],
    pub nl: &'a [i32],
}

impl Acts<'_> {
    /// Sum of the quantized values of block `b`.
    #[inline(always)]
    fn sum(&self, b: usize) -> i32 {
        -self.nl[8 * b..8 * b + 8].iter().sum::<i32>()
    }

    /// Sum of the quantized values of half `h` (16 values) of block `b`.
    #[inline(always)]
    fn half_sum(&self, b: usize, h: usize) -> i32 {
        -self.nl[8 * b + 4 * h..8 * b + 4 * h + 4]
            .iter()
            .sum::<i32>()
    }
}

/// An owned quantized activation row (reused between products: no allocation per token).
#[derive(Default, Debug, Clone)]
pub struct ActBuf {
    pub q: Vec<i8>,
    pub d: Vec<f32>,
    pub nl: Vec<i32>,
}

impl ActBuf {
    pub fn view(&self) -> Acts<'_> {
        Acts {
            q: &self.q,
            d: &self.d,
            nl: &self.nl,
        }
    }
}

/// Quantize `x` (a multiple of 32 values) into `buf` (resized as needed).
pub fn quantize_acts(x: &[f32], buf: &mut ActBuf) {
    assert!(
        x.len().is_multiple_of(32),
        "int8 activations need whole blocks"
    );
    let nb = x.len() / 32;
    buf.q.resize(x.len(), 0);
    buf.d.resize(nb, 0.0);
    buf.nl.resize(8 * nb, 0);
    quantize_row(x, &mut buf.q, &mut buf.d, &mut buf.nl);
}

/// Quantize `x` (whole 32-value blocks) into `q` (same length), `d` and `nl` (see [`Acts`]):
/// the AVX-512 kernel where the CPU has it (bit-identical to the portable
/// [`quantize_impl`], which is the reference), else the portable code.
pub fn quantize_row(x: &[f32], q: &mut [i8], d: &mut [f32], nl: &mut [i32]) {
    let nb = x.len() / 32;
    assert!(q.len() >= nb * 32 && d.len() >= nb && nl.len() >= 8 * nb);
    #[cfg(target_arch = "x86_64")]
    if kernels::default_level() == SimdLevel::Avx512 {
        // SAFETY: the CPU has AVX-512 (F, BW, VL); the lengths were checked.
        return unsafe { x86::quantize_512(x, q, d, nl) };
    }
    quantize_impl(x, q, d, nl)
}

dispatch!(quantize_impl(x: &[f32], q: &mut [i8], d: &mut [f32], nl: &mut [i32]) -> () {
    for (((xb, qb), db), sb) in x
        .chunks_exact(32)
        .zip(q.chunks_exact_mut(32))
        .zip(d.iter_mut())
        .zip(nl.chunks_exact_mut(8))
    {
        // Eight running maxima (vectorizes; a single fold compiles to a serial chain).
        let mut m8 = [0f32; 8];
        for c in xb.chunks_exact(8) {
            for (m, v) in m8.iter_mut().zip(c) {
                *m = m.max(v.abs());
            }
        }
        let amax = m8.iter().fold(0f32, |m, v| m.max(*v));
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        *db = amax / 127.0;
        let mut tmp = [0i32; 32];
        for (t, v) in tmp.iter_mut().zip(xb) {
            // |v * id| <= 127 (up to rounding of id): the clamp only guards that rounding.
            *t = ((v * id).round_ties_even() as i32).clamp(-127, 127);
        }
        for (o, t) in qb.iter_mut().zip(&tmp) {
            *o = *t as i8;
        }
        for (o, t) in sb.iter_mut().zip(tmp.chunks_exact(4)) {
            *o = -(t[0] + t[1] + t[2] + t[3]);
        }
    }
});

/// An int8 row kernel: `(row bytes, quantized activations) -> W[r] . x`.
///
/// Unsafe to call: the kernel may use CPU features ([`kernel`] only hands out supported
/// ones) and indexes unchecked: `row.len() == ty.row_bytes(n)` with `n = acts.q.len()`,
/// `acts.d.len() >= n / 32`, `acts.nl.len() >= n / 4`.
pub type Int8Dot = unsafe fn(&[u8], Acts<'_>) -> f32;

/// An eight-row int8 kernel `(row0, stride, acts, out, ostride)`: for `k < 8`,
/// `out[k * ostride] = W[row0 + k * stride] . x` (pointers and strides in bytes and `f32`s;
/// zero strides compute one row).
///
/// Unsafe to call: as [`Int8Dot`] for each of the eight rows, and `out` valid for writes at
/// the eight offsets.
pub type Int8Dot8 = unsafe fn(*const u8, usize, Acts<'_>, *mut f32, usize);

/// A type's int8 kernel at some level: one row or eight rows per call.
#[derive(Clone, Copy)]
pub enum Kernel {
    Row(Int8Dot),
    Rows8(Int8Dot8),
}

/// The kernel family: VNNI needs AVX-512 VL + VNNI on top of [`SimdLevel::Avx512`]; an
/// AVX-512 CPU without VNNI takes the AVX2 kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Scalar,
    Avx2,
    Vnni,
}

/// The int8 level for a `f32` kernel level (clamped to what the CPU has).
pub fn level_for(s: SimdLevel) -> Level {
    let s = s.min(hw_simd_level());
    #[cfg(target_arch = "x86_64")]
    {
        if s == SimdLevel::Avx512 && std::arch::is_x86_feature_detected!("avx512vnni") {
            return Level::Vnni;
        }
        if s >= SimdLevel::Avx2 {
            return Level::Avx2;
        }
    }
    let _ = s;
    Level::Scalar
}

/// Whether the CPU runs `level`.
pub fn available(level: Level) -> bool {
    level <= level_for(SimdLevel::Avx512)
}

/// The kernel of `ty` at `level` (clamped to what the CPU has); `None` for types without one.
pub fn kernel(level: Level, ty: GgmlType) -> Option<Kernel> {
    if !supported(ty) {
        return None;
    }
    let level = level.min(level_for(SimdLevel::Avx512));
    #[cfg(target_arch = "x86_64")]
    {
        use GgmlType::*;
        use Kernel::{Row, Rows8};
        let k = match (level, ty) {
            (Level::Vnni, Q8_0) => Some(Rows8(x86::q8_0_vnni)),
            (Level::Vnni, Q5_0) => Some(Rows8(x86::q5_0_vnni)),
            (Level::Vnni, Q5_1) => Some(Row(x86::q5_1_vnni)),
            (Level::Vnni, Q4K) => Some(Row(x86::q4_k_vnni)),
            (Level::Vnni, Q6K) => Some(Rows8(x86::q6_k_vnni)),
            (Level::Avx2, Q8_0) => Some(Rows8(x86::q8_0_avx2)),
            (Level::Avx2, Q5_0) => Some(Rows8(x86::q5_0_avx2)),
            (Level::Avx2, Q5_1) => Some(Row(x86::q5_1_avx2)),
            (Level::Avx2, Q4K) => Some(Row(x86::q4_k_avx2)),
            (Level::Avx2, Q6K) => Some(Rows8(x86::q6_k_avx2)),
            _ => None,
        };
        if k.is_some() {
            return k;
        }
    }
    Some(Kernel::Row(scalar_kernel(ty)))
}

/// `W[r] . x` for one row at `level` (tests call every level). Panics if the CPU lacks
/// `level`, the type has no kernel, or the lengths do not match.
pub fn dot_row_at(level: Level, ty: GgmlType, row: &[u8], acts: Acts<'_>) -> f32 {
    assert!(available(level), "CPU lacks {level:?}");
    let n = acts.q.len();
    check_acts(ty, row.len(), acts);
    assert!(n.is_multiple_of(ty.block_size()));
    // SAFETY: the level is supported and the lengths were checked (eight times one row).
    match kernel(level, ty).expect("a type with int8 kernels") {
        Kernel::Row(k) => unsafe { k(row, acts) },
        Kernel::Rows8(k) => {
            let mut y = f32::NAN;
            unsafe { k(row.as_ptr(), 0, acts, &mut y, 0) };
            y
        }
    }
}

/// Rows `lo..hi` through an eight-row kernel, in eight interleaved chunks of
/// `(hi - lo) / 8` consecutive rows (each lane streams through memory in order: eight
/// adjacent rows per call defeat the hardware prefetchers), then the remainder as the last
/// eight rows again (recomputing a row gives the same bits), or one row per call when there
/// are fewer than eight.
///
/// Unsafe: as [`Int8Dot8`] for every row of `data` (`rb` bytes each) in `lo..hi`, and `out`
/// valid for writes at `lo..hi`.
unsafe fn rows8_range(
    kern: Int8Dot8,
    data: &[u8],
    rb: usize,
    lo: usize,
    hi: usize,
    acts: Acts<'_>,
    out: *mut f32,
) {
    let n = hi - lo;
    let ch = n / 8;
    let row = |r: usize| data[r * rb..(r + 1) * rb].as_ptr();
    for i in 0..ch {
        kern(row(lo + i), ch * rb, acts, out.add(lo + i), ch);
    }
    if n.is_multiple_of(8) {
        return;
    }
    if n >= 8 {
        kern(row(hi - 8), rb, acts, out.add(hi - 8), 1);
    } else {
        for r in lo..hi {
            kern(row(r), 0, acts, out.add(r), 0);
        }
    }
}

fn check_acts(ty: GgmlType, row_bytes: usize, acts: Acts<'_>) {
    let n = acts.q.len();
    assert_eq!(row_bytes, ty.row_bytes(n));
    assert!(acts.d.len() >= n / 32 && acts.nl.len() >= n / 4);
}

thread_local! {
    static ACTS: RefCell<ActBuf> = RefCell::new(ActBuf::default());
}

/// `y[r] = W[r] . x` for one token through the int8 kernels: `x` is quantized once into a
/// per-thread buffer, then weight rows are split over the thread pool like the `f32`
/// decode ([`kernels::matvec_fused`]). Falls back to the `f32` kernels for types without
/// int8 kernels or rows that are not whole 32-value blocks.
#[allow(clippy::too_many_arguments)]
pub fn matvec(
    level: Level,
    ty: GgmlType,
    data: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    y: &mut [f32],
) {
    kernels::check_shapes(ty, data, rows, cols, x, 1, y);
    let kern = match kernel(level, ty) {
        Some(k) if cols.is_multiple_of(32) && cols.is_multiple_of(ty.block_size()) => k,
        _ => {
            let f = kernels::default_level();
            return kernels::matvec_fused(f, ty, data, rows, cols, x, 1, y);
        }
    };
    let rb = ty.row_bytes(cols);
    // Held across `par_rows`: see `with_scratch`.
    kernels::with_scratch(&ACTS, |buf| {
        quantize_acts(x, buf);
        let acts = buf.view();
        let out = OutPtr::new(y);
        // SAFETY (both arms): `kern` is of a supported level; every row is
        // `ty.row_bytes(cols)` bytes and `acts` was quantized from `cols` values (checked
        // above). Output indices are in bounds and owned by this task's row range.
        kernels::par_rows(rows, rb, 16, |range| match kern {
            Kernel::Row(k) => {
                for r in range {
                    let row = &data[r * rb..(r + 1) * rb];
                    unsafe { *out.get().add(r) = k(row, acts) };
                }
            }
            Kernel::Rows8(k) => unsafe {
                rows8_range(k, data, rb, range.start, range.end, acts, out.get())
            },
        });
    });
}

// ------------------------------------------------------------------------------------------
// Portable kernels (the reference)
// ------------------------------------------------------------------------------------------

fn scalar_kernel(ty: GgmlType) -> Int8Dot {
    use GgmlType::*;
    match ty {
        Q8_0 => scalar_q8_0,
        Q5_0 => scalar_q5_0,
        Q5_1 => scalar_q5_1,
        Q4K => scalar_q4_k,
        Q6K => scalar_q6_k,
        other => panic!("no int8 kernel for {}", other.name()),
    }
}

#[inline(always)]
pub(crate) fn f16le(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// `sum_j w[j] * x[j]` on integers.
#[inline(always)]
fn idot(w: impl Iterator<Item = i32>, x: &[i8]) -> i32 {
    w.zip(x).map(|(a, b)| a * *b as i32).sum()
}

/// Sub-block `s` (0..8) of the Q4_K super-block `blk` (scales `d`, `dmin` read from its
/// head): its 32 unsigned 4-bit codes into `codes`, and its scale `d * sc` and min
/// `-dmin * m` (the integer kernels' decoded form, shared by the prompt GEMM and the
/// multi-token kernels).
#[inline(always)]
pub(crate) fn q4k_sub_block(
    blk: &[u8],
    s: usize,
    d: f32,
    dmin: f32,
    codes: &mut [u8],
) -> (f32, f32) {
    let (sc, m) = scale_min_k4(s, &blk[4..16]);
    let q = &blk[16 + 32 * (s / 2)..16 + 32 * (s / 2) + 32];
    let shift = 4 * (s % 2);
    for (c, v) in codes.iter_mut().zip(q) {
        *c = (v >> shift) & 0xF;
    }
    (d * sc as f32, -dmin * m as f32)
}

/// The 32 unsigned 5-bit codes of a Q5_0/Q5_1 block (`qh` bits, then 16 nibble bytes).
#[inline(always)]
pub(crate) fn q5_codes(qh: u32, qs: &[u8]) -> [i32; 32] {
    let mut c = [0i32; 32];
    for j in 0..16 {
        c[j] = (qs[j] & 0xF) as i32 | (((qh >> j) & 1) << 4) as i32;
        c[j + 16] = (qs[j] >> 4) as i32 | (((qh >> (j + 16)) & 1) << 4) as i32;
    }
    c
}

// Q8_0 and Q5_0: one FMA per block in block order, the eight-row kernels' arithmetic (the
// integer sums are below 2^24, exact in f32).
unsafe fn scalar_q8_0(row: &[u8], a: Acts<'_>) -> f32 {
    let mut acc = 0f32;
    for (b, (blk, xq)) in row.chunks_exact(34).zip(a.q.chunks_exact(32)).enumerate() {
        let i = idot(blk[2..].iter().map(|w| *w as i8 as i32), xq);
        acc = (i as f32).mul_add(f16le(blk, 0) * a.d[b], acc);
    }
    acc
}

unsafe fn scalar_q5_0(row: &[u8], a: Acts<'_>) -> f32 {
    let mut acc = 0f32;
    for (b, (blk, xq)) in row.chunks_exact(22).zip(a.q.chunks_exact(32)).enumerate() {
        let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
        let i = idot(q5_codes(qh, &blk[6..]).into_iter(), xq) - 16 * a.sum(b);
        acc = (i as f32).mul_add(f16le(blk, 0) * a.d[b], acc);
    }
    acc
}

unsafe fn scalar_q5_1(row: &[u8], a: Acts<'_>) -> f32 {
    let mut acc = 0f32;
    for (b, (blk, xq)) in row.chunks_exact(24).zip(a.q.chunks_exact(32)).enumerate() {
        let qh = u32::from_le_bytes([blk[4], blk[5], blk[6], blk[7]]);
        let i = idot(q5_codes(qh, &blk[8..]).into_iter(), xq);
        let (d, m) = (f16le(blk, 0), f16le(blk, 2));
        acc += a.d[b] * (d * i as f32 + m * a.sum(b) as f32);
    }
    acc
}

unsafe fn scalar_q4_k(row: &[u8], a: Acts<'_>) -> f32 {
    let mut acc = 0f32;
    for (sb, blk) in row.chunks_exact(144).enumerate() {
        let (d, dmin) = (f16le(blk, 0), f16le(blk, 2));
        let (sc, qs) = (&blk[4..16], &blk[16..]);
        for s in 0..8 {
            let b = sb * 8 + s;
            let (scale, min) = scale_min_k4(s, sc);
            let q = &qs[32 * (s / 2)..32 * (s / 2) + 32];
            let shift = 4 * (s % 2);
            let i = idot(
                q.iter().map(|v| ((v >> shift) & 0xF) as i32),
                &a.q[32 * b..],
            );
            let f = d * scale as f32 * i as f32 - dmin * min as f32 * a.sum(b) as f32;
            acc += a.d[b] * f;
        }
    }
    acc
}

/// The 256 unsigned 6-bit codes of a Q6_K super-block (ggml's element order).
#[inline(always)]
pub(super) fn q6_codes(blk: &[u8]) -> [i32; 256] {
    let (ql, qh) = (&blk[..128], &blk[128..192]);
    let mut c = [0i32; 256];
    for n in 0..2 {
        let (l0, h0) = (&ql[64 * n..], &qh[32 * n..]);
        for l in 0..32 {
            let h = h0[l] as i32;
            let o = 128 * n + l;
            c[o] = (l0[l] & 0xF) as i32 | (h & 3) << 4;
            c[o + 32] = (l0[l + 32] & 0xF) as i32 | ((h >> 2) & 3) << 4;
            c[o + 64] = (l0[l] >> 4) as i32 | ((h >> 4) & 3) << 4;
            c[o + 96] = (l0[l + 32] >> 4) as i32 | ((h >> 6) & 3) << 4;
        }
    }
    c
}

unsafe fn scalar_q6_k(row: &[u8], a: Acts<'_>) -> f32 {
    let mut acc = 0f32;
    for (sb, blk) in row.chunks_exact(210).enumerate() {
        let codes = q6_codes(blk);
        let d = f16le(blk, 208);
        for g in 0..8 {
            let b = sb * 8 + g;
            let mut i = 0i32;
            for h in 0..2 {
                let e = 32 * g + 16 * h;
                let x = &a.q[32 * b + 16 * h..32 * b + 16 * h + 16];
                let sc = blk[192 + 2 * g + h] as i8 as i32;
                i += sc * (idot(codes[e..e + 16].iter().copied(), x) - 32 * a.half_sum(b, h));
            }
            // |i| <= 2 * 128 * 16 * 32 * 127 < 2^24: exact in f32 (the kernels' arithmetic).
            acc = (i as f32).mul_add(d * a.d[b], acc);
        }
    }
    acc
}

#[cfg(test)]
#[path = "int8_decode_tests.rs"]
pub(crate) mod tests;
