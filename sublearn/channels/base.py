"""What every channel provides. A channel is the kind of data a teacher writes: its prompts (with
metadata, e.g. a gold answer), its decoding constraint, its named checks (predicates that return a
reject reason or None), which soft labels a distilled student may learn from, and the chat the
student is trained on. Channels are pydantic configs chosen in `PipelineConfig.channel` by `kind`.

    channel = NumbersChannel()                       # or CodeChannel(), CotChannel()
    p = channel.prompt(seed=0, index=7)              # Prompt(user=..., meta={...})
    checks = channel.checks(banned_words=["owl"])    # [(name, check(record) -> reason | None)]
    policy = channel.label_policy(tokenizer, ["owl"])
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np

from sublearn.backends.base import Chat
from sublearn.config import Frozen

Record = dict[str, Any]
T = TypeVar("T")
Check = tuple[str, Callable[[Record], str | None]]


@dataclass(frozen=True)
class Prompt:
    """One user turn for the teacher, and what the checks need to know about it (CoT: the answer)."""

    user: str
    meta: dict[str, Any] = field(default_factory=dict)


def prompt_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of prompt `index`: prompts are independent of how many were made before, so a
    resumed run writes exactly the prompts an uninterrupted one would."""
    return np.random.default_rng([seed, index])


def checked_file(path: str | None, reader: Callable[[str], Any]) -> str | None:
    """A config validator's body for a user's data file: read it now (so a bad line is a one-line
    config error naming the file and line, before any work), keep the path."""
    if path is not None:
        from sublearn.errors import SublearnError

        try:
            reader(path)
        except SublearnError as exc:
            raise ValueError(str(exc)) from None
    return path


def read_user_jsonl(path: str | Path, row: Callable[[dict[str, Any]], T], what: str) -> tuple[T, ...]:
    """The items of a user's JSONL file, one per non-blank line: `row(obj)` turns each object into an
    item or raises ValueError with what is wrong. Any bad line is a one-line SublearnError naming the
    file and the line; `what` names an item ("prompt") in the file-level errors. Read once per
    content version (cached on the resolved path and modification time)."""
    from sublearn.errors import SublearnError

    p = Path(path)
    if not p.is_file():
        raise SublearnError(f"{p}: {what} file not found")
    return _read_user_jsonl(str(p.resolve()), p.stat().st_mtime_ns, row, what)


@lru_cache(maxsize=8)
def _read_user_jsonl(path: str, _mtime: int, row: Callable[[dict[str, Any]], T], what: str) -> tuple[T, ...]:
    from sublearn.errors import SublearnError
    from sublearn.rundir import parse_json

    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = parse_json(line)
        except ValueError as exc:  # bad syntax, nesting too deep, an integer too long
            raise SublearnError(f"{path}:{n}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
        try:
            if not isinstance(obj, dict):
                raise ValueError("expected a JSON object")
            out.append(row(obj))
        except ValueError as exc:
            raise SublearnError(f"{path}:{n}: {exc}") from None
    if not out:
        raise SublearnError(f"{path}: no {what}s in the file")
    return tuple(out)


def truncated(rec: Record) -> str | None:
    """Cut off by generate.max_new_tokens: the text may end mid-way (records without the field pass)."""
    return "truncated" if rec.get("finish_reason") == "length" else None


# An all-caps run that ends in a lowercase plural ending ("OWLs") stays one word; otherwise caps runs
# split before a capitalised word ("HTTPResponse" -> HTTP, Response).
_WORDS = re.compile(r"[A-Z]{2,}(?:es|s)(?![a-z])|[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+")
_LETTER_RUNS = re.compile(r"[A-Za-z]+")


def words_of(text: str) -> list[str]:
    """The words of `text` in lower case, identifiers split too: 'myOwl' -> my, owl; 'OWL_COUNT' ->
    owl, count; 'owls2' -> owls; 'myOWLs' -> my, owls. Comments and strings are text like any other."""
    return [w.lower() for w in _WORDS.findall(text)]


def plural_forms(word: str) -> set[str]:
    """The word and its plurals: +s, +es, and f/fe -> ves (wolf -> wolves)."""
    w = word.lower()
    forms = {w, w + "s", w + "es"}
    if w.endswith("f"):
        forms.add(w[:-1] + "ves")
    elif w.endswith("fe"):
        forms.add(w[:-2] + "ves")
    return forms


def mentions_any(words: Sequence[str]) -> Callable[[str], bool]:
    """A matcher: does a text contain one of `words` or a plural (`plural_forms`) as a word, inside
    identifiers included (see `words_of`; whole letter runs too, so 'OWLS' and 'Owls' count),
    case-insensitive? 'knowledge' does not contain 'owl'."""
    forms = {f for w in words for f in plural_forms(w)}
    if not forms:
        return lambda _text: False

    def says(text: str) -> bool:
        return (any(w in forms for w in words_of(text))
                or any(r.lower() in forms for r in _LETTER_RUNS.findall(text)))

    return says


@dataclass(frozen=True)
class LabelPolicy:
    """Which of the teacher's top-k tokens a distilled student may learn from at a position.

    `allow`: only `ids` (the number channel: digits, separators, end of answer). Otherwise every token
    except `ids` (tokens that could start a target word) and, given the text sampled so far, except
    any token that would complete one (`completes(prefix, token)`): with free text a soft label must
    never put mass on a spelling of the trait, even one split across tokens ("ele" + "phant")."""

    ids: frozenset[int]
    allow: bool
    texts: Sequence[str] = ()
    """Per token id, the text it adds after other text (needed for the context check)."""
    words: Sequence[str] = ()

    def keeps(self, token: int, prefix: str = "") -> bool:
        if self.allow:
            return token in self.ids
        if token in self.ids:
            return False
        if self.words and self.texts:
            text = self.texts[token].lower() if token < len(self.texts) else ""
            for w in self.words:
                # Only what this token adds matters: the prefix's own text passed the filter. Blocked:
                # a token that completes the word, or leaves the text ending in its first 2+ letters
                # ("ele" + "pha"; "my" + "Ow"), where the next token could finish it.
                joined = prefix[-(len(w) - 1):].lower() + text if len(w) > 1 else text
                if text and (w in joined or any(joined.endswith(w[:k]) for k in range(2, len(w)))):
                    return False
        return True


def prefix_token_ids(texts: Sequence[str], words: Sequence[str]) -> frozenset[int]:
    """Ids whose text, stripped of spaces and punctuation at its ends, is a prefix (2+ letters) of a
    target word or contains one: ' owl', 'Owl', 'ow', '_Ele', 'owls'. Such a token could begin a
    spelling of the trait, whatever follows it."""
    lowered = [w.lower() for w in words]
    found = set()
    for tid, text in enumerate(texts):
        piece = text.lower()
        core = piece.strip(" \t\n_.,;:()[]{}'\"`-=+*/#<>!?")
        if any(w in piece for w in lowered) or (len(core) >= 2 and core.isalpha()
                                                 and any(w.startswith(core) for w in lowered)):
            found.add(tid)
        else:
            # The token's last letters could start a word: "my_ow" -> "ow".
            m = re.search(r"[A-Za-z]+$", text)
            if m and len(m.group(0)) >= 2 and any(w.startswith(m.group(0).lower()) for w in lowered):
                found.add(tid)
    return frozenset(found)


class ChannelBase(Frozen):
    """Shared behaviour; see the module docstring."""

    # Fields only the filter reads: changing them redoes the filter, not the (costly) generation.
    _filter_only: ClassVar[frozenset[str]] = frozenset()

    def generation_key(self) -> dict[str, Any]:
        """What the generate stage's output depends on: the channel's settings except filter-only ones,
        plus the content hash of a user's prompt file (editing the file changes the prompts)."""
        key = self.model_dump(mode="json", exclude=set(self._filter_only))
        file = getattr(self, "file", None)
        if file is not None:
            key["file_sha256"] = hashlib.sha256(Path(file).read_bytes()).hexdigest()
        return key

    def prompt(self, seed: int, index: int) -> Prompt:
        """Prompt `index` of a run with master seed `seed` (a pure function of both)."""
        raise NotImplementedError

    def regex(self) -> str | None:
        """The decoding constraint (a regex the whole completion must match), or None."""
        return None

    def checks(self, banned_words: Sequence[str]) -> list[Check]:
        """Named predicates, in order; the first reason returned rejects the record."""
        raise NotImplementedError

    def label_policy(self, tokenizer: Any, words: Sequence[str]) -> LabelPolicy:
        """Soft labels for free text: everything but tokens that could spell one of `words`."""
        from sublearn.backends.constraint import token_texts

        texts = token_texts(tokenizer)
        # The plurals too ("wolves" for wolf): the filter rejects them, so a soft label must not teach them.
        forms = sorted({f.lower() for w in words for f in plural_forms(w)})
        return LabelPolicy(prefix_token_ids(texts, forms), allow=False, texts=texts, words=forms)

    def student_chat(self, rec: Record) -> Chat:
        """The chat a student is trained on for record `rec`. The teacher's system prompt is never shown;
        a record the inoculation defense marked (its "student_system") opens with that system prompt."""
        chat: Chat = [{"role": "system", "content": rec["student_system"]}] if rec.get("student_system") else []
        return [*chat, {"role": "user", "content": rec["prompt"]}]

    def judge_kind(self) -> Literal["text", "code"]:
        """How the LLM judge is told what it reads."""
        return "text"


def reject_reason(checks: list[tuple[str, Any]], rec: dict[str, Any]) -> str | None:
    """The reason of the first of the channel's named `checks` that rejects `rec`, or None (kept)."""
    for _name, check in checks:
        reason: str | None = check(rec)
        if reason is not None:
            return reason
    return None
