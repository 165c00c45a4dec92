//! Prompt templates: how an instruction (and optional input), or a conversation, becomes the
//! text a model continues.
//!
//! - Alpaca: the two Stanford Alpaca prompts, byte-exact (they are an interchange format);
//!   `AlpacaLora` is alpaca-lora's variant with a newline after `### Response:`.
//! - ChatML: `<|im_start|>role\ncontent<|im_end|>\n`, as used by SmolLM2 and Qwen.
//! - Model: the model's own Jinja chat template from its metadata (`tokenizer.chat_template`),
//!   rendered with minijinja plus Python-compatible string methods.
//! - Raw: the text as given.
//!
//! Choosing the template is here, keyed on metadata, never in the CLI.

use serde::Serialize;

use crate::error::{Error, Result};

/// Stanford Alpaca prompt for examples with an input.
pub const ALPACA_WITH_INPUT: &str = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:";
/// Stanford Alpaca prompt for examples without an input.
pub const ALPACA_NO_INPUT: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:";

/// A chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Which template renders prompts. Closed set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Template {
    Alpaca,
    AlpacaLora,
    ChatMl,
    Raw,
    /// A Jinja chat template with the special-token strings it may reference.
    Jinja {
        source: String,
        bos_token: String,
        eos_token: String,
    },
}

/// The user's choice on the command line (`--template`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateChoice {
    Auto,
    Alpaca,
    AlpacaLora,
    ChatMl,
    Raw,
}

impl std::str::FromStr for TemplateChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => TemplateChoice::Auto,
            "alpaca" => TemplateChoice::Alpaca,
            "alpaca-lora" => TemplateChoice::AlpacaLora,
            "chatml" => TemplateChoice::ChatMl,
            "raw" => TemplateChoice::Raw,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown template `{other}` (auto, alpaca, alpaca-lora, chatml, raw)"
                )))
            }
        })
    }
}

impl Template {
    /// Resolve a choice against the model's metadata. `Auto` uses the model's own chat
    /// template when it has one, else Alpaca (the format our fine-tunes are trained on).
    pub fn resolve(
        choice: TemplateChoice,
        chat_template: Option<&str>,
        bos_token: &str,
        eos_token: &str,
    ) -> Template {
        match choice {
            TemplateChoice::Alpaca => Template::Alpaca,
            TemplateChoice::AlpacaLora => Template::AlpacaLora,
            TemplateChoice::ChatMl => Template::ChatMl,
            TemplateChoice::Raw => Template::Raw,
            TemplateChoice::Auto => match chat_template {
                Some(src) => Template::Jinja {
                    source: src.to_string(),
                    bos_token: bos_token.to_string(),
                    eos_token: eos_token.to_string(),
                },
                None => Template::Alpaca,
            },
        }
    }

    /// The prompt for one instruction with an optional input. Alpaca templates use both
    /// fields; chat templates send them as one user message (input after a blank line).
    pub fn render_instruction(&self, instruction: &str, input: &str) -> Result<String> {
        match self {
            Template::Alpaca | Template::AlpacaLora => {
                let mut s = alpaca_prompt(instruction, input);
                if *self == Template::AlpacaLora {
                    s.push('\n');
                }
                Ok(s)
            }
            Template::Raw => Ok(if input.is_empty() {
                instruction.to_string()
            } else {
                format!("{instruction}\n\n{input}")
            }),
            _ => {
                let content = if input.is_empty() {
                    instruction.to_string()
                } else {
                    format!("{instruction}\n\n{input}")
                };
                self.render_chat(&[Message::new("user", content)], true)
            }
        }
    }

    /// Render a conversation. With `add_generation_prompt` the text ends where the
    /// assistant's answer begins.
    pub fn render_chat(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        match self {
            Template::ChatMl => {
                let mut s = String::new();
                for m in messages {
                    s.push_str(&format!(
                        "<|im_start|>{}\n{}<|im_end|>\n",
                        m.role, m.content
                    ));
                }
                if add_generation_prompt {
                    s.push_str("<|im_start|>assistant\n");
                }
                Ok(s)
            }
            Template::Jinja {
                source,
                bos_token,
                eos_token,
            } => render_jinja(
                source,
                messages,
                add_generation_prompt,
                bos_token,
                eos_token,
            ),
            Template::Alpaca | Template::AlpacaLora | Template::Raw => {
                // Single-turn formats: earlier turns become context in the instruction.
                let mut instruction = String::new();
                for m in messages.iter().filter(|m| m.role != "assistant") {
                    if !instruction.is_empty() {
                        instruction.push_str("\n\n");
                    }
                    instruction.push_str(&m.content);
                }
                self.render_instruction(&instruction, "")
            }
        }
    }
}

/// The Alpaca prompt for an instruction and optional input (byte-exact to Stanford Alpaca).
pub fn alpaca_prompt(instruction: &str, input: &str) -> String {
    if input.is_empty() {
        ALPACA_NO_INPUT.replace("{instruction}", instruction)
    } else {
        // Replace {input} first so an instruction containing "{input}" stays literal.
        ALPACA_WITH_INPUT
            .replacen("{input}", input, 1)
            .replacen("{instruction}", instruction, 1)
    }
}

fn render_jinja(
    source: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    let mut env = minijinja::Environment::new();
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template("chat", source)
        .map_err(|e| Error::Template(format!("model chat template does not parse: {e}")))?;
    let tmpl = env
        .get_template("chat")
        .map_err(|e| Error::Template(e.to_string()))?;
    tmpl.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    })
    .map_err(|e| Error::Template(format!("rendering the model chat template: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn alpaca_prompts_are_byte_exact() {
        assert_eq!(
            alpaca_prompt("Give three tips for staying healthy.", ""),
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nGive three tips for staying healthy.\n\n### Response:"
        );
        assert_eq!(
            alpaca_prompt("Translate.", "{instruction} hi"),
            "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\nTranslate.\n\n### Input:\n{instruction} hi\n\n### Response:"
        );
        let lora = Template::AlpacaLora.render_instruction("x", "").unwrap();
        assert!(lora.ends_with("### Response:\n"));
    }

    #[test]
    fn model_template_matches_chatml_with_default_system() {
        let t = Template::resolve(
            TemplateChoice::Auto,
            Some(SMOLLM_TEMPLATE),
            "<|im_start|>",
            "<|im_end|>",
        );
        let got = t.render_chat(&[Message::new("user", "Hi")], true).unwrap();
        assert_eq!(
            got,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let sys = [Message::new("system", "S"), Message::new("user", "Hi")];
        assert_eq!(
            t.render_chat(&sys, false).unwrap(),
            Template::ChatMl.render_chat(&sys, false).unwrap()
        );
    }

    #[test]
    fn jinja_errors_are_reported() {
        let t = Template::Jinja {
            source: "{% if %}".into(),
            bos_token: String::new(),
            eos_token: String::new(),
        };
        assert!(matches!(t.render_chat(&[], true), Err(Error::Template(_))));
        let t = Template::Jinja {
            source: "{{ raise_exception('no system role') }}".into(),
            bos_token: String::new(),
            eos_token: String::new(),
        };
        let e = t.render_chat(&[], true).unwrap_err().to_string();
        assert!(e.contains("no system role"), "{e}");
        // Python string methods used by real templates work.
        let t = Template::Jinja {
            source: "{{ messages[0]['content'].strip() }}".into(),
            bos_token: String::new(),
            eos_token: String::new(),
        };
        assert_eq!(
            t.render_chat(&[Message::new("user", "  x ")], false)
                .unwrap(),
            "x"
        );
    }
}
