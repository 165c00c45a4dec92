//! Quality filters for generated instruction data.
//!
//! Instruction filters are those of the Alpaca generator, with its semantics kept exactly
//! (Python `str.split()` word counts, `\b...\b` case-insensitive blacklist, `string.punctuation`
//! on the first character). Output filters are ours: the original never looked at outputs, and
//! empty or copied outputs are known defects of its data.
//!
//! Every filter can be switched off; [`Reject::name`] is the stable key used in reports and on
//! the command line (`--no-filter NAME`). ROUGE-L dedup is not here but in [`super::dedup`].

use std::collections::BTreeMap;
use std::fmt;

use super::rouge::tokenize;
use super::Example;

/// Words that make an instruction unsuitable for a text-only model (the original's list).
/// Matched as whole words, case-insensitively; "go to" is a two-word phrase.
pub const BLACKLIST: [&str; 18] = [
    "image",
    "images",
    "graph",
    "graphs",
    "picture",
    "pictures",
    "file",
    "files",
    "map",
    "maps",
    "draw",
    "plot",
    "go to",
    "video",
    "audio",
    "music",
    "flowchart",
    "diagram",
];

/// Why an item was rejected. Parse failures and duplicates are counted here too, so that one
/// report covers the whole pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reject {
    /// A reply chunk without the three `N. Instruction/Input/Output:` fields.
    Unparseable,
    /// The last chunk of a reply cut by the length limit.
    Truncated,
    /// 3 words or fewer.
    TooShort,
    /// More than 150 words.
    TooLong,
    /// Contains a blacklisted word.
    Blacklist,
    /// Starts with "Write a program".
    WriteAProgram,
    /// First character is ASCII punctuation.
    Punctuation,
    /// First character is not ASCII.
    NonAscii,
    /// Output is empty.
    EmptyOutput,
    /// Output is the input, verbatim.
    OutputIsInput,
    /// Output only repeats the instruction.
    OutputRepeatsInstruction,
    /// ROUGE-L above the threshold against a seed or a kept instruction.
    Duplicate,
}

impl Reject {
    pub const ALL: [Reject; 12] = [
        Reject::Unparseable,
        Reject::Truncated,
        Reject::TooShort,
        Reject::TooLong,
        Reject::Blacklist,
        Reject::WriteAProgram,
        Reject::Punctuation,
        Reject::NonAscii,
        Reject::EmptyOutput,
        Reject::OutputIsInput,
        Reject::OutputRepeatsInstruction,
        Reject::Duplicate,
    ];

    /// Stable snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            Reject::Unparseable => "unparseable",
            Reject::Truncated => "truncated",
            Reject::TooShort => "too_short",
            Reject::TooLong => "too_long",
            Reject::Blacklist => "blacklist",
            Reject::WriteAProgram => "write_a_program",
            Reject::Punctuation => "punctuation",
            Reject::NonAscii => "non_ascii",
            Reject::EmptyOutput => "empty_output",
            Reject::OutputIsInput => "output_is_input",
            Reject::OutputRepeatsInstruction => "output_repeats_instruction",
            Reject::Duplicate => "duplicate",
        }
    }

    pub fn from_name(name: &str) -> Option<Reject> {
        Reject::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which filters run, and the word-count window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterConfig {
    /// Fewer words than this is too short (original: 4, i.e. `<= 3` rejected).
    pub min_words: usize,
    /// More words than this is too long (original: 150).
    pub max_words: usize,
    /// Filters switched off.
    pub disabled: Vec<Reject>,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            min_words: 4,
            max_words: 150,
            disabled: Vec::new(),
        }
    }
}

impl FilterConfig {
    fn on(&self, r: Reject) -> bool {
        !self.disabled.contains(&r)
    }

    /// The original's instruction filters, in its order. `None` means the instruction passes.
    pub fn check_instruction(&self, inst: &str) -> Option<Reject> {
        let words = inst.split(py_space).filter(|w| !w.is_empty()).count();
        if self.on(Reject::TooShort) && words < self.min_words {
            return Some(Reject::TooShort);
        }
        if self.on(Reject::TooLong) && words > self.max_words {
            return Some(Reject::TooLong);
        }
        if self.on(Reject::Blacklist) && BLACKLIST.iter().any(|w| contains_word(inst, w)) {
            return Some(Reject::Blacklist);
        }
        if self.on(Reject::WriteAProgram) && inst.starts_with("Write a program") {
            return Some(Reject::WriteAProgram);
        }
        let first = inst.chars().next();
        if self.on(Reject::Punctuation) && first.is_some_and(|c| c.is_ascii_punctuation()) {
            return Some(Reject::Punctuation);
        }
        if self.on(Reject::NonAscii) && first.is_some_and(|c| !c.is_ascii()) {
            return Some(Reject::NonAscii);
        }
        None
    }

    /// Our output filters. `None` means the output passes.
    pub fn check_output(&self, ex: &Example) -> Option<Reject> {
        let out = ex.output.trim_matches(py_space);
        if self.on(Reject::EmptyOutput) && out.is_empty() {
            return Some(Reject::EmptyOutput);
        }
        if self.on(Reject::OutputIsInput)
            && !ex.input.is_empty()
            && out == ex.input.trim_matches(py_space)
        {
            return Some(Reject::OutputIsInput);
        }
        if self.on(Reject::OutputRepeatsInstruction) {
            let o = tokenize(out);
            if !o.is_empty() && o == tokenize(&ex.instruction) {
                return Some(Reject::OutputRepeatsInstruction);
            }
        }
        None
    }

    /// Instruction filters, then output filters.
    pub fn check(&self, ex: &Example) -> Option<Reject> {
        self.check_instruction(&ex.instruction)
            .or_else(|| self.check_output(ex))
    }
}

/// Python's `str.isspace()`: Unicode White_Space plus the ASCII information separators.
pub fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python `re`'s `\w` for a character (Unicode alphanumerics and underscore).
fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `re.search(r"\b(word)\b", s, re.IGNORECASE)` for an ASCII `word`.
pub fn contains_word(s: &str, word: &str) -> bool {
    let w = word.as_bytes();
    let b = s.as_bytes();
    if w.is_empty() || b.len() < w.len() {
        return false;
    }
    for start in 0..=b.len() - w.len() {
        if !s.is_char_boundary(start) || !b[start..start + w.len()].eq_ignore_ascii_case(w) {
            continue;
        }
        let before = s[..start].chars().next_back();
        let after = s[start + w.len()..].chars().next();
        if !before.is_some_and(is_word) && !after.is_some_and(is_word) {
            return true;
        }
    }
    false
}

/// Rejection counts by reason, for reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RejectCounts(pub BTreeMap<Reject, u64>);

impl RejectCounts {
    pub fn add(&mut self, r: Reject) {
        *self.0.entry(r).or_default() += 1;
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn get(&self, r: Reject) -> u64 {
        self.0.get(&r).copied().unwrap_or(0)
    }
}

/// Run the filters over a data set: kept examples in order, and the counts of the rest.
pub fn filter_examples(examples: &[Example], cfg: &FilterConfig) -> (Vec<Example>, RejectCounts) {
    let mut kept = Vec::new();
    let mut counts = RejectCounts::default();
    for ex in examples {
        match cfg.check(ex) {
            Some(r) => counts.add(r),
            None => kept.push(ex.clone()),
        }
    }
    (kept, counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruction_filters() {
        let f = FilterConfig::default();
        assert_eq!(f.check_instruction("Too few words"), Some(Reject::TooShort));
        assert_eq!(
            f.check_instruction(&"word ".repeat(151)),
            Some(Reject::TooLong)
        );
        assert_eq!(f.check_instruction(&"word ".repeat(150)), None);
        assert_eq!(
            f.check_instruction("Describe the IMAGE below in detail."),
            Some(Reject::Blacklist)
        );
        assert_eq!(
            f.check_instruction("Describe the imagery of this poem."),
            None
        );
        assert_eq!(
            f.check_instruction("Tell me how to go to school."),
            Some(Reject::Blacklist)
        );
        assert_eq!(f.check_instruction("Explain what a file_system is."), None); // `_` is a word char
        assert_eq!(
            f.check_instruction("Write a program that adds numbers."),
            Some(Reject::WriteAProgram)
        );
        assert_eq!(
            f.check_instruction("\"Quote\" this sentence for me please."),
            Some(Reject::Punctuation)
        );
        assert_eq!(
            f.check_instruction("Éxplain the rules of chess briefly."),
            Some(Reject::NonAscii)
        );
        let off = FilterConfig {
            disabled: vec![Reject::Blacklist],
            ..FilterConfig::default()
        };
        assert_eq!(
            off.check_instruction("Describe the image below in detail."),
            None
        );
    }

    #[test]
    fn output_filters() {
        let f = FilterConfig::default();
        let ex = |i: &str, n: &str, o: &str| Example::new(i, n, o);
        assert_eq!(
            f.check_output(&ex("Say hi to me now.", "", "  ")),
            Some(Reject::EmptyOutput)
        );
        assert_eq!(
            f.check_output(&ex("Fix the grammar here.", "he go", "he go")),
            Some(Reject::OutputIsInput)
        );
        assert_eq!(
            f.check_output(&ex(
                "Name three primary colours.",
                "",
                "Name three primary colours!"
            )),
            Some(Reject::OutputRepeatsInstruction)
        );
        assert_eq!(
            f.check_output(&ex("Name three primary colours.", "", "Red, yellow, blue.")),
            None
        );
    }

    #[test]
    fn names_round_trip() {
        for r in Reject::ALL {
            assert_eq!(Reject::from_name(r.name()), Some(r));
        }
    }
}
