//! CPU attention of a BERT step at the demo's average batch (32 sequences × 27 tokens,
//! MiniLM's 12 heads × 32, dropout 0.1, the last two tokens of every other sequence padded):
//! forward, and backward for all three gradients, best of many repetitions. Prints one JSON
//! line per pass.
//!
//! `cargo bench --bench attention`

mod timing;

use spafit::backend::cpu::CpuBackend;
use spafit::backend::{AttentionConfig, AttentionGradRequest, Backend, Dropout};
use spafit::rng::SplitMix;
use spafit::tensor::Shape;
use timing::best_seconds;

fn main() {
    let backend = CpuBackend::f32();
    let (batch, seq, heads, head_dim) = (32, 27, 12, 32);
    let rows = batch * seq;
    let hidden = heads * head_dim;
    let mut rng = SplitMix::new(11);
    let mut activations = || {
        let data: Vec<f64> = (0..rows * hidden)
            .map(|_| rng.uniform_in(-2.0, 2.0))
            .collect();
        backend
            .tensor_from_f64(Shape::new([rows, hidden]), &data)
            .unwrap()
    };
    let (q, k, v, d_out) = (activations(), activations(), activations(), activations());
    let mask: Vec<u32> = (0..rows)
        .map(|r| u32::from(!((r / seq) % 2 == 1 && r % seq >= seq - 2)))
        .collect();
    let mask = backend
        .tensor_from_u32(Shape::new([batch, seq]), &mask)
        .unwrap();
    let config = AttentionConfig {
        heads,
        scale: 1.0 / (head_dim as f64).sqrt(),
        dropout: Some(Dropout { p: 0.1, seed: 7 }),
    };
    let forward = backend
        .attention_forward(&q, &k, &v, &mask, &config)
        .unwrap();
    let all = AttentionGradRequest {
        dq: true,
        dk: true,
        dv: true,
    };
    let threads = rayon::current_num_threads();
    let passes: [(&str, &mut dyn FnMut()); 2] = [
        ("forward", &mut || {
            std::hint::black_box(
                backend
                    .attention_forward(&q, &k, &v, &mask, &config)
                    .unwrap(),
            );
        }),
        ("backward", &mut || {
            std::hint::black_box(
                backend
                    .attention_backward(&d_out, &q, &k, Some(&v), &forward.lse, &mask, &config, all)
                    .unwrap(),
            );
        }),
    ];
    for (name, f) in passes {
        let s = best_seconds(100, f);
        println!(
            "{{\"bench\":\"cpu_attention\",\"pass\":\"{name}\",\"batch\":{batch},\"seq\":{seq},\"heads\":{heads},\"head_dim\":{head_dim},\"best_ms\":{:.3},\"threads\":{threads}}}",
            s * 1e3
        );
    }
}
