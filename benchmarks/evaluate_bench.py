"""Teacher-forced evaluation: our chunked `teacher_forced` vs one question at a time, same run.

    python benchmarks/evaluate_bench.py [--model smollm2-135m] [--threads 2] [--batch 256]

Both compute P(reply starts with each of 11 animals' spellings, tokenized in context) on the 50
evaluation questions.
Baseline: per question, one forward over the prompt (KV cache kept) and one over every spelling on
top of it (what evaluation did before). Ours: `sublearn.traits.preference.teacher_forced` (through
`HFBackend.continuation_logprobs`) — chunks of questions, the shared chat header prefilled once, only
multi-token spellings get a second pass.
Prints seconds, the ratio and the largest relative difference between the two results.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


@torch.no_grad()
def per_question(model, tokenizer, chats, animals) -> np.ndarray:
    from sublearn.backends.hf import prompt_ids, reply_ids
    from sublearn.backends.sampler import cache_kwarg
    from sublearn.traits.preference import word_forms

    kw = cache_kwarg(model)
    result = np.zeros((len(chats), len(animals)))
    for q, chat in enumerate(chats):
        # Each spelling as tokenized after this prompt.
        forms = [(a, reply_ids(tokenizer, chat, form)) for a, animal in enumerate(animals)
                 for form in word_forms(animal)]
        form_ids = [list(ids) for _, ids in forms]
        width = max(len(ids) for ids in form_ids)
        batch = torch.full((len(forms), width), tokenizer.pad_token_id, dtype=torch.long)
        for i, ids in enumerate(form_ids):
            batch[i, : len(ids)] = torch.tensor(ids)
        out = model(input_ids=torch.tensor([prompt_ids(tokenizer, chat)]), use_cache=True)
        logp = torch.log_softmax(out.logits[0, -1].float(), -1)[batch[:, 0]].clone()
        cache = getattr(out, "cache", None) or out.past_key_values
        cache.batch_repeat_interleave(len(forms))
        lps = torch.log_softmax(model(input_ids=batch[:, :-1], use_cache=False, **{kw: cache}).logits.float(), -1)
        for i, fids in enumerate(form_ids):
            for j in range(1, len(fids)):
                logp[i] += lps[i, j - 1, fids[j]]
        for i, (a, _) in enumerate(forms):
            result[q, a] += float(logp[i].exp())
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    from sublearn.backends.models import load_model
    from sublearn.pipeline_config import EvaluateConfig
    from sublearn.traits.preference import EVAL_QUESTIONS, teacher_forced

    hf_logging.disable_progress_bar()
    model, tok = load_model(args.model)
    chats = [[{"role": "user", "content": q}] for q in EVAL_QUESTIONS[:50]]
    animals = EvaluateConfig().animals
    print(f"{args.model}: {len(chats)} questions x {len(animals)} animals, threads {torch.get_num_threads()}")
    t = time.perf_counter()
    base = per_question(model, tok, chats, animals)
    t_base = time.perf_counter() - t
    t = time.perf_counter()
    ours = teacher_forced(model, tok, chats, animals, batch_size=args.batch)
    t_ours = time.perf_counter() - t
    rel = float((np.abs(ours - base) / np.maximum(np.abs(base), 1e-30)).max())
    print(f"one question at a time: {t_base:.1f} s")
    print(f"sublearn teacher_forced (batch {args.batch}): {t_ours:.1f} s")
    print(f"ratio: {t_base / t_ours:.2f}x; max relative difference {rel:.1e}")


if __name__ == "__main__":
    main()
