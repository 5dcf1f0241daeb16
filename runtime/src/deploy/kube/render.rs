//! Rendering the catalog's manifests for one plan, and the preflight that
//! refuses any container image the plan does not know.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::KubeError;
use crate::labels::{self, StackLabels};
use crate::plan::{Namespace, Origin, Plan, PlannedComponent};

/// How a manifest names the image of a component: `${image:<component>}`.
const PLACEHOLDER_START: &str = "${image:";
/// How a manifest names the run's namespace.
const NAMESPACE_PLACEHOLDER: &str = "${namespace}";

/// The prefix of the label that marks a cluster-scoped object as used by a
/// run; see [`user_label`].
pub const USER_LABEL_PREFIX: &str = "users.e2e-infra.io/";

/// Built-in kinds that live outside namespaces, by API group (`""` is the
/// core group). The group is part of the match so that a custom resource
/// that happens to share a kind's name keeps its own scope. `Namespace` and
/// `Node` are not here: [`checked_object`] refuses them.
const CLUSTER_SCOPED: &[(&str, &str)] = &[
    ("", "PersistentVolume"),
    ("admissionregistration.k8s.io", "MutatingAdmissionPolicy"),
    ("admissionregistration.k8s.io", "MutatingAdmissionPolicyBinding"),
    ("admissionregistration.k8s.io", "MutatingWebhookConfiguration"),
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy"),
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding"),
    ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"),
    ("apiextensions.k8s.io", "CustomResourceDefinition"),
    ("apiregistration.k8s.io", "APIService"),
    ("certificates.k8s.io", "CertificateSigningRequest"),
    ("certificates.k8s.io", "ClusterTrustBundle"),
    ("flowcontrol.apiserver.k8s.io", "FlowSchema"),
    ("flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration"),
    ("networking.k8s.io", "IngressClass"),
    ("networking.k8s.io", "IPAddress"),
    ("networking.k8s.io", "ServiceCIDR"),
    ("node.k8s.io", "RuntimeClass"),
    ("rbac.authorization.k8s.io", "ClusterRole"),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
    ("resource.k8s.io", "DeviceClass"),
    ("resource.k8s.io", "ResourceSlice"),
    ("scheduling.k8s.io", "PriorityClass"),
    ("storage.k8s.io", "CSIDriver"),
    ("storage.k8s.io", "CSINode"),
    ("storage.k8s.io", "StorageClass"),
    ("storage.k8s.io", "VolumeAttachment"),
];

/// One manifest file rendered for a plan.
#[derive(Debug, Clone)]
// Fields named for what they hold carry no doc of their own.
#[allow(missing_docs)]
pub(crate) struct RenderedManifest {
    /// The component whose catalog entry lists it.
    pub component: String,
    pub file: PathBuf,
    /// Its objects, in file order, with images bound and labels set. A
    /// namespaced object has `metadata.namespace`, the run's; a
    /// cluster-scoped object has none.
    pub objects: Vec<Value>,
}

/// An image the preflight refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageProblem {
    /// The manifest file.
    pub file: PathBuf,
    /// `Kind/name` of the object.
    pub object: String,
    /// The name of the container, image volume or other holder that names
    /// the image.
    pub container: String,
    /// What [`container`](Self::container) names: `container`,
    /// `init container`, `ephemeral container`, `image volume`, or `image
    /// field` for an `image` outside a pod spec (then the holder's `name`,
    /// or the key it sits under).
    pub place: &'static str,
    /// The image as rendered.
    pub image: String,
    /// Where the image is named in the object:
    /// `spec.template.spec.containers[0].image`.
    pub field: String,
    /// Why it is refused.
    pub reason: String,
}

impl fmt::Display for ImageProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} {} `{}` uses image `{}` at `{}`: {}",
            self.file.display(),
            self.object,
            self.place,
            self.container,
            self.image,
            self.field,
            self.reason
        )
    }
}

/// The label key that marks a cluster-scoped object as used by the run
/// whose namespace is `namespace`: `users.e2e-infra.io/<namespace>`. Its
/// value is the component whose manifest holds the object.
///
/// Cluster-scoped objects are shared by the runs that apply them, so they
/// carry one such label per run instead of the run's own labels. A run's
/// namespace (`<consumer>-<8 hex>`, at most 49 characters of `[a-z0-9-]`,
/// alphanumeric at both ends) is a legal label name.
pub fn user_label(namespace: &Namespace) -> String {
    format!("{USER_LABEL_PREFIX}{namespace}")
}

/// Renders every manifest of the plan's components, in dependency order.
///
/// `${image:<component>}` becomes the plan's reference of that component and
/// `${namespace}` the plan's namespace; `imagePullPolicy` (`pullPolicy` of an
/// image volume) is set from the plan. Every namespaced object goes into the
/// plan's namespace and carries `labels`, the stack's. A cluster-scoped object (a
/// built-in cluster-scoped kind, or a custom kind whose
/// CustomResourceDefinition with `scope: Cluster` is among the plan's
/// manifests) gets no namespace and, instead of the run's labels, the
/// managed-by label and the run's `users.e2e-infra.io/<namespace>` label.
///
/// # Errors
/// [`KubeError::ReadManifest`], [`KubeError::ParseManifest`] or
/// [`KubeError::InvalidObject`] for a manifest that cannot be used (a
/// `Namespace` or `Node` object included);
/// [`KubeError::Preflight`] when an image of any pod spec, or of any other
/// field named `image`, in any kind of object, is neither planned nor a
/// declared borrowed image (a hard-coded or stale tag, an unknown
/// `${image:...}`), or an `image` field holds no reference to check,
/// listing every such image with its field's path and the planned
/// references.
pub(crate) fn render(plan: &Plan, labels: &StackLabels) -> Result<Vec<RenderedManifest>, KubeError> {
    let parsed = parse_manifests(plan)?;
    // A custom resource's scope is known only from its definition, which may
    // come from any component's manifests, including a later one.
    let custom_cluster_kinds: HashSet<(String, String)> =
        parsed.iter().flat_map(|(_, _, objects)| objects).filter_map(cluster_scoped_definition).collect();
    let mut rendered = Vec::new();
    let mut problems = Vec::new();
    for (component, file, objects) in parsed {
        let namespaced = kube_labels(labels.component(&component.name));
        let shared = shared_labels(plan, &component.name);
        let mut bound = Vec::new();
        for mut object in objects {
            if is_cluster_scoped(&object, &custom_cluster_kinds) {
                set_metadata(&mut object, None, &shared);
            } else {
                set_metadata(&mut object, Some(plan.namespace().as_str()), &namespaced);
            }
            problems.extend(bind_pull_policies(plan, file, &mut object));
            bound.push(Value::Object(object));
        }
        rendered.push(RenderedManifest { component: component.name.clone(), file: file.clone(), objects: bound });
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

/// A manifest file's checked objects, with their component.
type Parsed<'a> = (&'a PlannedComponent, &'a PathBuf, Vec<Map<String, Value>>);

/// Reads and parses every manifest of the plan, placeholders bound.
fn parse_manifests(plan: &Plan) -> Result<Vec<Parsed<'_>>, KubeError> {
    let mut parsed = Vec::new();
    for component in plan.components() {
        let Some(kubernetes) = &component.spec.kubernetes else { continue };
        for file in &kubernetes.manifests {
            let text = std::fs::read_to_string(file)
                .map_err(|source| KubeError::ReadManifest { file: file.clone(), source })?;
            let text = bind_images(plan, &text).replace(NAMESPACE_PLACEHOLDER, plan.namespace().as_str());
            let mut objects = Vec::new();
            for document in serde_yaml::Deserializer::from_str(&text) {
                let value = Value::deserialize(document)
                    .map_err(|source| KubeError::ParseManifest { file: file.clone(), source })?;
                if !value.is_null() {
                    objects.push(checked_object(file, value)?);
                }
            }
            parsed.push((component, file, objects));
        }
    }
    Ok(parsed)
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
    let Some(api_version) = text("apiVersion") else {
        return Err(invalid(format!("a {kind} has no `apiVersion`")));
    };
    let name = object.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str);
    let Some(name) = name else {
        return Err(invalid(format!("a {kind} has no `metadata.name` (generateName cannot be applied)")));
    };
    match (group_of(api_version), kind) {
        ("", "Namespace") => Err(invalid(format!(
            "Namespace/{name} cannot be applied: a run has exactly one namespace, its own, which deploy creates \
             and deletes; remove this object and write `${{namespace}}` where a manifest needs the run's namespace"
        ))),
        ("", "Node") => Err(invalid(format!(
            "Node/{name} cannot be applied: nodes belong to the cluster, not to a run; remove this object"
        ))),
        _ => Ok(object),
    }
}

/// The API group of an `apiVersion`: `apps` of `apps/v1`, `""` of `v1`.
fn group_of(api_version: &str) -> &str {
    api_version.split_once('/').map_or("", |(group, _)| group)
}

/// `(group, kind)` of the custom resources a CustomResourceDefinition with
/// `scope: Cluster` defines.
fn cluster_scoped_definition(object: &Map<String, Value>) -> Option<(String, String)> {
    let api_version = object.get("apiVersion").and_then(Value::as_str)?;
    let kind = object.get("kind").and_then(Value::as_str)?;
    if (group_of(api_version), kind) != ("apiextensions.k8s.io", "CustomResourceDefinition") {
        return None;
    }
    let spec = object.get("spec")?;
    if spec.get("scope").and_then(Value::as_str) != Some("Cluster") {
        return None;
    }
    let group = spec.get("group").and_then(Value::as_str)?;
    let kind = spec.get("names").and_then(|n| n.get("kind")).and_then(Value::as_str)?;
    Some((group.to_owned(), kind.to_owned()))
}

fn is_cluster_scoped(object: &Map<String, Value>, custom: &HashSet<(String, String)>) -> bool {
    let text = |key: &str| object.get(key).and_then(Value::as_str).unwrap_or_default();
    let (group, kind) = (group_of(text("apiVersion")), text("kind"));
    CLUSTER_SCOPED.contains(&(group, kind)) || custom.contains(&(group.to_owned(), kind.to_owned()))
}

/// Labels of a cluster-scoped object. The run's own labels would flip each
/// time another run applies the same object, so it carries only the
/// managed-by label and one [`user_label`] per run that uses it.
fn shared_labels(plan: &Plan, component: &str) -> KubeLabels {
    let labels = BTreeMap::from([
        (labels::MANAGED_BY.to_owned(), labels::MANAGED_BY_VALUE.to_owned()),
        (user_label(plan.namespace()), label_value(component)),
    ]);
    KubeLabels { labels, annotations: BTreeMap::new() }
}

/// Puts the object into `namespace`, or out of any namespace when `None`
/// (deploy tells cluster-scoped objects by the absence of
/// `metadata.namespace`), and adds `labels`.
fn set_metadata(object: &mut Map<String, Value>, namespace: Option<&str>, labels: &KubeLabels) {
    let metadata = object.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(metadata) = metadata else { return };
    match namespace {
        Some(namespace) => metadata.insert("namespace".to_owned(), Value::String(namespace.to_owned())),
        None => metadata.remove("namespace"),
    };
    for (key, values) in [("labels", &labels.labels), ("annotations", &labels.annotations)] {
        if values.is_empty() {
            continue;
        }
        let entry = metadata.entry(key).or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(map) = entry {
            for (k, v) in values {
                map.insert(k.clone(), Value::String(v.clone()));
            }
        }
    }
}

/// What [`ImageProblem::place`] calls an image volume.
const IMAGE_VOLUME: &str = "image volume";
/// What [`ImageProblem::place`] calls an `image` field outside a pod spec
/// (an Argo template's `container` or `script`, a Tekton step or sidecar).
const IMAGE_FIELD: &str = "image field";

/// The container lists of a pod spec, and what their entries are called.
const CONTAINER_LISTS: [(&str, &str); 3] =
    [("initContainers", "init container"), ("containers", "container"), ("ephemeralContainers", "ephemeral container")];

/// Kinds whose fields name no image to run, though a field may be called
/// `image`: a definition's schema, configuration data.
const IMAGELESS_KINDS: &[(&str, &str)] =
    &[("apiextensions.k8s.io", "CustomResourceDefinition"), ("", "ConfigMap"), ("", "Secret")];

/// An image the walk found that the plan does not know.
struct Refused {
    place: &'static str,
    holder: String,
    field: String,
    image: String,
    reason: Option<String>,
}

/// Sets the pull policy of every planned image in every pod spec of the
/// object (containers and image volumes), checks every other field named
/// `image` wherever it is, and returns the images that are not planned and
/// the `image` fields that cannot be checked. Kinds are not listed because
/// custom resources (Argo Workflows, Tekton Tasks, operators' own kinds)
/// name images wherever their authors chose; only `metadata` and
/// [`IMAGELESS_KINDS`] are not searched.
fn bind_pull_policies(plan: &Plan, file: &Path, object: &mut Map<String, Value>) -> Vec<ImageProblem> {
    let text = |value: Option<&Value>| value.and_then(Value::as_str).unwrap_or_default().to_owned();
    let kind = text(object.get("kind"));
    let group = text(object.get("apiVersion")).rsplit_once('/').map(|(group, _)| group.to_owned()).unwrap_or_default();
    if IMAGELESS_KINDS.contains(&(group.as_str(), kind.as_str())) {
        return Vec::new();
    }
    let described = format!("{kind}/{}", text(object.get("metadata").and_then(|m| m.get("name"))));
    let mut refused = Vec::new();
    for (key, value) in object.iter_mut().filter(|(key, _)| *key != "metadata") {
        walk_images(plan, value, key.clone(), &mut refused);
    }
    refused
        .into_iter()
        .map(|r| ImageProblem {
            file: file.to_owned(),
            object: described.clone(),
            container: r.holder,
            place: r.place,
            reason: r.reason.unwrap_or_else(|| refusal(plan, r.place, &r.image)),
            image: r.image,
            field: r.field,
        })
        .collect()
}

/// The `name` of a map that holds an image, else `fallback`.
fn holder_name(map: &Map<String, Value>, fallback: &str) -> String {
    map.get("name").and_then(Value::as_str).unwrap_or(fallback).to_owned()
}

/// Checks every image below `value`, which sits at `path` in its object.
/// A pod spec (a mapping with a container list) gets the plan's pull
/// policies; any other mapping's `image` field is checked as it stands.
fn walk_images(plan: &Plan, value: &mut Value, path: String, refused: &mut Vec<Refused>) {
    match value {
        Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                walk_images(plan, item, format!("{path}[{index}]"), refused);
            }
        }
        Value::Object(map) => {
            let pod_spec = CONTAINER_LISTS.iter().any(|(list, _)| matches!(map.get(*list), Some(Value::Array(_))));
            if pod_spec {
                bind_pod_spec(plan, map, &path, refused);
            }
            let holder = holder_name(map, path.rsplit('.').next().unwrap_or_default());
            for (key, child) in map.iter_mut() {
                let handled = pod_spec && (key == "volumes" || CONTAINER_LISTS.iter().any(|(list, _)| list == key));
                if handled || key == "metadata" {
                    continue;
                }
                let child_path = format!("{path}.{key}");
                if key == "image" {
                    check_image_field(plan, child, &holder, child_path, refused);
                } else {
                    walk_images(plan, child, child_path, refused);
                }
            }
        }
        _ => {}
    }
}

/// Binds the pull policy of a pod spec's containers and image volumes.
fn bind_pod_spec(plan: &Plan, pod_spec: &mut Map<String, Value>, path: &str, refused: &mut Vec<Refused>) {
    for (list, place) in CONTAINER_LISTS {
        let Some(Value::Array(containers)) = pod_spec.get_mut(list) else { continue };
        for (index, item) in containers.iter_mut().enumerate() {
            let Some(container) = item.as_object_mut() else { continue };
            if let Err(image) = bind_pull_policy(plan, container, "image", "imagePullPolicy") {
                let field = format!("{path}.{list}[{index}].image");
                refused.push(Refused { place, holder: holder_name(container, "?"), field, image, reason: None });
            }
        }
    }
    let Some(Value::Array(volumes)) = pod_spec.get_mut("volumes") else { return };
    for (index, volume) in volumes.iter_mut().enumerate() {
        let Some(volume) = volume.as_object_mut() else { continue };
        let Some(Value::Object(source)) = volume.get_mut("image") else { continue };
        if let Err(image) = bind_pull_policy(plan, source, "reference", "pullPolicy") {
            let field = format!("{path}.volumes[{index}].image.reference");
            refused.push(Refused { place: IMAGE_VOLUME, holder: holder_name(volume, "?"), field, image, reason: None });
        }
    }
}

/// Checks an `image` field outside a pod spec: a string (or an image
/// source's `reference`) must be a planned or borrowed image; any other
/// value cannot be checked, so it is refused.
fn check_image_field(plan: &Plan, value: &Value, holder: &str, field: String, refused: &mut Vec<Refused>) {
    let (image, field) = match value {
        Value::String(image) => (image.as_str(), field),
        Value::Object(source) if matches!(source.get("reference"), Some(Value::String(_))) => {
            (source.get("reference").and_then(Value::as_str).unwrap_or_default(), format!("{field}.reference"))
        }
        other => {
            let reason = format!(
                "`{field}` holds {}, not an image reference, so the preflight cannot check what it runs; write `image: ${{image:<component>}}`",
                json_kind(other)
            );
            let image = other.to_string().chars().take(80).collect();
            refused.push(Refused { place: IMAGE_FIELD, holder: holder.to_owned(), field, image, reason: Some(reason) });
            return;
        }
    };
    if !plan.components().iter().any(|c| c.image.matches(image)) {
        refused.push(Refused {
            place: IMAGE_FIELD,
            holder: holder.to_owned(),
            field,
            image: image.to_owned(),
            reason: None,
        });
    }
}

/// What a JSON value is, for a message.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Sets `policy_key` from the plan when `holder`'s `image_key` is a planned
/// or borrowed image; the image otherwise.
fn bind_pull_policy(
    plan: &Plan,
    holder: &mut Map<String, Value>,
    image_key: &str,
    policy_key: &str,
) -> Result<(), String> {
    let image = holder.get(image_key).and_then(Value::as_str).unwrap_or_default();
    match plan.components().iter().find(|c| c.image.matches(image)) {
        Some(component) => {
            holder.insert(policy_key.to_owned(), Value::String(component.pull_policy.as_str().to_owned()));
            Ok(())
        }
        None => Err(image.to_owned()),
    }
}

fn refusal(plan: &Plan, place: &str, image: &str) -> String {
    if image.is_empty() {
        let key = if place == IMAGE_VOLUME { "reference" } else { "image" };
        return format!("the {place} has no image; write `{key}: ${{image:<component>}}`");
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
