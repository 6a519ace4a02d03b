"""Models by shipped name: Denoiser, NoiseSuppressionTrack, ``enhance --model`` and ``serve
--model`` take ``gtcrn-voipfilter`` or a path; an unknown name lists the shipped ones."""
from __future__ import annotations


import numpy as np
import pytest
import soundfile as sf

from voipfilter import Denoiser, Model, ModelNotFoundError, default_model_path, shipped_models
from voipfilter.cli import main

SHIPPED = "gtcrn-voipfilter"


def _require_shipped():
    if not default_model_path().is_file():
        pytest.skip("the shipped model file is not installed (voipfilter/models/gtcrn-voipfilter.onnx)")


def test_shipped_models_lists_the_default_by_name():
    _require_shipped()
    names = shipped_models()
    assert names[SHIPPED] == default_model_path()
    assert all(p.with_suffix(".md").is_file() for p in names.values())  # each has its card


def test_denoiser_and_model_take_a_name():
    _require_shipped()
    assert Model.load(SHIPPED) is Model.load(None) is Model.load(default_model_path())
    den = Denoiser(model=SHIPPED, sample_rate=48000)
    assert den.model is Model.load(None) and den.delay_samples == 1535


def test_unknown_name_lists_the_shipped_names():
    _require_shipped()
    for call in (lambda: Denoiser(model="gtcrn-nope"), lambda: Model.load("gtcrn-nope")):
        with pytest.raises(ModelNotFoundError, match="no shipped model named 'gtcrn-nope'") as info:
            call()
        assert SHIPPED in str(info.value)
    with pytest.raises(ModelNotFoundError, match=f"no such file.*{SHIPPED}"):
        Model.load("some/dir/missing.onnx")


def test_an_existing_file_wins_over_a_shipped_name(tmp_path, monkeypatch):
    from modelfactory import make_identity_model

    pytest.importorskip("onnx")
    make_identity_model(tmp_path / SHIPPED, model_name="local-identity")
    monkeypatch.chdir(tmp_path)
    assert Model.load(SHIPPED).model_name == "local-identity"


def test_track_takes_a_name():
    _require_shipped()
    from aiortc.mediastreams import AudioStreamTrack

    from voipfilter.track import NoiseSuppressionTrack

    track = NoiseSuppressionTrack(AudioStreamTrack(), model=SHIPPED)
    assert track.model is Model.load(None)
    assert track.delay_ms == pytest.approx(1535 / 48)
    with pytest.raises(ModelNotFoundError, match=SHIPPED):
        NoiseSuppressionTrack(AudioStreamTrack(), model="gtcrn-nope")


def test_enhance_model_by_name(tmp_path, capsys):
    _require_shipped()
    rng = np.random.default_rng(0)
    src = tmp_path / "in.wav"
    sf.write(src, (0.05 * rng.standard_normal(8000)).astype(np.float32), 16000, subtype="PCM_16")
    assert main(["enhance", str(src), "-o", str(tmp_path / "out.wav"), "--model", SHIPPED, "-q"]) == 0
    assert sf.info(str(tmp_path / "out.wav")).frames == 8000
    assert main(["enhance", str(src), "-o", str(tmp_path / "x.wav"), "--model", "gtcrn-nope", "-q"]) != 0
    err = capsys.readouterr()
    assert SHIPPED in err.out + err.err and "gtcrn-nope" in err.out + err.err
    assert not (tmp_path / "x.wav").exists()


def test_serve_model_by_name():
    _require_shipped()
    from voipfilter import server_config as srv

    assert srv.resolve_model(SHIPPED) is Model.load(None)
    with pytest.raises(srv.ConfigError, match=f"--model gtcrn-nope: no shipped model named.*{SHIPPED}"):
        srv.resolve_model("gtcrn-nope")
