"""Benchmarks of the daemon against the real local test cluster (``make bench``).

Every figure comes from real components where they can run here: the real
daemon process (``slurm-downstream serve``), real OpenSSH, real Slurm. Only the
10,000-job population is simulated (10,000 real submissions would take minutes),
and the output says so. Not part of ``make test``: numbers are printed and
written to JSON, never asserted.
"""
