"""DPO from the user's pairs alone (dpo.mine_mistakes: false) through `tuneline train`, on a StackExchange-style
file whose columns are mapped by data.preference.columns; and the config check that refuses DPO with no pairs.

    .venv/bin/pytest -q tests/integration/test_dpo_user_pairs.py
"""

import json

import torch
from peft import PeftModel

from tuneline.cli import main
from tuneline.config import resolve
from tuneline.model.base import load_model
from tuneline.train.dpo import too_few_pairs

TINY = "configs/tiny.yaml"
HH = "data/hh_rlhf/helpful-base_test.prompt_chosen_rejected.jsonl"


def _stackexchange(tmp_path, n=12):
    """question / response_j (preferred) / response_k, made from the shipped HH-RLHF pairs."""
    rows = [json.loads(line) for line in resolve(HH).read_text().splitlines()[:n]]
    path = tmp_path / "se.jsonl"
    path.write_text("".join(json.dumps({"qid": i, "question": r["prompt"], "response_j": r["chosen"],
                                        "response_k": r["rejected"]}) + "\n" for i, r in enumerate(rows)))
    return path


def _small_task(tmp_path) -> list[str]:
    """A 16-row classification task (overrides of tiny.yaml), so that validating it takes no time."""
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(["card_arrival", "lost_or_stolen_card"]))
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "".join(f"my card number {i} {['never came', 'was stolen'][i % 2]},"
                                              f"{['card_arrival', 'lost_or_stolen_card'][i % 2]}\n" for i in range(16)))
    return [f"data.train_file={train}", "data.test_file=null", f"data.labels_file={labels}", "data.eval_rows=2",
            "data.rows_per_label=null", "data.checks.contamination_benchmarks=[]",
            "data.checks.near_duplicate=report"]


def _metrics(out: str) -> dict:
    """The last METRICS line `tuneline train` printed."""
    return json.loads([line for line in out.splitlines() if line.startswith("METRICS ")][-1][len("METRICS "):])


def test_dpo_trains_on_user_pairs_alone(tmp_path, tiny_ref, capsys, isolated_checkpoints):
    pairs = _stackexchange(tmp_path)
    preference = f"{{file: {pairs}, columns: {{question: prompt, response_j: chosen, response_k: rejected}}, rows: 8}}"
    overrides = [*_small_task(tmp_path), f"data.preference={preference}", "dpo.mine_mistakes=false", "dpo.max_steps=2",
                 "dpo.learning_rate=1e-3", "sft.max_steps=1", "sft.eval_steps=null"]
    sft, dpo = tmp_path / "sft", tmp_path / "dpo"
    assert main(["train", TINY, "--out", str(sft), *overrides]) == 0, capsys.readouterr().err[-3000:]
    assert main(["train", TINY, "--stage", "dpo", "--sft-adapter", str(sft), "--out", str(dpo), *overrides]) == 0, \
        capsys.readouterr().err[-3000:]
    m = _metrics(capsys.readouterr().out)
    assert (m["pairs_mined"], m["pairs_user"], m["pairs_train"], m["pairs_heldout"], m["steps"]) == (0, 8, 7, 1, 2)
    assert m["mining_seconds"] < 1  # nothing was generated
    ids = torch.tensor([[1, 20, 30, 40]])
    with torch.no_grad():
        before = PeftModel.from_pretrained(load_model(tiny_ref), sft)(ids).logits
        after = PeftModel.from_pretrained(load_model(tiny_ref), dpo)(ids).logits
    assert not torch.allclose(before, after), "DPO on the user pairs changed nothing"


def test_dpo_with_no_pairs_is_refused_before_training(tmp_path, capsys):
    out = str(tmp_path / "never")
    assert main(["train", TINY, "--out", out, "dpo.mine_mistakes=false", "data.preference=null"]) == 2
    err = capsys.readouterr().err
    assert "dpo.mine_mistakes: false trains on the user's preference pairs only" in err
    assert "set data.preference.file" in err and "Traceback" not in err
    assert not (tmp_path / "never").exists()


def test_the_no_pairs_message_names_what_can_help():
    from tuneline.config import DPOConfig

    mining_off = too_few_pairs(DPOConfig(mine_mistakes=False), 0, 0, 1)
    assert "data.preference gave 1 pairs" in mining_off and "data.mining_rows" not in mining_off
    no_rows = too_few_pairs(DPOConfig(), 0, 0, 0)
    assert "no mining rows" in no_rows and "raise data.mining_rows" not in no_rows
    all_right = too_few_pairs(DPOConfig(), 1, 40, 0)
    assert "answered 39 of its 40 mining rows right" in all_right and "raise data.mining_rows" in all_right
