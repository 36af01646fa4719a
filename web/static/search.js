"use strict";
(() => {
  const { el, postForm, toast, time, playFrom } = window.vidx;
  const $ = (id) => document.getElementById(id);
  const input = $("photo-input"), drop = $("drop"), status = $("status"), results = $("results");
  const threshold = $("threshold"), top = $("top"), player = $("player");
  let photo = null, face = 1, person = null, sequence = 0;

  function setStatus(text, busy = false) {
    status.textContent = text;
    status.classList.toggle("busy", busy);
  }

  async function choose(file) {
    if (!file) return;
    photo = file; person = null; face = 1;
    $("drop-hint").hidden = true;
    $("preview").hidden = false;
    $("preview-img").src = URL.createObjectURL(file);
    $("boxes").replaceChildren();
    $("face-note").hidden = true;
    const form = new FormData();
    form.append("photo", file);
    setStatus("Looking for faces in the photo…", true);
    try {
      drawFaces(await postForm("/api/faces", form));
    } catch (err) {
      setStatus(err.message);
      results.replaceChildren();
      return;
    }
    search();
  }

  function drawFaces(found) {
    const boxes = $("boxes");
    boxes.replaceChildren();
    for (const f of found.faces) {
      const [x0, y0, x1, y1] = f.box;
      const b = el("button", {
        type: "button", class: "facebox" + (f.face === face ? " chosen" : ""), title: `face ${f.face}`,
        style: { left: `${100 * x0 / found.width}%`, top: `${100 * y0 / found.height}%`,
                 width: `${100 * (x1 - x0) / found.width}%`, height: `${100 * (y1 - y0) / found.height}%` },
      }, el("span", { text: String(f.face) }));
      b.dataset.face = f.face;
      b.addEventListener("click", (e) => {
        e.preventDefault(); e.stopPropagation();
        face = f.face;
        boxes.querySelectorAll(".facebox").forEach((x) => x.classList.toggle("chosen", x === b));
        search();
      });
      boxes.append(b);
    }
    const note = $("face-note");
    note.hidden = found.faces.length < 2;
    note.textContent = `${found.faces.length} faces in the photo, numbered by size: click one to search for that person.`;
  }

  async function search() {
    if (!photo && !person) return;
    const mine = ++sequence;
    const form = new FormData();
    if (photo) { form.append("photo", photo); form.append("face", face); } else form.append("person", person);
    form.append("threshold", threshold.value);
    form.append("top", top.value);
    setStatus("Searching…", true);
    try {
      const hits = await postForm("/api/search", form);
      if (mine === sequence) render(hits);
    } catch (err) {
      if (mine === sequence) { setStatus(err.message); results.replaceChildren(); }
    }
  }

  function render(hits) {
    const who = person ? person : photo.name;
    const videos = new Set(hits.map((h) => h.video_id)).size;
    setStatus(hits.length
      ? `${hits.length} appearance${hits.length === 1 ? "" : "s"} of ${who} in ${videos} video${videos === 1 ? "" : "s"}, scoring ${Number(threshold.value).toFixed(2)} or more.`
      : `No appearance of ${who} scores ${Number(threshold.value).toFixed(2)} or more: try a lower threshold.`);
    const groups = new Map();
    for (const h of hits) {  // best first, so each video's place is its best appearance's
      if (!groups.has(h.video_id)) groups.set(h.video_id, []);
      groups.get(h.video_id).push(h);
    }
    results.replaceChildren(...[...groups.values()].map(group));
  }

  function group(hits) {
    const first = hits[0];
    const name = first.video.split(/[\\/]/).pop();
    const length = Math.max(first.duration_s || 0, ...hits.map((h) => h.end_s)) || 1;
    const bar = el("div", { class: "timeline" });
    for (const h of [...hits].sort((a, b) => a.start_s - b.start_s)) {
      const seg = el("button", {
        type: "button", class: "seg", title: `${time(h.start_s)} – ${time(h.end_s)} · score ${h.score.toFixed(2)}`,
        style: { left: `${100 * h.start_s / length}%`, width: `${Math.max(100 * (h.end_s - h.start_s) / length, 0.8)}%` },
      });
      seg.addEventListener("click", () => play(h));
      bar.append(seg);
    }
    const cards = el("div", { class: "hits" }, ...hits.map(card));
    const box = el("section", { class: "panel video-group", "data-video": name, "data-video-id": first.video_id },
      el("div", { class: "group-head" },
        el("div", { class: "name ellipsis", text: name, title: first.video }),
        el("div", { class: "muted small nowrap" },
          `${hits.length} appearance${hits.length === 1 ? "" : "s"} · ${time(length)} · `,
          el("a", { href: `/videos/${first.video_id}`, text: "all tracks" }))),
      bar, el("div", { class: "ticks" }, el("span", { text: "0:00" }), el("span", { text: time(length) })), cards);
    return box;
  }

  function card(h) {
    const img = h.thumbnail ? el("img", { src: h.thumbnail, alt: `face track ${h.track_id}`, loading: "lazy" })
                            : el("div", { class: "noimg", text: "no thumbnail" });
    const score = el("span", { class: "score" + (h.score < 0.9 ? " mid" : ""), text: h.score.toFixed(2), title: `L2 distance ${h.distance}` });
    const b = el("button", { type: "button", class: "hit", "data-track": h.track_id, "data-start": h.start_s,
                             title: `play ${time(h.start_s)} – ${time(h.end_s)}` },
      img,
      el("div", { class: "meta" },
        el("div", { class: "when" }, `${time(h.start_s)} – ${time(h.end_s)} `, score),
        el("div", { class: "muted small", text: `track ${h.track_id}${h.person_track_id ? " · body " + h.person_track_id : ""}` }),
        h.person ? el("span", { class: "tag", text: h.person + (h.labelled ? " · label" : "") }) : null));
    b.addEventListener("click", () => play(h));
    return b;
  }

  function play(h) {
    $("player-panel").hidden = false;
    $("player-error").hidden = true;
    $("player-title").textContent = h.video.split(/[\\/]/).pop();
    $("player-title").title = h.video;
    $("player-time").textContent = `from ${time(h.start_s)}`;
    $("player-video-link").href = `/videos/${h.video_id}`;
    document.querySelectorAll(".hit.playing").forEach((x) => x.classList.remove("playing"));
    document.querySelectorAll(`.hit[data-track="${CSS.escape(h.track_id)}"]`).forEach((x) => x.classList.add("playing"));
    const src = `/media/videos/${h.video_id}`;
    if (player.getAttribute("src") !== src) player.src = src;
    playFrom(player, h.start_s);
    $("player-panel").scrollIntoView({ block: "nearest", behavior: "smooth" });
  }

  player.addEventListener("error", () => {
    const e = $("player-error");
    e.hidden = false;
    e.textContent = "This browser cannot play this video (its codec, such as HEVC, may be unsupported here). ";
    e.append(el("a", { href: player.getAttribute("src"), text: "Download it" }));
  });
  input.addEventListener("change", () => choose(input.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files.length) choose(e.dataTransfer.files[0]);
  });
  threshold.addEventListener("input", () => { $("threshold-value").textContent = Number(threshold.value).toFixed(2); });
  threshold.addEventListener("change", search);
  top.addEventListener("change", search);
  $("person-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const name = $("person-name").value.trim();
    if (!name) return;
    person = name; photo = null;
    $("preview").hidden = true; $("drop-hint").hidden = false; $("face-note").hidden = true;
    search();
  });
  const asked = new URLSearchParams(location.search).get("person");
  if (asked) { $("person-name").value = asked; person = asked; search(); }
  window.addEventListener("error", (e) => toast(String(e.message), true));
})();
