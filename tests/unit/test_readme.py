"""The README is a map, and a map must not go stale: every path, make target and command it names exists.

    .venv/bin/pytest -q tests/unit/test_readme.py

README.md: every repo path (in backticks, in the annotated tree, in a markdown link) exists, every
`make X` is a Makefile target, every `tuneline <sub>` is a subcommand of tuneline/cli.py, every
`pytest ... tests/...` path exists, every #heading a link names exists, and the file stays under 10 KB.
docs/**/*.md: the same path check for paths under tuneline/, steps/, tests/, configs/, scripts/ and
k8s/, the same link and subcommand checks, and no `python -m tuneline.X` (the `tuneline` command
replaced those). A path the reader creates or a command writes (k8s/secrets/*.env, build/...) is
git-ignored, so it counts."""

import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").rglob("*.md"))
README_MAX_BYTES = 10 * 1024
DOCS_CHECKED_ROOTS = ("tuneline", "steps", "tests", "configs", "scripts", "k8s")

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
# A repo path: a relative path with at least one slash, or a file name with an extension at the root.
PATH_TOKEN = re.compile(r"^[\w.*{},-]+(/[\w.*{},-]*)*$")
# A command starts a line or follows ; & | ( (so `kubectl -n tuneline delete` is not one).
COMMAND_START = r"(?:^[ \t]*|[;&|(][ \t]*)"
TUNELINE_CMD = re.compile(COMMAND_START + r"(?:[\w.]*/bin/)?tuneline[ \t]+([a-z][\w-]*)(?:[ \t]+([a-z][\w-]*))?", re.M)
MAKE_CMD = re.compile(COMMAND_START + r"make[ \t]+([\w-]+)", re.M)
PYTEST_CMD = re.compile(r"pytest\b[^\n`]*")


def repo_roots() -> set[str]:
    """The names at the repository root a path may start with (the tracked top level, plus ignored outputs)."""
    return {p.name for p in ROOT.iterdir() if not p.name.startswith(".")} | {"build", "out"}


def code_of(text: str) -> list[str]:
    """Fenced blocks, then inline code spans outside them."""
    blocks = FENCE.findall(text)
    return blocks + INLINE.findall(FENCE.sub("", text))


def expand_braces(token: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", token)
    if not m:
        return [token]
    return [x for alt in m.group(1).split(",") for x in expand_braces(token[: m.start()] + alt + token[m.end() :])]


def path_tokens(code: str, roots: set[str]) -> list[str]:
    """The words of a code span or block that name a path starting at one of `roots`."""
    found = []
    for word in code.split():
        word = word.split("=", 1)[1] if "=" in word and "/" in word.split("=", 1)[1] else word
        word = word.split("::", 1)[0].strip("\"'(),;:")
        if not PATH_TOKEN.match(word) or word.startswith(("./", "../")):
            continue
        first = word.split("/", 1)[0]
        if first in roots and ("/" in word or Path(word).suffix):
            found.append(word.rstrip("."))
    return found


def tree_paths(text: str) -> list[str]:
    """Paths of the annotated tree: a ```text block whose lines are `name/` or `name.py`, indented 2 per level."""
    paths = []
    for block in re.findall(r"^```text\n(.*?)^```", text, re.M | re.S):
        stack: list[str] = []
        for line in block.splitlines():
            if not line.strip():
                continue
            depth = (len(line) - len(line.lstrip(" "))) // 2
            name = line.split()[0]
            stack = stack[:depth] + [name.rstrip("/")]
            paths.append("/".join(stack))
    return paths


def link_paths(text: str) -> list[str]:
    out = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        out.append(target.split("#", 1)[0])
    return out


def heading_slugs(text: str) -> set[str]:
    """The #fragments GitHub gives a markdown text's headings."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", text), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def bad_anchors(text: str, base: Path) -> list[str]:
    """Links to a heading (doc.md#heading, #heading) whose heading is not there."""
    bad = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target) or "#" not in target:
            continue
        path, fragment = target.split("#", 1)
        md = base / path
        if path and (md.suffix != ".md" or not md.exists()):
            continue  # a missing file is reported by the path check
        if fragment not in heading_slugs(md.read_text(encoding="utf-8") if path else text):
            bad.append(target)
    return bad


def ignored(path: str) -> bool:
    """Outputs and files the reader creates (build/..., k8s/secrets/*.env) are git-ignored by design."""
    if not shutil.which("git"):
        return False
    r = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT, capture_output=True)
    return r.returncode == 0


def missing(paths: list[str], base: Path = ROOT) -> list[str]:
    bad = []
    for p in dict.fromkeys(paths):
        for one in expand_braces(p):
            hits = list(base.glob(one)) if "*" in one else [base / one]
            if not any(h.exists() for h in hits) and not ignored(str((base / one).resolve().relative_to(ROOT))):
                bad.append(one)
    return bad


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {t for line in re.findall(r"^([\w.$()/ -]+):(?![=])", text, re.M) for t in line.split()}


@cache
def cli_subcommands() -> dict[str, set[str]]:
    """`tuneline`'s subcommands from its own --help (argparse prints them as {a,b,c}); config's as well."""
    if not (ROOT / "tuneline" / "cli.py").exists():
        pytest.skip("tuneline/cli.py does not exist yet: no subcommands to check against")
    exe = Path(sys.executable).parent / "tuneline"
    exe = str(exe) if exe.exists() else shutil.which("tuneline")
    assert exe, "no `tuneline` script beside this Python: run `pip install -e .` (make setup) to install it"

    def choices(*args: str) -> set[str]:
        out = subprocess.run([exe, *args, "--help"], capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert out.returncode == 0, f"`tuneline {' '.join(args)} --help` failed:\n{out.stderr[-2000:]}"
        # argparse lists subparsers as `{a,b}` in the usage, or (with a metavar) one per line, indented 4.
        listed = re.search(r"\{([\w,-]+)\}", out.stdout)
        one_per_line = re.findall(r"^    ([a-z][\w-]*)(?:  |$)", out.stdout, re.M)
        names = set(listed.group(1).split(",")) if listed else set(one_per_line)
        assert names, f"no subcommands in `tuneline {' '.join(args)} --help`:\n{out.stdout}"
        return names

    subs = choices()
    return {"": subs, "config": choices("config") if "config" in subs else set()}


def bad_subcommands(text: str) -> list[str]:
    subs = cli_subcommands()
    bad = []
    for code in code_of(text):
        for sub, second in TUNELINE_CMD.findall(code):
            if sub not in subs[""]:
                bad.append(f"tuneline {sub}")
            elif sub == "config" and second not in subs["config"]:
                bad.append(f"tuneline config {second}")
    return bad


def readme() -> str:
    return README.read_text(encoding="utf-8")


def test_readme_is_a_map_not_a_manual():
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes (limit {README_MAX_BYTES}): move detail to docs/"


def test_readme_paths_exist():
    text = readme()
    named = [p for code in code_of(text) for p in path_tokens(code, repo_roots())]
    named += tree_paths(text) + link_paths(text)
    assert tree_paths(text), "README.md has no annotated tree (a ```text block)"
    bad = missing(named) + bad_anchors(text, ROOT)
    assert not bad, f"README.md names paths (or headings) that do not exist: {bad}"


def test_readme_make_targets_exist():
    targets = makefile_targets()
    named = {t for code in code_of(readme()) for t in MAKE_CMD.findall(code)}
    assert {"run", "test", "test-fast"} <= named, "README.md must show `make run`, `make test` and `make test-fast`"
    assert not named - targets, f"README.md names make targets the Makefile lacks: {sorted(named - targets)}"


def test_readme_pytest_paths_exist():
    named = [w for code in code_of(readme()) for cmd in PYTEST_CMD.findall(code) for w in path_tokens(cmd, {"tests"})]
    bad = missing(named)
    assert not bad, f"README.md runs pytest on paths that do not exist: {bad}"


def test_readme_tuneline_subcommands_exist():
    bad = bad_subcommands(readme())
    assert not bad, f"README.md names commands tuneline/cli.py does not have: {bad}"


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_docs_paths_exist(doc: Path):
    text = doc.read_text(encoding="utf-8")
    named = [p for code in code_of(text) for p in path_tokens(code, set(DOCS_CHECKED_ROOTS))]
    bad = missing(named) + missing(link_paths(text), base=doc.parent)  # links are relative to the doc
    bad += bad_anchors(text, doc.parent)
    assert not bad, f"{doc.relative_to(ROOT)} names paths (or headings) that do not exist: {bad}"


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_docs_commands_exist(doc: Path):
    text = doc.read_text(encoding="utf-8")
    assert "python -m tuneline." not in text, f"{doc.relative_to(ROOT)}: use the `tuneline` command, not python -m"
    bad = bad_subcommands(text)
    assert not bad, f"{doc.relative_to(ROOT)} names commands tuneline/cli.py does not have: {bad}"
