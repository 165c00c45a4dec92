//! x86-64 multi-token int8 tile kernels (see `int8_multi.rs`): written once in
//! `multi_kernels!` and compiled twice, with the integer dot of 4-byte groups by `vpdpbusd`
//! (AVX-512 VL + VNNI, 256-bit registers) or `maddubs` + `madd` (AVX2; the shared
//! [`dp_avx2`]/[`dp_vnni`] of the one-token kernels).
//!
//! Per block: each of the `T` activation vectors is loaded once and dotted with the `R` rows'
//! broadcast codes (two accumulators per row alternate, hiding the dot latency); then per row
//! one conversion, one multiply by the lanes' activation scales and one FMA by the row's
//! block scale (plus one FMA for a min).
//!
//! Safety contract of every `unsafe fn` here: the CPU has the enabled features and the
//! tile and group are those documented in `int8_multi.rs` for `cols` values.

#![allow(clippy::missing_safety_doc, clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::{Group, Tile, R};
use crate::model::int8_decode::x86::{bits_avx2, dp_avx2, dp_vnni, f16_1, nibbles32};
use crate::model::quant::{scale_min_k4, GgmlType};

/// Ask for `bytes` in L1 (the next tile's weights, fetched while this tile computes: the
/// decode is the only pass that reads the weights, and would otherwise wait on memory).
#[inline]
pub fn prefetch(bytes: &[u8]) {
    for line in bytes.chunks(64) {
        // SAFETY: a prefetch is a hint (no fault, no architectural effect); SSE is baseline
        // on x86-64.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr() as *const i8) };
    }
}

/// [`decode_row`](super::decode_row) with AVX2 (32 codes per store). Needs
/// `row.len() == ty.row_bytes(codes.len())`, `scale` and `min` of `codes.len() / 32`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn decode_row_avx2(
    ty: GgmlType,
    signed: bool,
    row: &[u8],
    codes: &mut [u8],
    scale: &mut [f32],
    min: &mut [f32],
) {
    use GgmlType::*;
    let nb = codes.len() / 32;
    let (rp, cp) = (row.as_ptr(), codes.as_mut_ptr());
    let (sp, mp) = (scale.as_mut_ptr(), min.as_mut_ptr());
    let store = |b: usize, v: __m256i| _mm256_storeu_si256(cp.add(32 * b) as *mut __m256i, v);
    match ty {
        Q4_0 => {
            for b in 0..nb {
                let p = rp.add(18 * b);
                *sp.add(b) = f16_1(p);
                *mp.add(b) = 0.0;
                store(b, nibbles32(p.add(2)));
            }
        }
        Q4_1 => {
            // Four blocks' (scale, min) pairs converted at once: [d0 m0 .. d3 m3] -> d0..d3
            // and m0..m3 (one conversion instead of eight; the same values).
            let split = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
            let rd = |p: *const u8| (p as *const i32).read_unaligned();
            let mut b = 0;
            while b + 4 <= nb {
                let p = rp.add(20 * b);
                let pairs = _mm_setr_epi32(rd(p), rd(p.add(20)), rd(p.add(40)), rd(p.add(60)));
                let f = _mm256_permutevar8x32_ps(_mm256_cvtph_ps(pairs), split);
                _mm_storeu_ps(sp.add(b), _mm256_castps256_ps128(f));
                _mm_storeu_ps(mp.add(b), _mm256_extractf128_ps::<1>(f));
                for i in 0..4 {
                    store(b + i, nibbles32(p.add(20 * i + 4)));
                }
                b += 4;
            }
            for b in b..nb {
                let p = rp.add(20 * b);
                *sp.add(b) = f16_1(p);
                *mp.add(b) = f16_1(p.add(2));
                store(b, nibbles32(p.add(4)));
            }
        }
        Q5_0 | Q5_1 => {
            let (ts, o) = if ty == Q5_0 { (22, 2) } else { (24, 4) };
            for b in 0..nb {
                let p = rp.add(ts * b);
                *sp.add(b) = f16_1(p);
                *mp.add(b) = if ty == Q5_1 { f16_1(p.add(2)) } else { 0.0 };
                let qh = (p.add(o) as *const u32).read_unaligned();
                store(b, bits_avx2(nibbles32(p.add(o + 4)), qh));
            }
        }
        Q8_0 => {
            let flip = _mm256_set1_epi8(if signed { 0 } else { 0x80u8 as i8 });
            // Eight blocks' scales converted at once (the same values as one by one).
            let rd = |b: usize| (rp.add(34 * b) as *const i16).read_unaligned();
            let mut b = 0;
            while b + 8 <= nb {
                let h = _mm_setr_epi16(
                    rd(b),
                    rd(b + 1),
                    rd(b + 2),
                    rd(b + 3),
                    rd(b + 4),
                    rd(b + 5),
                    rd(b + 6),
                    rd(b + 7),
                );
                _mm256_storeu_ps(sp.add(b), _mm256_cvtph_ps(h));
                _mm256_storeu_ps(mp.add(b), _mm256_setzero_ps());
                for i in b..b + 8 {
                    let w = _mm256_loadu_si256(rp.add(34 * i + 2) as *const __m256i);
                    store(i, _mm256_xor_si256(w, flip));
                }
                b += 8;
            }
            for b in b..nb {
                let p = rp.add(34 * b);
                *sp.add(b) = f16_1(p);
                *mp.add(b) = 0.0;
                let w = _mm256_loadu_si256(p.add(2) as *const __m256i);
                store(b, _mm256_xor_si256(w, flip));
            }
        }
        Q4K => {
            let m4 = _mm256_set1_epi8(0xF);
            for sb in 0..nb / 8 {
                let p = rp.add(144 * sb);
                let blk = std::slice::from_raw_parts(p, 144);
                let (d, dmin) = (f16_1(p), f16_1(p.add(2)));
                for s in 0..8 {
                    let (sc, m) = scale_min_k4(s, &blk[4..16]);
                    *sp.add(8 * sb + s) = d * sc as f32;
                    *mp.add(8 * sb + s) = -dmin * m as f32;
                }
                for j in 0..4 {
                    let q = _mm256_loadu_si256(p.add(16 + 32 * j) as *const __m256i);
                    store(8 * sb + 2 * j, _mm256_and_si256(q, m4));
                    store(
                        8 * sb + 2 * j + 1,
                        _mm256_and_si256(_mm256_srli_epi16(q, 4), m4),
                    );
                }
            }
        }
        other => panic!("no multi-token int8 kernel for {}", other.name()),
    }
}

macro_rules! multi_kernels {
    ($feat:tt, $dp:ident, $name:ident) => {
        /// The `32 / T` code bytes at `p` repeated over the 8 lanes.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn bcast<const T: usize>(p: *const u8) -> __m256i {
            match T {
                8 => _mm256_set1_epi32((p as *const i32).read_unaligned()),
                4 => _mm256_set1_epi64x((p as *const i64).read_unaligned()),
                2 => _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i)),
                _ => _mm256_loadu_si256(p as *const __m256i),
            }
        }

        /// `acc + w . x` per 4-byte lane; signed codes (`S`) by the sign trick.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn dot<const S: bool>(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
            if S {
                $dp(acc, _mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
            } else {
                $dp(acc, w, x)
            }
        }

        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn imp<const T: usize, const S: bool>(
            tile: Tile<'_>,
            g: Group<'_>,
            cols: usize,
            out: &mut [f32; 8 * R],
        ) {
            let per = 8 / T;
            let nb = cols / 32;
            let (cp, sp, mp) = (tile.codes.as_ptr(), tile.scale.as_ptr(), tile.min.as_ptr());
            let (qp, dxp, nlp, msp) = (g.q.as_ptr(), g.dx.as_ptr(), g.nl.as_ptr(), g.ms.as_ptr());
            let count = _mm_cvtsi32_si128(tile.fmt.shift as i32);
            let zero = _mm256_setzero_si256();
            let mut f = [_mm256_setzero_ps(); R];
            let mut fm = [_mm256_setzero_ps(); R];
            for b in 0..nb {
                // Integer offsets: start at offset * -(lane sums); a shift of 32 gives 0.
                let init =
                    _mm256_sll_epi32(_mm256_loadu_si256(nlp.add(8 * b) as *const __m256i), count);
                // Four short dot chains per row (the dot's latency, not its throughput, bound
                // two chains of four).
                let mut acc = [[zero; R]; 4];
                acc[0] = [init; R];
                for j in 0..T {
                    let xv = _mm256_loadu_si256(qp.add((b * T + j) * 32) as *const __m256i);
                    for r in 0..R {
                        let w = bcast::<T>(cp.add(r * cols + 32 * b + 4 * per * j));
                        acc[j % 4][r] = dot::<S>(acc[j % 4][r], w, xv);
                    }
                }
                let dx = _mm256_loadu_ps(dxp.add(8 * b));
                for r in 0..R {
                    let mut a = acc[0][r];
                    for k in 1..T.min(4) {
                        a = _mm256_add_epi32(a, acc[k][r]);
                    }
                    let s = _mm256_set1_ps(*sp.add(r * nb + b));
                    f[r] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(a), dx), s, f[r]);
                }
                if tile.fmt.min {
                    let ms = _mm256_loadu_ps(msp.add(8 * b));
                    for r in 0..R {
                        fm[r] = _mm256_fmadd_ps(ms, _mm256_set1_ps(*mp.add(r * nb + b)), fm[r]);
                    }
                }
            }
            // Lane l holds token l / per: sum each token's lanes.
            for r in 0..R {
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(f[r], fm[r]));
                for i in 0..T {
                    out[r * 8 + i] = lanes[i * per..(i + 1) * per].iter().sum();
                }
            }
        }

        #[target_feature(enable = $feat)]
        pub unsafe fn $name(tile: Tile<'_>, g: Group<'_>, cols: usize, out: &mut [f32; 8 * R]) {
            match (g.tt, tile.fmt.signed) {
                (8, false) => imp::<8, false>(tile, g, cols, out),
                (4, false) => imp::<4, false>(tile, g, cols, out),
                (2, false) => imp::<2, false>(tile, g, cols, out),
                (_, false) => imp::<1, false>(tile, g, cols, out),
                (8, true) => imp::<8, true>(tile, g, cols, out),
                (4, true) => imp::<4, true>(tile, g, cols, out),
                (2, true) => imp::<2, true>(tile, g, cols, out),
                (_, true) => imp::<1, true>(tile, g, cols, out),
            }
        }
    };
}

mod avx2 {
    use super::*;
    multi_kernels!("avx2,fma,f16c", dp_avx2, tile_avx2);
}

mod vnni {
    use super::*;
    multi_kernels!(
        "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
        dp_vnni,
        tile_vnni
    );
}

pub use avx2::tile_avx2;
pub use vnni::tile_vnni;
