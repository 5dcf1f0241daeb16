//! The digests of a build context's files, kept between runs so that a warm
//! run reads only the files that changed.
//!
//! As cargo's fingerprints and git's index do, a file whose size,
//! modification time, change time and inode are those recorded with its
//! digest is not read again. A file changed within [`RACY`] before the
//! record was made is read again regardless: a write in the same clock tick
//! as the hashing could leave its times unchanged. The files to read are
//! hashed on several threads. The record is a cache: one that cannot be read
//! or written costs a full hashing, never an error.

use std::collections::HashMap;
use std::fs::{self, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::context::{open_regular, ContextError};

/// Files changed this close to the record's time are always read again.
const RACY: Duration = Duration::from_secs(2);
/// The name of the directory, beside the state root, holding one record per context.
const DIR: &str = "file-digests";
/// Read buffer per hashing thread.
const BUFFER: usize = 256 * 1024;

/// What identifies a file's content without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stamp {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    inode: u64,
}

impl Stamp {
    pub(crate) fn of(meta: &Metadata) -> Self {
        let ns = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
        Self {
            size: meta.len(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
            inode: meta.ino(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Known {
    stamp: Stamp,
    sha256: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    /// When the files were looked at, in nanoseconds since the epoch.
    taken_ns: i128,
    files: HashMap<String, Known>,
}

/// A file of the context to digest: its path inside the context, on disk,
/// and its stamp when the context was walked.
pub(crate) struct File<'a> {
    pub(crate) relative: &'a str,
    pub(crate) path: &'a Path,
    pub(crate) stamp: Stamp,
}

/// What `digests` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HashCounts {
    /// Files read and hashed.
    pub hashed: usize,
    /// Bytes read and hashed.
    pub hashed_bytes: u64,
    /// Files whose recorded digest was used.
    pub reused: usize,
}

fn now_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128)
}

/// Where the record of the context keyed `key` lives, if the directory
/// beside the state root is usable.
fn record_path(key: &str) -> Option<PathBuf> {
    let dir = crate::state::cache_dir(DIR).ok()?;
    Some(dir.join(format!("{}.json", hex::encode(&Sha256::digest(key.as_bytes())[..16]))))
}

fn load(path: Option<&Path>) -> Record {
    path.and_then(|p| fs::read(p).ok()).and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default()
}

/// Writes beside, then renames: a reader sees the old record or the new one.
fn save(path: &Path, record: &Record) {
    let Ok(bytes) = serde_json::to_vec(record) else {
        return;
    };
    let temporary = path.with_extension(format!("{}.tmp", std::process::id()));
    if fs::write(&temporary, bytes).and_then(|()| fs::rename(&temporary, path)).is_err() {
        let _ = fs::remove_file(&temporary);
    }
}

/// The sha256 of every file of `files`, in order, for the context keyed
/// `key`: recorded digests where a file's stamp is unchanged, the others read
/// on up to `threads` threads. The record is then updated.
pub(crate) fn digests(
    key: &str,
    files: &[File<'_>],
    threads: usize,
) -> Result<(Vec<[u8; 32]>, HashCounts), ContextError> {
    let path = record_path(key);
    let old = load(path.as_deref());
    let taken_ns = now_ns();
    let trusted_before = old.taken_ns - RACY.as_nanos() as i128;
    let mut out: Vec<Option<[u8; 32]>> = files
        .iter()
        .map(|file| {
            old.files
                .get(file.relative)
                .filter(|known| known.stamp == file.stamp && known.stamp.mtime_ns < trusted_before)
                .and_then(|known| hex::decode(&known.sha256).ok())
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        })
        .collect();
    let mut counts = HashCounts { reused: out.iter().flatten().count(), ..HashCounts::default() };
    let todo: Vec<usize> = (0..files.len()).filter(|i| out[*i].is_none()).collect();
    counts.hashed = todo.len();
    counts.hashed_bytes = todo.iter().map(|i| files[*i].stamp.size).sum();
    for (i, digest) in hash_in_parallel(files, &todo, threads)? {
        out[i] = Some(digest);
    }
    let digests: Vec<[u8; 32]> = out.into_iter().map(|d| d.unwrap_or_default()).collect();
    if let Some(path) = path {
        let known = files
            .iter()
            .zip(&digests)
            .map(|(file, digest)| (file.relative.to_owned(), Known { stamp: file.stamp, sha256: hex::encode(digest) }))
            .collect();
        save(&path, &Record { taken_ns, files: known });
    }
    Ok((digests, counts))
}

/// Hashes the files at `todo` on up to `threads` threads, the largest first
/// so that no thread is left with a big file at the end.
fn hash_in_parallel(
    files: &[File<'_>],
    todo: &[usize],
    threads: usize,
) -> Result<Vec<(usize, [u8; 32])>, ContextError> {
    let mut order = todo.to_vec();
    order.sort_by_key(|i| std::cmp::Reverse(files[*i].stamp.size));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = threads.clamp(1, order.len().max(1));
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut buffer = vec![0u8; BUFFER];
                    let mut done = Vec::new();
                    loop {
                        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&i) = order.get(n) else {
                            return Ok(done);
                        };
                        done.push((i, file_sha256(files[i].path, &mut buffer)?));
                    }
                })
            })
            .collect();
        let mut all = Vec::new();
        for worker in workers {
            let done = worker.join().map_err(|_| ContextError::Read {
                path: PathBuf::from("<hashing thread>"),
                source: io::Error::other("a hashing thread panicked"),
            })??;
            all.extend(done);
        }
        Ok(all)
    })
}

fn file_sha256(path: &Path, buffer: &mut [u8]) -> Result<[u8; 32], ContextError> {
    let read_error = |source| ContextError::Read { path: path.to_owned(), source };
    let mut file = open_regular(path)?;
    let mut hash = Sha256::new();
    loop {
        let n = file.read(buffer).map_err(read_error)?;
        if n == 0 {
            return Ok(hash.finalize().into());
        }
        hash.update(&buffer[..n]);
    }
}
