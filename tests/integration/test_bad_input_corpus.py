"""Every bad input in tests/data/bad/ through the `tuneline` CLI (in-process, cli.main): zero tracebacks.

    .venv/bin/pytest -q -s tests/integration/test_bad_input_corpus.py     # -s prints the tally

Four kinds: run configs (config/, `tuneline config check`), command lines (overrides, flags, paths that
are directories), validation inputs (validation/, `tuneline validate configs/tiny.yaml data.KEY=FILE`, the
tiny tokenizer) and data files (the reader corpus of make_corpus.py plus the general texts of eval_text/,
`tuneline validate --source FILE`). Each outcome is one of:
  clear      exit code != 0, the message names the file or key (the case's expected text), no traceback
  traceback  an exception escaped cli.main, or "Traceback" was printed
  accepted   exit code 0; for data files every input row is either a record or a quarantined reject
  unclear    exit code != 0 without naming what is wrong
The test asserts zero tracebacks, every error case clear, and records + rejected == input rows for every
data file read.
"""

from __future__ import annotations

import io
import json
import traceback
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from tuneline import cli
from tuneline.paths import PROJECT_ROOT

BAD = PROJECT_ROOT / "tests" / "data" / "bad"
TINY = str(PROJECT_ROOT / "configs" / "tiny.yaml")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".gz", ".txt")
# Known holes, each counted in the tally but not failed; empty while every bad input gets a clear error.
KNOWN: dict[str, str] = {}


def run_cli(argv: list[str]) -> tuple[int | None, str, str]:
    """(exit code or None when an exception escaped, stdout, stderr + any traceback)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            rc = cli.main(argv)
    except SystemExit as e:  # argparse's own usage errors
        rc = e.code if isinstance(e.code, int) else 2
    except Exception:  # noqa: BLE001 (the point: nothing may escape)
        return None, out.getvalue(), err.getvalue() + traceback.format_exc()
    return rc, out.getvalue(), err.getvalue()


def outcome(rc: int | None, stdout: str, stderr: str, expect: str | None) -> str:
    if rc is None or "Traceback" in stdout + stderr:
        return "traceback"
    if rc == 0:
        return "accepted"
    return "clear" if expect is None or expect.lower() in stderr.lower() else "unclear"


def expected(sub: str) -> dict[str, str]:
    return json.loads((BAD / sub / "expect.json").read_text())


def command_cases(tmp: Path) -> list[tuple[str, list[str], str]]:
    """(name, argv, what the error must name): command lines and filesystem cases git cannot hold."""
    (tmp / "a_dir").mkdir()
    (tmp / "empty_dir").mkdir()
    src = str(BAD / "bom.jsonl")
    return [
        ("missing_config", ["config", "check", str(tmp / "nope.yaml")], "nope.yaml"),
        ("config_is_dir", ["config", "check", str(tmp / "a_dir")], "a_dir"),
        ("override_unknown_key", ["config", "check", TINY, "sft.rr=1"], "rr"),
        ("override_bad_value", ["config", "check", TINY, "sft.r=abc"], "sft.r"),
        ("override_bad_yaml", ["config", "check", TINY, "sft.r=[1"], "sft.r"),
        ("override_quoted_number", ["config", "check", TINY, "sft.epochs='2'"], "sft.epochs"),
        ("override_inf", ["config", "check", TINY, "dpo.epochs=.inf"], "dpo.epochs"),
        ("override_system_path", ["config", "check", TINY, "base_model.cache_dir=/usr/share"], "cache_dir"),
        ("override_layout", ["config", "check", TINY, "sft=5"], "sft"),
        ("merge_bad_overlay", ["config", "merge", TINY, str(BAD / "config" / "epochs_inf.yaml"), "-o",
                               str(tmp / "merged.yaml")], "sft.epochs"),
        ("columns_without_value", ["validate", TINY, "--source", src, "--columns", "text"], "--columns"),
        ("shape_unknown", ["validate", TINY, "--source", src, "--shape", "csv"], "--shape"),
        ("source_missing", ["validate", TINY, "--source", str(tmp / "gone.jsonl")], "gone.jsonl"),
        ("source_empty_dir", ["validate", TINY, "--source", str(tmp / "empty_dir")], "empty_dir"),
        ("labels_file_is_dir", ["validate", TINY, f"data.labels_file={tmp / 'a_dir'}"], "a_dir"),
        ("train_file_missing", ["validate", TINY, f"data.train_file={tmp / 'gone.csv'}"], "gone.csv"),
        ("train_file_empty_dir", ["validate", TINY, f"data.train_file={tmp / 'empty_dir'}"], "empty_dir"),
    ]


def data_files() -> list[Path]:
    reader_corpus = [p for p in sorted(BAD.iterdir()) if p.is_file() and p.name.endswith(DATA_SUFFIXES)]
    return reader_corpus + sorted(p for p in (BAD / "eval_text").iterdir() if p.name != "expect.json")


def test_no_bad_input_gives_a_traceback_or_loses_a_row(tmp_path, tiny_ref):
    rows: list[tuple[str, str, str]] = []  # (kind/name, outcome, detail)
    row_mismatches = []

    for name, expect in expected("config").items():
        rc, out, err = run_cli(["config", "check", str(BAD / "config" / name)])
        rows.append((f"config/{name}", outcome(rc, out, err, expect), err.strip()[-300:]))

    for name, argv, expect in command_cases(tmp_path):
        rc, out, err = run_cli(argv)
        rows.append((f"command/{name}", outcome(rc, out, err, expect), err.strip()[-300:]))

    for name, expect in expected("validation").items():
        key = "data.train_file" if name.startswith("train_") else "data.labels_file"
        rc, out, err = run_cli(["validate", TINY, f"{key}={BAD / 'validation' / name}"])
        rows.append((f"validation/{name}", outcome(rc, out, err, expect), err.strip()[-300:]))

    for path in data_files():
        rc, out, err = run_cli(["validate", TINY, "--source", str(path)])
        kind = outcome(rc, out, err, path.name)
        if kind == "accepted":
            read = json.loads(out)
            if read["records"] + read["rejected"] != read["input_rows"]:
                row_mismatches.append((path.name, read))
        rows.append((f"data/{path.parent.name}/{path.name}", kind, err.strip()[-300:]))

    tally = Counter(kind for _, kind, _ in rows)
    print(f"\nbad inputs tried {len(rows)}: " + ", ".join(f"{k} {tally[k]}" for k in
                                                       ("clear", "traceback", "accepted", "unclear")))
    for name, kind, detail in rows:
        if kind in ("traceback", "unclear") or name.split("/")[-1] in KNOWN:
            print(f"  {kind:9} {name}: {KNOWN.get(name.split('/')[-1], detail)}")
    assert len(rows) >= 100
    assert tally["traceback"] == 0, [r for r in rows if r[1] == "traceback"]
    assert not row_mismatches, f"rows lost (records + rejected != input rows): {row_mismatches}"
    errors_expected = [r for r in rows if not r[0].startswith("data/") and r[0].split("/")[-1] not in KNOWN]
    assert [r for r in errors_expected if r[1] != "clear"] == []
