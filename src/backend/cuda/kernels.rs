//! The PTX that build.rs compiled from `kernels/*.cu`, and the machine code it assembled from
//! that PTX for the GPUs `SPAFIT_CUDA_SASS` named.

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// The PTX of kernel file `module` (e.g. `layernorm`), if it was compiled into this build.
pub fn ptx(module: &str) -> Option<&'static str> {
    KERNELS
        .iter()
        .find(|(name, _)| *name == module)
        .map(|(_, ptx)| *ptx)
}

/// Machine code of `module` that a GPU of compute `capability` runs, if this build has some.
pub fn sass(module: &str, capability: (u32, u32)) -> Option<&'static [u8]> {
    pick_sass(SASS, module, capability)
}

/// From `table`'s `(module, sm, code)`: the code of `module` for the newest architecture a GPU
/// of `capability` runs. Machine code runs on its own major generation at the same or a
/// higher minor version only (sm_80's on an sm_86 or sm_89 GPU, sm_90's on sm_90 alone), so
/// any other GPU gets `None` and the driver compiles the PTX instead.
fn pick_sass<'a>(
    table: &[(&str, u32, &'a [u8])],
    module: &str,
    capability: (u32, u32),
) -> Option<&'a [u8]> {
    let (major, minor) = capability;
    table
        .iter()
        .filter(|(name, sm, _)| *name == module && sm / 10 == major && sm % 10 <= minor)
        .max_by_key(|(_, sm, _)| *sm)
        .map(|(_, _, code)| *code)
}

#[cfg(test)]
mod tests {
    use super::{pick_sass, KERNELS};

    /// The PTX's float multiplies, adds and subtracts are all `.rn` (build.rs: `--fmad=false`),
    /// which ptxas never fuses: a plain `mul.f32` or `add.f32` beside its neighbour could become
    /// an FMA in one kernel and not in another, and the GPU's bits would differ from the
    /// stand-in's and between kernels that must agree. (`fma.rn` is written where fusion is
    /// meant.)
    #[test]
    fn no_float_multiply_or_add_is_left_for_ptxas_to_fuse() {
        if KERNELS.is_empty() {
            println!("SKIPPED the PTX's rounding modes: this build has no nvcc");
            return;
        }
        let fusable = |statement: &str| {
            // `@%p mul.f32 …` (predicated) and `{ add.bf16x2 … }` (the CUDA headers' inline
            // assembly) too.
            let mut words = statement
                .trim_matches(|c: char| c.is_whitespace() || c == '{' || c == '}')
                .split_whitespace()
                .skip_while(|w| w.starts_with('@'));
            let mut parts = words.next().unwrap_or("").split('.');
            let name = parts.next();
            let modifiers: Vec<&str> = parts.collect();
            let float = modifiers.iter().any(|m| {
                let m = m.strip_prefix('b').unwrap_or(m);
                matches!(m, "f16" | "f32" | "f64" | "f16x2" | "f32x2")
            });
            let rounded = modifiers
                .iter()
                .any(|m| matches!(*m, "rn" | "rz" | "rm" | "rp"));
            matches!(name, Some("mul" | "add" | "sub")) && float && !rounded
        };
        assert!(fusable("mul.f32 %f1, %f2, %f3;"));
        assert!(fusable("@%p1 add.ftz.f32 %f1, %f2, %f3;"));
        assert!(fusable("{ add.bf16x2 %r1,%r2,%r3; }"));
        assert!(!fusable("mul.rn.f32 %f1, %f2, %f3;"));
        assert!(!fusable("mul.wide.u32 %rd1, %r2, 4;"));
        for (module, ptx) in KERNELS {
            for (i, line) in ptx.lines().enumerate() {
                assert!(
                    !line.split(';').any(fusable),
                    "{module}.ptx line {}: `{}` has no rounding mode, so ptxas may fuse it",
                    i + 1,
                    line.trim()
                );
            }
        }
    }

    #[test]
    fn machine_code_is_picked_only_for_a_gpu_that_runs_it() {
        let table: &[(&str, u32, &[u8])] = &[
            ("gemm", 80, b"gemm80"),
            ("gemm", 86, b"gemm86"),
            ("gemm", 90, b"gemm90"),
            ("attention", 80, b"attention80"),
        ];
        let pick = |module, capability| pick_sass(table, module, capability);
        assert_eq!(pick("gemm", (8, 0)), Some(&b"gemm80"[..]));
        assert_eq!(pick("gemm", (8, 6)), Some(&b"gemm86"[..]));
        assert_eq!(pick("gemm", (8, 9)), Some(&b"gemm86"[..]));
        assert_eq!(pick("gemm", (9, 0)), Some(&b"gemm90"[..]));
        assert_eq!(pick("attention", (8, 9)), Some(&b"attention80"[..]));
        // Another generation (Hopper for sm_80 code, Blackwell for either) compiles the PTX.
        assert_eq!(pick("attention", (9, 0)), None);
        assert_eq!(pick("gemm", (10, 0)), None);
        assert_eq!(pick("gemm", (12, 0)), None);
        assert_eq!(pick("layernorm", (8, 0)), None);
    }
}
