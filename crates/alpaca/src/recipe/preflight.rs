//! Checks that run before any long work: every file the config names exists and parses as
//! what it should be, the models are there, the output directory is writable, and a server
//! teacher answers. Each failure names the config key and the problem.

use std::path::PathBuf;
use std::time::Duration;

use super::config::{expand_path, RecipeConfig};
use crate::data::io::SeedTask;
use crate::error::{Error, Result};

/// What pre-flight resolved, for the stages to use.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub student: PathBuf,
    /// The local teacher's model file (local kinds only).
    pub teacher_model: Option<PathBuf>,
    pub seeds: Vec<SeedTask>,
    /// The seed file (None: the embedded seeds).
    pub seeds_path: Option<PathBuf>,
    pub data_files: Vec<PathBuf>,
}

fn key_err(key: &str, msg: String) -> Error {
    Error::InvalidArgument(format!("`{key}`: {msg}"))
}

/// Run every check; the first failure is returned.
pub fn check(cfg: &RecipeConfig) -> Result<Resolved> {
    let student = crate::assets::resolve_model(cfg.student_path().as_deref())
        .map_err(|e| key_err("model.student", e.to_string()))?;
    let teacher_model = if cfg.generates() && cfg.teacher.kind.starts_with("local") {
        let p = (!cfg.teacher.model.is_empty()).then(|| expand_path(&cfg.teacher.model));
        Some(
            crate::assets::resolve_model(p.as_deref())
                .map_err(|e| key_err("teacher.model", e.to_string()))?,
        )
    } else {
        None
    };
    let seeds_path = (!cfg.generate.seeds.is_empty()).then(|| expand_path(&cfg.generate.seeds));
    let seeds = match &seeds_path {
        Some(p) if !p.exists() => {
            return Err(key_err(
                "generate.seeds",
                format!("seed file {} does not exist", p.display()),
            ))
        }
        Some(p) => crate::data::io::read_seed_tasks(p)?,
        None => crate::generate::default_seeds()?,
    };
    let mut data_files = Vec::new();
    for f in &cfg.data.files {
        let p = expand_path(f);
        if !p.is_file() {
            let hint = if f.starts_with("{data}") {
                " (run scripts/fetch-data.sh to download it)"
            } else {
                ""
            };
            return Err(key_err(
                "data.files",
                format!("data file {} does not exist{hint}", p.display()),
            ));
        }
        data_files.push(p);
    }
    if !cfg.generates() && data_files.is_empty() && !cfg.data.include_seeds {
        return Err(key_err(
            "data.files",
            "no training data: generation is off, no data files and include_seeds = false".into(),
        ));
    }
    let out = cfg.out_dir();
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    if cfg.generates() && cfg.is_server_teacher() {
        check_teacher(cfg)?;
    }
    Ok(Resolved {
        student,
        teacher_model,
        seeds,
        seeds_path,
        data_files,
    })
}

/// The teacher's base URL as the teacher will use it.
pub fn teacher_base_url(cfg: &RecipeConfig) -> String {
    if cfg.teacher.base_url.is_empty() {
        std::env::var("OPENAI_BASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "https://api.openai.com/v1".into())
    } else {
        cfg.teacher.base_url.clone()
    }
}

/// One quick request to the server (`GET <base>/models`): any HTTP answer, even an error
/// status, proves the server is there; no answer within 10 seconds is a failure.
fn check_teacher(cfg: &RecipeConfig) -> Result<()> {
    let base = teacher_base_url(cfg);
    let t = crate::generate::openai::OpenAiTeacher::new(crate::generate::openai::OpenAiConfig {
        base_url: base.clone(),
        model: cfg.teacher.model.clone(),
        ..Default::default()
    })
    .map_err(|e| key_err("teacher.base_url", e.to_string()))?;
    let url = t.url();
    let root = url
        .strip_suffix("/chat/completions")
        .or_else(|| url.strip_suffix("/completions"))
        .unwrap_or(url);
    let probe = format!("{root}/models");
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .build();
    match agent.get(&probe).call() {
        Ok(_) | Err(ureq::Error::Status(..)) => Ok(()),
        Err(ureq::Error::Transport(e)) => Err(key_err(
            "teacher.base_url",
            format!(
                "the teacher at {base} is unreachable ({e}); check the URL and that the server is running"
            ),
        )),
    }
}
