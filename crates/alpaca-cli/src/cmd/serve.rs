//! `alpaca serve`: the OpenAI-compatible HTTP server and chat page.
//!
//! Binds 127.0.0.1 unless told otherwise. Prints one line when listening (tests parse it:
//! `alpaca serve: listening on http://ADDR`), then one access line per request on stderr.
//! SIGINT/SIGTERM: stop accepting, let active generations finish within `--shutdown-grace`
//! seconds (then cut them), exit 0.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use alpaca::data::template::TemplateChoice;
use alpaca::infer::batch::{Scheduler, SchedulerConfig};
use alpaca::infer::server::{serve, ServerConfig};

use super::ModelArgs;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to bind; anything but loopback exposes the model to the network
    #[arg(long = "host", default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// TCP port (0 = any free port; the chosen one is printed)
    #[arg(long = "port", default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/* and /metrics [default: $ALPACA_API_KEY]
    #[arg(long = "api-key")]
    pub api_key: Option<String>,
    /// Sequences decoded together in one batch (slots)
    #[arg(long = "parallel", default_value_t = 16)]
    pub parallel: usize,
    /// Requests that may wait for a slot; more get HTTP 429
    #[arg(long = "queue", default_value_t = 64)]
    pub queue: usize,
    /// Largest max_tokens a request may ask for [default: 2048, at most the context]
    #[arg(long = "max-tokens")]
    pub max_tokens: Option<usize>,
    /// Largest request body in bytes
    #[arg(long = "max-body", default_value_t = 1 << 20)]
    pub max_body: usize,
    /// Chat template: auto (the model's own), alpaca, alpaca-lora, chatml, raw
    #[arg(long = "template", default_value = "auto")]
    pub template: TemplateChoice,
    /// Model name reported by the API [default: the file name without extension]
    #[arg(long = "name")]
    pub name: Option<String>,
    /// Seconds active generations may run after SIGINT/SIGTERM before they are cut
    #[arg(long = "shutdown-grace", default_value_t = 10.0)]
    pub shutdown_grace: f64,
    /// Don't print a line per request
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
}

pub fn run(a: ServeArgs) -> Result<()> {
    if a.parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    if !(a.shutdown_grace >= 0.0 && a.shutdown_grace.is_finite()) {
        bail!("--shutdown-grace must be a number of seconds >= 0");
    }
    let engine = a.model.load()?;
    let engine = Arc::new(engine);
    let ctx = engine.model.context_length();
    let max_tokens = a.max_tokens.unwrap_or(2048).min(ctx);
    if max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    let api_key = a
        .api_key
        .clone()
        .or_else(|| std::env::var("ALPACA_API_KEY").ok())
        .filter(|k| !k.is_empty());
    let name = a.name.clone().unwrap_or_else(|| {
        engine
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "alpaca".into())
    });
    let cfg = ServerConfig {
        model_id: name.clone(),
        api_key: api_key.clone(),
        max_body_bytes: a.max_body,
        max_tokens_limit: max_tokens,
        chat_template: a.template,
        shutdown_grace: Duration::from_secs_f64(a.shutdown_grace),
    };
    let sched = Arc::new(Scheduler::start(
        Arc::clone(&engine),
        SchedulerConfig {
            max_seqs: a.parallel,
            queue_capacity: a.queue,
            ..SchedulerConfig::default()
        },
    )?);

    // The model's work runs on the rayon pool; HTTP needs little.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let quiet = a.quiet;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((a.host, a.port))
            .await
            .with_context(|| format!("binding {}:{}", a.host, a.port))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        if !a.host.is_loopback() && api_key.is_none() {
            eprintln!(
                "warning: listening on {} without --api-key: anyone who can reach this \
                 address can use the model",
                a.host
            );
        }
        eprintln!(
            "alpaca serve: listening on http://{addr} (model {name}, {} slots, context {ctx}); \
             chat page at http://{addr}/",
            a.parallel
        );
        let log: alpaca::infer::server::LogFn = Arc::new(move |line: &str| {
            if !quiet || !line.starts_with(|c: char| c.is_ascii_uppercase()) {
                eprintln!("{line}");
            }
        });
        serve(listener, sched, cfg, log, shutdown_signal()).await?;
        Ok(())
    })
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
