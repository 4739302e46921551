"""Benchmark contamination: training texts that contain word n-grams of the benchmark questions.

    from tuneline.data.contamination import NgramIndex, gsm8k_texts, mmlu_texts
    index = NgramIndex(n=13)
    index.add("mmlu", mmlu_texts(subjects=["marketing", "nutrition"]))
    index.add("gsm8k", gsm8k_texts())
    index.find(text)      # ("gsm8k", "the matched n gram") for the first hit, or None
    index.scan(texts)     # {row: (benchmark, n-gram)} for every contaminated row

    tuneline validate configs/default.yaml   # data.checks.contamination scans the training rows

Texts are compared as lowercased word tokens (`\\w+`: punctuation, spacing and case do not matter);
13 words is the GPT-3 paper's contamination n-gram. A training row is contaminated when it contains one
of a benchmark text's 13-grams. Benchmark texts shorter than n words cannot have one, so a text of
`min_words` (8) to n-1 words is indexed whole instead: a training row that contains it verbatim is
caught. Texts under 8 words are not indexed: they are generic ("The pleura", "What is produced during
photosynthesis?") and would match unrelated training rows. The loaders add every question with its
correct answer as well, which brings 968 of MMLU's 1,126 questions under 8 words to 8 or more ("Why
is Mars red? Because the surface is covered with heavily oxidized ("rusted") minerals.").
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable
from pathlib import Path

from tuneline.eval.gsm8k import GSM8K_FILE
from tuneline.eval.mmlu import LETTERS, MMLU_DIR

_WORD = re.compile(r"\w+")
# GSM8K solutions carry calculator annotations (<<16-3-4=9>>) that copies elsewhere usually lack.
_CALC = re.compile(r"<<[^>]*>>")


def tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class NgramIndex:
    """Word n-grams of named benchmark texts; `find` reports the first one a text contains."""

    def __init__(self, n: int = 13, min_words: int = 8):
        if n < 1 or not 1 <= min_words <= n:
            raise ValueError(f"need n >= 1 and 1 <= min_words <= n (got n={n}, min_words={min_words})")
        self.n, self.min_words = n, min_words
        # gram (words joined by a space) -> benchmark name; the first benchmark to add a gram keeps it.
        self.grams: dict[str, str] = {}
        # Lengths of the whole-text grams of benchmark texts shorter than n words (looked up too).
        self.short_lengths: set[int] = set()
        self.indexed: dict[str, int] = {}  # benchmark name -> texts indexed

    def add(self, name: str, texts: Iterable[str]) -> int:
        """Index the texts under benchmark `name`; returns how many were long enough to index."""
        added = 0
        for text in texts:
            words = tokens(text)
            if len(words) < self.min_words:
                continue
            if len(words) < self.n:
                self.short_lengths.add(len(words))
                self.grams.setdefault(" ".join(words), name)
            else:
                for i in range(len(words) - self.n + 1):
                    self.grams.setdefault(" ".join(words[i:i + self.n]), name)
            added += 1
        self.indexed[name] = self.indexed.get(name, 0) + added
        return added

    def find(self, text: str) -> tuple[str, str] | None:
        """(benchmark name, matched n-gram) for the leftmost benchmark gram in text, or None."""
        words = tokens(text)
        lengths = sorted(self.short_lengths | {self.n})
        for i in range(len(words)):
            for k in lengths:
                if i + k > len(words):
                    break
                gram = " ".join(words[i:i + k])
                name = self.grams.get(gram)
                if name is not None:
                    return name, gram
        return None

    def scan(self, texts: Iterable[str]) -> dict[int, tuple[str, str]]:
        """Row -> (benchmark name, matched n-gram) for every text with a hit."""
        hits = {}
        for i, text in enumerate(texts):
            hit = self.find(text)
            if hit is not None:
                hits[i] = hit
        return hits

    def __len__(self) -> int:
        return len(self.grams)


def mmlu_texts(root: Path = MMLU_DIR, subjects: list[str] | None = None) -> list[str]:
    """Every MMLU dev and test question, alone and followed by its correct answer's text.

    root is the directory with dev/ and test/ (data/mmlu/data); subjects None means all of them.
    The CSVs have no header: question, A, B, C, D, answer letter.
    """
    root = Path(root)
    if subjects is None:
        subjects = sorted(p.name[: -len("_test.csv")] for p in (root / "test").glob("*_test.csv"))
        if not subjects:
            raise FileNotFoundError(f"no MMLU files under {root / 'test'}: pass the directory that has dev/ and test/")
    texts = []
    for subject in subjects:
        for split in ("dev", "test"):
            path = root / split / f"{subject}_{split}.csv"
            if not path.exists():
                raise FileNotFoundError(f"no MMLU file {path}: check the subject names (as in {root / 'test'})")
            with open(path, encoding="utf-8", newline="") as f:
                for line, row in enumerate(csv.reader(f), 1):
                    if len(row) != 6 or row[5].strip().upper() not in LETTERS:
                        raise ValueError(f"{path}:{line}: expected question,A,B,C,D,answer-letter; got {row!r}")
                    question, answer = row[0].strip(), row[1 + LETTERS.index(row[5].strip().upper())].strip()
                    texts += [question, f"{question} {answer}"]
    return texts


def gsm8k_texts(path: Path = GSM8K_FILE) -> list[str]:
    """Every GSM8K question, alone and followed by its worked solution (calculator annotations removed)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no GSM8K file; expected JSONL with question and answer fields")
    texts = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
                question, answer = doc["question"].strip(), _CALC.sub("", doc["answer"]).strip()
            except (json.JSONDecodeError, KeyError, AttributeError) as e:
                raise ValueError(f"{path}:{line_no}: expected a JSON object with question and answer ({e!r})") from None
            texts += [question, f"{question} {answer}"]
    return texts
