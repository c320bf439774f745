"""`cocktail weights`: each model's loss on a few examples of the target task, and the weights it gives."""

from __future__ import annotations

import argparse
import json

from cocktail_bot.commands import add_model_type_argument


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "weights",
        help="compute merge weights from a few examples of the target task",
        description="Compute each model's loss on the examples and the weights softmax(-loss / T), as "
        "LM-Cocktail does. MODEL is a local folder or a Hugging Face Hub reference (org/name or "
        "org/name@revision). Example "
        'files are a JSON list or JSONL: decoder {"input", "output"}; encoder and reranker '
        '{"query", "pos": [...], "neg": [...]}.',
    )
    parser.add_argument("models", nargs="+", metavar="MODEL", help="models of one architecture")
    add_model_type_argument(parser)
    parser.add_argument("--examples", required=True, metavar="FILE", help="example file (JSON list or JSONL)")
    parser.add_argument(
        "--temperature",
        type=float,
        default=5.0,
        help="softmax temperature: lower favours the best model more (default 5)",
    )
    parser.add_argument(
        "--max-input-length",
        type=int,
        default=2048,
        metavar="N",
        help="longest input in tokens, further capped by each model's limit (default 2048)",
    )
    parser.add_argument(
        "--neg-number",
        type=int,
        default=7,
        metavar="K",
        help="negatives sampled per encoder/reranker example (default 7)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=2, metavar="B", help="examples per forward pass (default 2)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the negative sampling (default 0)")
    parser.add_argument(
        "--device", default="auto", help="auto (the GPU when there is one), cpu, cuda or cuda:N"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="dtype the losses are computed in: auto is float32 on CPU (LM_Cocktail's numbers) and the "
        "checkpoint's dtype on a GPU",
    )
    parser.add_argument(
        "--json", action="store_true", help='print {"models", "losses", "weights", "dtype"} as JSON'
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from cocktail_bot.api import resolve_models
    from cocktail_bot.examples import load_examples
    from cocktail_bot.weights import compute_weights

    # a bad file fails before any model is downloaded
    examples = load_examples(args.examples, args.model_type)
    result = compute_weights(
        resolve_models(args.models),  # Hub weights are read in place, not downloaded
        args.model_type,
        examples,
        temperature=args.temperature,
        max_input_length=args.max_input_length,
        neg_number=args.neg_number,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
        progress=args.progress and not args.json,
        dtype=args.dtype,
    )
    if args.json:
        print(
            json.dumps(
                {
                    "models": args.models,
                    "losses": result.losses,
                    "weights": result.weights,
                    "dtype": result.dtype,
                }
            )
        )
        return 0
    width = max(len(model) for model in args.models)
    print(f"{'model':<{width}}  {'loss':>10}  {'weight':>8}")
    for model, loss, weight in zip(args.models, result.losses, result.weights, strict=True):
        print(f"{model:<{width}}  {loss:>10.4f}  {weight:>8.4f}")
    print(f"losses computed in {result.dtype}")
    return 0
