//! GGML's K-quants: super-blocks of 256 elements. As llama.cpp's `ggml_quantize_chunk` computes
//! them: without an importance matrix `quantize_row_q{4,5,6}_K_ref`, with one
//! `quantize_row_q{4,5,6}_K_impl`.
//!
//! Q4_K / Q5_K (144 / 176 bytes): `d`, `dmin` (f16), 12 bytes of eight 6-bit sub-block scales and
//! mins, [Q5_K: 32 bytes of fifth bits], 128 bytes of nibbles; element = d * sc * q - dmin * m
//! per sub-block of 32.
//! Q6_K (210 bytes): 128 bytes of low nibbles, 64 of high bit pairs, sixteen int8 sub-block
//! scales, `d` (f16); element = d * sc * (q - 32) per sub-block of 16.

use super::half::{f16_to_f32, f32_to_f16};
use super::search::{nearest_int, offset_scale, positive_scale, signed_scale, Steps, GROUP_MAX_EPS, WEIGHTED_STEPS};

pub const QK_K: usize = 256;
pub const Q4_K_BYTES: usize = 144;
pub const Q5_K_BYTES: usize = 176;
pub const Q6_K_BYTES: usize = 210;

/// Super-blocks searched side by side: their sub-blocks are the lanes of the searches.
const GROUP: usize = 4;

/// The candidate scales of the sub-block searches of Q4_K and Q5_K without an importance matrix
/// (with one: `WEIGHTED_STEPS`).
const Q4_K_STEPS: Steps = Steps { rmin: -1.0, rdelta: 0.1, nstep: 20 };
const Q5_K_STEPS: Steps = Steps { rmin: -0.5, rdelta: 0.1, nstep: 15 };

/// Q4_K (`bits` 4) or Q5_K (`bits` 5) of whole super-blocks.
#[inline(always)]
pub fn q45_k(bits: u32, x: &[f32], out: &mut [u8], imatrix: Option<&[f32]>) {
    let bytes = if bits == 4 { Q4_K_BYTES } else { Q5_K_BYTES };
    let full = x.len() / (GROUP * QK_K) * GROUP;
    let groups = x[..full * QK_K].chunks_exact(GROUP * QK_K).zip(out[..full * bytes].chunks_exact_mut(GROUP * bytes));
    for (i, (xg, og)) in groups.enumerate() {
        q45_group::<{ 8 * GROUP }>(bits, xg, og, imatrix.map(|m| &m[i * GROUP * QK_K..(i + 1) * GROUP * QK_K]));
    }
    let rest = x[full * QK_K..].chunks_exact(QK_K).zip(out[full * bytes..].chunks_exact_mut(bytes));
    for (i, (xb, yb)) in rest.enumerate() {
        let at = (full + i) * QK_K;
        q45_group::<8>(bits, xb, yb, imatrix.map(|m| &m[at..at + QK_K]));
    }
}

/// `L / 8` consecutive super-blocks; lane `k` is their sub-block `k` (elements `32k..32k+32`).
#[inline(always)]
fn q45_group<const L: usize>(bits: u32, x: &[f32], out: &mut [u8], qw: Option<&[f32]>) {
    let xt = transpose::<32, L>(x);
    let (wt, steps) = match qw {
        None => (rms_weights(&xt), if bits == 4 { Q4_K_STEPS } else { Q5_K_STEPS }),
        Some(qw) => (imatrix_weights(x, &xt, qw), WEIGHTED_STEPS),
    };
    let mut lv = [[0u8; L]; 32];
    let (scales, mins) = offset_scale::<32, L>(&xt, &wt, nmax(bits), steps, &mut lv);
    let mut sw = [0f32; L];
    for wi in &wt {
        for k in 0..L {
            sw[k] += wi[k];
        }
    }
    let bytes = out.len() / (L / 8);
    for (g, (xb, yb)) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(bytes)).enumerate() {
        let lanes = 8 * g..8 * g + 8;
        let header = match qw {
            None => header_unweighted(&scales[lanes.clone()], &mins[lanes]),
            Some(_) => header_weighted(bits, &scales[lanes.clone()], &mins[lanes.clone()], &sw[lanes]),
        };
        let mut levels = [0u8; QK_K];
        for (j, sub) in levels.chunks_exact_mut(32).enumerate() {
            for (i, l) in sub.iter_mut().enumerate() {
                *l = lv[i][8 * g + j];
            }
        }
        requantize(bits, xb, &header, &mut levels);
        yb[..2].copy_from_slice(&header.d.to_le_bytes());
        yb[2..4].copy_from_slice(&header.dmin.to_le_bytes());
        yb[4..16].copy_from_slice(&header.scales);
        pack_45(bits, &levels, &mut yb[16..]);
    }
}

/// Without an importance matrix: `rms + |x|`, the rms over the sub-block.
#[inline(always)]
fn rms_weights<const L: usize>(xt: &[[f32; L]; 32]) -> [[f32; L]; 32] {
    let mut sum_x2 = [0f32; L];
    for xi in xt {
        for k in 0..L {
            sum_x2[k] += xi[k] * xi[k];
        }
    }
    let av_x: [f32; L] = std::array::from_fn(|k| (sum_x2[k] / 32.0).sqrt());
    xt.map(|xi| std::array::from_fn(|k| av_x[k] + xi[k].abs()))
}

/// With one: `qw * sqrt(sigma2 + x^2)`, sigma2 twice the super-block's mean square.
#[inline(always)]
fn imatrix_weights<const L: usize>(x: &[f32], xt: &[[f32; L]; 32], qw: &[f32]) -> [[f32; L]; 32] {
    let mut sigma2 = [0f32; L];
    for (g, xb) in x.chunks_exact(QK_K).enumerate() {
        let mut sum_x2 = 0f32;
        for &v in xb {
            sum_x2 += v * v;
        }
        sigma2[8 * g..8 * g + 8].fill(2.0 * sum_x2 / QK_K as f32);
    }
    let qwt = transpose::<32, L>(qw);
    std::array::from_fn(|i| std::array::from_fn(|k| qwt[i][k] * (sigma2[k] + xt[i][k] * xt[i][k]).sqrt()))
}

/// `x` as `L` runs of `N` values, run `k` becoming lane `k`: `t[i][k] = x[N * k + i]`.
#[inline(always)]
fn transpose<const N: usize, const L: usize>(x: &[f32]) -> [[f32; L]; N] {
    let mut t = [[0f32; L]; N];
    for (k, run) in x.chunks_exact(N).take(L).enumerate() {
        for (ti, &v) in t.iter_mut().zip(run) {
            ti[k] = v;
        }
    }
    t
}

/// A super-block's f16 scales and its packed 6-bit sub-block scales and mins.
struct Header {
    d: u16,
    dmin: u16,
    scales: [u8; 12],
}

/// Sub-block `j`'s 6-bit scale and min (llama.cpp's `get_scale_min_k4` layout): j < 4 in the
/// low 6 bits of bytes j and j + 4; j >= 4 in the nibbles of byte j + 4 with their top two bits
/// in the spare bits 6-7 of bytes j - 4 and j.
#[inline(always)]
fn pack_scales(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    s[..4].copy_from_slice(&ls[..4]);
    s[4..8].copy_from_slice(&lm[..4]);
    for j in 4..8 {
        s[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
        s[j - 4] |= (ls[j] >> 4) << 6;
        s[j] |= (lm[j] >> 4) << 6;
    }
    s
}

#[inline(always)]
fn unpack_scale(s: &[u8; 12], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

#[inline(always)]
fn nmax(bits: u32) -> i32 {
    (1 << bits) - 1
}

/// Without an importance matrix: the sub-block scales and mins put on 6 bits relative to their
/// maxima.
#[inline(always)]
fn header_unweighted(scales: &[f32], mins: &[f32]) -> Header {
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    Header { d: f32_to_f16(max_scale / 63.0), dmin: f32_to_f16(max_min / 63.0), scales: pack_scales(&ls, &lm) }
}

/// With an importance matrix: the 6-bit scales and mins fitted by `positive_scale`, weighted by
/// the sub-blocks' weight sums.
#[inline(always)]
fn header_weighted(bits: u32, scales: &[f32], mins: &[f32], sw: &[f32]) -> Header {
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    let d = positive_scale(scales, 63, &mut ls, sw);
    let dmin = positive_scale(mins, 63, &mut lm, sw);
    // Levels above 63 come only from a negative level wrapping to a byte; llama.cpp's Q5_K caps
    // them, its Q4_K packs them as they are.
    if bits == 5 {
        for j in 0..8 {
            ls[j] = ls[j].min(63);
            lm[j] = lm[j].min(63);
        }
    }
    Header { d: f32_to_f16(d), dmin: f32_to_f16(dmin), scales: pack_scales(&ls, &lm) }
}

/// Final levels against the stored (rounded) scales; a sub-block whose scale is zero keeps the
/// levels of its search.
#[inline(always)]
fn requantize(bits: u32, x: &[f32], h: &Header, levels: &mut [u8; QK_K]) {
    let (d_all, dmin_all) = (f16_to_f32(h.d), f16_to_f32(h.dmin));
    for j in 0..8 {
        let (sc, m) = unpack_scale(&h.scales, j);
        let d = d_all * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * m as f32;
        for (l, &v) in levels[32 * j..32 * j + 32].iter_mut().zip(&x[32 * j..32 * j + 32]) {
            *l = nearest_int((v + dm) / d).clamp(0, nmax(bits)) as u8;
        }
    }
}

/// Levels into nibbles, 64 elements at a time: element l of a 64-group in the low nibble of
/// byte l, element l + 32 in the high one; Q5_K's fifth bits go to `qh[l]`, bit 2k for the first
/// half of group k and 2k + 1 for the second.
#[inline(always)]
fn pack_45(bits: u32, levels: &[u8; QK_K], out: &mut [u8]) {
    let (qh, qs) = if bits == 5 { out.split_at_mut(32) } else { out.split_at_mut(0) };
    qh.fill(0);
    for (k, group) in levels.chunks_exact(64).enumerate() {
        let (a, b) = group.split_at(32);
        for l in 0..32 {
            qs[32 * k + l] = (a[l] & 0xF) | ((b[l] & 0xF) << 4);
            if bits == 5 {
                qh[l] |= ((a[l] >> 4) << (2 * k)) | ((b[l] >> 4) << (2 * k + 1));
            }
        }
    }
}

/// Q6_K super-blocks searched side by side (16 sub-blocks each).
const GROUP6: usize = 2;

/// Q6_K of whole super-blocks: 16 sub-blocks of 16, each with the symmetric search (weights
/// the importance matrix, or x^2), their scales put on int8 relative to the largest.
#[inline(always)]
pub fn q6_k(x: &[f32], out: &mut [u8], imatrix: Option<&[f32]>) {
    let full = x.len() / (GROUP6 * QK_K) * GROUP6;
    let (x_full, x_rest) = x.split_at(full * QK_K);
    let (out_full, out_rest) = out.split_at_mut(full * Q6_K_BYTES);
    for (i, (xg, og)) in x_full.chunks_exact(GROUP6 * QK_K).zip(out_full.chunks_exact_mut(GROUP6 * Q6_K_BYTES)).enumerate() {
        let n = GROUP6 * QK_K;
        q6_group::<{ 16 * GROUP6 }>(xg, og, imatrix.map(|m| &m[i * n..(i + 1) * n]));
    }
    let qw_rest = imatrix.map(|m| &m[full * QK_K..]);
    for (i, (xb, yb)) in x_rest.chunks_exact(QK_K).zip(out_rest.chunks_exact_mut(Q6_K_BYTES)).enumerate() {
        q6_group::<16>(xb, yb, qw_rest.map(|m| &m[i * QK_K..(i + 1) * QK_K]));
    }
}

/// `L / 16` consecutive super-blocks; lane `k` is their sub-block `k` (elements `16k..16k+16`).
#[inline(always)]
fn q6_group<const L: usize>(x: &[f32], out: &mut [u8], qw: Option<&[f32]>) {
    let xt = transpose::<16, L>(x);
    let qwt = qw.map(transpose::<16, L>);
    let mut lv = [[0i8; L]; 16];
    let all_scales = signed_scale::<16, L>(&xt, 32, qwt.as_ref(), &mut lv);
    for (g, (xb, yb)) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(Q6_K_BYTES)).enumerate() {
        let Some((d, sc)) = q6_scales(&all_scales[16 * g..16 * g + 16]) else {
            yb.fill(0);
            continue;
        };
        let mut levels = [0i8; QK_K];
        for (j, sub) in levels.chunks_exact_mut(16).enumerate() {
            for (i, l) in sub.iter_mut().enumerate() {
                *l = lv[i][16 * g + j];
            }
        }
        let d_all = f16_to_f32(d);
        for ((sub, xs), &s) in levels.chunks_exact_mut(16).zip(xb.chunks_exact(16)).zip(&sc) {
            let dj = d_all * s as f32;
            if dj == 0.0 {
                continue;
            }
            for (l, &v) in sub.iter_mut().zip(xs) {
                *l = (nearest_int(v / dj).clamp(-32, 31) + 32) as i8;
            }
        }
        pack_6(&levels, &mut yb[..192]);
        for (o, &s) in yb[192..208].iter_mut().zip(&sc) {
            *o = s as u8;
        }
        yb[208..].copy_from_slice(&d.to_le_bytes());
    }
}

/// The super-block scale (f16) and the sixteen int8 sub-block scales relative to the largest
/// one; None when every sub-block scale is below `GROUP_MAX_EPS` (the block is stored as zeros).
#[inline(always)]
fn q6_scales(scales: &[f32]) -> Option<(u16, [i8; 16])> {
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for &s in scales {
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = s;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        return None;
    }
    let iscale = -128.0 / max_scale;
    let mut sc = [0i8; 16];
    for (o, &s) in sc.iter_mut().zip(scales) {
        *o = nearest_int(iscale * s).min(127) as i8;
    }
    Some((f32_to_f16(1.0 / iscale), sc))
}

/// 6-bit levels into low nibbles and high bit pairs, per half of 128: bytes l and l + 32 of the
/// half's 64 low-nibble bytes hold elements (l, l + 64) and (l + 32, l + 96); high-bit byte l
/// holds the top two bits of elements l, l + 32, l + 64, l + 96 at bits 0, 2, 4, 6.
#[inline(always)]
fn pack_6(levels: &[i8; QK_K], out: &mut [u8]) {
    let (ql, qh) = out.split_at_mut(128);
    for (h, half) in levels.chunks_exact(128).enumerate() {
        let q = |k: usize| half[k] as u8;
        for l in 0..32 {
            ql[64 * h + l] = (q(l) & 0xF) | ((q(l + 64) & 0xF) << 4);
            ql[64 * h + l + 32] = (q(l + 32) & 0xF) | ((q(l + 96) & 0xF) << 4);
            qh[32 * h + l] = (q(l) >> 4) | ((q(l + 32) >> 4) << 2) | ((q(l + 64) >> 4) << 4) | ((q(l + 96) >> 4) << 6);
        }
    }
}
