// The dashboard's charts: hand-written SVG, no library, no CDN.
// Figures come from GET /v1/metrics/dashboard (the session cookie authenticates the fetch). Each chart's
// plotted data is also written to its figure's `data-series` attribute, and the whole response to
// `window.hitlDashboard`, so that what is drawn can be checked against the store.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = ["#2f6fdf", "#e08a1e", "#2b8a3e", "#8e44ad", "#c8372d", "#16a2b8", "#7f8c8d", "#b7950b"];
  const H = 240;
  let W = 640; // set per chart from its figure's width, so that text keeps its size
  const M = { top: 14, right: 16, bottom: 46, left: 48 };

  function el(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function html(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  const pct = (v) => (v === null || v === undefined ? "n/a" : (100 * v).toFixed(1) + "%");
  const num = (v, digits) => (v === null || v === undefined ? "n/a" : Number(v).toFixed(digits));
  const duration = (s) => {
    if (s === null || s === undefined) return "n/a";
    if (s < 120) return s.toFixed(0) + " s";
    if (s < 7200) return (s / 60).toFixed(1) + " min";
    if (s < 172800) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(1) + " d";
  };
  const shortDate = (iso) => iso.replace("T", " ").slice(0, 16);
  const shortVersion = (v) => v.slice(v.lastIndexOf(":") + 1); // "<registered model>:v3" -> "v3"

  function frame(figure, series, label) {
    figure.replaceChildren();
    W = Math.max(360, Math.round(figure.clientWidth || 640));
    figure.setAttribute("data-series", JSON.stringify(series));
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
    figure.appendChild(svg);
    return svg;
  }

  function none(figure, message) {
    figure.replaceChildren(html("div", { class: "none" }, message));
    figure.setAttribute("data-series", "null");
  }

  function yAxis(svg, yMax, format) {
    const plotH = H - M.top - M.bottom;
    for (let i = 0; i <= 4; i++) {
      const v = (yMax * i) / 4;
      const y = M.top + plotH - (plotH * i) / 4;
      svg.appendChild(el("line", { x1: M.left, x2: W - M.right, y1: y, y2: y, stroke: "#e6e8ec" }));
      svg.appendChild(el("text", { x: M.left - 6, y: y + 4, "text-anchor": "end", "font-size": 11, fill: "#5d6675" },
        format(v)));
    }
    return (v) => M.top + plotH - (plotH * Math.min(v, yMax)) / yMax;
  }

  function xLabels(svg, labels, xOf) {
    const plotW = W - M.left - M.right;
    const step = Math.max(1, Math.ceil(labels.length / Math.max(2, Math.floor(plotW / 90))));
    const maxChars = Math.max(4, Math.floor((plotW / labels.length) * step / 6.5));
    labels.forEach((label, i) => {
      if (i % step !== 0) return;
      const text = label.length > maxChars ? label.slice(0, maxChars - 1) + "\u2026" : label;
      svg.appendChild(el("text", { x: xOf(i), y: H - M.bottom + 16, "text-anchor": "middle", "font-size": 11,
        fill: "#5d6675" }, text));
    });
  }

  function legend(svg, names) {
    let x = M.left;
    names.forEach((name, i) => {
      svg.appendChild(el("rect", { x, y: H - 16, width: 10, height: 10, fill: COLORS[i % COLORS.length] }));
      svg.appendChild(el("text", { x: x + 14, y: H - 7, "font-size": 11, fill: "#1d2330" }, name));
      x += 24 + name.length * 6.5;
    });
  }

  // Lines over categorical x positions; `series` maps a name to values in [0, yMax].
  function lineChart(figure, labels, series, data, label, yMax) {
    const svg = frame(figure, data, label);
    const y = yAxis(svg, yMax, pct);
    const plotW = W - M.left - M.right;
    const xOf = (i) => M.left + (labels.length === 1 ? plotW / 2 : (plotW * i) / (labels.length - 1));
    xLabels(svg, labels, xOf);
    Object.entries(series).forEach(([name, values], s) => {
      const color = COLORS[s % COLORS.length];
      const points = values.map((v, i) => `${xOf(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
      svg.appendChild(el("polyline", { points, fill: "none", stroke: color, "stroke-width": s === 0 ? 2.5 : 1.5 }));
      values.forEach((v, i) => {
        const dot = el("circle", { cx: xOf(i), cy: y(v), r: s === 0 ? 3.5 : 2.5, fill: color });
        dot.appendChild(el("title", {}, `${name} ${labels[i]}: ${pct(v)}`));
        svg.appendChild(dot);
      });
    });
    legend(svg, Object.keys(series));
  }

  // Vertical bars; `series` is [{name, values}], stacked or side by side; optional reference line.
  function barChart(figure, labels, series, data, label, opts) {
    const svg = frame(figure, data, label);
    const format = opts.format || ((v) => num(v, 0));
    const totals = labels.map((_, i) => series.reduce((acc, s) => acc + (opts.stacked ? s.values[i] : 0), 0));
    const peak = Math.max(1e-9, ...(opts.stacked ? totals : series.flatMap((s) => s.values)), opts.ref || 0);
    const yMax = opts.yMax || (opts.format ? peak : Math.max(1, Math.ceil(peak * 1.1)));
    const y = yAxis(svg, yMax, format);
    const plotW = W - M.left - M.right;
    const band = plotW / Math.max(1, labels.length);
    const xOf = (i) => M.left + band * (i + 0.5);
    xLabels(svg, labels, xOf);
    const barW = Math.min(48, band * 0.7) / (opts.stacked ? 1 : series.length);
    labels.forEach((name, i) => {
      let base = 0;
      series.forEach((s, k) => {
        const v = s.values[i];
        const left = opts.stacked ? xOf(i) - barW / 2 : xOf(i) - (barW * series.length) / 2 + k * barW;
        const top = y(base + v);
        const rect = el("rect", { x: left, y: top, width: barW - 1, height: Math.max(0, y(base) - top),
          fill: (opts.colorOf && opts.colorOf(i, k)) || COLORS[k % COLORS.length] });
        rect.appendChild(el("title", {}, `${name} ${s.name}: ${format(v)}`));
        svg.appendChild(rect);
        if (opts.stacked) base += v;
      });
      if (opts.errors) {
        const [low, high] = opts.errors[i];
        svg.appendChild(el("line", { x1: xOf(i), x2: xOf(i), y1: y(low), y2: y(high), stroke: "#1d2330",
          "stroke-width": 1.5 }));
        for (const v of [low, high]) {
          svg.appendChild(el("line", { x1: xOf(i) - 6, x2: xOf(i) + 6, y1: y(v), y2: y(v), stroke: "#1d2330" }));
        }
      }
    });
    if (opts.ref !== undefined) {
      svg.appendChild(el("line", { x1: M.left, x2: W - M.right, y1: y(opts.ref), y2: y(opts.ref), stroke: "#c8372d",
        "stroke-dasharray": "5 4", "stroke-width": 1.5 }));
      svg.appendChild(el("text", { x: W - M.right, y: y(opts.ref) - 4, "text-anchor": "end", "font-size": 11,
        fill: "#c8372d" }, opts.refLabel || ""));
    }
    legend(svg, series.map((s) => s.name));
  }

  function table(node, headers, rows, rowClass) {
    node.replaceChildren();
    const head = html("tr");
    headers.forEach(([name, numeric]) => head.appendChild(html("th", numeric ? { class: "num" } : {}, name)));
    node.appendChild(head);
    rows.forEach((cells, r) => {
      const tr = html("tr", rowClass ? { class: rowClass(r) } : {});
      cells.forEach((cell, i) => {
        const td = html("td", headers[i][1] ? { class: "num" } : {});
        if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell;
        tr.appendChild(td);
      });
      node.appendChild(tr);
    });
  }

  function tile(parent, id, labelText, value, sub) {
    const box = html("div", { class: "tile", id });
    box.appendChild(html("div", { class: "label" }, labelText));
    box.appendChild(html("div", { class: "value" }, value));
    box.appendChild(html("div", { class: "sub" }, sub || ""));
    parent.appendChild(box);
  }

  function render(d) {
    const $ = (id) => document.getElementById(id);
    const currency = document.body.dataset.currency;

    const empty = $("empty-states");
    empty.replaceChildren();
    d.empty.forEach((e) => empty.appendChild(html("p", { class: "empty", "data-key": e.key }, e.message)));

    const tiles = $("tiles");
    tiles.replaceChildren();
    const esc = d.escalation;
    const sc = d.spot_checks;
    tile(tiles, "tile-escalation", "Escalation rate", pct(esc.rate), `${esc.escalated} of ${esc.predicted} predictions`);
    tile(tiles, "tile-accuracy", "Auto-accept accuracy", pct(sc.accuracy),
      sc.interval ? `${pct(sc.interval.low)}-${pct(sc.interval.high)} vs target ${pct(sc.target)}`
        : `no reviewed spot check yet (target ${pct(sc.target)})`);
    tile(tiles, "tile-queue", "Open review queue", String(d.queue.open), `oldest ${duration(d.queue.oldest_age_s)}`);
    tile(tiles, "tile-handling", "Median handling time", duration(d.reviews.median_lead_time_s),
      `p90 ${duration(d.reviews.p90_lead_time_s)}; ${d.reviews.corrected} corrected of ${d.reviews.reviews}`);
    tile(tiles, "tile-throughput", "Throughput", `${num(d.throughput.predictions_per_hour, 1)} items/h`,
      `${num(d.throughput.reviews_per_hour, 1)} reviews/h over ${duration(d.throughput.window_s)}`);
    tile(tiles, "tile-cost", "Cost per item", d.cost.cost_per_item === null ? "n/a"
      : `${num(d.cost.cost_per_item, 4)} ${currency}`,
      d.cost.projected_cost_per_item === null ? "" : `${num(d.cost.projected_cost_per_item, 4)} at today's rate`);

    // Headline: escalation rate over time, overall and by reason (escalations for a reason / predictions).
    const reasons = Object.keys(esc.by_reason).sort();
    if (esc.over_time.length) {
      const labels = esc.over_time.map((p) => shortDate(p.window_start));
      const series = { all: esc.over_time.map((p) => p.rate) };
      reasons.forEach((r) => { series[r] = esc.over_time.map((p) => (p.by_reason[r] || 0) / p.predicted); });
      const data = { window_start: esc.over_time.map((p) => p.window_start), predicted: esc.over_time.map((p) => p.predicted),
        escalated: esc.over_time.map((p) => p.escalated), rate: series };
      const peak = Math.max(...Object.values(series).flat());
      lineChart($("chart-escalation-time"), labels, series, data, "escalation rate over time",
        Math.min(1, Math.max(0.1, Math.ceil(peak * 10) / 10)));
    } else {
      none($("chart-escalation-time"), "No predictions yet: the escalation rate appears with the first one.");
    }

    if (esc.by_version.length) {
      const versions = esc.by_version.map((v) => v.model_version);
      const data = { model_version: versions, predicted: esc.by_version.map((v) => v.predicted),
        escalated: esc.by_version.map((v) => v.escalated), rate: esc.by_version.map((v) => v.rate),
        by_reason: Object.fromEntries(reasons.map((r) => [r, esc.by_version.map((v) => v.by_reason[r] || 0)])) };
      barChart($("chart-escalation-version"), versions.map(shortVersion), [{ name: "escalation rate", values: data.rate }], data,
        "escalation rate per model version", { format: pct, yMax: 1 });
      table($("table-escalation-version"), [["version"], ["predicted", true], ["escalated", true], ["rate", true],
        ...reasons.map((r) => [r, true])],
      esc.by_version.map((v) => [shortVersion(v.model_version), v.predicted, v.escalated, pct(v.rate),
        ...reasons.map((r) => v.by_reason[r] || 0)]));
    } else {
      none($("chart-escalation-version"), "No model version has predicted yet.");
      $("table-escalation-version").replaceChildren();
    }

    if (sc.reviewed) {
      const groups = [{ model_version: "all", ...sc }, ...sc.by_version];
      const data = { group: groups.map((g) => g.model_version), reviewed: groups.map((g) => g.reviewed),
        correct: groups.map((g) => g.correct), accuracy: groups.map((g) => g.accuracy),
        low: groups.map((g) => g.interval.low), high: groups.map((g) => g.interval.high), target: sc.target };
      barChart($("chart-spot-checks"), data.group.map(shortVersion), [{ name: "accuracy of reviewed spot checks", values: data.accuracy }],
        data, "spot-check accuracy", { format: pct, yMax: 1, ref: sc.target, refLabel: `target ${pct(sc.target)}`,
          errors: groups.map((g) => [g.interval.low, g.interval.high]) });
      const verdict = { meets_target: "meets the target", below_target: "is BELOW the target",
        inconclusive: "is not yet distinguishable from the target" }[sc.status];
      $("spot-check-note").textContent = `${sc.correct} of ${sc.reviewed} reviewed spot checks confirmed `
        + `(${sc.sampled} sampled); ${Math.round(sc.interval.confidence * 100)}% interval `
        + `${pct(sc.interval.low)}-${pct(sc.interval.high)}: the auto-accept accuracy ${verdict}. `
        + `Audit backlog: ${sc.audit_backlog} of ${sc.audits} audits not reviewed yet. Guarantee in force: ${sc.guarantee}.`;
    } else {
      none($("chart-spot-checks"), sc.sampled
        ? `${sc.sampled} spot checks sampled, none reviewed yet.`
        : "No spot checks yet: routed items are drawn into the audit sample (learner.audit.rate) and come first in Label Studio's queue.");
      $("spot-check-note").textContent = `Audit backlog: ${sc.audit_backlog} of ${sc.audits} audits not reviewed yet. Guarantee in force: ${sc.guarantee}.`;
    }

    const days = d.reviews.per_day;
    if (days.length) {
      const data = { day: days.map((x) => x.day), approved: days.map((x) => x.approved),
        corrected: days.map((x) => x.corrected) };
      barChart($("chart-reviews"), data.day, [{ name: "approved", values: data.approved },
        { name: "corrected", values: data.corrected }], data, "reviews per day", { stacked: true });
    } else {
      none($("chart-reviews"), "No corrections yet: reviews appear once reviewers submit in Label Studio.");
    }

    const buckets = Object.keys(d.queue.by_age);
    if (d.queue.open) {
      const data = { bucket: buckets, open: buckets.map((b) => d.queue.by_age[b]) };
      barChart($("chart-queue"), buckets, [{ name: "open escalations", values: data.open }], data,
        "open review queue by age", {});
    } else {
      none($("chart-queue"), "The review queue is empty.");
    }

    const segs = d.segments.segments.filter((s) => s.reviewed > 0);
    if (segs.length) {
      const names = segs.map((s) => `${s.dimension}: ${s.segment}`);
      const data = { segment: names, reviewed: segs.map((s) => s.reviewed), corrected: segs.map((s) => s.corrected),
        correction_rate: segs.map((s) => s.correction_rate), escalation_rate: segs.map((s) => s.escalation_rate),
        flagged: names.filter((_, i) => segs[i].flagged) };
      barChart($("chart-segments"), segs.map((s) => s.segment), [{ name: "correction rate", values: data.correction_rate },
        { name: "escalation rate", values: data.escalation_rate }], data, "segments",
      { format: pct, yMax: 1, colorOf: (i, k) => (k === 0 && segs[i].flagged ? "#c8372d" : null) });
      const flagged = data.flagged;
      $("segments-note").textContent = flagged.length
        ? `Flagged (correction rate differs from the rest, Fisher exact, Holm-adjusted p < ${d.segments.significance}): `
          + flagged.join("; ")
        : `No segment differs significantly from the rest (${d.segments.tested} tested, `
          + `at least ${d.segments.min_segment_size} reviewed items each).`;
    } else {
      none($("chart-segments"), "No reviewed items yet: per-segment correction rates need reviews.");
      $("segments-note").textContent = "";
    }
    table($("table-segments"), [["dimension"], ["segment"], ["items", true], ["escalation rate", true],
      ["reviewed", true], ["correction rate", true], ["rest", true], ["adj. p", true], ["flag"]],
    d.segments.segments.map((s) => [s.dimension, s.segment, s.items, pct(s.escalation_rate), s.reviewed,
      pct(s.correction_rate), pct(s.rest_correction_rate), s.p_adjusted === null ? "not tested" : Number(s.p_adjusted).toPrecision(4),
      s.flagged ? `${s.direction} error rate` : ""]),
    (r) => (d.segments.segments[r].flagged ? "flagged" : ""));

    if (d.timeline.length) {
      table($("table-timeline"), [["when"], ["event"], ["version"], ["reason"], ["MLflow"]],
        d.timeline.map((e) => {
          const badge = html("span", { class: `badge ${e.kind}` }, e.kind.replace("_", " "));
          const link = e.mlflow_url ? html("a", { href: e.mlflow_url, rel: "noopener" },
            e.mlflow_run_id ? "run" : "version") : "";
          return [shortDate(e.at), badge, e.model_version, e.reason || "", link];
        }));
    } else {
      $("table-timeline").replaceChildren(html("tr", {}, "No model version yet."));
    }
  }

  async function load() {
    const status = document.getElementById("status");
    try {
      const response = await fetch("/v1/metrics/dashboard", { credentials: "same-origin",
        headers: { Accept: "application/json" } });
      if (response.status === 401) { window.location.assign("/login"); return; }
      if (!response.ok) throw new Error(`the metrics request failed (${response.status})`);
      const data = await response.json();
      window.hitlDashboard = data;
      render(data);
      status.textContent = `Figures as of ${shortDate(data.generated_at)} UTC.`;
      document.body.dataset.state = "ready";
    } catch (error) {
      status.textContent = String(error.message || error);
      status.className = "error";
      document.body.dataset.state = "error";
    }
  }

  document.addEventListener("DOMContentLoaded", load);
})();
