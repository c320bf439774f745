"""Score several models of one architecture on example sets, with memory bounded by one layer, not one model.

A model is a local folder or a Hub model whose weights stay on the Hub (``remote.HubModel``: its config and
tokenizer downloaded, its weights read by range requests). By default each model runs block-streamed
(``streamed.py``): the module is built once from the first model with its parameters on the meta device
(through sentence-transformers for a folder saved by it, so that its own pooling is used), and every forward
reads each module's weights from the model's checkpoint (``checkpoint.open_checkpoint``: local files by offset,
Hub files by range) just before the module runs and drops them just after. Each model, in turn, is bound to
that one module. On a GPU a model that fits in its memory stays resident instead (the fast path): the same
module, every weight read once from the checkpoint onto the GPU and kept while that model runs. A
model that cannot be streamed (its checkpoint names differ from its parameters', or its code reads a weight
outside its module) is loaded whole when it fits in memory, with a note (a Hub model's weights are downloaded
for it), and refused with the numbers otherwise. Sentence-transformers modules after the transformer (Dense
layers) come from the first model, as they do in the merged output, whose modules are copied from its base.

Losses are computed in float32 on CPU (LM_Cocktail's numbers) and, by default, in the checkpoint's dtype on a
GPU; ``dtype`` picks another.
"""

from __future__ import annotations

import functools
import logging
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from cocktail_bot.checkpoint import model_folder, open_checkpoint
from cocktail_bot.devices import is_device
from cocktail_bot.errors import ONCE, CocktailError
from cocktail_bot.losses import (
    Score,
    combine_scores,
    decoder_batches,
    decoder_score,
    encoder_score,
    query_groups,
    reranker_score,
    sample_negatives,
)
from cocktail_bot.memory import CHARS_PER_TOKEN, waves
from cocktail_bot.model_files import SAFETENSORS_FILE, SAFETENSORS_INDEX
from cocktail_bot.model_types import AUTO_CLASS, ModelType, is_sentence_transformer
from cocktail_bot.preflight import available_memory
from cocktail_bot.remote import HubModel
from cocktail_bot.streamed import MISMATCH, Model, NotStreamable, StreamedWeights, build_skeleton

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


Load = Literal["auto", "streamed", "resident", "whole"]
Mode = Literal["streamed", "resident", "pretrained"]  # how a Runner holds the weights (see Runner)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GPU_HEADROOM = 0.8  # share of free GPU memory a whole model may take; the rest is for activations
RAM_HEADROOM = 0.8  # the same for a model loaded whole on CPU as a fallback


@dataclass(frozen=True)
class Scoring:
    """Each model's :class:`Score` per example set, in order, and how the losses were computed."""

    scores: list[dict[str, Score]]
    dtype: str  # the compute dtype of the forward passes: float32, bfloat16, float16
    streamed: bool  # block-streamed (one module's weights resident) rather than resident or loaded whole


def score_models(
    models: Sequence[str | Path | HubModel],
    model_type: ModelType | str,
    example_sets: Mapping[str, Sequence[Mapping]],
    *,
    max_input_length: int = 2048,
    neg_number: int = 7,
    batch_size: int = 2,
    device: str | torch.device = "auto",
    dtype: str = "auto",
    seed: int = 0,
    progress: bool = True,
    labels: Sequence[str] | None = None,
    load: Load = "auto",
) -> Scoring:
    """Score each model (a local folder or a ``HubModel``), in order, on each named example set (validated).

    ``dtype`` is the compute dtype (``auto``: float32 on CPU, the checkpoint's dtype on a GPU). ``load`` is
    ``auto`` (block-streamed, except resident on a GPU the model fits in), ``streamed``, ``resident`` (every
    weight read once from the checkpoint and kept) or ``whole`` (``from_pretrained``, the path before block
    streaming; a Hub model is downloaded for it). ``labels`` name the models in the log (default: their
    folders or Hub ids; a merge's folder is a temporary path).
    """
    from tqdm.auto import tqdm

    model_type = ModelType.parse(model_type)
    if not models:
        raise CocktailError("no models to score: give at least one model")
    if batch_size < 1:
        raise CocktailError(f"batch_size must be 1 or more, got {batch_size}")
    if max_input_length < 3:
        raise CocktailError(
            f"max_input_length {max_input_length} is too small: allow at least 3 tokens per example"
        )
    device = resolve_device(device)
    paths: list[Model] = [model if isinstance(model, HubModel) else Path(model) for model in models]
    names = list(labels) if labels is not None else [str(path) for path in paths]
    first = paths[0]
    compute_dtype = resolve_dtype(dtype, device, first)
    mode: Mode = "pretrained" if load == "whole" else "streamed"
    if load == "resident" or (load == "auto" and resident_fits(first, compute_dtype, device)):
        mode = "resident"

    def runner(mode: Mode) -> Runner:
        return Runner(
            first,
            model_type,
            example_sets,
            device,
            compute_dtype,
            mode=mode,
            max_input_length=max_input_length,
            neg_number=neg_number,
            batch_size=batch_size,
            seed=seed,
        )

    try:
        scorer = runner(mode)
    except NotStreamable as why:
        fall_back(first, str(why), compute_dtype, device)
        scorer, mode = runner("pretrained"), "pretrained"
    results = []
    for index, folder in enumerate(tqdm(paths, desc="scoring models", unit="model", disable=not progress)):
        try:
            scores = scorer.score_model(folder)
        except NotStreamable as why:  # found while running the first model
            fall_back(first, str(why), compute_dtype, device)
            scorer, mode = runner("pretrained"), "pretrained"
            scores = scorer.score_model(folder)
        for name, score in scores.items():
            logger.info("%s on %s: loss %.6f", names[index], name, score.loss)
        results.append(scores)
    return Scoring(results, dtype=dtype_name(compute_dtype), streamed=mode == "streamed")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def resolve_dtype(dtype: str, device: torch.device, folder: Model) -> torch.dtype:
    """The compute dtype: as asked, else float32 on CPU (LM_Cocktail's numbers) and the checkpoint's on a GPU."""
    if dtype != "auto":
        if dtype not in DTYPES:
            raise CocktailError(f"unknown dtype {dtype!r}: use auto, {', '.join(DTYPES)}")
        return DTYPES[dtype]
    if device.type != "cuda":
        return torch.float32
    stored = checkpoint_dtype(folder)
    return stored if stored in DTYPES.values() else torch.float32


def checkpoint_dtype(folder: Model) -> torch.dtype:
    """The floating dtype that holds most of a checkpoint's bytes (float32 for a checkpoint without one)."""
    totals: dict[torch.dtype, int] = {}
    with open_checkpoint(folder) as checkpoint:
        for name in checkpoint.names:
            info = checkpoint.info(name)
            if info.dtype.is_floating_point:
                totals[info.dtype] = totals.get(info.dtype, 0) + info.nbytes
    return max(totals, key=totals.__getitem__) if totals else torch.float32


def whole_bytes(folder: Model, dtype: torch.dtype) -> int:
    """Memory of the model loaded whole, its floating tensors in ``dtype``."""
    with open_checkpoint(folder) as checkpoint:
        infos = [checkpoint.info(name) for name in checkpoint.names]
    return sum(info.numel * dtype.itemsize if info.dtype.is_floating_point else info.nbytes for info in infos)


def free_bytes(device: torch.device) -> int:
    """Free memory where a whole model would live: the GPU's, or the memory available to this machine's
    processes."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return available_memory()


def stays_resident(device_type: str, need: int, free: int | None) -> bool:
    """The fast path: on a GPU, a model that fits in its free memory (with room for activations) stays
    resident. On CPU models are always block-streamed, so memory stays bounded whatever the machine."""
    return device_type == "cuda" and free is not None and need <= free * GPU_HEADROOM


def resident_fits(folder: Model, dtype: torch.dtype, device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    return stays_resident(device.type, whole_bytes(folder, dtype), free_bytes(device))


def fallback_refusal(
    folder: Model, why: str, need: int, free: int | None, dtype: torch.dtype, device: torch.device
) -> str | None:
    """The error for a model that can run neither block by block nor whole (None: it fits whole)."""
    if free is None or need <= free * RAM_HEADROOM:
        return None
    from cocktail_bot.sizes import format_size

    return (
        f"{folder} cannot be scored block by block ({why}), and loading it whole in {dtype_name(dtype)} "
        f"needs {format_size(need)} of {'GPU' if device.type == 'cuda' else 'CPU'} memory, more than the "
        f"{format_size(free)} free: use a machine with more memory, or a smaller dtype (weights: {{dtype: ...}})"
    )


def fall_back(folder: Model, why: str, dtype: torch.dtype, device: torch.device) -> None:
    """Load the model whole when it fits, with a note; refuse with the numbers when it does not."""
    refusal = fallback_refusal(folder, why, whole_bytes(folder, dtype), free_bytes(device), dtype, device)
    if refusal:
        raise CocktailError(refusal)
    logger.warning("note: %s cannot be scored block by block (%s): loading it whole instead", folder, why)


class Runner:
    """The first model's module, its tokenizer or pooling, and the example sets prepared for it;
    :meth:`score_model` runs any model of the same architecture through it.

    ``mode``: ``streamed`` (parameters on meta, each module's weights read as it runs), ``resident`` (the same
    module, every weight read once per model and kept) or ``pretrained`` (each model loaded whole by
    ``from_pretrained``: the fallback, which also converts checkpoints whose names differ).
    """

    def __init__(
        self,
        folder: Model,
        model_type: ModelType,
        example_sets: Mapping[str, Sequence[Mapping]],
        device: torch.device,
        dtype: torch.dtype,
        *,
        mode: Mode,
        max_input_length: int,
        neg_number: int,
        batch_size: int,
        seed: int,
    ) -> None:
        self.first, self.model_type, self.device, self.dtype = folder, model_type, device, dtype
        self.example_sets, self.batch_size = example_sets, batch_size
        self.st = None
        self.tokenizer_lock = threading.Lock()
        on_meta = mode != "pretrained"
        if model_type is ModelType.ENCODER and is_sentence_transformer(model_folder(folder)):
            self.st = _sentence_transformer(folder, dtype, device, on_meta=on_meta)
            limit = token_limit(
                self.network.config, self.st.tokenizer, max_input_length, extra=self.st.max_seq_length
            )
            self.st.max_seq_length = limit
        else:
            if model_type is ModelType.ENCODER:
                logger.info(
                    "%s has no sentence-transformers pooling config (modules.json): using the CLS embedding",
                    folder,
                )
            self.model = _transformers_model(folder, model_type, dtype, device, on_meta=on_meta)
            self.tokenizer = _tokenizer(model_folder(folder), model_type)
            limit = token_limit(self.network.config, self.tokenizer, max_input_length)
        self.limit = limit
        self.network_class = type(self.network)
        self.weights = StreamedWeights(self.network, device, resident=mode == "resident") if on_meta else None
        if model_type is ModelType.DECODER:
            self.batches = {
                name: decoder_batches(examples, self.tokenizer, limit, batch_size)
                for name, examples in example_sets.items()
            }
        else:
            self.negatives = {
                name: sample_negatives(examples, neg_number, seed) for name, examples in example_sets.items()
            }
        if model_type is ModelType.RERANKER and self.network.config.num_labels not in (1, 2):
            raise CocktailError(
                f"{folder} has {self.network.config.num_labels} labels: "
                "a reranker scores with 1 label (or 2: not relevant, relevant)"
            )

    @property
    def network(self) -> Any:
        """The transformers module that holds the weights (inside the sentence-transformers pipeline if any)."""
        return self.st[0].model if self.st is not None else self.model

    @network.setter
    def network(self, module: Any) -> None:
        if self.st is not None:
            self.st[0].model = module
        else:
            self.model = module

    def score_model(self, folder: Model) -> dict[str, Score]:
        """The model in ``folder`` on every example set: streamed through the module, or loaded whole into it."""
        if self.weights is None:
            if folder != self.first:
                check_same_layout(self.first, folder)
                self.network = None  # free the previous model before loading this one
                self.network = _load_whole(self.network_class, folder, self.dtype, self.device)
            return self._score_all()
        with self.weights.bound(folder, first=self.first):
            try:
                return self._score_all()
            except (RuntimeError, NotImplementedError) as error:
                if folder == self.first and "meta" in str(error):
                    raise NotStreamable(
                        f"its code reads a weight outside the module that owns it: {error}"
                    ) from None
                raise

    def _score_all(self) -> dict[str, Score]:
        """Every batch of every set, block-streamed batches in waves of up to ``memory.WAVE_TOKENS`` tokens (each
        weight read once per wave, :func:`cocktail_bot.memory.waves`), then each set's batches combined as one
        call over the set would give."""
        self.network.eval()
        streamed = self.weights is not None and not self.weights.resident
        batches = [(name, index) for name, count in self._batch_counts().items() for index in range(count)]
        costs = [self._tokens(*batch) for batch in batches]
        scores: dict[tuple[str, int], Score] = {}
        for group in waves(costs, streamed=streamed):
            wave = [batches[index] for index in group]
            tasks = [functools.partial(self._score_batch, *batch) for batch in wave]
            results = (
                self.weights.together(tasks) if streamed and self.weights else [task() for task in tasks]
            )
            scores.update(zip(wave, results, strict=True))
        return {
            name: combine_scores([scores[name, index] for index in range(count)])
            for name, count in self._batch_counts().items()
        }

    def _batch_counts(self) -> dict[str, int]:
        if self.model_type is ModelType.DECODER:
            return {name: len(batches) for name, batches in self.batches.items()}
        return {name: -(-len(examples) // self.batch_size) for name, examples in self.example_sets.items()}

    def _tokens(self, name: str, index: int) -> int:
        """A batch's size in tokens (retrieval: estimated at ``CHARS_PER_TOKEN`` characters a token, capped by
        the limit)."""
        if self.model_type is ModelType.DECODER:
            return self.batches[name][index].input_ids.numel()
        start = index * self.batch_size
        examples = self.example_sets[name][start : start + self.batch_size]
        negatives = self.negatives[name][start : start + self.batch_size]
        texts = [t for (query, group) in query_groups(examples, negatives) for t in (query, *group)]
        return sum(min(self.limit, len(text) // CHARS_PER_TOKEN + 2) for text in texts)

    def _score_batch(self, name: str, index: int) -> Score:
        if self.model_type is ModelType.DECODER:
            return decoder_score(self.network, self.batches[name][index : index + 1], self.device)
        start = index * self.batch_size
        examples = self.example_sets[name][start : start + self.batch_size]
        negatives = self.negatives[name][start : start + self.batch_size]
        if self.model_type is ModelType.ENCODER:
            return encoder_score(self._embed, examples, negatives, self.batch_size)
        return reranker_score(self._score_pairs, examples, negatives, self.batch_size)

    def _tokenize(self, *texts: list[str]) -> Any:
        """Fast tokenizers are not safe to call from several threads at once (the batches of a wave)."""
        with self.tokenizer_lock:
            if self.st is not None:
                return self.st.preprocess(texts[0])
            return self.tokenizer(
                *texts, padding=True, truncation=True, max_length=self.limit, return_tensors="pt"
            )

    def _embed(self, texts: list[str]) -> torch.Tensor:
        features = self._tokenize(texts)
        if self.st is not None:
            features = {
                k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()
            }
            return self.st(features)["sentence_embedding"]
        return self.network(**features.to(self.device), return_dict=True).last_hidden_state[:, 0]

    def _score_pairs(self, queries: list[str], passages: list[str]) -> torch.Tensor:
        logits = self.network(**self._tokenize(queries, passages).to(self.device)).logits
        return logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]


def _transformers_model(
    folder: Model, model_type: ModelType, dtype: torch.dtype, device: torch.device, *, on_meta: bool
) -> torch.nn.Module:
    import transformers

    auto_class = getattr(transformers, AUTO_CLASS[model_type])
    if not on_meta:
        return _load_whole(auto_class, folder, dtype, device)
    try:
        config = transformers.AutoConfig.from_pretrained(str(model_folder(folder)), trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise CocktailError(f"cannot load the {model_type.value} model in {folder}: {error}") from None
    return build_skeleton(
        lambda c, **kw: auto_class.from_config(c, trust_remote_code=False, **kw), config, dtype
    )


def _load_whole(model_class, folder: Model, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """The model with all its weights, loaded straight onto ``device``."""
    placement = {"device_map": str(device)} if device.type == "cuda" else {}
    try:
        model = model_class.from_pretrained(
            str(whole_folder(folder)), dtype=dtype, trust_remote_code=False, **placement
        )
    except (OSError, ValueError) as error:
        raise CocktailError(f"cannot load the model in {folder}: {error}") from None
    return model.eval()


def _tokenizer(folder: Path, model_type: ModelType):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise CocktailError(f"cannot load the {model_type.value} tokenizer in {folder}: {error}") from None


def _sentence_transformer(folder: Model, dtype: torch.dtype, device: torch.device, *, on_meta: bool):
    """The model's sentence-transformers pipeline (its own pooling), its transformer's parameters on meta."""
    from sentence_transformers import SentenceTransformer

    placement = {"device_map": "meta"} if on_meta else {}
    try:
        with pipeline_folder(folder, on_meta=on_meta) as path, quiet_transformers(on_meta):
            st = SentenceTransformer(
                str(path),
                device=None if on_meta else str(device),
                trust_remote_code=False,
                local_files_only=True,
                model_kwargs={"dtype": dtype, **placement},
            )
    except (OSError, ValueError) as error:
        raise CocktailError(f"cannot load the sentence-transformers model in {folder}: {error}") from None
    if on_meta:
        loaded: Any = st[0].model  # the transformers model inside the sentence-transformers module
        st[0].model = build_skeleton(type(loaded)._from_config, loaded.config, dtype)
        _load_modules(st, folder, device)
    return st.eval()


def _load_modules(st: Any, folder: Model, device: torch.device) -> None:
    """The pipeline's modules after the transformer, on ``device`` with their weights: sentence-transformers
    places them where the transformer is (here: meta), so those with weights (a Dense layer) are read again
    from their folder's checkpoint."""
    import json
    from itertools import chain

    paths = {
        str(entry["name"]): entry["path"]
        for entry in json.loads((model_folder(folder) / "modules.json").read_text())
    }
    for name, module in list(st.named_children())[1:]:
        if not any(t.is_meta for t in chain(module.parameters(), module.buffers())):
            module.to(device)
            continue
        module.to_empty(device=device)
        with open_checkpoint(folder, paths[name]) as checkpoint:
            state = {key: checkpoint.read(key) for key in checkpoint.names}
        module.load_state_dict(state)


def check_same_layout(first: Model, folder: Model) -> None:
    """``folder``'s checkpoint has the tensors of ``first``'s, with the same shapes, or scoring both means
    nothing (models loaded whole are checked this way; streamed ones against the module they run in)."""
    with open_checkpoint(first) as reference, open_checkpoint(folder) as other:
        expected = {name: reference.info(name).shape for name in reference.names}
        for name in other.names:
            if name not in expected:
                raise CocktailError(
                    f"{folder} has the tensor {name!r}, which the model built from {first} lacks: {MISMATCH}"
                )
            shape = other.info(name).shape
            if shape != expected[name]:
                raise CocktailError(
                    f"{folder}: tensor {name!r} has shape {list(shape)} "
                    f"but {first} has {list(expected[name])}: {MISMATCH}"
                )
        missing = sorted(set(expected) - set(other.names))
        if missing:
            raise CocktailError(f"{folder} lacks the tensor {missing[0]!r} that {first} has: {MISMATCH}")


def whole_folder(model: Model) -> Path:
    """A folder with the model's weights on disk: a Hub model's are downloaded into the Hugging Face cache
    (only a model loaded whole needs this: the fallback)."""
    if not isinstance(model, HubModel):
        return model
    from huggingface_hub import hf_hub_download

    from cocktail_bot.hub_access import hub_errors
    from cocktail_bot.sizes import format_size

    logger.warning(
        "note: downloading the weights of %s (%s) to load it whole", model, format_size(model.total_bytes)
    )
    for name in sorted(model.weights):
        with hub_errors(model.repo_id, model.revision, reading=True, token=model.token):
            hf_hub_download(
                model.repo_id, name, revision=model.revision, endpoint=model.endpoint, token=model.token
            )
    return model.folder


@contextmanager
def pipeline_folder(model: Model, *, on_meta: bool) -> Iterator[Path]:
    """A folder sentence-transformers loads the model's pipeline from.

    A Hub model's weights are not on disk. With its transformer built on the meta device (block-streamed or
    resident), a temporary folder with links to its small files stands in, with an empty safetensors file for
    the transformer's weights and the modules' own weights (a Dense layer: small) read by range. Loaded whole
    by ``from_pretrained``, its weights are downloaded (``whole_folder``).
    """
    if not isinstance(model, HubModel) or not on_meta:
        yield whole_folder(model)
        return
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="cocktail-pipeline-") as temporary:
        view = Path(temporary)
        for path in model.folder.rglob("*"):
            relative = path.relative_to(model.folder)
            if path.is_file() and relative.name != SAFETENSORS_INDEX:
                (view / relative).parent.mkdir(parents=True, exist_ok=True)
                (view / relative).symlink_to(path.resolve())
        (view / SAFETENSORS_FILE).write_bytes((2).to_bytes(8, "little") + b"{}")  # no tensors
        for module in sorted({Path(name).parent for name in model.weights} - {Path(".")}):
            with open_checkpoint(model, module.as_posix()) as checkpoint:
                tensors = {name: checkpoint.read(name) for name in checkpoint.names}
            save_file(tensors, str(view / module / SAFETENSORS_FILE))
        yield view


@contextmanager
def quiet_transformers(quiet: bool) -> Iterator[None]:
    """transformers' load report lists every weight of a model built on meta as missing: not news then."""
    from transformers.utils import logging as transformers_logging

    if not quiet:
        yield
        return
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
