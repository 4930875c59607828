//! Real `spafit train` processes killed with SIGKILL at several points — between saves, halfway
//! through a state write, halfway through `best/`, between the renames of `best/`'s two
//! files, and again while resuming — with `best/` usable after each kill, and each resumed
//! with `--resume` to the same losses, the same final dev loss and the same files, bit for bit,
//! as a run that was never interrupted.

use crate::common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn model() -> String {
    common::minilm_dir().display().to_string()
}

/// A small sentiment task as CSV: `n` rows alternating labels.
fn write_task(path: &Path, n: usize, offset: usize) {
    let good = [
        "a gorgeous witty movie",
        "charming and funny",
        "warm and wise",
    ];
    let bad = [
        "unbelievably dull",
        "a waste of two hours",
        "tedious and flat",
    ];
    let mut text = String::from("text,label\n");
    for i in 0..n {
        let (words, label) = if i % 2 == 1 {
            (good[(i + offset) % 3], 1)
        } else {
            (bad[(i + offset) % 3], 0)
        };
        text.push_str(&format!("\"{words} {}\",{label}\n", i + offset));
    }
    std::fs::write(path, text).unwrap();
}

struct Task {
    dir: tempfile::TempDir,
    /// `--lr`.
    lr: &'static str,
    /// Flags every run of the task adds.
    extra: Vec<&'static str>,
}

impl Task {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        write_task(&dir.path().join("train.csv"), 32, 0);
        write_task(&dir.path().join("dev.csv"), 8, 100);
        Task {
            dir,
            lr: "5e-3",
            extra: vec![],
        }
    }

    /// `spafit train` into `out`: 16 steps, evaluation (and so a state save) every 4 steps
    /// and at each epoch end, a state save every 2 steps.
    fn command(&self, out: &Path, resume: bool, slow_writes_ms: u64) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_spafit"));
        let file = |name: &str| self.dir.path().join(name).display().to_string();
        c.args(["train", "--model", &model(), "--method", "spafit"])
            .args(["--train-file", &file("train.csv")])
            .args(["--dev-file", &file("dev.csv")])
            .args([
                "--max-len",
                "16",
                "--batch-size",
                "4",
                "--epochs",
                "2",
                "--lr",
                self.lr,
            ])
            // Logged every 3 steps, saved every 2: a resumed run's first train line averages
            // steps from before the kill too.
            .args(["--eval-every", "4", "--save-every", "2", "--log-every", "3"])
            .args(["--output", &out.display().to_string(), "--quiet"])
            .args(["--export-peft", &export_dir(out).display().to_string()])
            .args(&self.extra)
            .env("SPAFIT_SLOW_WRITES_MS", slow_writes_ms.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if resume {
            c.arg("--resume");
        }
        c
    }

    /// `spafit eval` of the adapter in `dir` on the dev set must succeed.
    fn evaluate(&self, dir: &Path, what: &str) {
        let o = Command::new(env!("CARGO_BIN_EXE_spafit"))
            .args(["eval", "--model", &model(), "--max-len", "16"])
            .args(["--adapter", &dir.display().to_string()])
            .args([
                "--dev-file",
                &self.dir.path().join("dev.csv").display().to_string(),
            ])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{what}: eval of {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    fn run_to_completion(&self, out: &Path, resume: bool) {
        let saved = common::saved_step(out).filter(|_| resume);
        let o = self.command(out, resume, 0).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success(),
            "spafit train{} into {} failed: {err}",
            if resume { " --resume" } else { "" },
            out.display(),
        );
        // The opening line says where the run starts (unless nothing is left to train).
        let opening = match saved {
            Some(step) if step > 0 => format!("resuming at step {step} "),
            _ => "trainable parameters".into(),
        };
        assert!(
            err.contains(&opening) || err.contains("already complete"),
            "no `{opening}` in {err}"
        );
    }

    /// Starts a run and SIGKILLs it as soon as `moment` holds for its output directory.
    /// Returns what the directory held at the kill.
    fn kill_when(
        &self,
        out: &Path,
        resume: bool,
        slow_writes_ms: u64,
        what: &str,
        moment: impl Fn(&Path) -> bool,
    ) -> String {
        let mut child: Child = self.command(out, resume, slow_writes_ms).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if moment(out) {
                child.kill().unwrap(); // SIGKILL on Unix
                child.wait().unwrap();
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                panic!("the run ended ({status}) before the moment `{what}`: {err}");
            }
            assert!(Instant::now() < deadline, "`{what}` never came");
            std::thread::sleep(Duration::from_millis(2));
        }
        format!(
            "{what}: saved state at step {}, temporary files {:?}",
            common::saved_step(out).map_or("none".to_string(), |s| s.to_string()),
            temporary_files(out)
        )
    }
}

/// How a test signals a run: `signals` (50 ms apart: a signal pending twice is delivered
/// once), `delay_ms` after `moment` holds for its output directory, SIGINT ignored from the
/// start (as a shell starts a background job) when `sigint_ignored`.
struct Signalling {
    signals: Vec<libc::c_int>,
    what: &'static str,
    moment: fn(&Path) -> bool,
    delay_ms: u64,
    sigint_ignored: bool,
}

impl Task {
    /// Starts a run into `out` and signals it as `how` says. Returns how the process ended
    /// and its stderr.
    fn signal_when(
        &self,
        out: &Path,
        how: &Signalling,
        slow_writes_ms: u64,
    ) -> (std::process::ExitStatus, String) {
        let Signalling {
            signals,
            what,
            moment,
            delay_ms,
            sigint_ignored,
        } = how;
        let (delay_ms, sigint_ignored) = (*delay_ms, *sigint_ignored);
        let mut command = self.command(out, false, slow_writes_ms);
        if sigint_ignored {
            use std::os::unix::process::CommandExt;
            // SAFETY: signal(2) is async-signal-safe, as a pre_exec hook must be.
            unsafe {
                command.pre_exec(|| {
                    libc::signal(libc::SIGINT, libc::SIG_IGN);
                    Ok(())
                });
            }
        }
        let mut child: Child = command.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !moment(out) {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the run ended before `{what}`"
            );
            assert!(Instant::now() < deadline, "`{what}` never came");
            std::thread::sleep(Duration::from_millis(2));
        }
        let pid = child.id() as libc::pid_t;
        for (i, &signal) in signals.iter().enumerate() {
            std::thread::sleep(Duration::from_millis(if i > 0 { 50 } else { delay_ms }));
            // SAFETY: kill(2) on our own child, which has not been waited for yet.
            assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        }
        let o = child.wait_with_output().unwrap();
        (o.status, String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// Where the run into `out` exports its PEFT adapter.
fn export_dir(out: &Path) -> std::path::PathBuf {
    out.with_extension("peft")
}

/// Temporary files (`.<name>.tmp-<pid>-<n>`) under `out`'s `last/` and `best/`, and in its PEFT
/// export (as `peft/`).
fn temporary_files(out: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for (sub, dir) in [
        ("last", out.join("last")),
        ("best", out.join("best")),
        ("peft", export_dir(out)),
    ] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') && name.contains(".tmp-") {
                    found.push(format!("{sub}/{name}"));
                }
            }
        }
    }
    found
}

fn has_temporary(out: &Path, prefix: &str) -> bool {
    temporary_files(out).iter().any(|f| f.starts_with(prefix))
}

/// The highest training step logged so far.
fn logged_step(out: &Path) -> u64 {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "train")
        .filter_map(|v| v["step"].as_u64())
        .max()
        .unwrap_or(0)
}

/// Every logged (type, step, loss), in order, with the loss as bits.
fn logged_losses(out: &Path) -> Vec<(String, u64, u64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            (
                v["type"].as_str().unwrap().to_string(),
                v["step"].as_u64().unwrap(),
                v["loss"].as_f64().unwrap().to_bits(),
            )
        })
        .collect()
}

fn final_dev_loss(out: &Path) -> f64 {
    let (_, _, bits) = logged_losses(out)
        .into_iter()
        .rev()
        .find(|(kind, _, _)| kind == "eval")
        .expect("an evaluation");
    f64::from_bits(bits)
}

#[test]
fn killed_runs_resume_to_the_uninterrupted_result() {
    let task = Task::new();
    let reference = task.dir.path().join("reference");
    task.run_to_completion(&reference, false);
    let expected_losses = logged_losses(&reference);
    assert_eq!(
        expected_losses
            .iter()
            .filter(|(k, _, _)| k == "train")
            .count(),
        6
    );
    let files = [
        "last/state.safetensors",
        "best/adapter.safetensors",
        "best/adapter.json",
    ];
    let expected_files: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(reference.join(f)).unwrap())
        .collect();
    let expected_dev = final_dev_loss(&reference);
    // The step-8 evaluation beats step 4's, so one kill below finds best/ ahead of the state.
    let accuracy_at = |step: u64| -> f64 {
        std::fs::read_to_string(reference.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["type"] == "eval" && v["step"] == step)
            .and_then(|v| v["accuracy"].as_f64())
            .unwrap()
    };
    assert!(accuracy_at(8) > accuracy_at(4));
    println!("KILL uninterrupted: final dev loss {expected_dev:?}");

    let slow = 600;
    type Moment = Box<dyn Fn(&Path) -> bool>;
    // Each scenario: one or more (resume?, slow writes, label, moment) kills, then a resume.
    let scenarios: Vec<Vec<(bool, u64, &str, Moment)>> = vec![
        vec![(
            false,
            0,
            "between saves, once step 3 is logged",
            Box::new(|o: &Path| logged_step(o) >= 3),
        )],
        vec![(
            false,
            slow,
            "halfway through the first state write (no state yet)",
            Box::new(|o: &Path| has_temporary(o, "last/")),
        )],
        vec![(
            false,
            slow,
            "halfway through writing best/",
            Box::new(|o: &Path| has_temporary(o, "best/")),
        )],
        vec![(
            false,
            slow,
            "halfway through the step-8 state write, best/ already replaced by step 8's weights",
            Box::new(|o: &Path| common::saved_step(o) == Some(6) && has_temporary(o, "last/")),
        )],
        vec![(
            false,
            slow,
            "between the renames of best/'s step-8 save: new weights, old manifest in place",
            Box::new(|o: &Path| {
                o.join("best/adapter.json").exists()
                    && has_temporary(o, "best/.adapter.json")
                    && !has_temporary(o, "best/.adapter.safetensors")
            }),
        )],
        vec![(
            false,
            slow,
            "between the renames of the PEFT export at the end",
            Box::new(|o: &Path| {
                export_dir(o).join("adapter_model.safetensors").exists()
                    && has_temporary(o, "peft/.adapter_config.json")
            }),
        )],
        vec![
            (
                false,
                0,
                "between saves, once step 9 is logged",
                Box::new(|o: &Path| logged_step(o) >= 9),
            ),
            (
                true,
                slow,
                "again while resuming, halfway through its first state write",
                Box::new(|o: &Path| has_temporary(o, "last/")),
            ),
        ],
    ];
    // Resumes the run in `out` to its end, which must be the uninterrupted run's.
    let resume_as_uninterrupted = |out: &Path, label: &str| {
        let resumed_from = common::saved_step(out).unwrap_or(0);
        task.run_to_completion(out, true);
        // The resumed process timed only its own steps, and says how many.
        let result: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap())
                .unwrap();
        let steps = result["steps"].as_u64().unwrap();
        if resumed_from < steps {
            assert_eq!(
                result["steps_this_call"].as_u64(),
                Some(steps - resumed_from),
                "{label}, resumed from step {resumed_from}: {result}"
            );
        }
        assert!(
            temporary_files(out).is_empty(),
            "{label}: {:?} left behind",
            temporary_files(out)
        );
        let dev = final_dev_loss(out);
        println!("KILL {label}: resumed to final dev loss {dev:?}");
        assert_eq!(
            dev.to_bits(),
            expected_dev.to_bits(),
            "{label}: {dev} vs {expected_dev}"
        );
        assert_eq!(
            logged_losses(out),
            expected_losses,
            "{label}: the log differs from the uninterrupted run's"
        );
        for (f, expected) in files.iter().zip(&expected_files) {
            assert!(
                std::fs::read(out.join(f)).unwrap() == *expected,
                "{label}: {f} differs from the uninterrupted run's"
            );
        }
        // The export is the uninterrupted run's too (its note names the run, so differs).
        for f in ["adapter_model.safetensors", "adapter_config.json"] {
            assert!(
                std::fs::read(export_dir(out).join(f)).unwrap()
                    == std::fs::read(export_dir(&reference).join(f)).unwrap(),
                "{label}: the export's {f} differs from the uninterrupted run's"
            );
        }
    };
    for (i, kills) in scenarios.into_iter().enumerate() {
        let out = task.dir.path().join(format!("killed-{i}"));
        let mut first = true;
        for (resume, slow_ms, what, moment) in kills {
            assert_eq!(resume, !first);
            let seen = task.kill_when(&out, resume, slow_ms, what, moment);
            println!("KILL scenario {i}: {seen}");
            first = false;
            // Whatever the kill interrupted, a best/ saved (or being replaced) is usable,
            // and stays so after a resume refused for another setting.
            if out.join("best/adapter.safetensors").exists() {
                task.evaluate(&out.join("best"), &format!("scenario {i}, {what}"));
                let refused = task
                    .command(&out, true, 0)
                    .args(["--weight-decay", "0.5"])
                    .output()
                    .unwrap();
                let err = String::from_utf8_lossy(&refused.stderr);
                assert!(
                    !refused.status.success() && err.contains("--weight-decay: saved"),
                    "{err}"
                );
                task.evaluate(&out.join("best"), &format!("scenario {i}, refused resume"));
            }
        }
        resume_as_uninterrupted(&out, &format!("scenario {i}"));
    }
    // Stopped by signals: the first SIGINT or SIGTERM stops the run after its step, saving
    // the state at that step (saves are due at even steps only: the SIGTERM sent 30 ms after
    // step 4's state is saved stops step 5 or, on a fast machine, 6; tests/integration/training.rs stops
    // a step without a due save deterministically); a second one ends the process at once,
    // as the signal's default action does.
    let signalled = [
        Signalling {
            signals: vec![libc::SIGINT],
            what: "SIGINT once step 3 is logged",
            moment: |o| logged_step(o) >= 3,
            delay_ms: 0,
            sigint_ignored: false,
        },
        Signalling {
            signals: vec![libc::SIGTERM],
            what: "SIGTERM 30 ms after step 4 is saved",
            moment: |o| common::saved_step(o) >= Some(4),
            delay_ms: 30,
            sigint_ignored: false,
        },
        Signalling {
            signals: vec![libc::SIGINT, libc::SIGINT],
            what: "SIGINT twice once step 3 is logged",
            moment: |o| logged_step(o) >= 3,
            delay_ms: 0,
            sigint_ignored: false,
        },
        // A SIGINT the process was started ignoring stays ignored: SIGTERM stops it.
        Signalling {
            signals: vec![libc::SIGINT, libc::SIGTERM],
            what: "SIGINT ignored from the start, then SIGTERM, once step 3 is logged",
            moment: |o| logged_step(o) >= 3,
            delay_ms: 0,
            sigint_ignored: true,
        },
    ];
    for (i, how) in signalled.iter().enumerate() {
        let (signals, what) = (&how.signals, how.what);
        let out = task.dir.path().join(format!("signalled-{i}"));
        // The second SIGINT must land while the first one's stop saves: slowed writes.
        let twice = signals.len() == 2 && !how.sigint_ignored;
        let slow_ms = if twice { slow } else { 0 };
        let (status, err) = task.signal_when(&out, how, slow_ms);
        use std::os::unix::process::ExitStatusExt;
        if twice {
            assert_eq!(
                status.signal(),
                Some(libc::SIGINT),
                "{what}: {status}, {err}"
            );
        } else {
            let stopping = signals[signals.len() - 1];
            assert_eq!(status.code(), Some(128 + stopping), "{what}: {err}");
            assert_eq!(err.matches("spafit: stopping after this step").count(), 1);
            let step = common::saved_step(&out).expect("the state at the stop is saved");
            println!("SIGNAL {what}: stopped at step {step}");
            assert!(
                err.contains(&format!("stopped at step {step} of 16 (on request)"))
                    && err.contains("the same command with --resume goes on"),
                "{what}: {err}"
            );
            // The whole run's results come when a resume ends it.
            assert!(!out.join("result.json").exists(), "{what}");
            assert!(!export_dir(&out).join("adapter_model.safetensors").exists());
            if out.join("best/adapter.safetensors").exists() {
                task.evaluate(&out.join("best"), what);
            }
            // A stop completes its writes; the second signal above ends them midway, as a
            // kill does, and the resume below clears what they left.
            assert!(
                temporary_files(&out).is_empty(),
                "{what}: {:?}",
                temporary_files(&out)
            );
        }
        resume_as_uninterrupted(&out, what);
    }
    // A SIGTERM after the last step, while the PEFT export is being written: the handlers
    // stay until the results are written, so the export and result.json come whole and the
    // command ends as a finished run (its default action here lost result.json and half the
    // export, with exit status 143).
    let out = task.dir.path().join("signalled-at-the-end");
    let at_the_end = Signalling {
        signals: vec![libc::SIGTERM],
        what: "SIGTERM while the PEFT export is written",
        moment: |o| has_temporary(o, "peft/"),
        delay_ms: 0,
        sigint_ignored: false,
    };
    let (status, err) = task.signal_when(&out, &at_the_end, slow);
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(
        err.contains("the run had reached its end when SIGTERM came"),
        "{err}"
    );
    assert!(out.join("result.json").is_file(), "{err}");
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        assert!(export_dir(&out).join(file).is_file(), "{file}: {err}");
    }
    assert!(
        temporary_files(&out).is_empty(),
        "{:?}",
        temporary_files(&out)
    );
}

/// Early stopping across a kill. At a learning rate of 0 every evaluation equals the first,
/// so with patience 2 the 16-step run stops at step 12 (evaluations at 4, 8, 12). Killed
/// once step 9 is logged (its last state, at step 8 or 10, holds one evaluation without
/// improvement) and resumed, it stops at step 12 as well, with the uninterrupted run's log,
/// state and best/; without the count in the state it would run on to step 16.
#[test]
fn a_killed_run_resumes_to_the_same_early_stop() {
    let task = Task {
        lr: "0",
        extra: vec!["--early-stopping-patience", "2"],
        ..Task::new()
    };
    let reference = task.dir.path().join("reference");
    task.run_to_completion(&reference, false);
    let result = |out: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap()
    };
    let expected = result(&reference);
    assert_eq!(
        (&expected["steps"], &expected["early_stopped"]),
        (&serde_json::json!(12), &serde_json::json!(true)),
        "{expected}"
    );
    let out = task.dir.path().join("killed");
    let seen = task.kill_when(&out, false, 0, "once step 9 is logged", |o: &Path| {
        logged_step(o) >= 9
    });
    println!("KILL early stopping: {seen}");
    task.run_to_completion(&out, true);
    let resumed = result(&out);
    assert_eq!(resumed["steps"], 12, "{resumed}");
    assert_eq!(resumed["early_stopped"], true, "{resumed}");
    assert_eq!(logged_losses(&out), logged_losses(&reference));
    for f in [
        "last/state.safetensors",
        "best/adapter.safetensors",
        "best/adapter.json",
    ] {
        assert!(
            std::fs::read(out.join(f)).unwrap() == std::fs::read(reference.join(f)).unwrap(),
            "{f} differs from the uninterrupted run's"
        );
    }
}
