//! Device memory of gradient accumulation, in a process of its own: the memory pool's peak is
//! the process's, so a test running beside this one would count in it.

use crate::common;
use spafit::autograd::{Gradients, Tape, Var};
use spafit::backend::cuda::CudaBackend;
use spafit::backend::Backend;
use spafit::tensor::{DType, Tensor};

/// A later micro-batch's gradients join the sums while its backward runs, a bucket at a
/// time: the device memory rises by a fraction of its gradients, where computing them all
/// and then adding them holds them all at once beside the sums; both give the same sums.
#[test]
fn a_backward_into_gradient_sums_holds_a_fraction_of_the_gradients() {
    let test = "a_backward_into_gradient_sums_holds_a_fraction_of_the_gradients";
    if !common::is_the_child_running(module_path!(), test) {
        return;
    }
    let cuda = CudaBackend::hardware_or_emulated(DType::F32).unwrap();
    // 16 parameters of 64 KiB: 1 MiB of gradients, added 128 KiB at a time.
    let (count, len) = (16, 1 << 14);
    let values = |i: usize| -> Vec<f64> {
        (0..len)
            .map(|j| ((i * 7919 + j * 104_729) % 1000) as f64 / 500.0 - 1.0)
            .collect()
    };
    let params: Vec<Tensor<CudaBackend>> = (0..count)
        .map(|i| cuda.tensor_from_f64([len].into(), &values(i)).unwrap())
        .collect();
    let target = cuda.tensor_from_f64([len].into(), &values(count)).unwrap();
    let gradient_bytes: usize = params.iter().map(Tensor::size_in_bytes).sum();
    // mse(Σ gelu(p_i), target): every parameter gets a gradient of its own size, and the
    // nodes keep only the parameters themselves, so the backward frees no activation of
    // that size to make room for it.
    let forward = |tape: &mut Tape<CudaBackend>| -> Var<CudaBackend> {
        let mut sum: Option<Var<CudaBackend>> = None;
        for (i, p) in params.iter().enumerate() {
            let v = tape.param(&format!("p{i:02}"), p, true);
            let t = tape.gelu(&v).unwrap();
            sum = Some(match sum {
                Some(s) => tape.add(&s, &t).unwrap(),
                None => t,
            });
        }
        tape.mse(&sum.unwrap(), &target).unwrap()
    };
    let first_sums = || {
        let mut tape = Tape::new(cuda.clone());
        let loss = forward(&mut tape);
        tape.backward_scaled(&loss, 0.5).unwrap()
    };
    // The device memory a second backward adds on top of what its start holds.
    let second = |into: bool| -> (u64, Gradients<CudaBackend>) {
        let mut sums = first_sums();
        let mut tape = Tape::new(cuda.clone());
        let loss = forward(&mut tape);
        cuda.synchronize().unwrap();
        cuda.reset_peak_memory();
        let start = cuda.peak_memory_bytes().unwrap();
        if into {
            tape.backward_scaled_into(&loss, 0.5, &mut sums).unwrap();
        } else {
            let grads = tape.backward_scaled(&loss, 0.5).unwrap().into_map();
            let mut sums_map = sums.into_map();
            let (mut accs, mut xs) = (Vec::new(), Vec::new());
            for (name, sum) in sums_map.iter_mut() {
                accs.push(sum);
                xs.push(&grads[name]);
            }
            cuda.add_assign_each(&mut accs, &xs).unwrap();
            drop(grads);
            sums = Gradients::from_map(sums_map);
        }
        cuda.synchronize().unwrap();
        (cuda.peak_memory_bytes().unwrap() - start, sums)
    };
    let (held_in_full, expected) = second(false);
    let (into, sums) = second(true);
    println!(
        "a second backward adds {into} bytes into sums, {held_in_full} computed in full; \
         {gradient_bytes} bytes of gradients"
    );
    // The comparison can tell the two apart.
    assert!(
        held_in_full >= gradient_bytes as u64,
        "{held_in_full} bytes"
    );
    assert!(
        into < gradient_bytes as u64 / 2,
        "{into} bytes above the start, {gradient_bytes} of gradients"
    );
    assert_eq!(sums.len(), count);
    for (name, sum) in sums.iter() {
        // Each parameter is used once: the same additions in the same order, bit for bit.
        assert_eq!(
            cuda.to_f64(sum).unwrap(),
            cuda.to_f64(expected.get(name).unwrap()).unwrap(),
            "`{name}`"
        );
    }
}
