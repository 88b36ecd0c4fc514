// Live queue: poll the change version; when it moved, fetch this page's rows again (no reload).
(function () {
  var live = document.getElementById("live");
  if (!live) return;
  var version = live.dataset.version;
  function tick() {
    fetch("/queue/version", {credentials: "same-origin", cache: "no-store"})
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
      .then(function (v) {
        if (v.version === version) return null;
        return fetch(live.dataset.rowsUrl, {credentials: "same-origin", cache: "no-store"})
          .then(function (r) { return r.text(); })
          .then(function (html) {
            var tmp = document.createElement("table");
            tmp.innerHTML = html;
            var fresh = tmp.querySelector("tbody");
            var old = document.getElementById("rows");
            if (fresh && old) {
              old.replaceWith(fresh);
              document.getElementById("total").textContent = fresh.dataset.total;
              version = fresh.dataset.version;
              live.textContent = "updated " + new Date().toLocaleTimeString();
            }
          });
      })
      .catch(function () { live.textContent = "offline (retrying)"; })
      .finally(function () { setTimeout(tick, 2000); });
  }
  setTimeout(tick, 2000);
})();
