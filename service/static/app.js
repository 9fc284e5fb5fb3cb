// Viewer of stored explanations. Vanilla JS, no build step, no external code.
// Every piece of data reaches the page through textContent or DOM properties, never innerHTML.
"use strict";

(() => {
  const PAGE_SIZE = (() => {
    const asked = Number(new URLSearchParams(window.location.search).get("limit")); // /ui?limit=100
    return Number.isInteger(asked) && asked >= 1 && asked <= 500 ? asked : 25;
  })();
  const SANITY_MAX = 0.5; // fallback when a record has no sanity_flagged: the worker's default limit
  // The verdicts' agreement threshold (the worker's verdict_min_agreement, default 0.2: a convention, not a
  // calibrated test for block maps). A verdict that stores the threshold it used (min_agreement) is read instead.
  const VERDICT_MIN_AGREEMENT = 0.2;
  const CANVAS_PX = 192;

  const byId = (id) => document.getElementById(id);
  const state = {
    token: "",
    query: null,
    cursor: null,
    selected: null,
    blobUrls: [],
    detailSeq: 0,
    listSeq: 0,
    searchSeq: 0,
    models: null, // the models with explanations, when last asked (GET /ui/explained-models)
  };

  // --- DOM helpers ----------------------------------------------------------------------------

  const { el } = window.VaiPage;

  const badge = (kind, text) => el("span", { class: `badge badge-${kind}` }, text);

  function statusBadge(status) {
    const icons = { done: "✓", queued: "…", failed: "✗" };
    return el("span", { class: `status status-${status}` }, `${icons[status] || ""} ${status}`.trim());
  }

  function number(value, digits = 3) {
    return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "—";
  }

  const present = (value) => value !== null && value !== undefined;
  const percent = (value) => (typeof value === "number" ? `${(value * 100).toFixed(1)}%` : "—");

  function localTime(epochSeconds) {
    if (typeof epochSeconds !== "number") return "—";
    const date = new Date(epochSeconds * 1000);
    const pad = (n) => String(n).padStart(2, "0");
    return (
      `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
      `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`
    );
  }

  function timeElement(epochSeconds) {
    if (typeof epochSeconds !== "number") return "—";
    const iso = new Date(epochSeconds * 1000).toISOString();
    return el("time", { datetime: iso, title: iso }, localTime(epochSeconds));
  }

  const cohortText = (cohort) =>
    Object.entries(cohort || {})
      .map(([key, value]) => `${key}=${value}`)
      .join(", ");

  // --- messages -------------------------------------------------------------------------------

  /** The banner above both columns; ``owner`` ("list" or "address") is who may clear it: an explanation that loads
   * does not hide why the list is empty. */
  function showMessage(text, owner) {
    const box = byId("message");
    box.className = "message message-error";
    box.textContent = text;
    box.dataset.owner = owner;
    box.hidden = false;
  }

  function clearMessage(owner) {
    const box = byId("message");
    if (box.dataset.owner === owner) box.hidden = true;
  }

  function announce(text) {
    byId("live").textContent = text; // read out by screen readers; errors go through the alert above
  }

  // --- API ------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  /** The record route answered with something else (a list, the methods aggregate, another record): ids such
   * as "..", "." or "methods" address other routes once the browser normalises the path. */
  class NotThisRecord extends Error {
    constructor(requestId) {
      super(
        `Cannot open “${requestId}” here: the sidecar answered with something other than this explanation ` +
          "(request ids such as “.”, “..”, “methods” or ending in “/heatmap.png” address other routes).",
      );
    }
  }

  function describe(error) {
    if (error instanceof NotThisRecord) return error.message;
    if (!(error instanceof ApiError)) return `Unexpected error: ${error && error.message ? error.message : error}`;
    if (error.status === 401 || error.status === 403) {
      return window.VaiPage.refusal(error.status, state.token, "explanations");
    }
    if (error.status === 0) return error.message;
    return `${error.status}: ${error.message}`;
  }

  async function request(path, params) {
    const url = new URL(path, window.location.origin);
    for (const [name, value] of Object.entries(params || {})) {
      if (value !== null && value !== undefined && value !== "") url.searchParams.set(name, value);
    }
    const headers = { Accept: "application/json, image/png" };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    let response;
    try {
      response = await fetch(url, { headers, credentials: "omit", cache: "no-store" });
    } catch (error) {
      throw new ApiError(0, "Could not reach the sidecar (network error). Is it still running?");
    }
    if (!response.ok) {
      let message = response.statusText || "request failed";
      try {
        const body = await response.json();
        if (body && typeof body.error === "string") message = body.error;
      } catch (error) {
        // not JSON: keep the status text
      }
      throw new ApiError(response.status, message);
    }
    return response;
  }

  const recordPath = (model, requestId) =>
    `/v1/explanations/${encodeURIComponent(model)}/${encodeURIComponent(requestId)}`;

  // --- token ----------------------------------------------------------------------------------

  function setupToken() {
    state.token = window.VaiPage.tokenForm((token) => {
      state.token = token;
      search();
      if (state.selected) openRecord(state.selected.model, state.selected.requestId);
    });
  }

  // --- list -----------------------------------------------------------------------------------

  function filterQuery() {
    const form = byId("filters");
    const value = (name) => form.elements[name].value.trim();
    const epoch = (name) => {
      const text = value(name);
      if (!text) return "";
      const millis = new Date(text).getTime(); // datetime-local: the browser's local time zone
      return Number.isFinite(millis) ? String(millis / 1000) : "";
    };
    return {
      model: value("model"),
      version: value("version"),
      reason: value("reason"),
      cohort: value("cohort"),
      predicted: value("predicted"),
      since: epoch("since"),
      until: epoch("until"),
      limit: String(PAGE_SIZE),
    };
  }

  /** A new list from the filters. With the Model field empty, the first model with explanations is filled in (the
   * list route needs one once several have explanations) and the others are offered; "Load more" keeps it. */
  async function search() {
    const seq = ++state.searchSeq;
    state.cursor = null;
    byId("list").replaceChildren();
    byId("list-count").textContent = "";
    byId("list-empty").hidden = true;
    byId("more").hidden = true;
    const models = await explainedModels();
    if (seq !== state.searchSeq || models === null) return;
    const chosen = !byId("f-model").value.trim();
    if (chosen) {
      if (!models.length) {
        linkOverview("");
        const empty = byId("list-empty");
        empty.textContent = "No explanations are stored yet: none of the sampled events has been explained.";
        empty.hidden = false;
        return;
      }
      byId("f-model").value = models[0];
    }
    state.query = filterQuery();
    noteModels(chosen);
    await loadPage();
  }

  /** The models with explanations (offered under the Model field); null when they could not be read (said why). */
  async function explainedModels() {
    const seq = ++state.listSeq; // a list page still loading belongs to the previous search
    try {
      const { models } = await (await request("/ui/explained-models")).json();
      if (seq !== state.listSeq) return null;
      state.models = models;
      byId("model-options").replaceChildren(...models.map((name) => el("option", { value: name })));
      clearMessage("list");
      return models;
    } catch (error) {
      if (seq === state.listSeq) showMessage(describe(error), "list");
      return null;
    }
  }

  /** Under the Model field: which models have explanations, the others as buttons (when there are several). */
  function noteModels(chosen) {
    const note = byId("model-note");
    const models = state.models || [];
    const shown = state.query ? state.query.model : "";
    const others = models.filter((name) => name !== shown);
    note.hidden = models.length < 2;
    if (note.hidden) return;
    const pick = (name) => el("button", {
      type: "button",
      class: "small",
      onclick: () => {
        byId("f-model").value = name;
        search();
      },
    }, name);
    note.replaceChildren(
      `${models.length} models have explanations; showing ${shown}`,
      chosen ? " (the first by name)" : "",
      ". Show instead: ",
      ...others.map(pick),
    );
  }

  async function loadPage() {
    const seq = ++state.listSeq;
    const list = byId("list");
    list.setAttribute("aria-busy", "true");
    try {
      const params = { ...state.query, cursor: state.cursor };
      const page = await (await request("/v1/explanations", params)).json();
      if (seq !== state.listSeq) return;
      clearMessage("list");
      linkOverview(state.query.model);
      for (const item of page.items) list.append(listItem(item));
      state.cursor = page.next_cursor;
      byId("more").hidden = !page.next_cursor;
      byId("list-empty").textContent = page.complete === false // the scan stopped at its bound of entries
        ? "None found among the entries examined so far; “Load more” looks further."
        : "No explanations match these filters.";
      byId("list-empty").hidden = list.children.length > 0;
      const count = list.children.length;
      byId("list-count").textContent = `(${count}${page.next_cursor ? "+" : ""} shown)`;
      announce(`${count} explanations listed${page.next_cursor ? ", more available" : ""}.`);
    } catch (error) {
      if (seq !== state.listSeq) return;
      showMessage(describe(error), "list");
      const modelMissing = error instanceof ApiError && error.status === 422 && /^model:/.test(error.message);
      if (modelMissing) byId("f-model").focus();
    } finally {
      if (seq === state.listSeq) list.removeAttribute("aria-busy");
    }
  }

  /** A link to the model's overview page (/ui/models/{model}), next to the list's title. */
  function linkOverview(model) {
    let link = byId("overview-link");
    if (!link) {
      link = el("a", { id: "overview-link", class: "overview-link" });
      byId("list-title").after(link);
    }
    link.hidden = !model;
    link.href = model ? `/ui/models/${encodeURIComponent(model)}` : "";
    link.textContent = model ? `Overview of ${model}: drift, calibration, projection →` : "";
  }

  function listItem(item) {
    const selected =
      state.selected && state.selected.requestId === item.request_id && state.selected.model === item.model;
    const label = present(item.label) ? item.label : null;
    const button = el(
      "button",
      {
        type: "button",
        class: "item",
        "aria-current": selected ? "true" : null,
        "data-model": item.model,
        "data-request-id": item.request_id,
        onclick: () => openRecord(item.model, item.request_id, { reveal: true }),
      },
      el("span", { class: "item-head" }, el("span", { class: "rid" }, item.request_id), statusBadge(item.status)),
      el(
        "span",
        { class: "item-line" },
        el("span", {}, "class ", el("strong", {}, String(item.predicted))),
        el("span", {}, percent(item.confidence)),
        label === null ? null : el("span", { class: label === item.predicted ? "" : "mismatch" },
          label === item.predicted ? `label ${label} ✓` : `label ${label} ✗`),
        el("span", { class: "muted" }, timeElement(item.timestamp)),
      ),
      el(
        "span",
        { class: "item-line" },
        (item.reasons || []).map((reason) => el("span", { class: "chip" }, reason)),
        item.cohort && Object.keys(item.cohort).length ? el("span", { class: "muted" }, cohortText(item.cohort)) : null,
      ),
    );
    return el("li", {}, button);
  }

  function markSelected() {
    for (const button of byId("list").querySelectorAll("button.item")) {
      const on =
        state.selected &&
        button.dataset.model === state.selected.model &&
        button.dataset.requestId === state.selected.requestId;
      if (on) button.setAttribute("aria-current", "true");
      else button.removeAttribute("aria-current");
    }
  }

  function listKeys(event) {
    if (!["ArrowDown", "ArrowUp", "Home", "End"].includes(event.key)) return;
    const buttons = [...byId("list").querySelectorAll("button.item")];
    const at = buttons.indexOf(document.activeElement);
    if (at < 0 || !buttons.length) return;
    const next = { ArrowDown: at + 1, ArrowUp: at - 1, Home: 0, End: buttons.length - 1 }[event.key];
    event.preventDefault();
    buttons[Math.max(0, Math.min(buttons.length - 1, next))].focus();
  }

  // --- detail ---------------------------------------------------------------------------------

  function releaseBlobs() {
    if (byId("zoom").open) byId("zoom").close();
    for (const url of state.blobUrls) URL.revokeObjectURL(url);
    state.blobUrls = [];
  }

  /** Show one explanation; ``reveal``: bring its heading into view and focus it when it is off screen (one column:
   * the detail is below the list). */
  async function openRecord(model, requestId, { reveal = false } = {}) {
    const seq = ++state.detailSeq;
    state.selected = { model, requestId };
    markSelected();
    window.history.replaceState(null, "", `#${encodeURIComponent(model)}/${encodeURIComponent(requestId)}`);
    const detail = byId("detail");
    detail.dataset.state = "loading";
    detail.setAttribute("aria-busy", "true");
    try {
      const record = await (await request(recordPath(model, requestId))).json();
      if (seq !== state.detailSeq) return;
      if (!record || record.request_id !== requestId || record.model !== model) throw new NotThisRecord(requestId);
      releaseBlobs();
      detail.replaceChildren(...renderRecord(record));
      clearMessage("address");
      if (reveal) revealDetail();
      announce(`Showing ${record.request_id}: ${record.status}.`);
      await loadHeatmaps(record, seq);
      await loadActivations(record, seq);
    } catch (error) {
      if (seq !== state.detailSeq) return;
      releaseBlobs();
      detail.replaceChildren(
        el("h2", { id: "detail-title" }, requestId),
        el("p", { class: "banner banner-failed" }, describe(error)),
      );
      if (reveal) revealDetail();
    } finally {
      if (seq === state.detailSeq) {
        detail.dataset.state = "ready";
        detail.removeAttribute("aria-busy");
      }
    }
  }

  function revealDetail() {
    const heading = byId("detail-title");
    const box = heading.getBoundingClientRect();
    if (box.top >= 0 && box.bottom <= window.innerHeight) return; // in view already (two columns)
    heading.tabIndex = -1;
    byId("detail").scrollIntoView({ block: "start" });
    heading.focus({ preventScroll: true });
  }

  function renderRecord(record) {
    const parts = [
      el(
        "div",
        { class: "detail-head" },
        el("h2", { id: "detail-title" }, record.request_id),
        statusBadge(record.status),
        el("span", { class: "muted" }, `${record.model} · version ${record.model_version}`),
        el(
          "button",
          { type: "button", class: "small", onclick: () => openRecord(record.model, record.request_id) },
          "Reload",
        ),
      ),
    ];
    if (record.status === "failed") {
      parts.push(el("p", { class: "banner banner-failed" }, "✗ Failed: ", record.error || "no error message stored"));
    } else if (record.status === "queued") {
      parts.push(el("p", { class: "banner banner-queued" },
        "… Queued: no worker has explained this event yet. Press Reload to check again."));
    } else if (record.error) {
      parts.push(el("p", { class: "banner banner-queued" }, "Partial: ", record.error));
    }
    const mismatch = renderMismatch(record);
    if (mismatch) parts.push(mismatch);
    parts.push(el("div", { class: "overview" }, renderInput(record.input, record.status), renderFacts(record)));
    if (record.status === "done" || Object.keys(record.attributions || {}).length) parts.push(renderTrust(record));
    if (Object.keys(record.attributions || {}).length || record.status === "done") parts.push(renderMaps(record));
    if ((record.layers || []).length) parts.push(renderLayers(record));
    return parts;
  }

  // The worker's model against the server's: another class, or the reported class at another confidence
  // (mismatch "confidence"); records stored before the confidence check carry no mismatch and mean a class.
  function renderMismatch(record) {
    const worker = record.worker_prediction;
    if (!worker) return null;
    if (worker.matches === false && worker.mismatch === "confidence") {
      // Its top class may be another within prediction_tie_tolerance (a near tie the class check lets pass).
      const kind = worker.predicted === record.predicted ? "Same class" : `Near tie (its top is class ${worker.predicted})`;
      return el("p", { class: "banner banner-failed mismatch mismatch-confidence" },
        `⚠ ${kind}, different confidence: the worker's model gives the reported class ${record.predicted} a `,
        `probability of ${number(worker.probability, 3)} where the server reported `,
        `${number(worker.reported_probability, 3)}: `,
        "version skew or other weights? The maps explain another function than the server's model, ",
        "so none of them is trusted.");
    }
    if (worker.matches === false) {
      return el("p", { class: "banner banner-failed mismatch mismatch-class" },
        `⚠ Other class: the worker's model predicts class ${worker.predicted} (p = ${number(worker.top_probability, 3)}) `,
        `where the server reported class ${record.predicted} (p = ${number(worker.probability, 3)} on the worker's `,
        "model): version skew or other weights? The maps explain the reported class on a model that does not ",
        "predict it, so none of them is trusted.");
    }
    if (worker.confidence_check === "skipped") {
      return el("p", { class: "muted unchecked" },
        "The server reported no probability of its class: the worker could not check that its model is as sure ",
        "as the server's (a different model that predicts the same class would go unnoticed).");
    }
    return null;
  }

  function fact(name, ...value) {
    return [el("dt", {}, name), el("dd", {}, ...value)];
  }

  function renderFacts(record) {
    const hasLabel = record.label !== null && record.label !== undefined;
    const labelValue = !hasLabel
      ? el("span", { class: "muted" }, "not known yet")
      : record.label === record.predicted
        ? `${record.label} ✓ matches the prediction`
        : el("span", { class: "mismatch" }, `${record.label} ✗ differs from the prediction`);
    const reasons = (record.reasons || []).map((reason) => el("span", { class: "chip" }, reason));
    const cohort = cohortText(record.cohort);
    return el(
      "dl",
      { class: "facts" },
      fact("Predicted class", el("strong", {}, String(record.predicted))),
      fact("Confidence", percent(record.confidence)),
      fact("Label", labelValue),
      fact("Sampled because", reasons.length ? reasons : "—"),
      fact("Cohort", cohort || el("span", { class: "muted" }, "none")),
      fact("Event time", timeElement(record.timestamp)),
      fact("Explained at", record.explained_at ? timeElement(record.explained_at) : "—"),
    );
  }

  // --- input ----------------------------------------------------------------------------------

  function renderInput(input, status) {
    const box = el("figure", { class: "input" });
    if (!input || !Array.isArray(input.shape)) {
      const why = status === "queued"
        ? "Shown once a worker has explained this event (the worker stores it with the maps)."
        : "Not stored with this explanation.";
      box.append(el("figcaption", {}, "Input"), el("p", { class: "muted" }, why));
      return box;
    }
    const shape = input.shape;
    const flat = [input.values].flat(Infinity).map(Number);
    if (shape.length >= 2 && shape[shape.length - 1] > 1 && shape[shape.length - 2] > 1) {
      const canvas = drawImage(flat, shape);
      box.append(canvas, el("figcaption", {}, `Input (${shape.join("×")})`));
    } else {
      const shown = flat.slice(0, 32);
      const first = flat.length > shown.length ? ` (first ${shown.length})` : "";
      box.append(
        el("figcaption", {}, `Input: ${flat.length} features${first}`),
        el("ol", { class: "features", start: "0" }, shown.map((value) => el("li", {}, number(value, 4)))),
      );
    }
    return box;
  }

  function drawImage(flat, shape) {
    const height = shape[shape.length - 2];
    const width = shape[shape.length - 1];
    const channels = flat.length / (height * width);
    const rgb = channels === 3;
    const finite = flat.filter(Number.isFinite);
    const low = Math.min(...finite);
    const span = Math.max(...finite) - low || 1;
    const scaled = (v) => (Number.isFinite(v) ? Math.round((255 * (v - low)) / span) : 0);
    const small = document.createElement("canvas");
    small.width = width;
    small.height = height;
    const context = small.getContext("2d");
    const image = context.createImageData(width, height);
    for (let p = 0; p < width * height; p += 1) {
      let r, g, b;
      if (rgb) {
        [r, g, b] = [0, 1, 2].map((c) => scaled(flat[c * width * height + p]));
      } else {
        let sum = 0;
        for (let c = 0; c < channels; c += 1) sum += flat[c * width * height + p];
        r = g = b = scaled(sum / channels);
      }
      image.data.set([r, g, b, 255], p * 4);
    }
    context.putImageData(image, 0, 0);
    const scale = Math.max(1, Math.floor(CANVAS_PX / Math.max(width, height)));
    const canvas = el("canvas", {
      width: width * scale,
      height: height * scale,
      class: "input-canvas",
      role: "img",
      "aria-label": `model input, ${width}×${height} pixels${rgb ? ", colour" : ", grey"}`,
    });
    const big = canvas.getContext("2d");
    big.imageSmoothingEnabled = false;
    big.drawImage(small, 0, 0, canvas.width, canvas.height);
    return canvas;
  }

  // --- trust ----------------------------------------------------------------------------------

  const baseMethod = (name) => name.split("@")[0];

  /** The agreement threshold the record's verdicts used: stored with a verdict, else the worker's default. */
  function agreementThreshold(record) {
    for (const attribution of Object.values(record.attributions || {})) {
      const stored = attribution.verdict && attribution.verdict.min_agreement;
      if (typeof stored === "number" && Number.isFinite(stored)) return stored;
    }
    return VERDICT_MIN_AGREEMENT;
  }

  function agreementVerdict(record) {
    const agreement = record.agreement;
    if (typeof agreement !== "number") {
      return el("span", { class: "muted" }, "not computed (needs two or more methods)");
    }
    const low = agreementThreshold(record);
    const rule = `${number(low, 2)}, the verdicts' threshold`;
    if (agreement >= low) return badge("ok", `✓ the methods broadly agree (at least ${rule})`);
    return badge(
      "warn",
      `⚠ low agreement (below ${rule}): the methods rank pixels differently; compare before trusting any`,
    );
  }

  // One verdict per map (stored by the worker): trusted when the method has passed its sanity check, every other
  // check that ran passes and one of them measured the map itself (deletion or agreement); else not judged.
  function verdictBadge(verdict) {
    const summary = verdict && typeof verdict.summary === "string" ? verdict.summary : null;
    if (!verdict || typeof verdict.trusted !== "boolean") {
      return el("span", { class: "badge badge-none verdict", title: summary }, "? not judged");
    }
    return verdict.trusted
      ? el("span", { class: "badge badge-ok verdict", title: summary }, "✓ trusted")
      : el("span", { class: "badge badge-warn verdict", title: summary }, "✗ not trusted");
  }

  function renderVerdicts(record) {
    const attributions = record.attributions || {};
    const names = Object.keys(attributions).filter((name) => !name.includes("@") && attributions[name].verdict);
    if (!names.length) {
      return el("p", { class: "muted" }, "No verdicts stored with these maps (explained before verdicts existed).");
    }
    const header = ["Method", "Verdict", "Why"].map((name) => el("th", { scope: "col" }, name));
    const rows = names.map((name) =>
      el(
        "tr",
        { "data-method": name },
        el("th", { scope: "row" }, name),
        el("td", {}, verdictBadge(attributions[name].verdict)),
        el("td", { class: "verdict-summary" }, attributions[name].verdict.summary || "", laterSanity(record, name)),
      ),
    );
    return el(
      "table",
      { class: "verdicts" },
      el(
        "caption",
        {},
        "Verdict per method: trusted when every check that ran passes (the randomisation sanity check, ",
        "deletion faster than random, agreement with the other methods) and deletion or agreement measured ",
        "the map itself; the sanity check alone judges the method, not the map. The figures behind it follow.",
      ),
      el("thead", {}, el("tr", {}, header)),
      el("tbody", {}, rows),
    );
  }

  // A verdict made before the model's first sanity check says so; a check that has run since is pointed out, and
  // so is a later check that disagrees with the one the verdict used (the table below shows the latest).
  function laterSanity(record, method) {
    const flagged = (record.sanity_flagged || {})[method];
    const used = record.attributions[method].verdict.passes_sanity;
    if (typeof flagged !== "boolean" || used === !flagged) return null;
    const checked = (record.sanity_checked_at || {})[method];
    const when = typeof checked === "number" ? ` (${localTime(checked)})` : "";
    return el(
      "span",
      { class: "hint later-sanity" },
      flagged
        ? ` A later sanity check${when} flags this method (below).`
        : ` A later sanity check${when} passed (below).`,
    );
  }

  function renderTrust(record) {
    const section = el(
      "section",
      { class: "trust", "aria-labelledby": "trust-title" },
      el("h3", { id: "trust-title" }, "Can these maps be trusted?"),
      renderVerdicts(record),
      el("h4", {}, "The figures behind the verdicts"),
      el(
        "p",
        { class: "agreement" },
        el("strong", {}, "Agreement "),
        el("span", { class: "figure" }, number(record.agreement, 2)),
        " ",
        agreementVerdict(record),
        el("span", { class: "hint" }, " Mean rank correlation of the methods' |maps|, from −1 to 1."),
      ),
    );
    const sanity = record.sanity_similarity || {};
    const methods = Object.keys(sanity);
    if (!methods.length) {
      section.append(el("p", { class: "muted" }, "No randomisation sanity check has run for this model yet."));
      return section;
    }
    const header = ["Method", "Similarity", "Verdict", "Inputs", "Checked"].map((name) =>
      el("th", { scope: "col" }, name),
    );
    const samples = record.sanity_samples || {};
    const checkedAt = record.sanity_checked_at || {};
    const rows = methods.map((method) =>
      el(
        "tr",
        {},
        el("th", { scope: "row" }, method),
        el("td", { class: "num" }, number(sanity[method], 2),
          present((record.sanity_spread || {})[method])
            ? el("span", { class: "hint", title: "largest minus smallest over the check's draws of random weights" },
              ` (spread ${number(record.sanity_spread[method], 2)})`)
            : null),
        el("td", {}, sanityBadge(record, method)),
        el("td", { class: "num" }, present(samples[method]) ? String(samples[method]) : "—"),
        el("td", {}, timeElement(checkedAt[method])),
      ),
    );
    section.append(
      el(
        "table",
        { class: "sanity" },
        el(
          "caption",
          {},
          "Latest randomisation sanity check: how similar each method's maps are on the trained and on a randomised ",
          "model (high is bad), averaged over that many inputs. The verdicts above used the check in force when the ",
          "maps were made.",
        ),
        el("thead", {}, el("tr", {}, header)),
        el("tbody", {}, rows),
      ),
    );
    return section;
  }

  function sanityBadge(record, method) {
    const similarity = (record.sanity_similarity || {})[method];
    if (typeof similarity !== "number") return el("span", { class: "muted" }, "not checked");
    if ((record.sanity_conclusive || {})[method] === false) {
      const pairs = (record.sanity_samples || {})[method];
      return el("span", { class: "muted" }, `inconclusive (${present(pairs) ? pairs : "too few"} pairs of maps): judges no map`);
    }
    const flagged = (record.sanity_flagged || {})[method];
    return (typeof flagged === "boolean" ? flagged : similarity >= SANITY_MAX)
      ? badge("warn", "⚠ map barely changes on a randomised model — don't trust it")
      : badge("ok", "✓ depends on the model");
  }

  // --- heatmaps -------------------------------------------------------------------------------

  function renderMaps(record) {
    const attributions = record.attributions || {};
    const names = Object.keys(attributions);
    const section = el(
      "section",
      { class: "maps", "aria-labelledby": "maps-title" },
      el("h3", { id: "maps-title" }, "Attribution maps"),
      el(
        "p",
        { class: "hint" },
        "Fidelity: deletion AUC is the score left as the most-attributed pixels are removed first; ",
        el("strong", {}, "lower than random = faithful"),
        ".",
      ),
    );
    if (!names.length) {
      section.append(el("p", { class: "muted" }, "No maps stored."));
      return section;
    }
    const groups = new Map(); // by suffix: "" (the predicted class), "label" (maps keyed method@label), ...
    for (const name of names) {
      const suffix = name.includes("@") ? name.slice(name.indexOf("@") + 1) : "";
      if (!groups.has(suffix)) groups.set(suffix, []);
      groups.get(suffix).push(name);
    }
    for (const suffix of [...groups.keys()].sort()) {
      const members = groups.get(suffix);
      const target = attributions[members[0]].target;
      const titles = { "": `For the predicted class ${target}`, label: `For the label, class ${target}` };
      section.append(
        el("h4", {}, titles[suffix] || `For ${suffix}, class ${target}`),
        el(
          "div",
          { class: "map-grid" },
          members.map((name) => mapCard(name, attributions[name], record, baseMethod(name))),
        ),
      );
    }
    return section;
  }

  function fidelityFigure(fidelity, verdict) {
    if (!fidelity) return el("span", { class: "muted" }, "not measured");
    // The worker's judgement (its configured minimum gain), not a bare comparison: on one input a map of noise
    // on the ink deletes faster than chance more often than not, so a pass is weak evidence on its own.
    const judged = verdict ? verdict.beats_random : null;
    const mark = judged === true
      ? badge("ok", "✓ deletes faster than chance on this input (weak evidence alone)")
      : judged === false
        ? badge("warn", "⚠ no better than random")
        : el("span", { class: "muted" }, "(not judged)");
    return el("span", {}, `${number(fidelity.deletion_auc)} vs random ${number(fidelity.random_auc)} `, mark);
  }

  function convergenceFigure(delta, verdict) {
    const judged = verdict ? verdict.converges : null;
    const mark = judged === true
      ? badge("ok", "✓ small against the logit change")
      : judged === false
        ? badge("warn", "⚠ large against the logit change: the integral did not converge")
        : el("span", { class: "hint" }, " (IG; judged as a share of the logit change it explains)");
    return el("span", {}, number(delta, 4), " ", mark);
  }

  /** The method's time as the worker stored it: over the whole batch this event was explained in, shared by every
   * event of that batch (the record does not say how many), so not this map's own cost. */
  function batchTime(seconds) {
    if (!present(seconds)) return "—";
    const why = "the method's time over the whole batch of events explained with this one (the record does not " +
      "keep the batch's size): not this map's own cost";
    return el(
      "span",
      { title: why },
      `${number(seconds, 3)} s`,
      el("span", { class: "hint" }, " (whole batch, shared by its events)"),
    );
  }

  function mapCard(name, attribution, record, method) {
    const similarity = (record.sanity_similarity || {})[method];
    const target = name.includes("@") ? `class ${attribution.target} (the label)` : `class ${attribution.target}`;
    const delta = attribution.convergence_delta;
    const figures = el(
      "dl",
      { class: "map-figures" },
      attribution.verdict ? fact("Verdict", verdictBadge(attribution.verdict)) : null,
      fact("Deletion AUC", fidelityFigure(attribution.fidelity, attribution.verdict)),
      present(attribution.agreement)
        ? fact("Agreement", number(attribution.agreement, 2), el("span", { class: "hint" }, " (mean ρ, others)"))
        : null,
      present(delta) ? fact("Convergence δ", convergenceFigure(delta, attribution.verdict)) : null,
      fact("Time of its batch", batchTime(attribution.seconds)),
      typeof similarity === "number" ? fact("Sanity", number(similarity, 2), " ", sanityBadge(record, method)) : null,
    );
    return el(
      "figure",
      { class: "map", "data-method": name },
      el(
        "figcaption",
        {},
        el("span", { class: "method" }, baseMethod(name)),
        el("span", { class: "muted" }, ` for ${target}`),
      ),
      el(
        "div",
        { class: "map-image" },
        el(
          "button",
          { type: "button", class: "map-zoom", title: "Show at full size", disabled: true, onclick: zoomIn },
          el("img", { class: "heatmap", alt: `${name} heatmap for ${target}`, "data-state": "loading" }),
          el("span", { class: "visually-hidden" }, " (show at full size)"),
        ),
        el("p", { class: "muted map-status" }, "Loading heatmap…"),
      ),
      figures,
    );
  }

  async function loadHeatmaps(record, seq) {
    const cards = byId("detail").querySelectorAll("figure.map");
    await Promise.all([...cards].map(async (card) => {
      const img = card.querySelector("img.heatmap");
      const status = card.querySelector(".map-status");
      try {
        const path = `${recordPath(record.model, record.request_id)}/heatmap.png`;
        const response = await request(path, { method: card.dataset.method });
        const blob = await response.blob();
        if (seq !== state.detailSeq) return;
        const url = URL.createObjectURL(blob);
        state.blobUrls.push(url);
        img.src = url;
        await img.decode();
        img.dataset.state = "loaded";
        img.parentElement.disabled = false;
        status.remove();
      } catch (error) {
        if (seq !== state.detailSeq) return;
        img.dataset.state = "error";
        img.hidden = true;
        status.className = "banner banner-failed map-status";
        status.textContent = `Heatmap not available: ${describe(error)}`;
      }
    }));
  }

  /** The heatmap drawn at its own size (the card shrinks its title, ticks and legend to a few pixels). */
  function zoomIn(event) {
    const img = event.currentTarget.querySelector("img.heatmap");
    const shown = byId("zoom-image");
    shown.src = img.src;
    shown.alt = img.alt;
    byId("zoom-title").textContent = img.alt;
    byId("zoom-open").href = img.src;
    byId("zoom").showModal();
  }

  function setupZoom() {
    const dialog = byId("zoom");
    byId("zoom-close").addEventListener("click", () => dialog.close());
    dialog.addEventListener("click", (event) => {
      if (event.target === dialog) dialog.close(); // a click on the backdrop
    });
  }

  // --- layers (the worker's inspection of this input) ----------------------------------------

  function renderLayers(record) {
    const layers = record.layers;
    const header = ["Layer", "Kind", "Shape", "Mean", "Std", "Zero share", "Saturated"].map((name) =>
      el("th", { scope: "col" }, name),
    );
    const rows = layers.map((layer) =>
      el(
        "tr",
        {},
        el("th", { scope: "row" }, layer.name),
        el("td", {}, layer.kind),
        el("td", { class: "num" }, (layer.shape || []).join("×")),
        el("td", { class: "num" }, number(layer.mean)),
        el("td", { class: "num" }, number(layer.std)),
        el("td", { class: "num" }, percent(layer.zero_share)),
        el("td", { class: "num" }, present(layer.saturated_share) ? percent(layer.saturated_share) : "—"),
      ),
    );
    const section = el(
      "section",
      { class: "layers", "aria-labelledby": "layers-title" },
      el("h3", { id: "layers-title" }, "Layers"),
      el("p", { class: "hint" }, `Each layer's output on this one input (${layers.length} inspected layers). `,
        "Saturated: share near a bound of a bounded activation (— when the layer has none)."),
      el("table", { class: "layer-table" }, el("thead", {}, el("tr", {}, header)), el("tbody", {}, rows)),
    );
    const mapped = layers.filter((layer) => (layer.feature_map_channels || []).length);
    if (!mapped.length) return section;
    const picker = el(
      "select",
      { id: "activation-layer", onchange: () => loadActivations(record, state.detailSeq) },
      mapped.map((layer) => el("option", { value: layer.name }, `${layer.name} (${layer.shape.join("×")})`)),
    );
    section.append(
      el("p", {}, el("label", { for: "activation-layer" }, "Feature maps of "), picker),
      el(
        "figure",
        { class: "activations" },
        el("img", { class: "activations-image", alt: "feature maps of the chosen layer", "data-state": "loading" }),
        el("p", { class: "muted activations-status" }, "Loading feature maps…"),
      ),
    );
    return section;
  }

  async function loadActivations(record, seq) {
    const picker = byId("activation-layer");
    if (!picker) return;
    const img = byId("detail").querySelector("img.activations-image");
    const status = byId("detail").querySelector(".activations-status");
    img.dataset.state = "loading";
    status.className = "muted activations-status";
    status.textContent = "Loading feature maps…";
    status.hidden = false;
    try {
      const path = `${recordPath(record.model, record.request_id)}/activations.png`;
      const blob = await (await request(path, { layer: picker.value })).blob();
      if (seq !== state.detailSeq) return;
      const url = URL.createObjectURL(blob);
      state.blobUrls.push(url);
      img.src = url;
      img.alt = `feature maps of layer ${picker.value}`;
      img.hidden = false;
      await img.decode();
      img.dataset.state = "loaded";
      status.hidden = true;
    } catch (error) {
      if (seq !== state.detailSeq) return;
      img.dataset.state = "error";
      img.hidden = true;
      status.className = "banner banner-failed activations-status";
      status.textContent = `Feature maps not available: ${describe(error)}`;
    }
  }

  // --- start ----------------------------------------------------------------------------------

  /** The address after #: ``model/request_id`` (an explanation, its model's list beside it) or ``model``. */
  function fromHash() {
    const parts = window.location.hash.slice(1).split("/");
    if (!parts[0] || parts.length > 2) return null;
    try {
      const [model, requestId] = parts.map(decodeURIComponent);
      return { model, requestId: requestId || "" };
    } catch (error) {
      showMessage("The address after # is not a model/request id pair.", "address");
      return null;
    }
  }

  /** Follow a changed address: list its model when the list shows another, open its explanation. */
  function openFromHash() {
    const wanted = fromHash();
    if (!wanted) return;
    if (byId("f-model").value.trim() !== wanted.model || !state.query || state.query.model !== wanted.model) {
      byId("f-model").value = wanted.model;
      search();
    }
    if (wanted.requestId) openRecord(wanted.model, wanted.requestId, { reveal: true });
  }

  function start() {
    setupToken();
    setupZoom();
    const filters = byId("filters");
    filters.addEventListener("submit", (event) => {
      event.preventDefault();
      search();
    });
    filters.addEventListener("reset", () => window.setTimeout(search, 0));
    byId("more").addEventListener("click", loadPage);
    byId("list").addEventListener("keydown", listKeys);
    window.addEventListener("hashchange", openFromHash);
    if (fromHash()) openFromHash();
    else search(); // no model in the address: the first with explanations
  }

  document.addEventListener("DOMContentLoaded", start);
})();
