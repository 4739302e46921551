"""ZenML materializers for directory handles: adapters, merged models, exports.

The directory is copied into the artifact store once, beside a JSON of the handle. Loading
returns a handle whose `path` is the stored copy itself when the artifact store is local
(no copy), or a local download of it when the store is remote.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from zenml.enums import ArtifactType, VisualizationType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer

from tuneline.artifacts import CheckpointDir, ExportDir, ModelDir, TrainedDir
from tuneline.data.snapshot import RawDataDir
from tuneline.model.base import sha256_file

HANDLE = "handle.json"
FILES = "files"
MODEL_CARD = "README.md"


def _copy_tree(src: str, dst: str) -> None:
    for root, _dirs, files in fileio.walk(src):
        rel = os.path.relpath(str(root), src)
        target = dst if rel == "." else os.path.join(dst, rel)
        fileio.makedirs(target)
        for name in files:
            fileio.copy(os.path.join(str(root), str(name)), os.path.join(target, str(name)), overwrite=True)


class DirectoryMaterializer(BaseMaterializer):
    ASSOCIATED_TYPES: ClassVar[tuple] = (TrainedDir, ModelDir, ExportDir, CheckpointDir)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL

    def save(self, data: Any) -> None:
        stored = os.path.join(self.uri, FILES)
        _copy_tree(data.path, stored)
        with fileio.open(os.path.join(self.uri, HANDLE), "w") as f:
            f.write(json.dumps({"type": type(data).__name__, **data.model_dump(mode="json")}))

    def load(self, data_type: type) -> Any:
        with fileio.open(os.path.join(self.uri, HANDLE), "r") as f:
            fields = json.loads(f.read())
        fields.pop("type", None)
        stored = os.path.join(self.uri, FILES)
        if os.path.isdir(stored):  # local artifact store: use the stored copy in place
            fields["path"] = stored
        else:
            local = tempfile.mkdtemp(prefix="tuneline-")
            _copy_tree(stored, local)
            fields["path"] = local
        return data_type(**fields)

    def compute_content_hash(self, data: Any) -> str | None:
        """A merged model's handle and files, its model card left out: the card's evaluation table changes
        with evaluate's knobs (bootstrap_resamples), the weights do not, so the exports built from them stay
        cached. Other handles: None (ZenML keys on the artifact id)."""
        if not isinstance(data, ModelDir):
            return None
        digest = hashlib.sha256(json.dumps(data.model_dump(mode="json", exclude={"path"}), sort_keys=True).encode())
        root = Path(data.path)
        for f in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MODEL_CARD):
            digest.update(f"{f.relative_to(root)} {sha256_file(f)}\n".encode())
        return digest.hexdigest()

    def extract_metadata(self, data: Any) -> dict:
        total = 0
        for root, _dirs, files in os.walk(data.path):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
        meta = {"size_mb": round(total / 2**20, 2)}
        if hasattr(data, "base"):
            meta["base_model"] = data.base.source
        return meta

    def save_visualizations(self, data: Any) -> dict[str, VisualizationType]:
        """The model card (the dir's README.md, when it has one) first, then the handle's fields."""
        shown = {}
        card = Path(data.path) / MODEL_CARD
        if card.is_file():
            path = os.path.join(self.uri, "model_card.md")
            with fileio.open(path, "w") as f:
                f.write(card_markdown(card.read_text()))
            shown[path] = VisualizationType.MARKDOWN
        path = os.path.join(self.uri, "summary.md")
        lines = [f"### {type(data).__name__}", ""]
        for key, value in data.model_dump(mode="json").items():
            if key not in ("path",):
                lines.append(f"- **{key}**: `{json.dumps(value)[:400]}`")
        with fileio.open(path, "w") as f:
            f.write("\n".join(lines))
        shown[path] = VisualizationType.MARKDOWN
        return shown


def card_markdown(card: str) -> str:
    """A model card for the dashboard: its YAML front matter (the Hub's metadata) as a fenced yaml block,
    which a Markdown renderer would otherwise show as a run-on paragraph between two rules."""
    if card.startswith("---\n"):
        end = card.find("\n---", 4)
        if end > 0:
            meta, body = card[4:end], card[end + 4:].lstrip("\n")
            return f"```yaml\n{meta}\n```\n\n{body}"
    return card


class RawDataMaterializer(DirectoryMaterializer):
    """The raw data snapshot: the same stored directory, typed as data in the dashboard."""

    ASSOCIATED_TYPES: ClassVar[tuple] = (RawDataDir,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA

    def extract_metadata(self, data: Any) -> dict:
        return {**super().extract_metadata(data), "sha256": data.sha256,
                "files": {k: v["name"] for k, v in data.files.items()}}
