// Overview of one model at /ui/models/{model}: every view at once, drawn as SVG from the read-token JSON routes.
// Vanilla JS, no build step, no external code; data reaches the page through textContent and attributes only.
"use strict";

(() => {
  const C = window.VaiCharts;
  const REFRESH_MS = 10000;
  const AGO_TICK_MS = 5000;
  const METHODS_LIMIT = 200;
  const SAMPLED_LISTED = 12;
  /** Most points the projection is asked for: the sidecar takes them evenly from each source (the default
   * 2,000 reference and 2,000 production embeddings come whole; a fleet configured for more stays bounded). */
  const PROJECTION_LIMIT = 4000;
  const MODEL = decodeURIComponent(window.location.pathname.replace(/\/+$/, "").split("/").pop() || "");
  const enc = encodeURIComponent(MODEL);
  const PATHS = {
    distributions: `/v1/models/${enc}/distributions`,
    history: `/v1/models/${enc}/drift/history`,
    drift: `/v1/models/${enc}/drift`,
    calibration: `/v1/models/${enc}/calibration`,
    projection: `/v1/models/${enc}/projection`,
    methods: `/v1/explanations/${enc}/methods`,
    layers: `/v1/models/${enc}/layers`,
  };

  const byId = (id) => document.getElementById(id);
  const state = {
    token: "",
    cycle: new Map(), // path+query -> promise, shared by the views of one refresh
    busy: new Set(),
    again: new Set(),
    calibration: null,
    seriesKey: null,
    projection: { data: null, method: "pca", colourBy: "class", domain: null, pinned: null },
    verdict: null,
    errors: new Map(), // view id -> why it failed last (absent once it loads)
    updatedAt: null, // when a refresh last loaded some view
  };

  // --- DOM helpers ----------------------------------------------------------------------------

  const { el } = window.VaiPage;

  const fmt = C.formatNumber;
  const pct = (v) => (typeof v === "number" && Number.isFinite(v) ? `${(v * 100).toFixed(1)}%` : "—");
  const num = (v, digits = 3) => (typeof v === "number" && Number.isFinite(v) ? v.toFixed(digits) : "—");
  const cohortText = (cohort) => Object.entries(cohort || {}).map(([k, v]) => `${k}=${v}`).join(", ");

  function ago(epochSeconds) {
    if (typeof epochSeconds !== "number") return "at an unknown time";
    const s = Math.max(0, Date.now() / 1000 - epochSeconds);
    if (s < 90) return `${Math.round(s)} s ago`;
    if (s < 5400) return `${Math.round(s / 60)} min ago`;
    return `${(s / 3600).toFixed(1)} h ago`;
  }

  /** ``ago`` as an element that ``tickAgo`` keeps current: a view left stale still says its true age. */
  function since(epochSeconds) {
    if (typeof epochSeconds !== "number") return ago(epochSeconds);
    const iso = new Date(epochSeconds * 1000).toISOString();
    return el("time", { class: "ago", datetime: iso, title: iso, "data-at": epochSeconds }, ago(epochSeconds));
  }

  function tickAgo() {
    for (const node of document.querySelectorAll("time.ago")) node.textContent = ago(Number(node.dataset.at));
  }

  function span(seconds) {
    if (seconds < 120) return `${Math.round(seconds)} s`;
    if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }

  const measured = (value) => typeof value === "number" && Number.isFinite(value);

  function meter(value, missing = "not measured") {
    if (!measured(value)) return el("span", { class: "muted" }, missing);
    return el("span", { class: "share" }, el("meter", { min: 0, max: 1, value }), ` ${pct(value)}`);
  }

  // --- API ------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message, retryAfter) {
      super(message);
      this.status = status;
      this.retryAfter = retryAfter;
    }
  }

  /** No data for a view yet, though the route answered. */
  class NoData extends Error {}

  async function fetchJson(path, params) {
    const url = new URL(path, window.location.origin);
    for (const [name, value] of Object.entries(params || {})) url.searchParams.set(name, value);
    const headers = { Accept: "application/json" };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    let response;
    try {
      response = await fetch(url, { headers, credentials: "omit", cache: "no-store" });
    } catch (error) {
      throw new ApiError(0, "could not reach the sidecar (network error)");
    }
    if (!response.ok) {
      let message = response.statusText || "request failed";
      try {
        const body = await response.json();
        if (body && typeof body.error === "string") message = body.error;
        else if (body && typeof body.detail === "string") message = body.detail;
      } catch (error) {
        // not JSON: keep the status text
      }
      throw new ApiError(response.status, message, response.headers.get("Retry-After"));
    }
    return response.json();
  }

  /** One request per path and query in each refresh, shared by the views that need it. */
  function get(path, params) {
    const key = `${path}?${new URLSearchParams(params || {})}`;
    if (!state.cycle.has(key)) state.cycle.set(key, fetchJson(path, params));
    return state.cycle.get(key);
  }

  function reason(error) {
    if (error instanceof NoData) return error.message;
    if (!(error instanceof ApiError)) return `unexpected error: ${error && error.message ? error.message : error}`;
    const later = error.retryAfter && !/again/.test(error.message) ? ` (try again in ${error.retryAfter} s)` : "";
    if (error.status === 0) return error.message;
    return `${error.status}: ${error.message}${later}`;
  }

  function showMessage(text) {
    const box = byId("message");
    box.className = "message message-error";
    box.textContent = text;
    box.hidden = false;
  }

  // --- views ----------------------------------------------------------------------------------

  const VIEWS = [
    { id: "v-distributions", load: loadDistributions },
    { id: "v-drift", load: loadDrift },
    { id: "v-calibration", load: loadCalibration },
    { id: "v-cohorts", load: loadCohorts },
    { id: "v-projection", load: loadProjection },
    { id: "v-methods", load: loadMethods },
    { id: "v-layers", load: loadLayers },
  ];

  const part = (section, selector) => section.querySelector(selector);

  function evidence(section, ...text) {
    part(section, ".evidence").replaceChildren(...text);
  }

  async function refreshView(view) {
    if (state.busy.has(view.id)) {
      state.again.add(view.id); // asked again mid-load (e.g. another projection method): load once more after
      return null;
    }
    state.busy.add(view.id);
    const section = byId(view.id);
    section.setAttribute("aria-busy", "true");
    let loaded = false;
    try {
      await view.load(section);
      section.dataset.state = "ready";
      markStale(section, null);
      state.errors.delete(view.id);
      loaded = true;
    } catch (error) {
      unavailable(section, view, error);
    } finally {
      state.busy.delete(view.id);
      section.removeAttribute("aria-busy");
      showUnknown();
      if (state.again.delete(view.id)) refreshView(view);
    }
    return loaded;
  }

  function unavailable(section, view, error) {
    if (!(error instanceof ApiError) && !(error instanceof NoData)) console.error(error); // a bug of this page
    const denied = error instanceof ApiError && (error.status === 401 || error.status === 403);
    state.errors.set(view.id, error);
    if (denied) showMessage(window.VaiPage.refusal(error.status, state.token, "monitoring data"));
    const transient = error instanceof ApiError && (error.status === 0 || error.status === 503);
    if (transient && section.dataset.state === "ready") {
      markStale(section, reason(error)); // keep what is drawn (and its zoom) through a passing failure
      return;
    }
    markStale(section, null);
    section.dataset.state = denied ? "denied" : "empty";
    evidence(section, "");
    const retry = el("button", {
      type: "button",
      class: "small retry",
      onclick: () => {
        state.cycle = new Map();
        refreshView(view);
      },
    }, "Retry");
    const notYet = error instanceof NoData || (error instanceof ApiError && [0, 404, 503].includes(error.status));
    const lead = unknownModel(error) ? "Unknown model" : notYet ? "No data yet" : "Not available";
    emptyBody(section).replaceChildren(el("p", { class: "empty" }, `${lead}: ${reason(error)} `, retry));
  }

  /** A 404 saying that the model itself is unknown (to the monitors, or to the fleet for explanations), not that
   * its data has not come yet: a mistyped name must not read as "the workers are behind". */
  function unknownModel(error) {
    return error instanceof ApiError && error.status === 404 && /^model: .* is unknown\b/.test(error.message);
  }

  /** Where a view says it has nothing to show: its body, or the projection's plot (its side list and tooltip,
   * static nodes of the page, stay for the next successful load). */
  function emptyBody(section) {
    const plot = part(section, ".plot");
    if (!plot) return part(section, ".body");
    part(section, ".side").replaceChildren();
    byId("tooltip").hidden = true;
    return plot;
  }

  function markStale(section, why) {
    const old = part(section, ".stale");
    if (old) old.remove();
    if (why) part(section, ".evidence").before(el("p", { class: "stale" }, `⚠ Not refreshed: ${why}`));
  }

  async function refreshAll() {
    state.cycle = new Map();
    const loaded = await Promise.all(VIEWS.map(refreshView));
    if (!VIEWS.some((v) => byId(v.id).dataset.state === "denied")) byId("message").hidden = true;
    const shown = byId("refreshed");
    const now = new Date().toLocaleTimeString();
    // true: loaded; false: failed; null: still loading from an earlier refresh (it loads again after), so neither
    // "updated" (nothing new was shown) nor "nothing could be loaded" (it may yet be): the line is left as it was.
    if (loaded.some((done) => done === true)) {
      state.updatedAt = now;
      shown.textContent = `updated ${now}`;
    } else if (loaded.every((done) => done === false)) {
      shown.textContent = `⚠ nothing could be loaded at ${now}` +
        (state.updatedAt ? ` (last updated ${state.updatedAt})` : "");
    }
    shown.dataset.count = String(Number(shown.dataset.count || 0) + 1);
    tickAgo();
  }

  /** One notice instead of every view's "no data" when the monitors do not know the model (a 404 naming it), and
   * no view has anything else to say. */
  function showUnknown() {
    const errors = VIEWS.map((v) => state.errors.get(v.id));
    const absent = (e) => e instanceof NoData || (e instanceof ApiError && e.status === 404);
    const named = errors.find((e) => absent(e) && e instanceof ApiError && /unknown to the monitors/.test(e.message));
    const unknown = Boolean(named) && errors.every(absent);
    const notice = byId("unknown");
    notice.hidden = !unknown;
    byId("views").hidden = unknown;
    if (unknown) {
      byId("unknown-text").textContent = `Unknown model “${MODEL}”: ${named.message.replace(/^model: /, "")}. ` +
        "Check the name in the address; this page shows the model's views once its monitor publishes them.";
    }
  }

  // --- distributions --------------------------------------------------------------------------

  async function loadDistributions(section) {
    const d = await get(PATHS.distributions);
    if (!d.production_count) throw new NoData("no production predictions in the monitor's window yet");
    const panel = (title, hist, xLabel, openEnd) => el("figure", { class: "chart-box" },
      C.histogram({ ...hist, xLabel, openEnd, label: `${title}: production against reference, shares per bin` }),
      el("figcaption", {}, title));
    part(section, ".body").replaceChildren(
      panel("Confidence (top-class probability)", d.confidence, "confidence", false),
      panel("Logit margin (top minus runner-up)", d.margin, "logit margin", true), // the monitor clips into the last bin
    );
    const reference = d.confidence.reference ? `${d.reference_count} reference rows` : "no reference outputs uploaded";
    evidence(section, `Observed pattern: the last ${d.production_count} production predictions against ${reference}, `,
      "as shares per bin; updated ", since(d.updated_at), ".");
  }

  // --- drift ----------------------------------------------------------------------------------

  async function loadDrift(section) {
    const [history, status] = await Promise.allSettled([get(PATHS.history), get(PATHS.drift)]);
    if (status.status === "fulfilled") renderVerdicts(section, status.value, null);
    else if (status.reason instanceof ApiError && status.reason.status === 404) renderVerdicts(section, null, null);
    else renderVerdicts(section, state.verdict, reason(status.reason)); // keep the alarms through a failure
    if (history.status === "rejected") throw history.reason;
    const groups = new Map();
    for (const p of history.value.points || []) {
      if (!groups.has(p.detector)) groups.set(p.detector, []);
      groups.get(p.detector).push(p);
    }
    if (!groups.size) throw new NoData(noScoresYet(status.status === "fulfilled" ? status.value : null));
    const all = history.value.points;
    const start = Math.min(...all.map((p) => p.time));
    const end = Math.max(...all.map((p) => p.time));
    const charts = [...groups].map(([name, points]) => {
      const alarms = points.filter((p) => p.drift).length;
      return el("figure", { class: "chart-box", "data-detector": name },
        C.timeline({ points, start, end, label: `${name}: score over time against its threshold, ${alarms} alarms` }),
        el("figcaption", {}, el("strong", {}, name), ` · ${points.length} scores, ${alarms} over the threshold`));
    });
    part(section, ".body").replaceChildren(...charts);
    const s = status.status === "fulfilled" ? status.value : null;
    const examined = s ? `; ${s.examined} records examined, state ${s.state}` : "";
    evidence(section, `Statistical test on recent production windows against the reference: ${all.length} scores `,
      `from ${groups.size} detectors over ${span(end - start)}${examined}. An alarm says the inputs changed, `,
      "not that the predictions got worse.");
  }

  /** Why the history has no score yet, from the state the monitor published (not a guess). */
  function noScoresYet(status) {
    if (!status) return "no drift scores yet (no monitor has published a verdict for this model)";
    const examined = typeof status.examined === "number" ? `${status.examined} records examined` : "";
    if (status.calibration_error) return `no drift scores: calibrating the detectors failed: ${status.calibration_error}`;
    if (status.state === "warming_up") {
      const progress = typeof status.warmup_collected === "number" && typeof status.warmup_needed === "number"
        ? `${status.warmup_collected} of ${status.warmup_needed} records collected`
        : examined;
      return `no drift scores yet: the monitor is warming up (the first events become the reference; ${progress})`;
    }
    if (status.state === "calibrating") {
      return `no drift scores yet: the monitor is calibrating its detectors on the reference (${examined})`;
    }
    if (status.state === "monitoring") {
      return (status.detectors || []).length
        ? `monitoring (${examined}); no score in the history yet (a point is added when a verdict changes)`
        : `monitoring (${examined}); no detector has a result yet (each needs a full window of events)`;
    }
    return `no drift scores yet (state ${status.state}; ${examined})`;
  }

  /** The monitor's current verdict; ``stale``: why it could not be read again (the last one read stays, marked). */
  function renderVerdicts(section, status, stale) {
    state.verdict = status;
    const box = part(section, ".verdicts");
    if (!status) {
      box.replaceChildren(el("p", { class: "muted" },
        stale ? `No current verdict: ${stale}` : "No current verdict published."));
    } else {
      const items = (status.detectors || []).map((d) => el("li", { class: d.drift ? "verdict drift" : "verdict" },
        el("strong", {}, d.name), ` ${fmt(d.score)} vs threshold ${fmt(d.threshold)} `,
        d.drift ? el("span", { class: "badge badge-warn" }, "▲ drift")
          : el("span", { class: "badge badge-ok" }, "✓ no drift")));
      box.replaceChildren(stale ? el("p", { class: "stale" }, `⚠ Not refreshed: ${stale}`) : "",
        el("p", {}, `Now (${status.state}, `, since(status.updated_at), "):"),
        items.length ? el("ul", { class: "verdict-list" }, items) : el("span", { class: "muted" }, " no detector yet"));
    }
    const text = !status ? "no verdict yet"
      : !(status.detectors || []).length ? `${status.state}, no detector has scored yet`
        : status.detectors.some((d) => d.drift)
          ? `drift: ${status.detectors.filter((d) => d.drift).map((d) => d.name).join(", ")}`
          : "no drift detected";
    byId("projection-verdict").textContent = status && stale ? `${text} (not refreshed)` : text;
  }

  // --- calibration and cohorts ----------------------------------------------------------------

  const seriesKey = (s) => `${s.version}\u0000${s.cohort}`;
  const byVersion = (a, b) => a.localeCompare(b, undefined, { numeric: true });

  function chosenSeries(series) {
    const found = series.find((s) => seriesKey(s) === state.seriesKey);
    if (found) return found;
    const newest = [...new Set(series.map((s) => s.version))].sort(byVersion).pop();
    return series.find((s) => s.version === newest && s.cohort === "all") || series.find((s) => s.version === newest);
  }

  async function loadCalibration(section) {
    const payload = await get(PATHS.calibration);
    state.calibration = payload;
    renderCalibration(section, payload);
  }

  function renderCalibration(section, payload) {
    const series = (payload.series || []).filter((s) => s.count > 0);
    if (!series.length) throw new NoData("no labelled predictions yet (labels arrive through POST /v1/labels)");
    const chosen = chosenSeries(series);
    state.seriesKey = seriesKey(chosen);
    fillSeriesSelect(series);
    const temperature = (payload.temperature || []).find((t) => t.version === chosen.version);
    const facts = el("dl", { class: "facts" },
      el("dt", {}, "ECE"), el("dd", {}, num(chosen.ece)),
      el("dt", {}, "MCE"), el("dd", {}, num(chosen.mce)),
      el("dt", {}, "Brier score"), el("dd", {}, chosen.brier_score === null ? "— (no probabilities sent)"
        : `${num(chosen.brier_score)} (n = ${chosen.brier_count})`),
      el("dt", {}, "Accuracy"),
      el("dd", {}, `${pct(chosen.accuracy)} (95% ${pct(chosen.accuracy_lower)}–${pct(chosen.accuracy_upper)})`),
      temperature ? [el("dt", {}, "Temperature scaling"), el("dd", {},
        `T = ${num(temperature.temperature, 2)}, fitted on all ${temperature.count} labelled predictions of `,
        `${temperature.version}, would move their ECE `,
        `${num(temperature.ece_before)} → ${num(temperature.ece_after)}`)]
      : null);
    part(section, ".body").replaceChildren(
      el("figure", { class: "chart-box" }, C.reliability({
        bins: chosen.bins || [],
        label: `reliability diagram of ${chosen.version}, cohort ${chosen.cohort}: accuracy per confidence bin`,
      }), el("figcaption", {}, `${chosen.version} · ${chosen.cohort}`)),
      facts,
    );
    evidence(section, `Benchmark on this monitoring window, n = ${chosen.count} labelled predictions `,
      `(version ${chosen.version}, cohort ${chosen.cohort}): what this window showed, not a promise about `,
      "tomorrow's traffic.");
  }

  function fillSeriesSelect(series) {
    const select = byId("series");
    const options = [...series].sort((a, b) => byVersion(a.version, b.version) || a.cohort.localeCompare(b.cohort))
      .map((s) => [seriesKey(s), `${s.version} · ${s.cohort} (n = ${s.count})`]);
    const same = options.length === select.options.length &&
      options.every(([key], i) => select.options[i].value === key);
    if (same) options.forEach(([, text], i) => { select.options[i].text = text; }); // counts grow; the list stays
    else select.replaceChildren(...options.map(([key, text]) => el("option", { value: key }, text)));
    select.value = state.seriesKey;
  }

  async function loadCohorts(section) {
    const payload = await get(PATHS.calibration);
    renderCohorts(section, payload);
  }

  function cohortRows(payload, version) {
    const measured = (payload.series || []).filter((s) => s.version === version && s.count > 0);
    const estimates = (payload.estimates || []).filter((e) => e.version === version);
    const cohorts = [...new Set([...measured.map((s) => s.cohort), ...estimates.map((e) => e.cohort)])]
      .sort((a, b) => (a === "all" ? -1 : b === "all" ? 1 : a.localeCompare(b)));
    return cohorts.map((cohort) => {
      const s = measured.find((m) => m.cohort === cohort);
      const e = estimates.find((m) => m.cohort === cohort);
      return {
        label: cohort,
        accuracy: s ? s.accuracy : NaN,
        lower: s ? s.accuracy_lower : NaN,
        upper: s ? s.accuracy_upper : NaN,
        n: s ? s.count : 0,
        estimate: e ? e.estimated_accuracy : NaN,
        estimateN: e ? e.predictions : 0,
        estimateNote: e && e.fitted_cohort && e.fitted_cohort !== cohort
          ? `threshold fitted on ${e.fitted_cohort}` : "",
        fit: e,
      };
    });
  }

  function renderCohorts(section, payload) {
    const series = (payload.series || []).filter((s) => s.count > 0);
    if (!series.length && !(payload.estimates || []).length) {
      throw new NoData("no labelled predictions or estimates yet");
    }
    const version = series.length ? chosenSeries(series).version
      : [...new Set(payload.estimates.map((e) => e.version))].sort(byVersion).pop();
    const rows = cohortRows(payload, version);
    part(section, ".body").replaceChildren(el("figure", { class: "chart-box" },
      C.intervals({ rows, label: `accuracy per cohort of ${version}, measured with 95% intervals and estimated` }),
      el("figcaption", {}, `version ${version}`)));
    const labelled = rows.find((r) => r.label === "all") || rows[0];
    const fit = (rows.find((r) => r.label === "all" && r.fit) || rows.find((r) => r.fit) || {}).fit;
    const source = fit ? String(fit.source || "labelled_window").replace("_", " ") : "";
    const estimateText = fit
      ? `Diamonds: estimates from confidence (ATC), not measured; for ${fit.cohort}: ${fit.predictions} ` +
        `predictions, confidence threshold ${num(fit.threshold)} fitted on ${fit.fitted_on} labelled ones (${source}).` +
        (Math.abs(fit.fit_gap || 0) >= 0.02
          ? ` On those labelled ones the estimate is off by ${num(100 * Math.abs(fit.fit_gap), 1)} points ` +
            "(tied confidences leave no exact threshold): do not rely on it."
          : "")
      : "No accuracy estimate published yet (ATC needs a fit on labelled data).";
    evidence(section, `Benchmark on this monitoring window, n = ${labelled ? labelled.n : 0} labelled predictions of `,
      `version ${version}; bars are 95% Wilson intervals, n printed per cohort. `, el("strong", {}, estimateText));
  }

  function onSeriesChange() {
    state.seriesKey = byId("series").value;
    if (!state.calibration) return;
    for (const [id, render] of [["v-calibration", renderCalibration], ["v-cohorts", renderCohorts]]) {
      try {
        render(byId(id), state.calibration);
        byId(id).dataset.state = "ready";
      } catch (error) {
        unavailable(byId(id), VIEWS.find((v) => v.id === id), error);
      }
    }
  }

  // --- methods and layers ---------------------------------------------------------------------

  async function loadMethods(section) {
    const m = await get(PATHS.methods, { limit: String(METHODS_LIMIT) });
    if (!m.explanations || !(m.methods || []).length) {
      throw new NoData("no finished explanations among the most recent ones (none sampled yet, or the workers " +
        "are behind)");
    }
    const head = ["Method", "Trusted", "Passes sanity check", "Latest sanity check", "Mean fidelity gain",
      "Mean agreement"];
    const rows = m.methods.flatMap((r) => [
      el("tr", { class: "method", "data-method": r.method },
        el("th", { scope: "row" }, r.method, el("span", { class: "muted explained" }, `${r.explanations} explained`)),
        el("td", {}, meter(r.trusted_share), typeof r.verdict_count === "number"
          ? el("span", { class: "muted" }, ` of ${r.verdict_count} judged`) : null),
        el("td", {}, meter(r.sanity_pass_share), el("span", { class: "muted" }, ` of ${r.sanity_checked} checked`)),
        el("td", { class: "latest-sanity" }, latestSanity(r.latest_sanity)),
        el("td", { class: "num" }, num(r.mean_fidelity_gain),
          el("span", { class: "muted" }, ` (n = ${r.fidelity_count})`)),
        el("td", { class: "num" }, num(r.mean_agreement, 2), typeof r.agreement_count === "number"
          ? el("span", { class: "muted" }, ` (n = ${r.agreement_count})`) : null)),
      el("tr", { class: "accounting", "data-method": r.method },
        el("td", { colspan: String(head.length) }, accounting(r))),
    ]);
    part(section, ".body").replaceChildren(el("table", { class: "data methods", "data-rows": m.methods.length },
      el("caption", {}, "Checked: explained while a conclusive randomisation sanity check of the method was in ",
        "force; passes: that check did. Trusted: passes it, beats random deletion and agrees with the others, ",
        "among the checked verdicts. Latest check: similarity of the maps of the trained and a randomised model ",
        "(high is bad) over the pairs of maps it measured. Fidelity gain: area under the score as features are ",
        "deleted in random order minus in the map's order (above 0 = better than random). Agreement: mean rank ",
        "correlation with the other methods' maps."),
      el("thead", {}, el("tr", {}, head.map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows)));
    evidence(section, `Observed pattern over ${m.explanations} sampled explanations `,
      `(the latest ${METHODS_LIMIT} finished ones at most; the line under each method accounts for all of its `,
      "own); sampling favours low-confidence and flagged events, so this is not a random sample of traffic.");
  }

  /** The method's latest sanity check: its verdict, then its figure, the pairs of maps it rests on and when. An
   * inconclusive one (too few pairs: it judges no map) never reads as a pass, nor one whose ``conclusive`` the
   * sidecar does not report (older sidecars): that is unknown. */
  function latestSanity(latest) {
    if (!latest) return el("span", { class: "muted" }, "not yet");
    const figures = el("span", { class: "muted sanity-figures" },
      `similarity ${num(latest.similarity, 2)} over ${latest.samples} pairs of maps, `, since(latest.checked_at));
    let mark;
    if (latest.conclusive === false) {
      const why = "too few pairs of maps: neither a pass nor a failure, it judges no map";
      mark = el("span", { class: "badge badge-none", title: why },
        `inconclusive: only ${latest.samples} pairs measured`);
    } else if (latest.conclusive !== true) {
      mark = el("span", { class: "badge badge-none", title: "this sidecar does not say whether the check measured " +
        "the pairs of maps it needs" }, `? conclusive not reported${latest.flagged ? ", flagged" : ""}`);
    } else if (latest.flagged) {
      mark = el("span", { class: "badge badge-warn", title: "the map barely changes on a randomised model" },
        "⚠ flagged");
    } else {
      mark = el("span", { class: "badge badge-ok" }, "✓ passes");
    }
    return [mark, " ", figures];
  }

  /** Every explanation of the method in one of four parts that add up to the row's count: judged under a
   * conclusive check (the Trusted share's n), explained under one but not judged, not trusted before any conclusive
   * check (``failed_before_sanity``), and the rest explained before any conclusive check (in neither share). */
  function accounting(r) {
    const judged = typeof r.verdict_count === "number" ? r.verdict_count : 0;
    const failed = typeof r.failed_before_sanity === "number" ? r.failed_before_sanity : 0;
    const parts = [
      [judged, "judged under a conclusive sanity check (the Trusted share's n)"],
      [r.sanity_checked - judged, "checked but not judged (no figure of the map measured)"],
      [failed, "not trusted before any conclusive check (a figure of the map failed, or the worker's model was " +
        "not the server's)"],
      [r.explanations - r.sanity_checked - failed, "explained before any conclusive sanity check (in neither share)"],
    ].filter(([count]) => count > 0);
    const listed = parts.map(([count, what]) => `${count} ${what}`).join("; ");
    return el("span", { class: "muted" }, `Of ${r.explanations} explanations with ${r.method}: ${listed || "none"}.`);
  }

  async function loadLayers(section) {
    const l = await get(PATHS.layers);
    if (!(l.reports || []).length) throw new NoData("no worker has reported layer statistics yet");
    const head = ["Layer", "Kind", "Units", "n", "Dead units", "Saturated", "Activation shift"];
    const blocks = l.reports.map((report) => {
      const rows = report.layers.map((layer) => {
        // null: not applicable to this layer, or not measured yet; never shown as 0 % nor flagged
        const dead = measured(layer.dead_ratio) && layer.dead_ratio >= 0.5;
        const nonfinite = layer.nonfinite_inputs > 0
          ? el("span", { class: "badge badge-warn", title: "inputs whose output of this layer held inf or NaN" },
            ` ⚠ ${layer.nonfinite_inputs} non-finite left out`)
          : null;
        return el("tr", { class: dead ? "flagged" : null },
          el("th", { scope: "row" }, layer.name),
          el("td", {}, layer.kind),
          el("td", { class: "num" }, String(layer.units)),
          el("td", { class: "num" }, measured(layer.inputs) ? String(layer.inputs) : "—", nonfinite),
          el("td", {}, meter(layer.dead_ratio, "n/a"),
            dead ? el("span", { class: "badge badge-warn" }, " ⚠ mostly dead") : null),
          el("td", {}, meter(layer.saturated_ratio, "n/a")),
          el("td", {
            class: "num",
            title: measured(layer.shift_units)
              ? `over ${layer.shift_units} of ${layer.units} units (units constant through the baseline, e.g. dead, and still so are left out)`
              : null,
          }, measured(layer.activation_shift) ? num(layer.activation_shift) : "n/a"));
      });
      return el("table", { class: "data", "data-rows": rows.length },
        el("caption", {}, `worker ${report.worker} · version ${report.version} · figures over the last `,
          `${report.window} inputs (${report.samples} inspected since the worker started) · `,
          "shift against ", report.baseline === "uploaded" ? "an uploaded reference"
            : report.baseline_stored ? ["the version's stored first window (worker ",
              `${report.baseline_worker}, taken `, since(report.baseline_taken_at), ")"]
            : "the first window it saw", " · updated ", since(report.updated_at)),
        el("thead", {}, el("tr", {}, head.map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, rows));
    });
    part(section, ".body").replaceChildren(...blocks);
    evidence(section, ...layersEvidence(l.reports));
  }

  /** What the layer figures shown rest on: the n of the tables (each layer's recent inputs with a finite output)
   * and the baseline of the activation shift; the workers' cumulative count is said as such, apart. */
  function layersEvidence(reports) {
    // n of older workers' reports (no ``inputs``): their window
    const inputs = reports.flatMap((r) => r.layers.map((layer) => (measured(layer.inputs) ? layer.inputs : r.window)));
    const low = Math.min(...inputs);
    const high = Math.max(...inputs);
    const n = !inputs.length ? "no" : low === high ? `n = ${high}` : `n = ${low}–${high}`;
    // A shift is measured once the recent window is full and clear of the baseline: the baseline is then the
    // version's first window of the same size (or a reference uploaded for the model).
    const shifted = reports.filter((r) => r.layers.some((layer) => measured(layer.activation_shift)));
    const firstWindows = [...new Set(shifted.filter((r) => r.baseline !== "uploaded").map((r) => r.window))];
    const baselines = [
      ...firstWindows.sort((a, b) => a - b).map((size) => `the version's first ${size} inputs`),
      shifted.some((r) => r.baseline === "uploaded") ? "an uploaded reference" : null,
    ].filter(Boolean);
    const shift = baselines.length
      ? `the activation shift also on a baseline: ${baselines.join(" or ")}`
      : "no activation shift measured yet (it needs a complete baseline and a recent window clear of it)";
    const samples = reports.reduce((total, r) => total + r.samples, 0);
    const workers = new Set(reports.map((r) => r.worker)).size;
    const versions = new Set(reports.map((r) => r.version)).size;
    return [
      `Observed pattern: each figure rests on ${n} recent inputs (per layer in the n column: those of each `,
      `table's window with a finite output); ${shift}. Dead = never active across them. `,
      el("span", { class: "muted" }, `${samples} inputs inspected since start, all workers (${workers} worker(s), `,
        `${versions} model version(s)); the figures rest only on the windows above.`),
    ];
  }

  // --- projection -----------------------------------------------------------------------------

  async function loadProjection(section) {
    const p = state.projection;
    // the verdict beside it: the drift view
    const data = await get(PATHS.projection, { method: p.method, limit: String(PROJECTION_LIMIT) });
    if (!(data.points || []).length) throw new NoData("the projection has no points yet");
    const same = p.data && p.data.method === data.method && p.data.computed_at === data.computed_at;
    if (same && section.dataset.state === "ready") { // unchanged: keep the zoom, hover and selection
      projectionEvidence(section, data); // but say it if a recompute failed since
      return;
    }
    if (p.data && p.data.method !== data.method) p.domain = null;
    p.data = data;
    renderProjection(section);
    projectionEvidence(section, data);
  }

  function projectionEvidence(section, data) {
    const sampled = data.points.filter((q) => q.request_id).length;
    const failed = typeof data.recompute_error === "string"
      ? el("strong", { class: "recompute-failed" }, `⚠ The latest recompute failed (${data.recompute_error}); `,
        "this is the last successful one, computed ", since(data.computed_at), ". ")
      : "";
    const warning = typeof data.warning === "string"
      ? el("strong", { class: "projection-warning" }, `⚠ ${data.warning} `) : "";
    evidence(section, failed, warning,
      `Observed pattern: ${counted(data.shown_reference, data.reference_count)} reference`,
      typeof data.reference_rows === "number" && data.reference_rows > data.reference_count
        ? ` (a seeded sample of the reference's ${data.reference_rows} rows)` : "",
      " and ",
      `${counted(data.shown_production, data.production_count)} recent production embeddings, `,
      `${data.method.toUpperCase()} to 2-D, computed `, since(data.computed_at), " in ",
      `${num(data.seconds, 2)} s; ${sampled} ringed points had been explained by then and link to their `,
      "explanation (sampled events still queued are not ringed). ", leftOut(data),
      data.note ? el("span", { class: "muted" }, data.note) : "");
  }

  /** "1000 of 3000 (an even subsample)" when the sidecar cut the points to the page's limit, else the count. */
  function counted(shown, total) {
    return typeof shown === "number" && shown < total ? `${shown} of ${total} (an even subsample)` : `${total}`;
  }

  /** What the owner left out of the drawing, if anything (fields absent from older monitors' views). */
  function leftOut(data) {
    const parts = [];
    if (data.other_width_count) parts.push(`${data.other_width_count} production embeddings of another width `
      + "than the reference's (a changed model?)");
    if (data.non_finite_count) parts.push(`${data.non_finite_count} points placed at non-finite coordinates`);
    return parts.length ? `Left out: ${parts.join("; ")}. ` : "";
  }

  const SOURCE_STYLE = {
    reference: { colour: C.OKABE_ITO.sky, shape: "circle" },
    production: { colour: C.OKABE_ITO.vermillion, shape: "triangle" },
  };
  const UNKNOWN_STYLE = { colour: C.OKABE_ITO.grey, shape: "square" };

  /** How each point is drawn under the chosen colouring, and the legend that explains it. */
  function projectionStyle(points, colourBy) {
    const keyOf = {
      class: (q) => (q.predicted === null || q.predicted === undefined ? "unknown" : `class ${q.predicted}`),
      source: (q) => q.source,
      cohort: (q) => cohortText(q.cohort) || "no cohort",
    }[colourBy];
    const counts = new Map();
    for (const q of points) counts.set(keyOf(q), (counts.get(keyOf(q)) || 0) + 1);
    const names = [...counts.keys()].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
    const styles = new Map(names.map((name, i) => {
      if (colourBy === "source") return [name, SOURCE_STYLE[name] || UNKNOWN_STYLE];
      if (name === "unknown" || name === "no cohort") return [name, UNKNOWN_STYLE];
      const index = colourBy === "class" ? Number(name.slice(6)) : i;
      return [name, C.category(index)];
    }));
    return {
      styleOf: (q) => ({ ...styles.get(keyOf(q)), ring: Boolean(q.request_id) }),
      legend: names.map((name) => ({ name, style: styles.get(name), count: counts.get(name) })),
    };
  }

  function pointFacts(q) {
    const label = q.label === null || q.label === undefined ? "not known"
      : `${q.label} ${q.label === q.predicted ? "✓" : "✗ differs"}`;
    return [
      ["source", q.source],
      ["predicted class", q.predicted === null || q.predicted === undefined ? "—" : String(q.predicted)],
      ["model version", q.version || "—"],
      ["label", label],
      ["cohort", cohortText(q.cohort) || "none"],
      ["time", typeof q.time === "number" ? new Date(q.time * 1000).toLocaleString() : "—"],
      ["position", `(${fmt(q.x)}, ${fmt(q.y)})`],
      ["explanation", q.request_id ? `${q.request_id} (click to open)`
        : q.source === "production" ? "none (not sampled, or not explained yet)" : "—"],
    ];
  }

  const explanationHref = (requestId) => `/ui#${enc}/${encodeURIComponent(requestId)}`;

  function showTooltip(section, q, event) {
    const tip = byId("tooltip");
    if (!q || !event) {
      tip.hidden = true;
      return;
    }
    tip.replaceChildren(...pointFacts(q).map(([name, value]) =>
      el("div", {}, el("span", { class: "muted" }, `${name}: `), value)));
    const box = part(section, ".projection").getBoundingClientRect();
    tip.style.left = `${event.clientX - box.left + 14}px`;
    tip.style.top = `${event.clientY - box.top + 14}px`;
    tip.hidden = false;
  }

  function renderProjection(section) {
    const p = state.projection;
    const points = p.data.points;
    const { styleOf, legend } = projectionStyle(points, p.colourBy);
    const svg = C.scatter({
      points,
      domain: p.domain,
      styleOf,
      label: `${p.data.method.toUpperCase()} projection of ${points.length} embeddings, coloured by ${p.colourBy}`,
      onHover: (index, event) => showTooltip(section, index === null ? null : points[index], event),
      onPick: (index) => {
        const q = points[index];
        if (q.request_id) window.location.assign(explanationHref(q.request_id));
        else {
          p.pinned = q;
          renderSide(section, legend);
        }
      },
      onZoom: (domain) => {
        p.domain = domain;
        renderProjection(section);
      },
    });
    byId("tooltip").hidden = true;
    part(section, ".plot").replaceChildren(svg);
    byId("reset-zoom").disabled = !p.domain;
    renderSide(section, legend);
  }

  function renderSide(section, legend) {
    const p = state.projection;
    const linked = p.data.points.filter((q) => q.request_id).slice(-SAMPLED_LISTED).reverse();
    const parts = [
      el("h3", {}, "Legend"),
      el("ul", { class: "legend-list" }, legend.map((entry) => el("li", {}, C.swatch(entry.style), ` ${entry.name} `,
        el("span", { class: "muted" }, `(${entry.count})`)))),
      el("p", { class: "hint" }, C.swatch({ colour: "#ffffff", shape: "circle", ring: true }),
        " ringed: explained (click to open); queued ones are not ringed"),
      p.pinned ? [el("h3", {}, "Selected point"), el("dl", { class: "facts" },
        pointFacts(p.pinned).map(([name, value]) => [el("dt", {}, name), el("dd", {}, value)]))] : null,
      el("h3", {}, "Explained points"),
      linked.length
        ? el("ul", { class: "links" }, linked.map((q) => el("li", {}, el("a", { href: explanationHref(q.request_id) },
          q.request_id), el("span", { class: "muted" }, ` class ${q.predicted}`))))
        : el("p", { class: "muted" }, "none explained in this sample yet"),
    ];
    part(section, ".side").replaceChildren(...parts.flat().filter(Boolean));
  }

  // --- start ----------------------------------------------------------------------------------

  function setupToken() {
    state.token = window.VaiPage.tokenForm((token) => {
      state.token = token;
      refreshAll();
    });
  }

  function setupControls() {
    const p = state.projection;
    byId("series").addEventListener("change", onSeriesChange);
    byId("method").addEventListener("change", (event) => {
      p.method = event.target.value;
      p.domain = null;
      state.cycle = new Map();
      byId("v-projection").dataset.state = "loading";
      refreshView(VIEWS.find((v) => v.id === "v-projection"));
    });
    byId("colour-by").addEventListener("change", (event) => {
      p.colourBy = event.target.value;
      if (p.data && byId("v-projection").dataset.state === "ready") renderProjection(byId("v-projection"));
    });
    byId("reset-zoom").addEventListener("click", () => {
      p.domain = null;
      if (p.data && byId("v-projection").dataset.state === "ready") renderProjection(byId("v-projection"));
    });
  }

  function start() {
    byId("model-name").textContent = MODEL;
    byId("back").href = `/ui#${enc}`; // the viewer lists this model's explanations
    document.title = `${MODEL} · model overview · vai-sidecar`;
    setupToken();
    setupControls();
    refreshAll();
    window.setInterval(() => {
      if (byId("auto").checked && !document.hidden) refreshAll();
    }, REFRESH_MS);
    window.setInterval(tickAgo, AGO_TICK_MS); // also while a view is stale or refreshing is off
  }

  document.addEventListener("DOMContentLoaded", start);
})();
