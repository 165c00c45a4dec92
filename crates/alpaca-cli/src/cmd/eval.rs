//! `alpaca eval`: what fine-tuning changed. Held-out response loss (`loss`), answers to an
//! instruction set (`predict`, batched and resumable), pairwise judging with a report
//! (`judge`) and ROUGE-L (`rouge`). The work is in `alpaca::eval`; this file maps flags,
//! draws progress bars and prints summaries.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use alpaca::data::io::write_atomic;
use alpaca::data::template::{Template, TemplateChoice};
use alpaca::eval::judge::{Judge, LengthJudge, LogprobJudge, TeacherJudge};
use alpaca::eval::pairwise::{compare, tally, CompareConfig};
use alpaca::eval::predict::PredictEvent;
use alpaca::eval::report::{markdown, svg, LossEntry, Report};
use alpaca::eval::rouge::rouge_report;
use alpaca::eval::{
    predict, read_items, read_predictions, response_loss, GenSettings, PredictConfig, RunSplit,
};
use alpaca::generate::openai::{Endpoint, OpenAiConfig, OpenAiTeacher};
use alpaca::train::batch::ValSize;

use super::ModelArgs;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub command: EvalCommand,
}

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// Held-out loss and perplexity on response tokens, on the split `alpaca train` held out
    Loss(LossArgs),
    /// Answer an instruction set into a JSONL file (batched; rerun to continue)
    Predict(PredictArgs),
    /// Compare two prediction files with a judge, both orders; writes report.md and report.svg
    Judge(JudgeArgs),
    /// ROUGE-L of prediction files against reference outputs
    Rouge(RougeArgs),
}

pub fn run(args: EvalArgs) -> Result<()> {
    match args.command {
        EvalCommand::Loss(a) => run_loss(a),
        EvalCommand::Predict(a) => run_predict(a),
        EvalCommand::Judge(a) => run_judge(a),
        EvalCommand::Rouge(a) => run_rouge(a),
    }
}

fn bar(len: u64, template: &str) -> ProgressBar {
    let b = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    b.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b
}

fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let _ = ctrlc::set_handler(move || f.store(true, Ordering::SeqCst));
    flag
}

/// A run directory's recorded split, when `--lora` is one.
fn run_split_of(lora: Option<&Path>) -> Option<RunSplit> {
    let dir = lora?;
    dir.join("checkpoint.safetensors")
        .is_file()
        .then(|| RunSplit::from_run_dir(dir).ok())
        .flatten()
}

fn model_label(m: &ModelArgs) -> Result<String> {
    let path = alpaca::assets::resolve_model(m.model.as_deref())?;
    let stem = |p: &Path| {
        p.file_stem()
            .or_else(|| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    Ok(match &m.lora {
        Some(l) => format!("{}+{}", stem(&path), stem(l)),
        None => stem(&path),
    })
}

// ------------------------------------------------------------------------------------ loss

#[derive(Args, Debug)]
pub struct LossArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Use the data file, validation size, seed, cutoff and template recorded in this
    /// `alpaca train` run directory [default: --lora, when it is a run directory]
    #[arg(long = "split-from", conflicts_with = "data")]
    pub split_from: Option<PathBuf>,
    /// Alpaca JSON/JSONL, ShareGPT or messages file, split as `alpaca train` splits it
    #[arg(long = "data")]
    pub data: Option<PathBuf>,
    /// Validation size as given to `alpaca train` (a count or a fraction)
    #[arg(long = "val-size", default_value = "2000")]
    pub val_size: ValSize,
    /// Split seed as given to `alpaca train`
    #[arg(long = "seed", default_value_t = 42)]
    pub seed: u64,
    /// Score every example of --data, not only the validation split
    #[arg(long = "all", conflicts_with = "split_from")]
    pub all: bool,
    /// Most tokens per example [default: the run's, else 256 as `alpaca train`]
    #[arg(long = "cutoff-len")]
    pub cutoff_len: Option<usize>,
    /// alpaca, alpaca-lora, chatml or auto [default: the run's, else alpaca-lora]
    #[arg(long = "template")]
    pub template: Option<TemplateChoice>,
    /// Name in reports [default: model file stem, +adapter directory name]
    #[arg(long = "label")]
    pub label: Option<String>,
    /// Also write the result as JSON here (input of `alpaca eval judge --loss`)
    #[arg(long = "json")]
    pub json: Option<PathBuf>,
}

fn run_loss(a: LossArgs) -> Result<()> {
    let from_run = a
        .split_from
        .clone()
        .or_else(|| run_split_of(a.model.lora.as_deref()).and(a.model.lora.clone()))
        .filter(|_| a.data.is_none());
    let mut split = match (&from_run, &a.data) {
        (Some(dir), _) => RunSplit::from_run_dir(dir)?,
        (None, Some(data)) => {
            let mut s = RunSplit::new(data.clone());
            s.val_size = a.val_size;
            s.seed = a.seed;
            s
        }
        (None, None) => bail!(
            "give --data FILE (split as `alpaca train` would) or --split-from RUN_DIR (a run's own held-out split)"
        ),
    };
    if let Some(c) = a.cutoff_len {
        split.cutoff_len = c;
    }
    if let Some(t) = a.template {
        split.template = t;
    }
    let examples = split.examples(a.all)?;
    let label = match &a.label {
        Some(l) => l.clone(),
        None => model_label(&a.model)?,
    };
    let engine = a.model.load()?;
    let template = engine.template(split.template);
    eprintln!(
        "loss: {} examples of {} ({}, seed {}, cutoff {}, template {:?}){}",
        examples.len(),
        split.data.display(),
        if a.all {
            "all".to_string()
        } else {
            format!("validation {:?}", split.val_size)
        },
        split.seed,
        split.cutoff_len,
        split.template,
        from_run
            .as_ref()
            .map(|d| format!(", split of run {}", d.display()))
            .unwrap_or_default()
    );
    let pb = bar(
        examples.len() as u64,
        "{bar:30} {pos}/{len} examples {per_sec} [{elapsed_precise} < {eta_precise}]",
    );
    let r = response_loss(
        &engine,
        &examples,
        &template,
        split.cutoff_len,
        &mut |d, _| pb.set_position(d as u64),
    )?;
    pb.finish_and_clear();
    if r.n_skipped > 0 {
        eprintln!(
            "skipped {} examples whose prompt does not fit the cutoff",
            r.n_skipped
        );
    }
    println!(
        "{label}: loss {:.4}  perplexity {:.3}  ({} examples, {} response tokens)",
        r.loss, r.perplexity, r.n_examples, r.n_tokens
    );
    if let Some(path) = &a.json {
        let mut v = serde_json::to_value(LossEntry { label, report: r })?;
        v["model"] = serde_json::json!(engine.path);
        v["lora"] = serde_json::json!(a.model.lora);
        v["data"] = serde_json::json!(split.data);
        v["val_size"] = serde_json::json!(format!("{:?}", split.val_size));
        v["all"] = serde_json::json!(a.all);
        v["seed"] = serde_json::json!(split.seed);
        v["cutoff_len"] = serde_json::json!(split.cutoff_len);
        v["template"] = serde_json::json!(format!("{:?}", split.template));
        write_atomic(path, serde_json::to_string_pretty(&v)?.as_bytes())?;
    }
    Ok(())
}

// ------------------------------------------------------------------------------------ predict

#[derive(Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Instruction set: Self-Instruct tasks (user_oriented_instructions.jsonl) or Alpaca data
    #[arg(long = "instructions")]
    pub instructions: PathBuf,
    /// Prediction file (JSONL); an existing one made with the same settings is continued
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Start the prediction file over
    #[arg(long = "overwrite")]
    pub overwrite: bool,
    /// alpaca, alpaca-lora, chatml, raw or auto (the model's chat template)
    /// [default: the run's template with --lora RUN_DIR, else auto]
    #[arg(long = "template")]
    pub template: Option<TemplateChoice>,
    /// Maximum new tokens per answer
    #[arg(short = 'n', long = "max-new-tokens", default_value_t = 128)]
    pub max_new: usize,
    /// Temperature; 0 = greedy
    #[arg(long = "temp", default_value_t = 0.0)]
    pub temp: f32,
    #[arg(long = "top-p", default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long = "top-k", default_value_t = 0)]
    pub top_k: usize,
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Sampling seed (each item samples from this seed and its id)
    #[arg(long = "seed", default_value_t = 0)]
    pub seed: u64,
    /// Stop strings [default: `### Instruction:`, `### Input:`, `### Response:` with Alpaca
    /// templates]
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Answers decoded together
    #[arg(long = "parallel", default_value_t = 8)]
    pub parallel: usize,
    /// Answer only the first N instructions
    #[arg(long = "limit")]
    pub limit: Option<usize>,
    /// Name of this model in reports [default: model file stem, +adapter directory name]
    #[arg(long = "name")]
    pub name: Option<String>,
    /// Testing hook: after N new answers, wait forever (to be killed)
    #[arg(long = "pause-after", hide = true)]
    pub pause_after: Option<usize>,
}

fn run_predict(a: PredictArgs) -> Result<()> {
    let mut items = read_items(&a.instructions)?;
    if let Some(n) = a.limit {
        items.truncate(n);
    }
    let choice = a
        .template
        .or_else(|| run_split_of(a.model.lora.as_deref()).map(|s| s.template))
        .unwrap_or(TemplateChoice::Auto);
    let generator = match &a.name {
        Some(n) => n.clone(),
        None => model_label(&a.model)?,
    };
    let engine = Arc::new(a.model.load()?);
    let template = engine.template(choice);
    let stop = if a.stop.is_empty() && matches!(template, Template::Alpaca | Template::AlpacaLora) {
        ["### Instruction:", "### Input:", "### Response:"]
            .map(String::from)
            .to_vec()
    } else {
        a.stop.clone()
    };
    let cfg = PredictConfig {
        generator: generator.clone(),
        settings: GenSettings {
            model: engine.path.display().to_string(),
            lora: a.model.lora.as_ref().map(|p| p.display().to_string()),
            template: format!("{choice:?}").to_lowercase(),
            max_new_tokens: a.max_new,
            temperature: a.temp,
            top_p: a.top_p,
            top_k: a.top_k,
            repeat_penalty: a.repeat_penalty,
            seed: a.seed,
            stop,
        },
        template,
        max_seqs: a.parallel,
    };
    let interrupted = interrupt_flag();
    let pb = bar(
        items.len() as u64,
        "{bar:30} {pos}/{len} answers {msg} [{elapsed_precise} < {eta_precise}]",
    );
    let t0 = std::time::Instant::now();
    let (mut tokens, mut new) = (0usize, 0usize);
    let pause_after = a.pause_after;
    let summary = predict(
        Arc::clone(&engine),
        &items,
        &a.output,
        &cfg,
        a.overwrite,
        &mut |ev| {
            match ev {
                PredictEvent::Start {
                    total,
                    done,
                    torn_bytes,
                } => {
                    pb.suspend(|| {
                        eprintln!(
                            "predict: {total} instructions with {generator}, {done} already in {}{}",
                            a.output.display(),
                            if *torn_bytes > 0 {
                                format!(" (cut a torn last line of {torn_bytes} bytes)")
                            } else {
                                String::new()
                            }
                        )
                    });
                    pb.set_position(*done as u64);
                    pb.reset_eta();
                }
                PredictEvent::Answered {
                    done,
                    completion_tokens,
                    ..
                } => {
                    tokens += completion_tokens;
                    new += 1;
                    let rate = tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9);
                    pb.set_message(format!("{rate:.1} tok/s"));
                    pb.set_position(*done as u64);
                    if pause_after == Some(new) {
                        loop {
                            std::thread::sleep(Duration::from_secs(3600));
                        }
                    }
                }
            }
            if interrupted.load(Ordering::SeqCst) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    )?;
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    if !summary.complete {
        bail!(
            "interrupted: {} of {} answered in {}; rerun the same command to continue",
            summary.resumed + summary.new,
            summary.total,
            a.output.display()
        );
    }
    println!(
        "{}: {} answers ({} new, {} resumed), {} tokens in {:.1}s ({:.1} tok/s)",
        a.output.display(),
        summary.total,
        summary.new,
        summary.resumed,
        summary.completion_tokens,
        secs,
        summary.completion_tokens as f64 / secs.max(1e-9)
    );
    Ok(())
}

// ------------------------------------------------------------------------------------ judge

#[derive(Args, Debug)]
pub struct JudgeArgs {
    /// Predictions of model A (the reference, e.g. the base model)
    pub a: PathBuf,
    /// Predictions of model B (the candidate, e.g. the fine-tuned model)
    pub b: PathBuf,
    /// Judge: logprob[:GGUF] or logprob-chat[:GGUF] (next-token probability of `a` vs `b`
    /// from a local model; deterministic), local[:GGUF] or local-chat[:GGUF] (a local model
    /// answers in words), chat:MODEL or completions:MODEL (an OpenAI-compatible server, see
    /// --base-url), or length (prefers the longer answer; a baseline)
    #[arg(long = "judge")]
    pub judge: String,
    /// Output directory: judgments.jsonl (resumable), summary.json, report.md, report.svg
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Start the judgments over
    #[arg(long = "overwrite")]
    pub overwrite: bool,
    /// Judge only the first N instructions
    #[arg(long = "limit")]
    pub limit: Option<usize>,
    /// Held-out loss results (`alpaca eval loss --json`) to put in the report (repeatable)
    #[arg(long = "loss")]
    pub loss: Vec<PathBuf>,
    /// Log-probability judge: logit differences up to this are ties
    #[arg(long = "tie-margin", default_value_t = 0.0)]
    pub tie_margin: f64,
    #[arg(long = "resamples", default_value_t = 10000)]
    pub resamples: usize,
    /// Bootstrap seed
    #[arg(long = "seed", default_value_t = 0)]
    pub seed: u64,
    /// Report title
    #[arg(long = "title", default_value = "alpaca eval")]
    pub title: String,
    /// Base URL of the OpenAI-compatible server [default: $OPENAI_BASE_URL]
    #[arg(long = "base-url")]
    pub base_url: Option<String>,
    /// Environment variable holding the API key
    #[arg(long = "api-key-env", default_value = "OPENAI_API_KEY")]
    pub api_key_env: String,
    /// Worker threads [default: all cores]
    #[arg(short = 't', long = "threads")]
    pub threads: Option<usize>,
}

fn make_judge(a: &JudgeArgs) -> Result<Box<dyn Judge>> {
    let (kind, arg) = a.judge.split_once(':').unwrap_or((a.judge.as_str(), ""));
    let local = || -> Result<alpaca::infer::Engine> {
        let path =
            alpaca::assets::resolve_model((!arg.is_empty()).then(|| std::path::Path::new(arg)))?;
        Ok(alpaca::infer::Engine::load(&path)?)
    };
    Ok(match kind {
        "length" => Box::new(LengthJudge),
        "logprob" | "logprob-chat" => Box::new(LogprobJudge::new(
            local()?,
            kind == "logprob-chat",
            a.tie_margin,
        )?),
        "local" | "local-chat" => Box::new(TeacherJudge::new(Box::new(
            alpaca::generate::local::LocalTeacher::new(local()?, kind == "local-chat", 0),
        ))),
        "chat" | "completions" => {
            if arg.is_empty() {
                bail!("--judge {kind}: give a model name, e.g. {kind}:gpt-4o-mini");
            }
            let base_url = a
                .base_url
                .clone()
                .or_else(|| std::env::var("OPENAI_BASE_URL").ok())
                .context("--judge chat/completions needs --base-url or $OPENAI_BASE_URL")?;
            let cfg = OpenAiConfig {
                base_url,
                model: arg.to_string(),
                api_key: std::env::var(&a.api_key_env).ok().filter(|k| !k.is_empty()),
                endpoint: if kind == "chat" {
                    Endpoint::Chat
                } else {
                    Endpoint::Completions
                },
                batch: 1,
                ..OpenAiConfig::default()
            };
            Box::new(TeacherJudge::new(Box::new(OpenAiTeacher::new(cfg)?)))
        }
        other => bail!(
            "unknown judge `{other}` (expected logprob[:GGUF], logprob-chat[:GGUF], local[:GGUF], local-chat[:GGUF], chat:MODEL, completions:MODEL or length)"
        ),
    })
}

fn read_loss(path: &Path) -> Result<LossEntry> {
    let text = super::read_text(path)?;
    serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}:{}: not an `alpaca eval loss --json` result: {e}",
            path.display(),
            e.line()
        )
    })
}

fn run_judge(a: JudgeArgs) -> Result<()> {
    let pa = read_predictions(&a.a)?;
    let pb = read_predictions(&a.b)?;
    let losses = a
        .loss
        .iter()
        .map(|p| read_loss(p))
        .collect::<Result<Vec<_>>>()?;
    super::init_threads(a.threads)?;
    let judge = make_judge(&a)?;
    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("creating {}", a.output.display()))?;
    let name = |p: &[alpaca::eval::Prediction], f: &Path| {
        p.iter()
            .map(|x| x.generator.as_str())
            .find(|g| !g.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| f.display().to_string())
    };
    let (na, nb) = (name(&pa, &a.a), name(&pb, &a.b));
    let judgments_path = a.output.join("judgments.jsonl");
    let interrupted = interrupt_flag();
    let pbar = bar(
        0,
        "{bar:30} {pos}/{len} judgments {per_sec} [{elapsed_precise} < {eta_precise}]",
    );
    let mut started = false;
    let cfg = CompareConfig {
        limit: a.limit,
        resamples: a.resamples,
        seed: a.seed,
        overwrite: a.overwrite,
    };
    eprintln!("judge: {nb} (B) vs {na} (A) by {}", judge.describe());
    let (judgments, complete) = compare(
        &pa,
        &pb,
        judge.as_ref(),
        &judgments_path,
        &cfg,
        &mut |done, total| {
            if !started {
                pbar.set_length(total as u64);
                pbar.set_position(done as u64);
                pbar.reset_eta();
                started = true;
            }
            pbar.set_position(done as u64);
            if interrupted.load(Ordering::SeqCst) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    )?;
    pbar.finish_and_clear();
    if !complete {
        bail!(
            "interrupted: {} judgments in {}; rerun the same command to continue",
            judgments.len(),
            judgments_path.display()
        );
    }
    let (t, outcomes) = tally(&na, &nb, &judge.describe(), &judgments, a.resamples, a.seed);
    let rouge: Vec<_> = [(&na, &pa), (&nb, &pb)]
        .into_iter()
        .map(|(n, p)| (n.clone(), rouge_report(p, None)))
        .filter(|(_, r)| r.n > 0)
        .collect();
    let report = Report {
        title: a.title.clone(),
        tally: Some(t.clone()),
        losses,
        rouge,
        svg_name: Some("report.svg".into()),
    };
    let summary = serde_json::json!({"tally": t, "outcomes": outcomes});
    write_atomic(
        &a.output.join("summary.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    write_atomic(&a.output.join("report.md"), markdown(&report).as_bytes())?;
    write_atomic(&a.output.join("report.svg"), svg(&report).as_bytes())?;
    let ci = t
        .interval
        .map(|c| format!(" (95% CI {:.1}%-{:.1}%)", 100.0 * c.lo, 100.0 * c.hi))
        .unwrap_or_default();
    println!(
        "{nb} vs {na}: {} wins, {} ties, {} losses of {}; win rate {:.1}%{ci}; orders disagree on {} ({} flips)",
        t.wins,
        t.ties,
        t.losses,
        t.n,
        100.0 * t.win_rate,
        t.disagreements,
        t.flips
    );
    println!("report: {}", a.output.join("report.md").display());
    Ok(())
}

// ------------------------------------------------------------------------------------ rouge

#[derive(Args, Debug)]
pub struct RougeArgs {
    /// Prediction files
    #[arg(required = true)]
    pub predictions: Vec<PathBuf>,
    /// Reference outputs (an instruction set with outputs), matched by id
    /// [default: the references stored in the prediction files]
    #[arg(long = "ref")]
    pub reference: Option<PathBuf>,
}

fn run_rouge(a: RougeArgs) -> Result<()> {
    let refs: Option<HashMap<String, String>> = match &a.reference {
        Some(p) => Some(
            read_items(p)?
                .into_iter()
                .filter_map(|it| it.reference.map(|r| (it.id, r)))
                .collect(),
        ),
        None => None,
    };
    for path in &a.predictions {
        let preds = read_predictions(path)?;
        let r = rouge_report(&preds, refs.as_ref());
        if r.n == 0 {
            bail!(
                "{}: no prediction has a reference output (give --ref FILE)",
                path.display()
            );
        }
        println!(
            "{}: ROUGE-L {:.4} over {} predictions ({} without a reference)",
            path.display(),
            r.mean,
            r.n,
            r.missing
        );
    }
    Ok(())
}
