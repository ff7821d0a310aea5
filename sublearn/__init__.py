"""sublearn: reproduce, audit and study subliminal learning.

Stages (teacher -> generate -> filter -> train -> evaluate -> report) live in `sublearn.stages`, the
training library in `sublearn.training`, model backends in `sublearn.backends`, channels and traits in
`sublearn.channels` and `sublearn.traits`, statistics and the report kit in `sublearn.analysis`, the
commands above one run (audit, compare, sweep, Inspect) in `sublearn.tools`, and the MNIST
auxiliary-logit experiment in `sublearn.mnist`. README "Layout" draws the layers.

The Python API (`sublearn.api`) is reachable from the package: `sublearn.run`, `sublearn.load_run`,
`sublearn.run_mnist`, `sublearn.audit`, `sublearn.sweep`, `sublearn.load_config`. They are loaded on first
use, so `import sublearn` stays light (no torch).
"""

from typing import Any

__version__ = "0.1.0"

_API = ("run", "load_run", "run_mnist", "audit", "sweep", "load_config", "Run", "Audit", "Sweep")


def __getattr__(name: str) -> Any:
    # PEP 562: the API module sits at the top of the layers (it drives the CLI's checks and the stages);
    # the package root forwards to it lazily instead of importing upward.
    if name in _API:
        import importlib

        return getattr(importlib.import_module("sublearn.api"), name)
    raise AttributeError(f"module 'sublearn' has no attribute {name!r}")
