//! Intel AMX tiles for the bf16 mode's products (`bf16_gemm.rs`): on CPUs that have them
//! (Sapphire Rapids and later), `tdpbf16ps` multiplies a 16 × 32 bf16 tile by a 32 × 16 one
//! into 16 × 16 f32 sums in one instruction, where AVX-512 BF16 needs 256 `vdpbf16ps`.
//!
//! Linux hands a process the tiles' 8 KiB of register state only on request
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), asked once; a thread describes its tiles
//! (`ldtilecfg`) before the first tile instruction and releases them after (`tilerelease`),
//! so that a thread that no longer uses them does not save them at every context switch.
//! The instructions are written in `asm!`: Rust's AMX intrinsics are not stable.
//!
//! The permission is the process's: once granted, Linux refuses alternate signal stacks
//! smaller than the tiles' state needs (about 11 KiB; Rust's own and the CUDA stand-in's are
//! larger), and a process with a smaller one already installed is refused the tiles (then
//! AVX-512 BF16 takes the products, with other bits, as under `SPAFIT_CPU_NO_AMX=1`, a
//! seccomp filter that refuses `arch_prctl`, or a kernel before 5.16).

use std::arch::asm;
use std::arch::x86_64::{__cpuid, __cpuid_count};
use std::sync::OnceLock;

/// Rows and columns of the block [`Tiles::block`] computes: two by two tiles of 16 × 16.
pub(super) const BLOCK: usize = 32;
/// Pairs of `k` one step of [`Tiles::block`] takes: a tile row of 64 bytes.
pub(super) const PAIRS_PER_STEP: usize = 16;

/// Whether this CPU has AMX tiles with bf16 products and Linux lets this process use them.
pub(super) fn available() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| {
        // CPUID leaf 7, where the CPU has it (leaf 0's EAX: the highest): EDX bit 22
        // AMX-BF16, bit 24 AMX-TILE. SAFETY: CPUID exists on every x86_64 CPU (safe to call
        // in newer Rust, hence the allowance).
        #[allow(unused_unsafe)]
        let (highest, edx) = unsafe { (__cpuid(0).eax, __cpuid_count(7, 0).edx) };
        let cpu = highest >= 7 && edx & (1 << 22) != 0 && edx & (1 << 24) != 0;
        // As SPAFIT_CUDA_KEEP_LINEAR_INPUTS: exactly `1` sets it.
        let refused = std::env::var_os("SPAFIT_CPU_NO_AMX").is_some_and(|v| v == "1");
        cpu && !refused && tile_data_granted()
    })
}

/// Linux's permission for the tile data state (XFEATURE_XTILEDATA, 18), process-wide: a
/// kernel without AMX support (before 5.16) or a VM that hides it answers with an error.
/// Other systems: not asked, not used.
#[cfg(target_os = "linux")]
fn tile_data_granted() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with this code reads and writes no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn tile_data_granted() -> bool {
    false
}

/// `ldtilecfg`'s 64 bytes: palette 1, eight tiles of 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

/// The calling thread's tiles, configured for [`Tiles::block`], released on drop. Tiles 0–3
/// hold the block's sums, 4–5 its two row tiles of A, 6–7 its two column tiles of B.
pub(super) struct Tiles {
    /// Not `Send`: the configuration belongs to the thread that loaded it.
    _thread: std::marker::PhantomData<*const ()>,
}

impl Tiles {
    /// # Safety
    /// [`available`] must have returned true; no other `Tiles` may be live on this thread,
    /// and nothing that may run another task on it (a rayon call, say) may run while this one
    /// is: a nested one's release would leave this one's tiles unconfigured (the next tile
    /// instruction faults).
    pub(super) unsafe fn configure() -> Self {
        let mut config = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            bytes_per_row: [0; 16],
            rows: [0; 16],
        };
        for t in 0..8 {
            config.bytes_per_row[t] = 64;
            config.rows[t] = 16;
        }
        // SAFETY: a valid palette-1 configuration, 64-byte aligned; the caller checked that
        // the CPU and the OS allow tiles.
        unsafe { asm!("ldtilecfg [{0}]", in(reg) &config, options(nostack, readonly)) };
        Tiles {
            _thread: std::marker::PhantomData,
        }
    }

    /// The 32 × 32 f32 sums of 32 rows of A times 32 columns of B over `steps` ×
    /// [`PAIRS_PER_STEP`] pairs of `k`, stored row-major into `out` (every element written).
    ///
    /// `a`: row 0 of the 32, each row `a_stride` bytes on (its pairs of bf16 as u32, `k`
    /// ascending). `b`: a panel of [`BLOCK`] columns, each pair `p` of `k` a row of 32 u32
    /// (`(B[2p][n], B[2p + 1][n])` for column `n`), rows 128 bytes apart.
    ///
    /// # Safety
    /// `steps ≥ 1`; `a` must hold 32 rows of `steps · 64` bytes at `a_stride` apart, `b`
    /// `steps · 16` rows of 128 bytes; the thread's tiles configured by [`Tiles::configure`].
    pub(super) unsafe fn block(
        &self,
        a: *const u32,
        a_stride: usize,
        b: *const u32,
        steps: usize,
        out: &mut std::mem::MaybeUninit<[f32; BLOCK * BLOCK]>,
    ) {
        // Zero would run the loop 2⁶⁴ times.
        assert!(steps > 0, "a tile block needs at least one step");
        let a_lower = a.wrapping_byte_add(16 * a_stride);
        let out = out.as_mut_ptr() as *mut f32;
        let out_lower = out.wrapping_add(16 * BLOCK);
        // SAFETY: the caller's bounds: every load stays inside A's 32 rows and the panel's
        // `steps · 16` rows; the stores write `out`'s 32 rows of 128 bytes.
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "2:",
                "tileloadd tmm4, [{a} + {a_stride}*1]",
                "tileloadd tmm5, [{a_lower} + {a_stride}*1]",
                "tileloadd tmm6, [{b} + {b_stride}*1]",
                "tileloadd tmm7, [{b} + {b_stride}*1 + 64]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "add {a}, 64",
                "add {a_lower}, 64",
                "add {b}, 2048",
                "dec {steps}",
                "jnz 2b",
                "tilestored [{out} + {b_stride}*1], tmm0",
                "tilestored [{out} + {b_stride}*1 + 64], tmm1",
                "tilestored [{out_lower} + {b_stride}*1], tmm2",
                "tilestored [{out_lower} + {b_stride}*1 + 64], tmm3",
                a = inout(reg) a => _,
                a_lower = inout(reg) a_lower => _,
                b = inout(reg) b => _,
                steps = inout(reg) steps => _,
                a_stride = in(reg) a_stride,
                // The panel's rows and the output's are both 32 × 4 bytes.
                b_stride = in(reg) BLOCK * 4,
                out = in(reg) out,
                out_lower = in(reg) out_lower,
                options(nostack),
            );
        }
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: releases the thread's tile state; no tile is read after this.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}
