// Shared by every page: the server's token on state-changing requests, errors shown, times formatted.
"use strict";
window.vidx = (() => {
  const token = document.querySelector('meta[name="vidx-token"]').content;

  async function request(url, options) {
    const response = await fetch(url, { credentials: "same-origin", ...options });
    const body = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
    if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
    return body;
  }

  return {
    postJSON: (url, data) => request(url, {
      method: "POST", headers: { "Content-Type": "application/json", "X-Vidx-Token": token },
      body: JSON.stringify(data),
    }),
    postForm: (url, form) => request(url, { method: "POST", headers: { "X-Vidx-Token": token }, body: form }),
    toast(message, bad = false) {
      const t = document.getElementById("toast");
      t.textContent = message;
      t.className = bad ? "show bad" : "show";
      clearTimeout(t._timer);
      t._timer = setTimeout(() => { t.className = ""; }, bad ? 6000 : 3000);
    },
    time(seconds) {
      const m = Math.floor(seconds / 60), s = seconds - 60 * m;
      return `${m}:${s.toFixed(1).padStart(4, "0")}`;
    },
    el(tag, attrs = {}, ...children) {
      const node = document.createElement(tag);
      for (const [k, v] of Object.entries(attrs)) {
        if (k === "text") node.textContent = v;
        else if (k === "class") node.className = v;
        else if (k === "style") Object.assign(node.style, v);
        else if (k.startsWith("data-")) node.setAttribute(k, v);
        else node[k] = v;
      }
      for (const c of children) if (c) node.append(c);
      return node;
    },
    // Plays `video` from `start` once it can: setting currentTime before the metadata is in is lost.
    playFrom(video, start) {
      const go = () => { video.currentTime = start; video.play().catch(() => {}); };
      if (video.readyState >= 1) go(); else video.addEventListener("loadedmetadata", go, { once: true });
    },
  };
})();
