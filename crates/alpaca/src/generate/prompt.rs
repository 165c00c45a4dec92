//! Self-instruct prompts: a header asking for 20 tasks, 3 sampled seed tasks as numbered
//! examples, then the opening of the next task, in the layout of the original:
//!
//! ```text
//! <header>
//! ###
//! 1. Instruction: ...
//! 1. Input:
//! <input or <noinput>>
//! 1. Output:
//! <output>
//! ###            (repeated for 2 and 3)
//! 4. Instruction:
//! ```
//!
//! The header is ours (`DEFAULT_HEADER`) or any text the user gives (`--prompt-file`), used
//! verbatim, so the original prompt file can be plugged in unchanged.
//!
//! Seeds for prompt number `p` are drawn with an RNG derived from `(seed, p)` only, so a
//! resumed run rebuilds exactly the prompts a clean run would have sent.

use crate::data::io::SeedTask;

/// Our instruction block (own wording, same requirements as the original's).
pub const DEFAULT_HEADER: &str = "\
Please write 20 new tasks that a person could give to an AI assistant. They will be used to \
teach a language model to follow instructions, and its answers to them will be checked.

Guidelines:
1. Vary the verbs: do not start two tasks the same way, and never repeat a task.
2. Vary the kind of task: open writing, brainstorming, classification, rewriting, editing, \
extraction, questions about facts, reasoning, arithmetic, programming, advice, and so on.
3. Every task must be something a text-only model can do. Nothing that needs seeing, hearing, \
drawing or acting in the world (no pictures, no reminders, no web browsing).
4. Use English throughout.
5. An instruction is one or two sentences, as a question or as a request.
6. Give an input only when the task needs one, and then make it real content (a short email, a \
paragraph, a list, some code) of at most 100 words, not a topic name. Otherwise write <noinput> \
as the input.
7. The output must be a correct, helpful answer to the task, shorter than 100 words.

List of 20 tasks:";

// ------------------------------------------------------------------------------------ rng

/// SplitMix64: small, fast, good enough to sample seed tasks, and fully specified here so a
/// seed means the same prompts on every platform and version.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(state: u64) -> Self {
        Rng(state)
    }

    /// The RNG for prompt number `p` of a run seeded with `seed`.
    pub fn for_prompt(seed: u64, p: u64) -> Self {
        let mut a = Rng(seed);
        let mut b = Rng(p ^ 0xA076_1D64_78BD_642F);
        Rng(a.next_u64() ^ b.next_u64().rotate_left(17))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// `k` distinct indices from `0..n` in sampling order (k is capped at n).
    pub fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut pool: Vec<usize> = (0..n).collect();
        let k = k.min(n);
        for i in 0..k {
            let j = i + self.below((n - i) as u64) as usize;
            pool.swap(i, j);
        }
        pool.truncate(k);
        pool
    }
}

// ------------------------------------------------------------------------------------ prompt

/// Everything needed to build prompt number `p`.
#[derive(Clone, Debug)]
pub struct PromptBuilder {
    pub header: String,
    pub seeds: Vec<SeedTask>,
    pub per_prompt: usize,
    pub seed: u64,
}

impl PromptBuilder {
    /// Number of the task the teacher continues with (4 with 3 examples).
    pub fn first_new(&self) -> usize {
        self.per_prompt.min(self.seeds.len()) + 1
    }

    /// The seed tasks shown in prompt `p`.
    pub fn examples(&self, p: u64) -> Vec<&SeedTask> {
        let mut rng = Rng::for_prompt(self.seed, p);
        rng.sample(self.seeds.len(), self.per_prompt)
            .into_iter()
            .map(|i| &self.seeds[i])
            .collect()
    }

    /// Prompt number `p`.
    pub fn build(&self, p: u64) -> String {
        encode(&self.header, &self.examples(p))
    }
}

/// Collapse whitespace runs to one space and trim (Python `re.sub(r"\s+", " ", s).strip()`).
fn squash(s: &str) -> String {
    s.split(crate::data::filter::py_space)
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Lay out a prompt from a header and example tasks, as the original does.
pub fn encode(header: &str, examples: &[&SeedTask]) -> String {
    let mut prompt = format!("{header}\n");
    for (i, task) in examples.iter().enumerate() {
        let ex = task.example();
        let instruction = squash(&ex.instruction);
        let instruction = instruction.trim_end_matches(':');
        let input = if ex.input.is_empty() {
            "<noinput>"
        } else {
            ex.input.as_str()
        };
        let n = i + 1;
        prompt.push_str(&format!(
            "###\n{n}. Instruction: {instruction}\n{n}. Input:\n{input}\n{n}. Output:\n{}\n",
            ex.output
        ));
    }
    prompt.push_str(&format!("###\n{}. Instruction:", examples.len() + 1));
    prompt
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::io::SeedInstance;

    fn seed(i: usize, input: &str) -> SeedTask {
        SeedTask {
            id: format!("s{i}"),
            name: format!("n{i}"),
            instruction: format!("Do  task\nnumber {i}:"),
            instances: vec![SeedInstance {
                input: input.to_string(),
                output: format!("out {i}"),
            }],
            is_classification: false,
        }
    }

    #[test]
    fn layout_matches_the_original() {
        let s0 = seed(0, "");
        let s1 = seed(1, "some input");
        let p = encode("HEADER", &[&s0, &s1]);
        assert_eq!(
            p,
            "HEADER\n###\n1. Instruction: Do task number 0\n1. Input:\n<noinput>\n1. Output:\nout 0\n\
             ###\n2. Instruction: Do task number 1\n2. Input:\nsome input\n2. Output:\nout 1\n###\n3. Instruction:"
        );
    }

    #[test]
    fn prompts_depend_only_on_seed_and_index() {
        let b = PromptBuilder {
            header: "H".into(),
            seeds: (0..50).map(|i| seed(i, "")).collect(),
            per_prompt: 3,
            seed: 42,
        };
        assert_eq!(b.build(7), b.build(7));
        assert_ne!(b.build(7), b.build(8));
        let ex = b.examples(3);
        assert_eq!(ex.len(), 3);
        assert!(ex[0].id != ex[1].id && ex[1].id != ex[2].id && ex[0].id != ex[2].id);
        let other = PromptBuilder {
            seed: 43,
            ..b.clone()
        };
        assert_ne!(b.build(7), other.build(7));
    }
}
