// Records what goes out (input 0) and what comes back (input 1) over the same render
// quanta, so both captures share one sample clock: the lag between them is the round trip.
class VoipfilterTap extends AudioWorkletProcessor {
  constructor() {
    super();
    this.job = null;
    this.port.onmessage = (event) => {
      const m = event.data;
      if (m.type === 'capture') {
        this.job = {
          id: m.id, start: m.startFrame, n: m.frames,
          out: new Float32Array(m.frames), inp: new Float32Array(m.frames),
        };
      }
    };
  }

  process(inputs) {
    const job = this.job;
    if (!job) return true;
    const a = inputs[0] && inputs[0][0];
    const b = inputs[1] && inputs[1][0];
    const q = (a && a.length) || (b && b.length) || 128;
    for (let i = 0; i < q; i++) {
      const idx = currentFrame + i - job.start;
      if (idx < 0 || idx >= job.n) continue;
      job.out[idx] = a ? a[i] : 0;
      job.inp[idx] = b ? b[i] : 0;
    }
    if (currentFrame + q >= job.start + job.n) {
      this.port.postMessage(
        { type: 'captured', id: job.id, out: job.out, inp: job.inp, sampleRate },
        [job.out.buffer, job.inp.buffer],
      );
      this.job = null;
    }
    return true;
  }
}

registerProcessor('voipfilter-tap', VoipfilterTap);
