//! What a run reports: per output its shards and files, per quantized tensor its sizes and
//! error, and totals. Shared with the caller through serde (the Python layer reads it as JSON).

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;

use serde::Serialize;

use crate::io::IoPath;
use crate::layout::Layout;
use crate::quant::Stats;

/// Shared with the caller, who polls it to draw a progress bar.
#[derive(Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub total: AtomicU64,
}

#[derive(Serialize, Debug)]
pub struct ShardReport {
    pub name: String,
    pub bytes: u64,
    pub tensors: usize,
    /// The physical file (piece) behind this shard, and how many outputs of the run link it.
    pub piece: usize,
    pub shared_by: usize,
}

/// Every file of an output folder. `sha256` is absent in a dry run.
#[derive(Serialize, Debug)]
pub struct FileReport {
    pub name: String,
    pub bytes: u64,
    pub sha256: Option<String>,
}

#[derive(Serialize, Debug)]
pub struct OutputReport {
    pub dir: PathBuf,
    pub shards: Vec<ShardReport>,
    pub files: Vec<FileReport>,
    pub tensors: usize,
    pub tensor_bytes: u64,
    pub file_bytes: u64,
    /// Time from the previous output's completion (or the start of the run) to this one's.
    pub seconds: f64,
}

/// One quantized tensor: sizes and the error of its dequantized values against the (sliced)
/// source.
#[derive(Serialize, Debug)]
pub struct QuantReport {
    pub name: String,
    pub scheme: &'static str,
    /// The names of its other parts (scales, ...), in output order.
    pub parts: Vec<String>,
    pub source: String,
    pub source_dtype: &'static str,
    pub shape: Vec<u64>,
    pub bits: u32,
    pub group_size: u64,
    /// The sliced tensor in its source dtype.
    pub bytes_before: u64,
    /// All parts.
    pub bytes_after: u64,
    pub weight_rms: f64,
    pub rms_error: f64,
    pub max_abs_error: f64,
    /// Both errors divided by the weight's RMS (0 for an all-zero weight).
    pub rel_rms_error: f64,
    pub rel_max_abs_error: f64,
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub outputs: Vec<OutputReport>,
    /// Every distinct quantized tensor, in layout order.
    pub quantized: Vec<QuantReport>,
    /// Bytes of shard files this run wrote (headers included), each shared piece counted once.
    /// In a dry run: what it would write.
    pub bytes_written: u64,
    pub bytes_kernel_copied: u64,
    pub bytes_gathered: u64,
    pub bytes_hashed: u64,
    pub distinct_tensors: usize,
    pub shard_files_written: usize,
    pub seconds: f64,
    pub threads: usize,
    pub dry_run: bool,
    /// How bytes moved: the platform's fast path or the portable one.
    pub io: IoPath,
}

pub(crate) fn quant_reports(layout: &Layout, stats: &[Stats]) -> Vec<QuantReport> {
    let rel = |a: f64, rms: f64| if rms > 0.0 { a / rms } else { 0.0 };
    layout
        .tensors
        .iter()
        .zip(stats)
        .filter_map(|(r, st)| {
            let q = r.quant.as_ref()?;
            let (rms, rms_err) = (st.rms(), st.rms_err());
            Some(QuantReport {
                name: r.name.clone(),
                scheme: q.scheme(),
                parts: r.parts[1..].iter().map(|p| p.name.clone()).collect(),
                source: r.src.name.clone(),
                source_dtype: r.dtype.name(),
                shape: r.shape.clone(),
                bits: q.kernel().bits(),
                group_size: q.kernel().group_size(),
                bytes_before: r.shape.iter().product::<u64>() * r.dtype.size(),
                bytes_after: r.nbytes,
                weight_rms: rms,
                rms_error: rms_err,
                max_abs_error: st.max_abs_err,
                rel_rms_error: rel(rms_err, rms),
                rel_max_abs_error: rel(st.max_abs_err, rms),
            })
        })
        .collect()
}

