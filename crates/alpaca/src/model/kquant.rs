//! Quantizers for the K-quants (Q4_K, Q6_K) and for the types llama.cpp falls back to when a
//! row is not a multiple of the 256-weight super-block (Q5_0, Q5_1).
//!
//! The algorithms follow ggml's reference quantizers (`quantize_row_q4_K_ref` with its
//! weighted min/scale search `make_qkx2_quants`, `quantize_row_q6_K_ref` with the
//! symmetric search `make_qx_quants`, and the plain Q5_0/Q5_1 rounding), written from their
//! description: rounding is to nearest, ties to even, as ggml's `nearest_int`, so the bytes
//! agree with `llama-quantize` without an importance matrix. Layouts are the ones
//! [`dequantize_row`](super::quant::dequantize_row) reads.

use half::f16;

use super::quant::{scale_min_k4, GgmlType, QK_K};

/// Below this, a group is all zeros (ggml's `GROUP_MAX_EPS`).
const GROUP_MAX_EPS: f32 = 1e-15;

/// Quantize a row into one of the types of this file; None for any other type. The row
/// length must be a multiple of the type's block size (callers check; see
/// [`fallback_type`](crate::export::fallback_type)).
pub fn quantize_row(ty: GgmlType, x: &[f32]) -> Option<Vec<u8>> {
    let bs = ty.block_size();
    if !x.len().is_multiple_of(bs) {
        return None;
    }
    let mut out = Vec::with_capacity(ty.row_bytes(x.len()));
    for blk in x.chunks_exact(bs) {
        match ty {
            GgmlType::Q4K => quantize_block_q4_k(blk, &mut out),
            GgmlType::Q6K => quantize_block_q6_k(blk, &mut out),
            GgmlType::Q5_0 => quantize_block_q5_0(blk, &mut out),
            GgmlType::Q5_1 => quantize_block_q5_1(blk, &mut out),
            _ => return None,
        }
    }
    Some(out)
}

/// ggml's `nearest_int`: round to nearest, ties to even.
#[inline(always)]
fn nearest_int(x: f32) -> i32 {
    x.round_ties_even() as i32
}

/// Fit `x ~ scale * L + min` with `L` in `0..=nmax` and `min <= 0`, minimizing the weighted
/// squared error: start from the min/max grid, then try `nstep + 1` slightly stretched grids
/// and solve the least-squares scale and min for each. Returns `(scale, -min)`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    l_aux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out.iter_mut().for_each(|l| *l = 0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * diff * diff;
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            l_aux[i] = l as u8;
            let w = weights[i];
            let l = l as f32;
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * l_aux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * diff * diff;
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&l_aux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// One Q4_K super-block: 8 sub-blocks of 32 weights, each `d * sc * q - dmin * m` with 6-bit
/// `sc`, `m` and 4-bit `q`.
fn quantize_block_q4_k(x: &[f32], out: &mut Vec<u8>) {
    let mut l = [0u8; QK_K];
    let mut l_aux = [0u8; 32];
    let mut weights = [0f32; 32];
    let mut mins = [0f32; QK_K / 32];
    let mut scales = [0f32; QK_K / 32];
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        let sum_x2: f32 = xs.iter().fold(0.0, |s, v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (sc, mn) = make_qkx2_quants(
            15,
            xs,
            &weights,
            &mut l[32 * j..32 * j + 32],
            &mut l_aux,
            -1.0,
            0.1,
            20,
        );
        scales[j] = sc;
        mins[j] = mn;
        max_scale = max_scale.max(sc);
        max_min = max_min.max(mn);
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut sc12 = [0u8; 12];
    for j in 0..QK_K / 32 {
        let ls = nearest_int(inv_scale * scales[j]).clamp(0, 63) as u8;
        let lm = nearest_int(inv_min * mins[j]).clamp(0, 63) as u8;
        if j < 4 {
            sc12[j] = ls;
            sc12[j + 4] = lm;
        } else {
            sc12[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            sc12[j - 4] |= (ls >> 4) << 6;
            sc12[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    for j in 0..QK_K / 32 {
        let (sc, m) = scale_min_k4(j, &sc12);
        let dd = d.to_f32() * sc as f32;
        if dd == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / dd).clamp(0, 15) as u8;
        }
    }
    out.extend_from_slice(&d.to_le_bytes());
    out.extend_from_slice(&dmin.to_le_bytes());
    out.extend_from_slice(&sc12);
    for j in (0..QK_K).step_by(64) {
        for i in 0..32 {
            out.push(l[j + i] | (l[j + i + 32] << 4));
        }
    }
}

/// Symmetric fit `x ~ scale * (L - nmax)` with `L - nmax` in `-nmax..nmax`, weights `x^2`
/// (ggml's `make_qx_quants` with `rmse_type = 1`): 19 candidate grids, the best by the
/// weighted least-squares criterion. Writes `L` (offset by `nmax`) and returns the scale.
fn make_qx_quants(nmax: i32, x: &[f32], l_out: &mut [u8]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out.iter_mut().for_each(|l| *l = 0);
        return 0.0;
    }
    let q = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let l = q(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let iscale = -(nmax as f32) / max;
    for (o, &v) in l_out.iter_mut().zip(x) {
        *o = (q(iscale, v) + nmax) as u8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (o, &v) in l_out.iter_mut().zip(x) {
                *o = (q(iscale, v) + nmax) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// One Q6_K super-block: 16 sub-blocks of 16 weights, `d * sc * (q - 32)` with 8-bit signed
/// `sc` and 6-bit `q`. Layout: ql (128) | qh (64) | scales (16) | d.
fn quantize_block_q6_k(x: &[f32], out: &mut Vec<u8>) {
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for ib in 0..QK_K / 16 {
        let s = make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
        scales[ib] = s;
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = s;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        out.extend(std::iter::repeat_n(0u8, GgmlType::Q6K.type_size()));
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = f16::from_f32(1.0 / iscale);
    let mut sc = [0i8; QK_K / 16];
    for (o, &s) in sc.iter_mut().zip(&scales) {
        *o = nearest_int(iscale * s).clamp(-128, 127) as i8;
    }
    for j in 0..QK_K / 16 {
        let dd = d.to_f32() * sc[j] as f32;
        if dd == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / dd).clamp(-32, 31);
            l[16 * j + ii] = (q + 32) as u8;
        }
    }
    let mut ql = [0u8; QK_K / 2];
    let mut qh = [0u8; QK_K / 4];
    for (n, j) in (0..QK_K).step_by(128).enumerate() {
        let (ql, qh) = (&mut ql[64 * n..], &mut qh[32 * n..]);
        for i in 0..32 {
            let (a, b, c, e) = (l[j + i], l[j + i + 32], l[j + i + 64], l[j + i + 96]);
            ql[i] = (a & 0xF) | ((c & 0xF) << 4);
            ql[i + 32] = (b & 0xF) | ((e & 0xF) << 4);
            qh[i] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
        }
    }
    out.extend_from_slice(&ql);
    out.extend_from_slice(&qh);
    out.extend(sc.iter().map(|&s| s as u8));
    out.extend_from_slice(&d.to_le_bytes());
}

/// Q5_0: `d * (q - 16)`, the largest-magnitude weight maps to -16.
fn quantize_block_q5_0(x: &[f32], out: &mut Vec<u8>) {
    let max = x
        .iter()
        .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let q = |v: f32| ((v * id + 16.5) as i8).min(31) as u8;
    push_q5(out, Some(d), None, x, q);
}

/// Q5_1: `d * q + m` over the block's range.
fn quantize_block_q5_1(x: &[f32], out: &mut Vec<u8>) {
    let min = x.iter().fold(f32::MAX, |a, &v| a.min(v));
    let max = x.iter().fold(-f32::MAX, |a, &v| a.max(v));
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let q = |v: f32| ((v - min) * id + 0.5) as u8;
    push_q5(out, Some(d), Some(min), x, q);
}

/// d | (m) | qh (fifth bits, u32) | qs (low nibbles: weights 0..16, high: 16..32).
fn push_q5(out: &mut Vec<u8>, d: Option<f32>, m: Option<f32>, x: &[f32], q: impl Fn(f32) -> u8) {
    for v in [d, m].into_iter().flatten() {
        out.extend_from_slice(&f16::from_f32(v).to_le_bytes());
    }
    let mut qh = 0u32;
    let mut qs = [0u8; 16];
    for j in 0..16 {
        let (x0, x1) = (q(x[j]), q(x[j + 16]));
        qs[j] = (x0 & 0x0F) | ((x1 & 0x0F) << 4);
        qh |= (((x0 & 0x10) >> 4) as u32) << j;
        qh |= (((x1 & 0x10) >> 4) as u32) << (j + 16);
    }
    out.extend_from_slice(&qh.to_le_bytes());
    out.extend_from_slice(&qs);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::quant::dequantize_row;

    /// Roughly normal values (sum of 4 uniforms) with a few outliers, like real weights.
    fn weights(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        let mut u = move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        (0..n)
            .map(|i| {
                let v = (u() + u() + u() + u()) * 0.05;
                if i % 97 == 0 {
                    v * 8.0
                } else {
                    v
                }
            })
            .collect()
    }

    fn rmse(a: &[f32], b: &[f32]) -> f32 {
        let s: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
        (s / a.len() as f32).sqrt()
    }

    fn round_trip(ty: GgmlType, x: &[f32]) -> Vec<f32> {
        let q = quantize_row(ty, x).expect("supported");
        assert_eq!(q.len(), ty.row_bytes(x.len()), "{}", ty.name());
        let mut y = vec![0f32; x.len()];
        dequantize_row(ty, &q, &mut y);
        y
    }

    /// Relative RMSE bounds: 4-bit types ~ 1/15 of the range per step, 6-bit ~ 1/63.
    #[test]
    fn round_trip_error_bounds() {
        let x = weights(4 * QK_K, 7);
        let std = (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
        let mut errs = Vec::new();
        for (ty, bound) in [
            (GgmlType::Q4K, 0.13),
            (GgmlType::Q6K, 0.035),
            (GgmlType::Q5_0, 0.09),
            (GgmlType::Q5_1, 0.07),
        ] {
            let e = rmse(&x, &round_trip(ty, &x)) / std;
            assert!(e < bound, "{}: relative RMSE {e} >= {bound}", ty.name());
            errs.push(e);
        }
        // More bits, less error.
        assert!(errs[1] < errs[0] / 3.0, "{errs:?}");
    }

    /// The K-quant search must beat (or match) the simple min/max quantizer of the same
    /// width: Q4_K against Q4_1.
    #[test]
    fn q4_k_search_beats_min_max_rounding() {
        let x = weights(8 * QK_K, 11);
        let e4k = rmse(&x, &round_trip(GgmlType::Q4K, &x));
        let mut y = vec![0f32; x.len()];
        let q41 = crate::model::quant::quantize_row(GgmlType::Q4_1, &x).expect("q4_1");
        dequantize_row(GgmlType::Q4_1, &q41, &mut y);
        let e41 = rmse(&x, &y);
        assert!(e4k < e41, "Q4_K {e4k} vs Q4_1 {e41}");
    }

    #[test]
    fn zeros_and_constants_are_exact() {
        for ty in [GgmlType::Q4K, GgmlType::Q6K, GgmlType::Q5_0, GgmlType::Q5_1] {
            let z = vec![0f32; QK_K];
            assert_eq!(round_trip(ty, &z), z, "{}", ty.name());
        }
        // A constant positive block: Q4_K stores it through the scale, exactly enough.
        let c = vec![0.25f32; QK_K];
        let y = round_trip(GgmlType::Q4K, &c);
        assert!(rmse(&c, &y) < 1e-3);
    }

    #[test]
    fn rejects_partial_blocks_and_other_types() {
        assert!(quantize_row(GgmlType::Q4K, &[0.0; 100]).is_none());
        assert!(quantize_row(GgmlType::Q8_0, &[0.0; 32]).is_none());
    }

    /// Known answer: a ramp quantized by Q5_0 reproduces ggml's reference bytes (largest
    /// magnitude -> -16, ties away from the half by truncation after +16.5).
    #[test]
    fn q5_0_known_block() {
        let x: Vec<f32> = (0..32).map(|i| i as f32 - 16.0).collect();
        let q = quantize_row(GgmlType::Q5_0, &x).expect("q5_0");
        // max = -16 -> d = 1, id = 1: q = x + 16 exactly.
        assert_eq!(f16::from_le_bytes([q[0], q[1]]).to_f32(), 1.0);
        let y = round_trip(GgmlType::Q5_0, &x);
        assert_eq!(y, x);
    }
}
