//! The local teacher: our own engine writes the self-instruct completions, offline.
//!
//! The self-instruct prompt is a completion prompt (it ends with `4. Instruction:`), so it is
//! fed raw by default; `chat` wraps it as one user message in the model's chat template, which
//! suits small instruction-tuned models better. Token usage is counted with the model's own
//! tokenizer. Prompts run one after another; each uses all the engine's threads.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::data::template::TemplateChoice;
use crate::error::Result;
use crate::generate::teacher::{Completion, Finish, SamplingParams, Teacher, Usage};
use crate::infer::{Engine, FinishReason, GenParams, SamplerConfig};

/// A teacher backed by a local model.
pub struct LocalTeacher {
    engine: Engine,
    chat: bool,
    seed: u64,
    cancelled: AtomicBool,
}

impl LocalTeacher {
    /// `chat`: wrap each prompt in the model's chat template instead of feeding it raw.
    /// `seed`: base seed of the sampler (each prompt gets its own stream from it).
    pub fn new(engine: Engine, chat: bool, seed: u64) -> Self {
        LocalTeacher {
            engine,
            chat,
            seed,
            cancelled: AtomicBool::new(false),
        }
    }

    fn complete_one(&self, prompt: &str, params: &SamplingParams) -> Result<Completion> {
        let text = if self.chat {
            self.engine
                .template(TemplateChoice::Auto)
                .render_instruction(prompt, "")?
        } else {
            prompt.to_string()
        };
        let ids = self.engine.encode_prompt(&text)?;
        let room = self
            .engine
            .model
            .context_length()
            .saturating_sub(ids.len() + 1);
        let gen = GenParams {
            max_new_tokens: (params.max_tokens as usize).min(room),
            sampler: SamplerConfig {
                temperature: params.temperature,
                top_p: params.top_p,
                // Prompt-dependent stream: replies do not depend on the order prompts arrive.
                seed: self.seed ^ fnv1a(prompt),
                ..SamplerConfig::default()
            },
            stop: params.stop.clone(),
            ignore_eos: false,
        };
        let out = self.engine.generate(&ids, &gen, &mut |_| {
            if self.cancelled.load(Ordering::Relaxed) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        Ok(Completion {
            text: out.text,
            finish: match out.finish {
                FinishReason::Length | FinishReason::Cancelled => Finish::Length,
                FinishReason::Eos | FinishReason::Stop => Finish::Stop,
            },
            usage: Usage {
                prompt_tokens: ids.len() as u64,
                completion_tokens: out.ids.len() as u64,
            },
        })
    }
}

impl Teacher for LocalTeacher {
    fn describe(&self) -> String {
        format!(
            "local:{}{}",
            self.engine.path.display(),
            if self.chat { " (chat template)" } else { "" }
        )
    }

    fn complete(&self, prompts: &[String], params: &SamplingParams) -> Result<Vec<Completion>> {
        prompts
            .iter()
            .map(|p| self.complete_one(p, params))
            .collect()
    }

    fn set_cancelled(&self, cancelled: bool) {
        self.cancelled.store(cancelled, Ordering::Relaxed);
    }
}

/// FNV-1a of a string: a stable per-prompt seed.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fresh::{random_llama_gguf, tiny_llama_config};
    use crate::model::quant::GgmlType;
    use crate::tokenizer::tiny_test_vocab;

    #[test]
    fn local_teacher_is_deterministic_per_prompt_and_counts_usage() {
        let tok = tiny_test_vocab();
        let w = random_llama_gguf(
            &tiny_llama_config(tok.tokens.len()),
            &tok,
            GgmlType::Q8_0,
            3,
        )
        .expect("model");
        let path =
            std::env::temp_dir().join(format!("alpaca-local-teacher-{}.gguf", std::process::id()));
        w.write(&path).expect("write");
        let t = LocalTeacher::new(Engine::load(&path).expect("load"), false, 9);
        let params = SamplingParams {
            max_tokens: 8,
            ..SamplingParams::default()
        };
        let prompts = vec!["the cat".to_string(), "a dog".to_string()];
        let a = t.complete(&prompts, &params).expect("complete");
        let b = t
            .complete(&[prompts[1].clone()], &params)
            .expect("complete");
        assert_eq!(a.len(), 2);
        assert_eq!(a[1], b[0], "a prompt's reply does not depend on its batch");
        assert!(a[0].usage.prompt_tokens > 0);
        assert!(a[0].usage.completion_tokens <= 8);
        let _ = std::fs::remove_file(path);
    }
}
