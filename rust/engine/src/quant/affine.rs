//! Group-wise affine (min/max) quantization, bit for bit what `mx.quantize` (mlx 0.32, CPU)
//! computes for a float32, float16 or bfloat16 array; the parts are what MLX stores for a
//! quantized Linear or Embedding (`weight`, `scales`, `biases`).
//!
//! Per row and group of `group_size` values, with `n = 2^bits - 1`, all in f32:
//! ```text
//! lo, hi = min(group), max(group)
//! s = max((hi - lo) / n, 1e-7); edge = lo   if |lo| > |hi|
//! s = -max((hi - lo) / n, 1e-7); edge = hi  otherwise
//! q0 = rint(edge / s)                 (round half to even)
//! if q0 != 0: s = edge / q0; b = edge (so that 0.0 falls exactly on the grid)
//! else:       b = 0                   (a group of zeros, or of values far below 1e-7)
//! q = clamp(rint((x - b) / s), 0, n)  with this f32 s, not the stored one
//! ```
//! `scales = bf16(s)`, `biases = bf16(b)` (round to nearest even; MLX keeps the input's
//! dtype, so for a BF16 source these are the bytes `mx.quantize` returns, and for F16/F32
//! sources its float32 scales and biases rounded to BF16). Words: 8 4-bit or 4 8-bit values
//! per little-endian u32, element k at bits `k * bits`. The sign of `s` follows the edge, so
//! `q * s + b` reconstructs the group with the edge value itself exact.
//!
//! The report's error of an element is `x - (q * bf16(s) + bf16(b))` in f32.
//!
//! Row parts: the U32 words, the BF16 scales, the BF16 biases.

use super::symmetric::check_groups;
use super::{accumulate, bf16_bits, bf16_to_f32, pack, words, RowBuf, RowPart, Stats, MAGIC_BITS, ROUND_MAGIC};
use crate::dtype::Dtype;

/// Group sizes mlx's quantized matmul kernels are built for.
pub const GROUP_SIZES: [u64; 3] = [32, 64, 128];

/// The smallest step `mx.quantize` allows: a constant group gets this (signed) scale.
const MIN_STEP: f32 = 1e-7;

const LANES: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Affine {
    pub bits: u32,
    pub group_size: u64,
}

impl Affine {
    pub fn check(&self, cols: u64) -> Result<(), String> {
        if self.bits != 4 && self.bits != 8 {
            return Err(format!("affine quantization bits must be 4 or 8, not {}", self.bits));
        }
        if !GROUP_SIZES.contains(&self.group_size) {
            return Err(format!(
                "affine quantization group size must be 32, 64 or 128 (what mlx computes with), not {}",
                self.group_size
            ));
        }
        check_groups(cols, self.group_size)
    }

    pub fn row_parts(&self, cols: u64) -> [RowPart; 3] {
        let groups = cols / self.group_size;
        [
            RowPart { dtype: Dtype::U32, width: words(cols, self.bits) },
            RowPart { dtype: Dtype::BF16, width: groups },
            RowPart { dtype: Dtype::BF16, width: groups },
        ]
    }

    /// In three passes over the row's groups, so that the per-group arithmetic (two divisions
    /// and a rounding) runs vectorized across groups rather than as a scalar chain per group:
    /// extremes, then scales and biases, then the values.
    #[inline(always)]
    pub(super) fn row(&self, buf: &mut RowBuf, outs: &mut [Vec<u8>], stats: &mut Stats) {
        let [words, scales, biases] = outs else { unreachable!("three row parts") };
        let g = self.group_size as usize;
        debug_assert_eq!(buf.xs.len() % g, 0);
        buf.prepare();
        let top = ((1u32 << self.bits) - 1) as f32;
        let RowBuf { xs, fields, errs, group_a, group_b } = buf;
        let n_groups = xs.len() / g;
        group_a.resize(n_groups, 0.0);
        group_b.resize(n_groups, 0.0);
        for ((xg, lo), hi) in xs.chunks_exact(g).zip(group_a.iter_mut()).zip(group_b.iter_mut()) {
            (*lo, *hi) = min_max(xg);
        }
        // (lo, hi) -> (s, b) in place.
        for (a, b) in group_a.iter_mut().zip(group_b.iter_mut()) {
            (*a, *b) = scale_and_bias(*a, *b, top);
        }
        scales.extend(group_a.iter().flat_map(|&s| bf16_bits(s).to_le_bytes()));
        biases.extend(group_b.iter().flat_map(|&b| bf16_bits(b).to_le_bytes()));
        let groups = xs.chunks_exact(g).zip(fields.chunks_exact_mut(g)).zip(errs.chunks_exact_mut(g));
        for (((xg, fg), eg), (&s, &b)) in groups.zip(group_a.iter().zip(group_b.iter())) {
            let stored = (bf16_to_f32(bf16_bits(s)), bf16_to_f32(bf16_bits(b)));
            quantize_group(xg, fg, eg, (s, b), top, stored);
        }
        accumulate(xs, errs, stats);
        pack(fields, self.bits, words);
    }
}

/// The f32 step and offset of a group whose extremes are `lo` and `hi`; branch-free so that
/// the loop over groups vectorizes (both divisions are computed, one result is selected).
#[inline(always)]
fn scale_and_bias(lo: f32, hi: f32, top: f32) -> (f32, f32) {
    let step = (hi - lo) / top;
    let step = if step < MIN_STEP { MIN_STEP } else { step };
    let low_edge = lo.abs() > hi.abs();
    let s = if low_edge { step } else { -step };
    let edge = if low_edge { lo } else { hi };
    let q0 = (edge / s).round_ties_even();
    let on_grid = q0 != 0.0;
    let s_grid = edge / q0;
    (if on_grid { s_grid } else { s }, if on_grid { edge } else { 0.0 })
}

/// Minimum and maximum in lane accumulators (order-independent: the only values whose order
/// could matter are zeros of either sign, which give the same scale and bias, and NaN, which
/// the error statistics reject).
#[inline(always)]
fn min_max(xs: &[f32]) -> (f32, f32) {
    let mut lo = [f32::INFINITY; LANES];
    let mut hi = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for ((l, h), &x) in lo.iter_mut().zip(hi.iter_mut()).zip(c) {
            *l = if x < *l { x } else { *l };
            *h = if x > *h { x } else { *h };
        }
    }
    let (mut l, mut h) = (f32::INFINITY, f32::NEG_INFINITY);
    for &x in tail.iter().chain(&lo) {
        l = if x < l { x } else { l };
    }
    for &x in tail.iter().chain(&hi) {
        h = if x > h { x } else { h };
    }
    (l, h)
}

/// `field = clamp(rint((x - b) / s), 0, top)` and the error against the stored scale and bias.
/// Clamping before rounding gives the same integers as mlx's rounding first (the bounds are
/// integers), and keeps the value below 2^22 for the rounding trick (see `ROUND_MAGIC`).
#[inline(always)]
fn quantize_group(xs: &[f32], fields: &mut [u8], errs: &mut [f32], (s, b): (f32, f32), top: f32, (s_stored, b_stored): (f32, f32)) {
    for ((f, e), &x) in fields.iter_mut().zip(errs.iter_mut()).zip(xs) {
        let v = (x - b) / s;
        let v = if v < 0.0 { 0.0 } else if v > top { top } else { v };
        let m = v + ROUND_MAGIC;
        *f = m.to_bits().wrapping_sub(MAGIC_BITS) as u8;
        *e = x - ((m - ROUND_MAGIC) * s_stored + b_stored);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{unpack, Kernel};
    use super::*;

    const Q4: Affine = Affine { bits: 4, group_size: 32 };
    const Q8: Affine = Affine { bits: 8, group_size: 32 };

    struct Out {
        q: Vec<u32>,
        scales: Vec<u16>,
        biases: Vec<u16>,
        stats: Stats,
        words: Vec<u8>,
    }

    fn run(xs: &[f32], k: Affine) -> Out {
        let mut buf = RowBuf { xs: xs.to_vec(), ..Default::default() };
        let (mut outs, mut stats) = (vec![Vec::new(), Vec::new(), Vec::new()], Stats::default());
        Kernel::Affine(k).quantize_row(&mut buf, &mut outs, &mut stats);
        let halves = |b: &[u8]| b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect::<Vec<_>>();
        for (part, out) in k.row_parts(xs.len() as u64).iter().zip(&outs) {
            assert_eq!(out.len() as u64, part.row_bytes());
        }
        Out { q: unpack(&outs[0], k.bits, xs.len()), scales: halves(&outs[1]), biases: halves(&outs[2]), stats, words: outs[0].clone() }
    }

    /// One group: `vals` then `fill` up to the group size.
    fn group(vals: &[f32], fill: f32, g: usize) -> Vec<f32> {
        let mut v = vals.to_vec();
        v.resize(g, fill);
        v
    }

    #[test]
    fn negative_dominant_group_has_a_positive_scale_and_its_minimum_as_bias() {
        // lo = -8, hi = 7: |lo| > |hi|, s = 15 / 15 = 1, edge -8, q0 = -8, s = -8 / -8 = 1, b = -8.
        let xs = group(&[-8.0, 7.0, 0.0, -1.0, 3.0], 0.0, 32);
        let o = run(&xs, Q4);
        assert_eq!((bf16_to_f32(o.scales[0]), bf16_to_f32(o.biases[0])), (1.0, -8.0));
        assert_eq!(&o.q[..5], [0, 15, 8, 7, 11]);
        assert_eq!(o.stats.max_abs_err, 0.0);
    }

    #[test]
    fn positive_dominant_group_has_a_negative_scale_and_its_maximum_as_bias() {
        // lo = -7, hi = 8: s = -1, edge 8, q0 = -8, s = 8 / -8 = -1, b = 8: q = (x - 8) / -1.
        let xs = group(&[8.0, -7.0, 0.0, 1.0], 0.0, 32);
        let o = run(&xs, Q4);
        assert_eq!((bf16_to_f32(o.scales[0]), bf16_to_f32(o.biases[0])), (-1.0, 8.0));
        assert_eq!(&o.q[..4], [0, 15, 8, 7]);
        // Equal magnitudes take the maximum as the edge too.
        let o = run(&group(&[-1.0, 1.0], 0.0, 32), Q4);
        assert_eq!(bf16_to_f32(o.biases[0]), 1.0);
        assert!(bf16_to_f32(o.scales[0]) < 0.0);
    }

    #[test]
    fn values_round_half_to_even() {
        // s = 1, b = -8: (x + 8) lands on k + 0.5 for x = -7.5 .. 6.5; ties go to the even k.
        let mut xs = vec![-8.0, 7.0];
        xs.extend((0..15).map(|k| k as f32 - 7.5));
        let o = run(&group(&xs, 0.0, 32), Q4);
        assert_eq!((bf16_to_f32(o.scales[0]), bf16_to_f32(o.biases[0])), (1.0, -8.0));
        let expected: Vec<u32> = (0..15u32).map(|k| if k % 2 == 0 { k } else { k + 1 }).collect();
        assert_eq!(&o.q[2..17], expected);
        assert_eq!(o.stats.max_abs_err, 0.5);
    }

    #[test]
    fn the_edge_rounds_half_to_even_too() {
        // hi = 14.5, lo = -0.5 (n = 15): step 1, s = -1, edge 14.5, edge / s = -14.5 is a tie:
        // q0 = -14 (even; rounding away would give -15 and q = 15 for x = -0.5), s = 14.5 / -14.
        let o = run(&group(&[14.5, -0.5], 0.0, 32), Q4);
        let s = 14.5f32 / -14.0;
        assert_eq!((o.scales[0], bf16_to_f32(o.biases[0])), (bf16_bits(s), 14.5));
        // x = -0.5: (-0.5 - 14.5) / s = 14.48.. -> 14; x = 0: 14.5 / 14.5 * 14 = 14 -> 14.
        assert_eq!(&o.q[..2], [0, 14]);
        assert_eq!(o.q[2], 14);
    }

    #[test]
    fn constant_groups_sit_on_the_bias_with_the_minimum_step() {
        for c in [3.0f32, -3.0, 0.0078125] {
            let o = run(&[c; 32], Q4);
            // |lo| == |hi|: s = -1e-7, edge c, q0 = rint(c / -1e-7) != 0: s = c / q0, b = c.
            assert_eq!(bf16_to_f32(o.biases[0]), c, "{c}");
            assert_eq!(o.scales[0], bf16_bits(c / (c / -MIN_STEP).round_ties_even()), "{c}");
            assert!(o.q.iter().all(|&q| q == 0));
            assert_eq!(o.stats.max_abs_err, 0.0);
        }
    }

    #[test]
    fn zero_and_tiny_groups_have_no_bias() {
        // All zeros (of either sign): s = -1e-7, q0 = 0, b = 0, every q = 0.
        for z in [0.0f32, -0.0] {
            let o = run(&[z; 32], Q8);
            assert_eq!((o.scales[0], o.biases[0]), (bf16_bits(-MIN_STEP), 0));
            assert!(o.q.iter().all(|&q| q == 0));
        }
        // Denormals far below the minimum step: q0 = 0, b = 0, q = clamp(rint(x / s)):
        // with s = +1e-7 (negative-dominant) every value rounds to 0 or clamps to 0.
        let tiny = f32::from_bits(1); // 2^-149
        let xs = group(&[-3.0 * tiny, tiny, 2.0 * tiny], 0.0, 32);
        let o = run(&xs, Q4);
        assert_eq!((o.scales[0], o.biases[0]), (bf16_bits(MIN_STEP), 0));
        assert!(o.q.iter().all(|&q| q == 0));
    }

    #[test]
    fn every_group_has_its_own_parameters_and_words_hold_8_or_4_values() {
        let mut xs = group(&[-8.0, 7.0], 0.0, 32);
        xs.extend(group(&[8.0, -7.0], 0.0, 32));
        let o = run(&xs, Q4);
        assert_eq!(o.scales.iter().map(|&s| bf16_to_f32(s)).collect::<Vec<_>>(), [1.0, -1.0]);
        assert_eq!(o.biases.iter().map(|&s| bf16_to_f32(s)).collect::<Vec<_>>(), [-8.0, 8.0]);
        // First word: q = 0, 15, then six zeros at q = 8.
        assert_eq!(u32::from_le_bytes(o.words[..4].try_into().unwrap()), 0x8888_88F0);
        assert_eq!(o.words.len(), 64 / 8 * 4);
        let o = run(&xs, Q8);
        // 8 bits: s = 15 / 255, q of -8 = 0, of 7 = 255.
        assert_eq!(u32::from_le_bytes(o.words[..4].try_into().unwrap()) & 0xFFFF, 0xFF00);
        assert_eq!(o.words.len(), 64 / 4 * 4);
    }

    #[test]
    fn non_finite_values_are_visible_in_the_stats() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let o = run(&group(&[bad, 1.0], 0.0, 32), Q4);
            assert!(!o.stats.finite(), "{bad}");
        }
    }

    #[test]
    fn avx2_and_baseline_kernels_agree() {
        let xs: Vec<f32> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) % 10_007) as f32 * 1e-4 - 0.3).collect();
        for k in [Affine { bits: 4, group_size: 128 }, Affine { bits: 8, group_size: 32 }, Affine { bits: 4, group_size: 64 }] {
            let mut out = Vec::new();
            for force_baseline in [true, false] {
                let mut buf = RowBuf { xs: xs.clone(), ..Default::default() };
                let (mut outs, mut st) = (vec![Vec::new(), Vec::new(), Vec::new()], Stats::default());
                if force_baseline {
                    Kernel::Affine(k).quantize_row_baseline(&mut buf, &mut outs, &mut st);
                } else {
                    Kernel::Affine(k).quantize_row(&mut buf, &mut outs, &mut st);
                }
                out.push((outs, st));
            }
            assert_eq!(out[0], out[1]);
        }
    }

    #[test]
    fn checks_and_row_parts() {
        assert_eq!(Q4.check(64), Ok(()));
        assert_eq!(Affine { bits: 2, group_size: 32 }.check(64).unwrap_err(), "affine quantization bits must be 4 or 8, not 2");
        assert_eq!(
            Affine { bits: 4, group_size: 16 }.check(64).unwrap_err(),
            "affine quantization group size must be 32, 64 or 128 (what mlx computes with), not 16"
        );
        assert_eq!(
            Q4.check(48).unwrap_err(),
            "width 48 is not a multiple of the quantization group size 32 (every group must be whole)"
        );
        let p = Affine { bits: 8, group_size: 64 }.row_parts(256);
        assert_eq!(p.map(|p| (p.dtype, p.width)), [(Dtype::U32, 64), (Dtype::BF16, 4), (Dtype::BF16, 4)]);
    }
}
