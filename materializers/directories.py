"""ZenML materializers for directory handles: adapters, merged models, exports.

The directory is copied into the artifact store once, beside a JSON of the handle; a step's own temp output
dir (tuneline.artifacts.step_output) is then deleted: at once on a local store (the metadata, the card and the
content hash are read from the stored copy), at process exit on a remote one. Loading returns a handle whose
`path` is the stored copy itself when the artifact store is local (no copy), or a local download of it when
the store is remote: one per artifact and process, deleted when the process exits.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from zenml.enums import ArtifactType, VisualizationType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer

from tuneline.artifacts import CheckpointDir, ExportDir, ModelDir, TrainedDir, delete_at_exit, discard, scratch_root
from tuneline.data.snapshot import RawDataDir
from tuneline.disk_space import MARGIN, dir_bytes, need_free
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


# Remote artifact dir -> its local download in this process (every step of a local run that loads it shares it).
_DOWNLOADED: dict[str, str] = {}


def _downloaded(stored: str) -> str:
    """A local copy of a remote artifact's files, made once per process and deleted when the process exits."""
    if stored not in _DOWNLOADED:
        local = tempfile.mkdtemp(prefix="tuneline-loaded-")
        try:
            _copy_tree(stored, local)
        except BaseException:
            shutil.rmtree(local, ignore_errors=True)
            raise
        delete_at_exit(local)
        _DOWNLOADED[stored] = local
    return _DOWNLOADED[stored]


class DirectoryMaterializer(BaseMaterializer):
    ASSOCIATED_TYPES: ClassVar[tuple] = (TrainedDir, ModelDir, ExportDir, CheckpointDir)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL
    # Where the files are once save() deleted the step's temp dir: ZenML reads metadata, visualizations and
    # the content hash after save(), with this same materializer.
    _moved_to: str | None = None

    def save(self, data: Any) -> None:
        stored = os.path.join(self.uri, FILES)
        local_store = os.path.isdir(self.uri)
        if local_store:
            need_free({Path(self.uri): dir_bytes(data.path) + MARGIN}, f"storing {type(data).__name__} in the artifact store")
        _copy_tree(data.path, stored)
        with fileio.open(os.path.join(self.uri, HANDLE), "w") as f:
            f.write(json.dumps({"type": type(data).__name__, **data.model_dump(mode="json")}))
        if scratch_root(data.path):
            # The artifact store holds it now; a remote copy cannot be read in place, so that one waits.
            if local_store:
                self._moved_to = stored
            discard(data.path, at_exit=not local_store)

    def _dir(self, data: Any) -> str:
        return self._moved_to or data.path

    def load(self, data_type: type) -> Any:
        with fileio.open(os.path.join(self.uri, HANDLE), "r") as f:
            fields = json.loads(f.read())
        fields.pop("type", None)
        stored = os.path.join(self.uri, FILES)
        # A local artifact store: the stored copy in place; a remote one: a local download.
        fields["path"] = stored if os.path.isdir(stored) else _downloaded(stored)
        return data_type(**fields)

    def compute_content_hash(self, data: Any) -> str | None:
        """A merged model's handle and files, its model card left out: the card's evaluation table changes
        with evaluate's knobs (bootstrap_resamples), the weights do not, so the exports built from them stay
        cached. Other handles: None (ZenML keys on the artifact id)."""
        if not isinstance(data, ModelDir):
            return None
        digest = hashlib.sha256(json.dumps(data.model_dump(mode="json", exclude={"path"}), sort_keys=True).encode())
        root = Path(self._dir(data))
        for f in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MODEL_CARD):
            digest.update(f"{f.relative_to(root)} {sha256_file(f)}\n".encode())
        return digest.hexdigest()

    def extract_metadata(self, data: Any) -> dict:
        total = 0
        for root, _dirs, files in os.walk(self._dir(data)):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
        meta = {"size_mb": round(total / 2**20, 2)}
        if hasattr(data, "base"):
            meta["base_model"] = data.base.source
        return meta

    def save_visualizations(self, data: Any) -> dict[str, VisualizationType]:
        """The model card (the dir's README.md, when it has one) first, then the handle's fields."""
        shown = {}
        card = Path(self._dir(data)) / MODEL_CARD
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

    def compute_content_hash(self, data: Any) -> str | None:
        """The files' names and sha256s, the copy's path left out: a snapshot step that re-ran for another
        reason (the general texts changed) gives the same hash, so validation and training stay cached."""
        return hashlib.sha256(json.dumps(data.files, sort_keys=True).encode()).hexdigest()
