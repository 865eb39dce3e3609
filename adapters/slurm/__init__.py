"""Slurm: the commands the daemon runs, and parsers for what they print."""
