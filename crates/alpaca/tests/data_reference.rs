//! Agreement with the Python reference (scripts/selfinstruct_reference.py over Google's
//! `rouge_score`): ROUGE-L bit for bit on thousands of pairs, and parse + filter + dedup of the
//! same teacher replies with the same kept set. Needs python3 with rouge_score and the shared
//! data files, so it is ignored by default:
//!
//!     cargo test -p alpaca --test data_reference -- --ignored --nocapture

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use alpaca::data::filter::{FilterConfig, Reject};
use alpaca::data::io::{read_examples, read_seed_tasks};
use alpaca::data::rouge::rouge_l;
use alpaca::data::Example;
use alpaca::generate::{
    generate, Completion, Finish, GenerateConfig, OpenMode, ParseMode, Scripted, Store, Usage,
};
use serde_json::json;

fn shared(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data")
        .join(name)
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/selfinstruct_reference.py")
}

fn python(args: &[&str]) -> (String, String) {
    let out = Command::new("python3")
        .arg(script())
        .args(args)
        .output()
        .expect("python3");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "python failed: {err}");
    (String::from_utf8(out.stdout).unwrap(), err)
}

fn lcg(s: &mut u64) -> u64 {
    *s = s
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *s >> 33
}

fn instructions() -> Vec<String> {
    let mut v: Vec<String> = read_examples(&shared("alpaca_en_demo.json"))
        .unwrap()
        .examples
        .into_iter()
        .map(|e| e.instruction)
        .collect();
    v.extend(
        read_seed_tasks(&shared("seed_tasks.jsonl"))
            .unwrap()
            .into_iter()
            .map(|s| s.instruction),
    );
    v.extend(
        read_examples(&shared("user_oriented_instructions.jsonl"))
            .map(|d| d.examples)
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.instruction),
    );
    // Tokenizer corner cases.
    for s in [
        "İstanbul'da ne yapılır? \u{212A}elvin scale",
        "naïve café résumé",
        "ǅemal ﬁle ß straße",
        "a_b c-d e.f 3.14 x²",
        "",
        "   ",
        "!!!",
        "ＦＵＬＬＷＩＤＴＨ text",
        "tab\tand\u{a0}nbsp",
    ] {
        v.push(s.to_string());
    }
    v
}

#[test]
#[ignore = "needs python3 + rouge_score and ../shared/data"]
fn rouge_l_is_bit_identical_to_rouge_score() {
    let insts = instructions();
    let mut s = 1u64;
    let mut pairs = Vec::new();
    for _ in 0..3000 {
        let a = &insts[lcg(&mut s) as usize % insts.len()];
        let b = match lcg(&mut s) % 3 {
            // near-copies land around the 0.7 threshold
            0 => {
                let mut w: Vec<&str> = a.split(' ').collect();
                for _ in 0..(1 + lcg(&mut s) % 3) {
                    if !w.is_empty() {
                        let i = lcg(&mut s) as usize % w.len();
                        w.remove(i);
                    }
                }
                w.join(" ")
            }
            _ => insts[lcg(&mut s) as usize % insts.len()].clone(),
        };
        pairs.push((a.clone(), b));
    }
    let dir = std::env::temp_dir().join(format!("alpaca-ref-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pairs.jsonl");
    let text: String = pairs
        .iter()
        .map(|(a, b)| json!({"a": a, "b": b}).to_string() + "\n")
        .collect();
    std::fs::write(&file, text).unwrap();
    let (out, _) = python(&["rouge", "--pairs", file.to_str().unwrap()]);
    let py: Vec<f64> = out.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(py.len(), pairs.len());
    let mut near = 0;
    for ((a, b), want) in pairs.iter().zip(&py) {
        let got = rouge_l(a, b);
        assert_eq!(
            got.to_bits(),
            want.to_bits(),
            "{a:?} vs {b:?}: {got} != {want}"
        );
        near += (0.6..0.8).contains(want) as usize;
    }
    eprintln!(
        "{} pairs bit-identical ({near} scored in [0.6, 0.8))",
        pairs.len()
    );
}

const DEFECTS: [&str; 9] = [
    "Draw a simple house for me.",
    "Summarize the plot of this VIDEO in detail.",
    "Tell me how to go to the station from here.",
    "Write a program that prints the first ten primes.",
    "\"Quote\" a famous line from a Shakespeare play.",
    "Élaborez une recette de crêpes pour quatre personnes.",
    "Name three.",
    "LONG",
    "Explain the difference between a file_name and a path.",
];

/// Teacher replies in the self-instruct layout built from real instruction data, with the
/// defects of real replies: misnumbered items, a missing marker, cut replies, odd `<noinput>`.
fn replies() -> Vec<(String, Finish)> {
    let data: Vec<Example> = read_examples(&shared("alpaca_en_demo.json"))
        .unwrap()
        .examples;
    let mut s = 3u64;
    let mut out = Vec::new();
    let mut next = 0usize;
    for r in 0..120 {
        let mut text = String::new();
        for n in 4..20 {
            let ex = &data[next % data.len()];
            next += 1;
            // Every 7th reply repeats earlier items: near-duplicates for the dedup.
            let ex = if r % 7 == 6 {
                &data[(next * 31) % next.max(1)]
            } else {
                ex
            };
            // One item in eight carries an instruction the original's filters reject.
            let defect = DEFECTS[lcg(&mut s) as usize % DEFECTS.len()];
            let long = "word ".repeat(151);
            let ex = &match lcg(&mut s) % 8 {
                0 if defect == "LONG" => Example::new(long, "", "x"),
                0 => Example::new(defect, "", "An answer."),
                _ => ex.clone(),
            };
            let mut num = n;
            if lcg(&mut s).is_multiple_of(25) {
                num += 1; // misnumbered
            }
            let input = if ex.input.is_empty() {
                ["<noinput>", "<NoInput>", " <noinput> "][lcg(&mut s) as usize % 3].to_string()
            } else {
                ex.input.clone()
            };
            if n > 4 {
                text.push_str(&format!("###\n{num}. Instruction: "));
            } else {
                text.push(' ');
            }
            let input_marker = if lcg(&mut s).is_multiple_of(40) {
                "Inptu"
            } else {
                "Input"
            };
            text.push_str(&format!(
                "{}\n{num}. {input_marker}:\n{input}\n{num}. Output:\n{}\n",
                ex.instruction, ex.output
            ));
        }
        let finish = if r % 4 == 1 {
            let cut = text.len() * 9 / 10;
            let cut = (0..=cut).rev().find(|&i| text.is_char_boundary(i)).unwrap();
            text.truncate(cut);
            Finish::Length
        } else {
            Finish::Stop
        };
        out.push((text, finish));
    }
    out
}

#[test]
#[ignore = "needs python3 + rouge_score and ../shared/data"]
fn parse_filter_dedup_keep_the_same_items_as_the_reference() {
    let replies = replies();
    let dir = std::env::temp_dir().join(format!("alpaca-ref-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("replies.jsonl");
    let text: String = replies
        .iter()
        .map(|(t, f)| json!({"text": t, "finish_reason": if *f == Finish::Length { "length" } else { "stop" }}).to_string() + "\n")
        .collect();
    std::fs::write(&file, text).unwrap();
    let seeds_path = shared("seed_tasks.jsonl");
    let (out, err) = python(&[
        "process",
        "--replies",
        file.to_str().unwrap(),
        "--seeds",
        seeds_path.to_str().unwrap(),
    ]);
    let py: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let py_rejected: serde_json::Value = serde_json::from_str(err.lines().last().unwrap()).unwrap();

    let run = |mode: ParseMode| {
        let counter = AtomicUsize::new(0);
        let replies = replies.clone();
        let teacher = Scripted::new("replay", 1, move |_p: &str| {
            let (text, finish) = replies[counter.fetch_add(1, Ordering::SeqCst)].clone();
            Completion {
                text,
                finish,
                usage: Usage::default(),
            }
        });
        let cfg = GenerateConfig {
            target: usize::MAX,
            concurrency: 1,
            prompts_per_request: 1,
            parse_mode: mode,
            max_prompts: Some(120),
            filters: FilterConfig {
                // The original has no output filters.
                disabled: vec![
                    Reject::EmptyOutput,
                    Reject::OutputIsInput,
                    Reject::OutputRepeatsInstruction,
                ],
                ..FilterConfig::default()
            },
            ..GenerateConfig::default()
        };
        let path = dir.join(format!("{mode:?}.jsonl"));
        let seeds = read_seed_tasks(&seeds_path).unwrap();
        let report = generate(
            &teacher,
            &seeds,
            Store::open(&path, OpenMode::Overwrite).unwrap(),
            &cfg,
            &mut |_| {},
        )
        .unwrap();
        (Store::open(&path, OpenMode::Resume).unwrap().items, report)
    };
    let (ours, report) = run(ParseMode::Original);
    assert_eq!(ours.len(), py.len(), "kept count");
    for (a, b) in ours.iter().zip(&py) {
        assert_eq!(a.instruction, b["instruction"].as_str().unwrap());
        assert_eq!(a.input, b["input"].as_str().unwrap());
        assert_eq!(a.output, b["output"].as_str().unwrap());
        let avg = b["avg_similarity_score"].as_f64().unwrap();
        assert!(
            (a.avg_similarity_score - avg).abs() < 1e-12,
            "{} vs {avg}",
            a.avg_similarity_score
        );
        // Top-10 scores agree exactly (ties may list different instructions).
        let mut sa: Vec<u64> = a
            .most_similar_instructions
            .iter()
            .map(|s| s.score.to_bits())
            .collect();
        let mut sb: Vec<u64> = b["most_similar_instructions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[1].as_f64().unwrap().to_bits())
            .collect();
        sa.sort_unstable();
        sb.sort_unstable();
        assert_eq!(sa, sb, "{}", a.instruction);
    }
    for (name, n) in py_rejected.as_object().unwrap() {
        let r = Reject::from_name(name).unwrap();
        assert_eq!(report.rejected.get(r), n.as_u64().unwrap(), "{name}");
    }
    let (forgiving, frep) = run(ParseMode::Forgiving);
    eprintln!(
        "{} replies: reference and ours (original parser) keep the same {} items; rejections {py_rejected}. \
         Forgiving parser keeps {} (unparseable {} instead of {}).",
        replies.len(),
        ours.len(),
        forgiving.len(),
        frep.rejected.get(Reject::Unparseable),
        report.rejected.get(Reject::Unparseable)
    );
    assert!(forgiving.len() > ours.len());
}
