//! The tape on a 6-layer stack with strata frozen [0, N1), bias-only [N1, N2), LoRA + bias
//! [N2, 6): what it records, what it saves, which gradients exist, and that they are right.

use crate::common;

use common::stack::{self, Stack};
use common::{check_gradient, host, sample, tensor};
use spafit::autograd::{Tape, TapeStats};
use spafit::backend::cpu::CpuBackend;
use spafit::backend::Backend;
use spafit::nn::DropoutPlan;

fn run(
    stack: &Stack<CpuBackend>,
    dropouts: DropoutPlan,
) -> (TapeStats, spafit::autograd::Gradients<CpuBackend>) {
    let cpu = CpuBackend::f64();
    let batch = stack::batch(&cpu, 5);
    let mut tape = Tape::new(cpu);
    let loss = stack.loss(&mut tape, &batch, dropouts);
    let grads = tape.backward(&loss).unwrap();
    (tape.stats().clone(), grads)
}

fn counters(layers: usize, n1: usize, n2: usize) -> TapeStats {
    let cpu = CpuBackend::f64();
    run(
        &stack::build(&cpu, layers, n1, n2, 3),
        stack::train_dropouts(),
    )
    .0
}

#[test]
fn frozen_layers_record_nothing_and_get_no_gradients() {
    let cpu = CpuBackend::f64();
    let s = stack::build(&cpu, 6, 2, 4, 3);
    let (stats, grads) = run(&s, stack::train_dropouts());
    for i in 0..2 {
        let l = stats.scope(&format!("layer.{i}"));
        assert_eq!(l.nodes, 0, "frozen layer {i} recorded nodes");
        assert_eq!(
            l.saved_activation_bytes, 0,
            "frozen layer {i} saved activations"
        );
    }
    for i in 2..6 {
        assert!(
            stats.scope(&format!("layer.{i}")).nodes > 0,
            "trainable layer {i} recorded nothing"
        );
    }
    // Exactly the trainable tensors have gradients, and nothing else got a buffer.
    let names: Vec<String> = grads.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(names, s.trainable_names());
    assert_eq!(stats.grad_buffers, names.len());
    let trainable_bytes: usize = s
        .params()
        .iter()
        .filter(|p| p.trainable)
        .map(|p| p.value.size_in_bytes())
        .sum();
    assert_eq!(stats.grad_bytes, trainable_bytes);
    assert!(names
        .iter()
        .all(|n| !n.starts_with("encoder.layer.0.") && !n.starts_with("encoder.layer.1.")));
    // Bias-only layers train biases only; LoRA layers add adapters but no weight matrix.
    assert!(names.contains(&"encoder.layer.2.attention.output.LayerNorm.bias".to_string()));
    assert!(!names.contains(&"encoder.layer.2.attention.output.LayerNorm.weight".to_string()));
    assert!(!names
        .iter()
        .any(|n| n.starts_with("encoder.layer.2.") && n.contains("lora")));
    assert!(names.contains(&"encoder.layer.5.intermediate.dense.lora_A.weight".to_string()));
    assert!(!names
        .iter()
        .any(|n| n.ends_with("dense.weight") || n.ends_with("query.weight")));
}

#[test]
fn saved_bytes_follow_trainable_depth_not_total_depth() {
    let by_n1: Vec<TapeStats> = [0, 2, 4].iter().map(|&n1| counters(6, n1, 4)).collect();
    for (n1, s) in [0, 2, 4].iter().zip(&by_n1) {
        println!(
            "COUNTERS N1={n1} N2=4: nodes {}, saved activation bytes {}, grad buffers {} ({} bytes)",
            s.nodes, s.saved_activation_bytes, s.grad_buffers, s.grad_bytes
        );
        for i in 0..*n1 {
            assert_eq!(s.scope(&format!("layer.{i}")).nodes, 0);
        }
    }
    // More frozen layers, strictly less saved and recorded.
    assert!(by_n1[0].saved_activation_bytes > by_n1[1].saved_activation_bytes);
    assert!(by_n1[1].saved_activation_bytes > by_n1[2].saved_activation_bytes);
    assert!(by_n1[0].nodes > by_n1[1].nodes && by_n1[1].nodes > by_n1[2].nodes);
    assert!(by_n1[2].saved_activation_bytes > 0);

    // A bias-only layer keeps less than a LoRA layer, which keeps less than a fully
    // trained one (same position, same shapes).
    let s = &by_n1[0];
    let bias_only = s.scope("layer.3").saved_activation_bytes;
    let lora = s.scope("layer.4").saved_activation_bytes;
    let full_stack = {
        let cpu = CpuBackend::f64();
        let mut st = stack::build(&cpu, 6, 0, 4, 3);
        st.layers[4]
            .set_stratum(4, spafit::nn::Stratum::Full, None, |_, _| unreachable!())
            .unwrap();
        run(&st, stack::train_dropouts()).0
    };
    let full = full_stack.scope("layer.4").saved_activation_bytes;
    println!("PER-LAYER saved bytes: bias-only {bias_only}, LoRA+bias {lora}, full {full}");
    assert!(
        bias_only < lora && bias_only < full,
        "{bias_only} < {lora}, {full}"
    );
    // LoRA keeps what full fine-tuning keeps (the inputs, for dA instead of dW) plus the
    // rank-sized bottlenecks `h`, never dropped-out copies of its inputs.
    let bottlenecks = 6 * stack::BATCH * stack::SEQ * 3 * std::mem::size_of::<f64>();
    assert_eq!(lora, full + bottlenecks);

    // Same trainable top (2 bias-only + 2 LoRA layers) under 2 or 4 frozen layers: identical.
    let six = counters(6, 2, 4);
    let eight = counters(8, 4, 6);
    assert_eq!(six.nodes, eight.nodes);
    assert_eq!(six.saved_activation_bytes, eight.saved_activation_bytes);
    assert_eq!(six.grad_bytes, eight.grad_bytes);

    // Everything frozen but the classifier: the encoder records nothing at all.
    let head_only = counters(6, 6, 6);
    for i in 0..6 {
        assert_eq!(head_only.scope(&format!("layer.{i}")).nodes, 0);
    }
    assert_eq!(head_only.nodes, head_only.scope("head").nodes);
    assert_eq!(head_only.grad_buffers, 2);
}

#[test]
fn gradients_equal_finite_differences() {
    let cpu = CpuBackend::f64();
    let mut s = stack::build(&cpu, 6, 2, 4, 3);
    let (_, grads) = run(&s, stack::train_dropouts());
    let batch = stack::batch(&cpu, 5);
    let mut worst: f64 = 0.0;
    let names = s.trainable_names();
    assert!(
        names.len() > 40,
        "expected every bias and adapter of layers 2-5, got {}",
        names.len()
    );
    for name in &names {
        let g = host(grads.get(name).unwrap());
        let x = host(&s.param_mut(name).value);
        let shape = s.param_mut(name).value.dims().to_vec();
        if name.ends_with("attention.self.key.bias") {
            // Softmax ignores a shift shared by a query's scores, and q·b_k is one: the key
            // bias has exactly zero gradient. Check the identity instead of a ratio of noise.
            assert!(g.iter().all(|v| v.abs() < 1e-12), "{name}: {g:?}");
            continue;
        }
        let coords = sample(x.len(), 6);
        let err = check_gradient(name, &g, &x, &coords, 1e-6, |v| {
            s.param_mut(name).value = tensor(&cpu, &shape, v);
            let mut tape = Tape::new(cpu);
            let loss = s.loss(&mut tape, &batch, stack::train_dropouts());
            host(loss.value())[0]
        });
        s.param_mut(name).value = tensor(&cpu, &shape, &x);
        worst = worst.max(err);
    }
    println!(
        "STACK FD: {} trainable tensors, worst rel err {worst:.3e}",
        names.len()
    );
}

#[test]
fn same_seed_same_bits() {
    for cpu in [CpuBackend::f64(), CpuBackend::f32()] {
        let s = stack::build(&cpu, 6, 2, 4, 3);
        let batch = stack::batch(&cpu, 5);
        let once = || {
            let mut tape = Tape::new(cpu);
            let loss = s.loss(&mut tape, &batch, stack::train_dropouts());
            let g = tape.backward(&loss).unwrap();
            let mut bits: Vec<u64> = cpu
                .to_f64(loss.value())
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect();
            for (_, t) in g.iter() {
                bits.extend(cpu.to_f64(t).unwrap().iter().map(|v| v.to_bits()));
            }
            bits
        };
        assert_eq!(once(), once(), "{} is not deterministic", cpu.name());
    }
}

#[test]
fn f32_agrees_with_f64() {
    let (c64, c32) = (CpuBackend::f64(), CpuBackend::f32());
    let (s64, s32) = (
        stack::build(&c64, 6, 2, 4, 3),
        stack::build(&c32, 6, 2, 4, 3),
    );
    let (b64, b32) = (stack::batch(&c64, 5), stack::batch(&c32, 5));
    let mut t64 = Tape::new(c64);
    let mut t32 = Tape::new(c32);
    let l64 = s64.loss(&mut t64, &b64, stack::train_dropouts());
    let l32 = s32.loss(&mut t32, &b32, stack::train_dropouts());
    let (g64, g32) = (t64.backward(&l64).unwrap(), t32.backward(&l32).unwrap());
    let loss_err = common::rel_err(&c32.to_f64(l32.value()).unwrap(), &host(l64.value()));
    assert!(loss_err < 1e-5, "loss {loss_err}");
    let mut worst: f64 = 0.0;
    for (name, g) in g64.iter() {
        let g32 = c32.to_f64(g32.get(name).unwrap()).unwrap();
        if name.ends_with("attention.self.key.bias") {
            // Exactly zero in exact arithmetic (see gradients_equal_finite_differences).
            assert!(g32.iter().all(|v| v.abs() < 1e-6), "{name}: {g32:?}");
            continue;
        }
        let e = common::rel_err(&g32, &host(g));
        assert!(e < 1e-4, "{name}: f32 gradient off by {e}");
        worst = worst.max(e);
    }
    println!("F32 vs F64: loss rel err {loss_err:.2e}, worst gradient rel err {worst:.2e}");
}

#[test]
fn evaluation_mode_records_dropout_nowhere() {
    let cpu = CpuBackend::f64();
    let s = stack::build(&cpu, 6, 2, 4, 3);
    let train = run(&s, stack::train_dropouts()).0;
    let eval = run(&s, DropoutPlan::eval()).0;
    // Eval has no dropout nodes, so fewer nodes with the same trainable set.
    assert!(eval.nodes < train.nodes);
    assert_eq!(eval.grad_buffers, train.grad_buffers);
}
