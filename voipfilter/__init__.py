"""voipfilter: real-time noise suppression for WebRTC/VoIP calls (streaming GTCRN on onnxruntime).

``from voipfilter import Denoiser`` is all a call needs; ``NoiseSuppressionTrack`` (aiortc) is
imported only when first used, so ``import voipfilter`` stays light.
``low_latency_audio(pc)`` gives a peer connection's audio receivers a low-latency jitter buffer.
"""
from __future__ import annotations

from .denoiser import Denoiser, ModelStepError
from .jitter import low_latency_audio
from .model import Model, ModelNotFoundError, default_model_path, shipped_models

__version__ = "0.1.0"

__all__ = [
    "Denoiser",
    "Model",
    "ModelNotFoundError",
    "ModelStepError",
    "NoiseSuppressionTrack",
    "default_model_path",
    "low_latency_audio",
    "shipped_models",
    "__version__",
]


def __getattr__(name: str):
    if name == "NoiseSuppressionTrack":
        from .track import NoiseSuppressionTrack

        return NoiseSuppressionTrack
    raise AttributeError(f"module 'voipfilter' has no attribute {name!r}")
