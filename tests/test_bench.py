"""`bilevel bench` checks that every implementation computes our meta-gradient before timing it."""

import pytest

from bilevel.bench import BenchConfig, markdown, run_bench


def test_bench_checks_peers_then_reports_ratios():
    pytest.importorskip("higher")
    pytest.importorskip("torchopt")
    c = BenchConfig(meta_batch=1, queries=1, inner_steps=[1], repeats=1, device="cpu", net="strided", channels=4)
    report = run_bench(c, progress=lambda line: None)
    checks = {(ch["algorithm"], ch["peer"]): ch for ch in report["checks"]}
    assert checks[("maml", "higher")]["ok"] and checks[("imaml", "torchopt")]["ok"]
    assert checks[("maml", "higher")]["rel_err"] < 1e-8  # float64: the same meta-gradient
    timed = {(r["algorithm"], r["implementation"]) for r in report["results"]}
    assert {("maml", "ours"), ("maml", "higher"), ("imaml", "ours"), ("imaml", "torchopt")} <= timed
    assert all(r["median_s"] > 0 for r in report["results"])
    assert "| maml | higher | 1 |" in markdown(report)


def test_bench_drops_a_peer_whose_gradient_differs(monkeypatch):
    pytest.importorskip("higher")
    import bilevel.bench as bench

    def wrong(net, c, steps, support, query, vectorize):
        grads = bench.higher_maml(net, c, steps, support, query, vectorize)
        return {k: 2 * g for k, g in grads.items()}

    monkeypatch.setitem(bench.IMPLEMENTATIONS, "maml", {"ours": bench.ours_maml, "higher": wrong})
    monkeypatch.setitem(bench.IMPLEMENTATIONS, "imaml", {"ours": bench.ours_imaml})
    c = BenchConfig(meta_batch=1, queries=1, inner_steps=[1], repeats=1, device="cpu", net="strided", channels=4)
    report = run_bench(c, progress=lambda line: None)
    assert report["checks"] == [{"algorithm": "maml", "peer": "higher", "rel_err": pytest.approx(1.0), "ok": False}]
    assert {r["implementation"] for r in report["results"]} == {"ours"}
