"use strict";
(() => {
  const { postJSON, toast } = window.vidx;

  async function act(button, call, done) {
    button.disabled = true;
    try {
      const answer = await call();
      toast(done(answer));
      setTimeout(() => location.reload(), 600);
    } catch (err) {
      toast(err.message, true);
      button.disabled = false;
    }
  }

  document.getElementById("recluster").addEventListener("click", (e) => act(e.target,
    () => postJSON("/api/clusters", {}), (c) => `${c.length} face group${c.length === 1 ? "" : "s"}`));
  for (const form of document.querySelectorAll(".name-form")) {
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const name = form.elements.name.value.trim();
      act(form.querySelector("button"), () => postJSON("/api/labels", { cluster: Number(form.dataset.cluster), name }),
        (r) => `${r.labelled.length} track(s) labelled ${r.name}` + (r.conflict.length ? `; ${r.conflict.length} left alone (labelled as someone else)` : ""));
    });
  }
  const label = document.getElementById("label-form");
  label.addEventListener("submit", (e) => {
    e.preventDefault();
    act(label.querySelector("button"), () => postJSON("/api/labels", { track_id: label.elements.track_id.value.trim(),
                                                                       name: label.elements.name.value.trim() }),
      (r) => r.labelled.length ? `labelled ${r.name}` : "that track already had this label");
  });
  const unlabel = document.getElementById("unlabel-form");
  unlabel.addEventListener("submit", (e) => {
    e.preventDefault();
    act(unlabel.querySelector("button"), () => postJSON("/api/unlabel", { track_id: unlabel.elements.track_id.value.trim() }),
      (r) => `${r.removed} label(s) removed`);
  });
})();
