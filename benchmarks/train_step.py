#!/usr/bin/env python3
"""Training-step time of GTCRN on this machine: our computation against the plain one.

One step = STFT, forward, the hybrid loss, backward and an Adam update on random 4 s
segments, as `voipfilter train` does it (no data loading, no validation). Two ways of
computing the same network, same weights, same batch, rounds interleaved so machine load
hits both alike:

- **ours**: `voipfilter.nn.gtcrn` as it trains, with the decoder's stride-1 transposed convs
  computed as the ordinary convs they equal (`conv2d`) and each grouped GRU run as one
  block-diagonal GRU (`GRNN`);
- **plain**: the module calls upstream's code makes: `nn.ConvTranspose2d(x)` and the two
  group GRUs one after the other.

It checks that both give the same loss, then prints the median seconds per step and audio
hours per wall hour for each batch size.

    python benchmarks/train_step.py --batch 16 32 --threads 2 --rounds 5

Needs the train extra (torch). Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from unittest import mock

import torch

from voipfilter.nn import gtcrn
from voipfilter.nn.stft import stft
from voipfilter.train.loss import HybridLoss

SEGMENT = 64000  # 4 s at 16 kHz, the trainer's segment


def _plain_grnn(self: gtcrn.GRNN, x: torch.Tensor, h: torch.Tensor | None = None):
    if h is None:
        h = x.new_zeros(self.directions, x.shape[0], self.hidden_size)
    x1, x2 = torch.chunk(x, 2, dim=-1)
    h1, h2 = torch.chunk(h, 2, dim=-1)
    y1, h1 = self.rnn1(x1, h1.contiguous())
    y2, h2 = self.rnn2(x2, h2.contiguous())
    return torch.cat([y1, y2], dim=-1), torch.cat([h1, h2], dim=-1)


@contextlib.contextmanager
def plain_ops():
    """The network computed with plain module calls (upstream's way)."""
    with mock.patch.object(gtcrn, "conv2d", lambda conv, x: conv(x)), \
            mock.patch.object(gtcrn.GRNN, "forward", _plain_grnn):
        yield


def make_step(net: gtcrn.GTCRN, batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    noisy = torch.randn(batch, SEGMENT, generator=g) * 0.05
    clean = torch.randn(batch, SEGMENT, generator=g) * 0.05
    loss_fn = HybridLoss(net.cfg)
    opt = torch.optim.Adam(net.parameters(), 1e-3)

    def step() -> float:
        enh = net(stft(noisy, net.cfg))
        loss = loss_fn(enh, stft(clean, net.cfg), SEGMENT)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[16, 32], help="batch sizes (4 s items)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--rounds", type=int, default=5, help="timed steps per form and batch size")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {args.threads} threads, {args.rounds} rounds")
    print("| batch | ours s/step | plain s/step | ours audio h/h | plain audio h/h | plain / ours |")
    print("|---|---|---|---|---|---|")
    for batch in args.batch:
        torch.manual_seed(0)
        net_ours = gtcrn.GTCRN().train()
        net_plain = gtcrn.GTCRN().train()
        net_plain.load_state_dict(net_ours.state_dict())
        ours, plain = make_step(net_ours, batch, 1), make_step(net_plain, batch, 1)
        first_ours = ours()
        with plain_ops():
            first_plain = plain()
        if abs(first_ours - first_plain) > 1e-4 * abs(first_plain):
            raise SystemExit(f"the two forms disagree: loss {first_ours} against {first_plain}")
        times: dict[str, list[float]] = {"ours": [], "plain": []}
        for _ in range(args.rounds):
            t = time.perf_counter()
            ours()
            times["ours"].append(time.perf_counter() - t)
            with plain_ops():
                t = time.perf_counter()
                plain()
                times["plain"].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        hours = {k: batch * SEGMENT / 16000 / v for k, v in med.items()}  # audio s per s = h per h
        print(f"| {batch} | {med['ours']:.2f} | {med['plain']:.2f} | {hours['ours']:.1f} | {hours['plain']:.1f} "
              f"| {med['plain'] / med['ours']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
