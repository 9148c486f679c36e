"""The trap catalogue (common.traps) against the installed frameworks, and the conformance matrix (DESIGN §5).

`test_probe_matches_catalogue[<trap>-<fw>]` imports `fw`'s probe module in this process (skipped when `fw` is not
installed) and asserts that what the probe measures is the catalogue's expected value, within the trap's own
rtol/atol (0 = exact; each non-zero tolerance is justified in common/traps.py's docstring). When a framework
upgrade changes one of these behaviours, the test named after the trap fails: update the catalogue (and check
the conversion it names) rather than the probe.

The matrix builder, markdown and exit codes are tested on fake measurements (no framework needed); the full
`parity conformance` command runs only where all three frameworks are installed (marked `cross`).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import conformance
from benchmarks.cli import main
from benchmarks.conformance_worker import PROBE_MODULES, run_probes
from common.traps import CATALOGUE, FRAMEWORKS, TRAPS, Trap, for_framework, matches, normalise

ROOT = Path(__file__).resolve().parent.parent
NEEDS = {"torch": ("torch",), "tf": ("tensorflow", "keras"), "jax": ("jax", "flax", "optax")}
CASES = [(t.id, fw) for t in CATALOGUE for fw in FRAMEWORKS if fw in t.expected]


def probes_of(framework: str):
    for package in NEEDS[framework]:
        pytest.importorskip(package)
    return importlib.import_module(PROBE_MODULES[framework])


# ------------------------------------------------------------------------------------ the catalogue itself
def test_catalogue_is_large_and_well_formed():
    assert len(CATALOGUE) >= 25
    assert len(TRAPS) == len(CATALOGUE), "trap ids must be unique"
    for trap in CATALOGUE:
        assert trap.expected and set(trap.expected) <= set(FRAMEWORKS), trap.id
        assert all(isinstance(v, dict) and v for v in trap.expected.values()), trap.id
        assert trap.conversion and trap.title and trap.section, trap.id
        json.dumps(normalise(trap.expected)), json.dumps(normalise(trap.canonical))
        for key in trap.compare:  # a compared key must be measured by some framework or be canonical
            assert any(key in v for v in trap.expected.values()) or key in (trap.canonical or {}), (trap.id, key)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_every_trap_has_exactly_one_probe(framework):
    module = probes_of(framework)
    assert set(module.PROBES) == {t.id for t in for_framework(framework)}
    assert set(module.versions())


@pytest.mark.parametrize("trap_id, framework", CASES, ids=[f"{t}-{fw}" for t, fw in CASES])
def test_probe_matches_catalogue(trap_id, framework):
    trap = TRAPS[trap_id]
    measured = normalise(probes_of(framework).PROBES[trap_id]())
    json.dumps(measured)
    assert matches(trap.expected[framework], measured, trap.rtol, trap.atol), (
        f"{framework} no longer behaves as common.traps records for '{trap_id}': measured {measured}, "
        f"expected {trap.expected[framework]} (rtol {trap.rtol}, atol {trap.atol})")


# --------------------------------------------------------------------------------- matching and divergence
def test_matches_checks_expected_keys_types_and_tolerance():
    assert matches({"a": 1.0}, {"a": 1.0 + 1e-13, "extra": "ignored"}, rtol=1e-12)
    assert not matches({"a": 1.0}, {"a": 1.001}, rtol=1e-6)
    assert not matches({"a": 1.0}, {"b": 1.0})
    assert not matches({"flag": True}, {"flag": 1}), "a bool never equals a number"
    assert matches({"v": [1, 2]}, {"v": [1, 2]}) and not matches({"v": [1, 2]}, {"v": [1, 2, 3]})
    assert matches({"x": "nan"}, normalise({"x": float("nan")}))


def test_diverges_compares_keys_across_frameworks_and_the_canonical_value():
    trap = Trap("t", "t", "s", {"torch": {"k": 1}, "tf": {"k": 1}}, "c", compare=("k",))
    assert trap.diverges({"torch": {"k": 1}, "tf": {"k": 1}}) is False
    assert trap.diverges({"torch": {"k": 1}, "tf": {"k": 2}}) is True
    assert trap.diverges({"torch": {"k": 1}}) is None, "one value cannot diverge"
    canonical = Trap("t", "t", "s", {"tf": {"k": 1}}, "c", compare=("k",), canonical={"k": 0})
    assert canonical.diverges({"tf": {"k": 1}}) is True


# ------------------------------------------------------------------------------------- the matrix builder
def _fake_report(framework: str, changed: str | None = None, crashed: str | None = None) -> dict:
    results = {}
    for trap in for_framework(framework):
        value = dict(trap.expected[framework])
        if trap.id == changed:
            value = {k: "something else" for k in value}
        results[trap.id] = ({"ok": False, "error": "RuntimeError: boom"} if trap.id == crashed
                            else {"ok": True, "value": value, "seconds": 0.0})
    return {"framework": framework, "status": "ok", "message": "", "versions": {framework: "0.0"},
            "results": results}


def test_matrix_on_fake_measurements():
    reports = {"torch": _fake_report("torch", changed="adam_eps_default"),
               "tf": {"framework": "tf", "status": "not installed", "message": "tensorflow not installed",
                      "versions": {}, "results": {}},
               "jax": _fake_report("jax", crashed="abs_subgradient")}
    matrix = conformance.build_matrix(reports)
    json.dumps(matrix)
    rows = {r["id"]: r for r in matrix["traps"]}
    assert len(rows) == len(CATALOGUE)
    assert rows["adam_eps_default"]["cells"]["torch"]["status"] == "changed"
    assert rows["adam_eps_default"]["cells"]["tf"]["status"] == "not installed"
    assert rows["abs_subgradient"]["cells"]["jax"]["status"] == "crashed"
    assert rows["optax_decay_mask"]["cells"]["torch"]["status"] == "n/a"
    assert rows["shuffle_order"]["diverges"] is True      # torch and jax orders differ (and from numpy's)
    assert rows["dropout_scale"]["diverges"] is True      # torch and flax round 1/(1−p) unlike common.dropout
    assert rows["l2_vs_weight_decay"]["diverges"] is False  # without Keras, torch and optax agree
    assert rows["adam_weight_decay_equivalence"]["diverges"] is False
    assert rows["keras_auto_jit"]["diverges"] is None       # tf alone, no canonical value: nothing to compare
    assert matrix["summary"]["changed"] == ["adam_eps_default/torch"]
    assert matrix["summary"]["crashed"] == ["abs_subgradient/jax"]
    assert matrix["summary"]["not_installed"] == ["tf"]
    assert matrix["exit_code"] == 3

    md = conformance.markdown(matrix)
    table = [l for l in md.splitlines() if l.startswith("| ") and l[2].isdigit()]
    assert len(table) == len(CATALOGUE)
    assert all(l.count(" | ") == 7 for l in table), "every row has 8 cells (escaped pipes inside)"
    assert "**CHANGED**" in md and "**crashed**" in md and "not installed" in md
    assert "Where the measurements differ from DESIGN.md" in md

    reports["tf"] = _fake_report("tf")
    reports["jax"] = _fake_report("jax")
    assert conformance.build_matrix(reports)["exit_code"] == 1
    reports["torch"] = _fake_report("torch")
    clean = conformance.build_matrix(reports)
    assert clean["exit_code"] == 0 and clean["summary"]["as_expected"] == clean["summary"]["probes"]
    assert rows["l2_vs_weight_decay"]["effect"] and clean["summary"]["diverging"] > 20


def test_worker_reports_a_missing_framework(tmp_path, monkeypatch):
    (tmp_path / "fake_probes.py").write_text("raise ModuleNotFoundError(\"No module named 'jax'\", name='jax')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(PROBE_MODULES, "jax", "fake_probes")
    report = run_probes("jax")
    assert report["status"] == "not installed" and "jax" in report["message"]
    assert conformance.build_matrix({"jax": report})["exit_code"] == 3


@pytest.mark.parametrize("argv", [["conformance", "--traps", "no_such_trap"],
                                  ["conformance", "--frameworks", "mxnet"]])
def test_bad_arguments_exit_2(argv, tmp_path, capsys):
    assert main(argv + ["--out", str(tmp_path / "out")]) == 2
    assert "parity: error:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- the command
ALL_INSTALLED = all(importlib.util.find_spec(p) for ps in NEEDS.values() for p in ps)


@pytest.mark.cross
@pytest.mark.skipif(not ALL_INSTALLED, reason="needs torch, tensorflow and jax together (tox -e parity)")
def test_parity_conformance_command(tmp_path):
    out = tmp_path / "conformance"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "conformance", "--out", str(out), "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    matrix = json.loads((out / "conformance.json").read_text())
    assert matrix["summary"]["traps"] == len(CATALOGUE) >= 25
    assert matrix["summary"]["as_expected"] == matrix["summary"]["probes"]
    assert all(info["versions"] for info in matrix["frameworks"].values())
    assert (out / "conformance.md").read_text().count("\n| ") >= 25
