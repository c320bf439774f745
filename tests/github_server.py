"""A local GitHub REST API server for tests: the routes PyGithub calls to keep one pull-request comment up to
date.

Standard library only (``http.server``), on 127.0.0.1. It answers like api.github.com does for these routes:
the same JSON fields (``id``, ``url``, ``html_url``, ``body``, ``user.login``), ``Link`` pagination (30 per
page by default, ``per_page`` up to 100), token authentication (``Authorization: token X`` or ``Bearer X``;
401 otherwise), GitHub App installation tokens that get 403 on ``GET /user`` (the workflow's own
``github-actions[bot]`` or another App's ``SLUG[bot]``) but see themselves as GraphQL's ``viewer``, read-only
tokens (a fork pull request's ``GITHUB_TOKEN``: 403 "Resource not accessible by integration" on every write),
and the 65,536-character limit on comment bodies (422). Like GitHub, it lets any writer edit any comment: keeping to the bot's own comment is
the client's job, and the tests check it did. ``GitHubServer.state`` is what the tests inspect.

Routes (``R`` is ``/repos/{owner}/{repo}``): ``GET /user``, ``POST /graphql`` (``viewer { login }`` only),
``GET R``, ``GET R/pulls/{n}``,
``GET R/issues/{n}``, ``GET|POST R/issues/{n}/comments``, ``GET|PATCH R/issues/comments/{id}``; for the update

bot and the ``/cocktail`` commands: ``GET|POST R/pulls`` (``state``, ``head``, ``base`` filters; a new pull
request's head branch must exist in the repository's git folder, given with ``add_repo(git_dir=...)``, and one
open pull request per head, as GitHub's 422s say), ``PATCH R/pulls/{n}``,
``GET R/collaborators/{user}/permission`` (``set_permission``; "read" for anyone else, as on a public repo)
and ``POST R/issues/comments/{id}/reactions``; ``GET R/compare/BASE...HEAD`` (status ahead/behind/identical/
diverged, from the git folder).

``parse_outputs`` reads a ``GITHUB_OUTPUT`` file as the runner does, for tests of the step outputs.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

MAX_COMMENT_CHARS = 65536
ACTIONS_BOT = {"login": "github-actions[bot]", "id": 41898282, "type": "Bot"}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Comment:
    id: int
    repo: str
    number: int
    login: str
    body: str
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)
    edits: int = 0


@dataclass
class Pull:
    repo: str
    number: int
    head_repo: str | None
    head_ref: str
    head_sha: str
    base_ref: str
    author: str
    title: str = "Update cocktail.yml"
    state: str = "open"
    body: str | None = None
    merged: bool = False


@dataclass
class GitHubState:
    """Everything the server knows; tests set it up and inspect it (guarded by ``lock``)."""

    users: dict[str, dict[str, Any]] = field(default_factory=dict)  # token -> user JSON
    installation_tokens: set[str] = field(default_factory=set)
    read_only_tokens: set[str] = field(default_factory=set)
    repos: dict[str, dict[str, Any]] = field(default_factory=dict)
    pulls: dict[tuple[str, int], Pull] = field(default_factory=dict)
    comments: list[Comment] = field(default_factory=list)
    permissions: dict[tuple[str, str], str] = field(default_factory=dict)  # (repo, login) -> permission
    reactions: list[tuple[str, int, str, str]] = field(
        default_factory=list
    )  # repo, comment id, login, content
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, login
    lock: threading.RLock = field(default_factory=threading.RLock)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1_500_000_001))

    def comments_on(self, repo: str, number: int) -> list[Comment]:
        with self.lock:
            return [c for c in self.comments if c.repo == repo and c.number == number]


class GitHubServer:
    """``with GitHubServer() as gh:`` serves on ``gh.url`` (the ``GITHUB_API_URL``) until the block ends."""

    def __init__(self, html_url: str = "https://github.com") -> None:
        self.state = GitHubState()
        self.html_url = html_url
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="github-test-server",
            daemon=True,
        )
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> GitHubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    # --- set-up helpers for tests ---------------------------------------------------------------------------
    def add_user(
        self, token: str, login: str, *, installation: bool = False, read_only: bool = False
    ) -> None:
        """A personal token for ``login``; ``installation=True`` makes it a GitHub App installation token
        (``login`` is then the App's bot, e.g. ``github-actions[bot]``); ``read_only`` refuses every write."""
        with self.state.lock:
            user_id = ACTIONS_BOT["id"] if login == ACTIONS_BOT["login"] else 1000 + len(self.state.users)
            kind = "Bot" if installation else "User"
            self.state.users[token] = {"login": login, "id": user_id, "type": kind}
            if installation:
                self.state.installation_tokens.add(token)
            if read_only:
                self.state.read_only_tokens.add(token)

    def add_repo(
        self,
        full_name: str,
        *,
        default_branch: str = "main",
        private: bool = False,
        git_dir: str | None = None,
    ) -> None:
        """``git_dir``: the repository's git folder (a bare repo the tests push to), where heads are looked up."""
        with self.state.lock:
            self.state.repos[full_name] = {
                "default_branch": default_branch,
                "private": private,
                "id": 700_000 + len(self.state.repos),
                "git_dir": git_dir,
            }

    def set_permission(self, repo: str, login: str, permission: str) -> None:
        """admin, write, read or none: what ``GET R/collaborators/{login}/permission`` answers."""
        with self.state.lock:
            self.state.permissions[(repo, login)] = permission

    def pulls_of(self, repo: str) -> list[Pull]:
        with self.state.lock:
            return [pull for (name, _), pull in sorted(self.state.pulls.items()) if name == repo]

    def branch_sha(self, repo: str, branch: str) -> str | None:
        """The commit a branch points at in the repo's git folder (None: no such branch, or no folder)."""
        return self.commit_sha(repo, f"refs/heads/{branch}")

    def commit_sha(self, repo: str, revision: str) -> str | None:
        """A revision (ref, sha or sha prefix) of the repo's git folder as a full commit sha (None: unknown)."""
        done = self.git(repo, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
        if done is None:
            return None
        return done.stdout.strip() or None

    def git(self, repo: str, *args: str) -> subprocess.CompletedProcess[str] | None:
        """``git ARGS`` in the repo's git folder (None: the repo has none)."""
        git_dir = self.state.repos.get(repo, {}).get("git_dir")
        if git_dir is None:
            return None
        return subprocess.run(["git", "--git-dir", git_dir, *args], capture_output=True, text=True)

    def add_pull(
        self,
        repo: str,
        number: int,
        *,
        head_sha: str,
        head_repo: str | None = None,
        head_ref: str = "update-cocktail",
        base_ref: str = "main",
        author: str = "contributor",
    ) -> Pull:
        with self.state.lock:
            pull = Pull(
                repo,
                number,
                head_repo if head_repo is not None else repo,
                head_ref,
                head_sha,
                base_ref,
                author,
            )
            self.state.pulls[(repo, number)] = pull
            return pull

    def add_comment(self, repo: str, number: int, login: str, body: str) -> Comment:
        with self.state.lock:
            comment = Comment(next(self.state._ids), repo, number, login, body)
            self.state.comments.append(comment)
            return comment


def _handler_for(server: GitHubServer) -> type[BaseHTTPRequestHandler]:
    state = server.state

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

        # --- plumbing ---------------------------------------------------------------------------------------
        def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, **extra: Any) -> None:
            self._send(
                status, {"message": message, "documentation_url": "https://docs.github.com/rest", **extra}
            )

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            return json.loads(raw) if raw else {}

        def _token(self) -> str | None:
            match = re.fullmatch(r"(?:token|Bearer) (\S+)", self.headers.get("Authorization", ""))
            return match.group(1) if match else None

        def _dispatch(self, method: str) -> None:
            parts = urlsplit(self.path)
            query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
            body = self._body() if method in ("POST", "PATCH") else {}
            token = self._token()
            user = state.users.get(token) if token else None
            with state.lock:
                state.requests.append((method, parts.path, user["login"] if user else None))
            if user is None:
                return self._error(401, "Bad credentials")
            if method in ("POST", "PATCH") and token in state.read_only_tokens and parts.path != "/graphql":
                return self._error(403, "Resource not accessible by integration")
            for pattern, route_method, handler in ROUTES:
                match = re.fullmatch(pattern, parts.path)
                if match and route_method == method:
                    with state.lock:
                        return handler(self, token, user, query, body, *match.groups())
            if any(re.fullmatch(pattern, parts.path) for pattern, _, _ in ROUTES):
                return self._error(405, "Method Not Allowed")
            return self._error(404, "Not Found")

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._dispatch("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._dispatch("POST")

        def do_PATCH(self) -> None:  # noqa: N802
            self._dispatch("PATCH")

        # --- JSON as GitHub shapes it -----------------------------------------------------------------------
        def _user_json(self, user: dict[str, Any]) -> dict[str, Any]:
            login = user["login"]
            return {
                **user,
                "node_id": f"U_{user['id']}",
                "url": f"{server.url}/users/{login}",
                "html_url": f"{server.html_url}/{login}",
                "site_admin": False,
            }

        def _login_json(self, login: str) -> dict[str, Any]:
            known = next((u for u in state.users.values() if u["login"] == login), None)
            return self._user_json(known or {"login": login, "id": 9000 + len(login), "type": "User"})

        def _repo_json(self, full_name: str) -> dict[str, Any]:
            repo = state.repos.get(full_name, {"default_branch": "main", "private": False, "id": 1})
            owner, name = full_name.split("/")
            return {
                "id": repo["id"],
                "name": name,
                "full_name": full_name,
                "private": repo["private"],
                "owner": self._login_json(owner),
                "default_branch": repo["default_branch"],
                "url": f"{server.url}/repos/{full_name}",
                "html_url": f"{server.html_url}/{full_name}",
            }

        def _comment_json(self, comment: Comment) -> dict[str, Any]:
            api = f"{server.url}/repos/{comment.repo}"
            return {
                "id": comment.id,
                "node_id": f"IC_{comment.id}",
                "url": f"{api}/issues/comments/{comment.id}",
                "html_url": f"{server.html_url}/{comment.repo}/pull/{comment.number}"
                f"#issuecomment-{comment.id}",
                "issue_url": f"{api}/issues/{comment.number}",
                "body": comment.body,
                "user": self._login_json(comment.login),
                "created_at": comment.created_at,
                "updated_at": comment.updated_at,
                "author_association": "CONTRIBUTOR",
            }

        def _pull_json(self, pull: Pull) -> dict[str, Any]:
            api = f"{server.url}/repos/{pull.repo}"
            return {
                "id": 2_000_000 + pull.number,
                "number": pull.number,
                "state": pull.state,
                "title": pull.title,
                "url": f"{api}/pulls/{pull.number}",
                "issue_url": f"{api}/issues/{pull.number}",
                "comments_url": f"{api}/issues/{pull.number}/comments",
                "html_url": f"{server.html_url}/{pull.repo}/pull/{pull.number}",
                "user": self._login_json(pull.author),
                "body": pull.body,
                "merged": pull.merged,
                "merged_at": "2026-01-01T00:00:00Z" if pull.merged else None,
                "head": {
                    "label": f"{(pull.head_repo or 'unknown/').split('/')[0]}:{pull.head_ref}",
                    "ref": pull.head_ref,
                    # a pushed branch moves its pull request, as on GitHub
                    "sha": (pull.head_repo == pull.repo and server.branch_sha(pull.repo, pull.head_ref))
                    or pull.head_sha,
                    "repo": self._repo_json(pull.head_repo) if pull.head_repo else None,
                },
                "base": {"ref": pull.base_ref, "sha": "0" * 40, "repo": self._repo_json(pull.repo)},
            }

        def _issue_json(self, pull: Pull) -> dict[str, Any]:
            api = f"{server.url}/repos/{pull.repo}"
            return {
                "id": 3_000_000 + pull.number,
                "number": pull.number,
                "state": pull.state,
                "title": pull.title,
                "url": f"{api}/issues/{pull.number}",
                "comments_url": f"{api}/issues/{pull.number}/comments",
                "html_url": f"{server.html_url}/{pull.repo}/pull/{pull.number}",
                "user": self._login_json(pull.author),
                "pull_request": {"url": f"{api}/pulls/{pull.number}"},
                "comments": len(state.comments_on(pull.repo, pull.number)),
            }

        # --- routes -----------------------------------------------------------------------------------------
        def get_user(self, token, user, query, body) -> None:
            if token in state.installation_tokens:
                return self._error(403, "Resource not accessible by integration")
            self._send(200, self._user_json(user))

        def graphql(self, token, user, query, body) -> None:
            if not re.fullmatch(
                r"\s*(query\s*)?\{\s*viewer\s*\{\s*login\s*\}\s*\}\s*", body.get("query", "")
            ):
                return self._send(200, {"errors": [{"message": "this test server answers viewer { login }"}]})
            self._send(200, {"data": {"viewer": {"login": user["login"]}}})

        def get_repo(self, token, user, query, body, repo) -> None:
            if repo not in state.repos:
                return self._error(404, "Not Found")
            self._send(200, self._repo_json(repo))

        def _pull_or_404(self, repo: str, number: str) -> Pull | None:
            pull = state.pulls.get((repo, int(number)))
            if pull is None:
                self._error(404, "Not Found")
            return pull

        def get_pull(self, token, user, query, body, repo, number) -> None:
            if pull := self._pull_or_404(repo, number):
                self._send(200, self._pull_json(pull))

        def get_issue(self, token, user, query, body, repo, number) -> None:
            if pull := self._pull_or_404(repo, number):
                self._send(200, self._issue_json(pull))

        def list_comments(self, token, user, query, body, repo, number) -> None:
            if not self._pull_or_404(repo, number):
                return
            comments = state.comments_on(repo, int(number))
            per_page = min(int(query.get("per_page", 30)), 100)
            page = max(int(query.get("page", 1)), 1)
            last = max((len(comments) + per_page - 1) // per_page, 1)
            links = []
            base = f"{server.url}/repos/{repo}/issues/{number}/comments"
            if page < last:
                links.append(f'<{base}?{urlencode({"per_page": per_page, "page": page + 1})}>; rel="next"')
                links.append(f'<{base}?{urlencode({"per_page": per_page, "page": last})}>; rel="last"')
            if page > 1:
                links.append(f'<{base}?{urlencode({"per_page": per_page, "page": 1})}>; rel="first"')
                links.append(f'<{base}?{urlencode({"per_page": per_page, "page": page - 1})}>; rel="prev"')
            chunk = comments[(page - 1) * per_page : page * per_page]
            headers = {"Link": ", ".join(links)} if links else {}
            self._send(200, [self._comment_json(c) for c in chunk], headers)

        def _valid_body(self, body: dict[str, Any]) -> str | None:
            text = body.get("body")
            if not isinstance(text, str) or not text:
                self._error(
                    422,
                    "Validation Failed",
                    errors=[{"resource": "IssueComment", "code": "missing_field", "field": "body"}],
                )
                return None
            if len(text) > MAX_COMMENT_CHARS:
                self._error(
                    422,
                    "Validation Failed",
                    errors=[
                        {
                            "resource": "IssueComment",
                            "code": "custom",
                            "field": "body",
                            "message": f"body is too long (maximum is {MAX_COMMENT_CHARS} characters)",
                        }
                    ],
                )
                return None
            return text

        def create_comment(self, token, user, query, body, repo, number) -> None:
            if not self._pull_or_404(repo, number) or (text := self._valid_body(body)) is None:
                return
            comment = server.add_comment(repo, int(number), user["login"], text)
            self._send(201, self._comment_json(comment))

        def _comment_or_404(self, repo: str, comment_id: str) -> Comment | None:
            comment = next((c for c in state.comments if c.repo == repo and c.id == int(comment_id)), None)
            if comment is None:
                self._error(404, "Not Found")
            return comment

        def get_comment(self, token, user, query, body, repo, comment_id) -> None:
            if comment := self._comment_or_404(repo, comment_id):
                self._send(200, self._comment_json(comment))

        def edit_comment(self, token, user, query, body, repo, comment_id) -> None:
            if (
                not (comment := self._comment_or_404(repo, comment_id))
                or (text := self._valid_body(body)) is None
            ):
                return
            comment.body, comment.updated_at, comment.edits = text, _now(), comment.edits + 1
            self._send(200, self._comment_json(comment))

        # --- the update bot and the /cocktail commands ---------------------------------------------------------
        def list_pulls(self, token, user, query, body, repo) -> None:
            state_filter = query.get("state", "open")
            pulls = [
                p
                for p in server.pulls_of(repo)
                if state_filter in ("all", p.state)
                and (not query.get("head") or query["head"] == f"{repo.split('/')[0]}:{p.head_ref}")
                and (not query.get("base") or query["base"] == p.base_ref)
            ]
            self._send(200, [self._pull_json(p) for p in pulls])

        def _unprocessable(self, message: str) -> None:
            self._error(
                422,
                "Validation Failed",
                errors=[{"resource": "PullRequest", "code": "custom", "message": message}],
            )

        def create_pull(self, token, user, query, body, repo) -> None:
            if repo not in state.repos:
                return self._error(404, "Not Found")
            head, base = str(body.get("head", "")), str(body.get("base", ""))
            head_ref = head.split(":", 1)[-1]
            head_sha = server.branch_sha(repo, head_ref)
            if not body.get("title") or head_sha is None or server.branch_sha(repo, base) is None:
                return self._error(
                    422,
                    "Validation Failed",
                    errors=[{"resource": "PullRequest", "field": "head", "code": "invalid"}],
                )
            if head_sha == server.branch_sha(repo, base):
                return self._unprocessable(f"No commits between {base} and {head_ref}")
            if any(p.head_ref == head_ref and p.state == "open" for p in server.pulls_of(repo)):
                return self._unprocessable(f"A pull request already exists for {head}.")
            number = max([p.number for p in server.pulls_of(repo)] + [0]) + 1
            pull = server.add_pull(
                repo, number, head_sha=head_sha, head_ref=head_ref, base_ref=base, author=user["login"]
            )
            pull.title, pull.body = body["title"], body.get("body")
            self._send(201, self._pull_json(pull))

        def edit_pull(self, token, user, query, body, repo, number) -> None:
            if not (pull := self._pull_or_404(repo, number)):
                return
            pull.title = body.get("title", pull.title)
            pull.body = body.get("body", pull.body)
            if body.get("state") in ("open", "closed"):
                pull.state = body["state"]
            self._send(200, self._pull_json(pull))

        def get_permission(self, token, user, query, body, repo, login) -> None:
            if repo not in state.repos:
                return self._error(404, "Not Found")
            permission = state.permissions.get((repo, login), "read")
            self._send(
                200, {"permission": permission, "role_name": permission, "user": self._login_json(login)}
            )

        def create_reaction(self, token, user, query, body, repo, comment_id) -> None:
            if not self._comment_or_404(repo, comment_id):
                return
            content = body.get("content")
            if content not in ("+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes"):
                return self._error(422, "Validation Failed")
            state.reactions.append((repo, int(comment_id), user["login"], content))
            self._send(201, {"id": len(state.reactions), "content": content, "user": self._user_json(user)})

        def compare(self, token, user, query, body, repo, base, head) -> None:
            """``GET R/compare/BASE...HEAD`` from the repo's git folder: how HEAD stands to BASE."""
            shas = [server.commit_sha(repo, revision) for revision in (base, head)]
            if None in shas:
                return self._error(404, "Not Found")
            counted = server.git(repo, "rev-list", "--left-right", "--count", f"{shas[0]}...{shas[1]}")
            merge_base = server.git(repo, "merge-base", shas[0], shas[1])
            assert counted is not None and merge_base is not None
            behind, ahead = (int(n) for n in counted.stdout.split())
            status = {(0, 0): "identical", (1, 0): "ahead", (0, 1): "behind"}.get(
                (min(ahead, 1), min(behind, 1)), "diverged"
            )
            url = f"{server.url}/repos/{repo}/compare/{base}...{head}"
            self._send(
                200,
                {
                    "url": url,
                    "html_url": f"{server.html_url}/{repo}/compare/{base}...{head}",
                    "status": status,
                    "ahead_by": ahead,
                    "behind_by": behind,
                    "total_commits": ahead,
                    "base_commit": {"sha": shas[0]},
                    "merge_base_commit": {"sha": merge_base.stdout.strip()},
                    "commits": [],
                    "files": [],
                },
            )

    repo = r"/repos/([^/]+/[^/]+)"
    ROUTES = [
        (r"/user", "GET", Handler.get_user),
        (r"/graphql", "POST", Handler.graphql),
        (repo, "GET", Handler.get_repo),
        (repo + r"/pulls/(\d+)", "GET", Handler.get_pull),
        (repo + r"/issues/(\d+)", "GET", Handler.get_issue),
        (repo + r"/issues/(\d+)/comments", "GET", Handler.list_comments),
        (repo + r"/issues/(\d+)/comments", "POST", Handler.create_comment),
        (repo + r"/issues/comments/(\d+)", "GET", Handler.get_comment),
        (repo + r"/issues/comments/(\d+)", "PATCH", Handler.edit_comment),
        (repo + r"/pulls", "GET", Handler.list_pulls),
        (repo + r"/pulls", "POST", Handler.create_pull),
        (repo + r"/pulls/(\d+)", "PATCH", Handler.edit_pull),
        (repo + r"/collaborators/([^/]+)/permission", "GET", Handler.get_permission),
        (repo + r"/issues/comments/(\d+)/reactions", "POST", Handler.create_reaction),
        (repo + r"/compare/([^/]+?)\.\.\.([^/]+)", "GET", Handler.compare),
    ]
    return Handler


def parse_outputs(text: str) -> dict[str, str]:
    """GITHUB_OUTPUT as the runner reads it: ``name=value`` lines and ``name<<DELIM`` ... ``DELIM`` blocks."""
    outputs, lines = {}, iter(text.splitlines())
    for line in lines:
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            value = []
            for body_line in lines:
                if body_line == delimiter:
                    break
                value.append(body_line)
            outputs[name] = "\n".join(value)
        else:
            name, value = line.split("=", 1)
            outputs[name] = value
    return outputs
