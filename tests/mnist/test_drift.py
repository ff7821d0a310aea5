"""Drift check (issue 26): the MNIST experiment at its shipped config, seed 0, must give the accuracies
recorded beside the lock (sublearn/lock/mnist.json) bit for bit. It runs `sublearn mnist` in a new
process, as a user does, so the shipped portable kernels are in effect: the same bits on any x86-64
processor. A different number here means the environment or the code changed what the README reports.

Record new values after the lock changes (`make lock` does it):  python tests/mnist/test_drift.py --record
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from sublearn.rundir import LOCK, lock_state

RECORD = LOCK.parent / "mnist.json"
# The shipped config, one seed; the theorem's cosines are left out (they are not the README's drift).
ARGS = ["--set", "seeds=[0]", "--set", "theorem=false"]


def _run(out: Path) -> dict:
    cmd = [sys.executable, "-m", "sublearn", "mnist", "--out", str(out), *ARGS]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "results.json").read_text())


def _lock_hash() -> str:
    return lock_state().split()[0]


@pytest.mark.slow
def test_mnist_seed0_matches_the_values_recorded_beside_the_lock(tmp_path) -> None:
    recorded = json.loads(RECORD.read_text())
    assert recorded["lock"] == _lock_hash(), (
        f"{RECORD} was recorded under lock {recorded['lock']}, the lock is now {_lock_hash()}: "
        "run `python tests/mnist/test_drift.py --record` (make lock does)")
    results = _run(tmp_path / "mnist")
    (seed,) = results["seeds"]
    assert seed["kernels"] == "portable", "the shipped config's portable kernels did not take effect"
    assert results["versions"]["lock"].endswith("(matches)"), results["versions"]["lock"]
    # Exact equality: "reproducible bit for bit" is the claim being checked.
    if seed["accuracy"] == recorded["accuracy"]:
        return
    message = (f"MNIST seed 0 drifted: {seed['accuracy']} vs recorded {recorded['accuracy']} "
               f"({results['versions']}; recorded on {recorded['recorded_on']})")
    if _machine() != recorded["machine"]:
        # That the portable kernels give one result on every x86-64 processor rests on MKL's documented
        # COMPATIBLE branch and ATen's scalar kernels; it was measured on one processor only. On
        # another, a difference is reported (pytest -ra lists it), not failed.
        pytest.xfail(f"on a processor other than the recording one ({_machine()} vs {recorded['machine']}): "
                     + message)
    pytest.fail(message)


def _machine() -> str:
    """The processor and the widest vector instructions it offers (they pick the native kernels)."""
    from sublearn.rundir import cpu_flags, cpu_model

    flags = cpu_flags()
    isa = "AVX512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "other"
    return f"{cpu_model()}, native {isa}"


def record() -> None:
    with tempfile.TemporaryDirectory() as d:
        results = _run(Path(d) / "mnist")
    (seed,) = results["seeds"]
    RECORD.write_text(json.dumps({
        "what": "sublearn mnist " + " ".join(ARGS) + ": per-condition test accuracy of seed 0 "
                "(checked by tests/mnist/test_drift.py)",
        "lock": _lock_hash(), "kernels": seed["kernels"], "accuracy": seed["accuracy"], "machine": _machine(),
        "recorded_on": {k: results["versions"][k] for k in ("cpu", "torch", "numpy", "python")}}, indent=2) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/mnist/test_drift.py --record")
    record()
