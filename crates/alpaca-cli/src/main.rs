//! `alpaca`: the command-line tool. Dispatch only; each subcommand lives in `cmd/`.
//!
//! Exit codes are a contract: 0 success, 1 a failure the user can fix (bad input, missing
//! file), 2 an internal error.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "alpaca",
    version,
    about = "Make and run your own instruction-following language model"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a completion for one prompt (only the completion goes to stdout)
    Run(cmd::run::RunArgs),
    /// Interactive streaming chat
    Chat(cmd::chat::ChatArgs),
    /// OpenAI-compatible HTTP server with a web chat page
    Serve(cmd::serve::ServeArgs),
    /// Print the token ids of a text
    Tokenize(cmd::tokenize::TokenizeArgs),
    /// Perplexity of a text file, scored like llama.cpp's perplexity tool
    Perplexity(cmd::perplexity::PerplexityArgs),
    /// Prompt-processing and generation speed
    Bench(cmd::bench::BenchArgs),
    /// Self-instruct data generation and data tooling
    Data(cmd::data::DataArgs),
    /// Fine-tune a model (LoRA, QLoRA or full) on instruction data
    Train(cmd::train::TrainArgs),
    /// Merge a LoRA adapter and export to GGUF, a Hugging Face directory or a PEFT adapter
    Export(cmd::export::ExportArgs),
    /// Held-out loss, predictions, pairwise judging and reports
    Eval(cmd::eval::EvalArgs),
    /// The whole Alpaca recipe from one TOML config, resumable
    Recipe(cmd::recipe::RecipeArgs),
}

fn main() -> ExitCode {
    // A panic is a bug: one line, exit code 2, no backtrace for the user.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("alpaca: internal error: {msg}{at} (please report this)");
        std::process::exit(2);
    }));
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(1),
            };
        }
    };
    let result = match cli.command {
        Command::Run(a) => cmd::run::run(a),
        Command::Chat(a) => cmd::chat::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Tokenize(a) => cmd::tokenize::run(a),
        Command::Perplexity(a) => cmd::perplexity::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Data(a) => cmd::data::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Export(a) => cmd::export::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Recipe(a) => cmd::recipe::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let internal = e
                .downcast_ref::<alpaca::Error>()
                .is_some_and(|e| !e.is_user_error());
            ExitCode::from(if internal { 2 } else { 1 })
        }
    }
}
