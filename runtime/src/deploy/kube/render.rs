//! Rendering the catalog's manifests for one plan, and the preflight that
//! refuses any container image the plan does not know.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::KubeError;
use crate::labels;
use crate::plan::{Origin, Plan};

/// How a manifest names the image of a component: `${image:<component>}`.
const PLACEHOLDER_START: &str = "${image:";

/// Kinds that live outside namespaces: a run's objects must all be inside
/// its own namespace, so that deleting it removes everything.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "Node",
    "PersistentVolume",
    "StorageClass",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "APIService",
    "IngressClass",
    "RuntimeClass",
];

/// One manifest file rendered for a plan.
#[derive(Debug, Clone)]
pub struct RenderedManifest {
    /// The component whose catalog entry lists it.
    pub component: String,
    /// The file.
    pub file: PathBuf,
    /// Its objects, in file order, with images bound, namespace and labels set.
    pub objects: Vec<Value>,
}

/// A container image the preflight refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageProblem {
    /// The manifest file.
    pub file: PathBuf,
    /// `Kind/name` of the object.
    pub object: String,
    /// The container.
    pub container: String,
    /// The image as rendered.
    pub image: String,
    /// Why it is refused.
    pub reason: String,
}

impl fmt::Display for ImageProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} container `{}` uses image `{}`: {}",
            self.file.display(),
            self.object,
            self.container,
            self.image,
            self.reason
        )
    }
}

/// Renders every manifest of the plan's components, in dependency order.
///
/// `${image:<component>}` becomes the plan's reference of that component,
/// `imagePullPolicy` is set from the plan, every object goes into the plan's
/// namespace and carries the run's labels.
///
/// # Errors
/// [`KubeError::ReadManifest`], [`KubeError::ParseManifest`] or
/// [`KubeError::InvalidObject`] for a manifest that cannot be used;
/// [`KubeError::Preflight`] when a container image is neither planned nor a
/// declared borrowed image (a hard-coded or stale tag, an unknown
/// `${image:...}`), listing every such image and the planned references.
pub fn render(plan: &Plan) -> Result<Vec<RenderedManifest>, KubeError> {
    let mut rendered = Vec::new();
    let mut problems = Vec::new();
    for component in plan.components() {
        let Some(kubernetes) = &component.spec.kubernetes else { continue };
        let labels = kube_labels(labels::for_component(plan, &component.name));
        for file in &kubernetes.manifests {
            let text = std::fs::read_to_string(file)
                .map_err(|source| KubeError::ReadManifest { file: file.clone(), source })?;
            let text = bind_images(plan, &text);
            let mut objects = Vec::new();
            for document in serde_yaml::Deserializer::from_str(&text) {
                let value = Value::deserialize(document)
                    .map_err(|source| KubeError::ParseManifest { file: file.clone(), source })?;
                if value.is_null() {
                    continue;
                }
                let mut object = checked_object(file, value)?;
                set_metadata(&mut object, plan.namespace().as_str(), &labels);
                problems.extend(bind_pull_policies(plan, file, &mut object));
                objects.push(Value::Object(object));
            }
            rendered.push(RenderedManifest { component: component.name.clone(), file: file.clone(), objects });
        }
    }
    if !problems.is_empty() {
        let planned = plan
            .components()
            .iter()
            .map(|c| match c.origin {
                Origin::Built => format!("{} (${{image:{}}})", c.image, c.name),
                Origin::Borrowed => format!("{} (borrowed, ${{image:{}}})", c.image, c.name),
            })
            .collect();
        return Err(KubeError::Preflight { problems, planned });
    }
    Ok(rendered)
}

/// Replaces `${image:<component>}` by the plan's reference; unknown names are
/// left for the preflight to report.
fn bind_images(plan: &Plan, text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(PLACEHOLDER_START) {
        let after = &rest[start + PLACEHOLDER_START.len()..];
        let Some(end) = after.find('}') else { break };
        out.push_str(&rest[..start]);
        match plan.image(&after[..end]) {
            Some(image) => out.push_str(&image.to_string()),
            None => out.push_str(&rest[start..start + PLACEHOLDER_START.len() + end + 1]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

fn checked_object(file: &Path, value: Value) -> Result<Map<String, Value>, KubeError> {
    let invalid = |problem: String| KubeError::InvalidObject { file: file.to_owned(), problem };
    let Value::Object(object) = value else {
        return Err(invalid("a document is not a mapping".to_owned()));
    };
    let text = |key: &str| object.get(key).and_then(Value::as_str).filter(|s| !s.is_empty());
    let kind = text("kind").ok_or_else(|| invalid("an object has no `kind`".to_owned()))?;
    if text("apiVersion").is_none() {
        return Err(invalid(format!("a {kind} has no `apiVersion`")));
    }
    let name = object.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str);
    let Some(name) = name else {
        return Err(invalid(format!("a {kind} has no `metadata.name` (generateName cannot be applied)")));
    };
    if CLUSTER_SCOPED.contains(&kind) {
        return Err(invalid(format!(
            "{kind}/{name} is cluster-scoped; a run's objects must live in its namespace so that deleting it removes them"
        )));
    }
    Ok(object)
}

fn set_metadata(object: &mut Map<String, Value>, namespace: &str, labels: &KubeLabels) {
    let metadata = object.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(metadata) = metadata else { return };
    metadata.insert("namespace".to_owned(), Value::String(namespace.to_owned()));
    for (key, values) in [("labels", &labels.labels), ("annotations", &labels.annotations)] {
        let entry = metadata.entry(key).or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(map) = entry {
            for (k, v) in values {
                map.insert(k.clone(), Value::String(v.clone()));
            }
        }
    }
}

/// The pod spec inside a workload object, if it has one.
fn pod_spec_mut(object: &mut Map<String, Value>) -> Option<&mut Map<String, Value>> {
    let kind = object.get("kind").and_then(Value::as_str)?.to_owned();
    let spec = object.get_mut("spec")?;
    let pod_spec = match kind.as_str() {
        "Pod" => spec,
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" | "ReplicationController" => {
            spec.get_mut("template")?.get_mut("spec")?
        }
        "CronJob" => spec.get_mut("jobTemplate")?.get_mut("spec")?.get_mut("template")?.get_mut("spec")?,
        _ => return None,
    };
    pod_spec.as_object_mut()
}

/// Sets `imagePullPolicy` on every container whose image is planned, and
/// returns the containers whose image is not.
fn bind_pull_policies(plan: &Plan, file: &Path, object: &mut Map<String, Value>) -> Vec<ImageProblem> {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
    let name = object.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or_default();
    let described = format!("{kind}/{name}");
    let mut problems = Vec::new();
    let Some(pod_spec) = pod_spec_mut(object) else { return problems };
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        let Some(Value::Array(containers)) = pod_spec.get_mut(list) else { continue };
        for container in containers.iter_mut().filter_map(Value::as_object_mut) {
            let container_name = container.get("name").and_then(Value::as_str).unwrap_or("?").to_owned();
            let image = container.get("image").and_then(Value::as_str).unwrap_or_default().to_owned();
            match plan.components().iter().find(|c| c.image.matches(&image)) {
                Some(component) => {
                    container
                        .insert("imagePullPolicy".to_owned(), Value::String(component.pull_policy.as_str().to_owned()));
                }
                None => problems.push(ImageProblem {
                    file: file.to_owned(),
                    object: described.clone(),
                    container: container_name,
                    reason: refusal(plan, &image),
                    image,
                }),
            }
        }
    }
    problems
}

fn refusal(plan: &Plan, image: &str) -> String {
    if image.is_empty() {
        return "the container has no image; write `image: ${image:<component>}`".to_owned();
    }
    if let Some(rest) = image.strip_prefix(PLACEHOLDER_START) {
        let name = rest.trim_end_matches('}');
        let known: Vec<&str> = plan.components().iter().map(|c| c.name.as_str()).collect();
        return format!(
            "`{name}` is not a component of this plan (components: {}); add it to `needs` or fix the name",
            known.join(", ")
        );
    }
    "it is neither a reference planned for this run nor a borrowed image of the catalog; write `${image:<component>}` instead of a literal reference".to_owned()
}

/// Labels legal in Kubernetes, with the full values kept as annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct KubeLabels {
    pub(super) labels: BTreeMap<String, String>,
    pub(super) annotations: BTreeMap<String, String>,
}

/// Kubernetes label values are at most 63 characters of `[A-Za-z0-9._-]`,
/// alphanumeric at both ends; run ids and launcher labels may be neither.
/// An illegal value becomes `h-<hash>` and keeps its full text as an
/// annotation under the same key.
pub(super) fn kube_labels(raw: HashMap<String, String>) -> KubeLabels {
    let mut out = KubeLabels::default();
    for (key, value) in raw {
        out.labels.insert(key.clone(), label_value(&value));
        out.annotations.insert(key, value);
    }
    out
}

/// `value` if it is a legal label value, else a stable legal stand-in.
pub fn label_value(value: &str) -> String {
    let legal = value.len() <= 63
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && (value.is_empty()
            || (value.starts_with(|c: char| c.is_ascii_alphanumeric())
                && value.ends_with(|c: char| c.is_ascii_alphanumeric())));
    if legal {
        value.to_owned()
    } else {
        format!("h-{}", &hex::encode(Sha256::digest(value))[..32])
    }
}
