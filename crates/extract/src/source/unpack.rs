//! Unpacking a zipped model folder: only the files a preset pins, each checked against its
//! sha256 as it is written.
//!
//! With the `zip` crate (already in the build through candle-core; only its zlib-rs inflater is
//! added): each member is streamed from the archive into its file and hashed on the way, so a
//! 1.2 GB checkpoint is read once, and a damaged or unexpected member is an error naming the
//! archive and the member, not a Python traceback.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use llmembed_core::fsutil::{create_dir_all, temp_dir_name};
use llmembed_core::{Error, Result};
use sha2::{Digest, Sha256};

use super::pypi::{Pinned, hex};

/// Unpacks `folder/<path>` of `archive` for every pinned file into `dest/<path>`. Nothing lands
/// in `dest` unless every file has its pinned sha256: the files are written into a temporary
/// folder first, checked, then moved into place.
pub(super) fn unpack_pinned(
    archive: &Path,
    folder: &str,
    files: &[Pinned],
    dest: &Path,
) -> Result<()> {
    let bad_zip = |e: zip::result::ZipError| {
        Error::compute("unpack model zip", format!("{}: {e}", archive.display()))
    };
    let f = fs::File::open(archive).map_err(|e| Error::io("open", archive, e))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(f)).map_err(bad_zip)?;
    // A temp name (`.….tmp-<pid>`) that the runner removes once this process is gone.
    let work = dest.join(temp_dir_name("unpack"));
    let _ = fs::remove_dir_all(&work);
    let result = (|| -> Result<()> {
        for file in files {
            let member = format!("{folder}/{}", file.path);
            let mut entry = zip.by_name(&member).map_err(|e| {
                Error::mismatch(
                    "unpack model zip",
                    format!("{}: no member `{member}` ({e})", archive.display()),
                )
            })?;
            let out_path = work.join(file.path);
            if let Some(parent) = out_path.parent() {
                create_dir_all(parent)?;
            }
            let mut out =
                fs::File::create(&out_path).map_err(|e| Error::io("create", &out_path, e))?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                // A member whose bytes fail the zip's own CRC check errors here.
                let n = entry.read(&mut buf).map_err(|e| {
                    Error::compute(
                        "unpack model zip",
                        format!("{}: `{member}`: {e}", archive.display()),
                    )
                })?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n])
                    .map_err(|e| Error::io("write", &out_path, e))?;
            }
            out.sync_all()
                .map_err(|e| Error::io("fsync", &out_path, e))?;
            let got = hex(&hasher.finalize());
            if got != file.sha256 {
                return Err(Error::mismatch(
                    "verify unpacked model file",
                    format!(
                        "{}: `{member}` has sha256 {got}, expected {}",
                        archive.display(),
                        file.sha256
                    ),
                ));
            }
        }
        for file in files {
            let from = work.join(file.path);
            let to = dest.join(file.path);
            if let Some(parent) = to.parent() {
                create_dir_all(parent)?;
            }
            fs::rename(&from, &to).map_err(|e| Error::io("move into place", &to, e))?;
        }
        Ok(())
    })();
    let _ = fs::remove_dir_all(&work);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &[u8] = b"{\"model_type\": \"x\"}";
    const CONFIG_SHA: &str = "8ef8a063112f32bdc2b38a6c5fe040a95096ca7881c3dbbc95af2376b91dd66b";
    const POOLING: &[u8] = b"{\"pooling\": 1}";
    const POOLING_SHA: &str = "5c47d2f306bd7d62d875e1088a221e02ffbe85f816c88b945ac336a9bf2c9da3";
    const WRONG: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    /// A zip with `model/config.json` and `model/1_Pooling/config.json` (deflated) and a README
    /// that no preset pins.
    fn write_zip(path: &Path) {
        let mut w = zip::ZipWriter::new(fs::File::create(path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, body) in [
            ("model/config.json", CONFIG),
            ("model/1_Pooling/config.json", POOLING),
            ("model/README.md", b"not unpacked"),
        ] {
            w.start_file(name, opts).unwrap();
            w.write_all(body).unwrap();
        }
        w.finish().unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Pinned files land in place (the zip's folder dropped, subfolders kept), others do not; a
    /// wrong sha256 or a missing member is an error naming the member, and then nothing lands.
    #[test]
    fn unpacks_only_pinned_files_and_checks_each() {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("m.zip");
        write_zip(&archive);
        assert_eq!(hex(&Sha256::digest(CONFIG)), CONFIG_SHA);
        assert_eq!(hex(&Sha256::digest(POOLING)), POOLING_SHA);
        let dest = tmp.path().join("model");
        create_dir_all(&dest).unwrap();

        let wrong_sha = [
            Pinned {
                path: "config.json",
                sha256: CONFIG_SHA,
            },
            Pinned {
                path: "1_Pooling/config.json",
                sha256: WRONG,
            },
        ];
        let e = unpack_pinned(&archive, "model", &wrong_sha, &dest)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`model/1_Pooling/config.json` has sha256")
                && e.contains(POOLING_SHA)
                && e.contains(WRONG),
            "{e}"
        );
        assert!(names(&dest).is_empty(), "{:?}", names(&dest));

        let missing = [Pinned {
            path: "tokenizer.json",
            sha256: CONFIG_SHA,
        }];
        let e = unpack_pinned(&archive, "model", &missing, &dest)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no member `model/tokenizer.json`"), "{e}");
        assert!(names(&dest).is_empty(), "{:?}", names(&dest));

        let good = [
            Pinned {
                path: "config.json",
                sha256: CONFIG_SHA,
            },
            Pinned {
                path: "1_Pooling/config.json",
                sha256: POOLING_SHA,
            },
        ];
        unpack_pinned(&archive, "model", &good, &dest).unwrap();
        assert_eq!(
            fs::read(dest.join("1_Pooling/config.json")).unwrap(),
            POOLING
        );
        assert_eq!(fs::read(dest.join("config.json")).unwrap(), CONFIG);
        assert_eq!(names(&dest), ["1_Pooling", "config.json"]);
    }
}
