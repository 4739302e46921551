import csv
import json

import pytest

from tuneline.data.contamination import NgramIndex, gsm8k_texts, mmlu_texts, tokens
from tuneline.eval.gsm8k import GSM8K_FILE
from tuneline.eval.mmlu import MMLU_DIR
from tuneline.paths import DATA_DIR

# 20 words.
BENCH = "A farmer has 17 sheep and all but 9 run away after the storm, how many sheep are left on the farm?"


@pytest.fixture(scope="module")
def index() -> NgramIndex:
    idx = NgramIndex(n=13)
    idx.add("mmlu", mmlu_texts(MMLU_DIR, ["anatomy", "marketing"]))
    idx.add("gsm8k", gsm8k_texts(GSM8K_FILE))
    return idx


def test_gsm8k_question_pasted_into_a_training_row_is_found(index):
    question = json.loads(GSM8K_FILE.read_text(encoding="utf-8").splitlines()[100])["question"]
    row = f"Hi! Could you solve this for me:\n{question.upper()}\nThanks a lot."
    name, gram = index.find(row)
    assert name == "gsm8k"
    assert len(gram.split()) == 13 and gram in " ".join(tokens(question))


def test_mmlu_question_with_answer_is_found(index):
    # anatomy dev row 1; the question alone is 9 words, indexed whole.
    assert index.find("Q: what is the embryological origin of the hyoid bone") == \
        ("mmlu", "what is the embryological origin of the hyoid bone")


def test_12_shared_words_are_not_a_13_gram():
    idx = NgramIndex(n=13)
    idx.add("toy", [BENCH])
    words = BENCH.split()
    assert idx.find("Note: " + " ".join(words[3:15]) + " pasture") is None
    assert idx.find("Note: " + " ".join(words[3:16]) + " pasture") == ("toy", " ".join(tokens(" ".join(words[3:16]))))


def test_short_benchmark_texts_match_whole_from_8_words():
    idx = NgramIndex(n=13, min_words=8)
    assert idx.add("toy", ["Which planet is closest to the sun in our system?", "What is a noun?"]) == 1
    assert idx.find("quiz: which planet is closest to the sun in our system? mercury") == \
        ("toy", "which planet is closest to the sun in our system")
    assert idx.find("which planet is closest to the sun") is None  # part of a short text is not enough
    assert idx.find("what is a noun") is None  # under 8 words: not indexed


def test_clean_banking77_training_rows_have_no_hits(index):
    with open(DATA_DIR / "banking77" / "train.csv", encoding="utf-8", newline="") as f:
        texts = [r["text"] for r in csv.DictReader(f)][:3000]
    assert index.scan(texts) == {}


def test_mmlu_loader_reads_questions_and_correct_answers():
    texts = mmlu_texts(MMLU_DIR, ["anatomy"])
    rows = 0
    for split in ("dev", "test"):
        with open(MMLU_DIR / split / f"anatomy_{split}.csv", encoding="utf-8", newline="") as f:
            rows += sum(1 for _ in csv.reader(f))
    assert len(texts) == 2 * rows == 2 * (5 + 135)
    assert texts[:2] == [
        "What is the embryological origin of the hyoid bone?",
        "What is the embryological origin of the hyoid bone? The second and third pharyngeal arches",
    ]
    assert len(mmlu_texts(MMLU_DIR)) == 2 * 14327  # all 57 subjects, dev + test
    with pytest.raises(FileNotFoundError, match="subject"):
        mmlu_texts(MMLU_DIR, ["no_such_subject"])


def test_gsm8k_loader_reads_questions_and_solutions_without_calculator_marks():
    texts = gsm8k_texts(GSM8K_FILE)
    assert len(texts) == 2 * 1319
    assert texts[0].startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert texts[1].startswith(texts[0]) and "9 duck eggs a day" in texts[1] and "#### 18" in texts[1]
    assert not any("<<" in t for t in texts)
