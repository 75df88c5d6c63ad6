"""Hydra finds launcher plugins only under ``hydra_plugins``; the logic lives in
jobs/launch/sweep.py."""

from jobs.launch import sweep


class CheckedSlurmSweepLauncher(sweep.CheckedSlurmSweepLauncher):
    """``hydra/launcher=slurm``: see jobs/launch/sweep.py."""
