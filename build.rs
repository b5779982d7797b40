//! Lays out the release binary's machine code so that what `darkroom serve` runs sits
//! together: the functions listed in `link/serve.order` (recorded by
//! `scripts/symbol-order.sh`) come first, in that order. The kernel maps a program's code
//! in 64 KiB pieces around each page it touches; scattered over 19 MiB, start-up alone
//! mapped 14 MiB of it. A function missing from the list (renamed, new) is placed as
//! before, so a stale list costs memory, never correctness.
//!
//! Only for release builds on x86-64 Linux, where rustc links with LLD (the default since
//! Rust 1.90); `DARKROOM_NO_SYMBOL_ORDER=1` turns it off for another linker.

fn main() {
    println!("cargo:rerun-if-changed=link/serve.order");
    println!("cargo:rerun-if-env-changed=DARKROOM_NO_SYMBOL_ORDER");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let target = std::env::var("TARGET").unwrap_or_default();
    let off = std::env::var_os("DARKROOM_NO_SYMBOL_ORDER").is_some_and(|v| v != "0");
    if release && target == "x86_64-unknown-linux-gnu" && !off {
        // Relative to the package root, where cargo runs rustc and so the linker: cargo
        // keeps this script's output while the list is unchanged, and an absolute path
        // in it would point at the old place after the checkout moves (or from another
        // checkout sharing the target directory).
        println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file=link/serve.order");
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}
