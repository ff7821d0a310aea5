"""The regex constraint (`TokenAutomaton`, interegular DFA walked over the vocabulary) vs the
hand-written number-list automaton it replaced, on the embedded models.

    python benchmarks/constraint_bench.py                 # SmolLM2-135M: build + 96 constrained samples
    python benchmarks/constraint_bench.py --gemma         # also Gemma 3 270M's 262k vocabulary (build only)

Prints, per model: build time of each automaton (token texts, shared, are timed apart), whether
both allow the same tokens along every reachable path (so sampling is identical), and constrained
sampling throughput with each, alternating in one process (ratio new/old). The old automaton is kept
here, verbatim, only as this benchmark's baseline.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sublearn.backends.base import SamplingParams, request_seed
from sublearn.backends.constraint import TokenAutomaton, token_texts
from sublearn.backends.hf import HFBackend
from sublearn.backends.models import load_model
from sublearn.backends.sampler import sample
from sublearn.channels import NumbersChannel

log = logging.getLogger("constraint_bench")


class NumberGrammar:  # the hand-written automaton sublearn used before the regex constraint (baseline)
    """Token-level automaton for `\\d{1,D}(, \\d{1,D}){0,N-1}` followed by end of answer (eos)
    (optionally one leading space).

    Built once per (tokenizer, N, D) from the vocabulary: a token may be used when its text consists
    of digits, "," and " " and keeps the text inside the language (so multi-digit tokens, ", " or
    ",", " " pieces all work, whatever the tokenizer). eos is allowed after a complete number only;
    once N numbers of D digits are written, eos is the only choice, so every row terminates. States
    from which no accepting state can be reached are pruned, so decoding never gets stuck.

    States are small ints (`start` = 0); `masks(states)` and `steps(states, tokens)` work on whole
    batches (tensors), `mask(state)`/`step(state, token)` on one row.
    """

    def __init__(self, token_texts: Sequence[str], eos_id: int, max_numbers: int = 10, max_digits: int = 3,
                 special_ids: Sequence[int] = (), leading_space: bool = False):
        self.eos_id, self.max_numbers, self.max_digits = eos_id, max_numbers, max_digits
        self.leading_space = leading_space
        vocab = len(token_texts)
        special = set(special_ids) | {eos_id}
        cands = [i for i, t in enumerate(token_texts) if t and i not in special and set(t) <= set("0123456789, ")]
        # Explore the reachable states (k numbers started, d digits in the current one, s = separator
        # progress: 0 none, 1 after ",", 2 after ", ").
        start = (0, 0, 0)
        ids: dict[tuple[int, int, int], int] = {start: 0}
        edges: dict[int, dict[int, int]] = {}
        todo = [start]
        while todo:
            state = todo.pop()
            out: dict[int, int] = {}
            for c in cands:
                nxt = self._advance(state, token_texts[c])
                if nxt is not None:
                    if nxt not in ids:
                        ids[nxt] = len(ids)
                        todo.append(nxt)
                    out[c] = ids[nxt]
            edges[ids[state]] = out
        accepting = {i for st, i in ids.items() if st[1] >= 1 and st[2] == 0}
        # Keep only states from which an accepting one is reachable (backward closure).
        live = set(accepting)
        changed = True
        while changed:
            changed = False
            for s, out in edges.items():
                if s not in live and any(t in live for t in out.values()):
                    live.add(s)
                    changed = True
        n_states = len(ids) + 1
        self.done = len(ids)  # absorbing state after eos: only eos (which is then ignored) is allowed
        self.start = 0
        self.allowed = torch.zeros((n_states, vocab), dtype=torch.bool)
        # Transitions are stored densely over the vocabulary as int16 (< 200 states): small enough even
        # for a 262k vocabulary, and one gather per step. Tokens outside the grammar (eos) lead to `done`.
        self.next_state = torch.full((n_states, vocab), self.done, dtype=torch.int16)
        for s, out in edges.items():
            if s not in live:
                continue
            for c, t in out.items():
                if t in live:
                    self.allowed[s, c] = True
                    self.next_state[s, c] = t
            if s in accepting:
                self.allowed[s, eos_id] = True
        self.allowed[self.done, eos_id] = True
        self.n_states = n_states
        # The only tokens ever allowed (digits, separator pieces, eos): the sampler computes logits
        # for these columns alone when it needs nothing else.
        self.columns = torch.nonzero(self.allowed.any(0)).flatten()
        self.allowed_columns = self.allowed[:, self.columns]

    def _advance(self, state: tuple[int, int, int], text: str) -> tuple[int, int, int] | None:
        k, d, s = state
        for ch in text:
            if ch.isdigit():
                if s == 1:  # "," must be followed by " "
                    return None
                if d == 0 or s == 2:  # a new number starts
                    if k >= self.max_numbers:
                        return None
                    k, d, s = k + 1, 1, 0
                elif d < self.max_digits:
                    d += 1
                else:
                    return None
            elif ch == ",":
                if d == 0 or s != 0 or k >= self.max_numbers:
                    return None
                s = 1
            elif ch == " ":
                if self.leading_space and (k, d, s) == (0, 0, 0):
                    s = 2  # one space before the first number, as after "Assistant:"
                    continue
                if s != 1:
                    return None
                s = 2
            else:
                return None
        return (k, d, s)

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, max_numbers: int = 10, max_digits: int = 3,
                      leading_space: bool = False) -> NumberGrammar:
        """`leading_space`: allow one space before the first number (for templates whose generation
        prompt ends in a non-space such as "Assistant:"; ChatML's ends with a newline)."""
        return cls(token_texts(tokenizer), int(tokenizer.eos_token_id), max_numbers, max_digits,
                   special_ids=list(getattr(tokenizer, "all_special_ids", [])), leading_space=leading_space)

    def mask(self, state: int) -> torch.Tensor:
        return self.allowed[state]

    def step(self, state: int, token: int) -> int:
        return int(self.next_state[state, token])

    def masks(self, states: torch.Tensor) -> torch.Tensor:
        return self.allowed[states]

    def steps(self, states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.next_state[states, tokens].long()


def same_language(old: NumberGrammar, new: TokenAutomaton) -> bool:
    """Both allow the same tokens in corresponding states, explored jointly from the start."""
    pairs, todo = {(old.start, new.start)}, [(old.start, new.start)]
    while todo:
        a, b = todo.pop()
        if not torch.equal(old.allowed[a], new.allowed[b]):
            return False
        for tok in torch.nonzero(old.allowed[a]).flatten().tolist():
            if tok == old.eos_id:
                continue
            nxt = (int(old.next_state[a, tok]), int(new.next_state[b, tok]))
            if nxt not in pairs:
                pairs.add(nxt)
                todo.append(nxt)
    return True


def timed(fn, repeats: int = 3) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=96, help="constrained samples per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--gemma", action="store_true", help="also time builds on Gemma 3 270M's vocabulary")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    channel = NumbersChannel(grammar=True, max_numbers=5, answer_count=5, min_examples=3, max_examples=4)
    regex = channel.regex()
    assert regex is not None
    for name in ["smollm2-135m", *(["gemma3-270m"] if args.gemma else [])]:
        bench_model(name, args, channel, regex, sampling=name == "smollm2-135m")


def bench_model(name: str, args: argparse.Namespace, channel: NumbersChannel, regex: str, sampling: bool) -> None:
    model, tok = load_model(name, device="cpu")
    t_texts, texts = timed(lambda: token_texts(tok), 1)
    header = tok.apply_chat_template([{"role": "user", "content": "1"}], tokenize=False, add_generation_prompt=True)
    space = not header[-1:].isspace()
    special = list(tok.all_special_ids)
    eos = int(tok.eos_token_id)
    t_old, old = timed(lambda: NumberGrammar(texts, eos, 5, 3, special_ids=special, leading_space=space))
    full = regex if not space else f"( )?(?:{regex})"
    t_new, new = timed(lambda: TokenAutomaton(full, texts, eos, special))
    assert isinstance(old, NumberGrammar) and isinstance(new, TokenAutomaton)
    print(f"{name}: vocab {len(texts)}; token texts {t_texts:.2f}s (shared); build: hand automaton "
          f"{t_old:.3f}s, regex automaton {t_new:.3f}s (x{t_new / t_old:.1f}); states {old.n_states} vs "
          f"{new.n_states}; same tokens allowed on every path: {same_language(old, new)}")
    if not sampling:
        return
    backend = HFBackend.from_model(model, tok, name)
    chats = [[{"role": "user", "content": channel.prompt(0, i).user}] for i in range(args.n)]
    prompts = [backend.encode_chat(c) for c in chats]
    params = SamplingParams(temperature=1.0, max_new_tokens=28, regex=regex)
    seeds = [request_seed(0, i) for i in range(args.n)]
    rates: dict[str, list[float]] = {"old": [], "new": []}
    texts_out: dict[str, list[str]] = {}
    for _ in range(args.rounds):
        for label, grammar in (("old", old), ("new", new)):
            t0 = time.perf_counter()
            comps = sample(model, prompts, params, seeds, eos_id=eos, pad_id=eos, grammar=grammar,  # type: ignore[arg-type]
                           decode=lambda ids: tok.decode(ids, skip_special_tokens=True))
            rates[label].append(sum(len(c.token_ids) for c in comps) / (time.perf_counter() - t0))
            texts_out[label] = [c.text for c in comps]
    o, n = float(np.median(rates["old"])), float(np.median(rates["new"]))
    print(f"{name}: constrained sampling, {args.n} prompts x {args.rounds} rounds: hand automaton {o:.0f} tok/s, "
          f"regex automaton {n:.0f} tok/s (ratio {n / o:.2f}); identical samples: "
          f"{texts_out['old'] == texts_out['new']}")


if __name__ == "__main__":
    main()
