"""The launch layer: where shards and ranks run, and how a run reacts to signals.

It knows no model, data or encoder: a launcher runs ``fn(shard, shard_count)`` (or
``fn(rank, world_size)``) locally (``launchers``), as a submitit SLURM array or job
(``slurm``, with the partition facts in ``slurm_cluster``), as Ray tasks (``ray_launcher``) or
as Hydra sweep points (``sweep``); ``signals`` turns SIGINT/SIGTERM/SIGUSR2 into a stop request
that work with buffers honours. The jobs (``jobs/*.py``) choose what runs.
"""
