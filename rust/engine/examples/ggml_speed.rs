// dev-only timing: single thread, CPU time
use gslice_engine::ggml::{quantize_row, GgmlType};
fn cpu() -> f64 { let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 }; unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) }; t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9 }
fn main() {
    let w = 4096usize; let rows: usize = std::env::var("ROWS").ok().and_then(|r| r.parse().ok()).unwrap_or(256);
    let mut s = 12345u64;
    let mut rnd = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; ((s >> 11) as f64 / (1u64 << 53) as f64) as f32 - 0.5 };
    let x: Vec<f32> = (0..w * rows).map(|_| rnd() * 0.04).collect();
    let qw: Vec<f32> = (0..w).map(|_| (rnd() * 4.0).exp()).collect();
    let only: Vec<String> = std::env::args().skip(1).collect();
    for (t, im) in [(GgmlType::F16, false), (GgmlType::BF16, false), (GgmlType::Q8_0, false), (GgmlType::Q4_0, false), (GgmlType::Q4_0, true), (GgmlType::Q4_K, false), (GgmlType::Q4_K, true), (GgmlType::Q5_K, false), (GgmlType::Q5_K, true), (GgmlType::Q6_K, false), (GgmlType::Q6_K, true)] {
        let tag = format!("{}{}", t.name(), if im { "+" } else { "" }); if !only.is_empty() && !only.iter().any(|o| *o == tag) { continue; }
        let rb = t.row_bytes(w as u64).unwrap() as usize;
        let mut out = vec![0u8; rb];
        let t0 = cpu();
        for r in 0..rows { quantize_row(t, &x[r * w..(r + 1) * w], &mut out, if im { Some(&qw) } else { None }).unwrap(); }
        let dt = cpu() - t0;
        println!("{:5} imatrix={:5}: {:8.1} MB/s bf16-equivalent per thread (cpu time)", t.name(), im, (w * rows * 2) as f64 / dt / 1e6);
    }
}
