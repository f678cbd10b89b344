// bronze console: live parts and small conveniences. No inline script anywhere (the
// Content-Security-Policy allows scripts from /ui/static only); every HTML fragment swapped in
// comes from the server, which escapes all user data.
"use strict";

(function () {
  const POLL_MS = 2000;

  // Live parts: <element data-live="URL?part=NAME"> is refreshed from URL every POLL_MS with
  // If-None-Match; a 304 leaves it alone. Ticked checkboxes survive a refresh.
  function live(el) {
    let etag = null;
    let busy = false;
    async function tick() {
      if (busy || document.hidden) return;
      // Not while the user is choosing something inside this part (a select, a text box).
      const focus = document.activeElement;
      if (focus && focus !== document.body && el.contains(focus) && focus.matches("select, input[type=text], input[type=number]")) return;
      busy = true;
      try {
        const headers = etag ? { "If-None-Match": etag } : {};
        const r = await fetch(el.dataset.live, { headers, credentials: "same-origin", cache: "no-cache" });
        if (r.status === 401) { window.location.assign("/ui/login"); return; }
        if (r.status !== 200) return;
        etag = r.headers.get("ETag");
        const html = await r.text();
        const picked = new Set(Array.from(el.querySelectorAll("input.pick:checked")).map((i) => i.value));
        const chosen = new Map(Array.from(el.querySelectorAll("select[id]")).map((s) => [s.id, s.value]));
        const doc = new DOMParser().parseFromString(html, "text/html");
        el.replaceChildren(...Array.from(doc.body.childNodes));
        el.querySelectorAll("input.pick").forEach((i) => { i.checked = picked.has(i.value); });
        el.querySelectorAll("select[id]").forEach((s) => { if (chosen.has(s.id)) s.value = chosen.get(s.id); });
        wire(el);
        el.dispatchEvent(new CustomEvent("bronze:updated", { bubbles: true }));
      } catch (e) {
        // network blip: try again on the next tick
      } finally {
        busy = false;
      }
    }
    setInterval(tick, POLL_MS);
  }

  // Forms with data-confirm ask first; "select all" ticks the page's machines.
  function wire(root) {
    root.querySelectorAll("form[data-confirm]").forEach((f) => {
      if (f.dataset.wired) return;
      f.dataset.wired = "1";
      f.addEventListener("submit", (ev) => {
        if (!window.confirm(f.dataset.confirm)) ev.preventDefault();
      });
    });
    root.querySelectorAll("button[data-confirm]").forEach((b) => {
      if (b.dataset.wired) return;
      b.dataset.wired = "1";
      b.addEventListener("click", (ev) => {
        if (!window.confirm(b.dataset.confirm)) ev.preventDefault();
      });
    });
    const all = root.querySelector("#select-all");
    if (all && !all.dataset.wired) {
      all.dataset.wired = "1";
      all.addEventListener("change", () => {
        document.querySelectorAll("input.pick").forEach((i) => { i.checked = all.checked; });
      });
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    wire(document);
    document.querySelectorAll("[data-live]").forEach(live);
  });
})();
