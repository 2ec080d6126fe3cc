//! GGML tensor types: the float types and block quantizers of GGUF files, bit-identical to
//! llama.cpp's `ggml_quantize_chunk` at the commit llama-cpp-python 0.3.36 vendors. Pure
//! functions over one row of f32: `quantize_row(type, row, out, imatrix)`.
//!
//! Which llama.cpp function each type reproduces (without / with an importance matrix):
//! - F32, F16, BF16: plain conversion (`ggml_fp32_to_fp16_row`, `ggml_fp32_to_bf16_row_ref`);
//!   no importance matrix.
//! - Q8_0: `quantize_row_q8_0_ref` in both cases (it ignores the matrix).
//! - Q4_0, Q4_1, Q5_0, Q5_1: `quantize_row_<type>_ref` / `quantize_row_<type>_impl`.
//! - Q4_K, Q5_K, Q6_K: `quantize_row_q{4,5,6}_K_ref` / `quantize_row_q{4,5,6}_K_impl`.
//!
//! Identity holds for finite rows (what is proven: tests/interop/test_ggml_llama_cpp.py, and
//! rust/engine/tests/ggml_known_answers.rs with llama.cpp's recorded hashes). A row holding NaN or an
//! infinity may give other bytes than llama.cpp's sequential scans: callers refuse such
//! weights before quantizing, as they do for the other schemes.

mod half;
mod kquants;
mod legacy;
mod search;

pub use half::{f32_to_bf16, f32_to_f16};

/// The GGML types gslice writes, with GGML's type ids (`enum ggml_type`).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    BF16 = 30,
}

pub const ALL: [GgmlType; 11] = {
    use GgmlType::*;
    [F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K]
};

impl GgmlType {
    pub fn id(self) -> u32 {
        self as u32
    }

    pub fn from_id(id: u32) -> Option<Self> {
        ALL.into_iter().find(|t| t.id() == id)
    }

    /// GGML's own name (`ggml_type_name`): "f32", "q8_0", "q4_K", ...
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "f32",
            F16 => "f16",
            BF16 => "bf16",
            Q8_0 => "q8_0",
            Q4_0 => "q4_0",
            Q4_1 => "q4_1",
            Q5_0 => "q5_0",
            Q5_1 => "q5_1",
            Q4_K => "q4_K",
            Q5_K => "q5_K",
            Q6_K => "q6_K",
        }
    }

    /// Parses a name in any letter case ("Q4_K", "q4_k").
    pub fn parse(name: &str) -> Option<Self> {
        ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Elements per block (1 for the float types).
    pub fn block_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 => 1,
            Q8_0 | Q4_0 | Q4_1 | Q5_0 | Q5_1 => legacy::QK,
            Q4_K | Q5_K | Q6_K => kquants::QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        use GgmlType::*;
        match self {
            F32 => 4,
            F16 | BF16 => 2,
            Q8_0 => legacy::Q8_0_BYTES,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 => self.legacy().expect("a 4- or 5-bit type").bytes(),
            Q4_K => kquants::Q4_K_BYTES,
            Q5_K => kquants::Q5_K_BYTES,
            Q6_K => kquants::Q6_K_BYTES,
        }
    }

    /// Bytes of one row of `width` elements; the width must be a whole number of blocks.
    pub fn row_bytes(self, width: u64) -> Result<u64, String> {
        let bs = self.block_size() as u64;
        if width % bs != 0 {
            return Err(format!(
                "{} stores rows in blocks of {bs} elements: a row of {width} is not a multiple of {bs}",
                self.name()
            ));
        }
        Ok(width / bs * self.block_bytes() as u64)
    }

    /// Whether llama.cpp's quantizer for this type reads an importance matrix.
    pub fn uses_imatrix(self) -> bool {
        use GgmlType::*;
        matches!(self, Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q4_K | Q5_K | Q6_K)
    }

    fn legacy(self) -> Option<legacy::Kind> {
        use GgmlType::*;
        match self {
            Q4_0 => Some(legacy::Kind::Q4_0),
            Q4_1 => Some(legacy::Kind::Q4_1),
            Q5_0 => Some(legacy::Kind::Q5_0),
            Q5_1 => Some(legacy::Kind::Q5_1),
            _ => None,
        }
    }
}

/// Quantizes (or converts) one row into `out`, which must hold exactly `row_bytes(row.len())`.
/// `imatrix`, one weight per column, is used by the types whose llama.cpp quantizer reads one.
pub fn quantize_row(t: GgmlType, row: &[f32], out: &mut [u8], imatrix: Option<&[f32]>) -> Result<(), String> {
    let need = t.row_bytes(row.len() as u64)?;
    if out.len() as u64 != need {
        return Err(format!("a {} row of {} elements takes {need} bytes, not {}", t.name(), row.len(), out.len()));
    }
    if let Some(m) = imatrix {
        if m.len() != row.len() {
            return Err(format!("the importance matrix has {} entries for a row of {}", m.len(), row.len()));
        }
    }
    let imatrix = imatrix.filter(|_| t.uses_imatrix());
    #[cfg(target_arch = "x86_64")]
    if crate::quant::has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        unsafe { kernels_avx2(t, row, out, imatrix) };
        return Ok(());
    }
    kernels(t, row, out, imatrix);
    Ok(())
}

/// The same kernels compiled for AVX2: wider lanes for the side-by-side searches. Every
/// operation is exactly rounded IEEE arithmetic without fused multiply-adds, so both versions
/// give identical bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn kernels_avx2(t: GgmlType, row: &[f32], out: &mut [u8], imatrix: Option<&[f32]>) {
    kernels(t, row, out, imatrix);
}

#[inline(always)]
fn kernels(t: GgmlType, row: &[f32], out: &mut [u8], imatrix: Option<&[f32]>) {
    use GgmlType::*;
    match (t, imatrix) {
        (F32, _) => {
            for (o, &v) in out.chunks_exact_mut(4).zip(row) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        (F16, _) => {
            for (o, &v) in out.chunks_exact_mut(2).zip(row) {
                o.copy_from_slice(&f32_to_f16(v).to_le_bytes());
            }
        }
        (BF16, _) => {
            for (o, &v) in out.chunks_exact_mut(2).zip(row) {
                o.copy_from_slice(&f32_to_bf16(v).to_le_bytes());
            }
        }
        (Q8_0, _) => legacy::q8_0(row, out),
        (Q4_0 | Q4_1 | Q5_0 | Q5_1, m) => {
            let kind = t.legacy().expect("a 4- or 5-bit type");
            match m {
                None => legacy::plain(kind, row, out),
                Some(m) => legacy::weighted(kind, row, out, m),
            }
        }
        (Q4_K, m) => kquants::q45_k(4, row, out, m),
        (Q5_K, m) => kquants::q45_k(5, row, out, m),
        (Q6_K, m) => kquants::q6_k(row, out, m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_names_and_sizes_are_ggmls() {
        let table: Vec<_> = ALL.iter().map(|t| (t.id(), t.name(), t.block_size(), t.block_bytes())).collect();
        assert_eq!(
            table,
            [
                (0, "f32", 1, 4),
                (1, "f16", 1, 2),
                (30, "bf16", 1, 2),
                (8, "q8_0", 32, 34),
                (2, "q4_0", 32, 18),
                (3, "q4_1", 32, 20),
                (6, "q5_0", 32, 22),
                (7, "q5_1", 32, 24),
                (12, "q4_K", 256, 144),
                (13, "q5_K", 256, 176),
                (14, "q6_K", 256, 210),
            ]
        );
        assert_eq!(GgmlType::parse("Q4_k"), Some(GgmlType::Q4_K));
        assert_eq!(GgmlType::from_id(14), Some(GgmlType::Q6_K));
        assert_eq!(GgmlType::from_id(4), None);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_and_baseline_kernels_agree() {
        if !crate::quant::has_avx2() {
            eprintln!("no AVX2 on this CPU: nothing to compare");
            return;
        }
        // 7 super-blocks (K-quant groups of 4 and 1), and 59 blocks of 32 (Q4_0 groups of 16, 4, 1)
        for width in [7 * 256, 59 * 32] {
            compare_kernels(width);
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn compare_kernels(width: usize) {
        let mut s = 0x1234_5678_9ABC_DEF0u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let row: Vec<f32> = (0..width).map(|i| if i % 97 < 40 { 0.0 } else { next() * (1 + i % 13) as f32 }).collect();
        let imatrix: Vec<f32> = (0..width).map(|_| next() + 0.5).collect();
        for t in ALL {
            for m in [None, Some(&imatrix[..])] {
                let Ok(bytes) = t.row_bytes(width as u64) else { continue };
                let (mut a, mut b) = (vec![0u8; bytes as usize], vec![0u8; bytes as usize]);
                let m = m.filter(|_| t.uses_imatrix());
                kernels(t, &row, &mut a, m);
                // SAFETY: AVX2 support was checked above.
                unsafe { kernels_avx2(t, &row, &mut b, m) };
                assert_eq!(a, b, "{} imatrix {}", t.name(), m.is_some());
            }
        }
    }

    #[test]
    fn widths_that_are_not_whole_blocks_are_refused() {
        assert_eq!(GgmlType::Q4_K.row_bytes(2048), Ok(8 * 144));
        assert_eq!(
            GgmlType::Q4_K.row_bytes(2112),
            Err("q4_K stores rows in blocks of 256 elements: a row of 2112 is not a multiple of 256".into())
        );
        let mut out = vec![0u8; 34];
        assert_eq!(
            quantize_row(GgmlType::Q8_0, &[0.0; 33], &mut out, None),
            Err("q8_0 stores rows in blocks of 32 elements: a row of 33 is not a multiple of 32".into())
        );
        assert_eq!(
            quantize_row(GgmlType::Q8_0, &[0.0; 32], &mut out[..33], None),
            Err("a q8_0 row of 32 elements takes 34 bytes, not 33".into())
        );
        assert_eq!(
            quantize_row(GgmlType::Q4_0, &[0.0; 32], &mut out[..18], Some(&[1.0; 31])),
            Err("the importance matrix has 31 entries for a row of 32".into())
        );
    }
}
