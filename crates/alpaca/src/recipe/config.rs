//! The recipe's TOML config: one section per stage, every key optional with its default
//! documented beside it, unknown keys rejected (a typo must not silently fall back to a
//! default).
//!
//! Paths: `~/` is the home directory, `{models}` the model cache (`alpaca::assets::models_dir`),
//! `{data}` the data cache ([`data_dir`]); other relative paths are relative to the current
//! directory. An empty model path means the embedded default model.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The whole recipe. Sections mirror the stages.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecipeConfig {
    /// Run directory for every artifact and the resume state ["runs/<config file name>"].
    pub out_dir: String,
    /// Worker threads; 0 = all cores [0].
    pub threads: usize,
    pub model: ModelSection,
    pub teacher: TeacherSection,
    pub generate: GenerateSection,
    pub data: DataSection,
    pub train: TrainSection,
    pub eval: EvalSection,
    pub export: ExportSection,
    pub sample: SampleSection,
}

/// Stage 1: the student model.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// GGUF of the base model to tune; "" = the embedded default (SmolLM2-135M-Instruct) [""].
    pub student: String,
}

/// Stage 2: who writes the self-instruct completions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TeacherSection {
    /// "local" (our engine, the prompt fed raw), "local-chat" (in the model's chat template),
    /// "completions" or "chat" (an OpenAI-compatible server), "synthetic" (an offline
    /// stand-in for tests) or "none" (no generation) ["local"].
    pub kind: String,
    /// local kinds: GGUF path ("" = the default model); server kinds: the model name [""].
    pub model: String,
    /// Server base URL; "" = $OPENAI_BASE_URL, else https://api.openai.com/v1 [""].
    pub base_url: String,
    /// Environment variable holding the API key ["OPENAI_API_KEY"].
    pub api_key_env: String,
    /// Whole-request timeout in seconds [300].
    pub timeout_s: f64,
    /// Retries of a failed request [10].
    pub max_retries: u32,
}

impl Default for TeacherSection {
    fn default() -> Self {
        TeacherSection {
            kind: "local".into(),
            model: String::new(),
            base_url: String::new(),
            api_key_env: "OPENAI_API_KEY".into(),
            timeout_s: 300.0,
            max_retries: 10,
        }
    }
}

/// Stage 2: self-instruct settings. Defaults are the original's.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerateSection {
    /// Kept instructions to reach; 0 = no generation [100].
    pub count: usize,
    /// Stop after this many prompts even when `count` is not reached; 0 = no limit [0].
    pub max_prompts: u64,
    /// Seed of the prompt sampler (and of a local teacher) [0].
    pub seed: u64,
    /// Seed tasks file (Self-Instruct seed_tasks.jsonl); "" = our embedded 114 seeds [""].
    pub seeds: String,
    /// Seed tasks shown per prompt [3].
    pub seeds_per_prompt: usize,
    /// Prompts per request (server teachers) [5].
    pub batch: usize,
    /// Requests in flight [1].
    pub concurrency: usize,
    /// New tokens per prompt [3072].
    pub max_tokens: u32,
    /// [1.0]
    pub temperature: f32,
    /// [1.0]
    pub top_p: f32,
    /// ROUGE-L above which an instruction is a near-duplicate [0.7].
    pub threshold: f64,
}

impl Default for GenerateSection {
    fn default() -> Self {
        GenerateSection {
            count: 100,
            max_prompts: 0,
            seed: 0,
            seeds: String::new(),
            seeds_per_prompt: 3,
            batch: 5,
            concurrency: 1,
            max_tokens: 3072,
            temperature: 1.0,
            top_p: 1.0,
            threshold: crate::data::dedup::DEFAULT_THRESHOLD,
        }
    }
}

/// Stage 3: mixing existing data in, and the held-out split.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// Data files to mix in (Alpaca JSON/JSONL, ShareGPT, messages; .gz allowed) [[]].
    pub files: Vec<String>,
    /// Take from `files` only until the mix holds this many examples (the generated ones
    /// first); 0 = take all of them [0].
    pub top_up_to: usize,
    /// Also train on the seed tasks themselves [false].
    pub include_seeds: bool,
    /// Apply the self-instruct filters to mixed-in examples [true].
    pub filter: bool,
    /// Drop mixed-in instructions within ROUGE-L `generate.threshold` of an earlier one [true].
    pub dedup: bool,
    /// Examples set aside for stage 5, never trained on [50].
    pub held_out: usize,
    /// Seed of the shuffle before the split [42].
    pub seed: u64,
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection {
            files: Vec::new(),
            top_up_to: 0,
            include_seeds: false,
            filter: true,
            dedup: true,
            held_out: 50,
            seed: 42,
        }
    }
}

/// Stage 4: fine-tuning. Defaults are alpaca-lora's.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// "lora" or "full" ["lora"].
    pub method: String,
    /// [8]
    pub lora_r: usize,
    /// [16.0]
    pub lora_alpha: f32,
    /// [0.05]
    pub lora_dropout: f32,
    /// Any of q, k, v, o, gate, up, down, or "all" [["q", "v"]].
    pub lora_targets: Vec<String>,
    /// Peak learning rate [3e-4].
    pub lr: f32,
    /// Passes over the training split [3.0].
    pub epochs: f32,
    /// Optimizer steps; 0 = from `epochs` [0].
    pub max_steps: usize,
    /// Sequences per optimizer step [128].
    pub batch_size: usize,
    /// Sequences per forward/backward [4].
    pub micro_batch_size: usize,
    /// Most tokens per example [256].
    pub cutoff_len: usize,
    /// Validation examples: a count (>= 1) or a fraction (< 1) [2000].
    pub val_size: f64,
    /// "alpaca", "alpaca-lora", "chatml" or "auto" ["alpaca-lora"].
    pub template: String,
    /// Loss on prompt tokens too [false].
    pub train_on_inputs: bool,
    /// [false]
    pub group_by_length: bool,
    /// Warmup steps, unless `warmup_ratio` > 0 [100].
    pub warmup_steps: usize,
    /// Warmup as a fraction of all steps; 0 = use `warmup_steps` [0.0].
    pub warmup_ratio: f32,
    /// "linear", "cosine" or "constant" ["linear"].
    pub schedule: String,
    /// [0.0]
    pub weight_decay: f32,
    /// Clip the global gradient norm; 0 = off [1.0].
    pub max_grad_norm: f32,
    /// Checkpoint every N steps (and at the end) [200].
    pub save_every: usize,
    /// Validation loss every N steps (and at the start and end) [200].
    pub eval_every: usize,
    /// [42]
    pub seed: u64,
}

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            method: "lora".into(),
            lora_r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.05,
            lora_targets: vec!["q".into(), "v".into()],
            lr: 3e-4,
            epochs: 3.0,
            max_steps: 0,
            batch_size: 128,
            micro_batch_size: 4,
            cutoff_len: 256,
            val_size: 2000.0,
            template: "alpaca-lora".into(),
            train_on_inputs: false,
            group_by_length: false,
            warmup_steps: 100,
            warmup_ratio: 0.0,
            schedule: "linear".into(),
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            save_every: 200,
            eval_every: 200,
            seed: 42,
        }
    }
}

/// Stage 5: held-out response loss of the base and of the tuned model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSection {
    /// Run the stage [true].
    pub enabled: bool,
    /// Most tokens per example; 0 = `train.cutoff_len` [0].
    pub cutoff_len: usize,
}

impl Default for EvalSection {
    fn default() -> Self {
        EvalSection {
            enabled: true,
            cutoff_len: 0,
        }
    }
}

/// Stage 6: the merged, quantized GGUF.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportSection {
    /// Weight type of the exported file: "q8_0", "q4_0", "q4_1", "q4_k", "q6_k", "f16", "bf16"
    /// or "f32" ["q8_0"].
    pub quant: String,
    /// Output file; "" = `<out_dir>/model-<quant>.gguf` [""].
    pub file: String,
}

impl Default for ExportSection {
    fn default() -> Self {
        ExportSection {
            quant: "q8_0".into(),
            file: String::new(),
        }
    }
}

/// Stage 7: one answer from the exported model, and its speed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SampleSection {
    /// The instruction to answer ["Give three tips for staying healthy."].
    pub prompt: String,
    /// [128]
    pub max_new_tokens: usize,
}

impl Default for SampleSection {
    fn default() -> Self {
        SampleSection {
            prompt: "Give three tips for staying healthy.".into(),
            max_new_tokens: 128,
        }
    }
}

/// The data cache (where `scripts/fetch-data.sh` puts downloaded data): `$ALPACA_DATA`, else
/// `$XDG_CACHE_HOME/alpaca/data`, else `~/.cache/alpaca/data`.
pub fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ALPACA_DATA").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("alpaca")
        .join("data")
}

/// Expand `~/`, `{models}` and `{data}` in a configured path.
pub fn expand_path(s: &str) -> PathBuf {
    let models = crate::assets::models_dir();
    let data = data_dir();
    if let Some(rest) = s.strip_prefix("{models}") {
        return join_rest(&models, rest);
    }
    if let Some(rest) = s.strip_prefix("{data}") {
        return join_rest(&data, rest);
    }
    if let Some(rest) = s.strip_prefix("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    PathBuf::from(s)
}

fn join_rest(base: &Path, rest: &str) -> PathBuf {
    let rest = rest.trim_start_matches('/');
    if rest.is_empty() {
        base.to_path_buf()
    } else {
        base.join(rest)
    }
}

impl RecipeConfig {
    /// Parse a config text; errors name `path`, and for an unknown key the key itself.
    pub fn parse(text: &str, path: &Path) -> Result<RecipeConfig> {
        let mut cfg: RecipeConfig = toml::from_str(text).map_err(|e| {
            let (line, _) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            Error::Data {
                path: path.to_path_buf(),
                line,
                reason: e.message().trim().to_string(),
            }
        })?;
        if cfg.out_dir.is_empty() {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "recipe".into());
            cfg.out_dir = format!("runs/{stem}");
        }
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Read and parse a config file.
    pub fn load(path: &Path) -> Result<RecipeConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        RecipeConfig::parse(&text, path)
    }

    /// Checks on values (types and keys are checked by the parser).
    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, why: String| {
            Err(Error::InvalidArgument(format!(
                "{}: `{key}` {why}",
                path.display()
            )))
        };
        const KINDS: [&str; 6] = [
            "local",
            "local-chat",
            "completions",
            "chat",
            "synthetic",
            "none",
        ];
        if !KINDS.contains(&self.teacher.kind.as_str()) {
            return bad(
                "teacher.kind",
                format!(
                    "is `{}`; expected one of {}",
                    self.teacher.kind,
                    KINDS.join(", ")
                ),
            );
        }
        if self.is_server_teacher() && self.generate.count > 0 {
            if self.teacher.model.trim().is_empty() {
                return bad(
                    "teacher.model",
                    "is empty; a server teacher needs a model name".into(),
                );
            }
            if !(self.teacher.timeout_s.is_finite() && self.teacher.timeout_s > 0.0) {
                return bad("teacher.timeout_s", "must be a positive number".into());
            }
        }
        if !matches!(self.train.method.as_str(), "lora" | "full") {
            return bad(
                "train.method",
                format!("is `{}`; expected lora or full", self.train.method),
            );
        }
        self.lora_targets()
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
        for (key, v) in [("train.template", &self.train.template)] {
            if v.parse::<crate::data::template::TemplateChoice>().is_err() {
                return bad(
                    key,
                    format!("is `{v}`; expected alpaca, alpaca-lora, chatml or auto"),
                );
            }
        }
        if self
            .train
            .schedule
            .parse::<crate::train::optim::Schedule>()
            .is_err()
        {
            return bad(
                "train.schedule",
                format!(
                    "is `{}`; expected linear, cosine or constant",
                    self.train.schedule
                ),
            );
        }
        if !(self.train.val_size >= 0.0 && self.train.val_size.is_finite()) {
            return bad(
                "train.val_size",
                "must be a count or a fraction below 1".into(),
            );
        }
        super::evalexport::quant_type(&self.export.quant)
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
        if self.data.held_out == 0 && self.eval.enabled {
            return bad(
                "data.held_out",
                "is 0 but [eval] is enabled: set aside some examples or set eval.enabled = false"
                    .into(),
            );
        }
        Ok(())
    }

    /// Whether the teacher is an HTTP server.
    pub fn is_server_teacher(&self) -> bool {
        matches!(self.teacher.kind.as_str(), "completions" | "chat")
    }

    /// Whether stage 2 runs.
    pub fn generates(&self) -> bool {
        self.generate.count > 0 && self.teacher.kind != "none"
    }

    /// LoRA targets as the train room's mask (q, k, v, o, gate, up, down).
    pub fn lora_targets(&self) -> Result<[bool; 7]> {
        let names = crate::train::model::LINEAR_NAMES;
        let mut t = [false; 7];
        for name in &self.train.lora_targets {
            let short = name.trim().trim_end_matches("_proj");
            if short == "all" {
                return Ok([true; 7]);
            }
            match names
                .iter()
                .position(|n| n.trim_end_matches("_proj") == short)
            {
                Some(i) => t[i] = true,
                None => {
                    return Err(Error::InvalidArgument(format!(
                        "`train.lora_targets`: unknown target `{name}` (q, k, v, o, gate, up, down, all)"
                    )))
                }
            }
        }
        if !t.iter().any(|x| *x) && self.train.method == "lora" {
            return Err(Error::InvalidArgument(
                "`train.lora_targets` is empty".into(),
            ));
        }
        Ok(t)
    }

    pub fn out_dir(&self) -> PathBuf {
        expand_path(&self.out_dir)
    }

    /// The student path as configured (`None` = the default model).
    pub fn student_path(&self) -> Option<PathBuf> {
        (!self.model.student.is_empty()).then(|| expand_path(&self.model.student))
    }

    /// The exported file's path.
    pub fn export_path(&self) -> PathBuf {
        if self.export.file.is_empty() {
            self.out_dir()
                .join(format!("model-{}.gguf", self.export.quant))
        } else {
            expand_path(&self.export.file)
        }
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_takes_documented_defaults() {
        let c = RecipeConfig::parse("", Path::new("configs/q.toml")).expect("parse");
        assert_eq!(c.out_dir, "runs/q");
        assert_eq!(c.teacher.kind, "local");
        assert_eq!(c.generate.count, 100);
        assert_eq!(c.train.lora_r, 8);
        assert_eq!(c.train.lr, 3e-4);
        assert_eq!(c.export.quant, "q8_0");
        assert!(c.lora_targets().expect("targets")[0]);
    }

    #[test]
    fn unknown_key_is_named_with_file_and_line() {
        let text = "[train]\nlr = 1e-3\nlearning_rate = 2\n";
        let e = RecipeConfig::parse(text, Path::new("c.toml"))
            .expect_err("error")
            .to_string();
        assert!(e.contains("c.toml:3"), "{e}");
        assert!(e.contains("learning_rate"), "{e}");
        let e = RecipeConfig::parse("[trian]\n", Path::new("c.toml"))
            .expect_err("error")
            .to_string();
        assert!(e.contains("trian"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("[teacher]\nkind = \"gpt\"\n", "teacher.kind"),
            ("[train]\nmethod = \"qlora2\"\n", "train.method"),
            ("[train]\nlora_targets = [\"qq\"]\n", "train.lora_targets"),
            ("[export]\nquant = \"q3\"\n", "export.quant"),
            ("[teacher]\nkind = \"chat\"\n", "teacher.model"),
        ] {
            let e = RecipeConfig::parse(text, Path::new("c.toml"))
                .expect_err("error")
                .to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn shipped_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).expect("configs/") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "toml") {
                let c = RecipeConfig::load(&p).unwrap_or_else(|e| panic!("{e}"));
                assert!(c.out_dir.starts_with("runs/"), "{}", p.display());
                n += 1;
            }
        }
        assert!(n >= 4, "{n} configs");
        let q = RecipeConfig::load(&dir.join("quickstart.toml")).expect("quickstart");
        assert_eq!(q.teacher.kind, "local");
        assert!(
            q.student_path().is_none(),
            "the quickstart uses the default model"
        );
        let full = RecipeConfig::load(&dir.join("alpaca-7b-full.toml")).expect("7b full");
        assert_eq!((full.train.method.as_str(), full.train.lr), ("full", 2e-5));
        assert_eq!(full.train.warmup_ratio, 0.03);
    }

    #[test]
    fn paths_expand() {
        let m = expand_path("{models}/x.gguf");
        assert!(m.ends_with("x.gguf") && m.starts_with(crate::assets::models_dir()));
        assert_eq!(expand_path("a/b"), PathBuf::from("a/b"));
        assert!(expand_path("{data}/d.json").starts_with(data_dir()));
    }
}
