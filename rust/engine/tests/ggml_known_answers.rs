//! GGML block quantizers against llama.cpp's own output, without llama.cpp: `data/ggml_llama_cpp.json`
//! holds the SHA-256 of what llama.cpp's `ggml_quantize_chunk` writes for rows made by the integer
//! generator below, and the interop tier (tests/interop/test_ggml_llama_cpp.py) recomputes those
//! hashes with llama.cpp itself and checks the file. Also checked here: the AVX2 and baseline
//! kernels agree, and a super-block's bytes do not depend on its neighbours in the row.

use gslice_engine::ggml::{quantize_row, GgmlType};
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Deserialize)]
struct KnownAnswers {
    width: usize,
    rows: usize,
    seed: u64,
    /// "q4_K" or "q4_K+imatrix" -> hex SHA-256 of all rows' bytes
    sha256: std::collections::BTreeMap<String, String>,
}

/// xorshift64: the same sequence as `known_answer_rows` in tests/interop/llama_ggml.py.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A bf16 value: random sign and mantissa, exponent `lo + r % span`.
    fn bf16(&mut self, lo: u64, span: u64, signed: bool) -> f32 {
        let r = self.next();
        let sign = if signed { r >> 63 } else { 0 };
        let exponent = lo + (r >> 32) % span;
        let bits = (sign << 15) | (exponent << 7) | ((r >> 16) & 0x7F);
        f32::from_bits((bits as u32) << 16)
    }
}

/// Row `r` of the known-answer rows: random magnitudes 2^-30..2^9; values near 1; zeroed
/// 32-element runs; one sign; near the largest bf16; subnormal; constant; nearly all zeros.
fn known_answer_rows(rows: usize, width: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed);
    let mut out = Vec::with_capacity(rows * width);
    for r in 0..rows {
        let row: Vec<f32> = (0..width)
            .map(|i| match r % 8 {
                0 => rng.bf16(97, 40, true),
                1 => rng.bf16(126, 2, true),
                2 => {
                    let v = rng.bf16(100, 20, true);
                    if (i / 32) % 3 == 1 { 0.0 } else { v }
                }
                3 => rng.bf16(110, 20, false),
                4 => rng.bf16(247, 8, true),
                5 => rng.bf16(0, 1, true),
                6 => 0.375,
                _ => {
                    let v = rng.bf16(120, 10, true);
                    if i % 256 == 17 { v } else { 0.0 }
                }
            })
            .collect();
        out.extend(row);
    }
    out
}

fn known_answer_imatrix(width: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed ^ 0x9E37_79B9_7F4A_7C15);
    (0..width).map(|i| if i % 5 == 3 { 0.0 } else { rng.bf16(119, 16, false) }).collect()
}

fn quantize(t: GgmlType, x: &[f32], width: usize, imatrix: Option<&[f32]>) -> Vec<u8> {
    let rb = t.row_bytes(width as u64).unwrap() as usize;
    let mut out = vec![0u8; x.len() / width * rb];
    for (row, o) in x.chunks_exact(width).zip(out.chunks_exact_mut(rb)) {
        quantize_row(t, row, o, imatrix).unwrap();
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn every_type_equals_llama_cpps_recorded_output() {
    let known: KnownAnswers = serde_json::from_str(include_str!("data/ggml_llama_cpp.json")).unwrap();
    let x = known_answer_rows(known.rows, known.width, known.seed);
    let qw = known_answer_imatrix(known.width, known.seed);
    assert_eq!(known.sha256.len(), 18, "11 types and 7 importance-matrix variants");
    for (key, expected) in &known.sha256 {
        let (name, with_imatrix) = key.strip_suffix("+imatrix").map_or((key.as_str(), false), |n| (n, true));
        let t = GgmlType::parse(name).unwrap();
        let bytes = quantize(t, &x, known.width, with_imatrix.then_some(&qw[..]));
        assert_eq!(&hex(&Sha256::digest(&bytes)), expected, "{key}");
    }
}

#[test]
fn a_super_block_does_not_depend_on_its_neighbours() {
    // Rows of 7 super-blocks run through the grouped searches (4 at a time, then one by one);
    // each super-block quantized as a row of its own must give the same bytes. (Not for Q4_0
    // and the other 32-element types with an importance matrix, whose weights use the whole
    // row's mean square.)
    let width = 7 * 256;
    let x = known_answer_rows(8, width, 7);
    use GgmlType::*;
    for t in [Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K] {
        let whole = quantize(t, &x, width, None);
        let pieces = quantize(t, &x, 256, None);
        assert_eq!(whole, pieces, "{}", t.name());
    }
    let qw = known_answer_imatrix(width, 7);
    for t in [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
        let whole = quantize(t, &x, width, Some(&qw));
        let pieces: Vec<u8> = x
            .chunks_exact(width)
            .flat_map(|row| {
                row.chunks_exact(256).zip(qw.chunks_exact(256)).flat_map(|(sb, w)| quantize(t, sb, 256, Some(w))).collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(whole, pieces, "{} with importance matrix", t.name());
    }
}
