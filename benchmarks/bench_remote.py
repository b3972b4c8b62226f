"""Remote copies: upload throughput of aegis-ckpt's uploader against a plain ``s3fs.put`` of the same folder, and
what an upload running in the background costs the training steps.

    .venv/bin/python benchmarks/bench_remote.py                  # ~200 MB checkpoint, 5 rounds, 3 repeats
    .venv/bin/python benchmarks/bench_remote.py --mb 64 --rounds 2 --repeats 1

The S3 server is moto's, started in a separate process on 127.0.0.1 (so it shares no GIL with the client being
measured, but it shares the machine's cores: its CPU per GB is measured too). Throughput: the same committed
folder (one large weights file, an optimizer file, small JSON files) uploaded alternately by the background
mirror (``RemoteMirror.submit`` then ``flush``: its worker thread, the files as one batch, multipart, size check,
manifest last) and by ``fs.put(folder, recursive=True)``; each round uploads A B B A and its ratio is the plain
uploads' time over the mirror's. Step cost:
a CPU MLP training loop timed with no upload, then while ``RemoteMirror`` uploads the folder in the background,
then with no upload again, several times; medians.
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

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aegis_ckpt.options import RemoteOptions  # noqa: E402
from aegis_ckpt.remote.location import RemoteLocation  # noqa: E402
from aegis_ckpt.remote.mirror import RemoteMirror  # noqa: E402
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


def _server_cpu(server: psutil.Process) -> float:
    t = server.cpu_times()
    return t.user + t.system


def throughput(
    location: RemoteLocation, folder: Path, work: Path, rounds: int, server: psutil.Process
) -> dict:
    """The mirror (submit, then flush: its worker thread, the batch of files, size check, manifest last) against
    ``fs.put(folder, recursive=True)``; CPU of the client and of the S3 server.

    Each round uploads four times, in the order A B B A (odd rounds: B A A B), and its ratio is the plain
    uploads' time over the mirror's: a load that grows or fades during the round (other jobs on the machine)
    weighs on both alike, where one upload each would hand it to whichever went second. Single uploads of the
    same folder to this server scatter by a factor of two on a busy machine. One untimed upload of each comes
    first (both clients warm)."""
    fs, size = location.fs, sum(p.stat().st_size for p in folder.iterdir())
    rates: dict[str, list[float]] = {"ours": [], "plain": []}
    cpu: dict[str, list[float]] = {"ours": [], "plain": []}
    server_cpu: dict[str, list[float]] = {"ours": [], "plain": []}
    ratios = []
    # One mirror for all rounds, as a run has: its remote is opened once and its worker thread started once.
    mirror = RemoteMirror(RemoteOptions(url=f"{location.url}/mirror"), work / "out")
    # One untimed upload each first: the mirror's S3 client is created at its first request (credentials,
    # endpoint, connection pool: once per run), while ``fs`` has made requests already.
    mirror.submit(folder)
    assert mirror.flush(600), "the mirror did not finish its warm-up upload"
    fs.put(str(folder), f"{location.path('put')}/{folder.name}", recursive=True)
    for target in ("mirror", "put"):
        fs.rm(location.path(target), recursive=True)
    for r in range(rounds):
        order = ("ours", "plain", "plain", "ours") if r % 2 == 0 else ("plain", "ours", "ours", "plain")
        seconds = {"ours": 0.0, "plain": 0.0}
        for which in order:
            target = location.path("mirror" if which == "ours" else "put")
            t0, c0, s0 = time.perf_counter(), time.process_time(), _server_cpu(server)
            if which == "ours":
                mirror.submit(folder)
                assert mirror.flush(600), "the mirror did not finish its upload"
            else:
                fs.put(str(folder), f"{target}/{folder.name}", recursive=True)
            dt = time.perf_counter() - t0
            cpu[which].append((time.process_time() - c0) / (size / 1e9))
            server_cpu[which].append((_server_cpu(server) - s0) / (size / 1e9))
            rates[which].append(size / dt / 1e6)
            seconds[which] += dt
            fs.rm(target, recursive=True)
        ratios.append(seconds["plain"] / seconds["ours"])
    mirror.close(60)
    return {
        "size_mb": size / 1e6,
        "ours_mb_per_sec": rates["ours"],
        "plain_put_mb_per_sec": rates["plain"],
        "client_cpu_sec_per_gb": {k: statistics.median(v) for k, v in cpu.items()},
        "server_cpu_sec_per_gb": {k: statistics.median(v) for k, v in server_cpu.items()},
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
    }


def step_cost(location: RemoteLocation, folder: Path, output_dir: Path, steps: int, repeats: int) -> dict:
    """Step time of a CPU training loop with no upload and with the mirror uploading ``folder`` in the
    background, in the same process, ``repeats`` times (no upload before and after each upload)."""
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
    reps = []
    for rep in range(repeats):
        before = run(steps // 2)
        url = f"{location.url}/bg-{rep}"
        mirror = RemoteMirror(RemoteOptions(url=url), output_dir / f"bg-{rep}", location=RemoteLocation(url))
        mirror.submit(folder)
        t0, during = time.perf_counter(), []
        while mirror.pending:
            during += run(5)
        upload_sec = time.perf_counter() - t0
        mirror.close(60)
        after = run(steps // 2)
        idle = statistics.median(before + after)
        busy = statistics.median(during)
        reps.append(
            {
                "step_ms_idle": 1000 * idle,
                "step_ms_during_upload": 1000 * busy,
                "steps_during_upload": len(during),
                "upload_sec": upload_sec,
                "step_cost_pct": 100 * (busy / idle - 1),
            }
        )
    return {
        "repeats": reps,
        **{k: statistics.median(r[k] for r in reps) for k in reps[0]},
    }


def format_table(results: dict) -> str:
    """The two tables of docs/benchmarks.md's remote section, from one run's results."""
    t, s = results["throughput"], results["step_cost"]
    rounds = ", ".join(f"{100 * r:.0f} %" for r in t["ratios"])
    cpu, srv = t["client_cpu_sec_per_gb"], t["server_cpu_sec_per_gb"]
    costs = ", ".join(f"{r['step_cost_pct']:+.0f} %" for r in s["repeats"])
    return f"""| checkpoint | mirror upload | plain `s3fs` `fs.put` | ratio, median of {len(t["ratios"])} A-B-B-A rounds (each) | CPU per GB, client / S3 server (mirror; put) |
| --- | --- | --- | --- | --- |
| {t["size_mb"]:.0f} MB | {statistics.median(t["ours_mb_per_sec"]):.1f} MB/s | {statistics.median(t["plain_put_mb_per_sec"]):.1f} MB/s | {100 * t["ratio_median"]:.0f} % ({rounds}) | {cpu["ours"]:.1f} s / {srv["ours"]:.1f} s; {cpu["plain"]:.1f} s / {srv["plain"]:.1f} s |

| step, no upload | step, upload in the background | cost, median of {len(s["repeats"])} (each) | upload time |
| --- | --- | --- | --- |
| {s["step_ms_idle"]:.1f} ms | {s["step_ms_during_upload"]:.1f} ms ({s["steps_during_upload"]:.0f} steps) | {s["step_cost_pct"]:+.0f} % ({costs}) | {s["upload_sec"]:.1f} s |"""  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, default=200, help="checkpoint size in MB")
    p.add_argument("--rounds", type=int, default=5, help="throughput rounds (four uploads each: A B B A)")
    p.add_argument(
        "--steps", type=int, default=200, help="training steps timed without an upload, per repeat"
    )
    p.add_argument("--repeats", type=int, default=3, help="uploads in the background, each timed on its own")
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
            server = psutil.Process(proc.pid)
            results = {"throughput": throughput(location, folder, Path(tmp), a.rounds, server)}
            results["step_cost"] = step_cost(location, folder, Path(tmp) / "out", a.steps, a.repeats)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(format_table(results))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
