"""Deploy artifacts generated from the code's own facts: Redis ACL users, redis.conf, TLS certificates.

The static manifests (docker-compose.yml, deploy/k8s, deploy/edge) live at the repository root and
`deploy/`; this package writes what depends on a site (zones, passwords, certificates).
"""

from __future__ import annotations

from hybrid.deploy.acl import AclUser, KeyGrant, Selector, acl_users, render_acl, write_acl
from hybrid.deploy.certs import CertBundle, write_certs
from hybrid.deploy.redis_conf import RedisConfOptions, render_redis_conf

__all__ = [
    "AclUser",
    "CertBundle",
    "KeyGrant",
    "RedisConfOptions",
    "Selector",
    "acl_users",
    "render_acl",
    "render_redis_conf",
    "write_acl",
    "write_certs",
]
