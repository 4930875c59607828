//! The `spafit` binary end to end: help, errors, train → eval → predict on GLUE-layout files,
//! gradcheck and bench JSON.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn spafit(args: &[&str]) -> (bool, String, String) {
    spafit_with_env(args, &[])
}

/// The most device memory of the CPU stand-in (`SPAFIT_EMU_MEMORY`, found to `resolution`
/// bytes by bisection) under which `run` (of the command `what`) fails, `run` passing with
/// 64 MiB; and that failing run's stdout and stderr.
fn most_memory_that_fails(
    what: &str,
    run: impl Fn(u64) -> (bool, String, String),
    resolution: u64,
) -> (u64, String, String) {
    let (mut fails, mut passes) = (1u64 << 10, 64u64 << 20);
    let (ok, _, err) = run(passes);
    assert!(ok, "{what} fails with 64 MiB: {err}");
    while passes - fails > resolution {
        let mid = (fails + passes) / 2;
        match run(mid).0 {
            true => passes = mid,
            false => fails = mid,
        }
    }
    let (ok, stdout, err) = run(fails);
    assert!(!ok, "{what} passed with {fails} bytes");
    (fails, stdout, err)
}

/// [`spafit`] with environment variables set for the child.
fn spafit_with_env(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spafit"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn last_json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.lines().last().expect("no output"))
        .unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn model() -> String {
    common::minilm_dir().display().to_string()
}

#[test]
fn help_documents_every_command_and_flag() {
    let (ok, out, _) = spafit(&["--help"]);
    assert!(ok);
    for c in [
        "train",
        "eval",
        "predict",
        "gradcheck",
        "bench",
        "merge",
        "demo",
    ] {
        assert!(out.contains(c), "--help lacks {c}");
    }
    let (ok, out, _) = spafit(&["train", "--help"]);
    assert!(ok);
    for flag in [
        "--method",
        "--n1",
        "--n2",
        "--lora-r",
        "--lora-targets",
        "--lr",
        "--warmup-ratio",
        "--max-grad-norm",
        "--resume",
        "--device",
        "--skip-malformed",
        "--export-peft",
        "--micro-batch-size",
    ] {
        assert!(out.contains(flag), "train --help lacks {flag}");
    }
}

#[test]
fn cuda_and_bad_arguments_are_clear_errors() {
    let m = model();
    let bench_on = |device| {
        [
            "bench",
            "--model",
            &m,
            "--device",
            device,
            "--batch-size",
            "2",
            "--seq-len",
            "8",
            "--steps",
            "1",
            "--warmup",
            "0",
        ]
    };
    // Without a GPU `--device cuda` says so and names the stand-in; with one it just runs.
    let (ok, _, err) = spafit(&bench_on("cuda:0"));
    assert!(
        ok || (err.contains("no CUDA driver") && err.contains("cuda-emu")),
        "{err}"
    );
    // The stand-in first on the library path is not a GPU: `--device cuda` must not run on
    // it labelled cuda:0; and the stand-in's settings from the environment are checked, not
    // half-read.
    if let Ok(dir) = spafit::backend::cuda::emulator::emulator_dir() {
        let preloaded = dir.join("libcuda.so");
        for (variable, value) in [
            ("LD_LIBRARY_PATH", dir.as_os_str()),
            ("LD_PRELOAD", preloaded.as_os_str()),
        ] {
            let (ok, _, err) = spafit_with_env(&bench_on("cuda"), &[(variable, value)]);
            assert!(
                !ok && err.contains("CPU stand-in, not NVIDIA's driver") && err.contains(variable),
                "{variable}: {err}"
            );
        }
    }
    // An empty SPAFIT_EMULATOR_DIR reads as unset (the stand-in this build made runs), and
    // the stand-in's failures are said once, in spafit's error, not echoed by it as well.
    if spafit::backend::cuda::kernels::EMULATOR_DIR.is_some() {
        let (ok, _, err) = spafit_with_env(
            &bench_on("cuda-emu"),
            &[("SPAFIT_EMULATOR_DIR", std::ffi::OsStr::new(""))],
        );
        assert!(ok, "{err}");
        // A kernel folder without this build's modules is refused before anything runs,
        // naming them; one whose modules hold other kernels (a stale build) at the first
        // launch, said once.
        let stand_in = spafit::backend::cuda::emulator::emulator_dir().unwrap();
        let no_kernels = tempfile::tempdir().unwrap();
        let (ok, _, err) = spafit_with_env(
            &bench_on("cuda-emu"),
            &[("SPAFIT_EMU_KERNEL_DIR", no_kernels.path().as_os_str())],
        );
        assert!(
            !ok && err.contains("lacks")
                && ["gemm.so, ", "gemm_skinny.so, ", "layernorm.so, "]
                    .iter()
                    .all(|module| err.contains(module))
                && err.contains("SPAFIT_EMU_KERNEL_DIR"),
            "{err}"
        );
        let stale = tempfile::tempdir().unwrap();
        for (module, _) in spafit::backend::cuda::kernels::KERNELS {
            std::os::unix::fs::symlink(
                stand_in.join("kernels/emulator_selftest.so"),
                stale.path().join(format!("{module}.so")),
            )
            .unwrap();
        }
        let (ok, _, err) = spafit_with_env(
            &bench_on("cuda-emu"),
            &[("SPAFIT_EMU_KERNEL_DIR", stale.path().as_os_str())],
        );
        assert!(!ok && err.contains("no kernel module in"), "{err}");
        assert_eq!(err.matches("no kernel module in").count(), 1, "{err}");
        assert!(err.contains(": CUDA error: "), "{err}");
        // A file where the folder goes, and a libcuda.so the loader refuses, say so.
        let (ok, _, err) = spafit_with_env(
            &bench_on("cuda-emu"),
            &[(
                "SPAFIT_EMULATOR_DIR",
                stand_in.join("libcuda.so").as_os_str(),
            )],
        );
        assert!(!ok && err.contains("which is not a folder"), "{err}");
        let garbage = tempfile::tempdir().unwrap();
        std::fs::write(garbage.path().join("libcuda.so"), "not a library").unwrap();
        std::os::unix::fs::symlink(stand_in.join("kernels"), garbage.path().join("kernels"))
            .unwrap();
        let (ok, _, err) = spafit_with_env(
            &bench_on("cuda-emu"),
            &[("SPAFIT_EMULATOR_DIR", garbage.path().as_os_str())],
        );
        let reason = err.split("dlopen failed").nth(1).unwrap_or_default();
        assert!(
            !ok && err.contains("cannot load") && reason.trim_start_matches(": ").len() > 5,
            "{err}"
        );
        // A stand-in or kernel module cut short (a build still writing it) is named, where
        // the loader would map it whole and die of SIGBUS past its end.
        for (cut, keep) in [
            ("libcuda.so", 5000),
            ("kernels/gemm.so", 10_000),
            ("kernels/emulator_selftest.so", 1000),
        ] {
            let copy = tempfile::tempdir().unwrap();
            std::fs::create_dir(copy.path().join("kernels")).unwrap();
            for entry in std::fs::read_dir(stand_in.join("kernels")).unwrap() {
                let from = entry.unwrap().path();
                let to = copy.path().join("kernels").join(from.file_name().unwrap());
                std::fs::copy(&from, &to).unwrap();
            }
            std::fs::copy(stand_in.join("libcuda.so"), copy.path().join("libcuda.so")).unwrap();
            let bytes = std::fs::read(copy.path().join(cut)).unwrap();
            std::fs::write(copy.path().join(cut), &bytes[..keep]).unwrap();
            let (ok, _, err) = spafit_with_env(
                &bench_on("cuda-emu"),
                &[("SPAFIT_EMULATOR_DIR", copy.path().as_os_str())],
            );
            assert!(
                !ok && err.contains(cut) && err.contains(&format!("cut short: {keep} bytes")),
                "{cut}: {err}"
            );
        }
    }
    // A broken libcuda first on the library path is not "no driver": it is named.
    let broken = tempfile::tempdir().unwrap();
    for name in ["libcuda.so", "libcuda.so.1"] {
        std::fs::write(broken.path().join(name), "not a library").unwrap();
    }
    let (ok, _, err) = spafit_with_env(
        &bench_on("cuda"),
        &[("LD_LIBRARY_PATH", broken.path().as_os_str())],
    );
    assert!(
        ok || (err.contains("was found but does not load") && err.contains("libcuda.so")),
        "{err}"
    );
    for (name, value) in [
        ("SPAFIT_EMU_SCHEDULE", "shuffle:abc"),
        ("SPAFIT_EMU_MEMORY", "16G"),
        ("SPAFIT_EMU_MAX_GRID_Z", "65536"),
    ] {
        let (ok, _, err) = spafit_with_env(&bench_on("cuda-emu"), &[(name, value.as_ref())]);
        assert!(
            !ok && err.contains(name) && err.contains(value),
            "{name}={value}: {err}"
        );
    }
    // The exit status and stderr of `spafit bench` on the model with `args` added.
    let bench_exit = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_spafit"))
            .args(["bench", "--model", &model()])
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), err)
    };
    // A misspelt value, or values that do not go together, is a command line refused as
    // one that does not parse (status 2, before anything loads).
    for (device, dtype, method, status, needle) in [
        ("cuda-emu", "f64", "spafit", 2, "f64 is the CPU reference"),
        // Read without regard to case, as --method is.
        ("CUDA-EMU", "F64", "SPAFIT", 2, "f64 is the CPU reference"),
        ("tpu", "f32", "spafit", 2, "unknown device `tpu`"),
        ("cuda:x", "f32", "spafit", 2, "cuda:N"),
        (
            "cpu",
            "fp16",
            "spafit",
            2,
            "expected f32, f64 (CPU) or bf16",
        ),
        ("cpu", "f32", "qlora", 2, "unknown method `qlora`"),
    ] {
        let (code, err) = bench_exit(&["--device", device, "--dtype", dtype, "--method", method]);
        assert!(
            code == Some(status) && err.contains(needle),
            "--device {device} --dtype {dtype} --method {method}: {code:?} {err}"
        );
    }
    // The same for the plan's flags: text that is no boundary, layer or target, or a target
    // named twice, exits 2; a boundary or a list that parses but does not fit the model exits
    // 1.
    for (args, status, needle) in [
        (&["--n1", "abc"][..], 2, "neither a layer index"),
        (&["--n2", "-1"], 2, "neither a layer index"),
        (&["--n1", "3/2"], 2, "--n1"),
        (
            &["--method", "lora", "--lora-layers", "a"],
            2,
            "`a` is not a layer index",
        ),
        (
            &["--method", "lora", "--lora-targets", "foo"],
            2,
            "unknown target `foo`",
        ),
        (
            &["--method", "lora", "--lora-targets", "query,query"],
            2,
            "named twice",
        ),
    ] {
        let (code, err) = bench_exit(args);
        assert!(
            code == Some(status) && err.contains(needle),
            "{args:?}: {code:?} {err}"
        );
    }
    let (ok, _, err) = spafit(&[
        "bench",
        "--model",
        &model(),
        "--method",
        "spafit",
        "--n1",
        "5",
        "--n2",
        "3",
    ]);
    assert!(
        !ok && err.contains("N1 = 5 (--n1) is above N2 = 3 (--n2)") && err.contains("≤ 6"),
        "{err}"
    );
    // Settings that would train nothing, or not what was meant, each name their flag.
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "t.csv", "text,label\ngood,1\nbad,0\n");
    let t = tmp.path().join("t.csv").display().to_string();
    let m = model();
    for (extra, needle) in [
        (&["--max-steps", "0"][..], "--max-steps"),
        (&["--lora-alpha", "0"], "α > 0"),
        (&["--lora-alpha=-2"], "α > 0"),
        (&["--lora-alpha", "1e300"], "beyond what f32 holds"),
        (&["--lora-alpha", "1e-300"], "too small for f32 to hold"),
        (
            &["--method", "lora", "--lora-layers", "1,1"],
            "layer 1 is listed twice",
        ),
        (&["--n1=-1"], "neither a layer index"),
        (
            &["--n1", "99999999999999999999999"],
            "layer index `99999999999999999999999` is beyond",
        ),
        (&["--warmup-ratio", "2"], "a share of the steps, in [0, 1]"),
        // Two tokens are [CLS] and [SEP]; three leave room for a single sentence.
        (&["--max-len", "2"], "--max-len"),
        // 2^63 epochs × 2 steps would wrap to a run of no steps.
        (
            &["--epochs", "9223372036854775808", "--batch-size", "1"],
            "more steps than can be counted",
        ),
    ] {
        let mut args = vec!["train", "--model", &m, "--train-file", &t];
        args.extend_from_slice(extra);
        let (ok, _, err) = spafit(&args);
        assert!(!ok && err.contains(needle), "{extra:?}: {err}");
        assert!(!err.contains("learning rate"), "{extra:?}: {err}");
    }
    // A batch size near usize::MAX is the whole file in one step (a window of 50 batches
    // once wrapped to a few rows, leaving the rest of the file untrained, or to none).
    let (ok, out, err) = spafit(&[
        "train",
        "--model",
        &m,
        "--train-file",
        &t,
        "--method",
        "bitfit",
        "--batch-size",
        "9223372036854775808",
        "--quiet",
    ]);
    assert!(ok && out.contains(r#""steps":1"#), "{out}{err}");
    // A refused setting is all that is printed: no training banner first.
    let (ok, _, err) = spafit(&["train", "--model", &m, "--train-file", &t, "--lr", "nan"]);
    assert!(
        !ok && err.contains("'nan' for '--lr <LR>'") && !err.contains("training spafit"),
        "{err}"
    );
    let (ok, _, err) = spafit(&["eval", "--model", &m, "--dev-file", &t, "--split", "foo"]);
    assert!(
        !ok && err.contains("`foo`: custom data is evaluated from --dev-file"),
        "{err}"
    );
    let (ok, _, err) = spafit(&["bench", "--model", "/nonexistent/model"]);
    assert!(!ok && err.contains("/nonexistent/model"), "{err}");
}

#[test]
fn flags_a_method_does_not_read_are_refused() {
    for (method, flag, value, applies) in [
        ("bitfit", "--n1", Some("2"), "--method spafit"),
        ("lora", "--n2", Some("4"), "--method spafit"),
        (
            "full",
            "--lora-r",
            Some("4"),
            "--method lora, --method spafit",
        ),
        ("bitfit", "--lora-targets", Some("query"), "--method lora"),
        ("spafit", "--lora-layers", Some("1"), "--method lora"),
        ("full", "--train-pooler", None, "--method bitfit"),
    ] {
        let mut args = vec![
            "bench",
            "--model",
            "/nonexistent/model",
            "--method",
            method,
            flag,
        ];
        args.extend(value);
        let (ok, _, err) = spafit(&args);
        assert!(
            !ok && err.contains(flag)
                && err.contains(&format!("no effect with --method {method}"))
                && err.contains(applies),
            "{method} {flag}: {err}"
        );
    }
    // The same flags where the method reads them get past the check (to the missing model).
    for (method, flag, value) in [
        ("spafit", "--n1", "2"),
        ("lora", "--lora-layers", "1"),
        ("lora", "--lora-r", "4"),
    ] {
        let (ok, _, err) = spafit(&[
            "bench",
            "--model",
            "/nonexistent/model",
            "--method",
            method,
            flag,
            value,
        ]);
        assert!(
            !ok && err.contains("/nonexistent/model"),
            "{method} {flag}: {err}"
        );
    }
    let (ok, _, err) = spafit(&[
        "train",
        "--model",
        "/nonexistent/model",
        "--task",
        "sst2",
        "--glue-dir",
        "/tmp",
        "--text-column",
        "sentence",
        "--output",
        "/tmp/unused",
    ]);
    assert!(!ok && err.contains("--text-column"), "{err}");
    let (ok, _, err) = spafit(&[
        "eval",
        "--model",
        "/nonexistent/model",
        "--glue-dir",
        "/tmp",
        "--dev-file",
        "/tmp/x.csv",
        "--adapter",
        "/tmp/unused",
    ]);
    assert!(
        !ok && err.contains("--glue-dir") && err.contains("--task"),
        "{err}"
    );
}

/// An export whose model the base's config.json would build otherwise in transformers says
/// how to load it: the named arguments of one `from_pretrained` call (each kind checked
/// against PEFT 0.21.2 by hand: 0 to 5.6e-17 off spafit's probabilities by name). No names
/// there: two outputs, named LABEL_0 and LABEL_1; a regression without `problem_type`, which
/// pipelines read through a sigmoid; a head of its own of another size; and names the base
/// gives in another order are the export's own (it is written in that order), not given.
#[test]
fn an_export_the_bases_config_would_misbuild_says_how_to_load_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let rows = |labels: &[&str]| -> String {
        let rows: String = labels
            .iter()
            .enumerate()
            .map(|(i, label)| format!("text number {i},{label}\n"))
            .collect();
        format!("text,label\n{rows}")
    };
    write(
        root,
        "three.csv",
        &rows(&["alpha", "beta", "gamma", "alpha", "beta", "gamma"]),
    );
    write(root, "two.csv", &rows(&["neg", "pos", "neg", "pos"]));
    write(root, "ab.csv", &rows(&["a", "b", "a", "b"]));
    write(root, "scores.csv", &rows(&["0.5", "-1.25", "2.0", "0.25"]));
    // A base naming `b` and `a` in that order, fine-tuned as multi-label.
    let named = common::minilm_with_problem_type(&root.join("named"), "multi_label_classification");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(named.join("config.json")).unwrap()).unwrap();
    config["id2label"] = serde_json::json!({"0": "b", "1": "a"});
    config["label2id"] = serde_json::json!({"b": 0, "a": 1});
    std::fs::write(named.join("config.json"), config.to_string()).unwrap();
    let multi_label =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-multilabel/model");
    let (minilm, named, multi_label) = (
        model(),
        named.display().to_string(),
        multi_label.display().to_string(),
    );
    let id2label3 = r#"id2label={0: "alpha", 1: "beta", 2: "gamma"}, label2id={"alpha": 0, "beta": 1, "gamma": 2}"#;
    // Base, data, further flags, what the notes say, what they must not say.
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a [&'a str],
        &'a [&'a str],
        &'a [&'a str],
    );
    let cases: [Case; 5] = [
        (
            &minilm,
            "three.csv",
            &[],
            &[
                "it gives the model 2 outputs, where spafit trained 3",
                &format!("(BASE, num_labels=3, {id2label3})`"),
            ],
            &["ignore_mismatched_sizes"],
        ),
        (
            &minilm,
            "two.csv",
            &[],
            &[
                "it names no classes (transformers calls the outputs LABEL_0, LABEL_1, …)",
                r#"(BASE, num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})`"#,
            ],
            &[],
        ),
        (
            &minilm,
            "scores.csv",
            &["--regression"],
            &[
                "it sets no `problem_type`, so transformers' pipelines read a single output",
                r#"(BASE, problem_type="regression", num_labels=1)`"#,
            ],
            &["id2label"],
        ),
        (
            &named,
            "ab.csv",
            &["--labels", "a,b"],
            &[
                r#"the export's head follows the base's id2label order ["b", "a"]"#,
                r#"(BASE, problem_type="single_label_classification", num_labels=2)`"#,
            ],
            &["id2label="],
        ),
        (
            &multi_label,
            "three.csv",
            &["--max-len", "16", "--labels", "alpha,beta,gamma"],
            &[
                "its own head has 4 outputs, which ignore_mismatched_sizes replaces",
                &format!("num_labels=3, {id2label3}, ignore_mismatched_sizes=True)`"),
            ],
            &[],
        ),
    ];
    for (i, (base, data, extra, said, unsaid)) in cases.into_iter().enumerate() {
        let data = root.join(data).display().to_string();
        let (out, export) = (
            root.join(format!("run{i}")).display().to_string(),
            root.join(format!("export{i}")).display().to_string(),
        );
        let mut args = vec![
            "train",
            "--model",
            base,
            "--train-file",
            &data,
            "--method",
            "lora",
            "--max-steps",
            "1",
            "--batch-size",
            "4",
            "--output",
            &out,
            "--export-peft",
            &export,
            "--quiet",
        ];
        args.extend_from_slice(extra);
        let (ok, _, err) = spafit(&args);
        assert!(ok, "case {i}: {err}");
        // The run's locks went with it: the export is the PEFT folder alone.
        for dir in [&out, &export] {
            let lock = Path::new(dir).join(spafit::train::LOCK_FILE);
            assert!(!lock.exists(), "case {i}: {} stayed", lock.display());
        }
        for needle in said {
            assert!(err.contains(needle), "case {i}: no {needle:?} in {err}");
        }
        for needle in unsaid {
            assert!(!err.contains(needle), "case {i}: {needle:?} in {err}");
        }
    }
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

#[test]
fn train_eval_predict_on_glue_layout() {
    let glue = tempfile::tempdir().unwrap();
    let good = [
        "a gorgeous film",
        "witty and sharp",
        "a joy to watch",
        "moving and funny",
    ];
    let bad = [
        "dull and slow",
        "a tedious mess",
        "painfully boring",
        "lifeless and flat",
    ];
    let mut train = String::from("sentence\tlabel\n");
    for i in 0..24 {
        train += &format!("{}\t1\n{}\t0\n", good[i % 4], bad[i % 4]);
    }
    write(glue.path(), "SST-2/train.tsv", &train);
    write(
        glue.path(),
        "SST-2/dev.tsv",
        "sentence\tlabel\nwitty and moving\t1\nslow and tedious\t0\n",
    );
    write(
        glue.path(),
        "SST-2/test.tsv",
        "index\tsentence\n0\ta sharp joy\n1\tboring\n",
    );
    let out = tempfile::tempdir().unwrap();
    let g = glue.path().display().to_string();
    let o = out.path().display().to_string();
    let m = model();
    let (ok, stdout, err) = spafit(&[
        "train",
        "--model",
        &m,
        "--task",
        "sst2",
        "--glue-dir",
        &g,
        "--method",
        "bitfit",
        "--batch-size",
        "16",
        "--max-steps",
        "3",
        "--output",
        &o,
        "--quiet",
        "--export-peft",
        &format!("{o}/peft"),
    ]);
    // BitFit has no LoRA: the PEFT export is refused with a clear error, after training.
    assert!(!ok && err.contains("no LoRA adapter"), "{err}");
    assert!(stdout.is_empty());
    assert!(
        !out.path().join("metrics.jsonl").exists(),
        "refused before training, not after"
    );
    // Nor has SPAFIT with N2 at the depth, which its notice and refusal both say.
    let (ok, _, err) = spafit(&[
        "train",
        "--model",
        &m,
        "--task",
        "sst2",
        "--glue-dir",
        &g,
        "--n2",
        "6",
        "--output",
        &o,
        "--export-peft",
        &format!("{o}/peft"),
    ]);
    assert!(
        !ok && err.contains("leave this SPAFIT plan no LoRA + bias layer")
            && err.contains("N2 = 6 is the model's depth"),
        "{err}"
    );
    let (ok, stdout, err) = spafit(&[
        "train",
        "--model",
        &m,
        "--task",
        "sst2",
        "--glue-dir",
        &g,
        "--method",
        "spafit",
        "--batch-size",
        "16",
        "--max-steps",
        "3",
        "--max-len",
        "24",
        "--output",
        &o,
        "--quiet",
        "--export-peft",
        &format!("{o}/peft"),
    ]);
    assert!(ok, "{err}");
    let line = last_json(&stdout);
    assert_eq!(line["steps"], 3);
    assert!(line["dev_accuracy"].is_number() && line["dev_loss"].is_number());
    assert_eq!(line["max_len"], 24);
    let trained = line.clone();
    assert!(
        out.path().join("metrics.jsonl").is_file()
            && out.path().join("peft/adapter_config.json").is_file()
    );

    let adapter = format!("{o}/best");
    // `eval` of an adapter on the SST-2 dev split, with extra flags.
    let eval_sst2 = |adapter: &str, extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--model",
            &m,
            "--task",
            "sst2",
            "--glue-dir",
            &g,
            "--adapter",
            adapter,
        ];
        args.extend_from_slice(extra);
        spafit(&args)
    };
    let (ok, stdout, err) = eval_sst2(&adapter, &[]);
    assert!(ok, "{err}");
    let line = last_json(&stdout);
    assert_eq!(line["examples"], 2);
    // The adapter records the cut its training texts had (--max-len 24, not the default 64),
    // and eval reads the dev set the same way: train's dev numbers come back.
    assert_eq!(line["max_len"], 24, "{line}");
    assert_eq!(
        line["accuracy"], trained["dev_accuracy"],
        "{line} vs {trained}"
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{adapter}/adapter.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["max_len"], 24);
    // Another --max-len is the user's to give, with a note.
    let (ok, stdout, err) = eval_sst2(&adapter, &["--max-len", "16"]);
    assert!(ok, "{err}");
    assert_eq!(last_json(&stdout)["max_len"], 16);
    assert!(
        err.contains("--max-len 16: the adapter was trained on inputs cut to 24 tokens"),
        "{err}"
    );
    // The PEFT export carries the cut in spafit_export.json: read back the same way.
    let (ok, stdout, err) = eval_sst2(&format!("{o}/peft"), &[]);
    assert!(ok, "{err}");
    let peft_line = last_json(&stdout);
    assert_eq!(peft_line["max_len"], 24, "{peft_line}");
    assert_eq!(
        peft_line["accuracy"], trained["dev_accuracy"],
        "{peft_line}"
    );
    // An adapter that records no cut (saved before spafit recorded it) is read at 64, with a
    // note; a recorded cut the model cannot take is blamed on the adapter, not on a flag.
    let old = out.path().join("old");
    std::fs::create_dir(&old).unwrap();
    for f in ["adapter.json", "adapter.safetensors"] {
        std::fs::copy(out.path().join("best").join(f), old.join(f)).unwrap();
    }
    let manifest_text = std::fs::read_to_string(old.join("adapter.json")).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_str(&manifest_text).unwrap();
    manifest.as_object_mut().unwrap().remove("max_len");
    std::fs::write(old.join("adapter.json"), manifest.to_string()).unwrap();
    let old_dir = old.display().to_string();
    let eval_old = || eval_sst2(&old_dir, &[]);
    let (ok, stdout, err) = eval_old();
    assert!(ok, "{err}");
    assert_eq!(last_json(&stdout)["max_len"], 64);
    assert!(err.contains("does not record the length"), "{err}");
    manifest["max_len"] = serde_json::json!(1000);
    std::fs::write(old.join("adapter.json"), manifest.to_string()).unwrap();
    let (ok, _, err) = eval_old();
    assert!(
        !ok && err.contains("adapter")
            && err.contains("cut to 1000 tokens")
            && !err.contains("--max-len:"),
        "{err}"
    );
    manifest["max_len"] = serde_json::json!(0);
    std::fs::write(old.join("adapter.json"), manifest.to_string()).unwrap();
    let (ok, _, err) = eval_old();
    assert!(
        !ok && err.contains("adapter.json") && err.contains("`max_len` 0"),
        "{err}"
    );

    // The same adapter on data with other labels: refused, not silently mis-scored.
    write(glue.path(), "custom.tsv", "text\tlabel\nfine\tpos\n");
    let custom = glue.path().join("custom.tsv").display().to_string();
    let (ok, _, err) = spafit(&[
        "eval",
        "--model",
        &m,
        "--dev-file",
        &custom,
        "--labels",
        "neg,pos",
        "--adapter",
        &adapter,
    ]);
    assert!(!ok && err.contains("trained for labels"), "{err}");
    // Classes the head cannot take are said before any row is read: not as a row whose
    // label is not one of them.
    let (ok, _, err) = spafit(&[
        "eval",
        "--model",
        &m,
        "--dev-file",
        &custom,
        "--labels",
        "a,b,c",
        "--adapter",
        &adapter,
    ]);
    assert!(
        !ok && err.contains("trained for labels")
            && err.contains(r#"custom.tsv is read with labels ["a", "b", "c"]"#)
            && !err.contains("line 2"),
        "{err}"
    );

    let (ok, stdout, err) = spafit(&[
        "predict",
        "--model",
        &m,
        "--task",
        "sst2",
        "--glue-dir",
        &g,
        "--adapter",
        &adapter,
    ]);
    assert!(ok, "{err}");
    let preds: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    println!("PREDICT jsonl:\n{stdout}");
    assert_eq!(preds.len(), 2);
    for (i, p) in preds.iter().enumerate() {
        // Index in the split, line in the file (after the header), the label with its
        // probability, every class's probability (in class order, summing to 1).
        assert_eq!(p["index"], i);
        // The GLUE file's own `index` column, under its own name.
        assert_eq!(p["id"], i.to_string());
        assert_eq!(p["line"], i + 2);
        let probs = p["probabilities"].as_object().unwrap();
        assert_eq!(probs.keys().collect::<Vec<_>>(), ["0", "1"]);
        let sum: f64 = probs.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-12, "{p}");
        let label = p["label"].as_str().unwrap();
        assert_eq!(p["probability"], probs[label]);
        assert!(probs
            .values()
            .all(|v| v.as_f64().unwrap() <= p["probability"].as_f64().unwrap()));
    }
    // The same predictions as CSV and as GLUE's submission TSV, written to files.
    let predict_to = |file: &str, format: Option<&str>| -> String {
        let path = out.path().join(file);
        let mut args = vec![
            "predict",
            "--model",
            &m,
            "--task",
            "sst2",
            "--glue-dir",
            &g,
            "--adapter",
            &adapter,
            "--output",
            path.to_str().unwrap(),
        ];
        if let Some(f) = format {
            args.extend(["--format", f]);
        }
        let (ok, stdout, err) = spafit(&args);
        assert!(ok && stdout.is_empty(), "{err}");
        std::fs::read_to_string(path).unwrap()
    };
    let csv = predict_to("predictions.csv", None);
    println!("PREDICT csv:\n{csv}");
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(
        rows[0],
        [
            "index",
            "id",
            "line",
            "label",
            "probability",
            "probability_0",
            "probability_1"
        ]
    );
    for (i, p) in preds.iter().enumerate() {
        let row = &rows[i + 1];
        assert_eq!(row[1], p["id"].as_str().unwrap());
        assert_eq!(row[3], p["label"].as_str().unwrap());
        assert_eq!(
            row[4].parse::<f64>().unwrap(),
            p["probability"].as_f64().unwrap()
        );
        assert_eq!(
            row[6].parse::<f64>().unwrap(),
            p["probabilities"]["1"].as_f64().unwrap()
        );
    }
    let submission = predict_to("SST-2.out", Some("tsv"));
    println!("PREDICT glue tsv:\n{submission}");
    let expected: String = std::iter::once("index\tprediction\n".to_string())
        .chain(
            preds
                .iter()
                .map(|p| format!("{}\t{}\n", p["index"], p["label"].as_str().unwrap())),
        )
        .collect();
    assert_eq!(submission, expected);

    // A skipped test row would shift every later prediction in a submission, which GLUE
    // numbers by position: refused (JSON lines carry their file line instead).
    write(
        Path::new(&g),
        "SST-2/test.tsv",
        "index\tsentence\n0\tgood movie\n1\tbad\textra\n2\tfine\n",
    );
    let bad_row = out.path().join("skipped.tsv");
    let (ok, _, err) = spafit(&[
        "predict",
        "--model",
        &m,
        "--task",
        "sst2",
        "--glue-dir",
        &g,
        "--adapter",
        &adapter,
        "--skip-malformed",
        "--format",
        "tsv",
        "--output",
        bad_row.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("GLUE submission needs every test row") && !bad_row.exists(),
        "{err}"
    );

    // A submission names rows by the test file's own `index`, also in a cut or reordered
    // file.
    write(
        Path::new(&g),
        "SST-2/test.tsv",
        "index\tsentence\n12\tgood movie\n5\tbad\n\n40\tfine\n",
    );
    let (ok, stdout, err) = spafit(&[
        "predict",
        "--model",
        &m,
        "--task",
        "sst2",
        "--glue-dir",
        &g,
        "--adapter",
        &adapter,
        "--format",
        "tsv",
    ]);
    assert!(ok, "{err}");
    let ids: Vec<&str> = stdout
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(ids, ["index", "12", "5", "40"]);
    // The CSV keeps both: its position among the examples read, and the file's id.
    let (ok, stdout, err) = spafit(&[
        "predict",
        "--model",
        &m,
        "--task",
        "sst2",
        "--glue-dir",
        &g,
        "--adapter",
        &adapter,
        "--format",
        "csv",
    ]);
    assert!(ok, "{err}");
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split(',').take(2).collect())
        .collect();
    assert_eq!(
        rows,
        [["index", "id"], ["0", "12"], ["1", "5"], ["2", "40"]]
    );
}

/// An MNLI adapter trained on custom data records its classes as the training file gave them
/// (sorted); used on GLUE's MNLI and on AX (GLUE's diagnostic set), its head follows GLUE's
/// order by name, so every example keeps its probabilities per class. Outputs are kept off the
/// GLUE files.
#[test]
fn an_nli_adapter_follows_glue_class_order_on_mnli_and_ax() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let pairs = [
        (
            "A man is playing a guitar.",
            "A man plays music.",
            "entailment",
        ),
        (
            "A man is playing a guitar.",
            "A woman is sleeping.",
            "contradiction",
        ),
        ("A child runs in a park.", "The child is happy.", "neutral"),
        (
            "Two dogs chase a ball.",
            "Animals are playing.",
            "entailment",
        ),
        (
            "Two dogs chase a ball.",
            "The dogs are asleep.",
            "contradiction",
        ),
        ("A chef cooks pasta.", "The chef is famous.", "neutral"),
    ];
    let mut train = String::from("premise\thypothesis\tlabel\n");
    let mut dev = format!("{MNLI_COLUMNS}\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n");
    let mut ax = String::from("index\tsentence1\tsentence2\n");
    for (i, (a, b, label)) in pairs.iter().enumerate() {
        train += &format!("{a}\t{b}\t{label}\n");
        dev += &format!("{i}\t1\t1n\tfiction\t(a)\t(b)\t(A)\t(B)\t{a}\t{b}\t{label}\t{label}\t{label}\t{label}\t{label}\t{label}\n");
        ax += &format!("{i}\t{a}\t{b}\n");
    }
    write(root, "train.tsv", &train);
    write(root, "glue/MNLI/dev_matched.tsv", &dev);
    write(root, "glue/diagnostic/diagnostic.tsv", &ax);
    let (m, p) = (model(), |rel: &str| root.join(rel).display().to_string());
    let (ok, _, err) = spafit(&[
        "train",
        "--model",
        &m,
        "--train-file",
        &p("train.tsv"),
        "--text-column",
        "premise",
        "--text-pair-column",
        "hypothesis",
        "--method",
        "lora",
        "--max-steps",
        "2",
        "--batch-size",
        "3",
        "--max-len",
        "24",
        "--quiet",
        "--output",
        &p("out"),
    ]);
    assert!(ok, "{err}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("out/best/adapter.json")).unwrap())
            .unwrap();
    // The premise of this test: the adapter's order is not GLUE's.
    assert_eq!(
        manifest["labels"],
        serde_json::json!(["contradiction", "entailment", "neutral"])
    );
    let adapter = p("out/best");
    let try_predict = |args: &[&str]| {
        let mut all = vec![
            "predict",
            "--model",
            &m,
            "--adapter",
            &adapter,
            "--max-len",
            "24",
        ];
        all.extend_from_slice(args);
        spafit(&all)
    };
    let predict = |args: &[&str]| -> String {
        let (ok, stdout, err) = try_predict(args);
        assert!(ok, "{args:?}: {err}");
        stdout
    };
    let jsonl = |text: String| -> Vec<serde_json::Value> {
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let own = jsonl(predict(&[
        "--dev-file",
        &p("train.tsv"),
        "--text-column",
        "premise",
        "--text-pair-column",
        "hypothesis",
    ]));
    let glue = p("glue");
    let mnli = jsonl(predict(&[
        "--task",
        "mnli",
        "--glue-dir",
        &glue,
        "--split",
        "dev_matched",
    ]));
    assert_eq!((own.len(), mnli.len()), (6, 6));
    for (a, b) in own.iter().zip(&mnli) {
        assert_eq!(a["label"], b["label"], "{a} / {b}");
        let classes: Vec<&String> = b["probabilities"].as_object().unwrap().keys().collect();
        // (JSON objects list their keys sorted.)
        assert_eq!(classes, ["contradiction", "entailment", "neutral"]);
        for class in classes {
            let (x, y) = (
                a["probabilities"][class].as_f64().unwrap(),
                b["probabilities"][class].as_f64().unwrap(),
            );
            assert!((x - y).abs() <= 1e-12, "{class}: {x} vs {y}");
        }
    }
    // AX's submission file: index and label name, the MNLI predictions of the same pairs.
    let submission = predict(&["--task", "ax", "--glue-dir", &glue, "--format", "tsv"]);
    let mut lines = submission.lines();
    assert_eq!(lines.next(), Some("index\tprediction"));
    for (i, (line, b)) in lines.zip(&mnli).enumerate() {
        assert_eq!(line, format!("{i}\t{}", b["label"].as_str().unwrap()));
    }
    // A submission whose rows an id names twice, or not at all, would be scored against the
    // wrong rows: refused, naming the lines; the other formats carry the ids as they are.
    let kept_ax = ax.clone();
    let (a, b) = (pairs[0].0, pairs[0].1);
    for (rows, needle) in [
        (
            format!("0\t{a}\t{b}\n1\t{a}\t{b}\n0\t{a}\t{b}\n"),
            "line 4: id `0` was already given on line 2",
        ),
        (format!("0\t{a}\t{b}\n\t{a}\t{b}\n"), "line 3: the row's id"),
    ] {
        write(
            root,
            "glue/diagnostic/diagnostic.tsv",
            &format!("index\tsentence1\tsentence2\n{rows}"),
        );
        let (ok, _, err) = try_predict(&["--task", "ax", "--glue-dir", &glue, "--format", "tsv"]);
        assert!(
            !ok && err.contains("diagnostic.tsv") && err.contains(needle),
            "{err}"
        );
        assert_eq!(
            jsonl(predict(&["--task", "ax", "--glue-dir", &glue])).len(),
            rows.lines().count()
        );
    }
    write(root, "glue/diagnostic/diagnostic.tsv", &kept_ax);
    let (ok, _, err) = spafit(&["train", "--model", &m, "--task", "ax", "--glue-dir", &glue]);
    assert!(
        !ok && err.contains("only predicted, with an MNLI model"),
        "{err}"
    );

    // No output replaces a split file under --glue-dir, read by this command or not, of
    // this task or another.
    write(root, "glue/MNLI/dev_mismatched.tsv", &dev);
    for (task, split, target) in [
        ("ax", "test", "glue/diagnostic/diagnostic.tsv"),
        ("mnli", "dev_matched", "glue/MNLI/dev_mismatched.tsv"),
        ("mnli", "dev_matched", "glue/diagnostic/diagnostic.tsv"),
        // Missing now, read by the next run of its task all the same.
        ("mnli", "dev_matched", "glue/MNLI/test_mismatched.tsv"),
    ] {
        let before = std::fs::read(root.join(target)).ok();
        let (ok, _, err) = try_predict(&[
            "--task",
            task,
            "--split",
            split,
            "--glue-dir",
            &glue,
            "--output",
            &p(target),
        ]);
        assert!(
            !ok && err.contains("is an input of this command"),
            "{target}: {err}"
        );
        assert_eq!(std::fs::read(root.join(target)).ok(), before);
    }
}

const MNLI_COLUMNS: &str = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2";

/// A SIGTERM after an MNLI run's last step, while its PEFT export is written (writes slowed),
/// or while dev_mismatched is evaluated (10,000 pairs, as the real split: minutes on a
/// CPU, stopped at its next batch): the export and result.json are written whole, without dev_mismatched's evaluation,
/// stderr says which command gives it, and the command ends with the signal's status.
#[test]
fn a_signal_at_the_end_of_an_mnli_run_leaves_out_the_second_dev_set() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let header = format!("{MNLI_COLUMNS}\tlabel1\tgold_label\n");
    let pairs = [
        ("A man plays a guitar.", "A man plays music.", "entailment"),
        ("A man plays a guitar.", "A woman sleeps.", "contradiction"),
        ("A child runs in a park.", "The child is happy.", "neutral"),
        (
            "Two dogs chase a ball.",
            "The dogs are asleep.",
            "contradiction",
        ),
    ];
    let rows = |n: usize| {
        let mut text = header.clone();
        for i in 0..n {
            let (a, b, label) = pairs[i % pairs.len()];
            text +=
                &format!("{i}\t1\t1n\tfiction\t(a)\t(b)\t(A)\t(B)\t{a}\t{b}\t{label}\t{label}\n");
        }
        text
    };
    // `moment` holds for the export folder when the signal goes.
    type Moment = fn(&Path) -> bool;
    let exporting: Moment = |export| {
        std::fs::read_dir(export).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        })
    };
    // The export's last file is there: the second dev set's evaluation comes next.
    let exported: Moment = |export| export.join("spafit_export.json").is_file();
    // The run's dtype, which the command that gives the left-out evaluation repeats.
    for (name, slow_writes_ms, mismatched, moment, delay_ms, dtype) in [
        ("export", "600", 4, exporting, 0, "f32"),
        ("evaluation", "0", 10_000, exported, 300, "f64"),
    ] {
        let glue = root.join(name).join("glue");
        for (split, n) in [
            ("train", 4),
            ("dev_matched", 4),
            ("dev_mismatched", mismatched),
        ] {
            std::fs::create_dir_all(glue.join("MNLI")).unwrap();
            std::fs::write(glue.join(format!("MNLI/{split}.tsv")), rows(n)).unwrap();
        }
        let (out, export) = (
            root.join(name).join("run"),
            root.join(name).join("run.peft"),
        );
        let mut child = Command::new(env!("CARGO_BIN_EXE_spafit"))
            .args([
                "train",
                "--model",
                &model(),
                "--task",
                "mnli",
                "--method",
                "lora",
            ])
            .arg("--glue-dir")
            .arg(&glue)
            .args([
                "--max-len",
                "32",
                "--batch-size",
                "2",
                "--max-steps",
                "2",
                "--quiet",
            ])
            .args(["--eval-batch-size", "8", "--dtype", dtype])
            .arg("--output")
            .arg(&out)
            .arg("--export-peft")
            .arg(&export)
            .env("SPAFIT_SLOW_WRITES_MS", slow_writes_ms)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while !moment(&export) {
            assert!(
                child.try_wait().unwrap().is_none(),
                "{name}: the run ended first"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: the moment never came"
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        // SAFETY: kill(2) on our own child, which has not been waited for yet.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(128 + libc::SIGTERM),
            "{name}: {:?}: {err}",
            o.status.signal()
        );
        assert!(
            err.contains("the run is over: finishing its results")
                && !err.contains("stopping after this step"),
            "{name}: {err}"
        );
        let command = format!(
            "`spafit eval --model {} --task mnli --glue-dir {} --split dev_mismatched{} --adapter {}`",
            model(),
            glue.display(),
            match dtype {
                "f32" => String::new(),
                other => format!(" --dtype {other}"),
            },
            out.join("best").display()
        );
        assert!(
            err.contains("without dev_mismatched's evaluation") && err.contains(&command),
            "{name}: {err}"
        );
        let result: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap())
                .unwrap();
        assert!(result["dev_accuracy"].is_number(), "{result}");
        assert!(result.get("dev_mismatched_accuracy").is_none(), "{result}");
        for file in ["adapter_config.json", "adapter_model.safetensors"] {
            assert!(export.join(file).is_file(), "{name}: {file}: {err}");
        }
    }
}

/// An MNLI run whose second dev set (longer texts, larger batches) does not fit the device
/// after training: the command fails with the split, its batch and the `spafit eval` command
/// that gives it (from `best/`, or from the PEFT export without --output), and result.json is
/// written all the same, without that split. The device's
/// memory is the most under which the run fails, found by bisection on the stand-in.
#[test]
fn an_mnli_run_out_of_memory_on_its_second_dev_set_keeps_its_results() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("tiny");
    common::tiny_bert::write_checkpoint(&tiny);
    let m = tiny.display().to_string();
    let glue = dir.path().join("glue");
    std::fs::create_dir_all(glue.join("MNLI")).unwrap();
    let header = format!("{MNLI_COLUMNS}\tlabel1\tgold_label\n");
    let labels = ["entailment", "neutral", "contradiction"];
    let rows = |n: usize, words: usize| {
        let mut text = header.clone();
        for i in 0..n {
            let sentence: Vec<&str> = (0..words)
                .map(|j| ["a", "man", "plays", "music", "dog", "park"][(i + j) % 6])
                .collect();
            let s = sentence.join(" ");
            let label = labels[i % 3];
            text +=
                &format!("{i}\t1\t1n\tfiction\t(a)\t(b)\t(A)\t(B)\t{s}\t{s}\t{label}\t{label}\n");
        }
        text
    };
    for (split, n, words) in [
        ("train", 4, 3),
        ("dev_matched", 4, 3),
        ("dev_mismatched", 16, 40),
    ] {
        std::fs::write(glue.join(format!("MNLI/{split}.tsv")), rows(n, words)).unwrap();
    }
    let out = dir.path().join("run");
    let (g, o) = (glue.display().to_string(), out.display().to_string());
    let args = [
        "train",
        "--device",
        "cuda-emu",
        "--model",
        &m,
        "--task",
        "mnli",
        "--glue-dir",
        &g,
        "--method",
        "lora",
        "--max-len",
        "64",
        "--batch-size",
        "2",
        "--eval-batch-size",
        "16",
        "--max-steps",
        "2",
        "--quiet",
        "--output",
        &o,
    ];
    let run = |bytes: u64| {
        // Each try starts over: a finished run in the folder would only be reported.
        let _ = std::fs::remove_dir_all(&out);
        let bytes = std::ffi::OsString::from(bytes.to_string());
        spafit_with_env(&args, &[("SPAFIT_EMU_MEMORY", &bytes)])
    };
    let (fails, stdout, err) = most_memory_that_fails("train", run, 1024);
    let command = format!(
        "`spafit eval --model {m} --task mnli --glue-dir {g} --split dev_mismatched --device \
         cuda-emu --adapter {} --batch-size 8` gives it",
        out.join("best").display()
    );
    assert!(
        err.contains("out of memory")
            && err.contains(&format!(
                "This was the evaluation on dev_mismatched after the last step, in batches of \
                 up to 16 examples: the run's results are written to {} without it (a --resume \
                 reports them as they are); the trained adapter is saved: ",
                out.join("result.json").display()
            ))
            && err.contains(&command),
        "{err}"
    );
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
    assert!(
        result["steps"] == 2 && result["dev_accuracy"].is_number(),
        "{result}"
    );
    assert!(result.get("dev_mismatched_accuracy").is_none(), "{result}");
    // What stdout says is what the file holds.
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(stdout.trim()).unwrap(),
        result
    );
    // The command named gives the evaluation on the same device.
    let adapter = out.join("best").display().to_string();
    let bytes = std::ffi::OsString::from(fails.to_string());
    let eval = [
        "eval",
        "--model",
        &m,
        "--task",
        "mnli",
        "--glue-dir",
        &g,
        "--split",
        "dev_mismatched",
        "--device",
        "cuda-emu",
        "--adapter",
        &adapter,
        "--batch-size",
        "8",
    ];
    let (ok, stdout, err) = spafit_with_env(&eval, &[("SPAFIT_EMU_MEMORY", &bytes)]);
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_default();
    assert!(ok && line["accuracy"].is_number(), "{stdout}{err}");

    // Without --output the results are printed only, and the command reads the PEFT export.
    let export = dir.path().join("export").display().to_string();
    let mut exported = args[..args.len() - 2].to_vec();
    exported.extend(["--export-peft", &export]);
    let (ok, stdout, err) = spafit_with_env(&exported, &[("SPAFIT_EMU_MEMORY", &bytes)]);
    assert!(!ok, "passed with {fails} bytes");
    assert!(
        err.contains(
            "the run's results are printed without it; the trained adapter is saved: `spafit \
             eval"
        ) && err.contains(&format!("--adapter {export} --batch-size 8` gives it")),
        "{err}"
    );
    let printed: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(printed["dev_accuracy"].is_number(), "{printed}");
    let mut eval = eval.to_vec();
    eval[12] = &export;
    let (ok, stdout, err) = spafit_with_env(&eval, &[("SPAFIT_EMU_MEMORY", &bytes)]);
    assert!(ok, "{stdout}{err}");
}

/// Gradients far below the loss's size are judged against the finite differences' rounding:
/// with the pooler's weights scaled by 1e-7 the encoder's gradients are ~1e-9, right, and
/// agree (error 0) with a note of how little the check could see there; scaled by 1e-13 they
/// are below that rounding, listed as unresolved and warned of. Either way a tolerance of
/// 1e-4 gets no pass but an inconclusive verdict (exit status 3), since the check could not
/// see errors that small. The pooler's own gradient stays resolved.
#[test]
fn gradcheck_judges_small_gradients_against_the_rounding_of_the_loss() {
    use common::family_fixture::{read_tensors, write_tensors};
    let dir = tempfile::tempdir().unwrap();
    for (scale, resolved) in [(1e-7, true), (1e-13, false)] {
        let tiny = dir.path().join(format!("pooler-{scale:e}"));
        common::tiny_bert::write_checkpoint(&tiny);
        let weights = tiny.join("model.safetensors");
        let mut tensors = read_tensors(&weights);
        for (name, _, _, values) in &mut tensors {
            if name == "bert.pooler.dense.weight" {
                values.iter_mut().for_each(|v| *v *= scale);
            }
        }
        write_tensors(&weights, &tensors);
        let m = tiny.display().to_string();
        let check = ["gradcheck", "--model", &m, "--method", "bitfit"];
        let (ok, stdout, err) = spafit(&check);
        assert!(ok, "{scale:e}: {err}");
        let line = last_json(&stdout);
        assert_eq!(line["max_rel_err"].as_f64(), Some(0.0), "{line}");
        assert!(line["worst_tensor"].is_null(), "{line}");
        let unresolved: Vec<&str> = line["unresolved"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        let resolution = line["resolution"].as_f64().unwrap();
        let verdict_detail = if resolved {
            assert!(unresolved.is_empty(), "{line}");
            assert!(resolution > 1e-4 && resolution < 1.0, "{line}");
            let least = line["least_resolved_tensor"].as_str().unwrap();
            assert!(
                least.starts_with("bert.encoder.") && err.contains(least),
                "{err}"
            );
            assert!(!err.contains("warning:"), "{err}");
            "only relative errors above"
        } else {
            assert!(
                unresolved.len() > 4 && unresolved.iter().all(|n| n.starts_with("bert.encoder.")),
                "{line}"
            );
            assert!(
                err.contains("cannot tell from zero") && err.contains(unresolved[0]),
                "{err}"
            );
            // The pooler and the head are what is left to resolve.
            assert!(resolution < 1e-4, "{line}");
            "cannot tell from zero"
        };
        let out = Command::new(env!("CARGO_BIN_EXE_spafit"))
            .args(check)
            .args(["--tolerance", "1e-4"])
            .output()
            .unwrap();
        let (stdout, err) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(3), "{scale:e}: {err}");
        let line = last_json(&stdout);
        assert_eq!(
            (&line["passed"], &line["inconclusive"]),
            (&false.into(), &true.into())
        );
        assert!(
            err.contains("inconclusive at the tolerance 1e-4") && err.contains(verdict_detail),
            "{err}"
        );
    }
}

/// A check of many coordinates says what it will do and shows each tensor as it starts;
/// a short one says nothing before its result.
#[test]
fn a_long_gradcheck_shows_its_progress() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("tiny");
    common::tiny_bert::write_checkpoint(&tiny);
    let m = tiny.display().to_string();
    // Full fine-tuning: the 30522 × 15 word embeddings alone give 1200 coordinates.
    let (ok, stdout, err) = spafit(&[
        "gradcheck",
        "--model",
        &m,
        "--method",
        "full",
        "--samples",
        "1200",
    ]);
    assert!(ok, "{err}");
    let line = last_json(&stdout);
    let (coordinates, tensors) = (
        line["coordinates"].as_u64().unwrap(),
        line["tensors"].as_u64().unwrap(),
    );
    assert!(coordinates > 1200, "{line}");
    assert!(
        err.contains(&format!(
            "checking {coordinates} coordinates of {tensors} tensors"
        )),
        "{err}"
    );
    let progress: Vec<&str> = err.lines().filter(|l| l.starts_with("tensor ")).collect();
    assert_eq!(progress.len() as u64, tensors, "{err}");
    assert!(
        progress[0].starts_with(&format!("tensor 1/{tensors}: ")),
        "{err}"
    );
    assert!(
        progress
            .iter()
            .any(|l| l.contains("word_embeddings") && l.contains("(1200 coordinates)")),
        "{err}"
    );
    // From the second tensor on, the pace so far estimates the time left.
    assert!(!progress[0].contains(" left"), "{err}");
    assert!(
        progress[1..]
            .iter()
            .all(|l| l.contains("coordinates), about ")
                && (l.ends_with(" s left") || l.ends_with(" min left") || l.ends_with(" h left"))),
        "{err}"
    );
    let (ok, _, err) = spafit(&[
        "gradcheck",
        "--model",
        &m,
        "--method",
        "bitfit",
        "--samples",
        "1",
    ]);
    assert!(ok, "{err}");
    assert!(!err.contains("tensor 1/"), "{err}");
}

#[test]
fn gradcheck_and_bench_print_json() {
    let m = model();
    // A short SPAFIT plan (biases in layer 4, LoRA + biases in layer 5) keeps the f64
    // differences few at the test profile's speed.
    let (ok, stdout, err) = spafit(&[
        "gradcheck",
        "--model",
        &m,
        "--method",
        "spafit",
        "--n1",
        "4",
        "--n2",
        "5",
        "--samples",
        "1",
        "--tolerance",
        "1e-4",
    ]);
    assert!(ok, "{err}");
    let line = last_json(&stdout);
    let worst = line["max_rel_err"].as_f64().unwrap();
    println!("GRADCHECK spafit: {line}");
    // The f64 backend against f64 differences: agreement far below f32's rounding.
    assert!(worst < 1e-6, "{line}");
    assert!(line["tensors"].as_u64().unwrap() >= 20, "{line}");
    assert_eq!(line["device"], "cpu-f64");
    // Layers 4 and 5 train their biases: two key biases, exactly zero, are listed.
    let skipped = line["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 2, "{line}");
    assert!(skipped
        .iter()
        .all(|n| n.as_str().unwrap().ends_with("attention.self.key.bias")));
    // ... and judged against their layer's query bias: f64 rounding.
    let key_bias = line["key_bias_err"].as_f64().unwrap();
    assert!(key_bias < 1e-12, "{line}");
    assert_eq!(line["passed"], true, "{line}");
    // The line says what was checked: the plan, the seed and the samples.
    assert_eq!(
        (&line["n1"], &line["n2"], &line["lora"]["r"], &line["seed"]),
        (
            &serde_json::json!(4),
            &serde_json::json!(5),
            &serde_json::json!(8),
            &serde_json::json!(0)
        ),
        "{line}"
    );
    assert_eq!(
        (
            &line["samples"],
            &line["train_pooler"],
            &line["lora"]["dropout"]
        ),
        (
            &serde_json::json!(1),
            &serde_json::json!(false),
            &serde_json::json!(0.1)
        ),
        "{line}"
    );
    // A plan whose boundaries leave no layer training says so, as bench and train do.
    let (ok, _, err) = spafit(&[
        "gradcheck",
        "--model",
        &m,
        "--method",
        "spafit",
        "--n1",
        "1.0",
        "--n2",
        "1.0",
        "--samples",
        "1",
    ]);
    assert!(
        ok && err.contains("N1 = 6 (1.0 of 6 layers) and N2 = 6 (1.0 of 6 layers) leave")
            && err.contains("no layer that trains"),
        "{err}"
    );
    // Asked for, the f32 CPU backend is what gets checked, and its rounding is above a
    // tolerance of 1e-12: the JSON line still comes, then exit status 3 (a check that ran
    // and failed, not an error) and a message naming the tensor.
    let out = Command::new(env!("CARGO_BIN_EXE_spafit"))
        .args(["gradcheck", "--model", &m, "--method", "lora"])
        .args([
            "--lora-layers",
            "5",
            "--lora-targets",
            "value",
            "--samples",
            "1",
        ])
        .args(["--dtype", "f32", "--tolerance", "1e-12"])
        .output()
        .unwrap();
    let (stdout, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(3), "{err}");
    let line = last_json(&stdout);
    assert_eq!(line["device"], "cpu-f32", "{line}");
    let worst = line["max_rel_err"].as_f64().unwrap();
    assert!(worst > 1e-9 && worst < 5e-2, "{line}");
    assert_eq!(line["passed"], false, "{line}");
    let tensor = line["worst_tensor"].as_str().unwrap();
    assert!(
        err.contains("is above the tolerance 1e-12") && err.contains(tensor),
        "{err}"
    );
    // A usage error (status 2, as clap's own), told before the check runs.
    let tolerances = ["0", "-1e-3", "nan", "inf", "1e-4x"].map(|t| ("gradcheck", "--tolerance", t));
    for (command, flag, bad) in tolerances.into_iter().chain([
        ("bench", "--lora-alpha", "nan"),
        ("bench", "--lora-dropout", "nan"),
        ("bench", "--lora-r", "0"),
        ("bench", "--n1", "1.5"),
        ("bench", "--n2", "1/0"),
        ("bench", "--shape", "huge"),
        ("gradcheck", "--num-labels", "0"),
        ("gradcheck", "--num-labels", "4097"),
        ("train", "--lr", "nan"),
        ("train", "--lr", "-1e-3"),
        ("train", "--weight-decay", "-1"),
        ("train", "--warmup-ratio", "2"),
        ("train", "--max-grad-norm", "nan"),
        ("train", "--max-len", "0"),
        ("eval", "--threshold", "1"),
    ]) {
        // The model named does not exist: the value is refused before anything loads.
        let out = Command::new(env!("CARGO_BIN_EXE_spafit"))
            .args([command, "--model", "/nonexistent/model", flag, bad])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(2) && err.contains(flag),
            "{command} {flag} {bad}: {:?} {err}",
            out.status
        );
    }

    // Flags the command line itself rules out (one the method never reads, one that needs
    // another) are usage errors too: status 2, before anything is read — the model, the
    // data and the adapter named here do not exist.
    let nowhere = ["--model", "/nonexistent/model"];
    let custom = ["--train-file", "/nonexistent/train.csv"];
    for (args, needle) in [
        (&["train", "--method", "bitfit", "--n1", "1"][..], "--n1"),
        (
            &["train", "--method", "full", "--lora-r", "4"][..],
            "--lora-r",
        ),
        (
            &["train", "--method", "spafit", "--lora-layers", "1"][..],
            "--lora-layers",
        ),
        (&["train", "--save-every", "2"][..], "--save-every"),
        (&["train", "--resume"][..], "--resume"),
        (&["train", "--eval-every", "2"][..], "--eval-every"),
        (
            &["train", "--early-stopping-patience", "2"][..],
            "--early-stopping-patience",
        ),
        (&["train", "--best-metric", "loss"][..], "--best-metric"),
        (
            &["train", "--eval-batch-size", "8"][..],
            "--eval-batch-size",
        ),
        (
            &[
                "train",
                "--method",
                "bitfit",
                "--export-peft",
                "/nonexistent/peft",
            ][..],
            "--export-peft",
        ),
        (&["gradcheck", "--num-labels", "1"][..], "--num-labels"),
        (
            &["bench", "--batch-size", "4", "--micro-batch-size", "8"][..],
            "--micro-batch-size",
        ),
        (&["bench", "--kernel-times"][..], "--kernel-times"),
        (
            &[
                "eval",
                "--split",
                "valid",
                "--dev-file",
                "/nonexistent/dev.csv",
            ][..],
            "--split",
        ),
        (
            &[
                "predict",
                "--split",
                "valid",
                "--dev-file",
                "/nonexistent/dev.csv",
            ][..],
            "--split",
        ),
        (
            &[
                "merge",
                "--adapter",
                "/nonexistent/a",
                "--output",
                "/nonexistent/o",
                "--dtype",
                "int8",
            ][..],
            "--dtype",
        ),
        (
            &["demo", "--method", "full", "--lora-r", "4"][..],
            "--lora-r",
        ),
        (
            &[
                "demo",
                "--method",
                "bitfit",
                "--export-peft",
                "/nonexistent/peft",
            ][..],
            "--export-peft",
        ),
    ] {
        let mut all = args.to_vec();
        all.extend_from_slice(&nowhere);
        if args[0] == "train" {
            all.extend_from_slice(&custom);
        }
        let out = Command::new(env!("CARGO_BIN_EXE_spafit"))
            .args(&all)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(2) && err.contains(needle) && !err.contains("nonexistent"),
            "{args:?}: {:?} {err}",
            out.status
        );
    }
    // With a dev set the dev-set flags pass this stage, and the missing files are what stop it.
    let out = Command::new(env!("CARGO_BIN_EXE_spafit"))
        .args([
            "train",
            "--eval-every",
            "2",
            "--dev-file",
            "/nonexistent/dev.csv",
        ])
        .args(nowhere)
        .args(custom)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1) && err.contains("nonexistent"),
        "{:?} {err}",
        out.status
    );

    // Flags bench would ignore are refused, naming them.
    for (args, needle) in [
        (&["--max-len", "32"][..], "--max-len"),
        (&["--shape", "base", "--model", m.as_str()][..], "--shape"),
        (
            &["--lora-targets", "query,value, query", "--method", "lora"][..],
            "`query` is named twice",
        ),
        (
            &["--lora-targets", "value,v_lin", "--method", "lora"][..],
            "`value` and `v_lin` name the same map (attention.self.value)",
        ),
    ] {
        let mut all = vec!["bench", "--steps", "1", "--warmup", "0"];
        all.extend_from_slice(args);
        let (ok, _, err) = spafit(&all);
        assert!(!ok && err.contains(needle), "{args:?}: {err}");
    }
    // ... and a refused flag is not offered in the help.
    let (ok, help, err) = spafit(&["bench", "--help"]);
    assert!(ok && help.contains("--seq-len"), "{err}");
    assert!(!help.contains("--max-len"), "{help}");

    let (ok, stdout, err) = spafit(&[
        "bench",
        "--model",
        &m,
        "--method",
        "bitfit",
        "--batch-size",
        "4",
        "--seq-len",
        "16",
        "--steps",
        "2",
        "--warmup",
        "1",
    ]);
    assert!(ok, "{err}");
    let line = last_json(&stdout);
    for key in [
        "ms_per_step",
        "samples_per_s",
        "tokens_per_s",
        "trainable_params",
    ] {
        assert!(line[key].is_number(), "bench JSON lacks {key}: {line}");
    }
    assert_eq!(line["trainable_params"], 26114);
    assert_eq!(
        (
            &line["train_pooler"],
            &line["train_layer_norm"],
            &line["lora"]
        ),
        (
            &serde_json::json!(false),
            &serde_json::json!(false),
            &serde_json::Value::Null
        ),
        "{line}"
    );
    assert_eq!(line["micro_batch"], 4);
    assert_eq!(line["warmup"], 1);
    assert!(line["host_threads"].as_u64().unwrap() >= 1, "{line}");
    // The steps' peak, not loading's: reading and converting MiniLM's checkpoint takes more
    // resident memory than a step of 4 × 16 tokens, which once reported that instead. (glibc
    // gives the loader's large buffers back; a sandbox may not let the peak be reset, and then
    // the steps' peak is unknown, not the process's.)
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let process = line["process_peak_mem_mib"].as_f64().unwrap();
        let resettable = std::fs::OpenOptions::new()
            .write(true)
            .open("/proc/self/clear_refs")
            .is_ok();
        match resettable {
            true => assert!(line["peak_mem_mib"].as_f64().unwrap() < process, "{line}"),
            false => assert!(line["peak_mem_mib"].is_null(), "{line}"),
        }
        // Before the steps the model's 87 MiB of f32 weights are resident, and the steps
        // can only add to that.
        let before = line["resident_before_steps_mib"].as_f64().unwrap();
        assert!(before > 87.0, "{line}");
        if resettable {
            assert!(before <= line["peak_mem_mib"].as_f64().unwrap(), "{line}");
        }
    }
    // SPAFIT's boundaries as resolved (a quarter of 6 layers rounds up to 2), and where the
    // adapters went.
    let (ok, stdout, err) = spafit(&[
        "bench",
        "--model",
        &m,
        "--n1",
        "1/4",
        "--batch-size",
        "2",
        "--seq-len",
        "8",
        "--steps",
        "1",
        "--warmup",
        "0",
    ]);
    assert!(ok, "{err}");
    let spafit_line = last_json(&stdout);
    assert_eq!(
        (&spafit_line["n1"], &spafit_line["n2"]),
        (&2.into(), &4.into())
    );
    assert_eq!(spafit_line["lora"]["layers"], serde_json::json!([4, 5]));
    assert_eq!(spafit_line["lora"]["r"], 8);
    // In micro-batches of 2 a step keeps half the activations for its backward.
    let whole = line["saved_activation_bytes"].as_u64().unwrap();
    let micro = |size: &str| {
        spafit(&[
            "bench",
            "--model",
            &m,
            "--method",
            "bitfit",
            "--batch-size",
            "4",
            "--seq-len",
            "16",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--micro-batch-size",
            size,
        ])
    };
    let (ok, stdout, err) = micro("2");
    assert!(ok, "{err}");
    let line = last_json(&stdout);
    assert_eq!(line["micro_batch"], 2);
    assert_eq!(
        line["saved_activation_bytes"].as_u64().unwrap() * 2,
        whole,
        "{line}"
    );
    let (ok, _, err) = micro("5");
    assert!(
        !ok && err.contains("--micro-batch-size") && err.contains("batch of 4"),
        "{err}"
    );

    // The random shapes are Google's: full fine-tuning trains every tensor of BERT-tiny,
    // BERT-mini and ELECTRA-small, counted here from the architecture (30522 uncased ids, 512
    // positions, 2 segments, FFN 4 × hidden, pooler or head's dense map, two-class head;
    // ELECTRA-small's tables 128 wide and their projection to 256).
    // (--shape is read without regard to case, as --method is.)
    for (given, shape, hidden, layers, width) in [
        ("tiny", "tiny", 128u64, 2u64, 128u64),
        ("MINI", "mini", 256, 4, 256),
        ("electra-small", "electra-small", 256, 12, 128),
    ] {
        let (ok, stdout, err) = spafit(&[
            "bench",
            "--shape",
            given,
            "--method",
            "full",
            "--batch-size",
            "2",
            "--seq-len",
            "8",
            "--steps",
            "1",
            "--warmup",
            "0",
        ]);
        assert!(ok, "{shape}: {err}");
        let line = last_json(&stdout);
        let (h, i) = (hidden, 4 * hidden);
        let projection = if width == h { 0 } else { width * h + h };
        let embeddings = (30522 + 512 + 2) * width + 2 * width + projection;
        let layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h;
        let expected = embeddings + layers * layer + (h * h + h) + (2 * h + 2);
        assert_eq!(line["trainable_params"], expected, "{shape}: {line}");
        let name = match shape.strip_prefix("electra-") {
            Some(size) => format!("random ELECTRA-{size}"),
            None => format!("random BERT-{shape}"),
        };
        assert_eq!(line["model"], name, "{line}");
    }
    // A drawn ELECTRA trains what `train` trains on an ELECTRA checkpoint: the head's dense
    // map (BERT's pooler) with the head under every method, where BERT's stays frozen under
    // BitFit; `--train-pooler`, which could add nothing there, is refused as by `train`.
    for (shape, hidden, layers, dense_map_trains) in [
        ("electra-small", 256u64, 12u64, true),
        ("mini", 256, 4, false),
    ] {
        let bitfit = |extra: &[&str]| {
            let mut args = vec![
                "bench",
                "--shape",
                shape,
                "--method",
                "bitfit",
                "--batch-size",
                "1",
                "--seq-len",
                "4",
                "--steps",
                "1",
                "--warmup",
                "0",
            ];
            args.extend(extra);
            spafit(&args)
        };
        let (ok, stdout, err) = bitfit(&[]);
        assert!(ok, "{shape}: {err}");
        let (h, i) = (hidden, 4 * hidden);
        // Each layer's biases: four attention maps, the FFN's two, both LayerNorms'.
        let layer_biases = 4 * h + i + h + 2 * h;
        let dense_map = if dense_map_trains { h * h + h } else { 0 };
        let expected = layers * layer_biases + dense_map + (2 * h + 2);
        assert_eq!(last_json(&stdout)["trainable_params"], expected, "{shape}");
        let (ok, _, err) = bitfit(&["--train-pooler"]);
        match dense_map_trains {
            true => assert!(
                !ok && err.contains("--train-pooler") && err.contains("classifier.dense"),
                "{shape}: {err}"
            ),
            false => assert!(ok, "{shape}: {err}"),
        }
    }
    // bf16 halves the frozen weights in memory, and the steps' peak shows it: BitFit on
    // BERT-base freezes its 85 M linear weights, 163 MiB fewer in bf16 (the f32 ones the
    // narrowing freed stayed resident once, for the whole command: 28 MiB fewer).
    let peak_of = |dtype: &str| {
        let (ok, stdout, err) = spafit(&[
            "bench",
            "--shape",
            "base",
            "--method",
            "bitfit",
            "--batch-size",
            "1",
            "--seq-len",
            "8",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--dtype",
            dtype,
        ]);
        assert!(ok, "{dtype}: {err}");
        let line = last_json(&stdout);
        line["peak_mem_mib"]
            .as_f64()
            .unwrap_or_else(|| panic!("{line}"))
    };
    let (f32_peak, bf16_peak) = (peak_of("f32"), peak_of("bf16"));
    let frozen_mib = 12.0 * (4.0 * 768.0 * 768.0 + 2.0 * 768.0 * 3072.0) * 2.0 / (1 << 20) as f64;
    assert!(
        f32_peak - bf16_peak > 0.7 * frozen_mib,
        "f32 {f32_peak} MiB, bf16 {bf16_peak} MiB: less than 70% of {frozen_mib} MiB saved"
    );
    // SPAFIT's default thirds on BERT-tiny's 2 layers leave no bias-only layer: said, as
    // with a checkpoint, and the boundaries are in the line.
    let (ok, stdout, err) = spafit(&[
        "bench",
        "--shape",
        "tiny",
        "--batch-size",
        "1",
        "--seq-len",
        "4",
        "--steps",
        "1",
        "--warmup",
        "0",
    ]);
    assert!(ok && err.contains("no bias-only layer"), "{err}");
    let line = last_json(&stdout);
    assert_eq!((&line["n1"], &line["n2"]), (&1.into(), &1.into()), "{line}");
    let (ok, _, err) = spafit(&["bench", "--shape", "huge", "--steps", "1"]);
    assert!(
        !ok && err.contains("expected tiny, mini, base, large, electra-small"),
        "{err}"
    );

    // A result that cannot be written (a full disk, a closed pipe) is an error naming stdout,
    // and a stderr that cannot take notes does not stop the command: neither panics.
    let bench = [
        "bench",
        "--model",
        &m,
        "--batch-size",
        "2",
        "--seq-len",
        "8",
        "--steps",
        "1",
        "--warmup",
        "0",
    ];
    let full = || std::fs::OpenOptions::new().write(true).open("/dev/full");
    if let Ok(dev_full) = full() {
        let out = Command::new(env!("CARGO_BIN_EXE_spafit"))
            .args(bench)
            .stdout(dev_full)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("spafit: <stdout>") && !err.contains("panicked"),
            "{err}"
        );
        // gradcheck says what it checked on stderr before its JSON line.
        let out = Command::new(env!("CARGO_BIN_EXE_spafit"))
            .args([
                "gradcheck",
                "--model",
                &m,
                "--method",
                "lora",
                "--lora-layers",
                "5",
                "--samples",
                "1",
            ])
            .stderr(full().unwrap())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        assert!(last_json(&String::from_utf8_lossy(&out.stdout))["max_rel_err"].is_number());
    }
}

#[test]
fn mnli_reports_both_dev_sets() {
    let glue = tempfile::tempdir().unwrap();
    let head = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2";
    let row = |i: usize, a: &str, b: &str, labels: &str| {
        format!("{i}\t1\t1n\tfiction\t(a)\t(b)\t(A)\t(B)\t{a}\t{b}\t{labels}\n")
    };
    let mut train = format!("{head}\tlabel1\tgold_label\n");
    for i in 0..8 {
        train += &row(
            i,
            "A man plays a guitar.",
            "A person makes music.",
            "entailment\tentailment",
        );
        train += &row(
            i,
            "A man plays a guitar.",
            "Nobody is playing.",
            "contradiction\tcontradiction",
        );
    }
    let dev_head = format!("{head}\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n");
    let five = |l: &str| [l; 6].join("\t");
    write(glue.path(), "MNLI/train.tsv", &train);
    write(
        glue.path(),
        "MNLI/dev_matched.tsv",
        &(dev_head.clone() + &row(0, "Kids run.", "Children move.", &five("entailment"))),
    );
    write(
        glue.path(),
        "MNLI/dev_mismatched.tsv",
        &(dev_head
            + &row(0, "It rains.", "It is dry.", &five("contradiction"))
            + &row(1, "Cats nap.", "Animals sleep.", &five("neutral"))),
    );
    let out = tempfile::tempdir().unwrap();
    let (g, o, m) = (
        glue.path().display().to_string(),
        out.path().display().to_string(),
        model(),
    );
    let (ok, stdout, err) = spafit(&[
        "train",
        "--model",
        &m,
        "--task",
        "mnli",
        "--glue-dir",
        &g,
        "--method",
        "bitfit",
        "--batch-size",
        "8",
        "--max-steps",
        "1",
        "--output",
        &o,
        "--quiet",
    ]);
    assert!(ok, "{err}");
    let line = last_json(&stdout);
    assert!(
        line["dev_accuracy"].is_number() && line["dev_mismatched_accuracy"].is_number(),
        "{line}"
    );
    // The line is kept with the run: the mismatched split's metrics are nowhere else.
    let kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("result.json")).unwrap())
            .unwrap();
    assert_eq!(kept, line);
    // eval defaults to MNLI's first dev split (there is no plain `dev`).
    let (ok, stdout, err) = spafit(&[
        "eval",
        "--model",
        &m,
        "--task",
        "mnli",
        "--glue-dir",
        &g,
        "--adapter",
        &format!("{o}/best"),
    ]);
    assert!(ok, "{err}");
    let split = last_json(&stdout)["split"].as_str().unwrap().to_string();
    assert!(split.ends_with("MNLI/dev_matched.tsv"), "{split}");
    // The mismatched split's loss in the run's line is the one `eval` reports for it.
    let (ok, stdout, err) = spafit(&[
        "eval",
        "--model",
        &m,
        "--task",
        "mnli",
        "--glue-dir",
        &g,
        "--split",
        "dev_mismatched",
        "--adapter",
        &format!("{o}/best"),
    ]);
    assert!(ok, "{err}");
    let mismatched = last_json(&stdout);
    assert_eq!(line["dev_mismatched_loss"], mismatched["loss"], "{line}");
    assert_eq!(line["dev_mismatched_accuracy"], mismatched["accuracy"]);
    // Without the second dev set, training says why a file it was not given is needed.
    std::fs::remove_file(glue.path().join("MNLI/dev_mismatched.tsv")).unwrap();
    let again = tempfile::tempdir().unwrap();
    let (ok, _, err) = spafit(&[
        "train",
        "--model",
        &m,
        "--task",
        "mnli",
        "--glue-dir",
        &g,
        "--max-steps",
        "1",
        "--output",
        &again.path().display().to_string(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("dev_mismatched.tsv")
            && err.contains("evaluates on dev_matched and dev_mismatched"),
        "{err}"
    );
}

/// Training rows of a tiny sentiment task, alternating positive and negative.
const SENTIMENT_ROWS: [(&str, u8); 16] = [
    ("a gorgeous, witty, seductive movie.", 1),
    ("unbelievably dull and overlong.", 0),
    ("it is not bad at all", 1),
    ("so-so", 0),
    ("the best film of the year", 1),
    ("a waste of two hours", 0),
    ("charming and funny", 1),
    ("tedious, predictable and flat", 0),
    ("an absolute delight", 1),
    ("i fell asleep halfway", 0),
    ("smart, moving, and beautifully acted", 1),
    ("the plot makes no sense", 0),
    ("a triumph", 1),
    ("painfully boring", 0),
    ("warm and wise", 1),
    ("a mess from start to finish", 0),
];

/// Rows of a tiny sentiment task, as CSV.
fn sentiment_csv(rows: &[(&str, u8)]) -> String {
    let mut s = String::from("text,label\n");
    for (t, l) in rows {
        s.push_str(&format!("\"{t}\",{l}\n"));
    }
    s
}

/// The training losses and the final dev loss logged in `out/metrics.jsonl`.
fn logged_losses(out: &Path) -> (Vec<f64>, f64) {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let train = lines
        .iter()
        .filter(|l| l["type"] == "train")
        .map(|l| l["loss"].as_f64().unwrap())
        .collect();
    let dev = lines
        .iter()
        .rev()
        .find(|l| l["type"] == "eval")
        .map(|l| l["loss"].as_f64().unwrap())
        .expect("an evaluation");
    (train, dev)
}

/// `spafit train --device cuda-emu` on the real all-MiniLM-L6-v2, in f32 and bf16, logs the
/// losses the CPU logs (f32 ≤ 1e-4 relative, bf16 ≤ 2e-2), and so does the CPU's own bf16
/// mode; eval, gradcheck and bench run there too. The stand-in runs the same kernels a GPU
/// would, on the CPU.
#[test]
fn train_eval_gradcheck_and_bench_on_cuda_emu_match_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let train = SENTIMENT_ROWS;
    let dev = [
        ("lovely", 1),
        ("awful", 0),
        ("a fine piece of work", 1),
        ("dreadful acting", 0),
        ("surprisingly good", 1),
        ("not worth it", 0),
        ("great fun", 1),
        ("dull", 0),
    ];
    write(dir.path(), "train.csv", &sentiment_csv(&train));
    write(dir.path(), "dev.csv", &sentiment_csv(&dev));
    let m = model();
    let (train_csv, dev_csv) = (dir.path().join("train.csv"), dir.path().join("dev.csv"));
    // Two steps of training on `device` in `dtype`, logging each, into `out`; then `extra`.
    let train_args = |device: &'static str, dtype: &'static str, out: &Path, extra: &[&str]| {
        let mut args: Vec<String> = [
            "train",
            "--model",
            &m,
            "--device",
            device,
            "--dtype",
            dtype,
            "--max-len",
            "16",
            "--batch-size",
            "4",
            "--max-steps",
            "2",
            "--log-every",
            "1",
            "--quiet",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        for (flag, path) in [("--train-file", &train_csv), ("--dev-file", &dev_csv)] {
            args.extend([flag.to_string(), path.display().to_string()]);
        }
        args.extend(["--output".to_string(), out.display().to_string()]);
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    let run = |device: &'static str, dtype: &'static str| -> (Vec<f64>, f64) {
        let out = dir.path().join(format!("out-{device}-{dtype}"));
        let args = train_args(device, dtype, &out, &[]);
        let (ok, stdout, err) = spafit(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(ok, "train on {device} {dtype}: {err}");
        let line = last_json(&stdout);
        assert!(
            line["device"].as_str().unwrap().starts_with(device),
            "{line}"
        );
        logged_losses(&out)
    };
    let (cpu_train, cpu_dev) = run("cpu", "f32");
    for (device, dtype, tol) in [
        ("cuda-emu", "f32", 1e-4),
        ("cuda-emu", "bf16", 2e-2),
        ("cpu", "bf16", 2e-2),
    ] {
        let (train, dev) = run(device, dtype);
        assert_eq!(train.len(), cpu_train.len());
        for (i, (a, b)) in train.iter().zip(&cpu_train).enumerate() {
            let e = (a - b).abs() / b.abs();
            println!(
                "{device} {dtype} step {} loss {a} vs cpu f32 {b}: {e:.2e}",
                i + 1
            );
            assert!(
                e <= tol,
                "step {} loss on {device} {dtype}: {a} vs {b}",
                i + 1
            );
        }
        let e = (dev - cpu_dev).abs() / cpu_dev.abs();
        println!("{device} {dtype} dev loss {dev} vs cpu f32 {cpu_dev}: {e:.2e}");
        assert!(e <= tol, "dev loss on {device} {dtype}: {dev} vs {cpu_dev}");
    }
    // Resuming the complete CPU run on the stand-in is allowed: nothing trains, so there is
    // no warning about losses that differ between devices, and the line names this call's
    // device and its (no) steps.
    let args = train_args(
        "cuda-emu",
        "f32",
        &dir.path().join("out-cpu-f32"),
        &["--resume"],
    );
    let (ok, stdout, err) = spafit(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        ok && err.contains("already complete") && !err.contains("resumes on"),
        "{err}"
    );
    let line = last_json(&stdout);
    assert_eq!(
        (&line["device"], &line["steps_this_call"], &line["steps"]),
        (
            &serde_json::json!("cuda-emu-f32"),
            &serde_json::json!(0),
            &serde_json::json!(2)
        ),
        "{line}"
    );
    // The CPU-trained adapter evaluates to the same loss on the stand-in.
    let (ok, stdout, err) = spafit(&[
        "eval",
        "--model",
        &m,
        "--device",
        "cuda-emu",
        "--max-len",
        "16",
        "--adapter",
        dir.path().join("out-cpu-f32/best").to_str().unwrap(),
        "--train-file",
        dir.path().join("train.csv").to_str().unwrap(),
        "--dev-file",
        dir.path().join("dev.csv").to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(last_json(&stdout)["device"], "cuda-emu-f32", "{stdout}");
    let eval_loss = last_json(&stdout)["loss"].as_f64().unwrap();
    assert!(
        (eval_loss - cpu_dev).abs() / cpu_dev <= 1e-4,
        "eval on cuda-emu: {eval_loss} vs {cpu_dev}"
    );
    // Gradients on the stand-in against f64 finite differences on the CPU.
    let (ok, stdout, err) = spafit(&[
        "gradcheck",
        "--model",
        &m,
        "--device",
        "cuda-emu",
        "--method",
        "lora",
        "--lora-layers",
        "5",
        "--samples",
        "1",
    ]);
    assert!(ok, "{err}");
    let line = last_json(&stdout);
    println!("GRADCHECK cuda-emu f32 lora: {line}");
    assert!(line["max_rel_err"].as_f64().unwrap() < 1e-3, "{line}");
    assert_eq!(line["device"], "cuda-emu-f32");
    // Bench reports the device's peak memory.
    let (ok, stdout, err) = spafit(&[
        "bench",
        "--model",
        &m,
        "--device",
        "cuda-emu",
        "--dtype",
        "BF16",
        "--method",
        "spafit",
        "--batch-size",
        "2",
        "--seq-len",
        "8",
        "--steps",
        "1",
        "--warmup",
        "0",
    ]);
    assert!(ok, "{err}");
    let line = last_json(&stdout);
    assert!(line["peak_device_mib"].as_f64().unwrap() > 10.0, "{line}");
    assert!(
        line["kernel_code"].as_str().unwrap().contains("stand-in"),
        "{line}"
    );
    // Flags are case-insensitive; the line spells the dtype one way, for grouping results.
    assert_eq!(line["dtype"], "bf16", "{line}");
}

/// A PEFT-written adapter evaluates (to the loss PEFT's own logits give), predicts and keeps
/// training from the command line; the method flags cannot be mixed with `--adapter`.
#[test]
fn peft_adapters_evaluate_predict_and_keep_training() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft-adapters");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("expected.json")).unwrap())
            .unwrap();
    let texts: Vec<&str> = expected["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let labels = [1usize, 0, 0, 1];
    let rows: Vec<(&str, u8)> = texts
        .iter()
        .zip(labels)
        .map(|(t, l)| (*t, l as u8))
        .collect();
    write(dir.path(), "dev.csv", &sentiment_csv(&rows));
    let dev = dir.path().join("dev.csv").display().to_string();
    let m = model();
    let adapter = |case: &str| root.join(case).display().to_string();

    // Cross-entropy of PEFT's own logits on these labels: what eval must report.
    let logits = expected["cases"]["lora_qv"]["logits"].as_array().unwrap();
    let mut want = 0.0;
    for (row, &label) in logits.iter().zip(&labels) {
        let z: Vec<f64> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let max = z.iter().cloned().fold(f64::MIN, f64::max);
        let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        want += lse - z[label];
    }
    want /= labels.len() as f64;
    let (ok, stdout, err) = spafit(&[
        "eval",
        "--model",
        &m,
        "--adapter",
        &adapter("lora_qv"),
        "--dev-file",
        &dev,
    ]);
    assert!(ok, "{err}");
    let got = last_json(&stdout)["loss"].as_f64().unwrap();
    println!("PEFT-CLI eval lora_qv loss {got} vs PEFT's logits {want}");
    assert!((got - want).abs() <= 1e-5 * want.abs(), "{got} vs {want}");

    // A 3-label adapter on data given two classes: refused, naming both. (Without --labels,
    // a head of three unnamed outputs reads the classes 0, 1, 2.)
    let (ok, _, err) = spafit(&[
        "eval",
        "--model",
        &m,
        "--adapter",
        &adapter("spafit_top2"),
        "--dev-file",
        &dev,
        "--labels",
        "0,1",
    ]);
    assert!(
        !ok && err.contains("3 outputs") && err.contains("labels [\"0\", \"1\"]"),
        "{err}"
    );
    let (ok, stdout, err) = spafit(&[
        "eval",
        "--model",
        &m,
        "--adapter",
        &adapter("spafit_top2"),
        "--dev-file",
        &dev,
    ]);
    assert!(ok && last_json(&stdout)["accuracy"].is_number(), "{err}");

    // Regression: one score per example.
    let mut scores = String::from("text,label\n");
    for t in &texts {
        scores += &format!("\"{t}\",0.5\n");
    }
    write(dir.path(), "scores.csv", &scores);
    // The regression adapter's predictions for a file of `dir`, one JSON value per line.
    let predict_scores = |file: &str| -> Vec<serde_json::Value> {
        let (ok, stdout, err) = spafit(&[
            "predict",
            "--model",
            &m,
            "--adapter",
            &adapter("lora_regression"),
            "--dev-file",
            dir.path().join(file).to_str().unwrap(),
            "--regression",
            "--split",
            "dev",
        ]);
        assert!(ok, "{file}: {err}");
        stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let preds = predict_scores("scores.csv");
    let want: Vec<f64> = expected["cases"]["lora_regression"]["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_f64().unwrap())
        .collect();
    assert_eq!(preds.len(), want.len());
    for (p, w) in preds.iter().zip(&want) {
        assert!(
            (p["score"].as_f64().unwrap() - w).abs() < 1e-5,
            "{p} vs {w}"
        );
    }
    // predict reads no labels from custom data, whatever --split says: a file without a
    // label column gives the same scores.
    let mut texts_only = String::from("text\n");
    for t in &texts {
        texts_only += &format!("\"{t}\"\n");
    }
    write(dir.path(), "texts.csv", &texts_only);
    assert_eq!(predict_scores("texts.csv"), preds);

    // Training continues from the SPAFIT-shaped PEFT adapter, under its plan.
    let mut three = String::from("text,label\n");
    for (i, t) in texts.iter().enumerate() {
        three += &format!("\"{t}\",{}\n", ["a", "b", "c"][i % 3]);
    }
    write(dir.path(), "three.csv", &three);
    let three = dir.path().join("three.csv").display().to_string();
    let out = dir.path().join("continued");
    let (ok, stdout, err) = spafit(&[
        "train",
        "--model",
        &m,
        "--adapter",
        &adapter("spafit_top2"),
        "--train-file",
        &three,
        "--dev-file",
        &three,
        "--labels",
        "a,b,c",
        "--batch-size",
        "2",
        "--max-steps",
        "2",
        "--output",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("continuing from the PEFT adapter"), "{err}");
    let line = last_json(&stdout);
    assert_eq!(line["method"], "spafit");
    assert_eq!(line["steps"], 2);
    let (ok, _, err) = spafit(&[
        "eval",
        "--model",
        &m,
        "--adapter",
        out.join("best").to_str().unwrap(),
        "--dev-file",
        &three,
        "--labels",
        "a,b,c",
    ]);
    assert!(ok, "{err}");

    let (ok, _, err) = spafit(&[
        "train",
        "--model",
        &m,
        "--adapter",
        &adapter("lora_qv"),
        "--method",
        "lora",
        "--train-file",
        &dev,
    ]);
    assert!(
        !ok && err.contains("--method") && err.contains("--adapter"),
        "{err}"
    );
}

/// What would fail only after training, overwrite an input, or train on a label space the
/// user did not mean is refused before any work, naming the flag or file.
#[test]
fn bad_paths_and_labels_are_refused_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let m = model();
    let csv = sentiment_csv(&[("good fun", 1), ("dull mess", 0), ("great", 1), ("bad", 0)]);
    write(root, "train.csv", &csv);
    write(root, "header_only.csv", "text,label\n");
    write(root, "a_file", "not a directory");
    std::os::unix::fs::symlink(root.join("nowhere"), root.join("dangling")).unwrap();
    let p = |rel: &str| root.join(rel).display().to_string();
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--model",
            &m,
            "--max-len",
            "16",
            "--batch-size",
            "4",
            "--max-steps",
            "1",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        spafit(&args)
    };
    let (t, out, file) = (p("train.csv"), p("out"), p("a_file"));
    let dangling = p("dangling");
    let (header_only, glue_dir) = (p("header_only.csv"), p("glue"));
    let mut cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--train-file", &t, "--labels", "0,0,1"],
            "`0` appears twice",
        ),
        (
            vec!["--train-file", &t, "--labels", "0,1,"],
            "empty label name",
        ),
        (
            vec!["--train-file", &t, "--labels", "1,0,1.0"],
            "`1` and `1.0` are one number",
        ),
        (
            vec!["--train-file", &t, "--labels", "0,-0,1"],
            "`0` and `-0` are one number",
        ),
        (vec!["--train-file", &t, "--labels", "1"], "at least two"),
        (vec!["--train-file", &t, "--output", &file], "is a file"),
        (
            vec!["--train-file", &t, "--output", &dangling],
            "nowhere, which does not exist",
        ),
        (
            vec![
                "--train-file",
                &t,
                "--method",
                "lora",
                "--export-peft",
                &file,
            ],
            "is a file",
        ),
        (
            vec!["--train-file", &t, "--write-batches", &t],
            "is an input of this command",
        ),
        (
            vec!["--train-file", &t, "--dev-file", &header_only],
            "has no examples",
        ),
        (
            vec!["--train-file", &header_only, "--dev-file", &t],
            "no example with a label",
        ),
        (
            vec!["--train-file", &header_only, "--labels", "0,1"],
            "the training set",
        ),
        // Permissions allow it (to root), the file system does not: found before training,
        // not after. Another user is refused by the permissions already.
        (
            vec!["--train-file", &t, "--output", "/proc/spafit-run"],
            "/proc",
        ),
        (
            vec!["--train-file", &t, "--max-grad-norm", "NaN"],
            "a clipping norm is a number > 0, or 0 for no clipping",
        ),
        (
            vec!["--train-file", &t, "--lora-r", "100000"],
            "exceeds 384",
        ),
        (
            vec![
                "--task",
                "sst2",
                "--glue-dir",
                &glue_dir,
                "--train-file",
                &t,
            ],
            "cannot be used with",
        ),
    ];
    let saved_whole = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/peft-adapters-wrapped/key_saved_not_adapted")
        .display()
        .to_string();
    cases.push((
        vec!["--train-file", &t, "--adapter", &saved_whole],
        "no spafit plan trains",
    ));
    // MiCA: plain LoRA to compute with, but PEFT trains A alone.
    let mica = root.join("mica");
    std::fs::create_dir(&mica).unwrap();
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft-adapters/lora_qv");
    std::fs::copy(
        fixture.join("adapter_model.safetensors"),
        mica.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    config["init_lora_weights"] = "mica".into();
    std::fs::write(mica.join("adapter_config.json"), config.to_string()).unwrap();
    let mica = mica.display().to_string();
    cases.push((
        vec!["--train-file", &t, "--adapter", &mica],
        "`init_lora_weights` \"mica\": PEFT keeps the adapter's 12 lora_B matrices frozen",
    ));
    let below_file = p("a_file/sub");
    cases.push((
        vec![
            "--train-file",
            &t,
            "--method",
            "lora",
            "--export-peft",
            &below_file,
        ],
        "cannot be created",
    ));
    cases.push((
        vec!["--train-file", &t, "--output", &below_file],
        "cannot be created",
    ));
    // This run's own files, reached through a link, are still its own.
    std::fs::create_dir_all(root.join("runs")).unwrap();
    std::os::unix::fs::symlink(root.join("runs"), root.join("alias")).unwrap();
    let (run_dir, alias_log) = (p("runs/r1"), p("alias/r1/metrics.jsonl"));
    cases.push((
        vec![
            "--train-file",
            &t,
            "--output",
            &run_dir,
            "--write-batches",
            &alias_log,
        ],
        "where this run writes its own files",
    ));
    // A model whose files are copies (so a failing check could not damage the real one).
    let model_copy = root.join("model");
    std::fs::create_dir_all(&model_copy).unwrap();
    for f in [
        "config.json",
        "tokenizer.json",
        "vocab.txt",
        "tokenizer_config.json",
    ] {
        std::fs::copy(Path::new(&m).join(f), model_copy.join(f)).unwrap();
    }
    std::os::unix::fs::symlink(
        Path::new(&m).join("model.safetensors"),
        model_copy.join("model.safetensors"),
    )
    .unwrap();
    let (mc, mc_config) = (p("model"), p("model/config.json"));
    // A run is not written into a model's folder, nor into an adapter's.
    cases.push((
        vec!["--train-file", &t, "--output", &mc],
        "holds an adapter or model",
    ));
    // Nor over its own data: a file among the run's own files is an input here.
    write(
        root,
        "runs/r2/metrics.jsonl",
        "{\"text\": \"fine\", \"label\": 1}\n",
    );
    let (r2, r2_log) = (p("runs/r2"), p("runs/r2/metrics.jsonl"));
    cases.push((
        vec!["--train-file", &r2_log, "--output", &r2, "--resume"],
        "among the files this run writes",
    ));
    // A run file that is a link to the data leads there too.
    write(root, "data.jsonl", "{\"text\": \"fine\", \"label\": 1}\n");
    std::fs::create_dir_all(root.join("runs/r3")).unwrap();
    std::os::unix::fs::symlink(root.join("data.jsonl"), root.join("runs/r3/metrics.jsonl"))
        .unwrap();
    let (r3, data) = (p("runs/r3"), p("data.jsonl"));
    cases.push((
        vec!["--train-file", &data, "--output", &r3, "--resume"],
        "among the files this run writes",
    ));
    write(root, "an_adapter/adapter.json", "{}");
    let adapter_dir = p("an_adapter");
    cases.push((
        vec!["--train-file", &t, "--output", &adapter_dir],
        "holds an adapter or model",
    ));
    for (args, needle) in cases {
        let (ok, _, err) = train(&args);
        assert!(!ok && err.contains(needle), "{args:?}: {err}");
        // A --labels list that is no list of classes is a command line that does not parse.
        let bad_list = [
            "appears twice",
            "empty label",
            "at least two",
            "are one number",
        ];
        if bad_list.iter().any(|n| needle.contains(n)) {
            assert!(err.contains("invalid value"), "{args:?}: {err}");
        }
        println!("REFUSED {args:?}: {}", err.trim());
    }
    assert!(
        !root.join("out").exists() && !root.join("runs/r1").exists(),
        "a refused run wrote its output directory"
    );
    // A second process on a run directory in use is refused; once the first lets go, the
    // run goes ahead.
    let locked = root.join("locked");
    std::fs::create_dir_all(&locked).unwrap();
    let holder = std::fs::File::create(locked.join(".spafit-run.lock")).unwrap();
    holder.lock().unwrap();
    let locked_dir = p("locked");
    let (ok, _, err) = train(&["--train-file", &t, "--output", &locked_dir]);
    assert!(!ok && err.contains("in use by another spafit run"), "{err}");
    assert!(!locked.join("metrics.jsonl").exists());
    // The PEFT export's folder likewise, from before training until it is written.
    let (ok, _, err) = train(&[
        "--train-file",
        &t,
        "--method",
        "lora",
        "--export-peft",
        &locked_dir,
    ]);
    assert!(!ok && err.contains("in use by another spafit run"), "{err}");
    drop(holder);
    let (ok, _, err) = train(&["--train-file", &t, "--output", &locked_dir]);
    assert!(ok && locked.join("metrics.jsonl").exists(), "{err}");
    let unsaved = "the trained weights are not saved";
    assert!(!err.contains(unsaved), "{err}");
    // A log opened in place may go to a device that takes writes. Without --output, a run
    // says that it keeps nothing.
    let (ok, _, err) = train(&["--train-file", &t, "--write-batches", "/dev/null"]);
    assert!(ok && err.contains(unsaved), "{err}");
    // Training on the model copy, with `extra` flags.
    let train_copy = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--model",
            &mc,
            "--train-file",
            &t,
            "--max-len",
            "16",
        ];
        args.extend_from_slice(extra);
        spafit(&args)
    };
    let (ok, _, err) = train_copy(&["--write-batches", &mc_config]);
    assert!(
        !ok && err.contains("a file of the model or adapter"),
        "{err}"
    );
    let (ok, _, err) = train_copy(&["--output", &mc]);
    assert!(
        !ok && err.contains("where this run reads its model"),
        "{err}"
    );
    assert!(!model_copy.join("metrics.jsonl").exists());
    assert_eq!(
        std::fs::read(model_copy.join("config.json")).unwrap(),
        std::fs::read(Path::new(&m).join("config.json")).unwrap()
    );
    // Nor the files a checkpoint without tokenizer.json or in shards is read from.
    for read in [
        "vocab.txt",
        "tokenizer_config.json",
        "model-00001-of-00002.safetensors",
    ] {
        let target = p(&format!("model/{read}"));
        let (ok, _, err) = train_copy(&["--write-batches", &target]);
        assert!(
            !ok && err.contains("a file of the model or adapter"),
            "{read}: {err}"
        );
    }
    // A batch that cannot fit in memory is refused, not an aborted process.
    let (ok, _, err) = spafit(&[
        "bench",
        "--model",
        &m,
        "--batch-size",
        "100000000",
        "--seq-len",
        "4",
        "--steps",
        "1",
    ]);
    assert!(!ok && err.contains("of host memory; "), "{err}");
    assert_eq!(
        std::fs::read_to_string(root.join("train.csv")).unwrap(),
        csv
    );

    // MNLI without its second dev set fails before training, not after.
    let glue = root.join("glue");
    write(
        &glue,
        "MNLI/train.tsv",
        "index\tsentence1\tsentence2\tgold_label\n0\tA.\tB.\tentailment\n",
    );
    write(
        &glue,
        "MNLI/dev_matched.tsv",
        "index\tsentence1\tsentence2\tgold_label\n0\tA.\tB.\tentailment\n",
    );
    let g = glue.display().to_string();
    let (ok, _, err) = train(&["--task", "mnli", "--glue-dir", &g, "--output", &out]);
    assert!(!ok && err.contains("dev_mismatched.tsv"), "{err}");
    assert!(!root.join("out").exists(), "{err}");
    // ... and with an empty one.
    write(
        &glue,
        "MNLI/dev_mismatched.tsv",
        "index\tsentence1\tsentence2\tgold_label\n",
    );
    let (ok, _, err) = train(&["--task", "mnli", "--glue-dir", &g, "--output", &out]);
    assert!(
        !ok && err.contains("MNLI/dev_mismatched") && err.contains("no examples"),
        "{err}"
    );
    assert!(!root.join("out").exists(), "{err}");

    // An adapter trained on named labels predicts an unlabeled file without --labels (its
    // own names are the default), and never over its input.
    let (ok, _, err) = train(&[
        "--train-file",
        &t,
        "--labels",
        "neg,pos",
        "--method",
        "bitfit",
        "--output",
        &out,
    ]);
    write(
        root,
        "named.csv",
        "text,label\n\"good fun\",pos\n\"dull mess\",neg\n",
    );
    assert!(!ok && err.contains("`1` is not one of"), "{err}");
    // Without --labels, the training file's labels are the classes (sorted), said on stderr.
    let (peft, batches) = (p("peft"), p("logs/new/batches.jsonl"));
    let (ok, _, err) = train(&[
        "--train-file",
        &p("named.csv"),
        "--method",
        "lora",
        "--output",
        &out,
        "--export-peft",
        &peft,
        "--write-batches",
        &batches,
    ]);
    assert!(
        ok && err.contains("classes from") && err.contains("neg, pos"),
        "{err}"
    );
    assert!(
        Path::new(&batches).is_file(),
        "the batch log's folders are made"
    );
    write(root, "unlabeled.csv", "text\nwhat a film\n");
    let adapter = format!("{out}/best");
    let predict = |extra: &[&str]| {
        let mut args = vec![
            "predict",
            "--model",
            &m,
            "--adapter",
            &adapter,
            "--dev-file",
            extra[0],
            "--max-len",
            "16",
        ];
        args.extend_from_slice(&extra[1..]);
        spafit(&args)
    };
    // A header without rows is refused, as eval refuses it: no empty answer file.
    write(root, "no_rows.csv", "text\n");
    let (ok, stdout, err) = predict(&[&p("no_rows.csv")]);
    assert!(
        !ok && stdout.is_empty() && err.contains("no_rows.csv: no examples to predict"),
        "{err}"
    );
    let unlabeled = p("unlabeled.csv");
    let (ok, stdout, err) = predict(&[&unlabeled]);
    assert!(ok, "{err}");
    let line = last_json(&stdout);
    assert!(
        line["probabilities"]["neg"].is_number() && line["probabilities"]["pos"].is_number(),
        "{line}"
    );
    // A pipe (or a device: /dev/null) given as --output is written in place, not replaced
    // by a plain file through the atomic write's rename.
    {
        use std::io::Read;
        use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
        let fifo = root.join("predictions.pipe");
        let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `name` is a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        // Opened first and without blocking, so the writer finds a reader and nothing waits.
        let mut reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let (ok, _, err) = predict(&[
            &unlabeled,
            "--output",
            fifo.to_str().unwrap(),
            "--format",
            "jsonl",
        ]);
        assert!(ok, "{err}");
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        let mut got = String::new();
        reader.read_to_string(&mut got).unwrap();
        assert!(got.contains("\"probabilities\""), "{got:?}");
    }
    let (ok, _, err) = predict(&[&unlabeled, "--output", &unlabeled]);
    assert!(!ok && err.contains("is an input of this command"), "{err}");
    // `-` is standard output, as for the Unix tools; a name ending in `/` is a folder's.
    let (ok, stdout, err) = predict(&[&unlabeled, "--output", "-", "--format", "jsonl"]);
    assert!(ok && stdout.contains("\"probabilities\""), "{err}");
    let (ok, _, err) = predict(&[&unlabeled, "--output", &p("new_folder/")]);
    assert!(
        !ok && err.contains("ends in `/`, which names a folder"),
        "{err}"
    );
    assert!(!root.join("new_folder").exists());
    // Through a folder that does not exist yet (created, then stepped out of).
    let via_missing = p("not_yet/../unlabeled.csv");
    let (ok, _, err) = predict(&[&unlabeled, "--output", &via_missing]);
    assert!(!ok && err.contains("is an input of this command"), "{err}");
    assert!(!root.join("not_yet").exists());
    let manifest = format!("{adapter}/adapter.json");
    for manifest in [
        manifest.clone(),
        format!("{adapter}/not_yet/../adapter.json"),
    ] {
        let (ok, _, err) = predict(&[&unlabeled, "--output", &manifest]);
        assert!(
            !ok && err.contains("a file of the model or adapter"),
            "{manifest}: {err}"
        );
    }
    // Refused without a trace in the adapter's folder: not even the writability probe.
    let entries = |dir: &str| {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    let adapter_entries = entries(&adapter);
    let adapter_mtime = std::fs::metadata(&adapter).unwrap().modified().unwrap();
    let (ok, _, _) = predict(&[&unlabeled, "--output", &format!("{adapter}/p.jsonl")]);
    assert!(!ok);
    assert_eq!(entries(&adapter), adapter_entries);
    assert_eq!(
        std::fs::metadata(&adapter).unwrap().modified().unwrap(),
        adapter_mtime
    );
    // A read-only file is one its owner meant to keep, though a rename would replace it.
    {
        use std::os::unix::fs::PermissionsExt;
        let kept = root.join("kept.jsonl");
        std::fs::write(&kept, "keep\n").unwrap();
        std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o444)).unwrap();
        let (ok, _, err) = predict(&[&unlabeled, "--output", kept.to_str().unwrap()]);
        assert!(!ok && err.contains("exists and is read-only"), "{err}");
        assert_eq!(std::fs::read_to_string(&kept).unwrap(), "keep\n");
    }
    assert_eq!(
        std::fs::read_to_string(&unlabeled).unwrap(),
        "text\nwhat a film\n"
    );
    // Nor over another adapter's or run's files, nor into a directory, nor into this run's
    // own files, nor over an earlier export: all refused before any work.
    let other = root.join("other");
    std::fs::create_dir_all(other.join("best")).unwrap();
    for f in ["adapter.json", "adapter.safetensors"] {
        std::fs::copy(root.join("out/best").join(f), other.join("best").join(f)).unwrap();
    }
    let other_weights = p("other/best/adapter.safetensors");
    let (ok, _, err) = predict(&[&unlabeled, "--output", &other_weights]);
    assert!(
        !ok && err.contains("is a model, adapter or run file"),
        "{err}"
    );
    let (ok, _, err) = predict(&[&unlabeled, "--output", &p("other")]);
    assert!(
        !ok && err.contains("is a directory; give a file name"),
        "{err}"
    );
    // result.json, written last, is one of the run's files too.
    for own in ["fresh/metrics.jsonl", "fresh/result.json"] {
        let (ok, _, err) = train(&[
            "--train-file",
            &p("named.csv"),
            "--output",
            &p("fresh"),
            "--write-batches",
            &p(own),
        ]);
        assert!(
            !ok && err.contains("where this run writes its own files"),
            "{own}: {err}"
        );
    }
    // A file where the run's best/ or last/ folder goes is refused before any step, not
    // when the first save finds it.
    std::fs::create_dir_all(root.join("blocked")).unwrap();
    for (sub, what) in [("best", "best adapter"), ("last", "resumable state")] {
        let file = root.join("blocked").join(sub);
        std::fs::write(&file, "not a folder").unwrap();
        let (ok, _, err) = train(&["--train-file", &p("named.csv"), "--output", &p("blocked")]);
        assert!(
            !ok && err.contains(&format!("{sub} is a file where the run keeps its {what}")),
            "{err}"
        );
        assert!(!root.join("blocked/metrics.jsonl").exists());
        std::fs::remove_file(&file).unwrap();
    }
    let (ok, _, err) = train(&["--train-file", &p("named.csv"), "--export-peft", &peft]);
    assert!(!ok && err.contains("already holds an adapter"), "{err}");
    // An export goes to a folder of its own: not beside a spafit adapter or run, not among
    // this run's files.
    for (export, output, needle) in [
        (p("other/best"), p("fresh"), "holds a spafit adapter or run"),
        (out.clone(), p("fresh"), "holds a spafit adapter or run"),
        (
            p("fresh/best"),
            p("fresh"),
            "where this run writes its own files",
        ),
        (
            p("fresh/result.json"),
            p("fresh"),
            "where this run writes its own files",
        ),
    ] {
        let (ok, _, err) = train(&[
            "--train-file",
            &p("named.csv"),
            "--output",
            &output,
            "--export-peft",
            &export,
        ]);
        assert!(!ok && err.contains(needle), "{export}: {err}");
    }
    // Resuming rewrites the run's own export, and no other run's.
    let stranger = p("peft-of-another-run");
    std::fs::create_dir_all(&stranger).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(
            root.join("peft").join(f),
            root.join("peft-of-another-run").join(f),
        )
        .unwrap();
    }
    let note = std::fs::read_to_string(root.join("peft/spafit_export.json")).unwrap();
    let mut note: serde_json::Value = serde_json::from_str(&note).unwrap();
    assert_eq!(
        note["run"].as_str().map(PathBuf::from),
        Some(std::fs::canonicalize(&out).unwrap())
    );
    note["run"] = p("another-run").into();
    write(
        root,
        "peft-of-another-run/spafit_export.json",
        &note.to_string(),
    );
    let resume = |export: &str| {
        train(&[
            "--train-file",
            &p("named.csv"),
            "--method",
            "lora",
            "--output",
            &out,
            "--export-peft",
            export,
            "--resume",
        ])
    };
    let (ok, _, err) = resume(&stranger);
    assert!(!ok && err.contains("that this run did not write"), "{err}");
    let recorded = std::fs::read_to_string(root.join("out/result.json")).unwrap();
    let (ok, stdout, err) = resume(&peft);
    assert!(ok, "{err}");
    // The run was complete: its recorded result stands, with this call's device, steps (none)
    // and timings (none); result.json keeps the finishing call's. Nothing says it trains.
    assert!(
        err.contains("already complete") && !err.contains("trainable parameters"),
        "{err}"
    );
    let mut expected = serde_json::from_str::<serde_json::Value>(&recorded).unwrap();
    assert!(
        expected["steps_this_call"].as_u64().unwrap() > 0,
        "{recorded}"
    );
    assert!(
        err.contains(&format!("{} steps in", expected["steps_this_call"])),
        "{err}"
    );
    expected["steps_this_call"] = 0.into();
    for timing in ["train_seconds", "samples_per_s", "tokens_per_s"] {
        assert!(expected[timing].is_number(), "{recorded}");
        expected[timing] = serde_json::Value::Null;
    }
    assert_eq!(last_json(&stdout), expected);
    assert_eq!(
        std::fs::read_to_string(root.join("out/result.json")).unwrap(),
        recorded
    );
    // Without a recorded result (killed after its last save), its timings are unknown,
    // not 0; the rest of the line is computed again.
    std::fs::remove_file(root.join("out/result.json")).unwrap();
    let (ok, stdout, err) = resume(&peft);
    assert!(ok && err.contains("timings were not recorded"), "{err}");
    let line = last_json(&stdout);
    let before = serde_json::from_str::<serde_json::Value>(&recorded).unwrap();
    assert!(
        line["train_seconds"].is_null() && line["samples_per_s"].is_null(),
        "{line}"
    );
    assert_eq!(line["steps"], before["steps"]);
    // A resume under other settings is refused before anything says it trains.
    let (ok, _, err) = train(&[
        "--train-file",
        &p("named.csv"),
        "--method",
        "lora",
        "--lr",
        "0.0123",
        "--output",
        &out,
        "--resume",
    ]);
    assert!(
        !ok && err.contains("used other settings") && !err.contains("trainable parameters"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(other.join("best/adapter.safetensors")).unwrap(),
        std::fs::read(root.join("out/best/adapter.safetensors")).unwrap()
    );
    // A directory this user may not write into (root may write anywhere, so only checked
    // for other users).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        use std::os::unix::fs::PermissionsExt;
        let locked = root.join("locked");
        std::fs::create_dir_all(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
        let (ok, _, err) = train(&[
            "--train-file",
            &p("named.csv"),
            "--output",
            &p("locked/run"),
        ]);
        assert!(!ok && err.contains("may not write into"), "{err}");
        let (ok, _, err) = predict(&[&unlabeled, "--output", &p("locked/p.jsonl")]);
        assert!(!ok && err.contains("may not write into"), "{err}");
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // A run directory that holds a finished run is not trained over, even without last/.
    std::fs::remove_dir_all(root.join("out/last")).unwrap();
    let (ok, _, err) = train(&[
        "--train-file",
        &p("named.csv"),
        "--labels",
        "neg,pos",
        "--output",
        &out,
    ]);
    assert!(!ok && err.contains("holds an earlier run"), "{err}");
}

/// A fine-tuned `BertForSequenceClassification` checkpoint evaluates and predicts with its
/// own head, no adapter: all-MiniLM-L6-v2 with the classifier of the fixture's `full_cls`
/// case, whose float64 logits transformers computed (tests/fixtures/minilm-l6).
#[test]
fn a_fine_tuned_checkpoint_evaluates_and_predicts_without_an_adapter() {
    use safetensors::tensor::TensorView;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let m = PathBuf::from(model());
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm-l6");
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("fixture.json")).unwrap())
            .unwrap();
    let case_bytes = std::fs::read(fixtures.join("full_cls.safetensors")).unwrap();
    let case = safetensors::SafeTensors::deserialize(&case_bytes).unwrap();
    let base_bytes = std::fs::read(m.join("model.safetensors")).unwrap();
    let base = safetensors::SafeTensors::deserialize(&base_bytes).unwrap();

    // The checkpoint: the base's tensors plus the head, stored in f32 as transformers saves.
    let head: Vec<(String, Vec<usize>, Vec<u8>)> = ["weight", "bias"]
        .iter()
        .map(|part| {
            let t = case.tensor(&format!("init.classifier.{part}")).unwrap();
            let f32s: Vec<u8> = t
                .data()
                .chunks_exact(8)
                .flat_map(|b| (f64::from_le_bytes(b.try_into().unwrap()) as f32).to_le_bytes())
                .collect();
            (format!("classifier.{part}"), t.shape().to_vec(), f32s)
        })
        .collect();
    let mut views: Vec<(String, TensorView)> = base
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                TensorView::new(v.dtype(), v.shape().to_vec(), v.data()).unwrap(),
            )
        })
        .collect();
    for (n, shape, bytes) in &head {
        views.push((
            n.clone(),
            TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes).unwrap(),
        ));
    }
    let tuned = root.join("tuned");
    std::fs::create_dir_all(&tuned).unwrap();
    safetensors::tensor::serialize_to_file(views, None, &tuned.join("model.safetensors")).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(m.join("config.json")).unwrap()).unwrap();
    config["architectures"] = serde_json::json!(["BertForSequenceClassification"]);
    config["id2label"] = serde_json::json!({"0": "neg", "1": "pos"});
    config["label2id"] = serde_json::json!({"neg": 0, "pos": 1});
    std::fs::write(tuned.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(m.join("tokenizer.json"), tuned.join("tokenizer.json")).unwrap();

    // The fixture's sentences with its labels, named by the checkpoint's id2label.
    let singles = fixture["inputs"]["singles"].as_array().unwrap();
    let gold: Vec<u64> = fixture["cases"][0]["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_u64().unwrap())
        .collect();
    assert_eq!(fixture["cases"][0]["method"], "full");
    assert_eq!(fixture["cases"][0]["task"], "cls");
    let names = ["neg", "pos"];
    let rows: String = singles
        .iter()
        .zip(&gold)
        .map(|(s, &g)| {
            format!(
                "{}\n",
                serde_json::json!({"text": s, "label": names[g as usize]})
            )
        })
        .collect();
    let data = root.join("dev.jsonl");
    std::fs::write(&data, rows).unwrap();
    let logits = {
        let t = case.tensor("logits").unwrap();
        let v: Vec<f64> = t
            .data()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        v
    };
    let max_len = fixture["inputs"]["max_len"].to_string();
    let (tuned_s, data_s) = (tuned.display().to_string(), data.display().to_string());
    let common = [
        "--model",
        &tuned_s,
        "--dev-file",
        &data_s,
        "--max-len",
        &max_len,
    ];

    let (ok, stdout, err) = spafit(&[&["predict", "--split", "dev"], &common[..]].concat());
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), singles.len());
    let mut correct = 0;
    for (i, line) in lines.iter().enumerate() {
        let (a, b) = (logits[2 * i], logits[2 * i + 1]);
        let p_pos = 1.0 / (1.0 + (a - b).exp());
        let got = line["probabilities"]["pos"].as_f64().unwrap();
        assert!(
            (got - p_pos).abs() <= 1e-5,
            "row {i}: {got} vs transformers {p_pos}"
        );
        let predicted = usize::from(b > a);
        assert_eq!(line["label"], names[predicted], "row {i}");
        correct += usize::from(predicted as u64 == gold[i]);
    }
    let (ok, stdout, err) = spafit(&[&["eval"], &common[..]].concat());
    assert!(ok, "{err}");
    let line = last_json(&stdout);
    let accuracy = correct as f64 / gold.len() as f64;
    assert!(
        (line["accuracy"].as_f64().unwrap() - accuracy).abs() < 1e-12,
        "{line}"
    );

    // The same classes named in another order (`--labels pos,neg`): the head follows the
    // names, as transformers' run_glue matches them; other names go by position.
    let (ok, stdout, err) = spafit(
        &[
            &["predict", "--split", "dev", "--labels", "pos,neg"],
            &common[..],
        ]
        .concat(),
    );
    assert!(ok && err.contains("in another order"), "{err}");
    for (i, l) in stdout.lines().enumerate() {
        let line: serde_json::Value = serde_json::from_str(l).unwrap();
        let (a, b) = (logits[2 * i], logits[2 * i + 1]);
        let p_pos = 1.0 / (1.0 + (a - b).exp());
        let got = line["probabilities"]["pos"].as_f64().unwrap();
        assert!((got - p_pos).abs() <= 1e-5, "row {i}: {got} vs {p_pos}");
    }
    // Training from the checkpoint starts from its head, lined up the same way.
    let out = root.join("run").display().to_string();
    let (ok, _, err) = spafit(&[
        "train",
        "--model",
        &tuned_s,
        "--train-file",
        &data_s,
        "--labels",
        "pos,neg",
        "--max-steps",
        "1",
        "--max-len",
        &max_len,
        "--output",
        &out,
    ]);
    assert!(
        ok && err.contains("in another order")
            && err.contains("starts from the checkpoint's own classifier head"),
        "{err}"
    );
    // The run started from the head's rows swapped: at this learning rate they moved
    // by about 1e-6, far less than the rows differ.
    let trained = safetensors::SafeTensors::deserialize(
        &std::fs::read(root.join("run/best/adapter.safetensors")).unwrap(),
    )
    .unwrap()
    .tensor("classifier.weight")
    .unwrap()
    .data()
    .to_vec();
    let row = |bytes: &[u8], r: usize| -> Vec<f64> {
        let width = bytes.len() / 2;
        bytes[r * width..(r + 1) * width]
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes(b.try_into().unwrap())))
            .collect()
    };
    let distance = |a: &[f64], b: &[f64]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    };
    let original = &head[0].2;
    assert!(distance(&row(&trained, 0), &row(original, 1)) < 1e-4);
    assert!(distance(&row(&trained, 1), &row(original, 0)) < 1e-4);
    assert!(distance(&row(original, 0), &row(original, 1)) > 1e-2);
    // Without --labels, training reads the data with the checkpoint's class names.
    let out = root.join("run-named").display().to_string();
    let (ok, _, err) = spafit(&[
        "train",
        "--model",
        &tuned_s,
        "--train-file",
        &data_s,
        "--max-steps",
        "1",
        "--max-len",
        &max_len,
        "--output",
        &out,
    ]);
    assert!(
        ok && !err.contains("order") && !err.contains("position"),
        "{err}"
    );
    let unnamed = root.join("unnamed.jsonl");
    std::fs::write(&unnamed, "{\"text\": \"a fine film\", \"label\": \"b\"}\n").unwrap();
    let unnamed_s = unnamed.display().to_string();
    let (ok, stdout, err) = spafit(&[
        "predict",
        "--model",
        &tuned_s,
        "--dev-file",
        &unnamed_s,
        "--split",
        "dev",
        "--labels",
        "a,b",
    ]);
    assert!(ok && err.contains("matched by position"), "{err}");
    assert!(
        last_json(&stdout)["probabilities"]["b"].is_number(),
        "{stdout}"
    );

    // Data whose label space is not the head's, and a base model without a head.
    let scores = root.join("scores.jsonl");
    std::fs::write(&scores, "{\"text\": \"a fine film\", \"label\": 3.5}\n").unwrap();
    let scores_s = scores.display().to_string();
    let (ok, _, err) = spafit(&[
        "eval",
        "--model",
        &tuned_s,
        "--dev-file",
        &scores_s,
        "--regression",
    ]);
    assert!(
        !ok && err.contains("model.safetensors") && err.contains("2 outputs"),
        "{err}"
    );
    let out = root.join("run-scores").display().to_string();
    let (ok, _, err) = spafit(&[
        "train",
        "--model",
        &tuned_s,
        "--train-file",
        &scores_s,
        "--regression",
        "--max-steps",
        "1",
        "--output",
        &out,
    ]);
    assert!(
        ok && err.contains("2 output(s) and the data needs 1"),
        "{err}"
    );
    let m_s = m.display().to_string();
    let (ok, _, err) = spafit(&[
        "eval",
        "--model",
        &m_s,
        "--dev-file",
        &data_s,
        "--labels",
        "neg,pos",
    ]);
    assert!(
        !ok && err.contains("no classifier head") && err.contains("--adapter"),
        "{err}"
    );
}

/// A setting the run would never use is refused, naming the flag: LoRA flags where SPAFIT's
/// N2 leaves no LoRA layer, `--eval-every` with no dev set, `--save-every` with nowhere to
/// save, `--max-len` where gradcheck reads fixed sentences; and a value the library refuses
/// names the flag it came from. The demo refuses outputs over its own inputs, as `train` does,
/// leaving them as they were.
#[test]
fn unused_settings_and_bad_values_name_their_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let m = model();
    let csv = sentiment_csv(&[("good fun", 1), ("dull mess", 0), ("great", 1), ("bad", 0)]);
    write(root, "train.csv", &csv);
    let t = root.join("train.csv").display().to_string();
    let out = root.join("out").display().to_string();
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (
            vec!["bench", "--model", &m, "--n2", "6", "--lora-r", "16"],
            &[
                "--lora-r",
                "N2 = 6, the model's 6 layers",
                "no LoRA + bias layer",
            ],
        ),
        (
            vec![
                "bench",
                "--model",
                &m,
                "--n2",
                "1.0",
                "--lora-targets",
                "query",
            ],
            &["--lora-targets", "N2 = 6"],
        ),
        (
            vec![
                "gradcheck",
                "--model",
                &m,
                "--n2",
                "6",
                "--lora-dropout",
                "0.2",
            ],
            &["--lora-dropout", "N2 = 6"],
        ),
        (
            vec!["gradcheck", "--model", &m, "--max-len", "8"],
            &["--max-len"],
        ),
        (
            vec![
                "train",
                "--model",
                &m,
                "--train-file",
                &t,
                "--eval-every",
                "2",
            ],
            &["--eval-every", "no dev set"],
        ),
        (
            vec![
                "train",
                "--model",
                &m,
                "--train-file",
                &t,
                "--save-every",
                "2",
            ],
            &["--save-every", "--output"],
        ),
        (
            vec![
                "train",
                "--model",
                &m,
                "--train-file",
                &t,
                "--output",
                &out,
                "--max-grad-norm",
                "-1",
            ],
            &["--max-grad-norm", "-1"],
        ),
        (
            vec![
                "train",
                "--model",
                &m,
                "--train-file",
                &t,
                "--output",
                &out,
                "--weight-decay",
                "-1",
            ],
            &["--weight-decay"],
        ),
        (vec!["bench", "--model", &m, "--n1", "x"], &["--n1", "`x`"]),
        (vec!["bench", "--model", &m, "--n2", "-1"], &["--n2"]),
        (
            vec!["bench", "--model", &m, "--lora-alpha", "-2"],
            &["--lora-alpha", "α > 0"],
        ),
        (
            vec!["train", "--model", &m, "--train-file", &t, "--lr", "-1e-3"],
            &["--lr", "-1e-3"],
        ),
        (
            vec!["bench", "--model", &m, "--lora-targets", "foo"],
            &["--lora-targets", "`foo`"],
        ),
        // A negative value is a value of its flag, not an unknown argument.
        (
            vec!["bench", "--model", &m, "--lora-targets", "-1"],
            &["--lora-targets", "`-1`"],
        ),
        (
            vec![
                "bench",
                "--model",
                &m,
                "--method",
                "lora",
                "--lora-layers",
                "-1",
            ],
            &["--lora-layers", "`-1`"],
        ),
        (
            vec!["bench", "--model", &m, "--lora-dropout", "1"],
            &["--lora-dropout", "[0, 1)"],
        ),
        (
            vec!["bench", "--model", &m, "--lora-r", "0"],
            &["--lora-r", "at least 1"],
        ),
        (
            vec!["bench", "--model", &m, "--method", "qlora"],
            &["--method", "`qlora`"],
        ),
        (
            vec![
                "train",
                "--model",
                &m,
                "--task",
                "sst3",
                "--glue-dir",
                "/tmp",
            ],
            &["--task", "`sst3`"],
        ),
        (
            vec![
                "bench",
                "--model",
                &m,
                "--n1",
                "6",
                "--n2",
                "6",
                "--train-layernorm",
            ],
            &["--train-layernorm", "freezes all 6 layers"],
        ),
        (
            vec!["bench", "--model", &m, "--batch-size", "-1"],
            &["--batch-size", "-1"],
        ),
        (
            vec![
                "train",
                "--model",
                &m,
                "--train-file",
                &t,
                "--eval-every",
                "0",
            ],
            &["--eval-every", "'0'"],
        ),
        (
            vec![
                "train",
                "--model",
                &m,
                "--train-file",
                &t,
                "--batch-size",
                "4",
                "--micro-batch-size",
                "5",
            ],
            &["--micro-batch-size", "--batch-size", "batch of 4"],
        ),
        (
            vec![
                "train",
                "--model",
                &m,
                "--train-file",
                &t,
                "--micro-batch-size",
                "0",
            ],
            &["--micro-batch-size", "'0'"],
        ),
    ];
    for (args, needles) in cases {
        let (ok, _, err) = spafit(&args);
        assert!(
            !ok && needles.iter().all(|n| err.contains(n)),
            "{args:?}: {err}"
        );
    }
    let lock = format!("{out}/.spafit-run.lock");
    let (ok, _, err) = spafit(&[
        "train",
        "--model",
        &m,
        "--train-file",
        &t,
        "--output",
        &out,
        "--write-batches",
        &lock,
    ]);
    assert!(!ok && err.contains("--write-batches"), "{err}");
    assert!(!Path::new(&out).exists(), "a refused run wrote {out}");

    // The method is reported as parsed, whatever its spelling on the command line; train's
    // F1 names its positive class, as eval's does.
    let (ok, stdout, err) = spafit(&[
        "bench",
        "--model",
        &m,
        "--method",
        "LoRA",
        "--batch-size",
        "1",
        "--seq-len",
        "8",
        "--steps",
        "1",
        "--warmup",
        "0",
    ]);
    assert!(ok, "{err}");
    assert_eq!(last_json(&stdout)["method"], "lora");
    let (ok, stdout, err) = spafit(&[
        "train",
        "--model",
        &m,
        "--train-file",
        &t,
        "--dev-file",
        &t,
        "--max-len",
        "16",
        "--batch-size",
        "4",
        "--max-steps",
        "1",
        "--quiet",
    ]);
    assert!(ok, "{err}");
    let line = last_json(&stdout);
    assert!(line["dev_f1"].is_number(), "{line}");
    assert_eq!(line["f1_positive_class"], "1", "{line}");

    // The demo: its CSV and the model are inputs; nothing is truncated or replaced. A copy of
    // the model, so that a failure here cannot damage the shared one.
    let data = root.join("reviews.csv");
    std::fs::write(&data, "text,label,source\n\"good\",1,rotten_tomatoes\n").unwrap();
    let copy = root.join("model");
    std::fs::create_dir(&copy).unwrap();
    for entry in std::fs::read_dir(common::minilm_dir()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
        }
    }
    let m = copy.display().to_string();
    let weights = copy.join("model.safetensors");
    let before = std::fs::metadata(&weights).unwrap().len();
    let d = data.display().to_string();
    let w = weights.display().to_string();
    // Nothing goes inside the model's folder either, whatever the file is called (a
    // sentence-transformers model has `modules.json` and `1_Pooling/` of its own).
    let modules = copy.join("modules.json").display().to_string();
    let pooling = copy.join("1_Pooling").display().to_string();
    std::fs::create_dir_all(&pooling).unwrap();
    for (extra, needle) in [
        (vec!["--write-batches", d.as_str()], "--write-batches"),
        (vec!["--write-batches", w.as_str()], "--write-batches"),
        (vec!["--output", m.as_str()], "--output"),
        (vec!["--write-batches", modules.as_str()], "lies in"),
        (vec!["--export-peft", pooling.as_str()], "lies in"),
        (vec!["--output", pooling.as_str()], "lies in"),
    ] {
        let mut args = vec!["demo", "--model", &m, "--data", &d, "--quiet"];
        args.extend(extra.iter().copied());
        let (ok, _, err) = spafit(&args);
        assert!(!ok && err.contains(needle), "{extra:?}: {err}");
    }
    assert_eq!(
        std::fs::read_to_string(&data).unwrap(),
        "text,label,source\n\"good\",1,rotten_tomatoes\n"
    );
    assert_eq!(std::fs::metadata(&weights).unwrap().len(), before);
}

/// `eval --skip-malformed` counts the rows it left out in its JSON line, beside the examples
/// its metrics are of; `train` counts each file's.
#[test]
fn the_final_line_counts_the_rows_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-electra");
    let eval = |rows: &str| {
        let data = tmp.path().join("dev.csv");
        std::fs::write(&data, format!("text,label\n{rows}")).unwrap();
        let (ok, stdout, err) = spafit(&[
            "eval",
            "--model",
            fixture.join("model").to_str().unwrap(),
            "--adapter",
            fixture.join("peft-lora").to_str().unwrap(),
            "--dev-file",
            data.to_str().unwrap(),
            "--skip-malformed",
        ]);
        assert!(ok, "{err}");
        last_json(&stdout)
    };
    let whole = eval("a fine film,0\na dull one,2\n");
    assert_eq!(
        (whole["examples"].as_u64(), whole["skipped_rows"].as_u64()),
        (Some(2), Some(0))
    );
    let cut = eval("a fine film,0\nno label\na dull one,2\nthree,fields,here\n");
    assert_eq!(
        (cut["examples"].as_u64(), cut["skipped_rows"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(cut["loss"], whole["loss"]);

    let (train, dev) = (tmp.path().join("train.csv"), tmp.path().join("dev.csv"));
    std::fs::write(&train, "text,label\ngood,0\nbad\nfine,2\n,,\nok,1\n").unwrap();
    std::fs::write(&dev, "text,label\na fine film,0\nno label\na dull one,2\n").unwrap();
    let (ok, stdout, err) = spafit(&[
        "train",
        "--model",
        fixture.join("model").to_str().unwrap(),
        "--train-file",
        train.to_str().unwrap(),
        "--dev-file",
        dev.to_str().unwrap(),
        "--max-steps",
        "1",
        "--quiet",
        "--skip-malformed",
    ]);
    assert!(ok, "{err}");
    let line = last_json(&stdout);
    assert_eq!(
        (
            line["train_skipped_rows"].as_u64(),
            line["dev_skipped_rows"].as_u64()
        ),
        (Some(2), Some(1)),
        "{line}"
    );
}

/// MNLI's second dev set is evaluated after training, and its own count of skipped rows sits
/// beside its metrics, apart from the first dev set's.
#[test]
fn an_mnli_run_counts_the_rows_skipped_in_each_dev_set() {
    let tmp = tempfile::tempdir().unwrap();
    let glue = tmp.path().join("glue");
    std::fs::create_dir_all(glue.join("MNLI")).unwrap();
    let header = format!("{MNLI_COLUMNS}\tlabel1\tgold_label\n");
    let row = |i: usize, label: &str| {
        format!(
            "{i}\t1\t1n\tfiction\t(a)\t(b)\t(A)\t(B)\tA man plays.\tHe sleeps.\t{label}\t{label}\n"
        )
    };
    // A row cut short (four fields) is malformed in every split.
    let short = "9\t1\t1n\tfiction\n";
    let split = |good: usize, bad: usize| {
        let mut text = header.clone();
        for i in 0..good {
            text += &row(i, ["entailment", "neutral", "contradiction"][i % 3]);
        }
        text + &short.repeat(bad)
    };
    for (name, good, bad) in [
        ("train", 4, 1),
        ("dev_matched", 3, 2),
        ("dev_mismatched", 2, 3),
    ] {
        std::fs::write(glue.join(format!("MNLI/{name}.tsv")), split(good, bad)).unwrap();
    }
    let (ok, stdout, err) = spafit(&[
        "train",
        "--model",
        &model(),
        "--task",
        "mnli",
        "--glue-dir",
        glue.to_str().unwrap(),
        "--max-len",
        "16",
        "--batch-size",
        "2",
        "--max-steps",
        "1",
        "--quiet",
        "--skip-malformed",
    ]);
    assert!(ok, "{err}");
    let line = last_json(&stdout);
    assert_eq!(
        (
            line["train_skipped_rows"].as_u64(),
            line["dev_skipped_rows"].as_u64(),
            line["dev_mismatched_skipped_rows"].as_u64()
        ),
        (Some(1), Some(2), Some(3)),
        "{line}"
    );
    assert!(line["dev_mismatched_loss"].is_number(), "{line}");
}

/// A Hugging Face cache under `root/hub` holding the tiny ERNIE as `org/<name>` at snapshot
/// `abc`, its files links into `blobs/` as the hub lays them out, in the snapshot itself or
/// (the older sentence-transformers layout) in its `0_Transformer/` beside a `modules.json`;
/// and `train` of two rows on it, given more flags.
struct HubCache {
    hub: std::path::PathBuf,
    repo: std::path::PathBuf,
    snapshot: std::path::PathBuf,
    data: std::path::PathBuf,
    id: String,
}

impl HubCache {
    fn new(root: &Path, name: &str, in_transformer_folder: bool) -> Self {
        let hub = root.join("hub");
        let repo = hub.join(format!("models--org--{name}"));
        let snapshot = repo.join("snapshots").join("abc");
        let model = match in_transformer_folder {
            true => snapshot.join("0_Transformer"),
            false => snapshot.clone(),
        };
        std::fs::create_dir_all(&model).unwrap();
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs").join("main"), "abc").unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-ernie/model");
        for file in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            let blob = repo.join("blobs").join(format!("sha-{file}"));
            std::fs::copy(fixture.join(file), &blob).unwrap();
            std::os::unix::fs::symlink(&blob, model.join(file)).unwrap();
        }
        if in_transformer_folder {
            std::fs::write(
                snapshot.join("modules.json"),
                r#"[{"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"}]"#,
            )
            .unwrap();
        }
        let data = root.join("train.csv");
        std::fs::write(&data, "text,label\ngood,1\nbad,0\n").unwrap();
        let id = format!("org/{name}");
        HubCache {
            hub,
            repo,
            snapshot,
            data,
            id,
        }
    }

    fn train(&self, extra: &[&str]) -> (bool, String, String) {
        let mut args = vec!["train", "--model", &self.id, "--train-file"];
        args.push(self.data.to_str().unwrap());
        args.extend_from_slice(&["--max-steps", "1", "--quiet"]);
        args.extend_from_slice(extra);
        spafit_with_env(&args, &[("HF_HUB_CACHE", self.hub.as_os_str())])
    }

    /// The words a refused output's message gives for the folder it lies in: the whole
    /// cache repository, to the comma that ends its name (a folder inside it would pass a
    /// check without it).
    fn lies_in(&self) -> String {
        format!("lies in {}, ", self.repo.canonicalize().unwrap().display())
    }
}

/// A model given as a hub id reads from its cache snapshot: no output goes there either (a
/// run was written among the cache's files).
#[test]
fn nothing_is_written_into_the_hub_snapshot_a_model_is_read_from() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = HubCache::new(tmp.path(), "tiny", false);
    let (ok, _, err) = cache.train(&[]);
    assert!(ok, "the hub id resolves: {err}");
    let snapshot = &cache.snapshot;
    let inside = snapshot.join("run").display().to_string();
    let batches = snapshot.join("batches.jsonl").display().to_string();
    let beside = cache.repo.join("refs").join("run").display().to_string();
    for extra in [
        ["--output", inside.as_str()],
        ["--write-batches", batches.as_str()],
        ["--output", beside.as_str()],
    ] {
        let (ok, _, err) = cache.train(&extra);
        assert!(!ok && err.contains(&cache.lies_in()), "{extra:?}: {err}");
    }
    // A blob the snapshot links to is one of the model's files.
    let blob = cache.repo.join("blobs").join("sha-config.json");
    let (ok, _, err) = cache.train(&["--write-batches", blob.to_str().unwrap()]);
    assert!(!ok && err.contains("is a file of the model"), "{err}");
    assert!(!snapshot.join("run").exists() && !snapshot.join("batches.jsonl").exists());
}

/// The older sentence-transformers layout under a hub id keeps the model in the snapshot's
/// `0_Transformer/`: the whole cache repository is still the folder read, not that subfolder.
#[test]
fn nothing_is_written_into_an_older_sentence_transformers_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = HubCache::new(tmp.path(), "older", true);
    let (ok, _, err) = cache.train(&[]);
    assert!(ok, "the hub id resolves to 0_Transformer: {err}");
    let transformer = cache.snapshot.join("0_Transformer");
    for output in [
        cache.snapshot.join("run"),
        transformer.join("run"),
        cache.repo.join("refs").join("run"),
    ] {
        let (ok, _, err) = cache.train(&["--output", output.to_str().unwrap()]);
        assert!(!ok && err.contains(&cache.lies_in()), "{output:?}: {err}");
        assert!(!output.exists());
    }
}

/// The demo keeps its final JSON line in `--output`'s result.json, as `train` does; a
/// `--resume` of the finished run prints that record with null timings and keeps it.
#[test]
fn the_demo_keeps_its_result_in_the_output_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("reviews.csv");
    let mut csv = String::from("text,label,source\n");
    for i in 0..20 {
        csv += &format!("review number {i},{},rotten_tomatoes\n", i % 2);
    }
    std::fs::write(&data, csv).unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-ernie/model");
    let out = tmp.path().join("run");
    let mut args = vec![
        "demo",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--max-steps",
        "2",
        "--quiet",
        "--output",
        out.to_str().unwrap(),
    ];
    let (ok, stdout, err) = spafit(&args);
    assert!(ok, "{err}");
    let printed = last_json(&stdout);
    assert_eq!(printed["task"], "rotten_tomatoes", "{printed}");
    assert!(
        printed["train_seconds"].as_f64().unwrap() > 0.0,
        "{printed}"
    );
    let kept = std::fs::read_to_string(out.join("result.json")).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&kept).unwrap(),
        printed
    );

    args.push("--resume");
    let (ok, stdout, err) = spafit(&args);
    assert!(ok && err.contains("its result as recorded"), "{err}");
    let mut again = last_json(&stdout);
    for timing in [
        "train_seconds",
        "samples_per_s",
        "tokens_per_s",
        "eval_seconds",
    ] {
        assert!(again[timing].is_null(), "{timing}: {again}");
        again[timing] = printed[timing].clone();
    }
    assert_eq!(again, printed);
    assert_eq!(
        std::fs::read_to_string(out.join("result.json")).unwrap(),
        kept
    );
}

/// Predictions go to stdout without --output: a reader that stops early (`| head`) ends the
/// command quietly, with the status a shell shows for a tool SIGPIPE killed (141).
#[test]
fn predictions_to_a_reader_that_stopped_end_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("texts.csv");
    std::fs::write(&data, "text\na fine film\na dull one\n").unwrap();
    let adapter = format!(
        "{}/tests/fixtures/peft-adapters/lora_qv",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_spafit"))
        .args([
            "predict",
            "--model",
            &model(),
            "--adapter",
            &adapter,
            "--max-len",
            "16",
        ])
        .arg("--dev-file")
        .arg(&data)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader is gone before the model has loaded, long before the first write.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(
        !err.contains("Broken pipe") && !err.contains("spafit:"),
        "{err}"
    );
}

/// `bench --inference` times forward passes as `eval` runs them, on the CPU and the stand-in:
/// its JSON line says `pass`, and the pass records no autograd node and keeps no byte (the
/// training step does), with a smaller device peak than the step's; micro-batches, which
/// split a step's gradients, are refused beside it.
#[test]
fn bench_times_inference_as_eval_runs_it() {
    let args = |device: &'static str, pass: &'static str| {
        let mut a = vec![
            "bench",
            "--shape",
            "tiny",
            "--method",
            "spafit",
            "--device",
            device,
            "--batch-size",
            "4",
            "--seq-len",
            "32",
            "--steps",
            "1",
            "--warmup",
            "0",
        ];
        if pass == "inference" {
            a.push("--inference");
        }
        a
    };
    for device in ["cpu", "cuda-emu"] {
        let run = |pass| {
            let (ok, stdout, err) = spafit(&args(device, pass));
            assert!(ok, "{device} {pass}: {err}");
            let line = last_json(&stdout);
            assert_eq!(line["pass"], pass, "{device}");
            line
        };
        let (training, inference) = (run("training"), run("inference"));
        assert!(training["autograd_nodes"].as_u64().unwrap() > 0, "{device}");
        assert_eq!(
            (
                &inference["autograd_nodes"],
                &inference["saved_activation_bytes"]
            ),
            (&serde_json::json!(0), &serde_json::json!(0)),
            "{device}: a forward pass records nothing"
        );
        if device == "cuda-emu" {
            let peak = |l: &serde_json::Value| l["peak_device_mib"].as_f64().unwrap();
            assert!(
                peak(&inference) < peak(&training),
                "{} MiB inference, {} training",
                peak(&inference),
                peak(&training)
            );
        }
    }
    let mut split = args("cpu", "inference");
    split.extend(["--micro-batch-size", "2"]);
    let (ok, _, err) = spafit(&split);
    assert!(!ok);
    assert!(
        err.contains("--inference") && err.contains("--micro-batch-size"),
        "{err}"
    );
}

/// `spafit bench` says whether the step recomputed the GELU and LayerNorm outputs that linear
/// maps' gradients read (CUDA's default) or kept them (the CPU; CUDA under
/// SPAFIT_CUDA_KEEP_LINEAR_INPUTS=1), and keeping them keeps more bytes for the backward.
#[test]
fn bench_says_whether_linear_inputs_were_recomputed() {
    let args = |device: &'static str| {
        [
            "bench",
            "--shape",
            "tiny",
            "--method",
            "full",
            "--device",
            device,
            "--batch-size",
            "4",
            "--seq-len",
            "32",
            "--steps",
            "1",
            "--warmup",
            "0",
        ]
    };
    let run = |device: &'static str, keep: &str| {
        let keep = std::ffi::OsString::from(keep);
        let (ok, stdout, err) =
            spafit_with_env(&args(device), &[("SPAFIT_CUDA_KEEP_LINEAR_INPUTS", &keep)]);
        assert!(ok, "{err}");
        let line = last_json(&stdout);
        let kept = line["saved_activation_bytes"].as_u64().unwrap();
        (line["linear_inputs"].as_str().unwrap().to_string(), kept)
    };
    let (recomputed, fewer) = run("cuda-emu", "0");
    let (kept, more) = run("cuda-emu", "1");
    assert_eq!((recomputed.as_str(), kept.as_str()), ("recomputed", "kept"));
    assert!(
        fewer < more,
        "{fewer} bytes kept recomputing, {more} keeping"
    );
    let (cpu, cpu_bytes) = run("cpu", "0");
    assert_eq!(
        (cpu.as_str(), cpu_bytes),
        ("kept", more),
        "the CPU keeps what CUDA keeps"
    );
}

/// `bench --kernel-times` times one more step's kernels on the device: its JSON line lists
/// every kernel with its launches and milliseconds, the GEMM and attention kernels among
/// them, within the step's wall time; the CPU, which launches none, is refused before any
/// step runs.
#[test]
fn bench_times_the_kernels_of_a_step() {
    let args = |device: &'static str, dtype: &'static str| {
        [
            "bench",
            "--shape",
            "tiny",
            "--method",
            "spafit",
            "--device",
            device,
            "--dtype",
            dtype,
            "--batch-size",
            "2",
            "--seq-len",
            "8",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--kernel-times",
        ]
    };
    let (ok, stdout, err) = spafit(&args("cuda-emu", "bf16"));
    assert!(ok, "{err}");
    let line = last_json(&stdout);
    let times = &line["kernel_times"];
    let kernels = times["kernels"].as_array().unwrap();
    let names: Vec<&str> = kernels
        .iter()
        .map(|k| k["kernel"].as_str().unwrap())
        .collect();
    for family in [
        "gemm",
        "attention_forward",
        "attention_backward",
        "layernorm_forward",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(family)),
            "{family}: {names:?}"
        );
    }
    let ms: Vec<f64> = kernels.iter().map(|k| k["ms"].as_f64().unwrap()).collect();
    assert!(
        ms.iter().all(|&m| m >= 0.0) && ms.windows(2).all(|w| w[0] >= w[1]),
        "{ms:?}"
    );
    assert!(kernels.iter().all(|k| k["launches"].as_u64().unwrap() >= 1));
    let (kernel_ms, step_ms) = (
        times["kernel_ms"].as_f64().unwrap(),
        times["step_ms"].as_f64().unwrap(),
    );
    assert!((kernel_ms - ms.iter().sum::<f64>()).abs() <= 1e-9 * kernel_ms);
    // The stand-in runs each kernel as it is launched: the kernels fill most of the step.
    assert!(
        kernel_ms > 0.0 && kernel_ms <= step_ms,
        "{kernel_ms} ms of kernels in a {step_ms} ms step"
    );
    assert!(
        err.contains("one more step, its kernels timed on the device"),
        "{err}"
    );
    // Without the flag the line has no kernel times.
    let plain: Vec<&str> = args("cuda-emu", "bf16")[..17].to_vec();
    let (ok, stdout, err) = spafit(&plain);
    assert!(ok, "{err}");
    assert!(last_json(&stdout).get("kernel_times").is_none(), "{stdout}");
    let (ok, stdout, err) = spafit(&args("cpu", "f32"));
    assert!(!ok && stdout.is_empty(), "{stdout}");
    assert!(
        err.contains("--kernel-times") && err.contains("cuda-emu"),
        "{err}"
    );
}

/// `--lr-schedule`, `--warmup-steps`, `--eval-batch-size`, `--best-metric` and
/// `--early-stopping-patience` reach the trainer: a cosine schedule's logged rates follow half a cosine after one warmup
/// step, not the linear default's line; the dev loss does not depend on the evaluation batch;
/// bad values and combinations are refused naming the flag.
#[test]
fn schedules_and_early_stopping_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "train.csv",
        &sentiment_csv(&SENTIMENT_ROWS[..8]),
    );
    let train = dir.path().join("train.csv").display().to_string();
    let m = model();
    let run = |name: &str, extra: &[&str]| -> (bool, String, String, PathBuf) {
        let out = dir.path().join(name);
        let out_arg = out.display().to_string();
        let mut args = vec![
            "train",
            "--model",
            &m,
            "--train-file",
            &train,
            "--max-len",
            "16",
            "--batch-size",
            "2",
            "--max-steps",
            "4",
            "--log-every",
            "1",
            "--lr",
            "1e-3",
            "--output",
            &out_arg,
        ];
        args.extend(extra);
        let (ok, stdout, err) = spafit(&args);
        (ok, stdout, err, out)
    };
    let rates = |out: &Path| -> Vec<f64> {
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|l| l["type"] == "train")
            .map(|l| l["lr"].as_f64().unwrap())
            .collect()
    };
    let (ok, stdout, err, out) = run(
        "cosine",
        &["--lr-schedule", "Cosine", "--warmup-steps", "1"],
    );
    assert!(ok, "{err}");
    assert_eq!(last_json(&stdout)["early_stopped"], false, "{stdout}");
    let cosine = rates(&out);
    // Step k of 4 after 1 warmup step: 1e-3 · (1 + cos(π (k − 1) / 3)) / 2.
    let want = [0.0, 1e-3, 0.75e-3, 0.25e-3];
    assert_eq!(cosine.len(), 4);
    for (got, want) in cosine.iter().zip(want) {
        assert!((got - want).abs() <= 1e-15, "{cosine:?}");
    }
    let (ok, _, err, out) = run("linear", &["--warmup-steps", "1"]);
    assert!(ok, "{err}");
    let linear = rates(&out);
    assert!((linear[2] - 2e-3 / 3.0).abs() <= 1e-15, "{linear:?}");
    // The dev set in batches of 1 and of the default 64: the same metrics up to rounding.
    write(dir.path(), "dev.csv", &sentiment_csv(&SENTIMENT_ROWS[..5]));
    let dev = dir.path().join("dev.csv").display().to_string();
    let dev_loss = |name: &str, extra: &[&str]| {
        let mut args = vec!["--dev-file", dev.as_str()];
        args.extend(extra);
        let (ok, stdout, err, _) = run(name, &args);
        assert!(ok, "{err}");
        last_json(&stdout)["dev_loss"].as_f64().unwrap()
    };
    let (one, default) = (
        dev_loss("eval1", &["--eval-batch-size", "1"]),
        dev_loss("eval64", &[]),
    );
    assert!(
        (one - default).abs() <= 1e-6 * default.abs(),
        "{one} vs {default}"
    );
    // The metric that picks best/ is named in the result, the task's main one by default.
    // The progress lines show it too.
    let best_metric = |name: &str, extra: &[&str], shown: &str| {
        let mut args = vec!["--dev-file", dev.as_str(), "--eval-every", "2"];
        args.extend(extra);
        let (ok, stdout, err, _) = run(name, &args);
        assert!(ok, "{err}");
        assert!(err.contains(&format!("step 2: dev {shown} ")), "{err}");
        last_json(&stdout)["best_metric"].clone()
    };
    assert_eq!(best_metric("main", &[], "accuracy"), "accuracy");
    let by_loss = best_metric("by-loss", &["--best-metric", "LOSS"], "loss");
    assert_eq!(by_loss, "loss");
    for (extra, flag) in [
        (&["--eval-batch-size", "0"][..], "--eval-batch-size"),
        (&["--eval-batch-size", "8"], "--eval-batch-size"),
        (&["--best-metric", "loss"], "--best-metric"),
        (
            &["--best-metric", "pearson", "--dev-file", dev.as_str()],
            "--best-metric",
        ),
        (&["--lr-schedule", "exponential"][..], "--lr-schedule"),
        (
            &["--warmup-steps", "1", "--warmup-ratio", "0.1"],
            "--warmup-ratio",
        ),
        (
            &["--early-stopping-patience", "2"],
            "--early-stopping-patience",
        ),
        (
            &["--early-stopping-patience", "0"],
            "--early-stopping-patience",
        ),
    ] {
        let (ok, stdout, err, _) = run("refused", extra);
        assert!(!ok && stdout.is_empty(), "{extra:?}: {stdout}");
        assert!(err.contains(flag), "{extra:?}: {err}");
    }
}

/// `--micro-batch-size` reaches the trainer: the banner and the result say so, micro-batches
/// of the whole batch (or of the whole training set) change no bit and a note says they run
/// whole, smaller ones draw other dropout masks (so other losses, close to the whole
/// batch's).
#[test]
fn micro_batches_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let rows = &SENTIMENT_ROWS[..8];
    write(dir.path(), "train.csv", &sentiment_csv(rows));
    write(dir.path(), "dev.csv", &sentiment_csv(&rows[..4]));
    let train = dir.path().join("train.csv").display().to_string();
    let dev = dir.path().join("dev.csv").display().to_string();
    let m = model();
    let run = |name: &str, micro: Option<&str>| -> (Vec<f64>, String) {
        let out = dir.path().join(name).display().to_string();
        let mut args = vec![
            "train",
            "--model",
            &m,
            "--train-file",
            &train,
            "--max-len",
            "16",
            "--batch-size",
            "4",
            "--max-steps",
            "2",
            "--log-every",
            "1",
            "--output",
            &out,
            "--dev-file",
            &dev,
        ];
        if let Some(micro) = micro {
            args.extend(["--micro-batch-size", micro]);
        }
        let (ok, stdout, err) = spafit(&args);
        assert!(ok, "{args:?}: {err}");
        // The result names the batch and the micro-batches, on stdout and in result.json.
        let result: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(Path::new(&out).join("result.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(result, last_json(&stdout));
        assert_eq!(result["batch_size"], 4, "{result}");
        let size = micro
            .filter(|&m| m != "4")
            .map(|m| m.parse::<u64>().unwrap());
        assert_eq!(
            result["micro_batch_size"],
            serde_json::json!(size),
            "{result}"
        );
        (logged_losses(Path::new(&out)).0, err)
    };
    let (whole, banner) = run("whole", None);
    assert!(!banner.contains("micro-batch"), "{banner}");
    let (same, banner) = run("four", Some("4"));
    assert!(!banner.contains("micro-batches of"), "{banner}");
    assert!(
        banner.contains("--micro-batch-size 4 is not below the batch of 4"),
        "{banner}"
    );
    assert_eq!(same, whole);
    let (micro, banner) = run("two", Some("2"));
    assert!(banner.contains("batch 4 in micro-batches of 2"), "{banner}");
    // Below the batch of 16 but not below the 8 examples, which make one batch.
    let out = dir.path().join("all").display().to_string();
    let (ok, _, err) = spafit(&[
        "train",
        "--model",
        &m,
        "--train-file",
        &train,
        "--max-len",
        "16",
        "--batch-size",
        "16",
        "--micro-batch-size",
        "8",
        "--max-steps",
        "1",
        "--output",
        &out,
    ]);
    assert!(ok, "{err}");
    assert!(
        err.contains("--micro-batch-size 8 is not below the 8 training examples"),
        "{err}"
    );
    assert_eq!(micro.len(), whole.len());
    assert_ne!(micro, whole);
    for (a, b) in micro.iter().zip(&whole) {
        assert!((a - b).abs() < 0.2 * b.abs(), "{micro:?} against {whole:?}");
    }
}

/// A base whose config.json sets another `problem_type` than the run's (here multi-label)
/// trains like any base; its PEFT export says how to load it in transformers, which would
/// otherwise give the adapter's head the base's problem, and spafit reads its own export back
/// without the warning a Python-trained adapter on that base gets.
#[test]
fn a_multi_label_base_trains_and_its_export_says_how_to_load_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let base = common::minilm_with_problem_type(&root.join("base"), "multi_label_classification");
    let rows: String = (0..8)
        .map(|i| {
            format!(
                "review number {i} was {},{}\n",
                ["dull", "fine"][i % 2],
                i % 2
            )
        })
        .collect();
    write(root, "train.csv", &format!("text,label\n{rows}"));
    let (b, data) = (
        base.display().to_string(),
        root.join("train.csv").display().to_string(),
    );
    let peft = root.join("peft").display().to_string();
    let (ok, _, err) = spafit(&[
        "train",
        "--model",
        &b,
        "--train-file",
        &data,
        "--method",
        "lora",
        "--max-len",
        "16",
        "--batch-size",
        "4",
        "--max-steps",
        "1",
        "--output",
        &root.join("out").display().to_string(),
        "--export-peft",
        &peft,
    ]);
    assert!(ok, "{err}");
    assert!(
        err.contains("`problem_type` is `multi_label_classification`")
            && err.contains("problem_type=\"single_label_classification\"")
            && err.contains("num_labels=2"),
        "{err}"
    );
    let (ok, _, err) = spafit(&[
        "eval",
        "--model",
        &b,
        "--adapter",
        &peft,
        "--dev-file",
        &data,
    ]);
    assert!(ok && !err.contains("problem_type"), "{err}");
}

/// A checkpoint whose own head is a regressor (one output) trains custom data whose labels
/// are real numbers (which cannot be classes) as a regression from that head, as `eval` and
/// `predict` read it; whole numbers and names train classes on a fresh head.
#[test]
fn a_regression_checkpoint_trains_numeric_labels_as_scores() {
    use safetensors::tensor::TensorView;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let m = PathBuf::from(model());
    let base_bytes = std::fs::read(m.join("model.safetensors")).unwrap();
    let base = safetensors::SafeTensors::deserialize(&base_bytes).unwrap();
    let hidden = 384;
    let weight: Vec<u8> = (0..hidden)
        .flat_map(|i| (0.05 * (i as f32).sin()).to_le_bytes())
        .collect();
    let bias = 0.5f32.to_le_bytes().to_vec();
    let mut views: Vec<(String, TensorView)> = base
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            let view = TensorView::new(v.dtype(), v.shape().to_vec(), v.data()).unwrap();
            (n, view)
        })
        .collect();
    views.push((
        "classifier.weight".into(),
        TensorView::new(safetensors::Dtype::F32, vec![1, hidden], &weight).unwrap(),
    ));
    views.push((
        "classifier.bias".into(),
        TensorView::new(safetensors::Dtype::F32, vec![1], &bias).unwrap(),
    ));
    let tuned = root.join("regressor");
    std::fs::create_dir_all(&tuned).unwrap();
    safetensors::tensor::serialize_to_file(views, None, &tuned.join("model.safetensors")).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(m.join("config.json")).unwrap()).unwrap();
    config["architectures"] = serde_json::json!(["BertForSequenceClassification"]);
    std::fs::write(tuned.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(m.join("tokenizer.json"), tuned.join("tokenizer.json")).unwrap();
    let tuned_s = tuned.display().to_string();

    let data = |name: &str, labels: [&str; 4]| {
        let rows: String = (0..8)
            .map(|i| {
                format!(
                    "the film number {i} was {},{}\n",
                    ["dull", "fine"][i % 2],
                    labels[i % 4]
                )
            })
            .collect();
        write(root, name, &format!("text,label\n{rows}"));
        root.join(name).display().to_string()
    };
    let train = |file: &str, out: &str, extra: &[&str]| {
        let out = root.join(out).display().to_string();
        let mut args = vec![
            "train",
            "--model",
            &tuned_s,
            "--train-file",
            file,
            "--dev-file",
            file,
            "--max-len",
            "16",
            "--batch-size",
            "4",
            "--max-steps",
            "1",
            "--output",
            &out,
        ];
        args.extend_from_slice(extra);
        let (ok, stdout, err) = spafit(&args);
        assert!(ok, "{file} {extra:?}: {err}");
        (last_json(&stdout), err)
    };
    let real = data("real.csv", ["0.5", "1.25", "3", "4.75"]);
    let whole = data("whole.csv", ["1", "2", "3", "5"]);
    let named = data("named.csv", ["neg", "pos", "neg", "pos"]);
    let (line, err) = train(&real, "real", &[]);
    assert!(
        err.contains("trains as a regression from that head")
            && err.contains("starts from the checkpoint's own classifier head"),
        "{err}"
    );
    assert!(line["dev_pearson"].is_number(), "{line}");
    // Whole numbers stay classes (0/1 data on a regressor is a classification), unless
    // --regression says otherwise, which the note offers.
    let (line, err) = train(&whole, "classes", &[]);
    assert!(
        !err.contains("trains as a regression")
            && err.contains("or --regression to train them as the checkpoint's regressor's scores")
            && err.contains("has 1 output(s) and the data needs 4"),
        "{err}"
    );
    assert!(line["dev_accuracy"].is_number(), "{line}");
    let (line, _) = train(&whole, "scores", &["--regression"]);
    assert!(line["dev_pearson"].is_number(), "{line}");
    let (line, err) = train(&named, "named", &[]);
    assert!(
        !err.contains("regression") && err.contains("fresh head"),
        "{err}"
    );
    assert!(line["dev_accuracy"].is_number(), "{line}");
    // Labels that are neither classes nor scores keep their own error.
    let one_class = data("one-class.csv", ["pos", "pos", "pos", "pos"]);
    let (ok, _, err) = spafit(&[
        "train",
        "--model",
        &tuned_s,
        "--train-file",
        &one_class,
        "--max-len",
        "16",
    ]);
    assert!(
        !ok && err.contains("every label in `label` is `pos`")
            && !err.contains("trains as a regression")
            && !err.contains("not a finite number"),
        "{err}"
    );
}

/// A metrics line the disk takes only part of (here a file-size limit, as a full disk does)
/// is cut off again: the run stops naming the file, and what it leaves is whole JSON lines.
#[cfg(target_os = "linux")]
#[test]
fn a_log_line_the_disk_cuts_short_leaves_whole_lines() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "train.csv", &sentiment_csv(&SENTIMENT_ROWS));
    let out = dir.path().join("out");
    // SIGXFSZ at its default action: the command itself must keep it from killing.
    let status = past_the_file_size_limit(1)
        .arg(env!("CARGO_BIN_EXE_spafit"))
        .args(["train", "--model", &model(), "--train-file"])
        .arg(dir.path().join("train.csv"))
        .args(["--max-len", "16", "--batch-size", "2", "--epochs", "3"])
        .args(["--log-every", "1", "--quiet", "--output"])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&status.stderr);
    assert!(!status.status.success());
    assert!(
        err.contains("metrics.jsonl") && err.contains("File too large"),
        "{err}"
    );
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(text.ends_with('\n') && text.len() <= 1024, "{text}");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.len() >= 2, "{text}");
}

/// bash running its arguments under `ulimit -f BLOCKS` (512-byte blocks), with SIGXFSZ at its
/// default action (killing), whatever this process inherited.
#[cfg(target_os = "linux")]
fn past_the_file_size_limit(blocks: usize) -> Command {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new("bash");
    command.args(["-c", &format!("ulimit -f {blocks}; exec \"$0\" \"$@\"")]);
    // SAFETY: signal(2) is async-signal-safe, as a pre_exec hook must be.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_DFL);
            Ok(())
        });
    }
    command
}

/// Predictions larger than the file-size limit allows: the command says so, naming the file,
/// and the predictions written before stay whole, with no temporary left beside them.
#[cfg(target_os = "linux")]
#[test]
fn predictions_past_the_file_size_limit_keep_the_old_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("texts.csv");
    let rows: String = (0..200)
        .map(|i| format!("film number {i} was fine\n"))
        .collect();
    std::fs::write(&data, format!("text\n{rows}")).unwrap();
    let output = tmp.path().join("predictions.jsonl");
    std::fs::write(&output, "earlier predictions\n").unwrap();
    let adapter = format!(
        "{}/tests/fixtures/peft-adapters/lora_qv",
        env!("CARGO_MANIFEST_DIR")
    );
    // 4 KiB: far less than 200 predictions with their probabilities.
    let out = past_the_file_size_limit(8)
        .arg(env!("CARGO_BIN_EXE_spafit"))
        .args(["predict", "--model", &model(), "--adapter", &adapter])
        .args(["--max-len", "16", "--dev-file"])
        .arg(&data)
        .arg("--output")
        .arg(&output)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("predictions.jsonl") && err.contains("File too large"),
        "{err}"
    );
    let left: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(
        std::fs::read_to_string(&output).unwrap(),
        "earlier predictions\n"
    );
}

/// A word of megabytes under a byte-level BPE, more than a process held to 1.5 GB could
/// tokenize (tokenizers takes about 200 bytes per byte): refused before the attempt, naming
/// the file and line, where the allocation's failure aborted the process.
#[cfg(target_os = "linux")]
#[test]
fn a_text_too_long_to_tokenize_in_the_memory_left_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("train.csv");
    let word = "a".repeat(12 << 20);
    let roberta = format!(
        "{}/tests/fixtures/tiny-roberta/model",
        env!("CARGO_MANIFEST_DIR")
    );
    // The word alone, and followed by many short words, where the long-text cut tries
    // prefixes first (each checked before it is tokenized too).
    for (text, megabytes) in [
        (word.clone(), 12),
        (word.clone() + &" b".repeat(7 << 20), 26),
    ] {
        std::fs::write(&data, format!("text,label\nshort,0\n{text},1\n")).unwrap();
        let out = Command::new("bash")
            .args(["-c", "ulimit -v 1500000; exec \"$0\" \"$@\""])
            .arg(env!("CARGO_BIN_EXE_spafit"))
            .env("RAYON_NUM_THREADS", "2")
            .args(["train", "--model", &roberta, "--max-steps", "1"])
            .arg("--train-file")
            .arg(&data)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("tokenize: out of memory (")
                && err.contains("train.csv, line 3: ")
                && err.contains(&format!("tokenizing {megabytes} MB of text takes about"))
                && err.contains("under the address-space limit (ulimit -v)")
                && err.contains(&format!("… ({} bytes)", text.len())),
            "{err}"
        );
    }
}

/// A process held to less memory than the host has free (`ulimit -v`, as a container's
/// limit holds it) is refused a batch that cannot fit under that limit, with the limit's
/// figure, instead of aborting when an allocation fails.
#[cfg(target_os = "linux")]
#[test]
fn a_batch_over_the_process_memory_limit_is_refused() {
    let out = Command::new("bash")
        .args(["-c", "ulimit -v 1500000; exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_spafit"))
        // Each worker thread reserves its stack in the limited address space: a fixed count
        // keeps the test's room the same on a machine of many cores.
        .env("RAYON_NUM_THREADS", "2")
        .args(["bench", "--model", &model(), "--batch-size", "256"])
        .args(["--seq-len", "128", "--steps", "1", "--warmup", "0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("a batch of 256 × 128 tokens needs at least"),
        "{err}"
    );
    // The room under the limit (1.43 GiB less what the process maps), not the host's.
    assert!(
        err.contains("GiB is available under the address-space limit (ulimit -v)"),
        "{err}"
    );
    let available: f64 = err
        .split("; ")
        .nth(1)
        .and_then(|rest| rest.split(" GiB is available").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    assert!(available < 1.5, "{err}");
}

/// What a run of custom data cannot learn, or reads other than meant, is said before it
/// trains: a class of --labels no training example has, texts of a TSV quoted by a CSV
/// writer.
#[test]
fn a_tsv_written_with_every_field_quoted_is_pointed_out() {
    let tmp = tempfile::tempdir().unwrap();
    let train = |name: &str, text: &str| {
        let path = tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        let path = path.display().to_string();
        spafit(&[
            "train",
            "--model",
            &model(),
            "--train-file",
            &path,
            "--max-len",
            "16",
            "--max-steps",
            "1",
            "--quiet",
        ])
    };
    // Every string quoted (csv.QUOTE_NONNUMERIC, QUOTE_ALL): the header's names too.
    let (ok, _, err) = train(
        "all.tsv",
        "\"text\"\t\"label\"\n\"a fine film\"\t1\n\"dull\"\t0\n",
    );
    assert!(
        !ok && err.contains("no column `text`")
            && err.contains("the header has `\"text\"` in quotes")
            && err.contains("QUOTE_NONE"),
        "{err}"
    );
    // Quoted texts under a plain header train, with the quotes in the text, and a warning.
    let (ok, _, err) = train(
        "texts.tsv",
        "text\tlabel\n\"a fine film\"\t1\n\"dull\"\t0\n\"so-so\"\t0\n",
    );
    assert!(
        ok && err.contains(
            "3 texts look quoted as CSV writes them (first: line 2; every text is in quotes)"
        ),
        "{err}"
    );
    // One quotation among plain texts is text: no warning.
    let (ok, _, err) = train("one.tsv", "text\tlabel\n\"Wow.\"\t1\ndull\t0\nso-so\t0\n");
    assert!(ok && !err.contains("quoted as CSV"), "{err}");
}

#[test]
fn train_notes_classes_without_examples_and_csv_quoting_in_a_tsv() {
    let tmp = tempfile::tempdir().unwrap();
    let train = tmp.path().join("train.tsv");
    std::fs::write(
        &train,
        "text\tlabel\n\"he said \"\"great\"\" movie\"\tpos\nplain bad\tneg\nfine\tpos\n",
    )
    .unwrap();
    let train = train.display().to_string();
    let run = |labels: &str| {
        spafit(&[
            "train",
            "--model",
            &model(),
            "--train-file",
            &train,
            "--labels",
            labels,
            "--max-len",
            "16",
            "--max-steps",
            "1",
            "--quiet",
        ])
    };
    let (ok, _, err) = run("neg,pos,other,more");
    assert!(ok, "{err}");
    assert!(
        err.contains("has the classes `other`, `more` (of 4 classes)")
            && err.contains("1 text looks quoted as CSV writes them (first: line 2"),
        "{err}"
    );
    let (ok, _, err) = run("neg,pos");
    assert!(ok && !err.contains("no training example"), "{err}");
    // The CPU's bf16 changes nothing where nothing is frozen, and says so.
    let (ok, _, err) = spafit(&[
        "train",
        "--model",
        &model(),
        "--train-file",
        &train,
        "--method",
        "full",
        "--dtype",
        "bf16",
        "--max-len",
        "8",
        "--max-steps",
        "1",
        "--quiet",
    ]);
    assert!(ok && err.contains("this run computes as in f32"), "{err}");
}

/// A length the model cannot take is refused before the data is read (which, missing here,
/// would be the error otherwise), for train, eval and predict alike.
#[test]
fn a_max_len_past_the_positions_is_refused_before_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.csv").display().to_string();
    for command in ["train", "eval", "predict"] {
        let file_flag = if command == "train" {
            "--train-file"
        } else {
            "--dev-file"
        };
        let (ok, _, err) = spafit(&[
            command,
            "--model",
            &model(),
            file_flag,
            &missing,
            "--max-len",
            "513",
        ]);
        assert!(
            !ok && err.contains("--max-len") && err.contains("exceeds the model's 512 positions"),
            "{command}: {err}"
        );
    }
}

/// Where the model has fewer positions than the default cut and no --max-len is given,
/// inputs are cut to the model's positions, with a note, for train, eval and predict alike;
/// a --max-len past them is still refused.
#[test]
fn the_default_cut_is_at_most_the_models_positions() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = tmp.path().join("tiny");
    common::tiny_bert::write_checkpoint_with_positions(&tiny, 20);
    let m = tiny.display().to_string();
    let data = tmp.path().join("data.csv");
    let long = "a long review that goes on and on well past twenty tokens of text and \
                with more words after that and yet more after those";
    std::fs::write(
        &data,
        format!("text,label\n{long},1\nshort,0\n{long},0\nok,1\n"),
    )
    .unwrap();
    let d = data.display().to_string();
    let out = tmp.path().join("run").display().to_string();
    let (ok, stdout, err) = spafit(&[
        "train",
        "--model",
        &m,
        "--train-file",
        &d,
        "--dev-file",
        &d,
        "--method",
        "bitfit",
        "--max-steps",
        "1",
        "--output",
        &out,
        "--quiet",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("inputs are cut to 20 tokens"), "{err}");
    assert_eq!(last_json(&stdout)["max_len"], 20, "{stdout}");
    let best = format!("{out}/best");
    for command in ["eval", "predict"] {
        let (ok, _, err) = spafit(&[command, "--model", &m, "--adapter", &best, "--dev-file", &d]);
        assert!(ok, "{command}: {err}");
    }
    let (ok, _, err) = spafit(&[
        "train",
        "--model",
        &m,
        "--train-file",
        &d,
        "--max-len",
        "21",
        "--max-steps",
        "1",
    ]);
    assert!(
        !ok && err.contains("exceeds the model's 20 positions"),
        "{err}"
    );
    // Positions for the special tokens alone: the model is at fault, not a flag nobody gave.
    let two = tmp.path().join("two");
    common::tiny_bert::write_checkpoint_with_positions(&two, 2);
    let m = two.display().to_string();
    let (ok, _, err) = spafit(&["train", "--model", &m, "--train-file", &d, "--output", &out]);
    assert!(
        !ok && !err.contains("--max-len:")
            && err.contains("the model has 2 positions for a text")
            && err.contains("no text fits"),
        "{err}"
    );
}

/// `spafit merge` makes a checkpoint that `eval` reads as a fine-tuned one, without the
/// adapter, to the adapter's own results; it refuses to write among the files it reads or
/// into a folder that holds any.
#[test]
fn a_merged_adapter_evaluates_as_the_adapter_without_it() {
    let m = model();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let rows = |offset: usize| -> String {
        let mut text = String::from("text,label\n");
        for i in 0..16 {
            let (words, label) = match i % 2 {
                0 => ("a warm and witty film", "pos"),
                _ => ("a dull and tedious mess", "neg"),
            };
            text.push_str(&format!("\"{words} {}\",{label}\n", i + offset));
        }
        text
    };
    write(root, "train.csv", &rows(0));
    write(root, "dev.csv", &rows(100));
    let p = |name: &str| root.join(name).display().to_string();
    let (ok, _, err) = spafit(&[
        "train",
        "--model",
        &m,
        "--train-file",
        &p("train.csv"),
        "--max-len",
        "16",
        "--batch-size",
        "8",
        "--max-steps",
        "2",
        "--lr",
        "5e-3",
        "--output",
        &p("run"),
        "--quiet",
    ]);
    assert!(ok, "{err}");
    let (merged, adapter, dev) = (p("merged"), p("run/best"), p("dev.csv"));
    let merge = |output: &str, extra: &[&str]| {
        let mut args = vec![
            "merge",
            "--model",
            &m,
            "--adapter",
            &adapter,
            "--output",
            output,
        ];
        args.extend_from_slice(extra);
        spafit(&args)
    };
    let (ok, stdout, err) = merge(&merged, &[]);
    assert!(ok, "{err}");
    let line = last_json(&stdout);
    assert_eq!(line["classes"], serde_json::json!(["neg", "pos"]), "{line}");
    assert!(err.contains("cut to 16 tokens"), "{err}");
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--dev-file", &dev];
        args.extend_from_slice(extra);
        let (ok, stdout, err) = spafit(&args);
        assert!(ok, "{err}");
        last_json(&stdout)
    };
    let with_adapter = eval(&["--model", &m, "--adapter", &adapter]);
    // Cut where the adapter cut its texts, as the merge recorded.
    let without = eval(&["--model", &merged]);
    assert_eq!(without["max_len"], 16);
    assert_eq!(without["accuracy"], with_adapter["accuracy"]);
    let (a, b) = (
        with_adapter["loss"].as_f64().unwrap(),
        without["loss"].as_f64().unwrap(),
    );
    // The merge stores f32 weights: the sums rounded once.
    assert!((a - b).abs() <= 1e-5 * a.abs(), "{a} vs {b}");
    for (output, extra, status_ok, needle) in [
        (merged.clone(), vec![], false, "is not empty"),
        (
            p("run/best/merged"),
            vec![],
            false,
            "the folder of the model or adapter",
        ),
        (
            p("other"),
            vec!["--dtype", "f8"],
            false,
            "expected f32, f16, bf16 or f64",
        ),
        (p("half"), vec!["--dtype", "f16"], true, ""),
    ] {
        let (ok, _, err) = merge(&output, &extra);
        assert!(
            ok == status_ok && err.contains(needle),
            "{output} {extra:?}: {err}"
        );
    }
    let half = eval(&["--model", &p("half")]);
    assert_eq!(half["accuracy"], with_adapter["accuracy"]);
    // A folder another process fills while the merge is written (a second merge into it)
    // stays as that process left it; this merge says so and leaves nothing behind.
    let raced = root.join("raced");
    let mut child = Command::new(env!("CARGO_BIN_EXE_spafit"))
        .args(["merge", "--model", &m, "--adapter", &adapter, "--output"])
        .arg(&raced)
        .env("SPAFIT_SLOW_WRITES_MS", "1500")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let staging = || {
        std::fs::read_dir(root)
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".raced.merging-")
            })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !staging() {
        assert!(child.try_wait().unwrap().is_none(), "the merge ended first");
        assert!(std::time::Instant::now() < deadline, "no staging folder");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::fs::create_dir(&raced).unwrap();
    std::fs::write(raced.join("model.safetensors"), "another merge's").unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("was filled by another process"), "{err}");
    let kept = std::fs::read(raced.join("model.safetensors")).unwrap();
    assert_eq!(kept, b"another merge's");
    assert!(!staging(), "the merge's staging folder was left");
}

/// Runs `spafit predict` with `args` while `fifo` is a named pipe that no program writes to
/// yet: asserts that its note, naming `noted` (the pipe or a link to it), comes before the
/// wait (which would otherwise look like a hang), then writes `content` into it and returns
/// the run's predictions (stdout).
fn predict_announcing_the_pipe(fifo: &Path, noted: &Path, content: &[u8], args: &[&str]) -> String {
    use std::io::{BufRead, Write};
    let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `name` is a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    let mut child = Command::new(env!("CARGO_BIN_EXE_spafit"))
        .arg("predict")
        .args(args)
        .args(["--format", "jsonl"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (lines, seen) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in stderr.lines().map_while(std::io::Result::ok) {
            let _ = lines.send(line);
        }
    });
    let write_content = || {
        let mut pipe = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
        pipe.write_all(content).unwrap();
    };
    let note = format!("{} is a named pipe", noted.display());
    let mut before_the_content = Vec::new();
    loop {
        match seen.recv_timeout(std::time::Duration::from_secs(120)) {
            Ok(line) if line.contains(&note) => break,
            Ok(line) => before_the_content.push(line),
            Err(why) => {
                // Unblocks the child, so the test fails instead of hanging.
                write_content();
                panic!("no note before the wait ({why}); stderr: {before_the_content:?}");
            }
        }
    }
    write_content();
    let out = child.wait_with_output().unwrap();
    reader.join().unwrap();
    assert!(out.status.success(), "{before_the_content:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Data on a named pipe is announced before it is waited on, and the rows written then are
/// predicted.
#[test]
fn a_named_pipe_of_rows_is_announced_before_it_is_waited_on() {
    let root = tempfile::tempdir().unwrap();
    let fifo = root.path().join("rows.csv");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-roberta");
    let (model, adapter) = (fixture.join("model"), fixture.join("peft-lora"));
    let stdout = predict_announcing_the_pipe(
        &fifo,
        &fifo,
        b"text\nso-so\na gorgeous movie\n",
        &[
            "--model",
            model.to_str().unwrap(),
            "--adapter",
            adapter.to_str().unwrap(),
            "--dev-file",
            fifo.to_str().unwrap(),
        ],
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.contains("\"probabilities\""))
            .count(),
        2,
        "{stdout}"
    );
}

/// A checkpoint's or an adapter's weights on a named pipe are announced before they are
/// waited on, as data is, and the weights written then give the predictions of the files
/// they came from.
#[test]
fn named_pipes_of_weights_are_announced_before_they_are_waited_on() {
    let root = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-roberta");
    let copy = |from: &str, to: &str| {
        let to = root.path().join(to);
        std::fs::create_dir(&to).unwrap();
        for entry in std::fs::read_dir(fixture.join(from)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
        to
    };
    let (model, adapter) = (copy("model", "model"), copy("peft-lora", "adapter"));
    let rows = root.path().join("rows.csv");
    std::fs::write(&rows, "text\nso-so\na gorgeous movie\n").unwrap();
    let args = [
        "--model",
        model.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--dev-file",
        rows.to_str().unwrap(),
    ];
    let (ok, from_files, err) = spafit(&[&["predict"][..], &args, &["--format", "jsonl"]].concat());
    assert!(ok, "{err}");
    for weights in [
        model.join("model.safetensors"),
        adapter.join("adapter_model.safetensors"),
    ] {
        let bytes = std::fs::read(&weights).unwrap();
        std::fs::remove_file(&weights).unwrap();
        let stdout = predict_announcing_the_pipe(&weights, &weights, &bytes, &args);
        assert_eq!(stdout, from_files, "{}", weights.display());
        std::fs::remove_file(&weights).unwrap();
        std::fs::write(&weights, &bytes).unwrap();
    }
    // Linked to a pipe elsewhere, as a Hugging Face cache's snapshot links to its blobs.
    let weights = model.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::remove_file(&weights).unwrap();
    let blob = root.path().join("blob");
    std::os::unix::fs::symlink(&blob, &weights).unwrap();
    let stdout = predict_announcing_the_pipe(&blob, &weights, &bytes, &args);
    assert_eq!(stdout, from_files, "linked");
    std::fs::remove_file(&weights).unwrap();
    std::fs::write(&weights, &bytes).unwrap();
    // The configuration and the tokenizer are read from regular files only: a pipe is
    // refused at once, saying so, not waited on.
    for (file, said) in [
        ("config.json", "config.json here is a named pipe"),
        ("tokenizer.json", "is not a regular file (a named pipe?)"),
    ] {
        let path = model.join(file);
        let kept = root.path().join(file);
        std::fs::rename(&path, &kept).unwrap();
        let name = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: `name` is a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let (ok, _, err) = spafit(&[&["predict"][..], &args].concat());
        assert!(!ok && err.contains(said), "{file}: {err}");
        std::fs::remove_file(&path).unwrap();
        std::fs::rename(&kept, &path).unwrap();
    }
}

/// `--resume` on a finished run whose saved state was removed has nothing to resume: it is
/// refused (other settings here), and the run's result and best adapter stay as they were.
#[test]
fn resume_refuses_a_finished_run_without_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "t.csv",
        "text,label\ngood,1\nbad,0\nfine,1\nawful,0\n",
    );
    let (m, t) = (model(), root.join("t.csv").display().to_string());
    let out = root.join("run").display().to_string();
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--model",
            &m,
            "--train-file",
            &t,
            "--dev-file",
            &t,
            "--max-len",
            "16",
            "--epochs",
            "1",
            "--output",
            &out,
            "--quiet",
        ];
        args.extend_from_slice(extra);
        spafit(&args)
    };
    let (ok, _, err) = train(&[]);
    assert!(ok, "{err}");
    let run = root.join("run");
    let result = std::fs::read(run.join("result.json")).unwrap();
    let best = std::fs::read(run.join("best/adapter.safetensors")).unwrap();
    std::fs::remove_dir_all(run.join("last")).unwrap();
    let (ok, _, err) = train(&["--method", "bitfit", "--lr", "1e-2", "--resume"]);
    assert!(
        !ok && err.contains("holds a finished run (result.json) whose saved state (last/) is gone"),
        "{err}"
    );
    assert_eq!(std::fs::read(run.join("result.json")).unwrap(), result);
    assert_eq!(
        std::fs::read(run.join("best/adapter.safetensors")).unwrap(),
        best
    );
    // Without its result, --resume starts over there, as it says it does.
    std::fs::remove_file(run.join("result.json")).unwrap();
    let (ok, _, err) = train(&["--resume"]);
    assert!(ok && err.contains("no saved state"), "{err}");
}

/// A command that runs out of device memory on a batch names the batch and the settings of
/// its own that need less: `eval` and `predict` their --batch-size (below the largest batch
/// the split makes) and --max-len, `bench` its --seq-len, --micro-batch-size and
/// --batch-size; in f32 each also offers --dtype bf16. The memory is set just below what the
/// command needs, found by bisection on the CPU stand-in, where the batch is the peak.
#[test]
fn out_of_device_memory_names_the_batch_and_what_needs_less() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("tiny");
    common::tiny_bert::write_checkpoint(&tiny);
    let m = tiny.display().to_string();
    let csv = dir.path().join("data.csv");
    let mut text = String::from("text,label\n");
    for i in 0..12 {
        let words = ["good", "bad", "film", "plot", "actor", "scene"];
        let line: Vec<&str> = (0..60).map(|j| words[(i + j * 7) % words.len()]).collect();
        text += &format!("{},{}\n", line.join(" "), i % 2);
    }
    std::fs::write(&csv, text).unwrap();
    let data = csv.display().to_string();
    let out = dir.path().join("run");
    let (ok, _, err) = spafit(&[
        "train",
        "--model",
        &m,
        "--train-file",
        &data,
        "--dev-file",
        &data,
        "--method",
        "bitfit",
        "--max-len",
        "64",
        "--batch-size",
        "4",
        "--max-steps",
        "1",
        "--quiet",
        "--output",
        &out.display().to_string(),
    ]);
    assert!(ok, "{err}");
    let adapter = out.join("best").display().to_string();
    // The most device memory under which `args` fails, and its error.
    let just_too_little = |args: &[&str]| -> String {
        let run = |bytes: u64| {
            let bytes = std::ffi::OsString::from(bytes.to_string());
            spafit_with_env(args, &[("SPAFIT_EMU_MEMORY", &bytes)])
        };
        most_memory_that_fails(&format!("{args:?}"), run, 4096).2
    };
    let on_data = ["--train-file", &data, "--dev-file", &data, "--split", "dev"];
    for command in ["eval", "predict"] {
        let mut args = vec![command, "--device", "cuda-emu", "--model", &m];
        args.extend([
            "--adapter",
            &adapter,
            "--max-len",
            "64",
            "--batch-size",
            "100",
        ]);
        args.extend(on_data);
        let err = just_too_little(&args);
        assert!(
            err.contains("out of memory")
                && err.contains("This was a batch of up to 12 examples of up to ")
                && err.contains(" tokens (texts cut to 64): a --max-len below ")
                && err.contains(
                    ", a --batch-size below 12 or --dtype bf16 (the frozen weights in half the \
                     memory) needs less"
                ),
            "{command}: {err}"
        );
    }
    let bench = [
        "bench",
        "--device",
        "cuda-emu",
        "--dtype",
        "bf16",
        "--model",
        &m,
        "--method",
        "bitfit",
        "--batch-size",
        "8",
        "--micro-batch-size",
        "4",
        "--seq-len",
        "64",
        "--steps",
        "1",
        "--warmup",
        "0",
    ];
    let err = just_too_little(&bench);
    // In micro-batches a smaller batch changes nothing; in bf16 the frozen weights are
    // stored in bf16 already.
    assert!(
        err.contains(
            "This was a training step on a batch of 8 × 64 tokens in micro-batches of 4: a \
             shorter --seq-len or a smaller --micro-batch-size (the same batch in parts) needs \
             less"
        ),
        "{err}"
    );
    // Full fine-tuning in f32 has no frozen weights for bf16 to halve.
    let mut full = bench.to_vec();
    full[4] = "f32";
    full[8] = "full";
    full.truncate(11);
    full.extend(["--seq-len", "64", "--steps", "1", "--warmup", "0"]);
    let err = just_too_little(&full);
    assert!(
        err.contains("This was a training step on a batch of 8 × 64 tokens: a shorter --seq-len")
            && !err.contains("--dtype bf16"),
        "{err}"
    );
}

/// A model of fewer positions than gradcheck's 32 tokens is checked on its sentences cut to
/// its table (it was refused with advice to give --max-len, which gradcheck refuses).
#[test]
fn gradcheck_cuts_its_sentences_to_a_short_position_table() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("short");
    common::tiny_bert::write_checkpoint_with_positions(&dir, 8);
    for extra in [&[][..], &["--pairs"][..]] {
        let mut args = vec![
            "gradcheck",
            "--model",
            dir.to_str().unwrap(),
            "--method",
            "lora",
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--samples", "2", "--tolerance", "1e-6"]);
        let (ok, stdout, err) = spafit(&args);
        assert!(ok, "{extra:?}: {err}");
        assert_eq!(last_json(&stdout)["passed"], true, "{stdout}");
    }
    // Four positions take a sentence, not a pair's two texts beside three special tokens.
    let four = tmp.path().join("four");
    common::tiny_bert::write_checkpoint_with_positions(&four, 4);
    let args = [
        "gradcheck",
        "--model",
        four.to_str().unwrap(),
        "--samples",
        "1",
    ];
    let (ok, _, err) = spafit(&args);
    assert!(ok, "{err}");
    let (ok, _, err) = spafit(&[&args[..], &["--pairs"]].concat());
    assert!(
        !ok && err.contains("checking pairs needs 5 or more"),
        "{err}"
    );
}

/// gradcheck differentiates the loss a task trains: sentence pairs, a regression head's mean
/// squared error and a multi-label head's binary cross-entropy pass at the f64 reference's
/// agreement (and the stand-in's f32 at f32's), and the JSON line says which loss it was. The
/// head changes what is checked: a regression head's bias has one coordinate where a
/// two-class head's has two. Class counts no head of that kind has are refused by the flag.
#[test]
fn gradcheck_checks_pairs_regression_and_multi_label_losses() {
    let m = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny-electra/model")
        .display()
        .to_string();
    let check = |extra: &[&str]| {
        let mut args = vec!["gradcheck", "--model", &m, "--samples", "2"];
        args.extend_from_slice(extra);
        let (ok, stdout, err) = spafit(&args);
        assert!(ok, "{extra:?}: {err}");
        last_json(&stdout)
    };
    let tight = ["--tolerance", "1e-8"];
    let classes = check(&[&["--method", "bitfit", "--pairs"][..], &tight].concat());
    let regression = check(
        &[
            &["--method", "bitfit", "--pairs", "--regression"][..],
            &tight,
        ]
        .concat(),
    );
    for (line, objective, labels) in [
        (&classes, "classification", 2),
        (&regression, "regression", 1),
    ] {
        assert_eq!(line["passed"], true, "{line}");
        assert_eq!(
            (&line["objective"], &line["num_labels"], &line["pairs"]),
            (
                &serde_json::json!(objective),
                &serde_json::json!(labels),
                &serde_json::json!(true)
            ),
            "{line}"
        );
    }
    let coordinates = |line: &serde_json::Value| line["coordinates"].as_u64().unwrap();
    assert_eq!(
        coordinates(&classes),
        coordinates(&regression) + 1,
        "{classes}\n{regression}"
    );
    // Pairs are other inputs than single sentences: the gradients, and so how finely the
    // check resolved them, differ.
    let single = check(&[&["--method", "bitfit"][..], &tight].concat());
    assert_eq!(single["pairs"], false, "{single}");
    assert_ne!(
        single["resolution"], classes["resolution"],
        "{single}\n{classes}"
    );
    // Every tensor of the model, the embeddings' token types included, under full fine-tuning.
    let full = check(
        &[
            &[
                "--method",
                "full",
                "--pairs",
                "--multi-label",
                "--num-labels",
                "3",
            ][..],
            &tight,
        ]
        .concat(),
    );
    assert_eq!(
        (&full["passed"], &full["objective"], &full["num_labels"]),
        (
            &serde_json::json!(true),
            &serde_json::json!("multi-label"),
            &serde_json::json!(3)
        ),
        "{full}"
    );
    // The stand-in's f32 kernels for the same losses.
    for objective in [
        &["--regression"][..],
        &["--multi-label", "--num-labels", "1"],
    ] {
        let args = [
            &[
                "--device", "cuda-emu", "--dtype", "f32", "--method", "spafit", "--pairs",
            ][..],
            objective,
            &["--tolerance", "1e-4"],
        ]
        .concat();
        let line = check(&args);
        assert_eq!(line["device"], "cuda-emu-f32", "{line}");
        assert_eq!(line["passed"], true, "{line}");
    }
    for (args, expected) in [
        (
            &["--num-labels", "1"][..],
            "--num-labels: invalid argument: 1: a classification head has at least 2 classes",
        ),
        (
            &["--multi-label", "--num-labels", "5000"],
            "invalid value '5000' for '--num-labels <NUM_LABELS>': must be at most 4096",
        ),
        (
            &["--multi-label", "--num-labels", "0"],
            "invalid value '0' for '--num-labels <NUM_LABELS>': must be at least 1",
        ),
    ] {
        let (ok, _, err) = spafit(&[&["gradcheck", "--model", &m][..], args].concat());
        assert!(!ok && err.contains(expected), "{args:?}: {err}");
    }
    let (ok, _, err) = spafit(&[
        "gradcheck",
        "--model",
        &m,
        "--regression",
        "--num-labels",
        "3",
    ]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
}

/// A run whose saved state cannot be written (its `last/` made read-only) is refused when
/// resumed, before any step: the first save would fail after the steps before it. Root may
/// write anywhere, so as root the resume runs as `nobody` (through `setpriv`, where
/// installed). A finished run, which writes nothing there when resumed, is not refused:
/// whether its result was written or it was killed after its last step before writing it.
#[test]
fn a_resume_that_could_not_save_is_refused_before_training() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mode = |path: &Path, bits: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(bits)).unwrap()
    };
    let model = root.join("model");
    std::fs::create_dir(&model).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-electra/model");
    for f in std::fs::read_dir(&fixture).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, model.join(f.file_name().unwrap())).unwrap();
    }
    let rows: String = (0..8).map(|i| format!("text {i},{}\n", i % 2)).collect();
    write(root, "train.csv", &format!("text,label\n{rows}"));
    let out = root.join("run");
    let run_args = |output: &str, steps: &str, extra: &[&str]| -> Vec<String> {
        let fixed = [
            "train",
            "--model",
            "model",
            "--train-file",
            "train.csv",
            "--max-steps",
            steps,
            "--batch-size",
            "4",
            "--save-every",
            "1",
            "--output",
            output,
            "--quiet",
        ];
        fixed.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let args = |extra: &[&str]| run_args("run", "2", extra);
    let (ok, _, err) = spafit_in(root, &args(&[]), false);
    assert!(ok, "{err}");
    // A run stopped early (nothing improves at a zero learning rate), its result written.
    write(root, "dev.csv", &format!("text,label\n{rows}"));
    let early = [
        "--dev-file",
        "dev.csv",
        "--eval-every",
        "1",
        "--early-stopping-patience",
        "1",
        "--lr",
        "0",
        "--epochs",
        "10",
    ];
    let stopped_args = |extra: &[&str]| run_args("stopped", "10", &[&early[..], extra].concat());
    let (ok, stdout, err) = spafit_in(root, &stopped_args(&[]), false);
    assert!(
        ok && stdout.contains("\"early_stopped\":true"),
        "{stdout}{err}"
    );
    // A run killed once its first state is saved, long before its last step.
    let unfinished = root.join("unfinished");
    let long_run = run_args("unfinished", "100000", &["--epochs", "50000"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_spafit"))
        .args(&long_run)
        .current_dir(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state = unfinished.join("last").join(spafit::train::STATE_FILE);
    let started = std::time::Instant::now();
    while !state.is_file() && started.elapsed() < std::time::Duration::from_secs(120) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(state.is_file(), "no state saved in two minutes");
    // Everyone may read and write all of it (whatever the umask) but the run's state.
    fn open_to_all(path: &Path) {
        let bits = if path.is_dir() { 0o777 } else { 0o666 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(bits)).unwrap();
        if path.is_dir() {
            for entry in std::fs::read_dir(path).unwrap() {
                open_to_all(&entry.unwrap().path());
            }
        }
    }
    open_to_all(root);
    let stopped = root.join("stopped");
    for run in [&out, &unfinished, &stopped] {
        mode(&run.join("last"), 0o555);
    }
    // Writable again at the end, so the temporary folder can be removed whatever happens.
    struct Reopen(PathBuf);
    impl Drop for Reopen {
        fn drop(&mut self) {
            let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o777));
        }
    }
    let _reopen = [&out, &unfinished, &stopped].map(|run| Reopen(run.join("last")));
    // SAFETY: geteuid has no preconditions.
    let as_root = unsafe { libc::geteuid() } == 0;
    // The finished run says its result again, writing nothing. As root it runs as `nobody`,
    // who must reach the binary and the temporary folder (setpriv, the paths' permissions):
    // where it cannot, the check is skipped, not failed.
    let (ok, stdout, err) = spafit_in(root, &args(&["--resume"]), as_root);
    if as_root && !ok {
        common::skipped(&format!(
            "a_resume_that_could_not_save_is_refused_before_training: as root, and `nobody` \
             cannot run spafit here through setpriv ({})",
            err.trim()
        ));
        return;
    }
    assert!(
        ok && stdout.contains("\"steps\":2"),
        "a finished run: {err}"
    );
    // Killed after its last save, before its result: the resume writes the result.
    std::fs::remove_file(out.join("result.json")).unwrap();
    let (ok, stdout, err) = spafit_in(root, &args(&["--resume"]), as_root);
    assert!(
        ok && stdout.contains("\"steps\":2") && out.join("result.json").is_file(),
        "a run over but for its result: {err}"
    );
    // And so is one stopped early.
    std::fs::remove_file(stopped.join("result.json")).unwrap();
    let (ok, stdout, err) = spafit_in(root, &stopped_args(&["--resume"]), as_root);
    assert!(
        ok && stdout.contains("\"early_stopped\":true") && stopped.join("result.json").is_file(),
        "a run stopped early but for its result: {err}"
    );
    let resume_long = [long_run, vec!["--resume".to_string()]].concat();
    let (ok, _, err) = spafit_in(root, &resume_long, as_root);
    assert!(
        !ok && err.contains("unfinished/last is a directory this user may not write into"),
        "{err}"
    );
}

/// `spafit` in `dir`, as `nobody` where `as_nobody` (through setpriv).
fn spafit_in(dir: &Path, args: &[String], as_nobody: bool) -> (bool, String, String) {
    let bin = env!("CARGO_BIN_EXE_spafit");
    let mut command = match as_nobody {
        true => {
            let mut c = Command::new("/usr/bin/setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", bin]);
            c
        }
        false => Command::new(bin),
    };
    // No setpriv to run: a failure, which the caller may take as a reason to skip.
    let out = match command.args(args).current_dir(dir).output() {
        Ok(out) => out,
        Err(e) => return (false, String::new(), e.to_string()),
    };
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// bench's default length is cut to a small model's positions, noted, as train, eval and
/// predict cut theirs; a length asked for beyond them is refused.
#[test]
fn bench_fits_its_default_length_to_a_small_model() {
    let m = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny-roberta/model")
        .display()
        .to_string();
    let bench = [
        "bench",
        "--model",
        &m,
        "--batch-size",
        "2",
        "--steps",
        "1",
        "--warmup",
        "0",
    ];
    let (ok, stdout, err) = spafit(&bench);
    assert!(ok && err.contains("note: sequences of 38 tokens"), "{err}");
    assert_eq!(last_json(&stdout)["seq_len"], 38, "{stdout}");
    let (ok, _, err) = spafit(&[&bench[..], &["--seq-len", "64"]].concat());
    assert!(
        !ok && err.contains("sequences of 64 tokens are longer than the model's 38 positions"),
        "{err}"
    );
}

/// `--threads N` (before or after the command) sets the CPU worker threads, and a run gives
/// the same bits on one thread as on three.
#[test]
fn the_thread_count_flag_sets_the_workers_and_changes_no_bit() {
    let m = model();
    let bench = |threads: &[&str]| {
        let args = [
            "bench",
            "--model",
            &m,
            "--batch-size",
            "8",
            "--seq-len",
            "8",
        ];
        let steps = ["--steps", "1", "--warmup", "0"];
        let (ok, out, err) = spafit(&[threads, &args[..], &steps[..]].concat());
        assert!(ok, "{err}");
        let line: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        line["host_threads"].as_u64().unwrap()
    };
    assert_eq!(bench(&["--threads", "3"]), 3);
    // Without the flag, rayon's default: RAYON_NUM_THREADS where the test runs with it set.
    let default = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(std::thread::available_parallelism().unwrap().get() as u64);
    assert_eq!(bench(&[]), default);
    let (ok, out, err) = spafit(&["bench", "--model", &m, "--threads", "1", "--steps", "1"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"host_threads\":1"), "{out}");
    let (ok, _, err) = spafit(&["bench", "--model", &m, "--threads", "0"]);
    assert!(
        !ok && err.contains("--threads") && err.contains("0 worker threads: give 1 to 1024"),
        "{err}"
    );
    // Hundreds of thousands of threads hung the process starting them.
    let (ok, _, err) = spafit(&["bench", "--model", &m, "--threads", "1025"]);
    assert!(
        !ok && err.contains("1025 worker threads: at most 1024"),
        "{err}"
    );
    let (ok, _, err) = spafit_with_env(
        &["bench", "--model", &m, "--steps", "1"],
        &[("RAYON_NUM_THREADS", "5000".as_ref())],
    );
    assert!(
        !ok && err.contains("RAYON_NUM_THREADS") && err.contains("at most 1024"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "t.csv",
        &(0..24)
            .map(|i| {
                let words = [
                    "good", "bad", "fine", "film", "awful", "great", "dull", "plot",
                ];
                let text: Vec<&str> = (0..20).map(|j| words[(i * 3 + j * 5) % 8]).collect();
                format!("{},{}\n", text.join(" "), i % 2)
            })
            .fold("text,label\n".to_string(), |all, row| all + &row),
    );
    let data = dir.path().join("t.csv").display().to_string();
    let dev_loss = |threads: &str| {
        let (ok, out, err) = spafit(&[
            "train",
            "--model",
            &m,
            "--train-file",
            &data,
            "--dev-file",
            &data,
            "--method",
            "spafit",
            "--batch-size",
            "2",
            "--epochs",
            "2",
            "--seed",
            "7",
            "--threads",
            threads,
        ]);
        assert!(ok, "{err}");
        let line: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        line["dev_loss"].as_f64().unwrap().to_bits()
    };
    assert_eq!(dev_loss("1"), dev_loss("3"));
}

/// A GLUE folder with an SST-2 of four training sentences and two dev sentences.
fn four_reviews_sst2() -> tempfile::TempDir {
    let glue = tempfile::tempdir().unwrap();
    let mut train = String::from("sentence\tlabel\n");
    for (i, text) in ["a joy", "dull", "witty and sharp", "a tedious mess"]
        .iter()
        .enumerate()
    {
        train += &format!("{text}\t{}\n", 1 - i % 2);
    }
    write(glue.path(), "SST-2/train.tsv", &train);
    write(
        glue.path(),
        "SST-2/dev.tsv",
        "sentence\tlabel\nwitty\t1\nslow\t0\n",
    );
    glue
}

/// `--rslora` scales each adapter by alpha / √r: `--lora-r 9 --lora-alpha 2 --rslora` is the
/// run `--lora-alpha 6` gives (2 / √9 = 6 / 9), bit for bit, and records and exports that
/// alpha; a method without adapters, or an adapter's own settings, refuse it.
#[test]
fn rslora_is_alpha_over_the_square_root_of_the_rank() {
    let glue = four_reviews_sst2();
    let (g, m) = (glue.path().display().to_string(), model());
    let out = tempfile::tempdir().unwrap();
    let run = |name: &str, alpha: &[&str]| {
        let o = out.path().join(name).display().to_string();
        let mut args = vec![
            "train",
            "--model",
            &m,
            "--task",
            "sst2",
            "--glue-dir",
            &g,
            "--method",
            "lora",
            "--lora-r",
            "9",
            "--batch-size",
            "2",
            "--max-steps",
            "2",
            "--quiet",
            "--output",
            &o,
        ];
        args.extend_from_slice(alpha);
        let export = format!("{o}-peft");
        args.extend_from_slice(&["--export-peft", &export]);
        let (ok, _, err) = spafit(&args);
        assert!(ok, "{name}: {err}");
        let read = |p: PathBuf| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
        };
        let manifest = read(out.path().join(name).join("best/adapter.json"));
        let exported = read(PathBuf::from(&export).join("adapter_config.json"));
        let metrics = std::fs::read_to_string(out.path().join(name).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                // Timings differ between runs; everything else must not.
                if let Some(o) = v.as_object_mut() {
                    o.retain(|k, _| !k.contains("per_s") && !k.contains("seconds"));
                }
                v
            })
            .collect::<Vec<_>>();
        (
            manifest["lora"]["alpha"].clone(),
            exported["lora_alpha"].clone(),
            metrics,
        )
    };
    let stabilized = run("rslora", &["--lora-alpha", "2", "--rslora"]);
    let plain = run("plain", &["--lora-alpha", "6"]);
    assert_eq!(stabilized.0, serde_json::json!(6.0));
    assert_eq!(stabilized.1, serde_json::json!(6.0));
    assert!(stabilized.2.len() >= 2, "{:?}", stabilized.2);
    assert_eq!(stabilized, plain);
    let (ok, _, err) = spafit(&[
        "train",
        "--model",
        &m,
        "--task",
        "sst2",
        "--glue-dir",
        &g,
        "--method",
        "bitfit",
        "--rslora",
    ]);
    assert!(!ok && err.contains("--rslora"), "{err}");
    let best = out.path().join("plain/best").display().to_string();
    let (ok, _, err) = spafit(&[
        "train",
        "--model",
        &m,
        "--task",
        "sst2",
        "--glue-dir",
        &g,
        "--adapter",
        &best,
        "--rslora",
    ]);
    assert!(!ok && err.contains("--rslora"), "{err}");
}

/// `--dora` end to end: SPAFIT trains DoRA adapters on its top layers, saves them as a
/// version 5 adapter that says so, exports PEFT's `use_dora` with one magnitude per adapted
/// row, and evaluates from the export with bitwise its own dev loss; training continues from
/// the export as DoRA; a method without adapters refuses the flag.
#[test]
fn dora_trains_saves_exports_and_continues() {
    let glue = four_reviews_sst2();
    let (g, m) = (glue.path().display().to_string(), model());
    let out = tempfile::tempdir().unwrap();
    let run = out.path().join("run").display().to_string();
    let export = out.path().join("peft").display().to_string();
    let task = ["--model", &m, "--task", "sst2", "--glue-dir", &g];
    let mut args = vec!["train"];
    args.extend_from_slice(&task);
    args.extend_from_slice(&[
        "--method",
        "spafit",
        "--n1",
        "2",
        "--n2",
        "4",
        "--dora",
        "--batch-size",
        "2",
        "--max-steps",
        "2",
        "--quiet",
        "--output",
        &run,
        "--export-peft",
        &export,
    ]);
    let (ok, _, err) = spafit(&args);
    assert!(ok, "{err}");
    let read = |p: PathBuf| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let manifest = read(PathBuf::from(&run).join("best/adapter.json"));
    assert_eq!(manifest["version"], 5);
    assert_eq!(manifest["lora"]["dora"], true);
    let config = read(PathBuf::from(&export).join("adapter_config.json"));
    assert_eq!(config["use_dora"], true);
    let file = spafit::checkpoint::WeightsFile::open(
        &PathBuf::from(&export).join("adapter_model.safetensors"),
    )
    .unwrap();
    let magnitudes: Vec<&String> = file
        .names()
        .iter()
        .filter(|n| n.ends_with("lora_magnitude_vector"))
        .collect();
    // Layers 4 and 5, six maps each, 384 rows each.
    assert_eq!(magnitudes.len(), 12, "{magnitudes:?}");
    assert!(magnitudes
        .iter()
        .any(|n| *n == "base_model.model.bert.encoder.layer.5.output.dense.lora_magnitude_vector"));
    let dev_loss = |adapter: &str| {
        let mut args = vec!["eval"];
        args.extend_from_slice(&task);
        args.extend_from_slice(&["--adapter", adapter]);
        let (ok, out, err) = spafit(&args);
        assert!(ok, "{err}");
        let line: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        line["loss"].as_f64().unwrap().to_bits()
    };
    let best = format!("{run}/best");
    assert_eq!(dev_loss(&best), dev_loss(&export));
    let again = out.path().join("again").display().to_string();
    let mut args = vec!["train"];
    args.extend_from_slice(&task);
    args.extend_from_slice(&[
        "--adapter",
        &export,
        "--batch-size",
        "2",
        "--max-steps",
        "1",
        "--quiet",
        "--output",
        &again,
    ]);
    let (ok, _, err) = spafit(&args);
    assert!(ok, "{err}");
    assert_eq!(
        read(PathBuf::from(&again).join("best/adapter.json"))["lora"]["dora"],
        true
    );
    let mut args = vec!["train"];
    args.extend_from_slice(&task);
    args.extend_from_slice(&["--method", "bitfit", "--dora"]);
    let (ok, _, err) = spafit(&args);
    assert!(!ok && err.contains("--dora"), "{err}");
}
