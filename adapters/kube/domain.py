"""``JARVICE_JOBS_DOMAIN`` as the proxies and job scripts use it; parsed in config (checked at start)."""

from __future__ import annotations

from config.jobs_domain import JobsDomain

__all__ = ["JobsDomain"]
