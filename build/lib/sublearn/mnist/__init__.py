"""The MNIST auxiliary-logit experiment (paper §7): subliminal learning without language.

    from sublearn.mnist.config import MnistConfig
    from sublearn.mnist.experiment import run
    results = run(MnistConfig(seeds=5), Path("runs/mnist"))
"""
