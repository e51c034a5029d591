// monobench feature browser: lazy data loading (script tags work from file://), tables and contexts.
"use strict";
const MB = {
  load(name) {
    return new Promise((ok, fail) => {
      if (window.MB_DATA && window.MB_DATA[name]) return ok(window.MB_DATA[name]);
      const s = document.createElement("script");
      s.src = "data/" + name + ".js";
      s.onload = () => ok(window.MB_DATA[name]);
      s.onerror = () => fail(new Error("data/" + name + ".js is missing: run `python -m bench browse` again"));
      document.head.appendChild(s);
    });
  },
  param(k) { return new URLSearchParams(location.search).get(k); },
  fmt(v) {
    if (v === null || v === undefined || v === "") return "–";
    if (typeof v === "boolean") return v ? "yes" : "no";
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : (Math.abs(v) >= 100 ? v.toFixed(1) : v.toPrecision(3));
    return String(v);
  },
  el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") e.textContent = v; else if (k === "cls") e.className = v; else e.setAttribute(k, v);
    }
    for (const k of kids) if (k !== null && k !== undefined) e.append(k);
    return e;
  },
  fail(err) { document.getElementById("main").append(MB.el("p", { cls: "error", text: String(err) })); },
  // One context: every token shaded by the latent's activation relative to `max`; the activating token boxed.
  context(ctx, max) {
    const line = MB.el("div", { cls: "ctx" });
    line.append(MB.el("span", { cls: "val", text: MB.fmt(ctx.value) }));
    ctx.tokens.forEach(([text, act], i) => {
      const shown = text.replace(/\n/g, "⏎").replace(/\t/g, "⇥");
      const t = MB.el("span", { cls: "tok" + (i === ctx.at ? " at" : "") + (act === null ? " unread" : ""), text: shown });
      if (act !== null && act > 0) {
        t.style.background = "rgba(230, 110, 0, " + Math.min(1, act / (max || 1)).toFixed(3) + ")";
        t.classList.add("lit");
      }
      t.title = act === null ? "not a held-out token of this reading" : "activation " + MB.fmt(act);
      line.append(t);
    });
    return line;
  },
  contexts(list, id) {
    const max = Math.max(1e-9, ...list.map(c => c.value));
    const box = MB.el("div", id ? { cls: "contexts", id } : { cls: "contexts" });
    if (!list.length) box.append(MB.el("p", { cls: "muted", text: "never active on these tokens" }));
    list.forEach(c => box.append(MB.context(c, max)));
    return box;
  },
  histogram(h) {
    const w = 360, hgt = 90, n = h.counts.length;
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("width", w); svg.setAttribute("height", hgt + 18); svg.setAttribute("id", "histogram");
    const top = Math.max(1, ...h.counts);
    h.counts.forEach((c, i) => {
      const r = document.createElementNS(svg.namespaceURI, "rect");
      const bh = (c / top) * hgt;
      r.setAttribute("x", (i * w) / n); r.setAttribute("y", hgt - bh);
      r.setAttribute("width", w / n - 1); r.setAttribute("height", bh); r.setAttribute("fill", "#e66e00");
      r.append(Object.assign(document.createElementNS(svg.namespaceURI, "title"), { textContent: c + " tokens" }));
      svg.append(r);
    });
    if (n) {
      const lab = document.createElementNS(svg.namespaceURI, "text");
      lab.setAttribute("x", 0); lab.setAttribute("y", hgt + 14); lab.setAttribute("font-size", "11");
      lab.textContent = MB.fmt(h.edges[0]) + " … " + MB.fmt(h.edges[h.edges.length - 1]) + " (non-zero activations)";
      svg.append(lab);
    }
    return svg;
  },
  // A table whose header cells sort it (click again to reverse) and a text filter over all cells.
  table(columns, rows, linkOf, id) {
    const table = MB.el("table", { id, cls: "sortable" });
    const head = MB.el("tr");
    let key = -1, dir = 1;
    columns.forEach((c, j) => {
      const th = MB.el("th", { text: c, title: "sort" });
      th.onclick = () => { dir = key === j ? -dir : 1; key = j; draw(); };
      head.append(th);
    });
    const body = MB.el("tbody");
    table.append(MB.el("thead", {}, head), body);
    let filter = "";
    function draw() {
      const shown = rows.filter(r => !filter || r.some(v => String(v).toLowerCase().includes(filter)));
      if (key >= 0) shown.sort((a, b) => {
        const x = a[key], y = b[key];
        if (x === y) return 0; if (x === null) return 1; if (y === null) return -1;
        return (x < y ? -1 : 1) * dir;
      });
      body.replaceChildren(...shown.map(r => {
        const tr = MB.el("tr");
        r.forEach((v, j) => {
          const href = j === 0 ? linkOf(r) : null;
          tr.append(MB.el("td", {}, href ? MB.el("a", { href, text: MB.fmt(v) }) : MB.fmt(v)));
        });
        return tr;
      }));
      const count = document.getElementById(id + "-count");
      if (count) count.textContent = shown.length + " of " + rows.length + " rows";
    }
    const input = MB.el("input", { type: "search", placeholder: "filter rows…", id: id + "-filter" });
    input.oninput = () => { filter = input.value.toLowerCase(); draw(); };
    draw();
    return MB.el("div", {}, input, MB.el("span", { cls: "muted", id: id + "-count" }), table);
  },
};
