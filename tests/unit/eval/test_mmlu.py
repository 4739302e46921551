from tuneline.eval import mmlu

DOC = {"question": " What is 2+2? ", "A": "3", "B": "4", "C": "5", "D": "None", "answer": "B"}
SHOT = {"question": "Pick C.", "A": "a", "B": "b", "C": "c", "D": "d", "answer": "C"}


def test_mmlu_letter_prompt():
    assert mmlu.mmlu_prompt("high_school_geography", DOC, "letter", (SHOT,)) == (
        "The following are multiple choice questions (with answers) about high school geography.\n\n"
        "Pick C.\nA. a\nB. b\nC. c\nD. d\nAnswer: C\n\n"
        "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. None\nAnswer:"
    )
    assert mmlu.mmlu_choices(DOC, "letter") == ["A", "B", "C", "D"]
    assert mmlu.mmlu_target(DOC) == 1


def test_mmlu_cloze_prompt():
    assert mmlu.mmlu_prompt("marketing", DOC, "cloze", (SHOT,)) == (
        "The following are questions (with answers) about marketing.\n\n"
        "Question: Pick C.\nAnswer: c\n\n"
        "Question: What is 2+2?\nAnswer:"
    )
    assert mmlu.mmlu_choices(DOC, "cloze") == ["3", "4", "5", "None"]
