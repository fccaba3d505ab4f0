"""Reads a run's TensorBoard event files with TensorBoard's own reader and prints the scalars.

Run by hand (needs `pip install tensorboard`): python tools/tensorboard_check.py runs/<name>/tensorboard
It fails if TensorBoard cannot parse a file or finds no scalars; the Rust tests read the same files
back with mura_train::tensorboard::read_events.
"""
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

acc = EventAccumulator(sys.argv[1])
acc.Reload()
tags = acc.Tags()["scalars"]
assert tags, "no scalars found"
for tag in sorted(tags):
    values = [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)]
    print(f"{tag}: {values}")
