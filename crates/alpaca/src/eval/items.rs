//! Instruction sets to answer: Self-Instruct's `user_oriented_instructions.jsonl` (one task per
//! line, `{id, instruction, instances: [{input, output}]}`) or any data file the data room
//! reads (Alpaca JSON/JSONL, ShareGPT, messages).
//!
//! Every item has a stable `id`, the key that predictions, judgments and resumption use: the
//! task's `id` (suffixed `-k` for its k-th instance, k >= 1), or the record's position
//! (`"17"`) for data files without ids. The reference output, when the set has one, is kept
//! for ROUGE-L.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::data::io::{example_from_value, json_lines, parse_examples, read_text};
use crate::error::{Error, Result};

/// One instruction to answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalItem {
    pub id: String,
    pub instruction: String,
    #[serde(default)]
    pub input: String,
    /// The set's reference answer, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// Read an instruction set; errors name the file, the line and the field.
pub fn read_items(path: &Path) -> Result<Vec<EvalItem>> {
    let text = read_text(path)?;
    parse_items(&text, path)
}

/// Parse an instruction set; `path` is only used in error messages.
pub fn parse_items(text: &str, path: &Path) -> Result<Vec<EvalItem>> {
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    // (line, item): the line names duplicates in errors.
    let mut items: Vec<(usize, EvalItem)> = Vec::new();
    if trimmed.starts_with('[') {
        // A JSON list: the data room's reader (Alpaca or conversations).
        let ds = parse_examples(text, path)?;
        for (i, e) in ds.examples.into_iter().enumerate() {
            let item = EvalItem {
                id: i.to_string(),
                reference: (!e.output.is_empty()).then_some(e.output),
                instruction: e.instruction,
                input: e.input,
            };
            items.push((i + 1, item));
        }
    } else {
        for rec in json_lines::<Value>(text, path, "invalid JSON") {
            let (line, v) = rec?;
            let mut found = Vec::new();
            parse_record(&v, path, line, items.len(), &mut found)?;
            items.extend(found.into_iter().map(|it| (line, it)));
        }
    }
    if items.is_empty() {
        return Err(Error::EmptyDataset {
            path: path.to_path_buf(),
        });
    }
    let mut seen = std::collections::HashSet::new();
    for (line, it) in &items {
        if !seen.insert(it.id.as_str()) {
            return Err(Error::Data {
                path: path.to_path_buf(),
                line: *line,
                reason: format!("duplicate id `{}`", it.id),
            });
        }
    }
    Ok(items.into_iter().map(|(_, it)| it).collect())
}

fn parse_record(
    v: &Value,
    path: &Path,
    line: usize,
    index: usize,
    out: &mut Vec<EvalItem>,
) -> Result<()> {
    let err = |reason: String| Error::Data {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let id = match v.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => return Err(err("field `id` must be a string or a number".into())),
    };
    let Some(instances) = v.get("instances") else {
        // An Alpaca / conversation record; an instruction set may leave `output` out.
        let (e, _) = if v.get("instruction").is_some() && v.get("output").is_none() {
            let mut v = v.clone();
            v["output"] = Value::String(String::new());
            example_from_value(&v, path, line)?
        } else {
            example_from_value(v, path, line)?
        };
        out.push(EvalItem {
            id: id.unwrap_or_else(|| index.to_string()),
            reference: (!e.output.is_empty()).then_some(e.output),
            instruction: e.instruction,
            input: e.input,
        });
        return Ok(());
    };
    // A Self-Instruct task.
    let instruction = match v.get("instruction") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::String(_)) => return Err(err("field `instruction` is empty".into())),
        Some(_) => return Err(err("field `instruction` must be a string".into())),
        None => return Err(err("missing field `instruction`".into())),
    };
    let list = instances
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| err("field `instances` must be a non-empty list".into()))?;
    let id = id.unwrap_or_else(|| index.to_string());
    for (k, inst) in list.iter().enumerate() {
        let text = |field: &str| -> Result<Option<String>> {
            match inst.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(err(format!(
                    "field `instances[{k}].{field}` must be a string"
                ))),
            }
        };
        out.push(EvalItem {
            id: if k == 0 {
                id.clone()
            } else {
                format!("{id}-{k}")
            },
            instruction: instruction.clone(),
            input: text("input")?.unwrap_or_default(),
            reference: text("output")?.filter(|s| !s.is_empty()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_self_instruct_and_alpaca() {
        let p = Path::new("u.jsonl");
        let text = concat!(
            r#"{"id": "t0", "motivation_app": "X", "instruction": "Fix it.", "instances": [{"input": "a", "output": "b"}]}"#,
            "\n\n",
            r#"{"id": "t1", "instruction": "Two.", "instances": [{"input": "", "output": ""}, {"input": "c", "output": "d"}]}"#,
            "\n",
            r#"{"instruction": "Alpaca.", "input": "", "output": "yes"}"#,
            "\n"
        );
        let items = parse_items(text, p).expect("parse");
        let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["t0", "t1", "t1-1", "3"]);
        assert_eq!(items[0].input, "a");
        assert_eq!(items[0].reference.as_deref(), Some("b"));
        assert_eq!(items[1].reference, None);
        assert_eq!(items[3].reference.as_deref(), Some("yes"));
        let list = r#"[{"instruction": "A", "input": "", "output": "B"}]"#;
        let items = parse_items(list, Path::new("a.json")).expect("list");
        assert_eq!(items[0].id, "0");
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let p = Path::new("u.jsonl");
        let bad = "{\"id\": \"a\", \"instruction\": \"x\", \"instances\": [{\"input\": 3}]}\n";
        let e = parse_items(bad, p).expect_err("bad").to_string();
        assert_eq!(e, "u.jsonl:1: field `instances[0].input` must be a string");
        let e = parse_items("\n{\"id\": \"a\", \"instances\": []}", p)
            .expect_err("bad")
            .to_string();
        assert_eq!(e, "u.jsonl:2: missing field `instruction`");
        let e = parse_items("{oops", p).expect_err("bad").to_string();
        assert!(e.starts_with("u.jsonl:1: invalid JSON"), "{e}");
        let dup = "{\"id\":\"a\",\"instruction\":\"x\",\"output\":\"\"}\n{\"id\":\"a\",\"instruction\":\"y\",\"output\":\"\"}\n";
        let e = parse_items(dup, p).expect_err("dup").to_string();
        assert_eq!(e, "u.jsonl:2: duplicate id `a`");
        let only = parse_items("{\"instruction\": \"x\"}", p).expect("no output");
        assert_eq!(only[0].reference, None);
    }
}
