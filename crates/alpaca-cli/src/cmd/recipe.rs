//! `alpaca recipe CONFIG.toml`: the whole Alpaca recipe, resumable. The stages are in
//! `alpaca::recipe`; this file draws the progress of each stage and prints the summary.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use alpaca::generate::ProgressInfo;
use alpaca::recipe::summary::{describe, fmt_secs, table};
use alpaca::recipe::{Observer, RecipeConfig, StageOutcome, STAGES};
use alpaca::train::Event;

#[derive(Args, Debug)]
pub struct RecipeArgs {
    /// The recipe: a TOML file (see configs/quickstart.toml for every key and its default)
    pub config: PathBuf,
    /// Worker threads [default: the config's `threads`, else all cores]
    #[arg(short = 't', long = "threads")]
    pub threads: Option<usize>,
    /// Testing hook: abort the process (as a kill would) at `generate:N` kept items or
    /// after `train:N` steps
    #[arg(long = "crash-after", hide = true)]
    pub crash_after: Option<String>,
}

fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// Draws each stage's progress on stderr; the sample answer and the summary go to stdout.
struct Cli {
    bar: ProgressBar,
    prompt: String,
    crash: Option<(String, usize)>,
    sample_open: bool,
}

impl Cli {
    fn new_bar(&mut self, len: u64, template: &str) {
        self.bar.finish_and_clear();
        self.bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        self.bar.set_style(bar_style(template));
    }

    fn crash_at(&self, stage: &str, n: usize) {
        if self
            .crash
            .as_ref()
            .is_some_and(|(s, at)| s == stage && n >= *at)
        {
            self.bar.finish_and_clear();
            eprintln!("crash-after {stage}:{n}: aborting");
            std::process::abort();
        }
    }
}

impl Observer for Cli {
    fn stage_start(&mut self, index: usize, name: &str, what: &str, skipped: bool) {
        self.bar.finish_and_clear();
        let n = STAGES.len();
        if skipped {
            eprintln!("[{index}/{n}] {name}: {what} (output complete, config unchanged: skipped)");
        } else {
            eprintln!("[{index}/{n}] {name}: {what}");
        }
        if name == "sample" {
            println!("> {}", self.prompt);
        }
    }

    fn stage_done(&mut self, o: &StageOutcome) {
        self.bar.finish_and_clear();
        if o.name == "sample" && o.skipped {
            println!("{}", o.summary["answer"].as_str().unwrap_or(""));
        }
        if self.sample_open {
            println!();
            self.sample_open = false;
        }
        eprintln!("      {} [{}]", describe(o), fmt_secs(o.wall_s));
    }

    fn note(&mut self, msg: &str) {
        self.bar.suspend(|| eprintln!("      {msg}"));
    }

    fn generate_progress(&mut self, p: &ProgressInfo) {
        if self.bar.is_hidden() || self.bar.length() != Some(p.target as u64) {
            self.new_bar(
                p.target as u64,
                "      {bar:30} {pos}/{len} kept  {msg}  [{elapsed_precise} < {eta_precise}]",
            );
            self.bar.set_position(p.resumed as u64);
            self.bar.reset_eta();
        }
        self.bar.set_position(p.kept as u64);
        let mins = p.elapsed.as_secs_f64() / 60.0;
        let per_prompt = if p.prompts > 0 {
            (p.kept - p.resumed) as f64 / p.prompts as f64
        } else {
            0.0
        };
        self.bar.set_message(format!(
            "{} prompts, {per_prompt:.1} kept/prompt, {:.1} kept/min",
            p.prompts,
            if mins > 0.0 {
                (p.kept - p.resumed) as f64 / mins
            } else {
                0.0
            }
        ));
        if p.kept > p.resumed {
            self.crash_at("generate", p.kept);
        }
    }

    fn train_event(&mut self, e: &Event) -> ControlFlow<()> {
        match e {
            Event::Start {
                n_train,
                n_val,
                skipped,
                total_steps,
                start_step,
                trainable_params,
            } => {
                self.bar.suspend(|| {
                    eprintln!(
                        "      {n_train} examples ({n_val} validation, {skipped} over the cutoff), \
                         {total_steps} steps, {trainable_params} trainable parameters{}",
                        if *start_step > 0 {
                            format!(", resuming at step {start_step}")
                        } else {
                            String::new()
                        }
                    )
                });
                self.new_bar(
                    *total_steps as u64,
                    "      {bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
                );
                self.bar.set_position(*start_step as u64);
                self.bar.reset_eta();
            }
            Event::InitialEval { loss } => {
                self.bar
                    .suspend(|| eprintln!("      step 0: eval loss {loss:.4}"));
            }
            Event::Step(m) => {
                self.bar.set_position(m.step as u64);
                self.bar.set_message(format!(
                    "loss {:.4}  lr {:.2e}  {:.0} tok/s",
                    m.loss, m.lr, m.tokens_per_s
                ));
                self.crash_at("train", m.step);
            }
            Event::Checkpoint { .. } => {}
        }
        ControlFlow::Continue(())
    }

    fn eval_progress(&mut self, which: &str, done: usize, total: usize) {
        if done <= 1 || self.bar.length() != Some(total as u64) {
            self.new_bar(
                total as u64,
                "      {bar:30} {pos}/{len} {msg}  [{eta_precise}]",
            );
            self.bar.set_message(which.to_string());
        }
        self.bar.set_position(done as u64);
    }

    fn sample_text(&mut self, text: &str) {
        if !self.sample_open {
            self.bar.finish_and_clear();
            self.sample_open = true;
        }
        print!("{text}");
        let _ = std::io::stdout().flush();
    }
}

fn parse_crash(s: &str) -> Result<(String, usize)> {
    let (stage, n) = s.split_once(':').unwrap_or((s, ""));
    match (stage, n.parse::<usize>()) {
        ("generate" | "train", Ok(n)) => Ok((stage.to_string(), n)),
        _ => bail!("--crash-after: expected generate:N or train:N"),
    }
}

pub fn run(a: RecipeArgs) -> Result<()> {
    let t0 = Instant::now();
    let cfg = RecipeConfig::load(&a.config)?;
    let crash = a.crash_after.as_deref().map(parse_crash).transpose()?;
    let threads = match a.threads.or((cfg.threads > 0).then_some(cfg.threads)) {
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    super::init_threads(Some(threads))?;
    eprintln!(
        "recipe {} -> {} ({threads} threads)",
        a.config.display(),
        cfg.out_dir().display()
    );
    let mut cli = Cli {
        bar: ProgressBar::hidden(),
        prompt: cfg.sample.prompt.clone(),
        crash,
        sample_open: false,
    };
    let outcomes = alpaca::recipe::run(&cfg, &mut cli)?;
    cli.bar.finish_and_clear();
    let wall = t0.elapsed().as_secs_f64();
    let summary = table(&outcomes, wall);
    let out = cfg.out_dir();
    alpaca::data::io::write_atomic(&out.join("summary.md"), summary.as_bytes())?;
    println!();
    println!("{summary}");
    let gguf = cfg.export_path();
    println!(
        "loss curve:  {}",
        out.join("train").join("loss.svg").display()
    );
    println!("summary:     {}", out.join("summary.md").display());
    println!(
        "chat with it: alpaca chat -m {} --template {}",
        gguf.display(),
        cfg.train.template
    );
    Ok(())
}
