"""The container's files, checked without a Docker engine: the Dockerfile installs the
pinned versions of docker/requirements.lock, the lock pins every run-time dependency of
pyproject.toml, .dockerignore keeps the venv and .git out of the build context, and the
image's command logs nothing but JSON lines, the first of which says where to open the page.

hadolint on the Dockerfile and the image's CMD/HEALTHCHECK run in tests/test_server.py.
"""
from __future__ import annotations

import fnmatch
import importlib.metadata as md
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from conftest import REPO

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")
from test_server import WEB, dockerfile_env, dockerfile_instructions, free_port, identity_model, wait_http  # noqa: F401

sys.path.insert(0, str(REPO / "docker"))
import lock  # noqa: E402  (docker/lock.py, the lock's generator)

LOCK = REPO / "docker" / "requirements.lock"
pytestmark = pytest.mark.timeout(120)


def pins() -> dict[str, str]:
    """{canonical name: version} from the lock; every line must be NAME==VERSION."""
    out = {}
    for line in LOCK.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        req = Requirement(line)
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"{LOCK.name}: {line!r} is not pinned with =="
        out[lock.canonical(req.name)] = spec[0].version
    return out


def pyproject_runtime() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def pip_installs() -> list[list[str]]:
    """The argument lists of every ``pip install`` in the Dockerfile's RUN lines."""
    out = []
    for word, rest in dockerfile_instructions():
        if word == "RUN":
            for part in rest.split("&&"):
                args = shlex.split(part)
                if args[:2] == ["pip", "install"]:
                    out.append(args[2:])
    return out


def test_dockerfile_installs_the_pinned_versions():
    ins = dockerfile_instructions()
    copies = [rest.split() for word, rest in ins if word == "COPY"]
    assert any(c[0] == "docker/requirements.lock" for c in copies), "the lock is not copied into the image"
    installs = pip_installs()
    assert installs, "no pip install in the Dockerfile"
    from_lock = [a for a in installs if "requirements.lock" in a]
    assert from_lock and ("-r" in from_lock[0] or "--requirement" in from_lock[0]), installs
    # everything else pip installs is the package itself, without resolving dependencies
    # again (they would float to the newest versions)
    for args in installs:
        if args not in from_lock:
            assert "--no-deps" in args and args[-1] == ".", f"unpinned install: pip install {' '.join(args)}"
    assert installs.index(from_lock[0]) == 0, "the lock must be installed before the package"
    runs = " ".join(rest for word, rest in ins if word == "RUN")
    assert "pip check" in runs, "pip check makes the build fail when the lock misses a dependency"


def test_lock_pins_every_runtime_dependency_in_range():
    locked = pins()
    for req in pyproject_runtime():
        name = lock.canonical(req.name)
        assert name in locked, f"{req.name} (a run-time dependency in pyproject.toml) is not in {LOCK.name}"
        assert req.specifier.contains(Version(locked[name]), prereleases=True), (
            f"{LOCK.name} pins {name}=={locked[name]}, outside pyproject's {req}")
    assert "torch" not in locked, "the image is run time only: no torch"


def test_lock_is_closed():
    """Every package a pinned package needs (on Linux, CPython 3.11) is pinned too. Read from
    the installed metadata of the packages installed here at the pinned version."""
    locked = pins()
    checked = 0
    for name, version in locked.items():
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        if dist.version != version:
            continue
        checked += 1
        for req in map(Requirement, dist.requires or []):
            if lock.applies(req):
                dep = lock.canonical(req.name)
                assert dep in locked, f"{name}=={version} needs {req}, which {LOCK.name} does not pin"
                assert req.specifier.contains(Version(locked[dep]), prereleases=True), (name, req, locked[dep])
    assert checked, "none of the pinned versions is installed here: regenerate with python docker/lock.py"


def test_lock_holds_the_packages_its_generator_finds_here():
    """docker/lock.py run here pins the same packages as the committed lock (their versions
    may differ: a newer pip install, or the extras' pins in a development venv), so a
    dependency added to pyproject without regenerating the lock fails here."""
    fresh = lock.closure(lock.runtime_requirements())
    assert set(fresh) == set(pins()), (
        f"regenerate {LOCK.name} with python docker/lock.py: it would add {sorted(set(fresh) - set(pins()))} "
        f"and drop {sorted(set(pins()) - set(fresh))}")


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [x.strip().rstrip("/") for x in lines if x.strip() and not x.lstrip().startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, enough for these patterns: a path is out if it or a parent matches."""
    parts = path.split("/")
    result = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!")
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if fnmatch.fnmatchcase(prefix, pat) or (pat.startswith("**/") and fnmatch.fnmatchcase(parts[i - 1], pat[3:])):
                result = not negate
                break
    return result


def test_dockerignore_keeps_venv_and_git_out_and_what_the_image_copies_in():
    patterns = dockerignore_patterns()
    for path in (".venv", ".venv/lib/python3.11/site-packages/x.py", ".git", ".git/HEAD", "runs/x/checkpoints/a.pt",
                 "voipfilter/__pycache__/x.pyc", "test-artifacts/browser-call.png"):
        assert ignored(path, patterns), f".dockerignore lets {path} into the build context"
    for word, rest in dockerfile_instructions():
        if word == "COPY":
            for src in rest.split()[:-1]:
                src = src.rstrip("*")
                if (REPO / src).exists():
                    assert not ignored(src, patterns), f".dockerignore excludes {src}, which the Dockerfile copies"
    assert ignored("docker/certs/voipfilter-key.pem", patterns), "a private key would enter the build context"
    for f in ("voipfilter/models/gtcrn-voipfilter.onnx", "web/index.html", "web/sample.wav"):
        assert not ignored(f, patterns), f


def test_the_image_command_logs_only_json_and_says_where_to_open_the_page(identity_model):  # noqa: F811
    """The image's CMD with its ENV, as the image's user runs it: no writable home."""
    cmd = json.loads(next(r for w, r in dockerfile_instructions() if w == "CMD"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "ORT_DISABLE_TELEMETRY")}
    env.update(dockerfile_env())
    env.update({
        "HOME": "/proc/voipfilter-has-no-home",  # cannot be created, like the image user's
        "PATH": str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
        "VOIPFILTER_HOST": "127.0.0.1", "VOIPFILTER_PORT": str(port),
        "VOIPFILTER_WEB_DIR": str(WEB), "VOIPFILTER_MODEL": str(identity_model),
    })
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = err.splitlines()
    assert lines, "the server logged nothing"
    for line in lines:
        try:
            json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"a log line that is not JSON: {line!r}")
    first = json.loads(lines[0])
    assert first["event"] == "listening"
    assert f"open http://127.0.0.1:{port}/" in first["msg"], first


def test_compose_publishes_the_page_on_loopback_and_needs_a_token():
    yaml = pytest.importorskip("yaml")
    svc = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())["services"]["voipfilter"]
    tcp = [p for p in svc["ports"] if not p.endswith("/udp")]
    assert tcp and all(p.startswith("127.0.0.1:") for p in tcp), tcp
    # compose's ${VAR:?message} refuses to start without the variable
    assert svc["environment"]["VOIPFILTER_TOKEN"].startswith("${VOIPFILTER_TOKEN:?")
    assert "network_mode" not in svc
