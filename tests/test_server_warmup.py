"""The demo server warms the model when it builds the app, before any call: otherwise the
first call's first frame paid for the first runs (~90-170 ms measured with
benchmarks/first_frames.py, against ~4-9 ms warmed; numbers in docs/latency.md)."""
from __future__ import annotations

from test_server import WEB, identity_model  # noqa: F401

from voipfilter import pool
from voipfilter import server as srv
from voipfilter.model import Model
from voipfilter.server_config import ServerConfig


def test_create_app_warms_the_model_at_48k_before_any_call(identity_model):  # noqa: F811
    model = Model(identity_model)  # a fresh instance: nothing warmed it yet
    assert (id(model), 48000) not in pool._prewarmed
    app = srv.create_app(ServerConfig(web_dir=WEB, model=identity_model, loopback_only=True), model=model)
    assert srv.calls_of(app) == {}
    assert (id(model), 48000) in pool._prewarmed
