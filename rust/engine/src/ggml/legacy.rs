//! GGML's 32-element block types: Q8_0 (`d`, 32 x int8) and the 4- and 5-bit types, each block
//! an f16 scale `d`, for the `_1` types an f16 offset `m`, for the 5-bit types 4 bytes of fifth
//! bits (bit j of element j), then 16 bytes of nibbles (element j in the low nibble of byte j,
//! element j + 16 in its high nibble):
//!
//! | type | bytes | element |
//! |---|---|---|
//! | Q4_0 | 18 | d * (q - 8) |
//! | Q4_1 | 20 | d * q + m |
//! | Q5_0 | 22 | d * (q - 16) |
//! | Q5_1 | 24 | d * q + m |
//!
//! As llama.cpp's `ggml_quantize_chunk` computes them: Q8_0 always by `quantize_row_q8_0_ref`
//! (it has no importance-matrix variant); the others by `quantize_row_<type>_ref` without an
//! importance matrix and `quantize_row_<type>_impl` with one. llama.cpp's quantizer writes Q4_1,
//! Q5_0 and Q5_1 where a K-quant does not fit a row (`tensor_type_fallback`) and for the first
//! layers' `ffn_down` of a Q4_0 file made with an importance matrix.

use super::half::f32_to_f16;
use super::search::{offset_scale, signed_scale, WEIGHTED_STEPS};

pub const QK: usize = 32;
pub const Q8_0_BYTES: usize = 2 + QK;

/// The 4- and 5-bit block types.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
}

impl Kind {
    fn bits(self) -> u32 {
        match self {
            Kind::Q4_0 | Kind::Q4_1 => 4,
            Kind::Q5_0 | Kind::Q5_1 => 5,
        }
    }

    /// Whether a block stores an offset `m` (the `_1` types) rather than centring the levels.
    fn has_min(self) -> bool {
        matches!(self, Kind::Q4_1 | Kind::Q5_1)
    }

    pub const fn bytes(self) -> usize {
        match self {
            Kind::Q4_0 => 18,
            Kind::Q4_1 => 20,
            Kind::Q5_0 => 22,
            Kind::Q5_1 => 24,
        }
    }
}

/// C's float -> int8 conversion as GCC emits it on x86-64 (`cvttss2si`, then the low byte):
/// truncation toward zero, and 0 for NaN or values outside the int32 range (the "integer
/// indefinite" 0x80000000). Those arise when a block's scale is subnormal and its inverse
/// overflows to infinity. The conversions to uint8 compile the same way.
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
    m.into_iter()
        .fold(0.0, |acc, v| if acc > v { acc } else { v })
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

/// One block from its scale, offset (the `_1` types) and levels.
#[inline(always)]
fn store(kind: Kind, yb: &mut [u8], d: f32, m: f32, levels: &[u8; QK]) {
    yb[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    let mut at = 2;
    if kind.has_min() {
        yb[2..4].copy_from_slice(&f32_to_f16(m).to_le_bytes());
        at = 4;
    }
    if kind.bits() == 5 {
        let mut qh = 0u32;
        for (j, &l) in levels.iter().enumerate() {
            qh |= (((l & 0x10) >> 4) as u32) << j;
        }
        yb[at..at + 4].copy_from_slice(&qh.to_le_bytes());
        at += 4;
    }
    for j in 0..QK / 2 {
        yb[at + j] = (levels[j] & 0xF) | ((levels[j + QK / 2] & 0xF) << 4);
    }
}

/// Without an importance matrix (`quantize_row_<type>_ref`): the centred types take `d = max /
/// -2^(bits-1)` with `max` the first element of largest magnitude (+0.0 in a block of zeros)
/// and levels `trunc(x / d + 2^(bits-1) + 0.5)` capped at `2^bits - 1`; the offset types `d =
/// (max - min) / (2^bits - 1)`, `m = min` and levels `trunc((x - min) / d + 0.5)` (capped at 15
/// for Q4_1; Q5_1 keeps the low five bits of what the conversion gives).
#[inline(always)]
pub fn plain(kind: Kind, x: &[f32], out: &mut [u8]) {
    let top = (1i8 << kind.bits()) - 1;
    for (xb, yb) in x.chunks_exact(QK).zip(out.chunks_exact_mut(kind.bytes())) {
        let mut levels = [0u8; QK];
        if kind.has_min() {
            let (mut min, mut max) = (f32::MAX, -f32::MAX);
            for &v in xb {
                if v < min {
                    min = v;
                }
                if v > max {
                    max = v;
                }
            }
            let d = (max - min) / top as f32;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            for (l, &v) in levels.iter_mut().zip(xb) {
                let q = c_f32_to_i8((v - min) * id + 0.5);
                *l = if kind == Kind::Q4_1 {
                    q.min(15) as u8
                } else {
                    q as u8
                };
            }
            store(kind, yb, d, min, &levels);
        } else {
            let (mut amax, mut max) = (0f32, 0f32);
            for &v in xb {
                if amax < v.abs() {
                    amax = v.abs();
                    max = v;
                }
            }
            let half = (1 << (kind.bits() - 1)) as f32;
            let d = max / -half;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            for (l, &v) in levels.iter_mut().zip(xb) {
                *l = c_f32_to_i8(v * id + (half + 0.5)).min(top) as u8;
            }
            store(kind, yb, d, 0.0, &levels);
        }
    }
}

/// With an importance matrix (`quantize_row_<type>_impl`): each block's scale (and offset) is
/// searched with weights `imatrix[j] * sqrt(sigma2 + x[j]^2)`, sigma2 the row's mean square:
/// the symmetric search (`make_qx_quants`) for the centred types, the offset search
/// (`make_qkx3_quants`) for the others. Blocks are searched 16 side by side, then 4, then one
/// at a time.
#[inline(always)]
pub fn weighted(kind: Kind, x: &[f32], out: &mut [u8], imatrix: &[f32]) {
    let mut sum_x2 = 0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    let sigma2 = sum_x2 / x.len() as f32;
    let bytes = kind.bytes();
    let mut done = weighted_groups::<16>(kind, sigma2, x, imatrix, out);
    done += weighted_groups::<4>(
        kind,
        sigma2,
        &x[done..],
        &imatrix[done..],
        &mut out[done / QK * bytes..],
    );
    weighted_groups::<1>(
        kind,
        sigma2,
        &x[done..],
        &imatrix[done..],
        &mut out[done / QK * bytes..],
    );
}

/// The whole groups of `L` blocks at the start of `x`; returns the elements done.
#[inline(always)]
fn weighted_groups<const L: usize>(
    kind: Kind,
    sigma2: f32,
    x: &[f32],
    qw: &[f32],
    out: &mut [u8],
) -> usize {
    let groups = x
        .chunks_exact(L * QK)
        .zip(qw.chunks_exact(L * QK))
        .zip(out.chunks_exact_mut(L * kind.bytes()));
    let n = groups.len();
    for ((xg, qg), og) in groups {
        weighted_group::<L>(kind, sigma2, xg, qg, og);
    }
    n * L * QK
}

/// `L` consecutive blocks, block `k` in lane `k`.
#[inline(always)]
fn weighted_group<const L: usize>(kind: Kind, sigma2: f32, x: &[f32], qw: &[f32], out: &mut [u8]) {
    let mut xt = [[0f32; L]; QK];
    let mut wt = [[0f32; L]; QK];
    for (k, (xb, qb)) in x.chunks_exact(QK).zip(qw.chunks_exact(QK)).enumerate() {
        for ((xi, wi), (&v, &q)) in xt.iter_mut().zip(wt.iter_mut()).zip(xb.iter().zip(qb)) {
            xi[k] = v;
            wi[k] = q * (sigma2 + v * v).sqrt();
        }
    }
    let top = (1i32 << kind.bits()) - 1;
    let mut levels = [[0u8; L]; QK];
    let (d, m) = if kind.has_min() {
        let (d, the_min) = offset_scale::<QK, L>(&xt, &wt, top, WEIGHTED_STEPS, &mut levels);
        (d, the_min.map(|v| -v))
    } else {
        let mut signed = [[0i8; L]; QK];
        let d = signed_scale::<QK, L>(&xt, (top + 1) / 2, Some(&wt), &mut signed);
        for (o, s) in levels.iter_mut().zip(&signed) {
            *o = s.map(|v| v as u8);
        }
        (d, [0f32; L])
    };
    for (k, yb) in out.chunks_exact_mut(kind.bytes()).enumerate() {
        let block: [u8; QK] = std::array::from_fn(|j| levels[j][k]);
        store(kind, yb, d[k], m[k], &block);
    }
}
