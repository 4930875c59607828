//! AdamW against closed-form consequences of its definition (torch.optim.AdamW semantics).

use crate::common;

use common::{host, tensor};
use spafit::backend::cpu::CpuBackend;
use spafit::backend::{AdamWStep, Backend};

const P0: [f64; 4] = [0.7, -1.3, 2.1, -0.4];

fn hyper(step: u64, weight_decay: f64) -> AdamWStep {
    AdamWStep {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay,
        step,
    }
}

#[test]
fn zero_gradient_is_pure_decoupled_decay() {
    for cpu in [CpuBackend::f64(), CpuBackend::f32()] {
        let mut p = tensor(&cpu, &[4], &P0);
        let g = tensor(&cpu, &[4], &[0.0; 4]);
        let (mut m, mut v) = (tensor(&cpu, &[4], &[0.0; 4]), tensor(&cpu, &[4], &[0.0; 4]));
        for t in 1..=3 {
            cpu.adamw_step(&mut p, &g, &mut m, &mut v, &hyper(t, 0.5))
                .unwrap();
        }
        let got = cpu.to_f64(&p).unwrap();
        for (x, p0) in got.iter().zip(P0) {
            let want = p0 * (1.0f64 - 0.01 * 0.5).powi(3);
            assert!(
                (x - want).abs() < 1e-6 * want.abs(),
                "{}: {x} vs {want}",
                cpu.name()
            );
        }
    }
}

#[test]
fn constant_gradient_moves_lr_per_step_after_bias_correction() {
    // With g constant, m̂ = g and v̂ = g² exactly, so each step moves p by lr·g/(|g| + eps).
    let cpu = CpuBackend::f64();
    let grad = [0.3, -2.0, 1e-3, 5.0];
    let mut p = tensor(&cpu, &[4], &P0);
    let g = tensor(&cpu, &[4], &grad);
    let (mut m, mut v) = (tensor(&cpu, &[4], &[0.0; 4]), tensor(&cpu, &[4], &[0.0; 4]));
    let steps = 5;
    for t in 1..=steps {
        cpu.adamw_step(&mut p, &g, &mut m, &mut v, &hyper(t, 0.0))
            .unwrap();
    }
    let (pv, mv, vv) = (host(&p), host(&m), host(&v));
    for i in 0..4 {
        let gi: f64 = grad[i];
        let want_p = P0[i] - steps as f64 * 0.01 * gi / (gi.abs() + 1e-8);
        assert!(
            (pv[i] - want_p).abs() < 1e-12,
            "p[{i}] {} vs {want_p}",
            pv[i]
        );
        let want_m = gi * (1.0 - 0.9f64.powi(steps as i32));
        let want_v = gi * gi * (1.0 - 0.999f64.powi(steps as i32));
        assert!((mv[i] - want_m).abs() < 1e-14 * gi.abs().max(1.0), "m[{i}]");
        assert!(
            (vv[i] - want_v).abs() < 1e-14 * (gi * gi).max(1.0),
            "v[{i}]"
        );
    }
}

#[test]
fn shared_parameter_is_copied_not_mutated_behind_a_clone() {
    let cpu = CpuBackend::f64();
    let mut p = tensor(&cpu, &[4], &P0);
    let snapshot = p.clone();
    let g = tensor(&cpu, &[4], &[1.0; 4]);
    let (mut m, mut v) = (tensor(&cpu, &[4], &[0.0; 4]), tensor(&cpu, &[4], &[0.0; 4]));
    cpu.adamw_step(&mut p, &g, &mut m, &mut v, &hyper(1, 0.0))
        .unwrap();
    assert_eq!(
        host(&snapshot),
        P0.to_vec(),
        "a clone saw the in-place update"
    );
    assert_ne!(host(&p), P0.to_vec());
}

#[test]
fn step_counts_beyond_i32_do_not_wrap() {
    // The bias corrections use β^t with t the 1-based step: a count past i32::MAX must give
    // corrections of 1 (β^t = 0), not the overflowed exponents of a truncating cast.
    let cpu = CpuBackend::f64();
    let grad = [0.3, -2.0, 1e-3, 5.0];
    for step in [u64::from(u32::MAX) + 7, 1 << 40] {
        let c = hyper(step, 0.0).coefficients();
        assert_eq!(c.step_size, 0.01, "step {step}: lr / (1 − β₁ᵗ)");
        assert_eq!(c.bias2_sqrt, 1.0, "step {step}: sqrt(1 − β₂ᵗ)");
        let mut p = tensor(&cpu, &[4], &P0);
        let g = tensor(&cpu, &[4], &grad);
        let (mut m, mut v) = (tensor(&cpu, &[4], &[0.0; 4]), tensor(&cpu, &[4], &[0.0; 4]));
        cpu.adamw_step(&mut p, &g, &mut m, &mut v, &hyper(step, 0.0))
            .unwrap();
        for (i, (x, g)) in host(&p).iter().zip(grad).enumerate() {
            // m = 0.1·g, v = 0.001·g² without bias correction.
            let want = P0[i] - 0.01 * (0.1 * g) / ((0.001 * g * g).sqrt() + 1e-8);
            assert!((x - want).abs() < 1e-12, "step {step}: {x} vs {want}");
        }
    }
}

/// A refused update changes nothing: settings and every operand are checked before the
/// first parameter moves, so the step count, the parameters and the moments stay as they
/// were (a caller may fix the cause and go on).
#[test]
fn a_refused_update_changes_nothing() {
    use spafit::autograd::Gradients;
    use spafit::nn::Param;
    use spafit::train::AdamW;
    let cpu = CpuBackend::f64();
    let param = |name: &str, values: &[f64]| Param {
        name: name.into(),
        value: tensor(&cpu, &[values.len()], values),
        trainable: true,
    };
    let (mut a, mut b) = (param("a.weight", &P0), param("b.weight", &[1.0, 2.0]));
    let grads = Gradients::from_map(
        [
            ("a.weight".to_string(), tensor(&cpu, &[4], &[0.5; 4])),
            ("b.weight".to_string(), tensor(&cpu, &[3], &[0.5; 3])),
        ]
        .into_iter()
        .collect(),
    );
    let mut opt = AdamW::new(0.01);
    // `b`'s gradient has the wrong shape: found before `a` (first by name) is updated.
    let e = opt
        .update(&cpu, vec![&mut a, &mut b], &grads, 0.01)
        .unwrap_err();
    assert!(e.to_string().contains("gradient of `b.weight`"), "{e}");
    // A learning rate that is not a number: refused before anything.
    let e = opt
        .update(&cpu, vec![&mut a], &grads, f64::NAN)
        .unwrap_err();
    assert!(e.to_string().contains("lr"), "{e}");
    assert_eq!(opt.step, 0);
    assert!(opt.moments().is_empty());
    assert_eq!(host(&a.value), P0.to_vec());
    // A gradient that no parameter given takes (here `b`'s, with only `a` given) is refused.
    let e = opt.update(&cpu, vec![&mut a], &grads, 0.01).unwrap_err();
    assert!(e.to_string().contains("gradient for `b.weight`"), "{e}");
    assert_eq!(opt.step, 0);
    // The same optimizer then steps as a fresh one does.
    let only_a = Gradients::from_map(
        [("a.weight".to_string(), tensor(&cpu, &[4], &[0.5; 4]))]
            .into_iter()
            .collect(),
    );
    opt.update(&cpu, vec![&mut a], &only_a, 0.01).unwrap();
    assert_eq!(opt.step, 1);
    assert_ne!(host(&a.value), P0.to_vec());
    // A step count set by hand (the field is public) to its largest has no next step.
    let before = host(&a.value);
    opt.step = u64::MAX;
    let e = opt.update(&cpu, vec![&mut a], &only_a, 0.01).unwrap_err();
    assert!(
        e.to_string().contains("step count is at its largest"),
        "{e}"
    );
    assert_eq!((opt.step, host(&a.value)), (u64::MAX, before));
    // Nor does a shape built by hand whose element count does not fit panic: it matches no
    // buffer.
    let huge = spafit::tensor::Shape::new([usize::MAX, 2]);
    assert_eq!((huge.checked_numel(), huge.numel()), (None, usize::MAX));
    let rows = |dims: &[usize]| spafit::tensor::Shape::new(dims.to_vec()).rows();
    assert_eq!(
        (
            rows(&[usize::MAX, 3, 4]),
            rows(&[2, 3, 4]),
            rows(&[5]),
            rows(&[])
        ),
        (usize::MAX, 6, 1, 1)
    );
    assert!(cpu.tensor_from_f64(huge, &[0.0; 2]).is_err());
    // Float values make float tensors; the message says where ids come from.
    let e = cpu
        .tensor_from_f64_as(
            spafit::tensor::Shape::new([1]),
            &[1.0],
            spafit::tensor::DType::U32,
        )
        .unwrap_err();
    assert!(e.to_string().contains("(ids: tensor_from_u32)"), "{e}");
}
