"""Kubernetes: a trio front to the official client, per-job proxies as Deployments, and leader election by Lease."""
