//! The files and folders credwatch writes hold what an attacker would like to read (access keys in
//! use, roles, addresses, accounts, and in the spool whole findings): files are created `0600`
//! and folders `0700`, readable by credwatch's own user only. A file or folder an earlier version
//! (or a user) left readable by others is narrowed to the same when credwatch opens it, and a
//! line says so.
//!
//! The findings file, the dead-letter files, `checkpoint.json` and its temporary, the
//! escalation spool, its ledger and dead letters all go through here.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Owner read and write.
pub const FILE_MODE: u32 = 0o600;
/// Owner read, write and search.
pub const DIR_MODE: u32 = 0o700;

fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(FILE_MODE);
    }
    o
}

/// Narrows `path` to `mode` when group or others may read it (a file made before this version,
/// or by hand). Best effort: a file credwatch cannot chmod is still used, with a warning.
fn narrow(path: &Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        let old = meta.permissions().mode() & 0o777;
        if old & 0o077 == 0 {
            return;
        }
        match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
            Ok(()) => tracing::info!(
                path = %path.display(),
                "narrowed permissions from {old:o} to {mode:o}: it holds keys and addresses"
            ),
            Err(e) => tracing::warn!(
                path = %path.display(),
                "readable by others ({old:o}) and cannot be narrowed to {mode:o}: {e}"
            ),
        }
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
}

/// Opens `path` for appending (and reading), creating it `0600`.
pub fn open_append(path: &Path, read: bool) -> io::Result<File> {
    let f = options().read(read).append(true).create(true).open(path)?;
    narrow(path, FILE_MODE);
    Ok(f)
}

/// Creates (or truncates) `path`, `0600`: for temporary files renamed into place.
pub fn create(path: &Path) -> io::Result<File> {
    let f = options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    narrow(path, FILE_MODE);
    Ok(f)
}

/// Creates `dir` and its missing parents `0700` (existing ones are left as they are, but `dir`
/// itself is narrowed).
pub fn create_dir(dir: &Path) -> io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        b.mode(DIR_MODE);
    }
    b.create(dir)?;
    narrow(dir, DIR_MODE);
    Ok(())
}

/// A secret from the environment variable `env` or the file `file` (each with the config key it
/// came from, for errors and warnings), trimmed; `None` when neither is set. A file readable by
/// group or others is warned about. Errors name the key and never show the secret.
pub fn read_secret(
    env: Option<(&str, &str)>,
    file: Option<(&Path, &str)>,
) -> anyhow::Result<Option<String>> {
    if let Some((var, key)) = env {
        let v = match std::env::var(var) {
            Ok(v) => v,
            Err(std::env::VarError::NotPresent) => {
                anyhow::bail!("{key}: environment variable {var} is not set")
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                anyhow::bail!("{key}: environment variable {var} is not valid UTF-8")
            }
        };
        let v = v.trim();
        anyhow::ensure!(!v.is_empty(), "{key}: environment variable {var} is empty");
        return Ok(Some(v.to_string()));
    }
    if let Some((path, key)) = file {
        let v = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{key}: reading {}: {e}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            if let Ok(m) = std::fs::metadata(path) {
                if m.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(
                        file = %path.display(),
                        "{key}: the file is readable by group or others (chmod 600 it)"
                    );
                }
            }
        }
        let v = v.trim();
        anyhow::ensure!(!v.is_empty(), "{key}: {} is empty", path.display());
        return Ok(Some(v.to_string()));
    }
    Ok(None)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_and_folders_are_created_for_the_owner_only_and_loose_ones_narrowed() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("a/b");
        create_dir(&dir).unwrap();
        assert_eq!(mode(&dir), DIR_MODE);
        let f = dir.join("findings.jsonl");
        open_append(&f, true).unwrap();
        assert_eq!(mode(&f), FILE_MODE);
        let t = dir.join("checkpoint.json.tmp");
        create(&t).unwrap();
        assert_eq!(mode(&t), FILE_MODE);
        let loose = dir.join("old.jsonl");
        std::fs::write(&loose, b"x\n").unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
        open_append(&loose, false).unwrap();
        assert_eq!(mode(&loose), FILE_MODE);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_dir(&dir).unwrap();
        assert_eq!(mode(&dir), DIR_MODE);
    }
}
