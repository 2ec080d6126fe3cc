//! The scale searches behind GGML's block quantizers, reproduced operation for operation from
//! llama.cpp's `ggml-quants.c` (the commit llama-cpp-python 0.3.36 vendors). Bit identity
//! needs the same f32 operations in the same order: `ggml-base` is compiled with `-O3` for
//! baseline x86-64, which has no fused multiply-add, so every product is rounded before it is
//! added, and every sum runs from the first element to the last. Rust neither fuses nor
//! reorders float arithmetic, so writing the expressions in C's evaluation order suffices.
//! Comparisons keep C's forms (`a > b ? a : b`), which treat NaN differently from `f32::max`.

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

/// C's `MAX(a, b)`: `b` unless `a > b`.
#[inline(always)]
pub fn c_max(a: f32, b: f32) -> f32 {
    if a > b { a } else { b }
}

/// Symmetric levels `-nmax..nmax-1` for `x`, with the scale that minimises the weighted squared
/// error over 19 candidate scales around `-nmax / max` (`make_qx_quants` with `rmse_type` 1).
/// Weights are `qw`, or `x^2` without it. `levels` receives `l + nmax`. Returns the scale.
pub fn signed_scale(x: &[f32], nmax: i32, levels: &mut [i8], qw: Option<&[f32]>) -> f32 {
    let n = x.len();
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        let a = v.abs();
        if a > amax {
            amax = a;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        levels[..n].fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let weight = |i: usize| match qw {
        Some(w) => w[i],
        None => x[i] * x[i],
    };
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for (i, &v) in x.iter().enumerate() {
            let l = level(iscale, v) as f32;
            let w = weight(i);
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let set_levels = |levels: &mut [i8], iscale: f32| {
        for (o, &v) in levels.iter_mut().zip(x) {
            *o = (level(iscale, v) + nmax) as i8;
        }
    };

    let iscale = -nmaxf / max;
    set_levels(levels, iscale);
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let iscale = -(nmaxf + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            set_levels(levels, iscale);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Parameters of the asymmetric search: candidate inverse scales `(rmin + rdelta * is + nmax)
/// / (max - min)` for `is` in `0..=nstep`.
#[derive(Clone, Copy)]
pub struct Steps {
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
}

/// Levels `0..=nmax` with a scale and a non-positive offset `min` (x ~ scale * l + min) that
/// minimise the weighted squared error: least squares on the levels of each candidate scale
/// (`make_qkx2_quants` and `make_qkx3_quants`, which agree when weights are given and the error
/// is squared). Returns `(scale, -min)`.
pub fn offset_scale(x: &[f32], weights: &[f32], nmax: i32, steps: Steps, levels: &mut [u8], aux: &mut [u8]) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels[..n].fill(0);
        return (0.0, -min);
    }
    let nmaxf = nmax as f32;
    let level = |iscale: f32, v: f32, min: f32| nearest_int(iscale * (v - min)).clamp(0, nmax) as u8;
    let error = |levels: &[u8], scale: f32, min: f32| {
        let mut e = 0f32;
        for i in 0..n {
            let diff = scale * levels[i] as f32 + min - x[i];
            e += weights[i] * (diff * diff);
        }
        e
    };

    let iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    for (o, &v) in levels.iter_mut().zip(x) {
        *o = level(iscale, v, min);
    }
    let mut best_error = error(levels, scale, min);
    if steps.nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=steps.nstep {
        let iscale = (steps.rmin + steps.rdelta * is as f32 + nmaxf) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = level(iscale, x[i], min);
            aux[i] = l;
            let (w, l) = (weights[i], l as f32);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let cur = error(aux, this_scale, this_min);
            if cur < best_error {
                levels[..n].copy_from_slice(&aux[..n]);
                best_error = cur;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Levels `0..=nmax` for the non-negative `x` (the sub-block scales or mins of a K-quant
/// super-block) and their common scale: the best of nine candidates around `nmax / max` by
/// weighted squared error, then up to five rounds of moving single levels while that improves
/// the least-squares fit (`make_qp_quants`). Returns the scale.
pub fn positive_scale(x: &[f32], nmax: i32, levels: &mut [u8], weights: &[f32]) -> f32 {
    let n = x.len();
    let mut max = 0f32;
    for &v in x {
        max = c_max(max, v);
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
    for is in -4..=4 {
        if is == 0 {
            continue;
        }
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
