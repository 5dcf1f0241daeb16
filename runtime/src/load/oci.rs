//! The image an engine names by an id, found among OCI blobs: the blobs of
//! an OCI-layout export (Docker 25 and newer) or of a containerd content
//! store (Docker 29's containerd image store).
//!
//! An image id is the digest of one of three documents. On the containerd
//! image store it is the image's manifest or, for a multi-platform image,
//! its index; this module then picks the manifest of the nodes' platform.
//! On the overlay2 store it is the config: the export's index names the
//! manifest that points at it.

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::archive::ImageConfig;

/// The platform whose manifest is picked from an index: the one of this
/// machine, where the nodes of a local cluster run.
fn node_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    ("linux", arch)
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// One layer as the manifest names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layer {
    /// The blob's digest: the diff id when uncompressed, else the digest of
    /// the compressed bytes.
    pub digest: String,
    /// The blob's size.
    pub size: u64,
    /// Whether the blob is the uncompressed tar.
    pub uncompressed: bool,
}

/// An image resolved from its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    /// The manifest, as the engine keeps it.
    pub manifest: Vec<u8>,
    /// Its media type, for the descriptor that names it.
    pub manifest_type: String,
    /// The config.
    pub config: Vec<u8>,
    /// The layers, bottom first.
    pub layers: Vec<Layer>,
    /// The layers' diff ids, from the config.
    pub diff_ids: Vec<String>,
    /// Whether the image id is the config's digest (the overlay2 store):
    /// the engine then has no manifest of its own, only what its export
    /// writes.
    pub id_is_config: bool,
}

/// What a document is, from the fields it has.
#[derive(Deserialize)]
struct Shape {
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    layers: Option<serde_json::Value>,
    #[serde(default)]
    rootfs: Option<serde_json::Value>,
}

/// Finds image `image_id` among the blobs `blob` gives (by digest; `None`
/// when absent), starting from `roots` (an export's `index.json` entries)
/// when the id is a config's.
///
/// # Errors
/// What is missing or unreadable, as a sentence for the caller's error.
pub(crate) fn resolve(
    image_id: &str,
    roots: &[Descriptor],
    blob: &dyn Fn(&str) -> Option<Vec<u8>>,
) -> Result<Resolved, String> {
    let named = blob(image_id).ok_or_else(|| format!("it lacks the blob {image_id}"))?;
    let shape: Shape = serde_json::from_slice(&named).map_err(|e| format!("the blob {image_id} is not JSON: {e}"))?;
    let (manifest, id_is_config) = if shape.manifests.is_some() {
        (pick_platform(image_id, &named, blob)?, false)
    } else if shape.layers.is_some() {
        (named, false)
    } else if shape.rootfs.is_some() {
        (manifest_of_config(image_id, roots, blob)?, true)
    } else {
        return Err(format!("the blob {image_id} is neither an index, a manifest nor a config"));
    };
    let manifest_digest = digest_of(&manifest);
    let parsed = ImageManifest::from_reader(manifest.as_slice())
        .map_err(|e| format!("the manifest {manifest_digest} is unreadable: {e}"))?;
    let config_digest = parsed.config().digest().to_string();
    let config = blob(&config_digest).ok_or_else(|| format!("it lacks the config {config_digest}"))?;
    if digest_of(&config) != config_digest {
        return Err(format!("the config {config_digest} has another digest"));
    }
    let diff_ids = serde_json::from_slice::<ImageConfig>(&config)
        .map_err(|e| format!("the config {config_digest} is unreadable: {e}"))?
        .rootfs
        .diff_ids;
    if diff_ids.len() != parsed.layers().len() {
        return Err(format!(
            "the manifest {manifest_digest} lists {} layers, its config {}",
            parsed.layers().len(),
            diff_ids.len()
        ));
    }
    let layers = parsed
        .layers()
        .iter()
        .map(|layer| Layer {
            digest: layer.digest().to_string(),
            size: layer.size(),
            uncompressed: is_uncompressed(layer.media_type()),
        })
        .collect();
    let manifest_type =
        parsed.media_type().as_ref().map_or_else(|| MediaType::ImageManifest.to_string(), ToString::to_string);
    Ok(Resolved { manifest, manifest_type, config, layers, diff_ids, id_is_config })
}

/// Whether a layer of this media type is the plain tar.
fn is_uncompressed(media_type: &MediaType) -> bool {
    match media_type {
        MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => true,
        MediaType::Other(other) => other == "application/vnd.docker.image.rootfs.diff.tar",
        _ => false,
    }
}

/// The manifest of the nodes' platform in the index `index`.
fn pick_platform(image_id: &str, index: &[u8], blob: &dyn Fn(&str) -> Option<Vec<u8>>) -> Result<Vec<u8>, String> {
    let parsed = ImageIndex::from_reader(index).map_err(|e| format!("the index {image_id} is unreadable: {e}"))?;
    let (os, arch) = node_platform();
    let chosen = parsed
        .manifests()
        .iter()
        .find(|d| {
            d.platform().as_ref().is_some_and(|p| p.os().to_string() == os && p.architecture().to_string() == arch)
        })
        .ok_or_else(|| {
            let found: Vec<String> = parsed
                .manifests()
                .iter()
                .map(|d| {
                    d.platform()
                        .as_ref()
                        .map_or_else(|| "no platform".to_owned(), |p| format!("{}/{}", p.os(), p.architecture()))
                })
                .collect();
            format!("the index {image_id} has no manifest for {os}/{arch} (it has: {})", found.join(", "))
        })?;
    let digest = chosen.digest().to_string();
    let manifest = blob(&digest).ok_or_else(|| format!("it lacks the {os}/{arch} manifest {digest}"))?;
    if digest_of(&manifest) != digest {
        return Err(format!("the manifest {digest} has another digest"));
    }
    Ok(manifest)
}

/// The manifest, reached from `roots` through indexes, whose config is
/// `config_digest`.
fn manifest_of_config(
    config_digest: &str,
    roots: &[Descriptor],
    blob: &dyn Fn(&str) -> Option<Vec<u8>>,
) -> Result<Vec<u8>, String> {
    let mut queue: Vec<String> = roots.iter().map(|d| d.digest().to_string()).collect();
    let mut seen = std::collections::BTreeSet::new();
    while let Some(digest) = queue.pop() {
        if !seen.insert(digest.clone()) {
            continue;
        }
        let Some(bytes) = blob(&digest) else { continue };
        if let Ok(index) = ImageIndex::from_reader(bytes.as_slice()) {
            queue.extend(index.manifests().iter().map(|d| d.digest().to_string()));
        } else if let Ok(manifest) = ImageManifest::from_reader(bytes.as_slice()) {
            if manifest.config().digest().to_string() == config_digest {
                return Ok(bytes);
            }
        }
    }
    Err(format!("no manifest it holds has the config {config_digest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(diff_ids: &[&str]) -> Vec<u8> {
        serde_json::json!({ "architecture": "amd64", "os": "linux", "rootfs": { "type": "layers", "diff_ids": diff_ids } })
            .to_string()
            .into_bytes()
    }

    fn manifest(config: &[u8], layers: &[(&str, &str, u64)]) -> Vec<u8> {
        let layers: Vec<serde_json::Value> = layers
            .iter()
            .map(|(media, digest, size)| serde_json::json!({ "mediaType": media, "digest": digest, "size": size }))
            .collect();
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_of(config), "size": config.len() },
            "layers": layers,
        })
        .to_string()
        .into_bytes()
    }

    /// A manifest's bytes and its platform (os, architecture), if it has one.
    type Entry<'a> = (&'a [u8], Option<(&'a str, &'a str)>);

    fn index(entries: &[Entry<'_>]) -> Vec<u8> {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .map(|(bytes, platform)| {
                let mut d = serde_json::json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest_of(bytes), "size": bytes.len(),
                });
                if let Some((os, arch)) = platform {
                    d["platform"] = serde_json::json!({ "os": os, "architecture": arch });
                }
                d
            })
            .collect();
        serde_json::json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests })
            .to_string()
            .into_bytes()
    }

    fn store(blobs: &[&[u8]]) -> impl Fn(&str) -> Option<Vec<u8>> {
        let map: std::collections::HashMap<String, Vec<u8>> =
            blobs.iter().map(|b| (digest_of(b), b.to_vec())).collect();
        move |digest: &str| map.get(digest).cloned()
    }

    /// A digest of the right shape, for content never read.
    fn fake(name: &str) -> String {
        digest_of(name.as_bytes())
    }

    const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

    #[test]
    fn a_manifest_id_gives_that_manifest_with_its_compressed_layers() {
        let config = config(&[&fake("d1"), &fake("d2")]);
        let manifest = manifest(&config, &[(GZIP, &fake("c1"), 10), (ZSTD, &fake("c2"), 20)]);
        let blobs = store(&[&config, &manifest]);
        let resolved = resolve(&digest_of(&manifest), &[], &blobs).expect("resolved");
        assert_eq!(resolved.manifest, manifest);
        assert!(!resolved.id_is_config);
        assert_eq!(resolved.layers.iter().map(|l| l.uncompressed).collect::<Vec<_>>(), [false, false]);
        assert_eq!(resolved.diff_ids, [fake("d1"), fake("d2")]);
    }

    #[test]
    fn an_index_id_gives_the_manifest_of_the_nodes_platform() {
        let config = config(&[&fake("d1")]);
        let ours = manifest(&config, &[(GZIP, &fake("c1"), 10)]);
        let other_config =
            serde_json::json!({ "os": "linux", "architecture": "s390x", "rootfs": { "diff_ids": [&fake("x")] } })
                .to_string()
                .into_bytes();
        let other = manifest(&other_config, &[(GZIP, &fake("x1"), 10)]);
        let (os, arch) = node_platform();
        let idx = index(&[(&other, Some(("linux", "s390x"))), (&ours, Some((os, arch))), (b"{}", None)]);
        let blobs = store(&[&config, &ours, &other, &idx]);
        assert_eq!(resolve(&digest_of(&idx), &[], &blobs).expect("resolved").manifest, ours);
        let foreign = index(&[(&other, Some(("linux", "s390x")))]);
        let blobs = store(&[&other, &foreign]);
        let error = resolve(&digest_of(&foreign), &[], &blobs).expect_err("no manifest for this platform");
        assert!(error.contains("linux/s390x"), "{error}");
    }

    #[test]
    fn a_config_id_is_found_through_the_exports_index() {
        let config = config(&[&fake("d1")]);
        let manifest = manifest(&config, &[(TAR, &fake("d1"), 10)]);
        let idx = index(&[(&manifest, None)]);
        let roots = ImageIndex::from_reader(idx.as_slice()).expect("index").manifests().clone();
        let blobs = store(&[&config, &manifest]);
        let resolved = resolve(&digest_of(&config), &roots, &blobs).expect("resolved");
        assert!(resolved.id_is_config && resolved.layers[0].uncompressed);
        assert_eq!(resolved.manifest, manifest);
        let error = resolve(&digest_of(&config), &[], &blobs).expect_err("no root");
        assert!(error.contains("no manifest"), "{error}");
        let error = resolve("sha256:absent", &roots, &blobs).expect_err("absent");
        assert!(error.contains("lacks the blob sha256:absent"), "{error}");
    }
}
