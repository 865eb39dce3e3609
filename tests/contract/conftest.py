"""The contract runs on every Slurm version of SLURM_VERSIONS (see tests.support.cluster)."""

from tests.support.cluster import generate_tests, slurm_cluster  # noqa: F401 - a fixture, used by name

pytest_generate_tests = generate_tests
