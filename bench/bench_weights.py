"""Example-based weights + merge: cocktail-bot vs LM_Cocktail 0.0.4, wall time and peak RSS per subprocess.

    python -m bench.bench_weights [--models 3] [--hidden 512] [--layers 12] [--examples 4] [--workdir DIR]

Builds N Llama-architecture decoders of one config with random weights (float32, safetensors) and a few
examples, then runs, each in a fresh Python process: our ``compute_weights`` alone, our
``mix_models_with_data`` (weights + streaming merge + save), and LM_Cocktail's ``mix_models_with_data`` at its
defaults (temperature 5, batch size 2, max_input_length 2048). The tokenizer gets a pad token, because
LM_Cocktail fails without one. Each child reports its own peak RSS (``ru_maxrss``) and the weights it
computed, so the table also shows that both agree.
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
    "cocktail-bot compute_weights": "ours_weights",
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


def child(kind: str, folders: list[str], examples_path: Path, output: Path) -> None:
    """Run one contender and print a JSON line: its weights and its own peak RSS."""
    examples = json.loads(examples_path.read_text())
    if kind == "ours_weights":
        from cocktail_bot.weights import compute_weights

        weights = compute_weights(folders, "decoder", examples, progress=False).weights
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
    parser.add_argument("--child", choices=sorted(RUNS.values()), help=argparse.SUPPRESS)
    parser.add_argument("--folders", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-weights-"))
    if args.child:
        child(args.child, args.folders, workdir / "examples.json", workdir / f"out-{args.child}")
        return

    from tools import tiny_tasks

    workdir.mkdir(parents=True, exist_ok=True)
    folders = make_models(workdir, args.models, args.hidden, args.layers)
    (workdir / "examples.json").write_text(json.dumps(tiny_tasks.make_examples("mix", args.examples, seed=7)))
    size = sum((Path(f) / "model.safetensors").stat().st_size for f in folders)
    print(
        f"{args.models} Llama models, hidden {args.hidden}, {args.layers} layers, "
        f"{size / args.models / 4e6:.0f}M params each ({size / 1e9:.2f} GB float32 in all); "
        f"{args.examples} examples; workdir {workdir}\n"
    )
    # Same start for every contender: model files in the page cache, libraries' bytecode compiled.
    for folder in folders:
        for path in Path(folder).iterdir():
            path.read_bytes()
    subprocess.run(
        [sys.executable, "-c", "import LM_Cocktail, cocktail_bot.api, cocktail_bot.weights"], check=True
    )
    print("| run | wall time (s) | peak RSS (GB) | weights |")
    print("| --- | ---: | ---: | --- |")
    for label, kind in RUNS.items():
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
