//! `alpaca bench`: prompt processing (ppN) and generation (tgN) speed, like llama-bench.
//!
//! ppN: one batch of N tokens from an empty cache. tgN: N tokens decoded one at a time from
//! an empty cache. Each test runs `-r` times after one warm-up; the median and standard
//! deviation of tokens/s are reported. Token ids are drawn at random, as llama-bench does.
//!
//! Decoding reads every weight once per token, so memory bandwidth bounds it. For each
//! thread count the bench measures a streaming read over a buffer larger than the caches
//! (`mem_gbs`) and reports the bound `mem_gbs / weight bytes per token` and tgN as a
//! percentage of it.

use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;

use alpaca::infer::sampler::Rng;

use super::ModelArgs;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// GGUF file [default: the embedded SmolLM2-135M-Instruct]
    #[arg(short = 'm', long = "model")]
    pub model: Option<std::path::PathBuf>,
    /// Prompt tokens (0 skips the test)
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub n_prompt: usize,
    /// Generated tokens (0 skips the test)
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: usize,
    /// Thread counts, comma-separated (e.g. 1,2) [default: all cores]
    #[arg(short = 't', long = "threads", value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Repetitions per test
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    pub reps: usize,
    /// Print a JSON array instead of a table
    #[arg(long = "json")]
    pub json: bool,
    /// Follow llama.cpp's CPU arithmetic: Q8_0 weights multiply 8-bit activations with
    /// integer dots; LLaMA models also take ggml's RoPE, RMSNorm, SwiGLU, an f16 KV cache and
    /// flash attention (parity with llama.cpp, not speed; logits move off the f32 reference)
    #[arg(long = "int8-activations", conflicts_with = "f32_activations")]
    pub int8_activations: bool,
    /// Keep f32 activations in every product (see `alpaca run --help`)
    #[arg(long = "f32-activations")]
    pub f32_activations: bool,
}

#[derive(Serialize)]
struct Row {
    test: String,
    threads: usize,
    tokens_per_second: f64,
    stddev: f64,
    /// Measured streaming-read bandwidth with this many threads, GB/s (tg rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    mem_gbs: Option<f64>,
    /// Decode bound: `mem_gbs` / weight bytes read per token, tokens/s (tg rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    bound_tokens_per_second: Option<f64>,
    /// tokens_per_second as a percentage of the bound (tg rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pct_of_bound: Option<f64>,
}

/// Bytes of the bandwidth probe's buffer: far larger than any L3 here.
const PROBE_BYTES: usize = 512 << 20;

/// Streaming-read bandwidth in GB/s with the current rayon pool's threads: the best of a
/// few passes summing a `PROBE_BYTES` buffer split evenly between threads.
fn mem_bandwidth_gbs(buf: &[u64]) -> f64 {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads().max(1);
    let per = buf.len().div_ceil(threads);
    let mut best = 0f64;
    for _ in 0..4 {
        let t0 = Instant::now();
        let s: u64 = buf
            .par_chunks(per)
            .map(|c| {
                let mut acc = [0u64; 8];
                for v in c.chunks_exact(8) {
                    for i in 0..8 {
                        acc[i] = acc[i].wrapping_add(v[i]);
                    }
                }
                acc.iter().fold(0u64, |a, b| a.wrapping_add(*b))
            })
            .reduce(|| 0, |a, b| a.wrapping_add(b));
        std::hint::black_box(s);
        let secs = t0.elapsed().as_secs_f64();
        best = best.max((buf.len() * 8) as f64 / secs / 1e9);
    }
    best
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.reps == 0 {
        bail!("--repetitions must be at least 1");
    }
    let threads = if a.threads.is_empty() {
        vec![std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)]
    } else {
        a.threads.clone()
    };
    if threads.contains(&0) {
        bail!("--threads must be at least 1");
    }
    let engine = ModelArgs {
        model: a.model.clone(),
        threads: Some(threads[0]),
        lora: None,
        int8_activations: a.int8_activations,
        f32_activations: a.f32_activations,
    }
    .load()?;
    let model = &engine.model;
    let vocab = model.vocab_size() as u64;
    let bytes_per_token = model.weight_bytes_per_token() as f64;
    let mut rng = Rng::new(1234);
    let mut rows = Vec::new();
    // Filled with non-zero data so every page is really backed.
    let probe: Vec<u64> = if a.n_gen > 0 {
        (0..PROBE_BYTES / 8).map(|i| i as u64).collect()
    } else {
        Vec::new()
    };
    for &nt in &threads {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(nt).build()?;
        let gbs = (a.n_gen > 0).then(|| pool.install(|| mem_bandwidth_gbs(&probe)));
        let mut tests = Vec::new();
        if a.n_prompt > 0 {
            tests.push((format!("pp{}", a.n_prompt), true, a.n_prompt));
        }
        if a.n_gen > 0 {
            tests.push((format!("tg{}", a.n_gen), false, a.n_gen));
        }
        for (name, batch, n) in tests {
            if n >= model.context_length() {
                bail!(
                    "{name}: {n} tokens exceed the model context {}",
                    model.context_length()
                );
            }
            let tokens: Vec<u32> = (0..n).map(|_| (rng.next_u64() % vocab) as u32).collect();
            let mut speeds = Vec::new();
            for rep in 0..=a.reps {
                let secs = pool.install(|| -> Result<f64> {
                    let mut cache = model.new_cache(n);
                    let t0 = Instant::now();
                    if batch {
                        model.forward(&tokens, &mut cache, 1)?;
                    } else {
                        for &t in &tokens {
                            model.forward(&[t], &mut cache, 1)?;
                        }
                    }
                    Ok(t0.elapsed().as_secs_f64())
                })?;
                if rep > 0 {
                    speeds.push(n as f64 / secs);
                }
            }
            let tps = median(&mut speeds);
            let bound = gbs.filter(|_| !batch).map(|g| g * 1e9 / bytes_per_token);
            rows.push(Row {
                test: name,
                threads: nt,
                tokens_per_second: tps,
                stddev: stddev(&speeds),
                mem_gbs: gbs.filter(|_| !batch),
                bound_tokens_per_second: bound,
                pct_of_bound: bound.map(|b| 100.0 * tps / b),
            });
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        let size = model.weight_bytes_per_token() as f64 / 1e6;
        println!(
            "model: {} ({}, {size:.1} MB of weights read per token)",
            engine.path.display(),
            model.arch()
        );
        println!("| {:>8} | {:>7} | {:>12} |", "test", "threads", "t/s");
        println!("| {:->8} | {:->7} | {:->12} |", "", "", "");
        for r in &rows {
            println!(
                "| {:>8} | {:>7} | {:>6.1} ± {:<4.1}|",
                r.test, r.threads, r.tokens_per_second, r.stddev
            );
        }
        for r in rows.iter().filter(|r| r.mem_gbs.is_some()) {
            println!(
                "memory bandwidth ({} thread(s)): {:.1} GB/s -> decode bound {:.0} tok/s; {} at {:.0}% of it",
                r.threads,
                r.mem_gbs.unwrap_or(0.0),
                r.bound_tokens_per_second.unwrap_or(0.0),
                r.test,
                r.pct_of_bound.unwrap_or(0.0)
            );
        }
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn stddev(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}
