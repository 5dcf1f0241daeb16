//! The build context: which files go to the engine, the digest of every
//! input of a build, and the tar stream itself.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::bases;
use super::dockerignore::{DockerIgnore, InvalidPattern};
use super::fingerprint::{self, HashCounts, Stamp};
use crate::catalog::BuildSpec;

/// The name given inside the tar to a Dockerfile that lies outside the
/// context (or that `.dockerignore` excludes).
pub(crate) const GENERATED_DOCKERFILE: &str = ".e2e-infra.Dockerfile";
const DOCKERIGNORE: &str = ".dockerignore";

/// Reading the context failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// A file or directory could not be read.
    #[error("reading {path} failed")]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The context holds a file that is neither a regular file, a directory
    /// nor a symbolic link. Reading a FIFO would wait forever for a writer,
    /// and a device or socket has no content to send.
    #[error("{path} is a {kind}, which a build context cannot hold: remove it, move it out of the context, or exclude it in .dockerignore")]
    SpecialFile {
        /// The path.
        path: PathBuf,
        /// `FIFO`, `socket`, `character device` or `block device`.
        kind: &'static str,
    },
    /// `.dockerignore` holds a pattern that cannot be compiled.
    #[error("{path} holds a pattern that cannot be compiled")]
    Ignore {
        /// The `.dockerignore` file.
        path: PathBuf,
        /// The bad pattern.
        source: InvalidPattern,
    },
}

fn read_error(path: &Path) -> impl FnOnce(io::Error) -> ContextError + '_ {
    move |source| ContextError::Read { path: path.to_owned(), source }
}

/// What kind of special file `file_type` is, if it is one.
fn special(file_type: fs::FileType) -> Option<&'static str> {
    if file_type.is_fifo() {
        Some("FIFO")
    } else if file_type.is_socket() {
        Some("socket")
    } else if file_type.is_char_device() {
        Some("character device")
    } else if file_type.is_block_device() {
        Some("block device")
    } else {
        None
    }
}

/// Opens a file to read its content, refusing anything but a regular file.
/// Non-blocking, so that a FIFO put in place after the scan cannot hold
/// the open (and with it every process waiting for the build) forever;
/// the flag does nothing to regular files.
pub(crate) fn open_regular(path: &Path) -> Result<File, ContextError> {
    const O_NONBLOCK: i32 = 0o4000;
    let file = fs::OpenOptions::new().read(true).custom_flags(O_NONBLOCK).open(path).map_err(read_error(path))?;
    let file_type = file.metadata().map_err(read_error(path))?.file_type();
    match special(file_type) {
        Some(kind) => Err(ContextError::SpecialFile { path: path.to_owned(), kind }),
        None if file_type.is_dir() => Err(read_error(path)(io::Error::other("is a directory"))),
        None => Ok(file),
    }
}

/// Reads a whole file that must be a regular one (a Dockerfile, a
/// `.dockerignore`).
fn read_regular(path: &Path) -> Result<Vec<u8>, ContextError> {
    let mut bytes = Vec::new();
    open_regular(path)?.read_to_end(&mut bytes).map_err(read_error(path))?;
    Ok(bytes)
}

#[derive(Debug)]
enum Kind {
    /// A regular file, and what identifies its content when walked.
    File(Stamp),
    Dir,
    Symlink(PathBuf),
}

#[derive(Debug)]
struct Entry {
    /// `/`-separated path inside the context.
    relative: String,
    path: PathBuf,
    kind: Kind,
    mode: u32,
}

/// A scanned context: what will be sent and the digest of all inputs.
#[derive(Debug)]
pub(crate) struct Context {
    entries: Vec<Entry>,
    dockerfile: Vec<u8>,
    /// The Dockerfile's name inside the tar, as passed to the engine.
    pub(crate) dockerfile_name: String,
    /// Set when the Dockerfile must be added under a generated name; the
    /// text of the `.dockerignore` sent with it.
    generated_ignore: Option<String>,
    /// sha256 of the Dockerfile, the context files after `.dockerignore`
    /// (paths, kinds, modes, contents), the build args and the target;
    /// the build then adds the ids of the base images.
    pub(crate) digest: String,
    /// How many files were read for the digest, and how many were known.
    pub(crate) counts: HashCounts,
    /// The images the Dockerfile is built `FROM` (see [`bases::references`]).
    pub(crate) bases: Vec<String>,
}

impl Context {
    /// Walks the context of `spec` and computes the input digest.
    pub(crate) fn scan(component: &str, spec: &BuildSpec) -> Result<Self, ContextError> {
        let root = &spec.context;
        let ignore_path = root.join(DOCKERIGNORE);
        let ignore_text = match read_regular(&ignore_path) {
            Ok(bytes) => Some(
                String::from_utf8(bytes)
                    .map_err(|e| read_error(&ignore_path)(io::Error::new(io::ErrorKind::InvalidData, e)))?,
            ),
            Err(ContextError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let ignore = DockerIgnore::parse(ignore_text.as_deref().unwrap_or_default())
            .map_err(|source| ContextError::Ignore { path: ignore_path.clone(), source })?;
        let mut entries = Vec::new();
        walk(root, &ignore, &mut entries)?;
        entries.sort_by(|a, b| a.relative.cmp(&b.relative));

        let dockerfile = read_regular(&spec.dockerfile)?;
        let inside = inside_context(root, &spec.dockerfile)?;
        let (dockerfile_name, generated_ignore) = match inside {
            Some(relative) if !ignore.excludes(&relative) => (relative, None),
            _ => {
                // As the Docker CLI does: the engine drops files that the sent
                // `.dockerignore` names once it has read the Dockerfile, so a
                // `COPY . .` does not pick the generated file up.
                let mut text = ignore_text.unwrap_or_default();
                text.push_str(&format!("\n{GENERATED_DOCKERFILE}\n{DOCKERIGNORE}\n"));
                (GENERATED_DOCKERFILE.to_owned(), Some(text))
            }
        };
        let key = format!("{component}\0{}", root.canonicalize().map_err(read_error(root))?.display());
        let (digest, counts) = input_digest(&key, component, &dockerfile, &entries, spec)?;
        let bases = bases::references(&String::from_utf8_lossy(&dockerfile), &spec.args);
        Ok(Self { entries, dockerfile, dockerfile_name, generated_ignore, digest, counts, bases })
    }

    /// Writes the context as an uncompressed tar to `out`.
    pub(crate) fn write_tar(&self, out: impl Write) -> Result<(), ContextError> {
        let mut tar = tar::Builder::new(out);
        for entry in &self.entries {
            if self.generated_ignore.is_some() && entry.relative == DOCKERIGNORE {
                continue;
            }
            let meta = fs::symlink_metadata(&entry.path).map_err(read_error(&entry.path))?;
            let mut header = tar::Header::new_gnu();
            header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            // The Docker CLI sends every file as owned by root.
            header.set_uid(0);
            header.set_gid(0);
            let written = match &entry.kind {
                Kind::File(_) => {
                    let file = open_regular(&entry.path)?;
                    tar.append_data(&mut header, &entry.relative, file)
                }
                Kind::Dir => tar.append_data(&mut header, &entry.relative, io::empty()),
                Kind::Symlink(target) => tar.append_link(&mut header, &entry.relative, target),
            };
            written.map_err(read_error(&entry.path))?;
        }
        if let Some(ignore) = &self.generated_ignore {
            append_bytes(&mut tar, DOCKERIGNORE, ignore.as_bytes())?;
            append_bytes(&mut tar, GENERATED_DOCKERFILE, &self.dockerfile)?;
        }
        tar.into_inner().and_then(|mut out| out.flush()).map_err(read_error(Path::new("<tar stream>")))?;
        Ok(())
    }
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, name: &str, bytes: &[u8]) -> Result<(), ContextError> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, name, bytes).map_err(read_error(Path::new(name)))
}

/// The Dockerfile's `/`-separated path inside the context, if it is inside.
fn inside_context(root: &Path, dockerfile: &Path) -> Result<Option<String>, ContextError> {
    let root = root.canonicalize().map_err(read_error(root))?;
    let file = dockerfile.canonicalize().map_err(read_error(dockerfile))?;
    Ok(file
        .strip_prefix(&root)
        .ok()
        .map(|rel| rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")))
}

/// Every entry below `root`, found with a list of folders still to read
/// rather than by recursion: a context nested hundreds of levels deep must
/// not overflow the stack of the thread that scans it.
fn walk(root: &Path, ignore: &DockerIgnore, out: &mut Vec<Entry>) -> Result<(), ContextError> {
    let mut pending = vec![(root.to_owned(), String::new())];
    while let Some((dir, prefix)) = pending.pop() {
        for item in fs::read_dir(&dir).map_err(read_error(&dir))? {
            let item = item.map_err(read_error(&dir))?;
            let path = item.path();
            let name = item.file_name().to_string_lossy().into_owned();
            let relative = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            let meta = fs::symlink_metadata(&path).map_err(read_error(&path))?;
            let excluded = ignore.excludes(&relative);
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                if !excluded {
                    out.push(Entry { relative: relative.clone(), path: path.clone(), kind: Kind::Dir, mode });
                }
                // A `!` line may bring back files below an excluded directory.
                pending.push((path, relative));
            } else if !excluded {
                if let Some(kind) = special(meta.file_type()) {
                    return Err(ContextError::SpecialFile { path, kind });
                }
                let kind = if meta.file_type().is_symlink() {
                    Kind::Symlink(fs::read_link(&path).map_err(read_error(&path))?)
                } else {
                    Kind::File(Stamp::of(&meta))
                };
                out.push(Entry { relative, path, kind, mode });
            }
        }
    }
    Ok(())
}

/// The digest of every input, with the counts of files read and reused;
/// `key` names the context's record of file digests.
fn input_digest(
    key: &str,
    component: &str,
    dockerfile: &[u8],
    entries: &[Entry],
    spec: &BuildSpec,
) -> Result<(String, HashCounts), ContextError> {
    let files: Vec<fingerprint::File<'_>> = entries
        .iter()
        .filter_map(|entry| match entry.kind {
            Kind::File(stamp) => Some(fingerprint::File { relative: &entry.relative, path: &entry.path, stamp }),
            _ => None,
        })
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let (digests, counts) = fingerprint::digests(key, &files, threads)?;
    let mut file_digests = digests.iter();
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        // Length-prefixed so that no two different input sets hash alike.
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    field(b"e2e-infra build inputs v1");
    field(component.as_bytes());
    field(dockerfile);
    for entry in entries {
        field(entry.relative.as_bytes());
        field(&entry.mode.to_le_bytes());
        match &entry.kind {
            Kind::Dir => field(b"dir"),
            Kind::Symlink(target) => {
                field(b"symlink");
                field(target.to_string_lossy().as_bytes());
            }
            Kind::File(_) => {
                field(b"file");
                field(file_digests.next().map_or(&[][..], |d| &d[..]));
            }
        }
    }
    for (key, value) in &spec.args {
        field(key.as_bytes());
        field(value.as_bytes());
    }
    field(spec.target.as_deref().unwrap_or_default().as_bytes());
    Ok((format!("sha256:{}", hex::encode(hash.finalize())), counts))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;

    use super::*;

    fn spec(context: &Path, dockerfile: &Path) -> BuildSpec {
        BuildSpec {
            context: context.to_owned(),
            dockerfile: dockerfile.to_owned(),
            args: BTreeMap::new(),
            target: None,
        }
    }

    fn names(ctx: &Context) -> Vec<String> {
        let mut tar = Vec::new();
        ctx.write_tar(&mut tar).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect()
    }

    #[test]
    fn ignored_files_are_neither_sent_nor_hashed() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        fs::write(dir.path().join(".dockerignore"), "notes.txt\n").unwrap();
        fs::write(dir.path().join("app"), "v1").unwrap();
        fs::write(dir.path().join("notes.txt"), "a").unwrap();
        let s = spec(dir.path(), &dir.path().join("Dockerfile"));
        let first = Context::scan("c", &s).unwrap();
        assert!(!names(&first).contains(&"notes.txt".to_owned()));
        assert!(names(&first).contains(&"app".to_owned()));

        fs::write(dir.path().join("notes.txt"), "b").unwrap();
        assert_eq!(Context::scan("c", &s).unwrap().digest, first.digest);
        fs::write(dir.path().join("app"), "v2").unwrap();
        assert_ne!(Context::scan("c", &s).unwrap().digest, first.digest);
    }

    #[test]
    fn file_digests_are_reused_only_for_files_unchanged_since_well_before_the_last_scan() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        fs::write(dir.path().join("app"), "v1").unwrap();
        let s = spec(dir.path(), &dir.path().join("Dockerfile"));
        let first = Context::scan("c", &s).unwrap();
        assert_eq!(first.counts.hashed, 2);
        // Written just now: a change in the same clock tick could hide, so read again.
        assert_eq!(Context::scan("c", &s).unwrap().counts.hashed, 2);
        let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for name in ["Dockerfile", "app"] {
            let file = fs::File::options().write(true).open(dir.path().join(name)).unwrap();
            file.set_modified(an_hour_ago).unwrap();
        }
        assert_eq!(Context::scan("c", &s).unwrap().counts.hashed, 2);
        let warm = Context::scan("c", &s).unwrap();
        assert_eq!((warm.counts.hashed, warm.counts.reused), (0, 2));
        assert_eq!(warm.digest, first.digest);
    }

    #[test]
    fn mode_args_and_target_change_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        fs::write(dir.path().join("run.sh"), "x").unwrap();
        let mut s = spec(dir.path(), &dir.path().join("Dockerfile"));
        let base = Context::scan("c", &s).unwrap().digest;
        fs::set_permissions(dir.path().join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        let moded = Context::scan("c", &s).unwrap().digest;
        assert_ne!(base, moded);
        s.args.insert("VERSION".into(), "1".into());
        let with_arg = Context::scan("c", &s).unwrap().digest;
        assert_ne!(moded, with_arg);
        s.target = Some("final".into());
        assert_ne!(with_arg, Context::scan("c", &s).unwrap().digest);
    }

    #[test]
    fn a_dockerfile_outside_the_context_is_sent_under_a_generated_name() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("ctx")).unwrap();
        fs::write(dir.path().join("ctx/app"), "x").unwrap();
        fs::write(dir.path().join("outside.Dockerfile"), "FROM scratch\n").unwrap();
        let ctx = Context::scan("c", &spec(&dir.path().join("ctx"), &dir.path().join("outside.Dockerfile"))).unwrap();
        assert_eq!(ctx.dockerfile_name, GENERATED_DOCKERFILE);
        let sent = names(&ctx);
        assert!(sent.contains(&GENERATED_DOCKERFILE.to_owned()), "{sent:?}");
        assert!(sent.contains(&DOCKERIGNORE.to_owned()), "{sent:?}");
    }

    #[test]
    fn special_files_are_refused_with_their_path_and_excluded_ones_ignored() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        fs::create_dir(dir.path().join("run")).unwrap();
        let socket = dir.path().join("run/app.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let s = spec(dir.path(), &dir.path().join("Dockerfile"));
        let started = std::time::Instant::now();
        let error = Context::scan("c", &s).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(matches!(&error, ContextError::SpecialFile { path, kind: "socket" } if path == &socket), "{error}");
        assert!(error.to_string().contains(&socket.display().to_string()), "{error}");

        fs::write(dir.path().join(".dockerignore"), "run\n").unwrap();
        assert!(Context::scan("c", &s).is_ok());
    }

    #[test]
    fn a_context_nested_800_levels_deep_is_walked_on_a_small_stack() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        let mut deepest = dir.path().to_owned();
        for _ in 0..800 {
            deepest.push("d");
        }
        fs::create_dir_all(&deepest).unwrap();
        fs::write(deepest.join("leaf"), "x").unwrap();
        let s = spec(dir.path(), &dir.path().join("Dockerfile"));
        // Far less than the 2 MiB a runtime's thread has: the walk's depth
        // must not grow the stack.
        let scanned = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || Context::scan("c", &s).map(|ctx| names(&ctx)))
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        let leaf = format!("{}leaf", "d/".repeat(800));
        assert!(scanned.contains(&leaf), "{} entries, no {leaf}", scanned.len());
    }

    #[test]
    fn a_directory_as_dockerfile_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("Dockerfile")).unwrap();
        let error = Context::scan("c", &spec(dir.path(), &dir.path().join("Dockerfile"))).unwrap_err();
        assert!(matches!(error, ContextError::Read { .. }), "{error}");
    }

    #[test]
    fn a_dockerfile_in_a_subdirectory_keeps_its_path() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("docker")).unwrap();
        fs::write(dir.path().join("docker/x.Dockerfile"), "FROM scratch\n").unwrap();
        let ctx = Context::scan("c", &spec(dir.path(), &dir.path().join("docker/x.Dockerfile"))).unwrap();
        assert_eq!(ctx.dockerfile_name, "docker/x.Dockerfile");
        assert!(names(&ctx).contains(&"docker/x.Dockerfile".to_owned()));
    }
}
