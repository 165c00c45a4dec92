//! Reading and writing instruction data sets.
//!
//! Layouts: a JSON list (`alpaca_data.json`) or JSON Lines, either optionally gzip-compressed
//! (`.gz`). Schemas per record: Alpaca `{instruction, input, output}`, ShareGPT
//! `{conversations: [{from, value}]}` and OpenAI-style `{messages: [{role, content}]}`.
//! Reading detects the layout from the first non-blank byte and the schema per record, so one
//! reader takes every file. Writes are atomic (temporary file, then rename).
//!
//! Conversation formats have no `input` field. Writing one joins instruction and input with a
//! blank line; reading one back gives the whole user turn as the instruction and an empty input.
//!
//! Bad records fail with [`Error::Data`] naming the file, the line (record index for a JSON list)
//! and the field. Numbers in text fields (seen in real data) are accepted as their decimal text.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::Example;
use crate::error::{Error, Result};

/// How records are laid out in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One JSON array of records.
    List,
    /// One JSON record per line.
    Lines,
}

/// What one record looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schema {
    Alpaca,
    ShareGpt,
    Messages,
}

/// A file format: layout plus record schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Format {
    pub layout: Layout,
    pub schema: Schema,
}

impl Format {
    /// Standard `alpaca_data.json`.
    pub const ALPACA_JSON: Format = Format {
        layout: Layout::List,
        schema: Schema::Alpaca,
    };
    /// Alpaca records, one per line.
    pub const ALPACA_JSONL: Format = Format {
        layout: Layout::Lines,
        schema: Schema::Alpaca,
    };
    /// ShareGPT conversations in a JSON list.
    pub const SHAREGPT: Format = Format {
        layout: Layout::List,
        schema: Schema::ShareGpt,
    };
    /// OpenAI fine-tuning style `messages`, one per line.
    pub const MESSAGES: Format = Format {
        layout: Layout::Lines,
        schema: Schema::Messages,
    };

    /// Parse a user-facing name: `json`/`alpaca`, `jsonl`, `sharegpt`, `messages`.
    pub fn from_name(name: &str) -> Result<Format> {
        match name.to_ascii_lowercase().as_str() {
            "json" | "alpaca" | "alpaca-json" => Ok(Format::ALPACA_JSON),
            "jsonl" | "alpaca-jsonl" => Ok(Format::ALPACA_JSONL),
            "sharegpt" => Ok(Format::SHAREGPT),
            "messages" | "openai" => Ok(Format::MESSAGES),
            other => Err(Error::InvalidArgument(format!(
                "unknown data format `{other}` (expected json, jsonl, sharegpt or messages)"
            ))),
        }
    }

    /// Guess the format to write from a path's extension (`.jsonl` -> JSONL, otherwise JSON).
    pub fn from_path(path: &Path) -> Format {
        let name = path.to_string_lossy().to_ascii_lowercase();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        if name.ends_with(".jsonl") || name.ends_with(".ndjson") {
            Format::ALPACA_JSONL
        } else {
            Format::ALPACA_JSON
        }
    }
}

/// A data set read from disk, with the format it was found in.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub examples: Vec<Example>,
    pub format: Format,
}

// ------------------------------------------------------------------------------------ reading

/// Read a whole file to a string, transparently un-gzipping `.gz` files.
pub fn read_text(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut text = String::new();
    let gz = path.extension().is_some_and(|e| e == "gz");
    let res = if gz {
        flate2::read::MultiGzDecoder::new(file).read_to_string(&mut text)
    } else {
        file.read_to_string(&mut text)
    };
    res.map_err(|e| Error::io(path, e))?;
    Ok(text)
}

/// Read any supported data file.
pub fn read_examples(path: &Path) -> Result<Dataset> {
    let text = read_text(path)?;
    parse_examples(&text, path)
}

/// Parse file contents; `path` is only used in error messages.
pub fn parse_examples(text: &str, path: &Path) -> Result<Dataset> {
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    let mut examples = Vec::new();
    let mut schema = None;
    let layout = if trimmed.starts_with('[') {
        let values: Vec<Value> = serde_json::from_str(trimmed).map_err(|e| Error::Data {
            path: path.to_path_buf(),
            line: e.line(),
            reason: format!("not a JSON list of records: {e}"),
        })?;
        for (i, v) in values.iter().enumerate() {
            // For a list, "line" is the 1-based record number.
            let (ex, s) = example_from_value(v, path, i + 1)?;
            schema.get_or_insert(s);
            examples.push(ex);
        }
        Layout::List
    } else {
        for rec in json_lines::<Value>(text, path, "invalid JSON") {
            let (line, v) = rec?;
            let (ex, s) = example_from_value(&v, path, line)?;
            schema.get_or_insert(s);
            examples.push(ex);
        }
        Layout::Lines
    };
    Ok(Dataset {
        examples,
        format: Format {
            layout,
            schema: schema.unwrap_or(Schema::Alpaca),
        },
    })
}

/// The non-blank lines of JSON Lines `text`, each parsed as a `T`, with their 1-based line
/// numbers. A line that is not a `T` gives an [`Error::Data`] naming `path`, the line and
/// `"{what}: {serde error}"`.
pub fn json_lines<'a, T: serde::de::DeserializeOwned + 'a>(
    text: &'a str,
    path: &'a Path,
    what: &'a str,
) -> impl Iterator<Item = Result<(usize, T)>> + 'a {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(move |(i, line)| {
            serde_json::from_str(line)
                .map(|rec| (i + 1, rec))
                .map_err(|e| data_err(path, i + 1, format!("{what}: {e}")))
        })
}

fn data_err(path: &Path, line: usize, reason: impl Into<String>) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        line,
        reason: reason.into(),
    }
}

/// A text field: strings as they are, numbers and booleans as their JSON text, null as empty.
fn text_field(
    obj: &Value,
    field: &str,
    required: bool,
    path: &Path,
    line: usize,
) -> Result<String> {
    match obj.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::Bool(b)) => Ok(b.to_string()),
        Some(Value::Null) | None if !required => Ok(String::new()),
        None => Err(data_err(path, line, format!("missing field `{field}`"))),
        Some(other) => Err(data_err(
            path,
            line,
            format!("field `{field}` must be a string, found {}", kind(other)),
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Convert one record of any schema to an [`Example`].
pub fn example_from_value(v: &Value, path: &Path, line: usize) -> Result<(Example, Schema)> {
    if !v.is_object() {
        return Err(data_err(
            path,
            line,
            format!("record must be an object, found {}", kind(v)),
        ));
    }
    if v.get("instruction").is_some() {
        let ex = Example {
            instruction: text_field(v, "instruction", true, path, line)?,
            input: text_field(v, "input", false, path, line)?,
            output: text_field(v, "output", true, path, line)?,
        };
        return Ok((ex, Schema::Alpaca));
    }
    let (turns, role_key, text_key, schema) = if let Some(c) = v.get("conversations") {
        (c, "from", "value", Schema::ShareGpt)
    } else if let Some(m) = v.get("messages") {
        (m, "role", "content", Schema::Messages)
    } else {
        return Err(data_err(
            path,
            line,
            "record has none of the fields `instruction`, `conversations`, `messages`",
        ));
    };
    let turns = turns
        .as_array()
        .ok_or_else(|| data_err(path, line, format!("`{}` must be a list", conv_key(schema))))?;
    let mut user = None;
    let mut assistant = None;
    for t in turns {
        let role = t.get(role_key).and_then(Value::as_str).unwrap_or("");
        let text = text_field(t, text_key, true, path, line)?;
        match role {
            "human" | "user" if user.is_none() => user = Some(text),
            "gpt" | "assistant" if user.is_some() && assistant.is_none() => assistant = Some(text),
            _ => {}
        }
    }
    match (user, assistant) {
        (Some(instruction), Some(output)) => Ok((
            Example {
                instruction,
                input: String::new(),
                output,
            },
            schema,
        )),
        _ => Err(data_err(
            path,
            line,
            format!(
                "`{}` needs a user turn followed by an assistant turn",
                conv_key(schema)
            ),
        )),
    }
}

fn conv_key(schema: Schema) -> &'static str {
    match schema {
        Schema::ShareGpt => "conversations",
        _ => "messages",
    }
}

// ------------------------------------------------------------------------------------ writing

/// The JSON value of one example in a given schema.
pub fn example_to_value(ex: &Example, schema: Schema) -> Value {
    let user = if ex.input.is_empty() {
        ex.instruction.clone()
    } else {
        format!("{}\n\n{}", ex.instruction, ex.input)
    };
    match schema {
        Schema::Alpaca => {
            json!({"instruction": ex.instruction, "input": ex.input, "output": ex.output})
        }
        Schema::ShareGpt => json!({"conversations": [
            {"from": "human", "value": user},
            {"from": "gpt", "value": ex.output},
        ]}),
        Schema::Messages => json!({"messages": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": ex.output},
        ]}),
    }
}

/// Serialise examples in a format (a pretty-printed list, or one record per line).
pub fn render_examples(examples: &[Example], format: Format) -> Result<String> {
    let values: Vec<Value> = examples
        .iter()
        .map(|e| example_to_value(e, format.schema))
        .collect();
    let map = |e: serde_json::Error| Error::Internal(format!("serialising examples: {e}"));
    match format.layout {
        Layout::List => {
            let mut s = serde_json::to_string_pretty(&values).map_err(map)?;
            s.push('\n');
            Ok(s)
        }
        Layout::Lines => {
            let mut s = String::new();
            for v in &values {
                s.push_str(&serde_json::to_string(v).map_err(map)?);
                s.push('\n');
            }
            Ok(s)
        }
    }
}

/// Write examples atomically; `.gz` paths are gzip-compressed.
pub fn write_examples(path: &Path, examples: &[Example], format: Format) -> Result<()> {
    let text = render_examples(examples, format)?;
    write_atomic(path, text.as_bytes())
}

/// Write bytes to `path` through a temporary sibling and a rename, so readers never see half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_sibling(path);
    let io = |e| Error::io(&tmp, e);
    {
        let file = File::create(&tmp).map_err(io)?;
        let mut w = BufWriter::new(file);
        if path.extension().is_some_and(|e| e == "gz") {
            let mut gz = flate2::write::GzEncoder::new(&mut w, flate2::Compression::default());
            gz.write_all(bytes).map_err(io)?;
            gz.finish().map_err(io)?;
        } else {
            w.write_all(bytes).map_err(io)?;
        }
        let file = w
            .into_inner()
            .map_err(|e| Error::io(&tmp, e.into_error()))?;
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn tmp_sibling(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

// ------------------------------------------------------------------------------------ seeds

/// One instance (input/output pair) of a seed task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedInstance {
    #[serde(default)]
    pub input: String,
    pub output: String,
}

/// A Self-Instruct seed task (`seed_tasks.jsonl` format).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedTask {
    pub id: String,
    pub name: String,
    pub instruction: String,
    pub instances: Vec<SeedInstance>,
    #[serde(default)]
    pub is_classification: bool,
}

impl SeedTask {
    /// The seed as an Alpaca example (its first instance).
    pub fn example(&self) -> Example {
        let inst = self.instances.first();
        Example {
            instruction: self.instruction.clone(),
            input: inst.map(|i| i.input.clone()).unwrap_or_default(),
            output: inst.map(|i| i.output.clone()).unwrap_or_default(),
        }
    }
}

/// Parse seed tasks (one JSON object per line); `path` names the source in errors.
pub fn parse_seed_tasks(text: &str, path: &Path) -> Result<Vec<SeedTask>> {
    let mut seeds = Vec::new();
    for rec in json_lines::<SeedTask>(text, path, "not a seed task") {
        let (line, seed) = rec?;
        if seed.instances.is_empty() {
            return Err(data_err(path, line, "field `instances` is empty"));
        }
        if seed.instruction.trim().is_empty() {
            return Err(data_err(path, line, "field `instruction` is empty"));
        }
        seeds.push(seed);
    }
    if seeds.is_empty() {
        return Err(data_err(path, 0, "no seed tasks in file"));
    }
    Ok(seeds)
}

/// Read a seed task file.
pub fn read_seed_tasks(path: &Path) -> Result<Vec<SeedTask>> {
    parse_seed_tasks(&read_text(path)?, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Example> {
        vec![
            Example::new("Name a colour.", "", "Blue."),
            Example::new("Translate to French.", "Good morning", "Bonjour"),
        ]
    }

    #[test]
    fn round_trip_every_format() {
        let dir = std::env::temp_dir().join(format!("alpaca-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, fmt) in [
            ("a.json", Format::ALPACA_JSON),
            ("a.jsonl", Format::ALPACA_JSONL),
            ("a.json.gz", Format::ALPACA_JSON),
        ] {
            let p = dir.join(name);
            write_examples(&p, &sample(), fmt).unwrap();
            let d = read_examples(&p).unwrap();
            assert_eq!(d.examples, sample());
            assert_eq!(d.format, fmt);
        }
        for fmt in [Format::SHAREGPT, Format::MESSAGES] {
            let p = dir.join("c.json");
            write_examples(&p, &sample(), fmt).unwrap();
            let d = read_examples(&p).unwrap();
            assert_eq!(d.format, fmt);
            assert_eq!(d.examples[0], sample()[0]);
            assert_eq!(
                d.examples[1].instruction,
                "Translate to French.\n\nGood morning"
            );
            assert_eq!(d.examples[1].output, "Bonjour");
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn errors_name_line_and_field() {
        let p = Path::new("x.jsonl");
        let text = "{\"instruction\":\"a\",\"output\":\"b\"}\n{\"instruction\":\"a\"}\n";
        let err = parse_examples(text, p).unwrap_err().to_string();
        assert_eq!(err, "x.jsonl:2: missing field `output`");
        let err = parse_examples("{\"instruction\": [1], \"output\": \"\"}", p).unwrap_err();
        assert!(
            err.to_string().contains("`instruction` must be a string"),
            "{err}"
        );
        let err = parse_examples("{oops\n", p).unwrap_err().to_string();
        assert!(err.starts_with("x.jsonl:1: invalid JSON"), "{err}");
    }

    #[test]
    fn numbers_are_text() {
        let d = parse_examples(
            "{\"instruction\":\"1+1\",\"input\":\"\",\"output\":2}",
            Path::new("n"),
        )
        .unwrap();
        assert_eq!(d.examples[0].output, "2");
    }

    #[test]
    fn seeds_parse() {
        let line = r#"{"id": "s1", "name": "n", "instruction": "Do it.", "instances": [{"input": "", "output": "Done."}], "is_classification": false}"#;
        let seeds = parse_seed_tasks(line, Path::new("s")).unwrap();
        assert_eq!(seeds[0].example(), Example::new("Do it.", "", "Done."));
        assert!(parse_seed_tasks(r#"{"id": "s1"}"#, Path::new("s")).is_err());
    }
}
