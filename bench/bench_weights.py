"""Example-based weights: cocktail-bot (block-streamed and whole-model) vs LM_Cocktail 0.0.4, per subprocess.

    python -m bench.bench_weights [--models 3] [--hidden 512] [--layers 12] [--examples 4] [--workdir DIR]
    python -m bench.bench_weights --case bench/work/llama-1.7b [--models 3] [--examples 4]

Without ``--case``, builds N Llama-architecture decoders of one config with random weights (float32,
safetensors); with it, uses the model folders ``model-*`` under the case folder (``bench/make_llama_case.py``
writes them). Then runs, each in a fresh Python process on the same examples: ``cocktail weights`` (the CLI,
block-streamed: one module's weights resident), the whole-model path it replaced (each model loaded whole in
float32, ``score_models(load="whole")``), our ``mix_models_with_data`` (weights + streaming merge + save; not
with ``--case``), and LM_Cocktail's ``mix_models_with_data`` at its defaults (temperature 5, batch size 2,
max_input_length 2048) when its N+1 float32 models fit in the free memory. The generated tokenizer gets a pad
token, because LM_Cocktail fails without one. Each child reports its own peak RSS (``ru_maxrss``) and the
weights it computed, so the table also shows that all agree.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = {
    "`cocktail weights` (block-streamed)": "ours_weights",
    "whole-model path (before)": "ours_whole",
    "cocktail-bot mix_models_with_data": "ours_mix",
    "LM_Cocktail mix_models_with_data": "lm_cocktail_mix",
}


def make_models(workdir: Path, count: int, hidden: int, layers: int) -> list[str]:
    import torch
    from transformers import LlamaForCausalLM

    from tools import tiny_models

    tokenizer = tiny_models.make_llama_tokenizer()
    tokenizer.pad_token = "<unk>"
    config = tiny_models.llama_config(
        len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=2048,
    )
    folders = []
    for index in range(count):
        folder = workdir / f"model-{index}"
        if not (folder / "model.safetensors").exists():
            torch.manual_seed(index)
            LlamaForCausalLM(config).save_pretrained(folder)
            tokenizer.save_pretrained(folder)
        folders.append(str(folder))
    return folders


def float32_bytes(folder: str) -> int:
    """A model's size with every tensor in float32."""
    from cocktail_bot.checkpoint import Checkpoint

    with Checkpoint(folder) as checkpoint:
        return sum(checkpoint.info(name).numel * 4 for name in checkpoint.names)


def free_memory() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def child(kind: str, folders: list[str], examples_path: Path, output: Path) -> None:
    """Run one contender and print a JSON line: its weights and its own peak RSS."""
    examples = json.loads(examples_path.read_text())
    if kind == "ours_weights":
        from cocktail_bot.cli import main

        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            args = ["weights", *folders, "--type", "decoder", "--examples", str(examples_path), "--json"]
            main(["--quiet", *args, "--device", "cpu"])
        weights = json.loads(printed.getvalue())["weights"]
    elif kind == "ours_whole":
        from cocktail_bot.scoring import score_models
        from cocktail_bot.weights import rounded_weights

        scoring = score_models(
            folders, "decoder", {"e": examples}, device="cpu", load="whole", progress=False
        )
        weights = rounded_weights([round(s["e"].loss, 4) for s in scoring.scores], 5.0)
    else:
        if kind == "ours_mix":
            from cocktail_bot.api import mix_models_with_data
        else:
            from LM_Cocktail import mix_models_with_data
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):  # both print "name weight" per model, LM_Cocktail's format
            mix_models_with_data(folders, "decoder", example_ata=examples, output_path=str(output))
        lines = [line for line in printed.getvalue().splitlines() if line.startswith(tuple(folders))]
        weights = [float(line.rsplit(" ", 1)[1]) for line in lines[-len(folders) :]]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"weights": weights, "peak_rss": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--examples", type=int, default=4)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument(
        "--case", type=Path, help="a folder of model-* folders to use instead of generated ones"
    )
    parser.add_argument("--child", choices=sorted(RUNS.values()), help=argparse.SUPPRESS)
    parser.add_argument("--folders", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-weights-"))
    if args.child:
        child(args.child, args.folders, workdir / "examples.json", workdir / f"out-{args.child}")
        return

    from tools import tiny_tasks

    workdir.mkdir(parents=True, exist_ok=True)
    if args.case:
        folders = [str(folder) for folder in sorted(args.case.glob("model-*"))[: args.models]]
    else:
        folders = make_models(workdir, args.models, args.hidden, args.layers)
    (workdir / "examples.json").write_text(json.dumps(tiny_tasks.make_examples("mix", args.examples, seed=7)))
    params = [float32_bytes(folder) / 4 for folder in folders]
    print(
        f"{len(folders)} Llama models ({', '.join(folders)}), {params[0] / 1e9:.2f}B params each "
        f"({sum(params) * 4 / 1e9:.1f} GB in float32 in all); {args.examples} examples; workdir {workdir}\n"
    )
    runs = dict(RUNS)
    if args.case:
        del runs["cocktail-bot mix_models_with_data"]  # the merge is benchmarked by bench_merge.py
    if (len(folders) + 1) * max(params) * 4 > free_memory() * 0.8:  # LM_Cocktail: every state dict + a model
        print("LM_Cocktail skipped: its N+1 float32 models do not fit in the free memory\n")
        del runs["LM_Cocktail mix_models_with_data"]
    if max(params) * 4 > free_memory() * 0.8:
        print("whole-model path skipped: one float32 model does not fit in the free memory\n")
        del runs["whole-model path (before)"]
    # Same start for every contender: model files in the page cache (as far as they fit), bytecode compiled.
    for folder in folders:
        for path in Path(folder).iterdir():
            with path.open("rb") as file:
                while file.read(64 * 2**20):
                    pass
    subprocess.run(
        [sys.executable, "-c", "import LM_Cocktail, cocktail_bot.api, cocktail_bot.weights"], check=True
    )
    print("| run | wall time (s) | peak RSS (GB) | weights |")
    print("| --- | ---: | ---: | --- |")
    for label, kind in runs.items():
        start = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.bench_weights",
                "--child",
                kind,
                "--workdir",
                str(workdir),
                "--folders",
                *folders,
            ],
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
        if done.returncode:
            print(f"| {label} | failed: {done.stderr.strip().splitlines()[-1]} | | |")
            continue
        report = json.loads(done.stdout.strip().splitlines()[-1])
        weights = ", ".join(f"{w:.4f}" for w in report["weights"])
        print(f"| {label} | {seconds:.1f} | {report['peak_rss'] / 1e9:.2f} | {weights} |")


if __name__ == "__main__":
    main()
