"""The theorem check per student: one base load and one unperturbed gradient per dataset vs per student.

    python benchmarks/theorem_bench.py --run runs/demo3 [--threads 2] [--limit 6]

`--run` is a finished run directory with LoRA teachers and trained students (several students per
teacher show the dataset-level reuse), e.g. the demo's recipe with one teacher per arm and three
students each:

    sublearn run sublearn/configs/demo.yaml --out runs/demo3 --set teacher.replicates=1 \
        --set 'train.seeds=[1,2,3]' --set theorem=true

Its teachers, data and students are linked into a scratch directory (nothing in `--run` is written),
and the theorem stage runs there for every student twice, in this process, one after the other:
baseline = each student loads its own base and computes both gradients (what the stage did before
`TheoremCache`); ours = one `TheoremCache` shared by all students (the pipeline's way). Prints seconds
per student, the ratio, and whether the two wrote the same numbers (they must, bit for bit).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="only the first N students (the roster's order: "
                    "an arm's seeds are consecutive)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    from sublearn.stages import roster, theorem
    from sublearn.stages.pipeline import run_config

    hf_logging.disable_progress_bar()
    config = run_config(args.run)
    students = roster.theorem_students(config)[:args.limit]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        out.mkdir()
        for part in ("config.json", "teacher", "generate", "filter", "defend", "train"):
            if (args.run / part).exists():
                (out / part).symlink_to((args.run / part).resolve())
        per_data = len(students) / max(1, len({roster.student_dir(out, s["student"], s["seed"]).parent
                                                for s in students}))
        print(f"{args.run}: {len(students)} students ({per_data:.1f} per teacher's data), "
              f"threads {torch.get_num_threads()}")

        def timed(cache: theorem.TheoremCache | None) -> tuple[float, dict[str, object]]:
            shutil.rmtree(out / "theorem", ignore_errors=True)
            t0 = time.perf_counter()
            res = {f"{s['student']}-s{s['seed']}": theorem.run(config, out, student=s["student"], seed=s["seed"],
                                                               cache=cache) for s in students}
            return (time.perf_counter() - t0) / len(students), res

        before, res_before = timed(None)
        cache = theorem.TheoremCache()
        after, res_after = timed(cache)
    same = json.dumps(res_before, sort_keys=True) == json.dumps(res_after, sort_keys=True)
    print(f"per student, own load and both gradients: {before:6.1f} s")
    print(f"per student, shared TheoremCache        : {after:6.1f} s  ({cache.loads} load, "
          f"{cache.first_steps} unperturbed gradients)")
    print(f"ratio: {before / after:.2f}x; same results: {same}")


if __name__ == "__main__":
    main()
