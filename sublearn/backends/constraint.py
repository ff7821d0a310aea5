"""The one decoding-constraint mechanism: a regular expression over the completion's text.

Every backend takes `SamplingParams.regex`: vLLM hands it to its structured-output engine, an
OpenAI-compatible vLLM server gets it as `structured_outputs.regex`, and the `hf` backend compiles it
here into a token automaton: `interegular` turns the regex into a character DFA, every token's text
is walked through it from every live state, and the result is stored as two dense tables so that a
decoding step costs one gather, whatever the regex:

    automaton = TokenAutomaton.from_regex(r"\\d{1,3}(, \\d{1,3}){0,9}", tokenizer)
    automaton.masks(states)          # (batch, vocab) bool: tokens allowed in each row's state
    automaton.steps(states, tokens)  # next states

Syntax is interegular's (Python-like; `\\d`, `\\w`, `\\s` are ASCII-only, no anchors). The
end-of-answer token is allowed exactly in accepting states (and is then the only choice once the
regex can take no more text), so every constrained completion is a full match. Token texts are the
text a token adds after other text (`token_texts`), so a SentencePiece "▁12" is " 12".

Why not outlines-core (Rust, ~10x faster to build): its 0.2.14 index drops single-character tokens at
the start of an optional group (`1(,2)?` gets no "," transition), so SmolLM2 could never write ","
and every number list stopped after its first number. `tests/backends/test_constraint.py` checks
every transition against Python's `re` on the text so far.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sublearn.errors import SublearnError


def token_texts(tokenizer: Any) -> list[str]:
    """The text each token adds when it follows other text.

    Decoding a token alone can drop a leading space (SentencePiece strips it at the start of a
    text), so each token is decoded after an anchor token and the anchor's text removed."""
    anchor = tokenizer("a", add_special_tokens=False).input_ids[-1]
    base = tokenizer.decode([anchor])
    n = len(tokenizer)
    pairs = tokenizer.batch_decode([[anchor, i] for i in range(n)], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
    return [p[len(base):] if p.startswith(base) else tokenizer.decode([i]) for i, p in enumerate(pairs)]


def regex_fsm(regex: str) -> Any:
    """interegular's character automaton of `regex`; a regex it cannot compile is a one-line
    SublearnError. Cheap: callers check a regex with it before loading any model."""
    try:
        import interegular
    except ImportError:  # pragma: no cover - a declared dependency
        raise SublearnError("constrained decoding on hf needs interegular: pip install interegular") from None
    try:
        return interegular.parse_pattern(regex).to_fsm()
    except Exception as exc:  # interegular raises its own error types for unsupported syntax
        raise SublearnError(f"constraint regex {regex!r}: cannot be compiled ({exc})") from None


class TokenAutomaton:
    """A regex compiled against a vocabulary: `allowed[state, token]` and `next_state[state, token]`.

    States are small ints (`start` = 0). `done` is the absorbing state after end of answer, where only
    eos is allowed (rows that have stopped keep stepping until the batch ends). `columns` lists the
    only tokens ever allowed, so the sampler can compute logits for those columns alone."""

    def __init__(self, regex: str, texts: Sequence[str], eos_id: int, special_ids: Sequence[int] = ()):
        fsm = regex_fsm(regex)
        special = set(special_ids) | {eos_id}
        by_first: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            if text and i not in special:  # an empty token would loop in place
                by_first.setdefault(text[0], []).append(i)
        symbol = fsm.alphabet
        chars = list(by_first)
        fsm_map: dict[int, dict[Any, int]] = {int(k): {s: int(t) for s, t in v.items()} for k, v in fsm.map.items()}
        initial = int(fsm.initial)
        fsm_finals = {int(f) for f in fsm.finals}
        transitions: dict[int, dict[int, int]] = {}
        todo, seen = [initial], {initial}
        while todo:
            state = todo.pop()
            out: dict[int, int] = {}
            moves = fsm_map.get(state, {})
            for c in chars:
                if symbol[c] not in moves:
                    continue  # no token starting with this character can be taken here
                for i in by_first[c]:
                    cur: int | None = state
                    for ch in texts[i]:
                        cur = fsm_map.get(cur, {}).get(symbol[ch]) if cur is not None else None
                        if cur is None:
                            break
                    if cur is not None:
                        out[i] = cur
                        if cur not in seen:
                            seen.add(cur)
                            todo.append(cur)
            transitions[state] = out
        # Keep only states from which an accepting one is reachable (backward closure), so decoding
        # never walks into a state it cannot finish from.
        live = fsm_finals & seen
        changed = True
        while changed:
            changed = False
            for st, out in transitions.items():
                if st not in live and any(t in live for t in out.values()):
                    live.add(st)
                    changed = True
        if initial not in live:
            raise SublearnError(f"constraint regex {regex!r}: no text made of this vocabulary's tokens matches it")
        transitions = {st: {i: t for i, t in out.items() if t in live} for st, out in transitions.items() if st in live}
        finals = fsm_finals & live
        # Renumber: initial state 0, the others in a fixed order, then `done`.
        order = [initial, *sorted(s for s in set(transitions) | finals if s != initial)]
        ids = {s: k for k, s in enumerate(order)}
        self.done = len(order)
        self.start = 0
        self.n_states = len(order) + 1
        self.eos_id = eos_id
        vocab = len(texts)
        self.allowed = torch.zeros((self.n_states, vocab), dtype=torch.bool)
        # int16 is plenty for these grammars (tens of states) and keeps a 262k vocabulary small.
        if self.n_states > torch.iinfo(torch.int16).max:
            raise SublearnError(f"constraint regex {regex!r}: {self.n_states} automaton states is too many")
        self.next_state = torch.full((self.n_states, vocab), self.done, dtype=torch.int16)
        for state, out in transitions.items():
            for token, target in out.items():
                self.allowed[ids[state], token] = True
                self.next_state[ids[state], token] = ids[target]
        for state in finals:
            self.allowed[ids[state], eos_id] = True
        self.allowed[self.done, eos_id] = True
        self.columns = torch.nonzero(self.allowed.any(0)).flatten()
        self.allowed_columns = self.allowed[:, self.columns]

    @classmethod
    def from_regex(cls, regex: str, tokenizer: Any, vocab_size: int | None = None) -> TokenAutomaton:
        """`vocab_size`: the model's logit width when it exceeds the tokenizer's (padded embeddings,
        e.g. Qwen2.5's 152,064 vs 151,665): the extra ids are never allowed."""
        texts = token_texts(tokenizer)
        texts += [""] * max(0, (vocab_size or 0) - len(texts))
        return cls(regex, texts, int(tokenizer.eos_token_id), special_ids=list(getattr(tokenizer, "all_special_ids", [])))

    def masks(self, states: torch.Tensor) -> torch.Tensor:
        return self.allowed[states]

    def steps(self, states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.next_state[states, tokens].long()
