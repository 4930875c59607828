//! Builds the kernels twice from the same sources in `kernels/`:
//!
//! 1. every `kernels/*.cu` to PTX with nvcc, embedded through one generated Rust file
//!    (`$OUT_DIR/kernels.rs`), which the CUDA backend loads on a GPU;
//! 2. the CPU stand-in for the CUDA driver (`kernels/emulator/`): `libcuda.so` (SONAME
//!    `libcuda.so`) and a host build of every kernel file, `kernels/<name>.so`, compiled by the
//!    system C++ compiler with `kernels/emulator/device.h` supplying the CUDA vocabulary. Its
//!    directory is `EMULATOR_DIR` in the generated file.
//!
//! nvcc is looked for in `$SPAFIT_NVCC`, `$CUDA_HOME/bin`, `$CUDA_PATH/bin`, `$PATH`, then the
//! project-local toolchain that `scripts/install_nvcc.sh` puts in `.cache/cuda`; the stand-in
//! needs the CUDA headers beside it and a C++ compiler (the `cc` crate's choice, `$CXX`).
//! Without them the crate still builds (CPU only) and says why when CUDA is asked for;
//! `SPAFIT_REQUIRE_NVCC=1` / `SPAFIT_REQUIRE_EMULATOR=1` (CI sets both) make a missing tool a
//! build error. A kernel that does not compile is always a build error, with the compiler's
//! messages. The PTX target is `compute_80` (Ampere and Hopper through the driver's JIT),
//! overridable with `SPAFIT_CUDA_ARCH`.
//!
//! `SPAFIT_CUDA_SASS` (e.g. `80,90`) also assembles that PTX with ptxas into machine code
//! for those GPUs (`SASS` in the generated file), which the backend loads instead of having
//! the driver compile the PTX at first use (some 20 s for all kernels on an H200): for a
//! release build aimed at known GPUs, and the GPU check. Off by default: ptxas costs about a
//! minute per architecture on a 2-core machine.
//!
//! Outputs are cached by content in `target/spafit-kernels/`, so the check, test and release
//! profiles (each its own `OUT_DIR`) compile a kernel once.

use std::collections::hash_map::DefaultHasher;
use std::env;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

fn find_nvcc(manifest: &Path) -> Option<PathBuf> {
    if let Some(p) = env::var_os("SPAFIT_NVCC") {
        return Some(PathBuf::from(p));
    }
    let mut candidates = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = env::var_os(var) {
            candidates.push(PathBuf::from(root).join("bin/nvcc"));
        }
    }
    if let Some(path) = env::var_os("PATH") {
        candidates.extend(env::split_paths(&path).map(|d| d.join("nvcc")));
    }
    candidates.push(manifest.join(".cache/cuda/nvidia/cu13/bin/nvcc"));
    candidates.into_iter().find(|p| p.is_file())
}

/// The CUDA headers that belong to `nvcc` (`cuda.h`, `cuda_bf16.h`).
fn cuda_include(nvcc: &Path) -> Option<PathBuf> {
    let root = nvcc.parent()?.parent()?;
    let dir = root.join("include");
    dir.join("cuda.h").is_file().then_some(dir)
}

fn run(what: &str, cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {:?} for {what}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed:\n{:?}\n{}{}",
            cmd,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Content-addressed outputs shared by every profile's build.
struct Cache {
    dir: PathBuf,
}

impl Cache {
    fn new(out: &Path) -> Cache {
        // OUT_DIR is target/<profile>/build/<crate>-<hash>/out.
        let dir = out
            .ancestors()
            .nth(4)
            .map(|target| target.join("spafit-kernels"))
            .unwrap_or_else(|| out.join("cache"));
        std::fs::create_dir_all(&dir).expect("create the kernel cache directory");
        Cache { dir }
    }

    /// `path` of the output for `key`, made by `make(tmp)` unless cached.
    fn get(
        &self,
        key: u64,
        suffix: &str,
        make: impl FnOnce(&Path) -> Result<(), String>,
    ) -> Result<PathBuf, String> {
        let path = self.dir.join(format!("{key:016x}{suffix}"));
        if path.is_file() {
            return Ok(path);
        }
        let tmp = self
            .dir
            .join(format!("{key:016x}.{}.tmp{suffix}", std::process::id()));
        make(&tmp)?;
        std::fs::rename(&tmp, &path).map_err(|e| format!("rename {}: {e}", tmp.display()))?;
        Ok(path)
    }
}

fn hash_of(parts: &[&[u8]]) -> u64 {
    let mut h = DefaultHasher::new();
    for p in parts {
        p.hash(&mut h);
    }
    h.finish()
}

/// Rewrites every `__shared__` declaration for the host build: a static array becomes a
/// reference to guarded, per-OS-thread storage (`emu::shared_array<T>(key)`), poisoned at
/// every block start; `extern __shared__ T name[];` becomes a pointer to the launch's dynamic shared
/// memory. Line numbers are kept, so messages point at the original source.
fn rewrite_shared(src: &str, file: &str) -> Result<String, String> {
    const KEY: &str = "__shared__";
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(src.len() + 256);
    let mut rest = src;
    while let Some(pos) = rest.find(KEY) {
        let before_ok = rest[..pos].chars().next_back().is_none_or(|c| !is_ident(c));
        let after_ok = rest[pos + KEY.len()..]
            .chars()
            .next()
            .is_none_or(|c| !is_ident(c));
        if !(before_ok && after_ok) {
            out.push_str(&rest[..pos + KEY.len()]);
            rest = &rest[pos + KEY.len()..];
            continue;
        }
        // The declaration runs from the previous statement boundary to the next `;`.
        let start = rest[..pos]
            .rfind([';', '{', '}', '\n'])
            .map_or(0, |i| i + 1);
        let end = pos
            + rest[pos..]
                .find(';')
                .ok_or_else(|| format!("{file}: a __shared__ declaration without `;`"))?;
        let line = src[..src.len() - rest.len() + pos].matches('\n').count() + 1;
        let prefix = &rest[start..pos];
        let decl = &rest[pos + KEY.len()..end];
        let newlines = rest[start..end].matches('\n').count();
        let strip_align = |s: &str| -> String {
            let mut s = s.to_string();
            while let Some(a) = s.find("__align__") {
                let close = s[a..].find(')').map_or(s.len(), |c| a + c + 1);
                s.replace_range(a..close, " ");
            }
            s
        };
        let prefix_words = strip_align(prefix);
        let is_extern = prefix_words.split_whitespace().any(|w| w == "extern");
        let leading: String = prefix_words
            .split_whitespace()
            .filter(|w| *w != "extern" && *w != "static")
            .collect::<Vec<_>>()
            .join(" ");
        let decl = format!("{leading} {}", strip_align(decl));
        let decl = decl.trim();
        if decl.contains(',') || decl.contains('=') {
            return Err(format!(
                "{file}:{line}: write one __shared__ variable per declaration, without initializer: `{decl}`"
            ));
        }
        let dims_at = decl.find('[').unwrap_or(decl.len());
        let (head, dims) = decl.split_at(dims_at);
        let head = head.trim_end();
        let name_at = head.rfind(|c: char| !is_ident(c)).map_or(0, |i| i + 1);
        let (ty, name) = (head[..name_at].trim(), &head[name_at..]);
        if ty.is_empty() || name.is_empty() {
            return Err(format!(
                "{file}:{line}: cannot read the __shared__ declaration `{decl}`"
            ));
        }
        out.push_str(&rest[..start]);
        if is_extern {
            write!(
                out,
                " {ty}* const {name} = reinterpret_cast<{ty}*>(::emu::dynamic_smem());"
            )
            .expect("write to String");
        } else {
            write!(
                out,
                " static char emu_key_{name}; auto& {name} = ::emu::shared_array<{ty} {}>(&emu_key_{name});",
                dims.trim()
            )
            .expect("write to String");
        }
        out.push_str(&"\n".repeat(newlines));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The `SASS` table's entries: every module's PTX assembled by the `ptxas` beside nvcc for
/// each architecture `SPAFIT_CUDA_SASS` lists (`80,90`; `sm_90` is read as 90). The PTX
/// itself, not the source, so the machine code is what the driver's JIT would make of it.
fn assemble_sass(
    tc: &Toolchain,
    ptx_of: &[(String, PathBuf)],
    cache: &Cache,
) -> Result<String, String> {
    let Ok(list) = env::var("SPAFIT_CUDA_SASS") else {
        return Ok(String::new());
    };
    let mut archs = Vec::new();
    for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let digits = word.trim_start_matches("sm_");
        match digits.parse::<u32>() {
            Ok(sm) if sm >= 50 => archs.push(sm),
            _ => {
                return Err(format!(
                    "SPAFIT_CUDA_SASS: `{word}` is not a GPU architecture (e.g. 80, 86, 90)"
                ))
            }
        }
    }
    // Beside the real nvcc (a link such as /usr/bin/nvcc may point into the toolkit), else
    // on PATH.
    let ptxas = std::fs::canonicalize(&tc.nvcc)
        .unwrap_or_else(|_| tc.nvcc.clone())
        .with_file_name("ptxas");
    let ptxas = if ptxas.is_file() {
        ptxas
    } else {
        PathBuf::from("ptxas")
    };
    let jobs: Vec<(&str, &Path, u32)> = ptx_of
        .iter()
        .flat_map(|(name, ptx)| {
            archs
                .iter()
                .map(move |&sm| (name.as_str(), ptx.as_path(), sm))
        })
        .collect();
    // One ptxas per module and architecture at once: the GEMM module alone takes half a
    // minute, and the rest fit beside it.
    let cubins: Vec<Result<PathBuf, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|&(name, ptx, sm)| {
                let ptxas = &ptxas;
                scope.spawn(move || {
                    let text =
                        std::fs::read(ptx).map_err(|e| format!("read {}: {e}", ptx.display()))?;
                    let key = hash_of(&[
                        b"sass",
                        &text,
                        &sm.to_le_bytes(),
                        ptxas.to_string_lossy().as_bytes(),
                    ]);
                    cache.get(key, ".cubin", |tmp| {
                        run(
                            &format!("ptxas on {name} for sm_{sm}"),
                            Command::new(ptxas)
                                .arg(format!("-arch=sm_{sm}"))
                                .arg("-O3")
                                .arg(ptx)
                                .arg("-o")
                                .arg(tmp),
                        )
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a ptxas job panicked".into()))
            })
            .collect()
    });
    let mut entries = String::new();
    for ((name, _, sm), cubin) in jobs.iter().zip(cubins) {
        writeln!(
            entries,
            "    ({name:?}, {sm}, include_bytes!({:?})),",
            cubin?.display().to_string()
        )
        .expect("write to String");
    }
    Ok(entries)
}

/// Whether the machine building (and so running) the CPU stand-in has x86's FMA instructions:
/// an x86_64 build for an x86_64 target (the stand-in is built with the system compiler for
/// the machine it runs on; a cross build gets no such flag).
fn host_has_fma() -> bool {
    let target_x86_64 = env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|a| a == "x86_64");
    #[cfg(target_arch = "x86_64")]
    {
        target_x86_64 && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = target_x86_64;
        false
    }
}

/// The `.entry` names of a PTX text (kernels are `extern "C"`, so these are the C++ names).
fn ptx_entries(ptx: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = ptx;
    while let Some(p) = rest.find(".entry ") {
        let after = rest[p + 7..].trim_start();
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$'))
            .unwrap_or(after.len());
        names.push(after[..end].to_string());
        rest = &after[end..];
    }
    names
}

struct Toolchain {
    nvcc: PathBuf,
    include: Option<PathBuf>,
    arch: String,
}

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kernels = manifest.join("kernels");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    for var in [
        "SPAFIT_NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "PATH",
        "CXX",
        "SPAFIT_CUDA_ARCH",
        "SPAFIT_CUDA_SASS",
        "SPAFIT_REQUIRE_NVCC",
        "SPAFIT_REQUIRE_EMULATOR",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let files = |dir: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.retain(|p| p.is_file());
        v.sort();
        v
    };
    let sources = files(&kernels);
    let emulator_sources = files(&kernels.join("emulator"));
    let cu: Vec<&PathBuf> = sources
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    let headers: Vec<u8> = sources
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cuh" || e == "h"))
        .flat_map(|p| std::fs::read(p).expect("read a kernel header"))
        .collect();
    let emulator_text: Vec<u8> = emulator_sources
        .iter()
        .flat_map(|p| std::fs::read(p).expect("read an emulator source"))
        .collect();
    let require_nvcc = env::var("SPAFIT_REQUIRE_NVCC").is_ok_and(|v| v == "1");
    let require_emulator = env::var("SPAFIT_REQUIRE_EMULATOR").is_ok_and(|v| v == "1");
    let cache = Cache::new(&out);

    let toolchain = find_nvcc(&manifest).map(|nvcc| Toolchain {
        include: cuda_include(&nvcc),
        nvcc,
        arch: env::var("SPAFIT_CUDA_ARCH").unwrap_or_else(|_| "compute_80".into()),
    });
    let mut generated = String::from("// Generated by build.rs from kernels/.\n");
    let Some(tc) = toolchain else {
        if require_nvcc || require_emulator {
            panic!(
                "SPAFIT_REQUIRE_NVCC / SPAFIT_REQUIRE_EMULATOR is set but no nvcc was found (SPAFIT_NVCC, \
                 CUDA_HOME, CUDA_PATH, PATH, .cache/cuda): run scripts/install_nvcc.sh"
            );
        }
        generated.push_str(
            "/// The nvcc that compiled the kernels (none: CPU-only build).\npub const NVCC: Option<&str> = None;\n\
             /// `(module, PTX)` of every kernel file.\npub const KERNELS: &[(&str, &str)] = &[];\n\
             /// `(module, sm, machine code)` (none: no nvcc).\npub const SASS: &[(&str, u32, &[u8])] = &[];\n\
             /// Directory of the CPU stand-in driver and its kernel modules, when built.\npub const EMULATOR_DIR: Option<&str> = None;\n\
             /// Why there is no stand-in driver in this build.\npub const EMULATOR_MISSING: &str = \"nvcc (and the CUDA headers beside it) was not found when spafit was built; run scripts/install_nvcc.sh and rebuild\";\n",
        );
        std::fs::write(out.join("kernels.rs"), generated).expect("write kernels.rs");
        return;
    };

    // 1. PTX. No multiply-add is fused unless the source writes fmaf: nvcc's plain multiplies
    // and adds leave ptxas free to fuse them, and it fused the same inlined code differently in
    // two kernels that must agree bit for bit (NOTES.md, 2026-12-04). Unfused, the GPU's
    // arithmetic is also the stand-in's, whose host build fuses nothing.
    const NVCC_FLAGS: &[&str] = &["-O3", "--fmad=false", "-std=c++17"];
    let mut ptx_of = Vec::new();
    for src in &cu {
        let name = src
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("kernel file name")
            .to_string();
        let text = std::fs::read(src).expect("read kernel source");
        let key = hash_of(&[
            b"ptx",
            &text,
            &headers,
            tc.nvcc.to_string_lossy().as_bytes(),
            tc.arch.as_bytes(),
            NVCC_FLAGS.join(" ").as_bytes(),
        ]);
        let ptx = cache
            .get(key, ".ptx", |tmp| {
                run(
                    &format!("nvcc on {}", src.display()),
                    Command::new(&tc.nvcc)
                        .args(["-ptx", &format!("-arch={}", tc.arch)])
                        .args(NVCC_FLAGS)
                        .arg("-I")
                        .arg(&kernels)
                        .arg("-o")
                        .arg(tmp)
                        .arg(src),
                )
            })
            .unwrap_or_else(|e| panic!("{e}"));
        ptx_of.push((name, ptx));
    }
    let mut entries = String::new();
    for (name, ptx) in &ptx_of {
        writeln!(
            entries,
            "    ({name:?}, include_str!({:?})),",
            ptx.display().to_string()
        )
        .expect("write to String");
    }
    writeln!(
        generated,
        "/// The nvcc that compiled the kernels.\npub const NVCC: Option<&str> = Some({:?});",
        tc.nvcc.display().to_string()
    )
    .expect("write to String");
    writeln!(
        generated,
        "/// `(module, PTX)` of every kernel file.\npub const KERNELS: &[(&str, &str)] = &[\n{entries}];"
    )
    .expect("write to String");
    let sass = assemble_sass(&tc, &ptx_of, &cache).unwrap_or_else(|e| panic!("{e}"));
    writeln!(
        generated,
        "/// `(module, sm, machine code)`: the PTX of `KERNELS` assembled by ptxas for GPUs of \
         compute capability sm / 10 (`SPAFIT_CUDA_SASS`; empty without it).\n\
         pub const SASS: &[(&str, u32, &[u8])] = &[\n{sass}];"
    )
    .expect("write to String");

    // 2. The CPU stand-in.
    let emulator = build_emulator(
        &tc,
        &kernels,
        &sources,
        &ptx_of,
        &headers,
        &emulator_text,
        &cache,
        &out,
    );
    match emulator {
        Ok(dir) => writeln!(
            generated,
            "/// Directory of the CPU stand-in driver (`libcuda.so`) and its kernel modules.\n\
             pub const EMULATOR_DIR: Option<&str> = Some({:?});\n\
             /// Why there is no stand-in driver in this build (empty: there is one).\n\
             pub const EMULATOR_MISSING: &str = \"\";",
            dir.display().to_string()
        )
        .expect("write to String"),
        Err(why) => {
            if require_emulator {
                panic!("SPAFIT_REQUIRE_EMULATOR=1 but the CPU stand-in could not be built: {why}");
            }
            println!(
                "cargo:warning=the CPU stand-in for the CUDA driver was not built: {}",
                why.lines().next().unwrap_or("")
            );
            writeln!(
                generated,
                "/// Directory of the CPU stand-in driver and its kernel modules, when built.\npub const EMULATOR_DIR: Option<&str> = None;\n\
                 /// Why there is no stand-in driver in this build.\npub const EMULATOR_MISSING: &str = {:?};",
                why.lines().next().unwrap_or("").to_string()
            )
            .expect("write to String");
        }
    }
    std::fs::write(out.join("kernels.rs"), generated).expect("write kernels.rs");
}

/// FNV-1a, 64 bits: the driver computes the same over the PTX it is given.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Builds `OUT_DIR/emulator/{libcuda.so, kernels/<name>.so}`; a kernel that does not compile
/// for the host is a build error (the stand-in runs exactly these sources).
#[allow(clippy::too_many_arguments)]
fn build_emulator(
    tc: &Toolchain,
    kernels: &Path,
    sources: &[PathBuf],
    ptx_of: &[(String, PathBuf)],
    headers: &[u8],
    emulator_text: &[u8],
    cache: &Cache,
    out: &Path,
) -> Result<PathBuf, String> {
    let include = tc
        .include
        .as_ref()
        .ok_or_else(|| format!("no CUDA headers (cuda.h) beside {}", tc.nvcc.display()))?;
    let compiler = cc::Build::new()
        .cpp(true)
        .cargo_metadata(false)
        .cargo_warnings(false)
        .try_get_compiler()
        .map_err(|e| format!("no C++ compiler: {e}"))?;
    let cxx = compiler.path().to_path_buf();
    let version = match Command::new(&cxx).arg("--version").output() {
        Ok(o) if o.status.success() => o.stdout,
        _ => return Err(format!("no working C++ compiler at {}", cxx.display())),
    };
    let emu_dir = kernels.join("emulator");
    let gen = out.join("emulator-src");
    let dir = out.join("emulator");
    let modules = dir.join("kernels");
    std::fs::create_dir_all(&gen).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&modules);
    std::fs::create_dir_all(&modules).map_err(|e| e.to_string())?;

    // Every kernel source and header, with __shared__ rewritten, under gen/.
    for src in sources {
        let name = src.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !(name.ends_with(".cu") || name.ends_with(".cuh")) {
            continue;
        }
        let text = std::fs::read_to_string(src).map_err(|e| e.to_string())?;
        let rewritten = rewrite_shared(&text, &format!("kernels/{name}"))?;
        std::fs::write(
            gen.join(name),
            format!("#line 1 \"kernels/{name}\"\n{rewritten}"),
        )
        .map_err(|e| e.to_string())?;
    }
    // The kernels' fmaf (the f32 GEMM's inner product, for one) is a libm call unless the
    // compiler may emit the FMA instruction itself: a sixth of the stand-in's time in the
    // cross-backend tests. The stand-in runs where it is built, so the build machine's CPU
    // decides; contraction stays off, so only the kernels' explicit fmaf fuse.
    let fma_flag: &[&str] = if host_has_fma() { &["-mfma"] } else { &[] };
    // Every load and store of the kernels' host build checks that its address is aligned to
    // its type (a `float4` to 16 bytes), trapping where it is not: the GPU faults on such an
    // access (CUDA_ERROR_MISALIGNED_ADDRESS) where x86 reads it silently, so without the check
    // a vector access the kernels' alignment tests let through would first fail on hardware.
    // The trap is the driver's to report (driver.cpp, SIGILL); no sanitizer runtime is linked.
    const MODULE_CHECKS: &[&str] = &["-fsanitize=alignment", "-fsanitize-undefined-trap-on-error"];
    const COMMON_FLAGS: &[&str] = &[
        "-std=c++17",
        "-O2",
        // The host compiler must not fuse a·b + c where the PTX has two rounded operations
        // (GCC fuses by default where the target has FMA, e.g. aarch64 or -march=native).
        "-ffp-contract=off",
        "-fPIC",
        "-shared",
        "-fvisibility=hidden",
        "-Wall",
        "-Wno-unused-function",
        "-Wno-unknown-pragmas",
    ];
    let common_flags = |cmd: &mut Command| {
        cmd.args(fma_flag)
            .args(COMMON_FLAGS)
            .arg("-I")
            .arg(&emu_dir)
            .arg("-I")
            .arg(include);
    };
    // Whatever decides the objects' code: the compiler (path and version) and the flags.
    let cxx_id = format!(
        "{} {} {} {}",
        cxx.to_string_lossy(),
        String::from_utf8_lossy(&version),
        fma_flag.join(" "),
        COMMON_FLAGS.join(" ")
    );

    let driver_key = hash_of(&[b"driver", emulator_text, cxx_id.as_bytes()]);
    let driver = cache
        .get(driver_key, ".so", |tmp| {
            let mut cmd = Command::new(&cxx);
            common_flags(&mut cmd);
            cmd.arg("-Wl,-soname,libcuda.so")
                .arg("-o")
                .arg(tmp)
                .arg(emu_dir.join("driver.cpp"))
                .args(["-ldl", "-lpthread"]);
            run(
                "the stand-in driver (kernels/emulator/driver.cpp)",
                &mut cmd,
            )
        })
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy(&driver, dir.join("libcuda.so")).map_err(|e| e.to_string())?;

    // Kernel modules, two compilers at a time (the developer machines have two cores).
    let jobs: Vec<(String, PathBuf)> = ptx_of.to_vec();
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 4);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Result<(String, PathBuf), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let Some((name, ptx)) = jobs.get(i) else {
                            break;
                        };
                        let ptx_text = std::fs::read_to_string(ptx).map_err(|e| e.to_string());
                        let result = ptx_text.and_then(|ptx_text| {
                            let source = std::fs::read(gen.join(format!("{name}.cu")))
                                .map_err(|e| e.to_string())?;
                            let key = hash_of(&[
                                b"module",
                                &source,
                                headers,
                                emulator_text,
                                ptx_text.as_bytes(),
                                cxx_id.as_bytes(),
                                MODULE_CHECKS.join(" ").as_bytes(),
                            ]);
                            let so = cache.get(key, ".so", |tmp| {
                                let mut tu = format!("#include \"{name}.cu\"\n");
                                tu.push_str("static const EmuKernelEntry emu_entries[] = {\n");
                                for e in ptx_entries(&ptx_text) {
                                    writeln!(tu, "    EMU_KERNEL({e})").expect("write to String");
                                }
                                tu.push_str("    {nullptr, nullptr, 0, nullptr}};\n");
                                tu.push_str("extern \"C\" __attribute__((visibility(\"default\"))) const EmuModule emu_module = {EMU_ABI_VERSION, emu_entries};\n");
                                // The PTX this module stands in for: the driver refuses other
                                // PTX with the same entries (a binary beside a stale build).
                                writeln!(
                                    tu,
                                    "extern \"C\" __attribute__((visibility(\"default\"))) const unsigned long long emu_ptx_fnv1a = 0x{:016x}ULL;",
                                    fnv1a(ptx_text.as_bytes())
                                )
                                .expect("write to String");
                                let tu_path = gen.join(format!("{name}.module.cpp"));
                                std::fs::write(&tu_path, tu).map_err(|e| e.to_string())?;
                                let mut cmd = Command::new(&cxx);
                                common_flags(&mut cmd);
                                cmd.args(MODULE_CHECKS)
                                    .arg("-I")
                                    .arg(&gen)
                                    .arg("-include")
                                    .arg(emu_dir.join("device.h"))
                                    .arg("-o")
                                    .arg(tmp)
                                    .arg(&tu_path);
                                run(&format!("the host build of kernels/{name}.cu"), &mut cmd)
                            })?;
                            Ok((name.clone(), so))
                        });
                        done.push(result);
                    }
                    done
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("kernel build thread"))
            .collect()
    });
    for r in results {
        // A kernel that nvcc accepts but the host build rejects is a bug to fix, not a reason
        // to drop the stand-in quietly.
        let (name, so) = r.unwrap_or_else(|e| panic!("{e}"));
        std::fs::copy(&so, modules.join(format!("{name}.so"))).map_err(|e| e.to_string())?;
    }
    Ok(dir)
}
