//! GGML's 32-element block types with one f16 scale: Q8_0 (`d`, 32 x int8) and Q4_0 (`d`,
//! 16 bytes of nibbles: element j in the low nibble of byte j, element j + 16 in its high
//! nibble). As llama.cpp's `ggml_quantize_chunk` computes them: Q8_0 always by
//! `quantize_row_q8_0_ref` (it has no importance-matrix variant), Q4_0 by
//! `quantize_row_q4_0_ref` without an importance matrix and `quantize_row_q4_0_impl` with one.

use super::half::f32_to_f16;
use super::search::signed_scale;

pub const QK: usize = 32;
pub const Q8_0_BYTES: usize = 2 + QK;
pub const Q4_0_BYTES: usize = 2 + QK / 2;

/// C's float -> int8 conversion as GCC emits it on x86-64 (`cvttss2si`, then the low byte):
/// truncation toward zero, and 0 for NaN or values outside the int32 range (the "integer
/// indefinite" 0x80000000). Those arise when a block's scale is subnormal and its inverse
/// overflows to infinity.
#[inline(always)]
fn c_f32_to_i8(v: f32) -> i8 {
    if v.abs() < 2_147_483_648.0 { v as i32 as i8 } else { 0 }
}

/// `d = amax / 127`, `q = round(x / d)` half away from zero.
pub fn q8_0(x: &[f32], out: &mut [u8]) {
    for (xb, yb) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q8_0_BYTES)) {
        let mut amax = 0f32;
        for &v in xb {
            let a = v.abs();
            amax = if amax > a { amax } else { a };
        }
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        for (q, &v) in yb[2..].iter_mut().zip(xb) {
            *q = c_f32_to_i8((v * id).round()) as u8;
        }
    }
}

/// `d = max / -8` with `max` the element of largest magnitude (the first such), levels
/// `trunc(x / d + 8.5)` capped at 15.
pub fn q4_0(x: &[f32], out: &mut [u8]) {
    for (xb, yb) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q4_0_BYTES)) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xb {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        let level = |v: f32| c_f32_to_i8(v * id + 8.5).min(15) as u8;
        let (lo, hi) = xb.split_at(QK / 2);
        for ((q, &a), &b) in yb[2..].iter_mut().zip(lo).zip(hi) {
            *q = level(a) | (level(b) << 4);
        }
    }
}

/// Q4_0 with an importance matrix: each block's scale is searched with weights
/// `imatrix[j] * sqrt(sigma2 + x[j]^2)`, sigma2 the row's mean square.
pub fn q4_0_weighted(x: &[f32], out: &mut [u8], imatrix: &[f32]) {
    let mut sum_x2 = 0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    let sigma2 = sum_x2 / x.len() as f32;
    let mut weight = [0f32; QK];
    let mut levels = [0i8; QK];
    let blocks = x.chunks_exact(QK).zip(imatrix.chunks_exact(QK)).zip(out.chunks_exact_mut(Q4_0_BYTES));
    for ((xb, qw), yb) in blocks {
        for ((w, &q), &v) in weight.iter_mut().zip(qw).zip(xb) {
            *w = q * (sigma2 + v * v).sqrt();
        }
        let d = signed_scale(xb, 8, &mut levels, Some(&weight));
        yb[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        for (j, q) in yb[2..].iter_mut().enumerate() {
            *q = levels[j] as u8 | ((levels[j + QK / 2] as u8) << 4);
        }
    }
}
