"""Training cost of the two STFT framings, side by side: seconds per training step (forward,
loss, backward, Adam) of GTCRN on the same batch, sqrt-Hann 512/256 vs the asymmetric
low-delay pair at hop 128, interleaved so that machine load hits both alike.

    python benchmarks/train_step_framing.py [--batch 16] [--seconds 4] [--repeats 4] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from voipfilter.nn.config import GTCRNConfig
from voipfilter.nn.gtcrn import GTCRN
from voipfilter.nn.stft import stft
from voipfilter.train.loss import HybridLoss

FRAMINGS = {"sqrt-hann 512/256": GTCRNConfig(), "low-delay 512/256 @128": GTCRNConfig(hop=128, window="asymmetric_sqrt_hann")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    noisy = 0.1 * torch.randn(a.batch, int(a.seconds * 16000))
    clean = 0.5 * noisy
    setups = {}
    for name, cfg in FRAMINGS.items():
        net = GTCRN(cfg).train()
        setups[name] = (cfg, net, torch.optim.Adam(net.parameters(), 1e-4), HybridLoss(cfg))
    times: dict[str, list[float]] = {n: [] for n in FRAMINGS}
    for r in range(a.repeats + 1):  # the first round warms up
        for name, (cfg, net, opt, loss_fn) in setups.items():
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = loss_fn(net(stft(noisy, cfg)), stft(clean, cfg), noisy.shape[-1])
            loss.backward()
            opt.step()
            if r:
                times[name].append(time.perf_counter() - t0)
    base = None
    for name, ts in times.items():
        med = statistics.median(ts)
        base = base or med
        audio_h_per_h = a.batch * a.seconds / med
        print(f"{name:24s} {med:6.2f} s/step  {audio_h_per_h:6.1f} audio h per wall h  x{med / base:.2f}")


if __name__ == "__main__":
    main()
