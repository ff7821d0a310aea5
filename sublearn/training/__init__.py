"""Training: examples (token ids with the prompt masked, soft labels), the model (LoRA or full, dtype,
memory check, checkpointing), the loop (`fit`: SFT or top-k distillation, exact resume) and
data-parallel / FSDP helpers (`distributed`). The train stage, fine-tuned teachers, the theorem check
and the audit's probe students all train through it.
"""
