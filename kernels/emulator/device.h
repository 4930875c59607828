// The CUDA device vocabulary on the CPU: force-included (`-include emulator/device.h`) before
// each kernels/*.cu file that build.rs compiles for the host into kernels/<name>.so, the
// modules the stand-in driver (driver.cpp) runs.
//
// Execution model. A launch runs on the OS thread that called cuLaunchKernel. Blocks run one
// after another; the threads of a block are fibers (fiber.h) that run until they reach a
// block barrier, a warp collective or their end, so code between two synchronisation points
// runs without interruption, and shared memory needs no locking. The order in which fibers
// (and blocks) run is a parameter: forward, reverse or a seeded shuffle. Any order is one the
// hardware may choose, so a kernel whose output depends on it has a race.
//
// What is checked, beyond running the code: threads of a block that wait at different
// __syncthreads; lanes of a warp at different collectives, with different masks, with a mask
// that leaves out a live lane (partial masks are not emulated), or reading an exited lane;
// warp-wide tensor-core instructions without all 32 lanes; ldmatrix / cp.async addresses that
// are misaligned or outside shared memory; any other load or store through a pointer not
// aligned to its type (build.rs compiles the modules with the compiler's alignment checks);
// and shared memory (static and dynamic) that is NaN bytes at the start of every block and
// ends at a guard page.
#pragma once

// Our definitions first: CUDA's host_defines.h keeps a keyword it finds already defined.
#define __device__
#define __host__
#define __global__
#define __launch_bounds__(...)
// build.rs rewrites every __shared__ declaration; one it missed fails to compile here.
#define __shared__ EMU_ERROR_shared_declaration_that_build_rs_did_not_rewrite
#define __EMU__ 1

#include <cuda_bf16.h>  // host-compilable: __nv_bfloat16 and its conversions, vector types

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <utility>
#include <memory>
#include <vector>

#include "abi.h"
#include "fiber.h"

namespace emu {

constexpr size_t kStackBytes = 128 * 1024;  // per fiber, with a guard page below
constexpr unsigned kMaxThreads = 1024;

enum class Wait : uint8_t { Runnable, Barrier, Collective, Done, Failed };

struct Warp;
// Computes every participating lane's result of one warp collective, once, when the last
// lane has arrived (`participants`: bit l set for each lane taking part).
using Combine = void (*)(Warp& warp, unsigned parity, unsigned participants);

struct PendingCopy {
    void* dst;
    const void* src;
    unsigned char bytes[16];
    int size;
    int src_bytes;
    unsigned group;
};

struct Thread {
    FiberContext ctx;
    uint3 tid;
    unsigned lane, warp;
    Wait wait;
    unsigned collectives;  // warp collectives entered so far: its parity picks the slot
    // Where and why it waits.
    const char* file;
    int line;
    int kind;
    unsigned mask;
    Combine combine;
    bool full_warp;
    // cp.async: copies issued but not yet waited for, and the open group's number.
    std::vector<PendingCopy> copies;
    unsigned committed_groups;
};

// Two slots per lane, alternating between consecutive collectives, so a lane that resumes
// first and enters the next collective cannot overwrite what a slower lane still reads.
struct alignas(16) Slot {
    unsigned char in[48];
    unsigned char out[32];
};

struct Warp {
    Slot slot[2][32];
    unsigned first;  // index of lane 0 in the block
    unsigned size;   // lanes that exist (the last warp of a block may be partial)
};

struct SharedRegion {
    unsigned char* start;
    size_t bytes;
    const void* key = nullptr;      // the declaration (static arrays)
    unsigned long long launch = 0;  // the last launch that used it (static arrays)
    unsigned char* map = nullptr;
    size_t map_bytes = 0;
};

struct Runtime {
    EmuLaunch* launch = nullptr;
    std::vector<Thread> threads;
    std::vector<Warp> warps;
    FiberContext scheduler;
    Thread* cur = nullptr;
    uint3 block_idx{};
    dim3 block_dim, grid_dim;
    void (*body)(void*) = nullptr;
    void* body_arg = nullptr;
    bool failed = false;
    // One reservation holds every fiber stack of this OS thread, guard pages between: room
    // for the largest block launched so far (a power of two), not for 1024 threads, since the
    // reservation counts against an address-space limit (ulimit -v) however little is used.
    unsigned char* stacks = nullptr;
    unsigned stacks_reserved = 0;
    unsigned stacks_ready = 0;
    // Dynamic shared memory ends at a guard page; static arrays each get such a region.
    unsigned char* dynamic_map = nullptr;
    size_t dynamic_map_bytes = 0;
    SharedRegion dynamic{};
    std::vector<SharedRegion> statics;
    unsigned long long launches = 0;

    Runtime() = default;
    Runtime(const Runtime&) = delete;
    Runtime& operator=(const Runtime&) = delete;
    ~Runtime();
};

// The calling OS thread's runtime. The pointer uses the initial-exec TLS model (one
// %fs-relative load; the default model calls __tls_get_addr, and an object with a
// constructor adds an init check: together most of the emulation's time when every
// threadIdx and barrier paid them). 8 bytes per kernel module fit glibc's static TLS surplus
// for dlopen.
static __thread Runtime* t_rt __attribute__((tls_model("initial-exec")));

inline void ensure_runtime() {
    // Owns the runtime, so its fiber stacks are unmapped when the OS thread exits.
    static thread_local std::unique_ptr<Runtime> owner;
    if (!owner) owner.reset(new Runtime);
    t_rt = owner.get();
}

inline size_t page_size() {
    static const size_t p = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    return p;
}
inline size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

// ---------------------------------------------------------------- failures

inline void set_error(const char* fmt, va_list ap) {
    if (t_rt->failed) return;  // keep the first reason
    t_rt->failed = true;
    vsnprintf(t_rt->launch->error, sizeof t_rt->launch->error, fmt, ap);
}

// A failure found by the scheduler (outside any fiber).
inline int fail(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    set_error(fmt, ap);
    va_end(ap);
    return 1;
}

// A failure found inside a fiber: the launch stops here; the fiber is never resumed.
[[noreturn]] inline void fail_here(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    set_error(fmt, ap);
    va_end(ap);
    Thread* t = t_rt->cur;
    t->wait = Wait::Failed;
    fiber_switch(t->ctx, t_rt->scheduler);
    // Not a trap: the driver reports SIGILL as a kernel's misaligned access.
    std::abort();
}

// ---------------------------------------------------------------- shared memory

// [guard page][bytes rounded to pages][guard page], the usable part ending at the second
// guard: an access past the end faults (to within the 16-byte rounding of the start).
inline unsigned char* map_guarded(size_t bytes, size_t* map_bytes) {
    const size_t pg = page_size();
    const size_t body = round_up(bytes ? bytes : 1, pg);
    *map_bytes = body + 2 * pg;
    void* m = mmap(nullptr, *map_bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return nullptr;
    auto* base = static_cast<unsigned char*>(m);
    if (mprotect(base + pg, body, PROT_READ | PROT_WRITE) != 0) return nullptr;
    return base;
}

inline SharedRegion place_at_end(unsigned char* map, size_t map_bytes, size_t bytes) {
    const size_t pg = page_size();
    unsigned char* end = map + map_bytes - pg;
    size_t rounded = round_up(bytes ? bytes : 1, 16);
    SharedRegion r;
    r.start = end - rounded;
    r.bytes = bytes;
    r.map = map;
    r.map_bytes = map_bytes;
    return r;
}

// Storage of one `__shared__ T name;` declaration: build.rs rewrites each into
// `static char emu_key_name; auto& name = emu::shared_array<T>(&emu_key_name);`, so every
// thread of every block looks it up once per kernel invocation. The region is this OS
// thread's for that declaration, NaN bytes whenever a launch first uses it and at the start
// of every further block of that launch.
template <class T>
T& shared_array(const void* key) {
    Runtime& R = *t_rt;
    for (auto& r : R.statics) {
        if (r.key != key) continue;
        if (r.launch != R.launches) {
            r.launch = R.launches;
            std::memset(r.start, 0xFF, r.bytes);
        }
        return *reinterpret_cast<T*>(r.start);
    }
    size_t map_bytes = 0;
    unsigned char* map = map_guarded(sizeof(T), &map_bytes);
    if (!map) fail_here("cannot map %zu bytes of static shared memory", sizeof(T));
    SharedRegion r = place_at_end(map, map_bytes, sizeof(T));
    r.key = key;
    r.launch = R.launches;
    std::memset(r.start, 0xFF, sizeof(T));
    R.statics.push_back(r);
    return *reinterpret_cast<T*>(r.start);
}

inline void* dynamic_smem() { return t_rt->dynamic.start; }

inline bool in_region(const SharedRegion& r, const void* p, size_t n) {
    auto a = reinterpret_cast<const unsigned char*>(p);
    return a >= r.start && a + n <= r.start + round_up(r.bytes ? r.bytes : 1, 16);
}

// Whether [p, p + n) is shared memory of this block.
inline bool in_shared(const void* p, size_t n) {
    if (t_rt->dynamic.bytes && in_region(t_rt->dynamic, p, n)) return true;
    for (auto& r : t_rt->statics)
        if (in_region(r, p, n)) return true;
    return false;
}

// At a block's start: NaN bytes in the launch's dynamic shared memory and in the static
// arrays this launch has used so far (one first used later is poisoned at that use).
inline void poison_shared() {
    Runtime& R = *t_rt;
    if (R.dynamic.bytes) std::memset(R.dynamic.start, 0xFF, R.dynamic.bytes);
    for (auto& r : R.statics)
        if (r.launch == R.launches) std::memset(r.start, 0xFF, r.bytes);
}

inline Runtime::~Runtime() {
    const size_t pg = page_size();
    if (stacks) munmap(stacks, static_cast<size_t>(stacks_reserved) * (kStackBytes + pg));
    if (dynamic_map) munmap(dynamic_map, dynamic_map_bytes);
    for (auto& r : statics) munmap(r.map, r.map_bytes);
}

// ---------------------------------------------------------------- schedule

inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// The order in which `n` items run in round `round` of unit `unit` under the launch's schedule.
inline void order(unsigned* out, unsigned n, uint64_t unit, uint64_t round) {
    const int s = t_rt->launch->schedule;
    for (unsigned i = 0; i < n; ++i) out[i] = s == EMU_REVERSE ? n - 1 - i : i;
    if (s == EMU_SHUFFLE) {
        uint64_t state = mix64(t_rt->launch->seed ^ mix64(unit * 0x9E3779B97F4A7C15ull + round));
        for (unsigned i = n; i > 1; --i) {
            state = mix64(state + 0x9E3779B97F4A7C15ull);
            unsigned j = static_cast<unsigned>(state % i);
            std::swap(out[i - 1], out[j]);
        }
    }
}

// ---------------------------------------------------------------- fibers

inline void fiber_main(void*) {
    t_rt->body(t_rt->body_arg);
    Thread* t = t_rt->cur;
    t->wait = Wait::Done;
    fiber_switch(t->ctx, t_rt->scheduler);
    std::abort();  // a finished fiber is never resumed (not a trap: see fail_here)
}

inline void block_until(Wait w) {
    Thread* t = t_rt->cur;
    t->wait = w;
    fiber_switch(t->ctx, t_rt->scheduler);
}

inline unsigned char* stack_of(unsigned i) {
    return t_rt->stacks + static_cast<size_t>(i) * (kStackBytes + page_size()) + page_size();
}

// Called between launches only: no fiber lives on the stacks a larger reservation replaces.
inline bool ensure_stacks(unsigned n) {
    const size_t stride = kStackBytes + page_size();
    if (n > t_rt->stacks_reserved) {
        unsigned reserve = 32;
        while (reserve < n) reserve *= 2;
        if (t_rt->stacks) munmap(t_rt->stacks, stride * t_rt->stacks_reserved);
        t_rt->stacks = nullptr;
        t_rt->stacks_reserved = t_rt->stacks_ready = 0;
        void* m = mmap(nullptr, stride * reserve, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) return false;
        t_rt->stacks = static_cast<unsigned char*>(m);
        t_rt->stacks_reserved = reserve;
    }
    for (; t_rt->stacks_ready < n; ++t_rt->stacks_ready)
        if (mprotect(stack_of(t_rt->stacks_ready), kStackBytes, PROT_READ | PROT_WRITE) != 0) return false;
    return true;
}

inline void resume(Thread& t) {
    t_rt->cur = &t;
    EmuLaunch* L = t_rt->launch;
    L->cur_thread[0] = t.tid.x;
    L->cur_thread[1] = t.tid.y;
    L->cur_thread[2] = t.tid.z;
    fiber_switch(t_rt->scheduler, t.ctx);
}

inline const char* kind_name(int kind);

// Runs the lanes of warp `w` until none can go on alone; completes the warp collectives they
// meet on the way. Returns non-zero on failure.
inline int run_warp(unsigned w, uint64_t block_linear, uint64_t& round) {
    Warp& warp = t_rt->warps[w];
    unsigned lanes[32];
    for (;;) {
        order(lanes, warp.size, block_linear * 4096 + w, round++);
        for (unsigned k = 0; k < warp.size; ++k) {
            Thread& t = t_rt->threads[warp.first + lanes[k]];
            if (t.wait == Wait::Runnable) resume(t);
            if (t_rt->failed) return 1;
        }
        unsigned at_collective = 0, at_barrier = 0, live = 0;
        Thread* first = nullptr;
        for (unsigned l = 0; l < warp.size; ++l) {
            Thread& t = t_rt->threads[warp.first + l];
            if (t.wait == Wait::Done) continue;
            live |= 1u << l;
            if (t.wait == Wait::Barrier) ++at_barrier;
            if (t.wait == Wait::Collective) {
                ++at_collective;
                if (!first) first = &t;
            }
        }
        if (!at_collective) return 0;
        const unsigned b0 = t_rt->block_idx.x, b1 = t_rt->block_idx.y, b2 = t_rt->block_idx.z;
        if (at_barrier)
            return fail("warp %u of block (%u,%u,%u): %u lane(s) wait in %s at %s:%d while %u wait at __syncthreads "
                        "(divergent warp collective)",
                        w, b0, b1, b2, at_collective, kind_name(first->kind), first->file, first->line, at_barrier);
        for (unsigned l = 0; l < warp.size; ++l) {
            Thread& t = t_rt->threads[warp.first + l];
            if (t.wait != Wait::Collective) continue;
            if (t.kind != first->kind || t.line != first->line ||
                (t.file != first->file && std::strcmp(t.file, first->file) != 0))
                return fail("warp %u of block (%u,%u,%u): lane %u is in %s at %s:%d but lane %u in %s at %s:%d "
                            "(divergent warp collective)",
                            w, b0, b1, b2, first->lane, kind_name(first->kind), first->file, first->line, l,
                            kind_name(t.kind), t.file, t.line);
            if (t.mask != first->mask)
                return fail("warp %u of block (%u,%u,%u): lanes %u and %u call %s at %s:%d with masks %#x and %#x",
                            w, b0, b1, b2, first->lane, l, kind_name(t.kind), t.file, t.line, first->mask, t.mask);
            if ((t.collectives & 1) != (first->collectives & 1))
                return fail("warp %u of block (%u,%u,%u): lanes %u and %u have passed different numbers of warp "
                            "collectives before %s at %s:%d",
                            w, b0, b1, b2, first->lane, l, kind_name(t.kind), t.file, t.line);
        }
        if ((first->mask & live) != live)
            return fail("warp %u of block (%u,%u,%u): %s at %s:%d has mask %#x but lanes %#x are live: partial-warp "
                        "collectives are not emulated",
                        w, b0, b1, b2, kind_name(first->kind), first->file, first->line, first->mask, live);
        if (first->full_warp && live != 0xffffffffu)
            return fail("warp %u of block (%u,%u,%u): %s at %s:%d needs all 32 lanes, but only lanes %#x take part",
                        w, b0, b1, b2, kind_name(first->kind), first->file, first->line, live);
        const unsigned parity = (first->collectives - 1) & 1;
        if (first->combine) first->combine(warp, parity, live);
        if (t_rt->failed) return 1;
        for (unsigned l = 0; l < warp.size; ++l) {
            Thread& t = t_rt->threads[warp.first + l];
            if (t.wait == Wait::Collective) t.wait = Wait::Runnable;
        }
    }
}

inline int run_block(uint64_t block_linear) {
    const unsigned nwarps = static_cast<unsigned>(t_rt->warps.size());
    std::vector<unsigned> warp_order(nwarps);
    uint64_t round = 0;
    for (;;) {
        order(warp_order.data(), nwarps, block_linear * 4096 + 4095, round++);
        for (unsigned k = 0; k < nwarps; ++k)
            if (run_warp(warp_order[k], block_linear, round)) return 1;
        // Every thread now waits at a barrier or has finished.
        const Thread* first = nullptr;
        unsigned waiting = 0;
        for (auto& t : t_rt->threads) {
            if (t.wait != Wait::Barrier) continue;
            ++waiting;
            if (!first) {
                first = &t;
            } else if (t.line != first->line || (t.file != first->file && std::strcmp(t.file, first->file) != 0)) {
                return fail("block (%u,%u,%u): thread (%u,%u,%u) waits at __syncthreads at %s:%d, thread (%u,%u,%u) at "
                            "%s:%d (divergent barrier)",
                            t_rt->block_idx.x, t_rt->block_idx.y, t_rt->block_idx.z, first->tid.x, first->tid.y, first->tid.z,
                            first->file, first->line, t.tid.x, t.tid.y, t.tid.z, t.file, t.line);
            }
        }
        if (!waiting) return 0;
        for (auto& t : t_rt->threads)
            if (t.wait == Wait::Barrier) t.wait = Wait::Runnable;
    }
}

// Runs the whole grid of launch L, calling body(arg) as each CUDA thread.
inline int run_grid(void (*body)(void*), void* arg, EmuLaunch* L) {
    ensure_runtime();
    t_rt->launches++;
    t_rt->launch = L;
    t_rt->failed = false;
    t_rt->body = body;
    t_rt->body_arg = arg;
    t_rt->grid_dim = dim3(L->grid[0], L->grid[1], L->grid[2]);
    t_rt->block_dim = dim3(L->block[0], L->block[1], L->block[2]);
    const unsigned n = L->block[0] * L->block[1] * L->block[2];
    if (n == 0 || n > kMaxThreads) return fail("%u threads per block", n);
    if (!ensure_stacks(n))
        return fail("cannot map fiber stacks (%s): a block of %u threads needs %zu MiB of address space for its "
                    "fibers' stacks (%zu KiB each) on each host thread that runs blocks, which an address-space "
                    "limit (ulimit -v) or the host's memory does not leave",
                    strerror(errno), n, ((kStackBytes + page_size()) * n) >> 20, kStackBytes >> 10);
    L->stack_lo = t_rt->stacks;
    L->stack_hi = t_rt->stacks + static_cast<size_t>(t_rt->stacks_reserved) * (kStackBytes + page_size());
    // Dynamic shared memory: reuse the mapping while it is large enough.
    const size_t dyn = L->dynamic_smem_bytes;
    if (dyn > 0 && (!t_rt->dynamic_map || t_rt->dynamic_map_bytes < round_up(dyn, page_size()) + 2 * page_size())) {
        if (t_rt->dynamic_map) munmap(t_rt->dynamic_map, t_rt->dynamic_map_bytes);
        t_rt->dynamic_map = map_guarded(dyn, &t_rt->dynamic_map_bytes);
        if (!t_rt->dynamic_map) return fail("cannot map %zu bytes of dynamic shared memory", dyn);
    }
    t_rt->dynamic = dyn ? place_at_end(t_rt->dynamic_map, t_rt->dynamic_map_bytes, dyn) : SharedRegion{};
    t_rt->threads.assign(n, Thread{});
    const unsigned nwarps = (n + 31) / 32;
    t_rt->warps.assign(nwarps, Warp{});
    for (unsigned w = 0; w < nwarps; ++w) {
        t_rt->warps[w].first = w * 32;
        t_rt->warps[w].size = n - w * 32 < 32 ? n - w * 32 : 32;
    }
    const uint64_t blocks = uint64_t(L->grid[0]) * L->grid[1] * L->grid[2];
    for (uint64_t k = 0; k < blocks; ++k) {
        // Blocks are independent: the schedule orders them too (reverse; shuffle by strides).
        uint64_t b = k;
        if (L->schedule == EMU_REVERSE) b = blocks - 1 - k;
        if (L->schedule == EMU_SHUFFLE && blocks > 1) {
            // A seeded affine permutation: stride coprime with the block count.
            uint64_t stride = (mix64(L->seed) % blocks) | 1;
            while (std::gcd(stride, blocks) != 1) stride += 2;
            b = (k * stride + mix64(L->seed + 1)) % blocks;
        }
        t_rt->block_idx = uint3{unsigned(b % L->grid[0]), unsigned(b / L->grid[0] % L->grid[1]),
                             unsigned(b / (uint64_t(L->grid[0]) * L->grid[1]))};
        L->cur_block[0] = t_rt->block_idx.x;
        L->cur_block[1] = t_rt->block_idx.y;
        L->cur_block[2] = t_rt->block_idx.z;
        poison_shared();
        for (unsigned i = 0; i < n; ++i) {
            Thread& t = t_rt->threads[i];
            t.tid = uint3{i % L->block[0], i / L->block[0] % L->block[1], i / (L->block[0] * L->block[1])};
            t.lane = i % 32;
            t.warp = i / 32;
            t.wait = Wait::Runnable;
            t.collectives = 0;
            t.copies.clear();
            t.committed_groups = 0;
            fiber_prepare(t.ctx, stack_of(i), kStackBytes, fiber_main, nullptr);
        }
        if (run_block(b)) {
            t_rt->cur = nullptr;
            return 1;
        }
    }
    t_rt->cur = nullptr;
    return 0;
}

// ---------------------------------------------------------------- warp collectives

enum Kind { K_SYNCWARP, K_SHFL, K_BALLOT, K_MMA, K_LDMATRIX };

inline const char* kind_name(int kind) {
    switch (kind) {
        case K_SYNCWARP: return "__syncwarp";
        case K_SHFL: return "a warp shuffle";
        case K_BALLOT: return "a warp vote";
        case K_MMA: return "mma.sync";
        case K_LDMATRIX: return "ldmatrix";
        default: return "a warp collective";
    }
}

// Enters a collective with `in` as this lane's contribution; returns this lane's result
// slot, valid until the lane's next collective.
template <class In>
inline const unsigned char* collective(int kind, unsigned mask, const In& in, Combine combine, bool full_warp,
                                       const char* file, int line) {
    static_assert(sizeof(In) <= sizeof(Slot::in), "collective payload too large");
    Thread* t = t_rt->cur;
    Slot& s = t_rt->warps[t->warp].slot[t->collectives & 1][t->lane];
    ++t->collectives;
    std::memcpy(s.in, &in, sizeof(In));
    t->kind = kind;
    t->mask = mask;
    t->file = file;
    t->line = line;
    t->combine = combine;
    t->full_warp = full_warp;
    block_until(Wait::Collective);
    return s.out;
}

template <class T>
inline T read_slot(const unsigned char* p) {
    T v;
    std::memcpy(&v, p, sizeof(T));
    return v;
}

struct ShuffleIn {
    unsigned char value[8];
    int src;
};

inline void combine_shuffle(Warp& w, unsigned parity, unsigned participants) {
    Slot* s = w.slot[parity];
    for (unsigned l = 0; l < 32; ++l) {
        if (!(participants >> l & 1)) continue;
        int src = read_slot<ShuffleIn>(s[l].in).src;
        if (!(participants >> src & 1)) {
            fail("a warp shuffle in lane %u reads lane %d, which has exited", l, src);
            return;
        }
    }
    // Results go to `out`, inputs stay in `in`: no lane's input is overwritten mid-way.
    for (unsigned l = 0; l < 32; ++l) {
        if (!(participants >> l & 1)) continue;
        int src = read_slot<ShuffleIn>(s[l].in).src;
        std::memcpy(s[l].out, read_slot<ShuffleIn>(s[src].in).value, 8);
    }
}

template <class T>
inline T shuffle(unsigned mask, T v, int src_lane, const char* file, int line) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    ShuffleIn in{};
    std::memcpy(in.value, &v, sizeof(T));
    in.src = src_lane;
    return read_slot<T>(collective(K_SHFL, mask, in, combine_shuffle, false, file, line));
}

inline void combine_ballot(Warp& w, unsigned parity, unsigned participants) {
    Slot* s = w.slot[parity];
    unsigned bits = 0;
    for (unsigned l = 0; l < 32; ++l)
        if ((participants >> l & 1) && read_slot<int>(s[l].in)) bits |= 1u << l;
    for (unsigned l = 0; l < 32; ++l)
        if (participants >> l & 1) {
            std::memcpy(s[l].out, &bits, 4);
            std::memcpy(s[l].out + 4, &participants, 4);
        }
}

inline int lane_id() { return static_cast<int>(t_rt->cur->lane); }

// ---------------------------------------------------------------- launching

template <class T>
using Bare = std::remove_cv_t<std::remove_reference_t<T>>;

// Calls f with its arguments read from cuLaunchKernel's void** (one pointer per argument).
template <class... A, size_t... I>
inline void invoke(void (*f)(A...), void** p, std::index_sequence<I...>) {
    f(*static_cast<Bare<A>*>(p[I])...);
}

template <class... A>
inline int launch(void (*f)(A...), EmuLaunch* L) {
    struct Call {
        void (*f)(A...);
        void** p;
    } call{f, L->params};
    return run_grid(
        [](void* c) {
            auto* k = static_cast<Call*>(c);
            invoke(k->f, k->p, std::index_sequence_for<A...>{});
        },
        &call, L);
}

template <class... A>
constexpr int arity(void (*)(A...)) {
    return sizeof...(A);
}

template <class... A>
inline const unsigned* param_sizes(void (*)(A...)) {
    static const unsigned sizes[] = {static_cast<unsigned>(sizeof(Bare<A>))..., 0u};
    return sizes;
}

}  // namespace emu

#define EMU_KERNEL(name) {#name, [](EmuLaunch* L) { return ::emu::launch(&name, L); }, ::emu::arity(&name), ::emu::param_sizes(&name)},

// ---------------------------------------------------------------- built-in variables

#define threadIdx (::emu::t_rt->cur->tid)
#define blockIdx (::emu::t_rt->block_idx)
#define blockDim (::emu::t_rt->block_dim)
#define gridDim (::emu::t_rt->grid_dim)
#define warpSize 32

// ---------------------------------------------------------------- synchronisation

inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    emu::Thread* t = emu::t_rt->cur;
    t->file = file;
    t->line = line;
    emu::block_until(emu::Wait::Barrier);
}

inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    emu::collective(emu::K_SYNCWARP, mask, 0, nullptr, false, file, line);
}

inline void __threadfence() {}
inline void __threadfence_block() {}

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32, const char* file = __builtin_FILE(),
                     int line = __builtin_LINE()) {
    int lane = emu::lane_id();
    return emu::shuffle(mask, v, (lane & ~(width - 1)) + (src & (width - 1)), file, line);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, const char* file = __builtin_FILE(),
                         int line = __builtin_LINE()) {
    int lane = emu::lane_id();
    int src = lane ^ lane_mask;
    if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;
    return emu::shuffle(mask, v, src, file, line);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                          int line = __builtin_LINE()) {
    int lane = emu::lane_id(), sub = lane & (width - 1);
    return emu::shuffle(mask, v, sub + int(delta) < width ? lane + int(delta) : lane, file, line);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                        int line = __builtin_LINE()) {
    int lane = emu::lane_id(), sub = lane & (width - 1);
    return emu::shuffle(mask, v, sub >= int(delta) ? lane - int(delta) : lane, file, line);
}
inline unsigned __ballot_sync(unsigned mask, int p, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    int in = p != 0;
    return emu::read_slot<unsigned>(emu::collective(emu::K_BALLOT, mask, in, emu::combine_ballot, false, file, line));
}
inline int __any_sync(unsigned mask, int p, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return __ballot_sync(mask, p, file, line) != 0;
}
inline int __all_sync(unsigned mask, int p, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    int in = p != 0;
    const unsigned char* out = emu::collective(emu::K_BALLOT, mask, in, emu::combine_ballot, false, file, line);
    return emu::read_slot<unsigned>(out) == emu::read_slot<unsigned>(out + 4);
}

// ---------------------------------------------------------------- device math
// The host's correctly rounded functions stand in for the GPU's approximate intrinsics:
// results agree to tolerance, not bit for bit (the GPU check judges the hardware).

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
// The explicitly rounded operations: never fused, on the GPU (ptxas) or here
// (-ffp-contract=off), so kernels that spell them out agree with the hardware bit for bit.
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
template <class T>
inline T __ldg(const T* p) { return *p; }
using std::max;
using std::min;
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }

// One OS thread runs a launch and fibers switch only at synchronisation points, so a plain
// read-modify-write is atomic here.
template <class T>
inline T atomicAdd(T* p, T v) { T o = *p; *p = o + v; return o; }
template <class T>
inline T atomicMax(T* p, T v) { T o = *p; *p = o > v ? o : v; return o; }
template <class T>
inline T atomicCAS(T* p, T c, T v) { T o = *p; if (o == c) *p = v; return o; }
