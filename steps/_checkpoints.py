"""Training checkpoints as ZenML artifacts: each one is saved as `checkpoint-<sft|dpo>-<run key>` while
training runs, so it is listed in the dashboard under the step, and a re-run on a machine that does not
have the local checkpoint dir (a new Kubernetes pod, another laptop on the same server) resumes from
the newest one.

The training steps' parameter `checkpoint_artifacts` switches it: true, false, or null (auto: only on a
remote artifact store). Set it in a run YAML: `steps: {train_sft: {parameters: {checkpoint_artifacts: true}}}`.
"""

import shutil
from pathlib import Path

from zenml import save_artifact
from zenml.client import Client

from materializers import DirectoryMaterializer
from tuneline.artifacts import CheckpointDir


def mirror(enabled: bool | None) -> "ArtifactMirror | None":
    """The mirror a training step uses. None (auto): only when the artifact store is remote; a local
    store would only duplicate the local checkpoint dir (tens of MB per checkpoint for a 135M model)."""
    if enabled is None:
        enabled = Client().active_stack.artifact_store.flavor != "local"
    return ArtifactMirror() if enabled else None


class ArtifactMirror:
    def save(self, name: str, ckpt: Path, step: int) -> None:
        save_artifact(CheckpointDir(path=str(ckpt), step=step, name=name), name=f"checkpoint-{name}",
                      materializer=DirectoryMaterializer, user_metadata={"global_step": step})

    def restore(self, name: str, into: Path) -> Path | None:
        try:
            handle = Client().get_artifact_version(f"checkpoint-{name}").load()  # the newest version
        except KeyError:
            return None
        target = into / f"checkpoint-{handle.step}"
        shutil.copytree(handle.path, target, dirs_exist_ok=True)
        return target
