//! `cfg(fast_io)`: the Linux fast I/O path is built (on Linux, unless the `portable-io`
//! feature asks for the portable code only).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(fast_io)");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if linux && std::env::var_os("CARGO_FEATURE_PORTABLE_IO").is_none() {
        println!("cargo::rustc-cfg=fast_io");
    }
}
