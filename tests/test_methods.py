"""Merge methods on tiny tensors worked out by hand, DARE's determinism, and every error message."""

from __future__ import annotations

import math

import pytest
import torch

from cocktail_bot.errors import CocktailError
from cocktail_bot.merge_kernels import tensor_seed
from cocktail_bot.methods import METHODS, get_method

BASE = torch.tensor([1.0, 1.0, 1.0, 1.0])
DELTAS = [  # no two entries of one task vector share a magnitude, so TIES' top-k is unambiguous
    torch.tensor([3.0, -1.0, 0.5, 2.0]),
    torch.tensor([-2.0, 4.0, 0.25, -1.0]),
    torch.tensor([1.0, -0.5, -3.0, 1.5]),
]
MODELS = [BASE + delta for delta in DELTAS]


def merge(name: str, params: dict | None = None, models=MODELS, weights=(1.0, 1.0, 0.5), base=BASE, key="w"):
    method = get_method(name, params)
    method.check(list(weights))
    return method.merge(models, list(weights), base, key=key)


def test_linear_is_the_weighted_average():
    models = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])]
    result = merge("linear", models=models, weights=(0.25, 0.75), base=None)
    assert result.tolist() == [2.5, 3.5]


def test_task_arithmetic_adds_weighted_task_vectors_to_the_base():
    # mixed = 1*[3,-1,.5,2] + 1*[-2,4,.25,-1] + .5*[1,-.5,-3,1.5] = [1.5, 2.75, -.75, 1.75]
    assert merge("task_arithmetic").tolist() == [2.5, 3.75, 0.25, 2.75]
    assert merge("task_arithmetic", {"lambda": 2}).tolist() == [4.0, 6.5, -0.5, 4.5]
    # normalize divides by the weights' sum, 2.5
    torch.testing.assert_close(
        merge("task_arithmetic", {"normalize": True}), torch.tensor([1.6, 2.1, 0.7, 1.7])
    )


def test_task_arithmetic_with_the_base_listed_reproduces_linear():
    """With weights summing to 1 over models and base: base + sum_{i != b} w_i (theta_i - base) == linear."""
    listed = [BASE, *MODELS[:2]]
    weights = [0.2, 0.5, 0.3]
    method = get_method("task_arithmetic")
    merged = method.split_base(["base", "a", "b"], "base")
    assert merged == [1, 2]
    result = method.merge([listed[i] for i in merged], [weights[i] for i in merged], BASE, key="w")
    torch.testing.assert_close(result, merge("linear", models=listed, weights=weights, base=None))


def test_ties_trims_elects_signs_and_averages_the_agreeing_entries():
    # density 0.5 keeps 2 of 4 entries per task vector:
    #   [3, 0, 0, 2], [-2, 4, 0, 0], [0, 0, -3, 1.5]; weighted by (1, 1, .5): [0, 0, -1.5, .75]
    # summed [1, 4, -1.5, 2.75] -> elected signs [+, +, -, +]; entry 0 drops the -2 that disagrees
    # agreeing sums [3, 4, -1.5, 2.75] over agreeing weights [1, 1, .5, 1.5] -> [3, 4, -3, 1.8333]
    expected = torch.tensor([4.0, 5.0, -2.0, 1.0 + 2.75 / 1.5])
    torch.testing.assert_close(merge("ties", {"density": 0.5}), expected)
    # without normalisation the agreeing entries are summed
    assert merge("ties", {"density": 0.5, "normalize": False}).tolist() == [4.0, 5.0, -0.5, 3.75]
    # a tie in the election goes to the positive sign, as in mergekit
    tie = merge("ties", models=[BASE + 1, BASE - 1], weights=(1.0, 1.0))
    assert tie.tolist() == [2.0, 2.0, 2.0, 2.0]


def test_ties_trim_keeps_exactly_k_entries_taking_ties_by_position():
    model = BASE + torch.tensor([1.0, -1.0, 1.0, 0.5])
    tied = merge("ties", {"density": 0.5}, models=[model], weights=(1.0,))
    assert (tied - BASE).tolist() == [1.0, -1.0, 0.0, 0.0]


def test_ties_rescale_keeps_each_trimmed_task_vector_l1_norm():
    params = {"density": 0.5, "rescale": True, "normalize": False}
    one = merge("ties", params, models=MODELS[:1], weights=(1.0,))
    # [3, -1, .5, 2] (L1 6.5) trimmed to [3, 0, 0, 2] (L1 5), scaled by 6.5/5
    torch.testing.assert_close(one - BASE, torch.tensor([3.9, 0.0, 0.0, 2.6]))


def test_dare_at_full_density_is_task_arithmetic_and_ties():
    assert merge("dare_linear").tolist() == merge("task_arithmetic").tolist()
    assert torch.equal(merge("dare_ties", {"normalize": True}), merge("ties"))


def test_dare_drops_entries_and_rescales_to_the_task_vectors_l1_norm():
    base = torch.zeros(64, 64)
    delta = torch.linspace(-1.0, 1.0, 64 * 64).reshape(64, 64)
    result = merge("dare_linear", {"density": 0.3}, models=[base + delta], weights=(1.0,), base=base, key="k")
    kept = result != 0
    assert 0.2 < kept.float().mean().item() < 0.4
    scale = (result[kept] / delta[kept]).unique()
    torch.testing.assert_close(scale.max(), scale.min())
    torch.testing.assert_close(result.abs().sum(), delta.abs().sum())
    torch.testing.assert_close(scale[0], delta.abs().sum() / delta[kept].abs().sum())


def test_dare_masks_are_seeded_per_tensor_and_independent_of_order_and_global_rng():
    generator = torch.Generator().manual_seed(5)
    tensors = {key: torch.randn(3, 32, 32, generator=generator) for key in ("a.weight", "b.weight", "c.bias")}
    weights = [0.6, 0.4]

    def run(keys, seed=0):
        method = get_method("dare_ties", {"density": 0.5, "seed": seed})
        return {key: method.merge(list(tensors[key][1:]), weights, tensors[key][0], key=key) for key in keys}

    forward = run(["a.weight", "b.weight", "c.bias"])
    torch.manual_seed(1234)  # the global generator plays no part
    backward = run(["c.bias", "b.weight", "a.weight"])
    assert all(torch.equal(forward[key], backward[key]) for key in tensors)
    # another seed, or the same values under another name, draws another mask
    assert not torch.equal(run(["a.weight"], seed=1)["a.weight"], forward["a.weight"])
    method = get_method("dare_ties", {"density": 0.5})
    renamed = method.merge(list(tensors["a.weight"][1:]), weights, tensors["a.weight"][0], key="renamed")
    assert not torch.equal(renamed, forward["a.weight"])


def test_dare_leaves_the_global_rng_untouched():
    models = list(torch.randn(2, 50, generator=torch.Generator().manual_seed(0)))
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    merge("dare_linear", {"density": 0.5}, models=models, weights=(1, 1), base=torch.zeros(50))
    assert torch.equal(torch.rand(4), expected)


def test_tensor_seed_is_stable_across_processes():
    """Locked rebuilds depend on it: a change here changes every DARE merge ever recorded."""
    assert tensor_seed(0, "model.embed_tokens.weight") == 1900915749987320403
    assert tensor_seed(7, "lm_head.weight") == 375673552882455667


def test_slerp_follows_the_arc_between_the_base_and_the_other_model():
    def slerp(base, other, t):
        return merge("slerp", {"t": t}, models=[torch.tensor(other)], weights=(1.0,), base=torch.tensor(base))

    # orthogonal unit vectors: the angle is pi/2, the result at t is (cos(t pi/2), sin(t pi/2))
    torch.testing.assert_close(slerp([1.0, 0.0], [0.0, 1.0], 1 / 3), torch.tensor([math.sqrt(3) / 2, 0.5]))
    # the vectors are interpolated as they are: only the angle uses their directions
    h = math.sqrt(0.5)
    torch.testing.assert_close(slerp([2.0, 0.0], [0.0, 1.0], 0.5), torch.tensor([2 * h, h]))
    # (nearly) collinear vectors are interpolated linearly
    assert slerp([1.0, 2.0], [2.0, 4.0], 0.25).tolist() == [1.25, 2.5]
    assert slerp([1.0, 0.0], [0.0, 1.0], 0.0).tolist() == [1.0, 0.0]
    torch.testing.assert_close(slerp([1.0, 0.0], [0.0, 1.0], 1.0), torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize(
    "name, params",
    [
        ("linear", {}),
        ("task_arithmetic", {}),
        ("ties", {"density": 0.5}),
        ("dare_linear", {"density": 0.5}),
        ("dare_ties", {"density": 0.5}),
        ("slerp", {"t": 0.3}),
    ],
)
def test_methods_keep_inputs_and_dtype(name, params):
    generator = torch.Generator().manual_seed(0)
    count = 1 if name == "slerp" else 2
    models = [torch.randn(8, 8, dtype=torch.float64, generator=generator) for _ in range(count)]
    base = torch.randn(8, 8, dtype=torch.float64, generator=generator)
    copies = [t.clone() for t in (*models, base)]
    method = get_method(name, params)
    weights = [1.0 / len(models)] * len(models)
    result = method.merge(models, weights, base if method.needs_base else None, key="w")
    assert result.dtype == torch.float64 and result.shape == base.shape
    assert all(torch.equal(a, b) for a, b in zip((*models, base), copies, strict=True))


def test_parameters_get_mergekit_defaults_and_are_described():
    assert {name: get_method(name, {"t": 0.5} if name == "slerp" else None).params for name in METHODS} == {
        "linear": {},
        "task_arithmetic": {"lambda": 1.0, "normalize": False},
        "ties": {"density": 1.0, "lambda": 1.0, "normalize": True, "rescale": False},
        "dare_linear": {"density": 1.0, "lambda": 1.0, "normalize": False, "rescale": True, "seed": 0},
        "dare_ties": {"density": 1.0, "lambda": 1.0, "normalize": False, "rescale": True, "seed": 0},
        "slerp": {"t": 0.5},
        "breadcrumbs": {"density": 1.0, "gamma": 0.01, "lambda": 1.0, "normalize": False, "rescale": False},
        "breadcrumbs_ties": {
            "density": 1.0,
            "gamma": 0.01,
            "lambda": 1.0,
            "normalize": False,
            "rescale": False,
        },
        "della": {
            "density": 1.0,
            "epsilon": 0.15,
            "lambda": 1.0,
            "normalize": True,
            "rescale": True,
            "seed": 0,
        },
        "della_linear": {
            "density": 1.0,
            "epsilon": 0.15,
            "lambda": 1.0,
            "normalize": False,
            "rescale": True,
            "seed": 0,
        },
        "model_stock": {"filter_wise": False},
        "nuslerp": {"nuslerp_flatten": True, "nuslerp_row_wise": False},
        "multislerp": {"normalize_weights": True, "eps": 1e-8},
        "karcher": {"max_iter": 10, "tol": 1e-5},
        "sce": {"select_topk": 1.0, "int8_mask": False},
    }
    method = get_method("ties", {"density": 0.5, "lambda": 2})
    assert method.params["lambda"] == 2.0 and isinstance(method.params["lambda"], float)
    assert method.describe() == (
        "ties (TIES-Merging, Yadav et al. 2023, arXiv:2306.01708) with density=0.5, lambda=2, "
        "normalize=true, rescale=false"
    )
    assert method.paper_url == "https://arxiv.org/abs/2306.01708"
    linear = "linear (LM-Cocktail weighted average, Xiao et al. 2023, arXiv:2311.13534)"
    assert get_method("linear").describe() == linear
    assert [
        get_method(name, {"t": 0}).needs_base if name == "slerp" else get_method(name).needs_base
        for name in METHODS
    ] == [False, True, True, True, True, True, True, True, True, True, True, False, False, False, True]


def test_base_is_not_a_task_vector():
    ties, linear = get_method("ties"), get_method("linear")
    assert ties.split_base(["base", "a", "b"], "base") == [1, 2]
    assert ties.split_base(["a", "b"], "base") == [0, 1]  # a base not listed among the models
    assert linear.split_base(["base", "a"], "base") == [0, 1]  # linear averages the base like any model
    get_method("slerp", {"t": 0.5}).check_recipe(["a", "b"], [0.5, 0.5], "a")
    ties.check_recipe(["base", "a", "b"], [0.0, 0.3, 2.0], "base")  # weights need not sum to 1
    ties.check_recipe(["base", "a"], None, "base")  # weights from examples: not known yet


VALID = (
    "linear, task_arithmetic, ties, dare_linear, dare_ties, slerp, breadcrumbs, breadcrumbs_ties, della, "
    "della_linear, model_stock, nuslerp, multislerp, karcher, sce"
)
TIES = "merge method 'ties': parameter"


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("tie", {}, f"unknown merge method 'tie'; did you mean 'ties'? (valid: {VALID})"),
        ("average", {}, f"unknown merge method 'average' (valid: {VALID})"),
        (
            "ties",
            {"densty": 0.5},
            "unknown parameter 'densty' for merge method 'ties'; did you mean 'density'? "
            "(valid: density, lambda, normalize, rescale)",
        ),
        (
            "task_arithmetic",
            {"density": 0.5},
            "unknown parameter 'density' for merge method 'task_arithmetic' (valid: lambda, normalize)",
        ),
        (
            "linear",
            {"normalize": True},
            "unknown parameter 'normalize' for merge method 'linear' (it takes no parameters)",
        ),
        (
            "ties",
            {"density": 0},
            "merge method 'ties': parameter 'density' must be a number in (0, 1], got 0",
        ),
        (
            "dare_ties",
            {"density": 1.5},
            "merge method 'dare_ties': parameter 'density' must be a number in (0, 1], got 1.5",
        ),
        ("ties", {"density": "0.5"}, f"{TIES} 'density' must be a number in (0, 1], got '0.5'"),
        ("ties", {"density": True}, f"{TIES} 'density' must be a number in (0, 1], got True"),
        ("ties", {"lambda": float("nan")}, f"{TIES} 'lambda' must be a finite number, got nan"),
        ("ties", {"normalize": "yes"}, f"{TIES} 'normalize' must be true or false, got 'yes'"),
        ("ties", {"normalize": 1}, f"{TIES} 'normalize' must be true or false, got 1"),
        (
            "dare_linear",
            {"seed": -1},
            "merge method 'dare_linear': parameter 'seed' must be an integer >= 0, got -1",
        ),
        (
            "dare_linear",
            {"seed": 1.5},
            "merge method 'dare_linear': parameter 'seed' must be an integer >= 0, got 1.5",
        ),
        (
            "slerp",
            {},
            "merge method 'slerp' needs the parameter 't' (a number in [0, 1]: interpolation factor: "
            "0 gives the base, 1 the other model)",
        ),
        ("slerp", {"t": 1.2}, "merge method 'slerp': parameter 't' must be a number in [0, 1], got 1.2"),
        (
            "dare_ties",
            {"seed": {"filter": "mlp", "value": 5}},
            "merge method 'dare_ties': parameter 'seed' takes one value, got {'filter': 'mlp', 'value': 5}; "
            "per-layer lists and filters are not supported",
        ),
    ],
)
def test_bad_methods_and_parameters(name, params, message):
    with pytest.raises(CocktailError) as error:
        get_method(name, params)
    assert str(error.value) == message and error.value.exit_code == 2


@pytest.mark.parametrize(
    "name, params, models, weights, base, message",
    [
        (
            "ties",
            {},
            ["a", "b"],
            [0.5, 0.5],
            None,
            "merge method 'ties' needs a base model, the one its task vectors are measured from: "
            "name it with `base`",
        ),
        (
            "slerp",
            {"t": 0.5},
            ["a", "b", "c"],
            None,
            "a",
            "merge method 'slerp' merges exactly two models, the base (t=0) and one other (t=1), but got 2 models "
            "besides the base",
        ),
        (
            "slerp",
            {"t": 0.5},
            ["a", "b"],
            [0.5, 0.5],
            "c",
            "merge method 'slerp' merges exactly two models, the base (t=0) and one other (t=1), but got 2 models "
            "besides the base",
        ),
        (
            "dare_ties",
            {},
            ["base"],
            [1.0],
            "base",
            "merge method 'dare_ties' needs at least one model besides the base: add the models whose task vectors "
            "to merge",
        ),
        (
            "task_arithmetic",
            {},
            ["base", "a"],
            [0.5, float("inf")],
            "base",
            "weights must be finite numbers, got [inf]",
        ),
        (
            "linear",
            {},
            ["a", "b"],
            [0.5, 0.6],
            None,
            "linear merge weights must sum to 1 (within 0.001, then they are divided by their sum), but [0.5, 0.6] sums to 1.1",
        ),
    ],
)
def test_bad_recipes(name, params, models, weights, base, message):
    with pytest.raises(CocktailError) as error:
        get_method(name, params).check_recipe(models, weights, base)
    assert str(error.value) == message


def test_merge_without_a_base_is_refused():
    with pytest.raises(CocktailError, match="merge method 'dare_linear' needs a base model"):
        get_method("dare_linear").merge(MODELS, [1.0, 1.0, 1.0], None, key="w")


def test_elementwise_methods_give_the_same_result_chunk_by_chunk():
    """The engine may stream `elementwise` methods in chunks, as it does for linear."""
    generator = torch.Generator().manual_seed(2)
    base, *models = torch.randn(3, 1000, generator=generator)
    cases = [
        ("linear", {}),
        ("task_arithmetic", {}),
        ("ties", {}),
        ("ties", {"density": 0.5}),
        ("dare_linear", {}),
        ("dare_linear", {"density": 0.5}),
        ("dare_ties", {"density": 0.5}),
        ("slerp", {"t": 0.5}),
    ]
    for name, params in cases:
        method = get_method(name, params)
        inputs, weights = (models[:1], [1.0]) if name == "slerp" else (models, [0.25, 0.75])
        whole = method.merge(inputs, weights, base, key="w")
        chunked = torch.cat(
            [
                method.merge([m[i : i + 100] for m in inputs], weights, base[i : i + 100], key="w")
                for i in range(0, 1000, 100)
            ]
        )
        assert torch.equal(whole, chunked) == method.elementwise, (name, params)
    assert [get_method(name, params).elementwise for name, params in cases] == [
        True,
        True,
        True,
        False,
        True,
        False,
        False,
        False,
    ]


def test_masks_built_piece_by_piece_are_the_whole_tensor_masks(monkeypatch):
    """DARE's draws and TIES' mask are made MASK_CHUNK entries at a time: the same mask as in one piece (one
    torch.rand call; a full sort keeping ties at the threshold by position), with ties spread over pieces."""
    from cocktail_bot import merge_kernels

    monkeypatch.setattr(merge_kernels, "MASK_CHUNK", 97)
    generator = torch.Generator().manual_seed(4)
    delta = torch.randn(1000, generator=generator)
    delta[::3] = 0.5  # 334 entries tied at 0.5, in every piece
    delta[1::7] = 0.0
    dropped = merge_kernels.drop_randomly(delta.clone(), 0.4, False, torch.Generator().manual_seed(9))
    draws = torch.rand(1000, generator=torch.Generator().manual_seed(9))
    assert torch.equal(dropped, delta * (draws < 0.4))
    for density in (0.2, 0.5, 0.9):
        keep = int(density * 1000)
        order = torch.sort(delta.abs(), descending=True, stable=True).indices[:keep]
        expected = torch.zeros_like(delta)
        expected[order] = delta[order]
        assert torch.equal(merge_kernels.keep_largest(delta.clone(), density, False), expected), density


@pytest.mark.parametrize(
    "name, params",
    [
        ("task_arithmetic", {}),
        ("ties", {"density": 0.5}),
        ("dare_ties", {"density": 0.5}),
        ("slerp", {"t": 0.3}),
    ],
)
def test_merge_in_place_gives_the_same_bits_in_the_callers_buffers(name, params):
    """What the engine calls on its own rows: the inputs are consumed and the result is one of them."""
    generator = torch.Generator().manual_seed(6)
    rows = torch.randn(3, 5000, generator=generator)
    models, weights = (rows[:1], [1.0]) if name == "slerp" else (rows[:2], [0.7, -0.2])
    method = get_method(name, params)
    expected = method.merge(list(models), weights, rows[2], key="w")
    result = method.merge_(list(models), weights, rows[2], key="w")
    assert torch.equal(result, expected)
    assert any(result.data_ptr() == row.data_ptr() for row in rows)
