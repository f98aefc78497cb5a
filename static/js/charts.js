// Draws the overview's Plotly figures. The server sends them as JSON in
// <script type="application/json" id="figures-data">; each <div data-figure="name"> gets one.
// Runs at page load and whenever htmx swaps in a new charts section (range picker, new samples).
(function () {
  function cssVar(name, fallback) {
    var value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return value || fallback;
  }

  function themed(layout) {
    var fg = cssVar("--fg", "#1b1f24"), line = cssVar("--line", "#d9dde3");
    layout.paper_bgcolor = "rgba(0,0,0,0)";
    layout.plot_bgcolor = "rgba(0,0,0,0)";
    layout.font = Object.assign({}, layout.font, {color: fg, family: "system-ui, sans-serif", size: 12});
    ["xaxis", "yaxis"].forEach(function (axis) {
      layout[axis] = Object.assign({gridcolor: line, zerolinecolor: line, linecolor: line}, layout[axis]);
    });
    return layout;
  }

  function draw(root) {
    var holder = root.querySelector ? root.querySelector("#figures-data") : null;
    if (!holder || typeof Plotly === "undefined") {
      return;
    }
    var figures = JSON.parse(holder.textContent);
    var section = holder.closest("[data-range]");
    root.querySelectorAll("[data-figure]").forEach(function (div) {
      var figure = figures[div.dataset.figure];
      if (!figure) {
        return;
      }
      Plotly.react(div, figure.data, themed(figure.layout), {responsive: true, displaylogo: false});
      div.dataset.drawnRange = section ? section.dataset.range : "";
      div.dataset.drawnCount = String(Number(div.dataset.drawnCount || 0) + 1);
    });
  }

  document.addEventListener("DOMContentLoaded", function () { draw(document); });
  // The charts take their colours from the theme's custom properties: redraw when it changes.
  if (window.matchMedia) {
    window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", function () { draw(document); });
  }
  document.addEventListener("htmx:load", function (event) { draw(event.detail.elt); });
})();
