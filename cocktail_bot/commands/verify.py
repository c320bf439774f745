"""`cocktail verify TARGET [--lock FILE]`: a model folder's or Hub repo's hashes against the lock."""

from __future__ import annotations

from pathlib import Path

from cocktail_bot.errors import CocktailError
from cocktail_bot.references import parse_hub_reference


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "verify", help="check a model folder or Hub repo against a cocktail.lock (exit 1 on any difference)"
    )
    parser.add_argument(
        "target",
        metavar="DIR|REPO",
        help="model folder (`cocktail run --out DIR`) or Hub repo org/name[@rev]",
    )
    parser.add_argument(
        "--lock", metavar="FILE", help="the lock to check against (default for a folder: DIR/cocktail.lock)"
    )
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    from cocktail_bot.lock import LOCK_NAME, read_lock, verify_folder, verify_hub_repo

    target = args.target
    if Path(target).is_dir():
        lock_path = Path(args.lock) if args.lock else Path(target) / LOCK_NAME
        lock = read_lock(lock_path)
        differences = verify_folder(target, lock)
    elif parse_hub_reference(target) is not None:
        if not args.lock:
            raise CocktailError(
                f"give --lock FILE to verify the Hub repo {target} (the lock beside the manifest)"
            )
        lock_path = Path(args.lock)
        lock = read_lock(lock_path)
        differences = verify_hub_repo(target, lock)
    else:
        raise CocktailError(
            f"{target} is neither a model folder nor a Hub repo id (org/name or org/name@revision)"
        )
    for line in differences:
        print(f"{target}: {line}")
    if differences:
        print(f"{len(differences)} difference(s) from {lock_path}")
        return 1
    print(f"{target}: {len(lock.output)} files match {lock_path}")
    return 0
