//! Where a command's outputs may go: never over a file it reads (the model's, the adapter's,
//! the data), never into the model's or the adapter's folder (for a hub id, its whole cache
//! repository), never among another run's files, and never where the write could only fail
//! after the work.

use std::path::PathBuf;

use spafit::Result;

use super::run_result::RESULT_FILE;
use super::train::TrainArgs;

/// Refuses output paths that would fail only after training (a file where a directory goes)
/// or overwrite an input: the run's model folder, its adapter, or one of `inputs` (the data).
pub(super) fn check_output_paths(
    t: &TrainArgs,
    model: &std::path::Path,
    adapter: Option<&std::path::Path>,
    inputs: &[PathBuf],
) -> Result<()> {
    let refuse = |flag: &'static str, detail: String| Err(spafit::Error::invalid(flag, detail));
    for (flag, dir) in [("--output", &t.output), ("--export-peft", &t.export_peft)] {
        let Some(dir) = dir else { continue };
        if dir.exists() && !dir.is_dir() {
            return refuse(
                flag,
                format!("{} is a file; give a directory", dir.display()),
            );
        }
        check_creatable(flag, dir)?;
        if let Some(read) = [Some(model), adapter]
            .into_iter()
            .flatten()
            .find(|d| same_file(dir, d))
        {
            return refuse(
                flag,
                format!(
                    "{} is where this run reads its model or adapter; give a folder of its \
                         own",
                    read.display()
                ),
            );
        }
        // Nor inside one (a sentence-transformers model's `1_Pooling/`).
        if let Some(folder) = read_folder_holding(dir, model, adapter) {
            return refuse(
                flag,
                format!(
                    "{} lies in {}, the folder of the model or adapter this run reads; give a \
                     folder of its own",
                    dir.display(),
                    folder.display()
                ),
            );
        }
    }
    if let Some(dir) = &t.output {
        // A data file among the run's own (`--train-file run/metrics.jsonl`) would be
        // rewritten by the run.
        if let Some(input) = inputs.iter().find(|f| among_run_files(f, dir)) {
            return refuse(
                "--output",
                format!(
                    "{} is among the files this run writes under {} (metrics.jsonl, \
                         result.json, best/, last/); read the data from elsewhere",
                    input.display(),
                    dir.display()
                ),
            );
        }
        // The run's folders are made when first saved, after training steps: a file in the
        // way would fail only then (and as "File exists", naming the file inside).
        if let Some(sub) = ["best", "last"]
            .map(|name| dir.join(name))
            .into_iter()
            .find(|sub| sub.symlink_metadata().is_ok() && !sub.is_dir())
        {
            return refuse(
                "--output",
                format!(
                    "{} is a file where the run keeps its {} (a folder); move it or give \
                     another --output",
                    sub.display(),
                    match sub.ends_with("best") {
                        true => "best adapter",
                        false => "resumable state",
                    }
                ),
            );
        }
        // Nor one the saves cannot write into (a resumed run's `last/` made read-only): the
        // first save would fail after the steps before it. A finished run (its result
        // written) only says its result again; one killed after its last step but before
        // its result saves nothing in `last/` again.
        let finished = dir.join(RESULT_FILE).is_file();
        let over = finished || spafit::train::saved_run_is_over(dir);
        for (name, done) in [("best", finished), ("last", over)] {
            let sub = dir.join(name);
            if sub.is_dir() && !done {
                check_creatable("--output", &sub)?;
            }
        }
        // A run inside an adapter's folder (`runs/a/best`) would mix its files with it.
        if let Some(found) = spafit::adapter::model_or_adapter_file_in(dir) {
            return refuse(
                "--output",
                format!(
                    "{} holds an adapter or model ({}); give a folder of its own",
                    dir.display(),
                    found.display()
                ),
            );
        }
    }
    if let Some(dir) = &t.export_peft {
        // Never among this run's own files, nor beside another adapter or run.
        if t.output
            .as_ref()
            .is_some_and(|run| among_run_files(dir, run))
        {
            return refuse(
                "--export-peft",
                format!(
                    "{} is where this run writes its own files (metrics.jsonl, \
                             result.json, best/, last/ under --output); give a folder of its own",
                    dir.display()
                ),
            );
        }
        if let Some(found) = spafit::adapter::spafit_file_in(dir) {
            return refuse(
                "--export-peft",
                format!(
                    "{} holds a spafit adapter or run ({}); give a folder of its own",
                    dir.display(),
                    found.display()
                ),
            );
        }
        // Resuming may write the run's own export again, and no other.
        let own_export = t.resume
            && t.output
                .as_ref()
                .is_some_and(|run| spafit::adapter::exported_by_run(dir, run));
        let exported = [
            spafit::adapter::PEFT_CONFIG_FILE,
            spafit::adapter::PEFT_WEIGHTS_FILE,
        ];
        if let Some(old) = first_existing(dir, &exported).filter(|_| !own_export) {
            return refuse(
                "--export-peft",
                format!(
                    "{} already holds an adapter ({}){}; give a new directory, or remove it",
                    dir.display(),
                    old.display(),
                    match t.resume {
                        true => " that this run did not write",
                        false => "",
                    }
                ),
            );
        }
    }
    if let Some(log) = &t.write_batches {
        // The run's own files under --output do not exist yet when it starts.
        if t.output
            .as_ref()
            .is_some_and(|run| among_run_files(log, run))
        {
            return refuse(
                "--write-batches",
                format!(
                    "{} is where this run writes its own files (metrics.jsonl, \
                             result.json, best/, last/ under --output)",
                    log.display()
                ),
            );
        }
        if let Some(export) = &t.export_peft {
            let (log_at, export_at) = (resolved(log), resolved(export));
            let exported = [
                spafit::adapter::PEFT_CONFIG_FILE,
                spafit::adapter::PEFT_WEIGHTS_FILE,
                spafit::adapter::SPAFIT_EXPORT_FILE,
                spafit::train::LOCK_FILE,
            ];
            if log_at == export_at || exported.iter().any(|f| log_at == export_at.join(f)) {
                return refuse(
                    "--write-batches",
                    format!(
                        "{} is where --export-peft writes the PEFT adapter",
                        log.display()
                    ),
                );
            }
        }
        check_output_file("--write-batches", log, model, adapter, inputs)?;
    }
    Ok(())
}

/// The first of `names` that exists in `dir`, as a path.
fn first_existing(dir: &std::path::Path, names: &[&str]) -> Option<std::path::PathBuf> {
    names.iter().map(|f| dir.join(f)).find(|f| f.exists())
}

/// Whether `path` is the run folder `run` itself or lies among the files the run writes there
/// (metrics.jsonl, result.json, best/, last/, the run's lock file), which do not exist yet
/// when a fresh run starts, or is where one of those files leads through a link (writes
/// follow links).
fn among_run_files(path: &std::path::Path, run: &std::path::Path) -> bool {
    let (at, run_at) = (resolved(path), resolved(run));
    let written = [
        "metrics.jsonl".to_string(),
        RESULT_FILE.to_string(),
        spafit::train::LOCK_FILE.to_string(),
        format!("best/{}", spafit::adapter::MANIFEST_FILE),
        format!("best/{}", spafit::adapter::WEIGHTS_FILE),
        format!("last/{}", spafit::train::STATE_FILE),
    ];
    at == run_at
        || [
            "metrics.jsonl",
            RESULT_FILE,
            "best",
            "last",
            spafit::train::LOCK_FILE,
        ]
        .into_iter()
        .any(|name| at.starts_with(run_at.join(name)))
        || written.iter().any(|name| same_file(path, &run.join(name)))
}

/// Refuses an output file that could not be created (a file stands where a folder goes) or
/// that would overwrite what the command reads: one of `inputs`, or a file of the checkpoint
/// in `model` or of the adapter in `adapter`.
pub(super) fn check_output_file(
    flag: &'static str,
    out: &std::path::Path,
    model: &std::path::Path,
    adapter: Option<&std::path::Path>,
    inputs: &[std::path::PathBuf],
) -> spafit::Result<()> {
    let refuse = |detail: String| Err(spafit::Error::invalid(flag, detail));
    // Where the write lands: `new/../data.csv` is `data.csv` once `new/` is created, which
    // no check on the path as written would see.
    let target = resolved(out);
    if is_read_file(&target, model, adapter) {
        return refuse(format!(
            "{} is a file of the model or adapter this command reads",
            out.display()
        ));
    }
    if let Some(folder) = read_folder_holding(out, model, adapter) {
        return refuse(format!(
            "{} lies in {}, the folder of the model or adapter this command reads; write \
             the output elsewhere",
            out.display(),
            folder.display()
        ));
    }
    // A GLUE split that is missing now is read by the next run of its task all the same.
    let is_input = |i: &&std::path::PathBuf| same_file(&target, i) || target == resolved(i);
    if let Some(input) = inputs.iter().find(is_input) {
        return refuse(format!(
            "{} is an input of this command (or a split of another GLUE task under \
             --glue-dir); write the output elsewhere",
            input.display()
        ));
    }
    // Through a link, the file that would be replaced is the link's target.
    if target.exists() && (is_artifact_name(out) || is_artifact_name(&target)) {
        return refuse(format!(
            "{} exists and is a model, adapter or run file; write the output elsewhere",
            out.display()
        ));
    }
    // Last: it writes a probe file, which has no business in a folder refused above.
    check_creatable_file(flag, out)
}

/// The model's or the adapter's folder when `path` lies inside it (through links, and for a
/// path that does not exist yet): nothing a command writes belongs there, whatever the file
/// is called (a sentence-transformers model has files of its own, `modules.json`, `1_Pooling/`).
/// A model given as a hub id is its whole cache repository (`models--org--name`: snapshots,
/// blobs, refs).
pub(super) fn read_folder_holding(
    path: &std::path::Path,
    model: &std::path::Path,
    adapter: Option<&std::path::Path>,
) -> Option<std::path::PathBuf> {
    let at = resolved(path);
    std::iter::once(model.to_path_buf())
        .chain(hub_checkpoint(model).and_then(|dir| hub_repository(&dir)))
        .chain(adapter.map(std::path::Path::to_path_buf))
        .filter(|dir| dir.is_dir())
        .find(|dir| at.starts_with(resolved(dir)))
}

/// The folder in a Hugging Face cache a model given as a hub id (`org/name`, no such folder
/// here) reads its files from: a snapshot, or a sentence-transformers model's
/// `0_Transformer` in one.
fn hub_checkpoint(model: &std::path::Path) -> Option<std::path::PathBuf> {
    match model.exists() {
        true => None,
        false => spafit::checkpoint::resolve(model).ok(),
    }
}

/// The cache repository (`…/models--org--name`) holding `checkpoint`, a folder under its
/// `snapshots/`.
fn hub_repository(checkpoint: &std::path::Path) -> Option<std::path::PathBuf> {
    checkpoint
        .ancestors()
        .find(|dir| dir.parent().and_then(|p| p.file_name()) == Some("snapshots".as_ref()))
        .and_then(|snapshot| Some(snapshot.parent()?.parent()?.to_path_buf()))
}

/// Whether two paths name the same existing file (through links, relative parts and hard
/// links).
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// The files a command reads from a checkpoint directory (besides shards an index names).
const MODEL_FILES: [&str; 8] = [
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
];

/// The files of an adapter directory, spafit's or PEFT's.
const ADAPTER_FILES: [&str; 4] = [
    "adapter.json",
    "adapter.safetensors",
    "adapter_config.json",
    "adapter_model.safetensors",
];

/// Whether `path` is one of the files a command reads from the checkpoint in `model` or the
/// adapter in `adapter` (an output there would destroy the input).
fn is_read_file(
    path: &std::path::Path,
    model: &std::path::Path,
    adapter: Option<&std::path::Path>,
) -> bool {
    let in_hub = hub_checkpoint(model);
    let model = in_hub.as_deref().unwrap_or(model);
    let model_files = MODEL_FILES.map(|f| model.join(f));
    // The shards an index lists may have any name.
    let is_shard = path.extension().is_some_and(|e| e == "safetensors")
        && path
            .parent()
            .is_some_and(|dir| same_file(dir, model) || resolved(dir) == resolved(model));
    if is_shard {
        return true;
    }
    let adapter_files = adapter
        .into_iter()
        .flat_map(|a| ADAPTER_FILES.map(|f| a.join(f)));
    model_files
        .into_iter()
        .chain(adapter_files)
        .any(|f| same_file(path, &f))
}

/// Refuses an output directory that could not be written, before the work rather than after
/// it: the nearest of it and its ancestors that exists is a file, or a directory this user
/// may not write into.
fn check_creatable(flag: &'static str, dir: &std::path::Path) -> spafit::Result<()> {
    // A link to nothing: creating the folder would fail on the link itself ("File exists").
    if dir.is_symlink() && !dir.exists() {
        let target = std::fs::read_link(dir).unwrap_or_default();
        return Err(spafit::Error::invalid(
            flag,
            format!(
                "{} is a link to {}, which does not exist: create that folder, or give \
                 another one",
                dir.display(),
                target.display()
            ),
        ));
    }
    check_writable_ancestor(flag, dir, dir)
}

/// [`check_creatable`] for an output file, which is written under a temporary name beside
/// it and renamed over it (a device or a pipe is written in place): it may not be a
/// directory, and its folder (or the device) must be writable.
fn check_creatable_file(flag: &'static str, file: &std::path::Path) -> spafit::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    if file.as_os_str().as_bytes().ends_with(b"/") && !file.is_dir() {
        return Err(spafit::Error::invalid(
            flag,
            format!(
                "{} ends in `/`, which names a folder; give a file name",
                file.display()
            ),
        ));
    }
    if file.is_dir() {
        return Err(spafit::Error::invalid(
            flag,
            format!("{} is a directory; give a file name", file.display()),
        ));
    }
    // A device or a pipe (through /dev/stdout's links too) is always written in place; a
    // file is replaced by a rename, which its own permissions would not stop, so they are
    // asked here: a read-only file is one its owner meant to keep.
    if let Ok(existing) = std::fs::metadata(file) {
        // Write bits cleared for everyone say "keep this" even to root, whom access(2) lets
        // write anything.
        let why = if existing.permissions().readonly() {
            Some("is read-only")
        } else if !may_access(file, libc::W_OK) {
            Some("is one this user may not write")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(spafit::Error::invalid(
                flag,
                format!(
                    "{} exists and {why}; make it writable or choose another file",
                    file.display()
                ),
            ));
        }
        if !existing.is_file() {
            return Ok(());
        }
    }
    // The write follows a link to its target.
    let target = resolved(file);
    let parent = target.parent().unwrap_or(std::path::Path::new(""));
    check_writable_ancestor(flag, parent, file)
}

fn check_writable_ancestor(
    flag: &'static str,
    dir: &std::path::Path,
    output: &std::path::Path,
) -> spafit::Result<()> {
    let nearest = dir
        .ancestors()
        .map(|a| match a.as_os_str().is_empty() {
            true => std::path::Path::new("."),
            false => a,
        })
        .find(|a| a.exists())
        .unwrap_or(std::path::Path::new("."));
    let refuse = |why: String| {
        let consequence = if nearest == output {
            String::new()
        } else if output.exists() {
            // A file is replaced through a temporary beside it: the folder must take it.
            format!(", so {} cannot be written", output.display())
        } else {
            format!(", so {} cannot be created", output.display())
        };
        Err(spafit::Error::invalid(flag, format!("{why}{consequence}")))
    };
    if !nearest.is_dir() {
        return refuse(format!("{} is a file", nearest.display()));
    }
    if !may_access(nearest, libc::W_OK | libc::X_OK) {
        return refuse(format!(
            "{} is a directory this user may not write into",
            nearest.display()
        ));
    }
    // Permissions are not the whole story (a pseudo file system such as /proc, a mount that
    // refuses new files): create and remove a file there, so the run cannot fail at the end.
    // A name already taken (left by another process) is not ours to remove: try the next.
    let mut attempt = 0;
    loop {
        let probe = nearest.join(format!(
            ".spafit-write-check-{}-{attempt}",
            std::process::id()
        ));
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .map(drop);
        match created {
            Ok(()) => {
                let _ = std::fs::remove_file(&probe);
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 16 => attempt += 1,
            Err(e) => return refuse(format!("{} refuses new files ({e})", nearest.display())),
        }
    }
}

/// Whether this process may access `path` with `mode` (`W_OK`, `X_OK`), by its effective
/// ids and the mount's flags, as the kernel decides for the real write.
fn may_access(path: &std::path::Path, mode: libc::c_int) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    unsafe { libc::faccessat(libc::AT_FDCWD, path.as_ptr(), mode, libc::AT_EACCESS) == 0 }
}

/// `path` with links and relative parts resolved as far as it exists, the rest joined on:
/// where a write to it would land, comparable with another path resolved the same way.
fn resolved(path: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let parts: Vec<Component> = path.components().collect();
    for exists in (0..=parts.len()).rev() {
        let prefix: std::path::PathBuf = parts[..exists].iter().collect();
        let prefix = match prefix.as_os_str().is_empty() {
            true => std::path::PathBuf::from("."),
            false => prefix,
        };
        if let Ok(mut at) = std::fs::canonicalize(&prefix) {
            // The rest does not exist, so it holds no link: a `..` there steps out of a
            // folder the write creates first, and lands where a lexical step lands.
            for part in &parts[exists..] {
                match part {
                    Component::ParentDir => {
                        at.pop();
                    }
                    Component::CurDir => {}
                    other => at.push(other.as_os_str()),
                }
            }
            return at;
        }
    }
    path.to_path_buf()
}

/// Files an output must never replace: a model's, an adapter's (spafit's or PEFT's) or a
/// run's. Predictions or a batch log written over one would destroy it.
fn is_artifact_name(path: &std::path::Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    const OTHERS: [&str; 4] = [
        "spafit_export.json",
        "metrics.jsonl",
        RESULT_FILE,
        "special_tokens_map.json",
    ];
    MODEL_FILES.contains(&name)
        || ADAPTER_FILES.contains(&name)
        || OTHERS.contains(&name)
        || path
            .extension()
            .is_some_and(|e| e == "safetensors" || e == "bin")
}
