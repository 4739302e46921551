import pytest

from tuneline.config import GSM8KConfig
from tuneline.eval import gsm8k


@pytest.mark.parametrize(
    "output, expected",
    [
        ("so she makes 9 * 2 = 18\n#### 1,234", "1234"),
        ("#### 18 and later 42", "18"),  # '#### N' wins over the last number
        ("The answer is $5.", "5"),
        ("3 apples and 4 pears make 7 fruits", "7"),
        ("It drops to -12 degrees", "-12"),
        ("He pays $1,000.50 in total.", "1000.50"),
        ("no idea", None),
        ("", None),
    ],
)
def test_extract_answer(output, expected):
    assert gsm8k.extract_answer(output) == expected


def test_gsm8k_scoring_against_reference():
    doc = {"question": "q", "answer": "2+2=<<2+2=4>>4\n#### 1,004"}
    assert gsm8k.gsm8k_reference(doc) == "1004"
    assert gsm8k.gsm8k_process_results(doc, [" 1000 + 4 = 1004"]) == {"exact_match": 1.0}
    assert gsm8k.gsm8k_process_results(doc, ["#### 1004.0"]) == {"exact_match": 0.0}


def test_gsm8k_items_come_after_the_pool():
    assert gsm8k.gsm8k_items(GSM8KConfig(limit=3, fewshot_pool=20)) == [20, 21, 22]
    with pytest.raises(ValueError, match="fewshot_pool"):
        gsm8k.gsm8k_task_config(GSM8KConfig(num_fewshot=5, fewshot_pool=2))
