//! The CPU stand-in for the CUDA driver (`cuda-emu`) checked on its own: each deliberate bug
//! in `kernels/emulator_selftest.cu` must become an error value naming what went wrong, or a
//! visible difference, never a silent pass or a crashed test process.
//!
//! A fault poisons the CUDA context for the rest of the process, as on hardware, so each
//! faulting case runs in a child process (this test binary, filtered to that test).

use crate::common;

use std::sync::Arc;

use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{
    CudaContext, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use spafit::backend::cuda::{emulator, kernels, CudaBackend, Driver};
use spafit::tensor::DType;

struct Emu {
    stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
}

fn emu() -> Emu {
    emulator::use_emulator().expect("the CPU stand-in is built and loads");
    let ctx = CudaContext::new(0).expect("context on the stand-in");
    let module = ctx
        .load_module(cudarc::nvrtc::Ptx::from_src(
            kernels::ptx("emulator_selftest").expect("compiled in"),
        ))
        .expect("load emulator_selftest");
    Emu {
        stream: ctx.default_stream(),
        module,
    }
}

fn threads(blocks: u32, threads: u32, smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: smem,
    }
}

fn nan_buffer(e: &Emu, n: usize) -> CudaSlice<f32> {
    e.stream.clone_htod(&vec![f32::NAN; n]).unwrap()
}

/// Runs the calling test's body in a child process; returns the child's combined output
/// (the parent's view), or `None` in the child itself, which then runs the body.
fn in_child(test: &str) -> Option<String> {
    common::child_output(module_path!(), test)
}

/// Whether this process is the child that runs `test` alone; in any other process, runs
/// that child. The stand-in becomes the driver of the process that loads it (on a machine
/// with a GPU, the other files' tests share NVIDIA's), and its schedule is the process's.
fn alone(test: &str) -> bool {
    common::is_the_child_running(module_path!(), test)
}

/// In the child: the launch must fail with `code`, and so must every later call (sticky).
fn expect_sticky_failure(e: &Emu, result: Result<(), cudarc::driver::DriverError>, code: &str) {
    let err = result.expect_err("the faulty launch must fail");
    let detail = emulator::last_error().unwrap_or_default();
    println!("LAUNCH ERROR: {err} :: {detail}");
    assert!(err.to_string().contains(code), "{err}");
    let later = e.stream.clone_htod(&[1.0f32]);
    let later = later.and_then(|s| e.stream.clone_dtoh(&s).map(|_| ()));
    assert!(
        later.is_err(),
        "a failed kernel must poison the context, as on hardware"
    );
    println!("LATER CALL FAILS: {}", later.unwrap_err());
}

/// In the child: a launch whose thread (3, 232) writes one float past a 1000-float buffer,
/// which ends exactly at a guard page, so the write faults; the failure must stick.
fn write_one_past_the_end() {
    let e = emu();
    let mut buf = nan_buffer(&e, 1000);
    let f = e.module.load_function("selftest_write_past_end").unwrap();
    let mut l = e.stream.launch_builder(&f);
    l.arg(&mut buf).arg(&1000i32);
    let r = unsafe { l.launch(threads(4, 256, 0)) }.map(|_| ());
    expect_sticky_failure(&e, r, "ILLEGAL_ADDRESS");
}

#[test]
fn write_one_past_the_end_is_an_illegal_address_naming_kernel_block_and_thread() {
    let Some(out) =
        in_child("write_one_past_the_end_is_an_illegal_address_naming_kernel_block_and_thread")
    else {
        return write_one_past_the_end();
    };
    for needle in [
        "CUDA_ERROR_ILLEGAL_ADDRESS",
        "selftest_write_past_end",
        "block (3,0,0)",
        "thread (232,0,0)",
        "past its end",
        "LATER CALL FAILS",
    ] {
        assert!(out.contains(needle), "missing `{needle}` in:\n{out}");
    }
}

/// The fault report does not depend on the launching thread's alternate signal stack: a
/// thread (of an embedding program, say) whose stack is the smallest the kernel accepts, too
/// small for the signal frame and the handler, still gets `ILLEGAL_ADDRESS`, not a process
/// killed with "overflowed sigaltstack".
#[test]
fn a_fault_on_a_thread_with_a_tiny_alternate_stack_is_still_reported() {
    let test = "a_fault_on_a_thread_with_a_tiny_alternate_stack_is_still_reported";
    let Some(out) = in_child(test) else {
        std::thread::spawn(|| {
            const PAGE: usize = 4096;
            // SAFETY: a fresh private mapping, its first page made inaccessible (the guard
            // below the stack), the rest handed to the kernel as this thread's alternate stack.
            unsafe {
                let base = libc::mmap(
                    std::ptr::null_mut(),
                    2 * PAGE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                assert_ne!(base, libc::MAP_FAILED);
                assert_eq!(libc::mprotect(base, PAGE, libc::PROT_NONE), 0);
                let tiny = libc::stack_t {
                    ss_sp: base.cast::<u8>().add(2 * PAGE - libc::MINSIGSTKSZ).cast(),
                    ss_flags: 0,
                    ss_size: libc::MINSIGSTKSZ,
                };
                assert_eq!(libc::sigaltstack(&tiny, std::ptr::null_mut()), 0);
            }
            write_one_past_the_end();
        })
        .join()
        .expect("the launching thread ends normally");
        return;
    };
    for needle in [
        "CUDA_ERROR_ILLEGAL_ADDRESS",
        "selftest_write_past_end",
        "LATER CALL FAILS",
    ] {
        assert!(out.contains(needle), "missing `{needle}` in:\n{out}");
    }
}

/// After a kernel fault every later call fails, as on hardware; the backend says so as a CUDA
/// error naming the fault (not as an invalid argument of whichever op came next).
#[test]
fn after_a_kernel_fault_the_backend_reports_a_cuda_error() {
    let Some(out) = in_child("after_a_kernel_fault_the_backend_reports_a_cuda_error") else {
        let b = CudaBackend::emulated(DType::F32).unwrap();
        let x = spafit::backend::Backend::zeros(&b, spafit::tensor::Shape::new([4])).unwrap();
        let e = emu();
        let mut buf = nan_buffer(&e, 1000);
        let f = e.module.load_function("selftest_write_past_end").unwrap();
        let mut l = e.stream.launch_builder(&f);
        l.arg(&mut buf).arg(&1000i32);
        assert!(unsafe { l.launch(threads(4, 256, 0)) }.is_err());
        let err = spafit::backend::Backend::gelu_forward(&b, &x).unwrap_err();
        assert!(
            matches!(
                err,
                spafit::Error::Device {
                    op: "alloc" | "gelu",
                    ..
                }
            ),
            "{err:?}"
        );
        println!("BACKEND AFTER FAULT: {err}");
        return;
    };
    assert!(
        out.contains("BACKEND AFTER FAULT: ")
            && out.contains(": CUDA error: ")
            && out.contains("ILLEGAL_ADDRESS")
            && !out.contains("invalid argument"),
        "{out}"
    );
}

/// A fault in host code while the stand-in is loaded is not a kernel's: it says where it hit
/// and the process dies of it as it would without the stand-in (no nested faults on the
/// alternate signal stack).
#[test]
fn a_host_fault_outside_any_launch_is_not_taken_for_a_kernel_fault() {
    const TEST: &str = "a_host_fault_outside_any_launch_is_not_taken_for_a_kernel_fault";
    if common::is_the_child(TEST) {
        let e = emu();
        // A launch first, so the handler has seen this thread, then a wild write in host code.
        let mut buf = nan_buffer(&e, 1024);
        let f = e.module.load_function("selftest_write_past_end").unwrap();
        let mut l = e.stream.launch_builder(&f);
        l.arg(&mut buf).arg(&1024i32);
        unsafe { l.launch(threads(4, 256, 0)) }.unwrap();
        let wild = std::hint::black_box(16usize) as *mut u8;
        // SAFETY: none: the point is to fault.
        unsafe { wild.write_volatile(1) };
        unreachable!("the write must fault");
    }
    let out = common::run_child(module_path!(), TEST, &[(common::CHILD_TEST, TEST)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(11), "{:?}: {stderr}", out.status);
    assert!(
        stderr.contains("emu: SIGSEGV at 0x10 outside any kernel launch"),
        "{stderr}"
    );
    assert!(!stderr.contains("illegal address"), "{stderr}");
}

#[test]
fn write_into_the_rounding_slack_is_found_after_the_launch() {
    let Some(out) = in_child("write_into_the_rounding_slack_is_found_after_the_launch") else {
        let e = emu();
        // 1001 floats: the element past the end lies in the 16-byte rounding, not a guard page.
        let mut buf = nan_buffer(&e, 1001);
        let f = e.module.load_function("selftest_write_past_end").unwrap();
        let mut l = e.stream.launch_builder(&f);
        l.arg(&mut buf).arg(&1001i32);
        let r = unsafe { l.launch(threads(4, 256, 0)) }.map(|_| ());
        return expect_sticky_failure(&e, r, "ILLEGAL_ADDRESS");
    };
    for needle in [
        "out-of-bounds write by kernel selftest_write_past_end",
        "byte 4004 of the 4004-byte allocation",
    ] {
        assert!(out.contains(needle), "missing `{needle}` in:\n{out}");
    }
}

#[test]
fn read_far_past_the_end_is_an_illegal_address() {
    let Some(out) = in_child("read_far_past_the_end_is_an_illegal_address") else {
        let e = emu();
        let input = nan_buffer(&e, 64);
        let mut output = nan_buffer(&e, 1);
        let f = e
            .module
            .load_function("selftest_read_far_past_end")
            .unwrap();
        let mut l = e.stream.launch_builder(&f);
        l.arg(&input).arg(&mut output).arg(&64i32);
        let r = unsafe { l.launch(threads(1, 32, 0)) }.map(|_| ());
        return expect_sticky_failure(&e, r, "ILLEGAL_ADDRESS");
    };
    assert!(
        out.contains("selftest_read_far_past_end")
            && out.contains("thread (0,0,0)")
            && out.contains("past its end"),
        "{out}"
    );
}

#[test]
fn use_after_free_is_an_illegal_address() {
    let Some(out) = in_child("use_after_free_is_an_illegal_address") else {
        let e = emu();
        let freed = nan_buffer(&e, 256);
        let (ptr, _sync) = freed.device_ptr(&e.stream);
        let raw: u64 = ptr;
        drop(_sync);
        drop(freed);
        e.stream.synchronize().unwrap();
        let mut output = nan_buffer(&e, 256);
        let f = e.module.load_function("selftest_read").unwrap();
        let mut l = e.stream.launch_builder(&f);
        l.arg(&raw).arg(&mut output).arg(&256i32);
        let r = unsafe { l.launch(threads(1, 256, 0)) }.map(|_| ());
        return expect_sticky_failure(&e, r, "ILLEGAL_ADDRESS");
    };
    assert!(
        out.contains("FREED") && out.contains("use after free"),
        "{out}"
    );
}

#[test]
fn a_missing_barrier_changes_results_between_schedules() {
    if !alone("a_missing_barrier_changes_results_between_schedules") {
        return;
    }
    let e = emu();
    let input: Vec<f32> = (0..256).map(|i| i as f32).collect();
    let din = e.stream.clone_htod(&input).unwrap();
    let run = |kernel: &str, schedule: &str| -> Vec<f32> {
        emulator::set_schedule(schedule).unwrap();
        let mut out = nan_buffer(&e, 256);
        let f = e.module.load_function(kernel).unwrap();
        let mut l = e.stream.launch_builder(&f);
        l.arg(&din).arg(&mut out);
        unsafe { l.launch(threads(1, 256, 0)) }.unwrap();
        e.stream.clone_dtoh(&out).unwrap()
    };
    let want: Vec<f32> = (0..256).map(|i| ((i + 1) % 256) as f32).collect();
    let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
    let schedules = ["forward", "reverse", "shuffle:1", "shuffle:2"];
    let racy: Vec<Vec<f32>> = schedules
        .iter()
        .map(|s| run("selftest_missing_barrier", s))
        .collect();
    let fixed: Vec<Vec<f32>> = schedules
        .iter()
        .map(|s| run("selftest_with_barrier", s))
        .collect();
    // A seed that is not a whole number is refused, not read as 0.
    for bad in ["shuffle:abc", "shuffle:12x", "shuffle:", "sideways"] {
        let e = emulator::set_schedule(bad).err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains(bad)),
            "{bad}: {e:?}"
        );
    }
    emulator::set_schedule("forward").unwrap();
    for (s, f) in schedules.iter().zip(&fixed) {
        assert!(
            same(f, &want),
            "with the barrier, {s} must give the right answer"
        );
    }
    let differing = (1..racy.len())
        .filter(|&i| !same(&racy[0], &racy[i]))
        .count();
    println!(
        "MISSING BARRIER: forward has {} NaN of 256, reverse {}; {differing} of 3 other schedules differ from forward",
        racy[0].iter().filter(|v| v.is_nan()).count(),
        racy[1].iter().filter(|v| v.is_nan()).count()
    );
    assert!(
        !same(&racy[0], &racy[1]),
        "forward and reverse must disagree without the barrier"
    );
}

#[test]
fn shared_memory_limits_are_enforced_and_do_not_poison_the_context() {
    if !alone("shared_memory_limits_are_enforced_and_do_not_poison_the_context") {
        return;
    }
    let e = emu();
    let f = e.module.load_function("selftest_dynamic_shared").unwrap();
    let launch = |bytes: u32| {
        let mut out = nan_buffer(&e, 1);
        let bytes_arg = bytes as i32;
        let mut l = e.stream.launch_builder(&f);
        l.arg(&mut out).arg(&bytes_arg);
        unsafe { l.launch(threads(1, 128, bytes)) }.map(|_| e.stream.clone_dtoh(&out).unwrap()[0])
    };
    assert_eq!(
        launch(48 * 1024).unwrap(),
        49152.0,
        "48 KiB needs no opt-in"
    );
    let refused = launch(48 * 1024 + 16).expect_err("over 48 KiB without the opt-in");
    println!(
        "OVER 48 KiB: {refused} :: {}",
        emulator::last_error().unwrap_or_default()
    );
    assert!(refused.to_string().contains("INVALID_VALUE"), "{refused}");
    assert!(
        f.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            228 * 1024
        )
        .is_err(),
        "more than 227 KiB cannot be opted into"
    );
    f.set_attribute(
        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        100_000,
    )
    .unwrap();
    assert_eq!(launch(100_000).unwrap(), 100_000.0, "within the opt-in");
    assert!(launch(100_016).is_err(), "beyond the opt-in");
    // Launch limits: 1024 threads per block.
    let mut out = nan_buffer(&e, 1);
    let mut l = e.stream.launch_builder(&f);
    l.arg(&mut out).arg(&0i32);
    let too_many = unsafe { l.launch(threads(1, 1025, 0)) };
    assert!(too_many.is_err(), "1025 threads per block");
    // None of this poisoned the context.
    assert_eq!(launch(1024).unwrap(), 1024.0);
}

#[test]
fn an_unknown_kernel_name_is_an_error_value() {
    if !alone("an_unknown_kernel_name_is_an_error_value") {
        return;
    }
    let e = emu();
    let err = e
        .module
        .load_function("no_such_kernel")
        .expect_err("unknown name");
    assert!(err.to_string().contains("NOT_FOUND"), "{err}");
    assert!(
        emulator::last_error()
            .unwrap_or_default()
            .contains("no_such_kernel"),
        "the stand-in names the missing kernel"
    );
}

/// A kernel module built from other PTX than the binary's (a binary run beside a stale
/// emulator build) is refused, not run: its entries alone would pass for the same kernels.
#[test]
fn ptx_other_than_a_module_was_built_from_is_refused() {
    let Some(out) = in_child("ptx_other_than_a_module_was_built_from_is_refused") else {
        emulator::use_emulator().unwrap();
        let ctx = CudaContext::new(0).unwrap();
        let ptx = kernels::ptx("emulator_selftest").unwrap();
        let changed = format!("{ptx}\n// one line more than the module was built from\n");
        let err = ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(changed))
            .expect_err("other PTX with the same entries");
        println!(
            "STALE: {err} :: {}",
            emulator::last_error().unwrap_or_default()
        );
        // The binary's own PTX still loads.
        ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx)).unwrap();
        println!("OWN PTX LOADS");
        return;
    };
    assert!(
        out.contains("STALE: ")
            && out.contains("INVALID_IMAGE")
            && out.contains("stale emulator build")
            && out.contains("OWN PTX LOADS"),
        "{out}"
    );
}

#[test]
fn fresh_memory_and_shared_memory_read_as_nan() {
    if !alone("fresh_memory_and_shared_memory_read_as_nan") {
        return;
    }
    let e = emu();
    let fresh: CudaSlice<f32> = unsafe { e.stream.alloc(100) }.unwrap();
    assert!(e
        .stream
        .clone_dtoh(&fresh)
        .unwrap()
        .iter()
        .all(|v| v.is_nan()));
    let mut out = e.stream.clone_htod(&[0.0f32; 32]).unwrap();
    let f = e
        .module
        .load_function("selftest_uninitialized_shared")
        .unwrap();
    let mut l = e.stream.launch_builder(&f);
    l.arg(&mut out);
    unsafe { l.launch(threads(2, 32, 0)) }.unwrap();
    assert!(e
        .stream
        .clone_dtoh(&out)
        .unwrap()
        .iter()
        .all(|v| v.is_nan()));
}

#[test]
fn reading_a_cp_async_destination_before_its_wait_reads_nan() {
    if !alone("reading_a_cp_async_destination_before_its_wait_reads_nan") {
        return;
    }
    let e = emu();
    let input = e.stream.clone_htod(&vec![1.5f32; 128]).unwrap();
    let mut out = e.stream.clone_htod(&vec![0.0f32; 128]).unwrap();
    let f = e
        .module
        .load_function("selftest_cp_async_without_wait")
        .unwrap();
    let mut l = e.stream.launch_builder(&f);
    l.arg(&input).arg(&mut out);
    unsafe { l.launch(threads(1, 32, 0)) }.unwrap();
    assert!(e
        .stream
        .clone_dtoh(&out)
        .unwrap()
        .iter()
        .all(|v| v.is_nan()));
}

/// A child test whose kernel must fail with `code` and a message containing `needles`.
fn failing_kernel(test: &str, kernel: &str, threads_per_block: u32, code: &str, needles: &[&str]) {
    let Some(out) = in_child(test) else {
        let e = emu();
        let input = e.stream.clone_htod(&vec![1.0f32; 256]).unwrap();
        let mut buf = nan_buffer(&e, 256);
        let f = e.module.load_function(kernel).unwrap();
        let mut l = e.stream.launch_builder(&f);
        if kernel == "selftest_misaligned_cp_async" {
            l.arg(&input);
        } else {
            l.arg(&mut buf);
        }
        let r = unsafe { l.launch(threads(1, threads_per_block, 0)) }.map(|_| ());
        return expect_sticky_failure(&e, r, code);
    };
    for needle in needles {
        assert!(out.contains(needle), "missing `{needle}` in:\n{out}");
    }
}

#[test]
fn divergent_warp_shuffles_fail_the_launch() {
    failing_kernel(
        "divergent_warp_shuffles_fail_the_launch",
        "selftest_divergent_shuffle",
        32,
        "LAUNCH_FAILED",
        &["divergent warp collective", "emulator_selftest.cu"],
    );
}

#[test]
fn partial_warp_masks_fail_the_launch() {
    failing_kernel(
        "partial_warp_masks_fail_the_launch",
        "selftest_partial_mask",
        32,
        "LAUNCH_FAILED",
        &["partial-warp collectives are not emulated", "0xffff"],
    );
}

#[test]
fn threads_at_different_barriers_fail_the_launch() {
    failing_kernel(
        "threads_at_different_barriers_fail_the_launch",
        "selftest_divergent_barrier",
        64,
        "LAUNCH_FAILED",
        &["divergent barrier"],
    );
}

#[test]
fn misaligned_cp_async_fails_the_launch() {
    failing_kernel(
        "misaligned_cp_async_fails_the_launch",
        "selftest_misaligned_cp_async",
        32,
        "MISALIGNED_ADDRESS",
        &["not 16-byte aligned"],
    );
}

/// A vector access the GPU faults on, which x86 would read silently: the kernels' host build
/// checks every access's alignment, and the failure names the one thread that made it.
#[test]
fn a_misaligned_vector_load_fails_the_launch() {
    failing_kernel(
        "a_misaligned_vector_load_fails_the_launch",
        "selftest_misaligned_vector_load",
        32,
        "MISALIGNED_ADDRESS",
        &[
            "misaligned address in kernel selftest_misaligned_vector_load",
            "thread (5,0,0)",
        ],
    );
}

#[test]
fn writing_a_cp_async_source_before_its_wait_fails_the_launch() {
    failing_kernel(
        "writing_a_cp_async_source_before_its_wait_fails_the_launch",
        "selftest_cp_async_source_race",
        32,
        "LAUNCH_FAILED",
        &["changed while a copy from it was in flight"],
    );
}

#[test]
fn mma_without_the_whole_warp_fails_the_launch() {
    failing_kernel(
        "mma_without_the_whole_warp_fails_the_launch",
        "selftest_mma_half_warp",
        32,
        "LAUNCH_FAILED",
        &["needs all 32 lanes"],
    );
}

/// The stand-in's device memory and its fibers' stacks are this process's host memory and
/// address space: where an address-space limit leaves no room, an allocation fails as out of
/// host memory, saying so, and gives back what it had counted; a launch whose block cannot
/// reserve its stacks fails naming what it needed.
#[test]
fn host_memory_running_out_is_an_error_value() {
    let Some(out) = in_child("host_memory_running_out_is_an_error_value") else {
        let e = emu();
        emulator::set_device_memory(300 << 20).unwrap();
        let input = e.stream.clone_htod(&vec![1.0f32; 1024]).unwrap();
        let mut output = nan_buffer(&e, 1024);
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let mapped_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmSize:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap();
        let mut original = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct given.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut original) },
            0
        );
        let tight = libc::rlimit {
            rlim_cur: (mapped_kib << 10) + (48 << 20),
            rlim_max: original.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct given.
        let limit =
            |to: &libc::rlimit| assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, to) }, 0);
        limit(&tight);
        let big = e.stream.alloc_zeros::<f32>(64 << 20).map(|_| ());
        println!(
            "ALLOC: {big:?} :: {}",
            emulator::last_error().unwrap_or_default()
        );
        // The failed allocation's 256 MiB are no longer counted against the 300 MiB device.
        limit(&original);
        let again = e.stream.alloc_zeros::<f32>(64 << 20).map(|_| ());
        println!("AGAIN: {again:?}");
        limit(&tight);
        // A block of 1024 threads needs 132 MiB of address space for its stacks.
        let f = e.module.load_function("selftest_read").unwrap();
        let mut l = e.stream.launch_builder(&f);
        l.arg(&input).arg(&mut output).arg(&1024i32);
        let launched = unsafe { l.launch(threads(1, 1024, 0)) }.map(|_| ());
        println!(
            "LAUNCH: {launched:?} :: {}",
            emulator::last_error().unwrap_or_default()
        );
        return;
    };
    assert!(
        out.contains("ALLOC: Err")
            && out.contains("out of host memory: 268435456 bytes of device memory asked for"),
        "{out}"
    );
    assert!(
        out.contains("LAUNCH: Err")
            && out.contains("cannot map fiber stacks")
            && out.contains("a block of 1024 threads needs 132 MiB"),
        "{out}"
    );
    assert!(out.contains("AGAIN: Ok(())"), "{out}");
}

#[test]
fn out_of_device_memory_is_an_error_value() {
    let Some(out) = in_child("out_of_device_memory_is_an_error_value") else {
        let b = CudaBackend::emulated(DType::F32).unwrap();
        emulator::set_device_memory(1 << 20).unwrap();
        let err = spafit::backend::Backend::zeros(&b, spafit::tensor::Shape::new([1 << 19]))
            .expect_err("2 MiB on a 1 MiB device");
        assert!(matches!(err, spafit::Error::OutOfMemory { .. }), "{err:?}");
        println!("OOM: {err}");
        // Writing in place into a buffer another tensor shares needs a private copy first:
        // with no room for it, an error value (cudarc's own `Clone` would panic).
        use spafit::backend::Backend;
        let mut t = b.zeros(spafit::tensor::Shape::new([3 << 16])).unwrap();
        let shared = t.clone();
        let err = b
            .scale_in_place(&mut t, 2.0)
            .expect_err("768 KiB twice on a 1 MiB device");
        assert!(matches!(err, spafit::Error::OutOfMemory { .. }), "{err:?}");
        drop(shared);
        b.scale_in_place(&mut t, 2.0).unwrap();
        println!("OOM in place: {err}");
        return;
    };
    assert!(
        out.contains("OOM: ")
            && out.contains("OOM in place: scale: out of memory (the CPU stand-in (cuda-emu): ")
            && out.contains("bytes asked for")
            && !out.contains("DriverError"),
        "{out}"
    );
    // What needs less is the caller's to say: the backend knows only the allocation.
    assert!(
        !out.contains("--batch-size") && !out.contains("--dtype"),
        "{out}"
    );
}

#[test]
fn the_stand_in_and_the_hardware_constructor_exclude_each_other() {
    if !alone("the_stand_in_and_the_hardware_constructor_exclude_each_other") {
        return;
    }
    let b = CudaBackend::emulated(DType::F32).unwrap();
    assert_eq!(b.driver(), Driver::Emulator);
    assert_eq!(spafit::backend::Backend::name(&b), "cuda-emu-f32");
    let err = CudaBackend::new(0, DType::F32).expect_err("one driver per process");
    assert!(err.to_string().contains("cuda-emu"), "{err}");
}

#[test]
fn without_a_driver_cuda_says_so_and_names_cuda_emu() {
    let Some(out) = in_child("without_a_driver_cuda_says_so_and_names_cuda_emu") else {
        match CudaBackend::new(0, DType::F32) {
            Ok(b) => println!("HARDWARE PRESENT: {}", spafit::backend::Backend::name(&b)),
            Err(e) => println!("NO DRIVER: {e}"),
        }
        return;
    };
    assert!(
        out.contains("HARDWARE PRESENT")
            || (out.contains("NO DRIVER")
                && out.contains("no CUDA driver")
                && out.contains("cuda-emu")),
        "{out}"
    );
}
