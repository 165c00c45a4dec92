//! ggml weight types: block layouts, dequantization, and quantization for the simple types.
//!
//! Every quantized type stores a row as consecutive blocks. A block holds `block_size`
//! weights in `type_size` bytes. The layouts and formulas below follow ggml's
//! `ggml-quants.c` (the reference that defines the format); the names of fields follow it too.
//! This file is the portable scalar reference; fast kernels (`kernels.rs`) are checked
//! against it.

use half::{bf16, f16};

/// Weight (tensor element) types known to ggml. Codes are the on-disk `ggml_type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    I8,
    I16,
    I32,
    I64,
    F64,
    BF16,
}

pub const QK_K: usize = 256;

impl GgmlType {
    pub fn from_code(code: u32) -> Option<GgmlType> {
        use GgmlType::*;
        Some(match code {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            30 => BF16,
            _ => return None,
        })
    }

    pub fn code(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2K => 10,
            Q3K => 11,
            Q4K => 12,
            Q5K => 13,
            Q6K => 14,
            Q8K => 15,
            I8 => 24,
            I16 => 25,
            I32 => 26,
            I64 => 27,
            F64 => 28,
            BF16 => 30,
        }
    }

    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2K => "Q2_K",
            Q3K => "Q3_K",
            Q4K => "Q4_K",
            Q5K => "Q5_K",
            Q6K => "Q6_K",
            Q8K => "Q8_K",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            BF16 => "BF16",
        }
    }

    /// Weights per block.
    pub fn block_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 | I8 | I16 | I32 | I64 | F64 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 => 32,
            Q2K | Q3K | Q4K | Q5K | Q6K | Q8K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | I32 => 4,
            F16 | BF16 | I16 => 2,
            I8 => 1,
            I64 | F64 => 8,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 36,
            Q2K => 84,
            Q3K => 110,
            Q4K => 144,
            Q5K => 176,
            Q6K => 210,
            Q8K => 292,
        }
    }

    /// Bytes of a row of `n` weights (`n` a multiple of the block size).
    pub fn row_bytes(self, n: usize) -> usize {
        n / self.block_size() * self.type_size()
    }

    /// Types whose rows this crate can dequantize (and so use as weights).
    pub fn is_supported_weight(self) -> bool {
        use GgmlType::*;
        matches!(
            self,
            F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4K | Q5K | Q6K
        )
    }

    /// Parse a user-facing name such as `q4_k` or `f16`.
    pub fn parse(s: &str) -> Option<GgmlType> {
        use GgmlType::*;
        Some(match s.to_ascii_lowercase().as_str() {
            "f32" => F32,
            "f16" => F16,
            "bf16" => BF16,
            "q4_0" => Q4_0,
            "q4_1" => Q4_1,
            "q5_0" => Q5_0,
            "q5_1" => Q5_1,
            "q8_0" => Q8_0,
            "q4_k" => Q4K,
            "q5_k" => Q5K,
            "q6_k" => Q6K,
            _ => return None,
        })
    }
}

#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

// ------------------------------------------------------------------------------------------
// Dequantization (scalar reference)
// ------------------------------------------------------------------------------------------

/// Dequantize one row (`out.len()` weights) from `src` (exactly `ty.row_bytes(out.len())`
/// bytes). Panics only on a caller bug (unsupported type, wrong lengths), which loaders
/// rule out before any row is read.
#[inline(always)]
pub fn dequantize_row(ty: GgmlType, src: &[u8], out: &mut [f32]) {
    debug_assert_eq!(src.len(), ty.row_bytes(out.len()));
    let bs = ty.block_size();
    let ts = ty.type_size();
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        _ => {
            for (blk, y) in src.chunks_exact(ts).zip(out.chunks_exact_mut(bs)) {
                dequantize_block(ty, blk, y);
            }
        }
    }
}

#[inline(always)]
fn dequantize_block(ty: GgmlType, b: &[u8], y: &mut [f32]) {
    match ty {
        GgmlType::Q4_0 => {
            // d: f16 | qs: 16 bytes; low nibbles are weights 0..16, high nibbles 16..32.
            let d = f16_at(b, 0);
            for j in 0..16 {
                let q = b[2 + j];
                y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
                y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
            }
        }
        GgmlType::Q4_1 => {
            // d: f16 | m: f16 | qs: 16 bytes; x = d * q + m.
            let d = f16_at(b, 0);
            let m = f16_at(b, 2);
            for j in 0..16 {
                let q = b[4 + j];
                y[j] = (q & 0x0F) as f32 * d + m;
                y[j + 16] = (q >> 4) as f32 * d + m;
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            // d | (m) | qh: u32 fifth bits | qs: 16 bytes.
            let (d, m, o) = if ty == GgmlType::Q5_0 {
                (f16_at(b, 0), 0.0, 2)
            } else {
                (f16_at(b, 0), f16_at(b, 2), 4)
            };
            let qh = u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
            let off = if ty == GgmlType::Q5_0 { 16 } else { 0 };
            for j in 0..16 {
                let q = b[o + 4 + j];
                let h0 = ((qh >> j) << 4) & 0x10;
                let h1 = (qh >> (j + 12)) & 0x10;
                let x0 = ((q & 0x0F) as u32 | h0) as i32 - off;
                let x1 = ((q >> 4) as u32 | h1) as i32 - off;
                y[j] = x0 as f32 * d + m;
                y[j + 16] = x1 as f32 * d + m;
            }
        }
        GgmlType::Q8_0 => {
            // d: f16 | qs: 32 x i8.
            let d = f16_at(b, 0);
            for j in 0..32 {
                y[j] = (b[2 + j] as i8) as f32 * d;
            }
        }
        GgmlType::Q4K => {
            // d: f16 | dmin: f16 | scales: 12 bytes (8 x 6-bit scale, 8 x 6-bit min) | qs: 128.
            let d = f16_at(b, 0);
            let dmin = f16_at(b, 2);
            let scales = &b[4..16];
            let qs = &b[16..144];
            for (k, q) in qs.chunks_exact(32).enumerate() {
                let (sc1, m1) = scale_min_k4(2 * k, scales);
                let (sc2, m2) = scale_min_k4(2 * k + 1, scales);
                let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                let yy = &mut y[64 * k..64 * k + 64];
                for l in 0..32 {
                    yy[l] = d1 * (q[l] & 0x0F) as f32 - m1;
                    yy[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
                }
            }
        }
        GgmlType::Q5K => {
            // d | dmin | scales: 12 | qh: 32 | qs: 128.
            let d = f16_at(b, 0);
            let dmin = f16_at(b, 2);
            let scales = &b[4..16];
            let qh = &b[16..48];
            let qs = &b[48..176];
            for (k, ql) in qs.chunks_exact(32).enumerate() {
                let (sc1, m1) = scale_min_k4(2 * k, scales);
                let (sc2, m2) = scale_min_k4(2 * k + 1, scales);
                let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                let u1 = 1u8 << (2 * k);
                let u2 = 2u8 << (2 * k);
                let yy = &mut y[64 * k..64 * k + 64];
                for l in 0..32 {
                    let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                    let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                    yy[l] = d1 * ((ql[l] & 0x0F) + h1) as f32 - m1;
                    yy[l + 32] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
                }
            }
        }
        GgmlType::Q6K => {
            // ql: 128 (low 4 bits) | qh: 64 (high 2 bits) | scales: 16 x i8 | d: f16.
            let ql = &b[0..128];
            let qh = &b[128..192];
            let sc = &b[192..208];
            let d = f16_at(b, 208);
            for n in 0..2 {
                let ql = &ql[64 * n..];
                let qh = &qh[32 * n..];
                let sc = &sc[8 * n..];
                let yy = &mut y[128 * n..128 * n + 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    yy[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    yy[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    yy[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    yy[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
            }
        }
        other => unreachable!("dequantize_block called for {}", other.name()),
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) in a K-quant `scales` array
/// (ggml `get_scale_min_k4`).
#[inline(always)]
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

// ------------------------------------------------------------------------------------------
// Quantization of the simple types (reference rounding as in ggml)
// ------------------------------------------------------------------------------------------

/// Quantize a row of `x` into `ty`. Supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, and through
/// `kquant.rs` Q4_K, Q6_K, Q5_0, Q5_1. Returns None for other types.
pub fn quantize_row(ty: GgmlType, x: &[f32]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(ty.row_bytes(x.len()));
    match ty {
        GgmlType::F32 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        GgmlType::F16 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        GgmlType::BF16 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
        GgmlType::Q8_0 => {
            for blk in x.chunks_exact(32) {
                let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend(blk.iter().map(|v| (v * id).round() as i8 as u8));
            }
        }
        GgmlType::Q4_0 => {
            for blk in x.chunks_exact(32) {
                // The value of largest magnitude maps to -8 (ggml's choice keeps its sign).
                let max = blk
                    .iter()
                    .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                for j in 0..16 {
                    let q0 = ((blk[j] * id + 8.5) as i32).min(15) as u8;
                    let q1 = ((blk[j + 16] * id + 8.5) as i32).min(15) as u8;
                    out.push(q0 | (q1 << 4));
                }
            }
        }
        GgmlType::Q4_1 => {
            for blk in x.chunks_exact(32) {
                let min = blk.iter().fold(f32::INFINITY, |a, &v| a.min(v));
                let max = blk.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
                for j in 0..16 {
                    let q0 = (((blk[j] - min) * id + 0.5) as i32).min(15) as u8;
                    let q1 = (((blk[j + 16] - min) * id + 0.5) as i32).min(15) as u8;
                    out.push(q0 | (q1 << 4));
                }
            }
        }
        // K-quants and their row-length fallbacks: model/kquant.rs.
        GgmlType::Q4K | GgmlType::Q6K | GgmlType::Q5_0 | GgmlType::Q5_1 => {
            return super::kquant::quantize_row(ty, x)
        }
        _ => return None,
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn randn(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn round_trip_error_bounds() {
        let x = randn(256, 1);
        for (ty, bound) in [
            (GgmlType::F32, 0.0),
            (GgmlType::F16, 1e-3),
            (GgmlType::BF16, 8e-3),
            (GgmlType::Q8_0, 1.0 / 127.0),
            (GgmlType::Q4_0, 1.0 / 8.0),
            (GgmlType::Q4_1, 2.0 / 15.0),
        ] {
            let q = quantize_row(ty, &x).expect("supported");
            assert_eq!(q.len(), ty.row_bytes(x.len()));
            let mut y = vec![0f32; x.len()];
            dequantize_row(ty, &q, &mut y);
            let err = x
                .iter()
                .zip(&y)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                err <= bound * 1.01,
                "{}: max error {err} > {bound}",
                ty.name()
            );
        }
    }

    #[test]
    fn codes_round_trip() {
        for code in 0..40 {
            if let Some(t) = GgmlType::from_code(code) {
                assert_eq!(t.code(), code);
                assert_eq!(t.row_bytes(t.block_size() * 3), t.type_size() * 3);
            }
        }
    }
}
