"""Noise suppression for voice-app frameworks, one import away.

* :mod:`voipfilter.integrations.pipecat`: ``NoiseSuppressionFilter``, a pipecat
  ``BaseAudioFilter`` (``TransportParams(audio_in_filter=NoiseSuppressionFilter())``),
  extra ``pipecat``.
* :mod:`voipfilter.integrations.livekit`: ``NoiseSuppression``, a LiveKit
  ``rtc.FrameProcessor[rtc.AudioFrame]`` (``AudioStream(track, noise_cancellation=...)``),
  extra ``livekit``.

Nothing here is imported by ``import voipfilter``; each module needs only its framework.
See docs/integrations.md.
"""
