//! Independent dependency chains issued side by side.
//!
//! A vector kernel that evaluates a long chain of dependent operations (a polynomial, a
//! hash) on four registers at once relies on the CPU to overlap the four chains. LLVM's
//! scheduler for generic x86 emits each register's chain whole, one after the other (seen
//! in `objdump`), and a chain of ~20 dependent steps is longer than Zen 3's schedulers look
//! ahead, so the four ran one at a time, bound by latency (`NOTES.md`, entries 16–17).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::__m256i;

/// Hands four AVX2 registers through an empty `asm!` block, unchanged. Called after every
/// step of four chains, it makes the next step of any chain wait for this step of all four,
/// so the four issue together; it emits no instruction.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub(super) unsafe fn issue_together(v: &mut [__m256i; 4]) {
    std::arch::asm!(
        "/* {0} {1} {2} {3} */",
        inout(ymm_reg) v[0],
        inout(ymm_reg) v[1],
        inout(ymm_reg) v[2],
        inout(ymm_reg) v[3],
        options(pure, nomem, nostack, preserves_flags),
    );
}

/// [`issue_together`] on four AVX-512 registers.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn issue_together_512(v: &mut [std::arch::x86_64::__m512i; 4]) {
    std::arch::asm!(
        "/* {0} {1} {2} {3} */",
        inout(zmm_reg) v[0],
        inout(zmm_reg) v[1],
        inout(zmm_reg) v[2],
        inout(zmm_reg) v[3],
        options(pure, nomem, nostack, preserves_flags),
    );
}
