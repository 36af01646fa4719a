"use strict";
(() => {
  const { postJSON, toast, playFrom } = window.vidx;
  const player = document.getElementById("player");
  const head = document.getElementById("playhead");
  const length = Number(head.dataset.length);

  for (const b of document.querySelectorAll("[data-start]")) {
    b.addEventListener("click", () => { playFrom(player, Number(b.dataset.start)); player.scrollIntoView({ block: "nearest" }); });
  }
  // The play head spans the lanes so what is on screen can be read off the timeline.
  player.addEventListener("timeupdate", () => {
    head.style.display = "block";
    head.style.left = `${Math.min(100, 100 * player.currentTime / length)}%`;
  });
  player.addEventListener("error", () => {
    const e = document.getElementById("player-error");
    e.hidden = false;
    e.textContent = "This browser cannot play this video (its codec, such as HEVC, may be unsupported here).";
  });
  async function act(button, call, message) {
    button.disabled = true;
    try { const r = await call(); toast(message(r)); setTimeout(() => location.reload(), 600); }
    catch (err) { toast(err.message, true); button.disabled = false; }
  }
  for (const form of document.querySelectorAll(".label-form")) {
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      act(form.querySelector("button"), () => postJSON("/api/labels", { track_id: form.dataset.track, name: form.elements.name.value.trim() }),
        (r) => `labelled ${r.name}`);
    });
  }
  for (const b of document.querySelectorAll("button.unlabel")) {
    b.addEventListener("click", () => act(b, () => postJSON("/api/unlabel", { track_id: b.dataset.track }),
      (r) => `${r.removed} label(s) removed`));
  }
})();
