// A machine page's live parts: sparklines (uPlot) and the shell (xterm.js over the exec
// WebSocket, docs/api.md). The log tail is htmx's (the SSE extension). Without the vendored
// libraries (hutch setup fetches them) the page stays as the server rendered it.
(function () {
  "use strict";
  var STDIN = 0, STDOUT = 1, STDERR = 2;
  var REFRESH = 15000; // ms between two readings of the sparklines' series
  var KEPT = 5000; // nodes (text, stderr spans) the live log keeps

  // The latest reading beside each chart, in the units its caption names.
  var SHOWN = {
    cpu: function (v, data) { return v.toFixed(2) + " of " + data.vcpus; },
    memory: function (v, data) {
      return bytes(v) + (data.memory_limit ? " of " + bytes(data.memory_limit) : "");
    },
    rx: function (v) { return bytes(v) + "/s in"; },
    tx: function (v) { return bytes(v) + "/s out"; },
  };

  function bytes(v) {
    var units = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i ? v.toFixed(1) : Math.round(v)) + " " + units[i];
  }

  function latest(values) {
    for (var i = values.length - 1; i >= 0; i--) if (values[i] !== null) return values[i];
    return null;
  }

  function sparklines(box) {
    var plots = {};
    function series(data, names) {
      return [data.time].concat(names.map(function (n) { return data[n]; }));
    }
    function draw() {
      fetch(box.dataset.metrics, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) {
          if (!data) return;
          document.getElementById("sparks-none").hidden = data.time.length > 0;
          box.querySelectorAll(".spark").forEach(function (el) {
            var names = el.dataset.series.split(",");
            var columns = series(data, names);
            el.previousElementSibling.querySelector(".now").textContent = names
              .map(function (n) { var v = latest(data[n]); return v === null ? "" : SHOWN[n](v, data); })
              .filter(Boolean).join(", ");
            if (plots[el.dataset.series]) {
              plots[el.dataset.series].setData(columns);
              return;
            }
            plots[el.dataset.series] = new uPlot({
              width: el.clientWidth, height: el.clientHeight,
              legend: { show: false }, cursor: { show: false },
              axes: [{ show: false }, { show: false }],
              // From zero: an idle machine's flat line sits on the axis, not mid-chart.
              scales: { x: { time: true }, y: { range: function (u, min, max) { return [0, max > 0 ? max : 1]; } } },
              series: [{}].concat(names.map(function (n, i) {
                return { label: n, stroke: i ? "#b45309" : "#1d4ed8", width: 1.5, points: { show: false } };
              })),
            }, columns, el);
          });
        })
        .catch(function () {});
    }
    draw();
    setInterval(draw, REFRESH);
  }

  function shell(box) {
    var button = document.getElementById("shell-open");
    button.hidden = false;
    button.addEventListener("click", function () {
      button.remove();
      open(box);
    });
  }

  function open(box) {
    var term = new Terminal({ fontSize: 13, cursorBlink: true, scrollback: 2000 });
    var fit = new FitAddon.FitAddon();
    term.loadAddon(fit);
    term.open(box);
    fit.fit();
    // A terminal takes Tab for the shell; Esc then Tab (or Shift+Tab) leaves it, as in
    // CodeMirror, so that the keyboard is never trapped (WCAG 2.1.2). The Esc still reaches
    // the shell.
    var escaped = false;
    term.attachCustomKeyEventHandler(function (e) {
      if (e.type !== "keydown") return true;
      if (e.key === "Tab" && escaped) {
        escaped = false;
        return false; // not the shell's: the browser moves the focus on
      }
      escaped = e.key === "Escape";
      return true;
    });
    term.focus();
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var ws = new WebSocket(scheme + location.host + box.dataset.exec);
    ws.binaryType = "arraybuffer";
    var encoder = new TextEncoder();
    ws.onopen = function () {
      ws.send(JSON.stringify({
        command: ["/bin/sh"], tty: true, stdin: true, rows: term.rows, cols: term.cols,
      }));
    };
    ws.onmessage = function (e) {
      if (typeof e.data === "string") {
        var said = JSON.parse(e.data);
        if (said.type === "exit") {
          term.write("\r\n[exited" + (said.signal ? " by " + said.signal : " " + said.exit_code) + "]\r\n");
        } else if (said.type === "error") {
          term.write("\r\n[" + said.title + ": " + said.detail + "]\r\n");
        }
        return;
      }
      var bytes = new Uint8Array(e.data);
      if (bytes[0] === STDOUT || bytes[0] === STDERR) term.write(bytes.subarray(1));
    };
    ws.onclose = function () { term.write("\r\n[the session has ended]\r\n"); };
    term.onData(function (typed) {
      if (ws.readyState !== WebSocket.OPEN) return;
      var text = encoder.encode(typed);
      var message = new Uint8Array(text.length + 1);
      message[0] = STDIN;
      message.set(text, 1);
      ws.send(message);
    });
    term.onResize(function (size) {
      if (ws.readyState === WebSocket.OPEN) {
        ws.send(JSON.stringify({ type: "resize", rows: size.rows, cols: size.cols }));
      }
    });
    window.addEventListener("resize", function () { fit.fit(); });
  }

  // The log follows its end, as `tail -f` does, unless the reader scrolled up to read.
  function following(pre) {
    var atEnd = true;
    pre.addEventListener("scroll", function () {
      atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    });
    document.body.addEventListener("htmx:sseMessage", function () {
      // A chatty machine must not fill the browser: the oldest messages go first.
      while (pre.childNodes.length > KEPT) pre.removeChild(pre.firstChild);
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    });
    pre.scrollTop = pre.scrollHeight;
  }

  document.addEventListener("DOMContentLoaded", function () {
    var pre = document.getElementById("logs");
    if (pre) following(pre);
    var sparks = document.getElementById("sparks");
    if (sparks && window.uPlot) sparklines(sparks);
    var box = document.getElementById("shell");
    if (box && window.Terminal && window.FitAddon) shell(box);
  });
})();
