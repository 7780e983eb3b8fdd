"""The Kubernetes manifests (deploy/kubernetes) as the cluster would get them, without a cluster.

`render` is a small kustomize: it reads kustomization.yaml's `resources` and applies its
`namespace`, `labels` and `images`, and refuses any other field, so a kustomization it cannot
render faithfully fails here instead of being read wrong. Where kubectl or kustomize is
installed, a test compares the two renderings. The rest are helpers the tests read pods with:
the container's effective environment (the image's ENV, then the ConfigMap, then `env`),
Kubernetes quantities, and the Dockerfile's final stage.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
KUSTOMIZATION = KUBERNETES / "kustomization.yaml"
DOCKERFILE = REPO / "Dockerfile"

# What `render` implements of a kustomization, and of its `labels` entries.
SUPPORTED_FIELDS = frozenset({"apiVersion", "kind", "namespace", "labels", "resources", "images"})
SUPPORTED_LABEL_FIELDS = frozenset({"pairs", "includeSelectors", "includeTemplates"})
# Kinds whose objects have no namespace (of those the manifests use, and their neighbours).
CLUSTER_SCOPED = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass", "StorageClass",
                            "CustomResourceDefinition"})
# Kinds with a pod template at spec.template.
POD_TEMPLATED = frozenset({"Deployment", "Job", "StatefulSet", "DaemonSet", "ReplicaSet"})

Manifest = dict[str, Any]


@cache
def kustomization() -> dict[str, Any]:
    return dict(yaml.safe_load(KUSTOMIZATION.read_text()))


def documents(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def render(directory: Path = KUBERNETES) -> list[Manifest]:
    """The objects `kubectl kustomize directory` prints, for the fields SUPPORTED_FIELDS."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(spec) - SUPPORTED_FIELDS
    assert not unsupported, f"render() does not implement {sorted(unsupported)}: extend it to match kustomize"
    objects = [doc for name in spec.get("resources", []) for doc in documents(directory / name)]
    for obj in objects:
        metadata = obj.setdefault("metadata", {})
        if "namespace" in spec and obj["kind"] not in CLUSTER_SCOPED:
            metadata["namespace"] = spec["namespace"]
        for group in spec.get("labels", []):
            _label(obj, group)
        for image in spec.get("images", []):
            _retag(obj, image)
    return objects


def _label(obj: Manifest, group: Mapping[str, Any]) -> None:
    assert set(group) <= SUPPORTED_LABEL_FIELDS, f"render() does not implement labels fields {sorted(group)}"
    assert not group.get("includeSelectors"), "render() does not rewrite selectors (kustomize would)"
    obj["metadata"].setdefault("labels", {}).update(group["pairs"])
    if group.get("includeTemplates") and obj["kind"] in POD_TEMPLATED:
        obj["spec"]["template"].setdefault("metadata", {}).setdefault("labels", {}).update(group["pairs"])


def _retag(obj: Manifest, image: Mapping[str, Any]) -> None:
    for container in containers(obj):
        repository = image_repository(container["image"])
        if repository != image["name"]:
            continue
        new = image.get("newName", repository)
        if "digest" in image:
            container["image"] = f"{new}@{image['digest']}"
        elif "newTag" in image:
            container["image"] = f"{new}:{image['newTag']}"
        else:
            container["image"] = new + container["image"][len(repository):]


def image_repository(image: str) -> str:
    """`registry/name` of an image reference, without its tag or digest."""
    head, slash, tail = image.split("@", 1)[0].rpartition("/")
    return head + slash + tail.split(":", 1)[0]


def pod_spec(obj: Manifest) -> dict[str, Any]:
    assert obj["kind"] in POD_TEMPLATED, obj["kind"]
    return dict(obj["spec"]["template"]["spec"])


def containers(obj: Manifest) -> Iterator[dict[str, Any]]:
    if obj["kind"] not in POD_TEMPLATED:
        return
    spec = obj["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def find(objects: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def effective_env(container: Mapping[str, Any], objects: list[Manifest], secrets: Mapping[str, str]) -> dict[str, str]:
    """The container's environment as the daemon reads it: the image's ENV, then every
    ConfigMap in envFrom, then `env` (a secretKeyRef is looked up in `secrets`, by key)."""
    env = dict(image_env())
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"}, f"only ConfigMaps come in by envFrom: {source}"
        env.update(find(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
        else:
            env[entry["name"]] = secrets[entry["valueFrom"]["secretKeyRef"]["key"]]
    return env


def secret_refs(container: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """Variable -> (Secret name, key) of every env entry that comes from a Secret."""
    return {e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}


_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_DECIMAL = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity in base units: bytes, or cores for CPU (`100m` is 0.1)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|m|k|M|G|T|)", str(value))
    assert match, f"not a quantity: {value!r}"
    number, unit = float(match.group(1)), match.group(2)
    return number * (_BINARY[unit] if unit in _BINARY else _DECIMAL[unit])


# -- the Dockerfile -------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of every instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, arguments = stripped.partition(" ")
        found.append((keyword.upper(), arguments.strip()))
    return found


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The instructions of each stage, each list starting with its FROM (global ARGs dropped)."""
    stages: list[list[tuple[str, str]]] = []
    for instruction in dockerfile_instructions():
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def dockerfile_global_args() -> dict[str, str]:
    """The ARGs before the first FROM, with their defaults: what `${NAME}` in a FROM means."""
    args = {}
    for keyword, arguments in dockerfile_instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = arguments.partition("=")
            args[name] = default.strip('"')
    return args


def image_env() -> dict[str, str]:
    """The ENV of the final stage: what every container of the image starts with. Values that
    name a build argument (`${HEALER_BUILD_COMMIT}`) are left out: a build decides them."""
    env = {}
    for keyword, arguments in dockerfile_stages()[-1]:
        if keyword == "ENV":
            for pair in arguments.split():
                name, _, value = pair.partition("=")
                if "$" not in value:
                    env[name] = value
    return env
