//! Helpers shared by the integration tests: random data that is never zero, central finite
//! differences, error norms, and a tiny stratified encoder stack.
#![allow(dead_code)]

pub mod attention_magnitudes;
pub mod family_fixture;
pub mod stack;
pub mod tiny_bert;
pub mod tokenizer_variants;

use std::path::PathBuf;

use spafit::backend::cpu::CpuBackend;
use spafit::backend::Backend;
use spafit::rng::SplitMix;
use spafit::tensor::{Shape, Tensor};

/// `n` values with magnitudes in `[0.1, 1)` and random signs: never zero, never tiny.
pub fn nonzero(rng: &mut SplitMix, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let m = rng.uniform_in(0.1, 1.0);
            if rng.uniform() < 0.5 {
                -m
            } else {
                m
            }
        })
        .collect()
}

/// A random f64 CPU tensor of `shape` (values from [`nonzero`], times `scale`).
pub fn random(rng: &mut SplitMix, shape: &[usize], scale: f64) -> Tensor<CpuBackend> {
    let n = shape.iter().product();
    let data: Vec<f64> = nonzero(rng, n).into_iter().map(|v| v * scale).collect();
    CpuBackend::f64()
        .tensor_from_f64(Shape::new(shape), &data)
        .unwrap()
}

/// A tensor of `data` on `backend`.
pub fn tensor<B: Backend>(backend: &B, shape: &[usize], data: &[f64]) -> Tensor<B> {
    backend.tensor_from_f64(Shape::new(shape), data).unwrap()
}

/// Host copy of a float CPU tensor.
pub fn host(t: &Tensor<CpuBackend>) -> Vec<f64> {
    CpuBackend::f64().to_f64(t).unwrap()
}

/// `‖a − b‖ / ‖b‖` (or `‖a − b‖` when `b` is zero).
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "compared vectors differ in length");
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    if norm == 0.0 {
        diff
    } else {
        diff / norm
    }
}

/// `Σ a ∘ b`.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Central finite differences of `f` at `x` in the coordinates `coords`, step
/// `1e-6 · max(1, |x_i|)`.
pub fn finite_differences(
    x: &[f64],
    coords: &[usize],
    mut f: impl FnMut(&[f64]) -> f64,
) -> Vec<f64> {
    let mut p = x.to_vec();
    coords
        .iter()
        .map(|&i| {
            let h = 1e-6 * x[i].abs().max(1.0);
            p[i] = x[i] + h;
            let up = f(&p);
            p[i] = x[i] - h;
            let down = f(&p);
            p[i] = x[i];
            (up - down) / (2.0 * h)
        })
        .collect()
}

/// Compares an analytic gradient with central differences at `coords` and returns the
/// relative error; fails the test when it exceeds `tol` or any coordinate is off by more
/// than `tol · |fd| + 1e-7` (central differences in f64 are good to ~1e-9 here).
pub fn check_gradient(
    what: &str,
    analytic: &[f64],
    x: &[f64],
    coords: &[usize],
    tol: f64,
    f: impl FnMut(&[f64]) -> f64,
) -> f64 {
    assert_eq!(
        analytic.len(),
        x.len(),
        "{what}: gradient and input differ in size"
    );
    let fd = finite_differences(x, coords, f);
    let picked: Vec<f64> = coords.iter().map(|&i| analytic[i]).collect();
    let err = rel_err(&picked, &fd);
    println!("FD {what}: {} coords, rel err {err:.3e}", coords.len());
    for (k, (&a, &n)) in picked.iter().zip(&fd).enumerate() {
        assert!(
            (a - n).abs() <= tol * n.abs().max(1e-3) + 1e-7,
            "{what}: coordinate {} analytic {a:e} vs finite difference {n:e}",
            coords[k]
        );
    }
    assert!(
        err <= tol,
        "{what}: relative error {err:e} > {tol:e} (analytic {picked:?}, differences {fd:?})"
    );
    assert!(
        fd.iter().any(|&v| v.abs() > 1e-6),
        "{what}: gradient is trivially zero"
    );
    err
}

/// All coordinates `0..n`.
pub fn all(n: usize) -> Vec<usize> {
    (0..n).collect()
}

/// Up to `k` distinct coordinates of `0..n`, spread out and including both ends.
pub fn sample(n: usize, k: usize) -> Vec<usize> {
    if n <= k {
        return all(n);
    }
    let mut v: Vec<usize> = (0..k).map(|i| i * (n - 1) / (k - 1)).collect();
    v.dedup();
    v
}

/// The real all-MiniLM-L6-v2 checkpoint that `scripts/fetch_assets.sh` unpacks (its
/// `.complete` marker is written once every file is in place).
pub fn minilm_dir() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/models/all-MiniLM-L6-v2");
    assert!(
        p.join(".complete").is_file(),
        "{}: run scripts/fetch_assets.sh first",
        p.display()
    );
    p
}

/// A copy of all-MiniLM-L6-v2 in `dir` (its files linked, not copied) whose config.json sets
/// `problem_type`, as a checkpoint saved for another problem has it.
pub fn minilm_with_problem_type(dir: &std::path::Path, problem_type: &str) -> PathBuf {
    let minilm = minilm_dir();
    std::fs::create_dir_all(dir).unwrap();
    for file in [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ] {
        if minilm.join(file).exists() {
            std::os::unix::fs::symlink(minilm.join(file), dir.join(file)).unwrap();
        }
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(minilm.join("config.json")).unwrap())
            .unwrap();
    config["problem_type"] = problem_type.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    dir.to_path_buf()
}

/// Runs test `test` of module `module` (the caller's `module_path!()`) once more, alone, in a
/// child process with `env` set (a setting read once per process, a process-wide one such as
/// the stand-in's device memory, a measurement of the process's device memory, or a crash the
/// parent must survive), and asserts that it ran and passed; returns the child's stdout and
/// stderr together.
pub fn run_in_child(module: &str, test: &str, env: &[(&str, &str)]) -> String {
    let out = run_child(module, test, env);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the child process for {test} ({env:?}) failed or crashed:\n{text}"
    );
    assert!(text.contains("1 passed"), "the child ran nothing:\n{text}");
    text
}

/// The variable naming the test a child process runs ([`child_output`]).
pub const CHILD_TEST: &str = "SPAFIT_TEST_CHILD";

/// Whether this process is the child that runs test `test` alone ([`CHILD_TEST`] names it).
pub fn is_the_child(test: &str) -> bool {
    std::env::var(CHILD_TEST).as_deref() == Ok(test)
}

/// `None` in the child that runs test `test` of module `module` (the caller's
/// `module_path!()`) alone, which then runs the test's body; in any other process, runs that
/// child (which must pass) and returns its output.
pub fn child_output(module: &str, test: &str) -> Option<String> {
    if is_the_child(test) {
        return None;
    }
    Some(run_in_child(module, test, &[(CHILD_TEST, test)]))
}

/// Whether this process is the child that runs test `test` of module `module` (the caller's
/// `module_path!()`) alone; in any other process, runs that child (which must pass), prints
/// its output and returns false. For a test that changes or measures something
/// process-wide: the stand-in's device memory size, the device memory pool's peak.
pub fn is_the_child_running(module: &str, test: &str) -> bool {
    match child_output(module, test) {
        None => true,
        Some(out) => {
            println!("{out}");
            false
        }
    }
}

/// Runs test `test` of module `module` (the caller's `module_path!()`) alone in a child
/// process with `env` set, whatever becomes of it (a test that must crash checks the status
/// itself).
pub fn run_child(module: &str, test: &str, env: &[(&str, &str)]) -> std::process::Output {
    // The harness names a test by its path below the crate: `module_path!()` less its first
    // part.
    let name = match module.split_once("::") {
        Some((_, below_the_crate)) => format!("{below_the_crate}::{test}"),
        None => test.to_string(),
    };
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .envs(env.iter().copied())
        .output()
        .expect("run the child test")
}

/// A request for every gradient the linear op has, `dx` through the weight alone.
pub fn every_linear_grad() -> spafit::backend::LinearGradRequest {
    spafit::backend::LinearGradRequest {
        dx: true,
        dw: true,
        dbias: true,
        dlora_a: true,
        dlora_b: true,
        dlora_input: true,
        dx_includes_lora: false,
    }
}

/// A model under `plan` whose trainable tensors are all random (as after training).
pub fn trained<B: Backend>(
    ck: &spafit::checkpoint::Checkpoint,
    backend: &B,
    plan: &spafit::peft::PeftPlan,
    labels: usize,
) -> spafit::model::BertClassifier<B> {
    // Built for the plan, so that a backend's compact frozen dtype (the CPU's bf16 mode)
    // stores the weights the plan freezes in it.
    let mut model = spafit::model::BertClassifier::from_checkpoint_for_plan(
        ck,
        backend,
        labels,
        0,
        plan,
        &mut |_, s| backend.zeros(s),
    )
    .unwrap();
    // DoRA's magnitudes about their rows' norms, as PEFT starts them.
    model.initialise_dora_magnitudes(backend).unwrap();
    let mut rng = SplitMix::new(17);
    for p in model.params_mut().into_iter().filter(|p| p.trainable) {
        let base = backend.to_f64(&p.value).unwrap();
        let v: Vec<f64> = base
            .iter()
            .map(|b| b + rng.uniform_in(-0.05, 0.05))
            .collect();
        p.value = backend
            .tensor_from_f64_as(p.value.shape().clone(), &v, p.value.dtype())
            .unwrap();
    }
    model
}

/// Logits of `model` on `texts`, tokenized as PEFT's reference was (padding to the longest).
pub fn logits<B: Backend>(
    ck: &spafit::checkpoint::Checkpoint,
    backend: &B,
    model: &spafit::model::BertClassifier<B>,
    texts: &[&str],
    max_len: usize,
) -> Vec<f64> {
    let tok = ck.tokenizer(max_len).unwrap();
    let inputs: Vec<spafit::text::TextInput> = texts
        .iter()
        .map(|t| spafit::text::TextInput::Single(t))
        .collect();
    let enc = tok.encode_batch(&inputs).unwrap();
    let input = spafit::model::ModelInput::for_model(backend, &enc, &ck.config).unwrap();
    let mut tape = spafit::autograd::Tape::inference(backend.clone());
    let out = model
        .forward(&mut tape, &input, &mut spafit::nn::DropoutPlan::eval())
        .unwrap();
    backend.to_f64(out.value()).unwrap()
}

/// A JSON list of texts (strings) and text pairs (lists of two strings), as the fixtures
/// write their inputs.
pub fn text_rows(v: &serde_json::Value) -> Vec<Vec<String>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|v| match v {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(a) => {
                a.iter().map(|s| s.as_str().unwrap().to_string()).collect()
            }
            other => panic!("unexpected input {other}"),
        })
        .collect()
}

/// [`text_rows`] as the tokenizer's inputs.
pub fn text_inputs(rows: &[Vec<String>]) -> Vec<spafit::text::TextInput<'_>> {
    rows.iter()
        .map(|r| match r.as_slice() {
            [a] => spafit::text::TextInput::Single(a),
            [a, b] => spafit::text::TextInput::Pair(a, b),
            _ => panic!("bad row"),
        })
        .collect()
}

/// A JSON matrix of ids (rows of tokens, as transformers' tokenizers return them), row after
/// row.
pub fn u32_matrix(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
        })
        .collect()
}

/// The step recorded in `last/state.safetensors`, when there is one.
pub fn saved_step(out: &std::path::Path) -> Option<u64> {
    let bytes = std::fs::read(out.join("last/state.safetensors")).ok()?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).ok()?;
    let run = header.metadata().as_ref()?.get("spafit.run")?.clone();
    serde_json::from_str::<serde_json::Value>(&run).ok()?["step"].as_u64()
}

/// What a set of PEFT-written fixture adapters was checked against (`expected.json` in
/// their folder): the texts, the tokens they were cut to, and each case's settings and
/// float64 logits.
pub struct PeftReference {
    pub texts: Vec<String>,
    pub max_len: usize,
    pub cases: serde_json::Map<String, serde_json::Value>,
}

impl PeftReference {
    pub fn read(dir: &std::path::Path) -> Self {
        let reference: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        PeftReference {
            texts: reference["texts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
                .collect(),
            max_len: reference["max_length"].as_u64().unwrap() as usize,
            cases: reference["cases"].as_object().unwrap().clone(),
        }
    }

    pub fn texts(&self) -> Vec<&str> {
        self.texts.iter().map(String::as_str).collect()
    }

    /// A case's logits, row after row.
    pub fn logits(case: &serde_json::Value) -> Vec<f64> {
        case["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
            .collect()
    }
}

/// `f`'s result, and the names of the kernels `b` launched while it ran (most device time
/// first): which kernels computed something.
pub fn with_kernel_names<B: Backend, T>(b: &B, f: impl FnOnce() -> T) -> (T, Vec<String>) {
    assert!(
        b.start_kernel_timing().unwrap(),
        "{} launches no kernels to name",
        b.name()
    );
    let result = f();
    let names = b
        .stop_kernel_timing()
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|t| t.kernel)
        .collect();
    (result, names)
}

/// Says a test did not run, past the harness's capture of its output, so the project's test
/// script counts it as skipped rather than passed.
pub fn skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "SKIPPED {why}");
}
