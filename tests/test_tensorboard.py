"""The protobuf-free TensorBoard writer, checked against TensorBoard's own readers.

References are independent of the code under test: published CRC-32C vectors, TensorBoard's
record reader (which verifies both CRCs of every record), its protobuf ``Event`` parser, and
both of its accumulators: ``event_accumulator`` (the public reader API) and
``plugin_event_accumulator`` (what ``tensorboard --load_fast=false`` serves from).
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator, plugin_event_accumulator
from tensorboard.backend.event_processing.event_file_loader import (
    EventFileLoader,
    LegacyEventFileLoader,
)
from tensorboard.backend.event_processing.io_wrapper import IsSummaryEventsFile
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub import errors
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import PyRecordReader_New
from tensorboard.util import tensor_util

from jdjudge.checkpoint.tensorboard import EventWriter, crc32c


def _files(logdir: Path) -> list[Path]:
    return sorted(p for p in logdir.iterdir() if p.name.startswith("events.out.tfevents."))


def _raw_events(path: Path) -> list[event_pb2.Event]:
    return list(LegacyEventFileLoader(str(path)).Load())


def _scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _server_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """What the TensorBoard server's Python loader shows: scalars migrated to tensors."""
    acc = plugin_event_accumulator.EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    acc.Reload()
    return {
        tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
        for tag in acc.Tags()["tensors"]
    }


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"123456789", 0xE3069283),  # the standard check value
        (b"", 0),
        (bytes(32), 0x8A9136AA),  # RFC 3720 B.4
        (b"\xff" * 32, 0x62A8AB43),  # RFC 3720 B.4
        (bytes(range(32)), 0x46DD794E),  # RFC 3720 B.4, incrementing
    ],
)
def test_crc32c_published_vectors(data: bytes, expected: int) -> None:
    assert crc32c(data) == expected


def test_scalars_round_trip_through_tensorboard(tmp_path: Path) -> None:
    before = time.time()
    with EventWriter(tmp_path) as writer:
        for step in (1, 2, 5):
            writer.scalars(
                step,
                {
                    "loss": 1.0 / step,
                    "tokens": 1000 * step,  # int
                    "lr": np.float32(0.125 * step),  # numpy scalar
                    "nan": float("nan"),
                    "inf": -math.inf,
                    "huge": 1e300,  # finite in float64, inf in float32
                    "flag": True,
                    "name": "run-a",
                    "vector": np.arange(3.0),
                },
                prefix="train",
            )
        writer.scalars(5, {"accuracy": 0.75})  # no prefix
        writer.scalars(6, {"only_nan": float("nan")})  # nothing finite: no event at all
    after = time.time()

    assert _scalars(tmp_path) == {
        "train/loss": [(1, 1.0), (2, 0.5), (5, pytest.approx(0.2))],
        "train/tokens": [(1, 1000.0), (2, 2000.0), (5, 5000.0)],
        "train/lr": [(1, 0.125), (2, 0.25), (5, 0.625)],
        "accuracy": [(5, 0.75)],
    }
    (path,) = _files(tmp_path)
    events = _raw_events(path)
    assert events[0].file_version == "brain.Event:2"
    assert before <= events[0].wall_time <= after
    assert [e.step for e in events[1:]] == [1, 2, 5, 5]
    assert all(before <= e.wall_time <= after for e in events)
    # The loader the server uses (with its compat migrations) reads it too, as scalars.
    loaded = list(EventFileLoader(str(path)).Load())
    assert loaded[0].file_version == "brain.Event:2"
    assert [e.step for e in loaded] == [e.step for e in events]
    assert _server_scalars(tmp_path)["train/loss"] == _scalars(tmp_path)["train/loss"]


@pytest.mark.parametrize("step", [0, 1, 127, 128, 300, 2**40, 2**63 - 1, -1])
def test_step_varint_round_trip(tmp_path: Path, step: int) -> None:
    with EventWriter(tmp_path) as writer:
        writer.scalars(step, {"x": 1.5})
    (path,) = _files(tmp_path)
    event = _raw_events(path)[1]
    assert event.step == step
    assert [(v.tag, v.simple_value) for v in event.summary.value] == [("x", 1.5)]


def _record_offsets(data: bytes) -> list[tuple[int, int]]:
    """(start, data length) of each TFRecord in a file."""
    offsets, at = [], 0
    while at < len(data):
        (length,) = struct.unpack_from("<Q", data, at)
        offsets.append((at, length))
        at += 12 + length + 4
    return offsets


@pytest.mark.parametrize(
    ("where", "message"), [("data", "event crc32"), ("length", "header crc32")]
)
def test_corrupted_record_is_detected(tmp_path: Path, where: str, message: str) -> None:
    with EventWriter(tmp_path) as writer:
        writer.scalars(1, {"loss": 1.0})
        writer.scalars(2, {"loss": 2.0})
    (path,) = _files(tmp_path)
    data = bytearray(path.read_bytes())
    records = _record_offsets(bytes(data))
    assert len(records) == 3  # file_version + 2 summaries
    assert [e.step for e in _raw_events(path)] == [0, 1, 2]  # intact: every CRC checks out

    start, _ = records[1]
    data[start + (12 + 3 if where == "data" else 0)] ^= 0x01
    path.write_bytes(bytes(data))

    reader = PyRecordReader_New(str(path).encode())
    reader.GetNext()  # the untouched file_version record
    with pytest.raises(errors.DataLossError, match=message):
        reader.GetNext()
    # TensorBoard's loader stops at the bad record instead of returning garbage.
    assert [e.step for e in _raw_events(path)] == [0]
    assert _scalars(tmp_path) == {}


def test_resume_purges_what_the_old_run_logged_after_the_checkpoint(tmp_path: Path) -> None:
    with EventWriter(tmp_path) as first:
        for step in range(1, 11):
            first.scalars(step, {"loss": float(step)}, prefix="train")
    with EventWriter(tmp_path) as second:  # resumed from the checkpoint at step 5
        second.start_session(5)
        for step in range(6, 9):
            second.scalars(step, {"loss": 100.0 + step}, prefix="train")

    assert len(_files(tmp_path)) == 2
    assert _scalars(tmp_path) == {
        "train/loss": [(s, float(s)) for s in range(1, 6)] + [(6, 106.0), (7, 107.0), (8, 108.0)]
    }


def test_resume_in_the_servers_loader_needs_a_start_in_every_run(tmp_path: Path) -> None:
    def run(logdir: Path, start: int, steps: range, offset: float, session: bool) -> None:
        with EventWriter(logdir) as writer:
            if session:
                writer.start_session(start)
            for step in steps:
                writer.scalars(step, {"loss": offset + step})

    resumed = [(s, float(s)) for s in range(1, 6)] + [(6, 106.0), (7, 107.0), (8, 108.0)]
    stale = [(s, float(s)) for s in range(1, 11)] + [(6, 106.0), (7, 107.0), (8, 108.0)]

    both = tmp_path / "both"
    run(both, 0, range(1, 11), 0.0, session=True)
    run(both, 5, range(6, 9), 100.0, session=True)
    assert _server_scalars(both) == {"loss": resumed}
    assert _scalars(both) == {"loss": resumed}

    # Observed TensorBoard behaviour the protocol works around: the server's loader takes a
    # run's first START as its beginning, not a restart, and with no START at all neither
    # loader purges (file_version 2 turns off the out-of-order-step heuristic).
    only_resumed = tmp_path / "only_resumed"
    run(only_resumed, 0, range(1, 11), 0.0, session=False)
    run(only_resumed, 5, range(6, 9), 100.0, session=True)
    assert _server_scalars(only_resumed) == {"loss": stale}
    none = tmp_path / "none"
    run(none, 0, range(1, 11), 0.0, session=False)
    run(none, 5, range(6, 9), 100.0, session=False)
    assert _scalars(none) == {"loss": stale}


def test_disabled_writer_creates_nothing(tmp_path: Path) -> None:
    logdir = tmp_path / "not" / "here"
    with EventWriter(logdir, enabled=False) as writer:
        writer.scalars(1, {"loss": 1.0})
        writer.start_session(1)
        assert writer.path is None
    writer.close()
    assert not logdir.exists()
    assert list(tmp_path.iterdir()) == []


def test_writers_in_the_same_second_get_new_files_in_creation_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logdir = tmp_path / "a" / "b"  # parents are created
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.25)
    paths = []
    for index in range(12):  # past 9, so a plain counter would sort "10" before "2"
        with EventWriter(logdir) as writer:
            writer.scalars(index, {"index": float(index)})
            paths.append(Path(writer.path))
    assert len(set(paths)) == 12
    assert paths == _files(logdir)  # name order is creation order, which is read order
    assert (
        paths[0].name
        == f"events.out.tfevents.1800000000.{socket.gethostname()}.{os.getpid()}.jdjudge"
    )
    assert all(IsSummaryEventsFile(str(p)) for p in paths)
    # Each file has exactly its own writer's events: nothing was appended to an old file.
    for index, path in enumerate(paths):
        assert [e.step for e in _raw_events(path)] == [0, index]
    assert _scalars(logdir) == {"index": [(i, float(i)) for i in range(12)]}


def test_events_are_on_disk_before_close(tmp_path: Path) -> None:
    writer = EventWriter(tmp_path)
    writer.scalars(3, {"loss": 0.5})
    assert _scalars(tmp_path) == {"loss": [(3, 0.5)]}  # readable while still open
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(RuntimeError, match="after close"):
        writer.scalars(4, {"loss": 0.25})
