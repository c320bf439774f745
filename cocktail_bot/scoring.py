"""Score several models of one architecture on example sets with one model resident at a time.

The module is built once, from the first model (``from_pretrained``, or sentence-transformers for a folder
saved by it, so that its own pooling is used); every other model's tensors are then streamed into that module
from its checkpoint, tensor by tensor. Peak memory is one model plus one tensor, whatever the number of models
(LM_Cocktail holds every state dict at once). On a GPU the module keeps the checkpoint's dtype; on CPU it runs
in float32. Sentence-transformers modules after the transformer (Dense layers) come from the first model, as
they do in the merged output, whose modules are copied from its base.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from cocktail_bot.checkpoint import Checkpoint
from cocktail_bot.devices import is_device
from cocktail_bot.errors import ONCE, CocktailError
from cocktail_bot.losses import (
    Score,
    decoder_batches,
    decoder_score,
    encoder_score,
    reranker_score,
    sample_negatives,
)
from cocktail_bot.model_types import ModelType, is_sentence_transformer, load_transformers_model

logger = logging.getLogger(__name__)

# Models whose position ids start after the padding index, so their table holds fewer usable positions.
OFFSET_POSITION_MODELS = {
    "roberta",
    "xlm-roberta",
    "camembert",
    "xlm-roberta-xl",
    "longformer",
    "data2vec-text",
}
UNBOUNDED = 1_000_000  # tokenizers without a model_max_length report ~1e30


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` is the GPU when there is one, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not is_device(str(device)):
        raise CocktailError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise CocktailError(f"device {device!r} was asked for but no CUDA GPU is available: use --device cpu")
    return resolved


def token_limit(config, tokenizer, requested: int, *, extra: int | None = None) -> int:
    """The longest input the model can take: ``requested``, capped by its position table and tokenizer."""
    limits = {"max_input_length": requested}
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        if getattr(config, "model_type", None) in OFFSET_POSITION_MODELS:
            positions -= (getattr(config, "pad_token_id", None) or 0) + 1
        limits["the model's position table"] = positions
    model_max_length = getattr(tokenizer, "model_max_length", None)
    if model_max_length and model_max_length < UNBOUNDED:
        limits["the tokenizer's model_max_length"] = model_max_length
    if extra:
        limits["the sentence-transformers max_seq_length"] = extra
    reason, limit = min(limits.items(), key=lambda item: item[1])
    if limit < requested:
        logger.info(
            "inputs are capped at %d tokens (%s), below max_input_length=%d",
            limit,
            reason,
            requested,
            extra={ONCE: True},  # every model of a run, and its evaluation, has the same limit
        )
    return limit


def score_models(
    folders: Sequence[str | Path],
    model_type: ModelType | str,
    example_sets: Mapping[str, Sequence[Mapping]],
    *,
    max_input_length: int = 2048,
    neg_number: int = 7,
    batch_size: int = 2,
    device: str | torch.device = "auto",
    seed: int = 0,
    progress: bool = True,
    labels: Sequence[str] | None = None,
) -> list[dict[str, Score]]:
    """For each model folder, in order, its :class:`Score` on each named example set (already validated).

    ``labels`` name the models in the log (default: their folders, which for a merge are temporary paths).
    """
    from tqdm.auto import tqdm

    model_type = ModelType.parse(model_type)
    if not folders:
        raise CocktailError("no models to score: give at least one model")
    if batch_size < 1:
        raise CocktailError(f"batch_size must be 1 or more, got {batch_size}")
    if max_input_length < 3:
        raise CocktailError(
            f"max_input_length {max_input_length} is too small: allow at least 3 tokens per example"
        )
    device = resolve_device(device)
    paths = [Path(folder) for folder in folders]
    names = list(labels) if labels is not None else [str(path) for path in paths]
    network, scorer = _build(
        paths[0], model_type, example_sets, max_input_length, neg_number, batch_size, device, seed
    )
    results = []
    for index, path in enumerate(tqdm(paths, desc="scoring models", unit="model", disable=not progress)):
        if index:
            stream_weights(network, path, first=paths[0])
        network.eval()
        scores = {name: scorer(name) for name in example_sets}
        for name, score in scores.items():
            logger.info("%s on %s: loss %.6f", names[index], name, score.loss)
        results.append(scores)
    return results


def _build(
    folder: Path,
    model_type: ModelType,
    example_sets,
    max_input_length: int,
    neg_number: int,
    batch_size: int,
    device: torch.device,
    seed: int,
) -> tuple[torch.nn.Module, Callable[[str], Score]]:
    """Load the first model and return (the transformers module to stream into, set name -> Score)."""
    dtype = "auto" if device.type == "cuda" else torch.float32
    if model_type is ModelType.DECODER:
        model, tokenizer = _load_transformers(folder, model_type, dtype, device)
        limit = token_limit(model.config, tokenizer, max_input_length)
        batches = {
            name: decoder_batches(examples, tokenizer, limit, batch_size)
            for name, examples in example_sets.items()
        }
        return model, lambda name: decoder_score(model, batches[name], device)

    negatives = {
        name: sample_negatives(examples, neg_number, seed) for name, examples in example_sets.items()
    }
    if model_type is ModelType.ENCODER:
        network, embed = _encoder(folder, dtype, device, max_input_length)
        return network, lambda name: encoder_score(embed, example_sets[name], negatives[name], batch_size)

    model, tokenizer = _load_transformers(folder, model_type, dtype, device)
    limit = token_limit(model.config, tokenizer, max_input_length)
    if model.config.num_labels not in (1, 2):
        raise CocktailError(
            f"{folder} has {model.config.num_labels} labels: "
            "a reranker scores with 1 label (or 2: not relevant, relevant)"
        )

    def score_pairs(queries: list[str], passages: list[str]) -> torch.Tensor:
        tokens = tokenizer(
            queries, passages, padding=True, truncation=True, max_length=limit, return_tensors="pt"
        )
        logits = model(**tokens.to(device)).logits
        return logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]

    return model, lambda name: reranker_score(score_pairs, example_sets[name], negatives[name], batch_size)


def _load_transformers(folder: Path, model_type: ModelType, dtype, device: torch.device):
    from transformers import AutoTokenizer

    try:
        model = load_transformers_model(folder, model_type, dtype=dtype).to(device)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise CocktailError(f"cannot load the {model_type.value} model in {folder}: {error}") from None
    return model, tokenizer


def _encoder(folder: Path, dtype, device: torch.device, max_input_length: int):
    """(module to stream into, embed function): the model's own sentence-transformers pooling, else CLS."""
    if is_sentence_transformer(folder):
        from sentence_transformers import SentenceTransformer

        try:
            st = SentenceTransformer(
                str(folder),
                device=str(device),
                trust_remote_code=False,
                local_files_only=True,
                model_kwargs={"dtype": dtype},
            )
        except (OSError, ValueError) as error:
            raise CocktailError(f"cannot load the sentence-transformers model in {folder}: {error}") from None
        network: Any = st[0].auto_model  # the transformers model inside the sentence-transformers module
        st.max_seq_length = token_limit(
            network.config, st.tokenizer, max_input_length, extra=st.max_seq_length
        )
        st.eval()

        def embed_pooled(texts: list[str]) -> torch.Tensor:
            features = st.preprocess(texts)
            features = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
            return st(features)["sentence_embedding"]

        return network, embed_pooled

    logger.info(
        "%s has no sentence-transformers pooling config (modules.json): using the CLS embedding", folder
    )
    model, tokenizer = _load_transformers(folder, ModelType.ENCODER, dtype, device)
    limit = token_limit(model.config, tokenizer, max_input_length)

    def embed(texts: list[str]) -> torch.Tensor:
        tokens = tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        return model(**tokens.to(device), return_dict=True).last_hidden_state[:, 0]

    return model, embed


@torch.no_grad()
def stream_weights(network: torch.nn.Module, folder: Path, *, first: Path) -> None:
    """Overwrite ``network``'s weights with the checkpoint in ``folder``, one tensor at a time.

    Checkpoint names may carry or lack the base model's prefix (``bert.``, ``model.``); tied weights are
    filled once.
    Every weight of the module must come from the checkpoint, with the same shape, or the models differ in
    architecture and no weight computed from them would mean anything.
    """
    state = network.state_dict()
    prefix = getattr(network, "base_model_prefix", "") or ""
    filled: set[int] = set()
    with Checkpoint(folder) as checkpoint:
        for name in checkpoint.names:
            key = _state_key(name, state, prefix)
            if key is None:
                raise CocktailError(
                    f"{folder} has the tensor {name!r}, which the model built from {first} lacks: "
                    "example-based weights need models of one architecture"
                )
            target = state[key]
            info = checkpoint.info(name)
            if tuple(target.shape) != info.shape:
                raise CocktailError(
                    f"{folder}: tensor {name!r} has shape {list(info.shape)} "
                    f"but {first} has {list(target.shape)}: "
                    "example-based weights need models of one architecture"
                )
            target.copy_(checkpoint.read(name))
            filled.add(target.data_ptr())
    missing = [key for key, tensor in state.items() if tensor.data_ptr() not in filled]
    if missing:
        raise CocktailError(
            f"{folder} lacks the tensor {missing[0]!r} that {first} has"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + ": example-based weights need models of one architecture"
        )


def _state_key(name: str, state: Mapping[str, torch.Tensor], prefix: str) -> str | None:
    if name in state:
        return name
    if prefix and name.startswith(prefix + ".") and name[len(prefix) + 1 :] in state:
        return name[len(prefix) + 1 :]
    if prefix and f"{prefix}.{name}" in state:
        return f"{prefix}.{name}"
    return None
