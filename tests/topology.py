"""Real Redis topologies on loopback ports, for the tests and the benchmarks:
plain instances (client-side shards), a Redis Cluster, a master with a replica and
three Sentinels.

Each is a context manager (``with PlainShards(tmp, 2) as shards: ...``) that also
has ``start()`` and ``stop()``. Every redis-server runs in its own process group,
with its files under ``tmp``; ``stop()`` (and leaving the ``with``, a failure
included) kills every group. Used by test_engines.py and test_sentinel.py.
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from helpers import free_ports
from multiproc import _stop_group, port_open, redis_server_path, wait_until

SERVICE = "simplew-test"


def redis_cli_path() -> str | None:
    """redis-cli (Debian: the redis-tools package, a dependency of redis-server)."""
    return shutil.which("redis-cli")


def start_redis(tmp: Path, port: int, *args: str) -> subprocess.Popen:
    """A redis-server on 127.0.0.1:``port`` in its own process group, no persistence,
    working directory ``tmp``; ``args`` come first (a config file must)."""
    path = redis_server_path()
    assert path is not None, "redis-server is not installed"
    tmp.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [path, *args]
        + ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        + ["--protected-mode", "no", "--loglevel", "warning", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(lambda: port_open(port) or proc.poll() is not None, 10, f"redis on {port}")
    except AssertionError:
        _stop_group(proc)
        raise
    if proc.poll() is not None:
        raise RuntimeError(f"redis-server {args} on {port} exited with {proc.returncode}")
    return proc


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``'s process group and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(5)


def connect(port: int) -> Any:
    import redis

    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, socket_connect_timeout=2)


def ask(port: int, *command: Any) -> Any:
    """One command to the redis on ``port`` (a new connection)."""
    client = connect(port)
    try:
        return client.execute_command(*command)
    finally:
        client.close()


def cpu_seconds(port: int) -> float:
    """used_cpu_sys + used_cpu_user of the redis on ``port``."""
    client = connect(port)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


class _Topology:
    def __init__(self, tmp: Path) -> None:
        self.tmp = Path(tmp)
        self.procs: list[subprocess.Popen] = []

    def start(self) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        for proc in self.procs:
            _stop_group(proc)
        self.procs.clear()

    def __enter__(self) -> Any:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
        # what the servers of this topology left for the cycle collector (redis-py
        # objects of a stopped event loop) is freed here, not during a later test
        # whose running loop would report it as that test's error
        gc.collect()


class PlainShards(_Topology):
    """``count`` plain redis-servers: ``urls`` in shard order."""

    def __init__(self, tmp: Path, count: int) -> None:
        super().__init__(tmp)
        self.ports = free_ports(count)
        self.servers: list[subprocess.Popen | None] = [None] * count

    def start(self) -> PlainShards:
        for i in range(len(self.ports)):
            self.restart(i)
        return self

    @property
    def urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{port}" for port in self.ports]

    def kill(self, i: int) -> None:
        """SIGKILL shard ``i``."""
        proc = self.servers[i]
        if proc is not None:
            kill(proc)
            self.procs.remove(proc)
            self.servers[i] = None

    def restart(self, i: int) -> None:
        """Start shard ``i`` again (empty) on its port; kills it first if it runs."""
        self.kill(i)
        proc = start_redis(self.tmp / f"shard-{i}", self.ports[i])
        self.procs.append(proc)
        self.servers[i] = proc

    def cpu_seconds(self, i: int) -> float:
        return cpu_seconds(self.ports[i])


class Cluster(_Topology):
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each, made by
    ``redis-cli --cluster create``."""

    def __init__(
        self, tmp: Path, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000
    ) -> None:
        super().__init__(tmp)
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        count = masters * (1 + replicas)
        # every node's port and cluster-bus port differ: a bus listening on a node's port
        # would answer for it (redis-cli: "not configured as a cluster node")
        drawn = free_ports(2 * count)
        self.ports, self.bus_ports = drawn[:count], drawn[count:]
        self.nodes: dict[int, subprocess.Popen] = {}

    def start(self) -> Cluster:
        cli = redis_cli_path()
        assert cli is not None, "redis-cli is not installed (apt-get install redis-tools)"
        for port, bus in zip(self.ports, self.bus_ports):
            proc = start_redis(
                self.tmp / f"node-{port}",
                port,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                "--cluster-port",
                str(bus),
                "--repl-diskless-sync-delay",
                "0",
            )
            self.procs.append(proc)
            self.nodes[port] = proc
        created = subprocess.run(
            [cli, "--cluster", "create"]
            + [f"127.0.0.1:{port}" for port in self.ports]
            + ["--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
            start_new_session=True,
        )
        assert created.returncode == 0, created.stdout + created.stderr
        self.wait_ok()
        # a replica that never synced would not take over (its data is too old)
        wait_until(self._replicas_synced, 30, "every replica in sync", interval=0.1)
        return self

    def _replicas_synced(self) -> bool:
        links = []
        for port in self.alive:
            info = connect(port)
            try:
                replication = info.info("replication")
            finally:
                info.close()
            if replication.get("role") == "slave":
                links.append(replication.get("master_link_status") == "up")
        return len(links) == self.masters * self.replicas and all(links)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports[:2])

    @property
    def alive(self) -> list[int]:
        return [port for port, proc in self.nodes.items() if proc.poll() is None]

    def _state_ok(self, port: int) -> bool:
        try:
            info = ask(port, "CLUSTER", "INFO")
        except Exception:
            return False
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text

    def _masters_cover(self, port: int) -> bool:
        """Every slot has a live master, as ``port`` sees the cluster."""
        try:
            covered = sum(
                end - start + 1
                for start, end, master in self._slot_ranges(port)
                if master in self.alive
            )
        except Exception:
            return False
        return covered == 16384

    def _slot_ranges(self, port: int) -> list[tuple[int, int, int]]:
        """(first slot, last slot, master port) as ``port`` sees the cluster."""
        out = []
        for row in ask(port, "CLUSTER", "SLOTS"):
            out.append((int(row[0]), int(row[1]), int(row[2][1])))
        return out

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every live node says ``cluster_state:ok`` and its map has a live
        master for every slot."""
        wait_until(
            lambda: all(self._state_ok(p) and self._masters_cover(p) for p in self.alive),
            timeout,
            "cluster_state:ok on every node",
            interval=0.1,
        )

    def master_for_slot(self, slot: int) -> int:
        """The port of the master that serves ``slot``."""
        for start, end, master in self._slot_ranges(self.alive[0]):
            if start <= slot <= end:
                return master
        raise LookupError(f"slot {slot} is not served")

    def keyslot(self, key: str) -> int:
        return int(ask(self.alive[0], "CLUSTER", "KEYSLOT", key))

    def master_for_key(self, key: str) -> int:
        return self.master_for_slot(self.keyslot(key))

    def kill_master(self, port: int, timeout: float = 30) -> None:
        """SIGKILL the master on ``port``; return once a replica serves its slots and the
        cluster is ok again."""
        slots = [start for start, _end, master in self._slot_ranges(port) if master == port]
        assert slots, f"{port} is not a master"
        kill(self.nodes[port])
        self.wait_ok(timeout)
        assert all(self.master_for_slot(slot) != port for slot in slots)

    def cpu_seconds(self, port: int) -> float:
        return cpu_seconds(port)


class SentinelSetup(_Topology):
    """A master, ``replicas`` replicas (``--replicaof``; 1 by default) and three
    Sentinels monitoring it as ``SERVICE`` (down after 1 s)."""

    def __init__(self, tmp: Path, replicas: int = 1) -> None:
        super().__init__(tmp)
        ports = free_ports(1 + replicas + 3)
        self.master_port = ports[0]
        self.replica_ports = ports[1 : 1 + replicas]
        self.replica_port = self.replica_ports[0]
        self.sentinel_ports = ports[1 + replicas :]

    def start(self) -> SentinelSetup:
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.master = start_redis(self.tmp, self.master_port)
        self.procs.append(self.master)
        for port in self.replica_ports:
            self.procs.append(
                start_redis(self.tmp, port, "--replicaof", "127.0.0.1", str(self.master_port))
            )
        for i, port in enumerate(self.sentinel_ports):
            conf = self.tmp / f"sentinel-{i}.conf"
            conf.write_text(
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.master_port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 3000\n"
            )
            self.procs.append(start_redis(self.tmp, port, str(conf), "--sentinel"))

        def synced() -> bool:
            for port in self.replica_ports:
                replica = connect(port)
                try:
                    if replica.info("replication").get("master_link_status") != "up":
                        return False
                finally:
                    replica.close()
            return True

        wait_until(synced, 10, "the replica in sync")
        return self

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}"

    def master_address(self) -> int:
        sentinel = connect(self.sentinel_ports[0])
        try:
            return int(sentinel.sentinel_get_master_addr_by_name(SERVICE)[1])
        finally:
            sentinel.close()

    def kill_master(self) -> None:
        kill(self.master)

    def cpu_seconds(self, port: int) -> float:
        return cpu_seconds(port)
