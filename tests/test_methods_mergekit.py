"""Parity with mergekit 0.1.5: its defaults, its own tensor functions and its whole merge on tiny Llamas."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cocktail_bot.engine import merge
from cocktail_bot.errors import CocktailError
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


# --- the methods of #19: breadcrumbs, della, model_stock, nuslerp, multislerp, karcher, sce ---

NEW_METHODS = [
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "model_stock",
    "nuslerp",
    "multislerp",
    "karcher",
    "sce",
]


@pytest.mark.parametrize("name", NEW_METHODS)
def test_new_methods_have_mergekits_parameters_defaults_and_papers(name):
    spec = registry.get(name).spec
    theirs = {parameter.name: parameter.default for parameter in spec.parameters}
    ours = {
        parameter.name: parameter.default
        for parameter in METHODS[name].parameters
        if parameter.name != "seed"
    }
    # mergekit's int8_mask only picks the masks' dtype in its task-vector family: the same values either way
    assert ours == {key: value for key, value in theirs.items() if key not in ("weight", "int8_mask")} | (
        {"int8_mask": False} if name == "sce" else {}
    )
    assert ("weight" in theirs) == METHODS[name].uses_weights
    if spec.reference_url:  # nuslerp has none in mergekit: ours cites SLERP's
        assert spec.reference_url == get_method(name).paper_url
    method = get_method(name)
    assert method.paper_url and method.summary and method.title


def mergekit_group_merge(
    name: str,
    params: dict,
    base: torch.Tensor | None,
    models: list[torch.Tensor],
    weights: list[float],
    key: str,
) -> torch.Tensor:
    """mergekit's own method on one tensor group (the base first when there is one), its global generator set
    as ours starts for ``key``."""
    tensors = ([] if base is None else [base]) + models
    group = TensorGroup.from_tensors(tensors, base_index=None if base is None else 0, name=key)
    parameters = {k: v for k, v in params.items() if k != "seed"}
    if METHODS[name].uses_weights:
        first = 0 if base is None else 1
        parameters["weight"] = {first + index: weight for index, weight in enumerate(weights)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tensor_seed(params.get("seed", 0), key))
        return registry.get(name)([group], parameters=parameters)[0]


NEW_CASES = [
    ("breadcrumbs", {}, True),
    ("breadcrumbs", {"density": 0.5}, True),
    ("breadcrumbs", {"density": 0.7, "gamma": 0.1, "rescale": True, "normalize": True}, True),
    ("breadcrumbs", {"density": 0.05, "gamma": 0.3}, True),  # fewer outliers dropped to keep the density
    ("breadcrumbs_ties", {"density": 0.6, "lambda": 1.2}, True),
    ("della", {}, True),
    ("della", {"density": 0.5}, True),
    ("della", {"density": 0.4, "epsilon": 0.3, "rescale": False, "seed": 5}, True),
    ("della_linear", {"density": 0.6, "epsilon": 0.2, "normalize": True}, True),
    ("model_stock", {}, True),
    ("model_stock", {"filter_wise": True}, True),
    ("nuslerp", {}, True),
    ("nuslerp", {}, False),
    ("nuslerp", {"nuslerp_flatten": False}, True),
    ("nuslerp", {"nuslerp_flatten": False, "nuslerp_row_wise": True}, False),
    ("multislerp", {}, True),
    ("multislerp", {}, False),
    ("multislerp", {"normalize_weights": False, "eps": 1e-6}, False),
    ("karcher", {}, False),
    ("karcher", {"max_iter": 2, "tol": 1e-3}, False),
    ("sce", {}, True),
    ("sce", {"select_topk": 0.3}, True),
]


@pytest.mark.parametrize("shape", [(24, 16), (40,)])
@pytest.mark.parametrize("name, params, with_base", NEW_CASES)
def test_new_methods_match_mergekit_bit_for_bit(name, params, with_base, shape):
    """Random methods too: DELLA's draws come from a generator in the state mergekit's global one is set to."""
    generator = torch.Generator().manual_seed(len(shape))
    base = torch.randn(shape, generator=generator)
    models = [base + 0.1 * torch.randn(shape, generator=generator) for _ in range(3)]
    weights = [0.5, 0.8, -0.3] if name != "multislerp" else [0.5, 0.8, 0.3]
    if name == "nuslerp":
        models, weights = models[:2], weights[:2]
    key = "model.layers.0.mlp.up_proj.weight"
    method = get_method(name, params).for_base(base if with_base else None)
    assert method.needs_base == with_base
    ours = method.merge(models, weights, base if with_base else None, key=key)
    theirs = mergekit_group_merge(name, params, base if with_base else None, models, weights, key)
    assert ours.dtype == theirs.dtype == torch.float32
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("name, params, with_base", [case for case in NEW_CASES if "della" not in case[0]])
def test_new_methods_match_mergekit_in_float64(name, params, with_base):
    """DELLA is left out: mergekit computes its masked task vectors in float32 on the CPU, even for float64."""
    generator = torch.Generator().manual_seed(3)
    base = torch.randn(12, 10, generator=generator, dtype=torch.float64)
    models = [base + torch.randn(12, 10, generator=generator, dtype=torch.float64) for _ in range(3)]
    models, weights = (models[:2], [0.3, 0.9]) if name == "nuslerp" else (models, [0.2, 0.5, 0.3])
    method = get_method(name, params).for_base(base if with_base else None)
    ours = method.merge(models, weights, base if with_base else None, key="w")
    theirs = mergekit_group_merge(name, params, base if with_base else None, models, weights, "w")
    assert ours.dtype == theirs.dtype == torch.float64
    assert torch.equal(ours, theirs)


def test_della_keeps_small_entries_less_often_and_the_density_on_average():
    """By its statistics: over many rows, the kept fraction is `density`, rising with the magnitude's rank from
    density - epsilon to density + epsilon."""
    generator = torch.Generator().manual_seed(0)
    base = torch.zeros(2000, 64)
    delta = torch.randn(2000, 64, generator=generator)
    method = get_method("della_linear", {"density": 0.5, "epsilon": 0.3, "rescale": False})
    merged = method.merge([base + delta], [1.0], base, key="w")
    kept = merged != 0
    assert abs(kept.float().mean().item() - 0.5) < 0.01
    order = delta.abs().argsort(dim=1)
    by_rank = kept.gather(1, order).float().mean(dim=0)  # kept fraction per rank, smallest first
    expected = 0.2 + torch.arange(64) / 63 * 0.6  # density - epsilon + rank / (columns - 1) * 2 epsilon
    torch.testing.assert_close(by_rank.view(8, 8).mean(1), expected.view(8, 8).mean(1), rtol=0, atol=0.02)
    torch.testing.assert_close(
        merged[kept], delta[kept], rtol=0, atol=0
    )  # kept entries are the task vector's


def run_mergekit_config(
    method: str, base: Path | None, models: list[Path], weights: list[float], params: dict, output: Path
) -> dict[str, torch.Tensor]:
    """mergekit's run_merge on the model folders: a base only where given, weights only where the method
    takes them, every parameter global."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    uses_weights = METHODS[method].uses_weights
    entries = [{"model": str(base)}] if base is not None else []
    entries += [
        {"model": str(model), **({"parameters": {"weight": weight}} if uses_weights else {})}
        for model, weight in zip(models, weights, strict=True)
    ]
    config = {
        "merge_method": method,
        "models": entries,
        "dtype": "float32",
        "parameters": {k: v for k, v in params.items() if k != "seed"},
        **({"base_model": str(base)} if base is not None else {}),
    }
    run_merge(MergeConfiguration.model_validate(config), str(output), MergeOptions(quiet=True, random_seed=0))
    return load_file(output / "model.safetensors")


@pytest.mark.parametrize(
    "method, params, with_base",
    [
        ("breadcrumbs", {"density": 0.5, "gamma": 0.05}, True),
        ("breadcrumbs_ties", {"density": 0.6}, True),
        ("della", {}, True),
        ("della_linear", {"normalize": True}, True),
        ("model_stock", {}, True),
        ("model_stock", {"filter_wise": True}, True),
        ("nuslerp", {}, True),
        ("nuslerp", {"nuslerp_flatten": False}, False),
        ("multislerp", {}, True),
        ("multislerp", {}, False),
        ("karcher", {}, False),
        ("sce", {"select_topk": 0.5}, True),
    ],
)
def test_engine_matches_mergekit_with_the_new_methods(tiny_llamas, tmp_path, method, params, with_base):
    """The streaming engine (rows of one reused buffer, each in its tensor's shape) against mergekit's whole merge
    on the same folders. Within 2 float32 ulps, not bit for bit: the engine's kernels run on one thread, and
    karcher's dot products (BLAS) round differently on several (the tests above compare bits per tensor)."""
    base, *others = tiny_llamas
    models, weights = (others, [0.7, 0.4]) if with_base else (tiny_llamas, [0.2, 0.5, 0.3])
    if method == "nuslerp" and not with_base:
        models, weights = others, [0.7, 0.4]
    ours = merge(
        models,
        weights,
        tmp_path / "ours",
        model_type="decoder",
        base=base if with_base else None,
        method=method,
        method_params=params,
        progress=False,
    )
    assert bool(ours.memory.rows.count) != get_method(method, params).elementwise  # whole tensors: rows
    mine = load_file(tmp_path / "ours" / "model.safetensors")
    theirs = run_mergekit_config(
        method, base if with_base else None, models, weights, params, tmp_path / "mk"
    )
    assert sorted(mine) == sorted(theirs)
    for name in mine:
        assert mine[name].dtype == theirs[name].dtype == torch.float32
        torch.testing.assert_close(mine[name], theirs[name], rtol=2.4e-7, atol=1e-8, msg=name)


@pytest.mark.parametrize("method", ["della", "della_linear"])
def test_engine_della_draws_what_mergekit_draws_from_the_same_seed(tiny_llamas, tmp_path, method):
    """DELLA at density < 1 through the engine: each tensor equals mergekit's DELLA on it, mergekit's global
    generator seeded as ours is for that tensor (run_merge's own draws depend on its tensor order)."""
    base, *others = tiny_llamas
    params = {"density": 0.5, "epsilon": 0.2, "seed": 7}
    merge(
        others,
        [0.7, 0.4],
        tmp_path / "ours",
        model_type="decoder",
        base=base,
        method=method,
        method_params=params,
        progress=False,
    )
    mine = load_file(tmp_path / "ours" / "model.safetensors")
    inputs = [load_file(folder / "model.safetensors") for folder in tiny_llamas]
    for name, value in mine.items():
        theirs = mergekit_group_merge(
            method, params, inputs[0][name], [inputs[1][name], inputs[2][name]], [0.7, 0.4], name
        )
        assert torch.equal(value, theirs), name


@pytest.mark.parametrize(
    "name, shared, own",
    [
        (
            "breadcrumbs",
            {},
            [{"density": 0.5, "gamma": 0.05}, {"density": 0.8}, {"gamma": 0.2, "density": 0.3}],
        ),
        ("breadcrumbs_ties", {"density": 0.6}, [{}, {"gamma": 0.1}, {"density": 0.9, "gamma": 0.0}]),
        ("della", {"epsilon": 0.1}, [{"density": 0.5}, {"density": 0.7, "epsilon": 0.2}, {}]),
        ("della_linear", {"density": 0.4}, [{"epsilon": 0.3}, {}, {"density": 1.0}]),
    ],
)
def test_new_methods_take_mergekits_per_model_parameters(name, shared, own):
    """density, gamma and epsilon are per model in mergekit (NON_BASE scope): a model's own value wins, the
    merge's applies to the others."""
    generator = torch.Generator().manual_seed(11)
    base = torch.randn(20, 30, generator=generator)
    models = [base + 0.1 * torch.randn(20, 30, generator=generator) for _ in range(3)]
    weights = [0.5, 0.8, -0.3]
    key = "model.layers.1.self_attn.v_proj.weight"
    ours = get_method(name, shared, own).merge(models, weights, base, key=key)
    per_model = {
        k: {i + 1: s.get(k, shared.get(k)) for i, s in enumerate(own)}
        for k in ("density", "gamma", "epsilon")
    }
    defaults = {parameter.name: parameter.default for parameter in METHODS[name].parameters}
    params = {
        **shared,
        **{
            k: {i: (defaults[k] if v is None else v) for i, v in values.items()}
            for k, values in per_model.items()
            if k in defaults
        },
    }
    theirs = mergekit_group_merge(name, params, base, models, weights, key)
    assert torch.equal(ours, theirs)


def test_della_spread_is_checked_before_any_tensor_per_model_and_per_tensor():
    with pytest.raises(CocktailError, match=r"'della': density - epsilon and density \+ epsilon must lie in"):
        get_method("della", {"density": 0.9, "epsilon": 0.15})
    with pytest.raises(CocktailError, match="density=0.1 and epsilon=0.15 give -0.05 and 0.25"):
        get_method("della_linear", {"density": 0.5}, [{}, {"density": 0.1}])
    get_method("della", {"density": 1.0, "epsilon": 0.5})  # density 1 keeps everything: no probabilities
    method = get_method("della", {"density": [0.5, 0.95], "epsilon": 0.1})  # a per-layer list: per tensor
    tensors = [torch.randn(4, 4), torch.randn(4, 4)]
    with pytest.raises(CocktailError, match=r"tensor 'w', model 1\): density - epsilon"):
        method.at("w", 1.0, [0, 1]).merge(tensors, [0.5, 0.5], torch.zeros(4, 4), key="w")
