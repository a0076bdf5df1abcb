"""Run the independent runs of a plan at once, in worker processes (``--jobs N|auto``).

A study is a grid of small runs; one run of a small model does not use a machine's cores (a U-Net
step at 2 threads is only 1.4x faster than at 1 on this project's 2-core CPU) nor a GPU. The grid
runner starts ``N`` worker processes, gives each its share of the cores (intra-op threads) or its
own GPU, and hands out runs whose ``needs`` are finished, so a later stage starts as soon as the
runs it needs are done. Each worker keeps torch imported and executes runs one after another
through the same ``runner.execute_run`` as sequential execution; a run's output goes to
``<run dir>/run.log``. Ctrl-C reaches every worker: each running run is marked interrupted and keeps
its checkpoint, as in a sequential run, and the same command resumes it.

Results equal sequential execution with the same threads per run (CPU float reductions depend on the
intra-op thread count: ~2e-7 after 5 SGD steps of a small conv net between 1 and 2 threads).
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.core.errors import UserError

GIB = 1024**3


@dataclass(frozen=True)
class Workers:
    """How many runs execute at once, with how many intra-op threads each, on which GPU (None: CPU)."""

    count: int
    threads: int
    gpus: tuple[int | None, ...]

    def describe(self) -> str:
        where = "CPU" if self.gpus[0] is None else f"GPUs {sorted(set(self.gpus))}"
        return f"{self.count} workers × {self.threads} threads on {where}"


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. a SLURM allocation), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (None where that file is missing)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def parse_jobs(value: str | int) -> int | str:
    """``--jobs``: a positive number of concurrent runs, or ``auto``."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise UserError(f'--jobs "{value}" is not a number of concurrent runs',
                    "use --jobs 1 (one run at a time), --jobs N (N >= 1) or --jobs auto (JOBS= in make)")


def plan_workers(jobs: int | str, accelerator: str, runs: int, run_threads: int = 1, run_memory_gib: float = 2.0,
                 runs_per_gpu: int = 1, gpus: int = 0, cores: int | None = None,
                 memory: int | None = None) -> Workers:
    """Workers for ``runs`` pending runs.

    ``auto`` on a CPU: one worker per ``run_threads`` cores (the threads that still pay off for one run of
    the study's model), no more than memory allows at ``run_memory_gib`` per run. On GPUs: ``runs_per_gpu``
    workers per visible GPU. A number is taken as given; the cores are split evenly between workers.
    """
    cores = cores or available_cores()
    if accelerator == "gpu":
        if gpus < 1:
            raise UserError("--accelerator gpu but no GPU is visible", "use --accelerator auto or cpu")
        count = gpus * max(1, runs_per_gpu) if jobs == "auto" else int(jobs)
    elif jobs == "auto":
        count = max(1, cores // max(1, run_threads))
        memory = memory if memory is not None else available_memory()
        if memory is not None:
            count = min(count, max(1, int(memory / (run_memory_gib * GIB))))
    else:
        count = int(jobs)
    count = max(1, min(count, runs))
    threads = max(1, cores // count)
    placement = tuple(i % gpus for i in range(count)) if accelerator == "gpu" else (None,) * count
    return Workers(count, threads, placement)


def eta(durations: dict[str, list[float]], remaining: list, workers: int = 1) -> str:
    """Time left: each remaining run costs the mean of its stage's finished runs, shared between ``workers``.

    A stage with no finished run yet is not guessed from another stage (a source run can take ten times a
    target run): its runs are counted as untimed beside the estimate of the rest."""
    if not remaining or not any(durations.values()):
        return ""
    untimed: dict[str, int] = {}
    seconds, timed = 0.0, 0
    for run in remaining:
        if durations.get(run.stage):
            seconds += sum(durations[run.stage]) / len(durations[run.stage])
            timed += 1
        else:
            untimed[run.stage] = untimed.get(run.stage, 0) + 1
    seconds /= workers
    text = f" · ETA {int(seconds // 60)}m{int(seconds % 60):02d}s" if timed else " · ETA unknown"
    return text + "".join(f" + {n} {stage} run{'s' if n > 1 else ''} not yet timed" for stage, n in untimed.items())


@dataclass
class GridOutcome:
    """What the grid did: finished keys; failed, blocked (cannot start) and busy (left to another launch that
    is running them, or waiting for such a run) keys with the reason; interrupted or not."""

    finished: list[str]
    failed: dict[str, str]
    blocked: dict[str, str]
    interrupted: bool
    busy: dict[str, str] = field(default_factory=dict)


def run_grid(study_name: str, cfg: dict, launch, todo: list, store, workers: Workers,
             say=print) -> GridOutcome:
    """Execute ``todo`` (plan order) on ``workers``; a run starts once every run it needs is finished."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    outbox = context.Queue()
    pool = [_Worker(context, i, (study_name, cfg, launch, workers.threads, workers.gpus[i]), outbox)
            for i in range(workers.count)]
    pending = list(todo)
    running: dict[int, tuple] = {}  # worker index -> (run, start time)
    durations: dict[str, list[float]] = {}
    outcome = GridOutcome([], {}, {}, False)
    total = len(todo)

    def progress() -> str:
        remaining = pending + [run for run, _ in running.values()]
        return (f"[{len(outcome.finished)}/{total} done · {len(running)} running · {len(pending)} pending"
                f"{eta(durations, remaining, workers.count)}]")

    try:
        while pending or running:
            _block_unreachable(pending, running, store, outcome)
            for worker in pool:
                if worker.index in running or not worker.ready:
                    continue
                run = _next_ready(pending, store)
                if run is None:
                    break
                pending.remove(run)
                running[worker.index] = (run, time.time())
                worker.send(run.key)
                resumed = " (resuming)" if store.status(run.key) in ("running", "interrupted", "failed") else ""
                say(f"{progress()} start {run.name}{resumed} · worker {worker.index + 1} · "
                    f"log {store.run_dir(run.key) / 'run.log'}")
            if not running and (not pending or all(worker.ready for worker in pool)):
                break  # nothing left that can start
            try:
                message = outbox.get(timeout=2.0)
            except queue.Empty:
                _check_alive(pool, running, store, outcome, say)
                continue
            _handle(message, pool, running, durations, outcome, say, progress)
    except KeyboardInterrupt:
        outcome.interrupted = True
        say(f"interrupted: stopping {len(running)} running run(s); each keeps its last checkpoint")
        _drain(outbox, pool, running, durations, outcome, say, progress)
    finally:
        for worker in pool:
            worker.stop()
    return outcome


def _next_ready(pending: list, store):
    for run in pending:
        if all(store.is_finished(key) for key in run.needs):
            return run
    return None


def _block_unreachable(pending: list, running: dict, store, outcome: GridOutcome) -> None:
    """A run whose need failed, is blocked, or is neither finished nor scheduled can never start."""
    scheduled = {r.key for r in pending} | {r.key for r, _ in running.values()}
    changed = True
    while changed:
        changed = False
        for run in list(pending):
            for key in run.needs:
                if store.is_finished(key) or key in scheduled - {run.key}:
                    continue
                if key in outcome.busy:
                    outcome.busy[run.key] = f"needs {key}, which another launch is running"
                else:
                    why = "failed" if key in outcome.failed else "was not run" if key in outcome.blocked else ""
                    outcome.blocked[run.key] = (f"needs {key}, which {why}" if why else
                                                f"needs {key}, which is not finished and not selected (run its stage)")
                pending.remove(run)
                scheduled.discard(run.key)
                changed = True
                break


def _handle(message: tuple, pool: list, running: dict, durations: dict, outcome: GridOutcome, say, progress) -> None:
    kind, index, *rest = message
    worker = pool[index]
    if kind == "ready":
        worker.ready = True
        return
    run, start = running.pop(index)
    seconds = time.time() - start
    if kind == "done":
        metrics = rest[0]
        durations.setdefault(run.stage, []).append(seconds)
        outcome.finished.append(run.key)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))[:120]
        say(f"{progress()} done {run.name} in {seconds:.1f}s · {shown}")
    elif kind == "interrupted":
        outcome.interrupted = True
        say(f"{progress()} interrupted {run.name}: keeps its last checkpoint")
    elif kind == "busy":
        outcome.busy[run.key] = rest[0]
        say(f"{progress()} skipped {run.name}: {rest[0]} (another launch)")
    else:
        outcome.failed[run.key] = rest[0]
        say(f"{progress()} FAILED {run.name}: {rest[0]}")


def _check_alive(pool: list, running: dict, store, outcome: GridOutcome, say) -> None:
    """A worker that died (killed, out of memory) fails its run and is replaced."""
    for i, worker in enumerate(pool):
        if worker.alive():
            continue
        code = worker.process.exitcode
        if worker.index in running:
            run, _ = running.pop(worker.index)
            why = f"its worker process died (exit code {code}; -9 is often the out-of-memory killer)"
            outcome.failed[run.key] = why
            store.set_status(run.key, "failed", error=why)
            say(f"FAILED {run.name}: {why}; see {store.run_dir(run.key) / 'run.log'}")
        pool[i] = worker.replacement()


def _drain(outbox, pool: list, running: dict, durations: dict, outcome: GridOutcome, say, progress) -> None:
    """After Ctrl-C: wait for running runs to save and report (a second Ctrl-C stops the workers at once).

    A Ctrl-C at the terminal reaches the workers too; a SIGINT sent to this process alone is passed on to
    the workers still running after a short grace, so they stop the same way."""
    start = time.time()
    forwarded = False
    try:
        while running and time.time() < start + 120:
            if not forwarded and time.time() > start + 3:
                for index in running:
                    if pool[index].alive():
                        os.kill(pool[index].process.pid, signal.SIGINT)
                forwarded = True
            try:
                _handle(outbox.get(timeout=1.0), pool, running, durations, outcome, say, progress)
            except queue.Empty:
                if not any(pool[i].alive() for i in running):
                    break
    except KeyboardInterrupt:
        pass
    for worker in pool:
        if worker.alive() and worker.index in running:
            worker.process.terminate()


class _Worker:
    """One worker process and its inbox of run keys."""

    def __init__(self, context, index: int, args: tuple, outbox) -> None:
        self.context, self.index, self.args, self.outbox = context, index, args, outbox
        self.ready = False
        self.inbox = context.Queue()
        self.process = context.Process(target=worker_main, name=f"grid-worker-{index + 1}", daemon=True,
                                       args=(index, *self.args, self.inbox, outbox, os.getpid()))
        self.process.start()

    def send(self, key: str) -> None:
        self.inbox.put(key)

    def alive(self) -> bool:
        return self.process.is_alive()

    def replacement(self) -> _Worker:
        if not self.ready:
            raise RuntimeError(f"grid worker {self.index + 1} died while starting (exit code "
                               f"{self.process.exitcode}); its error is printed above")
        return _Worker(self.context, self.index, self.args, self.outbox)

    def stop(self) -> None:
        if self.alive():
            self.inbox.put(None)
            self.process.join(timeout=30)
        if self.alive():
            self.process.terminate()
            self.process.join(timeout=10)


def worker_main(index: int, study_name: str, cfg: dict, launch, threads: int, gpu: int | None, inbox, outbox,
                parent: int) -> None:
    """A worker: pin threads (and GPU) before torch starts, then execute the runs it is sent until ``None``."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # idle: the parent decides what Ctrl-C means

    import torch

    from benchmarks.core.quiet import silence_known_noise
    from benchmarks.core.registry import get_study
    from benchmarks.core.runstore import RunStore

    torch.set_num_threads(threads)
    silence_known_noise()
    study = get_study(study_name)
    runs = {run.key: run for run in study.plan(cfg)}
    store = RunStore(study_name, launch.results)
    outbox.put(("ready", index))
    while True:
        try:
            key = inbox.get(timeout=5.0)
        except queue.Empty:
            if os.getppid() != parent:
                return
            continue
        if key is None:
            return
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            with _output_to(store.run_dir(key) / "run.log"):
                outbox.put(_execute(index, study, runs[key], store, launch))
        except KeyboardInterrupt:  # between two runs
            outbox.put(("interrupted", index))
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _execute(index: int, study, run, store, launch) -> tuple:
    """One run in a worker, as the message for the parent; a failure's traceback goes to the run's log."""
    from benchmarks.core.runner import execute_run
    from benchmarks.core.runstore import RunBusy

    start = time.time()
    try:
        return ("done", index, _plain_metrics(execute_run(study, run, store, launch)))
    except KeyboardInterrupt:
        return ("interrupted", index)
    except RunBusy as busy:
        return ("busy", index, str(busy))
    except BaseException as err:  # noqa: BLE001 -- reported to the parent; the worker takes the next run
        traceback.print_exc()
        return ("failed", index, f"{type(err).__name__}: {err} (after {time.time() - start:.0f}s)")


def _plain_metrics(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}


@contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors, so C++ and subprocess output too) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _die_with_parent() -> None:
    """Linux: if the parent dies (kill -9), the kernel sends this worker SIGINT, so its run saves and stops."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
