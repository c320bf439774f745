"""Hugging Face Jobs on the local test Hub: the routes ``huggingface_hub`` 2.4 calls (``run_job``, ``list_jobs``,
``inspect_job``, ``fetch_job_logs``, ``cancel_job``), implemented from ``hf_api.py`` and ``_jobs_api.py``.

A submitted job's command runs in a local subprocess standing in for the container: its environment is the
image's (``Jobs.image_env``, set by the test: a Python environment with ``PATH`` first) plus the job's ``env``
and ``secrets``, and nothing of the test process. The job's output is its log, served as server-sent events
(``data: {"timestamp", "data"}`` per line, ``: keep-alive`` while silent) until the process ends. Stages:
RUNNING from submission, then COMPLETED (exit 0), ERROR (other exits; "Job timeout" past ``timeoutSeconds``)
or CANCELED. Secrets are never echoed back: the job's JSON lists their names only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

TERMINAL = ("COMPLETED", "CANCELED", "ERROR", "DELETED")
KEEP_ALIVE_SECONDS = 1.0


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class Job:
    id: str
    namespace: str
    owner: str
    spec: dict[str, Any]
    created: float = field(default_factory=time.time)
    stage: str = "RUNNING"
    message: str | None = None
    logs: list[tuple[str, str]] = field(default_factory=list)  # (timestamp, line)
    process: subprocess.Popen | None = None
    cancelled: bool = False
    timed_out: bool = False
    changed: threading.Condition = field(default_factory=threading.Condition)

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "createdAt": _iso(self.created),
            "dockerImage": self.spec.get("dockerImage"),
            "spaceId": self.spec.get("spaceId"),
            "command": self.spec.get("command"),
            "arguments": self.spec.get("arguments", []),
            "environment": self.spec.get("environment", {}),
            "secrets": dict.fromkeys(self.spec.get("secrets") or {}),  # names only, as the Hub shows them
            "flavor": self.spec.get("flavor"),
            "labels": self.spec.get("labels"),
            "status": {"stage": self.stage, "message": self.message},
            "owner": {"id": f"id-{self.owner}", "name": self.namespace, "type": "user"},
        }


class Jobs:
    """The jobs of one test Hub and the processes standing in for their containers."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.image_env: dict[str, str] = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        self.workdir = Path(tempfile.mkdtemp(prefix="hub-jobs-"))
        self._lock = threading.Lock()
        self._counter = 0

    def submit(self, namespace: str, owner: str, spec: dict[str, Any]) -> Job:
        with self._lock:
            self._counter += 1
            job = Job(f"{self._counter:024x}", namespace, owner, spec)
        folder = self.workdir / job.id
        folder.mkdir()
        environment = {
            **self.image_env,
            "HOME": str(folder),
            **{k: str(v) for k, v in spec.get("environment", {}).items()},
            **{k: str(v) for k, v in (spec.get("secrets") or {}).items()},
        }
        job.logs.append((_iso(time.time()), f"===== Job started at {_iso(job.created)} ====="))
        job.process = subprocess.Popen(
            [*spec["command"], *spec.get("arguments", [])],
            cwd=folder,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        with self._lock:
            self.jobs[job.id] = job  # listed once its process exists, so a cancel always reaches it
        threading.Thread(target=self._collect, args=(job,), daemon=True).start()
        if spec.get("timeoutSeconds"):
            timer = threading.Timer(spec["timeoutSeconds"], self._time_out, args=(job,))
            timer.daemon = True
            timer.start()
        return job

    def _collect(self, job: Job) -> None:
        assert job.process is not None and job.process.stdout is not None
        for raw in job.process.stdout:
            with job.changed:
                job.logs.append((_iso(time.time()), raw.decode("utf-8", "replace").rstrip("\r\n")))
                job.changed.notify_all()
        code = job.process.wait()
        with job.changed:
            if job.cancelled:
                job.stage = "CANCELED"
            elif job.timed_out:
                job.stage, job.message = "ERROR", "Job timeout"
            elif code == 0:
                job.stage = "COMPLETED"
            else:
                job.stage, job.message = "ERROR", f"Job failed with exit code: {code}"
            job.changed.notify_all()

    def _signal(self, job: Job) -> None:
        if job.process is not None and job.process.poll() is None:
            os.killpg(job.process.pid, signal.SIGKILL)

    def _time_out(self, job: Job) -> None:
        job.timed_out = True
        self._signal(job)

    def cancel(self, job: Job) -> None:
        if job.stage not in TERMINAL:
            job.cancelled = True
            self._signal(job)

    def stop(self) -> None:
        for job in list(self.jobs.values()):
            self.cancel(job)
            if job.process is not None:
                job.process.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def route(method: str, parts: list[str]) -> tuple[str, None, dict[str, str]]:
    """``/api/jobs/{namespace}[/{id}[/logs|/cancel]]`` -> (route name, no repo, parameters)."""
    rest = parts[2:]
    if len(rest) == 1:
        return ("jobs_create" if method == "POST" else "jobs_list"), None, {"namespace": rest[0]}
    if len(rest) == 2:
        return "jobs_info", None, {"namespace": rest[0], "job": rest[1]}
    if len(rest) == 3 and rest[2] in ("logs", "cancel"):
        return f"jobs_{rest[2]}", None, {"namespace": rest[0], "job": rest[1]}
    return "unknown", None, {}


class JobRoutes:
    """Handler methods for the Jobs routes; mixed into the test Hub's request handler."""

    def _job(self, params: dict, token: str | None, *, write: bool = False) -> Job:
        namespace = params["namespace"]
        if write:
            self._check_write(namespace, token)  # type: ignore[attr-defined]
        else:
            caller = self._caller(token)  # type: ignore[attr-defined]
            if caller is None or namespace not in caller.namespaces:
                raise self._error(401 if caller is None else 403, f"no access to jobs of {namespace}")
        job = self.hub.jobs.jobs.get(params.get("job", ""))  # type: ignore[attr-defined]
        if job is None or job.namespace != namespace:
            raise self._error(404, "Job not found")
        return job

    def _error(self, status: int, message: str) -> Exception:
        from tests.hub_server import HubError

        return HubError(status, message)

    def _jobs_create(self, *, params: dict, body: bytes, token: str | None, **_: Any) -> None:
        caller = self._check_write(params["namespace"], token)  # type: ignore[attr-defined]
        spec = json.loads(body)
        if not spec.get("command") or not (spec.get("dockerImage") or spec.get("spaceId")):
            raise self._error(400, "a job needs a command and an image")
        job = self.hub.jobs.submit(params["namespace"], caller.user, spec)  # type: ignore[attr-defined]
        self._json(job.info())  # type: ignore[attr-defined]

    def _jobs_list(self, *, params: dict, token: str | None, **_: Any) -> None:
        caller = self._caller(token)  # type: ignore[attr-defined]
        if caller is None or params["namespace"] not in caller.namespaces:
            raise self._error(403, f"no access to jobs of {params['namespace']}")
        query = parse_qsl(urlsplit(self.path).query)  # type: ignore[attr-defined]
        labels = dict(value.split("=", 1) for key, value in query if key == "label")
        stages = {value for key, value in query if key == "stage"}
        found = [
            job.info()
            for job in self.hub.jobs.jobs.values()  # type: ignore[attr-defined]
            if job.namespace == params["namespace"]
            and labels.items() <= (job.spec.get("labels") or {}).items()
            and (not stages or job.stage in stages)
        ]
        self._json(found)  # type: ignore[attr-defined]

    def _jobs_info(self, *, params: dict, token: str | None, **_: Any) -> None:
        job = self._job(params, token)
        self._json(job.info())  # type: ignore[attr-defined]

    def _jobs_cancel(self, *, params: dict, token: str | None, **_: Any) -> None:
        job = self._job(params, token, write=True)
        self.hub.jobs.cancel(job)  # type: ignore[attr-defined]
        self._json({})  # type: ignore[attr-defined]

    def _jobs_logs(self, *, params: dict, token: str | None, **_: Any) -> None:
        """Every line so far, then new ones as they come, until the job has ended (the connection closes)."""
        job = self._job(params, token)
        self.send_response(200)  # type: ignore[attr-defined]
        self.send_header("Content-Type", "text/event-stream")  # type: ignore[attr-defined]
        self.send_header("Connection", "close")  # type: ignore[attr-defined]
        self.end_headers()  # type: ignore[attr-defined]
        self.close_connection = True
        sent = 0
        try:
            while True:
                with job.changed:
                    if sent == len(job.logs) and job.stage not in TERMINAL:
                        job.changed.wait(KEEP_ALIVE_SECONDS)
                    lines, finished = job.logs[sent:], job.stage in TERMINAL
                sent += len(lines)
                chunk = "".join(
                    f"data: {json.dumps({'timestamp': at, 'data': line})}\n\n" for at, line in lines
                )
                self.wfile.write((chunk or ": keep-alive\n\n").encode())  # type: ignore[attr-defined]
                self.wfile.flush()  # type: ignore[attr-defined]
                if finished and sent == len(job.logs):
                    return
        except (BrokenPipeError, ConnectionResetError):
            return
