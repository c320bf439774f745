"""`cocktail mix` end to end: arguments, output, exit codes and messages."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cocktail_bot.cli import main


def mix(*models: Path | str, weights=("0.5", "0.5"), extra=()) -> list[str]:
    return ["mix", *map(str, models), "--weights", *weights, "--type", "decoder", *extra]


def test_mix_writes_the_merged_model(tiny_llamas, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(mix(*tiny_llamas, weights=("0.2", "0.3", "0.5"), extra=("--out", str(out)))) == 0
    merged = load_file(out / "model.safetensors")
    states = [load_file(path / "model.safetensors") for path in tiny_llamas]
    name = "model.layers.0.mlp.up_proj.weight"
    expected = (
        0.2 * states[0][name].double() + 0.3 * states[1][name].double() + 0.5 * states[2][name].double()
    )
    torch.testing.assert_close(merged[name].double(), expected, rtol=2**-23, atol=0)
    assert re.match(
        rf"wrote {re.escape(str(out))} \(\d+\.\d kB, float32, 5 files\) in ", capsys.readouterr().out
    )


def test_dtype_shard_size_and_base_options(tiny_llamas, tiny_llama_bf16, tmp_path):
    out = tmp_path / "out"
    options = (
        "--out",
        str(out),
        "--dtype",
        "bfloat16",
        "--shard-size",
        "40KB",
        "--base",
        str(tiny_llama_bf16),
    )
    assert main(mix(*tiny_llamas[:2], extra=options)) == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1
    assert {t.dtype for f in files for t in load_file(out / f).values()} == {torch.bfloat16}
    assert (out / "config.json").read_text() == (tiny_llama_bf16 / "config.json").read_text()


def test_existing_output_needs_force(tiny_llamas, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert main(mix(*tiny_llamas[:2], extra=("--out", str(out)))) == 2
    assert capsys.readouterr().err == (
        f"error: the output folder {out} already exists: choose another one or pass --force to replace it\n"
    )
    assert list(out.iterdir()) == []
    assert main(mix(*tiny_llamas[:2], extra=("--out", str(out), "--force"))) == 0
    assert (out / "model.safetensors").is_file()


def test_force_on_the_current_folder_is_refused(tiny_llamas, tmp_path, capsys, monkeypatch):
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    assert main(mix(*tiny_llamas[:2], extra=("--out", ".", "--force"))) == 2
    assert capsys.readouterr().err == (
        "error: the output folder . is (or contains) the current folder, which cannot be replaced: "
        "choose another output folder\n"
    )
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]
    assert [path.name for path in tmp_path.parent.iterdir() if ".old-" in path.name] == []


def test_weights_off_by_rounding_are_divided_by_their_sum(tiny_llamas, tmp_path, caplog):
    caplog.set_level("INFO")
    out = tmp_path / "out"
    args = mix(*tiny_llamas, weights=("0.333333",) * 3, extra=("--out", str(out)))
    assert main(args) == 0
    assert (
        "note: the linear weights [0.333333, 0.333333, 0.333333] sum to 0.999999, not 1: merging with them "
        "divided by their sum, [0.333333, 0.333333, 0.333333]" in caplog.messages
    )
    states = [load_file(folder / "model.safetensors") for folder in tiny_llamas]
    merged = load_file(out / "model.safetensors")
    for name, value in merged.items():
        torch.testing.assert_close(value.double(), sum(state[name].double() for state in states) / 3)


def test_weight_count_error(tiny_llamas, tmp_path, capsys):
    code = main(mix(*tiny_llamas, weights=("0.5", "0.5"), extra=("--out", str(tmp_path / "out"))))
    assert code == 2
    assert capsys.readouterr().err == "error: got 2 weights for 3 models: give one weight per model\n"
    assert not (tmp_path / "out").exists()


def test_missing_model_folder_error(tiny_llamas, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(mix(tiny_llamas[0], missing, extra=("--out", str(tmp_path / "out")))) == 2
    # not a folder, so a Hub reference: sources.resolve_source explains what it expected
    assert (
        capsys.readouterr().err
        == f"error: model folder {missing} does not exist (a Hub repo is named org/name)\n"
    )
    assert not (tmp_path / "out").exists()


def test_subprocess_error_has_no_traceback(tiny_llamas, tmp_path):
    args = mix(*tiny_llamas[:2], weights=("0.7", "0.7"), extra=("--out", str(tmp_path / "out")))
    done = subprocess.run(
        [sys.executable, "-m", "cocktail_bot", *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "sum to 1" in done.stderr and "1.4" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_mix_reads_hub_references_by_range_and_equals_the_local_mix(hub_server, tiny_llamas, tmp_path):
    from huggingface_hub import constants

    for index, folder in enumerate(tiny_llamas):
        hub_server.commit_folder(f"cocktail/llama-{index}", folder)
    hub_ids = ["cocktail/llama-0@main", "cocktail/llama-1", "cocktail/llama-2"]
    options = ("--shard-size", "40KB", "--dtype", "bfloat16")
    weights = ("0.2", "0.3", "0.5")
    assert (
        main(
            mix(
                *hub_ids,
                weights=weights,
                extra=("--out", str(tmp_path / "hub"), "--base", hub_ids[1], *options),
            )
        )
        == 0
    )
    local = ("--out", str(tmp_path / "local"), "--base", str(tiny_llamas[1]), *options)
    assert main(mix(*tiny_llamas, weights=weights, extra=local)) == 0
    written = {p.name: p.read_bytes() for p in (tmp_path / "hub").iterdir()}
    assert sum(name.endswith(".safetensors") for name in written) > 1
    assert written == {p.name: p.read_bytes() for p in (tmp_path / "local").iterdir()}
    assert not list(Path(constants.HF_HOME).rglob("*.safetensors"))  # no weight file on disk
    reads = hub_server.seen("cdn")
    assert len(reads) >= 3 and all(r.range for r in reads)  # every weight byte came by a ranged read


def test_method_and_params_merge_as_the_engine_does(tiny_llamas, tmp_path):
    """--method / --param give the engine's merge with those parameters: per-layer lists and filters too."""
    from cocktail_bot.engine import merge

    base, *others = tiny_llamas
    params = ("--param", "density=[0.3, 0.8]", "--param", "lambda=0.9", "--param", "normalize=true")
    command = mix(*others, weights=("0.6", "0.7"), extra=("--method", "ties", "--base", str(base), *params))
    assert main([*command, "--out", str(tmp_path / "cli")]) == 0
    merge(
        others,
        [0.6, 0.7],
        tmp_path / "api",
        model_type="decoder",
        base=base,
        method="ties",
        method_params={"density": [0.3, 0.8], "lambda": 0.9, "normalize": True},
        progress=False,
    )
    assert (tmp_path / "cli" / "model.safetensors").read_bytes() == (
        tmp_path / "api" / "model.safetensors"
    ).read_bytes()
    tuned = load_file(tmp_path / "api" / "model.safetensors")
    default = tmp_path / "default"
    assert (
        main(
            [
                *mix(*others, weights=("0.6", "0.7"), extra=("--method", "ties", "--base", str(base))),
                "--out",
                str(default),
            ]
        )
        == 0
    )
    assert any(not torch.equal(tuned[n], t) for n, t in load_file(default / "model.safetensors").items())


def test_slerp_needs_no_weights(tiny_llamas, tmp_path):
    from cocktail_bot.engine import merge

    base, other, _ = tiny_llamas
    t = "t=[{filter: mlp, value: 0.2}, {value: [0, 1]}]"
    command = ["mix", str(base), str(other), "--type", "decoder", "--method", "slerp", "--param", t]
    assert main([*command, "--out", str(tmp_path / "cli")]) == 0
    setting = [{"filter": "mlp", "value": 0.2}, {"value": [0, 1]}]
    merge(
        [base, other],
        [0.5, 0.5],
        tmp_path / "api",
        model_type="decoder",
        base=base,
        method="slerp",
        method_params={"t": setting},
        progress=False,
    )
    assert (tmp_path / "cli" / "model.safetensors").read_bytes() == (
        tmp_path / "api" / "model.safetensors"
    ).read_bytes()


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ("--method", "ties", "--param", "densty=0.5"),
            "unknown parameter 'densty' for merge method 'ties'; did you mean 'density'?",
        ),
        (
            ("--method", "ties", "--param", "density"),
            "--param expects KEY=VALUE (e.g. density=0.5), got 'density'",
        ),
        (
            ("--method", "ties", "--param", "density=2"),
            "merge method 'ties': parameter 'density' must be a number in (0, 1], got 2",
        ),
        (
            (
                "--method",
                "tie",
            ),
            "unknown merge method 'tie'; did you mean 'ties'?",
        ),
        (
            ("--method", "ties", "--param", "density=0.5", "--param", "density=0.6"),
            "--param density is given twice; give it once",
        ),
    ],
)
def test_bad_method_or_param_is_one_message(tiny_llamas, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert main(mix(*tiny_llamas[:2], extra=("--out", str(out), "--base", str(tiny_llamas[0]), *extra))) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and "Traceback" not in err
    assert not out.exists()


def test_a_weighted_method_without_weights_is_refused(tiny_llamas, tmp_path, capsys):
    command = [
        "mix",
        *map(str, tiny_llamas[:2]),
        "--type",
        "decoder",
        "--method",
        "ties",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(command) == 2
    assert capsys.readouterr().err == "error: merge method 'ties' needs --weights: one weight per model\n"
