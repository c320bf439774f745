"""Parity with mergekit 0.1.5: its defaults, its own tensor functions and its whole merge on tiny Llamas."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cocktail_bot.engine import merge
from cocktail_bot.merge_kernels import tensor_seed
from cocktail_bot.methods import METHODS, get_method

pytest.importorskip("mergekit")
from mergekit.merge_methods import registry  # noqa: E402
from mergekit.merge_methods.base import MISSING, TensorGroup  # noqa: E402

TASK_METHODS = ["task_arithmetic", "ties", "dare_linear", "dare_ties"]


@pytest.mark.parametrize("name", TASK_METHODS + ["slerp"])
def test_defaults_are_mergekits(name):
    spec = {parameter.name: parameter for parameter in registry.get(name).spec.parameters}
    ours = METHODS[name].parameters
    for parameter in ours:
        if parameter.name == "seed":  # mergekit draws from the global generator; we seed per tensor
            continue
        theirs = spec[parameter.name].default
        assert (None if theirs is MISSING else theirs) == parameter.default, parameter.name
    if name != "slerp":  # mergekit cites Wikipedia for SLERP
        assert registry.get(name).spec.reference_url == get_method(name).paper_url


def mergekit_merge(
    name: str, params: dict, base: torch.Tensor, models: list[torch.Tensor], weights: list[float], key: str
) -> torch.Tensor:
    """mergekit's own method on one tensor group, DARE's global generator set as ours starts for ``key``."""
    group = TensorGroup.from_tensors([base, *models], base_index=0, name=key)
    parameters = {k: v for k, v in params.items() if k != "seed"}
    if name != "slerp":
        parameters["weight"] = {index + 1: weight for index, weight in enumerate(weights)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tensor_seed(params.get("seed", 0), key))
        return registry.get(name)([group], parameters=parameters)[0]


CASES = [
    ("task_arithmetic", {}),
    ("task_arithmetic", {"lambda": 0.6, "normalize": True}),
    ("ties", {}),
    ("ties", {"density": 0.3}),
    ("ties", {"density": 0.7, "rescale": True, "normalize": False, "lambda": 1.3}),
    ("dare_linear", {"density": 0.5}),
    ("dare_linear", {"density": 0.2, "rescale": False, "normalize": True, "seed": 9}),
    ("dare_ties", {"density": 0.6}),
    ("dare_ties", {"density": 0.4, "normalize": True, "lambda": 0.8, "seed": 3}),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(24, 16), (40,)])
@pytest.mark.parametrize("name, params", CASES)
def test_task_vector_methods_match_mergekit_tensor_for_tensor(name, params, shape, dtype):
    generator = torch.Generator().manual_seed(len(shape))
    base = torch.randn(shape, generator=generator, dtype=dtype)
    models = [base + 0.1 * torch.randn(shape, generator=generator, dtype=dtype) for _ in range(3)]
    weights = [0.5, 0.8, -0.3]  # need not sum to 1; a negative weight subtracts a task vector
    key = "model.layers.0.self_attn.q_proj.weight"
    ours = get_method(name, params).merge(models, weights, base, key=key)
    theirs = mergekit_merge(name, params, base, models, weights, key)
    assert ours.dtype == theirs.dtype == dtype
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("t", [0.0, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("offset", [0.01, 3.0])  # nearly collinear (linear fallback) and far apart
def test_slerp_matches_mergekit(t, offset):
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(32, 8, generator=generator)
    other = base + offset * torch.randn(32, 8, generator=generator)
    ours = get_method("slerp", {"t": t}).merge([other], [1.0], base, key="w")
    theirs = mergekit_merge("slerp", {"t": t}, base, [other], [], "w")
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


# --- end to end: our engine and mergekit's run_merge on the same model folders ---


def run_mergekit(
    method: str, base: Path, models: list[Path], weights: list[float], params: dict, output: Path
) -> dict[str, torch.Tensor]:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    per_model = {k: v for k, v in params.items() if k == "density"}
    shared = {k: v for k, v in params.items() if k not in ("density", "seed")}
    entries = [{"model": str(base)}]
    if method == "slerp":
        entries += [{"model": str(model)} for model in models]
    else:
        entries += [
            {"model": str(model), "parameters": {"weight": weight, **per_model}}
            for model, weight in zip(models, weights, strict=True)
        ]
    config = {
        "merge_method": method,
        "base_model": str(base),
        "models": entries,
        "dtype": "float32",
        "parameters": shared,
    }
    run_merge(MergeConfiguration.model_validate(config), str(output), MergeOptions(quiet=True, random_seed=0))
    return load_file(output / "model.safetensors")


def run_ours(
    method: str, base: Path, models: list[Path], weights: list[float], params: dict, output: Path
) -> dict[str, torch.Tensor]:
    merge(
        models,
        weights,
        output,
        model_type="decoder",
        base=base,
        method=method,
        method_params=params,
        progress=False,
    )
    return load_file(output / "model.safetensors")


@pytest.mark.parametrize("base_listed", [False, True], ids=["base-apart", "base-listed"])
@pytest.mark.parametrize(
    "method, params",
    [
        ("task_arithmetic", {"lambda": 0.9}),
        ("task_arithmetic", {"normalize": True}),
        ("ties", {"density": 0.5}),
        ("dare_ties", {"density": 1.0, "normalize": True}),
        ("slerp", {"t": 0.3}),
    ],
)
def test_engine_matches_mergekit_on_tiny_llamas(tiny_llamas, tmp_path, method, params, base_listed):
    """The base is never a task vector: listed among the models (its weight unused) or not, as in mergekit."""
    base, *others = tiny_llamas
    models, weights = (others[:1], [1.0]) if method == "slerp" else (others, [0.7, 0.4])
    listed, listed_weights = ([base, *models], [0.25, *weights]) if base_listed else (models, weights)
    ours = run_ours(method, base, listed, listed_weights, params, tmp_path / "ours")
    theirs = run_mergekit(method, base, models, weights, params, tmp_path / "mergekit")
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        assert ours[name].dtype == theirs[name].dtype == torch.float32
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-6, atol=1e-7, msg=name)


def test_engine_dare_keeps_or_drops_each_entry_like_mergekit(tiny_llamas, tmp_path):
    """Masks differ (mergekit draws from one global generator), but every entry is either the base's or the
    base's plus the weighted task vector's, in both, and about `density` of them are kept."""
    base, other, _ = tiny_llamas
    params = {"density": 0.5, "rescale": False}
    outputs = [
        run("dare_linear", base, [other], [0.8], params, tmp_path / run.__name__)
        for run in (run_ours, run_mergekit)
    ]
    before, after = load_file(base / "model.safetensors"), load_file(other / "model.safetensors")
    for merged in outputs:
        kept = total = 0
        for name, value in merged.items():
            full = before[name] + 0.8 * (after[name] - before[name])
            is_base, is_full = value == before[name], torch.isclose(value, full, rtol=1e-6, atol=1e-7)
            assert bool((is_base | is_full).all()), name
            moved = before[name] != after[name]
            kept += int((is_full & ~is_base & moved).sum())
            total += int(moved.sum())
        assert 0.45 < kept / total < 0.55
