//! CPU elementwise ops of a BERT step on the FFN's activation shape (16 × 64 tokens × 1536):
//! GELU forward and backward and dropout, in ns per element over all threads (best of many
//! repetitions). Prints one JSON line per op.
//!
//! `cargo bench --bench elementwise`

mod timing;

use spafit::backend::cpu::CpuBackend;
use spafit::backend::{Backend, Dropout};
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
    let threads = rayon::current_num_threads();
    let ops: [(&str, &mut dyn FnMut()); 3] = [
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
