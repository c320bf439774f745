"""`cocktail mix`: merge models with given weights into a folder, streaming tensor by tensor."""

from __future__ import annotations

import argparse

from cocktail_bot.commands import add_model_type_argument


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "mix",
        help="merge models with given weights into a new model folder",
        description="Merge models of one architecture as sum(w_i * theta_i), streaming tensor by tensor. "
        "MODEL is a local folder or a Hugging Face Hub reference (org/name or org/name@revision), whose "
        "safetensors weights are read from the Hub by range, not downloaded.",
    )
    parser.add_argument("models", nargs="+", metavar="MODEL", help="models to merge (the first is the base)")
    parser.add_argument(
        "--weights",
        nargs="+",
        type=float,
        required=True,
        metavar="W",
        help="one weight per model; for the linear method they must sum to 1 (within 1e-3: then divided by their sum)",
    )
    add_model_type_argument(parser)
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (must not exist unless --force)"
    )
    parser.add_argument("--dtype", help="output dtype: bfloat16, float16 or float32 (default: the base's)")
    parser.add_argument(
        "--shard-size", default="5GB", help="largest output file, e.g. 5GB or 500MB (default 5GB)"
    )
    parser.add_argument(
        "--base",
        metavar="MODEL",
        help="model whose config, tokenizer and modules are copied (default: the first MODEL)",
    )
    parser.add_argument("--force", action="store_true", help="replace the output folder if it exists")
    parser.add_argument(
        "--device", default="cpu", help="where the arithmetic runs: cpu (default), cuda, cuda:N"
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from cocktail_bot.api import resolve_models
    from cocktail_bot.engine import check_arguments, merge
    from cocktail_bot.sizes import format_size
    from cocktail_bot.writable import writing

    check_arguments(args.models, args.weights, base=args.base, dtype=args.dtype, shard_size=args.shard_size)
    models = resolve_models(args.models)  # Hub weights are read in place, not downloaded
    base = resolve_models([args.base])[0] if args.base else None
    with writing(args.out, "the merged model"):
        result = merge(
            models,
            args.weights,
            args.out,
            model_type=args.model_type,
            base=base,
            dtype=args.dtype,
            shard_size=args.shard_size,
            device=args.device,
            force=args.force,
            progress=args.progress,
        )
    print(
        f"wrote {result.output} ({format_size(result.total_bytes)}, {result.dtype}, "
        f"{len(result.files)} files) in {result.seconds:.1f} s"
    )
    return 0
