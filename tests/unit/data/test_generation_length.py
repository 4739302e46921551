"""data.max_new_tokens: auto from the gold answers (percentile, stop token, margin, cap), carried on task_data
through Parquet, and the three old per-place keys as deprecated aliases; the generation example's config check.

    .venv/bin/pytest -q tests/unit/data/test_generation_length.py
"""

import io
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

from tuneline.config import ConfigError, TunelineConfig, load
from tuneline.dashboard import data_report
from tuneline.data.generation import carried_length, generation_length, nearest_rank
from tuneline.data.readers import DataError
from tuneline.paths import PROJECT_ROOT


def _lengths(tok, answers):
    return [len(tok(a, add_special_tokens=False).input_ids) for a in answers]


def test_auto_is_p95_of_the_gold_answers_plus_stop_token_and_margin(tiny_tok):
    answers = [" ".join(["word"] * k) for k in range(1, 41)]  # 40 answers of growing length
    lengths = _lengths(tiny_tok, answers)
    p95 = nearest_rank(lengths, 95)
    assert p95 == sorted(lengths)[37]  # nearest rank: ceil(0.95 * 40) = 38th value
    got = generation_length(answers, tiny_tok, "auto", cap=256, closed_set=False)
    assert got.tokens == p95 + 1 + max(2, math.ceil(0.1 * p95)) and got.answer_tokens == p95
    assert got.percentile == 95 and got.answers == 40 and got.longest == max(lengths) and not got.capped
    assert got.cut == sum(n + 1 > got.tokens for n in lengths) and "p95 of the gold answers" in got.reason()
    capped = generation_length(answers, tiny_tok, "auto", cap=10, closed_set=False)
    assert capped.tokens == 10 and capped.capped and "capped at data.max_new_tokens_cap" in capped.reason()
    fixed = generation_length(answers, tiny_tok, 4, cap=2, closed_set=False)  # a number is used as given
    assert fixed.tokens == 4 and fixed.setting == "4" and fixed.cut == sum(n + 1 > 4 for n in lengths)


def test_banking77_labels_get_every_label_whole_and_no_less_than_before(tiny_tok):
    """Classification takes the longest label (a cut label is always wrong): never below the old 12 / 16."""
    labels = json.loads((PROJECT_ROOT / "data" / "banking77" / "categories.json").read_text())
    got = generation_length(labels, tiny_tok, "auto", cap=256, closed_set=True)
    longest = max(_lengths(tiny_tok, labels))
    assert got.percentile == 100 and got.answer_tokens == longest and got.cut == 0
    assert got.tokens == longest + 1 + 2 == 20  # the embedded tokenizer: 17 tokens for the longest label (old: 12, 16)


def test_the_length_rides_on_task_data_through_parquet(tiny_data):
    task = tiny_data.task
    assert carried_length(task) == 4 == tiny_data.generation.tokens  # configs/tiny.yaml: data.max_new_tokens: 4
    assert tiny_data.counts["max_new_tokens"] == 4 and "data.max_new_tokens=4" in tiny_data.counts["max_new_tokens_why"]
    report = data_report(tiny_data)
    assert "<b>Generation length</b> (data.max_new_tokens): 4 tokens: data.max_new_tokens=4" in report.html
    assert "**Generation length** (data.max_new_tokens): 4 tokens" in report.markdown
    buf = io.BytesIO()
    task.to_parquet(buf, compression="gzip")  # what ZenML's pandas materializer does
    back = pd.read_parquet(io.BytesIO(buf.getvalue()))
    assert carried_length(back[back.split == "eval"]) == 4
    with pytest.raises(DataError, match="carries no generation length"):
        carried_length(pd.DataFrame({"split": ["eval"]}))


@pytest.mark.parametrize("key", ["dpo.mining_max_new_tokens", "evaluate.max_new_tokens", "export.max_new_tokens"])
def test_each_old_length_key_warns_and_maps_to_data_max_new_tokens(key):
    section, name = key.split(".")
    with pytest.warns(FutureWarning, match=rf"{key} is deprecated: use data.max_new_tokens"):
        cfg = TunelineConfig.model_validate({section: {name: 24}}, strict=True)
    assert cfg.data.max_new_tokens == 24 and name not in type(getattr(cfg, section)).model_fields


def test_old_keys_map_to_their_largest_and_clash_with_the_new_key():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        both = TunelineConfig.model_validate({"evaluate": {"max_new_tokens": 12}, "export": {"max_new_tokens": 16}})
        assert both.data.max_new_tokens == 16  # no place generates fewer tokens than it did
        with pytest.raises(ValueError, match="remove the old keys"):
            TunelineConfig.model_validate({"data": {"max_new_tokens": 8}, "evaluate": {"max_new_tokens": 12}})
    assert TunelineConfig().data.max_new_tokens == "auto"
    with pytest.raises(ConfigError, match="data.max_new_tokens must be auto .* not 'long'"):
        load(PROJECT_ROOT / "configs" / "default.yaml", ["data.max_new_tokens=long"])


def test_config_check_passes_the_generation_example():
    tuneline = Path(sys.executable).with_name("tuneline")
    out = subprocess.run([str(tuneline), "config", "check", "configs/examples/generation.yaml"], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "configs/examples/generation.yaml: ok"
    assert '  evaluate.metric: "token_f1"' in out.stdout and "FutureWarning" not in out.stderr
