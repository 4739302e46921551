"""The snapshot of a data dir leaves out hidden files (a .env) and symlinks whose target is outside the dir."""

from tuneline.config import DataConfig
from tuneline.data.snapshot import fingerprint, snapshot


def test_hidden_files_and_outside_symlinks_stay_behind(tmp_path):
    data, secret = tmp_path / "data", tmp_path / "secret.jsonl"
    (data / "part").mkdir(parents=True)
    (data / "a.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    (data / "part" / "b.jsonl").write_text('{"instruction": "c", "output": "d"}\n')
    (data / ".env").write_text("TOKEN=hunter2\n")
    (data / ".git").mkdir()
    (data / ".git" / "config").write_text("[core]\n")
    secret.write_text('{"instruction": "x", "output": "y"}\n')
    (data / "linked.jsonl").symlink_to(secret)
    (data / "inside.jsonl").symlink_to(data / "a.jsonl")
    cfg = DataConfig(train_file=str(data), test_file=None, labels_file=None)
    raw = snapshot(cfg, tmp_path / "out")
    stored = tmp_path / "out" / raw.files["train_file"]["stored"]
    assert sorted(str(p.relative_to(stored)) for p in stored.rglob("*") if p.is_file()) == \
        ["a.jsonl", "inside.jsonl", "part/b.jsonl"]
    before = fingerprint(cfg)
    secret.write_text("changed\n")
    (data / ".env").write_text("TOKEN=other\n")
    assert fingerprint(cfg) == before  # what is not copied is not in the key either
