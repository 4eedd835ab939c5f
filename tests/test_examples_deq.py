"""The deep-equilibrium tutorial (examples/deq.py) runs in fast mode and learns."""

import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "deq.py"


def test_deq_example_learns_with_small_fixed_point_residual(capsys):
    spec = importlib.util.spec_from_file_location("deq_example", EXAMPLE)
    deq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(deq)
    out = deq.main(["--fast"])
    # Three balanced classes: the untrained model is near chance (1/3); a few dozen steps
    # through the implicit backend must beat it clearly on held-out points.
    assert out["test_before"] < 0.5
    assert out["test_after"] > out["test_before"] + 0.3
    assert out["train_after"] > out["train_before"] + 0.3
    # Anderson stops at tol=1e-5 relative to ||z||: the residual of every forward solve is that small.
    assert out["mean_residual"] < 1e-4
    assert "accuracy after 40 steps" in capsys.readouterr().out
