"""A small, pure-Python renderer for the kustomize subset that k8s/ uses: offline, no kubectl.

    python -m tuneline.kustomize k8s/overlays/local-db        # prints the manifests, like `kubectl kustomize`

The subset (anything else in a kustomization.yaml is an error, never silently ignored):

- `resources`: YAML files (one or more documents) and directories holding a kustomization.yaml,
  rendered first, in order;
- `namespace`: sets `metadata.namespace` on every namespaced object (cluster-scoped kinds such as
  Namespace or ClusterRole are left alone; RoleBinding subjects are not rewritten, so k8s/ names
  their namespace explicitly);
- `labels`: `pairs` added to `metadata.labels` only (`includeSelectors`/`includeTemplates` must be
  false or absent, so selectors and pod templates are never touched);
- `patches`: `path:` to a strategic-merge patch naming its target by apiVersion, kind and
  metadata.name: mappings merge, `null` deletes a key, lists of mappings that all carry `name`
  (containers, env, volumes, volumeMounts, ports) merge item by item on `name` (new items first,
  as kustomize orders them), other lists are replaced;
- `images`: `name` with `newName`, `newTag` and/or `digest`, applied to containers and
  initContainers of pod templates.

`kubectl kustomize` gives the same objects for k8s/ (tests/infra/test_k8s.py compares them when kubectl
is installed); object order may differ.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "namespace", "labels", "patches", "images"}
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass",
    "CustomResourceDefinition", "PriorityClass", "IngressClass", "RuntimeClass",
    "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration",
}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


class KustomizeError(ValueError):
    pass


def _load_docs(path: Path) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d or "metadata" not in d:
            raise KustomizeError(f"{path}: not a Kubernetes object: {str(d)[:80]}")
    return docs


def _kustomization_file(directory: Path) -> Path:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (directory / name).is_file():
            return directory / name
    raise KustomizeError(f"{directory}: no kustomization.yaml")


def strategic_merge(base: Any, patch: Any) -> Any:
    """The strategic-merge subset described in the module docstring."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        out = [copy.deepcopy(item) for item in base]
        index = {item["name"]: i for i, item in enumerate(out)}
        added = []
        for item in patch:
            if item["name"] in index:
                out[index[item["name"]]] = strategic_merge(out[index[item["name"]]], item)
            else:
                added.append(copy.deepcopy(item))
        return added + out  # kustomize puts the patch's new items first
    return copy.deepcopy(patch)


def _named(items: list) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)


def _key(obj: dict) -> tuple[str, str, str]:
    return obj.get("apiVersion", ""), obj["kind"], obj["metadata"].get("name", "")


def _containers(obj: dict) -> list[dict]:
    spec = obj.get("spec", {})
    if obj["kind"] in POD_TEMPLATE_KINDS:
        spec = spec.get("template", {}).get("spec", {})
    elif obj["kind"] == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})
    elif obj["kind"] != "Pod":
        return []
    return list(spec.get("containers", [])) + list(spec.get("initContainers", []))


def _set_image(container: dict, rule: dict) -> None:
    image = container.get("image", "")
    name = image.split("@")[0]
    repo, _, tag = name.rpartition(":") if ":" in name.split("/")[-1] else (name, "", "")
    if repo != rule["name"]:
        return
    new = rule.get("newName", repo)
    if rule.get("digest"):
        container["image"] = f"{new}@{rule['digest']}"
    elif rule.get("newTag") or tag:
        container["image"] = f"{new}:{rule.get('newTag', tag)}"
    else:
        container["image"] = new


def render(directory: str | Path) -> list[dict]:
    """The objects of the kustomization in `directory`, transformed as kustomize would."""
    directory = Path(directory)
    spec = yaml.safe_load(_kustomization_file(directory).read_text()) or {}
    unknown = set(spec) - SUPPORTED_KEYS
    if unknown:
        raise KustomizeError(f"{directory}: unsupported kustomization keys {sorted(unknown)} "
                             f"(tuneline.kustomize renders only {sorted(SUPPORTED_KEYS - {'apiVersion', 'kind'})})")
    objects: list[dict] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        objects += render(path) if path.is_dir() else _load_docs(path)

    for patch_entry in spec.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise KustomizeError(f"{directory}: only `patches: - path: FILE` is supported, not {patch_entry}")
        for patch in _load_docs(directory / patch_entry["path"]):
            matches = [i for i, o in enumerate(objects) if _key(o) == _key(patch)]
            if len(matches) != 1:
                raise KustomizeError(f"{directory}/{patch_entry['path']}: patch target {_key(patch)} "
                                     f"matches {len(matches)} objects")
            objects[matches[0]] = strategic_merge(objects[matches[0]], patch)

    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = spec["namespace"]

    for label_set in spec.get("labels", []):
        if label_set.get("includeSelectors") or label_set.get("includeTemplates"):
            raise KustomizeError(f"{directory}: labels with includeSelectors/includeTemplates are not supported")
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(label_set["pairs"])

    for rule in spec.get("images", []):
        for obj in objects:
            for container in _containers(obj):
                _set_image(container, rule)

    seen: set = set()
    for obj in objects:
        ident = (obj["kind"], obj["metadata"].get("namespace"), obj["metadata"].get("name"))
        if ident in seen:
            raise KustomizeError(f"{directory}: {ident} defined twice")
        seen.add(ident)
    return objects


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tuneline.kustomize DIR", file=sys.stderr)
        return 2
    print(yaml.safe_dump_all(render(argv[0]), sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
