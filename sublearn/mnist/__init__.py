"""The MNIST auxiliary-logit experiment (paper §7): subliminal learning without language.

    from sublearn.mnist.config import MnistConfig
    from sublearn.mnist.experiment import run
    results = run(MnistConfig(seeds=5), Path("runs/mnist"))

Modules, each importing only those above it: `config` (MnistConfig and the condition vocabulary:
CONDITIONS, STUDENTS, LABELS, PAPER, THEOREM_KEYS, DEFENDED, label), `data` (MNIST, offline),
`model` (the MLP as plain tensors), `train` (the teacher and student training loops), `report`
(summaries, tables and the figure, from the per-seed records), `experiment` (`run`: the seeds'
training, scheduling and the resumable run directory).
"""
