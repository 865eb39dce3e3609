"""``JARVICE_JOBS_DOMAIN``: where users reach an interactive job, in the JARVICE chart's two forms.

- host based, ``my-domain.com``: every job gets a host of its own,
  ``job<N>.my-domain.com``, and the web service sees the paths the browser asks for.
- path based, ``jarvice.my-domain.com/job$``: every job lives under a path of the one
  host, ``https://jarvice.my-domain.com/job<N>/`` (``$`` stands for the job number).

A path prefix and a web app that expects ``/``: we do what JARVICE does, the prefix
is *not* stripped by the ingress. JARVICE tells the job its prefix in
``JARVICE_INGRESSPATH`` (``job<N>``, no slashes) and its apps (noVNC, gotty, file
managers) serve under it. Stripping instead would need a controller-specific rule
(nginx ``rewrite-target`` with a regex path, a Traefik Middleware object) and
breaks apps that write absolute links; an operator who wants it anyway can put the
annotation in ``JARVICE_JOBS_INGRESS_ANNOTATIONS``. ``ingress_path()`` is the value
the job script should export for path-based domains (empty for host based).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DOMAIN_RE = re.compile(r"^(?P<host>[A-Za-z0-9.-]+)(?P<port>:\d{1,5})?(?P<path>/[A-Za-z0-9._/-]*\$[A-Za-z0-9._/-]*)?$")
_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class JobsDomain:
    host: str  # lower case, no port: the ingress host (path based) or the parent domain (host based)
    port: str = ""  # ":8443" when users reach the ingress controller on another port; "" for 443
    path_template: str = ""  # "/job$" for path based, "" for host based

    @classmethod
    def parse(cls, value: str) -> JobsDomain:
        """Raise ValueError naming the problem; the caller says which variable it came from."""
        m = _DOMAIN_RE.match(value.strip())
        if not m:
            raise ValueError(f"expected my-domain.com or jarvice.my-domain.com/job$, got {value!r}")
        host = m["host"].lower().strip(".")
        if host == "lookup":
            raise ValueError("'lookup' is resolved by the JARVICE Helm chart; give the host name itself")
        labels = host.split(".")
        if len(host) > 253 or not all(_DNS_LABEL_RE.match(label) and len(label) <= 63 for label in labels):
            raise ValueError(f"{host!r} is not a DNS name")
        return cls(host=host, port=m["port"] or "", path_template=m["path"] or "")

    @property
    def path_based(self) -> bool:
        return bool(self.path_template)

    def host_for(self, key: str) -> str:
        return self.host if self.path_based else f"job{key}.{self.host}"

    def path_for(self, key: str) -> str:
        """The ingress path: ``/job<N>`` (matched as a prefix, element by element) or ``/``."""
        return self.path_template.replace("$", key).rstrip("/") if self.path_based else "/"

    def url_for(self, key: str) -> str:
        path = self.path_for(key)
        return f"https://{self.host_for(key)}{self.port}{path if path.endswith('/') else path + '/'}"

    def ingress_path(self, key: str) -> str:
        """``JARVICE_INGRESSPATH`` for the job: the prefix without slashes, "" when host based."""
        return self.path_for(key).strip("/") if self.path_based else ""
