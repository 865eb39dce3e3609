"""Start-up and the one trio nursery: the poller and the HTTP server, side by side."""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING

import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from adapters.errors import DownstreamError, Misconfigured
from adapters.jobscript import ScriptEnvironment
from adapters.journal import Journal
from adapters.kube.domain import JobsDomain
from adapters.proxy.base import ProxyBackend
from adapters.proxy.children import ChildProxies, ExitHook
from adapters.slurm.backend import SlurmBackend, SlurmCluster
from adapters.slurm.client import SUBMIT_SHELLS, SlurmClient
from adapters.slurm.files import NoClusterFiles, SshClusterFiles
from adapters.slurm.rest import RestSlurm
from adapters.ssh import SSHClient, SSHTarget
from adapters.tokens import ClientCredentials, StaticToken, TokenSource
from config.settings import ConfigError, RestSettings, Settings
from daemon import proxy_cmd
from daemon.admin import admin_blueprint, config_view
from daemon.api import VERSION, create_app
from daemon.heap import freeze_heap
from daemon.metrics import Metrics, instrument
from daemon.preflight import Check, log_checks, run_preflight
from daemon.preflight_proxy import proxy_key_checks
from daemon.preflight_rest import SSH_SLURM_CHECKS, rest_checks
from daemon.process import describe_key, stop_on_signal
from daemon.report import init_report
from daemon.service import Downstream
from statemachines.job import Job, JobState
from statemachines.proxy import PROXY_RETRIES, ProxyLife, ProxyPhase

if TYPE_CHECKING:
    from adapters.kube.client import KubeClient

log = logging.getLogger("slurm_downstream")


def ssh_target(settings: Settings) -> SSHTarget:
    return SSHTarget(
        host=settings.cluster_addr,
        port=settings.cluster_port,
        user=settings.ssh_user,
        private_key=settings.ssh_pkey,
        known_hosts=settings.ssh_known_hosts,
        insecure_host_key=settings.ssh_insecure_host_key,
        trust_on_first_use=settings.ssh_trust_on_first_use,
        keepalive=settings.ssh_keepalive,
    )


def ingress_domain(settings: Settings) -> JobsDomain | None:
    """A path-based ingress serves each job under ``/job<N>``: its apps must be told (JARVICE_INGRESSPATH)."""
    if settings.proxy.mode != "kubernetes" or not settings.jobs_domain:
        return None
    try:
        domain = JobsDomain.parse(settings.jobs_domain)
    except ValueError as exc:
        raise ConfigError("JARVICE_JOBS_DOMAIN", str(exc)) from None
    return domain if domain.path_based else None


def script_environment(settings: Settings) -> ScriptEnvironment:
    reg = settings.registry
    return ScriptEnvironment(
        scratch_dir=settings.scratch_dir,
        global_scratch_dir=settings.global_scratch_dir,
        global_registries=settings.global_registries,
        ingress=ingress_domain(settings),
        job_group=settings.job_group,
        users_write=settings.rest is not None,
        service_port=settings.service_port,
        ssh_port=settings.ssh_port,
        singularity_tmpdir=settings.singularity_tmpdir,
        overlay_size=settings.overlay_size,
        singularity_verbose=settings.singularity_verbose,
        http_proxy=settings.http_proxy,
        https_proxy=settings.https_proxy,
        no_proxy=settings.no_proxy,
        system_registry=reg.system_registry,
        system_repo_base=reg.system_repo_base,
        omit_repo_base=reg.omit_repo_base,
        images_tag=reg.images_tag,
        local_registry=reg.local_registry,
        local_repo_base=reg.local_repo_base,
        registry_proxy_port=reg.proxy_port,
        registry_proxy_repos=reg.proxy_repos,
        init_username_b64=reg.docker_username,
        init_password_b64=reg.docker_password,
        instance=settings.instance,
    )


def open_ssh(settings: Settings) -> SSHClient:
    return SSHClient(ssh_target(settings), max_sessions=settings.ssh_max_sessions,
                     command_timeout=settings.command_timeout)


async def connectivity_test(downstream: Downstream) -> bool:
    """The seed document's connectivity test, then our preflight (Slurm, scratch)."""
    log.info(" Now testing connectivity to target cluster...")
    try:
        await downstream.preflight()
    except Misconfigured as exc:  # waiting will not help: stop, naming the variable (exit 2)
        raise ConfigError(exc.variable, exc.why) from None
    except DownstreamError as exc:
        log.warning(" %s failed: %s", "slurmrestd" if isinstance(downstream.slurm, SlurmCluster) else "SSH", exc)
        log.warning(" Could not connect to remote cluster! :(")
        log.warning(" Please check %s parameters.",
                    "slurmrestd (JARVICE_SLURMRESTD_URL, token)" if isinstance(downstream.slurm, SlurmCluster) else "ssh")
        return False
    log.info(" Success! :)")
    return True


def token_source(rest: RestSettings, http: httpx.AsyncClient) -> TokenSource:
    """The service identity: a static token, or client credentials refreshed from the token endpoint."""
    if rest.sa_token:
        return StaticToken(rest.sa_token, claim=rest.username_claim)
    return ClientCredentials(http, rest.token_url, rest.client_id, rest.client_secret, claim=rest.username_claim)


def rest_http(settings: Settings) -> httpx.AsyncClient:
    """One pooled client for slurmrestd and the token endpoint, with the pod's egress proxy and CA."""
    out = settings.outbound
    verify: str | bool = out.ca_bundle or True
    return httpx.AsyncClient(timeout=httpx.Timeout(settings.command_timeout, connect=min(settings.command_timeout, 10.0)),
                             limits=httpx.Limits(max_connections=16, max_keepalive_connections=8),
                             verify=verify, trust_env=True)


def build_slurm(settings: Settings, ssh: SSHClient | None, metrics: Metrics,
                http: httpx.AsyncClient | None) -> tuple[SlurmBackend, int]:
    """Slurm control (SSH commands or slurmrestd) and the cluster's files (SSH, or none); the SSH sessions
    kept for sbatch shells."""
    runner = metrics.timed(ssh) if ssh is not None else None
    if settings.rest is None:
        assert runner is not None  # ssh_client always has SSH (settings)
        # SSH sessions: the kept sbatch shells hold theirs for good, and one stays free for the poller.
        shells = min(SUBMIT_SHELLS, max(0, settings.ssh_max_sessions - 2))
        return SlurmClient(runner, user=settings.ssh_user, scratch_dir=settings.scratch_dir, shells=runner,
                           max_shells=shells, job_group=settings.job_group,
                           command_timeout=settings.command_timeout), shells
    assert http is not None
    control = RestSlurm(settings.rest.url, token_source(settings.rest, http), user=settings.ssh_user,
                        parser=settings.rest.parser, http=http)
    metrics.rest = control
    files = (SshClusterFiles(runner, scratch_dir=settings.scratch_dir, job_group=settings.job_group, users_write=True,
                             chown_wrapper=settings.chown_wrapper, owner=settings.ssh_user)
             if runner is not None else NoClusterFiles(settings.scratch_dir))
    return SlurmCluster(control, files), 0


def build_downstream(settings: Settings, ssh: SSHClient | None, journal: Journal, metrics: Metrics,
                     http: httpx.AsyncClient | None = None) -> Downstream:
    slurm, shells = build_slurm(settings, ssh, metrics, http)
    downstream = Downstream(slurm=slurm, script_env=script_environment(settings), executor=settings.executor,
                            poll_interval=settings.poll_interval, command_timeout=settings.command_timeout,
                            journal=journal, metrics=metrics, port_count=settings.port_count,
                            upstream_sessions=settings.ssh_max_sessions - 1 - shells, gc_age=settings.gc_age,
                            user_claim=settings.rest.username_claim if settings.rest is not None else None)
    metrics.jobs = downstream.book.counts
    # a job's proxy life is part of its state: its machine's refusals are counted with the job machine's
    metrics.refused = lambda: downstream.book.machine.rejected + downstream.interactive.machine.rejected
    return downstream


def _iso(wall: float | None) -> str | None:
    if wall is None:
        return None
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _proxy_view(downstream: Downstream, job: Job) -> dict | None:
    status = downstream.proxy_status(job)
    if status is None:
        return None
    return {"state": status.state.value, "url": status.url, "error": status.error, "connections": status.connections,
            "bytes_up": status.bytes_up, "bytes_down": status.bytes_down, "restarts": status.restarts,
            "pid": status.pid}


def _proxy_life_view(life: ProxyLife | None, now: float, wall: float) -> dict | None:
    """What the proxy machine holds of a job's proxy (the backend's own word is ``proxy``)."""
    if life is None:
        return None
    return {"state": ProxyPhase(life.state).value, "failures": life.failures, "retries": PROXY_RETRIES,
            "attempts": life.attempts, "probes": life.probes,
            "retry_at": _iso(wall - (now - life.retry_at)) if life.retry_at > now else None}


def admin_state(downstream: Downstream, ssh: SSHClient | None, settings: Settings, started_at: float,
                preflight: list[Check]) -> dict:
    """The admin page's dict (schema in daemon/admin.py), from what the daemon holds now."""
    st = downstream.status
    now, wall = trio.current_time(), time.time()
    jobs = []
    for job in downstream.book:
        jobs.append({
            "name": job.name, "number": job.number, "jobid": job.jobid, "state": JobState(job.state).value,
            "slurm_state": job.code, "reason": job.reason, "nodes": list(job.nodes), "exit_code": job.exit_code,
            "termination": job.termination, "interactive": job.interactive,
            "user": job.user or settings.ssh_user,
            "history": [[_iso(t), s] for t, s in job.history], "proxy": _proxy_view(downstream, job),
            "proxy_life": _proxy_life_view(job.proxy, now, wall),
            "last_error": job.last_error or job.rejected or None,
        })
    return {
        "version": VERSION,
        "started_at": _iso(started_at),
        "config": config_view(settings),
        "ssh": {"target": f"{settings.ssh_user}@{ssh.target.address}", "connected": ssh.connected,
                "connected_since": None, "reconnects": max(0, ssh.connects - 1), "last_error": ssh.last_error}
        if ssh is not None else {"target": "not configured", "connected": False, "connected_since": None,
                                 "reconnects": 0, "last_error": None},
        "poller": {"last_poll_at": _iso(wall - (now - st.ok_at)) if st.polls else None,
                   "last_duration": st.last_duration, "polls": st.polls, "failures": st.failures,
                   "last_error": st.last_error or None, "interval": downstream.poll_interval,
                   "min_job_age": downstream.cluster.min_job_age if downstream.cluster else None},
        "preflight": [c.as_dict() for c in preflight],
        "last_error": st.last_error or (ssh.last_error if ssh is not None else None) or None,
        "jobs": jobs,
    }


def http_config(host: str, port: int) -> HypercornConfig:
    """How the upstream API is served (also by the benchmarks' servers, so they measure the same stack)."""
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 5
    return config


async def serve(settings: Settings, host: str, port: int, *, handle_signals: bool = True,
                task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the daemon until cancelled or signalled; report the bound address when serving."""
    key = describe_key(settings.ssh_pkey) if settings.has_ssh else ""
    for line in init_report(settings, key):
        log.info(line)
    for note in settings.deprecations:
        log.warning("configuration: %s", note)
    journal = Journal(settings.journal)
    started_at = time.time()
    async with contextlib.AsyncExitStack() as links:
        ssh = await links.enter_async_context(open_ssh(settings)) if settings.has_ssh else None
        http = await links.enter_async_context(rest_http(settings)) if settings.rest is not None else None
        kube = await open_kube(settings)
        if kube is not None:
            links.callback(kube.close)
        metrics = Metrics(version=VERSION, ssh=ssh)
        downstream = build_downstream(settings, ssh, journal, metrics, http)
        await connectivity_test(downstream)
        preflight = await preflight_checks(downstream, ssh, settings, kube)
        log_checks(log, preflight)
        log.info("")
        log.info(" Init done. Entering main loop.")
        config = http_config(host, port)
        app = create_app(downstream, settings.server_key)
        instrument(app, metrics)
        app.register_blueprint(admin_blueprint(
            lambda: admin_state(downstream, ssh, settings, started_at, preflight), metrics))
        async with trio.open_nursery() as nursery:
            if handle_signals:
                nursery.start_soon(stop_on_signal, nursery.cancel_scope)
            if ssh is not None:  # interactive jobs reach their web service through the login node
                downstream.proxies = await start_proxies(nursery, settings, ssh, kube, downstream.interactive.proxy_exited)
                downstream.tunnels = ssh
            elector = await start_elector(nursery, settings, kube, downstream) if kube and settings.proxy.leader_election \
                else None
            # everything loaded (kubernetes included, when used) and no job yet: see daemon.heap
            log.debug("start-up heap set aside from garbage collection: %d objects", freeze_heap())
            if elector is not None:
                nursery.start_soon(elector.lead, partial(_poll_while_leading, downstream))
            else:
                await nursery.start(downstream.run)
            binds = await nursery.start(partial(hypercorn_serve, app, config))
            log.info("serving the upstream API on %s", ", ".join(binds))
            task_status.started(binds)


async def open_kube(settings: Settings) -> KubeClient | None:
    """The one Kubernetes client of a daemon that uses the API (proxy pods, their key's check, the Lease); else None.

    Opened before anything runs, so that a deployment without a usable API configuration stops at once
    with one line (ConfigError, exit 2). The kubernetes package is heavy: imported only then.
    """
    if settings.proxy.mode != "kubernetes" and not settings.proxy.leader_election:
        return None
    from adapters.kube.client import KubeClient

    return await KubeClient.open(settings.proxy.kube_api, outbound=settings.outbound)


async def preflight_checks(downstream: Downstream, ssh: SSHClient | None, settings: Settings,
                           kube: KubeClient | None = None) -> list[Check]:
    """SSH mode: the probe that connectivity_test's SlurmClient.preflight ran, judged (the cluster is asked
    once). slurmrestd mode: the REST side's checks, and the SSH probe's about the login node when SSH is there.
    Kubernetes proxies: what their key may do on the login node."""
    facts = downstream.cluster.probe if downstream.cluster else None
    if settings.rest is None:
        assert ssh is not None
        checks = await run_preflight(ssh, settings, facts=facts)
    else:
        slurm = downstream.slurm
        assert isinstance(slurm, SlurmCluster) and isinstance(slurm.control, RestSlurm)
        checks = await rest_checks(slurm.control, settings)
        if ssh is not None:
            checks += [c for c in await run_preflight(ssh, settings) if c.name not in SSH_SLURM_CHECKS]
    if ssh is not None:  # interactive jobs need SSH: without it there are no proxies, nor their key
        checks += await proxy_key_checks(ssh, settings, kube)
    return checks


async def start_proxies(nursery: trio.Nursery, settings: Settings, ssh: SSHClient, kube: KubeClient | None,
                        on_exit: ExitHook | None = None) -> ProxyBackend:
    """Interactive jobs' proxies: a child process per job (``slurm-downstream proxy``), or pods on Kubernetes.

    Local mode runs them as processes, not as tasks of this one: the bytes users move would
    otherwise hold this process's GIL and delay upstream's answers by up to seconds
    (README, *Benchmarks*). ``on_exit`` hears of every child that died on its own.
    """
    proxies: ProxyBackend
    if settings.proxy.mode == "kubernetes":
        from adapters.kube.proxies import KubernetesProxies

        assert kube is not None  # open_kube opens it in Kubernetes mode
        proxies = KubernetesProxies.from_settings(kube, settings)
    else:
        proxies = ChildProxies(proxy_cmd.child_command(), proxy_cmd.child_env(settings), bind=settings.proxy.bind,
                               public_host=settings.proxy.public_host, ports=settings.proxy.ports, on_exit=on_exit)
    await nursery.start(proxies.run)
    log.info("interactive jobs' proxies: %s", settings.proxy.mode)
    return proxies


async def start_elector(nursery: trio.Nursery, settings: Settings,  # noqa: ANN201 - kubernetes imported lazily
                        kube: KubeClient, downstream: Downstream):
    """Several replicas: only the holder of a coordination.k8s.io Lease polls Slurm and tends proxies."""
    from adapters.kube.lease import LeaderElector, lease_name
    from adapters.kube.proxies import default_instance

    elector = LeaderElector(kube, settings.proxy.namespace, lease_name(default_instance(settings)),
                            settings.proxy.identity, healthy=downstream.healthy)
    await nursery.start(elector.run)
    log.info("leader election: %s %s", settings.proxy.identity, "leads" if elector.is_leader else "stands by")
    return elector


async def _poll_while_leading(downstream: Downstream) -> None:
    """The poller runs only while this replica leads; a standby answers /ready 503, so the Service skips it."""
    log.info("this replica leads: polling Slurm")
    try:
        await downstream.run()
    finally:
        downstream.stand_by()
