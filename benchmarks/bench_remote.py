"""Remote copies: upload throughput of aegis-ckpt's uploader against a plain ``s3fs.put`` of the same folder, and
what an upload running in the background costs the training steps.

    .venv/bin/python benchmarks/bench_remote.py                  # ~200 MB checkpoint, 3 rounds
    .venv/bin/python benchmarks/bench_remote.py --mb 64 --rounds 2

The S3 server is moto's, started in a separate process on 127.0.0.1 (so it shares no GIL with the client being
measured). Throughput: the same committed folder (one large weights file, an optimizer file, small JSON files)
uploaded alternately by ``upload_checkpoint`` (parallel files, multipart, size check, manifest last) and by
``fs.put(folder, recursive=True)``; the ratio is taken per round, side by side. Step cost: a CPU MLP training
loop timed with no upload, then with ``RemoteMirror`` uploading the folder in the background.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aegis_ckpt.options import RemoteOptions  # noqa: E402
from aegis_ckpt.remote.location import RemoteLocation  # noqa: E402
from aegis_ckpt.remote.mirror import RemoteMirror  # noqa: E402
from aegis_ckpt.remote.upload import upload_checkpoint  # noqa: E402
from aegis_ckpt.storage.commit import commit_checkpoint  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, endpoint
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto server did not start")


def make_checkpoint(folder: Path, total_mb: int) -> Path:
    folder.mkdir(parents=True)
    big = int(total_mb * 0.7) * 2**20
    (folder / "model.safetensors").write_bytes(os.urandom(big))
    (folder / "optimizer.pt").write_bytes(os.urandom(total_mb * 2**20 - big))
    for name in ("config.json", "trainer_state.json", "scheduler.pt", "rng_state.pth"):
        (folder / name).write_bytes(os.urandom(4096))
    commit_checkpoint(folder, step=1)
    return folder


def throughput(location: RemoteLocation, folder: Path, rounds: int) -> dict:
    fs, size = location.fs, sum(p.stat().st_size for p in folder.iterdir())
    ours, plain, cpu = [], [], {"ours": [], "plain": []}
    for r in range(rounds):
        for which in ("ours", "plain") if r % 2 == 0 else ("plain", "ours"):
            target = location.path(f"round-{r}-{which}")
            t0, c0 = time.perf_counter(), time.process_time()
            if which == "ours":
                upload_checkpoint(RemoteLocation(f"{location.url}/round-{r}-{which}"), folder)
            else:
                fs.put(str(folder), target, recursive=True)
            dt = time.perf_counter() - t0
            cpu[which].append((time.process_time() - c0) / (size / 1e9))
            (ours if which == "ours" else plain).append(size / dt / 1e6)
            fs.rm(target, recursive=True)
    ratios = [o / p for o, p in zip(ours, plain, strict=True)]
    return {
        "size_mb": size / 1e6,
        "ours_mb_per_sec": ours,
        "plain_put_mb_per_sec": plain,
        "client_cpu_sec_per_gb": {k: statistics.median(v) for k, v in cpu.items()},
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
    }


def step_cost(location: RemoteLocation, folder: Path, output_dir: Path, steps: int) -> dict:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 512))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(64, 512)

    def run(n: int) -> list[float]:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            model(x).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            times.append(time.perf_counter() - t0)
        return times

    run(20)  # warm up
    idle = run(steps)
    mirror = RemoteMirror(
        RemoteOptions(url=f"{location.url}/bg"), output_dir, location=RemoteLocation(f"{location.url}/bg")
    )
    mirror.submit(folder)
    t0 = time.perf_counter()
    during, upload_sec = [], None
    while mirror.pending:
        during += run(5)
    upload_sec = time.perf_counter() - t0
    mirror.close(60)
    after = run(steps)
    baseline = statistics.median(idle + after)
    return {
        "step_ms_idle": 1000 * baseline,
        "step_ms_during_upload": 1000 * statistics.median(during) if during else None,
        "steps_during_upload": len(during),
        "upload_sec": upload_sec,
        "step_cost_pct": 100 * (statistics.median(during) / baseline - 1) if during else None,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, default=200, help="checkpoint size in MB")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=200, help="training steps timed without an upload")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    proc, endpoint = start_server()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench-secret",
        AWS_ENDPOINT_URL=endpoint,
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = make_checkpoint(Path(tmp) / "checkpoint-1", a.mb)
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            location = RemoteLocation(f"s3://{bucket}/run")
            location.fs.mkdir(bucket)
            results = {"throughput": throughput(location, folder, a.rounds)}
            results["step_cost"] = step_cost(location, folder, Path(tmp) / "out", a.steps)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    t, s = results["throughput"], results["step_cost"]
    rounds = ", ".join(f"{100 * r:.0f} %" for r in t["ratios"])
    cpu = t["client_cpu_sec_per_gb"]
    print(
        f"| checkpoint | aegis-ckpt upload | plain s3fs put | ratio, median of {a.rounds} (each) | client CPU/GB |"
    )
    print("| --- | --- | --- | --- | --- |")
    print(
        f"| {t['size_mb']:.0f} MB | {statistics.median(t['ours_mb_per_sec']):.1f} MB/s | "
        f"{statistics.median(t['plain_put_mb_per_sec']):.1f} MB/s | {100 * t['ratio_median']:.0f} % ({rounds}) | "
        f"{cpu['ours']:.1f} s (put: {cpu['plain']:.1f} s) |"
    )
    print()
    print("| step, no upload | step, upload in background | cost | upload time |")
    print("| --- | --- | --- | --- |")
    print(
        f"| {s['step_ms_idle']:.2f} ms | {s['step_ms_during_upload']:.2f} ms ({s['steps_during_upload']} steps) | "
        f"{s['step_cost_pct']:+.1f} % | {s['upload_sec']:.1f} s |"
    )
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
