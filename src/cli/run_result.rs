//! A finished run's final JSON line: kept as `result.json` in its output folder, and printed
//! again (with this call's device and null timings) when a finished run is resumed.

use serde_json::json;
use spafit::backend::Backend;
use spafit::train::TrainReport;
use spafit::Result;

/// The final JSON line of a run, kept in its output directory.
pub(super) const RESULT_FILE: &str = "result.json";

/// A run resumed when already complete trained nothing in this call: prints the result
/// recorded in `output` by the call that finished it, with this process's device and its
/// (no) steps and timings, and keeps result.json as it is. `false` where there is no such
/// run or no readable record.
pub(super) fn print_recorded_result<B: Backend>(
    output: Option<&std::path::Path>,
    report: &TrainReport,
    backend: &B,
) -> Result<bool> {
    let recorded = output
        .filter(|_| report.steps_this_call == 0)
        .and_then(|dir| {
            let path = dir.join(RESULT_FILE);
            let text = std::fs::read_to_string(&path).ok()?;
            let line = serde_json::from_str::<serde_json::Value>(&text).ok()?;
            line.is_object().then_some((path, line))
        });
    let Some((path, mut line)) = recorded else {
        return Ok(false);
    };
    let device = line["device"].as_str().map(|d| format!(" on {d}"));
    let steps = match (
        line["steps_this_call"].as_u64(),
        line["train_seconds"].as_f64(),
    ) {
        (Some(n), Some(s)) => format!(", {n} steps in {s:.1} s"),
        (Some(n), None) => format!(", {n} steps"),
        (None, Some(s)) => format!(", trained in {s:.1} s"),
        (None, None) => String::new(),
    };
    note!(
        "the run was already complete: its result as recorded by the call that finished \
         it{}{steps} stays in {}",
        device.unwrap_or_default(),
        path.display()
    );
    line["device"] = json!(backend.name());
    if line.get("steps_this_call").is_some() {
        line["steps_this_call"] = json!(0);
    }
    for timing in TIMINGS {
        if line.get(timing).is_some() {
            line[timing] = serde_json::Value::Null;
        }
    }
    super::print_line(&line)?;
    Ok(true)
}

/// The final JSON line's fields that time this call's work.
const TIMINGS: [&str; 4] = [
    "train_seconds",
    "samples_per_s",
    "tokens_per_s",
    "eval_seconds",
];

/// How the final JSON line gives this call's timings: as numbers, or as null (noted once)
/// for a run complete before this call with no recorded result (killed after its last
/// save, or run by an older spafit), whose timings are unknown, not 0.
pub(super) fn timing_or_null(report: &TrainReport) -> impl Fn(f64) -> serde_json::Value {
    let unknown = report.steps_this_call == 0;
    if unknown {
        note!("the run's timings were not recorded before this call; they read null");
    }
    move |seconds_or_rate| match unknown {
        true => serde_json::Value::Null,
        false => json!(seconds_or_rate),
    }
}

/// Keeps a finished run's final JSON `line` as `RESULT_FILE` in its output directory, where
/// it has one: stdout may be gone by the time the run is looked at.
pub(super) fn keep_result(
    output: Option<&std::path::Path>,
    line: &serde_json::Value,
) -> Result<()> {
    match output {
        Some(dir) => {
            spafit::adapter::write_atomic(&dir.join(RESULT_FILE), format!("{line}\n").as_bytes())
        }
        None => Ok(()),
    }
}
