//! The `spafit` binary end to end: help, errors, train → eval → predict on GLUE-layout files,
//! gradcheck and bench JSON.

use std::path::{Path, PathBuf};
use std::process::Command;

fn spafit(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spafit"))
        .args(args)
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
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/models/all-MiniLM-L6-v2");
    assert!(p.is_dir(), "run scripts/fetch_assets.sh first");
    p.display().to_string()
}

#[test]
fn help_documents_every_command_and_flag() {
    let (ok, out, _) = spafit(&["--help"]);
    assert!(ok);
    for c in ["train", "eval", "predict", "gradcheck", "bench", "demo"] {
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
    ] {
        assert!(out.contains(flag), "train --help lacks {flag}");
    }
}

#[test]
fn cuda_and_bad_arguments_are_clear_errors() {
    let (ok, _, err) = spafit(&["bench", "--model", &model(), "--device", "cuda:0"]);
    assert!(
        !ok && err.contains("CUDA backend is not built yet"),
        "{err}"
    );
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
    assert!(!ok && err.contains("N1 = 5 is above N2 = 3"), "{err}");
    let (ok, _, err) = spafit(&["bench", "--model", "/nonexistent/model"]);
    assert!(!ok && err.contains("/nonexistent/model"), "{err}");
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
        "--output",
        &o,
        "--quiet",
        "--export-peft",
        &format!("{o}/peft"),
    ]);
    assert!(ok, "{err}");
    let line = last_json(&stdout);
    assert_eq!(line["steps"], 3);
    assert!(line["dev_accuracy"].is_number());
    assert!(
        out.path().join("metrics.jsonl").is_file()
            && out.path().join("peft/adapter_config.json").is_file()
    );

    let adapter = format!("{o}/best");
    let (ok, stdout, err) = spafit(&[
        "eval",
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
    let line = last_json(&stdout);
    assert_eq!(line["examples"], 2);
    assert!(line["accuracy"].as_f64().unwrap() >= 0.0);

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
    assert_eq!(preds.len(), 2);
    assert!(preds
        .iter()
        .all(|p| p["prediction"] == "0" || p["prediction"] == "1"));
}

#[test]
fn gradcheck_and_bench_print_json() {
    let m = model();
    let (ok, stdout, err) = spafit(&[
        "gradcheck",
        "--model",
        &m,
        "--method",
        "spafit",
        "--samples",
        "1",
    ]);
    assert!(ok, "{err}");
    let line = last_json(&stdout);
    let worst = line["max_rel_err"].as_f64().unwrap();
    println!("GRADCHECK spafit: {line}");
    assert!(worst < 1e-5, "{line}");
    assert!(line["tensors"].as_u64().unwrap() > 40);

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
        "peak_mem_mib",
        "trainable_params",
    ] {
        assert!(line[key].is_number(), "bench JSON lacks {key}: {line}");
    }
    assert_eq!(line["trainable_params"], 26114);
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
    assert_eq!(last_json(&stdout)["split"], "MNLI/dev_matched");
}
