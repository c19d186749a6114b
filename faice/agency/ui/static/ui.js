// faice ui: live updates without a reload. No framework; text goes in as text (textContent),
// never as markup. The page says what to poll in data attributes; nothing else is fetched.
"use strict";

(function () {
  const POLL_MS = 2000;

  function announce(text) {
    const region = document.getElementById("announce");
    if (region) region.textContent = text;
  }

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      });
  }

  function setState(element, state) {
    element.textContent = state;
    element.className = "state state-" + String(state).replace(/[^a-z-]/g, "");
  }

  // ------------------------------------------------------------- a run's page
  function followRun(main) {
    const url = main.dataset.live;
    let version = Number(main.dataset.version || 0);
    const rows = new Map();
    document.querySelectorAll("tr[data-batch]").forEach(function (tr) { rows.set(tr.dataset.batch, tr); });

    function apply(data) {
      const state = document.querySelector("[data-run-state]");
      if (state && state.textContent !== data.state) {
        setState(state, data.state);
        announce("run " + data.state);
      }
      const counts = document.querySelector("[data-run-counts]");
      if (counts) {
        counts.textContent = Object.keys(data.counts).sort()
          .map(function (name) { return data.counts[name] + " " + name; }).join(", ");
      }
      data.rows.forEach(function (row) {
        const tr = rows.get(row.batch);
        if (row.best && !(tr && tr.classList.contains("best"))) {
          const stale = document.getElementById("stale");
          if (stale && stale.hidden) { stale.hidden = false; announce("a new best batch"); }
        }
        if (!tr) return;
        const cell = tr.querySelector("td[data-col=state] .state");
        if (cell) setState(cell, row.state);
        ["objective", "seconds", "failure", "rank"].forEach(function (name) {
          const td = tr.querySelector('td[data-col="' + name + '"]');
          if (td) td.textContent = String(row[name]);
        });
      });
    }

    function tick() {
      getJSON(url + "?since=" + encodeURIComponent(version)).then(function (data) {
        if (data.reload) {
          version = data.version;  // too far behind: the next full load shows everything
        } else {
          version = data.version;
          apply(data);
        }
        if (data.live) setTimeout(tick, POLL_MS);
        else { setState(document.querySelector("[data-run-state]"), data.state); announce("run " + data.state); }
      }).catch(function () { setTimeout(tick, POLL_MS * 3); });
    }
    setTimeout(tick, POLL_MS);
  }

  // ------------------------------------------------------------- a batch's streams
  function followLog(pre) {
    const url = pre.dataset.log;
    let offset = Number(pre.dataset.offset || 0);

    function tick() {
      getJSON(url + "?offset=" + encodeURIComponent(offset)).then(function (data) {
        if (data.text) {
          const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
          pre.appendChild(document.createTextNode(data.text));
          if (atEnd) pre.scrollTop = pre.scrollHeight;
        }
        offset = data.offset;
        const state = document.querySelector("[data-batch-state]");
        if (state && data.state && state.textContent !== data.state) {
          setState(state, data.state);
          announce("batch " + data.state);
        }
        if (data.live) setTimeout(tick, POLL_MS);
      }).catch(function () { setTimeout(tick, POLL_MS * 3); });
    }
    setTimeout(tick, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", function () {
    const main = document.querySelector("main[data-live]");
    if (main) followRun(main);
    document.querySelectorAll("pre[data-log]").forEach(followLog);
  });
})();
