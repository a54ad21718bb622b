"""Meter overhead per epoch: bp on mlp_2x1000, 3-epoch runs with meters on and off, interleaved.

    python benchmarks/meter_overhead_epochs.py

A second view beside meter_overhead.py: the median training-window time of each epoch index
over 4 interleaved pairs of runs in one process (first, steady epochs told apart).
"""

import statistics

from bpfree.config import TrainConfig
from bpfree.engine import Trainer, load_data

BASE = dict(
    rule="bp",
    model="mlp_2x1000",
    dataset="fashion_mnist",
    epochs=3,
    train_samples=20000,
    device="cpu",
    patience=5,
)
data = load_data(TrainConfig.build(BASE))


def run(meters):
    cfg = TrainConfig.build({**BASE, "meters": meters})
    hist = []
    Trainer(
        cfg, data=data, progress=False, on_epoch=lambda r: hist.append(r["train_wall_time_s"])
    ).run()
    return hist


run(True)
run(False)
res = {True: [], False: []}
for i in range(4):
    for m in (True, False) if i % 2 == 0 else (False, True):
        res[m].append(run(m))
for k, v in res.items():
    print(
        "meters on " if k else "meters off",
        "median s per epoch 1..3:",
        [statistics.median(e[i] for e in v) for i in range(3)],
    )
