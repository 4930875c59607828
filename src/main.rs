//! The `spafit` binary.

mod cli;

/// Keeps freed activation buffers in the heap instead of returning them to the kernel: a
/// training step allocates and frees the same large buffers every step, and with glibc's
/// defaults each one comes back as fresh pages to fault in and zero (5–10% of a CPU step on
/// all-MiniLM-L6-v2). Peak memory does not grow: the same buffers are reused.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // glibc caps the mmap threshold at 32 MiB on 64-bit; larger blocks still use mmap.
    const M_TRIM_THRESHOLD: libc::c_int = -1;
    const M_MMAP_THRESHOLD: libc::c_int = -3;
    const M_ARENA_MAX: libc::c_int = -8;
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    unsafe {
        libc::mallopt(M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(M_TRIM_THRESHOLD, 512 << 20);
        // The command runs on a worker of the pool (below), whose own arena grows in 64 MiB
        // heaps that glibc unmaps whenever one empties, whatever the trim threshold (its
        // heap_trim weighs only M_TOP_PAD): every step of all-MiniLM-L6-v2 at 16 × 64 then
        // faulted in 25–150 MB afresh (6,600 pages for LoRA, 38,000 for full fine-tuning).
        // One arena, the main one, keeps them; M_TOP_PAD would too, at 40 MB more peak.
        libc::mallopt(M_ARENA_MAX, 1);
    }
}

/// A write past the process's file-size limit (`ulimit -f`, a container's) fails with "File
/// too large", as one to a full disk does: the command then names the file, removes its
/// temporary and keeps what it saved before. SIGXFSZ's default action killed it mid-write,
/// without a word, leaving the temporary and a torn log line behind.
fn fail_writes_past_the_file_size_limit() {
    // SAFETY: setting a signal's disposition to ignored, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Writes `e` on stderr: not with `eprintln!`, which panics when stderr is closed or full.
fn report(e: &spafit::Error) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "spafit: {e}");
}

fn main() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    keep_freed_memory();
    fail_writes_past_the_file_size_limit();
    // A command line the parser or its checks refuse exits as clap's own refusals do (2), so
    // a script can tell a wrong call from a run that failed (1).
    let cli = match cli::Cli::from_env() {
        Ok(cli) => cli,
        Err(e) => {
            report(&e);
            std::process::exit(2);
        }
    };
    let threads = cli.threads();
    let run = || cli.run();
    // The command runs on a worker of the pool every op splits its work over, so an op's
    // fork and join stay among threads that are awake: called from outside the pool, each op
    // put its caller to sleep and woke it again (a training step on the CPU: 4x the context
    // switches). 8 MiB: the main thread's stack, which the command had before.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .stack_size(8 << 20)
        .build();
    let result = match pool {
        Ok(pool) => pool.install(run),
        // Asked for: a run on other threads than given would be another run than asked for.
        Err(e) if threads > 0 => Err(spafit::Error::BackendUnavailable {
            backend: "cpu".into(),
            reason: format!("could not start the {threads} worker threads --threads asks for: {e}"),
        }),
        Err(_) => run(),
    };
    // A run a signal stopped saved its state and said so: the status is the signal's, as
    // for a process the signal ended.
    if let (Ok(()), Some(status)) = (&result, cli::interrupt::exit_status()) {
        std::process::exit(status);
    }
    if let Err(e) = result {
        // A reader that stopped early (`spafit predict | head`) ends the command as SIGPIPE
        // ends other tools: without a word, with the status a shell shows for them.
        if let spafit::Error::Io { path, error } = &e {
            if path.as_os_str() == "<stdout>" && error.kind() == std::io::ErrorKind::BrokenPipe {
                const KILLED_BY_SIGPIPE: i32 = 128 + 13;
                std::process::exit(KILLED_BY_SIGPIPE);
            }
        }
        report(&e);
        // A check that ran and failed is not a failure to run it: scripts tell them apart.
        let status = match e {
            spafit::Error::GradientMismatch { .. }
            | spafit::Error::KeyBiasGradient { .. }
            | spafit::Error::GradcheckInconclusive { .. } => 3,
            _ => 1,
        };
        std::process::exit(status);
    }
}
