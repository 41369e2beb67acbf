"""Multi-step arithmetic word problems as a chat dataset, the data of the ``smollm2_reasoning`` preset.

Each row is what a user's reasoning dataset looks like: a ``prompt`` column of chat messages (a system turn
asking for the reasoning inside ``<think>...</think>`` and then the bare answer; the question
as the user turn; and the assistant's answer opened with "<think>", which the model continues: without it
SmolLM2-135M never writes the tag, so a format reward would have nothing to reinforce) and an ``answer``
column with the number. Three splits, written once as parquet files and cached:

- ``train`` and ``test`` (in-distribution): two steps with small numbers ("has 5, gets 3 more, gives away 2");
- ``hard`` (held out, harder): three steps, larger numbers, a multiplication among them.

Sized for SmolLM2-135M-Instruct, which solves a few of the two-step ones and fewer of the hard ones before
training (measured: ``bench/results/smollm2_reasoning.md``). Generated from a seed: the same files everywhere.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

VERSION = "v1"  # bump when the problems change: the cache keeps one folder per version
SPLITS = {"train": 4000, "test": 200, "hard": 200}
SYSTEM = "Think briefly inside <think> and </think>, then write only the final answer as a number."
PREFILL = "<think>"  # the answer starts inside the reasoning: the model continues it (a final assistant message)
NAMES = ("Tom", "Anna", "Ben", "Maria", "Sam", "Lena", "Omar", "Kim", "Leo", "Zoe")
ITEMS = ("apples", "marbles", "stickers", "books", "coins", "pencils", "cards", "shells")


def _two_step(r: random.Random) -> tuple[str, int]:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(2, 6), r.randint(2, 6)
    kind = r.randrange(3)
    if kind == 0:
        c = r.randint(1, 3)
        return f"{name} has {a} {item}. {name} gets {b} more and then gives away {c}. How many {item} does " \
               f"{name} have now?", a + b - c
    if kind == 1:
        c = r.randint(1, 3)
        return f"{name} has {a} {item} and buys {b} more. Then {name} buys {c} more. How many {item} does " \
               f"{name} have?", a + b + c
    c = r.randint(1, a - 1)
    return f"{name} had {a} {item}, lost {c}, and then found {b}. How many {item} does {name} have now?", a - c + b


def _three_step(r: random.Random) -> tuple[str, int]:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    boxes, per_box = r.randint(3, 9), r.randint(4, 12)
    extra, given = r.randint(10, 60), r.randint(5, 30)
    if r.randrange(2):
        return f"{name} buys {boxes} boxes of {item} with {per_box} {item} in each box. {name} already had " \
               f"{extra} {item} and then gives {given} to a friend. How many {item} does {name} have now?", \
            boxes * per_box + extra - given
    return f"A shop has {extra} {item}. It receives {boxes} packs of {per_box} {item} and sells {given}. How " \
           f"many {item} does the shop have left?", extra + boxes * per_box - given


def rows(split: str, seed: int = 0) -> list[dict]:
    """The rows of ``split`` (train, test or hard): {"prompt": [system, user], "answer": "N"}."""
    r = random.Random(f"{seed}/{split}")
    make = _three_step if split == "hard" else _two_step
    out, seen = [], set()
    while len(out) < SPLITS[split]:
        question, answer = make(r)
        if question in seen:
            continue
        seen.add(question)
        out.append({"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question},
                               {"role": "assistant", "content": PREFILL}], "answer": str(answer)})
    return out


def dataset_dir(root: str | Path | None = None) -> Path:
    """Where the splits are cached: $AREAL_CACHE or ~/.cache/areal, word-problems-VERSION."""
    root = Path(root or os.environ.get("AREAL_CACHE", Path.home() / ".cache" / "areal"))
    return root / f"word-problems-{VERSION}"


def write_word_problems(root: str | Path | None = None) -> Path:
    """Write every split once (test and train never share a question); returns the folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = dataset_dir(root)
    if all((folder / f"{split}.parquet").exists() for split in SPLITS):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    splits = {split: rows(split) for split in SPLITS}
    held = {r["prompt"][1]["content"] for r in splits["test"]}
    splits["train"] = [r for r in splits["train"] if r["prompt"][1]["content"] not in held]
    for split, data in splits.items():
        tmp = folder / f".{split}.parquet.tmp"
        pq.write_table(pa.Table.from_pylist(data), tmp)
        tmp.rename(folder / f"{split}.parquet")
    return folder


def word_problems_path(split: str) -> str:
    """The parquet file of ``split``, written on first use (the ``${areal_data:word_problems/SPLIT}`` that
    presets name)."""
    if split not in SPLITS:
        raise ValueError(f"word_problems has splits {sorted(SPLITS)}, not {split!r}")
    return str(write_word_problems() / f"{split}.parquet")
