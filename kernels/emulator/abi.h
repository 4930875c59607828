// The contract between the stand-in driver (libcuda.so) and the host builds of the kernel
// files (kernels/<name>.so). Both sides are built by build.rs from this tree, so a change
// here rebuilds both; EMU_ABI_VERSION guards against mixing builds anyway.
#pragma once
#ifdef __cplusplus
extern "C" {
#endif

#define EMU_ABI_VERSION 3

// How the fibers of a block (and the blocks of a grid) are ordered. Any order is a legal
// GPU schedule; a kernel whose results change between orders has a race.
enum EmuSchedule { EMU_FORWARD = 0, EMU_REVERSE = 1, EMU_SHUFFLE = 2 };

struct EmuLaunch {
    // In: the launch as cuLaunchKernel got it.
    unsigned grid[3], block[3];
    unsigned dynamic_smem_bytes;
    void** params;
    const char* name;
    int schedule;                // enum EmuSchedule
    unsigned long long seed;     // for EMU_SHUFFLE
    // Out, kept current by the scheduler at every fiber switch, read by the fault handler.
    volatile unsigned cur_block[3], cur_thread[3];
    // Out: fiber stacks [lo, hi) of this launch, so a stack overflow is named as one.
    void* volatile stack_lo;
    void* volatile stack_hi;
    // Out: why the launch failed (the runtime returns non-zero).
    char error[512];
};

typedef int (*EmuLauncher)(struct EmuLaunch*);

struct EmuKernelEntry {
    const char* name;
    EmuLauncher launch;
    int arity;                   // parameters of the C++ kernel
    const unsigned* param_sizes; // sizeof of each parameter, checked against the PTX
};

// Exported by every kernel module.
struct EmuModule {
    int abi_version;
    const struct EmuKernelEntry* entries;  // terminated by a null name
};

#ifdef __cplusplus
}
#endif
