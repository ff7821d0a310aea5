"""sublearn: reproduce, audit and study subliminal learning.

Stages (teacher -> generate -> filter -> train -> evaluate -> report) live in `sublearn.stages`, the
training library in `sublearn.training`, model backends in `sublearn.backends`, channels and traits in
`sublearn.channels` and `sublearn.traits`, statistics and the report kit in `sublearn.analysis`, the
commands above one run (audit, compare, sweep, Inspect) in `sublearn.tools`, and the MNIST
auxiliary-logit experiment in `sublearn.mnist`. README "Layout" draws the layers.
"""

__version__ = "0.1.0"
