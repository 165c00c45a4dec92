//! Each emulated ggml op against a plain f64 reference (the emulation must be a faithful
//! computation of the same function), plus exact checks of the rounding steps ggml takes.

use super::*;

fn wave(n: usize, a: f32, b: f32) -> Vec<f32> {
    (0..n).map(|i| ((i as f32) * a).sin() * b).collect()
}

#[test]
fn rope_cache_is_the_f32_running_product() {
    let (d, base) = std::hint::black_box((64, 10000f32));
    let (mut cos, mut sin) = (vec![0f32; d / 2], vec![0f32; d / 2]);
    for pos in [0usize, 1, 7, 63, 200] {
        // black_box: no compile-time folding of sin/cos (LLVM folds through f64, which
        // can differ from glibc's sinf/cosf by an ulp)
        let pos = std::hint::black_box(pos);
        rope_cache(pos, d, base, &mut cos, &mut sin);
        let step = base.powf(-2.0 / d as f32);
        let mut theta = pos as f32;
        for i in 0..d / 2 {
            let (s, c) = std::hint::black_box(theta).sin_cos();
            assert_eq!(cos[i], c, "pos {pos} i {i}");
            assert_eq!(sin[i], s, "pos {pos} i {i}");
            // and close to the exact angle
            let exact = pos as f64 * (base as f64).powf(-2.0 * i as f64 / d as f64);
            assert!(
                (cos[i] as f64 - exact.cos()).abs() < 1e-3,
                "pos {pos} i {i}"
            );
            assert!(
                (sin[i] as f64 - exact.sin()).abs() < 1e-3,
                "pos {pos} i {i}"
            );
            theta *= step;
        }
    }
}

#[test]
fn rope_rotate_is_a_rotation_with_fused_products() {
    let x0 = wave(64, 0.37, 3.0);
    let (cos, sin): (Vec<f32>, Vec<f32>) = (0..32)
        .map(|i| (i as f32 * 0.11).sin_cos())
        .map(|(s, c)| (c, s))
        .unzip();
    let mut x = x0.clone();
    rope_rotate(&mut x, &cos, &sin);
    for i in 0..32 {
        let (a, b, c, s) = (x0[2 * i], x0[2 * i + 1], cos[i], sin[i]);
        let r0 = a as f64 * c as f64 - b as f64 * s as f64;
        let r1 = a as f64 * s as f64 + b as f64 * c as f64;
        assert!((x[2 * i] as f64 - r0).abs() < 1e-6);
        assert!((x[2 * i + 1] as f64 - r1).abs() < 1e-6);
        assert_eq!(x[2 * i], a.mul_add(c, -(b * s)));
        assert_eq!(x[2 * i + 1], a.mul_add(s, b * c));
    }
}

#[test]
fn rms_norm_matches_f64_reference() {
    let x = wave(576, 0.713, 2.5);
    let w = wave(576, 0.05, 1.0);
    let mut out = vec![0f32; 576];
    rms_norm(&x, &w, 1e-5, &mut out);
    let ms = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / 576.0;
    let scale = 1.0 / (ms + 1e-5).sqrt();
    for i in 0..576 {
        let r = x[i] as f64 * scale * w[i] as f64;
        assert!((out[i] as f64 - r).abs() <= 1e-6 * r.abs().max(1e-3), "{i}");
    }
}

#[test]
fn v_expf_is_close_to_exp_and_saturates() {
    let mut x = -87.0f32;
    while x < 88.0 {
        let (got, want) = (v_expf(x) as f64, (x as f64).exp());
        assert!(
            (got - want).abs() <= 2.5e-7 * want,
            "x {x}: {got} vs {want}"
        );
        x += 0.0137;
    }
    assert_eq!(v_expf(0.0), 1.0);
    assert_eq!(v_expf(-1000.0), 0.0);
    assert_eq!(v_expf(f32::NEG_INFINITY), 0.0);
    assert_eq!(v_expf(1000.0), f32::INFINITY);
}

/// The lane emulation against the AVX-512 instruction sequence of ggml's `ggml_v_expf`.
#[cfg(target_arch = "x86_64")]
#[test]
fn v_expf_equals_the_avx512_sequence() {
    if !is_x86_feature_detected!("avx512f") {
        return;
    }
    #[target_feature(enable = "avx512f")]
    unsafe fn ggml_v_expf(x: &[f32; 16]) -> [f32; 16] {
        use std::arch::x86_64::*;
        let c = |b: u32| _mm512_set1_ps(f32::from_bits(b));
        let x = _mm512_loadu_ps(x.as_ptr());
        let r = c(0x4b40_0000);
        let z = _mm512_fmadd_ps(x, c(0x3fb8_aa3b), r);
        let n = _mm512_sub_ps(z, r);
        let b = _mm512_fnmadd_ps(n, c(0x35bf_be8e), _mm512_fnmadd_ps(n, c(0x3f31_7200), x));
        let d = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), _mm512_set1_ps(192.0));
        let u = _mm512_mul_ps(b, b);
        let j = _mm512_fmadd_ps(
            _mm512_fmadd_ps(
                _mm512_fmadd_ps(c(0x3c07_2010), b, c(0x3d2b_9f17)),
                u,
                _mm512_fmadd_ps(c(0x3e2a_af33), b, c(0x3eff_fedb)),
            ),
            u,
            _mm512_fmadd_ps(c(0x3f7f_fff6), b, _mm512_set1_ps(1.0)),
        );
        let res = _mm512_scalef_ps(j, n);
        let zero = _mm512_setzero_ps();
        let alt = _mm512_mask_blend_ps(
            _mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, zero),
            _mm512_set1_ps(f32::INFINITY),
            zero,
        );
        let out = _mm512_mask_blend_ps(d, res, alt);
        let mut o = [0f32; 16];
        _mm512_storeu_ps(o.as_mut_ptr(), out);
        o
    }
    let mut x = [0f32; 16];
    let mut v = -104.0f32;
    while v < 90.0 {
        for (l, xl) in x.iter_mut().enumerate() {
            *xl = v + l as f32 * 0.000_731;
        }
        // SAFETY: avx512f was detected above.
        let want = unsafe { ggml_v_expf(&x) };
        for l in 0..16 {
            assert_eq!(v_expf(x[l]).to_bits(), want[l].to_bits(), "x {}", x[l]);
        }
        v += 0.0191;
    }
}

#[test]
fn swiglu_matches_f64_reference_including_leftovers() {
    let g0 = wave(40, 0.91, 9.0); // 2 SIMD chunks + 8 leftovers
    let up = wave(40, 0.23, 2.0);
    let mut g = g0.clone();
    swiglu(&mut g, &up);
    for i in 0..40 {
        let x = g0[i] as f64;
        let r = x / (1.0 + (-x).exp()) * up[i] as f64;
        assert!((g[i] as f64 - r).abs() <= 1e-6 * r.abs().max(1e-3), "{i}");
    }
}

#[test]
fn round_f16_rounds_to_nearest_even() {
    // 1 + 2^-11 is halfway between 1 and the next f16 (1 + 2^-10): ties go to even (1).
    let mut x = vec![
        1.0 + 2f32.powi(-11),
        1.0 + 3.0 * 2f32.powi(-11),
        65504.0,
        1e-8,
    ];
    round_f16(&mut x);
    assert_eq!(x, vec![1.0, 1.0 + 2.0 * 2f32.powi(-10), 65504.0, 0.0]);
}

#[test]
fn fast_f16_rounding_equals_half() {
    let mut b = 0u32;
    loop {
        let x = f32::from_bits(b);
        let want = f16::from_f32(x).to_f32();
        let got = h(x);
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "{b:#x}: {got} vs {want}"
        );
        match b.checked_add(997) {
            Some(n) => b = n,
            None => break,
        }
    }
    // every tie and neighbour around a few binades
    for e in [0x3880_0000u32, 0x3f80_0000, 0x4700_0000, 0x477f_c000] {
        for m in 0..0x4000u32 {
            let x = f32::from_bits(e + m);
            assert_eq!(h(x).to_bits(), f16::from_f32(x).to_f32().to_bits(), "{x}");
            assert_eq!(h(-x).to_bits(), f16::from_f32(-x).to_f32().to_bits(), "{x}");
        }
    }
}

#[test]
fn reduce_and_f16_dot_match_f64_sums() {
    let a: [f32; 16] = std::array::from_fn(|i| (i as f32 * 0.7).sin());
    let want: f64 = a.iter().map(|&v| v as f64).sum();
    assert!((reduce_add_16(&a) as f64 - want).abs() < 1e-6);
    for n in [64usize, 100, 128] {
        let mut x = wave(n, 0.31, 4.0);
        let mut y = wave(n, 0.17, 2.0);
        round_f16(&mut x);
        round_f16(&mut y);
        let want: f64 = x.iter().zip(&y).map(|(&a, &b)| a as f64 * b as f64).sum();
        assert!((dot_f16(&x, &y) as f64 - want).abs() < 1e-4, "n {n}");
    }
}

/// Exact softmax attention in f64 over the same (f16-valued) cache.
fn reference(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    pos0: usize,
    t: usize,
    s: AttnShape,
) -> Vec<f64> {
    let hd = s.head_dim;
    let kv_dim = s.n_kv_heads * hd;
    let group = s.n_heads / s.n_kv_heads;
    let mut out = vec![0f64; t * s.n_heads * hd];
    for i in 0..t {
        for head in 0..s.n_heads {
            let off = (head / group) * hd;
            let qr = &q[(i * s.n_heads + head) * hd..][..hd];
            let n = pos0 + i + 1;
            let sc: Vec<f64> = (0..n)
                .map(|p| {
                    let k = &keys[p * kv_dim + off..][..hd];
                    qr.iter()
                        .zip(k)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>()
                        * s.scale as f64
                })
                .collect();
            let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = sc.iter().map(|v| (v - m).exp()).sum();
            let o = &mut out[(i * s.n_heads + head) * hd..][..hd];
            for (p, v) in sc.iter().enumerate() {
                let w = (v - m).exp() / z;
                for (od, &vd) in o.iter_mut().zip(&values[p * kv_dim + off..][..hd]) {
                    *od += w * vd as f64;
                }
            }
        }
    }
    out
}

fn check_attention(pos0: usize, t: usize, tol: f64) {
    let s = AttnShape {
        n_heads: 6,
        n_kv_heads: 2,
        head_dim: 64,
        scale: 0.125,
        window: None,
        softcap: None,
    };
    let n = pos0 + t;
    let q = wave(t * 6 * 64, 0.0173, 3.0);
    let mut k = wave(n * 2 * 64, 0.0291, 2.0);
    let mut v = wave(n * 2 * 64, 0.0117, 1.5);
    round_f16(&mut k);
    round_f16(&mut v);
    let mut out = vec![0f32; t * 6 * 64];
    attention(&q, &k, &v, pos0, t, s, &mut out);
    let want = reference(&q, &k, &v, pos0, t, s);
    for (i, (&a, &b)) in out.iter().zip(&want).enumerate() {
        assert!(
            (a as f64 - b).abs() < tol,
            "pos0 {pos0} t {t} [{i}]: {a} vs {b}"
        );
    }
}

#[test]
fn one_chunk_attention_matches_reference() {
    // decode steps and a short prompt: f16 accumulator, so ~1e-3 relative
    check_attention(0, 1, 3e-3);
    check_attention(37, 1, 3e-3);
    check_attention(0, 20, 3e-3);
}

#[test]
fn tiled_attention_matches_reference() {
    // prompts of 64+ tokens: f32 accumulator, several KV tiles
    check_attention(0, 64, 1e-5);
    check_attention(5, 150, 1e-5);
}
