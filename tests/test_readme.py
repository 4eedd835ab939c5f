"""The README's example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    for code in blocks:
        exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 6 and printed[0].startswith("Unrolled")


def test_concepts_page_snippets_run_and_agree():
    """docs/concepts.md's snippets run in order; its implicit backends agree on a converged inner problem."""
    page = README.parent / "docs" / "concepts.md"
    namespace = {"__name__": "concepts"}
    for code in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S):
        exec(compile(code, str(page), "exec"), namespace)
    from bilevel import CG, Implicit, hypergrad

    problem, theta, train, val = (namespace[k] for k in ("problem", "theta", "train", "val"))
    cg = hypergrad(problem, theta, train, val, backend=Implicit(CG(maxiter=20)))
    dense = namespace["result"]  # the last snippet's Implicit(Dense())
    assert float((cg.grad["log_l2"] - dense.grad["log_l2"]).norm()) <= 1e-4 * float(dense.grad["log_l2"].norm())


def test_api_reference_names_every_public_name():
    import bilevel

    page = (README.parent / "docs" / "api.md").read_text()
    documented = set(re.findall(r":::\s+\S+\.(\w+)", page)) | set(re.findall(r"`bilevel\.(\w+)`", page))
    assert [n for n in bilevel.__all__ if n not in documented] == []
