//! The PTX that build.rs compiled from `kernels/*.cu`.

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// The PTX of kernel file `module` (e.g. `layernorm`), if it was compiled into this build.
pub fn ptx(module: &str) -> Option<&'static str> {
    KERNELS
        .iter()
        .find(|(name, _)| *name == module)
        .map(|(_, ptx)| *ptx)
}
