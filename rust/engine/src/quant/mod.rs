//! Row-wise quantization kernels and what they share (conversions to f32, error statistics,
//! bit packing, the AVX2 dispatch).
//!
//! # The contract between a kernel and the band machinery (`qband.rs`)
//! Every scheme goes through the same path: `qband` reads a band of output rows through the
//! tensor's slicing operation, converts each row to f32 into [`RowBuf::xs`] and calls
//! [`Kernel::quantize_row`]. A kernel therefore only has to:
//! - say what one row of `cols` values becomes: [`Kernel::row_parts`] lists its *row parts*
//!   (dtype and elements per row of each), in the order they are laid out in the output;
//! - refuse what it cannot express before anything is written ([`Kernel::check`]);
//! - append exactly `width * dtype.size()` bytes to `outs[k]` for each row part `k`, per row;
//! - add every element's error to [`Stats`], so that NaN or infinity in the input makes
//!   [`Stats::finite`] false (the engine then refuses the tensor);
//! - give the same bytes whatever the CPU: it is compiled twice (baseline and AVX2) from one
//!   `#[inline(always)]` body, with exactly rounded IEEE arithmetic only.
//!
//! Part `k` of a tensor is its rows back to back, so a band of rows is one contiguous range of
//! every row part; parts follow each other in the output, then any parts the plan knows at
//! planning time (literals, e.g. a shape). A block format whose row is a run of blocks (GGML)
//! is one row part of U8 `bytes per row`.

pub mod affine;
pub mod symmetric;

use crate::dtype::Dtype;

pub use affine::Affine;
pub use symmetric::Symmetric;

/// Adding then subtracting 1.5 * 2^23 rounds an f32 of magnitude below 2^22 to an integer,
/// ties to even, in plain arithmetic that vectorizes (unlike a call to `round_ties_even`
/// on the baseline x86-64 target, which has no rounding instruction).
pub(crate) const ROUND_MAGIC: f32 = 12_582_912.0;
/// Bits of `ROUND_MAGIC`: the integer sits in the low mantissa bits of `v + ROUND_MAGIC`.
pub(crate) const MAGIC_BITS: u32 = 0x4B40_0000;

/// Lanes of the independent accumulators in the reductions, so they vectorize.
const LANES: usize = 8;

/// A quantization scheme's arithmetic, without the names its parts get in a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    Symmetric(Symmetric),
    Affine(Affine),
}

/// One row part: `width` elements of `dtype` per row of the tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowPart {
    pub dtype: Dtype,
    pub width: u64,
}

impl RowPart {
    pub fn row_bytes(&self) -> u64 {
        self.width * self.dtype.size()
    }
}

impl Kernel {
    /// Refuses parameters the kernel does not implement and row widths it cannot split.
    pub fn check(&self, cols: u64) -> Result<(), String> {
        match self {
            Kernel::Symmetric(k) => k.check(cols),
            Kernel::Affine(k) => k.check(cols),
        }
    }

    /// The row parts of a row of `cols` values, in output order.
    pub fn row_parts(&self, cols: u64) -> Vec<RowPart> {
        match self {
            Kernel::Symmetric(k) => k.row_parts(cols).to_vec(),
            Kernel::Affine(k) => k.row_parts(cols).to_vec(),
        }
    }

    pub fn bits(&self) -> u32 {
        match self {
            Kernel::Symmetric(k) => k.bits,
            Kernel::Affine(k) => k.bits,
        }
    }

    pub fn group_size(&self) -> u64 {
        match self {
            Kernel::Symmetric(k) => k.group_size,
            Kernel::Affine(k) => k.group_size,
        }
    }

    /// Quantizes the row in `buf.xs` (a width `check` accepted), appending its bytes of row
    /// part `k` to `outs[k]`.
    pub fn quantize_row(&self, buf: &mut RowBuf, outs: &mut [Vec<u8>], stats: &mut Stats) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: the CPU supports AVX2 (checked at run time).
            unsafe { self.row_avx2(buf, outs, stats) };
            return;
        }
        self.row(buf, outs, stats);
    }

    /// The same code compiled for AVX2 (8 lanes of f32 instead of SSE2's 4).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn row_avx2(&self, buf: &mut RowBuf, outs: &mut [Vec<u8>], stats: &mut Stats) {
        self.row(buf, outs, stats);
    }

    #[inline(always)]
    fn row(&self, buf: &mut RowBuf, outs: &mut [Vec<u8>], stats: &mut Stats) {
        match self {
            Kernel::Symmetric(k) => k.row(buf, outs, stats),
            Kernel::Affine(k) => k.row(buf, outs, stats),
        }
    }

    /// The baseline build whatever the CPU, for tests comparing it with the AVX2 build.
    #[cfg(test)]
    pub(crate) fn quantize_row_baseline(&self, buf: &mut RowBuf, outs: &mut [Vec<u8>], stats: &mut Stats) {
        self.row(buf, outs, stats);
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static AVX2: OnceLock<bool> = OnceLock::new();
    *AVX2.get_or_init(|| std::arch::is_x86_feature_detected!("avx2"))
}

/// Round to nearest, ties to even, for finite values (what torch and mlx do converting to bf16).
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

/// Sums over a tensor, accumulated in f64. What an element's error is depends on the kernel
/// (the source value minus its dequantized value).
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
    /// The unsigned field of each element that gets packed.
    pub(crate) fields: Vec<u8>,
    /// Each element's error.
    pub(crate) errs: Vec<f32>,
    /// Two values per group, for kernels that compute group parameters in a pass of their own.
    pub(crate) group_a: Vec<f32>,
    pub(crate) group_b: Vec<f32>,
}

impl RowBuf {
    /// Sizes the scratch for the current row. Every element is overwritten by the kernel;
    /// resizing only when the width changes avoids clearing the buffers for every row.
    #[inline(always)]
    pub(crate) fn prepare(&mut self) {
        let n = self.xs.len();
        self.fields.resize(n, 0);
        self.errs.resize(n, 0.0);
    }
}

#[inline(always)]
pub(crate) fn absmax(xs: &[f32]) -> f32 {
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

/// Sums of squares in f64 and the largest |error|, each in independent lane accumulators so
/// that the loops vectorize and the result does not depend on the vector width.
#[inline(always)]
pub(crate) fn accumulate(xs: &[f32], errs: &[f32], st: &mut Stats) {
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

/// 32-bit words per row of `n` fields of `bits` bits: ceil(n * bits / 32).
pub fn words(n: u64, bits: u32) -> u64 {
    (n * bits as u64).div_ceil(32)
}

/// Packs `bits`-bit fields (4 or 8) into little-endian 32-bit words, element `k` of a word at
/// bits `k * bits`: the same bytes as the fields packed low-nibble-first (4 bits) or as they
/// are (8 bits). A row that does not fill its last word is padded with zero bits.
#[inline(always)]
pub(crate) fn pack(fields: &[u8], bits: u32, out: &mut Vec<u8>) {
    let start = out.len();
    match bits {
        4 => {
            let pairs = fields.chunks_exact(2);
            let odd = pairs.remainder().first().copied();
            out.extend(pairs.map(|p| p[0] | (p[1] << 4)));
            out.extend(odd);
        }
        _ => out.extend_from_slice(fields),
    }
    out.resize(start + words(fields.len() as u64, bits) as usize * 4, 0);
}

/// The inverse of [`pack`], for tests and checks: the first `n` unsigned fields of a row.
pub fn unpack(words: &[u8], bits: u32, n: usize) -> Vec<u32> {
    let per = (32 / bits) as usize;
    let mask = (1u32 << bits) - 1;
    (0..n)
        .map(|i| {
            let w = u32::from_le_bytes(words[i / per * 4..i / per * 4 + 4].try_into().expect("4 bytes"));
            (w >> ((i % per) as u32 * bits)) & mask
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_unpack_round_trip() {
        for bits in [4, 8] {
            for n in [40, 41, 37, 1] {
                let fields: Vec<u8> = (0..n).map(|i| (i * 7 % (1 << bits)) as u8).collect();
                let mut words_out = vec![0xAA]; // packing appends
                pack(&fields, bits, &mut words_out);
                assert_eq!(words_out.len() as u64 - 1, words(n as u64, bits) * 4);
                let back: Vec<u8> = unpack(&words_out[1..], bits, n as usize).iter().map(|&v| v as u8).collect();
                assert_eq!(back, fields);
            }
        }
    }

    #[test]
    fn first_element_sits_in_the_lowest_bits() {
        let mut out = Vec::new();
        pack(&[0, 1, 2, 3, 4, 5, 6, 7], 4, &mut out);
        assert_eq!(u32::from_le_bytes(out[..4].try_into().unwrap()), 0x7654_3210);
        let mut out = Vec::new();
        pack(&[0xFF, 0, 0x80, 0x82], 8, &mut out);
        assert_eq!(u32::from_le_bytes(out[..4].try_into().unwrap()), 0x82_80_00_FF);
        // A partial last word is padded with zero bits.
        let mut out = Vec::new();
        pack(&[15, 0, 8], 4, &mut out);
        assert_eq!(out, [0x0F, 0x08, 0, 0]);
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
    }
}
