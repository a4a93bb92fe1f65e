"""`modtrain data prepare`: corpora -> tokens -> a sharded zarr v3 store, in parallel.

Two phases, run by N local worker processes (`workers`) or by the ranks of an MPI job:
  1. encode: each worker encodes whole slices of the inputs into parts;
  2. assemble: each worker writes whole shards of the store from the parts;
then one process (the parent, or rank 0) writes offsets, checksums and attributes and
renames the finished store into place. Completed parts survive an interruption, and a
rerun with the same inputs only encodes the rest. SIGTERM or SIGINT stops the local workers
and raises Interrupted; workers also exit when the parent dies (kill -9 included).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from contextlib import contextmanager, suppress
from multiprocessing import get_context
from pathlib import Path
from typing import Any, TypeVar

from modtrain.data.format import CHUNK_TOKENS, SHARD_CHUNKS
from modtrain.data.write import build as builder
from modtrain.data.write.encode import encode_slice, part_done
from modtrain.data.write.mpi import mpi_world
from modtrain.data.write.plan import Plan, make_plan
from modtrain.data.write.progress import CounterFile, Display, Poller, clear_counters
from modtrain.data.write.sources import AUTO, FORMATS
from modtrain.errors import ModtrainError

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
    """A stop signal ended a local prepare; its workers are gone, finished slices kept."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def prepare_store(
    tokenizer_path: str | Path,
    inputs: list[str | Path],
    out: str | Path,
    overwrite: bool = False,
    *,
    workers: int = 1,
    input_format: str = AUTO,
    jsonl_field: str = "text",
    slice_mb: float | None = None,
    chunk_tokens: int = CHUNK_TOKENS,
    shard_chunks: int = SHARD_CHUNKS,
    progress: bool = False,
    filter: str | None = None,
) -> Path:
    """Encode `inputs` (files, directories, globs) into the store `out`; returns its path.

    Under an MPI launcher every rank must call this with the same arguments. `slice_mb`
    None: slices sized for the number of workers (or ranks), see plan.auto_slice_bytes.
    """
    if workers < 1:
        raise ModtrainError(f"--workers {workers} must be at least 1")
    out = Path(out)
    settings = dict(input_format=input_format, jsonl_field=jsonl_field, slice_mb=slice_mb,
                    chunk_tokens=chunk_tokens, shard_chunks=shard_chunks, filter=filter)
    comm = mpi_world()
    if comm is None:
        with _stop_on_signals():
            return _prepare_local(tokenizer_path, inputs, out, overwrite, workers, settings,
                                  progress)
    if workers != 1:
        raise ModtrainError(
            "--workers is for a single process; under mpirun/srun each rank is one worker: "
            "drop --workers or launch more ranks"
        )
    return _prepare_mpi(comm, tokenizer_path, inputs, out, overwrite, settings, progress)


def _start(tokenizer_path, inputs, out: Path, overwrite: bool, settings: dict,
           workers: int) -> tuple[Plan, Path]:
    builder.check_destination(out, overwrite)  # before any expensive planning
    plan = make_plan(tokenizer_path, inputs, **settings, workers=workers)
    build = builder.open_build(out, plan, overwrite, any_slicing=settings["slice_mb"] is None)
    clear_counters(build)
    return Plan.load(build / "plan.json"), build


def _attrs(plan: Plan) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "tokenizer_sha256": plan.tokenizer_sha256, "vocab_size": plan.vocab_size,
        "eos_id": plan.eos_id, "sources": [f.path for f in plan.files],
    }
    if any(FORMATS[f.kind].uses_field for f in plan.files):
        attrs["jsonl_field"] = plan.jsonl_field
    if plan.filter:
        attrs["filter"] = plan.filter
    return attrs


def balance(sizes: dict[int, int], n: int) -> list[list[int]]:
    """Split items over n workers, largest first onto the least loaded (deterministic)."""
    loads = [0] * n
    groups: list[list[int]] = [[] for _ in range(n)]
    for item in sorted(sizes, key=lambda i: (-sizes[i], i)):
        w = min(range(n), key=lambda k: (loads[k], k))
        groups[w].append(item)
        loads[w] += sizes[item]
    return [sorted(g) for g in groups]


# ---- worker-side tasks (module level: they run in spawned processes) -------------------

_worker_state: dict[str, Any] = {}  # per spawned process; a pool lives for one prepare


def _worker_start(lifeline) -> None:
    """In each worker: Ctrl-C is the parent's to handle, and the parent's death is ours."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(lifeline,), daemon=True).start()


def _exit_with_parent(lifeline) -> None:
    with suppress(EOFError, OSError):
        lifeline.recv_bytes()  # nothing is ever sent: this returns when the parent is gone
    os._exit(1)


def _encode_task(build: str, index: int, name: str) -> None:
    if _worker_state.get("build") != build:
        _worker_state.update(build=build, plan=Plan.load(Path(build) / "plan.json"),
                             counter=CounterFile(Path(build), name))
    counter = _worker_state["counter"]
    encode_slice(Path(build), _worker_state["plan"], index, counter)
    counter.slice_done()


def _shard_task(build: str, layout: builder.Layout, shards: list[int]) -> list:
    return builder.write_shards(Path(build), layout, shards)


# ---- one machine: `workers` spawned processes, or the calling process alone -----------


def _prepare_local(tokenizer_path, inputs, out: Path, overwrite: bool, workers: int,
                   settings: dict, progress: bool) -> Path:
    plan, build = _start(tokenizer_path, inputs, out, overwrite, settings, workers)
    todo = [i for i in range(len(plan.slices)) if not part_done(build, i)]
    display = Display(len(plan.slices), len(plan.slices) - len(todo), progress)
    workers = max(1, min(workers, len(todo)))
    if workers == 1:
        with Poller(build, display):
            counter = CounterFile(build, "main")
            for i in todo:
                encode_slice(build, plan, i, counter)
                counter.slice_done()
        layout = _init(build, plan)
        digests = builder.write_shards(build, layout, list(range(layout.num_shards)))
    else:
        with _workers(workers) as pool:  # one pool for both phases: workers start once
            with Poller(build, display):
                _run_all(pool, [(_encode_task, str(build), i, f"p{k}")
                                for k, i in enumerate(todo)])
            layout = _init(build, plan)
            shards = list(range(layout.num_shards))
            groups = [shards[k::workers] for k in range(workers)]
            results = _run_all(pool, [(_shard_task, str(build), layout, g) for g in groups if g])
        digests = [d for r in results for d in r]
    return builder.finalize(build, layout, digests, out, _attrs(plan), overwrite)


@contextmanager
def _workers(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A pool whose workers are stopped, not waited for, when prepare fails or is stopped,
    and exit on their own when this process dies (they watch a pipe only it writes to)."""
    # Not plain fork: zarr runs an event-loop thread, and forking a threaded process is
    # unsafe. The forkserver imports this module once and forks each worker from that
    # clean, single-threaded process, so N workers do not pay N imports.
    context = get_context("forkserver")
    context.set_forkserver_preload([__name__])
    lifeline, keep = context.Pipe(duplex=False)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context,
                               initializer=_worker_start, initargs=(lifeline,))
    try:
        yield pool
    except BaseException:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        lifeline.close()
        keep.close()


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGTERM/SIGINT raise Interrupted in the main thread (once: a second is ignored while
    the workers are stopped)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def stop(signum: int, frame) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        received.append(signum)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        yield
    except Exception as e:  # a worker killed by the same signal (its process group got it)
        if received and not isinstance(e, Interrupted):
            raise Interrupted(received[0]) from None
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_all(pool: ProcessPoolExecutor, calls: list[tuple]) -> list:
    futures = [pool.submit(*call) for call in calls]
    done, pending = wait(futures, return_when=FIRST_EXCEPTION)
    for f in futures:
        if f.done() and (error := f.exception()) is not None:
            for p in pending:
                p.cancel()
            raise error
    return [f.result() for f in futures]


# ---- MPI: one rank per share of the slices and of the shards ---------------------------


def _prepare_mpi(comm, tokenizer_path, inputs, out: Path, overwrite: bool, settings: dict,
                 progress: bool) -> Path:
    rank, size = comm.Get_rank(), comm.Get_size()

    def on_root(fn: Callable[[], T]) -> T:
        """Run on rank 0 and broadcast the result, or the error to every rank."""
        result = _attempt(fn, rank) if rank == 0 else None
        value, error = comm.bcast(result, root=0)
        if error:
            raise ModtrainError(error)
        return value

    def everywhere(fn: Callable[[], T]) -> list[T]:
        """Run on every rank; all ranks get every result, or all raise the first error."""
        gathered = comm.allgather(_attempt(fn, rank))
        errors = [e for _, e in gathered if e]
        if errors:
            raise ModtrainError(errors[0])
        return [v for v, _ in gathered]

    def start() -> tuple[dict, str, list[list[int]], int]:
        plan, build = _start(tokenizer_path, inputs, out, overwrite, settings, size)
        todo = {i: plan.slice_size(i) for i in range(len(plan.slices)) if not part_done(build, i)}
        return plan.to_json(), str(build), balance(todo, size), len(plan.slices) - len(todo)

    plan_json, build_name, shares, kept = on_root(start)
    plan, build = Plan.from_json(plan_json), Path(build_name)
    display = Display(len(plan.slices), kept, progress and rank == 0)

    def encode_mine() -> None:
        counter = CounterFile(build, f"rank{rank}")
        for i in shares[rank]:
            encode_slice(build, plan, i, counter)
            counter.slice_done()

    with Poller(build, display):
        everywhere(encode_mine)
    layout = on_root(lambda: _init(build, plan))
    digests = everywhere(lambda: builder.write_shards(
        build, layout, list(range(rank, layout.num_shards, size))))
    flat = [d for per_rank in digests for d in per_rank]
    return Path(on_root(lambda: str(builder.finalize(
        build, layout, flat, out, _attrs(plan), overwrite))))


def _init(build: Path, plan: Plan) -> builder.Layout:
    layout = builder.read_layout(build, len(plan.slices), plan.dtype, plan.chunk_tokens,
                                 plan.shard_chunks)
    builder.init_store(build, layout)
    return layout


def _attempt(fn: Callable[[], T], rank: int) -> tuple[T | None, str | None]:
    """(result, None) or (None, one-line error): every rank must reach the next collective."""
    try:
        return fn(), None
    except ModtrainError as e:
        return None, str(e)
    except Exception as e:
        traceback.print_exc(file=sys.stderr)
        return None, f"rank {rank} (pid {os.getpid()}) failed: {type(e).__name__}: {e}"
