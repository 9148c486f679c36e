"""Data-parallel replicas on torch's own engine: R processes in a gloo process group (docs/design.md, "Data
parallelism and accumulation"); the adapter wraps its model in DistributedDataParallel.

The worker process is rank 0. `Replicas.start` spawns ranks 1..R−1 (torch.multiprocessing's spawn context), each
joining the group and running `target(rank, *args)` (adapter.run_replica: the adapter rebuilt from the spec's JSON
form, deterministic, so every rank starts identical); the rendezvous is a FileStore in a fresh `tempfile.mkdtemp()`
folder, so no two runs can meet. Every wait is bounded by the group's timeout (TIMEOUT_S): a rank that exits or
stops answering ends the run with a RuntimeError naming it (`failure`), never a hang; a helper's traceback goes to
its stderr and to `rank<r>.err` in that folder. After the last epoch the helpers leave the group and exit, and rank
0 destroys it. Besides DDP's gradient all-reduces and buffer broadcasts, a `sync = true` batch_norm layer
all-reduces its statistics over the group in each training forward and backward (norm.py).
Past one machine (backends.host): one process per replica, started by torchrun, e.g. on one machine
    python -m torch.distributed.run --standalone --nproc-per-node 2 -m backends.host torch SPEC.toml OUT
or on each of N machines `torchrun --nnodes N --node-rank i --master-addr HOST0 --master-port P --nproc-per-node M
-m backends.host torch SPEC.toml OUT` (N·M = distributed.replicas). `join_hosts` joins torchrun's group
(`init_process_group("gloo", init_method="env://")`, the same TIMEOUT_S) instead of `Replicas.start`; every rank
runs the whole driver (evaluation has no collective), rank 0 alone writes the record; torchrun ends the rest when
one fails.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT_S = 120.0  # the longest any rank waits for another (rendezvous, every collective, the helpers' exit)
GRACE_S = 3.0  # after a failed collective: how long a helper that is going down gets to finish exiting
POLL_S = 0.05

_active: Replicas | None = None  # the group this process leads, if any (one default process group per process)
_hosts = False  # whether this process joined torchrun's group (join_hosts)


def reserve_devices(n: int) -> None:
    """R replicas are R CPU processes of a gloo group: nothing to reserve, but torch must offer both."""
    if not (dist.is_available() and dist.is_gloo_available()):
        raise RuntimeError(
            f"torch data parallelism (distributed.replicas = {n}) needs torch.distributed with the gloo backend; "
            f"torch {torch.__version__} has distributed {dist.is_available()}, "
            f"gloo {dist.is_available() and dist.is_gloo_available()}"
        )


def _store(folder: Path, world: int) -> dist.FileStore:
    return dist.FileStore(str(folder / "store"), world)


def _join(store: dist.FileStore, rank: int, world: int, timeout: float) -> None:
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=timeout))


def _helper(rank: int, world: int, folder: str, timeout: float, target: Callable, args: tuple) -> None:
    """The body of helper rank `rank`: say it is up, join the group, run `target(rank, *args)`, leave. On any error
    its traceback goes to stderr and to `rank<r>.err`, exit code 1. It ends with `os._exit`, as a forked
    multiprocessing child does: the interpreter's teardown with torch loaded takes seconds, which rank 0 would wait
    for at every failure and after the last epoch."""
    code = 0
    try:
        store = _store(Path(folder), world)
        store.set(f"up/{rank}", "1")
        _join(store, rank, world, timeout)
        target(rank, *args)
        dist.destroy_process_group()
    except BaseException:
        traceback.print_exc()
        Path(folder, f"rank{rank}.err").write_text(traceback.format_exc(), encoding="utf-8")
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _last_line(path: Path) -> str:
    lines = path.read_text(encoding="utf-8").strip().splitlines() if path.exists() else []
    return lines[-1] if lines else "no error written (killed?)"


def failure(helpers: dict[int, mp.Process], folder: Path, timeout: float, error: Exception) -> str | None:
    """Why a collective failed, naming the rank: a helper that has exited ("torch DDP rank r exited with code c:
    <last line of its error>"); else, when `error` is a timeout, the helpers still running ("torch DDP rank r did
    not answer within T s"); else None (rank 0's own error). A peer's death closes its connections as it exits,
    so after any other error a helper gets GRACE_S to be seen exiting."""
    timed_out = "timed out" in str(error).lower()
    deadline = time.monotonic() + (0.0 if timed_out else GRACE_S)
    while time.monotonic() < deadline and all(p.exitcode is None for p in helpers.values()):
        time.sleep(POLL_S)
    for rank, process in helpers.items():
        if process.exitcode is not None:
            return (
                f"torch DDP rank {rank} exited with code {process.exitcode}: {_last_line(folder / f'rank{rank}.err')}"
            )
    if timed_out:
        return f"torch DDP rank {', '.join(map(str, helpers))} did not answer within {timeout:g} s"
    return None


class Replicas:
    """Rank 0's side of the group: the helper processes, the rendezvous folder, the bounded waits."""

    def __init__(self, world: int, timeout: float):
        self.world, self.timeout = world, timeout
        self.folder = Path(tempfile.mkdtemp(prefix="parity-torch-ddp-"))
        self.helpers: dict[int, mp.Process] = {}

    @classmethod
    def start(cls, world: int, target: Callable, args: tuple, timeout: float = TIMEOUT_S) -> Replicas:
        """Spawn ranks 1..world−1, each running `target(rank, *args)` (picklable: a module-level function), and
        join them as rank 0. A helper that exits before it is up fails here at once; every wait is bounded by
        `timeout`."""
        global _active
        if _active is not None:  # a run that failed between its epochs left its group behind
            _active.close()
        _active = group = cls(world, timeout)
        context = mp.get_context("spawn")
        for rank in range(1, world):
            group.helpers[rank] = context.Process(
                target=_helper, args=(rank, world, str(group.folder), timeout, target, args), daemon=True
            )
            group.helpers[rank].start()
        with group.guard():
            store = _store(group.folder, world)
            group._wait_until_up(store)
            _join(store, 0, world, timeout)
        return group

    def _wait_until_up(self, store: dist.FileStore) -> None:
        deadline = time.monotonic() + self.timeout
        for rank, process in self.helpers.items():
            while not store.check([f"up/{rank}"]):
                if process.exitcode is not None:
                    raise RuntimeError(f"rank {rank} ended before it was up")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"timed out waiting for rank {rank} to come up")
                time.sleep(POLL_S)

    @contextmanager
    def guard(self):
        """Any error inside closes the group (its helpers ended); when a helper is the cause, a RuntimeError naming
        it (`failure`) is raised from the original."""
        try:
            yield
        except Exception as exc:
            message = failure(self.helpers, self.folder, self.timeout, exc)
            self.close()
            if message is None:
                raise
            raise RuntimeError(message) from exc

    def finish(self) -> None:
        """After the last epoch: every helper exits with code 0 within the timeout; then the group is closed."""
        deadline = time.monotonic() + self.timeout
        with self.guard():
            for process in self.helpers.values():
                process.join(max(0.0, deadline - time.monotonic()))
                if process.exitcode != 0:
                    raise TimeoutError("a helper rank timed out or failed at its end")
        self.close()

    def close(self) -> None:
        """End the helpers still running, destroy the process group, remove the rendezvous folder."""
        global _active
        for process in self.helpers.values():
            if process.exitcode is None:
                process.kill()
            process.join()
        if dist.is_initialized():
            dist.destroy_process_group()
        shutil.rmtree(self.folder, ignore_errors=True)
        if _active is self:
            _active = None


def _unset(keys: tuple[str, ...]) -> None:
    from common import InputError

    missing = [key for key in keys if not os.environ.get(key)]
    if missing:
        raise InputError(
            f"backends.host torch: {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: start it "
            "with torchrun (python -m torch.distributed.run --nproc-per-node R -m backends.host torch SPEC OUT)"
        )


def join_hosts(spec) -> int:
    """backends.host: join the process group torchrun describes in the environment (RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT; LOCAL_RANK picks the CUDA device on a machine with several) before anything else of torch runs,
    and return this process's rank. That group then stands in for `Replicas.start`'s (`hosted()`): every wait is
    bounded by TIMEOUT_S, and torchrun, not rank 0, ends the others when one fails. The spec's replicas must equal
    the processes torchrun started (one replica each)."""
    global _hosts
    from common import InputError

    _unset(("RANK", "WORLD_SIZE"))
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except ValueError:
        raise InputError(
            f"backends.host torch: RANK={os.environ['RANK']!r} and WORLD_SIZE={os.environ['WORLD_SIZE']!r} "
            "are not both integers"
        ) from None
    replicas = spec.distributed.replicas
    if world != replicas:
        raise InputError(
            f"spec key 'distributed.replicas': {replicas} replica{'s' * (replicas != 1)} but the launcher started "
            f"{world} process{'es' * (world != 1)} (torchrun's WORLD_SIZE; one replica per process)"
        )
    _unset(("MASTER_ADDR", "MASTER_PORT"))
    reserve_devices(replicas)
    dist.init_process_group("gloo", init_method="env://", timeout=timedelta(seconds=TIMEOUT_S))
    _hosts = True
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return rank


def hosted() -> bool:
    """Whether this process is a rank of torchrun's group (`join_hosts`): its adapter takes `dist.get_rank()` as
    its replica and starts no group of its own."""
    return _hosts and dist.is_initialized()


def gather(obj) -> list:
    """Every rank's `obj`, in rank order (all_gather_object over the default group)."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


@atexit.register
def _close_active() -> None:
    if _active is not None:
        _active.close()
    if hosted():
        dist.destroy_process_group()
