"""Hub to Hub on a throttled network: three ~1 GB sources merged and published back, two ways, in one run.

* ``cocktail``: ``cocktail run cocktail.yml --publish`` without ``--out``: sources read by range requests,
  each shard uploaded as it is written (``preupload_lfs_files``), one commit at the end.
* ``download-merge-upload``, what mergekit users run today: ``snapshot_download`` of each source,
  ``mergekit-yaml`` (linear, bf16), ``upload_folder``.
* ``transport``, the floor as this machine delivers it at the moment of the run: the same bytes moved through
  the same client with nothing else done: the three sources streamed (``huggingface_hub``'s HTTP session) while
  a file of the merged model's size is uploaded (``upload_file``), all at once. Its time is taken inside the
  child, after start-up and after writing the file to upload. On a shared machine the other shapes are best
  read against this row (``vs transport``): it pays the same CPU for HTTP and the test server, which the
  bandwidth floor does not know about.

The Hub is ``tests/hub_server.py`` in a child process, its file bodies sent at ``--down`` MB/s and uploads
received at ``--up`` MB/s (each limit shared by all connections). The network floor is the larger of bytes
down / down bandwidth and bytes up / up bandwidth (the bytes each run moved, counted by the server). Each run
is a child process with its own working directory, ``HOME``, ``HF_HOME`` and ``TMPDIR`` in one folder, whose
size a thread samples every 0.1 s (peak disk); peak RSS is the child's with its descendants (``os.wait4``).
The sources (random bf16 Llamas with SmolLM2-1.7B's shapes cut to ``--layers`` layers; 6 layers: 1.0 GB) are
generated once into ``bench/work/hub-<layers>l``.

    python bench/bench_hub_stream.py                                   # 3 x 1.0 GB, 100 MB/s down, 50 up
    python bench/bench_hub_stream.py --layers 1 --down 40 --up 20      # a quick look (3 x 0.34 GB)
    python bench/bench_hub_stream.py --layers 1 --tools transport cocktail
    python bench/bench_hub_stream.py --tools transport cocktail --shard-size 100MB
"""

from __future__ import annotations

import argparse
import fcntl
import json
import mmap
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "work"
WEIGHTS = (0.5, 0.3, 0.2)
SHARD_SIZE = "250MB"  # the default of --shard-size
TOOLS = ("transport", "cocktail", "download-merge-upload")
sys.path.insert(0, str(ROOT))


def make_sources(layers: int) -> list[Path]:
    """Three source models (generated once, shared by every engineer's runs under a lock)."""
    from bench.make_llama_case import smollm2_config, write_model

    case = WORK / f"hub-{layers}l"
    case.mkdir(parents=True, exist_ok=True)
    with open(WORK / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for seed in range(3):
            write_model(case / f"model-{seed}", smollm2_config(layers), seed)
    return [case / f"model-{seed}" for seed in range(3)]


# -- the Hub, in its own process ----------------------------------------------------------------------------


def serve(down: float, up: float, models: list[str]) -> None:
    """Seed the sources (memory-mapped, so they stay in the page cache), print the endpoint, then answer
    'stats' (bytes sent and received so far) until stdin closes."""
    from tests.hub_server import WRITE_TOKEN, HubServer

    server = HubServer().start()
    server.bandwidth_down, server.bandwidth_up = down * 1e6, up * 1e6
    for index, folder in enumerate(map(Path, models)):
        files: dict = {}
        for path in sorted(folder.iterdir()):
            if not path.name.endswith(".safetensors"):
                files[path.name] = path.read_bytes()
                continue
            with open(path, "rb") as file:
                files[path.name] = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        server.commit(f"cocktail/bench-src-{index}", files)
    print(json.dumps({"endpoint": server.endpoint, "token": WRITE_TOKEN}), flush=True)
    for line in sys.stdin:
        if line.strip() == "stats":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            cpu = usage.ru_utime + usage.ru_stime
            print(json.dumps({"down": server.down.total, "up": server.up.total, "cpu": cpu}), flush=True)
    server.stop()


class Hub:
    def __init__(self, down: float, up: float, models: list[Path]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(down), str(up), *map(str, models)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        info = json.loads(self.process.stdout.readline())
        self.endpoint, self.token = info["endpoint"], info["token"]

    def stats(self) -> dict[str, float]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("stats\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


# -- the two shapes -----------------------------------------------------------------------------------------


def cocktail_command(folder: Path, shard_size: str) -> list[str]:
    models = "".join(
        f"  - {{id: cocktail/bench-src-{index}, weight: {weight}}}\n" for index, weight in enumerate(WEIGHTS)
    )
    (folder / "cocktail.yml").write_text(
        "version: 1\nname: bench-streamed\ntype: decoder\nmodels:\n"
        + models
        + f"merge: {{dtype: bfloat16, shard_size: {shard_size}}}\n"
        + "output: {repo: cocktail/bench-cocktail, private: false, license: apache-2.0}\n"
    )
    return [sys.executable, "-m", "cocktail_bot", "-q", "run", "cocktail.yml", "--publish"]


BASELINE = """
import subprocess, sys
from huggingface_hub import create_repo, snapshot_download, upload_folder
mergekit, weights = sys.argv[1], [float(w) for w in sys.argv[2:]]
paths = [snapshot_download(f"cocktail/bench-src-{i}") for i in range(len(weights))]
entries = "".join(f"  - model: {p}\\n    parameters: {{weight: {w}}}\\n" for p, w in zip(paths, weights))
open("mergekit.yml", "w").write("merge_method: linear\\ndtype: bfloat16\\nmodels:\\n" + entries)
subprocess.run([mergekit, "mergekit.yml", "merged", "--no-cuda", "--quiet"], check=True)
create_repo("cocktail/bench-baseline", exist_ok=True)
upload_folder(repo_id="cocktail/bench-baseline", folder_path="merged", repo_type="model")
"""


def baseline_command(folder: Path) -> list[str]:
    mergekit = str(Path(sys.executable).parent / "mergekit-yaml")
    return [sys.executable, "-c", BASELINE, mergekit, *map(str, WEIGHTS)]


TRANSPORT = """
import os, sys, threading, time
from huggingface_hub import HfApi, hf_hub_url
from huggingface_hub.utils import build_hf_headers, get_session
sources, size = int(sys.argv[1]), int(sys.argv[2])
with open("upload.bin", "wb") as file:  # random, so the Hub cannot have it already
    for start in range(0, size, 2**26):
        file.write(os.urandom(min(2**26, size - start)))
def download(index):
    url = hf_hub_url(f"cocktail/bench-src-{index}", "model.safetensors")
    with get_session().stream("GET", url, headers=build_hf_headers()) as response:
        response.raise_for_status()
        for _ in response.iter_bytes():
            pass
def upload():
    HfApi().create_repo("cocktail/bench-transport", exist_ok=True)
    HfApi().upload_file(path_or_fileobj="upload.bin", path_in_repo="upload.bin", repo_id="cocktail/bench-transport")
started = time.perf_counter()
threads = [threading.Thread(target=download, args=(i,)) for i in range(sources)]
threads.append(threading.Thread(target=upload))
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(f"transport seconds {time.perf_counter() - started}")
"""


def transport_command(source_bytes: int) -> list[str]:
    return [sys.executable, "-c", TRANSPORT, str(len(WEIGHTS)), str(source_bytes // len(WEIGHTS))]


def folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def measure(tool: str, hub: Hub, run_dir: Path, source_bytes: int, shard_size: str) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "tmp").mkdir(parents=True)
    if tool == "transport":
        command = transport_command(source_bytes)
    else:
        command = cocktail_command(run_dir, shard_size) if tool == "cocktail" else baseline_command(run_dir)
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_TOKEN": hub.token,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HOME": str(run_dir),
        "HF_HOME": str(run_dir / "hf"),
        "TMPDIR": str(run_dir / "tmp"),
        "PYTHONPATH": str(ROOT),
        "TQDM_DISABLE": "1",
    }
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            peak[0] = max(peak[0], folder_bytes(run_dir))

    sampler = threading.Thread(target=sample, daemon=True)
    before = hub.stats()
    log = run_dir.parent / f"{tool}.log"
    started = time.perf_counter()
    with open(log, "wb") as output:
        child = subprocess.Popen(command, cwd=run_dir, env=env, stdout=output, stderr=output)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    after = hub.stats()
    if os.waitstatus_to_exitcode(status):
        print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
        raise SystemExit(f"{tool} failed")
    if tool == "transport":  # the transfers only, without start-up and writing the file to upload
        seconds = float(log.read_text().split("transport seconds ")[-1])
    shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "tool": tool,
        "seconds": seconds,
        "down": after["down"] - before["down"],
        "up": after["up"] - before["up"],
        "peak_disk": peak[0],
        "peak_rss": usage.ru_maxrss * 1024,
        "cpu": usage.ru_utime + usage.ru_stime,
        "server_cpu": after["cpu"] - before["cpu"],
    }


def table(results: list[dict], down: float, up: float) -> str:
    """Wall time against the bandwidth floor and against the transport row of the same run; the CPU seconds
    of the run's process (with its children) and of the test Hub while it ran."""
    transport = next((r["seconds"] for r in results if r["tool"] == "transport"), None)
    lines = [
        "| shape | wall time (s) | network floor (s) | vs floor | vs transport | CPU (s) | Hub CPU (s) | GB down "
        "| GB up | peak disk (GB) | peak RSS (GB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        floor = max(r["down"] / (down * 1e6), r["up"] / (up * 1e6))
        versus = f"{r['seconds'] / transport:.2f}x" if transport else ""
        lines.append(
            f"| {r['tool']} | {r['seconds']:.1f} | {floor:.1f} | {r['seconds'] / floor:.2f}x | {versus} | "
            f"{r['cpu']:.1f} | {r['server_cpu']:.1f} | {r['down'] / 1e9:.2f} | {r['up'] / 1e9:.2f} | "
            f"{r['peak_disk'] / 1e9:.2f} | {r['peak_rss'] / 1e9:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=6, help="decoder layers per source (6: 1.0 GB)")
    parser.add_argument("--down", type=float, default=100.0, help="download bandwidth, MB/s")
    parser.add_argument("--up", type=float, default=50.0, help="upload bandwidth, MB/s")
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument(
        "--shard-size",
        default=SHARD_SIZE,
        help=f"cocktail's output shard size (default {SHARD_SIZE}): the last shard's upload follows the merge",
    )
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        down, up, *models = args.serve
        serve(float(down), float(up), models)
        return
    models = make_sources(args.layers)
    sizes = sum((model / "model.safetensors").stat().st_size for model in models)
    load = os.getloadavg()[0]
    hub = Hub(args.down, args.up, models)
    try:
        results = []
        for tool in args.tools:
            result = measure(tool, hub, WORK / f"hub-run-{os.getpid()}" / tool, sizes, args.shard_size)
            print(f"{tool}: {result['seconds']:.1f} s", flush=True)
            results.append(result)
    finally:
        hub.close()
        shutil.rmtree(WORK / f"hub-run-{os.getpid()}", ignore_errors=True)
    report = (
        f"{os.cpu_count()} CPUs; sources 3 x {sizes / 3e9:.2f} GB; {args.down:g} MB/s down, {args.up:g} MB/s up; "
        f"shard size {args.shard_size}; load average {load:.1f} at the start; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n" + table(results, args.down, args.up)
    )
    print(report)
    (WORK / f"hub-stream-{args.layers}l.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
