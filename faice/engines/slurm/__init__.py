"""The ``slurm`` engine: job arrays whose tasks each run one batch (see :mod:`.job`, :mod:`.task`)."""
