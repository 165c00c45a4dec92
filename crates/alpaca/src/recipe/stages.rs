//! The stage bodies and the loop that runs them, skipping finished stages.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};

use super::config::RecipeConfig;
use super::preflight::{self, Resolved};
use super::state::{StageHash, State};
use super::{Layout, Observer};
use crate::data::dedup::dedup;
use crate::data::filter::{FilterConfig, RejectCounts};
use crate::data::io::{read_examples, write_examples, Format};
use crate::data::template::TemplateChoice;
use crate::data::Example;
use crate::error::{Error, Result};
use crate::generate::{self, GenerateConfig, OpenMode, SamplingParams, Store, Teacher};
use crate::train::{Method, TrainConfig, Warmup};

/// Stage names and what each does, in order.
pub const STAGES: [(&str, &str); 7] = [
    ("models", "locate the models"),
    ("generate", "self-instruct data from the teacher"),
    ("mix", "mix in data files, set aside the held-out set"),
    ("train", "fine-tune the student"),
    ("eval", "held-out loss before and after"),
    ("export", "merge and quantize to GGUF"),
    ("sample", "an answer from the exported model"),
];

/// One stage's result as the summary shows it.
#[derive(Debug, Clone)]
pub struct StageOutcome {
    pub name: String,
    /// Skipped: finished earlier with the same config and inputs.
    pub skipped: bool,
    /// Not run at all (switched off in the config).
    pub off: bool,
    /// Wall seconds (of the run that produced the output, when skipped).
    pub wall_s: f64,
    pub summary: Value,
}

struct Ctx<'a> {
    cfg: &'a RecipeConfig,
    res: Resolved,
    lay: Layout,
    state: State,
    obs: &'a mut dyn Observer,
    outcomes: Vec<StageOutcome>,
}

impl Ctx<'_> {
    /// Run `body` unless the stage is done with `hash` and `outputs` exist. `body` gets
    /// whether the stage may resume partial work of an earlier attempt.
    fn stage(
        &mut self,
        name: &str,
        hash: &str,
        outputs: &[PathBuf],
        body: impl FnOnce(&mut Self, bool) -> Result<Value>,
    ) -> Result<()> {
        let index = STAGES.iter().position(|s| s.0 == name).unwrap_or(0) + 1;
        let what = STAGES[index - 1].1;
        if self.state.is_done(name, hash) && outputs.iter().all(|p| p.exists()) {
            self.obs.stage_start(index, name, what, true);
            let rec = self.state.get(name).cloned().unwrap_or_default();
            return self.done(StageOutcome {
                name: name.into(),
                skipped: true,
                off: false,
                wall_s: rec.wall_s,
                summary: rec.summary,
            });
        }
        self.obs.stage_start(index, name, what, false);
        let resume = self.state.started_with(name, hash);
        let before = self.state.start(name, hash)?;
        let t = Instant::now();
        match body(self, resume) {
            Ok(summary) => {
                let wall = before + t.elapsed().as_secs_f64();
                self.state.finish(name, wall, summary.clone())?;
                self.done(StageOutcome {
                    name: name.into(),
                    skipped: false,
                    off: false,
                    wall_s: wall,
                    summary,
                })
            }
            Err(e) => {
                let _ = self.state.add_wall(name, t.elapsed().as_secs_f64());
                Err(e)
            }
        }
    }

    fn off(&mut self, name: &str, why: &str) -> Result<()> {
        let index = STAGES.iter().position(|s| s.0 == name).unwrap_or(0) + 1;
        self.obs.stage_start(index, name, why, true);
        self.done(StageOutcome {
            name: name.into(),
            skipped: false,
            off: true,
            wall_s: 0.0,
            summary: json!({ "off": why }),
        })
    }

    fn done(&mut self, o: StageOutcome) -> Result<()> {
        self.obs.stage_done(&o);
        self.outcomes.push(o);
        Ok(())
    }
}

/// Run the whole recipe: pre-flight, then each stage. Returns every stage's outcome.
pub fn run(cfg: &RecipeConfig, obs: &mut dyn Observer) -> Result<Vec<StageOutcome>> {
    let t0 = Instant::now();
    let res = preflight::check(cfg)?;
    let lay = Layout::new(&cfg.out_dir());
    for d in ["generate", "data", "train"] {
        let p = lay.out.join(d);
        std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
    }
    let state = State::load(&lay.out)?;
    let mut ctx = Ctx {
        cfg,
        res,
        lay,
        state,
        obs,
        outcomes: Vec::new(),
    };
    // 1. models: located by pre-flight; recorded for the summary.
    let models_summary = json!({
        "student": ctx.res.student,
        "student_bytes": file_len(&ctx.res.student),
        "teacher": teacher_label(cfg, &ctx.res),
    });
    ctx.obs.stage_start(1, "models", STAGES[0].1, false);
    ctx.done(StageOutcome {
        name: "models".into(),
        skipped: false,
        off: false,
        wall_s: t0.elapsed().as_secs_f64(),
        summary: models_summary,
    })?;
    stage_generate(&mut ctx)?;
    stage_mix(&mut ctx)?;
    stage_train(&mut ctx)?;
    if cfg.train.method == "full" {
        // The "after" evaluation of a full fine-tune runs on the exported file.
        stage_export(&mut ctx)?;
        stage_eval(&mut ctx)?;
    } else {
        stage_eval(&mut ctx)?;
        stage_export(&mut ctx)?;
    }
    stage_sample(&mut ctx)?;
    Ok(ctx.outcomes)
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

fn teacher_label(cfg: &RecipeConfig, res: &Resolved) -> String {
    match (&res.teacher_model, cfg.teacher.kind.as_str()) {
        (_, "none") => "none".into(),
        (Some(p), k) => format!("{k}:{}", p.display()),
        (None, k) if cfg.is_server_teacher() => format!(
            "{k}:{}@{}",
            cfg.teacher.model,
            preflight::teacher_base_url(cfg)
        ),
        (None, k) => k.to_string(),
    }
}

fn counts_json(r: &RejectCounts) -> Value {
    Value::Object(
        r.0.iter()
            .map(|(k, v)| (k.name().to_string(), json!(v)))
            .collect(),
    )
}

// ------------------------------------------------------------------------------- 2 generate

fn make_teacher(cfg: &RecipeConfig, res: &Resolved) -> Result<Box<dyn Teacher>> {
    let t = &cfg.teacher;
    let endpoint = match t.kind.as_str() {
        "synthetic" => return Ok(Box::new(generate::Scripted::synthetic(cfg.generate.batch))),
        "local" | "local-chat" => {
            let path = res
                .teacher_model
                .as_ref()
                .ok_or_else(|| Error::Internal("local teacher without a model".into()))?;
            let engine = crate::infer::Engine::load(path)?;
            return Ok(Box::new(generate::local::LocalTeacher::new(
                engine,
                t.kind == "local-chat",
                cfg.generate.seed,
            )));
        }
        "chat" => generate::openai::Endpoint::Chat,
        _ => generate::openai::Endpoint::Completions,
    };
    let timeout = std::time::Duration::from_secs_f64(t.timeout_s);
    let oc = generate::openai::OpenAiConfig {
        base_url: preflight::teacher_base_url(cfg),
        model: t.model.clone(),
        api_key: std::env::var(&t.api_key_env).ok().filter(|k| !k.is_empty()),
        endpoint,
        batch: cfg.generate.batch,
        timeout,
        max_retries: t.max_retries,
        ..Default::default()
    };
    Ok(Box::new(generate::openai::OpenAiTeacher::new(oc)?))
}

/// The part of the generation hash that decides whether a store can be continued (everything
/// but the target count and the prompt limit, which only say when to stop).
fn generate_data_hash(cfg: &RecipeConfig, res: &Resolved) -> Result<String> {
    let mut h = StageHash::new("generate");
    let mut g = cfg.generate.clone();
    g.count = 0;
    g.max_prompts = 0;
    h.value(&g)?;
    h.value(&(&cfg.teacher.kind, &cfg.teacher.model, &cfg.teacher.base_url))?;
    if let Some(p) = &res.seeds_path {
        h.file(p)?;
    }
    if let Some(p) = &res.teacher_model {
        h.file(p)?;
    }
    Ok(h.finish())
}

fn stage_generate(ctx: &mut Ctx) -> Result<()> {
    let cfg = ctx.cfg;
    if !cfg.generates() {
        return ctx.off(
            "generate",
            "off (generate.count = 0 or teacher.kind = none)",
        );
    }
    let data_hash = generate_data_hash(cfg, &ctx.res)?;
    let hash = format!(
        "{data_hash}-{}-{}",
        cfg.generate.count, cfg.generate.max_prompts
    );
    let store_path = ctx.lay.store();
    // A store may be continued when it was made with the same teacher and settings (or when
    // no record says otherwise: `generate` itself refuses a store of another seed).
    let continuable = ctx
        .state
        .get("generate")
        .is_none_or(|r| r.hash.split('-').next() == Some(data_hash.as_str()));
    ctx.stage(
        "generate",
        &hash,
        std::slice::from_ref(&store_path),
        |ctx, _| {
            let mode = if continuable {
                OpenMode::Resume
            } else {
                ctx.obs
                    .note("teacher or generation settings changed: starting a new store");
                OpenMode::Overwrite
            };
            let opened = Store::open(&store_path, mode)?;
            if opened.torn_bytes > 0 {
                ctx.obs.note(&format!(
                    "dropped a torn last line ({} bytes) left by an interrupted run",
                    opened.torn_bytes
                ));
            }
            let resumed = opened.items.len();
            // `max_prompts` counts the whole run: a resumed run restarts at the last stored
            // item's prompt.
            let first = opened.items.last().map_or(0, |i| i.prompt);
            let max_prompts = (cfg.generate.max_prompts > 0)
                .then(|| cfg.generate.max_prompts.saturating_sub(first).max(1));
            if resumed > 0 {
                ctx.obs.note(&format!(
                    "resuming {} with {resumed} items (from prompt {first})",
                    store_path.display()
                ));
            }
            let teacher = make_teacher(cfg, &ctx.res)?;
            let g = &cfg.generate;
            let gc = GenerateConfig {
                target: g.count,
                seed: g.seed,
                seeds_per_prompt: g.seeds_per_prompt,
                prompts_per_request: g.batch,
                concurrency: g.concurrency,
                threshold: g.threshold,
                params: SamplingParams {
                    max_tokens: g.max_tokens,
                    temperature: g.temperature,
                    top_p: g.top_p,
                    ..SamplingParams::default()
                },
                max_prompts,
                ..GenerateConfig::default()
            };
            let obs = &mut *ctx.obs;
            let report =
                generate::generate(teacher.as_ref(), &ctx.res.seeds, opened, &gc, &mut |p| {
                    obs.generate_progress(p)
                })?;
            let p = &report.progress;
            Ok(json!({
                "teacher": report.teacher,
                "kept": p.kept,
                "target": p.target,
                "resumed": p.resumed,
                "new": p.kept - p.resumed,
                "prompts": first + p.prompts,
                "looked_at": p.candidates,
                "target_reached": report.target_reached,
                "rejected": counts_json(&report.rejected),
                "tokens_in": p.usage.prompt_tokens,
                "tokens_out": p.usage.completion_tokens,
            }))
        },
    )
}

// ------------------------------------------------------------------------------- 3 mix

fn stage_mix(ctx: &mut Ctx) -> Result<()> {
    let cfg = ctx.cfg;
    let mut h = StageHash::new("mix");
    h.value(&cfg.data)?;
    h.value(&cfg.generate.threshold)?;
    let store = ctx.lay.store();
    let generated = cfg.generates();
    if generated {
        h.file(&store)?;
    }
    if cfg.data.include_seeds {
        match &ctx.res.seeds_path {
            Some(p) => h.file(p)?,
            None => h.bytes(generate::DEFAULT_SEEDS.as_bytes()),
        }
    }
    for f in &ctx.res.data_files {
        h.file(f)?;
    }
    let hash = h.finish();
    let outputs = [ctx.lay.train_data(), ctx.lay.held_out()];
    ctx.stage("mix", &hash, &outputs, |ctx, _| {
        let d = &cfg.data;
        let mut mix: Vec<Example> = Vec::new();
        let n_generated = if generated {
            let ex = read_examples(&store)?.examples;
            let n = ex.len();
            mix.extend(ex);
            n
        } else {
            0
        };
        let n_seeds = if d.include_seeds {
            mix.extend(ctx.res.seeds.iter().map(|s| s.example()));
            ctx.res.seeds.len()
        } else {
            0
        };
        let mut files = Vec::new();
        for path in &ctx.res.data_files {
            let all = read_examples(path)?.examples;
            let order = crate::train::batch::shuffled(all.len(), d.seed);
            let shuffled: Vec<Example> = order.iter().map(|&i| all[i].clone()).collect();
            let (kept, rejected) = if d.filter {
                crate::data::filter::filter_examples(&shuffled, &FilterConfig::default())
            } else {
                (shuffled, RejectCounts::default())
            };
            let (kept, duplicates) = if d.dedup {
                let mut refs: Vec<&str> = mix.iter().map(|e| e.instruction.as_str()).collect();
                refs.extend(ctx.res.seeds.iter().map(|s| s.instruction.as_str()));
                let cands: Vec<&str> = kept.iter().map(|e| e.instruction.as_str()).collect();
                let dec = dedup(&cands, &refs, cfg.generate.threshold);
                let dups = dec.iter().filter(|x| !x.kept()).count();
                let k: Vec<Example> = kept
                    .iter()
                    .zip(&dec)
                    .filter(|(_, x)| x.kept())
                    .map(|(e, _)| e.clone())
                    .collect();
                (k, dups)
            } else {
                (kept, 0)
            };
            let room = if d.top_up_to > 0 {
                d.top_up_to.saturating_sub(mix.len())
            } else {
                usize::MAX
            };
            let taken = kept.len().min(room);
            mix.extend(kept.into_iter().take(taken));
            files.push(json!({
                "path": path,
                "read": all.len(),
                "rejected": counts_json(&rejected),
                "duplicates": duplicates,
                "taken": taken,
            }));
        }
        if mix.len() < 2 {
            return Err(Error::InvalidArgument(format!(
                "the mixed data set has {} examples; generate more or add data files",
                mix.len()
            )));
        }
        let order = crate::train::batch::shuffled(mix.len(), d.seed ^ 0x004D_4958);
        let n_held = if cfg.eval.enabled {
            d.held_out.min(mix.len() / 2)
        } else {
            0
        };
        let held: Vec<Example> = order[..n_held].iter().map(|&i| mix[i].clone()).collect();
        let train: Vec<Example> = order[n_held..].iter().map(|&i| mix[i].clone()).collect();
        write_examples(&ctx.lay.train_data(), &train, Format::ALPACA_JSON)?;
        write_examples(&ctx.lay.held_out(), &held, Format::ALPACA_JSON)?;
        Ok(json!({
            "generated": n_generated,
            "seeds": n_seeds,
            "files": files,
            "train": train.len(),
            "held_out": held.len(),
        }))
    })
}

// ------------------------------------------------------------------------------- 4 train

/// The training job of a config.
pub fn train_config(cfg: &RecipeConfig, student: &Path, lay: &Layout) -> Result<TrainConfig> {
    let t = &cfg.train;
    let mut tc = TrainConfig::new(student.to_path_buf(), lay.train_data(), lay.train_dir());
    tc.method = if t.method == "full" {
        Method::Full
    } else {
        Method::Lora {
            r: t.lora_r,
            alpha: t.lora_alpha,
            dropout: t.lora_dropout,
            targets: cfg.lora_targets()?,
        }
    };
    tc.lr = t.lr;
    tc.epochs = t.epochs;
    tc.max_steps = (t.max_steps > 0).then_some(t.max_steps);
    tc.batch_size = t.batch_size;
    tc.micro_batch_size = t.micro_batch_size;
    tc.cutoff_len = t.cutoff_len;
    tc.val_size = if t.val_size >= 1.0 {
        crate::train::batch::ValSize::Count(t.val_size as usize)
    } else {
        crate::train::batch::ValSize::Fraction(t.val_size)
    };
    tc.template = t.template.parse()?;
    tc.train_on_inputs = t.train_on_inputs;
    tc.group_by_length = t.group_by_length;
    tc.warmup = if t.warmup_ratio > 0.0 {
        Warmup::Ratio(t.warmup_ratio)
    } else {
        Warmup::Steps(t.warmup_steps)
    };
    tc.schedule = t.schedule.parse()?;
    tc.adamw.weight_decay = t.weight_decay;
    tc.max_grad_norm = t.max_grad_norm;
    tc.save_every = t.save_every;
    tc.eval_every = t.eval_every;
    tc.seed = t.seed;
    Ok(tc)
}

fn stage_train(ctx: &mut Ctx) -> Result<()> {
    let cfg = ctx.cfg;
    let mut h = StageHash::new("train");
    h.value(&cfg.train)?;
    h.file(&ctx.res.student)?;
    h.file(&ctx.lay.train_data())?;
    let hash = h.finish();
    let dir = ctx.lay.train_dir();
    let outputs = [dir.join("train_summary.json"), dir.join("loss.svg")];
    let mut tc = train_config(cfg, &ctx.res.student, &ctx.lay)?;
    ctx.stage("train", &hash, &outputs, |ctx, resume| {
        tc.resume = resume;
        if resume && dir.join("checkpoint.safetensors").exists() {
            ctx.obs.note("resuming training from its checkpoint");
        }
        let obs = &mut *ctx.obs;
        let mut interrupted = false;
        let s = crate::train::train(&tc, &mut |e| {
            let r = obs.train_event(e);
            interrupted |= r.is_break();
            r
        })?;
        if interrupted {
            return Err(Error::Train(
                "interrupted; run the recipe again to resume from the last checkpoint".into(),
            ));
        }
        let metrics = crate::train::metrics::read_metrics(&dir.join("metrics.jsonl"))?;
        let mean =
            |xs: Vec<f64>| (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64);
        // Means of the first and last 10 steps (of the halves, on shorter runs).
        let k = (metrics.len() / 2).clamp(1, 10);
        let head = mean(metrics.iter().take(k).map(|m| m.loss).collect());
        let tail = mean(metrics.iter().rev().take(k).map(|m| m.loss).collect());
        let mut tps: Vec<f64> = metrics.iter().map(|m| m.tokens_per_s).collect();
        tps.sort_by(f64::total_cmp);
        Ok(json!({
            "steps": s.steps,
            "n_train": s.n_train,
            "n_val": s.n_val,
            "skipped": s.skipped,
            "first_train_loss": metrics.first().map(|m| m.loss),
            "final_train_loss": s.final_train_loss,
            "mean_first10_train_loss": head,
            "mean_last10_train_loss": tail,
            "initial_eval_loss": s.initial_eval_loss,
            "final_eval_loss": s.final_eval_loss,
            "tokens_per_s": tps.get(tps.len() / 2),
            "loss_svg": dir.join("loss.svg"),
        }))
    })
}

// ------------------------------------------------------------------------------- 5 eval

fn stage_eval(ctx: &mut Ctx) -> Result<()> {
    let cfg = ctx.cfg;
    if !cfg.eval.enabled {
        return ctx.off("eval", "off (eval.enabled = false)");
    }
    let mut h = StageHash::new("eval");
    h.value(&cfg.eval)?;
    h.value(&(&cfg.train.template, cfg.train.cutoff_len))?;
    h.file(&ctx.res.student)?;
    h.file(&ctx.lay.held_out())?;
    h.file(&ctx.lay.train_dir().join("train_summary.json"))?;
    h.file(&super::summary::adapter_file(&ctx.lay.train_dir()))?;
    if cfg.train.method == "full" {
        h.file(&cfg.export_path())?;
    }
    let hash = h.finish();
    ctx.stage("eval", &hash, &[], |ctx, _| {
        super::evalexport::eval(cfg, &ctx.res.student, &ctx.lay, &mut *ctx.obs)
    })
}

// ------------------------------------------------------------------------------- 6 export

fn stage_export(ctx: &mut Ctx) -> Result<()> {
    let cfg = ctx.cfg;
    let mut h = StageHash::new("export");
    h.value(&cfg.export)?;
    h.file(&ctx.res.student)?;
    h.file(&ctx.lay.train_dir().join("train_summary.json"))?;
    h.file(&super::summary::adapter_file(&ctx.lay.train_dir()))?;
    let hash = h.finish();
    let out = cfg.export_path();
    ctx.stage("export", &hash, std::slice::from_ref(&out), |ctx, _| {
        super::evalexport::export(cfg, &ctx.res.student, &ctx.lay, &out, &mut *ctx.obs)
    })
}

// ------------------------------------------------------------------------------- 7 sample

fn stage_sample(ctx: &mut Ctx) -> Result<()> {
    let cfg = ctx.cfg;
    let out = cfg.export_path();
    let mut h = StageHash::new("sample");
    h.value(&cfg.sample)?;
    h.value(&cfg.train.template)?;
    h.file(&out)?;
    let hash = h.finish();
    ctx.stage("sample", &hash, &[], |ctx, _| {
        let template: TemplateChoice = cfg.train.template.parse()?;
        sample(
            &out,
            template,
            &cfg.sample.prompt,
            cfg.sample.max_new_tokens,
            &mut *ctx.obs,
        )
    })
}

/// Greedy answer to `prompt` from the model at `path`, with its speed.
pub fn sample(
    path: &Path,
    template: TemplateChoice,
    prompt: &str,
    max_new: usize,
    obs: &mut dyn Observer,
) -> Result<Value> {
    let engine = crate::infer::Engine::load(path)?;
    let text = engine.template(template).render_instruction(prompt, "")?;
    let ids = engine.encode_prompt(&text)?;
    let params = crate::infer::GenParams {
        max_new_tokens: max_new,
        sampler: crate::infer::SamplerConfig {
            temperature: 0.0,
            ..Default::default()
        },
        stop: Vec::new(),
        ignore_eos: false,
    };
    let g = engine.generate(&ids, &params, &mut |t| {
        obs.sample_text(t);
        std::ops::ControlFlow::Continue(())
    })?;
    let secs = g.gen_time.as_secs_f64();
    Ok(json!({
        "model": path,
        "prompt": prompt,
        "answer": g.text,
        "finish": g.finish.as_str(),
        "tokens": g.ids.len(),
        "tokens_per_s": if secs > 0.0 { g.ids.len() as f64 / secs } else { 0.0 },
        "template": format!("{template:?}"),
    }))
}
