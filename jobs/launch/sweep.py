"""``-m hydra/launcher=slurm``: hydra-submitit-launcher's sweep launcher, checked and reporting.

Before submitting, each point's job config is validated (a bad value is refused at once, not
inside a SLURM job after a queue wait) and the request is checked against the partition (nulls
derived from it, as for ``launcher=slurm``); the driver then waits as ``launcher=slurm``'s does
(``watched``). After the sweep, every point's outcome is printed,
the failed ones with their error, and the run exits 1 if any failed.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import open_dict

from jobs.launch import slurm_cluster as cluster


class CheckedSlurmSweepLauncher(SlurmLauncher):
    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        self._fit_request()
        errors = [
            self._check_point(list(o), initial_job_idx + i) for i, o in enumerate(job_overrides)
        ]
        bad = [(i, e) for i, e in enumerate(errors) if e is not None]
        if bad:
            for i, err in bad:
                point = " ".join(job_overrides[i])
                print(f"sweep: #{initial_job_idx + i} {point}: invalid: {err}", file=sys.stderr)
            print(f"error: {len(bad)} sweep point(s) invalid; nothing submitted", file=sys.stderr)
            raise SystemExit(2)
        with watched(str(self.params["submitit_folder"])):
            returns = super().launch(job_overrides, initial_job_idx)
        report(returns, job_overrides, initial_job_idx)
        return returns

    def _fit_request(self) -> None:
        """Refuse a request the partition can never run; derive null GPUs, CPUs and memory
        from it as ``launcher=slurm`` does."""
        p = self.params
        gpus = p.get("gpus_per_task")
        req = cluster.fit(
            p.get("partition"),
            cpus=p.get("cpus_per_task"),
            mem_gb=p.get("mem_gb"),
            timeout_min=p.get("timeout_min"),
            gpus=gpus if gpus is not None else p.get("gpus_per_node"),
            gres=p.get("gres"),
            key="hydra.launcher",
        )
        p.update(cpus_per_task=req.cpus, mem_gb=int(req.mem_gb), timeout_min=req.timeout_min)
        if req.gpus and not p.get("gres") and not p.get("gpus_per_node"):
            p.update(gpus_per_task=req.gpus)

    def _check_point(self, overrides: list[str], num: int) -> str | None:
        """Why the job config of this point is invalid (None if it is fine)."""
        from jobs.config import check_keys

        assert self.hydra_context is not None and self.config is not None
        hydra_cfg = HydraConfig.instance()
        before = hydra_cfg.cfg
        try:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
            with open_dict(cfg):
                cfg.hydra.job.num, cfg.hydra.job.id = num, f"check_{num}"
            hydra_cfg.set_config(cfg)  # what ${hydra:...} resolves against, as in the job
            check_keys(cfg)
            hydra.utils.instantiate(cfg.job, _convert_="all")
        except Exception as e:  # noqa: BLE001 - reported per point
            cause = e.__cause__ if e.__cause__ is not None else e
            return f"{type(cause).__name__}: {cause}"
        finally:
            hydra_cfg.cfg = before
        return None


POLL_S = 2.0  # the sweep's driver checks the array this often (one squeue call)


@dataclass
class _Driver:
    """The sweep's side of ``jobs.launch.slurm.Watch`` (no store: a sweep point has its own)."""

    folder: str
    poll_s: float = POLL_S
    store: str | None = None


class _Ended:
    """A sweep point whose task has ended: ``results()`` returns its outcome at once."""

    def __init__(self, outcome: JobReturn) -> None:
        self.outcome = outcome

    def results(self) -> list[JobReturn]:
        return [self.outcome]


@contextlib.contextmanager
def watched(folder: str) -> Iterator[None]:
    """Make hydra-submitit-launcher's wait the one ``launcher=slurm`` has
    (``jobs.launch.slurm.Watch``): the sweep's array is polled as a whole, pending reasons and
    state changes are printed, a reason that never clears cancels it, Ctrl-C detaches, and a
    task that ended without a result (cancelled, timed out, killed) becomes a failed point
    instead of a wait and a traceback. The launcher calls ``executor.map_array`` then
    ``job.results()``; the wait goes in between."""
    import submitit

    from jobs.launch.slurm import Watch

    original = submitit.AutoExecutor.map_array

    def map_array(executor: Any, fn: Any, *iterables: Any) -> list[Any]:
        jobs = original(executor, fn, *iterables)
        if not jobs:
            return jobs  # type: ignore[no-any-return]
        array_id = str(jobs[0].job_id).split("_")[0]
        print(f"sweep: submitted array {array_id} ({len(jobs)} point(s))", file=sys.stderr)
        results = Watch(
            _Driver(folder),
            array_id,
            dict(enumerate(jobs)),
            list(range(len(jobs))),
            what="sweep array",
            key="hydra.launcher",
            unit="point",
        ).wait()
        return [
            _Ended(
                result
                if result is not None
                else JobReturn(
                    status=JobStatus.FAILED,
                    _return_value=RuntimeError(
                        f"its SLURM task {job.job_id} ended without a result (log: "
                        f"{job.paths.stderr})"
                    ),
                )
            )
            for job, result in zip(jobs, results, strict=True)
        ]

    submitit.AutoExecutor.map_array = map_array  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        submitit.AutoExecutor.map_array = original  # type: ignore[method-assign]


def report(returns: Sequence[JobReturn], overrides: Sequence[Sequence[str]], first: int) -> None:
    """One line per point; exit 1 if any failed (the others' outcomes are shown first)."""
    failed = 0
    for i, (ret, point) in enumerate(zip(returns, overrides, strict=True)):
        name = f"#{first + i} {' '.join(point)}"
        if ret.status == JobStatus.COMPLETED and not _nonzero(ret._return_value):
            print(f"sweep: {name}: ok", file=sys.stderr)
            continue
        failed += 1
        err: Any = ret._return_value
        why = f"{type(err).__name__}: {err}" if isinstance(err, BaseException) else f"{err}"
        print(f"sweep: {name}: FAILED: {why}", file=sys.stderr)
    print(f"sweep: {len(returns) - failed} ok, {failed} failed", file=sys.stderr)
    if failed:
        raise SystemExit(1)


def _nonzero(value: Any) -> bool:
    return isinstance(value, int) and value != 0
