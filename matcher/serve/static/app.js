// matcher serve: the page's only script (CSP: script-src 'self'). Every string from the server is
// put into the page with textContent, never as HTML: file names come from a hostile dump.
"use strict";

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function pct(x) { return (100 * (x || 0)).toFixed(1) + "%"; }

function evidenceFigure(ev) {
  const fig = el("figure");
  if (ev.reference_id !== null && ev.reference_id !== undefined) {
    const img = el("img");
    img.src = "/references/" + encodeURIComponent(ev.reference_id) + "/thumbnail";
    img.alt = "reference still of " + ev.title;
    img.className = "evidence-img";
    fig.append(img);
  }
  let caption = ev.title + " · similarity " + Number(ev.similarity).toFixed(3);
  if (ev.timestamp !== null && ev.timestamp !== undefined) caption += " · @" + Number(ev.timestamp).toFixed(1) + " s";
  const cap = el("figcaption", caption);
  cap.title = ev.reference;
  fig.append(cap);
  return fig;
}

function remembered(form) {
  const who = form.querySelector("input[name=reviewer]");
  if (who && !who.value) who.value = localStorage.getItem("matcher-reviewer") || "";
}

async function sendDecision(form, subject) {
  const data = new FormData(form);
  const out = form.querySelector(".recorded");
  const body = Object.assign({}, subject, {
    reviewer: data.get("reviewer"),
    decision: data.get("decision"),
    title: data.get("title") || null,
    reason: data.get("reason"),
  });
  localStorage.setItem("matcher-reviewer", body.reviewer || "");
  out.textContent = "recording…";
  try {
    const resp = await fetch("/reviews", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      credentials: "same-origin",
    });
    const json = await resp.json();
    if (!resp.ok) {
      out.textContent = "not recorded: " + (typeof json.detail === "string" ? json.detail : JSON.stringify(json.detail));
      out.className = "recorded error";
      return;
    }
    out.textContent = "recorded " + json.decision + (json.title ? " (" + json.title + ")" : "") + " at " + json.time_utc;
    out.className = "recorded ok";
  } catch (err) {
    out.textContent = "not recorded: " + err;
    out.className = "recorded error";
  }
}

function showResult(container, obj, previewUrl) {
  const tpl = document.getElementById("result-tpl");
  const node = tpl.content.firstElementChild.cloneNode(true);
  const img = node.querySelector(".query-img");
  if (previewUrl) img.src = previewUrl; else img.remove();
  let where = obj.path || "";
  if (obj.timestamp !== undefined && obj.timestamp !== null) where += " @" + Number(obj.timestamp).toFixed(1) + " s";
  node.querySelector(".path").textContent = where;
  const title = node.querySelector(".title");
  const form = node.querySelector("form.decision");
  if (obj.error) {
    title.textContent = "could not be matched";
    node.querySelector(".confidence").textContent = obj.error;
    node.classList.add("error");
    form.remove();
    container.append(node);
    return;
  }
  title.textContent = obj.title === null ? "unknown" : obj.title;
  node.querySelector(".confidence").textContent = "confidence " + pct(obj.confidence) +
    (obj.title === null && obj.candidates.length ? " (nearest: " + obj.candidates[0].title + ")" : "");
  const ol = node.querySelector(".candidates");
  for (const c of obj.candidates.slice(0, 5)) ol.append(el("li", c.title + " " + pct(c.score)));
  const ev = node.querySelector(".evidence");
  for (const e of obj.evidence.slice(0, 6)) ev.append(evidenceFigure(e));
  remembered(form);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    sendDecision(form, { sha256: obj.sha256, timestamp: obj.timestamp ?? null, frame: obj.frame ?? null });
  });
  container.append(node);
}

async function upload(files) {
  const status = document.getElementById("status");
  const results = document.getElementById("results");
  const list = Array.from(files || []);
  if (!list.length) return;
  const body = new FormData();
  for (const f of list) body.append("file", f, f.name || "pasted.png");
  status.textContent = "matching " + list.length + " file(s)…";
  status.className = "";
  results.replaceChildren();
  let resp, json;
  try {
    resp = await fetch("/match", { method: "POST", body, credentials: "same-origin" });
    json = await resp.json();
  } catch (err) {
    status.textContent = "request failed: " + err;
    status.className = "error";
    return;
  }
  let objects = json;
  if (!resp.ok) {
    status.textContent = resp.status + ": " + (typeof json.detail === "string" ? json.detail : JSON.stringify(json.detail));
    status.className = "error";
    objects = json.results || [];
  } else {
    status.textContent = objects.length + " result(s)";
  }
  const previews = new Map(list.map((f) => [f.name || "pasted.png", f.type.startsWith("image/") ? URL.createObjectURL(f) : null]));
  for (const obj of objects) showResult(results, obj, previews.get(obj.path));
}

function setupMatchPage() {
  const drop = document.getElementById("drop");
  if (!drop) return;
  const pick = document.getElementById("pick");
  pick.addEventListener("change", () => upload(pick.files));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    upload(e.dataTransfer.files);
  });
  document.addEventListener("paste", (e) => {
    const files = Array.from(e.clipboardData ? e.clipboardData.files : []);
    if (files.length) { e.preventDefault(); upload(files); }
  });
}

function setupReportPage() {
  for (const item of document.querySelectorAll("article.item")) {
    const form = item.querySelector("form.decision");
    if (!form) continue;
    remembered(form);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      sendDecision(form, {
        report: Number(item.dataset.report),
        path: item.dataset.path,
        sha256: item.dataset.sha256,
      });
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  setupMatchPage();
  setupReportPage();
});
