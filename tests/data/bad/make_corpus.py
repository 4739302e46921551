"""Write the bad-input corpus that tests/unit/data/test_readers.py reads (binary, gzip and Parquet files included).

    .venv/bin/python tests/data/bad/make_corpus.py            # rewrites the files next to this script
    .venv/bin/python tests/data/bad/make_corpus.py OUT_DIR    # or somewhere else (the test compares)

Each file holds one kind of problem, next to good rows that must survive it. The expected outcome
of every file is in the CASES table of tests/unit/data/test_readers.py; change both together.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path


def j(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def lines(*rows: bytes, end: bytes = b"\n") -> bytes:
    return b"".join(r + end for r in rows)


def alpaca(i) -> bytes:
    return j({"instruction": f"Say {i}", "output": f"{i}"})


def chat(*turns, key="messages") -> bytes:
    return j({key: [{"role": r, "content": c} for r, c in turns]})


GOOD_CHAT = chat(("user", "hi"), ("assistant", "hello"))
HH = "\n\nHuman: Can you help me?\n\nAssistant: Sure.\n\nHuman: What is 2+2?\n\nAssistant:"

# Pre-built gzip header, then bytes that are not deflate data: fixed bytes, no zlib version in them.
CORRUPT_GZIP = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + b"this is not deflate data\n" * 4


def files() -> dict[str, bytes]:
    return {
        "bad_json.jsonl": lines(alpaca(1), b'{"instruction": "broken", "output": ', alpaca(3)),
        "bom.jsonl": b"\xef\xbb\xbf" + lines(alpaca(1), alpaca(2)),
        "crlf.jsonl": lines(alpaca(1), alpaca(2), end=b"\r\n"),
        "bom_crlf.csv": b"\xef\xbb\xbf" + lines(b"text,label", b"hello,greet", b'"bye, then",farewell', end=b"\r\n"),
        "blank_lines.jsonl": lines(alpaca(1), b"", b"   ", alpaca(4), b""),
        "mixed_shapes.jsonl": lines(alpaca(1), GOOD_CHAT, alpaca(3), j({"text": "hi", "label": "greet"})),
        "field_checks.jsonl": lines(
            alpaca(1),
            j({"instruction": "a", "output": None}),                 # 2 missing_field output
            j({"instruction": "b", "output": 5}),                    # 3 wrong_type output
            j({"instruction": "   ", "output": "c"}),                # 4 empty_field instruction
            j({"instruction": "d", "note": "no output key"}),        # 5 missing_field output
            j({"instruction": "e", "input": 3, "output": "f"}),      # 6 wrong_type input
            b'{"instruction": "g", "output": NaN}',                  # 7 nan output (Python json writes NaN)
            j({"instruction": "h", "input": "ctx", "output": "i"}),
        ),
        "wrong_role_order.jsonl": lines(
            GOOD_CHAT,
            chat(("user", "a"), ("user", "b"), ("assistant", "c")),
            chat(("user", "a"), ("system", "b"), ("assistant", "c")),
            chat(("assistant", "a"), ("user", "b"), ("assistant", "c")),
            chat(("system", "be brief"), ("user", "hi"), ("assistant", "hello")),
        ),
        "missing_assistant_turn.jsonl": lines(
            GOOD_CHAT,
            chat(("user", "a")),
            chat(("user", "a"), ("assistant", "b"), ("user", "c")),
            chat(("system", "s")),
        ),
        "unknown_role.jsonl": lines(
            GOOD_CHAT,
            chat(("user", "a"), ("tool", "b")),
            chat(("user", "a"), ("bot", "b")),
            j({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}),
        ),
        "bad_messages.jsonl": lines(
            GOOD_CHAT,
            j({"messages": "hi"}),
            j({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}),
            j({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                            {"role": "assistant", "content": "x"}]}),
            j({"messages": []}),
        ),
        "unknown_label.csv": lines(b"text,label", b"hello,greet", b"what is the weather,weather", b"bye,farewell"),
        "nan.csv": lines(b"text,category", b"hello,greet", b"NaN,greet", b"hello again,", b"bye,farewell"),
        "multiline.csv": lines(b"text,label", b'"two\nlines",greet', b"nan,greet", b"bye,farewell"),
        "ragged.csv": lines(b"text,label", b"hello,greet", b"hello, there,greet", b"bye,farewell"),
        "huge_line.jsonl.gz": gzip.compress(
            lines(alpaca(1), j({"instruction": "x" * 1_100_000, "output": "y"}), alpaca(3)), mtime=0),
        "binary.jsonl": lines(alpaca(1), b"\x00\x01\x02PK\x03\x04\x00\x00junk", alpaca(3)),
        "invalid_utf8.jsonl": lines(alpaca(1), b'{"instruction": "caf\xe9", "output": "x"}', alpaca(3)),
        "surrogate.jsonl": lines(alpaca(1), b'{"instruction": "\\ud800", "output": "x"}', alpaca(3)),
        "not_an_object.jsonl": lines(alpaca(1), b"[1, 2]", b"42", b'"a string"', b"null", alpaca(6)),
        "all_bad.jsonl": lines(b"[", b'  {"instruction": "pretty-printed"},', b"]"),
        "empty.jsonl": b"",
        "blank_only.jsonl": b"\n\n   \r\n",
        "header_only.csv": b"text,label\n",
        "corrupt.jsonl.gz": CORRUPT_GZIP,
        "corrupt.parquet": b"PAR1" + b"\x00garbage, not a parquet footer" * 3 + b"PAR1",
        "unknown_shape.jsonl": lines(j({"question": "q", "answer": "a"})),
        "ambiguous_shape.jsonl": lines(j({"prompt": "p", "completion": "c", "chosen": "x", "rejected": "y"})),
        "csv_missing_column.csv": lines(b"text", b"hello", b"bye"),
        "columns_missing.jsonl": lines(j({"question": "q", "response": "a"}), j({"question": "q2", "response": None})),
        "top_level_scalar.json": b"42\n",
        "two_lists.json": j({"train": [json.loads(alpaca(1))], "test": [json.loads(alpaca(2))]}),
        "wrapped.json": j({"data": [json.loads(alpaca(1)), 7, json.loads(alpaca(3))]}),
        "jsonl_named.json": lines(alpaca(1), alpaca(2)),
        "unsupported.txt": b"instruction: say hi\noutput: hi\n",
        "hh_no_shared_prefix.jsonl": lines(
            j({"chosen": HH + " Four.", "rejected": HH + " Five."}),
            j({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"}),
            j({"chosen": HH + " Same.", "rejected": HH + " Same."}),
            j({"chosen": HH + " 4", "rejected": HH + " 4, I think"}),
        ),
        "preference.jsonl": lines(
            j({"prompt": "2+2?", "chosen": "4", "rejected": "5"}),
            j({"prompt": [{"role": "user", "content": "2+2?"}], "chosen": [{"role": "assistant", "content": "4"}],
               "rejected": [{"role": "assistant", "content": "5"}]}),
            j({"prompt": "2+2?", "chosen": "4", "rejected": " 4 "}),
            j({"prompt": "2+2?", "chosen": [{"role": "user", "content": "4"}], "rejected": "5"}),
            j({"prompt": HH, "chosen": " Four.", "rejected": " Five."}),
        ),
    }


def parquet_null(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"text": ["hello", None, "bye", "hi again"], "label": ["greet", "greet", "farewell", None]})
    pq.write_table(table, path)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files().items():
        (out / name).write_bytes(data)
    parquet_null(out / "parquet_null.parquet")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
