"""Interactive jobs' proxies: one per job, carrying user connections over SSH to the job's web service."""
