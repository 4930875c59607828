//! The linear map with fused LoRA on a GPU, in TFLOP/s: every tile configuration of
//! `kernels/gemm.cu` (the sweep that picks the best per shape) at the shapes of a BERT-large
//! step, with and without a rank-8 adapter, beside cuBLAS through cudarc at the same shapes
//! (bf16 in, bf16 out, f32 accumulation) as the ceiling. One table, best tile per shape last.
//!
//! `cargo bench --bench gpu_gemm` (the GPU check runs the built binary). On the CPU stand-in
//! it runs one small shape once, to show the code path works; its times mean nothing there.

mod gpu_timing;

use gpu_timing::seconds_per_call as time;

use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use half::bf16;
use spafit::backend::cuda::{gemm, CudaBackend, CudaBuffer, Driver};
use spafit::backend::{Backend, LinearBackwardInputs, LinearGradRequest, LoraWeights};
use spafit::rng::SplitMix;
use spafit::tensor::{DType, Shape, Tensor};

fn random(b: &CudaBackend, dims: &[usize], rng: &mut SplitMix) -> Tensor<CudaBackend> {
    let n: usize = dims.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.uniform_in(-1.0, 1.0)).collect();
    b.tensor_from_f64(Shape::new(dims), &v).unwrap()
}

fn slice(t: &Tensor<CudaBackend>) -> &cudarc::driver::CudaSlice<bf16> {
    match t.buffer() {
        CudaBuffer::BF16(s) => s,
        _ => unreachable!("bf16 storage"),
    }
}

fn main() {
    let b = CudaBackend::hardware_or_emulated(DType::BF16)
        .expect("a CUDA backend")
        .with_bf16_storage();
    let on_gpu = b.driver() == Driver::Hardware;
    let shapes: &[(usize, usize, usize)] = if on_gpu {
        &[(4096, 1024, 1024), (4096, 4096, 1024), (4096, 1024, 4096)]
    } else {
        &[(96, 80, 64)]
    };
    let (rounds, iters) = if on_gpu { (5, 20) } else { (1, 1) };
    let rank = 8;
    let blas = if on_gpu {
        // SAFETY: only probes whether the cuBLAS library can be loaded.
        if unsafe { cudarc::cublas::sys::is_culib_present() } {
            CudaBlas::new(b.stream().clone()).ok()
        } else {
            None
        }
    } else {
        None
    };
    println!(
        "GEMM on {} ({}), bf16 in/out, f32 accumulation, LoRA rank {rank}",
        b.name(),
        if on_gpu {
            "timed"
        } else {
            "CPU stand-in: functional run, times mean nothing"
        }
    );
    println!(
        "{:<18} {:<22} {:>14} {:>14} {:>12}",
        "M x N x K", "tile", "fused LoRA", "plain", "cuBLAS"
    );
    let mut rng = SplitMix::new(3);
    for &(m, n, k) in shapes {
        let x = random(&b, &[m, k], &mut rng);
        let w = random(&b, &[n, k], &mut rng);
        let a = random(&b, &[rank, k], &mut rng);
        let bl = random(&b, &[n, rank], &mut rng);
        let cublas_tflops = blas.as_ref().map(|blas| {
            let mut cs = b.stream().alloc_zeros::<bf16>(m * n).unwrap();
            let cfg = GemmConfig {
                transa: cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T,
                transb: cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N,
                m: n as i32,
                n: m as i32,
                k: k as i32,
                alpha: bf16::ONE,
                lda: k as i32,
                ldb: k as i32,
                beta: bf16::ZERO,
                ldc: n as i32,
            };
            let (ws, xs) = (slice(&w).clone(), slice(&x).clone());
            let t = time(&b, rounds, iters, || {
                // SAFETY: column-major Yᵀ[N, M] = W[N, K]·Xᵀ: the buffers hold these sizes.
                unsafe { blas.gemm(cfg, &ws, &xs, &mut cs) }.unwrap();
            });
            2.0 * (m * n * k) as f64 / t / 1e12
        });
        let mut best = (0.0f64, "");
        for tile in gemm::TILES {
            let bt = b.with_gemm_tile(tile.name).unwrap();
            let fused = time(&bt, rounds, iters, || {
                let lora = LoraWeights {
                    a: &a,
                    b: &bl,
                    scale: 2.0,
                };
                bt.linear_forward(&x, &w, None, Some(lora), None).unwrap();
            });
            let plain = time(&bt, rounds, iters, || {
                bt.linear_forward(&x, &w, None, None, None).unwrap();
            });
            // The fused GEMM's work: X·Wᵀ, the r extra reduction columns, and H = X·Aᵀ.
            let fused_tflops = 2.0 * (m * n * (k + rank) + m * k * rank) as f64 / fused / 1e12;
            let plain_tflops = 2.0 * (m * n * k) as f64 / plain / 1e12;
            if plain_tflops > best.0 {
                best = (plain_tflops, tile.name);
            }
            println!(
                "GG {:<15} {:<22} {:>10.1} TF {:>10.1} TF {:>12}",
                format!("{m}x{n}x{k}"),
                tile.name,
                fused_tflops,
                plain_tflops,
                cublas_tflops.map_or("-".into(), |t| format!("{t:.1} TF"))
            );
        }
        println!(
            "GG best {:<10} {:<22} {:>10.1} TF plain = {} of cuBLAS",
            format!("{m}x{n}x{k}"),
            best.1,
            best.0,
            cublas_tflops.map_or("-".into(), |t| format!("{:.2}", best.0 / t))
        );
    }
    step_sweep(on_gpu, rounds, iters);
}

/// The three GEMM kinds of a linear map's training step: the forward `Y = X·Wᵀ` (operands
/// K-major), the input gradient `dX = dY·W` and the weight gradient `dW = dYᵀ·X` (a reduction
/// over all rows into a small output: where split-K matters).
#[derive(Clone, Copy, Debug)]
enum StepGemm {
    Forward,
    InputGrad,
    WeightGrad,
}

/// The GEMMs of a BERT-base training step at batch 32 × 128 (4096 rows; the 768 × 768
/// attention maps and the two FFN maps), in the step's own precision (`--dtype bf16`: f32
/// activations and gradients, bf16 weights, bf16 tensor-core math), for every tile and
/// split-K factor beside what the default rule picks: the data the rule is set from.
fn step_sweep(on_gpu: bool, rounds: usize, iters: usize) {
    let b = CudaBackend::hardware_or_emulated(DType::BF16).expect("a CUDA backend");
    let (rows, maps): (usize, &[(usize, usize)]) = if on_gpu {
        (4096, &[(768, 768), (3072, 768), (768, 3072)])
    } else {
        (96, &[(40, 72)])
    };
    let splits: &[usize] = if on_gpu { &[1, 2, 4, 8] } else { &[1, 3] };
    println!(
        "training-step GEMMs on {} ({rows} rows, f32 activations, bf16 weights); TFLOP/s",
        b.name()
    );
    let mut rng = SplitMix::new(5);
    for &(out, input) in maps {
        let x = random(&b, &[rows, input], &mut rng);
        let dy = random(&b, &[rows, out], &mut rng);
        let w = b
            .cast(&random(&b, &[out, input], &mut rng), b.frozen_dtype())
            .unwrap();
        for kind in [StepGemm::Forward, StepGemm::InputGrad, StepGemm::WeightGrad] {
            let run = |be: &CudaBackend| match kind {
                StepGemm::Forward => {
                    be.linear_forward(&x, &w, None, None, None).unwrap();
                }
                StepGemm::InputGrad | StepGemm::WeightGrad => {
                    let dw = matches!(kind, StepGemm::WeightGrad);
                    let want = LinearGradRequest {
                        dx: !dw,
                        dw,
                        ..Default::default()
                    };
                    let inputs = LinearBackwardInputs {
                        dy: &dy,
                        x: Some(&x),
                        w: Some(&w),
                        lora: None,
                        x_lora: None,
                        h: None,
                    };
                    be.linear_backward(inputs, want).unwrap();
                }
            };
            let tflops = |seconds: f64| 2.0 * (rows * out * input) as f64 / seconds / 1e12;
            let shape = format!("{kind:?} {rows}x{out}x{input}");
            let default = tflops(time(&b, rounds, iters, || run(&b)));
            let direct = b.with_gemm_precast(false);
            let no_precast = tflops(time(&direct, rounds, iters, || run(&direct)));
            let mut best = (0.0f64, String::new());
            for tile in gemm::TILES {
                for &split in splits {
                    let bt = b
                        .with_gemm_tile(tile.name)
                        .and_then(|bt| bt.with_gemm_split(split))
                        .unwrap();
                    let t = tflops(time(&bt, rounds, iters, || run(&bt)));
                    println!(
                        "GS {shape:<28} {:<22} split {split:<2} {t:>8.1} TF",
                        tile.name
                    );
                    if t > best.0 {
                        best = (t, format!("{} split {split}", tile.name));
                    }
                }
            }
            println!(
                "GS best {shape:<23} {:<31} {:>8.1} TF; the default rule {default:.1} TF \
                 ({no_precast:.1} without the precast)",
                best.1, best.0
            );
        }
    }
}
