"""Hydra finds launcher plugins only under ``hydra_plugins``; the logic lives in jobs/sweep.py."""

from jobs import sweep


class CheckedSlurmSweepLauncher(sweep.CheckedSlurmSweepLauncher):
    """``hydra/launcher=slurm``: see jobs/sweep.py."""
