//! Reading an image straight from the files of a local Docker engine with
//! the overlay2 storage driver, instead of through the engine's export.
//!
//! Docker 20.10 writes the whole export of an image to a temporary directory
//! before it sends the first byte: a load that sends a node one small layer
//! still waits for every layer to be written. The engine keeps what an export
//! holds in files this process can read when it runs on the engine's machine
//! with the right to read the engine's root directory:
//! - the config, `image/overlay2/imagedb/content/sha256/<image id>`: the very
//!   bytes whose sha256 is the image id, listing the layers' diff ids;
//! - each layer, under `image/overlay2/layerdb/sha256/<chain id>/`:
//!   `cache-id`, the directory under `overlay2/` holding the layer's files,
//!   and `tar-split.json.gz`, the layer's tar without the file contents
//!   (the tar-split format, github.com/vbatts/tar-split).
//!
//! A layer's tar is put back together the way the engine does it for an
//! export: the tar-split's raw segments (headers, padding, the end blocks)
//! verbatim, each file's contents read from the layer's directory in between.
//! The result is the very tar the export holds, so its sha256 is the diff id;
//! it is checked as the layer streams, and a node that lacks a layer files
//! it under that digest.
//!
//! Anything found wrong before the first byte is sent (a remote engine,
//! another driver, an unreadable root, a layer without its files) is a
//! [`StoreError`] the loader answers by using the export instead.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bollard::models::SystemInfo;
use bollard::Docker;
use bytes::Bytes;
use flate2::read::GzDecoder;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::archive::{self, Held, ImageConfig, Target};

/// The only storage driver whose files this module reads.
const DRIVER: &str = "overlay2";
/// Bytes read from the store per chunk sent on.
const CHUNK: usize = 128 * 1024;
/// Chunks read ahead of the slowest node: bounds memory.
const CHUNKS_AHEAD: usize = 2;
/// The longest tar-split line read; a line holds one header or one file's
/// name, so real ones are a few KiB.
const LINE_LIMIT: u64 = 16 * 1024 * 1024;
/// The largest config read; real ones are a few KiB.
const CONFIG_LIMIT: u64 = 16 * 1024 * 1024;

/// The engine's store cannot be read, or holds something other than expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Asking the engine for its driver and root directory failed.
    #[error("asking the engine for its storage driver and root directory failed")]
    Info(#[source] bollard::errors::Error),
    /// The engine is not reached through a socket of this machine.
    #[error("the engine at `{address}` is not reached through a local socket, so its files may be on another machine")]
    NotLocal {
        /// The engine's address.
        address: String,
    },
    /// The engine keeps its images in a way this loader does not read.
    #[error("the engine's storage driver is `{driver}`, neither overlay2 nor containerd's image store")]
    Driver {
        /// The driver it reported.
        driver: String,
    },
    /// Reading a file of the store failed.
    #[error("reading `{}` of image {image_id} in the engine's store failed", path.display())]
    Read {
        /// The image.
        image_id: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file of the store does not say what it should.
    #[error("`{}` of image {image_id} in the engine's store is unreadable: {problem}", path.display())]
    Format {
        /// The image.
        image_id: String,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A layer put back together does not have its diff id as digest.
    #[error("layer {diff_id} of image {image_id}, put back together from `{}` and the files under `{}`, has digest {found}{}; the engine's copy of the layer changed: remove the image (`docker rmi`) and build it again", tar_split.display(), files.display(), culprit.as_ref().map_or_else(String::new, |f| format!(" (`{}` differs from its checksum)", f.display())))]
    Digest {
        /// The image.
        image_id: String,
        /// The layer's diff id.
        diff_id: String,
        /// Its tar-split file.
        tar_split: PathBuf,
        /// The directory of its files.
        files: PathBuf,
        /// The first file whose contents differ from the tar-split's checksum, if one does.
        culprit: Option<PathBuf>,
        /// The digest found.
        found: String,
    },
    /// The content store of the engine's containerd was not found.
    #[error("finding the content store of the engine's containerd at `{address}` failed: {problem}")]
    Containerd {
        /// The socket the engine named.
        address: String,
        /// What went wrong.
        problem: String,
    },
    /// A blob of the content store does not have its digest.
    #[error("`{}` of image {image_id} in the engine's content store has digest {found}; the engine's copy changed: remove the image (`docker rmi`) and build it again", path.display())]
    BlobDigest {
        /// The image.
        image_id: String,
        /// The blob's file.
        path: PathBuf,
        /// The digest found.
        found: String,
    },
    /// The task reading the store ended without a result.
    #[error("reading image {image_id} from the engine's store stopped")]
    Task {
        /// The image.
        image_id: String,
        /// Why it stopped.
        source: tokio::task::JoinError,
    },
}

/// A local engine's root directory, checked to hold an overlay2 store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    root: PathBuf,
}

/// One layer of an image in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredLayer {
    /// Its diff id: the sha256 of its uncompressed tar.
    pub diff_id: String,
    /// The size of that tar.
    pub size: u64,
    /// Its `tar-split.json.gz`.
    tar_split: PathBuf,
    /// The directory holding its files.
    files: PathBuf,
}

/// An image in the store, with everything an archive of it needs but the
/// layers' contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredImage {
    /// The engine's image id.
    pub image_id: String,
    /// The config, whose sha256 is the image id.
    pub config: Vec<u8>,
    /// The layers, bottom first.
    pub layers: Vec<StoredLayer>,
}

impl StoredImage {
    /// The layers' diff ids, bottom first.
    pub(crate) fn diff_ids(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }

    /// The manifest a node is given for it, written as for an export.
    fn manifest(&self) -> Vec<u8> {
        let layers: Vec<(&str, u64)> = self.layers.iter().map(|l| (l.diff_id.as_str(), l.size)).collect();
        archive::oci_manifest(&self.config, &layers)
    }

    /// The digest of [`StoredImage::manifest`].
    pub(crate) fn manifest_digest(&self) -> String {
        sha256(&self.manifest())
    }
}

/// One line of a tar-split file: a raw segment (type 2) or a file (type 1).
#[derive(Deserialize)]
struct Segment {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default)]
    name: Option<String>,
    /// The name, base64, when it is not UTF-8.
    #[serde(default)]
    name_raw: Option<String>,
    #[serde(default)]
    size: u64,
    /// The raw bytes (type 2) or the file's crc64 (type 1), base64.
    #[serde(default)]
    payload: Option<String>,
}

impl Store {
    /// The store of the engine `docker` talks to, if it is one this module
    /// can read: reached through a local socket, driver overlay2, root
    /// directory readable.
    ///
    /// # Errors
    /// [`StoreError::NotLocal`], [`StoreError::Driver`] or
    /// [`StoreError::Read`] naming what rules the store out;
    /// [`StoreError::Info`] when the engine does not answer.
    ///
    /// # Example
    /// ```no_run
    /// # async fn demo(docker: &bollard::Docker) {
    /// match e2e_infra::load::store::Store::open(docker).await {
    ///     Ok(store) => println!("reading images from {store:?}"),
    ///     Err(why) => println!("exporting images: {why}"),
    /// }
    /// # }
    /// ```
    pub async fn open(docker: &Docker) -> Result<Self, StoreError> {
        Self::from_info(&local_info(docker).await?)
    }

    /// The store of the engine that gave `info`, if this module reads it.
    pub(crate) fn from_info(info: &SystemInfo) -> Result<Self, StoreError> {
        let driver = info.driver.clone().unwrap_or_default();
        // Docker 29 in classic mode reports overlay2 as 20.10 does; its
        // containerd image store reports `overlayfs`, a snapshotter.
        if driver != DRIVER || super::content::is_containerd_store(info) {
            return Err(StoreError::Driver { driver });
        }
        let store = Self::at(info.docker_root_dir.clone().unwrap_or_default());
        let images = store.images_dir();
        std::fs::read_dir(&images).map_err(|source| StoreError::Read {
            image_id: "(any)".to_owned(),
            path: images.clone(),
            source,
        })?;
        Ok(store)
    }

    /// The store under the root directory `root`, unchecked.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn images_dir(&self) -> PathBuf {
        self.root.join("image/overlay2/imagedb/content/sha256")
    }

    /// Finds image `image_id` and its layers, and measures each layer's tar.
    ///
    /// # Errors
    /// [`StoreError::Read`] for a file that is missing or unreadable,
    /// [`StoreError::Format`] for one that does not say what it should (a
    /// config whose digest is not the image id, say).
    pub(crate) async fn image(&self, image_id: &str) -> Result<StoredImage, StoreError> {
        let store = self.clone();
        let id = image_id.to_owned();
        tokio::task::spawn_blocking(move || store.read_image(&id))
            .await
            .map_err(|source| StoreError::Task { image_id: image_id.to_owned(), source })?
    }

    fn read_image(&self, image_id: &str) -> Result<StoredImage, StoreError> {
        let read_error = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Read { image_id: image_id.to_owned(), path, source }
        };
        let format = |path: &Path, problem: String| StoreError::Format {
            image_id: image_id.to_owned(),
            path: path.to_owned(),
            problem,
        };
        let hex = image_id.strip_prefix("sha256:").unwrap_or(image_id);
        let config_path = self.images_dir().join(hex);
        let mut config = Vec::new();
        File::open(&config_path)
            .and_then(|f| f.take(CONFIG_LIMIT).read_to_end(&mut config))
            .map_err(read_error(&config_path))?;
        let digest = sha256(&config);
        if digest != format!("sha256:{hex}") {
            return Err(format(&config_path, format!("its digest is {digest}")));
        }
        let parsed: ImageConfig =
            serde_json::from_slice(&config).map_err(|e| format(&config_path, format!("not an image config: {e}")))?;
        let mut layers = Vec::new();
        let mut chain = String::new();
        for diff_id in parsed.rootfs.diff_ids {
            chain = chain_id(&chain, &diff_id);
            let dir = self.root.join("image/overlay2/layerdb").join(chain.replacen(':', "/", 1));
            let cache_path = dir.join("cache-id");
            let cache_id = std::fs::read_to_string(&cache_path).map_err(read_error(&cache_path))?;
            let cache_id = cache_id.trim();
            if cache_id.is_empty() || cache_id.contains('/') || cache_id.starts_with('.') {
                return Err(format(&cache_path, format!("`{cache_id}` is not a directory name")));
            }
            let files = self.root.join("overlay2").join(cache_id).join("diff");
            std::fs::metadata(&files).map_err(read_error(&files))?;
            let tar_split = dir.join("tar-split.json.gz");
            let mut size = 0u64;
            for_each_segment(&tar_split, |segment| {
                size += match segment {
                    Piece::Raw(bytes) => bytes.len() as u64,
                    Piece::File { size, .. } => size,
                };
                Ok(())
            })
            .map_err(|e| e.into_store_error(image_id, &tar_split))?;
            layers.push(StoredLayer { diff_id, size, tar_split, files });
        }
        Ok(StoredImage { image_id: image_id.to_owned(), config, layers })
    }
}

/// What the engine `docker` says of itself, when it is reached through a
/// socket of this machine (so that its files are this machine's).
///
/// # Errors
/// [`StoreError::NotLocal`] for an engine elsewhere; [`StoreError::Info`]
/// when it does not answer.
pub(crate) async fn local_info(docker: &Docker) -> Result<SystemInfo, StoreError> {
    if !crate::engine::is_local_socket(docker) {
        return Err(StoreError::NotLocal { address: crate::engine::address(docker) });
    }
    docker.info().await.map_err(StoreError::Info)
}

/// `sha256:<hex>` of `bytes`.
fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The chain id of a layer whose diff id is `diff_id`, over the layers whose
/// chain id is `parent` (empty for the bottom layer): how the engine names
/// the layer's directory.
fn chain_id(parent: &str, diff_id: &str) -> String {
    if parent.is_empty() {
        diff_id.to_owned()
    } else {
        sha256(format!("{parent} {diff_id}").as_bytes())
    }
}

/// A tar-split line, decoded.
enum Piece<'n> {
    /// Bytes of the tar, verbatim.
    Raw(Vec<u8>),
    /// A file's contents: `size` bytes of the file `name` of the layer.
    File { name: &'n Path, size: u64, crc: Option<&'n str> },
}

/// What stopped a walk through a tar-split file.
enum WalkError {
    /// The tar-split file itself.
    Split(io::Error),
    Format(String),
    /// A file of the layer, or the walk's caller.
    Other(StoreError),
}

impl WalkError {
    fn into_store_error(self, image_id: &str, tar_split: &Path) -> StoreError {
        match self {
            Self::Split(source) => {
                StoreError::Read { image_id: image_id.to_owned(), path: tar_split.to_owned(), source }
            }
            Self::Format(problem) => {
                StoreError::Format { image_id: image_id.to_owned(), path: tar_split.to_owned(), problem }
            }
            Self::Other(error) => error,
        }
    }
}

/// Calls `each` with every piece of the tar-split file `path`, in order.
fn for_each_segment(path: &Path, mut each: impl FnMut(Piece<'_>) -> Result<(), StoreError>) -> Result<(), WalkError> {
    let file = File::open(path).map_err(WalkError::Split)?;
    let mut lines = BufReader::new(GzDecoder::new(file));
    let mut line = String::new();
    loop {
        line.clear();
        let read = (&mut lines).take(LINE_LIMIT).read_line(&mut line).map_err(WalkError::Split)?;
        if read == 0 {
            return Ok(());
        }
        if !line.ends_with('\n') && read as u64 == LINE_LIMIT {
            return Err(WalkError::Format(format!("a line is longer than {LINE_LIMIT} bytes")));
        }
        if line.trim().is_empty() {
            continue;
        }
        let segment: Segment =
            serde_json::from_str(&line).map_err(|e| WalkError::Format(format!("a line is not a segment: {e}")))?;
        let decode = |text: &str| BASE64.decode(text).map_err(|e| WalkError::Format(format!("bad base64: {e}")));
        match segment.kind {
            2 => each(Piece::Raw(decode(segment.payload.as_deref().unwrap_or_default())?)).map_err(WalkError::Other)?,
            1 => {
                let name = match (&segment.name_raw, &segment.name) {
                    (Some(raw), _) => PathBuf::from(std::ffi::OsStr::from_bytes(&decode(raw)?)),
                    (None, Some(name)) => PathBuf::from(name),
                    (None, None) => return Err(WalkError::Format("a file segment has no name".to_owned())),
                };
                // The name comes from a file: it must not lead out of the layer's directory.
                let inside = name
                    .components()
                    .all(|c| matches!(c, Component::Normal(_) | Component::CurDir | Component::RootDir));
                if !inside {
                    return Err(WalkError::Format(format!(
                        "the file name `{}` leads out of the layer",
                        name.display()
                    )));
                }
                let crc = segment.payload.as_deref();
                each(Piece::File { name: &name, size: segment.size, crc }).map_err(WalkError::Other)?;
            }
            other => return Err(WalkError::Format(format!("unknown segment type {other}"))),
        }
    }
}

/// The path of the layer file `name` (as the tar names it) under `files`.
fn file_path(files: &Path, name: &Path) -> PathBuf {
    files.join(name.strip_prefix("/").unwrap_or(name))
}

/// Puts the tar of `layer` back together, handing it to `emit` in chunks of
/// about [`CHUNK`] bytes, and checks its digest. `emit` returns false when
/// no one takes the chunks any more: the walk then stops without error.
fn stream_layer(image_id: &str, layer: &StoredLayer, emit: &mut dyn FnMut(Bytes) -> bool) -> Result<(), StoreError> {
    let mut hasher = Sha256::new();
    let mut out: Vec<u8> = Vec::with_capacity(CHUNK);
    let mut open = true;
    let mut flush = |out: &mut Vec<u8>, hasher: &mut Sha256, open: &mut bool| {
        if !out.is_empty() && *open {
            hasher.update(&*out);
            *open = emit(Bytes::from(std::mem::replace(out, Vec::with_capacity(CHUNK))));
        }
    };
    let walked = for_each_segment(&layer.tar_split, |piece| {
        if !open {
            return Ok(());
        }
        match piece {
            Piece::Raw(bytes) => {
                out.extend_from_slice(&bytes);
                if out.len() >= CHUNK {
                    flush(&mut out, &mut hasher, &mut open);
                }
            }
            Piece::File { size: 0, .. } => {}
            Piece::File { name, size, .. } => {
                let path = file_path(&layer.files, name);
                let read_error =
                    |source| StoreError::Read { image_id: image_id.to_owned(), path: path.clone(), source };
                let mut file = File::open(&path).map_err(read_error)?.take(size);
                let mut left = size;
                while left > 0 && open {
                    let start = out.len();
                    let room = CHUNK.saturating_sub(start).max(1);
                    out.resize(start + room.min(usize::try_from(left).unwrap_or(usize::MAX)), 0);
                    let read = file.read(&mut out[start..]).map_err(read_error)?;
                    out.truncate(start + read);
                    if read == 0 {
                        return Err(read_error(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("the file is {} bytes shorter than the layer says", left),
                        )));
                    }
                    left -= read as u64;
                    if out.len() >= CHUNK {
                        flush(&mut out, &mut hasher, &mut open);
                    }
                }
            }
        }
        Ok(())
    });
    walked.map_err(|e| e.into_store_error(image_id, &layer.tar_split))?;
    flush(&mut out, &mut hasher, &mut open);
    if !open {
        return Ok(());
    }
    let found = format!("sha256:{}", hex::encode(hasher.finalize()));
    if found != layer.diff_id {
        return Err(StoreError::Digest {
            image_id: image_id.to_owned(),
            diff_id: layer.diff_id.clone(),
            tar_split: layer.tar_split.clone(),
            files: layer.files.clone(),
            culprit: first_changed_file(layer),
            found,
        });
    }
    Ok(())
}

/// The first file of `layer` whose contents do not match the crc64 the
/// tar-split recorded for it: the file to look at when a layer's digest is
/// wrong. Read only then: the check costs a second pass.
fn first_changed_file(layer: &StoredLayer) -> Option<PathBuf> {
    let mut culprit = None;
    let _ = for_each_segment(&layer.tar_split, |piece| {
        if let (None, Piece::File { name, size, crc: Some(crc) }) = (&culprit, piece) {
            let path = file_path(&layer.files, name);
            let matches = File::open(&path)
                .and_then(|f| crc64_of(f.take(size)))
                .is_ok_and(|sum| BASE64.encode(sum.to_be_bytes()) == crc);
            if !matches {
                culprit = Some(path);
            }
        }
        Ok(())
    });
    culprit
}

/// The CRC-64 (ISO polynomial) tar-split records of each file, as Go's
/// `hash/crc64` computes it.
fn crc64_of(mut reader: impl Read) -> io::Result<u64> {
    const POLY: u64 = 0xD800_0000_0000_0000;
    let table: Vec<u64> =
        (0..256u64).map(|i| (0..8).fold(i, |crc, _| if crc & 1 == 1 { (crc >> 1) ^ POLY } else { crc >> 1 })).collect();
    let mut crc = !0u64;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = reader.read(&mut buffer)?;
        if read == 0 {
            return Ok(!crc);
        }
        for byte in &buffer[..read] {
            crc = table[usize::from(*byte ^ crc as u8)] ^ (crc >> 8);
        }
    }
}

/// Streams to every target an OCI archive of `image` under `reference`
/// without the layers it holds (by digest, see [`Target::blobs`]): the
/// same archive the export path builds. Layers are read once, whichever
/// the number of nodes lacking them, and checked against their diff ids as
/// they go.
///
/// # Errors
/// [`StoreError`] when a layer's file cannot be read or its digest is not
/// its diff id; the targets' archives are then cut short.
pub(crate) async fn send(image: &StoredImage, reference: &str, targets: &mut [Target]) -> Result<(), StoreError> {
    let layers: Vec<(String, u64, StoredLayer)> =
        image.layers.iter().map(|l| (l.diff_id.clone(), l.size, l.clone())).collect();
    let image_id = image.image_id.clone();
    send_layers(&image.image_id, layers, targets, move |layer, emit| stream_layer(&image_id, layer, emit)).await?;
    let tail = archive::oci_tail(reference, &image.config, &image.manifest(), archive::MANIFEST_TYPE);
    archive::send_to(targets, None, &tail).await;
    Ok(())
}

/// Streams the `layers` (digest, size, what `read` reads it from) that
/// some target lacks as `blobs/sha256/<digest>` entries, each to the
/// targets lacking it. `read` runs on a blocking thread and hands the
/// layer's bytes to the function it is given, which returns false when no
/// target takes them any more. Each layer is read once.
///
/// # Errors
/// What `read` returns; the targets' archives are then cut short.
pub(super) async fn send_layers<L, R>(
    image_id: &str,
    layers: Vec<(String, u64, L)>,
    targets: &mut [Target],
    read: R,
) -> Result<(), StoreError>
where
    L: Send + 'static,
    R: Fn(&L, &mut dyn FnMut(Bytes) -> bool) -> Result<(), StoreError> + Send + 'static,
{
    let wanted: Vec<(String, u64, L)> = layers
        .into_iter()
        .filter(|(digest, _, _)| {
            let short = archive::short_digest(digest);
            targets.iter().any(|t| !t.blobs.contains(&short))
        })
        .collect();
    let (tx, mut rx) = mpsc::channel::<(String, Bytes)>(CHUNKS_AHEAD);
    let reading = tokio::task::spawn_blocking(move || {
        for (digest, size, layer) in &wanted {
            let short = archive::short_digest(digest);
            let hex = digest.trim_start_matches("sha256:");
            let header = archive::tar_header(&format!("blobs/sha256/{hex}"), *size);
            let mut emit = |chunk: Bytes| tx.blocking_send((short.clone(), chunk)).is_ok();
            if !emit(header) {
                return Ok(());
            }
            read(layer, &mut emit)?;
            let pad = archive::padding(*size);
            if pad > 0 && !emit(Bytes::from(vec![0u8; pad])) {
                return Ok(());
            }
        }
        Ok(())
    });
    while let Some((layer, chunk)) = rx.recv().await {
        archive::send_to(targets, Some(&Held::Blob(layer)), &chunk).await;
        if !archive::any_open(targets) {
            // Every import went away (each reports why): closing the channel stops the reading.
            break;
        }
    }
    drop(rx);
    reading.await.map_err(|source| StoreError::Task { image_id: image_id.to_owned(), source })?
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::io::Write;

    use super::*;

    /// One layer's files: name and contents (`None` for a directory).
    type Files<'a> = &'a [(&'a str, Option<&'a [u8]>)];

    /// Writes a layer as the engine keeps it, under `root` and the chain id
    /// over `parent`: its files in `overlay2/<cache id>/diff`, its tar-split.
    /// Returns its diff id, chain id and tar.
    fn write_layer(root: &Path, parent: &str, cache_id: &str, files: Files<'_>) -> (String, String, Vec<u8>) {
        let diff = root.join("overlay2").join(cache_id).join("diff");
        std::fs::create_dir_all(&diff).expect("diff dir");
        let mut tar = Vec::new();
        let mut lines = String::new();
        let raw = |tar: &mut Vec<u8>, lines: &mut String, bytes: &[u8]| {
            tar.extend_from_slice(bytes);
            lines.push_str(&serde_json::json!({ "type": 2, "payload": BASE64.encode(bytes) }).to_string());
            lines.push('\n');
        };
        for (name, contents) in files {
            let mut header = tar::Header::new_ustar();
            header.set_path(name).expect("path");
            header.set_mode(0o644);
            header.set_size(contents.map_or(0, |c| c.len() as u64));
            header.set_entry_type(if contents.is_some() { tar::EntryType::Regular } else { tar::EntryType::Directory });
            header.set_cksum();
            raw(&mut tar, &mut lines, header.as_bytes());
            match contents {
                Some(contents) => {
                    std::fs::write(diff.join(name), contents).expect("file");
                    let crc = crc64_of(*contents).expect("crc");
                    let segment = serde_json::json!({
                        "type": 1, "name": name, "size": contents.len(), "payload": BASE64.encode(crc.to_be_bytes()),
                    });
                    lines.push_str(&segment.to_string());
                    lines.push('\n');
                    tar.extend_from_slice(contents);
                    raw(&mut tar, &mut lines, &vec![0u8; archive::padding(contents.len() as u64)]);
                }
                None => {
                    std::fs::create_dir_all(diff.join(name)).expect("dir");
                    lines.push_str(&serde_json::json!({ "type": 1, "name": name, "size": 0 }).to_string());
                    lines.push('\n');
                }
            }
        }
        raw(&mut tar, &mut lines, &[0u8; 1024]);
        let diff_id = sha256(&tar);
        let chain = chain_id(parent, &diff_id);
        let dir = root.join("image/overlay2/layerdb").join(chain.replacen(':', "/", 1));
        std::fs::create_dir_all(&dir).expect("layer dir");
        std::fs::write(dir.join("cache-id"), cache_id).expect("cache-id");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(lines.as_bytes()).expect("gzip");
        std::fs::write(dir.join("tar-split.json.gz"), gz.finish().expect("gzip")).expect("tar-split");
        (diff_id, chain, tar)
    }

    /// A two-layer image under `root`: a large base, a small top. Returns
    /// its id and the layers' tars.
    fn write_image(root: &Path) -> (String, Vec<Vec<u8>>) {
        let big: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        let (base_id, base_chain, base) =
            write_layer(root, "", "aaaa", &[("bin", None), ("bin/big", Some(&big)), ("empty", Some(b""))]);
        let (top_id, _, top) = write_layer(root, &base_chain, "bbbb", &[("top", Some(b"the change"))]);
        let config = serde_json::json!({ "architecture": "amd64", "os": "linux", "rootfs": { "type": "layers", "diff_ids": [base_id, top_id] } });
        let config = config.to_string().into_bytes();
        let images = root.join("image/overlay2/imagedb/content/sha256");
        std::fs::create_dir_all(&images).expect("imagedb");
        let image_id = sha256(&config);
        std::fs::write(images.join(image_id.trim_start_matches("sha256:")), &config).expect("config");
        (image_id, vec![base, top])
    }

    fn layer_bytes(image: &StoredImage, layer: usize) -> Result<Vec<u8>, StoreError> {
        let mut got = Vec::new();
        stream_layer(&image.image_id, &image.layers[layer], &mut |chunk| {
            assert!(chunk.len() <= CHUNK + 1024, "a chunk of {} bytes", chunk.len());
            got.extend_from_slice(&chunk);
            true
        })?;
        Ok(got)
    }

    #[tokio::test]
    async fn layers_are_put_back_together_byte_for_byte() {
        let root = tempfile::tempdir().expect("tempdir");
        let (image_id, tars) = write_image(root.path());
        let image = Store::at(root.path()).image(&image_id).await.expect("image");
        assert_eq!(image.layers.len(), 2);
        for (n, tar) in tars.iter().enumerate() {
            assert_eq!(image.layers[n].size, tar.len() as u64);
            assert_eq!(image.layers[n].diff_id, sha256(tar));
            assert_eq!(&layer_bytes(&image, n).expect("layer"), tar);
        }
    }

    #[tokio::test]
    async fn a_changed_file_is_a_digest_error_naming_it() {
        let root = tempfile::tempdir().expect("tempdir");
        let (image_id, _) = write_image(root.path());
        let image = Store::at(root.path()).image(&image_id).await.expect("image");
        let changed = root.path().join("overlay2/aaaa/diff/bin/big");
        let mut bytes = std::fs::read(&changed).expect("read");
        bytes[1000] ^= 1;
        std::fs::write(&changed, bytes).expect("write");
        let error = layer_bytes(&image, 0).expect_err("a digest error");
        assert!(
            matches!(&error, StoreError::Digest { culprit: Some(path), diff_id, .. } if *path == changed && *diff_id == image.layers[0].diff_id),
            "{error:?}"
        );
        assert!(error.to_string().contains(&image_id), "{error}");
    }

    #[tokio::test]
    async fn a_missing_layer_or_config_is_found_before_streaming() {
        let root = tempfile::tempdir().expect("tempdir");
        let (image_id, _) = write_image(root.path());
        let store = Store::at(root.path());
        let error = store.image("sha256:0123").await.expect_err("no such image");
        assert!(matches!(error, StoreError::Read { .. }), "{error:?}");
        std::fs::remove_dir_all(root.path().join("overlay2/bbbb")).expect("remove");
        let error = store.image(&image_id).await.expect_err("a layer without files");
        assert!(matches!(&error, StoreError::Read { path, .. } if path.ends_with("bbbb/diff")), "{error:?}");
    }

    #[tokio::test]
    async fn nodes_get_the_layers_they_lack_and_the_manifest_the_export_path_writes() {
        let root = tempfile::tempdir().expect("tempdir");
        let (image_id, tars) = write_image(root.path());
        let image = Store::at(root.path()).image(&image_id).await.expect("image");
        let base = archive::short_digest(&image.layers[0].diff_id);
        let held = [(BTreeMap::new(), BTreeSet::from([base])), (BTreeMap::new(), BTreeSet::new())];
        let (got, sent, result) = archive::tests::into_targets(held.to_vec(), |mut targets| async {
            let result = send(&image, "localhost/x:1", &mut targets).await;
            (result, targets)
        })
        .await;
        result.expect("send");
        let entries = |archive: &[u8]| -> BTreeMap<String, Vec<u8>> {
            tar::Archive::new(archive)
                .entries()
                .expect("entries")
                .map(|e| {
                    let mut e = e.expect("entry");
                    let mut bytes = Vec::new();
                    e.read_to_end(&mut bytes).expect("read");
                    (e.path().expect("path").display().to_string(), bytes)
                })
                .collect()
        };
        let (warm, cold) = (entries(&got[0]), entries(&got[1]));
        let blob = |tar: &[u8]| format!("blobs/sha256/{}", hex::encode(Sha256::digest(tar)));
        assert!(!warm.contains_key(&blob(&tars[0])), "the held layer was sent");
        assert_eq!(warm.get(&blob(&tars[1])), Some(&tars[1]));
        assert_eq!(cold.get(&blob(&tars[0])), Some(&tars[0]));
        assert_eq!(sent[0], got[0].len() as u64);
        assert_eq!(sent[1] - sent[0], 512 + tars[0].len() as u64);
        let manifest = image.manifest();
        assert_eq!(warm.get(&blob(&manifest)), Some(&manifest));
        assert_eq!(warm.get(&blob(&image.config)), Some(&image.config));
        let index: serde_json::Value = serde_json::from_slice(&warm["index.json"]).expect("index");
        assert_eq!(index["manifests"][0]["annotations"]["io.containerd.image.name"], "localhost/x:1");
    }

    #[test]
    fn crc64_matches_what_the_engine_recorded() {
        // A file of a layer on a Docker 20.10 engine, and its tar-split payload.
        let crc = crc64_of(&b"nonce-12226-619759137-0"[..]).expect("crc");
        assert_eq!(BASE64.encode(crc.to_be_bytes()), "17KQ88laL/U=");
    }

    #[test]
    fn chain_ids_follow_the_engine() {
        let (a, b) = ("sha256:aa", "sha256:bb");
        assert_eq!(chain_id("", a), a);
        assert_eq!(chain_id(a, b), sha256(b"sha256:aa sha256:bb"));
    }
}
