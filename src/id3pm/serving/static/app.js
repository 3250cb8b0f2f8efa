// The id3pm web page: plain JS, no libraries, talks only to the server that served it.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const tokenInput = $("#token");
tokenInput.value = sessionStorage.getItem("id3pm-token") || "";
tokenInput.addEventListener("change", () => { sessionStorage.setItem("id3pm-token", tokenInput.value); loadModel(); });

async function api(method, path, body) {
  const headers = {};
  if (tokenInput.value) headers["Authorization"] = "Bearer " + tokenInput.value;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try { data = await resp.json(); } catch (e) { /* not JSON */ }
  if (!resp.ok) throw new Error((data && data.detail) || ("HTTP " + resp.status));
  return data;
}

// -- tabs --------------------------------------------------------------------------
for (const button of document.querySelectorAll(".tab")) {
  button.addEventListener("click", () => {
    document.querySelectorAll(".tab").forEach((b) => b.classList.toggle("active", b === button));
    document.querySelectorAll(".panel").forEach((p) => p.classList.toggle("active", p.id === button.dataset.tab));
  });
}

// -- the model card sets choices and limits -----------------------------------------------
async function loadModel() {
  try {
    const card = await api("GET", "/v1/model");
    $("#model-line").textContent = `${card.task} model, ${card.image_size}px, ${card.encoder.name} encoder ` +
      `(${card.id_dim}-d, ${card.encoder.distance} distance)`;
    for (const select of document.querySelectorAll("select[name=sampler]")) {
      select.replaceChildren(...card.samplers.map((s) => new Option(s, s, s === "dpmpp_2m", s === "dpmpp_2m")));
    }
    const lim = card.limits;
    document.querySelectorAll("input[name=n]").forEach((i) => (i.max = lim.max_n));
    document.querySelectorAll("input[name=steps]").forEach((i) => (i.max = lim.max_steps));
    document.querySelectorAll("input[name=guidance]").forEach((i) => (i.max = lim.max_guidance));
    $("input[name=frames]").max = lim.max_frames;
    $("input[name=queries]").max = lim.max_queries;
    const dirSelect = $("#edit-form select[name=direction]");
    dirSelect.replaceChildren(...card.directions.map((d) => new Option(`${d.name} (${d.kind || "direction"})`, d.name)));
    $("#edit-unavailable").hidden = card.directions.length > 0;
    $("#edit-form").hidden = card.directions.length === 0;
  } catch (e) {
    $("#model-line").textContent = "model card: " + e.message;
  }
}

// -- reading the forms ------------------------------------------------------------------
function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);  // a data: URL; the server strips the prefix
    reader.onerror = () => reject(new Error("cannot read " + file.name));
    reader.readAsDataURL(file);
  });
}

function parseVector(text) {
  const t = text.trim();
  const values = t.startsWith("[") ? JSON.parse(t) : t.split(/[\s,;]+/).filter(Boolean).map(Number);
  if (!Array.isArray(values) || values.some((v) => typeof v !== "number" || !isFinite(v))) {
    throw new Error("the vector must be a list of finite numbers");
  }
  return values;
}

async function identity(form, fileName, vectorName, aligned) {
  const file = form.elements[fileName].files[0];
  const text = form.elements[vectorName].value;
  if (file) return { image: await readFile(file), aligned: !!aligned };
  if (text.trim()) return { vector: parseVector(text) };
  throw new Error("choose a face photo or paste a vector");
}

function sampling(form) {
  return {
    guidance: Number(form.elements.guidance.value),
    steps: Number(form.elements.steps.value),
    seed: Number(form.elements.seed.value),
    sampler: form.elements.sampler.value || "dpmpp_2m",
  };
}

const fmt = (d) => (d === null || d === undefined ? "d = n/a" : "d = " + d.toFixed(3));

function card(png, lines) {
  const fig = document.createElement("figure");
  const img = document.createElement("img");
  img.src = "data:image/png;base64," + png;
  img.alt = "synthetic face";
  const cap = document.createElement("figcaption");
  cap.textContent = lines.join(" · ");
  fig.append(img, cap);
  return fig;
}

function wire(name, build, show) {
  const form = $(`#${name}-form`);
  const status = $(`#${name}-status`);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = $("button[type=submit]", form);
    button.disabled = true;
    status.classList.remove("error");
    status.textContent = "working…";
    const t0 = performance.now();
    try {
      const body = await build(form);
      const result = await api("POST", `/v1/${name}`, body);
      $(`#${name}-results`).replaceChildren(...show(result));
      const warn = (result.warnings || []).filter(Boolean);
      status.textContent = `done in ${((performance.now() - t0) / 1000).toFixed(1)} s` +
        ` (${result.distance_metric} distance)` + (warn.length ? " — " + warn.join("; ") : "");
    } catch (e) {
      status.classList.add("error");
      status.textContent = e.message;
    } finally {
      button.disabled = false;
    }
  });
}

wire("generate",
  async (f) => ({ ...(await identity(f, "image", "vector", f.elements.aligned.checked)), n: Number(f.elements.n.value),
                  queries: Number(f.elements.queries.value), search: f.elements.search.value, ...sampling(f) }),
  (r) => r.images.map((im) => card(im.png, [`seed ${im.seed}`, fmt(im.distance)]
                                   .concat(r.refine ? [`best of ${r.refine.queries} queries`] : []))));

wire("interpolate",
  async (f) => ({ a: await identity(f, "image_a", "vector_a"), b: await identity(f, "image_b", "vector_b"),
                  frames: Number(f.elements.frames.value), ...sampling(f) }),
  (r) => r.frames.map((fr) => card(fr.png, [`t ${fr.t.toFixed(2)}`, "A " + fmt(fr.distance_a), "B " + fmt(fr.distance_b)])));

wire("edit",
  async (f) => ({ ...(await identity(f, "image", "vector")), direction: f.elements.direction.value,
                  strengths: parseVector(f.elements.strengths.value), n: Number(f.elements.n.value), ...sampling(f) }),
  (r) => r.images.map((im) => card(im.png, [`${r.direction} ${im.strength >= 0 ? "+" : ""}${im.strength}`,
                                            `seed ${im.seed}`, fmt(im.distance)])));

loadModel();
