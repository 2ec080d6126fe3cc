//! Group-wise symmetric integer quantization of 2-D weights, stored in the compressed-tensors
//! `pack-quantized` layout that transformers (with the compressed-tensors package) and vLLM load.
//!
//! For each row and each group of `group_size` consecutive columns, following
//! compressed-tensors 0.20 (`calculate_qparams`, `quantize`, `pack_to_int32`):
//! - `scale = bf16(absmax / ((qmax - qmin) / 2))`: absmax / 7.5 for int4, / 127.5 for int8,
//!   divided in f32 and rounded to BF16 to nearest, ties to even. A scale that rounds to zero
//!   (an all-zero group, or one whose values are all below ~1e-39) becomes BF16's epsilon
//!   2^-7, as the library does, so no division by zero and no NaN.
//! - `q = round_half_even(clamp(x / scale, qmin, qmax))` with `x / scale` in f32: what the
//!   library's `quantize` computes for f32 input, and its Triton kernel for any input. (Given a
//!   BF16 tensor on CPU, torch would round `x / scale` to BF16 before rounding to an integer;
//!   that changes about 1% of int4 and 12% of int8 values and raises the int8 RMS error by
//!   about 11%, so the f32 quotient is used.)
//! - the error `x - q * scale` of every element is summed in the same pass, for the report.
//! - words: `q + 2^(bits-1)` as unsigned `bits`-bit fields, element `i` of a row at bit `i * bits`
//!   of the little-endian bit stream, i.e. word `j` holds elements `j*32/bits ..`, the first in
//!   the lowest bits. A row's last word is zero-padded when its width is not a multiple of
//!   32 / bits.

use crate::dtype::Dtype;

/// BF16 bits of 2^-7, `torch.finfo(torch.bfloat16).eps`: the scale of a group of zeros.
pub const BF16_EPS: u16 = 0x3C00;

/// Adding then subtracting 1.5 * 2^23 rounds an f32 of magnitude below 2^22 to an integer,
/// ties to even, in plain arithmetic that vectorizes (unlike a call to `round_ties_even`
/// on the baseline x86-64 target, which has no rounding instruction).
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Lanes of the independent accumulators in the reductions, so they vectorize.
const LANES: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// Converts little-endian source elements to f32 into `dst` (as many as it holds).
pub fn to_f32(dst: &mut [f32], bytes: &[u8], dtype: Dtype) {
    debug_assert_eq!(dst.len() as u64 * dtype.size(), bytes.len() as u64);
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        unsafe { convert_avx2(dst, bytes, dtype) };
        return;
    }
    convert(dst, bytes, dtype);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn convert_avx2(dst: &mut [f32], bytes: &[u8], dtype: Dtype) {
    convert(dst, bytes, dtype);
}

#[inline(always)]
fn convert(dst: &mut [f32], bytes: &[u8], dtype: Dtype) {
    match dtype {
        Dtype::BF16 => {
            for (o, c) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        Dtype::F16 => {
            for (o, c) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        Dtype::F32 => {
            for (o, c) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
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
    /// `q + 2^(bits-1)` per element: the unsigned field that gets packed.
    fields: Vec<u8>,
    /// `x - q * scale` per element.
    errs: Vec<f32>,
}

/// Quantizes the row in `buf.xs` (its length a multiple of the group size), appending the
/// packed words and the BF16 scale bits, little-endian, to `words` and `scales`.
pub fn quantize_row(buf: &mut RowBuf, s: Scheme, words: &mut Vec<u8>, scales: &mut Vec<u8>, stats: &mut Stats) {
    debug_assert_eq!(buf.xs.len() as u64 % s.group_size, 0);
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        unsafe { row_avx2(buf, s, words, scales, stats) };
        return;
    }
    row_kernel(buf, s, words, scales, stats);
}

/// The same code compiled for AVX2 (8 lanes of f32 instead of SSE2's 4). Every operation is
/// exactly rounded IEEE arithmetic, so both versions give identical bytes and sums.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_avx2(buf: &mut RowBuf, s: Scheme, words: &mut Vec<u8>, scales: &mut Vec<u8>, stats: &mut Stats) {
    row_kernel(buf, s, words, scales, stats);
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static AVX2: OnceLock<bool> = OnceLock::new();
    *AVX2.get_or_init(|| std::arch::is_x86_feature_detected!("avx2"))
}

#[inline(always)]
fn row_kernel(buf: &mut RowBuf, s: Scheme, words: &mut Vec<u8>, scales: &mut Vec<u8>, stats: &mut Stats) {
    let g = s.group_size as usize;
    let n = buf.xs.len();
    // Every element is overwritten below; resizing only when the width changes avoids
    // clearing the buffers for every row.
    buf.fields.resize(n, 0);
    buf.errs.resize(n, 0.0);
    let (qmin, qmax, div) = (s.qmin(), s.qmax(), s.divisor());
    let offset = 1u32 << (s.bits - 1);
    let groups = buf.xs.chunks_exact(g).zip(buf.fields.chunks_exact_mut(g)).zip(buf.errs.chunks_exact_mut(g));
    for ((xg, fg), eg) in groups {
        let mut sb = bf16_bits(absmax(xg) / div);
        if sb == 0 {
            sb = BF16_EPS;
        }
        scales.extend_from_slice(&sb.to_le_bytes());
        quantize_group(xg, fg, eg, bf16_to_f32(sb), qmin, qmax, offset);
    }
    accumulate(&buf.xs, &buf.errs, stats);
    pack(&buf.fields, s, words);
}

#[inline(always)]
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

/// `field = round(clamp(x / scale)) + offset` and `err = x - round(..) * scale`. The rounding
/// adds 1.5 * 2^23, so the integer sits in the low mantissa bits of the sum: no float-to-int
/// conversion (whose saturating semantics keep Rust's `as` from vectorizing). The error is
/// exact in f32: `x` and `q * scale` are within a factor of two of each other unless `q` is 0
/// (then the error is `x` itself), so their difference is representable (Sterbenz).
#[inline(always)]
fn quantize_group(xs: &[f32], fields: &mut [u8], errs: &mut [f32], scale: f32, qmin: f32, qmax: f32, offset: u32) {
    const MAGIC_BITS: u32 = 0x4B40_0000; // bits of ROUND_MAGIC
    for ((f, e), &x) in fields.iter_mut().zip(errs.iter_mut()).zip(xs) {
        let v = x / scale;
        let v = if v < qmin { qmin } else if v > qmax { qmax } else { v };
        let m = v + ROUND_MAGIC;
        *f = m.to_bits().wrapping_sub(MAGIC_BITS).wrapping_add(offset) as u8;
        *e = x - (m - ROUND_MAGIC) * scale;
    }
}

/// Sums of squares in f64 and the largest |error|, each in independent lane accumulators so
/// that the loops vectorize and the result does not depend on the vector width.
#[inline(always)]
fn accumulate(xs: &[f32], errs: &[f32], st: &mut Stats) {
    st.count += xs.len() as u64;
    st.sum_sq += sum_squares(xs);
    st.sum_sq_err += sum_squares(errs);
    // A NaN error (from NaN input) is skipped here and caught by `finite()` through the sums.
    st.max_abs_err = st.max_abs_err.max(absmax(errs) as f64);
}

#[inline(always)]
fn sum_squares(xs: &[f32]) -> f64 {
    // 16 lanes: four 4-wide accumulators, so the additions do not wait on each other.
    const F64_LANES: usize = 16;
    let mut acc = [0f64; F64_LANES];
    let chunks = xs.chunks_exact(F64_LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            let x = x as f64;
            *a += x * x;
        }
    }
    for (a, &x) in acc.iter_mut().zip(tail) {
        let x = x as f64;
        *a += x * x;
    }
    acc.iter().sum()
}

/// Packs the fields into int32 words. Little-endian words whose first element sits in the
/// lowest bits are the same bytes as the fields packed low-nibble-first (int4) or as they are
/// (int8); a row that does not fill its last word is padded with zero bits.
#[inline(always)]
fn pack(fields: &[u8], s: Scheme, out: &mut Vec<u8>) {
    let start = out.len();
    match s.bits {
        4 => {
            let pairs = fields.chunks_exact(2);
            let odd = pairs.remainder().first().copied();
            out.extend(pairs.map(|p| p[0] | (p[1] << 4)));
            out.extend(odd);
        }
        _ => out.extend_from_slice(fields),
    }
    let words = s.words(fields.len() as u64) as usize;
    out.resize(start + words * 4, 0);
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

    /// Fields (q + offset) of signed values.
    fn fields(vals: &[i32], s: Scheme) -> Vec<u8> {
        vals.iter().map(|v| (v + (1 << (s.bits - 1))) as u8).collect()
    }

    #[test]
    fn pack_unpack_round_trip() {
        for s in [INT4, Scheme { bits: 8, group_size: 4 }] {
            for n in [40, 41, 37, 1] {
                let vals: Vec<i32> = (0..n).map(|i| i * 7 % (1 << s.bits) - (1 << (s.bits - 1))).collect();
                let mut words = vec![0xAA]; // packing appends
                pack(&fields(&vals, s), s, &mut words);
                assert_eq!(words.len() as u64 - 1, s.words(n as u64) * 4);
                assert_eq!(unpack_row(&words[1..], s, n as usize), vals);
            }
        }
    }

    #[test]
    fn int4_word_layout_first_element_in_lowest_nibble() {
        // q = -8..7 -> nibbles 0..15; element k of the word at bits 4k.
        let mut words = Vec::new();
        pack(&fields(&[-8, -7, -6, -5, -4, -3, -2, -1], INT4), INT4, &mut words);
        assert_eq!(u32::from_le_bytes(words[..4].try_into().unwrap()), 0x7654_3210);
        // A partial last word is padded with zero bits.
        let mut words = Vec::new();
        pack(&fields(&[7, -8, 0], INT4), INT4, &mut words);
        assert_eq!(words, [0x0F, 0x08, 0, 0]);
    }

    #[test]
    fn avx2_and_baseline_kernels_agree() {
        let xs: Vec<f32> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) % 10_007) as f32 * 1e-4 - 0.5).collect();
        for s in [Scheme { bits: 4, group_size: 128 }, Scheme { bits: 8, group_size: 32 }] {
            let mut out = Vec::new();
            for force_baseline in [true, false] {
                let mut buf = RowBuf { xs: xs.clone(), ..Default::default() };
                let (mut w, mut sc, mut st) = (Vec::new(), Vec::new(), Stats::default());
                if force_baseline {
                    row_kernel(&mut buf, s, &mut w, &mut sc, &mut st);
                } else {
                    quantize_row(&mut buf, s, &mut w, &mut sc, &mut st);
                }
                out.push((w, sc, st));
            }
            assert_eq!(out[0], out[1]);
        }
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
