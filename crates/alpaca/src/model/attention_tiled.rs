//! Tiled causal attention for prompt batches, in the style of FlashAttention (Dao et al.
//! 2022, arXiv:2205.14135): a block of queries meets the keys block by block, with an online
//! softmax (running max and sum per query row), so no `t x t` score matrix is ever stored and
//! every key and value row loaded into cache serves a whole block of queries.
//!
//! A tile is a run of consecutive tokens times the `group` query heads that share one kv
//! head (about `MT` rows, all reading the same key and value columns); its queries are
//! packed once, transposed (`head_dim x rows`). Per block of `BK` keys: `S^T = K Q^T` comes
//! from a register-blocked kernel (`RK` keys x `W` rows: a broadcast key value times vectors
//! of queries; keys are read straight from the cache), the causal and sliding-window masks
//! and the soft-cap are applied, the running softmax is updated with vectors across rows, and
//! `O += P V` comes from a second register-blocked kernel (`RB` rows x `W` head columns).
//! Key blocks past the last query of the tile (fully masked) are never visited.
//!
//! [`crate::model::attention::attention`] routes batches of at least [`MIN_TOKENS`] new
//! tokens here; decoding (one token) keeps the per-token path.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::model::attention::AttnShape;
use crate::model::ops::dispatch;

/// Smallest batch routed to the tiled path.
pub const MIN_TOKENS: usize = 8;
/// Target query rows per tile (tokens x heads of a group): 4 vectors of 16 lanes.
const MT: usize = 64;
/// Keys per block.
const BK: usize = 32;
/// Keys per register block of the `K Q^T` kernel.
const RK: usize = 4;
/// Query rows per register block of the `P V` kernel.
const RB: usize = 4;
/// Lanes of one vector: query rows and the head dimension of values and outputs are padded
/// to a multiple of it.
const LANES: usize = 16;
/// Columns per register block of both kernels (query rows for `K Q^T`, head dims for `P V`).
const W: usize = 64;

/// Causal attention of `t` new queries starting at position `pos0` (same contract as
/// [`crate::model::attention::attention`]), tile by tile.
pub fn attention_tiled(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    pos0: usize,
    t: usize,
    s: AttnShape,
    out: &mut [f32],
) {
    let q_dim = s.n_heads * s.head_dim;
    debug_assert_eq!(out.len(), t * q_dim);
    let g = s.n_heads / s.n_kv_heads;
    let bq = (MT / g).max(1);
    let run = |(qb, o): (usize, &mut [f32])| {
        TILE.with(|b| {
            let mut b = b.borrow_mut();
            for kvh in 0..s.n_kv_heads {
                let tile = Tile {
                    pos0,
                    i0: qb * bq,
                    nq: o.len() / q_dim,
                    kvh,
                };
                attend_tile(q, keys, values, tile, s, &mut b, o);
            }
        })
    };
    if rayon::current_num_threads() == 1 {
        out.chunks_mut(bq * q_dim).enumerate().for_each(run);
    } else {
        out.par_chunks_mut(bq * q_dim).enumerate().for_each(run);
    }
}

/// Which queries one tile holds: tokens `i0..i0 + nq` of the batch (positions from
/// `pos0 + i0`), the query heads of kv head `kvh`.
#[derive(Clone, Copy)]
pub struct Tile {
    pos0: usize,
    i0: usize,
    nq: usize,
    kvh: usize,
}

/// Working set of one tile, reused between tiles (thread-local). `mp` is the number of
/// query rows padded to whole vectors, `hp` the padded head dimension; padding is zero.
#[derive(Default)]
pub struct TileBuf {
    /// Scaled queries, transposed: `head_dim x mp`.
    qt: Vec<f32>,
    /// Scores, then probabilities, of one key block, transposed: `BK x mp`.
    st: Vec<f32>,
    /// One block of values, `BK x hp`.
    v: Vec<f32>,
    /// Unnormalized outputs, `mp x hp`.
    o: Vec<f32>,
    /// Running max and sum of each row, the new max, the rescale factor.
    max: Vec<f32>,
    sum: Vec<f32>,
    new_max: Vec<f32>,
    rescale: Vec<f32>,
    /// Position of each row's token.
    pos: Vec<usize>,
}

impl TileBuf {
    fn prepare(&mut self, mp: usize, hd: usize, hp: usize) {
        fn set(v: &mut Vec<f32>, n: usize, x: f32) {
            v.clear();
            v.resize(n, x);
        }
        set(&mut self.qt, hd * mp, 0.0);
        set(&mut self.st, BK * mp, 0.0);
        set(&mut self.v, BK * hp, 0.0);
        set(&mut self.o, mp * hp, 0.0);
        set(&mut self.max, mp, f32::NEG_INFINITY);
        set(&mut self.sum, mp, 0.0);
        set(&mut self.new_max, mp, 0.0);
        set(&mut self.rescale, mp, 0.0);
        self.pos.clear();
        self.pos.resize(mp, 0);
    }
}

thread_local! {
    static TILE: RefCell<TileBuf> = RefCell::new(TileBuf::default());
}

/// First key position a query at `pos` sees.
#[inline(always)]
fn first_key(s: &AttnShape, pos: usize) -> usize {
    s.window.map_or(0, |w| (pos + 1).saturating_sub(w))
}

dispatch!(attend_tile(q: &[f32], keys: &[f32], values: &[f32], tile: Tile, s: AttnShape, b: &mut TileBuf, out: &mut [f32]) -> () {
    let hd = s.head_dim;
    let g = s.n_heads / s.n_kv_heads;
    let q_dim = s.n_heads * hd;
    let kv_dim = s.n_kv_heads * hd;
    let off = tile.kvh * hd;
    let hp = hd.div_ceil(LANES) * LANES;
    let rows = tile.nq * g;
    let mp = rows.div_ceil(LANES) * LANES;
    b.prepare(mp, hd, hp);
    let TileBuf { qt, st, v, o, max, sum, new_max, rescale, pos } = b;
    let p_first = tile.pos0 + tile.i0;
    let p_last = p_first + tile.nq - 1;
    // Row r is token r / g, head r % g of the group: the group's heads are contiguous in q.
    for r in 0..rows {
        let src = &q[(tile.i0 + r / g) * q_dim + off * g + (r % g) * hd..][..hd];
        for (d, x) in src.iter().enumerate() {
            qt[d * mp + r] = x * s.scale;
        }
        pos[r] = p_first + r / g;
    }
    // Padding rows take the last position: never more masked than a real row.
    for p in &mut pos[rows..] {
        *p = p_last;
    }
    let mut j0 = first_key(&s, p_first);
    while j0 <= p_last {
        let nk = BK.min(p_last + 1 - j0);
        let row = |j: usize| (j0 + j) * kv_dim + off;
        for j in 0..nk {
            v[j * hp..j * hp + hd].copy_from_slice(&values[row(j)..row(j) + hd]);
        }
        // S^T = K Q^T, RK keys at a time, read straight from the cache.
        let mut j = 0;
        while j + RK <= nk {
            let k: [&[f32]; RK] = std::array::from_fn(|i| &keys[row(j + i)..row(j + i) + hd]);
            kq_rows(k, qt, mp, &mut st[j * mp..(j + RK) * mp]);
            j += RK;
        }
        while j < nk {
            kq_rows([&keys[row(j)..row(j) + hd]], qt, mp, &mut st[j * mp..(j + 1) * mp]);
            j += 1;
        }
        let st = &mut st[..nk * mp];
        if let Some(cap) = s.softcap {
            for x in st.iter_mut() {
                *x = cap * (*x / cap).tanh();
            }
        }
        // Causal and window masks, only on blocks some row does not fully see.
        if j0 < first_key(&s, p_last) || j0 + nk > p_first + 1 {
            for (j, srow) in st.chunks_exact_mut(mp).enumerate() {
                let kp = j0 + j;
                for (x, &p) in srow.iter_mut().zip(pos.iter()) {
                    if kp > p || kp < first_key(&s, p) {
                        *x = f32::NEG_INFINITY;
                    }
                }
            }
        }
        // Online softmax, vectorized across rows.
        new_max.copy_from_slice(max);
        for srow in st.chunks_exact(mp) {
            for (m, x) in new_max.iter_mut().zip(srow) {
                *m = m.max(*x);
            }
        }
        for ((m, c), (old, l)) in new_max.iter_mut().zip(rescale.iter_mut()).zip(max.iter_mut().zip(sum.iter_mut())) {
            // A row that sees nothing yet keeps max -inf; subtracting 0 keeps it empty.
            let safe = if *m == f32::NEG_INFINITY { 0.0 } else { *m };
            *c = exp_fast(*old - safe);
            *l *= *c;
            *old = *m;
            *m = safe;
        }
        for srow in st.chunks_exact_mut(mp) {
            for ((x, m), l) in srow.iter_mut().zip(new_max.iter()).zip(sum.iter_mut()) {
                *x = exp_fast(*x - m);
                *l += *x;
            }
        }
        for (orow, &c) in o.chunks_exact_mut(hp).zip(rescale.iter()) {
            if c != 1.0 {
                for x in orow {
                    *x *= c;
                }
            }
        }
        // O += P V.
        for r in (0..mp).step_by(RB) {
            let mut d0 = 0;
            while d0 + W <= hp {
                pv_block::<W>(st, v, mp, hp, r, nk, d0, o);
                d0 += W;
            }
            while d0 < hp {
                pv_block::<LANES>(st, v, mp, hp, r, nk, d0, o);
                d0 += LANES;
            }
        }
        j0 += BK;
    }
    for r in 0..rows {
        // Every row sees at least its own position, so the sum is at least 1.
        let inv = 1.0 / sum[r];
        let dst = &mut out[(r / g) * q_dim + off * g + (r % g) * hd..][..hd];
        for (d, x) in dst.iter_mut().zip(&o[r * hp..]) {
            *d = x * inv;
        }
    }
});

/// Scores of `R` keys against every query row: `st[i][r] = k[i] . qt[.][r]`.
#[inline(always)]
fn kq_rows<const R: usize>(k: [&[f32]; R], qt: &[f32], mp: usize, st: &mut [f32]) {
    let mut r0 = 0;
    while r0 + W <= mp {
        kq_block::<R, W>(&k, qt, mp, r0, st);
        r0 += W;
    }
    while r0 < mp {
        kq_block::<R, LANES>(&k, qt, mp, r0, st);
        r0 += LANES;
    }
}

#[inline(always)]
fn kq_block<const R: usize, const C: usize>(
    k: &[&[f32]; R],
    qt: &[f32],
    mp: usize,
    r0: usize,
    st: &mut [f32],
) {
    let hd = k[0].len();
    let mut acc = [[0f32; C]; R];
    for d in 0..hd {
        let qd = &qt[d * mp + r0..][..C];
        for (row, ki) in acc.iter_mut().zip(k) {
            let a = ki[d];
            for (x, qx) in row.iter_mut().zip(qd) {
                *x = a.mul_add(*qx, *x);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        st[i * mp + r0..][..C].copy_from_slice(row);
    }
}

/// `o[r] += sum_j p[j][r] v[j]` for rows `r0..r0 + RB`, head columns `d0..d0 + C`, over the
/// `nk` keys of one block.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pv_block<const C: usize>(
    pt: &[f32],
    v: &[f32],
    mp: usize,
    hp: usize,
    r0: usize,
    nk: usize,
    d0: usize,
    o: &mut [f32],
) {
    let mut acc = [[0f32; C]; RB];
    for (i, row) in acc.iter_mut().enumerate() {
        row.copy_from_slice(&o[(r0 + i) * hp + d0..][..C]);
    }
    for j in 0..nk {
        let vr = &v[j * hp + d0..][..C];
        let p = &pt[j * mp + r0..][..RB];
        for (row, &a) in acc.iter_mut().zip(p) {
            for (x, vx) in row.iter_mut().zip(vr) {
                *x = a.mul_add(*vx, *x);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        o[(r0 + i) * hp + d0..][..C].copy_from_slice(row);
    }
}

/// `e^x` through [`crate::model::ops::exp_poly`] (branch-free, so loops over it vectorize),
/// but exactly 0 below -87.3 and for -inf, as masked scores need.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    let y = crate::model::ops::exp_poly(x);
    if x < -87.3 {
        0.0
    } else {
        y
    }
}

#[cfg(test)]
#[path = "attention_tiled_tests.rs"]
mod tests;
