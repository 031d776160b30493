"""Which part of a distributed search this process plays: keras-tuner's chief/worker mode.

keras-tuner runs one search over several processes (machines) when each runs the same command
with three environment variables::

    KERASTUNER_TUNER_ID     this process's id: one containing "chief" serves the oracle, every
                            other one is a worker that trains trials (each worker its own id)
    KERASTUNER_ORACLE_IP    the chief's address, the same on every machine
    KERASTUNER_ORACLE_PORT  the port the chief serves the oracle on, the same on every machine

Without ``KERASTUNER_ORACLE_IP`` the search runs in one process (``single``). keras-tuner itself
checks only some of these settings, and only once a tuner is built; :func:`settings` checks all
of them before any data is read, each mistake a one-line ``ValueError`` naming the variable, the
value and the fix. Standard library only: importable without TensorFlow or keras-tuner.
"""

from __future__ import annotations

import errno
import os
import re
import socket
from dataclasses import dataclass

ID_VAR = "KERASTUNER_TUNER_ID"
IP_VAR = "KERASTUNER_ORACLE_IP"
PORT_VAR = "KERASTUNER_ORACLE_PORT"
SINGLE_TUNER_ID = "tuner0"  # keras-tuner's id for a process without KERASTUNER_TUNER_ID
_ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")  # it names the file DIRECTORY/PROJECT/ID.json
_EXAMPLE = (f"e.g. {ID_VAR}=chief on the chief and {ID_VAR}=tuner1, tuner2, ... on the "
            f"workers, with {IP_VAR}=<chief address> {PORT_VAR}=8000 on every machine")


@dataclass(frozen=True)
class Settings:
    """``role``: ``"single"``, ``"chief"`` or ``"worker"``; ``tuner_id`` as keras-tuner uses it;
    ``ip`` / ``port``: the chief's oracle address (None for ``single``)."""

    role: str
    tuner_id: str
    ip: str | None = None
    port: int | None = None

    @property
    def address(self) -> str | None:
        return None if self.role == "single" else f"{self.ip}:{self.port}"

    def describe(self) -> str:
        """A phrase for the search's first line ("" for a single process)."""
        if self.role == "chief":
            return (f"; chief {self.tuner_id!r}: serves the oracle on {self.address}, "
                    "the workers train the trials")
        if self.role == "worker":
            return f"; worker {self.tuner_id!r} of the oracle at {self.address}"
        return ""


def settings(environ=None) -> Settings:
    """This process's part in the search, from ``environ`` (default ``os.environ``).

    The chief is the process whose ``KERASTUNER_TUNER_ID`` contains ``chief`` (keras-tuner's
    own rule, so a worker's id must not contain it).
    """
    env = os.environ if environ is None else environ
    values = {}
    for name in (ID_VAR, IP_VAR, PORT_VAR):
        value = env.get(name)
        if value is not None and not value.strip():
            raise ValueError(f"{name} is set but empty: unset it for a single-process search, "
                             f"or set it ({_EXAMPLE}).")
        values[name] = value
    tuner_id, ip, port = values[ID_VAR], values[IP_VAR], values[PORT_VAR]
    if tuner_id is not None and not _ID_PATTERN.fullmatch(tuner_id):
        raise ValueError(f"{ID_VAR}={tuner_id!r} is not a valid tuner id: use letters, digits, "
                         "'.', '_' and '-' only (it names the file DIRECTORY/PROJECT/ID.json).")
    if ip is None:
        if port is not None:
            raise ValueError(f"{PORT_VAR}={port} is set but {IP_VAR} is not: set {IP_VAR} to "
                             "the chief's address on every machine for a distributed search, "
                             f"or unset {PORT_VAR} for a single-process one.")
        if tuner_id is not None and "chief" in tuner_id:
            raise ValueError(f"{ID_VAR}={tuner_id!r} makes this process the chief, but {IP_VAR} "
                             f"and {PORT_VAR} are not set: set them to the address the chief "
                             "serves the oracle on (the same on every machine).")
        return Settings("single", tuner_id or SINGLE_TUNER_ID)
    if port is None:
        raise ValueError(f"{IP_VAR}={ip} is set but {PORT_VAR} is not: set it to the port the "
                         "chief serves the oracle on, the same on every machine (e.g. "
                         f"{PORT_VAR}=8000).")
    # keras-tuner uses the text as it is: digits only, no spaces or sign.
    port_number = int(port) if port.isascii() and port.isdigit() else 0
    if not 1 <= port_number <= 65535:
        raise ValueError(f"{PORT_VAR} must be an integer port from 1 to 65535 (the same on every "
                         f"machine). Received: {port!r}")
    if tuner_id is None:
        raise ValueError(f"{IP_VAR}={ip} is set but {ID_VAR} is not: give each process its own "
                         f"id ({_EXAMPLE}).")
    if any(ch.isspace() for ch in ip):
        raise ValueError(f"{IP_VAR}={ip!r} holds spaces: set it to the chief's address alone "
                         "(a host name or an IP address).")
    role = "chief" if "chief" in tuner_id else "worker"
    return Settings(role, tuner_id, ip, port_number)


def check_chief_address(s: Settings) -> None:
    """On the chief: a ``ValueError`` now, before any work, if the oracle cannot be served on
    ``s.ip:s.port`` (not an address of this machine, or the port is taken, say by another
    chief: gRPC itself would share the port with it silently)."""
    if s.role != "chief":
        return
    host = s.ip[1:-1] if s.ip.startswith("[") and s.ip.endswith("]") else s.ip
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host, s.port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise ValueError(f"{IP_VAR}={s.ip} does not resolve to an address ({err}): set it to "
                         "this machine's address that the workers reach.") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
        try:
            sock.bind(sockaddr)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ValueError(f"{PORT_VAR}={s.port} is in use on {s.ip} (another chief or "
                                 "program): stop it, or choose another port on every "
                                 "machine.") from None
            if err.errno == errno.EADDRNOTAVAIL:
                raise ValueError(f"{IP_VAR}={s.ip} is not an address of this machine, but "
                                 f"{ID_VAR}={s.tuner_id!r} makes it the chief: run the chief "
                                 "on that machine, or set the address.") from None
            raise ValueError(f"The chief cannot serve the oracle on {s.address}: {err}. Choose "
                             f"another {PORT_VAR} (the same on every machine).") from None
