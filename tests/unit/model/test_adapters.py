"""Whether a trained dir is an adapter or a full model is read from the dir itself."""

from tuneline.model.adapters import is_adapter_dir


def test_adapter_dir_is_told_by_its_config(tmp_path):
    assert not is_adapter_dir(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{}")
    assert is_adapter_dir(tmp_path) and is_adapter_dir(str(tmp_path))
