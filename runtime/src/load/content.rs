//! Reading an image straight from the content store of a local engine's
//! containerd, when the engine keeps its images there (Docker 29's
//! containerd image store, the default of a new install: storage driver
//! `overlayfs`, driver type `io.containerd.snapshotter.v1`).
//!
//! containerd keeps every blob of an image (index, manifest, config and
//! the layers, compressed as built) under
//! `<root>/io.containerd.content.v1.content/blobs/sha256/<hex>`, named by
//! its digest. The engine's image id is the digest of the image's manifest
//! or index, so the image is read from there by digest: the manifest of the
//! nodes' platform, its config, and the layers a node lacks, each sent
//! unchanged and checked against its digest as it goes. A node then holds
//! the engine's own manifest digest, and nothing waits for an export.
//!
//! containerd's root is its own setting, not the engine's. It is found
//! from the socket the engine names (`docker info`'s `Containerd.Address`):
//! the process listening on it, its `--root` or the `root` of its
//! configuration file, read through `/proc/<pid>/root` so that the path is
//! the one that process sees.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use bollard::models::SystemInfo;
use bollard::Docker;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::archive::{self, Target};
use super::oci::{self, Resolved};
use super::store::{self, Store, StoreError};

/// The driver type Docker reports for its containerd image store.
const SNAPSHOTTER_TYPE: &str = "io.containerd.snapshotter.v1";
/// Where containerd keeps its blobs, under its root.
const BLOBS: &str = "io.containerd.content.v1.content/blobs/sha256";
/// containerd's root when neither its flags nor its configuration set one.
const DEFAULT_ROOT: &str = "/var/lib/containerd";
/// containerd's configuration file when its flags name none.
const DEFAULT_CONFIG: &str = "/etc/containerd/config.toml";
/// The largest index, manifest or config read; real ones are a few KiB.
const DOCUMENT_LIMIT: u64 = 16 * 1024 * 1024;
/// Bytes read from a blob per chunk sent on.
const CHUNK: usize = 128 * 1024;

/// Whether the engine that gave `info` keeps its images in containerd's
/// content store.
pub(crate) fn is_containerd_store(info: &SystemInfo) -> bool {
    info.driver_status
        .iter()
        .flatten()
        .any(|pair| pair.len() == 2 && pair[0] == "driver-type" && pair[1] == SNAPSHOTTER_TYPE)
}

/// The blobs of a local engine's containerd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentStore {
    blobs: PathBuf,
}

/// An image in the content store, with everything an archive of it needs
/// but the layers' contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContentImage {
    /// The engine's image id.
    pub image_id: String,
    /// The image, as its blobs describe it.
    pub resolved: Resolved,
}

impl ContentImage {
    /// The digests of its layers' blobs, bottom first.
    pub(crate) fn blobs(&self) -> Vec<String> {
        self.resolved.layers.iter().map(|l| l.digest.clone()).collect()
    }

    /// The digest of its manifest.
    pub(crate) fn manifest_digest(&self) -> String {
        oci::digest_of(&self.resolved.manifest)
    }
}

/// The engine's own files a load reads images from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineStore {
    /// The overlay2 graph driver's files (Docker 20.10, Docker 29 classic).
    Overlay2(Store),
    /// containerd's content store (Docker 29's containerd image store).
    Content(ContentStore),
}

impl EngineStore {
    /// The store of the engine `docker`, if it is local and keeps its
    /// images where this loader reads them.
    ///
    /// # Errors
    /// [`StoreError`] naming what rules the store out: a remote engine,
    /// another storage driver, a root that cannot be found or read.
    ///
    /// # Example
    /// ```no_run
    /// # async fn demo(docker: &bollard::Docker) {
    /// match e2e_infra::load::content::EngineStore::open(docker).await {
    ///     Ok(store) => println!("reading images from {store:?}"),
    ///     Err(why) => println!("exporting images: {why}"),
    /// }
    /// # }
    /// ```
    pub async fn open(docker: &Docker) -> Result<Self, StoreError> {
        let info = store::local_info(docker).await?;
        if is_containerd_store(&info) {
            let address = info.containerd.as_ref().and_then(|c| c.address.clone()).unwrap_or_default();
            return ContentStore::of_socket(&address).await.map(Self::Content);
        }
        Store::from_info(&info).map(Self::Overlay2)
    }
}

impl ContentStore {
    /// The content store of the containerd listening on `address`.
    ///
    /// # Errors
    /// [`StoreError::Containerd`] when no process of this machine listens
    /// there, or its blobs cannot be read.
    ///
    /// The folder found is kept for the rest of the process: finding it
    /// walks every process's open files, and a containerd keeps its root
    /// while it listens. A kept folder that is gone is looked for again.
    pub async fn of_socket(address: &str) -> Result<Self, StoreError> {
        static FOUND: std::sync::Mutex<BTreeMap<String, PathBuf>> = std::sync::Mutex::new(BTreeMap::new());
        let kept = FOUND.lock().ok().and_then(|found| found.get(address).cloned());
        if let Some(blobs) = kept.filter(|blobs| blobs.is_dir()) {
            return Ok(Self { blobs });
        }
        let socket = address.trim_start_matches("unix://").to_owned();
        let found = tokio::task::spawn_blocking(move || blobs_of(&socket))
            .await
            .map_err(|e| StoreError::Containerd { address: address.to_owned(), problem: e.to_string() })?;
        let blobs = found.map_err(|problem| StoreError::Containerd { address: address.to_owned(), problem })?;
        if let Ok(mut kept) = FOUND.lock() {
            kept.insert(address.to_owned(), blobs.clone());
        }
        Ok(Self { blobs })
    }

    /// The store whose blobs are in `blobs`, unchecked.
    pub fn at(blobs: impl Into<PathBuf>) -> Self {
        Self { blobs: blobs.into() }
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.blobs.join(digest.trim_start_matches("sha256:"))
    }

    /// Finds image `image_id` (a manifest's or an index's digest), the
    /// manifest of the nodes' platform, its config and its layers.
    ///
    /// # Errors
    /// [`StoreError::Format`] for an image not found whole in the store.
    pub(crate) async fn image(&self, image_id: &str) -> Result<ContentImage, StoreError> {
        let store = self.clone();
        let id = image_id.to_owned();
        tokio::task::spawn_blocking(move || store.read_image(&id))
            .await
            .map_err(|source| StoreError::Task { image_id: image_id.to_owned(), source })?
    }

    fn read_image(&self, image_id: &str) -> Result<ContentImage, StoreError> {
        let document = |digest: &str| -> Option<Vec<u8>> {
            let mut bytes = Vec::new();
            File::open(self.path(digest)).and_then(|f| f.take(DOCUMENT_LIMIT).read_to_end(&mut bytes)).ok()?;
            (oci::digest_of(&bytes) == digest).then_some(bytes)
        };
        let format =
            |problem: String| StoreError::Format { image_id: image_id.to_owned(), path: self.blobs.clone(), problem };
        let resolved = oci::resolve(image_id, &[], &document).map_err(format)?;
        for layer in &resolved.layers {
            let path = self.path(&layer.digest);
            let size = std::fs::metadata(&path)
                .map_err(|source| StoreError::Read { image_id: image_id.to_owned(), path: path.clone(), source })?
                .len();
            if size != layer.size {
                return Err(format(format!(
                    "the layer {} is {size} bytes, its manifest says {}",
                    layer.digest, layer.size
                )));
            }
        }
        Ok(ContentImage { image_id: image_id.to_owned(), resolved })
    }

    /// Streams to every target an OCI archive of `image` under `reference`:
    /// the layers it lacks (by digest, see [`Target::blobs`]) as the engine
    /// keeps them, the config and the engine's manifest. Each layer is
    /// read once and checked against its digest as it goes.
    ///
    /// # Errors
    /// [`StoreError`] when a blob cannot be read or has another digest; the
    /// targets' archives are then cut short.
    pub(crate) async fn send(
        &self,
        image: &ContentImage,
        reference: &str,
        targets: &mut [Target],
    ) -> Result<(), StoreError> {
        let layers: Vec<(String, u64, (PathBuf, String))> = image
            .resolved
            .layers
            .iter()
            .map(|l| (l.digest.clone(), l.size, (self.path(&l.digest), l.digest.clone())))
            .collect();
        let image_id = image.image_id.clone();
        store::send_layers(&image.image_id, layers, targets, move |(path, digest), emit| {
            stream_blob(&image_id, path, digest, emit)
        })
        .await?;
        let resolved = &image.resolved;
        let tail = archive::oci_tail(reference, &resolved.config, &resolved.manifest, &resolved.manifest_type);
        archive::send_to(targets, None, &tail).await;
        Ok(())
    }
}

/// Hands the blob at `path` to `emit` in chunks, checking that its digest
/// is `digest`.
fn stream_blob(
    image_id: &str,
    path: &Path,
    digest: &str,
    emit: &mut dyn FnMut(Bytes) -> bool,
) -> Result<(), StoreError> {
    let read_error = |source| StoreError::Read { image_id: image_id.to_owned(), path: path.to_owned(), source };
    let mut file = File::open(path).map_err(read_error)?;
    let mut hasher = Sha256::new();
    loop {
        let mut chunk = vec![0u8; CHUNK];
        let read = file.read(&mut chunk).map_err(read_error)?;
        if read == 0 {
            break;
        }
        chunk.truncate(read);
        hasher.update(&chunk);
        if !emit(Bytes::from(chunk)) {
            return Ok(());
        }
    }
    let found = format!("sha256:{}", hex::encode(hasher.finalize()));
    if found != digest {
        return Err(StoreError::BlobDigest { image_id: image_id.to_owned(), path: path.to_owned(), found });
    }
    Ok(())
}

/// The blobs folder of the containerd listening on `socket`, as this
/// process sees it.
fn blobs_of(socket: &str) -> Result<PathBuf, String> {
    let inode = listening_inode(socket)?;
    let pid = owner_of(inode).ok_or_else(|| format!("no process of this machine holds the socket (inode {inode})"))?;
    let process = PathBuf::from(format!("/proc/{pid}"));
    let args: Vec<String> = std::fs::read(process.join("cmdline"))
        .map_err(|e| format!("reading the command line of process {pid}: {e}"))?
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let root = match flag(&args, &["--root"]) {
        Some(root) => root,
        None => {
            let config = flag(&args, &["--config", "-c"]);
            let explicit = config.is_some();
            let config = config.unwrap_or_else(|| DEFAULT_CONFIG.to_owned());
            let path = seen_by(&process, &config);
            match std::fs::read_to_string(&path) {
                Ok(text) => root_of_config(&text)
                    .map_err(|e| format!("`{}` of process {pid} is unreadable: {e}", path.display()))?
                    .unwrap_or_else(|| DEFAULT_ROOT.to_owned()),
                Err(e) if explicit => return Err(format!("reading `{}` of process {pid}: {e}", path.display())),
                Err(_) => DEFAULT_ROOT.to_owned(),
            }
        }
    };
    let blobs = seen_by(&process, &root).join(BLOBS);
    std::fs::read_dir(&blobs).map_err(|e| format!("reading `{}`: {e}", blobs.display()))?;
    Ok(blobs)
}

/// `path` as process folder `process` (`/proc/<pid>`) sees it: through its
/// root, or its working directory for a relative path.
fn seen_by(process: &Path, path: &str) -> PathBuf {
    match path.strip_prefix('/') {
        Some(absolute) => process.join("root").join(absolute),
        None => process.join("cwd").join(path),
    }
}

/// The value of the first of `names` in `args` (`--name value` or `--name=value`).
fn flag(args: &[String], names: &[&str]) -> Option<String> {
    args.iter().enumerate().find_map(|(i, arg)| {
        names.iter().find_map(|name| {
            if arg == name {
                args.get(i + 1).cloned()
            } else {
                arg.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')).map(str::to_owned)
            }
        })
    })
}

/// The `root` a containerd configuration sets, if it sets one.
fn root_of_config(text: &str) -> Result<Option<String>, toml::de::Error> {
    #[derive(serde::Deserialize)]
    struct Config {
        root: Option<String>,
    }
    Ok(toml::from_str::<Config>(text)?.root.filter(|r| !r.is_empty()))
}

/// The inode of the listening unix socket bound to `socket`, from
/// `/proc/net/unix`.
fn listening_inode(socket: &str) -> Result<u64, String> {
    let table = std::fs::read_to_string("/proc/net/unix").map_err(|e| format!("reading /proc/net/unix: {e}"))?;
    parse_unix_table(&table, socket).ok_or_else(|| format!("no socket listens at `{socket}` in this network namespace"))
}

/// The inode of the listening socket bound to `socket` in a
/// `/proc/net/unix` table.
fn parse_unix_table(table: &str, socket: &str) -> Option<u64> {
    const LISTENING: u32 = 0x0001_0000;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let flags = u32::from_str_radix(fields.get(3)?, 16).ok()?;
        (fields.get(7) == Some(&socket) && flags & LISTENING != 0).then(|| fields.get(6)?.parse().ok()).flatten()
    })
}

/// The process holding socket `inode` open.
fn owner_of(inode: u64) -> Option<u32> {
    let wanted = format!("socket:[{inode}]");
    let mut pids: BTreeSet<u32> = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
            pids.insert(pid);
        }
    }
    pids.into_iter().find(|pid| {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
        fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == wanted.as_str()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_socket_is_found_in_the_unix_table() {
        let table = "\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000003 00000000 00000000 0001 03 5555 /tmp/e/containerd.sock
0000000000000000: 00000002 00000000 00010000 0001 01 4444 /tmp/e/containerd.sock
0000000000000000: 00000002 00000000 00010000 0001 01 3333 /run/other.sock
";
        assert_eq!(parse_unix_table(table, "/tmp/e/containerd.sock"), Some(4444));
        assert_eq!(parse_unix_table(table, "/tmp/absent.sock"), None);
    }

    #[test]
    fn the_root_comes_from_the_flags_then_the_configuration() {
        let args: Vec<String> = ["containerd", "--config", "/tmp/e/containerd.toml"].map(str::to_owned).to_vec();
        assert_eq!(flag(&args, &["--config", "-c"]).as_deref(), Some("/tmp/e/containerd.toml"));
        let args: Vec<String> = ["containerd", "--root=/data/c"].map(str::to_owned).to_vec();
        assert_eq!(flag(&args, &["--root"]).as_deref(), Some("/data/c"));
        let config = "version = 3\nroot = \"/tmp/e/containerd-root\"\n[grpc]\n  address = \"/tmp/e/containerd.sock\"\n";
        assert_eq!(root_of_config(config).expect("toml").as_deref(), Some("/tmp/e/containerd-root"));
        assert_eq!(root_of_config("[grpc]\naddress = \"x\"\n").expect("toml"), None);
        assert_eq!(seen_by(Path::new("/proc/7"), "/var/lib/c"), PathBuf::from("/proc/7/root/var/lib/c"));
    }

    #[test]
    fn a_blob_with_another_digest_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("blob");
        std::fs::write(&path, b"layer bytes").expect("write");
        let mut got = Vec::new();
        let digest = oci::digest_of(b"layer bytes");
        stream_blob("sha256:img", &path, &digest, &mut |c| {
            got.extend_from_slice(&c);
            true
        })
        .expect("the right digest");
        assert_eq!(got, b"layer bytes");
        let error = stream_blob("sha256:img", &path, "sha256:00", &mut |_| true).expect_err("another digest");
        assert!(matches!(&error, StoreError::BlobDigest { found, .. } if *found == digest), "{error:?}");
    }
}
