//! The `Teacher` trait: whatever turns prompts into completions for self-instruct.
//!
//! Implementations: [`super::openai::OpenAiTeacher`] (any OpenAI-compatible server) and
//! [`Scripted`] (a function of the prompt, for tests). The local engine plugs in by
//! implementing [`Teacher::complete`] over its generation loop: one completion per prompt,
//! `finish` = `Length` when it stopped at `max_tokens`, token counts from its tokenizer.
//!
//! A teacher handles its own transport concerns (retries, timeouts); what it returns is final.
//! Errors it returns abort the run, so it must only return errors that retrying cannot fix.

use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Token counts of a request (or a share of one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    pub fn add(&mut self, o: Usage) {
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
    }

    /// Split a request's usage over `n` prompts; the remainder goes to the first shares.
    pub fn split(self, n: usize) -> Vec<Usage> {
        let n = n.max(1) as u64;
        (0..n)
            .map(|i| Usage {
                prompt_tokens: self.prompt_tokens / n + u64::from(i < self.prompt_tokens % n),
                completion_tokens: self.completion_tokens / n
                    + u64::from(i < self.completion_tokens % n),
            })
            .collect()
    }
}

/// Dollars per million tokens, input and output.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
}

impl Price {
    pub fn cost(&self, u: Usage) -> f64 {
        (u.prompt_tokens as f64 * self.input + u.completion_tokens as f64 * self.output) / 1e6
    }
}

/// Why the teacher stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// Natural end or a stop sequence.
    Stop,
    /// The token limit: the last item of the reply is probably cut.
    Length,
    /// Anything else the server reported.
    Other(String),
}

impl Finish {
    pub fn from_api(s: Option<&str>) -> Finish {
        match s {
            None | Some("stop") | Some("eos") | Some("end_turn") => Finish::Stop,
            Some("length") | Some("max_tokens") => Finish::Length,
            Some(o) => Finish::Other(o.to_string()),
        }
    }
}

/// One completion of one prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub text: String,
    pub finish: Finish,
    /// This prompt's share of the request's usage.
    pub usage: Usage,
}

/// Decoding parameters (the original's: temperature 1, top_p 1, 3072 tokens, stop at task 20).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_p: f32,
    pub stop: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_tokens: 3072,
            temperature: 1.0,
            top_p: 1.0,
            stop: vec!["\n20. Instruction:".to_string()],
        }
    }
}

/// A model that writes completions for self-instruct prompts.
pub trait Teacher: Send + Sync {
    /// Short description for reports and the store (e.g. `openai:gpt-4o-mini@host`).
    fn describe(&self) -> String;

    /// How many prompts one [`Teacher::complete`] call may carry.
    fn max_batch(&self) -> usize {
        1
    }

    /// One completion per prompt, in prompt order.
    fn complete(&self, prompts: &[String], params: &SamplingParams) -> Result<Vec<Completion>>;

    /// `true`: the run is over, stop retrying and return from `complete` as soon as possible.
    /// `false`: a run starts.
    fn set_cancelled(&self, _cancelled: bool) {}
}

type ScriptFn = dyn Fn(&str) -> Completion + Send + Sync;

/// A teacher whose reply is a function of the prompt: deterministic, offline, for tests.
pub struct Scripted {
    name: String,
    batch: usize,
    script: Box<ScriptFn>,
}

impl Scripted {
    pub fn new(
        name: &str,
        batch: usize,
        script: impl Fn(&str) -> Completion + Send + Sync + 'static,
    ) -> Self {
        Scripted {
            name: name.to_string(),
            batch: batch.max(1),
            script: Box::new(script),
        }
    }
}

impl Teacher for Scripted {
    fn describe(&self) -> String {
        format!("scripted:{}", self.name)
    }

    fn max_batch(&self) -> usize {
        self.batch
    }

    fn complete(&self, prompts: &[String], _params: &SamplingParams) -> Result<Vec<Completion>> {
        Ok(prompts.iter().map(|p| (self.script)(p)).collect())
    }
}

// ------------------------------------------------------------------------------------ synthetic

const VERBS: [&str; 24] = [
    "Explain",
    "Describe",
    "Summarize",
    "List",
    "Compare",
    "Suggest",
    "Classify",
    "Rewrite",
    "Translate",
    "Outline",
    "Evaluate",
    "Name",
    "Invent",
    "Estimate",
    "Recommend",
    "Define",
    "Identify",
    "Predict",
    "Argue",
    "Plan",
    "Sort",
    "Critique",
    "Simplify",
    "Justify",
];
const ADJS: [&str; 24] = [
    "ancient", "quiet", "modern", "rural", "digital", "fragile", "famous", "local", "tiny",
    "complex", "seasonal", "public", "coastal", "silent", "urban", "hidden", "healthy", "common",
    "rare", "noisy", "gentle", "formal", "global", "simple",
];
const NOUNS: [&str; 30] = [
    "river",
    "library",
    "budget",
    "garden",
    "recipe",
    "election",
    "bridge",
    "habit",
    "festival",
    "contract",
    "forest",
    "museum",
    "password",
    "engine",
    "vaccine",
    "market",
    "poem",
    "robot",
    "school",
    "harbor",
    "theory",
    "bakery",
    "satellite",
    "orchestra",
    "desert",
    "kitchen",
    "startup",
    "volcano",
    "railway",
    "novel",
];
const ENDINGS: [&str; 12] = [
    "for a child",
    "in two sentences",
    "for a busy manager",
    "with one example",
    "using simple words",
    "for a history class",
    "as a short list",
    "for a travel blog",
    "in a formal tone",
    "for a new employee",
    "with pros and cons",
    "for a science fair",
];

const SYLLABLES: [&str; 32] = [
    "ka", "lo", "mi", "ran", "tu", "vel", "zo", "pra", "shi", "den", "bor", "qua", "nim", "fe",
    "gal", "ho", "jin", "tor", "wix", "yul", "ses", "dra", "mun", "pel", "ric", "sto", "bli",
    "cor", "fin", "lum", "nex", "tav",
];

/// FNV-1a, to turn a prompt into a seed.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// A deterministic stand-in for a teacher model: invents tasks from a hash of the prompt, in
/// the reply layout of self-instruct, including the defects real teachers produce now and then
/// (blacklisted words, too-short instructions, empty outputs, near-duplicates) and, for one
/// prompt in five, a reply cut by the length limit. Used by tests and demos (`--teacher
/// synthetic`); the loopback fake server of the integration tests serves these replies.
pub fn synthetic_reply(prompt: &str) -> Completion {
    let mut rng = super::prompt::Rng::new(fnv(prompt));
    let first = prompt
        .rsplit("###")
        .next()
        .and_then(|tail| tail.trim().split('.').next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(4);
    let mut pick = |xs: &[&'static str]| xs[rng.below(xs.len() as u64) as usize];
    let mut text = String::new();
    for n in first..20 {
        let (v, a, o, e) = (pick(&VERBS), pick(&ADJS), pick(&NOUNS), pick(&ENDINGS));
        // An invented word keeps most tasks distinct, as a real teacher's would be.
        let (s1, s2, s3) = (pick(&SYLLABLES), pick(&SYLLABLES), pick(&SYLLABLES));
        let roll = fnv(&format!("{prompt}{n}")) % 40;
        let instruction = match roll {
            0 => format!("{v} the {a} {o} image."),
            1 => format!("{v} it."),
            3 => "Explain the rules of chess to a complete beginner.".to_string(),
            _ => format!("{v} the {a} {o} of {s1}{s2}{s3} {e}."),
        };
        let input = if roll.is_multiple_of(3) {
            format!("A note about the {o}.")
        } else {
            "<noinput>".into()
        };
        let output = if roll == 2 {
            String::new()
        } else {
            format!("The {a} {o}: a reply {e}.")
        };
        if n > first {
            text.push_str("###\n");
            text.push_str(&format!("{n}. Instruction: "));
        } else {
            text.push(' ');
        }
        text.push_str(&format!(
            "{instruction}\n{n}. Input:\n{input}\n{n}. Output:\n{output}\n"
        ));
    }
    let cut = fnv(prompt).is_multiple_of(5);
    if cut {
        // Stop in the middle of the last item, as a token limit would.
        let keep = text.len() - 12;
        let keep = (0..=keep)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text.truncate(keep);
    }
    let completion_tokens = text.split_whitespace().count() as u64;
    Completion {
        text,
        finish: if cut { Finish::Length } else { Finish::Stop },
        usage: Usage {
            prompt_tokens: prompt.split_whitespace().count() as u64,
            completion_tokens,
        },
    }
}

impl Scripted {
    /// A scripted teacher serving [`synthetic_reply`].
    pub fn synthetic(batch: usize) -> Self {
        Scripted::new("synthetic", batch, synthetic_reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_split_keeps_totals() {
        let u = Usage {
            prompt_tokens: 10,
            completion_tokens: 7,
        };
        let parts = u.split(3);
        assert_eq!(parts.iter().map(|p| p.prompt_tokens).sum::<u64>(), 10);
        assert_eq!(parts.iter().map(|p| p.completion_tokens).sum::<u64>(), 7);
        let p = Price {
            input: 1.0,
            output: 2.0,
        };
        assert!((p.cost(u) - 24e-6).abs() < 1e-15);
    }
}
