"""Training for the low-delay model: corpora held out of training as a whole, a new run
started from a checkpoint on another framing, and configs/gtcrn-ll.yaml itself."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sf = pytest.importorskip("soundfile")

from test_train_trainer import make_tiny_corpus, tiny_config, _trainer  # noqa: E402
from voipfilter.nn.checkpoint import load_checkpoint, save_model  # noqa: E402
from voipfilter.nn.config import GTCRNConfig  # noqa: E402
from voipfilter.nn.gtcrn import GTCRN  # noqa: E402
from voipfilter.train.config import REPO, AugmentConfig, DataConfig, load_config  # noqa: E402
from voipfilter.train.data import build_data  # noqa: E402

SR = 16000
LOW_DELAY = {"hop": 128, "window": "asymmetric_sqrt_hann"}


def _corpus_with_held_out_families(root: Path) -> tuple[Path, Path]:
    sp, no = make_tiny_corpus(root, n_speech=6, n_noise=4)
    # the held-out "speakers" and "noise family" live inside the training folders, as
    # librispeech_test-other lives inside shared/data/speech
    for src, dst in ((sp, sp / "heldout_speakers"), (no, no / "heldout_family")):
        dst.mkdir()
        for f in sorted(src.glob("*.flac"))[:2]:
            f.rename(dst / f.name)
    return sp, no


def test_held_out_corpora_are_validation_only(tmp_path):
    sp, no = _corpus_with_held_out_families(tmp_path)
    data = DataConfig(speech_dirs=[str(sp)], noise_dirs=[str(no)], segment_seconds=1.0, val_items=3,
                      val_segment_seconds=1.0, min_active_fraction=0.0,
                      val_speech_dirs=[str(sp / "heldout_speakers")], val_noise_dirs=[str(no / "heldout_family")])
    bundle = build_data(data, AugmentConfig(p_reverb=0.0), seed=1, log_fn=lambda *_: None)
    held = sorted(bundle.val_files)
    assert held == sorted(str(p) for p in [*(sp / "heldout_speakers").glob("*.flac"),
                                           *(no / "heldout_family").glob("*.flac")])
    assert (bundle.n_speech_train, bundle.n_speech_val, bundle.n_noise_train, bundle.n_noise_val) == (4, 2, 2, 2)
    mixer = bundle.train.mixer
    train_files = [f.path for f in mixer.speech + mixer.noise]
    assert not set(train_files) & set(held)
    assert len(bundle.val) == 3
    with pytest.raises(FileNotFoundError, match="nope"):
        build_data(DataConfig(**{**data.__dict__, "val_noise_dirs": [str(no / "nope")]}), AugmentConfig(p_reverb=0.0),
                   seed=1, log_fn=lambda *_: None)


def test_new_run_starts_from_a_checkpoint_on_another_framing(tmp_path):
    torch.manual_seed(3)
    start = GTCRN(GTCRNConfig())  # symmetric 512/256, as the shipped model
    save_model(tmp_path / "start.pt", start, {"step": 777})
    cfg = tiny_config(tmp_path, init_weights=str(tmp_path / "start.pt"))
    cfg["model"] = LOW_DELAY
    cfg["optim"]["ema_decay"] = 0.9
    tr = _trainer(cfg, tmp_path / "run")
    tr.prepare(resume=False)
    assert tr.model_cfg.hop == 128 and tr.step == 0
    for (name, a), b in zip(tr.model.state_dict().items(), start.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(tr.ema.module.state_dict().values(), start.state_dict().values()):
        assert torch.equal(a, b)  # the average starts at the loaded weights
    tr.fit(max_steps=4)  # one epoch: training and validation on the new framing
    tr.close()
    model, mcfg, _ = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert (mcfg.hop, mcfg.window) == (128, "asymmetric_sqrt_hann")
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), start.state_dict().values()))
    log = (tmp_path / "run/train.log").read_text()
    assert "weights from" in log and "this run's hop 128 asymmetric_sqrt_hann" in log
    # a resume keeps its own weights (init_weights is for new runs only)
    again = _trainer(cfg, tmp_path / "run")
    again.prepare(resume=True)
    assert again.step == 4
    for a, b in zip(again.model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    again.close()


def test_init_weights_of_another_network_is_refused(tmp_path):
    save_model(tmp_path / "wide.pt", GTCRN(GTCRNConfig(channels=8)))
    cfg = tiny_config(tmp_path, init_weights=str(tmp_path / "wide.pt"))
    tr = _trainer(cfg, tmp_path / "run")
    with pytest.raises(ValueError, match="not this config's"):
        tr.prepare(resume=False)
    tr.close()


def test_the_low_delay_config():
    cfg = load_config(REPO / "configs" / "gtcrn-ll.yaml")
    mcfg = GTCRNConfig.from_dict(cfg.model)
    mcfg.validate()
    assert (mcfg.n_fft, mcfg.hop, mcfg.window) == (512, 128, "asymmetric_sqrt_hann")
    pair = mcfg.window_pair()
    assert pair.synthesis_length == 256 and pair.delay_samples == 255
    assert cfg.train.init_weights == "runs/gtcrn-v7/checkpoints/last.pt"
    assert cfg.optim.ema_decay > 0 and cfg.train.batch_size == 16 and cfg.augment.p_speed == 0.5
    # validation corpora: whole folders of the shared speech and noise, none of them dev/
    held = cfg.data.val_speech_dirs + cfg.data.val_noise_dirs
    assert [Path(p).name for p in held] == ["librispeech_test-other", "emgse_test_noises", "speech_commands_bg"]
    assert all(any(Path(p).is_relative_to(d) for d in cfg.data.speech_dirs + cfg.data.noise_dirs) for p in held)
    assert all("/dev" not in p for p in held)


def test_the_start_checkpoint_is_the_shipped_model():
    """Exporting the config's starting checkpoint reproduces the shipped ONNX model."""
    from voipfilter import Model
    from voipfilter.nn.export import export_onnx
    from voipfilter.stft import analysis_frames

    ckpt = REPO / load_config(REPO / "configs" / "gtcrn-ll.yaml").train.init_weights
    if not ckpt.is_file():
        pytest.skip(f"{ckpt} is not in this checkout")
    shipped = Model.load(None)
    model, _, meta = load_checkpoint(ckpt)
    assert meta["step"] == 35318 and meta["weights"] == "raw"
    with tempfile.TemporaryDirectory() as d:
        again = Model(export_onnx(model, Path(d) / "again.onnx"))
        x = (0.1 * np.random.default_rng(0).standard_normal(SR)).astype(np.float32)
        frames = analysis_frames(x)
        s1, s2 = shipped.initial_state(1), again.initial_state(1)
        for t in range(frames.shape[2]):
            f = np.ascontiguousarray(frames[:, :, t : t + 1])
            e1, s1 = shipped.step(f, s1)
            e2, s2 = again.step(f, s2)
            np.testing.assert_array_equal(e1, e2)
