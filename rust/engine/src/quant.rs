//! Group-wise symmetric integer quantization of 2-D weights, stored in the compressed-tensors
//! `pack-quantized` layout that transformers (with the compressed-tensors package) and vLLM load.
//!
//! For each row and each group of `group_size` consecutive columns, following
//! compressed-tensors 0.20 (`calculate_qparams`, `quantize`, `pack_to_int32`):
//! - `scale = bf16(absmax / ((qmax - qmin) / 2))`: absmax / 7.5 for int4, / 127.5 for int8,
//!   divided in f32 and rounded to BF16 to nearest, ties to even. A scale that rounds to zero
//!   (an all-zero group) becomes BF16's epsilon 2^-7, as the library does, so no division by
//!   zero and no NaN.
//! - `q = round_half_even(clamp(x / scale, qmin, qmax))` with `x / scale` in f32 (what the
//!   library's `quantize` computes for f32 input and its Triton kernel computes always).
//! - words: `q + 2^(bits-1)` as unsigned `bits`-bit fields, element `i` of a row at bit `i * bits`
//!   of the little-endian bit stream, i.e. word `j` holds elements `j*32/bits ..`, the first in
//!   the lowest bits. A row's last word is zero-padded when its width is not a multiple of
//!   32 / bits.

use serde::Deserialize;

use crate::dtype::Dtype;

/// BF16 bits of 2^-7, `torch.finfo(torch.bfloat16).eps`: the scale of a group of zeros.
pub const BF16_EPS: u16 = 0x3C00;

/// Adding then subtracting 1.5 * 2^23 rounds an f32 of magnitude below 2^22 to an integer,
/// ties to even, in plain arithmetic that vectorizes (unlike a call to `round_ties_even`
/// on the baseline x86-64 target, which has no rounding instruction).
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Lanes of the independent accumulators in the reductions, so they vectorize.
const LANES: usize = 8;

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct Scheme {
    pub bits: u32,
    pub group_size: u64,
}

impl Scheme {
    pub fn check(&self) -> Result<(), String> {
        if self.bits != 4 && self.bits != 8 {
            return Err(format!("quantization bits must be 4 or 8, not {}", self.bits));
        }
        if self.group_size == 0 {
            return Err("quantization group size must be positive".into());
        }
        Ok(())
    }

    pub fn qmin(&self) -> f32 {
        -((1u32 << (self.bits - 1)) as f32)
    }

    pub fn qmax(&self) -> f32 {
        ((1u32 << (self.bits - 1)) - 1) as f32
    }

    /// compressed-tensors' symmetric scale divides absmax by half the integer range.
    pub fn divisor(&self) -> f32 {
        (self.qmax() - self.qmin()) / 2.0
    }

    pub fn per_word(&self) -> usize {
        (32 / self.bits) as usize
    }

    /// int32 words per row of `cols` elements: ceil(cols * bits / 32).
    pub fn words(&self, cols: u64) -> u64 {
        (cols * self.bits as u64).div_ceil(32)
    }

    pub fn groups(&self, cols: u64) -> u64 {
        cols / self.group_size
    }
}

/// Round to nearest, ties to even, for finite values (what torch does converting to bf16).
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
}

pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

pub fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1F) as u32;
    let man = (h & 0x3FF) as u32;
    match exp {
        // Subnormal: man * 2^-24, exact in f32.
        0 => sign * man as f32 * (1.0 / 16_777_216.0),
        31 => f32::from_bits(((h as u32 & 0x8000) << 16) | 0x7F80_0000 | (man << 13)),
        _ => f32::from_bits(((h as u32 & 0x8000) << 16) | ((exp + 112) << 23) | (man << 13)),
    }
}

/// Converts little-endian source elements to f32, appending to `out`.
pub fn extend_f32(out: &mut Vec<f32>, bytes: &[u8], dtype: Dtype) {
    match dtype {
        Dtype::BF16 => out.extend(bytes.chunks_exact(2).map(|c| bf16_to_f32(u16::from_le_bytes([c[0], c[1]])))),
        Dtype::F16 => out.extend(bytes.chunks_exact(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))),
        Dtype::F32 => out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        other => unreachable!("plan resolution refuses quantizing {}", other.name()),
    }
}

/// Sums over a tensor, accumulated in f64. The error of an element is `x - q * scale`
/// (the product is exact in f32: at most 8 + 8 significant bits).
#[derive(Default, Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    pub count: u64,
    pub sum_sq: f64,
    pub sum_sq_err: f64,
    pub max_abs_err: f64,
}

impl Stats {
    pub fn merge(&mut self, o: &Stats) {
        self.count += o.count;
        self.sum_sq += o.sum_sq;
        self.sum_sq_err += o.sum_sq_err;
        self.max_abs_err = self.max_abs_err.max(o.max_abs_err);
    }

    /// False when the data held NaN or infinity (their squares do not stay finite).
    pub fn finite(&self) -> bool {
        self.sum_sq.is_finite() && self.sum_sq_err.is_finite()
    }

    pub fn rms(&self) -> f64 {
        if self.count == 0 { 0.0 } else { (self.sum_sq / self.count as f64).sqrt() }
    }

    pub fn rms_err(&self) -> f64 {
        if self.count == 0 { 0.0 } else { (self.sum_sq_err / self.count as f64).sqrt() }
    }
}

/// Per-thread scratch for one row.
#[derive(Default)]
pub struct RowBuf {
    pub xs: Vec<f32>,
    qs: Vec<f32>,
}

/// Quantizes the row in `buf.xs` (its length a multiple of the group size), appending the
/// packed words and the BF16 scale bits, little-endian, to `words` and `scales`.
pub fn quantize_row(buf: &mut RowBuf, s: Scheme, words: &mut Vec<u8>, scales: &mut Vec<u8>, stats: &mut Stats) {
    let g = s.group_size as usize;
    let n = buf.xs.len();
    debug_assert_eq!(n % g, 0);
    buf.qs.clear();
    buf.qs.resize(n, 0.0);
    let (qmin, qmax, div) = (s.qmin(), s.qmax(), s.divisor());
    for (xg, qg) in buf.xs.chunks_exact(g).zip(buf.qs.chunks_exact_mut(g)) {
        let mut sb = bf16_bits(absmax(xg) / div);
        if sb == 0 {
            sb = BF16_EPS;
        }
        scales.extend_from_slice(&sb.to_le_bytes());
        let scale = bf16_to_f32(sb);
        quantize_group(xg, qg, scale, qmin, qmax);
        accumulate(xg, qg, scale, stats);
    }
    pack(&buf.qs, s, words);
}

fn absmax(xs: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            let v = x.abs();
            *a = if v > *a { v } else { *a };
        }
    }
    let mut m = tail.iter().fold(0f32, |m, &x| if x.abs() > m { x.abs() } else { m });
    for a in acc {
        m = if a > m { a } else { m };
    }
    m
}

fn quantize_group(xs: &[f32], qs: &mut [f32], scale: f32, qmin: f32, qmax: f32) {
    for (q, &x) in qs.iter_mut().zip(xs) {
        let v = x / scale;
        let v = if v < qmin { qmin } else if v > qmax { qmax } else { v };
        *q = (v + ROUND_MAGIC) - ROUND_MAGIC;
    }
}

fn accumulate(xs: &[f32], qs: &[f32], scale: f32, st: &mut Stats) {
    let mut sq = [0f64; LANES];
    let mut sq_err = [0f64; LANES];
    let mut mx = [0f64; LANES];
    let xc = xs.chunks_exact(LANES);
    let qc = qs.chunks_exact(LANES);
    let (xt, qt) = (xc.remainder(), qc.remainder());
    for (x8, q8) in xc.zip(qc) {
        for l in 0..LANES {
            let x = x8[l] as f64;
            let e = x - (q8[l] * scale) as f64;
            sq[l] += x * x;
            sq_err[l] += e * e;
            let a = e.abs();
            mx[l] = if a > mx[l] { a } else { mx[l] };
        }
    }
    for (&x, &q) in xt.iter().zip(qt) {
        let x = x as f64;
        let e = x - (q * scale) as f64;
        sq[0] += x * x;
        sq_err[0] += e * e;
        mx[0] = mx[0].max(e.abs());
    }
    st.count += xs.len() as u64;
    st.sum_sq += sq.iter().sum::<f64>();
    st.sum_sq_err += sq_err.iter().sum::<f64>();
    st.max_abs_err = mx.iter().fold(st.max_abs_err, |m, &a| m.max(a));
}

/// Packs integer-valued f32s in [qmin, qmax] into int32 words, `32 / bits` per word.
fn pack(qs: &[f32], s: Scheme, out: &mut Vec<u8>) {
    let per = s.per_word();
    let offset = 1i32 << (s.bits - 1);
    let mask = (1u32 << s.bits) - 1;
    let chunks = qs.chunks_exact(per);
    let tail = chunks.remainder();
    for c in chunks {
        let mut w = 0u32;
        for (k, &q) in c.iter().enumerate() {
            w |= ((q as i32 + offset) as u32 & mask) << (k as u32 * s.bits);
        }
        out.extend_from_slice(&w.to_le_bytes());
    }
    if !tail.is_empty() {
        // The library pads rows to whole words with zero bits (after its offset).
        let mut w = 0u32;
        for (k, &q) in tail.iter().enumerate() {
            w |= ((q as i32 + offset) as u32 & mask) << (k as u32 * s.bits);
        }
        out.extend_from_slice(&w.to_le_bytes());
    }
}

/// The inverse of the packing, for tests and checks: `cols` signed values per row.
pub fn unpack_row(words: &[u8], s: Scheme, cols: usize) -> Vec<i32> {
    let per = s.per_word();
    let mask = (1u32 << s.bits) - 1;
    let offset = 1i32 << (s.bits - 1);
    (0..cols)
        .map(|i| {
            let w = u32::from_le_bytes(words[i / per * 4..i / per * 4 + 4].try_into().expect("4 bytes"));
            ((w >> ((i % per) as u32 * s.bits)) & mask) as i32 - offset
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INT4: Scheme = Scheme { bits: 4, group_size: 8 };

    fn run(xs: &[f32], s: Scheme) -> (Vec<u8>, Vec<u16>, Stats) {
        let mut buf = RowBuf { xs: xs.to_vec(), ..Default::default() };
        let (mut words, mut scales, mut st) = (Vec::new(), Vec::new(), Stats::default());
        quantize_row(&mut buf, s, &mut words, &mut scales, &mut st);
        let scales = scales.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        (words, scales, st)
    }

    #[test]
    fn pack_unpack_round_trip() {
        for s in [INT4, Scheme { bits: 8, group_size: 4 }] {
            let vals: Vec<f32> = (0..40i32).map(|i| (i % (1 << s.bits) - (1 << (s.bits - 1))) as f32).collect();
            let mut words = Vec::new();
            pack(&vals, s, &mut words);
            assert_eq!(words.len() as u64, s.words(40) * 4);
            let back: Vec<f32> = unpack_row(&words, s, 40).into_iter().map(|v| v as f32).collect();
            assert_eq!(back, vals);
        }
    }

    #[test]
    fn int4_word_layout_first_element_in_lowest_nibble() {
        // q = -8..7 -> nibbles 0..15; element k of the word at bits 4k.
        let vals: Vec<f32> = (-8..0).map(|v| v as f32).collect();
        let mut words = Vec::new();
        pack(&vals, INT4, &mut words);
        assert_eq!(u32::from_le_bytes(words[..4].try_into().unwrap()), 0x7654_3210);
        // A partial last word is padded with zero bits.
        let mut words = Vec::new();
        pack(&[7.0, -8.0, 0.0], INT4, &mut words);
        assert_eq!(u32::from_le_bytes(words[..4].try_into().unwrap()), 0x0000_080F);
    }

    #[test]
    fn scale_is_absmax_over_7_5_in_bf16_and_values_round_half_to_even() {
        // absmax 7.5 -> scale 1.0; x / 1.0 = 2.5 -> 2, 3.5 -> 4, -2.5 -> -2, 7.5 -> clamp 7, -7.5 -> -8
        let xs = [2.5, 3.5, -2.5, 7.5, -7.5, 0.49, -0.5, 1.5];
        let (words, scales, st) = run(&xs, INT4);
        assert_eq!(scales, [bf16_bits(1.0)]);
        assert_eq!(unpack_row(&words, INT4, 8), [2, 4, -2, 7, -8, 0, 0, 2]);
        assert_eq!(st.max_abs_err, 0.5);
        assert_eq!(st.count, 8);
    }

    #[test]
    fn all_zero_group_gets_the_bf16_epsilon_scale() {
        let mut xs = vec![0.0f32; 8];
        xs.extend([1.0, -1.0, 0.5, 0.25, 0.0, 0.0, 0.0, 0.0]);
        let (words, scales, st) = run(&xs, INT4);
        assert_eq!(scales[0], BF16_EPS);
        assert_eq!(&unpack_row(&words, INT4, 16)[..8], [0; 8]);
        assert!(st.finite() && st.sum_sq_err.is_finite());
        // -0.0 is zero too.
        let (_, scales, _) = run(&[-0.0; 8], INT4);
        assert_eq!(scales, [BF16_EPS]);
    }

    #[test]
    fn one_huge_value_flattens_the_rest_of_its_group_only() {
        let mut xs = vec![0.01f32; 16];
        xs[3] = 1.0e4;
        let (words, scales, st) = run(&xs, INT4);
        let q = unpack_row(&words, INT4, 16);
        assert_eq!(q[3], 7);
        assert!(q[..8].iter().enumerate().all(|(i, &v)| i == 3 || v == 0));
        // The second group keeps its own scale: 0.01 / bf16(0.01 / 7.5) rounds to 7 or 8 -> clamped 7.
        assert_eq!(scales[1], bf16_bits(0.01f32 / 7.5));
        assert!(q[8..].iter().all(|&v| v == 7));
        // The worst error is the huge value's own: it maps to 7.5 steps and is clamped to 7.
        assert_eq!(scales[0], bf16_bits(1.0e4 / 7.5));
        assert_eq!(st.max_abs_err, (1.0e4 - 7.0 * bf16_to_f32(scales[0])) as f64);
    }

    #[test]
    fn non_finite_values_are_visible_in_the_stats() {
        let (_, _, st) = run(&[f32::NAN, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], INT4);
        assert!(!st.finite());
        let (_, _, st) = run(&[f32::INFINITY, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], INT4);
        assert!(!st.finite());
    }

    #[test]
    fn int8_uses_127_5_and_full_range() {
        let s = Scheme { bits: 8, group_size: 4 };
        let (words, scales, _) = run(&[127.5, -127.5, 0.5, 1.5], s);
        assert_eq!(scales, [bf16_bits(1.0)]);
        assert_eq!(unpack_row(&words, s, 4), [127, -128, 0, 2]);
        assert_eq!(u32::from_le_bytes(words[..4].try_into().unwrap()), 0x82_80_00_FF);
    }

    #[test]
    fn conversions() {
        assert_eq!(bf16_bits(1.0), 0x3F80);
        assert_eq!(bf16_bits(f32::from_bits(0x3F80_8000)), 0x3F80); // tie -> even
        assert_eq!(bf16_bits(f32::from_bits(0x3F81_8000)), 0x3F82);
        assert_eq!(f16_to_f32(0x3C00), 1.0);
        assert_eq!(f16_to_f32(0xC000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7BFF), 65504.0);
        assert!(f16_to_f32(0x7C01).is_nan());
        assert_eq!(bf16_to_f32(BF16_EPS), 2f32.powi(-7));
    }
}
