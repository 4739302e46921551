"""Step output dirs do not pile up on disk: a step's temp output dir is deleted once the materializer stored it
(a user's own dir never is), a failed step's at once, a remote artifact's download once per process and at
exit; and storing checks the artifact store's free space first.

    .venv/bin/pytest -q tests/unit/test_step_output_cleanup.py
"""

import subprocess
import sys
from pathlib import Path

import pytest

from materializers import directories
from materializers.directories import DirectoryMaterializer
from tuneline.artifacts import ModelDir, TrainedDir, step_output
from tuneline.disk_space import DiskSpaceError
from tuneline.model.base import BaseModelRef
from tuneline.paths import PROJECT_ROOT

REF = BaseModelRef(source="tiny", path="/nonexistent", sha256="0" * 64)


def _files(out: Path) -> None:
    (out / "model.safetensors").write_bytes(b"weights" * 2**15)
    (out / "README.md").write_text("# card\n")


def test_a_step_output_dir_is_gone_once_stored_and_the_artifact_is_whole(tmp_path):
    with step_output("merged") as out:
        _files(out)
    handle = ModelDir(path=str(out), base=REF, adapters=["sft"])
    expected_hash = DirectoryMaterializer(uri=str(tmp_path / "unused")).compute_content_hash(handle)
    store = tmp_path / "store"
    store.mkdir()
    m = DirectoryMaterializer(uri=str(store))
    m.save(handle)
    assert not out.exists(), "the temp output dir is deleted once the artifact store holds it"
    # ZenML asks the same materializer for these after save(): they read the stored copy.
    assert m.compute_content_hash(handle) == expected_hash
    assert m.extract_metadata(handle)["size_mb"] > 0 and (store / "model_card.md").name in {
        Path(p).name for p in m.save_visualizations(handle)}
    loaded = DirectoryMaterializer(uri=str(store)).load(ModelDir)
    assert (Path(loaded.path) / "model.safetensors").read_bytes() == b"weights" * 2**15


def test_a_users_own_dir_is_never_deleted(tmp_path):
    own = tmp_path / "my-adapter"
    own.mkdir()
    _files(own)
    store = tmp_path / "store"
    store.mkdir()
    DirectoryMaterializer(uri=str(store)).save(TrainedDir(path=str(own), base=REF, kind="sft", method="lora"))
    assert sorted(p.name for p in own.iterdir()) == ["README.md", "model.safetensors"]


def test_a_failed_step_leaves_no_output_dir():
    with pytest.raises(RuntimeError), step_output("gguf") as out:
        _files(out)
        raise RuntimeError("the export failed")
    assert not out.exists()


def test_storing_checks_the_artifact_stores_free_space_first(tmp_path, monkeypatch):
    with step_output("merged") as out:
        _files(out)
    monkeypatch.setattr(directories, "dir_bytes", lambda path: 2**60)  # a model larger than any disk
    store = tmp_path / "store"
    store.mkdir()
    with pytest.raises(DiskSpaceError, match=f"storing ModelDir in the artifact store needs about .* at {store}"):
        DirectoryMaterializer(uri=str(store)).save(ModelDir(path=str(out), base=REF))
    assert out.exists() and not (store / "files").exists()


SCRIPT = """
import sys
from tuneline.artifacts import delete_at_exit, step_output
delete_at_exit(sys.argv[1])
with step_output("never-stored") as out:
    print(out)
"""


def test_a_remote_artifacts_download_is_made_once_and_deleted_at_exit(tmp_path):
    from tuneline import artifacts

    stored = tmp_path / "remote" / "files"  # a local dir standing in for the remote store's copy
    stored.mkdir(parents=True)
    _files(stored)
    local = directories._downloaded(str(stored))
    assert directories._downloaded(str(stored)) == local, "one download per artifact and process"
    assert (Path(local) / "README.md").read_text() == "# card\n" and Path(local) in artifacts._AT_EXIT
    # What the process does at exit: the download goes, and so does a step output that was never stored.
    p = subprocess.run([sys.executable, "-c", SCRIPT, local], check=False, cwd=PROJECT_ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert not Path(local).exists() and not Path(p.stdout.strip().splitlines()[-1]).exists()
