"""Three "hosts" on this machine for the multi-host harness (tests/test_multihost.py): network namespaces joined to
the root namespace by veth pairs, and a TCP forwarder that carries their traffic to the servers on 127.0.0.1.

Each host `i` is a namespace `dt<token>h<i>` holding one end of a veth pair; the other end stays in the root
namespace. Both ends get an address in a /30 of their own inside 10.231.<net>.0/24, where <net> is leased for the
run through an exclusive `flock` on /tmp/decortask-multihost-net-<net>.lock, so runs in parallel (xdist workers,
two checkouts) never share a subnet. RabbitMQ and PostgreSQL listen on 127.0.0.1 only and are not reconfigured:
`Forwarder` listens on each host's root-side address (ports 5672 and 5432) and relays every connection to
127.0.0.1. A host's traffic therefore crosses its veth, and `Host.cut()` (`ip link set ... down` on both ends)
partitions it the way a pulled cable does: its TCP connections are neither closed nor refused, they go silent,
and the forwarder keeps its upstream side open as a server's end of a partitioned connection stays open.

Nothing here changes the machine's network beyond these veths and namespaces; `Network.close()` removes them
(deleting a namespace deletes the veth inside it, and with it its peer) and is safe to call twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import subprocess
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

#: The /24s a run may lease: 10.231.<net>.0/24.
NETS = range(1, 250)
LOCKS = Path("/tmp")


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be created here (not root, no `ip`, no CAP_NET_ADMIN)."""


def ip(*args: str, ns: str | None = None) -> str:
    """Run `ip ARGS` (inside namespace `ns` when given); raises with ip's own message on failure."""
    command = ["ip", *(["-n", ns] if ns else []), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return done.stdout


def check_netns_usable() -> None:
    """Raise `NetnsUnavailable`, saying why, unless this process can create a namespace."""
    if os.geteuid() != 0:
        raise NetnsUnavailable("the multi-host harness needs root (ip netns add); run the suite as root")
    probe = f"dtprobe{uuid.uuid4().hex[:8]}"
    try:
        ip("netns", "add", probe)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        raise NetnsUnavailable(f"cannot create a network namespace: {exc}") from exc
    ip("netns", "delete", probe)


@dataclass
class Host:
    """One namespace and its link to the root namespace."""

    name: str
    index: int
    #: The veth end in the root namespace, and its address (where the forwarder listens for this host).
    root_link: str
    root_address: str
    #: The veth end inside the namespace, and its address.
    ns_link: str
    ns_address: str
    up: bool = True

    def cut(self) -> None:
        """Take the link down at both ends: the host's packets go nowhere, its connections go silent."""
        ip("link", "set", self.ns_link, "down", ns=self.name)
        ip("link", "set", self.root_link, "down")
        self.up = False

    def restore(self) -> None:
        """Bring both ends back up; connections resume where TCP's retransmissions pick them up."""
        ip("link", "set", self.root_link, "up")
        ip("link", "set", self.ns_link, "up", ns=self.name)
        self.up = True

    def command(self, argv: Iterable[str]) -> list[str]:
        """`argv` run inside this host's namespace (`ip netns exec` execs it: the pid is the program's)."""
        return ["ip", "netns", "exec", self.name, *argv]


@dataclass
class Network:
    """Hosts on a leased 10.231.<net>.0/24; build with `Network.create`, remove with `close`."""

    token: str
    net: int
    hosts: list[Host] = field(default_factory=list)
    _lock: IO[bytes] | None = None

    @classmethod
    def create(cls, count: int) -> Network:
        token = uuid.uuid4().hex[:6]
        lock, net = _lease_subnet()
        network = cls(token, net, _lock=lock)
        try:
            for index in range(count):
                network._add_host(index)
        except BaseException:
            network.close()
            raise
        return network

    def _add_host(self, index: int) -> None:
        base = 4 * index
        host = Host(
            name=f"dt{self.token}h{index}",
            index=index,
            root_link=f"dt{self.token}r{index}",
            root_address=f"10.231.{self.net}.{base + 1}",
            ns_link=f"dt{self.token}n{index}",
            ns_address=f"10.231.{self.net}.{base + 2}",
        )
        self.hosts.append(host)  # from here on, close() removes what exists of it even if the rest fails
        ip("netns", "add", host.name)
        ip("link", "add", host.root_link, "type", "veth", "peer", "name", host.ns_link)
        ip("link", "set", host.ns_link, "netns", host.name)
        ip("addr", "add", f"{host.root_address}/30", "dev", host.root_link)
        ip("addr", "add", f"{host.ns_address}/30", "dev", host.ns_link, ns=host.name)
        ip("link", "set", host.root_link, "up")
        ip("link", "set", host.ns_link, "up", ns=host.name)
        ip("link", "set", "lo", "up", ns=host.name)

    def close(self) -> None:
        """Delete every namespace and veth of this network and give the subnet back."""
        errors = []
        for host in self.hosts:
            # Deleting the namespace deletes the veth end inside it, and with it the root end; a root end
            # whose peer never reached the namespace is deleted by name.
            for args in (("netns", "delete", host.name), ("link", "delete", host.root_link)):
                try:
                    ip(*args)
                except RuntimeError as exc:
                    if (
                        "Cannot find" not in str(exc)
                        and "No such" not in str(exc)
                        and "not exist" not in str(exc)
                    ):
                        errors.append(str(exc))
        self.hosts.clear()
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None
        if errors:
            raise RuntimeError("; ".join(errors))


def _lease_subnet() -> tuple[IO[bytes], int]:
    """An exclusive lock on a free 10.231.<net>.0/24, held until the returned file is closed."""
    start = uuid.uuid4().int % len(NETS)
    for offset in range(len(NETS)):
        net = NETS[(start + offset) % len(NETS)]
        handle = open(LOCKS / f"decortask-multihost-net-{net}.lock", "wb")  # noqa: SIM115 - held for the run
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        if f"10.231.{net}." in ip("-o", "addr"):  # a crashed run's leftovers: leave them alone
            handle.close()
            continue
        return handle, net
    raise RuntimeError("no free 10.231.N.0/24 for the multi-host harness")


class Forwarder:
    """Relays TCP connections from (address, port) listeners to 127.0.0.1:<port>, on an asyncio loop in a thread.

    When either side closes or fails, both are closed, as a kernel would close a dead process's sockets. A
    partitioned side sends nothing and fails nothing, so its upstream stays open, as a server's would.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="multihost-forwarder", daemon=True)
        self._servers: list[asyncio.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread.start()

    def listen(self, address: str, port: int, target_port: int | None = None) -> None:
        """Accept on `address:port` and relay to 127.0.0.1:`target_port` (default: the same port)."""
        target = target_port or port

        async def start() -> asyncio.Server:
            return await asyncio.start_server(
                lambda r, w: self._relay(r, w, target), host=address, port=port, reuse_address=True
            )

        self._servers.append(asyncio.run_coroutine_threadsafe(start(), self.loop).result(10))

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for end in (writer, up_writer):
                self._writers.discard(end)
                end.close()

    def close(self) -> None:
        """Stop listening, close every relayed connection, stop the loop; safe to call twice."""
        if not self.loop.is_running():
            return

        async def shut() -> None:
            for server in self._servers:
                server.close()
            for writer in list(self._writers):
                writer.transport.abort()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shut(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF or an error, then close `writer` (which ends the other direction too)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.CancelledError):
        pass
    finally:
        writer.close()
