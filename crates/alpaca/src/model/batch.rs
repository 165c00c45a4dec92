//! Batched decoding: one forward step for several independent sequences at once.
//!
//! Each sequence feeds one new token and keeps its own KV cache (its own length and
//! positions). The weight matmuls run once on the stacked rows of all sequences, so every
//! weight row is read once per step however many sequences advance: decoding is
//! memory-bandwidth bound, so aggregate tokens/s grows with the batch. Attention is the only
//! per-sequence part, each sequence against its own cache.
//!
//! This is the server's decode step (continuous batching). It must equal running
//! [`Model::forward`] on each sequence alone; the tests below pin that.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::model::attention::{attention, KvCache};
use crate::model::linear::Linear;
use crate::model::llama::Llama;
use crate::model::ops::{rms_norm, rope_angles, rope_normal, swiglu, swiglu_fast};
use crate::model::Model;

impl Model {
    /// Advance `b = tokens.len()` sequences by one token each: `tokens[i]` is appended to
    /// `caches[i]` at position `caches[i].len()`. Returns logits `[b, vocab]`, row `i` for
    /// sequence `i`. On error no cache is changed.
    pub fn forward_batch(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Vec<f32>> {
        self.forward_batch_chunks(tokens, &vec![1; tokens.len()], caches)
    }

    /// Advance `b = caches.len()` sequences in one pass, sequence `i` by `counts[i]` (1 or
    /// more) tokens: the next `counts[i]` of `tokens`, appended to `caches[i]` from position
    /// `caches[i].len()`. A prompt chunk rides along with the decode rows of other
    /// sequences (the server's chunked prefill), sharing every weight read. Returns logits
    /// `[b, vocab]` of each sequence's last token. On error no cache is changed.
    pub fn forward_batch_chunks(
        &self,
        tokens: &[u32],
        counts: &[usize],
        caches: &mut [&mut KvCache],
    ) -> Result<Vec<f32>> {
        let b = caches.len();
        if b == 0
            || counts.len() != b
            || counts.contains(&0)
            || counts.iter().sum::<usize>() != tokens.len()
        {
            return Err(Error::InvalidArgument(format!(
                "forward_batch: {} tokens in chunks {counts:?} for {b} caches",
                tokens.len()
            )));
        }
        let vocab = self.vocab_size();
        for (cache, &n) in caches.iter().zip(counts) {
            if cache.len() + n > cache.capacity() {
                return Err(Error::ContextOverflow {
                    prompt: cache.len() + n,
                    max_new: 0,
                    ctx: cache.capacity(),
                });
            }
        }
        if let Some(tok) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::InvalidArgument(format!(
                "token id {tok} is outside the vocabulary of {vocab}"
            )));
        }
        match self {
            Model::Llama(m) => Ok(llama_step(m, tokens, counts, caches)),
            // Architectures without a batched step run each sequence alone (correct, but
            // without the shared weight reads).
            _ => {
                let mut logits = Vec::with_capacity(b * vocab);
                let mut rest = tokens;
                for (cache, &n) in caches.iter_mut().zip(counts) {
                    let (mine, r) = rest.split_at(n);
                    rest = r;
                    logits.extend(self.forward(mine, cache, 1)?);
                }
                Ok(logits)
            }
        }
    }
}

/// The LLaMA step for `b` sequences (inputs already validated): see
/// [`Llama::forward`](crate::model::llama::Llama::forward); sequence `i` contributes
/// `counts[i]` consecutive rows (one when decoding), at its own positions.
fn llama_step(
    m: &Llama,
    tokens: &[u32],
    counts: &[usize],
    caches: &mut [&mut KvCache],
) -> Vec<f32> {
    let b = tokens.len(); // rows
    let c = &m.cfg;
    let (d, hd) = (c.dim, c.head_dim);
    let (qd, kvd) = (c.q_dim(), c.kv_dim());
    // The first row of each sequence.
    let starts: Vec<usize> = counts
        .iter()
        .scan(0, |acc, &n| {
            let s = *acc;
            *acc += n;
            Some(s)
        })
        .collect();

    // x: [rows, d] token embeddings
    let mut x = vec![0f32; b * d];
    for (row, &tok) in x.chunks_exact_mut(d).zip(tokens) {
        m.tok_embd.dequantize_row_into(tok as usize, row);
    }
    // RoPE tables at each row's own position: [rows, rope_dim/2]
    let half = c.rope_dim / 2;
    let mut cos = vec![0f32; b * half];
    let mut sin = vec![0f32; b * half];
    for ((cache, &s0), &n) in caches.iter().zip(&starts).zip(counts) {
        for j in 0..n {
            let s = (s0 + j) * half..(s0 + j + 1) * half;
            rope_angles(
                cache.len() + j,
                c.rope_dim,
                c.rope_base,
                &mut cos[s.clone()],
                &mut sin[s],
            );
        }
    }
    let shape = c.attn_shape();

    let mut h = vec![0f32; b * d]; //               [b, d]
    let mut q = vec![0f32; b * qd]; //              [b, nh*hd]
    let mut k = vec![0f32; b * kvd]; //             [b, nkv*hd]
    let mut v = vec![0f32; b * kvd]; //             [b, nkv*hd]
    let mut att = vec![0f32; b * qd]; //            [b, nh*hd]
    let mut proj = vec![0f32; b * d]; //            [b, d]
    let mut gate = vec![0f32; b * c.ffn_dim]; //    [b, f]
    let mut up = vec![0f32; b * c.ffn_dim]; //      [b, f]

    for (l, blk) in m.blocks.iter().enumerate() {
        // --- attention: shared projections, per-sequence attention
        for (hr, xr) in h.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            rms_norm(xr, &blk.attn_norm, c.rms_eps, hr);
        }
        // Products of the same input run as one parallel region (their row tasks
        // interleave), not three fork-joins with a thread idling at the end of each.
        rayon::join(
            || linear(&blk.wq, &h, b, &mut q),
            || {
                rayon::join(
                    || linear(&blk.wk, &h, b, &mut k),
                    || linear(&blk.wv, &h, b, &mut v),
                )
            },
        );
        for i in 0..b {
            let cs = &cos[i * half..(i + 1) * half];
            let sn = &sin[i * half..(i + 1) * half];
            for head in q[i * qd..(i + 1) * qd].chunks_exact_mut(hd) {
                rope_normal(&mut head[..c.rope_dim], cs, sn);
            }
            for head in k[i * kvd..(i + 1) * kvd].chunks_exact_mut(hd) {
                rope_normal(&mut head[..c.rope_dim], cs, sn);
            }
        }
        for ((cache, &s0), &n) in caches.iter_mut().zip(&starts).zip(counts) {
            let rows = s0 * kvd..(s0 + n) * kvd;
            cache.push(l, &k[rows.clone()], &v[rows]);
        }
        // One task per sequence; `attention` splits each over its heads.
        let mut jobs = Vec::with_capacity(caches.len());
        let mut rest = &mut att[..];
        for ((cache, &s0), &n) in caches.iter().zip(&starts).zip(counts) {
            let (out, r) = rest.split_at_mut(n * qd);
            rest = r;
            jobs.push((out, &q[s0 * qd..(s0 + n) * qd], &**cache, n));
        }
        jobs.into_par_iter().for_each(|(out, qi, cache, n)| {
            let pos = cache.len();
            let (keys, values) = (cache.keys(l), cache.values(l));
            attention(qi, keys, values, pos, n, shape, out);
        });
        linear(&blk.wo, &att, b, &mut proj);
        x.iter_mut().zip(&proj).for_each(|(a, p)| *a += p);

        // --- feed-forward (SwiGLU), shared
        for (hr, xr) in h.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            rms_norm(xr, &blk.ffn_norm, c.rms_eps, hr);
        }
        rayon::join(
            || linear(&blk.w_gate, &h, b, &mut gate),
            || linear(&blk.w_up, &h, b, &mut up),
        );
        if b == 1 {
            // A lone row keeps the single-sequence arithmetic (`alpaca run`'s).
            swiglu(&mut gate, &up);
        } else {
            swiglu_fast(&mut gate, &up);
        }
        linear(&blk.w_down, &gate, b, &mut proj);
        x.iter_mut().zip(&proj).for_each(|(a, p)| *a += p);
    }
    for (cache, &n) in caches.iter_mut().zip(counts) {
        cache.advance(n);
    }

    // --- head: logits [sequences, vocab], from each sequence's last row
    let nseq = caches.len();
    let mut hn = vec![0f32; nseq * d];
    for ((hr, &s0), &n) in hn.chunks_exact_mut(d).zip(&starts).zip(counts) {
        let last = s0 + n - 1;
        rms_norm(&x[last * d..(last + 1) * d], &m.output_norm, c.rms_eps, hr);
    }
    let mut logits = vec![0f32; nseq * c.vocab_size];
    linear(&m.output, &hn, nseq, &mut logits);
    logits
}

/// `y = x W^T` (+ the layer's LoRA adapter) for the `b` decode rows through
/// [`QMatrix::matmul_batch`](crate::model::linear::QMatrix::matmul_batch): one row through
/// the fused row kernel; several through the multi-token int8 kernels under the model's
/// batch policy ([`ActMode`](crate::model::int8_decode::ActMode)), else through the `f32`
/// multi-row kernels, which read and decode each weight block once for all rows and dot it
/// with each.
///
/// Not [`Linear::forward`], so the step never takes the prompt GEMM (or another path chosen
/// for prompts). Measured per step on one thread (SmolLM2-135M Q4_1, AMD EPYC with AVX-512,
/// shared noisy core, `batch_step_timing`, same conditions, median of 3): before (fused row
/// kernel per row) b=1 17.0 ms, b=2 29.4, b=4 56.8, b=8 125.9, b=16 243.2; with the
/// multi-row kernels b=1 18.1, b=2 28.5, b=4 50.3, b=8 79.0, b=16 130.4 (8/1: 7.4x -> 4.4x).
/// The floor is the f32 FMA work itself (8 rows = 8 FMAs per weight).
fn linear(l: &Linear, x: &[f32], b: usize, y: &mut [f32]) {
    l.weight.matmul_batch(x, b, y);
    if let Some(lora) = &l.lora {
        lora.apply(x, b, y);
    }
}

#[cfg(test)]
mod tests {
    use crate::model::fresh::{random_llama_gguf, tiny_llama_config};
    use crate::model::gguf::Gguf;
    use crate::model::int8_decode::ActMode;
    use crate::model::quant::GgmlType;
    use crate::model::Model;
    use crate::tokenizer::tiny_test_vocab;

    fn tiny(ty: GgmlType) -> Model {
        // Tests run in parallel: each model file gets its own name.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let vocab = tiny_test_vocab();
        let w = random_llama_gguf(&tiny_llama_config(vocab.tokens.len()), &vocab, ty, 11)
            .expect("tiny model");
        let p = std::env::temp_dir().join(format!(
            "alpaca-batch-test-{}-{}-{}.gguf",
            std::process::id(),
            ty.name(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        w.write(&p).expect("write");
        let m = Model::from_gguf(&Gguf::open(&p).expect("open")).expect("load");
        let _ = std::fs::remove_file(&p);
        m
    }

    /// Sequences of different lengths stepped together give the logits each gets alone.
    #[test]
    fn batched_decode_equals_per_sequence_forward() {
        for ty in [GgmlType::F32, GgmlType::Q8_0] {
            let m = tiny(ty);
            let prompts: [&[u32]; 3] = [&[5, 70, 80], &[9], &[100, 101, 102, 103, 104, 105]];
            let mut alone: Vec<_> = prompts.iter().map(|_| m.new_cache(64)).collect();
            let mut batched: Vec<_> = prompts.iter().map(|_| m.new_cache(64)).collect();
            for (i, p) in prompts.iter().enumerate() {
                m.forward(p, &mut alone[i], 1).expect("prefill");
                m.forward(p, &mut batched[i], 1).expect("prefill");
            }
            let vocab = m.vocab_size();
            for step in 0..4u32 {
                let toks: Vec<u32> = (0..3).map(|i| 20 + 7 * i + step).collect();
                let mut refs: Vec<_> = batched.iter_mut().collect();
                let got = m.forward_batch(&toks, &mut refs).expect("batch step");
                for (i, &t) in toks.iter().enumerate() {
                    let want = m.forward(&[t], &mut alone[i], 1).expect("step");
                    let row = &got[i * vocab..(i + 1) * vocab];
                    for (a, b) in row.iter().zip(&want) {
                        assert!((a - b).abs() < 1e-4, "{} seq {i} step {step}", ty.name());
                    }
                    assert_eq!(batched[i].len(), alone[i].len());
                }
            }
        }
    }

    /// A step mixing prompt chunks (several rows of one sequence, past the tiled attention's
    /// threshold too) with decode rows equals each sequence's own forward pass, and leaves
    /// every cache at the same length and contents.
    #[test]
    fn prompt_chunks_ride_along_with_decode_rows() {
        for ty in [GgmlType::F32, GgmlType::Q8_0] {
            let m = tiny(ty);
            let vocab = m.vocab_size();
            let starts: [&[u32]; 3] = [&[5, 70, 80], &[9], &[]];
            let feeds: [&[u32]; 3] = [
                &[21],
                &[30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40],
                &[7, 8],
            ];
            let mut alone: Vec<_> = starts.iter().map(|_| m.new_cache(64)).collect();
            let mut batched: Vec<_> = starts.iter().map(|_| m.new_cache(64)).collect();
            for (i, p) in starts.iter().enumerate().filter(|(_, p)| !p.is_empty()) {
                m.forward(p, &mut alone[i], 1).expect("prefill");
                m.forward(p, &mut batched[i], 1).expect("prefill");
            }
            let tokens: Vec<u32> = feeds.concat();
            let counts: Vec<usize> = feeds.iter().map(|f| f.len()).collect();
            let mut refs: Vec<_> = batched.iter_mut().collect();
            let got = m
                .forward_batch_chunks(&tokens, &counts, &mut refs)
                .expect("mixed step");
            assert_eq!(got.len(), 3 * vocab);
            for (i, f) in feeds.iter().enumerate() {
                let want = m.forward(f, &mut alone[i], 1).expect("alone");
                let row = &got[i * vocab..(i + 1) * vocab];
                for (a, b) in row.iter().zip(&want) {
                    assert!((a - b).abs() < 1e-4, "{} seq {i}", ty.name());
                }
                assert_eq!(batched[i].len(), alone[i].len());
                for l in 0..2 {
                    for (a, b) in batched[i].keys(l).iter().zip(alone[i].keys(l)) {
                        assert!((a - b).abs() < 1e-5, "{} seq {i} layer {l} keys", ty.name());
                    }
                }
            }
            // Bad chunkings are refused and change nothing.
            let lens: Vec<usize> = batched.iter().map(|c| c.len()).collect();
            let mut refs: Vec<_> = batched.iter_mut().collect();
            for counts in [vec![1, 1, 0], vec![1, 1], vec![1, 1, 2]] {
                let toks = vec![1u32; 3];
                assert!(m.forward_batch_chunks(&toks, &counts, &mut refs).is_err());
            }
            assert!(m
                .forward_batch_chunks(&[1, 2, vocab as u32], &[1, 1, 1], &mut refs)
                .is_err());
            let after: Vec<usize> = batched.iter().map(|c| c.len()).collect();
            assert_eq!(lens, after);
        }
    }

    /// Under the int8 batch policy a batched step differs from the `f32` per-sequence steps
    /// only by the activation rounding: logits within a small fraction of their spread.
    #[test]
    fn int8_batched_decode_stays_near_f32() {
        for ty in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_0] {
            let mut m = tiny(ty);
            let prompts: [&[u32]; 4] = [&[5, 70, 80], &[9], &[100, 101, 102], &[7, 8]];
            let mut alone: Vec<_> = prompts.iter().map(|_| m.new_cache(64)).collect();
            let mut batched: Vec<_> = prompts.iter().map(|_| m.new_cache(64)).collect();
            for (i, p) in prompts.iter().enumerate() {
                m.forward(p, &mut alone[i], 1).expect("prefill");
                m.forward(p, &mut batched[i], 1).expect("prefill");
            }
            m.set_act_mode(ActMode::Int8Batch);
            let vocab = m.vocab_size();
            for step in 0..3u32 {
                let toks: Vec<u32> = (0..4).map(|i| 20 + 7 * i + step).collect();
                let mut refs: Vec<_> = batched.iter_mut().collect();
                let got = m.forward_batch(&toks, &mut refs).expect("batch step");
                for (i, &t) in toks.iter().enumerate() {
                    // One-token steps stay f32 under this policy.
                    let want = m.forward(&[t], &mut alone[i], 1).expect("step");
                    let row = &got[i * vocab..(i + 1) * vocab];
                    let spread = want.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let diff = row
                        .iter()
                        .zip(&want)
                        .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
                    assert!(
                        diff <= 0.03 * spread + 1e-4,
                        "{} seq {i} step {step}: max diff {diff}, max |logit| {spread}",
                        ty.name()
                    );
                    assert!(row.iter().all(|v| v.is_finite()));
                }
            }
        }
    }

    #[test]
    fn full_cache_is_an_error_and_changes_nothing() {
        let m = tiny(GgmlType::F32);
        let mut a = m.new_cache(2);
        let mut b = m.new_cache(8);
        m.forward(&[1, 2], &mut a, 1).expect("fill");
        m.forward(&[1], &mut b, 1).expect("prefill");
        assert!(m.forward_batch(&[3, 4], &mut [&mut a, &mut b]).is_err());
        assert_eq!((a.len(), b.len()), (2, 1));
        assert!(m.forward_batch(&[3], &mut [&mut b, &mut a]).is_err());
    }
}

#[cfg(test)]
mod bench {
    use std::time::Instant;

    use crate::model::gguf::Gguf;
    use crate::model::int8_decode::ActMode;
    use crate::model::Model;

    /// Decode-step time by batch size on the default model, `f32` and int8 batch
    /// activations alternated (timing only; run by hand):
    /// `cargo test --release -p alpaca --lib batch_step_timing -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn batch_step_timing() {
        let p = crate::assets::default_model_path();
        let mut m = Model::from_gguf(&Gguf::open(&p).expect("open")).expect("load");
        // Contexts of 8 and of 128 tokens (a chat prompt plus part of an answer: the
        // server's case, where the caches of 8 sequences no longer fit in the L3 cache).
        for (ctx, b) in [8usize, 128]
            .into_iter()
            .flat_map(|c| [1usize, 2, 4, 8, 16, 32].map(|b| (c, b)))
        {
            let mut caches: Vec<_> = (0..b).map(|_| m.new_cache(512)).collect();
            let prompt: Vec<u32> = (1..=ctx as u32).collect();
            for c in caches.iter_mut() {
                m.forward(&prompt, c, 1).expect("prefill");
            }
            let toks = vec![42u32; b];
            let n = 5;
            let modes = [ActMode::F32, ActMode::Int8Batch];
            let mut times = [Vec::new(), Vec::new()];
            for _ in 0..9 {
                for (mode, ts) in modes.iter().zip(times.iter_mut()) {
                    m.set_act_mode(*mode);
                    let t0 = Instant::now();
                    for _ in 0..n {
                        let mut refs: Vec<_> = caches.iter_mut().collect();
                        m.forward_batch(&toks, &mut refs).expect("step");
                    }
                    ts.push(t0.elapsed().as_secs_f64() / n as f64);
                }
            }
            for ts in times.iter_mut() {
                ts.sort_by(f64::total_cmp);
            }
            let (f, i) = (times[0][4], times[1][4]);
            eprintln!(
                "ctx {ctx:3} b={b:2}: f32 {:.1} ms/step ({:.0} tok/s), int8 {:.1} ms/step ({:.0} tok/s), {:.2}x (medians of 9)",
                f * 1e3,
                b as f64 / f,
                i * 1e3,
                b as f64 / i,
                f / i
            );
        }
    }
}
