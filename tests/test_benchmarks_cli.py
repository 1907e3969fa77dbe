"""``python -m benchmarks`` keeps working: a tiny run in a subprocess, its JSON checked against
an independent recomputation (medians of the recorded samples, ratios of those medians)."""

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_suite(tmp_path, *args):
    out = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--preset", "tiny", "--json", str(out), *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_chains_json_medians_ratios_and_markdown(tmp_path):
    md = tmp_path / "table.md"
    doc, stdout = run_suite(tmp_path, "--only", "chains", "--repeats", "3", "--out", str(md))
    machine = doc["machine"]
    assert machine["gemm_flops"] > 0 and machine["torch"] and machine["cpu"] and machine["torch_threads"] >= 1
    assert doc["options"]["only"] == ["chains"] and doc["options"]["repeats"] == 3
    records = doc["results"]
    assert len(records) == 4 and {r["workload"] for r in records} == {"chains"}
    for r in records:
        impls = r["impls"]
        assert list(impls)[0] == "lazymat"
        assert set(impls) == {"lazymat", "multi_dot", "left-to-right", "opt_einsum", "torch.einsum"}
        base = statistics.median(impls["lazymat"]["samples"])
        for name, e in impls.items():
            assert 1 <= len(e["samples"]) <= 3 and all(s > 0 for s in e["samples"])
            assert math.isclose(e["median"], statistics.median(e["samples"]), rel_tol=1e-12)
            assert math.isclose(e["ratio"], statistics.median(e["samples"]) / base, rel_tol=1e-12)
            assert math.isclose(e["pct_of_floor"], 100 * r["floor_s"] / e["median"], rel_tol=1e-12)
            if name != "lazymat":  # every peer computed the same product as lazymat
                assert e["max_rel_diff"] < 1e-4
        assert r["floor_flops"] > 0 and r["floor_decompositions"] == [] and r["floor_decomposition_s"] == 0
        assert math.isclose(r["floor_s"], r["floor_flops"] / machine["gemm_flops"], rel_tol=1e-9)
    text = md.read_text()
    assert "| workload | case | implementation |" in text and machine["cpu"] in text
    assert text.count("| chains |") == 4 * 5
    assert "multi_dot" in stdout


def test_factorize_memory_pass_and_quality(tmp_path):
    doc, _ = run_suite(tmp_path, "--only", "factorize", "--memory")
    (record,) = doc["results"]
    assert doc["memory_method"].startswith("peak RSS growth")
    assert record["quality_name"] == "true nmse"
    for e in record["impls"].values():
        assert isinstance(e["peak_bytes"], int) and e["peak_bytes"] >= 0
        assert 0 <= e["quality"] < 1  # a rank-16 fit of a 64 x 64 layer on its inputs


def test_qk_circuit_floor_times_its_decompositions(tmp_path):
    doc, _ = run_suite(tmp_path, "--only", "qk-circuit", "--repeats", "1")
    by_op = {r["case"]: r for r in doc["results"]}
    assert list(by_op) == ["svd", "svdvals", "matrix_norm", "eigvals", "trace", "diagonal"]
    kinds = {op: sorted(k for k, _ in r["floor_decompositions"]) for op, r in by_op.items()}
    # svd: the factored route's two QRs, or the reduced small route's one (the tiny circuit's)
    assert kinds["svd"] in (["qr", "qr", "svd"], ["qr", "svd"])
    assert kinds["eigvals"] == ["eigvals"] and kinds["trace"] == []
    for r in by_op.values():
        assert (r["floor_decomposition_s"] > 0) == bool(r["floor_decompositions"])
        assert math.isclose(r["floor_s"], r["floor_flops"] / doc["machine"]["gemm_flops"]
                            + r["floor_decomposition_s"], rel_tol=1e-9)
        # the tiny circuit fits: dense torch runs (decompositions unless the machine is too slow)
        dense = r["impls"].get("dense torch")
        assert dense is not None or r["case"] in ("svd", "svdvals", "eigvals"), r["skipped"]
        assert dense is None or dense["max_rel_diff"] < 1e-3, r["case"]


def test_unknown_workload_is_named(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "chains,nope"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown workload nope" in proc.stderr and "qk-circuit" in proc.stderr


@pytest.mark.cuda
def test_cuda_chains(tmp_path):
    doc, _ = run_suite(tmp_path, "--only", "chains", "--device", "cuda")
    assert doc["machine"]["gpu"]
    assert all(r["impls"]["multi_dot"]["max_rel_diff"] < 1e-3 for r in doc["results"])


def test_round_robin_interleaves_keeps_failures_and_stops_at_the_budget(monkeypatch):
    from benchmarks.suite import timing

    clock, order = [0.0], []
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])  # each call takes 30 ms

    def work(name):
        def fn():
            order.append(name)
            clock[0] += 0.03
            return name
        return fn

    def broken():
        raise RuntimeError("CUDA out of memory. Tried to allocate 9.4 GiB")

    fns = {"a": work("a"), "b": work("b"), "broken": broken}
    samples, results, errors = timing.round_robin(fns, "cpu", repeats=3, budget_s=0.05)
    assert results == {"a": "a", "b": "b"} and "out of memory" in str(errors["broken"])
    # one warm-up each, then rounds a, b, a, b: each stops once its samples reach the budget
    assert order == ["a", "b", "a", "b", "a", "b"]
    assert samples == {"a": [pytest.approx(0.03)] * 2, "b": [pytest.approx(0.03)] * 2}


def test_relative_difference_compares_values_not_order():
    import torch

    from benchmarks.suite.runner import relative_difference

    ev = torch.tensor([3 + 1j, 3 - 1j, -2 + 0j])
    assert relative_difference(ev.flip(0), ev) == 0  # eigenvalues in another order
    U, S, Vh = torch.linalg.svd(torch.eye(3) * torch.tensor([4.0, 2.0, 1.0]))
    assert relative_difference((U, S * 1.01, Vh), (U, S, Vh)) == pytest.approx(0.01, rel=1e-5)
    # a dense spectrum has n values, a low-rank one r: the missing ones are zeros
    assert relative_difference(torch.tensor([0.0, 5.0, 1e-9, 2.0]), torch.tensor([5.0, 2.0])) < 1e-9
    assert relative_difference(torch.tensor([0.0, 5.0, 1.0, 2.0]), torch.tensor([5.0, 2.0])) == 0.2
    assert relative_difference(torch.ones(2, 3), torch.ones(3, 3)) is None


@pytest.mark.parametrize(("argv", "named"), [
    (["--only", "nope"], "unknown workload nope"),
    (["--only", "topk,nope2"], "unknown workload nope2"),
    (["--preset", "bad"], "invalid choice: 'bad'"),
    (["--device", "tpu"], "--device 'tpu': expected cpu or cuda"),
    (["--device", "mps"], "--device 'mps': expected cpu or cuda"),
    (["--repeats", "0"], "--repeats 0: needs at least one sample"),
    (["--repeats", "-3"], "--repeats -3: needs at least one sample"),
    (["--json", "/nonexistent-qa/x.json"], "folder /nonexistent-qa does not exist"),
    (["--out", "/nonexistent-qa/t.md"], "--out /nonexistent-qa/t.md: folder /nonexistent-qa does not exist"),
])
def test_bad_options_exit_with_a_message_naming_the_value(argv, named, capsys):
    from benchmarks.suite.cli import parse

    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CUDA is available here")
def test_cuda_device_without_cuda_is_refused(capsys):
    from benchmarks.suite.cli import parse

    with pytest.raises(SystemExit):
        parse(["--device", "cuda"])
    assert "CUDA is not available" in capsys.readouterr().err
