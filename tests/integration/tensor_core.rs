//! The tensor-core wrappers of `kernels/tensor_core.cuh`, each on its own, against plain
//! matrix products and the documented fragment layouts, on inputs that expose layout
//! mistakes (iota and one-hot matrices, exact in bf16 and f32, so results must match
//! exactly) as well as random ones. They run on a GPU when there is one (the GPU check runs
//! these tests first, so the hardware judges the layouts) and on the CPU stand-in otherwise.
//! Each checked result prints a `TC` line for the GPU check's table.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaModule, CudaStream, LaunchConfig, PushKernelArg};
use half::bf16;
use spafit::backend::cuda::{kernels, CudaBackend};
use spafit::rng::SplitMix;
use spafit::tensor::DType;

struct Gpu {
    stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    device: String,
}

fn gpu() -> Gpu {
    // Picks the driver (a GPU, else the stand-in) for this process, then talks to it directly.
    let backend = CudaBackend::hardware_or_emulated(DType::F32).expect("a CUDA backend");
    let ctx = CudaContext::new(0).expect("CUDA context");
    let ptx = kernels::ptx("tensor_core_check").expect("tensor_core_check is compiled in");
    let module = ctx
        .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
        .expect("load tensor_core_check");
    Gpu {
        stream: ctx.default_stream(),
        module,
        device: spafit::backend::Backend::name(&backend),
    }
}

fn one_warp(cases: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (cases as u32, 1, 1),
        block_dim: (32, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn bits(v: &[f64]) -> Vec<u16> {
    v.iter().map(|&x| bf16::from_f64(x).to_bits()).collect()
}

fn value(b: u16) -> f64 {
    bf16::from_bits(b).to_f64()
}

fn report(gpu: &Gpu, what: &str, ok: bool, detail: &str) {
    println!(
        "TC {what} {} {} {detail}",
        gpu.device,
        if ok { "PASS" } else { "FAIL" }
    );
    assert!(ok, "{what} on {}: {detail}", gpu.device);
}

/// D = A·B + C in f64, A [16][16], B [16][8] (k, n), C [16][8].
fn product(a: &[f64], b: &[f64], c: &[f64]) -> Vec<f64> {
    let mut d = c.to_vec();
    for m in 0..16 {
        for n in 0..8 {
            for k in 0..16 {
                d[m * 8 + n] += a[m * 16 + k] * b[k * 8 + n];
            }
        }
    }
    d
}

/// One product to check: A, B, C, and whether the result is exact (small integers).
type Case = (Vec<f64>, Vec<f64>, Vec<f64>, bool);

/// Iota, one-hot A, one-hot B, random.
fn cases() -> Vec<Case> {
    let iota_a: Vec<f64> = (0..256).map(|i| i as f64).collect();
    let iota_b: Vec<f64> = (0..128).map(|i| (i + 1) as f64).collect();
    let iota_c: Vec<f64> = (0..128).map(|i| (i as f64) * 0.5).collect();
    let mut v = vec![(iota_a.clone(), iota_b.clone(), vec![0.0; 128], true)];
    for p in (0..256).step_by(5) {
        let mut a = vec![0.0; 256];
        a[p] = 1.0;
        v.push((a, iota_b.clone(), iota_c.clone(), true));
    }
    for p in 0..128 {
        let mut b = vec![0.0; 128];
        b[p] = 1.0;
        v.push((iota_a.clone(), b, iota_c.clone(), true));
    }
    let mut rng = SplitMix::new(11);
    let mut rnd = |n: usize| -> Vec<f64> {
        (0..n)
            .map(|_| bf16::from_f64(rng.uniform_in(-1.0, 1.0)).to_f64())
            .collect()
    };
    for _ in 0..4 {
        v.push((rnd(256), rnd(128), rnd(128), false));
    }
    v
}

fn compare(got: &[f32], want: &[f64], exact: bool) -> (bool, f64) {
    let mut worst = 0.0f64;
    let mut norm = 0.0f64;
    for (&g, &w) in got.iter().zip(want) {
        worst = worst.max((f64::from(g) - w).abs());
        norm = norm.max(w.abs());
    }
    let rel = worst / norm.max(1e-30);
    (if exact { worst == 0.0 } else { rel <= 1e-6 }, rel)
}

#[test]
fn mma_m16n8k16_matches_a_plain_product() {
    let gpu = gpu();
    let cases = cases();
    let n = cases.len();
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for (ca, cb, cc, _) in &cases {
        a.extend(bits(ca));
        b.extend(bits(cb));
        c.extend(cc.iter().map(|&x| x as f32));
    }
    let s = &gpu.stream;
    let (da, db, dc) = (
        s.clone_htod(&a).unwrap(),
        s.clone_htod(&b).unwrap(),
        s.clone_htod(&c).unwrap(),
    );
    let mut dd = s.clone_htod(&vec![f32::NAN; n * 128]).unwrap();
    let f = gpu.module.load_function("check_mma").unwrap();
    let mut l = s.launch_builder(&f);
    l.arg(&da).arg(&db).arg(&dc).arg(&mut dd);
    unsafe { l.launch(one_warp(n)) }.unwrap();
    let d = s.clone_dtoh(&dd).unwrap();
    let mut worst_random = 0.0f64;
    for (i, (ca, cb, cc, exact)) in cases.iter().enumerate() {
        // The reference multiplies the bf16 values the kernel got.
        let (ra, rb): (Vec<f64>, Vec<f64>) = (
            bits(ca).iter().map(|&x| value(x)).collect(),
            bits(cb).iter().map(|&x| value(x)).collect(),
        );
        let want = product(&ra, &rb, cc);
        let (ok, rel) = compare(&d[i * 128..(i + 1) * 128], &want, *exact);
        if !ok {
            report(
                &gpu,
                "mma_m16n8k16",
                false,
                &format!("case {i}: relative error {rel:e}"),
            );
        }
        if !exact {
            worst_random = worst_random.max(rel);
        }
    }
    report(
        &gpu,
        "mma_m16n8k16",
        true,
        &format!("{n} cases (iota, one-hot exact; random {worst_random:.1e})"),
    );
}

#[test]
fn ldmatrix_fills_registers_as_documented() {
    let gpu = gpu();
    let s = &gpu.stream;
    // Two cases: iota bits and a shuffled pattern.
    let mut src: Vec<u16> = (0..256u16).collect();
    let mut rng = SplitMix::new(5);
    src.extend((0..256).map(|_| (rng.next_u64() & 0xffff) as u16));
    let cases = 2;
    let dsrc = s.clone_htod(&src).unwrap();
    for (name, n, trans) in [
        ("check_ldmatrix_x1", 1, false),
        ("check_ldmatrix_x2", 2, false),
        ("check_ldmatrix_x4", 4, false),
        ("check_ldmatrix_x1_trans", 1, true),
        ("check_ldmatrix_x2_trans", 2, true),
        ("check_ldmatrix_x4_trans", 4, true),
    ] {
        let mut out = s.clone_htod(&vec![0xdead_beefu32; cases * 128]).unwrap();
        let f = gpu.module.load_function(name).unwrap();
        let mut l = s.launch_builder(&f);
        l.arg(&dsrc).arg(&mut out);
        unsafe { l.launch(one_warp(cases)) }.unwrap();
        let got = s.clone_dtoh(&out).unwrap();
        for case in 0..cases {
            let m = |i: usize, row: usize, col: usize| -> u32 {
                u32::from(src[case * 256 + i * 64 + row * 8 + col])
            };
            for lane in 0..32 {
                let (g, t) = (lane / 4, lane % 4);
                for i in 0..4 {
                    let want = if i >= n {
                        0
                    } else if trans {
                        m(i, 2 * t, g) | m(i, 2 * t + 1, g) << 16
                    } else {
                        m(i, g, 2 * t) | m(i, g, 2 * t + 1) << 16
                    };
                    let have = got[case * 128 + lane * 4 + i];
                    if have != want {
                        report(
                            &gpu,
                            name,
                            false,
                            &format!("case {case} lane {lane} register {i}: {have:#010x}, documented {want:#010x}"),
                        );
                    }
                }
            }
        }
        report(&gpu, name, true, "every lane and register as documented");
    }
}

#[test]
fn ldmatrix_feeds_mma_in_every_staging_layout() {
    let gpu = gpu();
    let s = &gpu.stream;
    let f = gpu.module.load_function("check_ldmatrix_mma").unwrap();
    let cases = cases();
    let n = cases.len();
    let (mut a, mut bt) = (Vec::new(), Vec::new());
    for (ca, cb, _, _) in &cases {
        a.extend(bits(ca));
        // Bt[n][k] = B[k][n]
        let mut t = vec![0.0; 128];
        for k in 0..16 {
            for j in 0..8 {
                t[j * 16 + k] = cb[k * 8 + j];
            }
        }
        bt.extend(bits(&t));
    }
    let (da, dbt) = (s.clone_htod(&a).unwrap(), s.clone_htod(&bt).unwrap());
    for layout in 0..8i32 {
        let mut dd = s.clone_htod(&vec![f32::NAN; n * 128]).unwrap();
        let mut l = s.launch_builder(&f);
        l.arg(&da).arg(&dbt).arg(&mut dd).arg(&layout);
        unsafe { l.launch(one_warp(n)) }.unwrap();
        let d = s.clone_dtoh(&dd).unwrap();
        for (i, (ca, cb, _, exact)) in cases.iter().enumerate() {
            let (ra, rb): (Vec<f64>, Vec<f64>) = (
                bits(ca).iter().map(|&x| value(x)).collect(),
                bits(cb).iter().map(|&x| value(x)).collect(),
            );
            let want = product(&ra, &rb, &[0.0; 128]);
            let (ok, rel) = compare(&d[i * 128..(i + 1) * 128], &want, *exact);
            if !ok {
                report(
                    &gpu,
                    &format!("ldmatrix_mma.layout{layout}"),
                    false,
                    &format!("case {i}: relative error {rel:e}"),
                );
            }
        }
        report(
            &gpu,
            &format!("ldmatrix_mma.layout{layout}"),
            true,
            &format!("{n} cases"),
        );
    }
}

#[test]
fn cp_async_copies_zero_fills_and_waits_by_group() {
    let gpu = gpu();
    let s = &gpu.stream;
    let cases = 3;
    let mut rng = SplitMix::new(9);
    let src: Vec<u16> = (0..cases * 512)
        .map(|_| (rng.next_u64() & 0xffff) as u16)
        .collect();
    let sizes: Vec<i32> = (0..cases * 64).map(|i| ((i * 7) % 9 * 2) as i32).collect();
    let (dsrc, dsizes) = (s.clone_htod(&src).unwrap(), s.clone_htod(&sizes).unwrap());
    let mut ddst = s.clone_htod(&vec![0xbeefu16; cases * 512]).unwrap();
    let f = gpu.module.load_function("check_cp_async").unwrap();
    let mut l = s.launch_builder(&f);
    l.arg(&dsrc).arg(&dsizes).arg(&mut ddst);
    unsafe { l.launch(one_warp(cases)) }.unwrap();
    let got = s.clone_dtoh(&ddst).unwrap();
    for case in 0..cases {
        for chunk in 0..64 {
            let valid = sizes[case * 64 + chunk] as usize / 2;
            for e in 0..8 {
                let i = case * 512 + chunk * 8 + e;
                let want = if e < valid { src[i] } else { 0 };
                if got[i] != want {
                    report(
                        &gpu,
                        "cp_async",
                        false,
                        &format!("case {case} chunk {chunk} element {e}: {:#06x}, want {want:#06x} ({valid} valid)", got[i]),
                    );
                }
            }
        }
    }
    report(&gpu, "cp_async", true, "copies, zero-fill, two groups");
}

#[test]
fn cp_async_ldmatrix_mma_pipeline_tile() {
    let gpu = gpu();
    let s = &gpu.stream;
    let cases = 3;
    let mut rng = SplitMix::new(13);
    let mut r = |n: usize| -> Vec<f64> {
        (0..n)
            .map(|_| bf16::from_f64(rng.uniform_in(-1.0, 1.0)).to_f64())
            .collect()
    };
    let (a, bt) = (r(cases * 512), r(cases * 256));
    let (da, dbt) = (
        s.clone_htod(&bits(&a)).unwrap(),
        s.clone_htod(&bits(&bt)).unwrap(),
    );
    let mut dd = s.clone_htod(&vec![f32::NAN; cases * 128]).unwrap();
    let f = gpu.module.load_function("check_pipeline_tile").unwrap();
    let mut l = s.launch_builder(&f);
    l.arg(&da).arg(&dbt).arg(&mut dd);
    unsafe { l.launch(one_warp(cases)) }.unwrap();
    let d = s.clone_dtoh(&dd).unwrap();
    let mut worst = 0.0f64;
    for case in 0..cases {
        let mut want = vec![0.0; 128];
        for m in 0..16 {
            for n in 0..8 {
                for k in 0..32 {
                    want[m * 8 + n] += a[case * 512 + m * 32 + k] * bt[case * 256 + n * 32 + k];
                }
            }
        }
        let (ok, rel) = compare(&d[case * 128..(case + 1) * 128], &want, false);
        worst = worst.max(rel);
        if !ok {
            report(
                &gpu,
                "pipeline_tile",
                false,
                &format!("case {case}: {rel:e}"),
            );
        }
    }
    report(&gpu, "pipeline_tile", true, &format!("worst {worst:.1e}"));
}
