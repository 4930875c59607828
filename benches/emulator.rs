//! What the CPU stand-in for the CUDA driver (`cuda-emu`) costs: a launch, a block barrier
//! (per block and per thread) and an emulated `mma.sync` (per warp instruction), from the
//! kernels in `kernels/emulator_selftest.cu`. `cargo bench --bench emulator`.

use std::time::Instant;

use cudarc::driver::{CudaContext, LaunchConfig, PushKernelArg};
use spafit::backend::cuda::{emulator, kernels};

fn main() {
    emulator::use_emulator().expect("the CPU stand-in is built");
    let ctx = CudaContext::new(0).expect("context");
    let stream = ctx.default_stream();
    let module = ctx
        .load_module(cudarc::nvrtc::Ptx::from_src(
            kernels::ptx("emulator_selftest").expect("compiled in"),
        ))
        .expect("module");
    let barriers = module.load_function("selftest_barriers").unwrap();
    let mma = module.load_function("selftest_mma_chain").unwrap();
    let mut out = stream.alloc_zeros::<f32>(1024).unwrap();

    // Best of 5 runs of `rounds` on `threads` threads of one block.
    let mut time = |f: &cudarc::driver::CudaFunction, threads: u32, rounds: i32| -> f64 {
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        (0..5)
            .map(|_| {
                let t = Instant::now();
                let mut l = stream.launch_builder(f);
                l.arg(&mut out).arg(&rounds);
                unsafe { l.launch(cfg) }.unwrap();
                stream.synchronize().unwrap();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    };
    let launch = time(&barriers, 256, 0);
    println!("empty launch, 256 threads: {:.1} us", launch * 1e6);
    for threads in [32u32, 256, 1024] {
        let rounds = 2000;
        let t = time(&barriers, threads, rounds) - time(&barriers, threads, 0);
        println!(
            "__syncthreads, {threads:4} threads: {:8.2} us per block barrier, {:6.1} ns per thread",
            t / f64::from(rounds) * 1e6,
            t / f64::from(rounds) / f64::from(threads) * 1e9
        );
    }
    for warps in [1u32, 4] {
        let rounds = 20000;
        let t = time(&mma, 32 * warps, rounds) - time(&mma, 32 * warps, 0);
        let per = t / f64::from(rounds) / f64::from(warps);
        println!(
            "mma.sync m16n8k16, {warps} warp(s): {:6.2} us per warp instruction ({:.0} MFLOP/s emulated)",
            per * 1e6,
            2.0 * 16.0 * 8.0 * 16.0 / per / 1e6
        );
    }
}
