"""The subreaper: orphans are reaped, children someone waits for keep their exit status.

A subreaper flag, a SIGCHLD handler and wrapped spawn functions would change the rest of the
pytest session, so each scenario runs in a fresh interpreter and prints a JSON verdict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

from ocid import reaper

PRELUDE = """
import gc, json, os, signal, subprocess, sys, threading, time
from ocid import reaper

def zombies():
    me, found = str(os.getpid()), []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            if fields[0] == "Z" and fields[1] == me:
                found.append(int(name))
    return found

def gone(pid, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        time.sleep(0.01)
    return False

def orphan(seconds):
    # sh starts a background sleep and exits: the sleep is reparented to us (the subreaper).
    out = subprocess.run(["sh", "-c", f"sleep {seconds} >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout)

exits = []
r = reaper.Reaper(on_exit=lambda pid, code: exits.append((pid, code)))
r.start()
"""


def run_scenario(body: str, timeout: float = 120) -> dict:
    """Run PRELUDE + body in a new interpreter; return the JSON it printed last."""
    code = PRELUDE + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_orphaned_grandchild_is_reaped():
    result = run_scenario("""
        pid = orphan(0.2)
        with open(f"/proc/{pid}/stat") as f:
            ppid = int(f.read().rpartition(")")[2].split()[1])
        print(json.dumps({"ppid_is_us": ppid == os.getpid(), "gone": gone(pid),
                          "zombies": zombies(), "reported": [pid, 0] in map(list, exits)}))
    """)
    assert result == {"ppid_is_us": True, "gone": True, "zombies": [], "reported": True}


def test_orphan_reaped_while_main_thread_blocks():
    # SIGCHLD goes to the thread that forked, and a Python handler would wait for the main
    # thread to run bytecode: the wakeup fd must wake the reaper without it.
    result = run_scenario("""
        done = threading.Event()
        verdict = {}
        def worker():
            pid = orphan(0.2)
            verdict["gone"] = gone(pid)
            done.set()
        threading.Thread(target=worker).start()
        done.wait()  # the main thread sleeps in a lock acquire
        verdict["zombies"] = zombies()
        print(json.dumps(verdict))
    """)
    assert result == {"gone": True, "zombies": []}


def test_run_return_codes_survive_concurrent_orphan_reaping():
    result = run_scenario("""
        codes, stop = [], threading.Event()

        def make_orphans():
            while not stop.is_set():
                subprocess.run(["sh", "-c", "for i in 1 2 3 4 5 6; do (exit 3) & done; exit 0"])

        def run_one():
            codes.append(subprocess.run(["sh", "-c", "exit 7"]).returncode)

        makers = [threading.Thread(target=make_orphans) for _ in range(3)]
        for t in makers:
            t.start()
        time.sleep(0.05)
        runners = [threading.Thread(target=run_one) for _ in range(50)]
        for t in runners:
            t.start()
        for t in runners:
            t.join()
        stop.set()
        for t in makers:
            t.join()
        time.sleep(0.3)
        r.reap_now()
        print(json.dumps({"codes": sorted(set(codes)), "count": len(codes),
                          "orphans_reaped": sum(1 for _, c in exits if c == 3),
                          "zombies": zombies(), "owned": sorted(reaper.owned_pids())}))
    """)
    assert result["codes"] == [7] and result["count"] == 50
    assert result["orphans_reaped"] > 0
    assert result["zombies"] == [] and result["owned"] == []


def test_owned_children_keep_their_status():
    result = run_scenario("""
        spawned = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 5"], dict(os.environ))
        forked = os.fork()
        if forked == 0:
            os._exit(9)
        time.sleep(0.3)  # both are zombies now, and SIGCHLD woke the reaper
        r.reap_now()
        r.reap_now()
        statuses = {
            "posix_spawn": os.waitstatus_to_exitcode(os.waitpid(spawned, 0)[1]),
            "fork": os.waitstatus_to_exitcode(os.waitpid(forked, 0)[1]),
        }
        r.reap_now()
        print(json.dumps({**statuses, "owned": sorted(reaper.owned_pids()),
                          "stolen": [p for p, _ in exits if p in (spawned, forked)]}))
    """)
    assert result == {"posix_spawn": 5, "fork": 9, "owned": [], "stolen": []}


def test_explicit_ownership_api():
    result = run_scenario("""
        with reaper.spawning() as own:
            pid = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 4"], dict(os.environ))
            own(pid)
        time.sleep(0.2)
        kept = pid in reaper.owned_pids() and r.reap_now() == []
        reaper.disown(pid)  # hand it to the reaper
        reaped = r.reap_now()
        with reaper.owned(12345678):
            inside = 12345678 in reaper.owned_pids()
        print(json.dumps({"kept": kept, "reaped": reaped, "inside": inside,
                          "after": 12345678 in reaper.owned_pids(), "pid": pid}))
    """)
    assert result["kept"] and result["inside"] and not result["after"]
    assert result["reaped"] == [[result["pid"], 4]]


def test_an_owned_zombie_never_waited_for_does_not_hide_orphans():
    # waitid reports the oldest zombie first: the neglected one comes before the orphan.
    result = run_scenario("""
        neglected = subprocess.Popen(["true"])  # never waited for, kept alive
        time.sleep(0.2)
        pid = orphan(0.2)
        print(json.dumps({"orphan_gone": gone(pid),
                          "neglected_kept": zombies() == [neglected.pid],
                          "code": neglected.wait()}))
    """)
    assert result == {"orphan_gone": True, "neglected_kept": True, "code": 0}


def test_children_from_before_start_are_owned():
    result = run_scenario("""
        r.stop()
        early = subprocess.Popen(["sh", "-c", "sleep 0.2; exit 6"])
        r2 = reaper.Reaper()
        r2.start()
        time.sleep(0.5)
        r2.reap_now()
        print(json.dumps({"code": early.wait()}))
        r2.stop()
    """)
    assert result == {"code": 6}


def test_popen_collected_without_wait_leaves_no_entry():
    result = run_scenario("""
        p = subprocess.Popen(["true"])
        pid = p.pid
        time.sleep(0.2)
        del p
        gc.collect()  # Popen.__del__ polls it, or subprocess._cleanup() does on the next spawn
        subprocess.run(["true"])
        time.sleep(0.1)
        r.reap_now()
        print(json.dumps({"owned": pid in reaper.owned_pids(), "zombies": zombies()}))
    """)
    assert result == {"owned": False, "zombies": []}


def test_stop_restores_everything():
    result = run_scenario("""
        import ctypes
        r.stop()
        libc = ctypes.CDLL(None, use_errno=True)
        flag = ctypes.c_int(-1)
        libc.prctl(37, ctypes.byref(flag), 0, 0, 0)  # PR_GET_CHILD_SUBREAPER
        wrapped = [getattr(obj, name) for obj, name, _ in reaper._patch_targets()]
        print(json.dumps({
            "subreaper": flag.value,
            "handler_default": signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL,
            "wakeup_fd": signal.set_wakeup_fd(-1),
            "unwrapped": not any(getattr(f, "__ocid_reaper__", False) for f in wrapped),
            "rc": subprocess.run(["sh", "-c", "exit 3"]).returncode,
        }))
    """)
    assert result == {"subreaper": 0, "handler_default": True, "wakeup_fd": -1,
                      "unwrapped": True, "rc": 3}


def test_start_refuses_a_non_main_thread():
    errors: list[Exception] = []

    def start() -> None:
        try:
            reaper.Reaper().start()
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert reaper._active is None


def test_stat_parses_names_with_spaces_and_parens(tmp_path):
    odd = tmp_path / "x) Z (1"  # comm is the executable's name
    odd.symlink_to("/bin/sleep")
    proc = subprocess.Popen([str(odd), "5"])
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with open(f"/proc/{proc.pid}/comm") as f:
                if f.read().strip() == "x) Z (1":
                    break
            time.sleep(0.01)
        st = reaper._stat(proc.pid)
        assert st is not None and st[1] == os.getpid() and st[0] in "RS"
    finally:
        proc.kill()
        proc.wait()
