//! `alpaca data`: self-instruct generation and data tooling (generate, convert, dedup, filter,
//! stats). Argument parsing, progress bars and printing only; the work is in
//! `alpaca::generate` and `alpaca::data`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use alpaca::data::dedup::{dedup, MatchOf, DEFAULT_THRESHOLD};
use alpaca::data::filter::{filter_examples, FilterConfig, Reject, RejectCounts};
use alpaca::data::io::{read_examples, read_seed_tasks, write_atomic, write_examples, Format};
use alpaca::data::stats::{compute, Stats, StatsConfig};
use alpaca::data::svg::stats_svg;
use alpaca::data::Example;
use alpaca::generate::openai::{Endpoint, OpenAiConfig, OpenAiTeacher};
use alpaca::generate::{
    default_seeds, generate, GenerateConfig, OpenMode, ParseMode, Price, ProgressInfo,
    SamplingParams, Scripted, Store, Teacher,
};

#[derive(Args, Debug)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum DataCommand {
    /// Self-instruct: turn seed tasks into instruction data with a teacher model
    Generate(GenerateArgs),
    /// Convert between alpaca JSON, JSONL, ShareGPT and messages formats
    Convert(ConvertArgs),
    /// Drop near-duplicate instructions (ROUGE-L, as rouge_score), keeping input order
    Dedup(DedupArgs),
    /// Apply the self-instruct quality filters
    Filter(FilterArgs),
    /// Counts, lengths, root verbs and similarity of a data set, with an SVG picture
    Stats(StatsArgs),
}

pub fn run(args: DataArgs) -> Result<()> {
    match args.command {
        DataCommand::Generate(a) => run_generate(a),
        DataCommand::Convert(a) => run_convert(a),
        DataCommand::Dedup(a) => run_dedup(a),
        DataCommand::Filter(a) => run_filter(a),
        DataCommand::Stats(a) => run_stats(a),
    }
}

// ------------------------------------------------------------------------------------ generate

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Seed tasks in Self-Instruct seed_tasks.jsonl format [default: our embedded 114 seeds]
    #[arg(long)]
    pub seeds: Option<PathBuf>,
    /// Teacher: completions:MODEL, chat:MODEL (any OpenAI-compatible server, see --base-url),
    /// local[:GGUF] or local-chat[:GGUF] (our own engine, offline; default model when no path),
    /// or synthetic (an offline stand-in for tests and demos)
    #[arg(long)]
    pub teacher: String,
    /// Base URL of the OpenAI-compatible server [default: $OPENAI_BASE_URL or https://api.openai.com/v1]
    #[arg(long)]
    pub base_url: Option<String>,
    /// Environment variable holding the API key
    #[arg(long, default_value = "OPENAI_API_KEY")]
    pub api_key_env: String,
    /// Number of kept items to reach (including those already in a resumed store)
    #[arg(short = 'n', long = "count")]
    pub count: usize,
    /// Output store (JSONL, append-only)
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// Continue an existing store up to the count
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Replace an existing store
    #[arg(long)]
    pub overwrite: bool,
    /// Seed of the prompt RNG; the same seed gives the same prompts
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Requests in flight
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Prompts per request (completions endpoint only)
    #[arg(long, default_value_t = 5)]
    pub batch: usize,
    /// Seed tasks shown in each prompt
    #[arg(long, default_value_t = 3)]
    pub seeds_per_prompt: usize,
    /// Request timeout in seconds
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
    /// Retries per request on 429, 5xx, timeouts and malformed replies
    #[arg(long, default_value_t = 10)]
    pub max_retries: u32,
    /// Base of the exponential backoff, in milliseconds
    #[arg(long, default_value_t = 1000)]
    pub backoff_ms: u64,
    /// Maximum new tokens per prompt
    #[arg(long, default_value_t = 3072)]
    pub max_tokens: u32,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// ROUGE-L threshold above which an instruction counts as a duplicate
    #[arg(long, default_value_t = DEFAULT_THRESHOLD)]
    pub threshold: f64,
    /// Switch a filter off (repeatable): too_short, too_long, blacklist, write_a_program,
    /// punctuation, non_ascii, empty_output, output_is_input, output_repeats_instruction, duplicate
    #[arg(long = "no-filter")]
    pub no_filter: Vec<String>,
    /// Prompt header to use instead of ours (e.g. the original prompt.txt, verbatim)
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// Reply parser: forgiving (ours) or original (drops everything after a misnumbered item)
    #[arg(long, default_value = "forgiving")]
    pub parse: String,
    /// Price of input tokens, $ per million
    #[arg(long, default_value_t = 0.0)]
    pub price_in: f64,
    /// Price of output tokens, $ per million
    #[arg(long, default_value_t = 0.0)]
    pub price_out: f64,
    /// Give up after this many prompts even if the count is not reached
    #[arg(long)]
    pub max_prompts: Option<u64>,
    /// Also write the kept items as a standard alpaca_data.json here at the end
    #[arg(long)]
    pub export: Option<PathBuf>,
    /// Worker threads for ROUGE-L [default: all cores]
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
}

fn filter_config(names: &[String]) -> Result<FilterConfig> {
    let mut cfg = FilterConfig::default();
    for n in names {
        let r = Reject::from_name(n).with_context(|| {
            let all: Vec<&str> = Reject::ALL.iter().map(|r| r.name()).collect();
            format!("unknown filter `{n}` (known: {})", all.join(", "))
        })?;
        cfg.disabled.push(r);
    }
    Ok(cfg)
}

fn make_teacher(a: &GenerateArgs) -> Result<Box<dyn Teacher>> {
    let (kind, model) = a
        .teacher
        .split_once(':')
        .unwrap_or((a.teacher.as_str(), ""));
    let endpoint = match kind {
        "synthetic" => return Ok(Box::new(Scripted::synthetic(a.batch))),
        "completions" | "openai" => Endpoint::Completions,
        "chat" => Endpoint::Chat,
        "local" | "local-chat" => {
            // `local` = the default model; `local:PATH` any model file.
            let path = alpaca::assets::resolve_model(
                (!model.is_empty()).then(|| std::path::Path::new(model)),
            )?;
            let engine = alpaca::infer::Engine::load(&path)?;
            return Ok(Box::new(alpaca::generate::local::LocalTeacher::new(
                engine,
                kind == "local-chat",
                a.seed,
            )));
        }
        other => {
            bail!("unknown teacher `{other}` (expected completions:MODEL, chat:MODEL, local[:PATH], local-chat[:PATH] or synthetic)")
        }
    };
    if model.is_empty() {
        bail!("--teacher {kind}: give a model name, e.g. {kind}:gpt-3.5-turbo-instruct");
    }
    if !(a.timeout.is_finite() && a.timeout > 0.0) {
        bail!("--timeout must be a positive number of seconds");
    }
    let base_url = a
        .base_url
        .clone()
        .or_else(|| std::env::var("OPENAI_BASE_URL").ok())
        .unwrap_or_else(|| "https://api.openai.com/v1".into());
    let api_key = std::env::var(&a.api_key_env).ok().filter(|k| !k.is_empty());
    let cfg = OpenAiConfig {
        base_url,
        model: model.to_string(),
        api_key,
        endpoint,
        batch: a.batch,
        timeout: Duration::from_secs_f64(a.timeout),
        max_retries: a.max_retries,
        backoff_base: Duration::from_millis(a.backoff_ms),
        backoff_max: Duration::from_secs(60).max(Duration::from_millis(a.backoff_ms)),
    };
    Ok(Box::new(OpenAiTeacher::new(cfg)?))
}

fn print_rejections(r: &RejectCounts) {
    if r.total() == 0 {
        return;
    }
    println!("rejected {}:", r.total());
    for (reason, n) in &r.0 {
        println!("  {:<28} {n}", reason.name());
    }
}

fn run_generate(a: GenerateArgs) -> Result<()> {
    super::init_threads(a.threads)?;
    let seeds = match &a.seeds {
        Some(p) => read_seed_tasks(p)?,
        None => default_seeds()?,
    };
    let header = match &a.prompt_file {
        Some(p) => super::read_text(p)?.trim_end().to_string(),
        None => alpaca::generate::prompt::DEFAULT_HEADER.to_string(),
    };
    let parse_mode = match a.parse.as_str() {
        "forgiving" => ParseMode::Forgiving,
        "original" => ParseMode::Original,
        o => bail!("--parse must be forgiving or original, not `{o}`"),
    };
    let teacher = make_teacher(&a)?;
    let cfg = GenerateConfig {
        target: a.count,
        seed: a.seed,
        seeds_per_prompt: a.seeds_per_prompt,
        prompts_per_request: a.batch,
        concurrency: a.concurrency,
        threshold: a.threshold,
        neighbours: 10,
        filters: filter_config(&a.no_filter)?,
        params: SamplingParams {
            max_tokens: a.max_tokens,
            temperature: a.temperature,
            top_p: a.top_p,
            ..SamplingParams::default()
        },
        header,
        parse_mode,
        price: Price {
            input: a.price_in,
            output: a.price_out,
        },
        max_prompts: a.max_prompts,
    };
    let mode = if a.resume {
        OpenMode::Resume
    } else if a.overwrite {
        OpenMode::Overwrite
    } else {
        OpenMode::Create
    };
    let opened = Store::open(&a.output, mode)?;
    if opened.torn_bytes > 0 {
        eprintln!(
            "warning: {}: dropped a torn last line ({} bytes) left by an interrupted run",
            a.output.display(),
            opened.torn_bytes
        );
    }
    if !opened.items.is_empty() {
        eprintln!(
            "resuming {} with {} items",
            a.output.display(),
            opened.items.len()
        );
    }
    let bar = ProgressBar::new(a.count as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} kept  {msg}  ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(opened.items.len() as u64);
    let priced = a.price_in > 0.0 || a.price_out > 0.0;
    let mut on_progress = |p: &ProgressInfo| {
        bar.set_position(p.kept as u64);
        let mins = p.elapsed.as_secs_f64() / 60.0;
        let rate = if mins > 0.0 {
            (p.kept - p.resumed) as f64 / mins
        } else {
            0.0
        };
        let cost = if priced {
            format!("  ${:.4}", p.cost)
        } else {
            String::new()
        };
        bar.set_message(format!(
            "{} generated  {} prompts  {rate:.0}/min{cost}",
            p.candidates, p.prompts
        ));
    };
    let report = generate(teacher.as_ref(), &seeds, opened, &cfg, &mut on_progress);
    bar.finish_and_clear();
    let report = report?;
    let p = &report.progress;
    println!("teacher: {}", report.teacher);
    println!(
        "kept {} of {} target ({} new, {} resumed) from {} prompts in {:.1}s",
        p.kept,
        p.target,
        p.kept - p.resumed,
        p.resumed,
        p.prompts,
        p.elapsed.as_secs_f64()
    );
    println!("parsed items looked at: {}", p.candidates);
    print_rejections(&report.rejected);
    println!(
        "tokens: {} in, {} out{}",
        p.usage.prompt_tokens,
        p.usage.completion_tokens,
        if priced {
            format!("; cost ${:.4}", p.cost)
        } else {
            String::new()
        }
    );
    if let Some(out) = &a.export {
        let items = read_examples(&a.output)?.examples;
        write_examples(out, &items, Format::ALPACA_JSON)?;
        println!("exported {} items to {}", items.len(), out.display());
    }
    if !report.target_reached {
        bail!(
            "stopped after {} prompts without reaching {} items (--max-prompts)",
            p.prompts,
            a.count
        );
    }
    Ok(())
}

// ------------------------------------------------------------------------------------ convert

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Input file (alpaca JSON, JSONL, ShareGPT or messages; .gz allowed)
    pub input: PathBuf,
    /// Output file
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// Output format: json (alpaca_data.json), jsonl, sharegpt, messages [default: from the extension]
    #[arg(long)]
    pub to: Option<String>,
}

fn run_convert(a: ConvertArgs) -> Result<()> {
    let data = read_examples(&a.input)?;
    let fmt = match &a.to {
        Some(n) => Format::from_name(n)?,
        None => Format::from_path(&a.output),
    };
    write_examples(&a.output, &data.examples, fmt)?;
    eprintln!(
        "wrote {} examples to {}",
        data.examples.len(),
        a.output.display()
    );
    Ok(())
}

// ------------------------------------------------------------------------------------ dedup

#[derive(Args, Debug)]
pub struct DedupArgs {
    /// Input data file (JSON list or JSONL)
    pub input: PathBuf,
    /// Output file, same format as the input
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// Drop an instruction scoring above this ROUGE-L F-measure
    #[arg(long, default_value_t = DEFAULT_THRESHOLD)]
    pub threshold: f64,
    /// Also drop instructions similar to those of this file (data or seed tasks)
    #[arg(long)]
    pub against: Option<PathBuf>,
    /// Worker threads [default: all cores]
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
}

/// Instructions of a reference file: any data file, or a seed task file.
fn reference_instructions(path: &Path) -> Result<Vec<String>> {
    match read_examples(path) {
        Ok(d) => Ok(d.examples.into_iter().map(|e| e.instruction).collect()),
        Err(data_err) => match read_seed_tasks(path) {
            Ok(seeds) => Ok(seeds.into_iter().map(|s| s.instruction).collect()),
            Err(_) => Err(data_err.into()),
        },
    }
}

fn run_dedup(a: DedupArgs) -> Result<()> {
    super::init_threads(a.threads)?;
    let data = read_examples(&a.input)?;
    let refs = match &a.against {
        Some(p) => reference_instructions(p)?,
        None => Vec::new(),
    };
    let start = Instant::now();
    let cands: Vec<&str> = data
        .examples
        .iter()
        .map(|e| e.instruction.as_str())
        .collect();
    let refs_s: Vec<&str> = refs.iter().map(String::as_str).collect();
    let decisions = dedup(&cands, &refs_s, a.threshold);
    let secs = start.elapsed().as_secs_f64();
    let (mut vs_ref, mut vs_kept) = (0usize, 0usize);
    let mut kept: Vec<Example> = Vec::new();
    for (ex, d) in data.examples.iter().zip(&decisions) {
        match d.duplicate_of {
            None => kept.push(ex.clone()),
            Some((MatchOf::Reference(_), _)) => vs_ref += 1,
            Some((MatchOf::Candidate(_), _)) => vs_kept += 1,
        }
    }
    write_examples(&a.output, &kept, data.format)?;
    println!(
        "kept {} of {} ({} near-duplicates of earlier items, {} of --against) in {secs:.3}s",
        kept.len(),
        data.examples.len(),
        vs_kept,
        vs_ref
    );
    Ok(())
}

// ------------------------------------------------------------------------------------ filter

#[derive(Args, Debug)]
pub struct FilterArgs {
    /// Input data file (JSON list or JSONL)
    pub input: PathBuf,
    /// Output file, same format as the input
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// Switch a filter off (repeatable), e.g. --no-filter blacklist
    #[arg(long = "no-filter")]
    pub no_filter: Vec<String>,
    /// Fewest words an instruction may have
    #[arg(long, default_value_t = 4)]
    pub min_words: usize,
    /// Most words an instruction may have
    #[arg(long, default_value_t = 150)]
    pub max_words: usize,
}

fn run_filter(a: FilterArgs) -> Result<()> {
    let data = read_examples(&a.input)?;
    let cfg = FilterConfig {
        min_words: a.min_words,
        max_words: a.max_words,
        ..filter_config(&a.no_filter)?
    };
    let (kept, counts) = filter_examples(&data.examples, &cfg);
    write_examples(&a.output, &kept, data.format)?;
    println!("kept {} of {}", kept.len(), data.examples.len());
    print_rejections(&counts);
    Ok(())
}

// ------------------------------------------------------------------------------------ stats

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Input data file
    pub input: PathBuf,
    /// Write an SVG picture here
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
    /// Items whose nearest-neighbour ROUGE-L is measured (0 = skip)
    #[arg(long, default_value_t = 2000)]
    pub sample: usize,
    /// Worker threads [default: all cores]
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
}

fn print_stats(s: &Stats) {
    println!("examples:            {}", s.count);
    println!("unique instructions: {}", s.unique_instructions);
    println!(
        "with input:          {} ({:.1}%)",
        s.with_input,
        100.0 * s.input_share
    );
    println!("empty outputs:       {}", s.empty_output);
    println!(
        "mean words:          instruction {:.1}, output {:.1}",
        s.mean_instruction_words, s.mean_output_words
    );
    for (name, h) in [
        ("instruction words", &s.instruction_words),
        ("input words", &s.input_words),
        ("output words", &s.output_words),
        ("max ROUGE-L to another instruction", &s.similarity),
    ] {
        println!("{name}:");
        for (label, c) in h.labels().iter().zip(&h.counts) {
            println!("  {label:>9} {c}");
        }
    }
    println!("root verbs (first-word approximation):");
    for (v, c) in &s.root_verbs {
        println!("  {v:<16} {c}");
    }
    if s.similarity_sampled > 0 {
        println!(
            "mean max ROUGE-L over {} sampled items: {:.3}",
            s.similarity_sampled, s.mean_max_similarity
        );
    }
}

fn run_stats(a: StatsArgs) -> Result<()> {
    super::init_threads(a.threads)?;
    let data = read_examples(&a.input)?;
    let cfg = StatsConfig {
        similarity_sample: a.sample,
        ..StatsConfig::default()
    };
    let s = compute(&data.examples, &cfg);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print_stats(&s);
    }
    if let Some(svg) = &a.svg {
        let title = a
            .input
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        write_atomic(svg, stats_svg(&s, &title).as_bytes())?;
        eprintln!("wrote {}", svg.display());
    }
    Ok(())
}
