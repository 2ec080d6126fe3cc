//! Any bytes as a safetensors file: the parser never panics, and what it accepts tiles the
//! data section exactly with tensors whose spans match their shapes.
#![no_main]

use gslice_engine::header::{byte_size, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = parse(data, data.len() as u64) {
        let mut end = h.data_start;
        for t in &h.tensors {
            assert_eq!(t.start, end);
            assert_eq!(Some(t.len), byte_size(&t.shape, t.dtype));
            end = t.start + t.len;
        }
        assert_eq!(end, data.len() as u64);
    }
});
