"""Real Redis for the tests: a Redis Cluster (or one standalone redis) on free loopback ports.

Every process is a Debian `redis-server` started by the test and stopped at teardown (also when
the test fails: use the `redis_procs` fixture, whose finalizer stops everything it made). No
persistence, loopback only, a small cluster node timeout so that failure detection takes about a
second.

    cluster = RedisCluster(tmp_path, masters=3, replicas=1)   # created, cluster_state:ok
    cluster.url()              # "redis://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3"
    cluster.master_for_key(k)  # the port of the master serving k's slot
    cluster.kill(port); cluster.wait_failover(port)
    job = cluster.reshard(src, dst, 1000, background=True); ...; job.join()
    cluster.stop()

Commands go through a minimal binary-safe RESP client (`RespConnection`; the Python `redis`
package is not a dependency) or through `redis-cli` (`cli`).
"""
from __future__ import annotations

import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from typing import Iterable, Sequence

import pytest

HOST = "127.0.0.1"
NSLOTS = 16384
BUS_OFFSET = 10000  # redis' cluster bus port is the client port + 10000
# Client ports below 22768: the bus ports (+10000) stay below Linux's ephemeral range (32768...),
# where outgoing connections would take them.
_PORT_RANGE = (12000, 22700)
_used_ports: set[int] = set()
_ports_lock = threading.Lock()


def require_redis() -> None:
    """Skips the calling test when Debian's redis-server / redis-cli are not installed."""
    missing = [b for b in ("redis-server", "redis-cli") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (scripts/install-deps.sh installs redis-server "
                    f"and redis-tools)")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_ports(n: int, cluster_bus: bool = True) -> list[int]:
    """n loopback ports that are free now (with their bus port +10000 when `cluster_bus`), never
    handed out twice by this process."""
    out: list[int] = []
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    with _ports_lock:
        for _ in range(20000):
            if len(out) == n:
                return out
            p = rng.randrange(*_PORT_RANGE)
            if p in _used_ports or (p + BUS_OFFSET) in _used_ports:
                continue
            if _port_free(p) and (not cluster_bus or _port_free(p + BUS_OFFSET)):
                _used_ports.update((p, p + BUS_OFFSET))
                out.append(p)
    raise RuntimeError(f"could not find {n} free loopback ports")


def wait_for(pred, timeout: float, what: str, interval: float = 0.05):
    """Polls pred() until it returns something truthy (returned) or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except (OSError, RedisError) as e:  # a node that is not up yet
            last_exc = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}"
                                 + (f" (last error: {last_exc})" if last_exc else ""))
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# A minimal RESP2 client: enough for SET/GET/SCAN/INFO/CLUSTER and binary values.


class RedisError(Exception):
    """An error reply (-ERR ..., -MOVED ..., -WRONGPASS ...)."""


class RespConnection:
    """One blocking connection to one redis node. Not thread-safe: one per thread."""

    def __init__(self, port: int, password: str | None = None, host: str = HOST, timeout: float = 5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = self.sock.makefile("rb")
        if password is not None:
            self.command("AUTH", password)

    def close(self) -> None:
        try:
            self.rfile.close()
        finally:
            self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def _encode(args: Sequence) -> bytes:
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            if isinstance(a, str):
                a = a.encode()
            elif isinstance(a, int):
                a = str(a).encode()
            a = bytes(a)
            parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(parts)

    def _read(self):
        line = self.rfile.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.rfile.read(n + 2)
            if len(data) != n + 2:
                raise ConnectionError("redis closed the connection inside a reply")
            return data[:-2]
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return None
            out, err = [], None
            for _ in range(n):
                try:
                    out.append(self._read())
                except RedisError as e:  # an error inside an array (e.g. EXEC): keep reading
                    out.append(e)
                    err = err or e
            return out
        raise ConnectionError(f"unexpected RESP reply {line!r}")

    def command(self, *args):
        self.sock.sendall(self._encode(args))
        return self._read()


def parse_info(text: bytes | str) -> dict[str, str]:
    if isinstance(text, bytes):
        text = text.decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            k, v = line.split(":", 1)
            out[k] = v.strip()
    return out


_CRC16_TABLE = []
for _i in range(256):
    _c = _i << 8
    for _ in range(8):
        _c = ((_c << 1) ^ 0x1021) if _c & 0x8000 else (_c << 1)
    _CRC16_TABLE.append(_c & 0xFFFF)


def key_slot(key: bytes | str) -> int:
    """Redis Cluster's slot of `key`: CRC16 (XMODEM) of the key or of its {hash tag}, mod 16384."""
    if isinstance(key, str):
        key = key.encode()
    s = key.find(b"{")
    if s >= 0:
        e = key.find(b"}", s + 1)
        if e > s + 1:
            key = key[s + 1:e]
    crc = 0
    for b in key:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16_TABLE[((crc >> 8) ^ b) & 0xFF]
    return crc % NSLOTS


# ---------------------------------------------------------------------------------------------
# Processes


class RedisNode:
    """One redis-server process on a loopback port, its log in <dir>/redis-PORT.log."""

    def __init__(self, directory: pathlib.Path, port: int, extra: Sequence[str], password: str | None):
        self.dir, self.port, self.extra, self.password = directory, port, list(extra), password
        self.proc: subprocess.Popen | None = None
        self.log_path = directory / f"redis-{port}.log"

    def args(self) -> list[str]:
        a = ["redis-server", "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--dir", str(self.dir), "--logfile", "", "--loglevel", "notice"]
        if self.password is not None:
            a += ["--requirepass", self.password, "--masterauth", self.password]
        return a + self.extra

    def start(self, timeout: float = 10.0) -> "RedisNode":
        self.dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server on port {self.port} exited with status {self.proc.returncode}:"
                                     f"\n{self.log()[-2000:]}")
            with self.connect(timeout=1.0) as c:
                # The server that answers must be ours, not another one holding the port.
                # (Ours then fails to bind and exits, which the check above reports.)
                return int(parse_info(c.command("INFO", "server"))["process_id"]) == self.proc.pid

        wait_for(up, timeout, f"redis-server on port {self.port} to answer PING")
        return self

    def connect(self, timeout: float = 5.0) -> RespConnection:
        return RespConnection(self.port, self.password, timeout=timeout)

    def command(self, *args):
        with self.connect() as c:
            return c.command(*args)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.alive():
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _cli_env(password: str | None) -> dict:
    env = dict(os.environ)
    env.pop("REDISCLI_AUTH", None)
    if password is not None:
        env["REDISCLI_AUTH"] = password  # not on argv (and no "-a is insecure" warning)
    return env


def _url(ports: Iterable[int], password: str | None, user: str | None = None) -> str:
    auth = ""
    if password is not None or user is not None:
        auth = f"{user or ''}:{password or ''}@"
    return "redis://" + auth + ",".join(f"{HOST}:{p}" for p in ports)


class StandaloneRedis:
    """One non-cluster redis-server. maxmemory e.g. "3mb", policy e.g. "noeviction"."""

    def __init__(self, tmp_path: pathlib.Path, password: str | None = None, maxmemory: str | None = None,
                 policy: str | None = None, port: int | None = None, start: bool = True):
        require_redis()
        self.password = password
        self.port = port if port is not None else free_ports(1, cluster_bus=False)[0]
        extra = []
        if maxmemory is not None:
            extra += ["--maxmemory", str(maxmemory)]
        if policy is not None:
            extra += ["--maxmemory-policy", policy]
        self.node = RedisNode(pathlib.Path(tmp_path) / f"redis-standalone-{self.port}", self.port, extra, password)
        if start:
            self.start()

    def start(self) -> "StandaloneRedis":
        self.node.start()
        return self

    @property
    def seeds(self) -> str:
        return f"{HOST}:{self.port}"

    def url(self, with_password: bool = True, user: str | None = None) -> str:
        return _url([self.port], self.password if with_password else None, user)

    def command(self, *args):
        return self.node.command(*args)

    def cli(self, *args: str, check: bool = True) -> str:
        r = subprocess.run(["redis-cli", "-h", HOST, "-p", str(self.port), *map(str, args)], capture_output=True,
                           text=True, timeout=30, env=_cli_env(self.password))
        if check and r.returncode != 0:
            raise AssertionError(f"redis-cli {' '.join(map(str, args))}: exit {r.returncode}\n{r.stdout}{r.stderr}")
        return r.stdout

    def all_keys(self, pattern: str = "*") -> list[bytes]:
        return _scan(self.node, pattern)

    def get(self, key):
        return self.command("GET", key)

    def set(self, key, value):
        return self.command("SET", key, value)

    def kill(self) -> None:
        self.node.kill()

    def stop(self) -> None:
        self.node.stop()


def _scan(node: RedisNode, pattern: str) -> list[bytes]:
    keys, cursor = [], b"0"
    with node.connect() as c:
        while True:
            cursor, batch = c.command("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            keys.extend(batch)
            if cursor in (b"0", "0"):
                return keys


class ReshardJob:
    """A `redis-cli --cluster reshard` running in a background thread."""

    def __init__(self, run):
        self.result: subprocess.CompletedProcess | None = None
        self.error: BaseException | None = None

        def body():
            try:
                self.result = run()
            except BaseException as e:  # noqa: BLE001 - handed to join()
                self.error = e

        self.thread = threading.Thread(target=body, name="redis-reshard", daemon=True)
        self.thread.start()

    def done(self) -> bool:
        return not self.thread.is_alive()

    def join(self, timeout: float = 120.0) -> subprocess.CompletedProcess:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError(f"redis-cli --cluster reshard still running after {timeout:g} s")
        if self.error:
            raise self.error
        return self.result


class RedisCluster:
    """A Redis Cluster of `masters` masters with `replicas` replicas each, on loopback.

    Nodes run with --cluster-node-timeout `node_timeout_ms` (small: failures are detected in about
    a second), --cluster-replica-validity-factor 0 (a replica may always take over) and
    --cluster-require-full-coverage no (while a master is down and not yet replaced, the other
    slots keep serving: what the tests of a node failure look at; a cache cluster runs this way).

    `start=False` only picks the ports (url() is usable): start() later makes the cluster.
    Thread-safety: the methods are for the test's thread; reshard(background=True) runs its
    redis-cli in a thread of its own and touches no state of this object.
    """

    def __init__(self, tmp_path: pathlib.Path, masters: int = 3, replicas: int = 0, password: str | None = None,
                 node_timeout_ms: int = 1000, start: bool = True, extra: Sequence[str] = (),
                 ports: Sequence[int] | None = None):
        require_redis()
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.masters_n, self.replicas_n, self.password = masters, replicas, password
        self.node_timeout_ms = node_timeout_ms
        n = masters * (1 + replicas)
        self.ports = list(ports) if ports is not None else free_ports(n)
        if len(self.ports) != n:
            raise ValueError(f"{n} ports needed, {len(self.ports)} given")
        self.dir = pathlib.Path(tmp_path) / f"redis-cluster-{self.ports[0]}"
        common = ["--cluster-enabled", "yes", "--cluster-node-timeout", str(node_timeout_ms),
                  "--cluster-replica-validity-factor", "0", "--cluster-require-full-coverage", "no",
                  "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0", *extra]
        self.nodes = {p: RedisNode(self.dir, p, common + ["--cluster-config-file", f"nodes-{p}.conf"], password)
                      for p in self.ports}
        self.killed: dict[int, dict] = {}  # port -> {"id", "slots", "replicas"} at kill time
        if start:
            try:
                self.start()
            except BaseException:
                self.stop()
                raise

    # -- making it

    def start(self, timeout: float = 60.0) -> "RedisCluster":
        for node in self.nodes.values():
            node.start()
        r = subprocess.run(["redis-cli", "--cluster", "create", *(f"{HOST}:{p}" for p in self.ports),
                            "--cluster-replicas", str(self.replicas_n), "--cluster-yes"],
                           capture_output=True, text=True, timeout=timeout, env=_cli_env(self.password),
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0 or "[OK] All 16384 slots covered" not in r.stdout:
            raise AssertionError(f"redis-cli --cluster create failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr}")
        self.wait_ok(timeout)
        return self

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Every live node: cluster_state:ok, knows every node, sees every slot served by a live
        master; every live replica's link to its master is up and its data caught up."""
        expected_nodes = len(self.nodes)

        def ok():
            for p in self.live_ports():
                info = parse_info(self.command(p, "CLUSTER", "INFO"))
                if info.get("cluster_state") != "ok" or int(info.get("cluster_known_nodes", 0)) < expected_nodes:
                    return False
                if info.get("cluster_slots_assigned") != str(NSLOTS):
                    return False
            slot_owner = self.slot_map()
            if len(slot_owner) != NSLOTS or not set(slot_owner.values()) <= set(self.live_ports()):
                return False
            return self.replicas_synced()

        wait_for(ok, timeout, "the cluster to reach cluster_state:ok on every node", interval=0.1)

    # -- addresses

    @property
    def seeds(self) -> str:
        """"127.0.0.1:p1,127.0.0.1:p2,...": the ports of the masters at creation."""
        return ",".join(f"{HOST}:{p}" for p in self.ports[:self.masters_n])

    def url(self, with_password: bool = True, user: str | None = None, ports: Sequence[int] | None = None) -> str:
        """redis://[user:pass@]127.0.0.1:p1,... (the creation masters unless `ports`)."""
        return _url(ports if ports is not None else self.ports[:self.masters_n],
                    self.password if with_password else None, user)

    def live_ports(self) -> list[int]:
        return [p for p, n in self.nodes.items() if n.alive()]

    # -- commands

    def command(self, port: int, *args):
        return self.nodes[port].command(*args)

    def connect(self, port: int) -> RespConnection:
        return self.nodes[port].connect()

    def cli(self, port: int, *args: str, cluster: bool = True, check: bool = True) -> str:
        """redis-cli -h 127.0.0.1 -p PORT [-c] ARGS...; its stdout (raises on a non-zero exit)."""
        r = subprocess.run(["redis-cli", "-h", HOST, "-p", str(port), *(["-c"] if cluster else []), *map(str, args)],
                           capture_output=True, text=True, timeout=60, env=_cli_env(self.password),
                           stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise AssertionError(f"redis-cli -p {port} {' '.join(map(str, args))}: exit {r.returncode}\n"
                                 f"{r.stdout}{r.stderr}")
        return r.stdout

    # -- topology

    def cluster_nodes(self, port: int | None = None) -> list[dict]:
        """CLUSTER NODES as seen by `port` (any live node by default): dicts with id, port, flags
        (a set), master (id or None), slots (a set of slot numbers)."""
        port = port if port is not None else self.live_ports()[0]
        text = self.command(port, "CLUSTER", "NODES").decode()
        out = []
        for line in text.splitlines():
            f = line.split()
            if len(f) < 8:
                continue
            slots = set()
            for s in f[8:]:
                if s.startswith("["):  # a slot being migrated/imported
                    continue
                a, _, b = s.partition("-")
                slots.update(range(int(a), int(b or a) + 1))
            addr = f[1].split("@")[0]
            out.append({"id": f[0], "port": int(addr.rsplit(":", 1)[1]) if addr.rsplit(":", 1)[1] else 0,
                        "flags": set(f[2].split(",")), "master": None if f[3] == "-" else f[3],
                        "link": f[7], "slots": slots})
        return out

    def node_id(self, port: int) -> str:
        return self.command(port, "CLUSTER", "MYID").decode()

    def slot_map(self, port: int | None = None) -> dict[int, int]:
        """slot -> port of the master serving it, from CLUSTER SLOTS of `port` (any live node)."""
        port = port if port is not None else self.live_ports()[0]
        out = {}
        for start, end, master, *_ in self.command(port, "CLUSTER", "SLOTS"):
            for s in range(start, end + 1):
                out[s] = int(master[1])
        return out

    def masters(self) -> list[int]:
        """Ports of the live masters that serve slots, per CLUSTER NODES of a live node."""
        live = set(self.live_ports())
        return sorted(n["port"] for n in self.cluster_nodes() if "master" in n["flags"] and n["slots"]
                      and n["port"] in live and "fail" not in n["flags"])

    def replicas_of(self, master_port: int) -> list[int]:
        nodes = self.cluster_nodes()
        mid = next(n["id"] for n in nodes if n["port"] == master_port)
        return sorted(n["port"] for n in nodes if n["master"] == mid)

    def master_for_slot(self, slot: int) -> int:
        return self.slot_map()[slot]

    def master_for_key(self, key: bytes | str) -> int:
        return self.master_for_slot(key_slot(key))

    def replicas_synced(self) -> bool:
        """Every live replica: link up and its replication offset equal to its live master's."""
        for p in self.live_ports():
            info = parse_info(self.command(p, "INFO", "replication"))
            if info.get("role") != "slave":
                continue
            mport = int(info.get("master_port", 0))
            if mport not in self.nodes or not self.nodes[mport].alive():
                continue  # its master is dead: nothing to catch up with
            if info.get("master_link_status") != "up":
                return False
            minfo = parse_info(self.command(mport, "INFO", "replication"))
            if int(info.get("slave_repl_offset", -1)) != int(minfo.get("master_repl_offset", -2)):
                return False
        return True

    def wait_agree(self, timeout: float = 30.0) -> dict[int, int]:
        """Waits until every live node maps every slot to the same master (redis-cli --cluster
        reshard refuses to start while nodes disagree); returns that map."""

        def agree():
            maps = [self.slot_map(p) for p in self.live_ports()]
            return maps[0] if len(maps[0]) == NSLOTS and all(m == maps[0] for m in maps) else None

        return wait_for(agree, timeout, "every node to agree on the slot map", interval=0.1)

    def wait_replicas_synced(self, timeout: float = 20.0) -> None:
        wait_for(self.replicas_synced, timeout, "every replica to catch up with its master")

    # -- faults

    def kill(self, port: int) -> None:
        """SIGKILL the node on `port` (what it served is remembered for wait_failover)."""
        nodes = self.cluster_nodes(next(p for p in self.live_ports() if p != port) if len(self.live_ports()) > 1
                                   else port)
        me = next(n for n in nodes if n["port"] == port)
        self.killed[port] = {"id": me["id"], "slots": set(me["slots"]),
                             "replicas": sorted(n["port"] for n in nodes if n["master"] == me["id"])}
        self.nodes[port].kill(signal.SIGKILL)

    def wait_failover(self, dead_port: int, timeout: float = 30.0) -> int:
        """Waits until a replica of the killed master `dead_port` is master of all its slots,
        every live node says cluster_state:ok and maps those slots to it. Returns its port."""
        k = self.killed[dead_port]
        live = set(self.live_ports())

        def promoted():
            for r in k["replicas"]:
                if r not in live:
                    continue
                if parse_info(self.command(r, "INFO", "replication")).get("role") != "master":
                    continue
                for p in live:
                    if parse_info(self.command(p, "CLUSTER", "INFO")).get("cluster_state") != "ok":
                        return None
                    m = self.slot_map(p)
                    if any(m.get(s) != r for s in k["slots"]):
                        return None
                return r
            return None

        return wait_for(promoted, timeout, f"a replica of the killed master {dead_port} to take over its slots",
                        interval=0.1)

    def reshard(self, from_port: int, to_port: int, nslots: int, background: bool = False,
                pipeline: int = 10, timeout: float = 120.0):
        """Moves `nslots` slots (and their keys) from the master on `from_port` to the one on
        `to_port` with `redis-cli --cluster reshard ... --cluster-yes`. background=True returns a
        ReshardJob at once (join() waits and raises on failure); otherwise the CompletedProcess."""
        self.wait_agree()
        src, dst = self.node_id(from_port), self.node_id(to_port)
        argv = ["redis-cli", "--cluster", "reshard", f"{HOST}:{from_port}", "--cluster-from", src, "--cluster-to", dst,
                "--cluster-slots", str(nslots), "--cluster-yes", "--cluster-pipeline", str(pipeline)]
        env = _cli_env(self.password)

        def run():
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
            if r.returncode != 0 or "[ERR]" in r.stdout:
                raise AssertionError(f"redis-cli --cluster reshard failed (exit {r.returncode}):\n{r.stdout[-4000:]}\n"
                                     f"{r.stderr[-2000:]}")
            return r

        if background:
            return ReshardJob(run)
        return run()

    # -- data

    def all_keys(self, pattern: str = "*") -> list[bytes]:
        """SCAN MATCH `pattern` on every live master serving slots (replicas hold copies)."""
        keys = []
        for p in self.masters():
            keys.extend(_scan(self.nodes[p], pattern))
        return sorted(keys)

    def keys_on(self, port: int, pattern: str = "*") -> list[bytes]:
        return sorted(_scan(self.nodes[port], pattern))

    def get(self, key):
        """GET on the master of key's slot (None when absent)."""
        return self.command(self.master_for_key(key), "GET", key)

    def set(self, key, value, *opts):
        return self.command(self.master_for_key(key), "SET", key, value, *opts)

    def delete(self, key) -> int:
        return self.command(self.master_for_key(key), "DEL", key)

    def exists(self, key) -> bool:
        return self.command(self.master_for_key(key), "EXISTS", key) == 1

    def flushall(self) -> None:
        for p in self.masters():
            self.command(p, "FLUSHALL")

    # -- teardown

    def stop(self) -> None:
        """Stops every node (idempotent; safe after a partial start)."""
        for node in self.nodes.values():
            try:
                node.stop()
            except Exception:  # noqa: BLE001 - stop the others anyway
                node.kill()

    def logs(self) -> str:
        return "\n".join(f"--- redis {p} ---\n{n.log()[-3000:]}" for p, n in self.nodes.items())


@pytest.fixture
def redis_procs(tmp_path, request):
    """A factory: redis_procs.cluster(...) / redis_procs.standalone(...) make RedisCluster /
    StandaloneRedis in tmp_path; all of them are stopped when the test ends, whatever its outcome.
    Import it into a test module (`from redis_cluster import redis_procs`) to use it."""
    require_redis()

    class Factory:
        made: list = []

        def cluster(self, **kw) -> RedisCluster:
            start = kw.pop("start", True)
            c = RedisCluster(tmp_path, start=False, **kw)
            self.made.append(c)
            if start:
                c.start()
            return c

        def standalone(self, **kw) -> StandaloneRedis:
            start = kw.pop("start", True)
            s = StandaloneRedis(tmp_path, start=False, **kw)
            self.made.append(s)
            if start:
                s.start()
            return s

    f = Factory()
    f.made = []

    def stop_all():
        for r in f.made:
            r.stop()

    request.addfinalizer(stop_all)
    return f
