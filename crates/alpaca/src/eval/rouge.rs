//! ROUGE-L of predictions against reference outputs (the data room's bit-exact
//! `rouge_score` re-implementation), per item and on average.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::predict::Prediction;
use crate::data::rouge::rouge_l;

/// Mean ROUGE-L F-measure over the predictions that have a reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RougeReport {
    pub mean: f64,
    /// Predictions scored.
    pub n: usize,
    /// Predictions without a reference (not scored).
    pub missing: usize,
}

/// Score `preds` against `refs` (id -> reference) or, when `refs` is `None`, against the
/// reference each prediction carries. Empty references are not scored.
pub fn rouge_report(preds: &[Prediction], refs: Option<&HashMap<String, String>>) -> RougeReport {
    let (mut sum, mut n, mut missing) = (0.0, 0usize, 0usize);
    for p in preds {
        let r = match refs {
            Some(m) => m.get(&p.id).map(String::as_str),
            None => p.reference.as_deref(),
        };
        match r.filter(|r| !r.trim().is_empty()) {
            Some(r) => {
                sum += rouge_l(r, &p.response);
                n += 1;
            }
            None => missing += 1,
        }
    }
    RougeReport {
        mean: if n > 0 { sum / n as f64 } else { 0.0 },
        n,
        missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_only_items_with_references() {
        let p = |id: &str, resp: &str, r: Option<&str>| Prediction {
            id: id.into(),
            instruction: "i".into(),
            input: String::new(),
            response: resp.into(),
            reference: r.map(str::to_string),
            generator: "g".into(),
            finish: "stop".into(),
            completion_tokens: 0,
            settings: serde_json::from_value(serde_json::json!({
                "model": "m", "template": "t", "max_new_tokens": 1, "temperature": 0.0,
                "top_p": 1.0, "top_k": 0, "repeat_penalty": 1.0, "seed": 0
            }))
            .expect("settings"),
        };
        let preds = vec![
            p("0", "the cat sat", Some("the cat sat")),
            p("1", "a b", Some("c d")),
            p("2", "x", None),
        ];
        let r = rouge_report(&preds, None);
        assert_eq!((r.n, r.missing), (2, 1));
        assert!((r.mean - 0.5).abs() < 1e-12);
        let refs: HashMap<String, String> = [("2".to_string(), "x".to_string())].into();
        let r = rouge_report(&preds, Some(&refs));
        assert_eq!((r.n, r.missing, r.mean), (1, 2, 1.0));
    }
}
