"""Wiring: one trio nursery holding the HTTP server, the Slurm poller and the adapters."""
