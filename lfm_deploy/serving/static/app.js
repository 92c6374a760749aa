/* lfm-serve's page: paint support masks, register a support set, segment query images.
 *
 * Plain JavaScript, no dependencies, no build step; it uses only the service's public API
 * (GET metadata, POST support-sets, POST predict?support=ID), with URLs relative to the page.
 *
 * The mask of each support image is a Uint8Array (0/1) at the image's own resolution; the
 * canvas `mask-canvas` has that resolution too and is scaled by CSS only, so the zoom never
 * changes what is painted. A pixel is painted when its centre lies within the brush radius of
 * the stroke's segment (no anti-aliasing: the mask is binary). Undo/redo store, per stroke, the
 * indices of the pixels it changed.
 */
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const FG = [255, 32, 96];           // the painted mask's colour on screen
  const TOKEN_KEY = "lfm-serve-token";

  const state = {
    meta: null,
    shots: 1,
    slots: [],          // one per support pair: {file, url, img, w, h, mask, undo, redo, name}
    active: 0,
    tool: "brush",
    setId: null,        // the registered set's id
    setStale: false,    // a support changed after registration
    stroke: null,       // the stroke being painted: {value, indices: [], last: [x, y]}
    keyCursor: null,    // keyboard brush position (image pixels)
    overlay: null,      // ImageData of the canvas
  };

  // ---------------------------------------------------------------- errors, in words

  function showError(message) {
    const el = $("error");
    if (!message) { el.hidden = true; el.textContent = ""; return; }
    el.textContent = message;
    el.hidden = false;
  }

  window.addEventListener("error", (e) => showError("The page failed: " + (e.message || e)));
  window.addEventListener("unhandledrejection", (e) => {
    e.preventDefault();
    showError(String((e.reason && e.reason.message) || e.reason));
  });

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

  /* fetch with the token; a non-2xx answer becomes an ApiError whose message is the service's. */
  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    if (token()) headers.set("Authorization", "Bearer " + token());
    let resp;
    try {
      resp = await fetch(path, { ...options, headers });
    } catch (exc) {
      throw new ApiError(0, "network", `Could not reach the service (${exc.message}). Is lfm-serve still running?`);
    }
    if (resp.ok) return resp;
    let code = "http_" + resp.status, message = `${resp.status} ${resp.statusText || "error"}`;
    try {
      const body = await resp.json();
      if (body && body.message) { message = body.message; code = body.error || code; }
    } catch (_) { /* not JSON: keep the status line */ }
    if (resp.status === 401) {
      $("token-form").hidden = false;
      $("token").focus();
    }
    throw new ApiError(resp.status, code, `${message} (HTTP ${resp.status} ${code})`);
  }

  // ---------------------------------------------------------------- the model

  async function loadMetadata() {
    try {
      const meta = await (await api("metadata")).json();
      state.meta = meta;
      $("token-form").hidden = true;
      const shots = Math.max(1, parseInt(meta.shots, 10) || 1);
      if (shots !== state.shots || !state.slots.length) setShots(shots);
      const parts = [
        ["domain", meta.domain], ["shots", meta.shots], ["precision", meta.precision],
        ["model size", meta.image_size ? `${meta.image_size} px` : null],
        ["uploads up to", limitsText(meta.limits)],
      ].filter(([, v]) => v !== undefined && v !== null && v !== "");
      const model = $("model");
      model.textContent = "";
      for (const [k, v] of parts) {
        const item = document.createElement("span");
        item.className = "kv";
        item.innerHTML = `<span class="k"></span> <b class="v"></b>`;
        item.querySelector(".k").textContent = k;
        item.querySelector(".v").textContent = String(v);
        model.appendChild(item);
      }
      const synthetic = String(meta.weights_label || "").startsWith("SYNTHETIC");
      if (meta.untrained) {
        const tag = document.createElement("span");
        tag.className = "tag-untrained";
        tag.textContent = synthetic ? "SYNTHETIC-DATA DEFAULT" : "UNTRAINED";
        model.appendChild(tag);
      }
      $("untrained").hidden = !meta.untrained || synthetic;
      $("synthetic").hidden = !(meta.untrained && synthetic);
      $("shots-label").textContent = shots === 1 ? "(1 image and its mask)" : `(${shots} images and their masks)`;
      updateQueryEnabled();
    } catch (exc) {
      $("model").textContent = "Model unknown: the service did not answer.";
      showError("Could not read the model's metadata: " + exc.message);
    }
  }

  function limitsText(limits) {
    if (!limits) return null;
    const parts = [];
    if (limits.max_body_mb) parts.push(`${+Number(limits.max_body_mb).toFixed(1)} MB`);
    if (limits.max_megapixels) parts.push(`${+Number(limits.max_megapixels).toFixed(1)} MP`);
    return parts.join(", ") || null;
  }

  function defaultSet() {
    const m = state.meta || {};
    return m.default_support || m.default_set || m.default_support_set || null;
  }

  // ---------------------------------------------------------------- support slots

  function newSlot() {
    return { file: null, url: null, img: null, w: 0, h: 0, mask: null, undo: [], redo: [], name: "" };
  }

  function setShots(k) {
    state.shots = k;
    while (state.slots.length < k) state.slots.push(newSlot());
    state.slots.length = k;
    state.active = Math.min(state.active, k - 1);
    renderSlots();
  }

  function slot() { return state.slots[state.active]; }

  function renderSlots() {
    const box = $("slots");
    box.textContent = "";
    if (state.shots < 2) { box.hidden = true; return; }
    box.hidden = false;
    state.slots.forEach((s, i) => {
      const b = document.createElement("button");
      b.type = "button";
      b.setAttribute("role", "tab");
      b.setAttribute("aria-selected", String(i === state.active));
      b.dataset.testid = "slot";
      b.className = "slot" + (i === state.active ? " active" : "");
      const done = s.img && s.mask && countMask(s) > 0;
      b.textContent = `Support ${i + 1}` + (s.img ? (done ? " ✓" : " (no mask)") : " (empty)");
      b.addEventListener("click", () => { state.active = i; endStroke(); renderSlots(); showSlot(); });
      box.appendChild(b);
    });
  }

  function countMask(s) {
    let n = 0;
    const m = s.mask;
    for (let i = 0; i < m.length; i++) n += m[i];
    return n;
  }

  function changed() {
    if (state.setId) state.setStale = true;
    refreshButtons();
    renderSlots();
  }

  function refreshButtons() {
    const s = slot();
    const has = !!(s && s.img);
    $("undo").disabled = !has || !s.undo.length;
    $("redo").disabled = !has || !s.redo.length;
    $("clear").disabled = !has;
    $("download-mask").disabled = !has;
    // Enabled as soon as one pair exists: a click on an incomplete set says, in words, what is missing.
    $("register").disabled = !state.slots.some((x) => x.img);
    const status = $("support-status");
    if (has) {
      const fg = countMask(s);
      status.textContent = `${s.name}: ${s.w}×${s.h} px, mask ${(100 * fg / (s.w * s.h)).toFixed(1)}% foreground` +
        (fg ? "" : " (paint the object, or load its mask file)");
    } else {
      status.textContent = "";
    }
    const info = $("set-info");
    if (state.setId && state.setStale) {
      info.textContent = `Set ${state.setId.slice(0, 12)} is registered; the supports changed since: register again to use them.`;
    }
  }

  function decodeImage(file) {
    return new Promise((resolve, reject) => {
      const url = URL.createObjectURL(file);
      const img = new Image();
      img.onload = () => resolve({ img, url });
      img.onerror = () => {
        URL.revokeObjectURL(url);
        reject(new Error(`${file.name || "the file"} is not an image this browser can read ` +
          `(${file.type || "unknown type"}); use a PNG, JPEG or WebP file`));
      };
      img.src = url;
    });
  }

  async function loadSupportImage(file) {
    showError(null);
    if (!file) return;
    let decoded;
    try {
      decoded = await decodeImage(file);
    } catch (exc) {
      showError(exc.message);
      return;
    }
    const s = slot();
    if (s.url) URL.revokeObjectURL(s.url);
    const { img, url } = decoded;
    Object.assign(s, { file, url, img, w: img.naturalWidth, h: img.naturalHeight, name: file.name || "image",
      mask: new Uint8Array(img.naturalWidth * img.naturalHeight), undo: [], redo: [] });
    const size = Math.max(2, Math.round(Math.min(s.w, s.h) / 25));
    $("brush-size").value = String(Math.min(500, size));
    showSlot();
    changed();
  }

  /* A mask file read like the runtime reads one: grayscale, foreground where >= 128. */
  async function loadMaskFile(file) {
    showError(null);
    if (!file) return;
    const s = slot();
    if (!s.img) { showError("Load the support image first, then its mask."); return; }
    let decoded;
    try {
      decoded = await decodeImage(file);
    } catch (exc) {
      showError("The mask file: " + exc.message);
      return;
    }
    const { img, url } = decoded;
    URL.revokeObjectURL(url);
    if (img.naturalWidth !== s.w || img.naturalHeight !== s.h) {
      showError(`The mask ${file.name} is ${img.naturalWidth}×${img.naturalHeight} but its image is ${s.w}×${s.h}; ` +
        "load the mask drawn for that image, at the same size.");
      return;
    }
    const c = document.createElement("canvas");
    c.width = s.w; c.height = s.h;
    const ctx = c.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(img, 0, 0);
    const px = ctx.getImageData(0, 0, s.w, s.h).data;
    const on = [], off = [];
    for (let i = 0, j = 0; i < s.mask.length; i++, j += 4) {
      const gray = (px[j] * 299 + px[j + 1] * 587 + px[j + 2] * 114) / 1000;
      const v = gray >= 128 ? 1 : 0;
      if (v !== s.mask[i]) (v ? on : off).push(i);
    }
    applyAction(s, [{ value: 1, indices: on }, { value: 0, indices: off }]);
    if (!countMask(s)) showError(`The mask ${file.name} has no pixel >= 128 (a 0/1 label file?): nothing is marked.`);
  }

  // ---------------------------------------------------------------- the canvas

  const canvas = $("mask-canvas");
  const ctx = canvas.getContext("2d", { willReadFrequently: true });

  function showSlot() {
    const s = slot();
    const stage = $("stage");
    const preview = $("support-preview");
    if (!s || !s.img) {
      stage.hidden = true;
      $("support-hint").hidden = false;
      refreshButtons();
      return;
    }
    preview.src = s.url;
    canvas.width = s.w;
    canvas.height = s.h;
    state.overlay = ctx.createImageData(s.w, s.h);
    stage.hidden = false;
    $("support-hint").hidden = true;
    state.keyCursor = null;
    applyZoom();
    redraw(0, 0, s.w, s.h);
    refreshButtons();
  }

  function applyZoom() {
    const s = slot();
    if (!s || !s.img) return;
    const choice = $("zoom").value;
    let scale;
    if (choice === "fit") {
      const wrap = $("drop-support");
      const maxW = Math.max(100, wrap.clientWidth - 4);
      const maxH = Math.max(200, window.innerHeight * 0.5);
      // Large scans are shrunk to fit; small tiles are enlarged (up to 4x) so they can be painted.
      scale = Math.min(4, maxW / s.w, maxH / s.h);
    } else {
      scale = parseFloat(choice);
    }
    const stage = $("stage");
    stage.style.width = `${s.w * scale}px`;
    stage.style.height = `${s.h * scale}px`;
    stage.classList.toggle("pixelated", scale > 1);
    updateCursor();
  }

  /* Repaint the overlay's rectangle [x0, x1) x [y0, y1) from the mask. */
  function redraw(x0, y0, x1, y1) {
    const s = slot();
    x0 = Math.max(0, x0 | 0); y0 = Math.max(0, y0 | 0);
    x1 = Math.min(s.w, Math.ceil(x1)); y1 = Math.min(s.h, Math.ceil(y1));
    if (x1 <= x0 || y1 <= y0) return;
    const d = state.overlay.data, m = s.mask;
    for (let y = y0; y < y1; y++) {
      for (let x = x0, i = y * s.w + x0; x < x1; x++, i++) {
        const j = i * 4;
        if (m[i]) { d[j] = FG[0]; d[j + 1] = FG[1]; d[j + 2] = FG[2]; d[j + 3] = 255; } else { d[j + 3] = 0; }
      }
    }
    ctx.putImageData(state.overlay, 0, 0, x0, y0, x1 - x0, y1 - y0);
  }

  function radius() {
    const v = parseFloat($("brush-size").value);
    return Math.max(0.5, (isFinite(v) ? v : 12) / 2);
  }

  /* Paint the capsule around segment (ax, ay)-(bx, by) (image pixel units) with the stroke's value. */
  function paintSegment(ax, ay, bx, by) {
    const s = slot(), st = state.stroke, r = radius(), r2 = r * r;
    const x0 = Math.max(0, Math.floor(Math.min(ax, bx) - r)), x1 = Math.min(s.w, Math.ceil(Math.max(ax, bx) + r) + 1);
    const y0 = Math.max(0, Math.floor(Math.min(ay, by) - r)), y1 = Math.min(s.h, Math.ceil(Math.max(ay, by) + r) + 1);
    const dx = bx - ax, dy = by - ay, len2 = dx * dx + dy * dy;
    const m = s.mask, v = st.value;
    for (let y = y0; y < y1; y++) {
      const py = y + 0.5;
      for (let x = x0; x < x1; x++) {
        const i = y * s.w + x;
        if (m[i] === v) continue;
        const px = x + 0.5;
        let t = len2 ? ((px - ax) * dx + (py - ay) * dy) / len2 : 0;
        t = t < 0 ? 0 : t > 1 ? 1 : t;
        const ex = px - (ax + t * dx), ey = py - (ay + t * dy);
        if (ex * ex + ey * ey <= r2) { m[i] = v; st.indices.push(i); }
      }
    }
    redraw(x0, y0, x1, y1);
  }

  function beginStroke(x, y) {
    const s = slot();
    if (!s || !s.img) return;
    state.stroke = { value: state.tool === "eraser" ? 0 : 1, indices: [], last: [x, y] };
    paintSegment(x, y, x, y);
  }

  function continueStroke(x, y) {
    const st = state.stroke;
    if (!st) return;
    paintSegment(st.last[0], st.last[1], x, y);
    st.last = [x, y];
  }

  function endStroke() {
    const st = state.stroke;
    state.stroke = null;
    if (!st) return;
    const s = slot();
    if (st.indices.length) {
      s.undo.push([{ value: st.value, indices: Int32Array.from(st.indices) }]);
      s.redo.length = 0;
    }
    changed();
  }

  /* An action is a list of {value, indices}: the pixels it set to value (their old value is 1 - value). */
  function applyAction(s, parts) {
    const action = parts.filter((p) => p.indices.length).map((p) => ({ value: p.value, indices: Int32Array.from(p.indices) }));
    if (!action.length) return;
    for (const p of action) for (const i of p.indices) s.mask[i] = p.value;
    s.undo.push(action);
    s.redo.length = 0;
    if (s === slot()) redraw(0, 0, s.w, s.h);
    changed();
  }

  function undo() {
    const s = slot();
    if (!s || !s.img || !s.undo.length) return;
    endStroke();
    const action = s.undo.pop();
    for (let k = action.length - 1; k >= 0; k--) for (const i of action[k].indices) s.mask[i] = 1 - action[k].value;
    s.redo.push(action);
    redraw(0, 0, s.w, s.h);
    changed();
  }

  function redo() {
    const s = slot();
    if (!s || !s.img || !s.redo.length) return;
    const action = s.redo.pop();
    for (const p of action) for (const i of p.indices) s.mask[i] = p.value;
    s.undo.push(action);
    redraw(0, 0, s.w, s.h);
    changed();
  }

  function clearMask() {
    const s = slot();
    if (!s || !s.img) return;
    const on = [];
    for (let i = 0; i < s.mask.length; i++) if (s.mask[i]) on.push(i);
    applyAction(s, [{ value: 0, indices: on }]);
  }

  /* Pointer position in image pixels (continuous): CSS pixels scaled by the canvas's shown size. */
  function toImage(e) {
    const rect = canvas.getBoundingClientRect();
    return [(e.clientX - rect.left) * canvas.width / rect.width, (e.clientY - rect.top) * canvas.height / rect.height];
  }

  canvas.addEventListener("pointerdown", (e) => {
    if (e.button !== 0) return;
    e.preventDefault();
    canvas.focus({ preventScroll: true });  // scrolling now would move the stroke under the pointer
    canvas.setPointerCapture(e.pointerId);
    showError(null);
    const [x, y] = toImage(e);
    beginStroke(x, y);
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!state.stroke) return;
    const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [e];
    for (const ev of events.length ? events : [e]) {
      const [x, y] = toImage(ev);
      continueStroke(x, y);
    }
  });
  for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
    canvas.addEventListener(type, () => { if (state.stroke && !state.keyCursor?.down) endStroke(); });
  }

  // Keyboard painting: arrows move a brush cursor, Space starts and ends a stroke.
  function updateCursor() {
    const cur = $("cursor"), s = slot();
    if (!state.keyCursor || !s || !s.img) { cur.hidden = true; return; }
    const scale = parseFloat($("stage").style.width) / s.w;
    const r = radius() * scale;
    cur.hidden = false;
    cur.style.left = `${state.keyCursor.x * scale - r}px`;
    cur.style.top = `${state.keyCursor.y * scale - r}px`;
    cur.style.width = cur.style.height = `${2 * r}px`;
    cur.classList.toggle("down", !!state.keyCursor.down);
  }

  canvas.addEventListener("keydown", (e) => {
    const s = slot();
    if (!s || !s.img) return;
    const arrows = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    if (!arrows[e.key] && e.key !== " " && e.key !== "Enter" && e.key !== "Escape") return;
    if (!state.keyCursor) state.keyCursor = { x: s.w / 2, y: s.h / 2, down: false };
    const k = state.keyCursor;
    if (arrows[e.key]) {
      e.preventDefault();
      const step = e.shiftKey ? 1 : Math.max(1, radius());
      k.x = Math.min(s.w, Math.max(0, k.x + arrows[e.key][0] * step));
      k.y = Math.min(s.h, Math.max(0, k.y + arrows[e.key][1] * step));
      if (k.down) continueStroke(k.x, k.y);
    } else if (e.key === " " || e.key === "Enter") {
      e.preventDefault();
      if (k.down) { k.down = false; endStroke(); } else { k.down = true; beginStroke(k.x, k.y); }
    } else if (e.key === "Escape" && k.down) {
      k.down = false;
      endStroke();
    }
    updateCursor();
  });
  canvas.addEventListener("blur", () => {
    if (state.keyCursor && state.keyCursor.down) { state.keyCursor.down = false; endStroke(); }
    state.keyCursor = null;
    updateCursor();
  });

  function setTool(tool) {
    state.tool = tool;
    $("brush").setAttribute("aria-pressed", String(tool === "brush"));
    $("eraser").setAttribute("aria-pressed", String(tool === "eraser"));
  }

  function resizeBrush(direction) {
    const el = $("brush-size");
    const v = parseFloat(el.value) || 12;
    const next = direction > 0 ? Math.max(v + 1, Math.round(v * 1.25)) : Math.min(v - 1, Math.round(v / 1.25));
    el.value = String(Math.min(500, Math.max(1, next)));
    updateCursor();
  }

  document.addEventListener("keydown", (e) => {
    const t = e.target;
    const typing = t && (t.tagName === "TEXTAREA" || t.tagName === "SELECT" ||
      (t.tagName === "INPUT" && !["file", "range", "button", "checkbox"].includes(t.type)));
    const mod = e.ctrlKey || e.metaKey;
    if (mod && !e.altKey && (e.key === "z" || e.key === "Z")) {
      if (typing && t.id !== "brush-size") return;   // the field's own undo
      e.preventDefault();
      if (e.shiftKey) redo(); else undo();
    } else if (mod && !e.altKey && (e.key === "y" || e.key === "Y") && !typing) {
      e.preventDefault();
      redo();
    } else if (!mod && !e.altKey && (e.key === "[" || e.key === "]") && (!typing || t.id === "brush-size")) {
      e.preventDefault();
      resizeBrush(e.key === "]" ? 1 : -1);
    } else if (!mod && !e.altKey && !typing && (e.key === "b" || e.key === "e")) {
      setTool(e.key === "e" ? "eraser" : "brush");
    } else if (e.key === "Escape" && !$("error").hidden) {
      showError(null);
    }
  });

  // ---------------------------------------------------------------- mask PNG (8-bit grayscale, 0/255)

  const CRC_TABLE = (() => {
    const t = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      t[n] = c >>> 0;
    }
    return t;
  })();

  function crc32(bytes) {
    let c = 0xffffffff;
    for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  }

  function chunk(type, data) {
    const out = new Uint8Array(12 + data.length);
    const view = new DataView(out.buffer);
    view.setUint32(0, data.length);
    for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
    out.set(data, 8);
    view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
    return out;
  }

  async function maskPng(s) {
    const raw = new Uint8Array((s.w + 1) * s.h);  // filter byte 0, then the row
    for (let y = 0; y < s.h; y++) {
      const row = y * (s.w + 1) + 1, src = y * s.w;
      for (let x = 0; x < s.w; x++) raw[row + x] = s.mask[src + x] ? 255 : 0;
    }
    if (typeof CompressionStream === "undefined") {  // an old browser: the canvas's RGBA PNG (black/white)
      const c = document.createElement("canvas");
      c.width = s.w; c.height = s.h;
      const cx = c.getContext("2d");
      const im = cx.createImageData(s.w, s.h);
      for (let i = 0; i < s.mask.length; i++) {
        const v = s.mask[i] ? 255 : 0;
        im.data.set([v, v, v, 255], i * 4);
      }
      cx.putImageData(im, 0, 0);
      return await new Promise((resolve) => c.toBlob(resolve, "image/png"));
    }
    const zipped = new Uint8Array(await new Response(
      new Blob([raw]).stream().pipeThrough(new CompressionStream("deflate"))).arrayBuffer());
    const ihdr = new Uint8Array(13);
    const v = new DataView(ihdr.buffer);
    v.setUint32(0, s.w); v.setUint32(4, s.h);
    ihdr[8] = 8; ihdr[9] = 0;  // 8-bit grayscale
    const sig = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]);
    return new Blob([sig, chunk("IHDR", ihdr), chunk("IDAT", zipped), chunk("IEND", new Uint8Array(0))],
      { type: "image/png" });
  }

  function maskName(s) {
    return (s.name || "support").replace(/\.[^.]*$/, "") + "_mask.png";
  }

  async function downloadMask() {
    const s = slot();
    if (!s || !s.img) return;
    const blob = await maskPng(s);
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = maskName(s);
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }

  // ---------------------------------------------------------------- register

  async function register() {
    showError(null);
    const missing = state.slots.findIndex((s) => !s.img);
    if (missing >= 0) { showError(`Support ${missing + 1} has no image yet.`); return; }
    const empty = state.slots.findIndex((s) => !countMask(s));
    if (empty >= 0) {
      showError(`The mask of support ${empty + 1} is empty: paint the object (or load its mask) before registering.`);
      return;
    }
    const button = $("register");
    button.disabled = true;
    $("set-info").textContent = "Registering…";
    try {
      const form = new FormData();
      for (const s of state.slots) {
        form.append("image", s.file, s.file.name || "image");
        form.append("mask", await maskPng(s), maskName(s));
      }
      const t0 = performance.now();
      const body = await (await api("support-sets", { method: "POST", body: form })).json();
      const ms = performance.now() - t0;
      state.setId = body.id;
      state.setStale = false;
      const fg = (body.foreground || []).map((f) => (100 * f).toFixed(1) + "%").join(", ");
      $("set-info").textContent = `Registered set ${body.id} (${body.shots} shot${body.shots === 1 ? "" : "s"}, ` +
        `foreground ${fg}) in ${ms.toFixed(0)} ms. Now add query images.`;
      $("set-info").dataset.setId = body.id;
      updateQueryEnabled();
      $("query-input").focus();
    } catch (exc) {
      $("set-info").textContent = "";
      showError("Registering the support set failed: " + exc.message);
    } finally {
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------- queries

  function updateQueryEnabled() {
    const ready = !!(state.setId || defaultSet());
    $("query-input").disabled = !ready;
    $("query-hint").textContent = ready
      ? `or drop them here: each is segmented with ${state.setId ? "your registered set" : "the service's default set"}.`
      : "or drop them here (register a support set first).";
  }

  function percent(f) {
    const p = 100 * f;
    return (p > 0 && p < 1 ? p.toFixed(2) : p.toFixed(1)) + "%";
  }

  function formatBytes(n) {
    return n > 1 << 20 ? (n / (1 << 20)).toFixed(1) + " MB" : Math.max(1, Math.round(n / 1024)) + " kB";
  }

  async function segment(file) {
    const card = document.createElement("article");
    card.className = "result pending";
    card.dataset.testid = "result";
    card.dataset.status = "pending";
    card.innerHTML = `<div class="pics"><div class="photo"><img class="query" alt=""><img class="overlay" alt=""></div>
      <img class="mask" data-testid="result-mask" alt=""></div>
      <div class="meta"><b class="name"></b> <span class="stat">segmenting…</span> <a class="download" hidden>Download mask PNG</a></div>`;
    card.querySelector(".name").textContent = file.name || "query";
    const photo = card.querySelector("img.query");
    const url = URL.createObjectURL(file);
    photo.src = url;
    photo.alt = file.name || "query";
    photo.onerror = () => { photo.hidden = true; card.classList.add("no-photo"); };
    $("results").prepend(card);
    const params = new URLSearchParams();
    if (state.setId) params.set("support", state.setId);
    const t0 = performance.now();
    try {
      const resp = await api("predict" + (params.toString() ? "?" + params : ""), {
        method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" },
      });
      const blob = await resp.blob();
      const ms = performance.now() - t0;
      const fraction = parseFloat(resp.headers.get("X-Foreground-Fraction"));
      const maskUrl = URL.createObjectURL(blob);
      card.querySelector("img.mask").src = maskUrl;
      card.querySelector("img.mask").alt = "mask of " + (file.name || "query");
      card.querySelector("img.overlay").src = maskUrl;
      card.dataset.foreground = String(fraction);
      card.dataset.ms = ms.toFixed(1);
      if (fraction === 0) {  // an empty mask must not look like a missing one
        card.classList.add("empty");
        const tag = document.createElement("span");
        tag.className = "empty-tag";
        tag.dataset.testid = "no-foreground";
        tag.textContent = "no foreground";
        card.querySelector(".photo").append(tag);
      }
      card.querySelector(".stat").textContent =
        `${isFinite(fraction) ? percent(fraction) + " foreground" : "foreground unknown"} · ${ms.toFixed(0)} ms · ${formatBytes(file.size)}`;
      const a = card.querySelector("a.download");
      a.href = maskUrl;
      a.download = (file.name || "query").replace(/\.[^.]*$/, "") + "_mask.png";
      a.hidden = false;
      card.classList.remove("pending");
      card.dataset.status = "done";
    } catch (exc) {
      card.classList.remove("pending");
      card.classList.add("failed");
      card.dataset.status = "error";
      card.querySelector(".stat").textContent = exc.message;
      card.querySelector(".pics").querySelector("img.mask").hidden = true;
      card.querySelector(".overlay").hidden = true;
      showError(`Segmenting ${file.name || "the query"} failed: ${exc.message}`);
    }
  }

  async function segmentAll(files) {
    showError(null);
    if (!(state.setId || defaultSet())) { showError("Register a support set first (step 1)."); return; }
    if (state.setStale) showError("The supports changed since registration: these queries use the registered set; register again to use the new masks.");
    for (const f of files) await segment(f);  // one at a time: the order of the cards is the order of the files
  }

  // ---------------------------------------------------------------- wiring

  function onDrop(el, handler) {
    el.addEventListener("dragover", (e) => { e.preventDefault(); el.classList.add("over"); });
    el.addEventListener("dragleave", () => el.classList.remove("over"));
    el.addEventListener("drop", (e) => {
      e.preventDefault();
      el.classList.remove("over");
      const files = Array.from(e.dataTransfer.files || []);
      if (files.length) handler(files);
    });
  }
  // A file dropped anywhere else must not navigate away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());

  $("support-image").addEventListener("change", (e) => { loadSupportImage(e.target.files[0]); e.target.value = ""; });
  $("support-mask").addEventListener("change", (e) => { loadMaskFile(e.target.files[0]); e.target.value = ""; });
  $("query-input").addEventListener("change", (e) => { const f = Array.from(e.target.files); e.target.value = ""; segmentAll(f); });
  onDrop($("drop-support"), (files) => loadSupportImage(files[0]));
  onDrop($("drop-query"), (files) => segmentAll(files));
  $("brush").addEventListener("click", () => setTool("brush"));
  $("eraser").addEventListener("click", () => setTool("eraser"));
  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  $("clear").addEventListener("click", clearMask);
  $("download-mask").addEventListener("click", () => downloadMask().catch((exc) => showError(exc.message)));
  $("register").addEventListener("click", register);
  $("brush-size").addEventListener("input", updateCursor);
  $("opacity").addEventListener("input", (e) => { canvas.style.opacity = String(e.target.value / 100); });
  canvas.style.opacity = String($("opacity").value / 100);
  $("zoom").addEventListener("change", applyZoom);
  window.addEventListener("resize", () => { if ($("zoom").value === "fit") applyZoom(); });
  $("error").addEventListener("click", () => showError(null));
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    showError(null);
    loadMetadata();
  });

  // For tests and users' own automation: the current support mask as the PNG the page registers.
  window.lfm = {
    state,
    maskPng: (i = state.active) => maskPng(state.slots[i]),
    async maskPngBase64(i = state.active) {
      const bytes = new Uint8Array(await (await maskPng(state.slots[i])).arrayBuffer());
      let text = "";
      for (let k = 0; k < bytes.length; k += 0x8000) text += String.fromCharCode.apply(null, bytes.subarray(k, k + 0x8000));
      return btoa(text);
    },
  };

  setShots(1);
  showSlot();
  loadMetadata();
})();
