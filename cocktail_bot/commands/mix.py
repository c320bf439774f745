"""`cocktail mix`: merge models with given weights and a method into a folder, streaming tensor by tensor."""

from __future__ import annotations

import argparse
from typing import Any

from cocktail_bot.commands import add_model_type_argument
from cocktail_bot.errors import CocktailError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "mix",
        help="merge models with given weights into a new model folder",
        description="Merge models of one architecture, streaming tensor by tensor: sum(w_i * theta_i) by default, "
        "or any merge method (--method, --param; docs/methods.md). MODEL is a local folder or a Hugging Face Hub "
        "reference (org/name or org/name@revision), whose safetensors weights are read from the Hub by range, "
        "not downloaded.",
    )
    parser.add_argument("models", nargs="+", metavar="MODEL", help="models to merge (the first is the base)")
    parser.add_argument(
        "--weights",
        nargs="+",
        type=float,
        metavar="W",
        help="one weight per model; for the linear method they must sum to 1 (within 1e-3: then divided by their "
        "sum); not needed for slerp",
    )
    parser.add_argument(
        "--method",
        default="linear",
        help="merge method: linear (default), task_arithmetic, ties, dare_linear, dare_ties, slerp, ... "
        "(docs/methods.md); methods with a base measure task vectors from --base",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a method parameter, repeatable: density=0.5, normalize=true, t=[0,0.5,1] (per layer), "
        "'t=[{filter: mlp, value: 0.3}, {value: 0.5}]'; per-model parameters set here apply to every model",
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
        help="model whose config, tokenizer and modules are copied and, for methods with a base (ties, slerp, ...), "
        "the one task vectors are measured from (default: the first MODEL)",
    )
    parser.add_argument("--force", action="store_true", help="replace the output folder if it exists")
    parser.add_argument(
        "--device", default="cpu", help="where the arithmetic runs: cpu (default), cuda, cuda:N"
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from cocktail_bot.api import resolve_models
    from cocktail_bot.engine import check_arguments, merge
    from cocktail_bot.methods import get_method
    from cocktail_bot.sizes import format_size
    from cocktail_bot.writable import writing

    params = parse_params(args.param)
    method = get_method(args.method, params)
    weights = args.weights
    if weights is None:
        if method.uses_weights:
            raise CocktailError(f"merge method {args.method!r} needs --weights: one weight per model")
        weights = [1.0 / len(args.models)] * len(args.models)  # handed to the engine, which ignores them
    base_model = args.base or (args.models[0] if method.needs_base else None)  # the first MODEL, as for files
    check_arguments(
        args.models,
        weights,
        base=base_model,
        method=args.method,
        method_params=params,
        dtype=args.dtype,
        shard_size=args.shard_size,
    )
    models = resolve_models(args.models)  # Hub weights are read in place, not downloaded
    base = resolve_models([base_model])[0] if base_model else None
    with writing(args.out, "the merged model"):
        result = merge(
            models,
            weights,
            args.out,
            model_type=args.model_type,
            base=base,
            method=args.method,
            method_params=params,
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


def parse_params(items: list[str]) -> dict[str, Any]:
    """``--param KEY=VALUE`` pairs; VALUE is read as YAML (``0.5``, ``true``, ``[0, 0.5, 1]``, ``{filter: mlp,
    value: 0.3}``), as a manifest writes it."""
    import yaml

    params: dict[str, Any] = {}
    for item in items:
        key, equals, text = item.partition("=")
        key = key.strip()
        if not equals or not key:
            raise CocktailError(f"--param expects KEY=VALUE (e.g. density=0.5), got {item!r}")
        if key in params:
            raise CocktailError(f"--param {key} is given twice; give it once")
        try:
            params[key] = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise CocktailError(
                f"--param {item!r}: the value is not readable ({error.__class__.__name__}); "
                "write a number, true/false, or a list such as [0, 0.5, 1]"
            ) from None
    return params
