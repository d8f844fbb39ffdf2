"""shmkv.Client shared by threads: calls racing close() must never crash the process."""
import os
import subprocess
import sys
import textwrap

import pytest

# Threads hammer one client while the main thread closes it, round after round. Runs in a child
# process so a crash (SIGSEGV, heap corruption abort) fails the test instead of killing pytest.
RACE = textwrap.dedent("""
    import random, sys, threading, time
    sys.path.insert(0, sys.argv[1])
    import shmkv

    sock, rounds = sys.argv[2], int(sys.argv[3])
    unexpected = []

    def hammer(c, kind, tid):
        i = 0
        while True:
            i += 1
            try:
                if kind == 0:
                    c.lookup([b"k%d" % (i % 8), b"k1"])
                elif kind == 1:
                    c.put(b"p%d-%d" % (tid, i % 64), b"x" * 512)
                elif kind == 2:
                    c.get(b"p%d-%d" % (tid, i % 64))
                elif kind == 3:
                    slots = c.prepare_store([b"s%d-%d" % (tid, i)], [4096])
                    if slots[0] is not None:
                        slots[0][:4] = b"abcd"
                        c.commit_store([b"s%d-%d" % (tid, i)])
                else:
                    c.stats()
                    c.info()
            except shmkv.Error as e:
                if "client is closed" in str(e):
                    return
                if "Busy" not in str(e) and "Full" not in str(e):
                    unexpected.append(repr(e))
                    return
            except BaseException as e:  # noqa: BLE001 - anything else breaks the contract
                unexpected.append(repr(e))
                return

    rng = random.Random(7)
    for r in range(rounds):
        c = shmkv.Client(sock, timeout=5.0)
        threads = [threading.Thread(target=hammer, args=(c, k % 5, k)) for k in range(6)]
        for t in threads:
            t.start()
        time.sleep(rng.random() * 0.002)
        c.close()
        c.close()  # idempotent
        for t in threads:
            t.join(10)
            assert not t.is_alive(), "a thread kept running after close()"
        if unexpected:
            break
    print("unexpected:", unexpected[:3])
    sys.exit(1 if unexpected else 0)
""")


def test_calls_racing_close_never_crash(build_dir, server):
    rounds = int(os.environ.get("SHMKV_RACE_ROUNDS", "3000"))
    p = subprocess.run([sys.executable, "-c", RACE, str(build_dir / "python"), server.socket, str(rounds)],
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, SHMKV_LOG_LEVEL="error"))
    assert p.returncode == 0, f"exit {p.returncode}: {p.stdout[-2000:]} {p.stderr[-2000:]}"


def test_a_call_after_close_raises_a_clear_error(shmkv_module, server):
    c = shmkv_module.Client(server.socket, timeout=5.0)
    c.close()
    for call in (lambda: c.lookup([b"k"]), lambda: c.put(b"k", b"v"), lambda: c.get(b"k"), c.stats, c.info,
                 lambda: c.prepare_store([b"k"], [10]), c.sync, c.clear):
        with pytest.raises(shmkv_module.Error, match="client is closed"):
            call()


def test_slot_views_stay_valid_after_close(shmkv_module, server):
    c = shmkv_module.Client(server.socket, timeout=5.0)
    [w] = c.prepare_store([b"v"], [8])
    w[:] = b"abcdefgh"
    c.commit_store([b"v"])
    [r] = c.prepare_retrieve([b"v"])
    c.close()  # the views hold the mapping, not the client
    assert bytes(r) == b"abcdefgh" and bytes(w) == b"abcdefgh"


def test_statuses_come_back_with_the_call(shmkv_module, server):
    c = shmkv_module.Client(server.socket, model="m")
    views, statuses = c.prepare_store([b"ws-a", b"ws-b"], [4096, 4096], with_statuses=True)
    assert statuses == ["ok", "ok"] and all(v is not None for v in views)
    c.commit_store([b"ws-a", b"ws-b"])
    views, statuses = c.prepare_store([b"ws-a", b"ws-c"], [4096, 4096], with_statuses=True)
    assert statuses == ["exists", "ok"] and views[0] is None and views[1] is not None
    c.abort_store([b"ws-c"])
    views, statuses = c.prepare_retrieve([b"ws-a", b"ws-missing"], with_statuses=True)
    assert statuses == ["ok", "missing"] and views[1] is None
    c.commit_retrieve([b"ws-a"])
    assert isinstance(c.prepare_retrieve([b"ws-a"]), list)  # without the keyword: the views, as before
    c.commit_retrieve([b"ws-a"])
    c.close()
