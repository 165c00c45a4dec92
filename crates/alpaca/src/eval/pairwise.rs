//! AlpacaEval-style pairwise comparison of two prediction files, A (the reference) and B
//! (the candidate), instruction by instruction.
//!
//! Each pair is judged in both orders: `ab` shows A as response (a), `ba` shows B first. A
//! verdict becomes B's score in that order (1 = B better, 0.5 = tie, 0 = A better); the
//! instruction's score is the mean of the two orders, so a judge that always picks the same
//! position gives a tie. B wins an instruction when its score is above 0.5 and loses below.
//! The win rate is the mean score (ties count half), with a bootstrap interval; the report
//! also counts the instructions where the two orders disagree (`disagreements`) and, among
//! them, those where each order picked a different response (`flips`, pure position bias).
//!
//! Identical responses are a tie without asking the judge. Judgments are appended to a
//! JSONL file as they come, so an interrupted comparison continues where it stopped.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::bootstrap::{mean_interval, Interval};
use super::judge::{Judge, Pair, Preference, Verdict};
use super::log::{finish, JsonlLog};
use super::predict::Prediction;
use crate::error::{Error, Result};

/// Which response the judge saw first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// A first.
    Ab,
    /// B first.
    Ba,
}

/// One judge call, as stored in `judgments.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgment {
    pub id: String,
    pub order: Order,
    pub judge: String,
    /// FNV-1a of the two responses as shown (see [`responses_key`]): a resumed comparison
    /// refuses judgments of responses that have changed since.
    pub responses: String,
    pub verdict: Verdict,
}

/// The key of two responses in the order shown: FNV-1a 64 of `first \0 second` (trimmed),
/// in hex.
pub fn responses_key(first: &str, second: &str) -> String {
    let h = [first.trim(), "\0", second.trim()]
        .iter()
        .flat_map(|s| s.bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("{h:016x}")
}

/// The combined result for one instruction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub id: String,
    /// B's score with A shown first, and with B shown first.
    pub score_ab: f64,
    pub score_ba: f64,
}

impl Outcome {
    /// B's score for the instruction: the mean of the two orders.
    pub fn score(&self) -> f64 {
        (self.score_ab + self.score_ba) / 2.0
    }
}

/// B's score in one order.
pub fn score_b(order: Order, p: Preference) -> f64 {
    match (order, p) {
        (_, Preference::Tie) => 0.5,
        (Order::Ab, Preference::Second) | (Order::Ba, Preference::First) => 1.0,
        _ => 0.0,
    }
}

/// The counts of a comparison, from B's side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    pub a: String,
    pub b: String,
    pub judge: String,
    pub n: usize,
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
    /// Mean score of B (ties count half).
    pub win_rate: f64,
    pub interval: Option<Interval>,
    /// Instructions where the two orders gave different verdicts.
    pub disagreements: usize,
    /// Disagreements where each order preferred a different response (position bias).
    pub flips: usize,
    /// Times the judge preferred the response shown first, of its decisive verdicts.
    pub first_position_picks: usize,
    pub decisive_verdicts: usize,
    /// Mean over instructions and orders of the judge's probability that B is better
    /// (log-probability judges only).
    pub mean_p_b: Option<f64>,
    /// Pairs with identical responses (ties without a judge call).
    pub identical: usize,
    /// Log-probability judges only: the verdicts recomputed from the logit margins, with the
    /// judge's position bias cancelled (see [`logit_margin`]).
    #[serde(default)]
    pub debiased: Option<Counts>,
}

/// Wins, ties and losses of B, with the win rate and its interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
    pub win_rate: f64,
    pub interval: Option<Interval>,
}

/// B's advantage in logits, free of position bias: with `d_ab` = logit(a) - logit(b) when A
/// is shown first and `d_ba` the same with B first, a constant preference `c` for the first
/// position enters both (`d_ab = c + sA - sB`, `d_ba = c + sB - sA`), so
/// `(d_ba - d_ab) / 2 = sB - sA`. `None` unless both verdicts carry a probability.
pub fn logit_margin(ab: &Verdict, ba: &Verdict) -> Option<f64> {
    let logit = |v: &Verdict| {
        if v.raw == IDENTICAL {
            return Some(0.0);
        }
        v.p_first.map(|p| p.ln() - (1.0 - p).ln())
    };
    Some((logit(ba)? - logit(ab)?) / 2.0)
}

/// Combine both orders per instruction and count.
pub fn tally(
    a: &str,
    b: &str,
    judge: &str,
    judgments: &[Judgment],
    resamples: usize,
    seed: u64,
) -> (Tally, Vec<Outcome>) {
    let mut by_id: HashMap<&str, [Option<&Judgment>; 2]> = HashMap::new();
    let mut order_ids: Vec<&str> = Vec::new();
    for j in judgments {
        let slot = by_id.entry(j.id.as_str()).or_insert_with(|| {
            order_ids.push(j.id.as_str());
            [None, None]
        });
        slot[(j.order == Order::Ba) as usize] = Some(j);
    }
    let mut t = Tally {
        a: a.into(),
        b: b.into(),
        judge: judge.into(),
        n: 0,
        wins: 0,
        ties: 0,
        losses: 0,
        win_rate: 0.0,
        interval: None,
        disagreements: 0,
        flips: 0,
        first_position_picks: 0,
        decisive_verdicts: 0,
        mean_p_b: None,
        identical: 0,
        debiased: None,
    };
    let mut outcomes = Vec::new();
    let mut margins: Vec<Option<f64>> = Vec::new();
    let (mut p_sum, mut p_n) = (0.0, 0usize);
    for id in order_ids {
        let [Some(ab), Some(ba)] = by_id[id] else {
            continue; // one order still missing
        };
        let o = Outcome {
            id: id.to_string(),
            score_ab: score_b(Order::Ab, ab.verdict.preference),
            score_ba: score_b(Order::Ba, ba.verdict.preference),
        };
        t.n += 1;
        match o.score() {
            s if s > 0.5 => t.wins += 1,
            s if s < 0.5 => t.losses += 1,
            _ => t.ties += 1,
        }
        if o.score_ab != o.score_ba {
            t.disagreements += 1;
            if (o.score_ab - o.score_ba).abs() == 1.0 {
                t.flips += 1;
            }
        }
        if ab.verdict.raw == IDENTICAL {
            t.identical += 1;
        }
        for j in [ab, ba] {
            if j.verdict.raw == IDENTICAL {
                continue;
            }
            if j.verdict.preference != Preference::Tie {
                t.decisive_verdicts += 1;
                t.first_position_picks += (j.verdict.preference == Preference::First) as usize;
            }
            if let Some(p) = j.verdict.p_first {
                p_sum += if j.order == Order::Ab { 1.0 - p } else { p };
                p_n += 1;
            }
        }
        margins.push(logit_margin(&ab.verdict, &ba.verdict));
        outcomes.push(o);
    }
    let scores: Vec<f64> = outcomes.iter().map(Outcome::score).collect();
    t.win_rate = scores.iter().sum::<f64>() / scores.len().max(1) as f64;
    t.interval = mean_interval(&scores, resamples, 0.95, seed);
    t.mean_p_b = (p_n > 0).then(|| p_sum / p_n as f64);
    let margins: Option<Vec<f64>> = margins.into_iter().collect();
    if let Some(m) = margins.filter(|m| !m.is_empty()) {
        let scores: Vec<f64> = m
            .iter()
            .map(|&d| match d {
                d if d > 0.0 => 1.0,
                d if d < 0.0 => 0.0,
                _ => 0.5,
            })
            .collect();
        t.debiased = Some(Counts {
            wins: scores.iter().filter(|&&x| x == 1.0).count(),
            ties: scores.iter().filter(|&&x| x == 0.5).count(),
            losses: scores.iter().filter(|&&x| x == 0.0).count(),
            win_rate: scores.iter().sum::<f64>() / scores.len() as f64,
            interval: mean_interval(&scores, resamples, 0.95, seed),
        });
    }
    (t, outcomes)
}

const IDENTICAL: &str = "identical responses";

/// Settings of a comparison.
#[derive(Debug, Clone)]
pub struct CompareConfig {
    /// Judge at most this many instructions (in A's order); None = all.
    pub limit: Option<usize>,
    /// Bootstrap resamples and seed.
    pub resamples: usize,
    pub seed: u64,
    /// Start the judgments file over.
    pub overwrite: bool,
}

/// Progress: judge calls done and total (both orders).
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize) -> ControlFlow<()>;

/// Judge every instruction A and B share, both orders, appending to `judgments_path`.
/// Returns all judgments (resumed and new), or stops early when `progress` breaks.
pub fn compare(
    a: &[Prediction],
    b: &[Prediction],
    judge: &dyn Judge,
    judgments_path: &Path,
    cfg: &CompareConfig,
    progress: Progress,
) -> Result<(Vec<Judgment>, bool)> {
    let pairs = match_pairs(a, b, cfg.limit)?;
    let name = judge.describe();
    let reopened = JsonlLog::<Judgment>::open(judgments_path, cfg.overwrite)?;
    let mut log = reopened.log;
    let mut have: HashMap<(String, Order), (usize, Judgment)> = HashMap::new();
    for (line, j) in reopened.records {
        if j.judge != name {
            return Err(Error::Data {
                path: judgments_path.to_path_buf(),
                line,
                reason: format!(
                    "judged by `{}`, not `{name}`; use another output directory or --overwrite",
                    j.judge
                ),
            });
        }
        have.insert((j.id.clone(), j.order), (line, j));
    }
    let total = pairs.len() * 2;
    let mut done = pairs
        .iter()
        .flat_map(|(pa, _)| [Order::Ab, Order::Ba].map(|o| (pa.id.clone(), o)))
        .filter(|k| have.contains_key(k))
        .count();
    let mut stopped = progress(done, total).is_break();
    let mut out = Vec::with_capacity(total);
    for (pa, pb) in &pairs {
        for order in [Order::Ab, Order::Ba] {
            let (first, second) = match order {
                Order::Ab => (pa, pb),
                Order::Ba => (pb, pa),
            };
            let key = responses_key(&first.response, &second.response);
            if let Some((line, j)) = have.remove(&(pa.id.clone(), order)) {
                if j.responses != key {
                    return Err(Error::Data {
                        path: judgments_path.to_path_buf(),
                        line,
                        reason: format!(
                            "judged other responses for `{}` (a prediction file changed); use another output directory or --overwrite",
                            pa.id
                        ),
                    });
                }
                out.push(j);
                continue;
            }
            if stopped {
                continue;
            }
            let verdict = if pa.response.trim() == pb.response.trim() {
                Verdict {
                    preference: Preference::Tie,
                    p_first: None,
                    raw: IDENTICAL.into(),
                }
            } else {
                judge.judge(&Pair {
                    instruction: &pa.instruction,
                    input: &pa.input,
                    first: &first.response,
                    second: &second.response,
                })?
            };
            let j = Judgment {
                id: pa.id.clone(),
                order,
                judge: name.clone(),
                responses: key,
                verdict,
            };
            log.append(&j)?;
            out.push(j);
            done += 1;
            stopped = progress(done, total).is_break();
        }
    }
    let complete = out.len() == total;
    if complete {
        finish(log.path(), &out)?;
    }
    Ok((out, complete))
}

/// The instructions both files answered, in A's order; they must agree on the instruction.
fn match_pairs<'p>(
    a: &'p [Prediction],
    b: &'p [Prediction],
    limit: Option<usize>,
) -> Result<Vec<(&'p Prediction, &'p Prediction)>> {
    let by_id: HashMap<&str, &Prediction> = b.iter().map(|p| (p.id.as_str(), p)).collect();
    let mut pairs = Vec::new();
    for pa in a {
        if let Some(pb) = by_id.get(pa.id.as_str()) {
            if pa.instruction != pb.instruction || pa.input != pb.input {
                return Err(Error::InvalidArgument(format!(
                    "id `{}` has different instructions in the two prediction files",
                    pa.id
                )));
            }
            pairs.push((pa, *pb));
        }
    }
    if pairs.is_empty() {
        return Err(Error::InvalidArgument(
            "the two prediction files share no instruction id".into(),
        ));
    }
    if let Some(n) = limit {
        pairs.truncate(n);
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::judge::{LengthJudge, TeacherJudge};
    use crate::eval::predict::GenSettings;
    use crate::generate::teacher::{Completion, Finish, Scripted, Usage};

    fn pred(id: usize, who: &str, response: &str) -> Prediction {
        Prediction {
            id: id.to_string(),
            instruction: format!("Task {id}"),
            input: String::new(),
            response: response.into(),
            reference: None,
            generator: who.into(),
            finish: "stop".into(),
            completion_tokens: 0,
            settings: GenSettings {
                model: who.into(),
                lora: None,
                template: "alpaca".into(),
                max_new_tokens: 8,
                temperature: 0.0,
                top_p: 1.0,
                top_k: 0,
                repeat_penalty: 1.0,
                seed: 0,
                stop: Vec::new(),
            },
        }
    }

    /// 10 instructions: B longer in 6, A longer in 3, equal length (different text) in 1.
    fn files() -> (Vec<Prediction>, Vec<Prediction>) {
        let lens_a = [3, 5, 2, 9, 4, 4, 1, 8, 7, 5];
        let lens_b = [6, 9, 4, 2, 8, 9, 3, 5, 3, 5];
        let a = (0..10)
            .map(|i| pred(i, "A", &"x".repeat(lens_a[i])))
            .collect();
        let b = (0..10)
            .map(|i| pred(i, "B", &"y".repeat(lens_b[i])))
            .collect();
        (a, b)
    }

    /// A scripted teacher reading both responses from the judge prompt and naming the longer.
    fn longer_teacher() -> TeacherJudge {
        TeacherJudge::new(Box::new(Scripted::new("longer", 1, |prompt: &str| {
            let after = |tag: &str, end: &str| -> usize {
                let s = &prompt[prompt.find(tag).expect("tag") + tag.len()..];
                s[..s.find(end).expect("end")].trim().chars().count()
            };
            let a = after("### Response (a):\n", "### Response (b):");
            let b = after("### Response (b):\n", "### Better response:");
            let text = match a.cmp(&b) {
                std::cmp::Ordering::Greater => "a) is better",
                std::cmp::Ordering::Less => "b)",
                std::cmp::Ordering::Equal => "tie",
            };
            Completion {
                text: text.into(),
                finish: Finish::Stop,
                usage: Usage::default(),
            }
        })))
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!(
            "alpaca-pairwise-{name}-{}.jsonl",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&p);
        p
    }

    fn cfg() -> CompareConfig {
        CompareConfig {
            limit: None,
            resamples: 2000,
            seed: 1,
            overwrite: false,
        }
    }

    #[test]
    fn scripted_longer_judge_gives_the_computed_win_rate() {
        let (a, b) = files();
        for judge in [
            Box::new(longer_teacher()) as Box<dyn Judge>,
            Box::new(LengthJudge),
        ] {
            let path = tmp("longer");
            let mut calls = 0;
            let (js, complete) = compare(&a, &b, judge.as_ref(), &path, &cfg(), &mut |_, _| {
                calls += 1;
                ControlFlow::Continue(())
            })
            .expect("compare");
            assert!(complete);
            assert_eq!(calls, 21, "a start call and one per judgment");
            let (t, outcomes) = tally("A", "B", &judge.describe(), &js, 2000, 1);
            assert_eq!((t.n, t.wins, t.losses, t.ties), (10, 6, 3, 1));
            assert_eq!(t.win_rate, 0.65, "(6 + 0.5) / 10");
            assert_eq!((t.disagreements, t.flips), (0, 0));
            assert_eq!(outcomes.len(), 10);
            assert_eq!((t.decisive_verdicts, t.first_position_picks), (18, 9));
            let ci = t.interval.expect("interval");
            assert!(ci.lo < 0.65 && 0.65 < ci.hi && ci.lo >= 0.0 && ci.hi <= 1.0);
            // The bootstrap is the one of the scores themselves, seeded.
            let scores: Vec<f64> = outcomes.iter().map(Outcome::score).collect();
            assert_eq!(Some(ci), mean_interval(&scores, 2000, 0.95, 1));
            let _ = std::fs::remove_file(path);
        }
    }

    #[test]
    fn logit_margins_cancel_a_constant_position_bias() {
        let v = |d: f64| Verdict {
            preference: if d > 0.0 {
                Preference::First
            } else {
                Preference::Second
            },
            p_first: Some(1.0 / (1.0 + (-d).exp())),
            raw: String::new(),
        };
        // Bias +3 towards (a); B better by 0.5 on id 0, worse by 1 on id 1.
        let js: Vec<Judgment> = [(0, 3.0 - 0.5, 3.0 + 0.5), (1, 3.0 + 1.0, 3.0 - 1.0)]
            .into_iter()
            .flat_map(|(id, ab, ba)| {
                [(Order::Ab, ab), (Order::Ba, ba)].map(|(order, d)| Judgment {
                    id: id.to_string(),
                    order,
                    judge: "j".into(),
                    responses: String::new(),
                    verdict: v(d),
                })
            })
            .collect();
        assert!((logit_margin(&js[0].verdict, &js[1].verdict).expect("m") - 0.5).abs() < 1e-9);
        let (t, _) = tally("A", "B", "j", &js, 100, 1);
        assert_eq!((t.wins, t.ties, t.losses), (0, 2, 0), "votes: all position");
        assert_eq!(t.flips, 2);
        let d = t.debiased.expect("debiased");
        assert_eq!((d.wins, d.ties, d.losses, d.win_rate), (1, 0, 1, 0.5));
    }

    #[test]
    fn position_bias_cancels_and_resume_skips_done_pairs() {
        let (a, b) = files();
        let always_a =
            TeacherJudge::new(Box::new(Scripted::new("first", 1, |_: &str| Completion {
                text: "a)".into(),
                finish: Finish::Stop,
                usage: Usage::default(),
            })));
        let path = tmp("bias");
        // Stop after 5 judgments, then continue.
        let (part, complete) = compare(&a, &b, &always_a, &path, &cfg(), &mut |d, _| {
            if d >= 5 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .expect("part");
        assert!(!complete);
        assert_eq!(part.len(), 5);
        let mut new_calls = 0;
        let (js, complete) = compare(&a, &b, &always_a, &path, &cfg(), &mut |d, _| {
            new_calls += (d > 5) as usize;
            ControlFlow::Continue(())
        })
        .expect("rest");
        assert!(complete);
        assert_eq!(new_calls, 15);
        let (t, _) = tally("A", "B", "first", &js, 100, 1);
        assert_eq!((t.wins, t.losses, t.ties), (0, 0, 10));
        assert_eq!((t.disagreements, t.flips), (10, 10));
        assert_eq!(t.win_rate, 0.5);
        assert_eq!(t.first_position_picks, 20);
        // Another judge may not continue this file.
        let e = compare(&a, &b, &LengthJudge, &path, &cfg(), &mut |_, _| {
            ControlFlow::Continue(())
        })
        .expect_err("other judge");
        assert!(e.to_string().contains("judged by"), "{e}");
        // Changed responses are not silently reused.
        let mut b2 = b.clone();
        b2[0].response.push('!');
        let e = compare(&a, &b2, &always_a, &path, &cfg(), &mut |_, _| {
            ControlFlow::Continue(())
        })
        .expect_err("changed");
        assert!(
            e.to_string().contains(":1: judged other responses for `0`"),
            "{e}"
        );
        let _ = std::fs::remove_file(path);
    }
}
