//! The fused attention kernels on a GPU: forward and backward at the shapes of a training
//! step, for every stage count the tensor-core kernels are compiled for
//! ([`ATTENTION_STAGES`]: the streamed tiles' copies waited for before each tile's products,
//! or the next tile's in flight during them), in the bf16 mixed-precision step's own storage
//! (bf16 q, k, v, f32 outputs and dO) and in bf16 storage. One line per configuration, the
//! best stage count per shape last: the data the default is set from. Then, per shape, MPNet's
//! attention with a relative position bias (the `_pb` kernels) in the mixed-precision
//! storage: forward, backward, and backward with the bias's gradient (full fine-tuning's,
//! its two kernels of their own), the last two apart so the gradient's cost shows.
//!
//! `cargo bench --bench gpu_attention` (the GPU check runs the built binary). On the CPU
//! stand-in it runs one small shape once, to show the code path works; its times mean
//! nothing there.

mod gpu_timing;

use gpu_timing::seconds_per_call as time;

use spafit::backend::cuda::{CudaBackend, Driver, ATTENTION_STAGES};
use spafit::backend::{AttentionConfig, AttentionGradRequest, Backend};
use spafit::rng::SplitMix;
use spafit::tensor::{DType, Shape, Tensor};

/// A step's attention: sequences × tokens, heads × head dim.
struct AttentionShape {
    name: &'static str,
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
}

impl AttentionShape {
    /// FlashAttention's count: 4·B·H·S²·D for the forward's two products, 2.5 times that for
    /// the backward's five (the scores recomputed in each kernel not counted).
    fn forward_flops(&self) -> f64 {
        4.0 * (self.batch * self.heads * self.seq * self.seq * self.head_dim) as f64
    }
}

/// Every gradient of q, k and v.
const ALL: AttentionGradRequest = AttentionGradRequest {
    dq: true,
    dk: true,
    dv: true,
};

/// A key mask of `shape` that pads nothing (a step's fixed-length batch).
fn no_padding(b: &CudaBackend, shape: &AttentionShape) -> Tensor<CudaBackend> {
    let ones = vec![1; shape.batch * shape.seq];
    b.tensor_from_u32(Shape::new([shape.batch, shape.seq]), &ones)
        .unwrap()
}

/// The stage suffixes (`s1`, `s2`) of the tensor-core attention kernels `f` launches: what
/// ran, where the launcher may fall back to one stage.
fn stages_that_ran(b: &CudaBackend, f: impl FnOnce()) -> String {
    b.start_kernel_timing().unwrap();
    f();
    let mut suffixes: Vec<String> = b
        .stop_kernel_timing()
        .unwrap()
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.kernel.starts_with("attention_") && t.kernel.contains("_tc_"))
        .filter_map(|t| t.kernel.rsplit('_').next().map(str::to_string))
        .collect();
    suffixes.sort();
    suffixes.dedup();
    suffixes.join("+")
}

fn main() {
    let mixed = CudaBackend::hardware_or_emulated(DType::BF16).expect("a CUDA backend");
    let on_gpu = mixed.driver() == Driver::Hardware;
    let shapes: &[AttentionShape] = if on_gpu {
        &[
            AttentionShape {
                name: "BERT-base",
                batch: 32,
                seq: 128,
                heads: 12,
                head_dim: 64,
            },
            AttentionShape {
                name: "BERT-base, 512",
                batch: 8,
                seq: 512,
                heads: 12,
                head_dim: 64,
            },
            AttentionShape {
                name: "MiniLM",
                batch: 32,
                seq: 128,
                heads: 12,
                head_dim: 32,
            },
            AttentionShape {
                name: "head dim 128",
                batch: 8,
                seq: 512,
                heads: 8,
                head_dim: 128,
            },
        ]
    } else {
        &[AttentionShape {
            name: "stand-in",
            batch: 2,
            seq: 96,
            heads: 2,
            head_dim: 32,
        }]
    };
    let (rounds, iters) = if on_gpu { (5, 20) } else { (1, 1) };
    println!(
        "attention on {} ({}); ms per call and TFLOP/s (FlashAttention's count)",
        mixed.name(),
        if on_gpu {
            "timed"
        } else {
            "CPU stand-in: functional run, times mean nothing"
        }
    );
    let storages = [
        ("bf16 q,k,v / f32", mixed.clone(), DType::F32),
        ("bf16 storage", mixed.with_bf16_storage(), DType::BF16),
    ];
    let mut rng = SplitMix::new(7);
    for shape in shapes {
        let dims = [shape.batch * shape.seq, shape.heads * shape.head_dim];
        let config = AttentionConfig {
            heads: shape.heads,
            scale: 1.0 / (shape.head_dim as f64).sqrt(),
            dropout: None,
        };
        let mut best = (f64::INFINITY, String::new());
        for (storage, b, out_dtype) in &storages {
            let mut draw = |dtype: DType| -> Tensor<CudaBackend> {
                let n = dims[0] * dims[1];
                let v: Vec<f64> = (0..n).map(|_| rng.uniform_in(-1.0, 1.0)).collect();
                let t = b.tensor_from_f64(Shape::new(dims), &v).unwrap();
                match t.dtype() == dtype {
                    true => t,
                    false => b.cast(&t, dtype).unwrap(),
                }
            };
            let (q, k, v) = (draw(DType::BF16), draw(DType::BF16), draw(DType::BF16));
            let dy = draw(*out_dtype);
            let mask = no_padding(b, shape);
            for stages in ATTENTION_STAGES {
                let bs = b.with_attention_stages(stages).unwrap();
                let lse = bs
                    .attention_forward(&q, &k, &v, &mask, &config)
                    .unwrap()
                    .lse;
                let ran = stages_that_ran(&bs, || {
                    bs.attention_forward(&q, &k, &v, &mask, &config).unwrap();
                    bs.attention_backward(&dy, &q, &k, Some(&v), &lse, &mask, &config, ALL)
                        .unwrap();
                });
                let forward = time(&bs, rounds, iters, || {
                    bs.attention_forward(&q, &k, &v, &mask, &config).unwrap();
                });
                let backward = time(&bs, rounds, iters, || {
                    bs.attention_backward(&dy, &q, &k, Some(&v), &lse, &mask, &config, ALL)
                        .unwrap();
                });
                let flops = shape.forward_flops();
                println!(
                    "GA {:<16} {:<18} stages {stages} (ran {ran:<5}) forward {:>8.3} ms {:>6.1} TF  backward {:>8.3} ms {:>6.1} TF",
                    format!("{} {}x{}x{}x{}", shape.name, shape.batch, shape.seq, shape.heads, shape.head_dim),
                    storage,
                    forward * 1e3,
                    flops / forward / 1e12,
                    backward * 1e3,
                    2.5 * flops / backward / 1e12,
                );
                if *storage == storages[0].0 && forward + backward < best.0 {
                    best = (forward + backward, format!("stages {stages}"));
                }
            }
        }
        println!(
            "GA best {:<16} the mixed-precision step's storage: {} ({:.3} ms forward + backward)",
            shape.name,
            best.1,
            best.0 * 1e3
        );
        time_position_bias(&mixed, shape, &config, rounds, iters, &mut rng);
    }
}

/// MPNet's attention on `shape` in the mixed-precision storage: forward, backward, and
/// backward with the position bias's gradient.
fn time_position_bias(
    b: &CudaBackend,
    shape: &AttentionShape,
    config: &AttentionConfig,
    rounds: usize,
    iters: usize,
    rng: &mut SplitMix,
) {
    let dims = [shape.batch * shape.seq, shape.heads * shape.head_dim];
    let mut draw = |dims: [usize; 2], dtype: DType| -> Tensor<CudaBackend> {
        let v: Vec<f64> = (0..dims[0] * dims[1])
            .map(|_| rng.uniform_in(-1.0, 1.0))
            .collect();
        let t = b.tensor_from_f64(Shape::new(dims), &v).unwrap();
        b.cast(&t, dtype).unwrap()
    };
    let (q, k, v) = (
        draw(dims, DType::BF16),
        draw(dims, DType::BF16),
        draw(dims, DType::BF16),
    );
    let dy = draw(dims, DType::F32);
    let bias = draw([2 * shape.seq - 1, shape.heads], DType::F32);
    let mask = no_padding(b, shape);
    let lse = b
        .attention_forward_with_position_bias(&q, &k, &v, &mask, &bias, config)
        .unwrap()
        .lse;
    let forward = time(b, rounds, iters, || {
        b.attention_forward_with_position_bias(&q, &k, &v, &mask, &bias, config)
            .unwrap();
    });
    let backward = |with_bias_grad: bool| {
        time(b, rounds, iters, || {
            b.attention_backward_with_position_bias(
                &dy,
                &q,
                &k,
                Some(&v),
                &lse,
                &mask,
                &bias,
                config,
                ALL,
                with_bias_grad,
            )
            .unwrap();
        })
    };
    let (plain, with_grad) = (backward(false), backward(true));
    println!(
        "GA position bias {:<16} forward {:>8.3} ms  backward {:>8.3} ms  backward with the bias's gradient {:>8.3} ms (+{:.3})",
        shape.name,
        forward * 1e3,
        plain * 1e3,
        with_grad * 1e3,
        (with_grad - plain) * 1e3
    );
}
