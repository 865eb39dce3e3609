"""Two replicas of the daemon: exactly one polls Slurm; the other stands by and takes over.

Both daemons are real (real sockets, real SSH to the test cluster). The
coordination.k8s.io Lease they compete for lives in tests/support/kube_api.py, a
local stand-in that replaces a real Kubernetes API server because none can run
on these machines.
"""

from __future__ import annotations

from functools import partial

import httpx
import trio

from daemon.server import serve
from tests.integration.conftest import settings
from tests.support.kube_api import KubeAPIStandIn


async def ready(url: str) -> bool:
    async with httpx.AsyncClient(timeout=5) as client:
        return (await client.get(f"{url}/ready")).status_code == 200


async def test_one_replica_polls_and_the_other_takes_over_when_it_stops() -> None:
    with KubeAPIStandIn() as api:
        env = {"JARVICE_SLURM_LEADER_ELECTION": "true", "JARVICE_SLURM_KUBE_API": api.url}
        async with trio.open_nursery() as outer:
            first_scope = trio.CancelScope()
            urls: dict[str, str] = {}

            async def replica(name: str, scope: trio.CancelScope) -> None:
                with scope:
                    async with trio.open_nursery() as nursery:
                        conf = settings(JARVICE_SLURM_POD_NAME=name, **env)
                        binds = await nursery.start(partial(serve, conf, "127.0.0.1", 0, handle_signals=False))
                        urls[name] = binds[0]
                        await trio.sleep_forever()

            outer.start_soon(replica, "replica-a", first_scope)
            with trio.fail_after(30):
                while not (urls.get("replica-a") and await ready(urls["replica-a"])):
                    await trio.sleep(0.2)
            outer.start_soon(replica, "replica-b", trio.CancelScope())
            with trio.fail_after(30):
                while "replica-b" not in urls:
                    await trio.sleep(0.1)
            await trio.sleep(2)  # several renew rounds: the standby must stay a standby
            assert await ready(urls["replica-a"]) and not await ready(urls["replica-b"])

            first_scope.cancel()  # the leader stops (and releases its Lease)
            with trio.fail_after(30):
                while not await ready(urls["replica-b"]):
                    await trio.sleep(0.2)
            outer.cancel_scope.cancel()

