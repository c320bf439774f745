"""Build the bundled quickstart's models and example files: ``python -m tools.make_quickstart``.

Three tiny Llama decoders of one architecture and tokenizer, a few hundred KB each, trained deterministically:
``general`` on a mix of synthetic tasks, then ``sentiment`` and ``topic`` fine-tuned from it on one task each
(so they forget the rest, as fine-tunes do, and merging recovers it). The example files are what the
quickstart's ``cocktail.yml`` computes weights from (``sentiment-examples.jsonl``) and evaluates on (the held-
out sets). Re-running rewrites exactly the same models and files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from tools import tiny_models, tiny_tasks

QUICKSTART = Path(__file__).resolve().parent.parent / "examples" / "quickstart"
EXAMPLE_FILES = {  # file name -> (task, number of records, seed)
    "sentiment-examples.jsonl": ("sentiment", 5, 101),
    "sentiment-heldout.jsonl": ("sentiment", 20, 102),
    "topic-heldout.jsonl": ("topic", 20, 103),
}


def build(root: Path) -> dict[str, Path]:
    """Write ``root/models/{general,sentiment,topic}`` and ``root/data/*.jsonl``; return the model folders."""
    models, data = root / "models", root / "data"
    for name in ("general", "sentiment", "topic"):
        shutil.rmtree(models / name, ignore_errors=True)
    models.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="quickstart-") as scratch:
        base = tiny_models.save_llama(Path(scratch) / "base", seed=0)
        general = tiny_tasks.train_decoder(base, models / "general", "mix", steps=25)
    folders = {
        "general": general,
        "sentiment": tiny_tasks.train_decoder(general, models / "sentiment", "sentiment", steps=40, seed=1),
        "topic": tiny_tasks.train_decoder(general, models / "topic", "topic", steps=40, seed=2),
    }
    for file_name, (task, count, seed) in EXAMPLE_FILES.items():
        records = tiny_tasks.make_examples(task, count, seed)
        (data / file_name).write_text("".join(json.dumps(record) + "\n" for record in records))
    return folders


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main() -> None:
    from cocktail_bot.evaluate import evaluate
    from cocktail_bot.weights import compute_weights

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", type=Path, default=QUICKSTART, help="quickstart folder (default: %(default)s)"
    )
    root = parser.parse_args().root
    folders = build(root)
    total = sum(folder_bytes(folder) for folder in [*folders.values(), root / "data"])
    print(f"wrote {root}: {total / 1e6:.2f} MB")
    result = compute_weights(
        list(folders.values()), "decoder", root / "data" / "sentiment-examples.jsonl", progress=False
    )
    for name, loss, weight in zip(folders, result.losses, result.weights, strict=True):
        print(f"weights on sentiment-examples: {name:<10} loss {loss:7.4f}  weight {weight:.4f}")
    sets = {name: root / "data" / f"{name}-heldout.jsonl" for name in ("sentiment", "topic")}
    for row in evaluate(folders, "decoder", sets, progress=False):
        print(f"eval {row.eval_set:<10} {row.model:<10} loss {row.loss:7.4f}")


if __name__ == "__main__":
    main()
