"""Every side effect of the daemon (SSH, Slurm, job scripts), behind small interfaces."""
