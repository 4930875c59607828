//! Build script. The CUDA kernels in `kernels/` are compiled to PTX here once the CUDA
//! backend lands (see kernels/README.md); until then the build only watches the folder, so
//! that adding a kernel reruns it.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
}
