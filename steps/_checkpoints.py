"""Training checkpoints as ZenML artifacts: each one is saved as `checkpoint-<sft|dpo>-<run key>` while
training runs, so it is listed in the dashboard under the step, and a re-run on a machine that does not
have the local checkpoint dir (a new Kubernetes pod, another laptop on the same server) resumes from
the newest one.
"""

import shutil
from pathlib import Path

from zenml import save_artifact
from zenml.client import Client

from materializers import DirectoryMaterializer
from tuneline.artifacts import CheckpointDir


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
