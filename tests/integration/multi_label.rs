//! Multi-label classification: sets of classes read from CSV, TSV and JSONL; the model
//! against transformers' `multi_label_classification` and PEFT in float64 on a tiny random
//! BERT of four classes (`tests/fixtures/tiny-multilabel/`, written by its `make_fixture.py`),
//! on the CPU and the CUDA backend (through the stand-in where there is no GPU); the command
//! line end to end on all-MiniLM-L6-v2.

use crate::common;

use std::path::Path;

use common::family_fixture::{read, FamilyFixture};
use spafit::backend::cpu::CpuBackend;
use spafit::checkpoint::EncoderFamily;
use spafit::data::{OnMalformed, TableSpec, Target, TaskKind};
use spafit::model::BertClassifier;
use spafit::train::Prediction;

/// `tests/fixtures/tiny-multilabel` (a BERT of four classes, `problem_type`
/// `multi_label_classification`), or where `SPAFIT_MULTILABEL_FIXTURE` says.
fn fixture() -> FamilyFixture {
    FamilyFixture::new(
        "tiny-multilabel",
        "SPAFIT_MULTILABEL_FIXTURE",
        EncoderFamily::Bert,
    )
}

/// Logits, loss (binary cross-entropy over every example and class) and the gradient of
/// every parameter in full fine-tuning, f64, as transformers computes them, on single texts
/// and pairs whose label sets include an empty and a full one.
#[test]
fn logits_loss_and_every_gradient_match_transformers() {
    let f = fixture();
    let ck = f.checkpoint("model");
    assert!(ck.is_multi_label());
    f.check_tokens(&ck);
    f.check_every_gradient(&ck);
}

/// The checkpoint's own head evaluates as multi-label: its predictions are the classes of
/// positive logits, each probability the sigmoid of transformers' logit; PEFT's adapter on
/// it (which transformers trained as multi-label, the base's `problem_type`) is read as
/// multi-label and gives PEFT's logits, and merges into a multi-label checkpoint.
#[test]
fn the_fine_tuned_head_and_peft_adapter_are_read_as_multi_label() {
    let f = fixture();
    let ck = f.checkpoint("model");
    let cpu = CpuBackend::f64();
    let model = BertClassifier::from_fine_tuned(&ck, &cpu).unwrap();
    assert!(model.is_multi_label());
    let expected = f.expected();
    let texts: Vec<String> = expected["inputs"]["singles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let max_len = expected["inputs"]["max_len"].as_u64().unwrap() as usize;
    let tokenizer = ck.tokenizer(max_len).unwrap();
    let predictions = spafit::train::predict_texts(&cpu, &model, &tokenizer, &texts, 3).unwrap();
    let logits = read(&f.reference(), "singles.logits");
    let mut classes_seen = 0;
    for (i, p) in predictions.iter().enumerate() {
        let Prediction::LabelSet {
            classes,
            probabilities,
        } = p
        else {
            panic!("{p:?}")
        };
        let row = &logits[i * 4..(i + 1) * 4];
        let above: Vec<usize> = (0..4).filter(|&c| row[c] > 0.0).collect();
        assert_eq!(classes, &above, "row {i}");
        classes_seen += classes.len();
        for (p, z) in probabilities.iter().zip(row) {
            assert!(
                (p - 1.0 / (1.0 + (-z).exp())).abs() < 1e-12,
                "{p} vs σ({z})"
            );
        }
    }
    // Random weights still give some sets that are neither empty nor everything.
    assert!(classes_seen > 0 && classes_seen < 16, "{predictions:?}");

    f.check_peft_adapter(&ck);
    // Saved without its head, an adapter runs on the checkpoint's multi-label one.
    f.check_base_head_adapter(&ck);
    f.check_base_head_adapter_in(&ck, "peft-lora-base-head-bias-all", &["weight"]);
    let headless =
        spafit::adapter::open_adapter(&f.dir().join("peft-lora-base-head"), &ck, &cpu).unwrap();
    assert_eq!(headless.multi_label, Some(true));
    assert!(headless.model.is_multi_label());
    let opened = spafit::adapter::open_adapter(&f.dir().join("peft-lora"), &ck, &cpu).unwrap();
    assert_eq!(opened.multi_label, Some(true));
    assert!(opened.model.is_multi_label());
    assert!(opened.warnings.is_empty(), "{:?}", opened.warnings);
    // PEFT records no class names: the base's name them, as transformers gives them to the
    // adapter's model, and data naming them otherwise still matches by position.
    assert_eq!(opened.labels, None);
    let head = opened.head();
    assert!(matches!(
        head.default_kind_naming(ck.config.class_names(4)),
        TaskKind::MultiLabel { labels } if labels == ["joy", "anger", "fear", "surprise"]
    ));
    let numbered = TaskKind::MultiLabel {
        labels: (0..4).map(|i| i.to_string()).collect(),
    };
    head.check(&numbered, "numbered data", f.dir()).unwrap();
    let (imported, _) =
        spafit::adapter::import_peft(&f.dir().join("peft-lora"), &ck, &cpu).unwrap();
    assert!(imported.is_multi_label());
    let config = f.check_merge_of_peft_adapter("BertForSequenceClassification");
    assert_eq!(config["problem_type"], "multi_label_classification");
}

/// What a checkpoint's `problem_type` says decides how its own head is read: a multi-label
/// checkpoint trains on data of one class each as a softmax unless `--multi-label` is given
/// (with a note), and a head whose `problem_type` names one class per example is not read as
/// multi-label, while one without a `problem_type` may be.
#[test]
fn a_checkpoints_problem_type_decides_how_its_head_reads() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let copy = |name: &str, problem_type: Option<&str>| {
        let to = dir.join(name);
        f.copy_model(&to, |_| true);
        let path = to.join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        match problem_type {
            Some(p) => config["problem_type"] = p.into(),
            None => {
                config.as_object_mut().unwrap().remove("problem_type");
            }
        }
        std::fs::write(&path, config.to_string()).unwrap();
        to.display().to_string()
    };
    let single = "text,label\nthe cat sat,joy\na bad sign,anger\nwhat plot,fear\nso-so,surprise\n";
    std::fs::write(dir.join("single.csv"), single).unwrap();
    std::fs::write(
        dir.join("sets.jsonl"),
        "{\"text\": \"the cat sat\", \"label\": [\"joy\", \"fear\"]}\n\
         {\"text\": \"so-so\", \"label\": []}\n",
    )
    .unwrap();
    let multi = copy("multi", Some("multi_label_classification"));
    let (ok, stdout, stderr) = run(
        dir,
        &[
            "train",
            "--model",
            &multi,
            "--train-file",
            "single.csv",
            "--dev-file",
            "single.csv",
            "--method",
            "bitfit",
            "--max-len",
            "16",
            "--batch-size",
            "4",
            "--max-steps",
            "1",
        ],
    );
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("the checkpoint's head is multi-label"),
        "{stderr}"
    );
    let result = last_json(&stdout);
    assert!(
        result.get("dev_accuracy").is_some() && result.get("dev_micro_f1").is_none(),
        "{result}"
    );
    let evaluate = |model: &str| {
        run(
            dir,
            &[
                "eval",
                "--model",
                model,
                "--dev-file",
                "sets.jsonl",
                "--multi-label",
                "--max-len",
                "16",
            ],
        )
    };
    let (ok, stdout, stderr) = evaluate(&multi);
    assert!(
        ok && last_json(&stdout).get("micro_f1").is_some(),
        "{stderr}"
    );
    // PEFT's adapter on it reads the data in the base's class names, without --labels.
    let peft = f.dir().join("peft-lora").display().to_string();
    let (ok, stdout, stderr) = run(
        dir,
        &[
            "eval",
            "--model",
            &multi,
            "--adapter",
            &peft,
            "--dev-file",
            "sets.jsonl",
            "--max-len",
            "16",
        ],
    );
    assert!(
        ok && last_json(&stdout).get("micro_f1").is_some(),
        "{stderr}"
    );
    let (ok, _, stderr) = evaluate(&copy("single", Some("single_label_classification")));
    assert!(
        !ok && stderr.contains("trained as a classifier of one class per example"),
        "{stderr}"
    );
    let (ok, _, stderr) = evaluate(&copy("unsaid", None));
    assert!(
        ok,
        "no problem_type says nothing of how the head trained: {stderr}"
    );
}

/// Full fine-tuning and SPAFIT on the CUDA backend (the CPU stand-in without a GPU), f32,
/// with dropout on: logits, the binary cross-entropy and every trainable gradient as the f64
/// CPU reference gives them.
#[test]
fn multi_label_on_cuda_matches_the_f64_reference() {
    fixture().check_full_and_spafit_on_cuda();
}

fn emotions() -> TaskKind {
    TaskKind::MultiLabel {
        labels: vec!["joy".into(), "anger".into(), "fear".into()],
    }
}

fn spec(path: &Path, kind: TaskKind) -> TableSpec {
    TableSpec {
        path: path.to_path_buf(),
        text_column: "text".into(),
        text_pair_column: None,
        label_column: Some("labels".into()),
        kind,
        filter: None,
    }
}

fn targets(path: &Path, kind: TaskKind) -> Vec<Target> {
    let data = spec(path, kind).load(OnMalformed::Error).unwrap();
    data.examples
        .into_iter()
        .map(|e| e.target.unwrap())
        .collect()
}

fn sets(ids: &[&[u32]]) -> Vec<Target> {
    ids.iter().map(|s| Target::LabelSet(s.to_vec())).collect()
}

#[test]
fn label_sets_are_read_in_every_spelling() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("train.csv");
    std::fs::write(
        &csv,
        "text,labels\n\
         a,\"joy,anger\"\n\
         b,\n\
         c,fear\n\
         d,\"['fear', 'joy']\"\n\
         e,[]\n\
         f,\"[\"\"anger\"\"]\"\n\
         g,\" anger , joy,joy \"\n\
         h,\"1,0\"\n",
    )
    .unwrap();
    // Ascending ids each once, the empty set where nothing applies; `1` names class
    // `anger` by position only where a class is named so, which none is here: ids are read
    // as names, and a numbered task gets them right (below).
    let want = sets(&[&[0, 1], &[], &[2], &[0, 2], &[], &[1], &[0, 1]]);
    let e = spec(&csv, emotions())
        .load(OnMalformed::Error)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 9") && e.contains("label `1` (in `1,0`)") && e.contains("joy, anger"),
        "{e}"
    );
    let skipped = spec(&csv, emotions()).load(OnMalformed::Skip).unwrap();
    let got: Vec<Target> = skipped
        .examples
        .into_iter()
        .map(|e| e.target.unwrap())
        .collect();
    assert_eq!(got, want);
    assert_eq!(skipped.skipped.len(), 1);

    // numpy's print of an array, as pandas writes a column of them.
    let numpy = tmp.path().join("numpy.csv");
    std::fs::write(&numpy, "text,labels\na,[ 2 27]\nb,\"['joy' 'fear']\"\n").unwrap();
    let mut labels: Vec<String> = (0..28).map(|i| i.to_string()).collect();
    labels.extend(["joy".to_string(), "fear".to_string()]);
    assert_eq!(
        targets(&numpy, TaskKind::MultiLabel { labels }),
        sets(&[&[2, 27], &[28, 29]])
    );

    let tsv = tmp.path().join("train.tsv");
    std::fs::write(&tsv, "text\tlabels\na\t2,27\nb\t\nc\t0\n").unwrap();
    let numbered = TaskKind::MultiLabel {
        labels: (0..28).map(|i| i.to_string()).collect(),
    };
    assert_eq!(targets(&tsv, numbered), sets(&[&[2, 27], &[], &[0]]));

    let jsonl = tmp.path().join("train.jsonl");
    std::fs::write(
        &jsonl,
        "{\"text\": \"a\", \"labels\": [\"fear\", \"anger\"]}\n\
         {\"text\": \"b\", \"labels\": []}\n\
         {\"text\": \"c\", \"labels\": \"joy,fear\"}\n",
    )
    .unwrap();
    assert_eq!(targets(&jsonl, emotions()), sets(&[&[1, 2], &[], &[0, 2]]));
}

#[test]
fn broken_label_sets_name_their_line() {
    let tmp = tempfile::tempdir().unwrap();
    let refused = |name: &str, text: &str| {
        let path = tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        spec(&path, emotions())
            .load(OnMalformed::Error)
            .unwrap_err()
            .to_string()
    };
    let e = refused("a.csv", "text,labels\na,joy\nb,\"[joy, fear\"\n");
    assert!(e.contains("line 3") && e.contains("no closing `]`"), "{e}");
    let e = refused("b.csv", "text,labels\na,\"joy,,fear\"\n");
    assert!(e.contains("line 2") && e.contains("empty name"), "{e}");
    let e = refused("c.jsonl", "{\"text\": \"a\", \"labels\": null}\n");
    assert!(e.contains("line 1") && e.contains("null"), "{e}");
    let e = refused("d.jsonl", "{\"text\": \"a\", \"labels\": [[\"joy\"]]}\n");
    assert!(e.contains("line 1") && e.contains("a list holding"), "{e}");
    let e = refused(
        "e.jsonl",
        "{\"text\": \"a\", \"labels\": [\"joy\", \"glee\"]}\n",
    );
    assert!(e.contains("line 1") && e.contains("label `glee`"), "{e}");
    // Names are read whole from a list's quotes, escapes undone; a name holding a comma is
    // refused (commas separate a set's names where spafit writes one), not split in two.
    let e = refused(
        "g.jsonl",
        "{\"text\": \"a\", \"labels\": [\"joy\", \"x,y\"]}\n",
    );
    assert!(
        e.contains("line 1") && e.contains("`x,y`") && e.contains("holds a comma"),
        "{e}"
    );
    let e = refused("h.csv", "text,labels\na,\"['joy', 'p, q']\"\n");
    assert!(
        e.contains("line 2") && e.contains("`p, q`") && e.contains("holds a comma"),
        "{e}"
    );
    let quoted = TaskKind::MultiLabel {
        labels: vec!["it's".into(), "say \"hi\"".into(), "a\\b".into()],
    };
    let path = tmp.path().join("quotes.jsonl");
    std::fs::write(
        &path,
        "{\"text\": \"a\", \"labels\": [\"say \\\"hi\\\"\", \"it's\"]}\n\
         {\"text\": \"b\", \"labels\": \"['it\\\\'s', 'a\\\\\\\\b']\"}\n",
    )
    .unwrap();
    assert_eq!(targets(&path, quoted), sets(&[&[0, 1], &[0, 2]]));
    // A class name a prediction file could not hold in one field is refused before any row.
    let tabbed = TaskKind::MultiLabel {
        labels: vec!["it's".into(), "a\tb".into()],
    };
    let e = spec(&path, tabbed)
        .load(OnMalformed::Error)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("quotes.jsonl: the classes to read it by") && e.contains("holds a tab"),
        "{e}"
    );
    // Classes are not invented from a name's pieces either.
    let path = tmp.path().join("comma.jsonl");
    std::fs::write(&path, "{\"text\": \"a\", \"labels\": [\"x,y\"]}\n").unwrap();
    let e = spec(&path, emotions())
        .infer_classes(OnMalformed::Error)
        .unwrap_err()
        .to_string();
    assert!(e.contains("holds a comma"), "{e}");
    // Python's escapes as `ast.literal_eval` reads them; one it cannot undo is refused.
    let escaped = TaskKind::MultiLabel {
        labels: vec!["café".into(), "été".into(), "a\\qb".into(), "A".into()],
    };
    let path = tmp.path().join("escapes.csv");
    std::fs::write(
        &path,
        "text,labels\na,\"['caf\\xe9', '\\u00e9t\\u00e9']\"\nb,\"['a\\qb', '\\101']\"\n",
    )
    .unwrap();
    assert_eq!(targets(&path, escaped), sets(&[&[0, 1], &[2, 3]]));
    let e = refused("i.csv", "text,labels\na,\"['\\N{EM DASH}']\"\n");
    assert!(
        e.contains("line 2") && e.contains("not a list of names"),
        "{e}"
    );
    // Data of sets read as one class each says how to read it as sets, inferring the
    // classes as loading.
    let two = TaskKind::Classification {
        labels: vec!["x".into(), "y".into()],
    };
    let e = spec(&path, two)
        .load(OnMalformed::Error)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("label `['caf\\xe9', '\\u00e9t\\u00e9']` is not one of the classes")
            && e.contains("--multi-label"),
        "quotes shown as written: {e}"
    );
    let path = tmp.path().join("comma.jsonl");
    let e = spec(&path, TaskKind::Classification { labels: vec![] })
        .infer_classes(OnMalformed::Error)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("holds the list") && e.contains("--multi-label"),
        "{e}"
    );
    let e = spec(
        &path,
        TaskKind::Classification {
            labels: vec!["x".into(), "y".into()],
        },
    )
    .load(OnMalformed::Error)
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("holds the list") && e.contains("--multi-label"),
        "{e}"
    );

    // A single-label task still wants one class per row, and says which classes.
    let path = tmp.path().join("f.csv");
    std::fs::write(&path, "text,labels\na,\"joy,fear\"\n").unwrap();
    let single = TaskKind::Classification {
        labels: vec!["joy".into(), "fear".into()],
    };
    let e = spec(&path, single)
        .load(OnMalformed::Error)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("label `joy,fear` is not one of the classes") && e.contains("--multi-label"),
        "{e}"
    );
}

#[test]
fn classes_are_inferred_from_every_set() {
    let tmp = tempfile::tempdir().unwrap();
    let infer = |name: &str, text: &str| {
        let path = tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        spec(&path, emotions()).infer_classes(OnMalformed::Error)
    };
    let names = |l: &[&str]| TaskKind::MultiLabel {
        labels: l.iter().map(|s| s.to_string()).collect(),
    };
    // Names sorted, as for single-label data; a class seen only inside a set counts.
    assert_eq!(
        infer("a.csv", "text,labels\na,\"surprise,joy\"\nb,\nc,anger\n").unwrap(),
        names(&["anger", "joy", "surprise"])
    );
    // Ids by value.
    assert_eq!(
        infer("b.tsv", "text\tlabels\na\t10,2\nb\t3\n").unwrap(),
        names(&["2", "3", "10"])
    );
    let e = infer("c.csv", "text,labels\na,joy\nb,\"joy\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("only class") && e.contains("multi-label"), "{e}");
    let e = infer("d.csv", "text,labels\na,\nb,[]\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("no example with a label"), "{e}");
}

/// Emotions in a few words each, any number of them (none included): a CSV of comma lists
/// for training, a JSONL of arrays for evaluation.
fn write_emotion_data(dir: &Path) {
    let rows: [(&str, &[&str]); 12] = [
        ("what a happy wonderful day", &["joy"]),
        ("i am furious and scared", &["anger", "fear"]),
        ("the weather is mild", &[]),
        ("so glad, yet so afraid", &["fear", "joy"]),
        ("mad, mad, mad", &["anger"]),
        ("a calm evening at home", &[]),
        ("terrified of the dark", &["fear"]),
        ("great news and an angry boss", &["anger", "joy"]),
        ("happy happy", &["joy"]),
        ("nervous about tomorrow", &["fear"]),
        ("so angry i could scream", &["anger"]),
        (
            "glad, furious and nervous at once",
            &["anger", "fear", "joy"],
        ),
    ];
    let csv: String = rows
        .iter()
        .map(|(text, labels)| format!("\"{text}\",\"{}\"\n", labels.join(",")))
        .collect();
    std::fs::write(dir.join("train.csv"), format!("text,labels\n{csv}")).unwrap();
    let jsonl: String = rows[..6]
        .iter()
        .map(|(text, labels)| format!("{}\n", serde_json::json!({"text": text, "labels": labels})))
        .collect();
    std::fs::write(dir.join("dev.jsonl"), jsonl).unwrap();
}

fn run(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spafit"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn last_json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.lines().last().expect("no output")).unwrap()
}

fn losses(metrics: &Path) -> Vec<f64> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["type"] == "train" || l["type"] == "eval")
        .map(|l| l["loss"].as_f64().unwrap())
        .collect()
}

/// `spafit train --multi-label` on the real all-MiniLM-L6-v2: classes from the sets, the
/// multi-label metrics, an adapter, a PEFT export and a merge that all say multi-label and
/// evaluate alike, predictions whose sets are the classes of probability above one half, each
/// probability the sigmoid of the model's logit; the same run on `cuda-emu` logs the same
/// losses; a single-label adapter is not read as multi-label.
#[test]
fn the_command_line_trains_evaluates_predicts_and_merges_a_multi_label_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_emotion_data(dir);
    let model = common::minilm_dir().display().to_string();
    let train = |device: &str, out: &str, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--model",
            &model,
            "--train-file",
            "train.csv",
            "--dev-file",
            "dev.jsonl",
            "--label-column",
            "labels",
            "--method",
            "spafit",
            "--n1",
            "2",
            "--n2",
            "4",
            "--max-len",
            "16",
            "--batch-size",
            "4",
            "--lr",
            "1e-3",
            "--device",
            device,
            "--output",
            out,
        ];
        args.extend_from_slice(extra);
        let (ok, stdout, stderr) = run(dir, &args);
        assert!(ok, "{stderr}");
        (last_json(&stdout), stderr)
    };
    let (result, stderr) = train(
        "cpu",
        "run",
        &["--multi-label", "--epochs", "2", "--export-peft", "peft"],
    );
    assert!(
        stderr.contains("classes from train.csv: anger, fear, joy"),
        "{stderr}"
    );
    // MiniLM's config sets no problem_type: transformers would read the export's head as a
    // softmax unless told.
    assert!(
        stderr.contains("sets no `problem_type`")
            && stderr.contains("problem_type=\"multi_label_classification\""),
        "{stderr}"
    );
    assert_eq!(result["best_metric"], "micro_f1");
    for metric in ["dev_micro_f1", "dev_macro_f1", "dev_subset_accuracy"] {
        let v = result[metric].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{metric}: {result}");
    }
    let adapter: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run/best/adapter.json")).unwrap())
            .unwrap();
    assert_eq!(adapter["multi_label"], true);
    // Version 2: an older spafit, which reads version 1, refuses it rather than reading a
    // softmax head.
    assert_eq!(adapter["version"], 2);
    assert_eq!(
        adapter["labels"],
        serde_json::json!(["anger", "fear", "joy"])
    );
    let note: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("peft/spafit_export.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(note["multi_label"], true);

    // `spafit <command>` on the base model with the labelled file `dev` and `extra` flags.
    let labelled = |command: &str, dev: &str, extra: &[&str]| {
        let mut args = vec![
            command,
            "--model",
            &model,
            "--dev-file",
            dev,
            "--label-column",
            "labels",
        ];
        args.extend_from_slice(extra);
        run(dir, &args)
    };
    // The adapter says its head is multi-label: no flag needed to evaluate it.
    let evaluate = |args: &[&str]| {
        let (ok, stdout, stderr) = labelled("eval", "dev.jsonl", args);
        assert!(ok, "{args:?}: {stderr}");
        last_json(&stdout)
    };
    let by_adapter = evaluate(&["--adapter", "run/best"]);
    assert_eq!(by_adapter["loss"], result["dev_loss"]);
    assert_eq!(by_adapter["micro_f1"], result["dev_micro_f1"]);
    let by_export = evaluate(&["--adapter", "peft"]);
    assert_eq!(by_export["loss"], result["dev_loss"]);
    let (ok, _, stderr) = run(
        dir,
        &[
            "merge",
            "--model",
            &model,
            "--adapter",
            "run/best",
            "--output",
            "merged",
        ],
    );
    assert!(ok, "{stderr}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("merged/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["problem_type"], "multi_label_classification");
    assert_eq!(config["id2label"]["2"], "joy");
    let merged = {
        let (ok, stdout, stderr) = run(
            dir,
            &[
                "eval",
                "--model",
                "merged",
                "--dev-file",
                "dev.jsonl",
                "--label-column",
                "labels",
            ],
        );
        assert!(ok, "{stderr}");
        last_json(&stdout)
    };
    let (a, b) = (
        merged["loss"].as_f64().unwrap(),
        result["dev_loss"].as_f64().unwrap(),
    );
    assert!(
        (a - b).abs() <= 1e-6 * b,
        "merged {a} against the adapter's {b}"
    );

    // Predictions: the classes above one half, each probability the sigmoid of the logit.
    let (ok, stdout, stderr) = run(
        dir,
        &[
            "predict",
            "--model",
            &model,
            "--adapter",
            "run/best",
            "--dev-file",
            "dev.jsonl",
            "--split",
            "dev",
        ],
    );
    assert!(ok, "{stderr}");
    let ck = spafit::checkpoint::Checkpoint::open(common::minilm_dir()).unwrap();
    let cpu = spafit::backend::cpu::CpuBackend::f32();
    let opened = spafit::adapter::open_adapter(&dir.join("run/best"), &ck, &cpu).unwrap();
    let texts = [
        "what a happy wonderful day",
        "i am furious and scared",
        "the weather is mild",
        "so glad, yet so afraid",
        "mad, mad, mad",
        "a calm evening at home",
    ];
    let logits = common::logits(&ck, &cpu, &opened.model, &texts, 16);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    for (i, line) in lines.iter().enumerate() {
        let mut above = Vec::new();
        for (c, name) in ["anger", "fear", "joy"].iter().enumerate() {
            let p = line["probabilities"][name].as_f64().unwrap();
            let z = logits[i * 3 + c];
            assert!((p - 1.0 / (1.0 + (-z).exp())).abs() < 1e-6, "{line}: {z}");
            if z > 0.0 {
                above.push(*name);
            }
        }
        assert_eq!(line["labels"], serde_json::json!(above), "{line}");
    }

    // Another threshold: the sets hold the classes of probability above it, and eval's
    // metrics score those sets.
    let at = |command: &str, extra: &[&str]| {
        let mut args = vec!["--adapter", "run/best", "--threshold", "0.45"];
        args.extend_from_slice(extra);
        labelled(command, "dev.jsonl", &args)
    };
    let (ok, stdout, stderr) = at("predict", &["--split", "dev"]);
    assert!(ok, "{stderr}");
    let names = ["anger", "fear", "joy"];
    let mut predicted: Vec<Vec<u32>> = Vec::new();
    for (i, line) in stdout.lines().enumerate() {
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        let above: Vec<u32> = (0..3u32)
            .filter(|&c| 1.0 / (1.0 + (-logits[i * 3 + c as usize]).exp()) > 0.45)
            .collect();
        let named: Vec<&str> = above.iter().map(|&c| names[c as usize]).collect();
        assert_eq!(line["labels"], serde_json::json!(named), "{line}");
        predicted.push(above);
    }
    let gold: Vec<Vec<u32>> = [&[2][..], &[0, 1], &[], &[1, 2], &[0], &[]]
        .iter()
        .map(|s| s.to_vec())
        .collect();
    let (ok, stdout, stderr) = at("eval", &[]);
    assert!(ok, "{stderr}");
    let scored = last_json(&stdout);
    assert_eq!(
        scored["micro_f1"].as_f64().unwrap(),
        spafit::metrics::micro_f1(&predicted, &gold)
    );
    assert_eq!(
        scored["loss"], by_adapter["loss"],
        "the loss has no threshold"
    );
    for bad in ["1", "0", "nan", "-0.2"] {
        let (ok, _, stderr) = labelled(
            "eval",
            "dev.jsonl",
            &["--adapter", "run/best", "--threshold", bad],
        );
        assert!(!ok && stderr.contains("--threshold"), "{bad}: {stderr}");
    }

    // The CUDA path (the CPU stand-in without a GPU) logs the CPU's losses.
    train("cpu", "cpu", &["--multi-label", "--max-steps", "2"]);
    train("cuda-emu", "cuda", &["--multi-label", "--max-steps", "2"]);
    let (cpu_losses, cuda_losses) = (
        losses(&dir.join("cpu/metrics.jsonl")),
        losses(&dir.join("cuda/metrics.jsonl")),
    );
    assert!(!cpu_losses.is_empty() && cpu_losses.len() == cuda_losses.len());
    for (a, b) in cpu_losses.iter().zip(&cuda_losses) {
        assert!(
            (a - b).abs() <= 1e-4 * a.abs(),
            "{cpu_losses:?} against {cuda_losses:?}"
        );
    }

    // A single-label adapter on the same classes is not read as multi-label, nor the other
    // way round.
    std::fs::write(
        dir.join("single.csv"),
        "text,labels\nhappy,joy\nangry,anger\nscared,fear\nglad,joy\n",
    )
    .unwrap();
    let (ok, _, stderr) = run(
        dir,
        &[
            "train",
            "--model",
            &model,
            "--train-file",
            "single.csv",
            "--label-column",
            "labels",
            "--method",
            "bitfit",
            "--max-len",
            "16",
            "--batch-size",
            "4",
            "--max-steps",
            "1",
            "--output",
            "single",
        ],
    );
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = labelled(
        "eval",
        "dev.jsonl",
        &["--adapter", "single/best", "--multi-label"],
    );
    assert!(
        !ok && stderr.contains("trained as a classifier of one class"),
        "{stderr}"
    );
    let (ok, _, stderr) = labelled(
        "eval",
        "single.csv",
        &["--adapter", "single/best", "--threshold", "0.3"],
    );
    assert!(
        !ok && stderr.contains("--threshold") && stderr.contains("one class per example"),
        "{stderr}"
    );
    let (ok, _, stderr) = labelled("eval", "single.csv", &["--adapter", "run/best"]);
    assert!(
        ok,
        "a multi-label adapter reads one class as a set of one: {stderr}"
    );
}

/// A head of one output is a regression's: marking it multi-label leaves it so (its
/// predictions were one-class sets); a head of two takes the mark.
#[test]
fn a_one_output_head_is_never_multi_label() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = common::tiny_bert::write_checkpoint(&tmp.path().join("base"));
    let cpu = CpuBackend::f32();
    for (outputs, multi) in [(1, false), (2, true)] {
        let mut model = BertClassifier::from_checkpoint(&ck, &cpu, outputs, 0).unwrap();
        model.set_multi_label(true);
        assert_eq!(model.is_multi_label(), multi, "{outputs} outputs");
    }
}
