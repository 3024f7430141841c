//! The workbench page: Apache ECharts (Apache-2.0, vendored under
//! `assets/echarts/`, embedded at compile time like GraphiQL) drawing a
//! [`Workbench`].
//!
//! Two shells share one script: [`report_html`] inlines the library and the
//! data (one file that opens offline, for sharing), [`workbench_page`] loads
//! the library from the server and fetches the data over GraphQL with the
//! analyst key the user types (kept in the tab's session storage only).
//!
//! The script records what it drew in `#status` (charts with their number of
//! data points, and any script error), which the browser tests read; `?only=`
//! with a chart id shows that chart alone, for per-chart screenshots.

use super::Workbench;

/// Apache ECharts 6.1.0, minified.
pub const ECHARTS_JS: &str = include_str!("../../assets/echarts/echarts.min.js");
/// Its licence and notice.
pub const ECHARTS_LICENSE: &str = include_str!("../../assets/echarts/LICENSE.txt");

const STYLE: &str = r#"
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1em; color: #222; }
h1 { font-size: 1.5em; margin: 0.2em 0; }
h2 { font-size: 1.1em; margin: 1.2em 0 0.2em; }
.meta, .note { color: #555; font-size: 0.9em; }
.chart { width: 100%; height: 420px; border: 1px solid #ddd; border-radius: 4px; }
.missing { padding: 2em; color: #a33; }
section { break-inside: avoid; }
#status { display: none; }
#login { margin: 1em 0; }
"#;

/// The chart script: `window.renderWorkbench(data)`.
const SCRIPT: &str = r#"
(function () {
  const status = { charts: {}, errors: [] };
  const show = () => { document.getElementById('status').textContent = JSON.stringify(status); };
  window.addEventListener('error', (e) => { status.errors.push(String(e.message)); show(); });
  const only = new URLSearchParams(location.search).get('only');
  const pct = (v) => (100 * v).toFixed(1) + '%';
  const day = (s) => String(s).slice(0, 10);
  const CHARTS = [
    ['stage-timeline', 'Customers by lifecycle stage over time', timeline],
    ['stage-flows', 'Stage-to-stage flows between the calibration end and the holdout end', flows],
    ['cohort-retention', 'Cohort retention: share of each acquisition cohort ordering, by month since acquisition', cohorts],
    ['p-alive', 'P(alive) distribution at the calibration end', pAlive],
    ['clv', 'CLV distribution at the calibration end', clv],
    ['holdout-calibration', 'Holdout calibration: repeat purchases per customer by calibration frequency', calibration],
    ['tracking', 'Cumulative repeat purchases, actual vs expected, week by week', tracking],
    ['roc', 'ROC curves of the churn signals ("bought again in the holdout")', roc],
    ['rules-diff', 'Rules diff: stage under the current rules vs the compared rules', rulesDiff],
  ];
  const base = { animation: false, tooltip: { trigger: 'axis' }, legend: { top: 0, type: 'scroll' },
                 grid: { left: 70, right: 30, top: 50, bottom: 60, containLabel: true } };

  function timeline(d) {
    const t = d.stage_timeline;
    return [Object.assign({}, base, {
      xAxis: { type: 'category', data: t.instants.map(day) },
      yAxis: { type: 'value', name: 'customers' },
      series: t.stages.map((s, i) => ({ name: s, type: 'line', stack: 'all', areaStyle: {},
        symbol: 'none', data: t.counts[i] })),
    }), t.instants.length * t.stages.length];
  }
  function sankeyOf(m, left, right) {
    const nodes = [], links = [];
    const palette = ['#5470c6', '#91cc75', '#fac858', '#ee6666', '#73c0de', '#3ba272', '#fc8452', '#9a60b4', '#ea7ccc'];
    m.stages.forEach((s, i) => {
      const itemStyle = { color: palette[i % palette.length] };
      nodes.push({ name: left + s, itemStyle }); nodes.push({ name: right + s, itemStyle });
    });
    m.counts.forEach((row, i) => row.forEach((n, j) => {
      if (n > 0) links.push({ source: left + m.stages[i], target: right + m.stages[j], value: n });
    }));
    const used = new Set(links.flatMap((l) => [l.source, l.target]));
    return [{ animation: false, tooltip: { trigger: 'item' },
      series: [{ type: 'sankey', left: 40, right: 160, data: nodes.filter((n) => used.has(n.name)),
                 links: links, emphasis: { focus: 'adjacency' }, label: { fontSize: 12 } }] }, links.length];
  }
  function flows(d) {
    const m = d.stage_flows;
    return sankeyOf(m, m.rows_label.replace('stage at ', '').slice(0, 10) + ' ',
                       m.columns_label.replace('stage at ', '').slice(0, 10) + ' ');
  }
  function rulesDiff(d) {
    if (!d.rules_diff) return [null, 0, 'no rules to compare with: pass --compare-rules DIR'];
    return sankeyOf(d.rules_diff, 'current: ', 'compared: ');
  }
  function cohorts(d) {
    const c = d.cohorts, cells = [];
    let width = 0;
    c.retention.forEach((row, y) => row.forEach((v, x) => { cells.push([x, y, +(100 * v).toFixed(1)]); width = Math.max(width, x + 1); }));
    return [{ animation: false, tooltip: { position: 'top', formatter: (p) =>
        c.cohorts[p.value[1]] + ' (' + c.sizes[p.value[1]] + ' customers), month ' + p.value[0] + ': ' + p.value[2] + '%' },
      grid: { left: 80, right: 90, top: 20, bottom: 60 },
      xAxis: { type: 'category', name: 'months since acquisition', nameLocation: 'middle', nameGap: 30,
               data: Array.from({ length: width }, (_, i) => String(i)) },
      yAxis: { type: 'category', data: c.cohorts, inverse: true },
      // Month 0 is 100 % by definition; the scale follows the later months.
      visualMap: { min: 0, max: Math.max(1, Math.ceil(Math.max(...cells.filter((c) => c[0] > 0).map((c) => c[2]), 0))),
                   calculable: true, orient: 'vertical', right: 0, top: 'middle', text: ['%', ''] },
      series: [{ type: 'heatmap', data: cells, label: { show: width <= 24, fontSize: 9 } }] }, cells.length];
  }
  function histogram(hs, unitLabel) {
    const h0 = hs[0];
    const cats = h0.counts.map((_, i) => h0.edges[i].toFixed(unitLabel ? 0 : 2) + '–' + h0.edges[i + 1].toFixed(unitLabel ? 0 : 2));
    return [Object.assign({}, base, {
      xAxis: { type: 'category', data: cats, name: unitLabel || 'P(alive)', nameLocation: 'middle', nameGap: 40 },
      yAxis: { type: 'value', name: 'customers' },
      series: hs.map((h) => ({ name: h.label, type: 'bar', data: h.counts })),
    }), hs.reduce((n, h) => n + h.counts.length, 0)];
  }
  function pAlive(d) { return d.value.p_alive.length ? histogram(d.value.p_alive) : [null, 0, 'no purchase model fitted']; }
  function clv(d) {
    const h = d.value.clv;
    return h ? histogram([h], 'CLV') : [null, 0, d.value.clv_unavailable];
  }
  function calibration(d) {
    const tables = d.validation.calibration;
    if (!tables.length) return [null, 0, 'no purchase model fitted'];
    const cats = tables[0].table.buckets.map((b) => b.frequency);
    const series = [{ name: 'actual', type: 'bar', data: tables[0].table.buckets.map((b) => +b.actual_mean.toFixed(3)) }];
    tables.forEach((t) => series.push({ name: (t.model.model === 'bg_nbd' ? 'BG/NBD' : 'Pareto/NBD') + ' predicted',
      type: 'bar', data: t.table.buckets.map((b) => +b.predicted_mean.toFixed(3)) }));
    return [Object.assign({}, base, {
      xAxis: { type: 'category', data: cats, name: 'repeat purchases in the calibration period', nameLocation: 'middle', nameGap: 35 },
      yAxis: { type: 'value', name: 'repeat purchases per customer in the holdout' },
      series: series }), cats.length * series.length];
  }
  function tracking(d) {
    const v = d.value, x = v.tracking.map((p) => day(p.at));
    const series = [{ name: 'actual', type: 'line', symbol: 'none', data: v.tracking.map((p) => p.actual),
      markLine: { symbol: 'none', label: { formatter: 'calibration end' }, data: [{ xAxis: day(v.as_of) }] } }];
    v.models.forEach((m, i) => series.push({ name: m + ' expected', type: 'line', symbol: 'none', lineStyle: { type: 'dashed' },
      data: v.tracking.map((p) => +p.expected[i].toFixed(1)) }));
    return [Object.assign({}, base, { xAxis: { type: 'category', data: x }, yAxis: { type: 'value', name: 'cumulative repeat purchases' },
      series: series }), x.length * series.length];
  }
  function roc(d) {
    const sigs = d.validation.signals.filter((s) => s.auc !== null && s.roc.length);
    const series = sigs.map((s) => ({ name: s.signal + ' (AUC ' + s.auc.toFixed(3) + ')', type: 'line', symbol: 'none', data: s.roc }));
    series.push({ name: 'chance', type: 'line', symbol: 'none', lineStyle: { type: 'dotted', color: '#999' }, data: [[0, 0], [1, 1]] });
    return [Object.assign({}, base, { tooltip: { trigger: 'item' },
      legend: { orient: 'vertical', right: 10, top: 30 }, grid: { left: 70, right: 330, top: 30, bottom: 50, containLabel: true },
      xAxis: { type: 'value', min: 0, max: 1, name: 'false positive rate', nameLocation: 'middle', nameGap: 30 },
      yAxis: { type: 'value', min: 0, max: 1, name: 'true positive rate' }, series: series }),
      sigs.reduce((n, s) => n + s.roc.length, 0)];
  }

  window.renderWorkbench = function (data) {
    const root = document.getElementById('charts');
    root.innerHTML = '';
    const v = data.validation;
    document.getElementById('meta').textContent =
      'Rules ' + data.rules.id + (data.compare_rules ? ' compared with ' + data.compare_rules.id : '') +
      ' · calibration end ' + day(v.calibration_end) + ' · holdout end ' + day(v.holdout_end) +
      ' · ' + v.customers + ' customers, ' + pct(v.base_rate) + ' bought again · computed ' + day(data.generated_at);
    for (const [id, title, make] of CHARTS) {
      if (only && only !== id) continue;
      const section = document.createElement('section');
      section.id = 'section-' + id;
      section.innerHTML = '<h2></h2><div class="chart" id="chart-' + id + '"></div>';
      section.querySelector('h2').textContent = title;
      root.appendChild(section);
      const div = section.querySelector('.chart');
      try {
        const [option, points, why] = make(data);
        if (!option) {
          div.className = 'chart missing';
          div.textContent = why || 'no data';
          status.charts[id] = { points: 0, missing: why || 'no data' };
          continue;
        }
        echarts.init(div, null, { renderer: 'canvas' }).setOption(option);
        status.charts[id] = { points: points };
      } catch (e) {
        status.errors.push(id + ': ' + e.message);
      }
    }
    status.done = true;
    show();
  };
})();
"#;

fn shell(head_scripts: &str, body_scripts: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>journey ledger · analysts' workbench</title>
<style>{STYLE}</style>
{head_scripts}
</head>
<body>
<h1>Analysts' workbench</h1>
<div class="meta" id="meta"></div>
<div id="login"></div>
<div id="charts"></div>
<p class="note">Charts drawn with Apache ECharts (Apache License 2.0), embedded in the journey binary.</p>
<pre id="status"></pre>
<script>{SCRIPT}</script>
{body_scripts}
</body>
</html>
"#
    )
}

/// The self-contained report: library and data inline.
pub fn report_html(workbench: &Workbench) -> Result<String, serde_json::Error> {
    // `</` would end the script element early; JSON allows `\/`.
    let data = serde_json::to_string(workbench)?.replace("</", "<\\/");
    Ok(shell(
        &format!(
            "<script>{}</script>",
            ECHARTS_JS.replace("</script", "<\\/script")
        ),
        &format!(
            r#"<script id="workbench-data" type="application/json">{data}</script>
<script>renderWorkbench(JSON.parse(document.getElementById('workbench-data').textContent));</script>"#
        ),
    ))
}

/// The live page's loader: asks for an analyst key, then queries
/// `workbench(calibrationEnd, holdoutEnd)`. `#key=...` in the address fills
/// the key (the fragment never reaches the server's logs).
const LIVE_SCRIPT: &str = r#"
<script>
(function () {
  const params = new URLSearchParams(location.search);
  const fromHash = new URLSearchParams(location.hash.slice(1)).get('key');
  if (fromHash) sessionStorage.setItem('journey-key', fromHash);
  const login = document.getElementById('login');
  const today = new Date();
  const iso = (d) => d.toISOString().slice(0, 10);
  const holdout = params.get('holdoutEnd') || iso(today);
  const calib = params.get('calibrationEnd') || iso(new Date(today.getTime() - 182 * 86400000));
  login.innerHTML = '<form id="f">Analyst API key <input id="k" type="password" size="30"> ' +
    'calibration end <input id="c" type="date"> holdout end <input id="h" type="date"> ' +
    '<button>Draw</button> <span id="msg" class="note"></span></form>';
  document.getElementById('k').value = sessionStorage.getItem('journey-key') || '';
  document.getElementById('c').value = calib;
  document.getElementById('h').value = holdout;
  async function load() {
    const key = document.getElementById('k').value;
    sessionStorage.setItem('journey-key', key);
    const msg = document.getElementById('msg');
    msg.textContent = 'computing…';
    const res = await fetch('/graphql', { method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer ' + key },
      body: JSON.stringify({ query: 'query($c: NaiveDate!, $h: NaiveDate!) { workbench(calibrationEnd: $c, holdoutEnd: $h) }',
        variables: { c: document.getElementById('c').value, h: document.getElementById('h').value } }) });
    const body = await res.json();
    if (body.errors) { msg.textContent = body.errors.map((e) => e.message).join('; '); return; }
    msg.textContent = '';
    renderWorkbench(body.data.workbench);
  }
  document.getElementById('f').addEventListener('submit', (e) => { e.preventDefault(); load(); });
  if (sessionStorage.getItem('journey-key')) load();
})();
</script>"#;

/// The page `journey serve` answers at `/workbench`.
pub fn workbench_page() -> String {
    shell(
        r#"<script src="/workbench/assets/echarts.min.js"></script>"#,
        LIVE_SCRIPT,
    )
}
