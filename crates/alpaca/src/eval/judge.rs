//! Judges: given an instruction and two responses, say which is better.
//!
//! - [`TeacherJudge`]: any [`Teacher`] (an OpenAI-compatible server, a local model, a
//!   scripted function) answers the judge prompt in words; the reply is parsed.
//! - [`LogprobJudge`]: a local model reads the judge prompt, which ends at `(`, and the
//!   verdict is whichever of the next tokens `a` and `b` it finds more likely. Deterministic,
//!   one forward pass, and usable with base models that cannot be asked to follow a judging
//!   instruction in words.
//! - [`LengthJudge`]: prefers the longer response (a known bias of LLM judges; a baseline).
//!
//! The prompt shows the responses as `(a)` and `(b)`; callers ask both orders to cancel
//! position bias (see [`super::pairwise`]).

use serde::{Deserialize, Serialize};

use crate::data::template::TemplateChoice;
use crate::error::{Error, Result};
use crate::generate::teacher::{SamplingParams, Teacher};
use crate::infer::Engine;

/// Which response a judge prefers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preference {
    /// Response (a), the one shown first.
    First,
    /// Response (b).
    Second,
    Tie,
}

/// A judge's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub preference: Preference,
    /// The judge's probability that (a) is better, when it has one (log-probability judge).
    #[serde(default)]
    pub p_first: Option<f64>,
    /// What the judge said (its reply, or the logit difference).
    pub raw: String,
}

/// An instruction and two responses, in the order shown to the judge.
#[derive(Debug, Clone, Copy)]
pub struct Pair<'a> {
    pub instruction: &'a str,
    pub input: &'a str,
    pub first: &'a str,
    pub second: &'a str,
}

/// Something that compares two responses.
pub trait Judge: Send + Sync {
    /// Short description for reports and the judgments file.
    fn describe(&self) -> String;
    fn judge(&self, pair: &Pair) -> Result<Verdict>;
}

/// The judge prompt, up to and including `### Better response: (`.
pub fn judge_prompt(p: &Pair) -> String {
    let mut s = String::from(
        "Below are an instruction and two responses to it. Decide which response follows the \
         instruction better: more helpful, more accurate, more relevant and clearer. Do not let \
         the order or the length of the responses decide.\n\n### Instruction:\n",
    );
    s.push_str(p.instruction.trim());
    if !p.input.trim().is_empty() {
        s.push_str("\n\n### Input:\n");
        s.push_str(p.input.trim());
    }
    s.push_str("\n\n### Response (a):\n");
    s.push_str(p.first.trim());
    s.push_str("\n\n### Response (b):\n");
    s.push_str(p.second.trim());
    s.push_str("\n\n### Better response: (");
    s
}

/// Read a verdict from a judge's words: `a)`, `(b)`, `Response (a)`, `A`, `b is better`...
/// `None` when it names neither or both.
pub fn parse_verdict(reply: &str) -> Option<Preference> {
    let lower = reply.trim().to_ascii_lowercase();
    let t = lower.trim_start_matches(['(', '*', '"', '\'', ' ']);
    // The prompt ends at `(`: the natural reply is `a)` or `b)`.
    if t.starts_with("a)") {
        return Some(Preference::First);
    }
    if t.starts_with("b)") {
        return Some(Preference::Second);
    }
    match (lower.contains("(a)"), lower.contains("(b)")) {
        (true, false) => return Some(Preference::First),
        (false, true) => return Some(Preference::Second),
        (true, true) => return None,
        _ => {}
    }
    let first_word: String = t
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    match first_word.as_str() {
        "a" => Some(Preference::First),
        "b" => Some(Preference::Second),
        "tie" => Some(Preference::Tie),
        _ => None,
    }
}

// ------------------------------------------------------------------------------------ teacher

/// A judge that asks a [`Teacher`] in words.
pub struct TeacherJudge {
    teacher: Box<dyn Teacher>,
    params: SamplingParams,
}

impl TeacherJudge {
    /// Greedy, short replies.
    pub fn new(teacher: Box<dyn Teacher>) -> Self {
        TeacherJudge {
            teacher,
            params: SamplingParams {
                max_tokens: 16,
                temperature: 0.0,
                top_p: 1.0,
                stop: vec!["\n".into()],
            },
        }
    }
}

impl Judge for TeacherJudge {
    fn describe(&self) -> String {
        self.teacher.describe()
    }

    fn judge(&self, pair: &Pair) -> Result<Verdict> {
        let prompt = judge_prompt(pair);
        let reply = self
            .teacher
            .complete(std::slice::from_ref(&prompt), &self.params)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Teacher("the judge returned no completion".into()))?;
        // An unreadable verdict counts as a tie; `raw` keeps the words for the report.
        let preference = parse_verdict(&reply.text).unwrap_or(Preference::Tie);
        Ok(Verdict {
            preference,
            p_first: None,
            raw: reply.text,
        })
    }
}

// ------------------------------------------------------------------------------------ logprob

/// A judge reading the next-token probabilities of `a` and `b` from a local model.
pub struct LogprobJudge {
    engine: Engine,
    chat: bool,
    ids: (u32, u32),
    /// Logit differences smaller than this are ties.
    tie_margin: f64,
}

impl LogprobJudge {
    /// `chat`: send the question as a user message in the model's chat template and start the
    /// assistant's reply with `The better response is (` (for instruction-tuned models);
    /// otherwise the prompt is raw text (base models).
    pub fn new(engine: Engine, chat: bool, tie_margin: f64) -> Result<Self> {
        let one = |s: &str| -> Result<u32> {
            match engine.tokenizer.encode(s, false)?[..] {
                [id] => Ok(id),
                _ => Err(Error::Tokenizer(format!(
                    "`{s}` is not a single token in this vocabulary: the log-probability judge needs it"
                ))),
            }
        };
        let ids = (one("a")?, one("b")?);
        if tie_margin.is_nan() || tie_margin < 0.0 {
            return Err(Error::InvalidArgument("--tie-margin must be >= 0".into()));
        }
        Ok(LogprobJudge {
            engine,
            chat,
            ids,
            tie_margin,
        })
    }

    fn prompt_ids(&self, pair: &Pair) -> Result<Vec<u32>> {
        let text = judge_prompt(pair);
        let text = if self.chat {
            let question = text.trim_end_matches("### Better response: (").to_string()
                + "Which response is better, (a) or (b)?";
            let mut t = self
                .engine
                .template(TemplateChoice::Auto)
                .render_instruction(&question, "")?;
            t.push_str("The better response is (");
            t
        } else {
            text
        };
        self.engine.encode_prompt(&text)
    }
}

impl Judge for LogprobJudge {
    fn describe(&self) -> String {
        let name = self
            .engine
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("logprob{}:{name}", if self.chat { "-chat" } else { "" })
    }

    fn judge(&self, pair: &Pair) -> Result<Verdict> {
        let ids = self.prompt_ids(pair)?;
        let ctx = self.engine.model.context_length();
        if ids.len() >= ctx {
            return Err(Error::ContextOverflow {
                prompt: ids.len(),
                max_new: 1,
                ctx,
            });
        }
        let mut cache = self.engine.model.new_cache(ids.len());
        let logits = self.engine.model.forward(&ids, &mut cache, 1)?;
        let (la, lb) = (
            logits[self.ids.0 as usize] as f64,
            logits[self.ids.1 as usize] as f64,
        );
        let d = la - lb;
        let preference = if d.abs() <= self.tie_margin {
            Preference::Tie
        } else if d > 0.0 {
            Preference::First
        } else {
            Preference::Second
        };
        Ok(Verdict {
            preference,
            p_first: Some(1.0 / (1.0 + (-d).exp())),
            raw: format!("logit(a) - logit(b) = {d:.4}"),
        })
    }
}

// ------------------------------------------------------------------------------------ length

/// Prefers the longer response (in characters); equal lengths tie.
pub struct LengthJudge;

impl Judge for LengthJudge {
    fn describe(&self) -> String {
        "length (prefers the longer response)".into()
    }

    fn judge(&self, pair: &Pair) -> Result<Verdict> {
        let (a, b) = (
            pair.first.trim().chars().count(),
            pair.second.trim().chars().count(),
        );
        let preference = match a.cmp(&b) {
            std::cmp::Ordering::Greater => Preference::First,
            std::cmp::Ordering::Less => Preference::Second,
            std::cmp::Ordering::Equal => Preference::Tie,
        };
        Ok(Verdict {
            preference,
            p_first: None,
            raw: format!("{a} vs {b} characters"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_parse() {
        assert_eq!(parse_verdict("a)"), Some(Preference::First));
        assert_eq!(parse_verdict(" (b) is better"), Some(Preference::Second));
        assert_eq!(parse_verdict("B"), Some(Preference::Second));
        assert_eq!(
            parse_verdict("I think Response (a) wins"),
            Some(Preference::First)
        );
        assert_eq!(parse_verdict("tie"), Some(Preference::Tie));
        assert_eq!(parse_verdict("both (a) and (b)"), None);
        assert_eq!(parse_verdict("neither"), None);
        assert_eq!(parse_verdict("about the same"), None);
        assert_eq!(
            parse_verdict("A better response is (b)."),
            Some(Preference::Second)
        );
    }

    #[test]
    fn prompt_ends_at_the_verdict() {
        let p = Pair {
            instruction: "Say hi",
            input: "",
            first: "hi",
            second: "hello",
        };
        let s = judge_prompt(&p);
        assert!(s.ends_with("### Better response: ("));
        assert!(!s.contains("### Input"));
        assert!(s.find("hi\n\n### Response (b)").is_some());
    }
}
