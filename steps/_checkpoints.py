"""Training checkpoints as ZenML artifacts: each one is saved as `checkpoint-<sft|dpo>-<run key>` while
training runs, so it is listed in the dashboard under the step, and a re-run on a machine that does not
have the local checkpoint dir (a new Kubernetes pod, another laptop on the same server) resumes from
the newest complete one.

The training steps' parameter `checkpoint_artifacts` switches it: true, false, or null (auto: only on a
remote artifact store). Set it in a run YAML: `steps: {train_sft: {parameters: {checkpoint_artifacts: true}}}`.
"""

import shutil
from pathlib import Path

from zenml import save_artifact
from zenml.client import Client

from materializers import DirectoryMaterializer
from tuneline.artifacts import CheckpointDir
from tuneline.train.checkpoints import checkpoint_complete, copy_whole


def mirror(enabled: bool | None) -> "ArtifactMirror | None":
    """The mirror a training step uses. None (auto): only when the artifact store is remote; a local
    store would only duplicate the local checkpoint dir (tens of MB per checkpoint for a 135M model)."""
    if enabled is None:
        enabled = Client().active_stack.artifact_store.flavor != "local"
    return ArtifactMirror() if enabled else None


class ArtifactMirror:
    # Versions restore looks through, newest first, for a complete checkpoint.
    RESTORE_TRIES = 5

    def save(self, name: str, ckpt: Path, step: int) -> None:
        # A new artifact version each time: the older versions stay until this one is stored.
        save_artifact(CheckpointDir(path=str(ckpt), step=step, name=name), name=f"checkpoint-{name}",
                      materializer=DirectoryMaterializer, user_metadata={"global_step": step})

    def restore(self, name: str, into: Path) -> Path | None:
        """The newest stored checkpoint that is complete, copied back through a temp dir (an older version
        when the newest lacks a file the Trainer needs to resume exactly); None when there is none."""
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
