//! Key files: 32-byte keys kept as 64 hex digits, generated on first use and written with
//! owner-only permissions (parent directories created).

use anyhow::Context;
use std::io::Write;
use std::path::Path;

pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Reads the hex key at `path` (`what` names it in errors and logs), generating it first if the
/// file does not exist.
pub fn load_or_generate_key(path: &Path, what: &str) -> anyhow::Result<[u8; 32]> {
    if path.exists() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the {what} {}", path.display()))?;
        return decode_hex(text.trim())
            .with_context(|| format!("the {what} {} must be 64 hex digits", path.display()));
    }
    let mut key = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    write_private(path, hex.as_bytes())?;
    tracing::info!(path = %path.display(), "generated a new {what}");
    Ok(key)
}

fn decode_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
