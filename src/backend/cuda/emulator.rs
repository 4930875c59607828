//! The CPU stand-in for the CUDA driver (`cuda-emu`): a `libcuda.so` built by `build.rs` from
//! `kernels/emulator/` that runs host builds of the project's own `kernels/*.cu`, so the CUDA
//! backend runs, and is tested, on machines without a GPU.
//!
//! A process has one CUDA driver: cudarc opens `libcuda.so` once, at its first driver call.
//! Loading the stand-in by absolute path first (`RTLD_GLOBAL`, SONAME `libcuda.so`) makes
//! that open return the stand-in. So the choice is made once per process, before any CUDA
//! work; [`use_emulator`] refuses once NVIDIA's driver is in use, and the hardware constructor
//! refuses once the stand-in is.

use std::ffi::{c_char, c_int, CStr, CString};
use std::path::PathBuf;
use std::sync::Mutex;

use super::kernels;
use crate::error::{Error, Result};

/// Which driver this process's CUDA calls reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// NVIDIA's driver and a GPU.
    Hardware,
    /// The CPU stand-in (`cuda-emu`).
    Emulator,
}

static CHOICE: Mutex<Option<Driver>> = Mutex::new(None);

fn unavailable(reason: impl Into<String>) -> Error {
    Error::BackendUnavailable {
        backend: "cuda-emu".into(),
        reason: reason.into(),
    }
}

/// The directory holding the stand-in's `libcuda.so` and `kernels/*.so`:
/// `$SPAFIT_EMULATOR_DIR`, else the one this build made.
pub fn emulator_dir() -> Result<PathBuf> {
    if let Some(dir) = emulator_dir_variable() {
        return Ok(PathBuf::from(dir));
    }
    kernels::EMULATOR_DIR.map(PathBuf::from).ok_or_else(|| {
        unavailable(format!(
            "this build has no CPU stand-in for the CUDA driver: {}",
            kernels::EMULATOR_MISSING
        ))
    })
}

/// `$SPAFIT_EMULATOR_DIR` when it names something.
fn emulator_dir_variable() -> Option<std::ffi::OsString> {
    path_variable("SPAFIT_EMULATOR_DIR")
}

/// The environment variable `name` when it names something: set but empty (`NAME=`) reads
/// as unset, as the shell's idiom for clearing a variable means (and as the stand-in reads
/// it).
fn path_variable(name: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(name).filter(|value| !value.is_empty())
}

/// Makes the stand-in this process's CUDA driver (idempotent). Fails when NVIDIA's driver is
/// already in use here, or the stand-in was not built.
pub fn use_emulator() -> Result<()> {
    let mut choice = CHOICE
        .lock()
        .map_err(|_| unavailable("driver choice poisoned"))?;
    match *choice {
        Some(Driver::Emulator) => return Ok(()),
        Some(Driver::Hardware) => return Err(unavailable(
            "this process already uses NVIDIA's CUDA driver; choose cuda-emu before any CUDA work",
        )),
        None => {}
    }
    check_settings()?;
    let dir = emulator_dir()?;
    let path = dir.join("libcuda.so");
    if dir.exists() && !dir.is_dir() {
        return Err(unavailable(if emulator_dir_variable().is_some() {
            format!(
                "the environment variable SPAFIT_EMULATOR_DIR names {}, which is not a folder: \
                 give the folder holding the stand-in's libcuda.so and kernels/, or unset it to \
                 use the one this build made",
                dir.display()
            )
        } else {
            format!(
                "{}, where this build put the stand-in, is not a folder: rebuild spafit \
                 (build.rs makes it) or set SPAFIT_EMULATOR_DIR",
                dir.display()
            )
        }));
    }
    if !path.is_file() {
        let from_variable = emulator_dir_variable().is_some();
        return Err(unavailable(if from_variable {
            format!(
                "{} is missing: the environment variable SPAFIT_EMULATOR_DIR names a folder \
                 without the stand-in; unset it to use the one this build made",
                path.display()
            )
        } else {
            format!(
                "{} is missing: rebuild spafit (build.rs makes it) or set SPAFIT_EMULATOR_DIR",
                path.display()
            )
        }));
    }
    check_kernel_modules(&dir)?;
    refuse_cut_short(&path)?;
    // SAFETY: loading our own library, whose initialisers only read environment variables.
    let lib = unsafe {
        libloading::os::unix::Library::open(
            Some(&path),
            libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
        )
    }
    .map_err(|e| {
        // libloading's message is only "dlopen failed"; the loader's reason is its source.
        let reason = std::error::Error::source(&e).map_or(String::new(), |r| format!(": {r}"));
        unavailable(format!("cannot load {}: {e}{reason}", path.display()))
    })?;
    // The stand-in must stay loaded for the rest of the process: cudarc holds its functions.
    std::mem::forget(lib);
    *choice = Some(Driver::Emulator);
    drop(choice);
    if !is_emulated() {
        return Err(unavailable(
            "cudarc opened another libcuda.so than the stand-in (NVIDIA's driver was loaded first)",
        ));
    }
    Ok(())
}

/// Refuses a stand-in folder without the kernel module of every kernel file of this build
/// (`kernels/<file>.so`, or in `$SPAFIT_EMU_KERNEL_DIR`), which would otherwise be found only
/// at a run's first launch of one of its kernels.
fn check_kernel_modules(dir: &std::path::Path) -> Result<()> {
    let from_variable = path_variable("SPAFIT_EMU_KERNEL_DIR");
    let kernel_dir = from_variable
        .clone()
        .map_or_else(|| dir.join("kernels"), PathBuf::from);
    let missing: Vec<String> = kernels::KERNELS
        .iter()
        .map(|(module, _)| format!("{module}.so"))
        .filter(|file| !kernel_dir.join(file).is_file())
        .collect();
    if missing.is_empty() {
        // The stand-in loads every module of the folder, this build's or not.
        let modules = std::fs::read_dir(&kernel_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|e| e == "so"));
        for module in modules {
            refuse_cut_short(&module)?;
        }
        return Ok(());
    }
    let hint = if from_variable.is_some() {
        "the environment variable SPAFIT_EMU_KERNEL_DIR names a folder without them; unset it \
         to use the stand-in's own"
    } else if emulator_dir_variable().is_some() {
        "the environment variable SPAFIT_EMULATOR_DIR names a stand-in without them; unset it \
         to use the one this build made"
    } else {
        "rebuild spafit (build.rs makes them)"
    };
    Err(unavailable(format!(
        "{} lacks {} (the stand-in runs this build's kernels from these modules): {hint}",
        kernel_dir.display(),
        missing.join(", ")
    )))
}

/// Refuses a shared object shorter than its own ELF headers say (a build still writing it, a
/// copy cut off): the loader maps such a file whole and the process dies of SIGBUS at the
/// first page past its end, with no word of which file. What is not a 64-bit ELF file is
/// left to the loader, which names its fault.
fn refuse_cut_short(path: &std::path::Path) -> Result<()> {
    match elf_bytes_needed(path) {
        Some((len, needed)) if len < needed => Err(unavailable(format!(
            "{} is cut short: {len} bytes where its ELF headers need {needed} (a build still \
             writing it, or a damaged copy): rebuild spafit (build.rs makes it), or point \
             SPAFIT_EMULATOR_DIR at a whole stand-in",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// A 64-bit little-endian ELF file's length and the length its headers need: the end of its
/// section header table and of every segment's file bytes. `None` for any other file, or
/// one that cannot be read (the loader then says why).
fn elf_bytes_needed(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let mut header = [0u8; 64];
    if file.read_exact_at(&mut header, 0).is_err() {
        // Shorter than an ELF header: cut short if it begins as one.
        let mut magic = [0u8; 4];
        return (file.read_exact_at(&mut magic, 0).is_ok() && magic == *b"\x7fELF")
            .then_some((len, 64));
    }
    // ELFCLASS64, ELFDATA2LSB.
    if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], at: usize| u64::from(u16::from_le_bytes([b[at], b[at + 1]]));
    let u64_at =
        |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("eight bytes"));
    let (program_headers, entry_size, entries) = (
        u64_at(&header, 0x20),
        u16_at(&header, 0x36),
        u16_at(&header, 0x38),
    );
    let sections_end =
        u64_at(&header, 0x28).saturating_add(u16_at(&header, 0x3a) * u16_at(&header, 0x3c));
    let table_end = program_headers.saturating_add(entry_size * entries);
    let mut needed = sections_end.max(table_end);
    if table_end > len || entry_size < 40 {
        return Some((len, needed));
    }
    let mut entry = vec![0u8; entry_size as usize];
    for i in 0..entries {
        file.read_exact_at(&mut entry, program_headers + i * entry_size)
            .ok()?;
        // p_offset at 8, p_filesz at 32.
        needed = needed.max(u64_at(&entry, 8).saturating_add(u64_at(&entry, 32)));
    }
    Some((len, needed))
}

/// The stand-in reads its settings from the environment when it loads, where it can only
/// warn: a typo there (`shuffle:abc`, `16G`) would silently run another schedule or size.
fn check_settings() -> Result<()> {
    let invalid = |name: &str, value: &str, expected: &str| {
        unavailable(format!(
            "the environment variable {name} is `{value}`; expected {expected}"
        ))
    };
    if let Some(value) = std::env::var_os("SPAFIT_EMU_SCHEDULE") {
        let value = value.to_string_lossy();
        let seed_ok =
            |seed: &str| seed.bytes().all(|b| b.is_ascii_digit()) && seed.parse::<u64>().is_ok();
        let ok = matches!(value.as_ref(), "" | "forward" | "reverse" | "shuffle")
            || value.strip_prefix("shuffle:").is_some_and(seed_ok);
        if !ok {
            return Err(invalid(
                "SPAFIT_EMU_SCHEDULE",
                &value,
                "forward, reverse, shuffle or shuffle:<seed> (a whole number)",
            ));
        }
    }
    if let Some(value) = std::env::var_os("SPAFIT_EMU_MEMORY") {
        let value = value.to_string_lossy();
        if !value.parse::<u64>().is_ok_and(|bytes| bytes > 0) {
            return Err(invalid(
                "SPAFIT_EMU_MEMORY",
                &value,
                "the stand-in's device memory in bytes, a whole number above 0 (16 GiB is 17179869184)",
            ));
        }
    }
    for name in ["SPAFIT_EMU_MAX_GRID_Y", "SPAFIT_EMU_MAX_GRID_Z"] {
        let Some(value) = std::env::var_os(name) else {
            continue;
        };
        let value = value.to_string_lossy();
        if !value
            .parse::<u32>()
            .is_ok_and(|n| (1..=65_535).contains(&n))
        {
            return Err(invalid(
                name,
                &value,
                "the most blocks a launch grid takes in that dimension, a whole number from 1 \
                 to 65535",
            ));
        }
    }
    Ok(())
}

/// Records that this process uses NVIDIA's driver; fails if it already uses the stand-in.
pub(super) fn claim_hardware() -> Result<()> {
    let mut choice = CHOICE
        .lock()
        .map_err(|_| unavailable("driver choice poisoned"))?;
    match *choice {
        Some(Driver::Emulator) => Err(Error::BackendUnavailable {
            backend: "cuda".into(),
            reason: "this process already runs CUDA on the CPU stand-in (cuda-emu); a process uses one driver"
                .into(),
        }),
        _ => {
            *choice = Some(Driver::Hardware);
            Ok(())
        }
    }
}

/// The driver chosen in this process, if any.
pub fn driver() -> Option<Driver> {
    CHOICE.lock().ok().and_then(|c| *c)
}

type LastError = unsafe extern "C" fn() -> *const c_char;
type SetSchedule = unsafe extern "C" fn(*const c_char) -> c_int;
type SetMemory = unsafe extern "C" fn(u64);
type EchoFailures = unsafe extern "C" fn(c_int);

/// A function of the stand-in, through the library cudarc opened (so it is the same one).
fn symbol<T: Copy>(name: &[u8]) -> Option<T> {
    if driver() != Some(Driver::Emulator) {
        return None;
    }
    // SAFETY: the stand-in is loaded (driver() says so), so culib() finds it and cannot
    // panic; the symbol types match the `API` functions in kernels/emulator/driver.cpp.
    unsafe { cudarc::driver::sys::culib().get::<T>(name).ok().map(|s| *s) }
}

/// Whether the `libcuda.so` cudarc loads by name is this stand-in (first on the library
/// path) rather than NVIDIA's driver. Call only once `is_culib_present()` said it loads.
pub(super) fn driver_library_is_stand_in() -> bool {
    // SAFETY: the caller checked that the library loads, so culib() cannot panic; the symbol
    // is only looked up, not called.
    unsafe {
        cudarc::driver::sys::culib()
            .get::<LastError>(b"spafit_emu_last_error\0")
            .is_ok()
    }
}

fn is_emulated() -> bool {
    symbol::<LastError>(b"spafit_emu_last_error\0").is_some()
}

/// The stand-in's account of its last failure (which kernel, block and thread; what was
/// wrong), or `None` on hardware or when it has none.
pub fn last_error() -> Option<String> {
    let f = symbol::<LastError>(b"spafit_emu_last_error\0")?;
    // SAFETY: returns a NUL-terminated string owned by the calling thread, valid until its
    // next call; copied at once.
    let text = unsafe { CStr::from_ptr(f()) }
        .to_string_lossy()
        .into_owned();
    (!text.is_empty()).then_some(text)
}

/// Stops the stand-in from printing each failure as it records it: the backend puts
/// [`last_error`] into the error of every failed call, so the words would come twice.
pub(super) fn stop_echoing_failures() {
    if let Some(f) = symbol::<EchoFailures>(b"spafit_emu_echo_failures\0") {
        // SAFETY: plain value argument.
        unsafe { f(0) };
    }
}

/// Sets the order in which the stand-in runs the threads of a block and the blocks of a grid:
/// `forward`, `reverse` or `shuffle[:seed]`. Every order is one a GPU may choose, so a kernel
/// whose results change between orders has a race. Also settable per process with
/// `SPAFIT_EMU_SCHEDULE`.
pub fn set_schedule(schedule: &str) -> Result<()> {
    let f = symbol::<SetSchedule>(b"spafit_emu_set_schedule\0")
        .ok_or_else(|| unavailable("the CPU stand-in is not this process's driver"))?;
    let c = CString::new(schedule).map_err(|_| Error::invalid("schedule", "contains NUL"))?;
    // SAFETY: a NUL-terminated string the callee only reads.
    if unsafe { f(c.as_ptr()) } != 0 {
        return Err(Error::invalid(
            "schedule",
            format!("`{schedule}`: expected forward, reverse or shuffle[:seed]"),
        ));
    }
    Ok(())
}

/// Sets the stand-in's device memory size: allocations beyond it fail with out of memory.
pub fn set_device_memory(bytes: u64) -> Result<()> {
    let f = symbol::<SetMemory>(b"spafit_emu_set_memory\0")
        .ok_or_else(|| unavailable("the CPU stand-in is not this process's driver"))?;
    // SAFETY: plain value argument.
    unsafe { f(bytes) };
    Ok(())
}
