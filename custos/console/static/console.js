// Custos compliance console: the verification job's progress, polled while it runs. No other script.
"use strict";
(function () {
  function poll() {
    var box = document.getElementById("job");
    if (!box || box.getAttribute("data-running") !== "yes") { return; }
    fetch("/chain/job", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (body) {
        if (!body || !body.job) { return; }
        var job = body.job;
        var bar = document.getElementById("job-progress");
        if (bar) { bar.value = job.percent; bar.textContent = job.percent + "%"; }
        var done = document.getElementById("job-done");
        if (done) { done.textContent = String(job.done); }
        var total = document.getElementById("job-total");
        if (total) { total.textContent = String(job.total); }
        var state = document.getElementById("job-state");
        if (state) { state.textContent = job.state; }
        if (job.state === "running") { window.setTimeout(poll, 400); } else { window.location.reload(); }
      })
      .catch(function () { window.setTimeout(poll, 1500); });
  }
  document.addEventListener("DOMContentLoaded", poll);
})();
