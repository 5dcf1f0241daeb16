//! The engine's export of one image, re-cut for each node into an archive
//! holding only the layers that node lacks.
//!
//! The engine exports a docker-format archive (`docker save`): one entry per
//! layer (`<v1 id>/layer.tar`, the uncompressed layer, whose sha256 is the
//! layer's diff id), the config (`<image id>.json`) and `manifest.json`, which
//! says which entry is which layer. The layer entries come first, in name
//! order, so the archive itself tells which layer an entry holds only at its
//! end. The name of a layer's entry, though, depends only on that layer and
//! the ones below it (for every layer but the top), so a rebuild that changes
//! the top layer exports the layers below under the same names as before.
//! Every image a load puts on a node is labelled with the map from those
//! names to diff ids ([`LAYERS_LABEL`]); a later load reads the labels and
//! knows, as the export streams by, which entries a node already holds.
//!
//! Each node gets an OCI image layout archive for `ctr images import`: the
//! layers it lacks, then the config, a manifest written here and `index.json`
//! naming the reference. containerd files a blob under the digest it computes
//! while reading, whatever the entry's name, so a layer can be sent before its
//! digest is known; the manifest names the layers the node already holds by
//! their digests, and the import finds them in the node's content store.
//! Nothing is buffered but the config and `manifest.json`: layers pass
//! through in the chunks the engine sends.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

/// The containerd image label mapping the engine's names of the image's layer
/// entries to the layers' diff ids: `<name>:<diff id>` pairs joined by `+`,
/// each shortened to 16 hex digits.
pub const LAYERS_LABEL: &str = "io.e2e-infra.layers";
/// Hex digits kept of names and digests in [`LAYERS_LABEL`].
const SHORT: usize = 16;
/// containerd refuses a label whose key and value exceed 4096 bytes.
const LABEL_LIMIT: usize = 4096;
/// The largest config or `manifest.json` read; real ones are a few KiB.
const JSON_LIMIT: usize = 16 * 1024 * 1024;
const BLOCK: usize = 512;
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
/// The media type of the manifests written here.
pub(super) const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// The engine's export is not an archive this module reads.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// Reading the export from the engine failed.
    #[error("reading the export failed")]
    Export(#[from] bollard::errors::Error),
    /// The export is in a layout this module does not read.
    #[error("the export of image {image_id}{engine} is in a layout this loader does not read: its top-level entries are {}; it reads docker-format archives (`manifest.json`, `<id>/layer.tar`) and OCI layouts (`oci-layout`, `index.json`, `blobs/sha256/`). Load the image another way (a registry: E2E_INFRA_REGISTRY), or report the engine's version with these entries", if entries.is_empty() { "none".to_owned() } else { entries.join(", ") })]
    Layout {
        /// The image exported.
        image_id: String,
        /// The archive's top-level entries (the first few).
        entries: Vec<String>,
        /// The engine, as `, from <version> with storage driver <driver>`;
        /// filled in by the caller, who asks the engine.
        engine: String,
    },
    /// The export does not hold the expected image in a form read here.
    #[error("the export of image {image_id} is unreadable: {problem}")]
    Format {
        /// The image exported.
        image_id: String,
        /// What is wrong.
        problem: String,
    },
    /// A layer recorded as held by a node has, in this export, another digest.
    #[error("the export's layer `{entry}` has digest {found}, but the node's label said {labelled}; remove the label {LAYERS_LABEL} from the node's images and load again")]
    Mislabelled {
        /// The entry of the export.
        entry: String,
        /// Its digest.
        found: String,
        /// The start of the digest the label gave.
        labelled: String,
    },
}

/// The short name of a layer entry: the start of its directory (Docker) or
/// file name (Podman writes `<diff id>.tar`).
fn short_name(path: &str) -> String {
    let first = path.split('/').next().unwrap_or(path);
    first.trim_end_matches(".tar").chars().take(SHORT).collect()
}

/// The start of a digest's hex, as [`LAYERS_LABEL`] keeps it.
pub(crate) fn short_digest(digest: &str) -> String {
    digest.trim_start_matches("sha256:").chars().take(SHORT).collect()
}

/// What labels on a node's images say: entry names to short diff ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LayerMap(BTreeMap<String, String>);

impl LayerMap {
    /// Adds the pairs of one [`LAYERS_LABEL`] value; malformed pairs are ignored.
    pub(crate) fn add_label(&mut self, value: &str) {
        for pair in value.split('+') {
            if let Some((name, digest)) = pair.split_once(':') {
                self.0.insert(name.to_owned(), digest.to_owned());
            }
        }
    }

    /// The label value for these pairs, or `None` when containerd would
    /// refuse it as too long.
    pub fn label(&self) -> Option<String> {
        let value = self.0.iter().map(|(name, digest)| format!("{name}:{digest}")).collect::<Vec<_>>().join("+");
        (LAYERS_LABEL.len() + value.len() <= LABEL_LIMIT).then_some(value)
    }

    /// Adds every pair of `other`.
    pub fn extend(&mut self, other: &Self) {
        self.0.extend(other.0.iter().map(|(k, v)| (k.clone(), v.clone())));
    }

    /// The pairs naming one of `layers` (full diff ids): what is known of
    /// an image's entries without exporting it.
    pub(crate) fn of_layers(&self, layers: &[String]) -> Self {
        let wanted: BTreeSet<String> = layers.iter().map(|d| short_digest(d)).collect();
        Self(
            self.0.iter().filter(|(_, digest)| wanted.contains(*digest)).map(|(k, v)| (k.clone(), v.clone())).collect(),
        )
    }

    /// The entries a node can be spared: named here, with a diff id that is
    /// one of `layers` (the image's, full digests) and whose start is in
    /// `held` (the node's blobs, shortened).
    pub(crate) fn held_entries(&self, layers: &[String], held: &BTreeSet<String>) -> BTreeMap<String, String> {
        let wanted: BTreeSet<String> = layers.iter().map(|d| short_digest(d)).collect();
        self.0
            .iter()
            .filter(|(_, digest)| wanted.contains(*digest) && held.contains(*digest))
            .map(|(name, digest)| (name.clone(), digest.clone()))
            .collect()
    }
}

/// One node's share of the export.
#[derive(Debug)]
pub struct Target {
    /// Where its archive goes (the standard input of its import).
    pub tx: mpsc::Sender<Bytes>,
    /// Entries of a docker-format export it holds already, never sent:
    /// short entry names to short diff ids.
    pub held: BTreeMap<String, String>,
    /// The blobs of its content store, as short digests: a blob named by
    /// its digest (in an OCI layout, or read from the engine's store) is
    /// never sent to a node that has it.
    pub blobs: BTreeSet<String>,
    /// Bytes sent so far.
    pub sent: u64,
    open: bool,
}

impl Target {
    /// A node that holds the export's entries `held` and the blobs `blobs`.
    pub fn new(tx: mpsc::Sender<Bytes>, held: BTreeMap<String, String>, blobs: BTreeSet<String>) -> Self {
        Self { tx, held, blobs, sent: 0, open: true }
    }

    fn holds(&self, what: &Held) -> bool {
        match what {
            Held::Entry(name) => self.held.contains_key(name),
            Held::Blob(short) => self.blobs.contains(short),
        }
    }
}

/// What a node may hold already of the bytes being sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Held {
    /// A docker-format export's layer entry, by short name.
    Entry(String),
    /// A blob, by short digest.
    Blob(String),
}

/// What a split found out about the image.
#[derive(Debug)]
pub(crate) struct Split {
    /// Its layer map, for the node's label; `None` for an OCI layout,
    /// whose blobs are named by their digests.
    pub layers: Option<LayerMap>,
    /// The digests of its layers' blobs, bottom first: what a node that
    /// imported it holds.
    pub blobs: Vec<String>,
    /// The digest of the manifest the nodes were given.
    pub manifest: String,
}

/// Sends `chunk` to the open targets, but for those holding `held`; a
/// target whose import went away is closed (its own error reports why).
pub(super) async fn send_to(targets: &mut [Target], held: Option<&Held>, chunk: &Bytes) {
    let mut takers: Vec<&mut Target> =
        targets.iter_mut().filter(|t| t.open && held.is_none_or(|what| !t.holds(what))).collect();
    let sent = futures::future::join_all(takers.iter().map(|t| t.tx.send(chunk.clone()))).await;
    for (target, result) in takers.iter_mut().zip(sent) {
        match result {
            Ok(()) => target.sent += chunk.len() as u64,
            Err(_) => target.open = false,
        }
    }
}

/// Whether any target still takes chunks: when none does, reading on is
/// wasted.
pub(super) fn any_open(targets: &[Target]) -> bool {
    targets.iter().any(|t| t.open)
}

/// What the entry being read is.
#[derive(Debug)]
enum Entry {
    /// A layer or a large blob, sent to the targets that lack it; padded
    /// to a block.
    Layer { held: Held, size: u64 },
    /// A small blob of an OCI layout (an index, a manifest, a config or a
    /// small layer), kept until the image is known.
    Kept { digest: String, bytes: Vec<u8> },
    /// Kept whole: the config or `manifest.json`.
    Json { path: String, bytes: Vec<u8> },
    /// A PAX or GNU header whose data names the next entry.
    Meta { kind: u8, bytes: Vec<u8> },
    /// Read and dropped.
    Skip,
}

/// A header's fields this module uses.
#[derive(Debug)]
struct Header {
    path: String,
    size: u64,
    kind: u8,
    link: String,
}

fn field(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn parse_size(bytes: &[u8]) -> Option<u64> {
    if bytes[0] & 0x80 != 0 {
        // Base-256, for sizes beyond the octal field.
        return Some(bytes[1..].iter().fold(0u64, |n, b| (n << 8) | u64::from(*b)));
    }
    let text = field(bytes);
    let text = text.trim_matches(|c: char| c == ' ' || c == '\0');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

fn parse_header(block: &[u8], long_name: Option<String>, pax: &HashMap<String, String>) -> Option<Header> {
    let mut path = field(&block[..100]);
    // POSIX ustar (and PAX) only: GNU headers keep other fields there.
    if &block[257..263] == b"ustar\0" {
        let prefix = field(&block[345..500]);
        if !prefix.is_empty() {
            path = format!("{prefix}/{path}");
        }
    }
    let path = pax.get("path").cloned().or(long_name).unwrap_or(path);
    let size = match pax.get("size") {
        Some(size) => size.parse().ok()?,
        None => parse_size(&block[124..136])?,
    };
    let link = pax.get("linkpath").cloned().unwrap_or_else(|| field(&block[157..257]));
    Some(Header { path: path.trim_start_matches("./").to_owned(), size, kind: block[156], link })
}

/// PAX records: `<length> <key>=<value>\n`.
fn parse_pax(bytes: &[u8]) -> HashMap<String, String> {
    let text = String::from_utf8_lossy(bytes);
    text.lines()
        .filter_map(|line| line.split_once(' ').and_then(|(_, kv)| kv.split_once('=')))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The zeros that end an entry of `size` bytes on a block boundary.
pub(super) fn padding(size: u64) -> usize {
    let rest = (size % BLOCK as u64) as usize;
    if rest == 0 {
        0
    } else {
        BLOCK - rest
    }
}

/// A tar header for a regular file.
pub(super) fn tar_header(path: &str, size: u64) -> Bytes {
    let mut header = tar::Header::new_ustar();
    // Paths here are short ASCII (`blobs/sha256/<64 hex>`), always valid.
    let _ = header.set_path(path);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    Bytes::copy_from_slice(header.as_bytes())
}

/// A whole file as tar bytes: header, content, padding.
fn tar_file(path: &str, content: &[u8]) -> Bytes {
    let mut out = tar_header(path, content.len() as u64).to_vec();
    out.extend_from_slice(content);
    out.resize(out.len() + padding(content.len() as u64), 0);
    Bytes::from(out)
}

#[derive(Deserialize)]
struct SavedManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// The part of an image config that lists its layers.
#[derive(Deserialize)]
pub(super) struct RootFs {
    /// The layers' diff ids, bottom first.
    pub(super) diff_ids: Vec<String>,
}

/// An image config, as far as the loader reads it.
#[derive(Deserialize)]
pub(super) struct ImageConfig {
    /// Its layers.
    pub(super) rootfs: RootFs,
}

/// What an archive holds of an OCI layout, as it streams by.
#[derive(Debug, Default)]
struct Blobs {
    /// Small blobs, whole, by digest.
    kept: HashMap<String, Vec<u8>>,
    /// Bytes in `kept`.
    kept_bytes: usize,
    /// Blobs sent on as they came (to the nodes lacking them), by digest,
    /// with their sizes.
    sent: HashMap<String, u64>,
}

/// The archive's top-level entries, for an error about its layout.
#[derive(Debug, Default)]
struct TopLevel(BTreeSet<String>);

impl TopLevel {
    const KEPT: usize = 20;

    fn add(&mut self, path: &str) {
        let first = match path.split_once('/') {
            Some((dir, _)) => format!("{dir}/"),
            None => path.to_owned(),
        };
        if self.0.len() < Self::KEPT {
            self.0.insert(first);
        }
    }
}

/// Reads the export `source` of image `image_id` once and writes to every
/// target an OCI archive of `reference` without the layers it holds.
/// Reads both layouts engines export: the docker-format archive (Docker 24
/// and older, Podman) and the OCI layout (Docker 25 and newer).
/// Returns what the export said of the layers.
///
/// # Errors
/// [`ArchiveError`] for a failing export, an archive in neither layout
/// ([`ArchiveError::Layout`]), one that does not hold image `image_id`,
/// or a node whose layer label disagrees with the export.
pub(crate) async fn split<S>(
    source: S,
    reference: &str,
    image_id: &str,
    targets: &mut [Target],
) -> Result<Split, ArchiveError>
where
    S: Stream<Item = Result<Bytes, bollard::errors::Error>>,
{
    let format = |problem: String| ArchiveError::Format { image_id: image_id.to_owned(), problem };
    futures::pin_mut!(source);
    let mut blobs = Blobs::default();
    let mut top = TopLevel::default();
    let mut header_bytes: Vec<u8> = Vec::with_capacity(BLOCK);
    // What remains of the current entry's data, then of its padding.
    let (mut data_left, mut pad_left) = (0u64, 0usize);
    let mut entry = Entry::Skip;
    let mut long_name = None;
    let mut pax = HashMap::new();
    let mut sizes: HashMap<String, u64> = HashMap::new();
    let mut links: HashMap<String, String> = HashMap::new();
    let mut jsons: HashMap<String, Vec<u8>> = HashMap::new();
    let mut ended = false;

    while let Some(chunk) = source.next().await {
        let mut chunk = chunk?;
        while !chunk.is_empty() && !ended {
            if data_left > 0 {
                let take = chunk.len().min(usize::try_from(data_left).unwrap_or(usize::MAX));
                let piece = chunk.split_to(take);
                data_left -= take as u64;
                match &mut entry {
                    Entry::Layer { held, .. } => send_to(targets, Some(held), &piece).await,
                    Entry::Json { bytes, .. } | Entry::Meta { bytes, .. } | Entry::Kept { bytes, .. } => {
                        if bytes.len() + take > JSON_LIMIT {
                            return Err(format(format!("an entry read whole is larger than {JSON_LIMIT} bytes")));
                        }
                        bytes.extend_from_slice(&piece);
                    }
                    Entry::Skip => {}
                }
                if data_left == 0 {
                    finish_entry(&mut entry, targets, &mut jsons, &mut blobs, &mut long_name, &mut pax).await;
                }
                continue;
            }
            if pad_left > 0 {
                let take = chunk.len().min(pad_left);
                let _ = chunk.split_to(take);
                pad_left -= take;
                continue;
            }
            let take = chunk.len().min(BLOCK - header_bytes.len());
            header_bytes.extend_from_slice(&chunk.split_to(take));
            if header_bytes.len() < BLOCK {
                continue;
            }
            let block = std::mem::take(&mut header_bytes);
            if block.iter().all(|b| *b == 0) {
                ended = true;
                continue;
            }
            let header = parse_header(&block, long_name.take(), &std::mem::take(&mut pax))
                .ok_or_else(|| format("a tar header is unreadable".to_owned()))?;
            pad_left = padding(header.size);
            data_left = header.size;
            if !matches!(header.kind, b'x' | b'L' | b'g') {
                top.add(&header.path);
            }
            entry = classify(&header, &mut sizes, &mut links, &mut blobs);
            if let Entry::Layer { held, size } = &entry {
                let blob = match held {
                    Held::Entry(_) => header.path.split('/').next().unwrap_or_default().trim_end_matches(".tar"),
                    Held::Blob(_) => header.path.trim_start_matches("blobs/sha256/"),
                };
                send_to(targets, Some(held), &tar_header(&format!("blobs/sha256/{blob}"), *size)).await;
            }
            if data_left == 0 {
                finish_entry(&mut entry, targets, &mut jsons, &mut blobs, &mut long_name, &mut pax).await;
            }
        }
    }
    if !ended {
        return Err(format("the archive ends before its end-of-archive blocks".to_owned()));
    }
    if jsons.contains_key("index.json") {
        return finish_oci(reference, image_id, &jsons, &blobs, targets).await;
    }
    if !jsons.contains_key("manifest.json") {
        return Err(ArchiveError::Layout {
            image_id: image_id.to_owned(),
            entries: top.0.into_iter().collect(),
            engine: String::new(),
        });
    }
    finish_docker(reference, image_id, &jsons, &sizes, &links, targets).await
}

/// Ends the split of a docker-format archive: checks the nodes' layer
/// labels against the export's entries, then sends the config, a manifest
/// and an index naming `reference`.
async fn finish_docker(
    reference: &str,
    image_id: &str,
    jsons: &HashMap<String, Vec<u8>>,
    sizes: &HashMap<String, u64>,
    links: &HashMap<String, String>,
    targets: &mut [Target],
) -> Result<Split, ArchiveError> {
    let format = |problem: String| ArchiveError::Format { image_id: image_id.to_owned(), problem };
    let image = read_image(image_id, jsons, sizes, links).map_err(format)?;
    let mut layers = LayerMap::default();
    for (path, digest) in image.paths.iter().zip(&image.diff_ids) {
        let name = short_name(links.get(path).unwrap_or(path));
        let short = short_digest(digest);
        for target in targets.iter() {
            if let Some(labelled) = target.held.get(&name).filter(|l| **l != short) {
                return Err(ArchiveError::Mislabelled {
                    entry: path.clone(),
                    found: digest.clone(),
                    labelled: labelled.clone(),
                });
            }
        }
        layers.0.insert(name, short);
    }
    let tail = oci_tail(reference, &image.config, &image.manifest, MANIFEST_TYPE);
    send_to(targets, None, &tail).await;
    let manifest = crate::load::oci::digest_of(&image.manifest);
    Ok(Split { layers: Some(layers), blobs: image.diff_ids, manifest })
}

/// Ends the split of an OCI layout: finds the image among the blobs, sends
/// the small layers a node lacks (the large ones went by as they came),
/// then the config, the manifest and an index naming `reference`.
///
/// A manifest of the engine's own (its image id is a manifest's or an
/// index's digest: the containerd image store) is sent as it is, with the
/// engine's compressed layers, so the node holds the engine's manifest
/// digest. An engine whose id is the config's digest has no manifest of
/// its own: the nodes get the one [`oci_manifest`] writes, as when the
/// image is read from its store.
async fn finish_oci(
    reference: &str,
    image_id: &str,
    jsons: &HashMap<String, Vec<u8>>,
    blobs: &Blobs,
    targets: &mut [Target],
) -> Result<Split, ArchiveError> {
    let format = |problem: String| ArchiveError::Format { image_id: image_id.to_owned(), problem };
    let index = jsons.get("index.json").map(Vec::as_slice).unwrap_or_default();
    let roots = oci_spec::image::ImageIndex::from_reader(index)
        .map_err(|e| format(format!("its index.json is unreadable: {e}")))?
        .manifests()
        .clone();
    let image =
        crate::load::oci::resolve(image_id, &roots, &|digest| blobs.kept.get(digest).cloned()).map_err(format)?;
    for layer in &image.layers {
        let held = Held::Blob(short_digest(&layer.digest));
        match (blobs.kept.get(&layer.digest), blobs.sent.get(&layer.digest)) {
            (Some(bytes), _) => send_to(targets, Some(&held), &tar_file(&blob_path(&layer.digest), bytes)).await,
            (None, Some(_)) => {}
            (None, None) => return Err(format(format!("it lacks the layer blob {}", layer.digest))),
        }
    }
    let plain = image.layers.iter().zip(&image.diff_ids).all(|(l, d)| l.uncompressed && l.digest == *d);
    let (manifest, manifest_type) = if image.id_is_config && plain {
        let layers: Vec<(&str, u64)> = image.layers.iter().map(|l| (l.digest.as_str(), l.size)).collect();
        (oci_manifest(&image.config, &layers), MANIFEST_TYPE.to_owned())
    } else {
        (image.manifest.clone(), image.manifest_type.clone())
    };
    send_to(targets, None, &oci_tail(reference, &image.config, &manifest, &manifest_type)).await;
    Ok(Split {
        layers: None,
        blobs: image.layers.into_iter().map(|l| l.digest).collect(),
        manifest: crate::load::oci::digest_of(&manifest),
    })
}

/// The path of the blob `digest` in an OCI layout.
fn blob_path(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

/// Blobs of an OCI layout up to this size are kept whole until the image
/// is known (configs with a long history run to tens of KiB); larger ones
/// are sent on as they come. All kept blobs together stay under
/// [`JSON_LIMIT`].
const SMALL_BLOB: u64 = 256 * 1024;

/// Classifies the entry that `header` starts, noting layer sizes and links.
fn classify(
    header: &Header,
    sizes: &mut HashMap<String, u64>,
    links: &mut HashMap<String, String>,
    blobs: &mut Blobs,
) -> Entry {
    let path = header.path.as_str();
    if let Some(hex) = path.strip_prefix("blobs/sha256/").filter(|h| h.len() == 64 && !h.contains('/')) {
        if !matches!(header.kind, b'0' | 0) {
            return Entry::Skip;
        }
        let digest = format!("sha256:{hex}");
        let size = usize::try_from(header.size).unwrap_or(usize::MAX);
        if header.size <= SMALL_BLOB && blobs.kept_bytes + size <= JSON_LIMIT {
            blobs.kept_bytes += size;
            return Entry::Kept { digest, bytes: Vec::with_capacity(size) };
        }
        blobs.sent.insert(digest, header.size);
        return Entry::Layer { held: Held::Blob(short_digest(hex)), size: header.size };
    }
    match header.kind {
        b'x' | b'L' => return Entry::Meta { kind: header.kind, bytes: Vec::new() },
        // An identical layer saved twice is a link to the first copy.
        b'1' | b'2' if path.ends_with(".tar") => {
            let target = if header.kind == b'2' {
                let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
                normalize(&format!("{dir}/{}", header.link))
            } else {
                header.link.clone()
            };
            links.insert(path.to_owned(), target);
            return Entry::Skip;
        }
        b'0' | 0 => {}
        _ => return Entry::Skip,
    }
    if path == "manifest.json" || path == "oci-layout" || (!path.contains('/') && path.ends_with(".json")) {
        return Entry::Json { path: path.to_owned(), bytes: Vec::new() };
    }
    if path.ends_with(".tar") {
        sizes.insert(path.to_owned(), header.size);
        return Entry::Layer { held: Held::Entry(short_name(path)), size: header.size };
    }
    Entry::Skip
}

/// Resolves `.` and `..` in a `/`-separated relative path.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

/// Ends the entry just read: pads a layer, keeps a JSON, applies a PAX or
/// GNU header to the next entry.
async fn finish_entry(
    entry: &mut Entry,
    targets: &mut [Target],
    jsons: &mut HashMap<String, Vec<u8>>,
    blobs: &mut Blobs,
    long_name: &mut Option<String>,
    pax: &mut HashMap<String, String>,
) {
    match std::mem::replace(entry, Entry::Skip) {
        Entry::Layer { held, size } => {
            let pad = padding(size);
            if pad > 0 {
                send_to(targets, Some(&held), &Bytes::from(vec![0u8; pad])).await;
            }
        }
        Entry::Json { path, bytes } => {
            jsons.insert(path, bytes);
        }
        Entry::Kept { digest, bytes } => {
            blobs.kept.insert(digest, bytes);
        }
        Entry::Meta { kind: b'L', bytes } => *long_name = Some(field(&bytes)),
        Entry::Meta { bytes, .. } => *pax = parse_pax(&bytes),
        Entry::Skip => {}
    }
}

/// The image as the export describes it, with the OCI manifest written for it.
struct SavedImage {
    /// The OCI manifest.
    manifest: Vec<u8>,
    /// The archive's paths of the layers, bottom first.
    paths: Vec<String>,
    /// The config, as exported.
    config: Vec<u8>,
    /// The layers' diff ids, bottom first.
    diff_ids: Vec<String>,
}

/// Reads the image from the config and `manifest.json` the archive held.
fn read_image(
    image_id: &str,
    jsons: &HashMap<String, Vec<u8>>,
    sizes: &HashMap<String, u64>,
    links: &HashMap<String, String>,
) -> Result<SavedImage, String> {
    let saved = jsons.get("manifest.json").ok_or("it has no manifest.json")?;
    let saved: Vec<SavedManifest> =
        serde_json::from_slice(saved).map_err(|e| format!("its manifest.json is unreadable: {e}"))?;
    let [saved] =
        <[SavedManifest; 1]>::try_from(saved).map_err(|all| format!("it holds {} images, not one", all.len()))?;
    let config = jsons.get(&saved.config).ok_or_else(|| format!("it lacks the config `{}`", saved.config))?;
    let config_digest = format!("sha256:{}", hex::encode(Sha256::digest(config)));
    if config_digest != image_id {
        return Err(format!("its config has digest {config_digest}"));
    }
    let parsed: ImageConfig = serde_json::from_slice(config).map_err(|e| format!("its config is unreadable: {e}"))?;
    let diff_ids = parsed.rootfs.diff_ids;
    if diff_ids.len() != saved.layers.len() {
        return Err(format!("its manifest lists {} layers, its config {}", saved.layers.len(), diff_ids.len()));
    }
    let mut layers = Vec::new();
    for (path, digest) in saved.layers.iter().zip(&diff_ids) {
        let stored = links.get(path).unwrap_or(path);
        let size = sizes.get(stored).ok_or_else(|| format!("it lacks the layer `{path}`"))?;
        layers.push((digest.as_str(), *size));
    }
    let manifest = oci_manifest(config, &layers);
    Ok(SavedImage { manifest, paths: saved.layers, config: config.clone(), diff_ids })
}

/// The OCI manifest of the image whose config is `config` and whose layers,
/// bottom first, are the uncompressed tars `(diff id, size)`. The export and
/// the engine's store give the same bytes for one image, so a node gets the
/// same manifest digest whichever of them a load read.
pub(super) fn oci_manifest(config: &[u8], layers: &[(&str, u64)]) -> Vec<u8> {
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|(digest, size)| serde_json::json!({ "mediaType": LAYER_TYPE, "digest": digest, "size": size }))
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {
            "mediaType": CONFIG_TYPE,
            "digest": format!("sha256:{}", hex::encode(Sha256::digest(config))),
            "size": config.len(),
        },
        "layers": layers,
    });
    manifest.to_string().into_bytes()
}

/// The end of every node's archive: config, manifest (of media type
/// `manifest_type`), layout marker, `index.json` naming `reference`, and the
/// end-of-archive blocks.
pub(super) fn oci_tail(reference: &str, config: &[u8], manifest: &[u8], manifest_type: &str) -> Bytes {
    let blob = |bytes: &[u8]| format!("blobs/sha256/{}", hex::encode(Sha256::digest(bytes)));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": manifest_type,
            "digest": format!("sha256:{}", hex::encode(Sha256::digest(manifest))),
            "size": manifest.len(),
            "annotations": { "io.containerd.image.name": reference },
        }],
    });
    let mut out = Vec::new();
    out.extend_from_slice(&tar_file(&blob(config), config));
    out.extend_from_slice(&tar_file(&blob(manifest), manifest));
    out.extend_from_slice(&tar_file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#));
    out.extend_from_slice(&tar_file("index.json", index.to_string().as_bytes()));
    out.resize(out.len() + 2 * BLOCK, 0);
    Bytes::from(out)
}

#[cfg(test)]
pub(super) mod tests {
    use std::future::Future;

    use super::*;

    /// A docker-format archive as Docker 20.10 writes it: layers in
    /// directories named by v1 id, the config, `manifest.json`.
    fn saved(layers: &[(&str, Vec<u8>)]) -> (Vec<u8>, String, Vec<String>) {
        let diff_ids: Vec<String> =
            layers.iter().map(|(_, bytes)| format!("sha256:{}", hex::encode(Sha256::digest(bytes)))).collect();
        let config = serde_json::json!({ "architecture": "amd64", "os": "linux", "rootfs": { "type": "layers", "diff_ids": diff_ids } });
        let config = config.to_string().into_bytes();
        let image_hex = hex::encode(Sha256::digest(&config));
        let mut entries: Vec<(String, Vec<u8>)> = layers
            .iter()
            .flat_map(|(dir, bytes)| {
                [
                    (format!("{dir}/VERSION"), b"1.0".to_vec()),
                    (format!("{dir}/json"), b"{}".to_vec()),
                    (format!("{dir}/layer.tar"), bytes.clone()),
                ]
            })
            .collect();
        entries.push((format!("{image_hex}.json"), config));
        let paths: Vec<String> = layers.iter().map(|(dir, _)| format!("{dir}/layer.tar")).collect();
        let manifest =
            serde_json::json!([{ "Config": format!("{image_hex}.json"), "RepoTags": ["x:1"], "Layers": paths }]);
        entries.push(("manifest.json".to_owned(), manifest.to_string().into_bytes()));
        entries.sort();
        (tar_of(entries), format!("sha256:{image_hex}"), diff_ids)
    }

    /// Feeds `archive` in chunks of `chunk` bytes to targets holding `held`;
    /// returns each target's archive and the split.
    async fn run(
        archive: &[u8],
        image_id: &str,
        chunk: usize,
        held: Vec<BTreeMap<String, String>>,
    ) -> (Vec<Vec<u8>>, Vec<u64>, Result<Split, ArchiveError>) {
        let held = held.into_iter().map(|h| (h, BTreeSet::new())).collect();
        let source = futures::stream::iter(
            archive
                .chunks(chunk)
                .map(|c| Ok::<_, bollard::errors::Error>(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        );
        into_targets(held, |mut targets| async move {
            let result = split(source, "localhost/x:1", image_id, &mut targets).await;
            (result, targets)
        })
        .await
    }

    /// Runs `send` on targets holding `held` (export entries, blobs),
    /// collecting what each is sent; returns each target's archive, its
    /// byte count and `send`'s result.
    pub(in crate::load) async fn into_targets<T, F, Fut>(
        held: Vec<(BTreeMap<String, String>, BTreeSet<String>)>,
        send: F,
    ) -> (Vec<Vec<u8>>, Vec<u64>, T)
    where
        F: FnOnce(Vec<Target>) -> Fut,
        Fut: Future<Output = (T, Vec<Target>)>,
    {
        let (targets, receivers): (Vec<_>, Vec<_>) = held
            .into_iter()
            .map(|(held, blobs)| {
                let (tx, rx) = mpsc::channel(4);
                (Target::new(tx, held, blobs), rx)
            })
            .unzip();
        let collect = futures::future::join_all(receivers.into_iter().map(|mut rx| async move {
            let mut got = Vec::new();
            while let Some(piece) = rx.recv().await {
                got.extend_from_slice(&piece);
            }
            got
        }));
        let sending = async {
            let (result, targets) = send(targets).await;
            let sent = targets.iter().map(|t| t.sent).collect::<Vec<_>>();
            // Closing the channels ends the collection.
            drop(targets);
            (result, sent)
        };
        let ((result, sent), got) = tokio::join!(sending, collect);
        (got, sent, result)
    }

    fn names(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut read = tar::Archive::new(archive);
        read.entries()
            .expect("entries")
            .map(|e| {
                let mut e = e.expect("entry");
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut bytes).expect("read");
                (e.path().expect("path").display().to_string(), bytes)
            })
            .collect()
    }

    #[tokio::test]
    async fn a_node_gets_only_the_layers_it_does_not_hold_and_a_manifest_naming_all() {
        let base = vec![7u8; 5000];
        let top = b"changed top".to_vec();
        let (archive, image_id, diff_ids) =
            saved(&[("aaaa1111aaaa1111aaaa", base.clone()), ("bbbb2222bbbb2222bbbb", top.clone())]);
        let held = BTreeMap::from([("aaaa1111aaaa1111".to_owned(), short_digest(&diff_ids[0]))]);
        for chunk in [1, 7, 512, 100_000] {
            let (got, sent, result) = run(&archive, &image_id, chunk, vec![held.clone(), BTreeMap::new()]).await;
            let split = result.expect("split");
            assert_eq!(split.blobs, diff_ids);
            assert_eq!(
                split.layers.expect("a layer map").label().expect("label"),
                format!(
                    "aaaa1111aaaa1111:{}+bbbb2222bbbb2222:{}",
                    short_digest(&diff_ids[0]),
                    short_digest(&diff_ids[1])
                )
            );
            let warm = names(&got[0]);
            let cold = names(&got[1]);
            assert!(warm.iter().all(|(_, bytes)| bytes != &base), "chunk {chunk}: the held layer was sent");
            assert!(warm.iter().any(|(_, bytes)| bytes == &top));
            assert!(cold.iter().any(|(_, bytes)| bytes == &base) && cold.iter().any(|(_, bytes)| bytes == &top));
            assert_eq!(sent[0], got[0].len() as u64);
            // The warm node is spared exactly the base layer's entry: header, data, padding.
            assert_eq!(sent[1] - sent[0], 512 + 5120, "{sent:?}");
            let index = warm.iter().find(|(p, _)| p == "index.json").expect("index.json");
            let index: serde_json::Value = serde_json::from_slice(&index.1).expect("json");
            assert_eq!(index["manifests"][0]["annotations"]["io.containerd.image.name"], "localhost/x:1");
            let manifest_digest =
                index["manifests"][0]["digest"].as_str().expect("digest").trim_start_matches("sha256:").to_owned();
            let manifest = warm.iter().find(|(p, _)| p.ends_with(&manifest_digest)).expect("manifest blob");
            let manifest: serde_json::Value = serde_json::from_slice(&manifest.1).expect("json");
            assert_eq!(manifest["config"]["digest"], image_id.as_str());
            assert_eq!(manifest["layers"][0]["digest"], diff_ids[0].as_str());
            assert_eq!(manifest["layers"][0]["size"], 5000);
            assert_eq!(manifest["layers"][1]["digest"], diff_ids[1].as_str());
        }
    }

    #[tokio::test]
    async fn a_label_that_disagrees_with_the_export_is_an_error() {
        let (archive, image_id, _) = saved(&[("aaaa1111aaaa1111aaaa", vec![1u8; 600])]);
        let held = BTreeMap::from([("aaaa1111aaaa1111".to_owned(), "0123456789abcdef".to_owned())]);
        let (_, _, result) = run(&archive, &image_id, 4096, vec![held]).await;
        assert!(matches!(result, Err(ArchiveError::Mislabelled { .. })), "{result:?}");
    }

    #[tokio::test]
    async fn an_export_of_another_image_or_a_truncated_one_is_refused() {
        let (archive, image_id, _) = saved(&[("aaaa1111aaaa1111aaaa", vec![1u8; 600])]);
        let (_, _, result) = run(&archive, "sha256:other", 4096, vec![BTreeMap::new()]).await;
        assert!(
            matches!(&result, Err(ArchiveError::Format { problem, .. }) if problem.contains("digest")),
            "{result:?}"
        );
        let (_, _, result) = run(&archive[..1536], &image_id, 4096, vec![BTreeMap::new()]).await;
        assert!(matches!(&result, Err(ArchiveError::Format { .. })), "{result:?}");
    }

    /// An OCI layout as Docker 25 and newer export it: blobs in digest
    /// order, then `index.json`, `manifest.json` and `oci-layout`. With
    /// `compressed`, the layers are stored as given under a gzip media type
    /// and the image id is the manifest's digest (the containerd image
    /// store); else they are tars and the id is the config's (classic).
    /// Returns the archive, the image id, the manifest and the layers' digests.
    fn oci_export(layers: &[Vec<u8>], compressed: bool) -> (Vec<u8>, String, Vec<u8>, Vec<String>) {
        let digest = |b: &[u8]| crate::load::oci::digest_of(b);
        let digests: Vec<String> = layers.iter().map(|l| digest(l)).collect();
        let config = serde_json::json!({ "architecture": "amd64", "os": "linux", "rootfs": { "type": "layers", "diff_ids": digests } })
            .to_string()
            .into_bytes();
        let media = if compressed { "application/vnd.oci.image.layer.v1.tar+gzip" } else { LAYER_TYPE };
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": { "mediaType": CONFIG_TYPE, "digest": digest(&config), "size": config.len() },
            "layers": layers.iter().zip(&digests).map(|(l, d)| serde_json::json!({ "mediaType": media, "digest": d, "size": l.len() })).collect::<Vec<_>>(),
            // What makes an engine's manifest its own.
            "annotations": { "org.example.engine": "written by the engine" },
        })
        .to_string()
        .into_bytes();
        let index = serde_json::json!({ "schemaVersion": 2, "manifests": [{ "mediaType": MANIFEST_TYPE, "digest": digest(&manifest), "size": manifest.len() }] });
        let mut blobs: Vec<(String, Vec<u8>)> = layers
            .iter()
            .cloned()
            .chain([config.clone(), manifest.clone()])
            .map(|b| (blob_path(&digest(&b)), b))
            .collect();
        blobs.sort();
        blobs.push(("index.json".to_owned(), index.to_string().into_bytes()));
        blobs.push(("manifest.json".to_owned(), b"[]".to_vec()));
        blobs.push(("oci-layout".to_owned(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()));
        let image_id = if compressed { digest(&manifest) } else { digest(&config) };
        (tar_of(blobs), image_id, manifest, digests)
    }

    fn tar_of(entries: Vec<(String, Vec<u8>)>) -> Vec<u8> {
        let mut archive = tar::Builder::new(Vec::new());
        for (path, bytes) in entries {
            let mut header = tar::Header::new_ustar();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            archive.append_data(&mut header, path, bytes.as_slice()).expect("append");
        }
        archive.into_inner().expect("archive")
    }

    async fn run_oci(
        archive: &[u8],
        image_id: &str,
        blobs: Vec<BTreeSet<String>>,
    ) -> (Vec<Vec<u8>>, Result<Split, ArchiveError>) {
        let source = futures::stream::iter(
            archive
                .chunks(1000)
                .map(|c| Ok::<_, bollard::errors::Error>(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        );
        let held = blobs.into_iter().map(|b| (BTreeMap::new(), b)).collect();
        let (got, _, result) = into_targets(held, |mut targets| async move {
            let result = split(source, "localhost/x:1", image_id, &mut targets).await;
            (result, targets)
        })
        .await;
        (got, result)
    }

    #[tokio::test]
    async fn an_oci_export_of_the_containerd_store_gives_nodes_the_engines_manifest_and_only_the_blobs_they_lack() {
        // Large enough to pass through as it streams, not kept.
        let base: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let top = b"small top layer".to_vec();
        let (archive, image_id, manifest, digests) = oci_export(&[base.clone(), top.clone()], true);
        let warm = BTreeSet::from([short_digest(&digests[0])]);
        let (got, result) = run_oci(&archive, &image_id, vec![warm, BTreeSet::new()]).await;
        let split = result.expect("split");
        assert_eq!(split.manifest, image_id, "the node holds the engine's manifest digest");
        assert_eq!(split.blobs, digests);
        let (warm, cold) = (names(&got[0]), names(&got[1]));
        assert!(!warm.iter().any(|(_, b)| b == &base), "the held layer was sent");
        assert!(warm.iter().any(|(p, b)| *p == blob_path(&digests[1]) && b == &top));
        assert!(cold.iter().any(|(p, b)| *p == blob_path(&digests[0]) && b == &base));
        assert!(warm.iter().any(|(_, b)| b == &manifest));
        let index = warm.iter().find(|(p, _)| p == "index.json").expect("index.json");
        let index: serde_json::Value = serde_json::from_slice(&index.1).expect("json");
        assert_eq!(index["manifests"][0]["digest"], image_id.as_str());
        assert_eq!(index["manifests"][0]["annotations"]["io.containerd.image.name"], "localhost/x:1");
    }

    #[tokio::test]
    async fn an_oci_export_whose_id_is_the_config_gets_the_manifest_the_store_path_writes() {
        let layers = [vec![3u8; 70_000], b"top".to_vec()];
        let (archive, image_id, engines, digests) = oci_export(&layers, false);
        let (got, result) = run_oci(&archive, &image_id, vec![BTreeSet::new()]).await;
        let split = result.expect("split");
        let config = names(&got[0]).into_iter().find(|(p, _)| *p == blob_path(&image_id)).expect("config").1;
        let sizes: Vec<(&str, u64)> =
            digests.iter().map(String::as_str).zip(layers.iter().map(|l| l.len() as u64)).collect();
        let ours = oci_manifest(&config, &sizes);
        assert_eq!(split.manifest, crate::load::oci::digest_of(&ours));
        assert_ne!(ours, engines);
    }

    #[tokio::test]
    async fn an_export_in_an_unknown_layout_names_its_entries_and_sends_nothing() {
        let archive = tar_of(vec![
            ("layers/0.bin".to_owned(), vec![1u8; 3000]),
            ("image.yaml".to_owned(), b"kind: image".to_vec()),
        ]);
        let (got, result) = run_oci(&archive, "sha256:abc", vec![BTreeSet::new()]).await;
        match result {
            Err(error @ ArchiveError::Layout { .. }) => {
                let message = error.to_string();
                assert!(message.contains("image.yaml, layers/"), "{message}");
                assert!(message.contains("E2E_INFRA_REGISTRY"), "{message}");
            }
            other => panic!("expected a layout error: {other:?}"),
        }
        assert!(got[0].is_empty(), "a node was sent {} bytes", got[0].len());
    }

    #[test]
    fn layer_maps_keep_only_held_layers_of_the_image_and_refuse_long_labels() {
        let mut map = LayerMap::default();
        map.add_label("aaaa:1111+bbbb:2222+bad");
        let held = BTreeSet::from(["1111".to_owned(), "3333".to_owned()]);
        let image = ["sha256:1111ffff".to_owned(), "sha256:2222ffff".to_owned()];
        // Short digests are SHORT hex digits; these test the matching only.
        let spared = map.held_entries(&image.map(|d| d.replace("ffff", "")), &held);
        assert_eq!(spared, BTreeMap::from([("aaaa".to_owned(), "1111".to_owned())]));
        let mut long = LayerMap::default();
        long.add_label(&(0..200).map(|i| format!("{i:016}:{i:016}")).collect::<Vec<_>>().join("+"));
        assert_eq!(long.label(), None);
    }
}
