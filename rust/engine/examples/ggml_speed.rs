//! Single-thread throughput of the GGML kernels, in MB/s of bf16-equivalent input (2 bytes per
//! element), timed on the thread's CPU clock so that other load on the machine counts less.
//!
//!     cargo run --release -p gslice-engine --example ggml_speed [TYPE[+] ...]
//!
//! TYPE is a GGML type name ("q4_K"); a trailing "+" runs it with an importance matrix. ROWS
//! (default 256) rows of 4096 random values. benches/test_ggml_quant.py measures the same
//! kernels end to end on 2 threads next to llama.cpp's.

use gslice_engine::ggml::{quantize_row, GgmlType};

const WIDTH: usize = 4096;

fn thread_cpu_seconds() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

fn main() {
    let rows: usize = std::env::var("ROWS").ok().and_then(|r| r.parse().ok()).unwrap_or(256);
    let mut s = 12345u64;
    let mut uniform = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let x: Vec<f32> = (0..WIDTH * rows).map(|_| uniform() * 0.04).collect();
    let imatrix: Vec<f32> = (0..WIDTH).map(|_| (uniform() * 4.0).exp()).collect();
    let only: Vec<String> = std::env::args().skip(1).collect();
    use GgmlType::*;
    let cases = [(F16, false), (BF16, false), (Q8_0, false), (Q4_0, false), (Q4_0, true), (Q4_K, false), (Q4_K, true)];
    let cases = cases.into_iter().chain([(Q5_K, false), (Q5_K, true), (Q6_K, false), (Q6_K, true)]);
    for (t, with_imatrix) in cases {
        let tag = format!("{}{}", t.name(), if with_imatrix { "+" } else { "" });
        if !only.is_empty() && !only.contains(&tag) {
            continue;
        }
        let mut out = vec![0u8; t.row_bytes(WIDTH as u64).unwrap() as usize];
        let t0 = thread_cpu_seconds();
        for row in x.chunks_exact(WIDTH) {
            quantize_row(t, row, &mut out, with_imatrix.then_some(&imatrix[..])).unwrap();
        }
        let seconds = thread_cpu_seconds() - t0;
        println!("{tag:6} {:8.1} MB/s of bf16 input, 1 thread", (x.len() * 2) as f64 / seconds / 1e6);
    }
}
