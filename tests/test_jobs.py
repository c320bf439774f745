"""`cocktail run --on hf-jobs`: the run done by a Hugging Face job on the local test Hub (tests/hub_jobs.py runs
the job's command in a subprocess standing in for the container), followed from the caller, with the same
card, lock and report as a local run; failing, cancelled and resubmitted jobs; the token kept secret."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import pytest

from cocktail_bot.errors import CocktailError, RemoteError
from cocktail_bot.jobs import results as job_results
from cocktail_bot.jobs.bundle import JobSpec, build_bundle
from cocktail_bot.jobs.client import STAGING_REPO, JobClient, bootstrap_command, job_labels
from cocktail_bot.jobs.offload import run_on_hf_jobs
from cocktail_bot.jobs.settings import parse_on
from cocktail_bot.lock import LOCK_NAME
from cocktail_bot.manifest import load_manifest
from cocktail_bot.manifest_schema import HfJobsSettings
from cocktail_bot.pipeline import output_location, run_manifest
from cocktail_bot.report import Provenance, Report
from tests.conftest import GITHUB_REPOSITORY
from tests.hub_server import ORG, USER, Token
from tests.mounts import run_mounted

OUTPUT_REPO = f"{ORG}/offloaded"
JOB_TOKEN = "hf_test_job_secret_0123456789"  # the job's token: must never show outside the job's secrets
MANIFEST = f"""\
version: 1
name: tiny-offloaded
type: decoder
models:
  - {{id: {ORG}/llama-a, weight: 0.6}}
  - {{id: {ORG}/llama-b, weight: 0.4}}
eval:
  - {{name: heldout, examples: data/heldout.jsonl}}
output: {{repo: {OUTPUT_REPO}, license: apache-2.0}}
runner: {{hf_jobs: {{flavor: cpu-basic, timeout: 30m}}}}
"""
PROVENANCE = Provenance(
    repository="acme/recipes",
    commit="1f" * 20,
    pr_number=7,
    run_url="https://github.com/acme/recipes/actions/runs/4242",
)


@pytest.fixture(scope="session")
def job_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The job container's Python: a fresh environment seeing this one's installed packages (as an image with
    the requirements preinstalled), but not cocktail-bot itself, which the job gets from its bundle."""
    image = tmp_path_factory.mktemp("image") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(image)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(image), "platbase": str(image)}))
    site_dirs = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "zz_image.pth").write_text("\n".join(site_dirs) + "\n")
    return image


@pytest.fixture
def jobs_hub(hub_server, job_image: Path, tiny_llamas: list[Path]):
    hub_server.jobs.image_env = {
        "PATH": f"{job_image / 'bin'}:/usr/bin:/bin",
        "HF_HUB_DISABLE_XET": "1",
    }
    hub_server.tokens[JOB_TOKEN] = Token(USER, frozenset({USER, ORG}), write=True)
    for name, model in zip("ab", tiny_llamas, strict=False):
        hub_server.commit_folder(f"{ORG}/llama-{name}", model)
    return hub_server


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    (root / ".git").mkdir(parents=True)
    (root / "data").mkdir()
    records = [{"input": f"what is the {w}?", "output": f"the {w} is good"} for w in ("cat", "dog", "tree")]
    (root / "data" / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / "cocktail.yml").write_text(MANIFEST)
    return root / "cocktail.yml"


def comparable(report: Report) -> dict:
    """A report without what differs between any two runs: timings, memory, folders, commit ids."""
    data = report.model_dump(exclude={"seconds", "peak_rss_bytes"})
    for step in data["steps"]:
        step.pop("seconds")
    for source in data["sources"]:
        source.pop("path")
    for key in ("commit_sha", "commit_url"):
        data["publish"].pop(key)
    data["output"].pop("path")
    return data


def assert_bundles_deleted(hub) -> None:
    """The staging repo holds no bundle at any commit (history rewritten), and the test Hub no LFS bytes of
    one: the caller's inputs are gone once the job has ended."""
    staging = hub.repos[f"{USER}/{STAGING_REPO}"]
    kept = {
        path for commit in staging.commits.values() for path in commit.files if path.startswith("bundles/")
    }
    assert not kept
    assert not any(data[:2] == b"PK" for data in hub.lfs_objects.values())


def without_build_time(card: str) -> str:
    return "\n".join(line for line in card.splitlines() if not line.startswith("- Built by cocktail-bot"))


def test_offloaded_run_publishes_and_brings_back_what_a_local_run_leaves(
    jobs_hub, checkout: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    local = run_manifest(
        checkout,
        tmp_path / "local",
        publish=True,
        provenance=PROVENANCE,
        token=jobs_hub.write_token,
        progress=False,
    )
    local_lock = checkout.with_suffix(".lock").read_bytes()
    local_card = jobs_hub.files(OUTPUT_REPO)["README.md"].decode()
    del jobs_hub.repos[OUTPUT_REPO]
    checkout.with_suffix(".lock").unlink()

    report = run_on_hf_jobs(
        checkout,
        tmp_path / "remote",
        publish=True,
        provenance=PROVENANCE,
        token=jobs_hub.write_token,
        job_token=JOB_TOKEN,
    )

    (job,) = jobs_hub.jobs.jobs.values()
    assert job.stage == "COMPLETED"
    assert job.spec["flavor"] == "cpu-basic" and job.spec["timeoutSeconds"] == 1800  # runner.hf_jobs
    assert comparable(report) == comparable(local)
    assert report.output.path == str(tmp_path / "remote")
    assert checkout.with_suffix(".lock").read_bytes() == local_lock
    assert (tmp_path / "remote" / LOCK_NAME).read_bytes() == (tmp_path / "local" / LOCK_NAME).read_bytes()
    remote_card = (tmp_path / "remote" / "README.md").read_text()
    assert without_build_time(remote_card) == without_build_time(local_card)
    assert jobs_hub.files(OUTPUT_REPO)["README.md"].decode() == remote_card
    assert Report.model_validate_json((tmp_path / "remote" / "report.json").read_text()) == report
    published = jobs_hub.files(OUTPUT_REPO)
    assert published["model.safetensors"] == (tmp_path / "local" / "model.safetensors").read_bytes()
    # the job ran this cocktail-bot on these inputs, and its log reached the caller's
    assert job.spec["labels"]["cocktail-manifest"] == load_manifest(checkout).sha256
    assert job.spec["labels"]["repository"] == "acme-recipes" and job.spec["labels"]["pr"] == "7"
    assert job.spec["labels"]["run-id"] == "4242"
    # the job published without a local copy of the model (as `cocktail run --publish` without --out)
    sent = job_results.read_results([line for _, line in job.logs])
    assert sent is not None
    sent_report = Report.model_validate_json(sent.files["report.json"])
    assert sent_report.output.path == output_location(None, load_manifest(checkout))
    assert_bundles_deleted(jobs_hub)
    logged = capfd.readouterr().err
    assert "cocktail-bot job: running cocktail.yml" in logged
    assert job_results.BEGIN not in logged
    # the token: a secret of the job, nowhere else
    assert job.spec["secrets"] == {"HF_TOKEN": JOB_TOKEN}
    shown = json.dumps({k: v for k, v in job.spec.items() if k != "secrets"}) + json.dumps(job.info())
    log = "\n".join(line for _, line in job.logs)
    for text in (shown, log, logged, remote_card, (tmp_path / "remote" / "report.json").read_text()):
        assert JOB_TOKEN not in text and jobs_hub.write_token not in text


def test_a_failing_job_gives_one_message_and_keeps_the_lock(jobs_hub, checkout: Path, tmp_path: Path) -> None:
    jobs_hub.tokens[JOB_TOKEN] = Token(USER, frozenset({USER, ORG}), write=False)  # may not publish
    with pytest.raises(CocktailError) as caught:
        run_on_hf_jobs(
            checkout, tmp_path / "out", publish=True, token=jobs_hub.write_token, job_token=JOB_TOKEN
        )
    (job,) = jobs_hub.jobs.jobs.values()
    assert job.stage == "ERROR"
    message = str(caught.value)
    assert message.startswith(f"the Hugging Face job {jobs_hub.endpoint}/jobs/{USER}/{job.id} failed: ")
    assert "may not write to cocktail/offloaded (403 Forbidden)" in message
    assert caught.value.exit_code == 1
    report = Report.model_validate_json((tmp_path / "out" / "report.json").read_text())
    assert report.status == "failure" and "403" in report.error
    assert OUTPUT_REPO not in jobs_hub.repos
    assert_bundles_deleted(jobs_hub)


def test_a_job_that_dies_or_times_out_says_so(jobs_hub, checkout: Path, tmp_path: Path) -> None:
    image = dict(jobs_hub.jobs.image_env)
    jobs_hub.jobs.image_env["PYTHONHOME"] = "/nonexistent"  # an image whose Python cannot start
    with pytest.raises(CocktailError, match=r"failed \(Job failed with exit code: \d+\) before it finished"):
        run_on_hf_jobs(checkout, tmp_path / "out", publish=True, token=jobs_hub.write_token)
    jobs_hub.jobs.image_env = image
    checkout.write_text(MANIFEST.replace("timeout: 30m", "timeout: 1s"))
    with pytest.raises(CocktailError, match=r"ran out of time \(1s\).*raise runner.hf_jobs.timeout"):
        run_on_hf_jobs(checkout, tmp_path / "out", publish=True, token=jobs_hub.write_token)
    assert not (tmp_path / "out").exists()
    assert_bundles_deleted(jobs_hub)


def test_a_job_cancelled_on_the_hub_says_so(jobs_hub, checkout: Path, tmp_path: Path) -> None:
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            run_on_hf_jobs(checkout, tmp_path / "out", publish=True, token=jobs_hub.write_token)
        except BaseException as error:  # handed to the test thread
            outcome.append(error)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 60
    while not jobs_hub.jobs.jobs and time.monotonic() < deadline:
        time.sleep(0.05)
    (job,) = jobs_hub.jobs.jobs.values()
    jobs_hub.jobs.cancel(job)  # someone cancels it on the Hub
    caller.join(timeout=60)
    assert [type(e) for e in outcome] == [RemoteError]
    assert (
        str(outcome[0])
        == f"the Hugging Face job {jobs_hub.endpoint}/jobs/{USER}/{job.id} was cancelled before it finished"
    )
    assert outcome[0].exit_code == 1 and not (tmp_path / "out").exists()
    assert_bundles_deleted(jobs_hub)


def test_offloading_needs_publishing_and_hub_sources(jobs_hub, checkout: Path, tmp_path: Path) -> None:
    with pytest.raises(CocktailError, match="hands its model over through the Hub: add --publish"):
        run_on_hf_jobs(checkout, tmp_path / "out", token=jobs_hub.write_token)
    local = checkout.parent / "models" / "a"
    local.mkdir(parents=True)
    (local / "model.safetensors").write_bytes(jobs_hub.files(f"{ORG}/llama-a")["model.safetensors"])
    checkout.write_text(MANIFEST.replace(f"{ORG}/llama-a", "./models/a"))
    with pytest.raises(CocktailError, match=r"merges local folders \(./models/a\).*upload them to the Hub"):
        run_on_hf_jobs(checkout, tmp_path / "out", publish=True, token=jobs_hub.write_token)
    assert not jobs_hub.jobs.jobs


def test_a_resubmission_follows_the_job_already_running(jobs_hub, checkout: Path, tmp_path: Path) -> None:
    manifest = load_manifest(checkout)
    spec = JobSpec(manifest="cocktail.yml", provenance=PROVENANCE)
    bundle = build_bundle(manifest, spec, None)
    assert build_bundle(manifest, spec, None) == bundle  # the same run, the same bytes
    labels = job_labels(bundle, manifest.sha256, PROVENANCE)
    client = JobClient(jobs_hub.write_token, None, None)
    repo_id, path = client.stage(bundle)
    first = client.submit(
        image="python:3.12",
        command=bootstrap_command("cocktail.yml"),
        env={"COCKTAIL_JOB_REPO": repo_id, "COCKTAIL_JOB_BUNDLE": path, "HF_ENDPOINT": jobs_hub.endpoint},
        secrets={"HF_TOKEN": jobs_hub.write_token},
        flavor="cpu-basic",
        timeout=None,
        labels=labels,
    )
    report = run_on_hf_jobs(
        checkout, tmp_path / "out", publish=True, provenance=PROVENANCE, token=jobs_hub.write_token
    )
    assert list(jobs_hub.jobs.jobs) == [first.id]
    assert report.publish is not None and report.publish.repo_id == OUTPUT_REPO
    # the bundle, the model (nothing published twice), the bundle's deletion
    assert len(jobs_hub.seen("commit", "POST")) == 3
    assert_bundles_deleted(jobs_hub)


def test_sigterm_on_the_caller_cancels_the_job(jobs_hub, checkout: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HF_TOKEN": jobs_hub.write_token}
    caller = subprocess.Popen(
        [sys.executable, "-m", "cocktail_bot", "run", str(checkout), "--out", str(tmp_path / "out")]
        + ["--publish", "--on", "hf-jobs:cpu-upgrade"],
        cwd=checkout.parent,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert caller.stderr is not None
    seen = []
    for line in caller.stderr:
        seen.append(line)
        if line.startswith("cocktail-bot job: "):
            break
    caller.send_signal(signal.SIGTERM)
    _, rest = caller.communicate(timeout=60)
    (job,) = jobs_hub.jobs.jobs.values()
    deadline = time.monotonic() + 10
    while job.stage != "CANCELED" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job.stage == "CANCELED"
    assert job.spec["flavor"] == "cpu-upgrade"  # --on overrides runner.hf_jobs.flavor
    assert caller.returncode == 128 + signal.SIGTERM
    assert f"cancelled the Hugging Face job {jobs_hub.endpoint}/jobs/{USER}/{job.id}" in rest
    assert jobs_hub.write_token not in "".join(seen) + rest
    assert not (tmp_path / "out").exists()
    assert_bundles_deleted(jobs_hub)


def test_manifest_runner_settings_are_checked(checkout: Path) -> None:
    assert load_manifest(checkout).hf_jobs == HfJobsSettings(flavor="cpu-basic", timeout="30m")
    checkout.write_text(MANIFEST.replace("runner: {hf_jobs: {flavor: cpu-basic, timeout: 30m}}", ""))
    assert load_manifest(checkout).hf_jobs.flavor is None
    checkout.write_text(
        MANIFEST.replace("flavor: cpu-basic, timeout: 30m", "flavour: a100-large, timeout: 2 hours")
    )
    with pytest.raises(CocktailError) as caught:
        load_manifest(checkout)
    message = str(caught.value)
    assert "cocktail.yml:10: runner.hf_jobs.flavour: " in message and "did you mean 'flavor'" in message
    assert "runner.hf_jobs.timeout: " in message and "90m, 2h, 1d" in message
    checkout.write_text(MANIFEST.replace("flavor: cpu-basic", "flavor: a100-larg"))
    with pytest.raises(
        CocktailError, match="unknown Hugging Face Jobs flavor 'a100-larg'; did you mean 'a100-large'"
    ):
        load_manifest(checkout)


def test_on_parses_where_and_flavor() -> None:
    assert parse_on("local") == ("local", None)
    assert parse_on("auto") == ("auto", None)
    assert parse_on("hf-jobs") == ("hf-jobs", None)
    assert parse_on("hf-jobs:a100-large") == ("hf-jobs", "a100-large")
    with pytest.raises(CocktailError, match="did you mean 'a100-large'"):
        parse_on("hf-jobs:a100-larg")
    with pytest.raises(CocktailError, match="expected local, auto, hf-jobs or hf-jobs:FLAVOR"):
        parse_on("aws")


def test_results_survive_the_log_and_damage_is_caught() -> None:
    digests = "".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(40))  # incompressible
    sent = job_results.JobResults(0, None, {"report.json": digests, "cocktail.lock": "x"})
    lines = job_results.encode(sent)
    assert all(len(line) <= 120 for line in lines[1:-1])
    assert job_results.read_results(["noise", *lines, "more noise"]) == sent
    reader = job_results.ResultsReader()
    for line in [*lines[:2], lines[2][:-1] + "A", *lines[3:]]:
        assert reader.feed(line)
    assert reader.results is None and reader.damaged


# --- the Action: input runner -------------------------------------------------------------------------------


def test_the_action_offloads_and_reports_as_a_local_run(
    jobs_hub, checkout: Path, tmp_path: Path, github_server
) -> None:
    """The same PR run locally and on Hugging Face Jobs: the same result, comment, summary and outputs."""
    from cocktail_bot.comment import ActionResult, render
    from tests.test_action import HEAD_SHA, Runner, comments, pr_event

    github_server.add_pull(GITHUB_REPOSITORY, 7, head_sha=HEAD_SHA)
    run = Runner(tmp_path, checkout.parent, github_server)
    local = run("pull_request", pr_event(), hf_token=jobs_hub.write_token)
    assert local.returncode == 0, local.stderr
    local_comment = comments(github_server)[0].body
    del jobs_hub.repos[OUTPUT_REPO]
    checkout.with_suffix(".lock").unlink()

    remote = run("pull_request", pr_event(), hf_token=jobs_hub.write_token, runner="hf-jobs")
    assert remote.returncode == 0, remote.stderr

    (job,) = jobs_hub.jobs.jobs.values()
    assert job.spec["labels"]["run-id"] == "4202" and job.spec["labels"]["pr"] == "7"
    assert "cocktail-bot job: running cocktail.yml" in remote.stderr
    results = [
        ActionResult.model_validate_json((done.run_dir / "work" / "cocktail-result.json").read_text())
        for done in (local, remote)
    ]
    assert render(results[1])[1] == comments(github_server)[0].body != local_comment
    # with the same timings, run link and commit, the results, comments and summaries are the same
    for result in results:
        result.run_url = result.report.provenance.run_url = "https://github.com/acme/recipes/actions/runs/1"
        result.report.seconds, result.report.peak_rss_bytes = 1.0, 1
        for step in result.report.steps:
            step.seconds = 1.0
        result.report.publish.commit_sha = result.report.publish.commit_url = None
        result.report.output.path = "out"
    assert comparable(results[1].report) == comparable(results[0].report)
    assert render(results[1]) == render(results[0])
    assert {k: v for k, v in remote.outputs.items() if k not in ("commit-url", "report-path")} == {
        k: v for k, v in local.outputs.items() if k not in ("commit-url", "report-path")
    }
    assert remote.outputs["revision"] == "refs/pr/1" and remote.outputs["status"] == "success"
    assert (
        jobs_hub.repos[OUTPUT_REPO].pull_requests[1].title.startswith("cocktail-bot preview: acme/recipes#7")
    )
    assert checkout.with_suffix(".lock").is_file()
    for text in (remote.stderr, json.dumps(job.info()), "\n".join(line for _, line in job.logs)):
        assert jobs_hub.write_token not in text


def test_where_a_run_happens(
    jobs_hub, checkout: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """local, hf-jobs and auto; auto asks the preflight (this machine has room for a tiny merge) and logs why."""
    from cocktail_bot.jobs import offload

    def choose_runner(runner: str, checkout: Path, **kwargs: bool) -> str:
        return offload.choose_runner(runner, checkout, tmp_path / "out", token=None, **kwargs)

    assert choose_runner("local", checkout, publishing=True, fork=False) == "local"
    assert choose_runner("hf-jobs", checkout, publishing=True, fork=False) == "hf-jobs"
    assert choose_runner("hf-jobs", checkout, publishing=True, fork=True) == "local"  # forks: no secrets
    with pytest.raises(CocktailError, match="builds without publishing"):
        choose_runner("hf-jobs", checkout, publishing=False, fork=False)
    with caplog.at_level("INFO", logger="cocktail_bot.jobs.offload"):
        assert choose_runner("auto", checkout, publishing=True, fork=False) == "local"
    assert "runner auto: the run fits this machine: disk on " in caplog.text
    assert "(Hugging Face cache, output): needs ~" in caplog.text and "so it runs here" in caplog.text
    checkout.write_text(MANIFEST + "merge: {device: cuda}\n")
    import torch

    expected = "local" if torch.cuda.is_available() else "hf-jobs"
    assert choose_runner("auto", checkout, publishing=True, fork=False) == expected
    assert choose_runner("auto", checkout, publishing=True, fork=True) == "local"
    assert choose_runner("auto", checkout, publishing=False, fork=False) == "local"
    local = checkout.parent / "models" / "a"
    local.mkdir(parents=True)
    (local / "model.safetensors").write_bytes(jobs_hub.files(f"{ORG}/llama-a")["model.safetensors"])
    checkout.write_text(MANIFEST.replace(f"{ORG}/llama-a", "./models/a") + "merge: {device: cuda}\n")
    with caplog.at_level("INFO", logger="cocktail_bot.jobs.offload"):
        assert choose_runner("auto", checkout, publishing=True, fork=False) == "local"
    assert (
        "runner auto: the run merges local folders (./models/a), which a Hugging Face job cannot read, "
        "so it runs here" in caplog.text
    )


def test_auto_offloads_a_run_that_does_not_fit_here(
    jobs_hub, checkout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cocktail run --on auto` with --out on a 64 kB filesystem: the preflight finds too little disk, so the
    run goes to Hugging Face Jobs, which publishes it; the card, lock and report come back into --out."""
    small = tmp_path / "small"
    small.mkdir()
    monkeypatch.setenv("HF_TOKEN", jobs_hub.write_token)
    monkeypatch.setenv("COCKTAIL_JOB_TOKEN", JOB_TOKEN)
    run = [sys.executable, "-m", "cocktail_bot", "run", str(checkout), "--out", str(small / "out")]
    done = run_mounted([*run, "--publish", "--on", "auto"], tmpfs={small: "64k"}, cwd=checkout.parent)
    assert done.returncode == 0, done.stderr
    assert (
        f"runner auto: the run goes to Hugging Face Jobs: this run does not fit this machine: disk on {small}"
        in done.stderr
    )
    (job,) = jobs_hub.jobs.jobs.values()
    assert job.stage == "COMPLETED" and job.spec["flavor"] == "cpu-basic"
    assert f"built tiny-offloaded in {small / 'out'}" in done.stdout
    assert "model.safetensors" in jobs_hub.files(OUTPUT_REPO)
