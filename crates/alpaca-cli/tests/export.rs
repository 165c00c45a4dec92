//! `alpaca export` on tiny random-weight models the tests write themselves: every GGUF type
//! loads back and generates, a merged LoRA answers like `--lora` at inference, an existing
//! output is never touched without `--force`, and Python's `gguf` package (gguf-py) reads
//! every file we write without a warning.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use alpaca::export::peft::write_adapter_dir;
use alpaca::model::fresh::random_llama_gguf;
use alpaca::model::gguf::Gguf;
use alpaca::model::llama::LlamaConfig;
use alpaca::model::quant::GgmlType;
use alpaca::rng::Rng;
use alpaca::tokenizer::tiny_test_vocab;
use common::{fails, ok, temp_dir};

/// The binary, kept off any models installed on this machine.
fn bin() -> Command {
    let mut c = common::bin();
    c.env("ALPACA_MODELS", "/nonexistent/alpaca-test-models");
    c
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run alpaca")
}

/// A tiny LLaMA whose rows (256 and 512) fit the 256-weight K-quant super-blocks, so every
/// type is exercised, not only its fallback.
fn config() -> LlamaConfig {
    LlamaConfig {
        n_layers: 2,
        dim: 256,
        ffn_dim: 512,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 64,
        vocab_size: tiny_test_vocab().tokens.len(),
        context_length: 128,
        rms_eps: 1e-5,
        rope_base: 10000.0,
        rope_dim: 64,
    }
}

fn tiny_model(dir: &Path) -> PathBuf {
    let w = random_llama_gguf(&config(), &tiny_test_vocab(), GgmlType::F32, 9).expect("model");
    let p = dir.join("base-f32.gguf");
    w.write(&p).expect("write model");
    p
}

/// A PEFT adapter (HF row order) with random A and B on q, k, v and down_proj.
fn random_adapter(dir: &Path, c: &LlamaConfig) {
    let r = 4;
    let mut rng = Rng::new(5);
    let mut owned: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mods = [
        ("self_attn.q_proj", c.q_dim(), c.dim),
        ("self_attn.k_proj", c.kv_dim(), c.dim),
        ("self_attn.v_proj", c.kv_dim(), c.dim),
        ("mlp.down_proj", c.dim, c.ffn_dim),
    ];
    for i in 0..c.n_layers {
        for (m, rows, cols) in mods {
            let key = format!("base_model.model.model.layers.{i}.{m}");
            let mut rnd =
                |n: usize| -> Vec<f32> { (0..n).map(|_| (rng.next_f32() - 0.5) * 0.1).collect() };
            owned.push((format!("{key}.lora_A.weight"), vec![r, cols], rnd(r * cols)));
            owned.push((format!("{key}.lora_B.weight"), vec![rows, r], rnd(rows * r)));
        }
    }
    let cfg = serde_json::json!({"peft_type": "LORA", "r": r, "lora_alpha": 8,
        "base_model_name_or_path": "tiny", "target_modules": ["q_proj", "k_proj", "v_proj", "down_proj"]});
    write_adapter_dir(dir, &owned, &cfg).expect("adapter");
}

fn export(args: &[&str]) -> Output {
    run(bin().arg("export").args(["-q", "-t", "2"]).args(args))
}

/// `alpaca export -m BASE -o OUT --quant QUANT EXTRA...`.
fn export_to(base: &Path, out: &Path, quant: &str, extra: &[&str]) -> Output {
    export(
        &[
            &["-m", path(base), "-o", path(out), "--quant", quant][..],
            extra,
        ]
        .concat(),
    )
}

fn greedy(model: &Path, lora: Option<&Path>) -> String {
    let mut c = bin();
    c.args(["run", "-m"]).arg(model);
    if let Some(l) = lora {
        c.arg("--lora").arg(l);
    }
    ok(&run(c.args([
        "-p",
        "the cat sat on",
        "--template",
        "raw",
        "-n",
        "12",
        "--temp",
        "0",
        "-t",
        "2",
    ])))
}

#[test]
fn every_type_loads_back_and_generates() {
    let d = temp_dir("types");
    let base = tiny_model(&d);
    let reference = greedy(&base, None);
    for q in ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q4_k", "q6_k"] {
        let out = d.join(format!("out-{q}.gguf"));
        ok(&export_to(&base, &out, q, &[]));
        let ty = GgmlType::parse(q).expect("type");
        let g = Gguf::open(&out).expect("reads back");
        assert_eq!(g.version, 3);
        assert_eq!(
            g.tensor("blk.0.attn_q.weight").map(|t| t.ty),
            Some(ty),
            "{q}"
        );
        assert_eq!(
            g.tensor("blk.1.ffn_norm.weight").map(|t| t.ty),
            Some(GgmlType::F32)
        );
        let ft = g.get_u64("general.file_type").expect("file type") as u32;
        assert_eq!(ft, alpaca::export::file_type(ty), "{q}");
        assert!(g.get("tokenizer.ggml.tokens").is_some());
        let text = greedy(&out, None);
        assert!(!text.is_empty(), "{q}: no output");
        if q == "f32" {
            // Same weights, same greedy text.
            assert_eq!(text, reference);
        }
    }
    // Bit-level agreement with llama.cpp: the hash of every tensor's bytes equals the one of
    // `llama-quantize --pure base-f32.gguf out.gguf Q4_K_S` (and Q6_K) on this same model
    // (the llama.cpp of scripts/llamacpp.sh; scripts/export_check_llamacpp.sh recomputes
    // them with ALPACA_EXPORT_KEEP=1. Q4_K/Q6_K are
    // deterministic reference quantizers without an importance matrix).
    for (q, want) in [("q4_k", LLAMA_CPP_Q4_K), ("q6_k", LLAMA_CPP_Q6_K)] {
        let g = Gguf::open(d.join(format!("out-{q}.gguf"))).expect("reads back");
        assert_eq!(
            tensor_hash(&g),
            want,
            "{q}: bytes differ from llama-quantize's"
        );
    }
    // --keep-embeddings keeps the embeddings in a higher precision.
    let out = d.join("out-q4_k-embd.gguf");
    ok(&export_to(
        &base,
        &out,
        "q4_k",
        &["--keep-embeddings", "f16"],
    ));
    let g = Gguf::open(&out).expect("reads back");
    assert_eq!(
        g.tensor("token_embd.weight").map(|t| t.ty),
        Some(GgmlType::F16)
    );
    assert_eq!(
        g.tensor("blk.0.ffn_up.weight").map(|t| t.ty),
        Some(GgmlType::Q4K)
    );
    if std::env::var_os("ALPACA_EXPORT_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&d);
    }
}

/// FNV-1a over the tensors' bytes in name order (the form `export_check_llamacpp.sh`
/// prints for llama-quantize's output).
fn tensor_hash(g: &Gguf) -> u64 {
    let mut infos: Vec<_> = g.tensors.iter().collect();
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for t in infos {
        for &b in g.tensor_data(t) {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

const LLAMA_CPP_Q4_K: u64 = 10408348644515766925;
const LLAMA_CPP_Q6_K: u64 = 1082277621153122202;

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

#[test]
fn merged_lora_answers_like_the_adapter_at_inference() {
    let d = temp_dir("lora");
    let base = tiny_model(&d);
    let adapter = d.join("adapter");
    random_adapter(&adapter, &config());
    let out = d.join("merged.gguf");
    let o = export_to(&base, &out, "f32", &["--lora", path(&adapter)]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("merged the LoRA adapter into 8"));
    // Perplexity (every logit of 2 windows) of the merged file equals the base with the
    // adapter applied at inference, and differs from the base alone.
    let text = d.join("text.txt");
    std::fs::write(
        &text,
        "the cat sat on the mat and the dog ran to the park. ".repeat(8),
    )
    .expect("text");
    let ppl = |model: &Path, lora: Option<&Path>| -> f64 {
        let mut c = bin();
        c.args(["perplexity", "-t", "2", "--ctx", "64", "-m"])
            .arg(model)
            .arg("-f")
            .arg(&text);
        if let Some(l) = lora {
            c.arg("--lora").arg(l);
        }
        let out = ok(&run(&mut c));
        out.lines()
            .find_map(|l| l.strip_prefix("PPL = "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no PPL in {out}"))
    };
    let (merged, with_adapter, plain) = (
        ppl(&out, None),
        ppl(&base, Some(&adapter)),
        ppl(&base, None),
    );
    assert!(
        (merged - with_adapter).abs() < 1e-3 * with_adapter,
        "{merged} vs {with_adapter}"
    );
    assert!(
        (plain - with_adapter).abs() > 1e-2 * with_adapter,
        "adapter too weak: {plain}"
    );
    assert_eq!(greedy(&out, None), greedy(&base, Some(&adapter)));
    let g = Gguf::open(&out).expect("merged");
    assert_eq!(g.get_u64("general.base_model.count").ok(), Some(1));
    assert_eq!(g.get_u64("alpaca.lora.r").ok(), Some(4));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn existing_output_needs_force_and_is_replaced_atomically() {
    let d = temp_dir("force");
    let base = tiny_model(&d);
    let out = d.join("out.gguf");
    std::fs::write(&out, b"precious bytes").expect("write");
    let err = fails(&export_to(&base, &out, "q8_0", &[]), "already exists");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&out).expect("read"), b"precious bytes");

    // A bad type is refused by the parser before anything happens.
    let o = export_to(&base, &out, "q3_k", &[]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(std::fs::read(&out).expect("read"), b"precious bytes");

    ok(&export_to(&base, &out, "q8_0", &["--force"]));
    assert!(Gguf::open(&out).is_ok());
    let names: Vec<String> = std::fs::read_dir(&d)
        .expect("list")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.contains("tmp")),
        "temporary file left: {names:?}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// gguf-py's `GGUFReader` over every file type we write, with Python warnings and logged
/// warnings turned into failures. CI installs gguf (scripts/test.sh); locally a missing
/// python3 or gguf skips with a notice.
#[test]
fn gguf_py_reads_every_export_without_warnings() {
    let probe = Command::new("python3")
        .args(["-c", "import gguf"])
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("NOTICE: python3 with the `gguf` package not found; skipping the gguf-py check");
        return;
    }
    let d = temp_dir("ggufpy");
    let base = tiny_model(&d);
    let adapter = d.join("adapter");
    random_adapter(&adapter, &config());
    let mut files = vec![base.clone()];
    for q in ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q4_k", "q6_k"] {
        let out = d.join(format!("out-{q}.gguf"));
        ok(&export_to(&base, &out, q, &[]));
        files.push(out);
    }
    let merged = d.join("merged-q4_k.gguf");
    ok(&export_to(
        &base,
        &merged,
        "q4_k",
        &["--lora", path(&adapter), "--keep-embeddings", "q6_k"],
    ));
    files.push(merged);
    let script = r#"
import logging, sys, warnings
import numpy as np
warnings.simplefilter("error")
class Fail(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.WARNING:
            raise SystemExit(f"gguf-py logged: {record.getMessage()}")
logging.getLogger().addHandler(Fail())
logging.getLogger().setLevel(logging.WARNING)
from gguf import GGUFReader
from gguf.quants import dequantize
for path in sys.argv[1:]:
    r = GGUFReader(path)
    assert r.fields["general.architecture"].contents() == "llama", path
    for t in r.tensors:
        x = dequantize(t.data, t.tensor_type)
        assert x.size == int(np.prod(t.shape)), (path, t.name)
        assert np.isfinite(x).all(), (path, t.name)
    print(path, len(r.tensors), "tensors", len(r.fields), "fields")
"#;
    let o = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(&files)
        .output()
        .expect("python3");
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "gguf-py failed:\n{out}\n{err}");
    assert!(err.trim().is_empty(), "gguf-py wrote to stderr: {err}");
    assert_eq!(out.lines().count(), files.len(), "{out}");
    let _ = std::fs::remove_dir_all(&d);
}
