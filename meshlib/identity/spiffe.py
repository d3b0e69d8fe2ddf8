"""SPIFFE IDs: ``spiffe://<trust-domain><path>``, parsed and validated once.

The rules are those of the SPIFFE ID standard: the scheme is exactly ``spiffe``; the trust
domain holds lower-case letters, digits, ``-``, ``.`` and ``_``, with no port or user info;
the path is empty (the trust domain's own ID) or a sequence of ``/segment`` where each
segment holds letters, digits, ``-``, ``.`` and ``_`` and is neither empty, ``.`` nor
``..``; there is no query or fragment. meshlib's workloads use the Kubernetes-shaped path
``/ns/<namespace>/sa/<service>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from meshlib.errors import IdentityError

__all__ = ["SpiffeId", "trust_domain_id"]

SCHEME_PREFIX = "spiffe://"
MAX_ID_LENGTH = 2048

_TRUST_DOMAIN_RE = re.compile(r"[a-z0-9._-]+")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]+")
# DNS-1123 label: what a namespace or service must be for ``dns_name`` to be a host name.
_DNS_LABEL_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def _check_trust_domain(trust_domain: str) -> None:
    if not trust_domain:
        raise IdentityError("invalid SPIFFE ID: the trust domain is empty")
    if not _TRUST_DOMAIN_RE.fullmatch(trust_domain):
        raise IdentityError(
            f"invalid trust domain {trust_domain!r}: only lower-case letters, digits, "
            "'-', '.' and '_' are allowed (no port, user info or upper case)"
        )


def _check_path(path: str) -> None:
    if path == "":
        return
    if not path.startswith("/"):
        raise IdentityError(f"invalid SPIFFE ID path {path!r}: it must start with '/'")
    for segment in path[1:].split("/"):
        if segment == "":
            raise IdentityError(
                f"invalid SPIFFE ID path {path!r}: empty segment (double or trailing '/')"
            )
        if segment in (".", ".."):
            raise IdentityError(f"invalid SPIFFE ID path {path!r}: '.' and '..' are not allowed")
        if not _SEGMENT_RE.fullmatch(segment):
            raise IdentityError(
                f"invalid SPIFFE ID path {path!r}: segment {segment!r} may only hold "
                "letters, digits, '-', '.' and '_'"
            )


def trust_domain_id(trust_domain: str) -> str:
    """The SPIFFE ID of a trust domain itself, ``spiffe://<trust_domain>``.

    Raises:
        IdentityError: the trust domain name is invalid.
    """
    _check_trust_domain(trust_domain)
    return SCHEME_PREFIX + trust_domain


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A validated SPIFFE ID; ``str()`` gives the URI.

    Construct it with :meth:`parse` or :meth:`for_service`; direct construction is
    validated too.

    Raises:
        IdentityError: the trust domain or path is invalid.
    """

    trust_domain: str
    path: str

    def __post_init__(self) -> None:
        _check_trust_domain(self.trust_domain)
        _check_path(self.path)
        if len(SCHEME_PREFIX) + len(self.trust_domain) + len(self.path) > MAX_ID_LENGTH:
            raise IdentityError(f"invalid SPIFFE ID: longer than {MAX_ID_LENGTH} characters")

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """Parse ``spiffe://<trust-domain>[/path]``.

        Both the trust domain's own ID (empty path) and workload IDs are accepted;
        :attr:`is_workload` tells them apart.

        Raises:
            IdentityError: with the reason the text is not a SPIFFE ID.
        """
        if not isinstance(text, str):
            raise IdentityError(f"invalid SPIFFE ID: expected a string, got {type(text).__name__}")
        if not text.startswith(SCHEME_PREFIX):
            raise IdentityError(
                f"invalid SPIFFE ID {text!r}: the scheme must be 'spiffe://' (lower case)"
            )
        if len(text) > MAX_ID_LENGTH:
            raise IdentityError(f"invalid SPIFFE ID: longer than {MAX_ID_LENGTH} characters")
        if "?" in text or "#" in text:
            raise IdentityError(f"invalid SPIFFE ID {text!r}: a query or fragment is not allowed")
        rest = text[len(SCHEME_PREFIX) :]
        slash = rest.find("/")
        if slash == -1:
            trust_domain, path = rest, ""
        else:
            trust_domain, path = rest[:slash], rest[slash:]
        return cls(trust_domain, path)

    @classmethod
    def for_service(cls, trust_domain: str, namespace: str, service: str) -> SpiffeId:
        """The workload ID ``spiffe://<trust_domain>/ns/<namespace>/sa/<service>``.

        *namespace* and *service* must be DNS labels (lower-case letters, digits and
        ``-``, at most 63 characters), so that :attr:`dns_name` is a valid host name.

        Raises:
            IdentityError: a part is invalid; the message names it.
        """
        for field, value in (("namespace", namespace), ("service", service)):
            if not _DNS_LABEL_RE.fullmatch(value):
                raise IdentityError(
                    f"invalid {field} {value!r}: it must be a DNS label (lower-case letters, "
                    "digits and '-', starting and ending with a letter or digit, at most 63)"
                )
        return cls(trust_domain, f"/ns/{namespace}/sa/{service}")

    def _workload_parts(self) -> tuple[str, str] | None:
        parts = self.path.split("/")
        # "/ns/X/sa/Y".split("/") == ["", "ns", X, "sa", Y]
        if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa":
            return parts[2], parts[4]
        return None

    @property
    def is_workload(self) -> bool:
        """True for the ``/ns/<namespace>/sa/<service>`` form."""
        return self._workload_parts() is not None

    @property
    def namespace(self) -> str | None:
        """The namespace of a workload ID, else None."""
        parts = self._workload_parts()
        return parts[0] if parts else None

    @property
    def service(self) -> str | None:
        """The service of a workload ID, else None."""
        parts = self._workload_parts()
        return parts[1] if parts else None

    @property
    def dns_name(self) -> str | None:
        """``<service>.<namespace>.svc.<trust-domain>`` for a workload ID, else None."""
        parts = self._workload_parts()
        if parts is None:
            return None
        namespace, service = parts
        return f"{service}.{namespace}.svc.{self.trust_domain}"

    @property
    def trust_domain_id(self) -> str:
        """``spiffe://<trust-domain>``."""
        return SCHEME_PREFIX + self.trust_domain

    def __str__(self) -> str:
        return f"{SCHEME_PREFIX}{self.trust_domain}{self.path}"
