/* rag-llm dashboard: charts each provider's pool from the server-sent frames.
 *
 * Frames carry cumulative counters; rates are computed here from consecutive frames.
 * window.ragDashboard exposes what was received, for tests and the browser console.
 */
(function () {
  "use strict";

  var MAX_POINTS = 180;
  var CHART_HEIGHT = 130;
  var STALE_AFTER_MS = 3500;
  var C = {
    blue: "#2563eb", slate: "#94a3b8", teal: "#0d9488", amber: "#d97706",
    red: "#dc2626", violet: "#7c3aed", muted: "#6b7482", grid: "#eef0f3"
  };

  var main = document.getElementById("providers");
  var statusEl = document.getElementById("status");
  var statusText = document.getElementById("status-text");
  var updatedEl = document.getElementById("updated");
  var state = {
    framesReceived: 0, lastFrame: null, status: "connecting", points: {}, latest: {}
  };
  window.ragDashboard = state;

  var providers = new Map();
  var lastMessageAt = 0;

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function num(v, digits) {
    if (v === null || v === undefined || !isFinite(v)) return "–";
    if (digits === undefined) digits = Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 10 ? 1 : 2;
    return v.toLocaleString(undefined, {minimumFractionDigits: digits, maximumFractionDigits: digits});
  }

  // A transport that cannot see its connections reports a model's estimate: say so.
  function est(c) {
    return c.connections_estimated ? " (estimated)" : "";
  }

  function ms(seconds) {
    return seconds === null || seconds === undefined ? null : seconds * 1000;
  }

  function msText(v) {
    if (v === null || v === undefined) return "–";
    return v >= 1000 ? num(v / 1000) + " s" : num(v) + " ms";
  }

  function ago(seconds) {
    if (seconds < 60) return Math.max(0, Math.round(seconds)) + " s ago";
    if (seconds < 3600) return Math.round(seconds / 60) + " min ago";
    return Math.round(seconds / 3600) + " h ago";
  }

  /* What each panel plots and shows: series are [label, colour, scale]. */
  var PANELS = [
    {
      id: "connections", title: "Connections", fill: true,
      series: [["active", C.blue], ["idle", C.slate]],
      values: function (p) { return [p.active, p.idle]; },
      show: function (p, c, prov) {
        return {
          value: [String(p.active), " active · " + p.idle + " idle" + est(c)],
          sub: "max " + prov.max_connections + " · " + c.connections_opened + " opened · " +
               c.connections_closed + " closed" + est(c)
        };
      }
    },
    {
      id: "requests", title: "Requests / s", fill: true,
      series: [["requests/s", C.teal]],
      values: function (p) { return [p.rps]; },
      show: function (p, c) {
        return {value: [num(p.rps), " /s"], sub: c.requests.toLocaleString() + " calls in all"};
      }
    },
    {
      id: "latency", title: "Latency", log: true,
      series: [["p50", C.blue], ["p95", C.amber], ["p99", C.red]],
      values: function (p) { return [p.p50, p.p95, p.p99]; },
      show: function (p, c) {
        var l = c.latency;
        return {
          value: [msText(ms(l.p50)), " p50"],
          sub: "p95 " + msText(ms(l.p95)) + " · p99 " + msText(ms(l.p99)) + " · last " +
               l.samples.toLocaleString() + " calls"
        };
      },
      axis: function (v) { return v >= 1000 ? num(v / 1000, 0) + " s" : num(v, v < 1 ? 1 : 0) + " ms"; }
    },
    {
      id: "reuse", title: "Reuse ratio",
      series: [["requests / connection", C.violet]],
      values: function (p) { return [p.reuse]; },
      show: function (p, c) {
        return {
          value: [num(c.reuse_ratio, 1), " calls / connection"],
          sub: c.requests.toLocaleString() + " calls over " +
               c.connections_opened.toLocaleString() + " connections" + est(c)
        };
      }
    },
    {
      id: "wait", title: "Pool wait",
      series: [["mean wait", C.amber], ["waiting", C.red, "n"]],
      values: function (p) { return [p.waitMs, p.waiting]; },
      show: function (p) {
        return {value: [msText(p.waitMs), " mean"], sub: p.waiting + " waiting now",
                alert: p.waiting > 0};
      },
      axis: function (v) { return v === 0 ? "0" : num(v, v < 10 ? 1 : 0) + " ms"; }
    },
    {
      id: "errors", title: "Errors / s", fill: true,
      series: [["errors/s", C.red]],
      values: function (p) { return [p.eps]; },
      show: function (p, c) {
        var types = Object.keys(c.errors_by_type).map(function (k) {
          return k + " " + c.errors_by_type[k];
        });
        return {
          value: [num(p.eps), " /s"],
          sub: c.errors + " in all" + (types.length ? " (" + types.join(", ") + ")" : "") +
               " · " + c.resent + " resent",
          alert: p.eps > 0
        };
      }
    }
  ];

  function point(c, prev, dt) {
    var has = prev !== null && dt > 0;
    function rate(key) { return has ? Math.max(0, c[key] - prev[key]) / dt : null; }
    var calls = has ? c.requests - prev.requests : 0;
    var waits = has ? c.pool_wait_count - prev.pool_wait_count : 0;
    // Percentiles cover the last calls, however old: plot them only while calls happen.
    var fresh = has ? calls > 0 : c.latency.samples > 0;
    return {
      active: c.active, idle: c.idle, waiting: c.waiting,
      rps: rate("requests"), eps: rate("errors"), reuse: c.reuse_ratio,
      p50: fresh ? ms(c.latency.p50) : null,
      p95: fresh ? ms(c.latency.p95) : null,
      p99: fresh ? ms(c.latency.p99) : null,
      waitMs: waits > 0 ? ms((c.pool_wait_sum - prev.pool_wait_sum) / waits) : null
    };
  }

  function decade(v) {
    var exponent = Math.log10(v);
    return Math.abs(exponent - Math.round(exponent)) < 1e-9 ? v : null;
  }

  function clock(self, splits) {
    return splits.map(function (t) {
      return new Date(t * 1000).toLocaleTimeString([], {hour12: false});
    });
  }

  function range(self, min, max) {
    return [0, max === null || !(max > 0) ? 1 : max * 1.15];
  }

  function makeChart(panel, node, data) {
    var series = [{}].concat(panel.series.map(function (s) {
      return {
        label: s[0], stroke: s[1], width: 1.6, scale: s[2] || "y", spanGaps: false,
        fill: panel.fill ? s[1] + "1f" : undefined, points: {show: false}
      };
    }));
    var axisStyle = {
      stroke: C.muted, font: "11px system-ui, sans-serif", ticks: {show: false},
      grid: {stroke: C.grid, width: 1}
    };
    var yAxis = Object.assign({}, axisStyle, {size: 50});
    if (panel.axis) {
      yAxis.values = function (u, vals) {
        return vals.map(function (v) { return v === null ? "" : panel.axis(v); });
      };
    }
    if (panel.log) {
      // A log axis labels and grids decades only; its minor ticks would crowd a small chart.
      var decades = function (u, splits) { return splits.map(decade); };
      yAxis.filter = decades;
      yAxis.grid = Object.assign({}, axisStyle.grid, {filter: decades});
    }
    var xAxis = Object.assign({}, axisStyle, {grid: {show: false}, space: 70, values: clock});
    var axes = [xAxis, yAxis];
    var scales = {x: {time: true}, y: panel.log ? {distr: 3, log: 10} : {range: range}};
    if (panel.series.some(function (s) { return s[2] === "n"; })) {
      axes.push(Object.assign({}, axisStyle, {scale: "n", side: 1, size: 30, grid: {show: false}}));
      scales.n = {range: function (self, min, max) { return [0, Math.max(4, (max || 0) + 1)]; }};
    }
    var chart = new uPlot({
      width: Math.max(node.clientWidth, 200), height: CHART_HEIGHT,
      series: series, axes: axes, scales: scales,
      legend: {show: false}, cursor: {show: false}
    }, data, node);
    new ResizeObserver(function () {
      chart.setSize({width: Math.max(node.clientWidth, 200), height: CHART_HEIGHT});
    }).observe(node);
    return chart;
  }

  function ClientView(provider, name, parent) {
    this.key = provider + "/" + name;
    this.prev = null;
    this.prevTime = null;
    this.t = [];
    this.root = el("section", "client");
    var head = el("div", "client-head");
    head.appendChild(el("h3", "", name));
    this.library = el("span", "muted");
    head.appendChild(this.library);
    this.root.appendChild(head);
    var grid = el("div", "panels");
    this.root.appendChild(grid);
    parent.appendChild(this.root);
    this.panels = PANELS.map(function (panel) {
      var box = el("div", "panel");
      box.dataset.panel = panel.id;
      var top = el("div", "panel-head");
      top.appendChild(el("span", "panel-title", panel.title));
      var legend = el("span", "legend");
      if (panel.series.length > 1) {
        panel.series.forEach(function (s) {
          var item = el("span");
          var swatch = el("i");
          swatch.style.background = s[1];
          item.appendChild(swatch);
          item.appendChild(document.createTextNode(s[0]));
          legend.appendChild(item);
        });
      }
      top.appendChild(legend);
      box.appendChild(top);
      var value = el("div", "value");
      var sub = el("div", "sub");
      var chartNode = el("div", "chart");
      box.appendChild(value);
      box.appendChild(sub);
      box.appendChild(chartNode);
      grid.appendChild(box);
      var columns = panel.series.map(function () { return []; });
      return {spec: panel, box: box, value: value, sub: sub, node: chartNode,
              columns: columns, chart: null};
    });
  }

  ClientView.prototype.update = function (c, prov, time) {
    this.library.textContent = c.library + (c.open ? "" : " · not open");
    var p = point(c, this.prev, this.prevTime === null ? 0 : time - this.prevTime);
    this.prev = c;
    this.prevTime = time;
    this.t.push(time);
    var trim = this.t.length > MAX_POINTS;
    if (trim) this.t.shift();
    var counts = {};
    var t = this.t;
    this.panels.forEach(function (view) {
      var values = view.spec.values(p);
      view.columns.forEach(function (column, i) {
        column.push(values[i] === undefined ? null : values[i]);
        if (trim) column.shift();
      });
      var data = [t].concat(view.columns);
      if (view.chart === null) view.chart = makeChart(view.spec, view.node, data);
      else view.chart.setData(data);
      var shown = view.spec.show(p, c, prov);
      view.value.textContent = shown.value[0];
      view.value.appendChild(el("small", "", shown.value[1]));
      view.sub.textContent = shown.sub;
      view.box.classList.toggle("alert", Boolean(shown.alert));
      counts[view.spec.id] = view.columns[0].filter(function (v) { return v !== null; }).length;
    });
    state.points[this.key] = counts;
    state.latest[this.key] = p;
  };

  function ProviderView(prov) {
    this.name = prov.provider;
    this.clients = new Map();
    this.root = el("article", "provider");
    this.root.dataset.provider = prov.provider;
    var head = el("header", "provider-head");
    head.appendChild(el("h2", "", prov.provider));
    this.transport = el("span", "badge");
    this.state = el("span", "badge");
    this.limits = el("span", "limits");
    head.appendChild(this.transport);
    head.appendChild(this.state);
    head.appendChild(this.limits);
    this.root.appendChild(head);
    this.error = el("div", "last-error");
    this.error.hidden = true;
    this.root.appendChild(this.error);
    this.idle = el("div", "no-calls", "No calls yet.");
    this.root.appendChild(this.idle);
    main.appendChild(this.root);
  }

  function limit(label, value) {
    var span = el("span");
    span.appendChild(document.createTextNode(label + " "));
    span.appendChild(el("b", "", value));
    return span;
  }

  ProviderView.prototype.update = function (prov, time) {
    var self = this;
    this.transport.textContent = prov.transport;
    this.state.textContent = prov.state;
    this.state.className = "badge state-" + prov.state;
    this.limits.replaceChildren(
      limit("max_connections", String(prov.max_connections)),
      document.createTextNode(" · "),
      limit("max_keepalive_connections", String(prov.max_keepalive_connections)),
      document.createTextNode(" · "),
      limit("keepalive_expiry", num(prov.keepalive_expiry, 0) + " s"),
      document.createTextNode(prov.pools > 1 ? " · " + prov.pools + " pools" : "")
    );
    this.error.hidden = !prov.last_error;
    if (prov.last_error) {
      this.error.textContent = "Last error, " + ago(time - prov.last_error_at) + ": " +
                               prov.last_error;
    }
    prov.clients.forEach(function (c) {
      var view = self.clients.get(c.client);
      if (!view && (c.open || c.requests > 0 || c.connections_opened > 0)) {
        view = new ClientView(prov.provider, c.client, self.root);
        self.clients.set(c.client, view);
      }
      if (view) view.update(c, prov, time);
    });
    this.idle.hidden = this.clients.size > 0;
  };

  /* The service's own work: embedder calls, queries and the store, whatever the embedder. */
  function WorkView() {
    this.prev = null;
    this.prevTime = null;
    this.root = el("article", "provider work");
    this.root.dataset.work = "service";
    var head = el("header", "provider-head");
    head.appendChild(el("h2", "", "This service"));
    head.appendChild(el("span", "limits", "embedder calls, queries and the store"));
    this.root.appendChild(head);
    var grid = el("div", "panels");
    var body = el("section", "client");
    body.appendChild(grid);
    this.root.appendChild(body);
    this.tiles = {};
    var self = this;
    ["embedding", "queries", "store"].forEach(function (id) {
      var box = el("div", "panel");
      box.dataset.panel = id;
      var top = el("div", "panel-head");
      top.appendChild(el("span", "panel-title",
        {embedding: "Embedding", queries: "Queries", store: "Store"}[id]));
      box.appendChild(top);
      var value = el("div", "value");
      var subline = el("div", "sub");
      box.appendChild(value);
      box.appendChild(subline);
      grid.appendChild(box);
      self.tiles[id] = {value: value, sub: subline};
    });
    main.insertBefore(this.root, main.firstChild);
  }

  function mean(sum, count) { return count > 0 ? sum / count : null; }

  function show(tile, value, unit, subline) {
    tile.value.textContent = value;
    tile.value.appendChild(el("small", "", unit));
    tile.sub.textContent = subline;
  }

  WorkView.prototype.update = function (work, time) {
    var prev = this.prev;
    var dt = prev === null ? 0 : time - this.prevTime;
    var calls = 0, texts = 0, seconds = 0, errors = 0;
    var names = work.embedders.map(function (e) {
      calls += e.calls; texts += e.texts; seconds += e.seconds; errors += e.errors;
      return e.embedder + " (" + e.where + ")";
    });
    var q = work.queries;
    var now = {calls: calls, texts: texts, seconds: seconds, queries: q.count,
               retrieval: q.retrieval_seconds, answer: q.answer_seconds};
    var d = {};
    Object.keys(now).forEach(function (k) { d[k] = prev === null ? null : now[k] - prev[k]; });
    var fresh = prev !== null && d.calls > 0;
    var point = {
      embedRate: dt > 0 ? d.calls / dt : null,
      textsPerCall: fresh ? d.texts / d.calls : mean(texts, calls),
      embedMs: ms(fresh ? d.seconds / d.calls : mean(seconds, calls)),
      queryRate: dt > 0 ? d.queries / dt : null,
      retrievalMs: ms(prev !== null && d.queries > 0 ? d.retrieval / d.queries
                                                     : mean(q.retrieval_seconds, q.count)),
      answerMs: ms(prev !== null && d.queries > 0 ? d.answer / d.queries
                                                  : mean(q.answer_seconds, q.count)),
      calls: calls, queries: q.count, documents: work.documents, chunks: work.chunks
    };
    show(this.tiles.embedding, num(point.embedRate), " calls/s",
         (names.join(", ") || "no embedder calls yet") + " · " + calls.toLocaleString() +
         " calls · " + num(point.textsPerCall, 1) + " texts/call · " +
         msText(point.embedMs) + " mean" + (errors ? " · " + errors + " failed" : ""));
    var modes = Object.keys(q.by_mode).map(function (m) { return q.by_mode[m] + " " + m; });
    show(this.tiles.queries, num(point.queryRate), " /s",
         q.count.toLocaleString() + " answered" + (modes.length ? " (" + modes.join(", ") + ")" : "") +
         " · retrieval " + msText(point.retrievalMs) + " · answer " + msText(point.answerMs));
    show(this.tiles.store, work.documents === null ? "–" : work.documents.toLocaleString(),
         " documents", (work.chunks === null ? "–" : work.chunks.toLocaleString()) + " chunks");
    this.prev = now;
    this.prevTime = time;
    state.work = point;
  };

  var workView = null;

  function render(frame) {
    if (frame.work) {
      if (workView === null) workView = new WorkView();
      workView.update(frame.work, frame.time);
    }
    var seen = new Set();
    var empty = document.getElementById("empty");
    frame.providers.forEach(function (prov) {
      seen.add(prov.provider);
      var view = providers.get(prov.provider);
      if (!view) {
        view = new ProviderView(prov);
        providers.set(prov.provider, view);
      }
      view.update(prov, frame.time);
    });
    providers.forEach(function (view, name) {
      if (!seen.has(name)) {
        view.root.remove();
        providers.delete(name);
      }
    });
    empty.hidden = providers.size > 0;
    empty.textContent = "No connection pools in this process yet: pooled providers appear " +
                        "here once they are created" +
                        (workView === null ? "." : "; the embedder above runs in process.");
  }

  function setStatus(name, text) {
    state.status = name;
    statusEl.dataset.state = name;
    statusText.textContent = text;
  }

  function connect() {
    var source = new EventSource(main.dataset.events);
    source.onmessage = function (event) {
      var frame = JSON.parse(event.data);
      lastMessageAt = Date.now();
      state.framesReceived += 1;
      state.lastFrame = frame;
      render(frame);
      setStatus("live", "live");
      updatedEl.textContent = "updated " + new Date(frame.time * 1000).toLocaleTimeString() +
        (frame.workers ? " \u00b7 " + frame.workers.count + " workers, summed" : "");
    };
    source.onerror = function () {
      // A stream that ends is reopened by the browser; one that failed for good is not.
      if (source.readyState === EventSource.CLOSED) {
        setStatus("down", "disconnected, retrying");
        setTimeout(connect, 2000);
      }
    };
  }

  setInterval(function () {
    if (state.framesReceived > 0 && Date.now() - lastMessageAt > STALE_AFTER_MS &&
        state.status === "live") {
      setStatus("stale", "no data, reconnecting");
    }
  }, 1000);

  connect();
})();
