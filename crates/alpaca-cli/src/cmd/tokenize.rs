//! `alpaca tokenize`: the token ids of a text.

use anyhow::Result;
use clap::Args;

use super::ModelArgs;

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text to tokenize
    #[arg(long = "text")]
    pub text: String,
    /// Print a JSON array of ids
    #[arg(long = "json")]
    pub json: bool,
    /// Treat special-token strings such as <|im_start|> as plain text
    #[arg(long = "no-parse-special")]
    pub no_parse_special: bool,
}

pub fn run(a: TokenizeArgs) -> Result<()> {
    super::init_threads(a.model.threads)?;
    let path = alpaca::assets::resolve_model(a.model.model.as_deref())?;
    let g = alpaca::model::hf::open_model(&path)?;
    let tok = alpaca::tokenizer::Tokenizer::from_gguf(&g)?;
    let ids = tok.encode(&a.text, !a.no_parse_special)?;
    if a.json {
        println!("{}", serde_json::to_string(&ids)?);
    } else {
        for id in ids {
            let piece = String::from_utf8_lossy(tok.token_bytes(id)).into_owned();
            println!("{id:>7} -> {piece:?}");
        }
    }
    Ok(())
}
