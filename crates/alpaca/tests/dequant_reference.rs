//! Our dequantization of every supported block type against the `gguf` Python package's
//! (ggml's formulas), on random blocks: `scripts/ref_dequant.py` writes the fixture.

use std::path::PathBuf;

use alpaca::model::quant::{dequantize_row, GgmlType};

#[test]
fn dequantization_matches_gguf_py_for_every_block_type() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dequant_reference.json");
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("JSON");
    let cases = fx["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 8);
    for c in cases {
        let name = c["type"].as_str().expect("type");
        let ty = GgmlType::parse(name).expect("known type");
        let hex = c["bytes_hex"].as_str().expect("hex");
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex byte"))
            .collect();
        let want: Vec<f32> = c["values"]
            .as_array()
            .expect("values")
            .iter()
            .map(|v| v.as_f64().expect("f") as f32)
            .collect();
        let mut got = vec![0f32; want.len()];
        assert_eq!(bytes.len(), ty.row_bytes(want.len()), "{name}");
        dequantize_row(ty, &bytes, &mut got);
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{name}[{i}]: {a} vs {b}"
            );
        }
    }
}
