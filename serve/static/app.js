// The rag-serve page: ask, show the answer with its sources (or the edit it was read from),
// add/update/delete documents, add/list/revoke edits, index stats.
// Plain DOM, no build step. Text from the index is always set with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);

// Each message gets a number, so that an action clears only its own ("thinking...") and a write's success does not
// hide the error of another action that ended while it ran.
let said = 0;
let lastError = 0;

function say(text, ok) {
  const box = $("message");
  box.textContent = text;
  box.className = ok ? "ok" : "error";
  said += 1;
  if (!ok) lastError = said;
  return said;
}

async function call(method, path, body, write) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const token = $("token").value.trim();
  if (write && token) headers["Authorization"] = "Bearer " + token;
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {  // fetch's own TypeError ("Failed to fetch") says nothing a user can act on
    throw new Error("cannot reach the server: is it still running?");
  }
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    const reason = data && data.error ? data.error : response.statusText;
    const error = new Error(`${response.status}: ${reason}`);
    error.status = response.status;
    throw error;
  }
  if (data === null) throw new Error(`${response.status}: the reply was not JSON (a proxy's page, not the server's?)`);
  return data;
}

// The ids a URL path cannot carry: browsers resolve "." and ".." away (the server refuses them too).
function addressable(id) {
  if (id !== "." && id !== "..") return true;
  say(`document id ${JSON.stringify(id)} cannot be used: a document id must not be '.' or '..'`, false);
  return false;
}

// Run a write with its button disabled and a message that it runs: a slow save must not look idle, nor a
// second click write twice. `work(done)` reports its outcome through `done(text, ok)`.
async function writing(button, work) {
  button.disabled = true;
  const started = say("saving...", true);
  const done = (text, ok) => {
    if (lastError > started) say(`${$("message").textContent} · then: ${text}`, false);  // keep the other's error
    else say(text, ok);
  };
  try {
    await work(done);
    if (!$("answer-box").hidden) $("answer-stale").hidden = false;
  } catch (e) {
    done(e.message, false);
  } finally {
    button.disabled = false;
  }
}

function showAnswer(data) {
  $("answer").textContent = data.answer || "(no answer)";
  $("answer-stale").hidden = true;
  const edit = $("answer-edit");
  edit.hidden = !data.edit;
  edit.textContent = !data.edit ? "" : data.asked_as
    ? `asked as "${data.asked_as}", the first hop from edit ${data.edit.id}: ${data.edit.fact}` +
      (data.answered_by ? `; answered from edit ${data.answered_by.id}: ${data.answered_by.fact}` : "")
    : data.beyond
    ? `read with edit ${data.edit.id} in view, from which the question asks a further step: ${data.edit.fact}`
    : `answered from edit ${data.edit.id}: ${data.edit.fact}`;
  const t = data.timings;
  $("timings").textContent =
    `${Math.round(t.server_ms)} ms (retrieve ${Math.round(t.retrieve_ms)}, read ${Math.round(t.read_ms)}, ` +
    `queued ${Math.round(t.queue_ms)}; batch of ${data.batch_size})`;
  const list = $("sources");
  list.replaceChildren();
  for (const p of data.passages) {
    const item = document.createElement("li");
    // The passage the answer was read out of (span reader only): marked, left in its retrieval place.
    const readFrom = data.source != null && p.id === data.source.passage;
    item.className = readFrom ? "source answer-source" : "source";
    const title = document.createElement("span");
    title.className = "source-title";
    title.textContent = p.title || p.doc_id;
    const meta = document.createElement("span");
    meta.className = "source-meta";
    meta.textContent = ` ${p.id} · score ${p.score.toFixed(3)}${readFrom ? " · the answer's source" : ""} `;
    const load = document.createElement("button");
    load.type = "button";
    load.className = "small";
    load.textContent = "edit";
    load.addEventListener("click", () => loadDocument(p.doc_id));
    const text = document.createElement("p");
    text.className = "source-text";
    if (readFrom) {
      // The answer's own characters, highlighted. Offsets count code points (Python's), hence Array.from.
      const chars = Array.from(p.text);
      const { start, end } = data.source;
      const answer = document.createElement("mark");
      answer.textContent = chars.slice(start, end).join("");
      text.append(chars.slice(0, start).join(""), answer, chars.slice(end).join(""));
    } else {
      text.textContent = p.text;
    }
    item.append(title, meta, load, text);
    list.append(item);
  }
  if (!data.passages.length) {
    const item = document.createElement("li");
    item.textContent = "no passages (closed book, or nothing matched)";
    list.append(item);
  }
  $("answer-box").hidden = false;
}

async function ask(event) {
  event.preventDefault();
  const button = $("ask-button");
  button.disabled = true;
  const thinking = say("thinking...", true);
  try {
    // An empty box or "server default" leaves k or mode out: the server's --k and --mode answer.
    const body = { question: $("question").value };
    if ($("k").value !== "") body.k = Number($("k").value);
    if ($("mode").value) body.mode = $("mode").value;
    const data = await call("POST", "/ask", body);
    showAnswer(data);
    if (said === thinking) say("", true);  // a write's message, said meanwhile, stays
  } catch (e) {
    $("answer-box").hidden = true;  // an old answer under a new question would mislead
    say(e.message, false);
  } finally {
    button.disabled = false;
  }
}

// The metadata of the document last loaded, kept when it is saved again: an upsert replaces all of it.
let loaded = { id: null, meta: {} };

async function loadDocument(docId) {
  const id = docId || $("doc-id").value.trim();
  if (!id) { say("type a document id to load", false); return; }
  if (!addressable(id)) return;
  try {
    const doc = await call("GET", "/documents/" + encodeURIComponent(id));
    $("doc-id").value = doc.id;
    $("doc-title").value = doc.title;
    $("doc-text").value = doc.text;
    loaded = { id: doc.id, meta: doc.meta };
    say(`loaded ${doc.id} (version ${doc.version}, ${doc.passage_ids.length} passages)`, true);
  } catch (e) {
    if (e.status === 404) {
      // Else the form would keep the last document's title and text under the new id, and Save copy them there.
      $("doc-id").value = id;
      $("doc-title").value = "";
      $("doc-text").value = "";
      loaded = { id: null, meta: {} };
      say(`no document ${id} yet: write its title and text and save to add it`, false);
      return;
    }
    say(e.message, false);
  }
}

async function saveDocument(event) {
  event.preventDefault();
  const doc = { id: $("doc-id").value.trim(), title: $("doc-title").value, text: $("doc-text").value };
  if (doc.id === loaded.id) Object.assign(doc, loaded.meta, { id: doc.id, title: doc.title, text: doc.text });
  await writing($("doc-save"), async (done) => {
    const report = await call("POST", "/documents", { documents: [doc] }, true);
    const what = report.documents_added ? "added" : report.documents_updated ? "updated" : "unchanged";
    done(`${doc.id} ${what} (generation ${report.generation})`, true);
    refreshStats();
  });
}

async function deleteDocument() {
  const id = $("doc-id").value.trim();
  if (!id) { say("type the id of the document to delete", false); return; }
  if (!addressable(id)) return;
  await writing($("doc-delete"), async (done) => {
    const report = await call("DELETE", "/documents/" + encodeURIComponent(id), undefined, true);
    done(`${id} deleted (generation ${report.generation})`, true);
    refreshStats();
  });
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  node.className = className;
  node.textContent = text;
  return node;
}

function editItem(edit) {
  const item = document.createElement("li");
  item.id = "edit-" + edit.id;
  item.dataset.id = edit.id;
  item.className = edit.active ? "active" : "inactive";
  const details = [];
  if (edit.question) details.push(`Q: ${edit.question}` + (edit.answer ? ` → ${edit.answer}` : ""));
  if (edit.subject) details.push(`subject: ${edit.subject}`);
  if (edit.warning) details.push(`warning: ${edit.warning}`);
  details.push(`made ${edit.created_at}`);
  if (edit.supersedes) details.push(`replaces ${edit.supersedes}`);
  if (edit.revoked_at) details.push(`revoked ${edit.revoked_at}`);
  if (edit.superseded_by) details.push(`replaced by ${edit.superseded_by}`);
  item.append(element("span", "edit-id", edit.id), element("span", "edit-fact", edit.fact), " ");
  if (edit.active) {
    const revoke = element("button", "small danger", "revoke");
    revoke.type = "button";
    revoke.addEventListener("click", () => revokeEdit(edit.id, revoke));
    item.append(revoke);
  }
  item.append(element("span", "edit-meta", details.join(" · ")));
  return item;
}

async function refreshEdits() {
  try {
    const data = await call("GET", "/edits" + ($("edits-all").checked ? "?all=true" : ""));
    const list = $("edits");
    list.replaceChildren(...data.edits.map(editItem));
    if (!data.edits.length) list.append(element("li", "muted", "no edits"));
  } catch (e) {
    say(e.message, false);
  }
}

async function addEdit(event) {
  event.preventDefault();
  const body = { fact: $("edit-fact").value };
  for (const name of ["question", "answer", "subject"]) {
    const value = $("edit-" + name).value.trim();
    if (value) body[name] = value;  // an empty field means "not stated"
  }
  await writing($("edit-save"), async (done) => {
    const edit = await call("POST", "/edits", body, true);
    done(`edit ${edit.id} added` + (edit.supersedes ? ` (replaces ${edit.supersedes})` : "") +
        (edit.warning ? `; warning: ${edit.warning}` : ""), !edit.warning);
    for (const name of ["fact", "question", "answer", "subject"]) $("edit-" + name).value = "";
    refreshEdits();
    refreshStats();
  });
}

async function revokeEdit(id, button) {
  await writing(button, async (done) => {
    try {
      const edit = await call("DELETE", "/edits/" + encodeURIComponent(id), undefined, true);
      done(`edit ${edit.id} revoked` + (edit.supersedes ? `: the edit it had replaced, ${edit.supersedes}, may answer again` : ""), true);
      refreshStats();
    } finally {
      refreshEdits();  // also when the revoke failed: another client may have revoked or replaced it
    }
  });
}

async function showDefaults() {
  try {
    const health = await call("GET", "/health");
    $("k").placeholder = `default ${health.k}`;
    $("mode-default").textContent = `default (${health.mode})`;
  } catch (e) {
    say(e.message, false);
  }
}

async function refreshStats() {
  try {
    const stats = await call("GET", "/stats");
    const list = $("stats");
    list.replaceChildren();
    const shown = { documents: stats.documents, passages: stats.passages, "deleted versions": stats.deleted,
                    edits: stats.edits, generation: stats.generation, encoder: `${stats.encoder} (${stats.dim}-d)`,
                    dense: stats.dense, size: `${(stats.bytes / 1048576).toFixed(1)} MiB` };
    for (const [name, value] of Object.entries(shown)) {
      const term = document.createElement("dt");
      term.textContent = name;
      const detail = document.createElement("dd");
      detail.id = "stat-" + name.replace(/\s+/g, "-");
      detail.textContent = String(value);
      list.append(term, detail);
    }
  } catch (e) {
    say(e.message, false);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("token").value = sessionStorage.getItem("rag-token") || "";
  $("token").addEventListener("change", () => sessionStorage.setItem("rag-token", $("token").value));
  $("ask-form").addEventListener("submit", ask);
  $("doc-form").addEventListener("submit", saveDocument);
  $("doc-load").addEventListener("click", () => loadDocument());
  // Enter in the id box loads that document; the form's default (save) would overwrite it with what the form holds.
  $("doc-id").addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); loadDocument(); }
  });
  $("doc-delete").addEventListener("click", deleteDocument);
  $("stats-refresh").addEventListener("click", refreshStats);
  $("edit-form").addEventListener("submit", addEdit);
  $("edits-refresh").addEventListener("click", refreshEdits);
  $("edits-all").addEventListener("change", refreshEdits);
  showDefaults();
  refreshStats();
  refreshEdits();
});
