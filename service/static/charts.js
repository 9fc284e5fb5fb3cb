// Small SVG charts for the model overview, drawn with plain DOM calls (no library, no markup from strings).
// Each chart returns an <svg> with role="img", an aria-label, and data-marks = the number of data marks drawn.
// Colours: the Okabe–Ito palette, safe for the common colour-vision deficiencies; every colour also comes
// with a shape, a line style or a printed value, so nothing is told by colour alone.
"use strict";

(() => {
  // The SVG namespace, read from the HTML parser rather than spelled out: the static files carry no URLs.
  const SVG_NS = new DOMParser().parseFromString("<svg></svg>", "text/html").querySelector("svg").namespaceURI;

  const OKABE_ITO = {
    black: "#000000",
    orange: "#E69F00",
    sky: "#56B4E9",
    green: "#009E73",
    yellow: "#F0E442",
    blue: "#0072B2",
    vermillion: "#D55E00",
    purple: "#CC79A7",
    grey: "#7a7a7a",
  };
  // Categorical order: the most distinct first; yellow last (weak on white).
  const CATEGORICAL = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#000000", "#F0E442"];
  const SHAPES = ["circle", "square", "diamond", "triangle"];

  /** Colour and shape of the i-th category: colours first, then the same colours with the next shape. */
  function category(index) {
    const i = Math.max(0, index);
    return { colour: CATEGORICAL[i % CATEGORICAL.length], shape: SHAPES[Math.floor(i / CATEGORICAL.length) % 4] };
  }

  function node(tag, attrs, ...children) {
    const element = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined && value !== false) element.setAttribute(name, String(value));
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined && child !== false) {
        element.append(child instanceof Node ? child : String(child));
      }
    }
    return element;
  }

  const title = (text) => node("title", {}, text);

  function scale(domain, range) {
    const [d0, d1] = domain;
    const [r0, r1] = range;
    const span = d1 - d0 || 1;
    const map = (value) => r0 + ((value - d0) / span) * (r1 - r0);
    map.invert = (pixel) => d0 + ((pixel - r0) / (r1 - r0)) * span;
    map.domain = domain;
    map.range = range;
    return map;
  }

  /** About ``count`` round tick values covering ``[low, high]``. */
  function ticks(low, high, count = 5) {
    if (count <= 0) return [];
    if (!(high > low)) return [low];
    const raw = (high - low) / count;
    const power = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
    const out = [];
    for (let v = Math.ceil(low / step) * step; v <= high + step * 1e-9; v += step) out.push(Number(v.toFixed(10)));
    return out;
  }

  const formatNumber = (value) => {
    if (!Number.isFinite(value)) return "—";
    const size = Math.abs(value);
    if (size !== 0 && (size >= 1e4 || size < 1e-3)) return value.toExponential(1);
    return String(Number(value.toPrecision(3)));
  };

  function clockTime(epochSeconds) {
    const date = new Date(epochSeconds * 1000);
    const pad = (n) => String(n).padStart(2, "0");
    return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
  }

  /** A chart frame: the <svg>, its plotting area and its two scales, with axes and axis titles drawn. */
  function frame(options) {
    const { width = 460, height = 240, x, y, xLabel, yLabel, label } = options;
    const margin = { top: 14, right: 16, bottom: 42, left: 54, ...(options.margin || {}) };
    const area = { left: margin.left, right: width - margin.right, top: margin.top, bottom: height - margin.bottom };
    const xs = scale(x, [area.left, area.right]);
    const ys = scale(y, [area.bottom, area.top]);
    const svg = node("svg", {
      viewBox: `0 0 ${width} ${height}`,
      width,
      height,
      class: "chart",
      role: "img",
      "aria-label": label,
    });
    svg.append(node("rect", { class: "paper", x: 0, y: 0, width, height }));
    const grid = node("g", { class: "grid" });
    const axes = node("g", { class: "axes" });
    const xFormat = options.xFormat || formatNumber;
    const yFormat = options.yFormat || formatNumber;
    for (const value of options.xTicks || ticks(x[0], x[1], options.xTickCount ?? 5)) {
      const px = xs(value);
      grid.append(node("line", { x1: px, x2: px, y1: area.top, y2: area.bottom }));
      axes.append(node("text", { x: px, y: area.bottom + 15, "text-anchor": "middle" }, xFormat(value)));
    }
    for (const value of ticks(y[0], y[1], options.yTickCount ?? 4)) {
      const py = ys(value);
      grid.append(node("line", { x1: area.left, x2: area.right, y1: py, y2: py }));
      axes.append(node("text", { x: area.left - 6, y: py + 4, "text-anchor": "end" }, yFormat(value)));
    }
    axes.append(
      node("line", { class: "axis", x1: area.left, x2: area.right, y1: area.bottom, y2: area.bottom }),
      node("line", { class: "axis", x1: area.left, x2: area.left, y1: area.top, y2: area.bottom }),
      node("text", { class: "axis-title", x: (area.left + area.right) / 2, y: height - 6, "text-anchor": "middle" },
        xLabel),
      node("text", {
        class: "axis-title",
        x: -(area.top + area.bottom) / 2,
        y: 13,
        transform: "rotate(-90)",
        "text-anchor": "middle",
      }, yLabel),
    );
    svg.append(grid, axes);
    return { svg, area, xs, ys };
  }

  function finish(svg, marks) {
    svg.setAttribute("data-marks", String(marks));
    return svg;
  }

  /** A marker of ``shape`` centred on (cx, cy), of radius ``r``. */
  function marker(shape, cx, cy, r, attrs) {
    if (shape === "square") return node("rect", { x: cx - r, y: cy - r, width: 2 * r, height: 2 * r, ...attrs });
    if (shape === "diamond") {
      const d = r * 1.3;
      return node("polygon", { points: `${cx},${cy - d} ${cx + d},${cy} ${cx},${cy + d} ${cx - d},${cy}`, ...attrs });
    }
    if (shape === "triangle") {
      const [up, side] = [r * 1.3, r * 1.2];
      return node("polygon", { points: `${cx},${cy - up} ${cx + side},${cy + r} ${cx - side},${cy + r}`, ...attrs });
    }
    return node("circle", { cx, cy, r, ...attrs });
  }

  /** Shares per bin of production (bars) against the reference (a step line), on the same edges. With
   * ``openEnd``, the last bin holds every value at or above its lower edge (the values beyond the axis too):
   * it is labelled "≥ lower edge", in its tooltip and in the chart. */
  function histogram({ edges, production, reference, xLabel, label, openEnd = false }) {
    const share = (counts) => {
      const total = counts.reduce((a, b) => a + b, 0) || 1;
      return counts.map((c) => c / total);
    };
    const prod = share(production);
    const ref = Array.isArray(reference) ? share(reference) : null;
    const top = Math.max(...prod, ...(ref || [0]), 0.01) * 1.1;
    const { svg, xs, ys, area } = frame({
      x: [edges[0], edges[edges.length - 1]],
      y: [0, top],
      xLabel,
      yLabel: "share per bin",
      yFormat: (v) => `${Math.round(v * 100)}%`,
      label,
    });
    const last = edges.length - 2;
    const binText = (i) => (openEnd && i === last ? `≥ ${formatNumber(edges[i])} (beyond the axis too)`
      : `${formatNumber(edges[i])}–${formatNumber(edges[i + 1])}`);
    const bars = node("g", { class: "bars" });
    let marks = 0;
    prod.forEach((value, i) => {
      const x0 = xs(edges[i]);
      const x1 = xs(edges[i + 1]);
      bars.append(node("rect", {
        class: "mark", x: x0 + 0.5, y: ys(value), width: Math.max(0.5, x1 - x0 - 1), height: area.bottom - ys(value),
        fill: OKABE_ITO.orange, "data-share": value,
      }, title(`${binText(i)}: production ${(value * 100).toFixed(1)}% (${production[i]})`)));
      marks += production[i] > 0 ? 1 : 0;
    });
    svg.append(bars);
    if (openEnd) {
      svg.append(node("text", { class: "note", x: area.right, y: area.top + 10, "text-anchor": "end" },
        `last bar: ≥ ${formatNumber(edges[last])}`));
    }
    if (ref) {
      let path = `M${xs(edges[0])},${ys(0)}`;
      ref.forEach((value, i) => {
        path += ` L${xs(edges[i])},${ys(value)} L${xs(edges[i + 1])},${ys(value)}`;
      });
      path += ` L${xs(edges[edges.length - 1])},${ys(0)}`;
      svg.append(node("path", { class: "step", d: path, stroke: OKABE_ITO.blue }));
    }
    return finish(svg, marks);
  }

  /** Score over time (line and dots) against the threshold (dashed), alarms as vermillion triangles. */
  function timeline({ points, label, start, end }) {
    const scores = points.map((p) => p.score).concat(points.map((p) => p.threshold)).filter(Number.isFinite);
    const high = Math.max(...scores, 0);
    const low = Math.min(...scores, 0); // some scores (MMD estimates) dip below 0
    const pad = (high - low) * 0.12 || 1e-3;
    const t0 = start !== undefined ? start : points[0].time;
    const t1 = Math.max(end !== undefined ? end : points[points.length - 1].time, t0 + 1);
    const { svg, xs, ys } = frame({
      x: [t0, t1],
      y: [low < 0 ? low - pad : 0, high + pad],
      width: 400,
      height: 190,
      xLabel: "time (local)",
      yLabel: "score",
      xFormat: clockTime,
      xTickCount: 3,
      margin: { right: 28 },
      label,
    });
    const threshold = points.map((p, i) => `${i ? "L" : "M"}${xs(p.time)},${ys(p.threshold)}`).join(" ");
    const line = points.map((p, i) => `${i ? "L" : "M"}${xs(p.time)},${ys(p.score)}`).join(" ");
    svg.append(
      node("path", { class: "threshold", d: threshold, stroke: OKABE_ITO.vermillion }),
      node("path", { class: "line", d: line, stroke: OKABE_ITO.blue }),
    );
    const dots = node("g", { class: "dots" });
    for (const p of points) {
      const text = `${clockTime(p.time)}: score ${formatNumber(p.score)}, threshold ${formatNumber(p.threshold)}` +
        (p.drift ? " — DRIFT" : "");
      const attrs = p.drift
        ? { class: "mark alarm", fill: OKABE_ITO.vermillion, stroke: "#000000" }
        : { class: "mark", fill: OKABE_ITO.blue };
      dots.append(marker(p.drift ? "triangle" : "circle", xs(p.time), ys(p.score), p.drift ? 4.5 : 2.5, attrs));
      dots.lastChild.append(title(text));
    }
    svg.append(dots);
    return finish(svg, points.length);
  }

  /** Accuracy per confidence bin (bars) against the diagonal, with each bin's count printed above it. */
  function reliability({ bins, label }) {
    const { svg, xs, ys, area } = frame({
      x: [0, 1],
      y: [0, 1.08],
      xLabel: "confidence",
      yLabel: "accuracy",
      label,
      margin: { top: 20 },
    });
    svg.append(node("line", { class: "diagonal", x1: xs(0), y1: ys(0), x2: xs(1), y2: ys(1) }));
    const bars = node("g", { class: "bars" });
    let marks = 0;
    for (const bin of bins) {
      if (!bin.count || typeof bin.accuracy !== "number") continue;
      const x0 = xs(bin.lower);
      const x1 = xs(bin.upper);
      const text = `${formatNumber(bin.lower)}–${formatNumber(bin.upper)}: accuracy ${formatNumber(bin.accuracy)}, ` +
        `mean confidence ${formatNumber(bin.mean_confidence)}, n = ${bin.count}`;
      bars.append(
        node("rect", {
          class: "mark", x: x0 + 1, y: ys(bin.accuracy), width: Math.max(1, x1 - x0 - 2),
          height: area.bottom - ys(bin.accuracy), fill: OKABE_ITO.blue,
        }, title(text)),
        node("text", {
          class: "count", x: (x0 + x1) / 2, y: ys(bin.accuracy) - 4 - (marks % 2) * 10, "text-anchor": "middle",
        }, String(bin.count)), // every other count a line higher, so that neighbours do not overlap
      );
      if (typeof bin.mean_confidence === "number") {
        bars.append(marker("diamond", xs(bin.mean_confidence), ys(bin.accuracy), 3,
          { class: "confidence-mark", fill: OKABE_ITO.orange, stroke: "#000000" }));
      }
      marks += 1;
    }
    svg.append(bars);
    return finish(svg, marks);
  }

  /**
   * One row per cohort: the measured accuracy (filled circle) with its 95% interval as error bars and
   * n printed, and the estimate (hollow diamond) beside it.
   */
  function intervals({ rows, label }) {
    const rowHeight = 34;
    const height = 46 + rows.length * rowHeight;
    const lows = rows.flatMap((r) => [r.lower, r.estimate]).filter(Number.isFinite);
    const low = Math.max(0, Math.floor((Math.min(...lows, 1) - 0.05) * 10) / 10);
    const { svg, xs } = frame({
      x: [low, 1],
      y: [0, 1],
      height,
      width: 520,
      xLabel: "accuracy",
      yLabel: "",
      yTickCount: 0,
      label,
      margin: { left: 150, right: 70, top: 8 },
    });
    let marks = 0;
    rows.forEach((row, i) => {
      const cy = 8 + rowHeight * (i + 0.5);
      const g = node("g", { class: "row" });
      g.append(node("text", { class: "row-label", x: 144, y: cy + 4, "text-anchor": "end" }, row.label));
      if (Number.isFinite(row.accuracy)) {
        const x0 = xs(row.lower);
        const x1 = xs(row.upper);
        g.append(
          node("line", { class: "whisker", x1: x0, x2: x1, y1: cy - 5, y2: cy - 5 }),
          node("line", { class: "whisker", x1: x0, x2: x0, y1: cy - 10, y2: cy }),
          node("line", { class: "whisker", x1: x1, x2: x1, y1: cy - 10, y2: cy }),
          node("circle", { class: "mark measured", cx: xs(row.accuracy), cy: cy - 5, r: 4.5, fill: OKABE_ITO.blue },
            title(`measured ${formatNumber(row.accuracy)} (95% Wilson ${formatNumber(row.lower)}–` +
              `${formatNumber(row.upper)}), n = ${row.n}`)),
          node("text", { class: "n", x: xs(1) + 6, y: cy - 1 }, `n = ${row.n}`),
        );
        marks += 1;
      }
      if (Number.isFinite(row.estimate)) {
        g.append(marker("diamond", xs(row.estimate), cy + 7, 4.5, {
          class: "mark estimate", fill: "none", stroke: OKABE_ITO.vermillion, "stroke-width": 2,
        }));
        const note = row.estimateNote ? `; ${row.estimateNote}` : "";
        g.lastChild.append(title(`estimate ${formatNumber(row.estimate)} from confidence (ATC), not measured; ` +
          `${row.estimateN} predictions${note}`));
        marks += 1;
      }
      svg.append(g);
    });
    return finish(svg, marks);
  }

  /** Bounds of the points' x and y, padded by 5% (a single point gets a unit box). */
  function extent(points) {
    const xs = points.map((p) => p.x);
    const ys = points.map((p) => p.y);
    const pad = (lo, hi) => {
      const d = (hi - lo) * 0.05 || 0.5;
      return [lo - d, hi + d];
    };
    return { x: pad(Math.min(...xs), Math.max(...xs)), y: pad(Math.min(...ys), Math.max(...ys)) };
  }

  let clipCount = 0;

  /**
   * Points in the ``domain`` ({x: [lo, hi], y: [lo, hi]}; null: all of them), styled by ``styleOf(point)``
   * ({colour, shape, ring}); ringed points come last, on top. Hovering calls ``onHover(index, event)``
   * (index null when off a point), a click on a point ``onPick(index)``; the wheel, a dragged box and a
   * double click call ``onZoom(domain)`` (null: reset).
   */
  function scatter({ points, domain, styleOf, label, onHover, onPick, onZoom, width = 760, height = 500 }) {
    const view = domain || extent(points);
    const { svg, area, xs, ys } = frame({
      x: view.x, y: view.y, width, height, xLabel: "component 1", yLabel: "component 2", label,
    });
    const clipId = `clip-${(clipCount += 1)}`;
    svg.append(node("clipPath", { id: clipId },
      node("rect", { x: area.left, y: area.top, width: area.right - area.left, height: area.bottom - area.top })));
    const plain = node("g", { "clip-path": `url(#${clipId})` });
    const ringed = node("g", { "clip-path": `url(#${clipId})` });
    let marks = 0;
    points.forEach((p, i) => {
      if (p.x < view.x[0] || p.x > view.x[1] || p.y < view.y[0] || p.y > view.y[1]) return;
      const style = styleOf(p);
      const attrs = style.ring
        ? { class: "mark linked", fill: style.colour, stroke: "#000000", "stroke-width": 1.2, "data-index": i }
        : { class: "mark", fill: style.colour, "data-index": i };
      (style.ring ? ringed : plain).append(marker(style.shape, xs(p.x), ys(p.y), style.ring ? 4.5 : 3, attrs));
      marks += 1;
    });
    const box = node("rect", { class: "zoom-box", visibility: "hidden" });
    svg.append(plain, ringed, box);
    interact(svg, { area, xs, ys, box, view, onHover, onPick, onZoom });
    return finish(svg, marks);
  }

  function interact(svg, { area, xs, ys, box, view, onHover, onPick, onZoom }) {
    let drag = null;
    const local = (event) => new DOMPoint(event.clientX, event.clientY).matrixTransform(svg.getScreenCTM().inverse());
    const inside = (q) => q.x >= area.left && q.x <= area.right && q.y >= area.top && q.y <= area.bottom;
    const indexOf = (event) => (event.target.dataset && event.target.dataset.index !== undefined
      ? Number(event.target.dataset.index) : null);
    const clamp = (q) => ({
      x: Math.min(area.right, Math.max(area.left, q.x)), y: Math.min(area.bottom, Math.max(area.top, q.y)),
    });
    svg.addEventListener("mousedown", (event) => {
      const q = local(event);
      if (event.button === 0 && inside(q)) {
        drag = { start: q, end: q };
        event.preventDefault();
      }
    });
    svg.addEventListener("mousemove", (event) => {
      if (!drag) {
        onHover(indexOf(event), event);
        return;
      }
      drag.end = clamp(local(event));
      const [x0, x1] = [drag.start.x, drag.end.x].sort((a, b) => a - b);
      const [y0, y1] = [drag.start.y, drag.end.y].sort((a, b) => a - b);
      for (const [name, value] of Object.entries({ x: x0, y: y0, width: x1 - x0, height: y1 - y0 })) {
        box.setAttribute(name, String(value));
      }
      box.setAttribute("visibility", "visible");
    });
    svg.addEventListener("mouseup", (event) => {
      if (!drag) return;
      const { start, end } = drag;
      drag = null;
      box.setAttribute("visibility", "hidden");
      if (Math.abs(end.x - start.x) > 5 && Math.abs(end.y - start.y) > 5) {
        const x = [xs.invert(start.x), xs.invert(end.x)].sort((a, b) => a - b);
        const y = [ys.invert(start.y), ys.invert(end.y)].sort((a, b) => a - b);
        onZoom({ x, y });
      } else if (indexOf(event) !== null) {
        onPick(indexOf(event));
      }
    });
    svg.addEventListener("mouseleave", () => {
      drag = null;
      box.setAttribute("visibility", "hidden");
      onHover(null, null);
    });
    svg.addEventListener("dblclick", () => onZoom(null));
    svg.addEventListener("wheel", (event) => {
      const q = local(event);
      if (!inside(q)) return;
      event.preventDefault();
      const factor = event.deltaY > 0 ? 1.25 : 0.8;
      const cx = xs.invert(q.x);
      const cy = ys.invert(q.y);
      onZoom({
        x: view.x.map((v) => cx + (v - cx) * factor),
        y: view.y.map((v) => cy + (v - cy) * factor),
      });
    }, { passive: false });
  }

  /** A small legend swatch: the marker of a category in an inline <svg>. */
  function swatch(style) {
    const svg = node("svg", { width: 14, height: 14, viewBox: "0 0 14 14", "aria-hidden": "true", class: "swatch" });
    svg.append(marker(style.shape, 7, 7, 4.5, { fill: style.colour, stroke: style.ring ? "#000000" : null }));
    return svg;
  }

  window.VaiCharts = {
    OKABE_ITO, category, node, title, scale, ticks, frame, finish, marker, formatNumber, clockTime,
    histogram, timeline, reliability, intervals, scatter, extent, swatch,
  };
})();
