//! f32 to the 16-bit floats of GGML files, rounded as llama.cpp's `ggml-base` rounds them
//! (`ggml_compute_fp32_to_fp16`, `ggml_compute_fp32_to_bf16`): to nearest, ties to even.
//! Block scales go through the same f16 rounding, so these decide bytes of every block type.

/// f32 -> IEEE half, to nearest, ties to even; overflow gives infinity, and every NaN becomes
/// the quiet NaN 0x7E00 with the input's sign (llama.cpp keeps no NaN payload).
#[inline(always)]
pub fn f32_to_f16(f: f32) -> u16 {
    let bits = f.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let abs = bits & 0x7FFF_FFFF;
    if abs > 0x7F80_0000 {
        return sign | 0x7E00;
    }
    // 65520 is halfway between the largest half (65504) and 2^16: ties to even go up to inf.
    if abs >= 0x477F_F000 {
        return sign | 0x7C00;
    }
    if abs < 0x3880_0000 {
        // Below 2^-14 the result is subnormal: the value in units of 2^-24, rounded to an
        // integer by the 1.5 * 2^23 trick. Scaling by 2^24 is exact, and a result of 1024
        // is the smallest normal half, which is also its correct encoding.
        let units = f32::from_bits(abs) * 16_777_216.0;
        return sign | ((units + 12_582_912.0) - 12_582_912.0) as u16;
    }
    // Normal: drop 13 mantissa bits, rounding half to even; a carry moves into the exponent.
    let rounded = abs + 0xFFF + ((abs >> 13) & 1);
    sign | ((rounded >> 13) - (112 << 10)) as u16
}

/// f32 -> bfloat16, to nearest, ties to even; NaN is made quiet by setting bit 6.
#[inline(always)]
pub fn f32_to_bf16(f: f32) -> u16 {
    let bits = f.to_bits();
    if bits & 0x7FFF_FFFF > 0x7F80_0000 {
        return ((bits >> 16) | 64) as u16;
    }
    ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) as u16
}

pub use crate::quant::f16_to_f32;

#[cfg(test)]
mod tests {
    use super::*;

    /// The hardware conversion (F16C, round to nearest even) as the independent reference for
    /// every non-NaN input.
    #[cfg(target_arch = "x86_64")]
    fn f16c(f: f32) -> Option<u16> {
        if !std::arch::is_x86_feature_detected!("f16c") {
            return None;
        }
        #[target_feature(enable = "f16c")]
        unsafe fn cvt(f: f32) -> u16 {
            use std::arch::x86_64::*;
            _mm_extract_epi16::<0>(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(f))) as u16
        }
        // SAFETY: F16C support was checked above.
        Some(unsafe { cvt(f) })
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn f16_matches_f16c_on_a_sweep_of_all_floats_and_every_boundary() {
        if f16c(1.0).is_none() {
            eprintln!("no F16C on this CPU: sweep skipped, fixed cases below still run");
            return;
        }
        let mut checked = 0u64;
        let mut check = |bits: u32| {
            let f = f32::from_bits(bits);
            if !f.is_nan() {
                assert_eq!(f32_to_f16(f), f16c(f).unwrap(), "{f:e} ({bits:#010x})");
                checked += 1;
            }
        };
        for bits in (0..=u32::MAX).step_by(4093) {
            check(bits);
        }
        // Every f32 around the subnormal, normal and overflow thresholds, both signs.
        for centre in [0x3300_0000u32, 0x3380_0000, 0x3880_0000, 0x477F_E000, 0x477F_F000, 0x4780_0000] {
            for bits in centre - 0x2000..centre + 0x2000 {
                check(bits);
                check(bits | 0x8000_0000);
            }
        }
        assert!(checked > 1_000_000);
    }

    #[test]
    fn f16_fixed_values() {
        assert_eq!(f32_to_f16(1.0), 0x3C00);
        assert_eq!(f32_to_f16(-2.0), 0xC000);
        assert_eq!(f32_to_f16(65504.0), 0x7BFF);
        assert_eq!(f32_to_f16(65519.996), 0x7BFF);
        assert_eq!(f32_to_f16(65520.0), 0x7C00);
        assert_eq!(f32_to_f16(f32::INFINITY), 0x7C00);
        assert_eq!(f32_to_f16(f32::from_bits(0x3300_0000)), 0); // 2^-25: a tie, to even 0
        assert_eq!(f32_to_f16(f32::from_bits(0x3300_0001)), 1);
        assert_eq!(f32_to_f16(-0.0), 0x8000);
        assert_eq!(f32_to_f16(f32::NAN), 0x7E00);
        assert_eq!(f32_to_f16(f32::from_bits(0xFF80_0001)), 0xFE00);
    }

    #[test]
    fn bf16_rounds_half_to_even_and_quiets_nan() {
        assert_eq!(f32_to_bf16(1.0), 0x3F80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8000)), 0x3F80); // tie, even stays
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F81_8000)), 0x3F82); // tie, odd goes up
        assert_eq!(f32_to_bf16(f32::from_bits(0x7F80_0001)), 0x7FC0);
        assert_eq!(f32_to_bf16(f32::from_bits(0xFFFF_FFFF)), 0xFFFF);
    }
}
