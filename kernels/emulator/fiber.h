// Fibers for the CPU stand-in: the threads of one CUDA block are coroutines on one OS thread
// that switch only where a GPU thread could observe the others (block barriers and warp
// collectives). On x86-64 a switch saves the six callee-saved registers and swaps the stack
// pointer (a few nanoseconds); ucontext, the portable fallback, makes a sigprocmask system
// call per switch and is ~100x slower.
#pragma once
#include <cstddef>
#include <cstdint>

#if defined(__x86_64__)

extern "C" void emu_fiber_switch(void** save_sp, void* load_sp) __attribute__((visibility("hidden")));
extern "C" void emu_fiber_trampoline() __attribute__((visibility("hidden")));

// emu_fiber_switch(save, load): push the callee-saved registers, store rsp in *save, load
// rsp from `load`, pop, return into the other fiber. A fresh fiber's stack is laid out so
// that the pops and the return land in emu_fiber_trampoline with r12 = entry, r13 = arg.
asm(R"(
    .text
    .p2align 4
    .globl emu_fiber_switch
    .hidden emu_fiber_switch
    .type emu_fiber_switch, @function
emu_fiber_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_fiber_switch, .-emu_fiber_switch

    .p2align 4
    .globl emu_fiber_trampoline
    .hidden emu_fiber_trampoline
    .type emu_fiber_trampoline, @function
emu_fiber_trampoline:
    movq %r13, %rdi
    callq *%r12
    call abort@PLT
    .size emu_fiber_trampoline, .-emu_fiber_trampoline
)");

namespace emu {

struct FiberContext {
    void* sp = nullptr;
};

// Prepares `f` to start running entry(arg) on the stack [lo, hi) at its first switch.
inline void fiber_prepare(FiberContext& f, void* lo, size_t size, void (*entry)(void*), void* arg) {
    auto top = reinterpret_cast<uintptr_t>(lo) + size;
    top &= ~uintptr_t(15);
    auto* s = reinterpret_cast<uintptr_t*>(top);
    // Popped in this order by emu_fiber_switch: r15 r14 r13 r12 rbx rbp, then `ret`.
    // After the ret rsp == top (16-byte aligned), as `callq` in the trampoline needs.
    s[-1] = reinterpret_cast<uintptr_t>(&emu_fiber_trampoline);
    s[-2] = 0;                                     // rbp
    s[-3] = 0;                                     // rbx
    s[-4] = reinterpret_cast<uintptr_t>(entry);    // r12
    s[-5] = reinterpret_cast<uintptr_t>(arg);      // r13
    s[-6] = 0;                                     // r14
    s[-7] = 0;                                     // r15
    f.sp = s - 7;
}

inline void fiber_switch(FiberContext& from, FiberContext& to) { emu_fiber_switch(&from.sp, to.sp); }

}  // namespace emu

#else  // portable fallback

#include <ucontext.h>

namespace emu {

struct FiberContext {
    ucontext_t ctx;
};

inline void fiber_prepare(FiberContext& f, void* lo, size_t size, void (*entry)(void*), void* arg) {
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = lo;
    f.ctx.uc_stack.ss_size = size;
    f.ctx.uc_link = nullptr;
    // makecontext passes int arguments only: split the pointers into halves.
    auto e = reinterpret_cast<uintptr_t>(entry), a = reinterpret_cast<uintptr_t>(arg);
    makecontext(&f.ctx, reinterpret_cast<void (*)()>(+[](unsigned e_lo, unsigned e_hi, unsigned a_lo, unsigned a_hi) {
                    auto fn = reinterpret_cast<void (*)(void*)>((uintptr_t(e_hi) << 32) | e_lo);
                    fn(reinterpret_cast<void*>((uintptr_t(a_hi) << 32) | a_lo));
                    abort();
                }),
                4, unsigned(e), unsigned(e >> 32), unsigned(a), unsigned(a >> 32));
}

inline void fiber_switch(FiberContext& from, FiberContext& to) { swapcontext(&from.ctx, &to.ctx); }

}  // namespace emu

#endif
