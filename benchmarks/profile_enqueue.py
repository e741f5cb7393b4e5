"""Profile decortask's enqueue path (`.delay()` and `map()`) with pyinstrument; prints the call tree.

benchmarks/.venv/bin/python benchmarks/profile_enqueue.py amqp|redis|sqlite [N]
"""

from __future__ import annotations

import os
import sys
import tempfile

from pyinstrument import Profiler

broker = sys.argv[1]
count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
workdir = tempfile.mkdtemp(prefix="decortask-profile-")
urls = {"amqp": "amqp://guest:guest@127.0.0.1:5672//", "redis": "redis://127.0.0.1:6379/14"}
os.environ["BENCH_BROKER"] = urls.get(broker, f"sqlite:///{workdir}/broker.db")
os.environ["BENCH_STORE"] = (
    os.environ["BENCH_BROKER"] if broker == "sqlite" else f"sqlite:///{workdir}/store.db"
)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from systems import bench_decortask as system  # noqa: E402

system.app.transport.purge(system.QUEUE)
system.enqueue(1)
for label, run in (("per call .delay()", system.enqueue), ("batch map()", system.enqueue_batch)):
    profiler = Profiler(interval=0.0002)
    profiler.start()
    run(count)
    profiler.stop()
    print(f"==== {label}, {count} tasks on {broker} ====")
    print(profiler.output_text(unicode=False, color=False, show_all=False))
system.app.transport.purge(system.QUEUE)
