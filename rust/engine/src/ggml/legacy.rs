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
    let v = if v.abs() < 2_147_483_648.0 { v } else { 0.0 };
    // SAFETY: v is finite and within the i32 range (NaN failed the comparison above).
    unsafe { v.to_int_unchecked::<i32>() as i8 }
}

/// The largest magnitude in a block, over 8 lanes so that it vectorizes (the maximum of
/// finite values does not depend on the order).
#[inline(always)]
fn abs_max(xb: &[f32]) -> f32 {
    let mut m = [0f32; 8];
    for c in xb.chunks_exact(8) {
        for k in 0..8 {
            let a = c[k].abs();
            m[k] = if m[k] > a { m[k] } else { a };
        }
    }
    m.into_iter().fold(0.0, |acc, v| if acc > v { acc } else { v })
}

/// `d = amax / 127`, `q = round(x / d)` half away from zero.
#[inline(always)]
pub fn q8_0(x: &[f32], out: &mut [u8]) {
    for (xb, yb) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q8_0_BYTES)) {
        let d = abs_max(xb) / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        for (q, &v) in yb[2..].iter_mut().zip(xb) {
            *q = c_f32_to_i8((v * id).round()) as u8;
        }
    }
}

/// `d = max / -8` with `max` the first element of largest magnitude (+0.0 in a block of
/// zeros), levels `trunc(x / d + 8.5)` capped at 15.
#[inline(always)]
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
/// `imatrix[j] * sqrt(sigma2 + x[j]^2)`, sigma2 the row's mean square. Blocks are searched 16
/// side by side, then 4, then one at a time.
#[inline(always)]
pub fn q4_0_weighted(x: &[f32], out: &mut [u8], imatrix: &[f32]) {
    let mut sum_x2 = 0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    let sigma2 = sum_x2 / x.len() as f32;
    let mut done = q4_0_groups::<16>(sigma2, x, imatrix, out);
    done += q4_0_groups::<4>(sigma2, &x[done..], &imatrix[done..], &mut out[done / QK * Q4_0_BYTES..]);
    q4_0_groups::<1>(sigma2, &x[done..], &imatrix[done..], &mut out[done / QK * Q4_0_BYTES..]);
}

/// The whole groups of `L` blocks at the start of `x`; returns the elements done.
#[inline(always)]
fn q4_0_groups<const L: usize>(sigma2: f32, x: &[f32], qw: &[f32], out: &mut [u8]) -> usize {
    let groups = x.chunks_exact(L * QK).zip(qw.chunks_exact(L * QK)).zip(out.chunks_exact_mut(L * Q4_0_BYTES));
    let n = groups.len();
    for ((xg, qg), og) in groups {
        q4_0_group::<L>(sigma2, xg, qg, og);
    }
    n * L * QK
}

/// `L` consecutive blocks, block `k` in lane `k`.
#[inline(always)]
fn q4_0_group<const L: usize>(sigma2: f32, x: &[f32], qw: &[f32], out: &mut [u8]) {
    let mut xt = [[0f32; L]; QK];
    let mut wt = [[0f32; L]; QK];
    for (k, (xb, qb)) in x.chunks_exact(QK).zip(qw.chunks_exact(QK)).enumerate() {
        for ((xi, wi), (&v, &q)) in xt.iter_mut().zip(wt.iter_mut()).zip(xb.iter().zip(qb)) {
            xi[k] = v;
            wi[k] = q * (sigma2 + v * v).sqrt();
        }
    }
    let mut levels = [[0i8; L]; QK];
    let d = signed_scale::<QK, L>(&xt, 8, Some(&wt), &mut levels);
    for (k, yb) in out.chunks_exact_mut(Q4_0_BYTES).enumerate() {
        yb[..2].copy_from_slice(&f32_to_f16(d[k]).to_le_bytes());
        for (j, q) in yb[2..].iter_mut().enumerate() {
            *q = levels[j][k] as u8 | ((levels[j + QK / 2][k] as u8) << 4);
        }
    }
}
