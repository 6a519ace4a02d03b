"""docs/deploy.md's recipe for HTTPS on a LAN, run as written: its openssl command makes the
certificate, the server serves HTTPS with it, a client that trusts exactly that
certificate verifies the answer, and in headless Chromium the page over https:// is a
secure context (microphone, AudioWorklet) while over http:// on the same name it is not.

The LAN is played by a host name that Chromium resolves to 127.0.0.1 (a name, because
every 127.x address counts as secure even over plain HTTP).
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from conftest import REPO, _missing, require_module
from test_server import free_port, identity_model  # noqa: F401

pytestmark = pytest.mark.timeout(180)

DEPLOY = REPO / "docs" / "deploy.md"
NAME = "voipfilter-demo.test"


def recipe() -> str:
    """The shell block of deploy.md's "HTTPS on a LAN" section."""
    text = DEPLOY.read_text()
    section = text.split("## HTTPS on a LAN", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "no ```sh block in deploy.md's HTTPS section"
    return block.group(1)


def make_certificate(tmp: Path) -> tuple[Path, Path]:
    """Run the recipe's lines up to the certificate (LAN_IP, LAN_NAME set for this test)."""
    if shutil.which("openssl") is None:
        _missing("openssl is not installed (apt-get install openssl)")
    lines = []
    for line in recipe().replace("\\\n", " ").splitlines():
        if line.startswith("LAN_IP="):
            line = "LAN_IP=127.0.0.1"
        elif line.startswith("LAN_NAME="):
            line = f"LAN_NAME={NAME}"
        lines.append(line)
        if line.startswith("chmod"):
            break
    assert any(x.startswith("openssl req") for x in lines), lines
    subprocess.run(["bash", "-euc", "\n".join(lines)], cwd=tmp, check=True, capture_output=True, timeout=60)
    cert, key = tmp / "voipfilter-cert.pem", tmp / "voipfilter-key.pem"
    assert cert.is_file() and key.is_file()
    assert key.stat().st_mode & 0o077 == 0, "the key is readable by others"
    serve = next(x for x in lines + recipe().splitlines() if x.startswith("voipfilter serve"))
    assert "--tls-cert voipfilter-cert.pem" in serve and "--tls-key voipfilter-key.pem" in serve
    return cert, key


@contextlib.contextmanager
def server(model: Path, port: int, tls: tuple[Path, Path] | None, *extra: str) -> Iterator[str]:
    """server.py on 127.0.0.1 (no token needed on loopback), HTTPS when ``tls`` is given."""
    cmd = [sys.executable, "server.py", "--model", str(model), "--port", str(port), *extra]
    if tls:
        cmd += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOIPFILTER_")}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    scheme = "https" if tls else "http"
    ctx = ssl._create_unverified_context() if tls else None
    deadline = time.monotonic() + 30
    try:
        while True:  # bounded wait for the server to answer
            try:
                with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/health", timeout=2, context=ctx):
                    break
            except OSError:
                if proc.poll() is not None:
                    raise AssertionError(f"server exited {proc.returncode}: {proc.stderr.read()}")
                assert time.monotonic() < deadline, f"no {scheme} answer on port {port} in 30 s"
                time.sleep(0.2)
        yield f"{scheme}://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def spki_sha256(cert: Path) -> str:
    """base64 SHA-256 of the certificate's public key: what Chromium's
    --ignore-certificate-errors-spki-list takes to trust exactly this certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    c = x509.load_pem_x509_certificate(cert.read_bytes())
    der = c.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def test_recipe_certificate_verifies_for_the_lan_address(identity_model, tmp_path):  # noqa: F811
    cert, key = make_certificate(tmp_path)
    port = free_port()
    with server(identity_model, port, (cert, key)):
        trusting = ssl.create_default_context(cafile=str(cert))  # verifies chain, dates and the address
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", timeout=5, context=trusting) as r:
            assert json.loads(r.read())["status"] == "ok"
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(f"https://127.0.0.1:{port}/health", timeout=5, context=ssl.create_default_context())


@pytest.mark.browser
def test_page_over_https_on_a_lan_name_is_a_secure_context(identity_model, tmp_path):  # noqa: F811
    require_module("playwright", "dev")
    sys.path.insert(0, str(REPO / "benchmarks"))
    import latency_browser as lb

    if not Path(lb.CHROMIUM).exists():
        _missing(f"{lb.CHROMIUM} not found; apt-get install chromium chromium-driver")
    from playwright.sync_api import sync_playwright

    cert, key = make_certificate(tmp_path)
    fake = lb.write_voice_wav(tmp_path / "voice.wav", seconds=5.0)
    https_port, http_port = free_port(), free_port()
    probe = """async () => {
        const out = { secure: window.isSecureContext, mic: false, worklet: 'audioWorklet' in BaseAudioContext.prototype };
        if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
            const s = await navigator.mediaDevices.getUserMedia({ audio: true });
            out.mic = s.getAudioTracks().length === 1;
            s.getTracks().forEach((t) => t.stop());
        }
        return out;
    }"""
    # the LAN name is not this machine's own, so the server is told it (it refuses other Host names)
    with server(identity_model, https_port, (cert, key), "--allow-origin", f"https://{NAME}:{https_port}"), \
            server(identity_model, http_port, None, "--allow-origin", f"http://{NAME}:{http_port}"), \
            sync_playwright() as p, tempfile.TemporaryDirectory(prefix="voipfilter-chromium-") as profile:
        ctx = p.chromium.launch_persistent_context(
            profile, executable_path=lb.CHROMIUM, headless=True,
            args=lb.chromium_flags(fake) + [
                f"--host-resolver-rules=MAP {NAME} 127.0.0.1",
                f"--ignore-certificate-errors-spki-list={spki_sha256(cert)}",
            ],
        )
        try:
            page = ctx.new_page()
            page.goto(f"https://{NAME}:{https_port}/")
            page.wait_for_function("() => window.voipfilterDemo && window.voipfilterDemo.ready", timeout=20_000)
            assert page.evaluate(probe) == {"secure": True, "mic": True, "worklet": True}
            page.goto(f"http://{NAME}:{http_port}/")
            page.wait_for_function("() => window.voipfilterDemo && window.voipfilterDemo.ready", timeout=20_000)
            assert page.evaluate(probe) == {"secure": False, "mic": False, "worklet": False}
        finally:
            ctx.close()
