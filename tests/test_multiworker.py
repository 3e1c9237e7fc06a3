"""Two workers on this machine (TF_CONFIG on localhost ports, one CPU thread each) under
MultiWorkerMirroredStrategy: one step equals the one-process step of the same global batch; the real `mfport
train` of the tiny model, one worker SIGKILLed mid-run and the job restarted, resumes from the chief's last
checkpoint on both workers and ends with identical weights."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tensorflow as tf
from conftest import mfport_command, without_xla_cache

ROOT = Path(__file__).resolve().parents[1]
WORKERS = 2
pytestmark = pytest.mark.slow


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _worker_env(ports: list[int], index: int) -> dict[str, str]:
    cluster = {"cluster": {"worker": [f"localhost:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
    return {**without_xla_cache(dict(os.environ)), "TF_CONFIG": json.dumps(cluster), "TF_NUM_INTRAOP_THREADS": "1",
            "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def _start(command: list[str], log: Path, ports: list[int], index: int) -> subprocess.Popen:
    with log.open("w") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT,
                                env=_worker_env(ports, index))


def _finish(processes: list[subprocess.Popen], logs: list[Path], timeout: float = 600) -> list[str]:
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            raise
    texts = [log.read_text() for log in logs]
    for process, text in zip(processes, texts, strict=True):
        assert process.returncode == 0, text[-4000:]
    return texts


def test_one_step_equals_the_one_process_step_of_the_global_batch(dataset: Path, tiny, tmp_path: Path) -> None:
    converted, config = tiny
    ports = _free_ports(WORKERS)
    command = [sys.executable, str(ROOT / "tests" / "multiworker_check.py"), str(dataset / "records" / "train-*"),
               str(config), str(converted)]
    logs = [tmp_path / f"worker{i}.log" for i in range(WORKERS)]
    texts = _finish([_start(command, logs[i], ports, i) for i in range(WORKERS)], logs)
    results = [json.loads(text.strip().splitlines()[-1]) for text in texts]
    chief = results[0]
    print(json.dumps(chief))  # the figures (pytest -s shows them)
    assert [r["replicas"] for r in results] == [WORKERS] * WORKERS
    assert chief["host_batch_reproduced"] and chief["hosts_differ"]  # each host read its own shard, reproducibly
    assert results[0]["digest"] == results[1]["digest"]  # the all-reduce left both workers with the same weights
    assert results[0]["loss"] == results[1]["loss"]
    # The same terms summed in another order (per worker, then across): float32 summation error, ~1e-7 relative.
    assert chief["loss"] == pytest.approx(chief["one_process_loss"], rel=1e-5)
    # SGD at lr 1: the weight change is the all-reduced gradient; equal up to float32 summation order.
    assert chief["max_weight_update"] > 1e-3
    assert chief["max_weight_difference"] <= 1e-5 * chief["max_weight_update"], chief


def _logged_steps(text: str) -> list[int]:
    """Steps of the train loops' end-of-loop lines ("train | step: 4 | steps/sec: ... | output: ...")."""
    return [int(m) for m in re.findall(r"^train \| step:\s+(\d+) \| steps/sec", text, flags=re.MULTILINE)]


def _digest(text: str, worker: int) -> tuple[int, str]:
    found = re.search(rf"^worker {worker}: step (\d+), weights sha256 ([0-9a-f]+)", text, flags=re.MULTILINE)
    assert found, text[-3000:]
    return int(found.group(1)), found.group(2)


def _latest_step(model_dir: Path) -> int:
    latest = tf.train.latest_checkpoint(str(model_dir))
    return 0 if latest is None else int(latest.rsplit("-", 1)[1])


def test_worker_killed_mid_run_and_restarted_resumes_from_the_last_checkpoint(dataset: Path, tiny,
                                                                              tmp_path: Path) -> None:
    converted, config = tiny
    model_dir, steps, interval = tmp_path / "run", 12, 2
    command = [*mfport_command(), "train", "--model-dir", str(model_dir), "--config_file", str(config),
               "--init-from", str(converted), "--train-data", str(dataset / "records" / "train-*"),
               "--steps", str(steps), "--params_override",
               f"runtime.distribution_strategy=multi_worker_mirrored,trainer.checkpoint_interval={interval},"
               f"trainer.steps_per_loop={interval},trainer.summary_interval={interval},task.jit_compile=false,"
               "task.train_data.global_batch_size=2"]
    ports = _free_ports(WORKERS)
    first = [tmp_path / f"first{i}.log" for i in range(WORKERS)]
    processes = [_start(command, first[i], ports, i) for i in range(WORKERS)]
    deadline = time.monotonic() + 600
    while _latest_step(model_dir) < 2 * interval:
        assert all(p.poll() is None for p in processes), [log.read_text()[-3000:] for log in first]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    processes[1].send_signal(signal.SIGKILL)
    # The chief's next all-reduce has no peer: it fails (or hangs) and the job is restarted as a whole.
    try:
        processes[0].wait(timeout=120)
    except subprocess.TimeoutExpired:
        processes[0].kill()
        processes[0].wait()
    processes[1].wait()
    resumed_from = _latest_step(model_dir)
    assert 2 * interval <= resumed_from < steps
    before = _logged_steps(first[0].read_text())
    assert [s for s in before if s <= resumed_from] == list(range(interval, resumed_from + 1, interval))

    ports = _free_ports(WORKERS)
    second = [tmp_path / f"second{i}.log" for i in range(WORKERS)]
    texts = _finish([_start(command, second[i], ports, i) for i in range(WORKERS)], second)
    # Both workers continue from the chief's checkpoint: every step after it exactly once, none before it.
    for text in texts:
        assert _logged_steps(text) == list(range(resumed_from + interval, steps + 1, interval)), text[-3000:]
    (step0, digest0), (step1, digest1) = _digest(texts[0], 0), _digest(texts[1], 1)
    assert step0 == step1 == steps and digest0 == digest1
    assert _latest_step(model_dir) == steps
    # The chief alone writes into the model dir: its checkpoints, its summaries, one params.yaml.
    assert (model_dir / "params.yaml").is_file() and not list(model_dir.glob("workertemp*"))
