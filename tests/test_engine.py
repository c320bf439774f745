"""The streaming engine on tiny real models: exact sums, identical bytes, loadable results, clear errors."""

from __future__ import annotations

import filecmp
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cocktail_bot import shards
from cocktail_bot.engine import MergeResult, merge
from cocktail_bot.errors import CocktailError
from cocktail_bot.writable import preallocate

MANTISSA_BITS = {torch.float32: 23, torch.bfloat16: 7, torch.float16: 10, torch.float64: 52}


def state_of(folder: Path) -> dict[str, torch.Tensor]:
    state = {}
    for path in sorted(folder.glob("*.safetensors")):
        state.update(load_file(path))
    return state


def variant(
    source: Path, target: Path, change: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
) -> Path:
    """A copy of a model folder whose weights went through ``change`` (saved as one safetensors file)."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    save_file(change(state_of(source)), target / "model.safetensors", metadata={"format": "pt"})
    return target


def reference(folders: list[Path], weights: list[float]) -> dict[str, torch.Tensor]:
    """sum(w_i * theta_i) in float64."""
    states = [state_of(folder) for folder in folders]
    return {
        name: sum(w * state[name].double() for w, state in zip(weights, states, strict=True))
        for name in states[0]
    }


def assert_within_one_ulp(merged: torch.Tensor, exact: torch.Tensor) -> None:
    """|merged - exact| <= one ulp of merged's dtype at exact (subnormals use the smallest normal's ulp)."""
    tiny = torch.finfo(merged.dtype).tiny
    exponent = torch.floor(torch.log2(exact.abs().clamp_min(tiny)))
    ulp = torch.exp2(exponent - MANTISSA_BITS[merged.dtype])
    error = (merged.double() - exact).abs()
    assert bool((error <= ulp).all()), f"max error {float((error / ulp).max())} ulp"


def run(sources, weights, output, **kwargs) -> MergeResult:
    kwargs.setdefault("model_type", "decoder")
    return merge(sources, weights, output, progress=False, **kwargs)


def test_linear_merge_is_within_one_ulp_of_float64(tiny_llamas, tmp_path):
    weights = [0.5, 0.3, 0.2]
    result = run(tiny_llamas, weights, tmp_path / "out")
    merged = state_of(result.output)
    exact = reference(tiny_llamas, weights)
    assert sorted(merged) == sorted(exact)
    for name, tensor in merged.items():
        assert tensor.dtype == torch.float32
        assert_within_one_ulp(tensor, exact[name])
    assert result.dtype == "float32"


def test_mixed_bf16_and_fp32_sources(tiny_llamas, tiny_llama_bf16, tmp_path):
    sources = [tiny_llama_bf16, tiny_llamas[0], tiny_llamas[1]]
    weights = [0.6, 0.25, 0.15]
    exact = reference(sources, weights)
    bf16 = run(sources, weights, tmp_path / "bf16")  # the base is bf16, so the output is too
    fp32 = run(sources, weights, tmp_path / "fp32", base=tiny_llamas[0])
    assert bf16.dtype == "bfloat16" and fp32.dtype == "float32"
    for result, dtype in ((bf16, torch.bfloat16), (fp32, torch.float32)):
        for name, tensor in state_of(result.output).items():
            assert tensor.dtype == dtype
            assert_within_one_ulp(tensor, exact[name])


def test_dtype_option_casts_and_updates_config(tiny_llamas, tmp_path):
    result = run(tiny_llamas[:2], [0.5, 0.5], tmp_path / "out", dtype="float16")
    assert {tensor.dtype for tensor in state_of(result.output).values()} == {torch.float16}
    config = json.loads((result.output / "config.json").read_text())
    assert config["dtype"] == "float16"


def test_output_is_byte_identical_across_runs(tiny_llamas, tiny_llama_sharded, tmp_path):
    sources = [tiny_llamas[0], tiny_llama_sharded, tiny_llamas[2]]
    first = run(sources, [0.2, 0.3, 0.5], tmp_path / "first", shard_size="40KB")
    second = run(sources, [0.2, 0.3, 0.5], tmp_path / "second", shard_size="40KB")
    assert first.files == second.files
    for name in first.files:
        assert filecmp.cmp(first.output / name, second.output / name, shallow=False)


def test_result_lists_every_file_with_its_sha256(tiny_llamas, tmp_path):
    result = run(tiny_llamas[:2], [0.5, 0.5], tmp_path / "out", shard_size="50KB")
    on_disk = sorted(
        path.relative_to(result.output).as_posix() for path in result.output.rglob("*") if path.is_file()
    )
    assert sorted(result.files) == on_disk
    for name, digest in result.files.items():
        assert hashlib.sha256((result.output / name).read_bytes()).hexdigest() == digest
    assert result.total_bytes == sum((result.output / name).stat().st_size for name in on_disk)


def test_sharded_output_loads_with_transformers(tiny_llamas, tiny_llama_sharded, tmp_path):
    from transformers import AutoModelForCausalLM

    sources = [tiny_llama_sharded, tiny_llamas[1]]
    whole = run(sources, [0.7, 0.3], tmp_path / "whole")
    sharded = run(sources, [0.7, 0.3], tmp_path / "sharded", shard_size="30KB")
    index = json.loads((sharded.output / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in state_of(whole.output).values()
    )
    for filename in files:
        with safe_open(sharded.output / filename, "pt") as file:
            assert file.metadata() == {"format": "pt"}
    model = AutoModelForCausalLM.from_pretrained(sharded.output)
    expected = state_of(whole.output)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert filecmp.cmp(sharded.output / name, tiny_llama_sharded / name, shallow=False)


def test_non_float_tensors_come_from_the_base_with_a_warning(tiny_llamas, tmp_path, caplog):
    def with_buffer(values):
        return lambda state: {**state, "model.position_ids": torch.tensor(values, dtype=torch.int64)}

    sources = [
        variant(tiny_llamas[i], tmp_path / f"m{i}", with_buffer(v))
        for i, v in enumerate([[0, 1], [0, 1], [5, 6]])
    ]
    with caplog.at_level(logging.WARNING):
        result = run(sources, [0.4, 0.4, 0.2], tmp_path / "out")
    assert torch.equal(state_of(result.output)["model.position_ids"], torch.tensor([0, 1]))
    assert (
        f"tensor 'model.position_ids' (torch.int64) differs between the base {sources[0]} and {sources[2]}"
        in caplog.text
    )
    assert str(sources[1]) + "," not in caplog.text


def test_encoders_keep_their_sentence_transformers_modules(tiny_encoders, tmp_path):
    from sentence_transformers import SentenceTransformer

    result = run(tiny_encoders, [0.5, 0.5], tmp_path / "out", model_type="encoder")
    base = tiny_encoders[0]
    described = sorted(
        path.relative_to(base).as_posix()
        for path in base.rglob("*")
        if path.is_file() and path.name not in ("model.safetensors", "README.md")
    )
    assert "1_Pooling/config.json" in described and "modules.json" in described
    for name in described:
        assert filecmp.cmp(result.output / name, base / name, shallow=False), name
    assert not (result.output / "README.md").exists()  # the base's card does not describe the merge
    model = SentenceTransformer(str(result.output), device="cpu")
    assert model[1].pooling_mode == "mean"
    exact = reference(tiny_encoders, [0.5, 0.5])
    for name, tensor in state_of(result.output).items():
        assert_within_one_ulp(tensor, exact[name])


def test_dense_modules_are_merged(tiny_encoders, tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense

    sources = []
    for seed, folder in enumerate(tiny_encoders):
        model = SentenceTransformer(str(folder), device="cpu")
        torch.manual_seed(seed)
        model.append(Dense(32, 16))
        model.save(str(tmp_path / f"dense-{seed}"))
        sources.append(tmp_path / f"dense-{seed}")
    dense_dir = json.loads((sources[0] / "modules.json").read_text())[-1]["path"]
    result = run(sources, [0.25, 0.75], tmp_path / "out", model_type="encoder")
    exact = reference([source / dense_dir for source in sources], [0.25, 0.75])
    merged = state_of(result.output / dense_dir)
    assert sorted(merged) == sorted(exact)
    for name, tensor in merged.items():
        assert_within_one_ulp(tensor, exact[name])
    assert filecmp.cmp(
        result.output / dense_dir / "config.json", sources[0] / dense_dir / "config.json", shallow=False
    )
    embeddings = SentenceTransformer(str(result.output), device="cpu").encode(["the cat", "a dog"])
    assert embeddings.shape == (2, 16)


def test_reranker_head_is_merged(tiny_rerankers, tmp_path):
    from transformers import AutoModelForSequenceClassification

    result = run(tiny_rerankers, [0.3, 0.7], tmp_path / "out", model_type="reranker")
    exact = reference(tiny_rerankers, [0.3, 0.7])
    merged = state_of(result.output)
    assert "classifier.weight" in merged
    for name, tensor in merged.items():
        assert_within_one_ulp(tensor, exact[name])
    model = AutoModelForSequenceClassification.from_pretrained(result.output)
    assert torch.equal(model.classifier.weight, merged["classifier.weight"])


@pytest.fixture(scope="module")
def perturbed_minilm(minilm_path, tmp_path_factory) -> Path:
    generator = torch.Generator().manual_seed(0)

    def perturb(state):
        return {
            name: tensor + 0.01 * tensor.std() * torch.randn(tensor.shape, generator=generator)
            if tensor.is_floating_point() and tensor.numel() > 1
            else tensor
            for name, tensor in state.items()
        }

    return variant(minilm_path, tmp_path_factory.mktemp("minilm") / "perturbed", perturb)


def test_real_minilm_merged_with_a_perturbed_copy(minilm_path, perturbed_minilm, tmp_path):
    from sentence_transformers import SentenceTransformer

    sentences = ["A man is eating food.", "The new movie is awesome.", "A cheetah chases prey."]
    original = SentenceTransformer(str(minilm_path), device="cpu")
    perturbed = SentenceTransformer(str(perturbed_minilm), device="cpu")
    result = run([minilm_path, perturbed_minilm], [0.5, 0.5], tmp_path / "mixed", model_type="encoder")
    mixed = SentenceTransformer(str(result.output), device="cpu")
    assert mixed[1].pooling_mode == "mean"
    for name in ("modules.json", "1_Pooling/config.json", "sentence_bert_config.json", "tokenizer.json"):
        assert filecmp.cmp(result.output / name, minilm_path / name, shallow=False)
    a, b, m = (torch.tensor(model.encode(sentences)) for model in (original, perturbed, mixed))
    assert not torch.equal(m, a) and not torch.equal(m, b)
    assert (torch.nn.functional.cosine_similarity(m, a) > 0.99).all()
    # merging the model with itself gives the model back, bit for bit
    itself = run([minilm_path, minilm_path], [0.3, 0.7], tmp_path / "itself", model_type="encoder")
    assert torch.equal(
        torch.tensor(SentenceTransformer(str(itself.output), device="cpu").encode(sentences)), a
    )


# ---- errors: one clear message, nothing written ----


def assert_refused(tmp_path: Path, message: str, sources, weights, **kwargs) -> None:
    before = sorted(tmp_path.iterdir())
    with pytest.raises(CocktailError) as error:
        run(sources, weights, tmp_path / "out", **kwargs)
    assert str(error.value) == message
    assert sorted(tmp_path.iterdir()) == before


def test_weight_count_must_match(tiny_llamas, tmp_path):
    assert_refused(tmp_path, "got 2 weights for 3 models: give one weight per model", tiny_llamas, [0.5, 0.5])


def test_linear_weights_must_sum_to_one(tiny_llamas, tmp_path):
    with pytest.raises(CocktailError, match=r"sum to 1 .*0\.9"):
        run(tiny_llamas, [0.5, 0.3, 0.1], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_weights_must_be_finite(tiny_llamas, tmp_path):
    with pytest.raises(CocktailError, match="finite"):
        run(tiny_llamas[:2], [float("nan"), 0.5], tmp_path / "out")


def test_missing_and_extra_tensors_are_listed_per_model(tiny_llamas, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    missing = variant(
        tiny_llamas[1], models / "missing", lambda s: {k: v for k, v in s.items() if "layers.1." not in k}
    )
    extra = variant(tiny_llamas[2], models / "extra", lambda s: {**s, "model.extra.weight": torch.zeros(2)})
    dropped = sorted(name for name in state_of(tiny_llamas[1]) if "layers.1." in name)
    assert len(dropped) == 9
    message = (
        f"the models do not have the same tensors as the base {tiny_llamas[0]}:\n"
        f"  {missing}: missing {', '.join(dropped[:8])} and 1 more\n"
        f"  {extra}: extra model.extra.weight"
    )
    assert_refused(tmp_path, message, [tiny_llamas[0], missing, extra], [0.2, 0.3, 0.5])


def test_shapes_must_match(tiny_llamas, tmp_path):
    name = "model.norm.weight"
    wider = variant(tiny_llamas[1], tmp_path / "wider", lambda s: {**s, name: torch.ones(40)})
    message = (
        f"tensor '{name}' has shape [40] in {wider} but [32] in the base {tiny_llamas[0]}: these models have "
        "different architectures and cannot be merged"
    )
    assert_refused(tmp_path, message, [tiny_llamas[0], wider], [0.5, 0.5])


def test_existing_output_needs_force(tiny_llamas, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    message = f"the output folder {output} already exists: choose another one or pass --force to replace it"
    assert_refused(tmp_path, message, tiny_llamas[:2], [0.5, 0.5])
    assert (output / "keep.txt").read_text() == "mine"
    result = run(tiny_llamas[:2], [0.5, 0.5], output, force=True)
    assert not (output / "keep.txt").exists() and "model.safetensors" in result.files
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_output_is_never_a_file_even_with_force(tiny_llamas, tmp_path):
    output = tmp_path / "notes.txt"
    output.write_text("mine")
    with pytest.raises(CocktailError) as error:
        run(tiny_llamas[:2], [0.5, 0.5], output, force=True)
    assert (
        str(error.value) == f"the output path {output} is a file, not a folder: choose another output folder"
    )
    assert output.read_text() == "mine"


def test_output_folder_has_the_mode_of_a_plain_mkdir(tiny_llamas, tmp_path):
    """The staging folder is private while it is built; the finished model is readable like any other folder."""
    plain = tmp_path / "plain"
    plain.mkdir()
    result = run(tiny_llamas[:2], [0.5, 0.5], tmp_path / "out")
    assert result.output.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_output_cannot_be_a_source(tiny_llamas, tmp_path):
    source = tmp_path / "model"
    shutil.copytree(tiny_llamas[0], source)
    with pytest.raises(CocktailError) as error:
        run([source, tiny_llamas[1]], [0.5, 0.5], source, force=True)
    assert (
        str(error.value)
        == f"the output folder {source} holds the model {source}: choose another output folder"
    )
    assert filecmp.cmp(source / "model.safetensors", tiny_llamas[0] / "model.safetensors", shallow=False)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"dtype": "int8"}, "unknown dtype 'int8': use one of bfloat16, float16, float32, float64"),
        (
            {"shard_size": "5 parsecs"},
            "invalid shard size '5 parsecs': use a number of bytes or a size such as 5GB or 500MB",
        ),
        ({"method": "average"}, "unknown merge method 'average'"),
        ({"model_type": "vision"}, "unknown model type 'vision': use one of decoder, encoder, reranker"),
        ({"device": "cuda:99"}, "device 'cuda:99' is not usable here"),
    ],
)
def test_bad_options(tiny_llamas, tmp_path, option, message):
    with pytest.raises(CocktailError) as error:
        run(tiny_llamas[:2], [0.5, 0.5], tmp_path / "out", **option)
    assert str(error.value).startswith(message)
    assert not list(tmp_path.iterdir())


def test_source_without_weights(tiny_llamas, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    message = (
        f"no model weights in {empty}: expected model.safetensors, model.safetensors.index.json, "
        "pytorch_model.bin or pytorch_model.bin.index.json"
    )
    assert_refused(tmp_path, message, [tiny_llamas[0], empty], [0.5, 0.5])
    assert_refused(tmp_path, message, [empty, tiny_llamas[0]], [0.5, 0.5])


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failure_mid_merge_leaves_nothing(tiny_llamas, tmp_path, monkeypatch, failure):
    """A disk filling up (or Ctrl-C) after some tensors were written: no partial model, no temporary files."""
    write = shards.ShardWriter.write
    calls = []

    def failing_write(self, values):
        calls.append(1)
        if len(calls) == 5:
            raise failure
        write(self, values)

    monkeypatch.setattr(shards.ShardWriter, "write", failing_write)
    with pytest.raises(type(failure)):
        run(tiny_llamas, [0.2, 0.3, 0.5], tmp_path / "out")
    assert len(calls) >= 5  # writes already queued may still run
    assert not list(tmp_path.iterdir())


def test_methods_with_a_base_get_the_base_tensor(tiny_llamas, tmp_path):
    """task_arithmetic: base + sum(w_i * (theta_i - base)); a listed base's weight is unused."""
    from cocktail_bot.methods import get_method

    result = run(
        tiny_llamas, [0.0, 0.6, 0.4], tmp_path / "out", base=tiny_llamas[0], method="task_arithmetic"
    )
    method = get_method("task_arithmetic")
    states = [state_of(folder) for folder in tiny_llamas]
    merged = state_of(result.output)
    for name, tensor in merged.items():
        expected = method.merge([states[1][name], states[2][name]], [0.6, 0.4], states[0][name], key=name)
        torch.testing.assert_close(tensor, expected, rtol=2e-6, atol=1e-7)
    assert not torch.equal(merged["lm_head.weight"], states[0]["lm_head.weight"])


def test_method_needing_a_base_without_one(tiny_llamas, tmp_path):
    with pytest.raises(CocktailError, match="needs a base model"):
        run(tiny_llamas[1:], [0.5, 0.5], tmp_path / "out", method="task_arithmetic")
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (--device cuda)")
def test_cuda_device_gives_the_cpu_result(tiny_llamas, tiny_llama_bf16, tmp_path):
    sources = [tiny_llama_bf16, *tiny_llamas[:2]]
    weights = [0.5, 0.3, 0.2]
    exact = reference(sources, weights)
    cpu = state_of(run(sources, weights, tmp_path / "cpu").output)
    gpu = state_of(run(sources, weights, tmp_path / "gpu", device="cuda").output)
    for name, tensor in gpu.items():
        assert tensor.dtype == torch.bfloat16
        assert_within_one_ulp(tensor, exact[name])
        torch.testing.assert_close(tensor, cpu[name], rtol=2**-7, atol=0)
    by_method = run(
        tiny_llamas,
        [0.0, 0.5, 0.5],
        tmp_path / "ta",
        base=tiny_llamas[0],
        method="task_arithmetic",
        device="cuda",
    )
    assert "model.safetensors" in by_method.files


EVERY_METHOD = [  # (method, parameters, streamed in chunks)
    ("linear", {}, True),
    ("task_arithmetic", {"normalize": True, "lambda": 0.8}, True),
    ("ties", {}, True),
    ("dare_linear", {"rescale": False}, True),
    ("dare_ties", {"density": 1.0}, True),
    ("ties", {"density": 0.5, "rescale": True}, False),
    ("dare_linear", {"density": 0.5}, False),
    ("dare_ties", {"density": 0.3}, False),
    ("slerp", {"t": 0.3}, False),
]


@pytest.mark.parametrize("name, params, streamed", EVERY_METHOD)
def test_every_method_gives_the_whole_tensor_result_bit_for_bit(
    name, params, streamed, tiny_llamas, tiny_llama_bf16, tmp_path, monkeypatch
):
    """Chunks (elementwise methods) and rows (the others) give exactly the method on whole tensors, widened
    as the engine widens them (float64 for linear, float32 otherwise) and cast once. Chunks, scratch blocks
    and worker shares are made tiny and uneven so that every tensor is cut at odd places; the bf16 model is
    widened chunk by chunk, the float32 ones read straight into their rows."""
    from cocktail_bot import engine
    from cocktail_bot.methods import get_method

    monkeypatch.setattr(engine, "CHUNK_ELEMENTS", 3989)
    monkeypatch.setattr(engine, "BLOCK_ELEMENTS", 61)
    monkeypatch.setattr(engine, "SUM_WORKERS", 3)
    method = get_method(name, params)
    assert method.elementwise == streamed
    if name == "linear":
        sources, weights, base = [tiny_llama_bf16, *tiny_llamas[1:]], [0.2, 0.3, 0.5], None
    elif name == "slerp":
        sources, weights, base = [tiny_llama_bf16], [1.0], tiny_llamas[0]
    else:
        sources, weights, base = [tiny_llama_bf16, *tiny_llamas[1:]], [0.5, 0.3, -0.4], tiny_llamas[0]
    result = run(sources, weights, tmp_path / "out", base=base, method=name, method_params=params)

    wide = torch.float64 if name == "linear" else torch.float32
    states = [state_of(folder) for folder in sources]
    base_state = state_of(base) if base is not None else None
    merged = state_of(result.output)
    for key, tensor in merged.items():
        expected = method.merge(
            [state[key].to(wide) for state in states],
            weights,
            base_state[key].to(wide) if base_state is not None else None,
            key=key,
        )
        assert str(tensor.dtype) == f"torch.{result.dtype}"  # the base's: bf16 for linear, else float32
        assert torch.equal(tensor, expected.to(tensor.dtype)), key


def test_preallocate_gives_the_file_its_size_with_its_blocks(tmp_path: Path) -> None:
    with open(tmp_path / "shard", "wb") as file:
        preallocate(file.fileno(), 3 * 2**20 + 5)
        status = os.fstat(file.fileno())
    assert status.st_size == 3 * 2**20 + 5
    assert status.st_blocks * 512 >= status.st_size  # reserved, not a sparse file
