"""Training checkpoints as ZenML artifacts: each one is saved as `checkpoint-<sft|dpo>-<run key>` while
training runs, so it is listed in the dashboard under the step, and a re-run on a machine that does not
have the local checkpoint dir (a new Kubernetes pod, another laptop on the same server) resumes from
the newest complete one.

The training steps' parameter `checkpoint_artifacts` switches it: true, false, or null (auto: only on a
remote artifact store). Set it in a run YAML: `steps: {train_sft: {parameters: {checkpoint_artifacts: true}}}`.
Only the newest `keep_checkpoints` versions (a step parameter, default 2) are kept: each save deletes the older
versions' files from the artifact store and their records, so a long run does not fill the store.
"""

import logging
import shutil
from pathlib import Path

from zenml import save_artifact
from zenml.client import Client
from zenml.utils.pagination_utils import depaginate

from materializers import DirectoryMaterializer
from tuneline.artifacts import CheckpointDir

log = logging.getLogger(__name__)


def mirror(enabled: bool | None, keep: int = 2) -> "ArtifactMirror | None":
    """The mirror a training step uses. None (auto): only when the artifact store is remote; a local
    store would only duplicate the local checkpoint dir (tens of MB per checkpoint for a 135M model)."""
    if keep < 1:
        raise ValueError(f"keep_checkpoints is {keep}: keep at least 1, the newest checkpoint is what a retried "
                         "or re-run step resumes from")
    if enabled is None:
        enabled = Client().active_stack.artifact_store.flavor != "local"
    return ArtifactMirror(keep) if enabled else None


class ArtifactMirror:
    # Versions restore looks through, newest first, for a complete checkpoint.
    RESTORE_TRIES = 5

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep

    def save(self, name: str, ckpt: Path, step: int) -> None:
        # A new artifact version each time: the older versions go only once this one is stored.
        saved = save_artifact(CheckpointDir(path=str(ckpt), step=step, name=name), name=f"checkpoint-{name}",
                              materializer=DirectoryMaterializer, user_metadata={"global_step": step})
        self.prune(name, saved.id)

    def prune(self, name: str, newest) -> None:
        """Delete every version of checkpoint-<name> but the newest `keep` (`newest`, the one just saved, always
        stays): its files in the artifact store, then its record. Housekeeping: a failure is logged, never fatal."""
        client = Client()
        versions = depaginate(client.list_artifact_versions, artifact=f"checkpoint-{name}", sort_by="desc:created")
        kept = [v for v in versions if v.id == newest] + [v for v in versions if v.id != newest]
        for version in kept[self.keep:]:
            try:
                client.delete_artifact_version(version.id, delete_metadata=False, delete_from_artifact_store=True)
                # The record too. Client.delete_artifact_version refuses a version that is a step's output (every
                # checkpoint is one: save_artifact links it to the training step), to keep runs' lineage whole; a
                # checkpoint is no step's input, so the step merely lists one version fewer.
                client.zen_store.delete_artifact_version(version.id)
            except Exception as e:  # noqa: BLE001 (a store error must not stop training)
                log.warning("could not prune checkpoint-%s version %s: %s", name, version.version, e)

    def restore(self, name: str, into: Path) -> Path | None:
        """The newest stored checkpoint that is complete, copied back through a temp dir (an older version
        when the newest lacks a file the Trainer needs to resume exactly); None when there is none."""
        from tuneline.train.checkpoints import checkpoint_complete, copy_whole  # transformers: only when resuming

        versions = Client().list_artifact_versions(artifact=f"checkpoint-{name}", sort_by="desc:created",
                                                   size=self.RESTORE_TRIES)
        for version in versions.items:
            try:
                handle = version.load()
            except (OSError, KeyError):  # its files are gone from the store: try the one before
                continue
            target = copy_whole(Path(handle.path), into / f"checkpoint-{handle.step}")
            if checkpoint_complete(target):
                return target
            shutil.rmtree(target, ignore_errors=True)
        return None
