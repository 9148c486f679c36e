"""Run one framework's trap probes in this process: `python -m benchmarks.conformance_worker FW OUT.json`.

Writes {"framework", "status", "message", "versions", "results": {trap id: {"ok", "value" | "error", "seconds"}}}
to OUT.json (a file, not stdout: frameworks print to stdout and stderr as they load). `status` is "ok", or
"not installed" when importing the framework fails, or "crashed" when the probe module itself fails to import.
One probe's exception is recorded in its result and does not stop the others. Exit codes: 0 every probe ran
(whatever it measured), 3 the framework is missing, the module failed, or a probe raised.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from common.frameworks import FRAMEWORKS, REGISTRY
from common.traps import TRAPS, for_framework, normalise

PROBE_MODULES = {name: REGISTRY[name].probes for name in FRAMEWORKS}
FRAMEWORK_PACKAGES = {"jaxlib", *(m for name in FRAMEWORKS for m in REGISTRY[name].imports)}


def run_probes(framework: str, trap_ids: list[str] | None = None) -> dict:
    """Import `framework`'s probe module and run its probes for the selected traps (all of its traps by default)."""
    out = {"framework": framework, "status": "ok", "message": "", "versions": {}, "results": {}}
    try:
        module = importlib.import_module(PROBE_MODULES[framework])
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0]
        out["status"] = "not installed" if missing in FRAMEWORK_PACKAGES else "crashed"
        out["message"] = f"{exc.name or exc} not installed" if missing in FRAMEWORK_PACKAGES else repr(exc)
        return out
    except Exception as exc:  # a broken probe module must still produce a report
        out.update(status="crashed", message=f"{type(exc).__name__}: {exc}")
        return out
    out["versions"] = {"python": platform.python_version(), "numpy": np.__version__, **module.versions()}
    wanted = [TRAPS[i] for i in trap_ids] if trap_ids else for_framework(framework)
    for trap in wanted:
        if framework not in trap.expected:
            continue
        probe = module.PROBES.get(trap.id)
        if probe is None:
            out["results"][trap.id] = {"ok": False, "error": f"no probe registered for '{trap.id}'", "seconds": 0.0}
            continue
        start = time.perf_counter()
        try:
            value = normalise(probe())
            out["results"][trap.id] = {"ok": True, "value": value, "seconds": round(time.perf_counter() - start, 3)}
        except Exception as exc:  # recorded, so that one probe cannot lose the others
            out["results"][trap.id] = {
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=4),
                "seconds": round(time.perf_counter() - start, 3),
            }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.conformance_worker")
    parser.add_argument("framework", choices=sorted(PROBE_MODULES))
    parser.add_argument("out", type=Path)
    parser.add_argument("--traps", default="", help="comma-separated trap ids (default: all of the framework's)")
    args = parser.parse_args(argv)
    ids = [t for t in args.traps.split(",") if t]
    report = run_probes(args.framework, ids or None)
    args.out.write_text(json.dumps(report, indent=1), encoding="utf-8")
    failed = report["status"] != "ok" or any(not r["ok"] for r in report["results"].values())
    return 3 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
