import csv

import numpy as np
import pytest
from datasketch import MinHash

from tuneline.data.dedup import (
    cross_duplicates,
    exact_duplicates,
    lsh_params,
    near_duplicates,
    normalize_text,
    shingle_text,
    sketch,
)
from tuneline.paths import DATA_DIR

SENTENCE = "I ordered a new card last week and it still has not arrived, can you tell me when it comes?"
# One word of 20 changed: exact char 4-gram Jaccard 0.85.
PARAPHRASE = SENTENCE.replace("tell", "show")
OTHER = "How do I change the PIN on my card?"


def banking77_one_per_label() -> list[str]:
    with open(DATA_DIR / "banking77" / "train.csv", encoding="utf-8", newline="") as f:
        first = {}
        for row in csv.DictReader(f):
            first.setdefault(row["category"], row["text"])
    return list(first.values())


def test_normalize_text_lowercases_collapses_space_and_strips_end_punctuation():
    assert normalize_text("  Hello,\n  WORLD?! ") == "hello, world"
    assert normalize_text("...") == ""


def test_exact_duplicates_after_normalization_point_at_first_row():
    texts = ["Where is my card?", "Top up failed", "where  is my CARD", "WHERE IS MY CARD!!", "where is my, card"]
    assert exact_duplicates(texts) == {2: 0, 3: 0}


def test_sketch_is_bit_identical_to_datasketch_plain_usage():
    texts = ["I am still waiting on my card?", "", "ab", "Ünïcödé straße, café!", "x" * 30]
    for shingle in (1, 4, 8):
        values = sketch(texts, num_perm=64, shingle=shingle, seed=3)
        for text, row in zip(texts, values):
            data = shingle_text(text)
            m = MinHash(num_perm=64, seed=3)
            for s in {data[i:i + shingle] for i in range(len(data) - shingle + 1)} or {data}:
                m.update(s)
            assert np.array_equal(m.hashvalues, row), (shingle, text)


def test_one_word_changed_in_20_words_is_near_duplicate_at_08():
    assert len(SENTENCE.split()) == 20
    dups = near_duplicates([SENTENCE, OTHER, PARAPHRASE], threshold=0.8)
    assert list(dups) == [2]
    kept, sim = dups[2]
    assert kept == 0 and 0.8 <= sim < 1.0


def test_different_banking77_messages_are_not_near_duplicates():
    messages = banking77_one_per_label()
    assert len(messages) == 77
    assert near_duplicates(messages, threshold=0.8) == {}


def test_cluster_keeps_its_first_member_and_points_at_kept_rows():
    near_dropped = SENTENCE.replace("new", "second")  # 0.83 to SENTENCE, 0.72 to PARAPHRASE (est.)
    texts = [PARAPHRASE, OTHER, SENTENCE, "  " + SENTENCE.upper(), near_dropped]
    dups = near_duplicates(texts, threshold=0.8)
    # SENTENCE and its exact copy point at the kept first member, not at each other.
    assert dups.keys() == {2, 3}
    assert dups[2][0] == 0 and dups[3][0] == 0
    # Close to the dropped row 2 only: no chaining through dropped rows, so it is kept.
    assert 4 not in dups


def test_exact_duplicates_are_near_duplicates_with_similarity_1():
    assert near_duplicates(["Top up failed.", "top up FAILED"]) == {1: (0, 1.0)}


def test_cross_duplicates_finds_exact_and_near_leaks():
    train = ["Why was my transfer declined?", OTHER.upper() + "!", PARAPHRASE, "Can I get a refund?"]
    other = [SENTENCE, "How do I change the PIN on my card"]
    leaks = cross_duplicates(train, other, threshold=0.8)
    assert set(leaks) == {1, 2}
    assert leaks[1] == (1, 1.0)
    assert leaks[2][0] == 0 and 0.8 <= leaks[2][1] < 1.0
    assert cross_duplicates(train, [], threshold=0.8) == {}


def test_lsh_bands_catch_pairs_at_the_threshold():
    b, r = lsh_params(0.85, 128)
    assert (b, r) == (16, 8)
    assert 1 - (1 - 0.85**r) ** b >= 0.99
    assert b * r <= 128


def test_empty_input_and_bad_arguments():
    assert near_duplicates([]) == {}
    assert exact_duplicates([]) == {}
    with pytest.raises(ValueError, match="shingle"):
        near_duplicates(["a"], shingle=9)
    with pytest.raises(ValueError, match="threshold"):
        near_duplicates(["a"], threshold=0)
