//! Link-time settings of the `selfheal` binary.
//!
//! Packed relative relocations (`-z pack-relative-relocs`, DT_RELR; GNU ld ≥ 2.38, lld, glibc
//! ≥ 2.36): a position-independent Rust binary of this size carries ~120,000 relative
//! relocations, 2.7 MB of `.rela.dyn` that the dynamic loader reads at every start and that then
//! stays resident as page cache mapped into the process. Packed, they are 27 KB. Measured on the
//! agent at 1 s over 100 pods (docs/benchmarks.md, "Collection"): 2.3 MiB less RSS, the binary
//! still PIE (ASLR kept; a non-PIE build would save ~1.8 MiB more of relocated `.data.rel.ro`
//! but give up ASLR on a network-facing process). An older GNU ld ignores the option with a
//! warning, so this never breaks a build. `SELFHEAL_NO_RELR=1` leaves the option out (for a
//! target whose glibc predates 2.36, which cannot load such a binary).

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let opted_out = std::env::var_os("SELFHEAL_NO_RELR").is_some_and(|v| v == "1");
    if os == "linux" && env == "gnu" && !opted_out {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SELFHEAL_NO_RELR");
}
