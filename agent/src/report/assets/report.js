// perf-agent HTML report: draws the page from the JSON block
// `perf-agent-data` (written by agent/src/report/html/). Every text comes
// from the data through textContent / setAttribute, never parsed as markup, so a
// phase name or a path can hold any character. Numbers shown in tables keep
// the exact value in `data-value` (the BMF file's), the text rounds it to
// 3 significant digits.
(function () {
  'use strict';
  var data = JSON.parse(document.getElementById('perf-agent-data').textContent);
  var root = document.getElementById('report');
  var SVG = 'http://www.w3.org/2000/svg';

  function build(e, attrs, text) {
    Object.keys(attrs || {}).forEach(function (k) {
      if (attrs[k] !== undefined && attrs[k] !== null) e.setAttribute(k, String(attrs[k]));
    });
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function el(tag, attrs, text) { return build(document.createElement(tag), attrs, text); }
  function sv(tag, attrs, text) { return build(document.createElementNS(SVG, tag), attrs, text); }
  function add(parent) {
    for (var i = 1; i < arguments.length; i++) parent.appendChild(arguments[i]);
    return parent;
  }

  // ---- numbers as people read them (3 significant digits) ----
  function sig3(v) {
    var a = Math.abs(v);
    return v.toFixed(a >= 100 ? 0 : a >= 10 ? 1 : 2);
  }
  function ns(v) {
    var a = Math.abs(v);
    if (a < 1e3) return sig3(v) + ' ns';
    if (a < 1e6) return sig3(v / 1e3) + ' µs';
    if (a < 1e9) return sig3(v / 1e6) + ' ms';
    return sig3(v / 1e9) + ' s';
  }
  function bytes(v) {
    var units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'], x = v, u = 0;
    while (Math.abs(x) >= 1024 && u < units.length - 1) { x /= 1024; u++; }
    return u === 0 ? Math.round(x) + ' B' : sig3(x) + ' ' + units[u];
  }
  function fmt(measure, v) {
    if (v === null || v === undefined || !isFinite(v)) return '–';
    switch (measure) {
      case 'latency': case 'cpu-time': return ns(v);
      case 'memory': case 'file-size': return bytes(v);
      case 'throughput': return sig3(v) + '/s';
      case 'cpu-percent': case 'percent': return sig3(v) + ' %';
      default: return Number.isInteger(v) ? String(v) : sig3(v);
    }
  }
  function seconds(v) { return sig3(v) + ' s'; }

  // ---- tables ----
  function bmfValue(bmf, id, measure) {
    var b = bmf && bmf[id];
    return b ? b[measure] : undefined;
  }
  // A cell showing BMF metric `id` in `measure`; "–" when absent.
  function metricCell(bmf, id, measure, cls) {
    var m = bmfValue(bmf, id, measure);
    var td = el('td', { 'data-metric': id, 'data-measure': measure, 'class': cls });
    if (!m) {
      td.textContent = '–';
      td.className = ((cls || '') + ' missing').trim();
      return td;
    }
    td.setAttribute('data-value', String(m.value));
    td.textContent = fmt(measure, m.value);
    if (m.lower_value !== undefined && m.upper_value !== undefined) {
      add(td, el('small', {}, fmt(measure, m.lower_value) + '–' + fmt(measure, m.upper_value)));
    }
    return td;
  }
  function headRow(cells) {
    var tr = el('tr');
    cells.forEach(function (c) { add(tr, el('th', { 'class': c.cls, title: c.title }, c.text)); });
    return tr;
  }

  var SERVER_COLUMNS = [
    ['requests', 'requests/count', 'count'],
    ['req/s', 'throughput/rps', 'throughput'],
    ['p50', 'latency/p50', 'latency'],
    ['p95', 'latency/p95', 'latency'],
    ['p99', 'latency/p99', 'latency'],
    ['errors', 'errors/count', 'count'],
    ['CPU', 'cpu/percent', 'cpu-percent'],
    ['peak RSS', 'memory/peak_rss', 'memory']
  ];
  var CLIENT_COLUMNS = [
    ['k6 requests', 'client/requests', 'count'],
    ['k6 p50', 'client/latency_p50', 'latency'],
    ['k6 p95', 'client/latency_p95', 'latency'],
    ['k6 p99', 'client/latency_p99', 'latency']
  ];

  // One row per phase, the server's numbers then k6's (when k6 ran).
  function phaseTable(bmf, phases) {
    var withClient = phases.some(function (p) { return bmfValue(bmf, 'client/requests@' + p.name, 'count'); });
    var table = el('table', { 'class': 'phase-table' });
    var head = [{ text: 'phase' }];
    if (phases.some(function (p) { return p.end !== undefined; })) head.push({ text: 'time' });
    SERVER_COLUMNS.forEach(function (c) { head.push({ text: c[0], title: 'server (eBPF): ' + c[1] }); });
    if (withClient) CLIENT_COLUMNS.forEach(function (c) { head.push({ text: c[0], cls: 'client', title: 'client (k6): ' + c[1] }); });
    add(table, headRow(head));
    phases.forEach(function (p) {
      var tr = el('tr', { 'data-phase': p.name, 'class': p.truncated ? 'truncated' : undefined });
      add(tr, el('td', {}, p.name));
      if (p.end !== undefined) add(tr, el('td', {}, seconds(p.start) + ' – ' + seconds(p.end)));
      SERVER_COLUMNS.forEach(function (c) { add(tr, metricCell(bmf, c[1] + '@' + p.name, c[2])); });
      if (withClient) CLIENT_COLUMNS.forEach(function (c) { add(tr, metricCell(bmf, c[1] + '@' + p.name, c[2], 'client')); });
      add(table, tr);
    });
    return table;
  }

  // Every whole-run metric of the BMF file (no `@phase`), but the agent's
  // per-program costs.
  function wholeRunTable(bmf) {
    var table = el('table', { 'class': 'whole-run' });
    add(table, headRow([{ text: 'metric' }, { text: 'measure' }, { text: 'value' }]));
    Object.keys(bmf).sort().forEach(function (id) {
      if (id.indexOf('@') >= 0 || id.indexOf('agent/prog_') === 0) return;
      Object.keys(bmf[id]).sort().forEach(function (measure) {
        add(table, add(el('tr'), el('td', {}, id), el('td', {}, measure), metricCell(bmf, id, measure)));
      });
    });
    return table;
  }

  // ---- charts ----
  function niceMax(v) {
    if (!(v > 0)) return 1;
    var p = Math.pow(10, Math.floor(Math.log10(v)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * p >= v) return steps[i] * p;
    return 10 * p;
  }
  function maxOf(lines) {
    var m = 0;
    lines.forEach(function (l) { l.points.forEach(function (pt) { if (pt[1] !== null && isFinite(pt[1]) && pt[1] > m) m = pt[1]; }); });
    return m;
  }
  // Phases that overlap (a k6 scenario's stages inside `load`, a scenario
  // starting mid-run) go to lanes: each phase to the first lane free at
  // its start (an overlap under 0.5 % of the run, a few pixels, does not
  // count). Lane 0 is drawn as full-height bands, the others as strips.
  function lanes(phases) {
    var ends = [], T = phases.reduce(function (m, p) { return Math.max(m, p.end); }, 0);
    return phases.map(function (p) {
      var lane = 0;
      while (lane < ends.length && ends[lane] > p.start + T / 200) lane++;
      ends[lane] = p.end;
      return lane;
    });
  }

  // The phases alone, one row per lane, named.
  function phaseChart(phases, T) {
    var lane = lanes(phases), n = Math.max.apply(null, lane.concat([0])) + 1;
    var W = 960, L = 76, R = 12, ROW = 20, H = 8 + ROW * n;
    var x = function (t) { return L + (W - L - R) * (T > 0 ? Math.min(Math.max(t, 0), T) / T : 0); };
    var svg = sv('svg', { 'data-chart': 'phases', viewBox: '0 0 ' + W + ' ' + H, width: W, height: H, role: 'img' });
    add(svg, sv('title', {}, 'phases'));
    add(svg, sv('text', { 'class': 'tick', x: L - 4, y: 18, 'text-anchor': 'end' }, 'phases'));
    phases.forEach(function (p, i) {
      var y0 = 4 + lane[i] * ROW, w = Math.max(1, x(p.end) - x(p.start));
      var g = sv('g', { 'data-phase': p.name });
      add(g, sv('rect', { 'class': 'band band' + (i % 2), x: x(p.start).toFixed(1), y: y0, width: w.toFixed(1), height: ROW - 4, stroke: '#9aa3ad' }));
      add(g, sv('title', {}, p.name + ': ' + seconds(p.start) + ' – ' + seconds(p.end)));
      var clip = 'clip-phase-' + i;
      add(svg, add(sv('clipPath', { id: clip }), sv('rect', { x: x(p.start), y: y0, width: w, height: ROW - 4 })));
      add(g, sv('text', { 'class': 'band-label', x: (x(p.start) + 3).toFixed(1), y: y0 + 12, 'clip-path': 'url(#' + clip + ')' }, p.name));
      add(svg, g);
    });
    return svg;
  }

  // A line chart over [0, T] s with the phases drawn as bands.
  // lines: [{label, points: [[t, v|null], ...]}]; a null breaks the line.
  function chart(name, title, measure, lines, phases, T) {
    var W = 960, H = 170, L = 76, R = 12, TOP = 24, B = 22;
    var svg = sv('svg', { 'data-chart': name, viewBox: '0 0 ' + W + ' ' + H, width: W, height: H, role: 'img' });
    add(svg, sv('title', {}, title));
    var ymax = niceMax(maxOf(lines));
    var x = function (t) { return L + (W - L - R) * (T > 0 ? Math.min(Math.max(t, 0), T) / T : 0); };
    var y = function (v) { return TOP + (H - TOP - B) * (1 - v / ymax); };
    var lane = lanes(phases);
    phases.forEach(function (p, i) {
      var strip = lane[i] > 0;
      var band = sv('rect', {
        'class': 'band band' + (i % 2), 'data-phase': p.name,
        x: x(p.start).toFixed(1), y: strip ? TOP + 6 * (lane[i] - 1) : TOP,
        width: Math.max(1, x(p.end) - x(p.start)).toFixed(1), height: strip ? 5 : H - TOP - B,
        stroke: strip ? '#9aa3ad' : undefined
      });
      add(band, sv('title', {}, p.name));
      add(svg, band);
    });
    [0, 0.5, 1].forEach(function (f) {
      add(svg, sv('line', { 'class': f ? 'grid' : 'axis', x1: L, x2: W - R, y1: y(ymax * f), y2: y(ymax * f) }));
      add(svg, sv('text', { 'class': 'tick', x: L - 4, y: y(ymax * f) + 4, 'text-anchor': 'end' }, fmt(measure, ymax * f)));
    });
    var step = niceMax(T / 8) || 1;
    for (var t = 0; t <= T + 1e-9; t += step) {
      add(svg, sv('text', { 'class': 'tick', x: x(t), y: H - 6, 'text-anchor': 'middle' }, sig3(t) + ' s'));
    }
    add(svg, sv('text', { 'class': 'title', x: L, y: 14 }, title));
    lines.forEach(function (l, i) {
      var d = '', pen = false;
      l.points.forEach(function (pt) {
        if (pt[1] === null || !isFinite(pt[1])) { pen = false; return; }
        d += (pen ? 'L' : 'M') + x(pt[0]).toFixed(1) + ' ' + y(pt[1]).toFixed(1);
        pen = true;
      });
      add(svg, sv('path', { 'class': 'line s' + i, d: d, 'data-series': l.label }));
      if (lines.length > 1) add(svg, sv('text', { 'class': 'legend' + i, x: W - R - 60 * (lines.length - i), y: 14 }, l.label));
    });
    return svg;
  }

  function timelines(d) {
    var T = d.window_s, phases = d.phases;
    var iv = d.intervals, bk = d.buckets;
    var mid = function (b) { return (b.t0 + b.t1) / 2; };
    var box = el('div', { 'class': 'timelines' });
    if (phases.length) add(box, phaseChart(phases, T));
    add(box,
      chart('cpu', 'CPU (% of one core, per ' + d.interval_ms + ' ms)', 'cpu-percent',
        [{ label: 'CPU', points: iv.map(function (p) { return [p.t, p.cpu_percent]; }) }], phases, T),
      chart('rss', 'RSS', 'memory',
        [{ label: 'RSS', points: iv.map(function (p) { return [p.t, p.rss_bytes]; }) }], phases, T),
      chart('rps', 'requests/s (per ' + d.bucket_s + ' s)', 'throughput',
        [{ label: 'req/s', points: bk.map(function (b) { return [mid(b), b.rps]; }) }], phases, T),
      chart('latency', 'latency p50 / p99 (per ' + d.bucket_s + ' s)', 'latency',
        [{ label: 'p50', points: bk.map(function (b) { return [mid(b), b.p50_ns]; }) },
         { label: 'p99', points: bk.map(function (b) { return [mid(b), b.p99_ns]; }) }], phases, T),
      chart('errors', 'errors (4xx, 5xx, resets per ' + d.bucket_s + ' s)', 'count',
        [{ label: 'errors', points: bk.map(function (b) { return [mid(b), b.errors]; }) }], phases, T));
    return box;
  }

  // exec → listen → accept → first response → healthy → ready, each bar from
  // the previous milestone to this one.
  function waterfall(steps) {
    var W = 960, L = 150, R = 90, ROW = 22;
    var H = 10 + ROW * steps.length;
    var total = steps.reduce(function (m, s) { return Math.max(m, s.ns); }, 0) || 1;
    var x = function (v) { return L + (W - L - R) * v / total; };
    var svg = sv('svg', { 'data-chart': 'startup', viewBox: '0 0 ' + W + ' ' + H, width: W, height: H, role: 'img' });
    add(svg, sv('title', {}, 'startup waterfall from exec'));
    var prev = 0;
    steps.forEach(function (s, i) {
      var y0 = 5 + i * ROW;
      add(svg, sv('text', { 'class': 'wf-label', x: L - 6, y: y0 + 14, 'text-anchor': 'end' }, (i ? steps[i - 1].label : 'exec') + ' → ' + s.label));
      var from = Math.min(prev, s.ns);
      add(svg, sv('rect', { 'class': 'wf', 'data-milestone': s.id, 'data-value': s.ns, x: x(from).toFixed(1), y: y0 + 3, width: Math.max(2, x(s.ns) - x(from)).toFixed(1), height: ROW - 8 }));
      add(svg, sv('text', { 'class': 'wf-label', x: (Math.max(x(s.ns), x(from) + 2) + 4).toFixed(1), y: y0 + 14 }, ns(s.ns)));
      prev = Math.max(prev, s.ns);
    });
    return svg;
  }

  // Per phase: its files, then (folded) its top functions and where its
  // threads blocked, the summary's two lists for every phase.
  function profileLinks(profiles) {
    var ul = el('ul', { 'class': 'links' });
    profiles.forEach(function (p) {
      var li = add(el('li', { 'data-profile': p.phase }), el('strong', {}, p.phase + ': '));
      p.links.forEach(function (l) { add(li, el('a', { href: l.href }, l.label)); });
      if ((p.top && p.top.length) || (p.blocked && p.blocked.length)) {
        var det = add(el('details', {}), el('summary', {}, 'top functions and blocking sites'));
        if (p.top && p.top.length) {
          var t = add(el('table', { 'class': 'top', 'data-top': 'on-cpu' }), headRow([{ text: 'on-CPU function' }, { text: 'self %' }, { text: 'total %' }]));
          p.top.forEach(function (f) {
            add(t, add(el('tr', { 'data-function': f.name }), el('td', {}, f.name), el('td', {}, f.self.toFixed(1)), el('td', {}, f.total.toFixed(1))));
          });
          add(det, t);
        }
        if (p.blocked && p.blocked.length) {
          var b = add(el('table', { 'class': 'top', 'data-top': 'off-cpu' }), headRow([{ text: 'blocked in (call ← callers)' }, { text: '% of time blocked' }]));
          p.blocked.forEach(function (s) {
            add(b, add(el('tr', { 'data-site': s.site }), el('td', {}, s.site), el('td', {}, s.percent.toFixed(1))));
          });
          add(det, b);
        }
        add(li, det);
      }
      add(ul, li);
    });
    return ul;
  }

  function meta(lines) {
    lines.forEach(function (l) { if (l) add(root, el('p', { 'class': l.cls || 'meta' }, l.text)); });
  }

  function runPage(d) {
    meta([
      { text: 'pid ' + d.pid + ' (' + d.comm + '), window ' + seconds(d.window_s) + ', ' + d.end },
      d.target_status ? { text: 'target ' + d.target_status } : null,
      d.partial ? { cls: 'partial', text: 'PARTIAL: the numbers cover less than was asked' } : null,
      d.canonical ? { text: 'under load = phase ' + d.canonical } : null
    ]);
    d.notes.forEach(function (n) { add(root, el('p', { 'class': 'note' }, n)); });
    if (d.startup && d.startup.length) {
      add(root, el('h2', {}, 'Startup'), waterfall(d.startup));
    }
    add(root, el('h2', {}, 'Timelines'), timelines(d));
    if (d.phases.length) add(root, el('h2', {}, 'Phases: server (eBPF) and client (k6)'), phaseTable(d.bmf, d.phases));
    if (d.profiles && d.profiles.length) add(root, el('h2', {}, 'CPU profiles'), profileLinks(d.profiles));
    add(root, el('h2', {}, 'Whole run (BMF)'), wholeRunTable(d.bmf));
  }

  function repeatPage(d) {
    meta([{ text: 'median of ' + d.runs.length + ' runs; min–max in small type' }]);
    if (d.phases.length) add(root, el('h2', {}, 'Phases: server (eBPF) and client (k6)'), phaseTable(d.bmf, d.phases));
    var ul = el('ul', { 'class': 'links' });
    d.runs.forEach(function (r) { add(ul, add(el('li', { 'data-run': r.label }), el('a', { href: r.href }, r.label))); });
    add(root, el('h2', {}, 'Each run (timelines, startup, profiles)'), ul);
    add(root, el('h2', {}, 'Whole run, median (BMF)'), wholeRunTable(d.bmf));
  }

  function comparePage(d) {
    meta([{ cls: d.overall === 'FAIL' ? 'partial' : 'meta', text: d.headline }]);
    add(root, el('p', { 'class': 'note' }, d.timelines_note));
    var table = el('table', { 'class': 'compare' });
    add(table, headRow([{ text: 'metric' }, { text: d.base_label }, { text: d.new_label }, { text: 'change' }, { text: 'p' }, { text: 'verdict' }, { text: 'why' }]));
    d.rows.forEach(function (r) {
      var tr = el('tr', { 'data-metric': r.id, 'data-measure': r.measure, 'data-level': r.level, 'class': 'level-' + r.level });
      var side = function (v, n, which) {
        return el('td', { 'data-side': which, 'data-value': v }, fmt(r.measure, v) + (n > 1 ? ' ×' + n : ''));
      };
      add(tr, el('td', {}, r.id + ' (' + r.measure + ')'), side(r.base, r.n_base, 'base'), side(r.new, r.n_new, 'new'),
        el('td', {}, r.change), el('td', {}, r.p), el('td', { 'class': 'level' }, r.level), el('td', {}, r.reason));
      add(table, tr);
    });
    add(root, el('h2', {}, 'Metrics'), table);
    [['only in ' + d.base_label, d.only_base], ['only in ' + d.new_label, d.only_new]].forEach(function (o) {
      if (!o[1].length) return;
      var ul = el('ul');
      o[1].forEach(function (id) { add(ul, el('li', {}, id)); });
      add(root, el('h2', {}, o[0] + ' (not judged)'), ul);
    });
  }

  ({ run: runPage, repeat: repeatPage, compare: comparePage })[data.kind](data);
  document.body.setAttribute('data-rendered', data.kind);
})();
