// voipfilter demo call: one page, no build step.
// Echo call to the server (POST /offer), controls and server stats over the "control"
// data channel, latency breakdown from getStats() + server stats, and a round-trip
// measurement that times a speech marker through the call with the filter off and on.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const median = (xs) => {
    if (!xs.length) return null;
    const s = [...xs].sort((a, b) => a - b);
    const m = s.length >> 1;
    return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
  };
  const fmt = (v, digits = 0) => (v == null || !isFinite(v) ? '–' : Number(v).toFixed(digits));
  const num = (v) => (typeof v === 'number' && isFinite(v) ? v : null);

  // Everything a person sees, also readable by tests and benchmarks/latency_browser.py.
  const state = {
    callState: 'idle', callId: null, error: null,
    serverStats: null, serverState: null,
    browser: {}, latency: {},
    levels: { out: -Infinity, in: -Infinity }, peaks: { out: -Infinity, in: -Infinity },
    roundTrip: {
      off: [], on: [], pairs: [], offMedian: null, onMedian: null, addedMs: null,
      addedExclBrowserJitterMs: null, running: false, failures: 0,
    },
    dcRttMs: null,
  };
  window.voipfilterDemo = state;

  let cfg = null;
  let ctx = null; let pc = null; let dc = null;
  let inputGain = null; let markerGain = null; let mix = null; let inputNode = null;
  let analyserOut = null; let analyserIn = null; let tapNode = null; let remoteSource = null;
  let micStream = null; let sampleBuffer = null; let markerBuffer = null;
  let statsTimer = null; let pingTimer = null; let rafId = null;
  let prevInbound = null; let prevPlayout = null;
  let captureSeq = 0; const captureWaiters = new Map();

  // The server's shared secret (voipfilter serve --token), from this page's URL:
  // ?token=... or #token=... . Sent on every API request as a Bearer token.
  const token = new URLSearchParams(location.search).get('token')
    || new URLSearchParams(location.hash.slice(1)).get('token');
  const HANGUP_WAIT_MS = 1500;

  function api(path, opts = {}) {
    const headers = { ...(opts.headers || {}) };
    if (token) headers.Authorization = `Bearer ${token}`;
    return fetch(path, { ...opts, headers }).then((resp) => {
      if (resp.status === 401) {
        throw new Error('this server needs its token: open the page as /#token=TOKEN');
      }
      return resp;
    });
  }

  // Hang up: the DELETE first (bounded wait), so the server records a hang-up rather than
  // a closed connection; it also treats a close just before the DELETE as the hang-up.
  async function hangUp(id) {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), HANGUP_WAIT_MS);
    try {
      await api(`/calls/${id}`, { method: 'DELETE', keepalive: true, signal: abort.signal });
    } catch (e) { /* the server ends the call anyway when the connection closes */ }
    clearTimeout(timer);
  }

  // ------------------------------------------------------------------ UI helpers

  function setStatus(text, kind) {
    const el = $('call-status');
    el.textContent = text;
    el.dataset.state = kind || state.callState;
  }

  function strengthValue() {
    const v = Number($('strength').value);
    return v >= Number($('strength').max) ? null : v;
  }

  function showStrength() {
    const v = strengthValue();
    $('strength-out').textContent = v == null ? 'full (no limit)' : `at most ${v} dB`;
  }

  function controls() {
    return { enabled: $('filter-toggle').checked, atten_lim_db: strengthValue() };
  }

  function sendControl(extra) {
    if (dc && dc.readyState === 'open') {
      dc.send(JSON.stringify({ type: 'set', ...extra }));
      return true;
    }
    if (state.callId) {
      api(`/calls/${state.callId}/control`, {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(extra),
      }).catch(() => {});
      return true;
    }
    return false;
  }

  async function loadBuffer(url) {
    const resp = await fetch(url);
    if (!resp.ok) throw new Error(`${url}: HTTP ${resp.status}`);
    return ctx.decodeAudioData(await resp.arrayBuffer());
  }

  // ------------------------------------------------------------------ call

  function waitIceGathering(peer, timeoutMs) {
    if (peer.iceGatheringState === 'complete') return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { peer.removeEventListener('icegatheringstatechange', check); resolve(); };
      const check = () => { if (peer.iceGatheringState === 'complete') done(); };
      peer.addEventListener('icegatheringstatechange', check);
      setTimeout(done, timeoutMs); // send what we have (STUN/TURN can be slow)
    });
  }

  async function startCall() {
    $('start-btn').disabled = true;
    $('input-select').disabled = true;
    state.error = null;
    state.callState = 'starting';
    setStatus('starting…');
    try {
      if (!cfg) cfg = await (await api('/config')).json();
      ctx = new AudioContext({ latencyHint: 'interactive' });
      await ctx.resume();
      // AudioWorklet (the round-trip tap) and the microphone exist only in secure contexts:
      // https:// or http://localhost. Elsewhere the call still works, without those.
      const canTap = !!ctx.audioWorklet;
      if (canTap) await ctx.audioWorklet.addModule('/static/tap-worklet.js');

      mix = ctx.createGain();
      inputGain = ctx.createGain(); inputGain.connect(mix);
      markerGain = ctx.createGain(); markerGain.connect(mix);

      if ($('input-select').value === 'mic') {
        if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
          throw new Error('the microphone needs HTTPS (or http://localhost); use the built-in sample');
        }
        micStream = await navigator.mediaDevices.getUserMedia({
          audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 },
        });
        inputNode = ctx.createMediaStreamSource(micStream);
      } else {
        sampleBuffer = await loadBuffer('/static/sample.wav');
        inputNode = ctx.createBufferSource();
        inputNode.buffer = sampleBuffer;
        inputNode.loop = true;
        inputNode.start();
      }
      inputNode.connect(inputGain);
      markerBuffer = await loadBuffer('/static/marker.wav');

      const dest = ctx.createMediaStreamDestination();
      dest.channelCount = 1;
      dest.channelCountMode = 'explicit';
      mix.connect(dest);
      analyserOut = ctx.createAnalyser(); analyserOut.fftSize = 1024; analyserOut.smoothingTimeConstant = 0;
      analyserIn = ctx.createAnalyser(); analyserIn.fftSize = 1024; analyserIn.smoothingTimeConstant = 0;
      mix.connect(analyserOut);

      if (canTap) {
        tapNode = new AudioWorkletNode(ctx, 'voipfilter-tap', {
          numberOfInputs: 2, numberOfOutputs: 1, outputChannelCount: [1],
        });
        tapNode.port.onmessage = (ev) => {
          const w = captureWaiters.get(ev.data.id);
          if (w) { captureWaiters.delete(ev.data.id); w(ev.data); }
        };
        mix.connect(tapNode, 0, 0);
        const sink = ctx.createGain(); sink.gain.value = 0;
        tapNode.connect(sink).connect(ctx.destination); // keeps the tap pulled, silently
      } else {
        tapNode = null;
        $('measure-status').textContent = 'round-trip measurement needs HTTPS (or http://localhost)';
      }

      pc = new RTCPeerConnection({ iceServers: cfg.iceServers || [] });
      dc = pc.createDataChannel('control');
      dc.onmessage = (ev) => onServerMessage(ev.data);
      dc.onopen = () => { sendControl(controls()); };
      const track = dest.stream.getAudioTracks()[0];
      pc.addTrack(track, dest.stream);
      pc.ontrack = (ev) => {
        // Ask Chromium for its lowest playout delay: the server forwards packets as they come
        // (voipfilter's receive buffer), so this jitter buffer is the only one smoothing the
        // call. ?jitterBufferTarget=default keeps Chromium's own choice, for comparison.
        const asked = new URLSearchParams(location.search).get('jitterBufferTarget') ?? '0';
        state.browser.jitterBufferTargetAskedMs = null;
        if (asked !== 'default' && ev.receiver && 'jitterBufferTarget' in ev.receiver) {
          try {
            ev.receiver.jitterBufferTarget = Number(asked);
            state.browser.jitterBufferTargetAskedMs = ev.receiver.jitterBufferTarget;
          } catch (e) { /* out of range: Chromium keeps its default */ }
        }
        const stream = ev.streams[0] || new MediaStream([ev.track]);
        const audio = $('remote-audio');
        audio.srcObject = stream;
        audio.play().catch(() => {});
        // Chrome feeds a remote stream into WebAudio only while a media element plays it.
        remoteSource = ctx.createMediaStreamSource(stream);
        remoteSource.connect(analyserIn);
        if (tapNode) remoteSource.connect(tapNode, 0, 1);
      };
      pc.onconnectionstatechange = () => {
        const s = pc ? pc.connectionState : 'closed';
        if (s === 'connected') { state.callState = 'connected'; setStatus('connected', 'connected'); $('measure-btn').disabled = !tapNode; }
        if (s === 'failed' || s === 'disconnected') { state.callState = s; setStatus(`call ${s}`, 'failed'); }
      };

      await pc.setLocalDescription(await pc.createOffer());
      await waitIceGathering(pc, 5000);
      const resp = await api('/offer', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type, controls: controls() }),
      });
      const answer = await resp.json().catch(() => ({ message: `HTTP ${resp.status}` }));
      if (!resp.ok) throw new Error(answer.message || answer.error || `HTTP ${resp.status}`);
      state.callId = answer.call_id;
      $('st-call').textContent = answer.call_id;
      await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
      state.callState = 'connecting';
      setStatus('connecting…');
      $('stop-btn').disabled = false;
      statsTimer = setInterval(pollStats, 1000);
      pingTimer = setInterval(() => {
        if (dc && dc.readyState === 'open') dc.send(JSON.stringify({ type: 'ping', t: performance.now() }));
      }, 2000);
      draw();
    } catch (err) {
      state.error = String(err && err.message ? err.message : err);
      await teardown();
      state.callState = 'failed';
      setStatus(`could not start: ${state.error}`, 'failed');
    }
  }

  async function teardown() {
    clearInterval(statsTimer); clearInterval(pingTimer); statsTimer = pingTimer = null;
    if (rafId) cancelAnimationFrame(rafId);
    rafId = null;
    const id = state.callId;
    if (id) await hangUp(id);
    try { if (dc) dc.close(); } catch (e) { /* closing anyway */ }
    try { if (pc) pc.close(); } catch (e) { /* closing anyway */ }
    if (micStream) micStream.getTracks().forEach((t) => t.stop());
    try { if (ctx) await ctx.close(); } catch (e) { /* closing anyway */ }
    $('remote-audio').srcObject = null;
    pc = dc = ctx = micStream = tapNode = null;
    prevInbound = prevPlayout = null;
    state.callId = null;
    $('start-btn').disabled = false;
    $('stop-btn').disabled = true;
    $('measure-btn').disabled = true;
    $('input-select').disabled = false;
  }

  async function stopCall() {
    await teardown();
    state.callState = 'idle';
    setStatus('idle', 'idle');
  }

  function onServerMessage(text) {
    let m;
    try { m = JSON.parse(text); } catch (e) { return; }
    if (m.type === 'stats') {
      state.serverStats = m;
      renderServerStats(m);
      renderLatency();
    } else if (m.type === 'state') {
      state.serverState = m;
    } else if (m.type === 'pong' && typeof m.t === 'number') {
      state.dcRttMs = performance.now() - m.t;
      $('st-dc-rtt').textContent = `${fmt(state.dcRttMs, 1)} ms (SCTP over DTLS, includes both event loops)`;
    } else if (m.type === 'error') {
      console.warn('server:', m.message);
    }
  }

  // ------------------------------------------------------------------ stats

  // The filter's stats() dict, with a few spellings accepted.
  function filterField(m, ...names) {
    const f = (m && m.filter) || {};
    for (const n of names) {
      const parts = n.split('.');
      let v = f;
      for (const p of parts) v = v == null ? undefined : v[p];
      if (v !== undefined && v !== null) return v;
    }
    return null;
  }

  function renderServerStats(m) {
    if (m && m.model) {
      $('st-model').textContent = m.delay_ms == null ? m.model : `${m.model}, ${fmt(m.delay_ms, 1)} ms delay`;
    }
    if (m && m.opus_ptime_ms) $('st-ptime').textContent = `${m.opus_ptime_ms} ms, both ways`;
    const fin = filterField(m, 'frames_in');
    const fout = filterField(m, 'frames_out');
    $('st-frames').textContent = `${fin ?? '–'} / ${fout ?? '–'}`;
    $('st-rtf').textContent = fmt(filterField(m, 'rtf'), 3);
    $('st-max').textContent = `${fmt(filterField(m, 'proc_ms_max'), 2)} ms`;
    $('st-faults').textContent = [filterField(m, 'gaps'), filterField(m, 'frames_dropped'), filterField(m, 'errors')]
      .map((v) => (v == null ? '–' : (typeof v === 'object' ? JSON.stringify(v) : v))).join(' / ');
  }

  async function pollStats() {
    if (!pc) return;
    let report;
    try { report = await pc.getStats(); } catch (e) { return; }
    const b = state.browser;
    let selectedPair = null;
    const pairs = [];
    report.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) selectedPair = s.selectedCandidatePairId;
      if (s.type === 'candidate-pair') pairs.push(s);
    });
    const pair = pairs.find((p) => p.id === selectedPair) || pairs.find((p) => p.nominated && p.state === 'succeeded');
    b.rttMs = pair && num(pair.currentRoundTripTime) != null ? pair.currentRoundTripTime * 1000 : null;
    report.forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'audio') {
        b.bytesSent = s.bytesSent; b.packetsSent = s.packetsSent;
      }
      if (s.type === 'inbound-rtp' && s.kind === 'audio') {
        b.bytesReceived = s.bytesReceived; b.packetsReceived = s.packetsReceived;
        b.packetsLost = s.packetsLost;
        b.concealedSamples = s.concealedSamples; b.totalSamplesReceived = s.totalSamplesReceived;
        b.concealmentEvents = s.concealmentEvents;
        b.arrivalJitterMs = s.jitter != null ? 1000 * s.jitter : null; // RFC 3550 interarrival jitter
        if (prevInbound && s.jitterBufferEmittedCount > prevInbound.jitterBufferEmittedCount) {
          b.jitterBufferMs = (1000 * (s.jitterBufferDelay - prevInbound.jitterBufferDelay))
            / (s.jitterBufferEmittedCount - prevInbound.jitterBufferEmittedCount);
        } else if (s.jitterBufferEmittedCount > 0) {
          b.jitterBufferMs = (1000 * s.jitterBufferDelay) / s.jitterBufferEmittedCount;
        }
        b.jitterBufferTargetMs = s.jitterBufferTargetDelay != null && s.jitterBufferEmittedCount
          ? (1000 * s.jitterBufferTargetDelay) / s.jitterBufferEmittedCount : null;
        prevInbound = { jitterBufferDelay: s.jitterBufferDelay, jitterBufferEmittedCount: s.jitterBufferEmittedCount };
      }
      if (s.type === 'media-playout') {
        if (prevPlayout && s.totalSamplesCount > prevPlayout.totalSamplesCount) {
          b.playoutMs = (1000 * (s.totalPlayoutDelay - prevPlayout.totalPlayoutDelay))
            / (s.totalSamplesCount - prevPlayout.totalSamplesCount);
        } else if (s.totalSamplesCount > 0) {
          b.playoutMs = (1000 * s.totalPlayoutDelay) / s.totalSamplesCount;
        }
        prevPlayout = { totalPlayoutDelay: s.totalPlayoutDelay, totalSamplesCount: s.totalSamplesCount };
      }
    });
    $('st-sent').textContent = `${b.packetsSent ?? 0} packets, ${((b.bytesSent || 0) / 1024).toFixed(1)} KiB`;
    $('st-recv').textContent = `${b.packetsReceived ?? 0} packets, ${((b.bytesReceived || 0) / 1024).toFixed(1)} KiB`;
    const concealed = b.totalSamplesReceived ? (100 * (b.concealedSamples || 0)) / b.totalSamplesReceived : null;
    $('st-loss').textContent = `${b.packetsLost ?? '–'} packets lost, ${fmt(concealed, 1)} % concealed`;
    renderLatency();
  }

  function renderLatency() {
    const b = state.browser;
    const m = state.serverStats;
    const L = state.latency;
    L.networkMs = b.rttMs;
    L.serverJitterBufferMs = m ? num(m.server_jitter_buffer_avg_ms) ?? num(m.server_jitter_buffer_ms) ?? num(m.server_jitter_buffer_nominal_ms) : null;
    L.serverJitterBufferMeasured = !!(m && num(m.server_jitter_buffer_ms) != null);
    L.filterEnabled = m ? !!m.enabled : null;
    L.bypass = m ? !!m.bypass : null;
    L.filterDelayMs = m ? num(m.delay_ms) : null;
    L.filterComputeP50Ms = num(filterField(m, 'proc_ms_p50'));
    L.filterComputeP95Ms = num(filterField(m, 'proc_ms_p95'));
    L.browserJitterBufferMs = num(b.jitterBufferMs);
    L.playoutMs = num(b.playoutMs);
    const pacing = m && m.server_send_pacing;
    const sendLate = m && m.server_send_lateness;
    L.sendPacingMs = pacing ? num(pacing.held_ms_mean) : (m ? 0 : null);
    L.sendNetEqTargetMs = sendLate ? num(sendLate.neteq_target_ms) : null;

    $('lat-network').textContent = fmt(L.networkMs, 1);
    $('lat-server-jb').textContent = fmt(L.serverJitterBufferMs, 0);
    const rb = m && m.server_receive_buffer;
    $('lat-server-jb-src').textContent = rb
      ? `server: voipfilter's low-latency buffer, mean wait per packet (${rb.depth_packets} held now, max wait ${fmt(rb.hold_ms_max, 0)} ms; `
        + `${rb.lost} lost, ${rb.concealed_frames} concealed by Opus PLC, ${rb.late} late, gap wait ${fmt(rb.wait_ms, 0)} ms)`
      : L.serverJitterBufferMeasured
        ? `server: audio held in aiortc's JitterBuffer, measured (now ${fmt(m.server_jitter_buffer_ms, 0)} ms, max ${fmt(m.server_jitter_buffer_max_ms, 0)}; nominal 80 = prefetch 4 × 20 ms)`
        : 'aiortc 1.16 JitterBuffer(capacity=16, prefetch=4): a fixed 80 ms at 20 ms packets (not measured)';
    let delayNote = '';
    if (L.bypass) delayNote = ' (bypassed)';
    else if (L.filterEnabled === false) delayNote = ' (off: dry, same delay)';
    $('lat-filter-delay').textContent = L.filterDelayMs == null ? '–' : `${fmt(L.filterDelayMs, 1)}${delayNote}`;
    $('lat-filter-compute').textContent = L.filterComputeP50Ms == null ? '–'
      : `${fmt(L.filterComputeP50Ms, 2)} / ${fmt(L.filterComputeP95Ms, 2)}`;
    $('lat-send-pacing').textContent = fmt(L.sendPacingMs, 1);
    $('lat-send-pacing-src').textContent = (pacing
      ? `server: mean hold per frame (now ${fmt(pacing.hold_ms, 1)} ms after the earliest frame's pace)`
      : 'server: frames sent as soon as they are ready (no --send-pacing)')
      + (sendLate && sendLate.interval_max_p95_ms != null
        ? `; frames leave up to ${fmt(sendLate.interval_max_p95_ms, 0)} ms late (p95 of half-second maxima),`
          + ` which sets a NetEQ target of ${fmt(L.sendNetEqTargetMs, 0)} ms` : '');
    L.browserJitterBufferTargetMs = num(b.jitterBufferTargetMs);
    L.browserJitterBufferTargetAskedMs = num(b.jitterBufferTargetAskedMs);
    $('lat-browser-jb').textContent = fmt(L.browserJitterBufferMs, 1);
    $('lat-browser-jb-src').textContent = 'getStats: inbound-rtp jitterBufferDelay / jitterBufferEmittedCount'
      + (L.browserJitterBufferTargetMs == null ? ''
        : `; the browser's target ${fmt(L.browserJitterBufferTargetMs, 0)} ms, the page asked`
          + ` ${L.browserJitterBufferTargetAskedMs == null ? 'for the default' : fmt(L.browserJitterBufferTargetAskedMs, 0) + ' ms'}`);
    $('lat-playout').textContent = L.playoutMs == null ? 'n/a' : fmt(L.playoutMs, 1);
    $('lat-playout-src').textContent = L.playoutMs == null ? 'this browser reports no media-playout stats'
      : 'getStats: media-playout totalPlayoutDelay / totalSamplesCount';

    const parts = [
      ['network', L.networkMs], ['server-jb', L.serverJitterBufferMs],
      ['filter-delay', L.bypass ? 0 : L.filterDelayMs], ['filter-compute', L.bypass ? 0 : L.filterComputeP50Ms],
      ['send-pacing', L.sendPacingMs], ['browser-jb', L.browserJitterBufferMs], ['playout', L.playoutMs],
    ];
    const stages = parts.reduce((acc, [, v]) => acc + (num(v) || 0), 0);
    L.stagesMs = stages; // the stages read from stats, without "everything else"
    const rt = state.roundTrip;
    const measured = L.bypass ? rt.offMedian : rt.onMedian;
    L.otherMs = measured != null ? Math.max(0, measured - stages) : null;
    $('lat-other').textContent = measured != null ? fmt(L.otherMs, 1) : 'measure →';
    // The sum includes "everything else" once a round trip was measured.
    L.sumMs = stages + (L.otherMs || 0);
    $('lat-sum').textContent = fmt(L.sumMs, 1);
    $('lat-sum-src').textContent = measured == null ? 'without everything else: measure the round trip below'
      : (measured >= stages ? 'every row, everything else included: the measured round trip'
        : `every row; the stats add up to ${fmt(stages - measured, 1)} ms more than the measured round trip`);
    const total = measured != null ? Math.max(measured, stages) : stages;
    const bar = $('latency-bar');
    bar.textContent = '';
    if (total > 0) {
      for (const [cls, v] of [...parts, ['other', L.otherMs]]) {
        if (!num(v)) continue;
        const d = document.createElement('div');
        d.className = cls;
        d.style.width = `${(100 * v) / total}%`;
        d.textContent = v >= 8 ? `${Math.round(v)}` : '';
        d.title = `${cls}: ${v.toFixed(1)} ms`;
        bar.appendChild(d);
      }
    }
  }

  // ------------------------------------------------------------------ scopes

  const specState = { out: null, in: null };

  function drawSpectrogram(canvas, analyser, key) {
    const g = canvas.getContext('2d');
    const w = canvas.width; const h = canvas.height;
    const bins = new Float32Array(analyser.frequencyBinCount);
    analyser.getFloatFrequencyData(bins);
    g.drawImage(canvas, 1, 0, w - 1, h, 0, 0, w - 1, h); // scroll left by one column
    const nyq = ctx.sampleRate / 2;
    const maxBin = Math.min(bins.length - 1, Math.floor((8000 / nyq) * bins.length));
    for (let y = 0; y < h; y++) {
      const bin = Math.floor(((h - 1 - y) / (h - 1)) * maxBin);
      const db = bins[bin];
      const t = Math.max(0, Math.min(1, (db + 110) / 80));
      const r = Math.floor(255 * Math.min(1, t * 1.6));
      const gg = Math.floor(255 * Math.max(0, t * 1.4 - 0.4));
      const bb = Math.floor(120 * (1 - t) + 60 * Math.max(0, t - 0.7));
      g.fillStyle = `rgb(${r},${gg},${bb})`;
      g.fillRect(w - 1, y, 1, 1);
    }
    specState[key] = true;
  }

  function levelDb(analyser) {
    const buf = new Float32Array(analyser.fftSize);
    analyser.getFloatTimeDomainData(buf);
    let acc = 0;
    for (let i = 0; i < buf.length; i++) acc += buf[i] * buf[i];
    return 10 * Math.log10(acc / buf.length + 1e-12);
  }

  function showLevel(key, db) {
    state.levels[key] = db;
    if (db > state.peaks[key]) state.peaks[key] = db;
    $(`level-${key}`).textContent = `${fmt(db, 0)} dBFS`;
    $(`meter-${key}`).style.width = `${Math.max(0, Math.min(100, ((db + 70) / 70) * 100))}%`;
  }

  function draw() {
    if (!ctx) return;
    if (analyserOut) { drawSpectrogram($('spec-out'), analyserOut, 'out'); showLevel('out', levelDb(analyserOut)); }
    if (analyserIn && remoteSource) { drawSpectrogram($('spec-in'), analyserIn, 'in'); showLevel('in', levelDb(analyserIn)); }
    rafId = requestAnimationFrame(draw);
  }

  // ------------------------------------------------------------------ round trip

  function capture(startFrame, frames) {
    const id = ++captureSeq;
    return new Promise((resolve, reject) => {
      captureWaiters.set(id, resolve);
      tapNode.port.postMessage({ type: 'capture', id, startFrame, frames });
      setTimeout(() => {
        if (captureWaiters.delete(id)) reject(new Error('capture timed out'));
      }, 1000 * (frames / ctx.sampleRate) + 3000);
    });
  }

  // RMS envelope in 0.25 ms steps over a 1 ms window.
  function envelope(x, step, win) {
    const n = Math.floor((x.length - win) / step);
    const e = new Float32Array(Math.max(0, n));
    for (let k = 0; k < n; k++) {
      let acc = 0;
      const o = k * step;
      for (let i = 0; i < win; i++) acc += x[o + i] * x[o + i];
      e[k] = Math.sqrt(acc / win);
    }
    return e;
  }

  // Lag of `inp` behind `out`: normalised cross-correlation of their envelopes around the
  // marker. Envelopes, not waveforms, so the filter's phase changes do not move the peak.
  function estimateLag(out, inp, sr) {
    const step = Math.max(1, Math.round(sr / 4000));
    const win = 4 * step;
    const eo = envelope(out, step, win); const ei = envelope(inp, step, win);
    let peak = 0;
    for (let k = 0; k < eo.length; k++) peak = Math.max(peak, eo[k]);
    if (peak <= 1e-5) return null;
    let s = 0; while (s < eo.length && eo[s] < 0.05 * peak) s++;
    let e = eo.length - 1; while (e > s && eo[e] < 0.05 * peak) e--;
    s = Math.max(0, s - 40); e = Math.min(eo.length - 1, e + 40);
    const n = e - s + 1;
    let mo = 0; for (let k = s; k <= e; k++) mo += eo[k];
    mo /= n;
    let no = 0; for (let k = s; k <= e; k++) no += (eo[k] - mo) ** 2;
    // prefix sums of the returned envelope for per-lag mean and norm
    const p1 = new Float64Array(ei.length + 1); const p2 = new Float64Array(ei.length + 1);
    for (let k = 0; k < ei.length; k++) { p1[k + 1] = p1[k] + ei[k]; p2[k + 1] = p2[k] + ei[k] * ei[k]; }
    const maxLag = ei.length - 1 - e;
    const c = new Float64Array(Math.max(0, maxLag + 1));
    let best = -1; let bestC = -Infinity;
    for (let lag = 0; lag <= maxLag; lag++) {
      let acc = 0;
      for (let k = s; k <= e; k++) acc += (eo[k] - mo) * ei[k + lag];
      const sum1 = p1[e + lag + 1] - p1[s + lag]; const sum2 = p2[e + lag + 1] - p2[s + lag];
      const ni = sum2 - (sum1 * sum1) / n;
      c[lag] = ni > 1e-12 && no > 1e-12 ? acc / Math.sqrt(no * ni) : 0;
      if (c[lag] > bestC) { bestC = c[lag]; best = lag; }
    }
    if (best < 0) return null;
    let frac = 0;
    if (best > 0 && best < maxLag) {
      const y0 = c[best - 1]; const y1 = c[best]; const y2 = c[best + 1];
      const den = y0 - 2 * y1 + y2;
      if (den < 0) frac = (0.5 * (y0 - y2)) / den;
    }
    let inPeak = 0;
    for (let k = s + best; k <= e + best && k < ei.length; k++) inPeak = Math.max(inPeak, ei[k]);
    return {
      lagMs: ((best + frac) * step * 1000) / sr,
      confidence: bestC,
      returnedDb: 20 * Math.log10(inPeak + 1e-12),
    };
  }

  // The browser's own jitter buffer, averaged over an interval (inbound-rtp counters).
  async function inboundJitter() {
    if (!pc) return null;
    let out = null;
    (await pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'audio') {
        out = { delay: s.jitterBufferDelay || 0, count: s.jitterBufferEmittedCount || 0 };
      }
    });
    return out;
  }

  async function oneMarker() {
    const sr = ctx.sampleRate;
    const before = await inboundJitter();
    const t0 = ctx.currentTime + 0.15;
    const src = ctx.createBufferSource();
    src.buffer = markerBuffer;
    src.connect(markerGain);
    src.start(t0);
    const startFrame = Math.round((t0 - 0.03) * sr);
    const frames = Math.round((markerBuffer.duration + 2.0) * sr); // round trips up to ~2 s
    const cap = await capture(startFrame, frames);
    const after = await inboundJitter();
    const r = estimateLag(cap.out, cap.inp, cap.sampleRate);
    if (!r || r.confidence < 0.5 || r.returnedDb < -60) return null;
    r.browserJitterMs = before && after && after.count > before.count
      ? (1000 * (after.delay - before.delay)) / (after.count - before.count) : null;
    return r;
  }

  function renderRoundTrip() {
    const rt = state.roundTrip;
    rt.offMedian = median(rt.off); rt.onMedian = median(rt.on);
    const pairs = rt.pairs.filter((p) => p.off != null && p.on != null);
    rt.addedMs = pairs.length ? median(pairs.map((p) => p.on - p.off)) : null;
    const corrected = pairs.filter((p) => p.jbOff != null && p.jbOn != null);
    rt.addedExclBrowserJitterMs = corrected.length
      ? median(corrected.map((p) => (p.on - p.jbOn) - (p.off - p.jbOff))) : null;
    $('rtt-off').textContent = fmt(rt.offMedian, 1);
    $('rtt-on').textContent = fmt(rt.onMedian, 1);
    $('rtt-off-runs').textContent = rt.off.map((v) => v.toFixed(1)).join(', ');
    $('rtt-on-runs').textContent = rt.on.map((v) => v.toFixed(1)).join(', ');
    $('rtt-added').textContent = rt.addedMs == null ? '–' : `${rt.addedMs >= 0 ? '+' : ''}${rt.addedMs.toFixed(1)}`;
    const d = state.latency.filterDelayMs;
    $('rtt-added-note').textContent = rt.addedMs == null ? '' : 'median of the paired differences (on − off)';
    $('rtt-added-jb').textContent = rt.addedExclBrowserJitterMs == null ? '–'
      : `${rt.addedExclBrowserJitterMs >= 0 ? '+' : ''}${rt.addedExclBrowserJitterMs.toFixed(1)}`;
    $('rtt-added-jb-note').textContent = rt.addedExclBrowserJitterMs == null ? ''
      : `each run minus the browser jitter buffer during it; the filter reports ${fmt(d, 1)} ms of algorithmic delay`;
    renderLatency();
  }

  async function measureRoundTrip() {
    if (!ctx || !pc || !tapNode || state.roundTrip.running) return;
    const rt = state.roundTrip;
    rt.running = true;
    rt.off = []; rt.on = []; rt.pairs = []; rt.failures = 0;
    $('measure-btn').disabled = true;
    const runs = Number($('measure-runs').value);
    const user = { enabled: $('filter-toggle').checked, bypass: false };
    const status = $('measure-status');
    try {
      inputGain.gain.setTargetAtTime(0, ctx.currentTime, 0.01); // mute the input while measuring
      // "off" takes the filter out of the path (bypass). Merely switched off, it still delays
      // the dry signal by its own delay, so that toggling never makes the audio jump.
      // Runs alternate off/on, on/off, ... and are compared in pairs: the browser's jitter
      // buffer adapts during a call, and pairing keeps its drift out of the difference.
      for (let i = 0; i < runs && pc; i++) {
        const pair = { off: null, on: null, jbOff: null, jbOn: null };
        rt.pairs.push(pair);
        for (const mode of (i % 2 ? ['on', 'off'] : ['off', 'on'])) {
          sendControl(mode === 'on' ? { bypass: false, enabled: true } : { bypass: true });
          await sleep(700); // let audio from before the switch drain
          if (!pc) break;
          status.textContent = `${mode === 'on' ? 'filter in the path' : 'no filter (bypass)'}: run ${i + 1} of ${runs}…`;
          const r = await oneMarker();
          if (r) {
            rt[mode].push(r.lagMs);
            pair[mode] = r.lagMs;
            pair[mode === 'on' ? 'jbOn' : 'jbOff'] = r.browserJitterMs;
          } else {
            rt.failures += 1;
          }
          renderRoundTrip();
        }
      }
      status.textContent = rt.failures ? `done (${rt.failures} marker(s) not found in the returned audio)` : 'done';
    } catch (err) {
      status.textContent = `failed: ${err.message || err}`;
    } finally {
      if (pc) sendControl(user);
      if (ctx && inputGain) inputGain.gain.setTargetAtTime(1, ctx.currentTime, 0.01);
      rt.running = false;
      $('measure-btn').disabled = !pc || !tapNode;
    }
  }

  // ------------------------------------------------------------------ wiring

  $('start-btn').addEventListener('click', startCall);
  $('stop-btn').addEventListener('click', stopCall);
  $('measure-btn').addEventListener('click', measureRoundTrip);
  $('filter-toggle').addEventListener('change', () => sendControl({ enabled: $('filter-toggle').checked }));
  $('strength').addEventListener('input', showStrength);
  $('strength').addEventListener('change', () => sendControl({ atten_lim_db: strengthValue() }));
  window.addEventListener('pagehide', () => {
    if (state.callId) api(`/calls/${state.callId}`, { method: 'DELETE', keepalive: true }).catch(() => {});
  });
  showStrength();
  api('/config').then((r) => r.json()).then((c) => {
    cfg = c;
    if (c.attenLimDb != null) {
      $('strength').value = String(Math.min(Number($('strength').max) - 3, Math.round(c.attenLimDb / 3) * 3));
      showStrength();
    }
  }).catch(() => {});
  state.ready = true;
})();
