//! Gemma 3 (270M, Q4_K_M GGUF) against Hugging Face transformers on the same file.
//!
//! Fixtures come from `scripts/ref_gemma3.py`, which runs transformers' own Gemma 3 code on
//! the GGUF (dequantized to f32). Skips with a note when the model is not in the cache
//! (`scripts/fetch-gemma3.sh` puts it there). By default 2 prompts x 32 tokens and the first
//! perplexity window of each size run; ALPACA_SLOW_TESTS=1 runs all 4 x 64 and every window.

mod common;

use common::*;

use alpaca::infer::Engine;

const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";

fn model() -> Option<Engine> {
    cached_model(GEMMA3, "scripts/fetch-gemma3.sh")
}

/// Greedy tokens equal transformers' token for token (Alpaca, Gemma turn, code,
/// non-ASCII prompts; BOS added as the vocabulary asks).
#[test]
fn gemma3_greedy_matches_transformers() {
    let Some(engine) = model() else { return };
    assert_eq!(engine.model.arch(), "gemma3");
    let fx = fixture("greedy_gemma3.json");
    let cases = fx["cases"].as_array().expect("cases");
    let (n_cases, n_new) = if slow() { (cases.len(), 64) } else { (2, 32) };
    for case in &cases[..n_cases] {
        assert_greedy_case(&engine, case, n_new);
    }
}

/// Perplexity equals transformers' on the same windows within 0.5%, with windows of 512
/// (inside the sliding window) and 1024 (the local layers see only the last 512).
#[test]
fn gemma3_perplexity_matches_transformers() {
    let Some(engine) = model() else { return };
    let Some(text) = ppl_text() else { return };
    let fx = fixture("perplexity_gemma3.json");
    assert_eq!(
        text.chars().count() as u64,
        fx["text_chars"].as_u64().expect("chars")
    );
    let tokens = engine.tokenizer.encode(&text, false).expect("encode");
    assert_eq!(
        tokens.len() as u64,
        fx["n_text_tokens"].as_u64().expect("n")
    );
    assert_eq!(tokens[..16], ids(&fx["first_tokens"])[..]);
    let bos = engine.tokenizer.bos_id();
    assert_eq!(bos, Some(2));
    for run in fx["runs"].as_array().expect("runs") {
        let n_ctx = run["n_ctx"].as_u64().expect("n_ctx") as usize;
        let running: Vec<f64> = run["ppl_running_by_window"]
            .as_array()
            .expect("running")
            .iter()
            .map(|v| v.as_f64().expect("f"))
            .collect();
        let windows = if slow() { 0 } else { 1 };
        let mut seen = Vec::new();
        let p = alpaca::infer::perplexity::perplexity(
            &engine.model,
            &tokens,
            n_ctx,
            bos,
            windows,
            &mut |p| seen.push(p.value()),
        )
        .expect("perplexity");
        for (i, (ours, theirs)) in seen.iter().zip(&running).enumerate() {
            let rel = (ours - theirs).abs() / theirs;
            eprintln!(
                "n_ctx {n_ctx} window {}: ours {ours:.6}, transformers {theirs:.6}, rel {rel:.2e}",
                i + 1
            );
            assert!(
                rel < 0.005,
                "n_ctx {n_ctx} window {}: {ours} vs transformers {theirs}",
                i + 1
            );
        }
        if windows == 0 {
            assert_eq!(p.count as u64, run["n_scored"].as_u64().expect("n"));
        }
    }
}

/// Gemma 3's chat template (google/gemma-3-4b-it `tokenizer_config.json`; the 270M base GGUF
/// carries none, so `--template auto` falls back to Alpaca there). It renders with our
/// minijinja setup, BOS is not doubled, and `<end_of_turn>` ends generation.
const GEMMA3_CHAT_TEMPLATE: &str = "{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n    {%- if messages[0]['content'] is string -%}\n        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n    {%- else -%}\n        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n    {%- endif -%}\n    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n    {%- set first_user_prefix = \"\" -%}\n    {%- set loop_messages = messages -%}\n{%- endif -%}\n{%- for message in loop_messages -%}\n    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n    {%- endif -%}\n    {%- if (message['role'] == 'assistant') -%}\n        {%- set role = \"model\" -%}\n    {%- else -%}\n        {%- set role = message['role'] -%}\n    {%- endif -%}\n    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n    {%- if message['content'] is string -%}\n        {{ message['content'] | trim }}\n    {%- elif message['content'] is iterable -%}\n        {%- for item in message['content'] -%}\n            {%- if item['type'] == 'image' -%}\n                {{ '<start_of_image>' }}\n            {%- elif item['type'] == 'text' -%}\n                {{ item['text'] | trim }}\n            {%- endif -%}\n        {%- endfor -%}\n    {%- else -%}\n        {{ raise_exception(\"Invalid content type\") }}\n    {%- endif -%}\n    {{ '<end_of_turn>\n' }}\n{%- endfor -%}\n{%- if add_generation_prompt -%}\n    {{'<start_of_turn>model\n'}}\n{%- endif -%}\n";

#[test]
fn gemma3_chat_template_renders_and_stops_at_end_of_turn() {
    use alpaca::data::template::{Message, Template};
    let t = Template::Jinja {
        source: GEMMA3_CHAT_TEMPLATE.into(),
        bos_token: "<bos>".into(),
        eos_token: "<eos>".into(),
    };
    let msgs = [
        Message::new("system", "Be brief."),
        Message::new("user", "What is the capital of France?"),
    ];
    let text = t.render_chat(&msgs, true).expect("gemma template renders");
    assert_eq!(
        text,
        "<bos><start_of_turn>user\nBe brief.\n\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
    );
    let bad = [Message::new("assistant", "hi")];
    assert!(t.render_chat(&bad, true).is_err(), "raise_exception works");

    let Some(engine) = model() else { return };
    let ids = engine.encode_prompt(&text).expect("encode");
    assert_eq!(
        &ids[..3],
        &[2, 105, 2364],
        "one BOS, then <start_of_turn>user"
    );
    // The generation loop stops at any of eot_ids (the base model itself never closes a
    // turn in our prompts, so this is checked on the vocabulary).
    let eot = engine
        .tokenizer
        .token_id("<end_of_turn>")
        .expect("in vocab");
    assert_eq!(eot, 106);
    assert!(engine.tokenizer.eot_ids().contains(&eot));
    assert!(engine.tokenizer.eot_ids().contains(&1), "<eos>");
}
