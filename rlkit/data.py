"""Prompt datasets: the shipped generated word problems, local files and hub datasets, in one row format.

Every row becomes ``{"prompt": [chat messages], "question": str, "answer": reference}``; ``answer`` reaches
reward models as the reference (TRL passes dataset columns to reward functions).

Example:
    >>> rows = arithmetic_problems(3, seed=0)
    >>> rows[0]["answer"].split("####")[-1].strip().isdigit()
    True
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

DEFAULT_SYSTEM_PROMPT = (
    "Solve the problem step by step. Write one calculation per step, like '12 * 3 = 36', and separate steps "
    "with a blank line. Finish with 'The answer is N.'"
)

_NAMES = ["Ava", "Ben", "Chloe", "Dev", "Emma", "Finn", "Gita", "Hugo", "Iris", "Jon", "Kira", "Liam"]
_ITEMS = ["apples", "stickers", "marbles", "books", "cookies", "shells", "pencils", "cards"]


def _problem(rng: random.Random) -> dict[str, Any]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b, c = rng.randint(3, 20), rng.randint(2, 6), rng.randint(2, 9)
    kind = rng.randrange(6)
    if kind == 4:  # one-step problems keep the task within reach of a small model
        family = "find_more"
        total = a + b * c
        q = f"{name} has {a} {item} and finds {b * c} more. How many {item} does {name} have now?"
        steps = [f"{a} + {b * c} = {total}"]
    elif kind == 5:
        family = "rows"
        total = b * c
        q = f"A shelf has {b} rows with {c} {item} in each row. How many {item} are on the shelf?"
        steps = [f"{b} * {c} = {total}"]
    elif kind == 0:
        family = "buy_packs"
        total = a + b * c
        q = f"{name} has {a} {item}. {name} buys {b} packs with {c} {item} each. How many {item} does {name} have now?"
        steps = [f"{b} * {c} = {b * c}", f"{a} + {b * c} = {total}"]
    elif kind == 1:
        family = "give_away"
        d = rng.randint(1, a + b * c - 1)
        total = a + b * c - d
        q = (f"{name} has {a} {item} and gets {b} bags of {c} {item}. Then {name} gives away {d} {item}. "
             f"How many {item} are left?")
        steps = [f"{b} * {c} = {b * c}", f"{a} + {b * c} = {a + b * c}", f"{a + b * c} - {d} = {total}"]
    elif kind == 2:
        family = "cost"
        per = rng.randint(2, 9)
        n = b * c
        total = n * per
        q = (f"A box holds {b} rows of {c} {item}. Each of the {item} costs {per} dollars. "
             f"How many dollars do all the {item} in the box cost?")
        steps = [f"{b} * {c} = {n}", f"{n} * {per} = {total}"]
    else:
        family = "share"
        groups = rng.randint(2, 6)
        n = groups * c
        q = (f"{name} splits {n} {item} equally among {groups} friends and keeps {a} more {item} at home. "
             f"How many {item} does each friend get, plus the ones at home?")
        total = c + a
        steps = [f"{n} / {groups} = {c}", f"{c} + {a} = {total}"]
    answer = "\n".join(steps) + f"\n#### {total}"
    return {"question": q, "answer": answer, "family": family}


ARITHMETIC_FAMILIES = ("buy_packs", "give_away", "cost", "share", "find_more", "rows")


def arithmetic_problems(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` generated arithmetic word problems (one to three steps) with exact answers (GSM8K answer format);
    ``family`` names the problem template (one of :data:`ARITHMETIC_FAMILIES`), e.g. to hold one out."""
    rng = random.Random(seed)
    return [_problem(rng) for _ in range(n)]


BUILTIN_DATASETS = {"arithmetic": arithmetic_problems}


def worked_solution(answer: str) -> str:
    r"""A reference answer as the worked solution the policy is asked to write (the SFT target): its steps one
    per paragraph (GSM8K calculator annotations ``<<48/2=24>>`` dropped), then ``The answer is N.``.

    Example:
        >>> worked_solution("2 * 3 = 6\n4 + 6 = 10\n#### 10")
        '2 * 3 = 6\n\n4 + 6 = 10\n\nThe answer is 10.'
    """
    body, found, final = answer.rpartition("####")
    if not found:
        body, final = answer, ""
    steps = [re.sub(r"<<[^>]*>>", "", ln).strip() for ln in body.splitlines()]
    steps = [s for s in steps if s]
    final = final.strip()
    return "\n\n".join(steps + ([f"The answer is {final}."] if final else []))


class DataError(ValueError):
    """A dataset that cannot be read or lacks the named fields; one-line message."""


def _read_source(src: str, split: str, n_default: int, seed: int) -> list[dict[str, Any]]:
    if src.startswith("builtin:"):
        name = src.split(":", 1)[1]
        # Different seeds for train and eval so the held-out problems are not the training problems.
        return BUILTIN_DATASETS[name](n_default, seed=seed + (0 if split == "train" else 10_000))
    from datasets import load_dataset

    if src.startswith("hub:"):
        ident = src[4:]
        repo, _, config = ident.partition(":")
        ds = load_dataset(repo, config or None, split=split)
    else:
        path = Path(src)
        if not path.is_file():
            raise DataError(f"data file not found: {src}")
        fmt = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(path.suffix)
        if fmt is None:
            raise DataError(f"{src}: unsupported data file type {path.suffix!r} (use .jsonl, .json, .parquet, .csv)")
        ds = load_dataset(fmt, data_files=str(path), split="train")
    return [dict(r) for r in ds]


def load_prompts(src: str, split: str = "train", n: int | None = None, prompt_field: str = "question",
                 answer_field: str = "answer", system_prompt: str | None = None, seed: int = 0):
    """A ``datasets.Dataset`` of chat prompts with their reference answers.

    ``src`` as in the recipe's ``data.train`` (builtin:..., a file, hub:...). ``n`` caps the rows.
    """
    from datasets import Dataset

    rows = _read_source(src, split, n or 256, seed)
    if not rows:
        raise DataError(f"{src}: no rows")
    for f in (prompt_field, answer_field):
        if f not in rows[0]:
            raise DataError(f"{src}: rows have no field {f!r} (fields: {', '.join(rows[0])})")
    if n is not None:
        rows = rows[:n]
    system = DEFAULT_SYSTEM_PROMPT if system_prompt is None else system_prompt
    out = []
    for r in rows:
        msgs = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": str(r[prompt_field])}]
        out.append({"prompt": msgs, "question": str(r[prompt_field]), "answer": str(r[answer_field])})
    return Dataset.from_list(out)
