"""sublearn: reproduce, audit and study subliminal learning.

Stages (teacher -> generate -> filter -> train -> evaluate -> report) live in `sublearn.stages`,
the MNIST auxiliary-logit experiment in `sublearn.mnist`, model backends in `sublearn.backends`.
"""

__version__ = "0.1.0"
