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
//!
//! Row parts: the I32 words, then the BF16 scales (the plan adds the I64 shape).

use super::{absmax, accumulate, bf16_bits, bf16_to_f32, pack, words, RowBuf, RowPart, Stats, MAGIC_BITS, ROUND_MAGIC};
use crate::dtype::Dtype;

/// BF16 bits of 2^-7, `torch.finfo(torch.bfloat16).eps`: the scale of a group of zeros.
pub const BF16_EPS: u16 = 0x3C00;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Symmetric {
    pub bits: u32,
    pub group_size: u64,
}

impl Symmetric {
    pub fn check(&self, cols: u64) -> Result<(), String> {
        if self.bits != 4 && self.bits != 8 {
            return Err(format!("quantization bits must be 4 or 8, not {}", self.bits));
        }
        if self.group_size == 0 {
            return Err("quantization group size must be positive".into());
        }
        check_groups(cols, self.group_size)
    }

    pub fn row_parts(&self, cols: u64) -> [RowPart; 2] {
        [
            RowPart { dtype: Dtype::I32, width: words(cols, self.bits) },
            RowPart { dtype: Dtype::BF16, width: cols / self.group_size },
        ]
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

    #[inline(always)]
    pub(super) fn row(&self, buf: &mut RowBuf, outs: &mut [Vec<u8>], stats: &mut Stats) {
        let [words, scales] = outs else { unreachable!("two row parts") };
        let g = self.group_size as usize;
        debug_assert_eq!(buf.xs.len() % g, 0);
        buf.prepare();
        let (qmin, qmax, div) = (self.qmin(), self.qmax(), self.divisor());
        let offset = 1u32 << (self.bits - 1);
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
        pack(&buf.fields, self.bits, words);
    }
}

/// The whole-group rule shared by the group-wise kernels.
pub(super) fn check_groups(cols: u64, group_size: u64) -> Result<(), String> {
    if cols % group_size != 0 {
        return Err(format!(
            "width {cols} is not a multiple of the quantization group size {group_size} (every group must be whole)"
        ));
    }
    Ok(())
}

/// `field = round(clamp(x / scale)) + offset` and `err = x - round(..) * scale`. The rounding
/// adds 1.5 * 2^23, so the integer sits in the low mantissa bits of the sum: no float-to-int
/// conversion (whose saturating semantics keep Rust's `as` from vectorizing). The error is
/// exact in f32: `x` and `q * scale` are within a factor of two of each other unless `q` is 0
/// (then the error is `x` itself), so their difference is representable (Sterbenz).
#[inline(always)]
fn quantize_group(xs: &[f32], fields: &mut [u8], errs: &mut [f32], scale: f32, qmin: f32, qmax: f32, offset: u32) {
    for ((f, e), &x) in fields.iter_mut().zip(errs.iter_mut()).zip(xs) {
        let v = x / scale;
        let v = if v < qmin { qmin } else if v > qmax { qmax } else { v };
        let m = v + ROUND_MAGIC;
        *f = m.to_bits().wrapping_sub(MAGIC_BITS).wrapping_add(offset) as u8;
        *e = x - (m - ROUND_MAGIC) * scale;
    }
}

/// The signed values of a packed row, for tests and checks.
pub fn unpack_row(words: &[u8], bits: u32, cols: usize) -> Vec<i32> {
    let offset = 1i32 << (bits - 1);
    super::unpack(words, bits, cols).into_iter().map(|f| f as i32 - offset).collect()
}

#[cfg(test)]
mod tests {
    use super::super::Kernel;
    use super::*;

    const INT4: Symmetric = Symmetric { bits: 4, group_size: 8 };

    fn run(xs: &[f32], s: Symmetric) -> (Vec<u8>, Vec<u16>, Stats) {
        let mut buf = RowBuf { xs: xs.to_vec(), ..Default::default() };
        let (mut outs, mut st) = (vec![Vec::new(), Vec::new()], Stats::default());
        Kernel::Symmetric(s).quantize_row(&mut buf, &mut outs, &mut st);
        let scales = outs[1].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        (outs.swap_remove(0), scales, st)
    }

    #[test]
    fn int4_fields_are_q_plus_8_first_element_in_lowest_nibble() {
        // absmax 7.5 -> scale 1; q = -8..7 -> nibbles 0..15.
        let (words, _, _) = run(&[-7.5, -7.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0], INT4);
        assert_eq!(u32::from_le_bytes(words[..4].try_into().unwrap()), 0x7654_3210);
    }

    #[test]
    fn avx2_and_baseline_kernels_agree() {
        let xs: Vec<f32> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) % 10_007) as f32 * 1e-4 - 0.5).collect();
        for s in [Symmetric { bits: 4, group_size: 128 }, Symmetric { bits: 8, group_size: 32 }] {
            let mut out = Vec::new();
            for force_baseline in [true, false] {
                let mut buf = RowBuf { xs: xs.clone(), ..Default::default() };
                let (mut outs, mut st) = (vec![Vec::new(), Vec::new()], Stats::default());
                if force_baseline {
                    Kernel::Symmetric(s).quantize_row_baseline(&mut buf, &mut outs, &mut st);
                } else {
                    Kernel::Symmetric(s).quantize_row(&mut buf, &mut outs, &mut st);
                }
                out.push((outs, st));
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
        assert_eq!(unpack_row(&words, 4, 8), [2, 4, -2, 7, -8, 0, 0, 2]);
        assert_eq!(st.max_abs_err, 0.5);
        assert_eq!(st.count, 8);
    }

    #[test]
    fn all_zero_group_gets_the_bf16_epsilon_scale() {
        let mut xs = vec![0.0f32; 8];
        xs.extend([1.0, -1.0, 0.5, 0.25, 0.0, 0.0, 0.0, 0.0]);
        let (words, scales, st) = run(&xs, INT4);
        assert_eq!(scales[0], BF16_EPS);
        assert_eq!(&unpack_row(&words, 4, 16)[..8], [0; 8]);
        assert!(st.finite() && st.sum_sq_err.is_finite());
        // -0.0 is zero too.
        let (_, scales, _) = run(&[-0.0; 8], INT4);
        assert_eq!(scales, [BF16_EPS]);
        assert_eq!(bf16_to_f32(BF16_EPS), 2f32.powi(-7));
    }

    #[test]
    fn one_huge_value_flattens_the_rest_of_its_group_only() {
        let mut xs = vec![0.01f32; 16];
        xs[3] = 1.0e4;
        let (words, scales, st) = run(&xs, INT4);
        let q = unpack_row(&words, 4, 16);
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
        let s = Symmetric { bits: 8, group_size: 4 };
        let (words, scales, _) = run(&[127.5, -127.5, 0.5, 1.5], s);
        assert_eq!(scales, [bf16_bits(1.0)]);
        assert_eq!(unpack_row(&words, 8, 4), [127, -128, 0, 2]);
        assert_eq!(u32::from_le_bytes(words[..4].try_into().unwrap()), 0x82_80_00_FF);
    }

    #[test]
    fn checks_and_row_parts() {
        assert_eq!(INT4.check(16), Ok(()));
        assert_eq!(Symmetric { bits: 3, group_size: 8 }.check(16).unwrap_err(), "quantization bits must be 4 or 8, not 3");
        assert_eq!(Symmetric { bits: 4, group_size: 0 }.check(16).unwrap_err(), "quantization group size must be positive");
        assert_eq!(
            INT4.check(20).unwrap_err(),
            "width 20 is not a multiple of the quantization group size 8 (every group must be whole)"
        );
        let parts = INT4.row_parts(24);
        assert_eq!((parts[0].dtype, parts[0].width, parts[1].dtype, parts[1].width), (Dtype::I32, 3, Dtype::BF16, 3));
    }
}
