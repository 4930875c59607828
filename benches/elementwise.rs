//! CPU elementwise ops of a BERT step on the FFN's activation shape (16 × 64 tokens × 1536):
//! GELU forward and backward and dropout; and layernorm forward and input gradient on the
//! hidden states (16 × 64 tokens × 384). In ns per element over all threads (best of many
//! repetitions). Prints one JSON line per op.
//!
//! `cargo bench --bench elementwise`

mod timing;

use spafit::backend::cpu::CpuBackend;
use spafit::backend::{Backend, Dropout, LayerNormGradRequest};
use spafit::rng::SplitMix;
use spafit::tensor::Shape;
use timing::best_seconds;

fn main() {
    let backend = CpuBackend::f32();
    let (rows, cols) = (1024, 1536);
    let n = rows * cols;
    let mut rng = SplitMix::new(3);
    let data: Vec<f64> = (0..n).map(|_| rng.uniform_in(-4.0, 4.0)).collect();
    let x = backend
        .tensor_from_f64(Shape::new([rows, cols]), &data)
        .unwrap();
    let dy = backend
        .tensor_from_f64(Shape::new([rows, cols]), &data)
        .unwrap();
    let hidden = 384;
    let h = backend
        .tensor_from_f64(Shape::new([n / hidden, hidden]), &data)
        .unwrap();
    let gamma_beta: Vec<f64> = (0..hidden).map(|j| 1.0 + j as f64 * 1e-3).collect();
    let gamma = backend
        .tensor_from_f64(Shape::new([hidden]), &gamma_beta)
        .unwrap();
    let beta = gamma.clone();
    let normalized = backend.layernorm_forward(&h, &gamma, &beta, 1e-12).unwrap();
    let threads = rayon::current_num_threads();
    let ops: [(&str, &mut dyn FnMut()); 5] = [
        ("gelu_forward", &mut || {
            std::hint::black_box(backend.gelu_forward(&x).unwrap());
        }),
        ("gelu_backward", &mut || {
            std::hint::black_box(backend.gelu_backward(&dy, &x).unwrap());
        }),
        ("dropout", &mut || {
            let d = Dropout { p: 0.1, seed: 5 };
            std::hint::black_box(backend.dropout(&x, d).unwrap());
        }),
        ("layernorm_forward", &mut || {
            std::hint::black_box(backend.layernorm_forward(&h, &gamma, &beta, 1e-12).unwrap());
        }),
        ("layernorm_grad_input", &mut || {
            let want = LayerNormGradRequest {
                dx: true,
                dgamma: false,
                dbeta: false,
            };
            let grads = backend.layernorm_backward(
                &h,
                Some(&h),
                Some(&normalized.mean),
                Some(&normalized.rstd),
                Some(&gamma),
                want,
            );
            std::hint::black_box(grads.unwrap());
        }),
    ];
    for (name, f) in ops {
        let s = best_seconds(30, f);
        println!(
            "{{\"bench\":\"cpu_elementwise\",\"op\":\"{name}\",\"elements\":{n},\"best_ms\":{:.3},\"ns_per_element\":{:.2},\"threads\":{threads}}}",
            s * 1e3,
            s * 1e9 / n as f64
        );
    }
}
