use super::*;
use crate::model::attention::attention_per_token;
use crate::rng::Rng;

fn random(rng: &mut Rng, n: usize, amp: f32) -> Vec<f32> {
    (0..n).map(|_| (rng.next_f32() * 2.0 - 1.0) * amp).collect()
}

/// Largest |a - b| relative to the largest |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Tiled and per-token attention agree for `t` new tokens after `pos0` cached ones.
fn check(
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    pos0: usize,
    t: usize,
    window: Option<usize>,
    softcap: Option<f32>,
) {
    let mut rng = Rng::new((n_heads * 131 + head_dim * 7 + pos0 * 3 + t) as u64);
    let s = AttnShape {
        n_heads,
        n_kv_heads,
        head_dim,
        scale: 1.0 / (head_dim as f32).sqrt(),
        window,
        softcap,
    };
    let q_dim = n_heads * head_dim;
    let kv_dim = n_kv_heads * head_dim;
    // Large queries make peaked softmaxes (exercises the running max rescaling).
    let q = random(&mut rng, t * q_dim, 3.0);
    let k = random(&mut rng, (pos0 + t) * kv_dim, 2.0);
    let v = random(&mut rng, (pos0 + t) * kv_dim, 1.0);
    let mut want = vec![0.0; t * q_dim];
    attention_per_token(&q, &k, &v, pos0, t, s, &mut want);
    let mut got = vec![f32::NAN; t * q_dim];
    attention_tiled(&q, &k, &v, pos0, t, s, &mut got);
    let e = rel_err(&got, &want);
    assert!(
        e < 2e-5,
        "heads {n_heads}/{n_kv_heads} hd {head_dim} pos0 {pos0} t {t} window {window:?} cap {softcap:?}: {e}"
    );
}

#[test]
fn matches_per_token_on_smollm2_shape() {
    for (pos0, t) in [(0, 8), (0, 512), (0, 77), (40, 33), (100, 16)] {
        check(9, 3, 64, pos0, t, None, None);
    }
}

#[test]
fn matches_per_token_on_odd_shapes() {
    for (h, kv, hd) in [(4, 2, 17), (6, 1, 8), (2, 2, 33), (5, 5, 1), (8, 2, 80)] {
        for (pos0, t) in [(0, 8), (0, 51), (13, 9), (70, 40)] {
            check(h, kv, hd, pos0, t, None, None);
        }
    }
}

#[test]
fn matches_per_token_with_window_and_softcap() {
    for window in [Some(1), Some(5), Some(40), Some(1000)] {
        for (pos0, t) in [(0, 8), (0, 70), (25, 37)] {
            check(4, 2, 16, pos0, t, window, None);
            check(8, 2, 256, pos0, t, window, Some(50.0));
        }
    }
    check(3, 1, 24, 10, 45, None, Some(2.0));
}

#[test]
fn routed_through_attention_for_prompts() {
    // `attention` takes the tiled path from MIN_TOKENS on; the result equals per-token.
    let s = AttnShape {
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 8,
        scale: 0.3,
        window: None,
        softcap: None,
    };
    let t = MIN_TOKENS + 3;
    let q: Vec<f32> = (0..t * 16).map(|i| (i as f32 * 0.21).sin()).collect();
    let k: Vec<f32> = (0..t * 8).map(|i| (i as f32 * 0.05).cos()).collect();
    let v: Vec<f32> = (0..t * 8).map(|i| (i as f32 * 0.11).sin()).collect();
    let mut a = vec![0.0; t * 16];
    let mut b = vec![0.0; t * 16];
    crate::model::attention::attention(&q, &k, &v, 0, t, s, &mut a);
    attention_per_token(&q, &k, &v, 0, t, s, &mut b);
    assert!(rel_err(&a, &b) < 1e-5);
}

#[test]
fn exp_fast_is_close_to_exp() {
    let mut worst = 0f32;
    let mut x = -87.0f32;
    while x < 88.0 {
        let (a, b) = (exp_fast(x), x.exp());
        worst = worst.max(((a - b) / b).abs());
        x += 0.0137;
    }
    assert!(worst < 4e-7, "worst relative error {worst}");
    assert_eq!(exp_fast(f32::NEG_INFINITY), 0.0);
    assert_eq!(exp_fast(-100.0), 0.0);
    assert_eq!(exp_fast(0.0), 1.0);
}
