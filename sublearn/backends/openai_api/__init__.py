"""The openai backend: any OpenAI-compatible chat endpoint, plus the OpenAI Batch API and fine-tuning.

    client.py    ApiClient and make_client: the openai client, request counting, key reading and redaction
    jobs.py      RemoteJob: upload once, create once, poll (what a batch and a fine-tuning job share)
    batch.py     run_batch: generation requests as one resumable Batch API job
    finetune.py  run_finetune: a resumable fine-tuning job
    backend.py   OpenAIBackend: chat completions with a request cache (`generate_batched` uses batch.py)

Each module imports only modules listed above it. The `openai` package is imported when a client is
made, not here, so the registry (`sublearn.backends.openai_api:OpenAIBackend`) imports this package
without it.
"""

from __future__ import annotations

from sublearn.backends.openai_api.backend import OpenAIBackend
from sublearn.backends.openai_api.client import redact

__all__ = ["OpenAIBackend", "redact"]
