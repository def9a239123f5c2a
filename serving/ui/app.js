// byol-embed visual search page: plain JavaScript, no framework, no build step, nothing loaded from elsewhere.
//
// Calls the service's own API: GET info (served version), POST search (an uploaded image), POST search_by_id (an
// indexed item: "more like this"), GET items/<id>/thumbnail (every picture in the grid). URLs are relative, so the
// page works wherever the service is mounted. /ui?id=N (&k=K) is shareable; clicking a result pushes ?id=<its id>.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const grid = $("grid");
  const DEFAULT_K = 12;
  let generation = 0; // answers to superseded requests are dropped (a fast clicker sees the last one only)

  // ------------------------------------------------------------------------------------------ talking to the API
  async function call(path, options) {
    let resp;
    try {
      resp = await fetch(path, options);
    } catch (e) {
      throw new Error(`cannot reach the server: ${e.message}`);
    }
    const text = await resp.text();
    let body = null;
    try {
      body = JSON.parse(text);
    } catch (_) {
      body = null;
    }
    if (!resp.ok) {
      // BentoML and the edge answer [{"error": m}]; validation errors {"error": m, "detail": [...]}
      let problem = Array.isArray(body) ? body[0] : body;
      problem = problem && typeof problem === "object" && "error" in problem ? problem.error : text || resp.statusText;
      const err = new Error(`${resp.status} ${resp.statusText || ""}: ${problem}`.replace(" :", ":"));
      err.status = resp.status;
      throw err;
    }
    return body;
  }

  function neighbourCount() {
    const k = parseInt($("k").value, 10);
    return Number.isFinite(k) && k >= 1 ? Math.min(k, 1000) : DEFAULT_K;
  }

  const thumbnailUrl = (id) => `items/${encodeURIComponent(id)}/thumbnail`;
  const pageUrl = (id) => `ui?id=${id}` + (neighbourCount() === DEFAULT_K ? "" : `&k=${neighbourCount()}`);
  const labelOf = (meta) => (meta && meta.label != null && meta.label !== "" ? String(meta.label) : "no label");

  // ------------------------------------------------------------------------------------------ what the page shows
  function showError(err) {
    $("error").textContent = err.message || String(err);
    $("error").hidden = false;
    $("status").textContent = "";
    grid.dataset.state = "error";
  }

  function busy(text) {
    $("error").hidden = true;
    $("error").textContent = "";
    $("status").textContent = text;
    grid.dataset.state = "loading";
  }

  function showQuery(src, caption) {
    $("query-img").src = src;
    $("query-caption").textContent = caption;
    $("query").hidden = false;
  }

  function cell(hit, rank) {
    const li = document.createElement("li");
    li.className = "cell";
    const a = document.createElement("a");
    a.href = pageUrl(hit.id);
    a.dataset.id = String(hit.id);
    a.dataset.score = String(hit.score);
    a.title = `more like this — ${hit.metadata && hit.metadata.uri ? hit.metadata.uri : "item " + hit.id}`;
    const img = document.createElement("img");
    img.src = thumbnailUrl(hit.id);
    img.alt = `${labelOf(hit.metadata)} (item ${hit.id})`;
    img.decoding = "async";
    const line = document.createElement("span");
    line.className = "line";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `#${rank} · ${Number(hit.score).toFixed(3)}`;
    const ident = document.createElement("span");
    ident.className = "ident";
    ident.textContent = `id ${hit.id}`;
    line.append(score, ident);
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = labelOf(hit.metadata);
    a.append(img, line, label);
    a.addEventListener("click", (ev) => {
      if (ev.button !== 0 || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.altKey) return; // new tab: the link
      ev.preventDefault();
      history.pushState({ id: hit.id }, "", pageUrl(hit.id));
      searchById(hit.id);
    });
    li.append(a);
    return li;
  }

  function render(results, summary) {
    grid.replaceChildren(...results.map((hit, i) => cell(hit, i + 1)));
    grid.dataset.count = String(results.length);
    grid.dataset.state = "ready";
    $("status").textContent = summary;
  }

  // ------------------------------------------------------------------------------------------ the two searches
  async function searchById(id) {
    const mine = ++generation;
    busy(`finding the neighbours of item ${id}…`);
    try {
      const body = await call("search_by_id", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ id: id, k: neighbourCount() }),
      });
      if (mine !== generation) return;
      showQuery(thumbnailUrl(id), `item ${id} · ${labelOf(body.metadata)}`);
      render(body.results, `${body.results.length} nearest neighbours of item ${id} (itself left out) · ` +
        `encoder ${body.version}`);
    } catch (err) {
      if (mine === generation) showError(err);
    }
  }

  async function searchByImage(file) {
    const mine = ++generation;
    busy(`searching with ${file.name || "the image"}…`);
    showQuery(URL.createObjectURL(file), file.name || "uploaded image");
    if (location.search) history.pushState({}, "", "ui"); // an upload has no shareable URL
    const form = new FormData();
    form.append("image", file, file.name || "upload");
    form.append("k", String(neighbourCount()));
    try {
      const body = await call("search", { method: "POST", body: form });
      if (mine !== generation) return;
      render(body.results, `${body.results.length} nearest neighbours of ${file.name || "the image"} · ` +
        `encoder ${body.version}`);
    } catch (err) {
      if (mine === generation) showError(err);
    }
  }

  function fromLocation() {
    const params = new URLSearchParams(location.search);
    if (/^\d+$/.test(params.get("k") || "")) $("k").value = params.get("k");
    const raw = params.get("id");
    if (raw === null) return;
    if (!/^\d+$/.test(raw)) {
      showError(new Error(`id must be a non-negative integer, got ${JSON.stringify(raw)}`));
      return;
    }
    searchById(Number(raw));
  }

  async function showServed() {
    try {
      const info = await call("info");
      const index = info.index
        ? `index: ${info.index.size} items (${info.index.factory})`
        : `no index: ${(info.missing && info.missing.index) || "none loaded"}`;
      const arch = info.architecture && typeof info.architecture === "object"
        ? info.architecture.arch || "encoder" : String(info.architecture || "encoder");
      $("served").textContent = `encoder ${info.version} · ${arch} · ${info.input_size} px · ${index}`;
      $("served").dataset.version = info.version;
    } catch (err) {
      $("served").textContent = `cannot read /info: ${err.message}`;
    }
  }

  // ------------------------------------------------------------------------------------------ wiring
  $("file").addEventListener("change", (ev) => {
    const file = ev.target.files && ev.target.files[0];
    if (file) searchByImage(file);
    ev.target.value = ""; // picking the same file again searches again
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (ev) => {
    ev.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    const file = ev.dataTransfer && ev.dataTransfer.files && ev.dataTransfer.files[0];
    if (file) searchByImage(file);
  });
  const markTiny = (ev) => {
    if (ev.target.tagName === "IMG") ev.target.classList.toggle("tiny", ev.target.naturalWidth < 64);
  };
  grid.addEventListener("load", markTiny, true); // load events do not bubble: listen while capturing
  $("query-img").addEventListener("load", markTiny);
  window.addEventListener("popstate", fromLocation);

  showServed();
  fromLocation();
})();
