// libcuda.so stand-in: the part of the CUDA driver API that cudarc uses for spafit, on the
// CPU. build.rs builds it with the SONAME libcuda.so beside a host build of every
// kernels/*.cu (kernels/<name>.so next to this library), and spafit loads it by absolute path
// before cudarc's first driver call, so cudarc's own dlopen("libcuda.so") returns this library.
//
// Device memory is host memory. Every call is synchronous (streams and events are tokens).
// cuModuleLoadData takes PTX text, reads its entries (ptx.h) and binds each to the host build
// of the same name; cuLaunchKernel runs it there (device.h), after the checks the hardware
// makes: block and grid limits, __launch_bounds__, static + dynamic shared memory against
// 48 KiB or the opted-in maximum. Faithful where bugs hide:
// - every allocation starts after a guard page and ends at 64 KiB of them (a read past the
//   end faults there, whatever the process maps next); the bytes between the
//   allocation and its pages are 0xFF and checked after every launch, so an out-of-bounds
//   write becomes CUDA_ERROR_ILLEGAL_ADDRESS naming kernel, block and thread, not a crash;
// - freed memory is quarantined (no access), so a use after free faults the same way;
// - fresh allocations are NaN bytes (0xFF), as is shared memory at the start of every block;
// - a fault or a failed launch is sticky: every later call fails, as on a GPU.
//
// Settings: SPAFIT_EMU_SCHEDULE=forward|reverse|shuffle[:seed] (order of fibers and blocks),
// SPAFIT_EMU_GUARD=0 (no guard pages), SPAFIT_EMU_TRACE=1 (first call of each entry point and
// counts at exit), SPAFIT_EMU_MEMORY=<bytes> (device memory size), SPAFIT_EMU_KERNEL_DIR
// (where kernels/*.so are). spafit_emu_* functions below change them in process.
// cuda.h maps some names to their _v2 symbols (cuEventElapsedTime -> cuEventElapsedTime_v2):
// defining the plain name below exports the symbol cudarc looks up.
#include <cuda.h>
#include <dirent.h>
#include <dlfcn.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <cerrno>
#include <mutex>
#include <string>
#include <vector>

#include "abi.h"
#include "ptx.h"

#define API extern "C" __attribute__((visibility("default")))

namespace {

// ---------------------------------------------------------------- settings and messages

bool env_flag(const char* name, bool fallback) {
    const char* v = getenv(name);
    return v ? *v != '0' : fallback;
}

const bool g_tracing = env_flag("SPAFIT_EMU_TRACE", false);
bool g_guard = env_flag("SPAFIT_EMU_GUARD", true);

std::mutex g_mu;              // allocations, modules, last error
std::string g_last_error;     // the last failure, in words
std::atomic<bool> g_echo_failures{true};  // also print each failure as it is recorded
std::atomic<int> g_sticky{0}; // the CUresult that poisoned the context, or 0

struct Schedule {
    int kind = EMU_FORWARD;
    unsigned long long seed = 0;
};

bool parse_schedule(const char* text, Schedule* out) {
    if (!text || !*text || !strcmp(text, "forward")) {
        *out = Schedule{};
        return true;
    }
    if (!strcmp(text, "reverse")) {
        *out = Schedule{EMU_REVERSE, 0};
        return true;
    }
    if (!strncmp(text, "shuffle", 7) && (text[7] == 0 || text[7] == ':')) {
        if (!text[7]) {
            *out = Schedule{EMU_SHUFFLE, 1};
            return true;
        }
        // The whole seed must be digits: `shuffle:abc` silently seeded 0 would hide a typo.
        const char* digits = text + 8;
        char* end = nullptr;
        errno = 0;
        unsigned long long seed = strtoull(digits, &end, 10);
        if (*digits < '0' || *digits > '9' || *end || errno) return false;
        *out = Schedule{EMU_SHUFFLE, seed};
        return true;
    }
    return false;
}

Schedule initial_schedule() {
    Schedule s;
    if (!parse_schedule(getenv("SPAFIT_EMU_SCHEDULE"), &s))
        fprintf(stderr, "emu: SPAFIT_EMU_SCHEDULE=%s is not forward, reverse or shuffle[:seed]; using forward\n",
                getenv("SPAFIT_EMU_SCHEDULE"));
    return s;
}
Schedule g_schedule = initial_schedule();

// CUDA's grid limits in y and z, or smaller ones from SPAFIT_EMU_MAX_GRID_Y / _Z: the launch
// code splits larger grids into several launches, and a small limit puts that splitting under
// test on shapes small enough to emulate.
unsigned initial_grid_limit(const char* name) {
    const char* v = getenv(name);
    if (!v) return 65535;
    char* end = nullptr;
    errno = 0;
    unsigned long n = strtoul(v, &end, 10);
    if (*v < '0' || *v > '9' || *end || errno || n < 1 || n > 65535) {
        fprintf(stderr, "emu: %s=%s is not in 1..65535; using 65535\n", name, v);
        return 65535;
    }
    return unsigned(n);
}
const unsigned g_max_grid_y = initial_grid_limit("SPAFIT_EMU_MAX_GRID_Y");
const unsigned g_max_grid_z = initial_grid_limit("SPAFIT_EMU_MAX_GRID_Z");

size_t initial_memory() {
    const char* v = getenv("SPAFIT_EMU_MEMORY");
    return v ? strtoull(v, nullptr, 10) : (size_t(16) << 30);
}
size_t g_memory_total = initial_memory();
size_t g_memory_used = 0;
size_t g_memory_high = 0;  // the most in use at once since the last reset

// Async-signal-safe write of a message to stderr.
void say(const char* fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > 0) {
        ssize_t w = write(2, buf, n < int(sizeof buf) ? n : int(sizeof buf) - 1);
        (void)w;
    }
}

// Records why a call failed (returned to callers through spafit_emu_last_error) and, unless
// the client reports it itself, says it.
CUresult failure(CUresult code, const char* fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    {
        std::lock_guard<std::mutex> l(g_mu);
        g_last_error = buf;
    }
    if (g_echo_failures) say("emu: %s\n", buf);
    return code;
}

CUresult poisoned() { return static_cast<CUresult>(g_sticky.load()); }

struct TraceEntry {
    const char* name;
    std::atomic<long> calls;
};
TraceEntry g_trace[192];
std::atomic<int> g_ntrace{0};

void trace(const char* fn) {
    if (!g_tracing) return;
    static std::mutex m;
    std::lock_guard<std::mutex> l(m);
    int n = g_ntrace.load();
    for (int i = 0; i < n; ++i)
        if (g_trace[i].name == fn) {
            g_trace[i].calls++;
            return;
        }
    if (n == int(sizeof g_trace / sizeof g_trace[0])) return;
    g_trace[n].name = fn;
    g_trace[n].calls = 1;
    g_ntrace = n + 1;
    fprintf(stderr, "emu: first call of %s\n", fn);
}
struct TraceReport {
    ~TraceReport() {
        if (!g_tracing) return;
        fprintf(stderr, "emu: calls:");
        for (int i = 0; i < g_ntrace; ++i) fprintf(stderr, " %s=%ld", g_trace[i].name, g_trace[i].calls.load());
        fprintf(stderr, "\n");
    }
} g_trace_report;
#define TRACE() trace(__func__)

// ---------------------------------------------------------------- memory

const size_t PAGE = 4096;
// No-access pages after every allocation: address space only (MAP_NORESERVE). One page would
// let a read a little further land in whatever the process maps next (a library's code).
const size_t kTrailingGuard = 16 * PAGE;
size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

struct Alloc {
    char* user;
    size_t size;     // bytes asked for
    char* map;       // the whole mapping (guard mode), else nullptr
    size_t map_len;
};
std::map<uintptr_t, Alloc> g_allocs;  // by user address
std::deque<Alloc> g_quarantine;       // freed, no access: a use after free faults
const size_t kQuarantine = 2048;

CUresult do_alloc(CUdeviceptr* out, size_t n) {
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = poisoned()) return r;
    Alloc a{};
    a.size = n;
    {
        std::lock_guard<std::mutex> l(g_mu);
        if (g_memory_used + n > g_memory_total) {
            char buf[256];
            snprintf(buf, sizeof buf, "out of device memory: %zu bytes asked for, %zu of %zu bytes in use", n,
                     g_memory_used, g_memory_total);
            g_last_error = buf;
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        g_memory_used += n;
        if (g_memory_used > g_memory_high) g_memory_high = g_memory_used;
    }
    // The stand-in's device memory is this process's host memory: where the host (or an
    // address-space limit) has none left, say so rather than a bare out-of-memory.
    auto no_host_memory = [&](int err) {
        {
            std::lock_guard<std::mutex> l(g_mu);
            g_memory_used -= n;
        }
        return failure(CUDA_ERROR_OUT_OF_MEMORY,
                       "out of host memory: %zu bytes of device memory asked for, which the stand-in keeps in "
                       "this process's host memory (%s: the host's free memory, a container's limit or ulimit -v "
                       "leaves no room)",
                       n, strerror(err));
    };
    if (g_guard) {
        // [guard][0xFF slack | user, 16-byte aligned, ending at the guard][16 guard pages]
        size_t body = round_up(n ? n : 1, 16), pages = round_up(body, PAGE);
        a.map_len = PAGE + pages + kTrailingGuard;
        void* m = mmap(nullptr, a.map_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) return no_host_memory(errno);
        a.map = static_cast<char*>(m);
        mprotect(a.map + PAGE, pages, PROT_READ | PROT_WRITE);
        a.user = a.map + PAGE + pages - body;
        memset(a.map + PAGE, 0xFF, pages);
    } else {
        a.user = static_cast<char*>(aligned_alloc(256, round_up(n ? n : 1, 256)));
        if (!a.user) return no_host_memory(errno);
        memset(a.user, 0xFF, n);
    }
    std::lock_guard<std::mutex> l(g_mu);
    g_allocs[uintptr_t(a.user)] = a;
    *out = CUdeviceptr(a.user);
    return CUDA_SUCCESS;
}

// Offset (from the allocation's start) of the first byte around it that is no longer 0xFF.
bool slack_intact(const Alloc& a, long* where) {
    if (!a.map) return true;
    size_t body = round_up(a.size ? a.size : 1, 16);
    for (char* p = a.map + PAGE; p < a.user; ++p)
        if ((unsigned char)*p != 0xFF) {
            *where = p - a.user;
            return false;
        }
    for (char* p = a.user + a.size; p < a.user + body; ++p)
        if ((unsigned char)*p != 0xFF) {
            *where = p - a.user;
            return false;
        }
    return true;
}

CUresult do_free(CUdeviceptr p) {
    std::lock_guard<std::mutex> l(g_mu);
    auto it = g_allocs.find(uintptr_t(p));
    if (it == g_allocs.end()) {
        char buf[128];
        snprintf(buf, sizeof buf, "free of %p, which is not a live allocation", (void*)p);
        g_last_error = buf;
        say("emu: %s\n", buf);
        return CUDA_ERROR_INVALID_VALUE;
    }
    Alloc a = it->second;
    g_allocs.erase(it);
    g_memory_used -= a.size;
    if (a.map) {
        madvise(a.map, a.map_len, MADV_DONTNEED);
        mprotect(a.map, a.map_len, PROT_NONE);
        g_quarantine.push_back(a);
        if (g_quarantine.size() > kQuarantine) {
            munmap(g_quarantine.front().map, g_quarantine.front().map_len);
            g_quarantine.pop_front();
        }
    } else {
        free(a.user);
    }
    return CUDA_SUCCESS;
}

// Whether [p, p + n) lies in one live allocation (caller holds g_mu).
bool in_bounds_locked(uintptr_t p, size_t n) {
    auto it = g_allocs.upper_bound(p);
    if (it == g_allocs.begin()) return false;
    --it;
    return p >= it->first && p + n <= it->first + it->second.size;
}

CUresult check_range(const char* op, CUdeviceptr p, size_t n) {
    {
        std::lock_guard<std::mutex> l(g_mu);
        if (in_bounds_locked(uintptr_t(p), n)) return CUDA_SUCCESS;
    }
    return failure(CUDA_ERROR_INVALID_VALUE, "%s on [%p, +%zu) outside any live allocation", op, (void*)p, n);
}

// ---------------------------------------------------------------- kernel modules

struct KernelLib {
    std::string path;
    std::map<std::string, const EmuKernelEntry*> entries;
    // FNV-1a of the PTX the module was built beside (0: a module that does not say).
    unsigned long long ptx_fnv1a;
};

unsigned long long fnv1a(const char* text) {
    unsigned long long h = 0xcbf29ce484222325ULL;
    for (const char* c = text; *c; ++c) h = (h ^ static_cast<unsigned char>(*c)) * 0x100000001b3ULL;
    return h;
}
std::vector<KernelLib> g_libs;
bool g_libs_loaded = false;
std::string g_kernel_dir;

std::string kernel_dir() {
    // Set but empty reads as unset.
    if (const char* d = getenv("SPAFIT_EMU_KERNEL_DIR"); d && *d) return d;
    Dl_info info;
    dladdr(reinterpret_cast<void*>(&kernel_dir), &info);
    std::string self = info.dli_fname ? info.dli_fname : ".";
    return self.substr(0, self.rfind('/')) + "/kernels";
}

void load_kernel_libs() {  // caller holds g_mu
    if (g_libs_loaded) return;
    g_libs_loaded = true;
    g_kernel_dir = kernel_dir();
    DIR* d = opendir(g_kernel_dir.c_str());
    if (!d) {
        say("emu: no kernel directory %s\n", g_kernel_dir.c_str());
        return;
    }
    std::vector<std::string> files;
    while (dirent* e = readdir(d)) {
        std::string f = e->d_name;
        if (f.size() > 3 && f.substr(f.size() - 3) == ".so") files.push_back(f);
    }
    closedir(d);
    for (auto& f : files) {
        std::string path = g_kernel_dir + "/" + f;
        void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            say("emu: %s\n", dlerror());
            continue;
        }
        auto* module = static_cast<const EmuModule*>(dlsym(h, "emu_module"));
        if (!module || module->abi_version != EMU_ABI_VERSION) {
            say("emu: %s is not a kernel module of this emulator build\n", path.c_str());
            continue;
        }
        auto* hash = static_cast<const unsigned long long*>(dlsym(h, "emu_ptx_fnv1a"));
        KernelLib lib{path, {}, hash ? *hash : 0};
        for (auto* k = module->entries; k->name; ++k) lib.entries[k->name] = k;
        g_libs.push_back(lib);
    }
}

struct Func {
    ptx::Kernel info;
    const EmuKernelEntry* entry;
    int max_dynamic_shared;  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
};
struct Module {
    std::vector<std::unique_ptr<Func>> funcs;
};

const int kSharedDefault = 48 * 1024;
const int kSharedOptIn = 227 * 1024;

// ---------------------------------------------------------------- faults

// Where a fault inside a launch lands: on the launching thread's stack, for the launch's
// duration.
struct FaultLanding {
    EmuLaunch* launch;
    sigjmp_buf jmp;
    CUresult code;
    char text[512];
};
// The one thread-local the fault handler reads, in the initial-exec model: a dlopen'ed
// library's dynamic thread-locals are allocated (malloc) at a thread's first access, which in
// a signal handler, on a thread that never launched a kernel, could fault again. The model
// puts all of this library's thread-locals (~60 bytes) in the static TLS glibc keeps for
// libraries loaded later (512 bytes by default, shared with the kernel modules' ~20 each); if
// it ever ran out, dlopen would say "cannot allocate memory in static TLS block".
thread_local FaultLanding* t_landing __attribute__((tls_model("initial-exec"))) = nullptr;
struct sigaction g_old_segv, g_old_bus, g_old_ill;

const char* signal_name(int sig) { return sig == SIGSEGV ? "SIGSEGV" : sig == SIGBUS ? "SIGBUS" : "SIGILL"; }

// Names what lies at `addr` (inside a signal handler: try-lock, never block).
void describe(uintptr_t addr, const EmuLaunch* L, char* buf, size_t n) {
    if (L && addr >= uintptr_t(L->stack_lo) && addr < uintptr_t(L->stack_hi)) {
        snprintf(buf, n, "a fiber stack's guard page (the thread overflowed its %d KiB emulator stack)", 128);
        return;
    }
    std::unique_lock<std::mutex> l(g_mu, std::try_to_lock);
    if (!l.owns_lock()) {
        snprintf(buf, n, "(allocation table busy)");
        return;
    }
    for (auto& [k, a] : g_allocs) {
        if (a.map && addr >= uintptr_t(a.map) && addr < uintptr_t(a.map) + a.map_len) {
            long off = long(addr - uintptr_t(a.user));
            snprintf(buf, n, "byte %ld of a %zu-byte allocation at %p (%s)", off, a.size, (void*)a.user,
                     off < 0 ? "before its start" : "past its end");
            return;
        }
    }
    for (auto& a : g_quarantine)
        if (addr >= uintptr_t(a.map) && addr < uintptr_t(a.map) + a.map_len) {
            snprintf(buf, n, "byte %ld of a FREED %zu-byte allocation (use after free)", long(addr - uintptr_t(a.user)),
                     a.size);
            return;
        }
    snprintf(buf, n, "no device allocation (a wild pointer, or past the end of shared memory)");
}

void on_fault(int sig, siginfo_t* si, void* uc) {
    FaultLanding* F = t_landing;
    if (!F) {  // not ours: say where it hit, then behave as if we were not here
        char note[160];
        int n = snprintf(note, sizeof note, "emu: %s at %p outside any kernel launch (host code, not a kernel)\n",
                         signal_name(sig), si->si_addr);
        if (n > 0) (void)!write(2, note, size_t(n) < sizeof note ? size_t(n) : sizeof note - 1);
        struct sigaction* old = sig == SIGSEGV ? &g_old_segv : sig == SIGBUS ? &g_old_bus : &g_old_ill;
        if ((old->sa_flags & SA_SIGINFO) && old->sa_sigaction) return old->sa_sigaction(sig, si, uc);
        if (old->sa_handler != SIG_DFL && old->sa_handler != SIG_IGN) return old->sa_handler(sig);
        signal(sig, SIG_DFL);  // the faulting instruction runs again and kills the process as it would have
        return;
    }
    const EmuLaunch* L = F->launch;
    if (sig == SIGILL) {
        // A `ud2` is the modules' alignment check (build.rs; the emulator's own can't-happen
        // paths abort instead); any other illegal instruction is a module built for another CPU.
        const unsigned char* insn = static_cast<const unsigned char*>(si->si_addr);
        const bool check = insn && insn[0] == 0x0f && insn[1] == 0x0b;
        F->code = check ? CUDA_ERROR_MISALIGNED_ADDRESS : CUDA_ERROR_LAUNCH_FAILED;
        snprintf(F->text, sizeof F->text, "%s in kernel %s, block (%u,%u,%u), thread (%u,%u,%u): %s (the instruction at %p)",
                 check ? "misaligned address" : "illegal instruction", L->name, L->cur_block[0], L->cur_block[1],
                 L->cur_block[2], L->cur_thread[0], L->cur_thread[1], L->cur_thread[2],
                 check ? "a load or store through a pointer not aligned to its type's size"
                       : "this CPU lacks an instruction the stand-in's host build used (built on another machine?)",
                 si->si_addr);
        siglongjmp(F->jmp, 1);
    }
    F->code = CUDA_ERROR_ILLEGAL_ADDRESS;
    char what[256];
    describe(uintptr_t(si->si_addr), L, what, sizeof what);
    snprintf(F->text, sizeof F->text, "illegal address in kernel %s, block (%u,%u,%u), thread (%u,%u,%u): access to %p, %s",
             L->name, L->cur_block[0], L->cur_block[1], L->cur_block[2], L->cur_thread[0], L->cur_thread[1],
             L->cur_thread[2], si->si_addr, what);
    siglongjmp(F->jmp, 1);
}

void install_fault_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa{};
        sa.sa_sigaction = on_fault;
        // No SA_NODEFER: siglongjmp restores the mask sigsetjmp saved, so the next launch's
        // faults are caught, while a fault inside the handler itself ends the process at once
        // instead of nesting frames until the alternate stack overflows.
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaddset(&sa.sa_mask, SIGSEGV);
        sigaddset(&sa.sa_mask, SIGBUS);
        sigaddset(&sa.sa_mask, SIGILL);
        sigaction(SIGSEGV, &sa, &g_old_segv);
        sigaction(SIGBUS, &sa, &g_old_bus);
        sigaction(SIGILL, &sa, &g_old_ill);
    });
}

// The fault handler runs on the launching thread's alternate signal stack, which must hold
// the signal frame (the CPU's whole vector state: ~3.5 KiB with AVX-512, ~11.5 KiB in a
// process that uses AMX tiles) and the handler's own formatting (~1 KiB). A thread without
// one would push the frame onto the fiber stack that just overflowed; Rust gives its threads
// max(8 KiB, AT_MINSIGSTKSZ), which an AMX frame nearly fills, and threads of an embedding
// program may have less. Measured: a 4 KiB alternate stack loses the fault report to
// "overflowed sigaltstack" on an AVX-512 CPU, 4.5 KiB keeps it. So each launching thread gets
// one of AltStack::bytes() unless it has one at least that large; it is unmapped at the
// thread's exit.
struct AltStack {
    void* map = nullptr;
    size_t map_len = 0;
    static size_t bytes() { return 64 * 1024 + size_t(getauxval(AT_MINSIGSTKSZ)); }
    ~AltStack() {
        if (!map) return;
        stack_t cur;
        // Still ours (no Rust runtime disabled it first): stop the kernel using it before unmapping.
        if (sigaltstack(nullptr, &cur) == 0 && !(cur.ss_flags & SS_DISABLE) && cur.ss_sp >= map &&
            static_cast<char*>(cur.ss_sp) < static_cast<char*>(map) + map_len) {
            stack_t off{};
            off.ss_flags = SS_DISABLE;
            sigaltstack(&off, nullptr);
        }
        munmap(map, map_len);
    }
};
thread_local AltStack t_altstack __attribute__((tls_model("initial-exec")));
thread_local bool t_altstack_checked __attribute__((tls_model("initial-exec"))) = false;

void ensure_altstack() {
    if (t_altstack_checked) return;
    t_altstack_checked = true;
    const size_t want = AltStack::bytes();
    stack_t cur;
    if (sigaltstack(nullptr, &cur) != 0 || (cur.ss_flags & SS_ONSTACK)) return;
    if (!(cur.ss_flags & SS_DISABLE) && cur.ss_size >= want) return;
    // A guard page below it, so a handler that overflows faults at once instead of writing
    // into whatever is mapped below.
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    const size_t len = (want + page - 1) / page * page + page;
    void* map = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) return;  // the thread keeps what it had
    mprotect(map, page, PROT_NONE);
    stack_t s{};
    s.ss_sp = static_cast<char*>(map) + page;
    s.ss_size = len - page;
    if (sigaltstack(&s, nullptr) != 0) {
        munmap(map, len);
        return;
    }
    t_altstack.map = map;
    t_altstack.map_len = len;
}

// Writes into the 0xFF bytes around allocations that the guard pages cannot see (caller holds g_mu).
bool find_slack_write(const char* kernel, char* buf, size_t n) {
    for (auto& [k, a] : g_allocs) {
        long w;
        if (!slack_intact(a, &w)) {
            snprintf(buf, n, "out-of-bounds write by kernel %s: byte %ld of the %zu-byte allocation at %p", kernel, w,
                     a.size, (void*)a.user);
            return true;
        }
    }
    return false;
}

int g_ctx_token, g_pool_token;
thread_local CUcontext t_ctx = nullptr;

}  // namespace

// ====================================================================== the emulator's own API

// The text of the last failure (a launch, an allocation, a module), or "" if none.
API const char* spafit_emu_last_error() {
    static thread_local std::string copy;
    std::lock_guard<std::mutex> l(g_mu);
    copy = g_last_error;
    return copy.c_str();
}

// Whether failures are also printed as they are recorded (on by default). A client that puts
// spafit_emu_last_error into the error of every failed call turns it off, or the words would
// be printed twice.
API void spafit_emu_echo_failures(int on) { g_echo_failures = on != 0; }

// forward, reverse or shuffle[:seed]; returns 0 on success.
API int spafit_emu_set_schedule(const char* schedule) {
    Schedule s;
    if (!parse_schedule(schedule, &s)) return 1;
    std::lock_guard<std::mutex> l(g_mu);
    g_schedule = s;
    return 0;
}

// Device memory size in bytes (allocations beyond it fail with out of memory).
API void spafit_emu_set_memory(unsigned long long bytes) {
    std::lock_guard<std::mutex> l(g_mu);
    g_memory_total = bytes;
}

API int spafit_emu_abi_version() { return EMU_ABI_VERSION; }

// ====================================================================== the driver API

API CUresult cuInit(unsigned) {
    TRACE();
    install_fault_handler();
    return CUDA_SUCCESS;
}
API CUresult cuDriverGetVersion(int* v) {
    TRACE();
    *v = 13000;
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGetCount(int* n) {
    TRACE();
    *n = 1;
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    TRACE();
    if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
    *d = 0;
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    TRACE();
    snprintf(name, size_t(len), "spafit CPU stand-in (cuda-emu)");
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGetUuid(CUuuid* u, CUdevice) {
    TRACE();
    memset(u, 0, sizeof *u);
    return CUDA_SUCCESS;
}
API CUresult cuDeviceTotalMem_v2(size_t* b, CUdevice) {
    TRACE();
    std::lock_guard<std::mutex> l(g_mu);
    *b = g_memory_total;
    return CUDA_SUCCESS;
}
API CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    TRACE();
    std::lock_guard<std::mutex> l(g_mu);
    *total = g_memory_total;
    *free_bytes = g_memory_total > g_memory_used ? g_memory_total - g_memory_used : 0;
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGetAttribute(int* v, CUdevice_attribute a, CUdevice) {
    TRACE();
    switch (a) {
        // The H100 / H200 the project targets: compute capability 9.0, 227 KiB of opt-in
        // shared memory per block.
        case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED: *v = 1; break;
        case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *v = 9; break;
        case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *v = 0; break;
        case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *v = 1024; break;
        case CU_DEVICE_ATTRIBUTE_WARP_SIZE: *v = 32; break;
        case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *v = 1; break;
        case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: *v = kSharedDefault; break;
        case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: *v = kSharedOptIn; break;
        case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: *v = 0x7fffffff; break;
        case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: *v = int(g_max_grid_y); break;
        case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: *v = int(g_max_grid_z); break;
        case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X:
        case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: *v = 1024; break;
        case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: *v = 64; break;
        case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: *v = 1; break;
        default: *v = 0;
    }
    return CUDA_SUCCESS;
}
API CUresult cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice) {
    TRACE();
    *c = reinterpret_cast<CUcontext>(&g_ctx_token);
    return CUDA_SUCCESS;
}
API CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) {
    TRACE();
    return CUDA_SUCCESS;
}
API CUresult cuCtxGetCurrent(CUcontext* c) {
    TRACE();
    *c = t_ctx;
    return CUDA_SUCCESS;
}
API CUresult cuCtxSetCurrent(CUcontext c) {
    TRACE();
    t_ctx = c;
    return CUDA_SUCCESS;
}
API CUresult cuCtxPushCurrent_v2(CUcontext c) { return cuCtxSetCurrent(c); }
API CUresult cuCtxPopCurrent_v2(CUcontext* c) {
    TRACE();
    if (c) *c = t_ctx;
    return CUDA_SUCCESS;
}
API CUresult cuCtxGetDevice(CUdevice* d) {
    TRACE();
    *d = 0;
    return CUDA_SUCCESS;
}
API CUresult cuCtxSynchronize() {
    TRACE();
    return poisoned();
}
API CUresult cuCtxSetLimit(CUlimit, size_t) {
    TRACE();
    return CUDA_SUCCESS;
}
API CUresult cuCtxGetLimit(size_t* v, CUlimit) {
    TRACE();
    *v = 0;
    return CUDA_SUCCESS;
}
API CUresult cuCtxSetFlags(unsigned) {
    TRACE();
    return CUDA_SUCCESS;
}
API CUresult cuCtxGetStreamPriorityRange(int* lo, int* hi) {
    TRACE();
    if (lo) *lo = 0;
    if (hi) *hi = 0;
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGetDefaultMemPool(CUmemoryPool* p, CUdevice) {
    TRACE();
    *p = reinterpret_cast<CUmemoryPool>(&g_pool_token);
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGetMemPool(CUmemoryPool* p, CUdevice d) { return cuDeviceGetDefaultMemPool(p, d); }
// The pool's usage counters are the allocator's: every allocation is "used" until freed.
API CUresult cuMemPoolSetAttribute(CUmemoryPool, CUmemPool_attribute a, void* v) {
    TRACE();
    if (a == CU_MEMPOOL_ATTR_USED_MEM_HIGH || a == CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH) {
        std::lock_guard<std::mutex> l(g_mu);
        (void)v;  // only a reset (to the current use) is allowed
        g_memory_high = g_memory_used;
    }
    return CUDA_SUCCESS;
}
API CUresult cuMemPoolGetAttribute(CUmemoryPool, CUmemPool_attribute a, void* v) {
    TRACE();
    std::lock_guard<std::mutex> l(g_mu);
    unsigned long long value = 0;
    switch (a) {
        case CU_MEMPOOL_ATTR_USED_MEM_CURRENT:
        case CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT: value = g_memory_used; break;
        case CU_MEMPOOL_ATTR_USED_MEM_HIGH:
        case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH: value = g_memory_high; break;
        default: break;
    }
    memcpy(v, &value, 8);
    return CUDA_SUCCESS;
}
API CUresult cuMemPoolTrimTo(CUmemoryPool, size_t) {
    TRACE();
    return CUDA_SUCCESS;
}

// Streams and events: every operation has completed when its call returns.
API CUresult cuStreamCreate(CUstream* s, unsigned) {
    TRACE();
    *s = reinterpret_cast<CUstream>(new int(0));
    return CUDA_SUCCESS;
}
API CUresult cuStreamCreateWithPriority(CUstream* s, unsigned f, int) { return cuStreamCreate(s, f); }
API CUresult cuStreamDestroy_v2(CUstream s) {
    TRACE();
    delete reinterpret_cast<int*>(s);
    return CUDA_SUCCESS;
}
API CUresult cuStreamSynchronize(CUstream) {
    TRACE();
    return poisoned();
}
API CUresult cuStreamQuery(CUstream) {
    TRACE();
    return poisoned();
}
API CUresult cuStreamWaitEvent(CUstream, CUevent, unsigned) {
    TRACE();
    return CUDA_SUCCESS;
}
API CUresult cuStreamIsCapturing(CUstream, CUstreamCaptureStatus* s) {
    TRACE();
    *s = CU_STREAM_CAPTURE_STATUS_NONE;
    return CUDA_SUCCESS;
}
API CUresult cuEventCreate(CUevent* e, unsigned) {
    TRACE();
    *e = reinterpret_cast<CUevent>(new double(0));
    return CUDA_SUCCESS;
}
API CUresult cuEventDestroy_v2(CUevent e) {
    TRACE();
    delete reinterpret_cast<double*>(e);
    return CUDA_SUCCESS;
}
API CUresult cuEventRecord(CUevent e, CUstream) {
    TRACE();
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    *reinterpret_cast<double*>(e) = double(ts.tv_sec) * 1e3 + double(ts.tv_nsec) * 1e-6;
    return CUDA_SUCCESS;
}
API CUresult cuEventRecordWithFlags(CUevent e, CUstream s, unsigned) { return cuEventRecord(e, s); }
API CUresult cuEventSynchronize(CUevent) {
    TRACE();
    return poisoned();
}
API CUresult cuEventQuery(CUevent) {
    TRACE();
    return CUDA_SUCCESS;
}
API CUresult cuEventElapsedTime(float* ms, CUevent a, CUevent b) {
    TRACE();
    *ms = float(*reinterpret_cast<double*>(b) - *reinterpret_cast<double*>(a));
    return CUDA_SUCCESS;
}

API CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t n) {
    TRACE();
    return do_alloc(p, n);
}
API CUresult cuMemAllocAsync(CUdeviceptr* p, size_t n, CUstream) {
    TRACE();
    return do_alloc(p, n);
}
API CUresult cuMemAllocFromPoolAsync(CUdeviceptr* p, size_t n, CUmemoryPool, CUstream) {
    TRACE();
    return do_alloc(p, n);
}
API CUresult cuMemFree_v2(CUdeviceptr p) {
    TRACE();
    return do_free(p);
}
API CUresult cuMemFreeAsync(CUdeviceptr p, CUstream) {
    TRACE();
    return do_free(p);
}
API CUresult cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, CUstream) {
    TRACE();
    if (CUresult r = poisoned()) return r;
    if (CUresult r = check_range("cuMemsetD8", p, n)) return r;
    memset(reinterpret_cast<void*>(p), v, n);
    return CUDA_SUCCESS;
}
API CUresult cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) { return cuMemsetD8Async(p, v, n, nullptr); }
API CUresult cuMemsetD32Async(CUdeviceptr p, unsigned v, size_t n, CUstream) {
    TRACE();
    if (CUresult r = poisoned()) return r;
    if (CUresult r = check_range("cuMemsetD32", p, n * 4)) return r;
    auto* d = reinterpret_cast<unsigned*>(p);
    for (size_t i = 0; i < n; ++i) d[i] = v;
    return CUDA_SUCCESS;
}
API CUresult cuMemsetD32_v2(CUdeviceptr p, unsigned v, size_t n) { return cuMemsetD32Async(p, v, n, nullptr); }
API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* s, size_t n, CUstream) {
    TRACE();
    if (CUresult r = poisoned()) return r;
    if (CUresult r = check_range("cuMemcpyHtoD", d, n)) return r;
    memcpy(reinterpret_cast<void*>(d), s, n);
    return CUDA_SUCCESS;
}
API CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void* s, size_t n) { return cuMemcpyHtoDAsync_v2(d, s, n, nullptr); }
API CUresult cuMemcpyDtoHAsync_v2(void* d, CUdeviceptr s, size_t n, CUstream) {
    TRACE();
    if (CUresult r = poisoned()) return r;
    if (CUresult r = check_range("cuMemcpyDtoH", s, n)) return r;
    memcpy(d, reinterpret_cast<void*>(s), n);
    return CUDA_SUCCESS;
}
API CUresult cuMemcpyDtoH_v2(void* d, CUdeviceptr s, size_t n) { return cuMemcpyDtoHAsync_v2(d, s, n, nullptr); }
API CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream) {
    TRACE();
    if (CUresult r = poisoned()) return r;
    if (CUresult r = check_range("cuMemcpyDtoD (source)", s, n)) return r;
    if (CUresult r = check_range("cuMemcpyDtoD (destination)", d, n)) return r;
    memmove(reinterpret_cast<void*>(d), reinterpret_cast<void*>(s), n);
    return CUDA_SUCCESS;
}
API CUresult cuMemcpyDtoD_v2(CUdeviceptr d, CUdeviceptr s, size_t n) { return cuMemcpyDtoDAsync_v2(d, s, n, nullptr); }
API CUresult cuPointerGetAttribute(void* data, CUpointer_attribute a, CUdeviceptr p) {
    TRACE();
    if (a == CU_POINTER_ATTRIBUTE_MEMORY_TYPE) {
        *static_cast<unsigned*>(data) = CU_MEMORYTYPE_DEVICE;
        return CUDA_SUCCESS;
    }
    (void)p;
    return CUDA_ERROR_NOT_SUPPORTED;
}

API CUresult cuModuleLoadData(CUmodule* m, const void* image) {
    TRACE();
    if (CUresult r = poisoned()) return r;
    const char* text = static_cast<const char*>(image);
    if (!text || memcmp(text, "\x7f" "ELF", 4) == 0)
        return failure(CUDA_ERROR_INVALID_IMAGE, "cuModuleLoadData: only PTX text is supported, not a binary image");
    std::vector<ptx::Kernel> kernels = ptx::parse(text);
    if (kernels.empty()) return failure(CUDA_ERROR_INVALID_IMAGE, "cuModuleLoadData: the PTX has no .entry");
    std::unique_lock<std::mutex> l(g_mu);
    load_kernel_libs();
    const KernelLib* lib = nullptr;
    for (auto& candidate : g_libs) {
        bool all = true;
        for (auto& k : kernels) all = all && candidate.entries.count(k.name);
        if (all) {
            lib = &candidate;
            break;
        }
    }
    if (!lib) {
        std::string names;
        for (auto& k : kernels) names += " " + k.name;
        l.unlock();
        return failure(CUDA_ERROR_NOT_FOUND,
                       "cuModuleLoadData: no kernel module in %s has all of these entries (a stale emulator build?):%s",
                       g_kernel_dir.c_str(), names.c_str());
    }
    // Same entries, other PTX: the host build is of other sources than the binary's kernels.
    if (lib->ptx_fnv1a != 0 && lib->ptx_fnv1a != fnv1a(text)) {
        std::string path = lib->path;
        l.unlock();
        return failure(CUDA_ERROR_INVALID_IMAGE,
                       "cuModuleLoadData: %s was built from other PTX than the one loaded: a stale emulator "
                       "build beside this binary (rebuild it, or point SPAFIT_EMULATOR_DIR at the emulator "
                       "folder of this binary's build)",
                       path.c_str());
    }
    auto module = std::make_unique<Module>();
    for (auto& k : kernels) {
        const EmuKernelEntry* e = lib->entries.at(k.name);
        bool same = int(k.param_sizes.size()) == e->arity;
        for (int i = 0; same && i < e->arity; ++i) same = k.param_sizes[size_t(i)] == e->param_sizes[i];
        if (!same) {
            l.unlock();
            return failure(CUDA_ERROR_INVALID_IMAGE,
                           "cuModuleLoadData: kernel %s has %zu parameters in the PTX but %d in %s, or their sizes "
                           "differ (a stale emulator build?)",
                           k.name.c_str(), k.param_sizes.size(), e->arity, lib->path.c_str());
        }
        if (k.static_shared > size_t(kSharedDefault)) {
            l.unlock();
            return failure(CUDA_ERROR_INVALID_PTX, "kernel %s uses %zu bytes of static shared memory (at most %d)",
                           k.name.c_str(), k.static_shared, kSharedDefault);
        }
        module->funcs.push_back(std::make_unique<Func>(Func{k, e, kSharedDefault - int(k.static_shared)}));
    }
    *m = reinterpret_cast<CUmodule>(module.release());
    return CUDA_SUCCESS;
}
API CUresult cuModuleUnload(CUmodule m) {
    TRACE();
    delete reinterpret_cast<Module*>(m);
    return CUDA_SUCCESS;
}
API CUresult cuModuleGetFunction(CUfunction* f, CUmodule m, const char* name) {
    TRACE();
    for (auto& fn : reinterpret_cast<Module*>(m)->funcs)
        if (fn->info.name == name) {
            *f = reinterpret_cast<CUfunction>(fn.get());
            return CUDA_SUCCESS;
        }
    return failure(CUDA_ERROR_NOT_FOUND, "cuModuleGetFunction: the module has no kernel named `%s`", name);
}
API CUresult cuFuncSetAttribute(CUfunction f, CUfunction_attribute a, int v) {
    TRACE();
    auto* fn = reinterpret_cast<Func*>(f);
    if (a == CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES) {
        if (v < 0 || size_t(v) + fn->info.static_shared > size_t(kSharedOptIn))
            return failure(CUDA_ERROR_INVALID_VALUE,
                           "cuFuncSetAttribute(%s): %d bytes of dynamic + %zu of static shared memory exceed %d",
                           fn->info.name.c_str(), v, fn->info.static_shared, kSharedOptIn);
        fn->max_dynamic_shared = v;
    }
    return CUDA_SUCCESS;
}
API CUresult cuFuncGetAttribute(int* v, CUfunction_attribute a, CUfunction f) {
    TRACE();
    auto* fn = reinterpret_cast<Func*>(f);
    switch (a) {
        case CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *v = fn->info.max_threads ? int(fn->info.max_threads) : 1024; break;
        case CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES: *v = int(fn->info.static_shared); break;
        case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: *v = fn->max_dynamic_shared; break;
        case CU_FUNC_ATTRIBUTE_NUM_REGS: *v = 0; break;
        default: *v = 0;
    }
    return CUDA_SUCCESS;
}
API CUresult cuFuncSetCacheConfig(CUfunction, CUfunc_cache) {
    TRACE();
    return CUDA_SUCCESS;
}

API CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                            unsigned smem, CUstream, void** params, void** extra) {
    TRACE();
    if (CUresult r = poisoned()) return r;
    auto* fn = reinterpret_cast<Func*>(f);
    if (!fn) return CUDA_ERROR_INVALID_HANDLE;
    const char* name = fn->info.name.c_str();
    if (extra || (!params && !fn->info.param_sizes.empty()))
        return failure(CUDA_ERROR_INVALID_VALUE, "%s: only kernelParams is supported", name);
    // The hardware's launch checks; none of these poisons the context.
    unsigned long threads = (unsigned long)bx * by * bz;
    if (!gx || !gy || !gz || !bx || !by || !bz || threads > 1024 || bx > 1024 || by > 1024 || bz > 64 || gy > g_max_grid_y ||
        gz > g_max_grid_z || gx > 0x7fffffffu)
        return failure(CUDA_ERROR_INVALID_VALUE, "%s: invalid launch configuration grid (%u,%u,%u) block (%u,%u,%u)",
                       name, gx, gy, gz, bx, by, bz);
    if (fn->info.max_threads && threads > fn->info.max_threads)
        return failure(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
                       "%s: %lu threads per block exceed its __launch_bounds__ of %u", name, threads,
                       fn->info.max_threads);
    if (int(smem) > fn->max_dynamic_shared)
        return failure(CUDA_ERROR_INVALID_VALUE,
                       "%s: %u bytes of dynamic shared memory (+ %zu static) exceed the %d allowed%s", name, smem,
                       fn->info.static_shared, fn->max_dynamic_shared + int(fn->info.static_shared),
                       fn->max_dynamic_shared + int(fn->info.static_shared) <= kSharedDefault
                           ? " without cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)"
                           : "");
    EmuLaunch L{};
    L.grid[0] = gx, L.grid[1] = gy, L.grid[2] = gz;
    L.block[0] = bx, L.block[1] = by, L.block[2] = bz;
    L.dynamic_smem_bytes = smem;
    L.params = params;
    L.name = name;
    {
        std::lock_guard<std::mutex> l(g_mu);
        L.schedule = g_schedule.kind;
        L.seed = g_schedule.seed;
    }
    ensure_altstack();
    int rc;
    FaultLanding landing;
    landing.launch = &L;
    t_landing = &landing;
    if (sigsetjmp(landing.jmp, 1) == 0) {
        rc = fn->entry->launch(&L);
    } else {
        t_landing = nullptr;
        g_sticky = landing.code;
        return failure(landing.code, "%s", landing.text);
    }
    t_landing = nullptr;
    if (rc) {
        CUresult code = strstr(L.error, "aligned") ? CUDA_ERROR_MISALIGNED_ADDRESS : CUDA_ERROR_LAUNCH_FAILED;
        g_sticky = code;
        return failure(code, "kernel %s, block (%u,%u,%u): %s", name, L.cur_block[0], L.cur_block[1], L.cur_block[2],
                       L.error);
    }
    if (g_guard) {
        char buf[512];
        bool bad;
        {
            std::lock_guard<std::mutex> l(g_mu);
            bad = find_slack_write(name, buf, sizeof buf);
        }
        if (bad) {
            g_sticky = CUDA_ERROR_ILLEGAL_ADDRESS;
            return failure(CUDA_ERROR_ILLEGAL_ADDRESS, "%s", buf);
        }
    }
    return CUDA_SUCCESS;
}

API CUresult cuGetErrorName(CUresult e, const char** s) {
    switch (e) {
#define NAME(x) \
    case x: *s = #x; return CUDA_SUCCESS;
        NAME(CUDA_SUCCESS) NAME(CUDA_ERROR_INVALID_VALUE) NAME(CUDA_ERROR_OUT_OF_MEMORY)
        NAME(CUDA_ERROR_NOT_INITIALIZED) NAME(CUDA_ERROR_INVALID_DEVICE) NAME(CUDA_ERROR_INVALID_IMAGE)
        NAME(CUDA_ERROR_INVALID_PTX) NAME(CUDA_ERROR_INVALID_CONTEXT) NAME(CUDA_ERROR_INVALID_HANDLE)
        NAME(CUDA_ERROR_NOT_FOUND) NAME(CUDA_ERROR_NOT_READY) NAME(CUDA_ERROR_ILLEGAL_ADDRESS)
        NAME(CUDA_ERROR_MISALIGNED_ADDRESS) NAME(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES) NAME(CUDA_ERROR_LAUNCH_FAILED)
        NAME(CUDA_ERROR_NOT_SUPPORTED)
#undef NAME
        default: *s = "CUDA_ERROR_UNKNOWN"; return CUDA_SUCCESS;
    }
}
API CUresult cuGetErrorString(CUresult e, const char** s) {
    switch (e) {
        case CUDA_SUCCESS: *s = "no error"; break;
        case CUDA_ERROR_INVALID_VALUE: *s = "invalid argument"; break;
        case CUDA_ERROR_OUT_OF_MEMORY: *s = "out of memory"; break;
        case CUDA_ERROR_INVALID_IMAGE: *s = "device kernel image is invalid"; break;
        case CUDA_ERROR_INVALID_PTX: *s = "a PTX JIT compilation failed"; break;
        case CUDA_ERROR_NOT_FOUND: *s = "named symbol not found"; break;
        case CUDA_ERROR_ILLEGAL_ADDRESS: *s = "an illegal memory access was encountered"; break;
        case CUDA_ERROR_MISALIGNED_ADDRESS: *s = "misaligned address"; break;
        case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: *s = "too many resources requested for launch"; break;
        case CUDA_ERROR_LAUNCH_FAILED: *s = "unspecified launch failure"; break;
        default: *s = "unknown error";
    }
    return CUDA_SUCCESS;
}
