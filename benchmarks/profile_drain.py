"""Profile a decortask worker draining a pre-filled queue with py-spy; prints where its threads spend time.

    benchmarks/.venv/bin/python benchmarks/profile_drain.py amqp|redis|sqlite [N]

Needs permission to trace a child process (py-spy comes with benchmarks/requirements.txt).
Time is counted over every thread's busy samples (waits for work excluded), inclusive per function;
waits for the SQLite write lock count as busy, they are the point.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
broker = sys.argv[1]
count = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
workdir = Path(tempfile.mkdtemp(prefix="decortask-profile-"))
urls = {"amqp": "amqp://guest:guest@127.0.0.1:5672//", "redis": "redis://127.0.0.1:6379/14"}
env = dict(os.environ)
env["PYTHONPATH"] = str(HERE)
env["BENCH_BROKER"] = urls.get(broker, f"sqlite:///{workdir}/broker.db")
env["BENCH_STORE"] = env["BENCH_BROKER"] if broker == "sqlite" else f"sqlite:///{workdir}/store.db"
env["BENCH_STORE"] = os.environ.get("PROFILE_STORE", env["BENCH_STORE"])  # e.g. a Redis store, to compare
env["BENCH_EXPECTED"] = str(count)
env["BENCH_OUT"] = str(workdir / "drained.json")
py = sys.executable
fill = f"from systems import bench_decortask as s; s.app.transport.purge(s.QUEUE); s.enqueue_batch({count})"
subprocess.run([py, "-c", fill], cwd=HERE, env=env, check=True)
command = json.loads(
    subprocess.run(
        [
            py,
            "-c",
            "import json; from systems import bench_decortask as s; print(json.dumps(s.worker_command()))",
        ],
        cwd=HERE,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
)
if os.environ.get("PROFILE_EXPERIMENT"):  # e.g. ack-poll=0.0005: see experiment_worker.py
    command = ["experiment_worker.py", os.environ["PROFILE_EXPERIMENT"], "--", *command[2:]]
raw = workdir / "stacks.txt"
# PROFILE_GIL=1: sample only the thread holding the GIL, i.e. where the worker's one core of Python goes.
gil = ["--gil"] if os.environ.get("PROFILE_GIL") else []
spy = subprocess.Popen(
    [
        str(Path(py).parent / "py-spy"),
        "record",
        "-r",
        os.environ.get("PROFILE_RATE", "250"),
        *gil,
        "-f",
        "raw",
        "-o",
        str(raw),
        "--",
        py,
        *command,
    ],
    cwd=HERE,
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
)
marker = Path(env["BENCH_OUT"])
deadline = time.monotonic() + 300
while not marker.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
done = json.loads(marker.read_text())
print(
    f"drained {done['count']} on {broker}: {(done['count'] - 1) / (done['last'] - done['first']):,.0f} tasks/s"
)
children = subprocess.run(["pgrep", "-P", str(spy.pid)], capture_output=True, text=True).stdout.split()
for pid in children:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    span = done["last"] - done["first"]
    print(
        f"worker CPU {cpu:.2f} s in all (start-up included) for a {span:.2f} s drain: {cpu / span:.0%} of a core"
    )
for pid in children:
    os.kill(int(pid), signal.SIGTERM)  # the worker: py-spy writes its file once its child exits
spy.wait(timeout=60)

#: Leaf frames that are waits: a pool thread blocked on its job queue shows up as `_loop` itself.
IDLE = ("wait (threading.py", "select (", "drain_events", "poll (", "sleep", "_loop (decortask/pools.py")
inclusive: collections.Counter[str] = collections.Counter()
own: collections.Counter[str] = collections.Counter()
total = 0
for line in raw.read_text().splitlines():
    stack, _, n = line.rpartition(" ")
    frames = stack.split(";")
    leaf = frames[-1]
    if any(word in leaf for word in IDLE):
        continue
    samples = int(n)
    total += samples
    own[leaf.split(" (")[0]] += samples
    for name in {frame.split(" (")[0] for frame in frames}:
        inclusive[name] += samples
print(f"{total} busy samples over all threads")
print("inclusive, top 40:")
for name, n in inclusive.most_common(40):
    print(f"  {100 * n / total:5.1f}%  {name}")
print("self, top 25:")
for name, n in own.most_common(25):
    print(f"  {100 * n / total:5.1f}%  {name}")
