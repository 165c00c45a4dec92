//! Tests of the generation loop with scripted teachers (no network).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::teacher::synthetic_reply;
use super::*;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("alpaca-gen-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("store.jsonl")
}

fn run(teacher: &dyn Teacher, path: &Path, mode: OpenMode, cfg: &GenerateConfig) -> Report {
    let seeds = default_seeds().unwrap();
    let opened = Store::open(path, mode).unwrap();
    generate(teacher, &seeds, opened, cfg, &mut |_| {}).unwrap()
}

fn cfg(target: usize, concurrency: usize) -> GenerateConfig {
    GenerateConfig {
        target,
        seed: 7,
        concurrency,
        ..GenerateConfig::default()
    }
}

#[test]
fn embedded_seeds_are_valid_and_many() {
    let seeds = default_seeds().unwrap();
    assert!(seeds.len() >= 100);
    let names: std::collections::HashSet<_> = seeds.iter().map(|s| &s.name).collect();
    assert_eq!(names.len(), seeds.len());
}

#[test]
fn reaches_target_with_filters_and_dedup() {
    let path = tmp("target");
    let t = Scripted::synthetic(5);
    let r = run(&t, &path, OpenMode::Overwrite, &cfg(120, 3));
    assert!(r.target_reached);
    assert_eq!(r.progress.kept, 120);
    let items = Store::open(&path, OpenMode::Resume).unwrap().items;
    assert_eq!(items.len(), 120);
    for (i, it) in items.iter().enumerate() {
        assert!(it.most_similar_instructions.len() == 10);
        assert!(it.most_similar_instructions[0].score <= 0.7);
        assert!(it.avg_similarity_score > 0.0);
        for earlier in &items[..i] {
            assert!(crate::data::rouge::rouge_l(&it.instruction, &earlier.instruction) <= 0.7);
        }
    }
    // The synthetic teacher produces every kind of defect.
    for reason in [
        Reject::Duplicate,
        Reject::Truncated,
        Reject::Blacklist,
        Reject::TooShort,
    ] {
        assert!(r.rejected.get(reason) > 0, "{reason}: {:?}", r.rejected);
    }
    assert!(r.progress.usage.completion_tokens > 0);
}

#[test]
fn same_seed_same_store_whatever_the_concurrency_or_batch() {
    let slow = Scripted::new("slow", 3, |p: &str| {
        // Replies come back out of order.
        std::thread::sleep(Duration::from_millis((p.len() % 7) as u64));
        synthetic_reply(p)
    });
    let a = tmp("c1");
    let b = tmp("c8");
    run(
        &Scripted::synthetic(5),
        &a,
        OpenMode::Overwrite,
        &cfg(80, 1),
    );
    run(&slow, &b, OpenMode::Overwrite, &cfg(80, 8));
    let ia = Store::open(&a, OpenMode::Resume).unwrap().items;
    let ib: Vec<StoredItem> = Store::open(&b, OpenMode::Resume).unwrap().items;
    let strip = |v: Vec<StoredItem>| -> Vec<_> {
        v.into_iter()
            .map(|i| (i.instruction, i.input, i.output, i.prompt))
            .collect()
    };
    assert_eq!(strip(ia), strip(ib));
}

#[test]
fn crash_and_resume_equals_clean_run() {
    let t = Scripted::synthetic(5);
    let clean = tmp("clean");
    run(&t, &clean, OpenMode::Overwrite, &cfg(90, 2));
    let want = std::fs::read_to_string(&clean).unwrap();
    let lines: Vec<&str> = want.lines().collect();
    // Simulate crashes: keep k whole lines plus part of the next one, then resume.
    for k in [0usize, 1, 13, 44, 89] {
        let path = tmp(&format!("crash{k}"));
        let mut text: String = lines[..k].iter().map(|l| format!("{l}\n")).collect();
        text.push_str(&lines[k][..lines[k].len() / 2]);
        std::fs::write(&path, text).unwrap();
        run(&t, &path, OpenMode::Resume, &cfg(90, 2));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            want,
            "crash after {k} items"
        );
    }
    // Another seed cannot resume this store.
    let other = GenerateConfig {
        seed: 8,
        ..cfg(90, 2)
    };
    let opened = Store::open(&clean, OpenMode::Resume).unwrap();
    let err = generate(&t, &default_seeds().unwrap(), opened, &other, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("--seed 7"), "{err}");
    // Resuming a finished store does nothing; raising the target extends it.
    let r = run(&t, &clean, OpenMode::Resume, &cfg(90, 2));
    assert_eq!(r.progress.prompts, 0);
    run(&t, &clean, OpenMode::Resume, &cfg(100, 2));
    let longer = tmp("longer");
    run(&t, &longer, OpenMode::Overwrite, &cfg(100, 2));
    assert_eq!(
        std::fs::read_to_string(&clean).unwrap(),
        std::fs::read_to_string(&longer).unwrap()
    );
}

#[test]
fn teacher_errors_abort_and_bad_counts_are_caught() {
    struct Broken;
    impl Teacher for Broken {
        fn describe(&self) -> String {
            "broken".into()
        }
        fn complete(&self, _: &[String], _: &SamplingParams) -> crate::Result<Vec<Completion>> {
            Err(Error::Teacher("HTTP 401: check the API key".into()))
        }
    }
    let path = tmp("broken");
    let seeds = default_seeds().unwrap();
    let opened = Store::open(&path, OpenMode::Overwrite).unwrap();
    let err = generate(&Broken, &seeds, opened, &cfg(10, 4), &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("401"));
    let short = Scripted::new("short", 5, |_: &str| Completion {
        text: String::new(),
        finish: Finish::Stop,
        usage: Usage::default(),
    });
    // A teacher whose replies never parse stops at max_prompts instead of looping forever.
    let c = GenerateConfig {
        max_prompts: Some(12),
        ..cfg(10, 2)
    };
    let r = run(&short, &path, OpenMode::Overwrite, &c);
    assert!(!r.target_reached);
    assert_eq!(r.progress.prompts, 12);
}
