//! The scale searches behind GGML's block quantizers, reproduced operation for operation from
//! llama.cpp's `ggml-quants.c` (the commit llama-cpp-python 0.3.36 vendors).
//!
//! Bit identity needs the same f32 operations in the same order: `ggml-base` is compiled with
//! `-O3` for baseline x86-64, which has no fused multiply-add, so every product is rounded
//! before it is added, and every sum runs from a block's first element to its last. Rust
//! neither fuses nor reorders float arithmetic, so writing the expressions in C's evaluation
//! order suffices. Comparisons keep C's forms (`a > b ? a : b`), which treat NaN differently
//! from `f32::max`.
//!
//! Speed without changing a bit: the searches run `L` independent blocks side by side, element
//! `i` of block `k` at `x[i][k]`. Each lane performs exactly the scalar sequence of operations
//! of its block (sums stay sequential within a lane), and the loops over lanes vectorize; a
//! branch of the C code becomes a per-lane selection. `L = 1` is the plain scalar code.

/// Blocks whose largest magnitude is below this are stored as zeros (`GROUP_MAX_EPS`).
pub const GROUP_MAX_EPS: f32 = 1e-15;

/// Round to nearest, ties to even, by adding 1.5 * 2^23 and reading the low mantissa bits
/// (llama.cpp's `nearest_int`). Exact for |x| < 2^22; beyond that it returns what the same
/// bit arithmetic gives, as llama.cpp does (its range assertion is compiled out).
#[inline(always)]
pub fn nearest_int(x: f32) -> i32 {
    let bits = (x + 12_582_912.0).to_bits() as i32;
    (bits & 0x007F_FFFF) - 0x0040_0000
}

/// Symmetric levels `-nmax..nmax-1` for each lane's block, with the scale that minimises the
/// weighted squared error among 19 candidates around `-nmax / max` (`make_qx_quants` with
/// `rmse_type` 1). Weights are `qw`, or `x^2` without it. `levels` receives `l + nmax`; returns
/// the scales. A block whose largest magnitude is below `GROUP_MAX_EPS` gets scale 0, levels 0.
#[inline(always)]
pub fn signed_scale<const N: usize, const L: usize>(
    x: &[[f32; L]; N],
    nmax: i32,
    qw: Option<&[[f32; L]; N]>,
    levels: &mut [[i8; L]; N],
) -> [f32; L] {
    let (mut max, mut amax) = ([0f32; L], [0f32; L]);
    for xi in x {
        for k in 0..L {
            let a = xi[k].abs();
            let larger = a > amax[k];
            amax[k] = if larger { a } else { amax[k] };
            max[k] = if larger { xi[k] } else { max[k] };
        }
    }
    let mut w = [[0f32; L]; N];
    for (wi, xi) in w.iter_mut().zip(x) {
        for k in 0..L {
            wi[k] = xi[k] * xi[k];
        }
    }
    let w = qw.unwrap_or(&w);
    let nmaxf = nmax as f32;
    // Levels are held as f32 (exact small integers): the sums use them as floats.
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1) as f32;
    let sums = |iscale: &[f32; L], lv: &mut [[f32; L]; N]| {
        let (mut sumlx, mut suml2) = ([0f32; L], [0f32; L]);
        for ((li, xi), wi) in lv.iter_mut().zip(x).zip(w) {
            for k in 0..L {
                let l = level(iscale[k], xi[k]);
                li[k] = l;
                sumlx[k] += wi[k] * xi[k] * l;
                suml2[k] += wi[k] * l * l;
            }
        }
        (sumlx, suml2)
    };

    let mut lv = [[0f32; L]; N];
    let iscale = std::array::from_fn(|k| -nmaxf / max[k]);
    let (sumlx, suml2) = sums(&iscale, &mut lv);
    let mut scale: [f32; L] = std::array::from_fn(|k| if suml2[k] != 0.0 { sumlx[k] / suml2[k] } else { 0.0 });
    let mut best: [f32; L] = std::array::from_fn(|k| scale[k] * sumlx[k]);
    let mut aux = [[0f32; L]; N];
    for is in (-9..=9).filter(|&is| is != 0) {
        let numerator = -(nmaxf + 0.1 * is as f32);
        let iscale: [f32; L] = std::array::from_fn(|k| numerator / max[k]);
        let (sumlx, suml2) = sums(&iscale, &mut aux);
        let better: [bool; L] = std::array::from_fn(|k| suml2[k] > 0.0 && sumlx[k] * sumlx[k] > best[k] * suml2[k]);
        if !better.contains(&true) {
            continue;
        }
        let take = lane_mask::<L>(&better);
        for (li, ai) in lv.iter_mut().zip(&aux) {
            select(li, ai, &take);
        }
        let new_scale: [f32; L] = std::array::from_fn(|k| sumlx[k] / suml2[k]);
        select(&mut scale, &new_scale, &take);
        let new_best: [f32; L] = std::array::from_fn(|k| scale[k] * sumlx[k]);
        select(&mut best, &new_best, &take);
    }
    // A block of zeros keeps levels 0 and scale 0 (its lanes computed with max = 0).
    let zero = lane_mask::<L>(&std::array::from_fn(|k| amax[k] < GROUP_MAX_EPS));
    select(&mut scale, &[0.0; L], &zero);
    for (o, li) in levels.iter_mut().zip(&lv) {
        for k in 0..L {
            o[k] = (li[k] as i32 + nmax) as i8 & !(zero[k] as i8);
        }
    }
    scale
}

/// All ones for the lanes that are `true`, zero for the others.
#[inline(always)]
fn lane_mask<const L: usize>(t: &[bool; L]) -> [u32; L] {
    std::array::from_fn(|k| 0u32.wrapping_sub(t[k] as u32))
}

/// `dst[k] = src[k]` where `take[k]` is all ones, through bit masks: this vectorizes where a
/// per-lane branch does not.
#[inline(always)]
fn select<const L: usize>(dst: &mut [f32; L], src: &[f32; L], take: &[u32; L]) {
    for k in 0..L {
        dst[k] = f32::from_bits((src[k].to_bits() & take[k]) | (dst[k].to_bits() & !take[k]));
    }
}

/// Parameters of the asymmetric search: candidate inverse scales `(rmin + rdelta * is + nmax)
/// / (max - min)` for `is` in `0..=nstep` (`nstep` >= 1).
#[derive(Clone, Copy)]
pub struct Steps {
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
}

/// The candidates of every offset search with an importance matrix (`make_qkx3_quants` as
/// Q4_K, Q5_K, Q4_1 and Q5_1 call it).
pub const WEIGHTED_STEPS: Steps = Steps { rmin: -0.9, rdelta: 0.05, nstep: 36 };

/// For each lane's block, levels `0..=nmax` with a scale and a non-positive offset `min`
/// (x ~ scale * l + min) that minimise the weighted squared error: least squares on the levels
/// of each candidate scale (`make_qkx2_quants` and `make_qkx3_quants`, which agree when
/// weights are given and the error is squared). Returns `(scales, -mins)`. A constant block
/// (after raising a positive min to 0) gets scale 0, levels 0.
#[inline(always)]
pub fn offset_scale<const N: usize, const L: usize>(
    x: &[[f32; L]; N],
    w: &[[f32; L]; N],
    nmax: i32,
    steps: Steps,
    levels: &mut [[u8; L]; N],
) -> ([f32; L], [f32; L]) {
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = w[0];
    let mut sum_x: [f32; L] = std::array::from_fn(|k| sum_w[k] * x[0][k]);
    for (xi, wi) in x.iter().zip(w).skip(1) {
        for k in 0..L {
            min[k] = if xi[k] < min[k] { xi[k] } else { min[k] };
            max[k] = if xi[k] > max[k] { xi[k] } else { max[k] };
            sum_w[k] += wi[k];
            sum_x[k] += wi[k] * xi[k];
        }
    }
    for m in min.iter_mut() {
        *m = if *m > 0.0 { 0.0 } else { *m };
    }
    let flat: [bool; L] = std::array::from_fn(|k| max[k] == min[k]);
    let nmaxf = nmax as f32;
    // Levels are held as f32 (exact small integers): the sums and errors use them as floats.
    let level = |iscale: f32, v: f32, min: f32| nearest_int(iscale * (v - min)).clamp(0, nmax) as f32;
    let error = |levels: &[[f32; L]; N], scale: &[f32; L], min: &[f32; L]| {
        let mut e = [0f32; L];
        for ((li, xi), wi) in levels.iter().zip(x).zip(w) {
            for k in 0..L {
                let diff = scale[k] * li[k] + min[k] - xi[k];
                e[k] += wi[k] * (diff * diff);
            }
        }
        e
    };

    let iscale: [f32; L] = std::array::from_fn(|k| nmaxf / (max[k] - min[k]));
    let mut scale: [f32; L] = std::array::from_fn(|k| 1.0 / iscale[k]);
    let mut lv = [[0f32; L]; N];
    for (li, xi) in lv.iter_mut().zip(x) {
        for k in 0..L {
            li[k] = level(iscale[k], xi[k], min[k]);
        }
    }
    let mut best = error(&lv, &scale, &min);
    let mut aux = [[0f32; L]; N];
    for is in 0..=steps.nstep {
        // `min` moves with every better candidate, and the later candidates start from it.
        let numerator = steps.rmin + steps.rdelta * is as f32 + nmaxf;
        let iscale: [f32; L] = std::array::from_fn(|k| numerator / (max[k] - min[k]));
        let (mut sum_l, mut sum_l2, mut sum_xl) = ([0f32; L], [0f32; L], [0f32; L]);
        for ((ai, xi), wi) in aux.iter_mut().zip(x).zip(w) {
            for k in 0..L {
                let l = level(iscale[k], xi[k], min[k]);
                ai[k] = l;
                sum_l[k] += wi[k] * l;
                sum_l2[k] += wi[k] * l * l;
                sum_xl[k] += wi[k] * l * xi[k];
            }
        }
        let mut this_scale = [0f32; L];
        let mut this_min = [0f32; L];
        let mut solvable = [false; L];
        for k in 0..L {
            let d = sum_w[k] * sum_l2[k] - sum_l[k] * sum_l[k];
            solvable[k] = d > 0.0 && !flat[k];
            let s = (sum_w[k] * sum_xl[k] - sum_x[k] * sum_l[k]) / d;
            let m = (sum_l2[k] * sum_x[k] - sum_l[k] * sum_xl[k]) / d;
            this_scale[k] = if m > 0.0 { sum_xl[k] / sum_l2[k] } else { s };
            this_min[k] = if m > 0.0 { 0.0 } else { m };
        }
        if !solvable.contains(&true) {
            continue;
        }
        let cur = error(&aux, &this_scale, &this_min);
        let better: [bool; L] = std::array::from_fn(|k| solvable[k] && cur[k] < best[k]);
        let take = lane_mask::<L>(&better);
        for (li, ai) in lv.iter_mut().zip(&aux) {
            select(li, ai, &take);
        }
        select(&mut best, &cur, &take);
        select(&mut scale, &this_scale, &take);
        select(&mut min, &this_min, &take);
    }
    // A constant block keeps levels 0 and scale 0 (its lanes computed with max - min = 0).
    let flat = lane_mask::<L>(&flat);
    select(&mut scale, &[0.0; L], &flat);
    for (o, li) in levels.iter_mut().zip(&lv) {
        for k in 0..L {
            o[k] = (li[k] as u8) & !(flat[k] as u8);
        }
    }
    (scale, std::array::from_fn(|k| -min[k]))
}

/// Levels `0..=nmax` for the non-negative `x` (the sub-block scales or mins of a K-quant
/// super-block) and their common scale: the best of nine candidates around `nmax / max` by
/// weighted squared error, then up to five rounds of moving single levels while that improves
/// the least-squares fit (`make_qp_quants`). Returns the scale. Runs once per super-block on 8
/// values: plain scalar code.
pub fn positive_scale(x: &[f32], nmax: i32, levels: &mut [u8], weights: &[f32]) -> f32 {
    let n = x.len();
    let mut max = 0f32;
    for &v in x {
        max = if max > v { max } else { v };
    }
    if max < GROUP_MAX_EPS {
        levels[..n].fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / max;
    // The first candidate's levels are not clamped to nmax (llama.cpp stores them as bytes).
    for (o, &v) in levels.iter_mut().zip(x) {
        *o = nearest_int(iscale * v) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0f32;
    for i in 0..n {
        let diff = x[i] - scale * levels[i] as f32;
        best_mse += weights[i] * diff * diff;
    }
    for is in (-4..=4).filter(|&is| is != 0) {
        let iscale_is = (0.1 * is as f32 + nmaxf) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0f32;
        for i in 0..n {
            let l = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * l as f32;
            mse += weights[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).min(nmax);
        levels[i] = l as u8;
        let w = weights[i];
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for i in 0..n {
            let w = weights[i];
            let li = levels[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != levels[i] as i32 {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        levels[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    if suml2 > 0.0 { sumlx / suml2 } else { 0.0 }
}
