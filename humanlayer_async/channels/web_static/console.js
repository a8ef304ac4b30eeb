// The humanlayer-async approvals console: live updates over server-sent events, and
// forms posted without leaving the page. Without JavaScript, the forms still work (the batch
// form too: its checkboxes are on the cards, tied to it by their form attribute).
"use strict";
(() => {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const pending = document.getElementById("pending");
  const history = document.getElementById("history");
  const empty = document.getElementById("pending-empty");
  const connection = document.getElementById("connection");
  const announce = document.getElementById("announce");
  const outcome = document.getElementById("outcome");
  // Where the cards are among every pending request (a page of them, when many wait).
  let pages = document.getElementById("pending-pages");
  const batch = document.getElementById("batch");
  const selectBy = batch.querySelector(".select-by");
  const selectedCount = batch.querySelector(".selected-count");
  const HISTORY = 50;

  const element = (html) => {
    const template = document.createElement("template");
    template.innerHTML = html.trim();
    return template.content.firstElementChild;
  };
  const say = (text) => { announce.textContent = text; };
  const refreshEmpty = () => { empty.hidden = pending.children.length > 0; };

  // -- the batch form: checkboxes on the cards the user may decide, shortcuts to tick them --
  const boxes = () => [...pending.querySelectorAll('input[type="checkbox"][name="id"]')];
  const cardOf = (box) => box.closest("li.card");
  const countSelected = () => {
    const chosen = boxes().filter((box) => box.checked).length;
    selectedCount.textContent = chosen ? `${chosen} selected` : "";
  };
  let shortcuts = null;  // what the shortcut buttons were built from, to rebuild only on change
  const shortcut = (kind, value, label, name) => {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.select = kind;
    button.dataset.value = value;
    const code = document.createElement("code");
    code.textContent = name;  // the server's rendering of the name: visible, as text
    button.append(label, code);
    return button;
  };
  // The shortcuts follow the cards as they come and go; new cards are never ticked.
  const refreshBatch = () => {
    const cards = boxes().map(cardOf);
    batch.hidden = cards.length === 0;
    const functions = new Map(), runs = new Map();
    for (const card of cards) {
      functions.set(card.dataset.function, card.querySelector("h3 code").textContent);
      if (card.dataset.run !== undefined) runs.set(card.dataset.run, card.querySelector(".run").textContent);
    }
    const key = JSON.stringify([[...functions.keys()], [...runs.keys()]]);
    if (key !== shortcuts) {
      shortcuts = key;
      selectBy.querySelectorAll('button[data-select="function"], button[data-select="run"]')
        .forEach((button) => button.remove());
      const clear = selectBy.querySelector('button[data-select="none"]');
      for (const [value, name] of functions) clear.before(shortcut("function", value, "Select all of ", name));
      for (const [value, name] of runs) clear.before(shortcut("run", value, "Select all of run ", name));
    }
    selectBy.hidden = false;
    countSelected();
  };
  const selecting = (button) => (box) => {
    const card = cardOf(box);
    if (button.dataset.select === "function") return card.dataset.function === button.dataset.value;
    if (button.dataset.select === "run") return card.dataset.run === button.dataset.value;
    return false;
  };
  selectBy.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-select]");
    if (!button) return;
    if (button.dataset.select === "none") {
      boxes().forEach((box) => { box.checked = false; });
    } else {
      boxes().filter(selecting(button)).forEach((box) => { box.checked = true; });
    }
    countSelected();
  });
  pending.addEventListener("change", (event) => {
    if (event.target.matches('input[type="checkbox"][name="id"]')) countSelected();
  });

  const duration = (seconds) => {
    seconds = Math.max(0, Math.floor(seconds));
    if (seconds < 60) return `${seconds} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
    if (seconds < 86400) {
      const hours = Math.floor(seconds / 3600), minutes = Math.floor((seconds % 3600) / 60);
      return minutes ? `${hours} h ${minutes} min` : `${hours} h`;
    }
    return `${Math.floor(seconds / 86400)} d`;
  };
  const tick = () => {
    const now = Date.now();
    for (const time of pending.querySelectorAll("time.age")) {
      time.textContent = `${duration((now - Date.parse(time.dateTime)) / 1000)} ago`;
    }
    for (const time of pending.querySelectorAll("time.left")) {
      const left = (Date.parse(time.dateTime) - now) / 1000;
      time.textContent = left > 0 ? `${duration(left)} left` : "expired";
    }
  };

  // The count follows the requests as they come and go; the page's cards stay its own: a new
  // request belongs after the last page's, so a page with pages after it only counts it.
  const recount = (change) => {
    if (!pages) return;
    const total = Math.max(pending.children.length, Number(pages.dataset.total) + change);
    pages.dataset.total = String(total);
    pages.querySelector(".count").textContent =
      `Showing ${pending.children.length.toLocaleString("en-US")} of ${total.toLocaleString("en-US")} pending`;
  };
  const addPending = (id, html) => {
    if (document.getElementById(`req-${id}`) || document.getElementById(`dec-${id}`)) return false;
    if (pages && pages.dataset.more) {
      recount(1);
      return false;
    }
    pending.append(element(html));
    recount(1);
    refreshEmpty();
    refreshBatch();
    return true;
  };
  const addDecided = (id, html) => {
    const card = document.getElementById(`req-${id}`);
    if (card || (pages && pages.dataset.more && !document.getElementById(`dec-${id}`))) {
      card?.remove();
      recount(-1);
    }
    document.getElementById(`req-${id}`)?.remove();
    document.getElementById(`dec-${id}`)?.remove();
    history.prepend(element(html));
    while (history.children.length > HISTORY) history.lastElementChild.remove();
    refreshEmpty();
    refreshBatch();
  };

  const source = new EventSource(document.body.dataset.events);
  source.addEventListener("open", () => { connection.textContent = "live updates: on"; });
  source.addEventListener("error", () => { connection.textContent = "live updates: reconnecting…"; });
  source.addEventListener("snapshot", (event) => {
    const data = JSON.parse(event.data);
    const typing = new Map(
      [...pending.querySelectorAll("input[name], textarea")].map((field) => [field.id, field.value]),
    );
    const chosen = new Set(boxes().filter((box) => box.checked).map((box) => box.value));
    pending.innerHTML = data.pending;
    history.innerHTML = data.history;
    if (pages && data.pages) {
      const fresh = element(data.pages);
      pages.replaceWith(fresh);
      pages = fresh;
    }
    for (const [id, value] of typing) {
      const field = document.getElementById(id);
      if (field) field.value = value;
    }
    for (const box of boxes()) box.checked = chosen.has(box.value);  // only what was ticked
    refreshEmpty();
    refreshBatch();
    tick();
  });
  source.addEventListener("requested", (event) => {
    const data = JSON.parse(event.data);
    if (addPending(data.id, data.html)) say(`New request: ${data.summary}`);
    tick();
  });
  source.addEventListener("counted", (event) => {
    // A vote on a request that needs several approvals: its card, redrawn with the count,
    // keeping what was ticked or typed in it.
    const data = JSON.parse(event.data);
    const old = document.getElementById(`req-${data.id}`);
    if (!old) return;
    const fresh = element(data.html);
    for (const field of old.querySelectorAll("input[name], textarea, select")) {
      if (!field.id || field.type === "hidden" || field.type === "checkbox") continue;
      const twin = fresh.querySelector(`#${CSS.escape(field.id)}`);
      if (twin) twin.value = field.value;
    }
    const ticked = old.querySelector("input[type=checkbox]");
    const box = fresh.querySelector("input[type=checkbox]");
    // The tick stays only on the same call: an edited one (another fingerprint) is chosen anew.
    if (ticked && box && box.value === ticked.value) box.checked = ticked.checked;
    old.replaceWith(fresh);
    refreshBatch();
    say(data.summary);
    tick();
  });
  source.addEventListener("reminded", (event) => {
    // The request still waits: its card is marked, and the reminder said aloud.
    const data = JSON.parse(event.data);
    const card = document.getElementById(`req-${data.id}`);
    if (!card) return;
    card.classList.add("reminded");
    if (!card.querySelector(".reminder")) {
      const note = document.createElement("p");
      note.className = "reminder";
      note.textContent = "Reminder: this still waits for a decision";
      card.querySelector("h3").after(note);
    }
    say(data.summary);
  });
  source.addEventListener("decided", (event) => {
    const data = JSON.parse(event.data);
    addDecided(data.id, data.html);
    say(data.summary);
  });

  // A batch: the ticked requests, each decided on its own; what each came to, listed.
  const OUTCOMES = {
    decided: "decided",
    counted: "vote counted",
    already_decided: "not decided",
    not_an_approver: "not decided",
    unknown: "not decided",
    not_decidable: "not decided",
  };
  const showResults = (result, results, names) => {
    result.replaceChildren();
    const decided = results.filter((item) => item.status === "decided").length;
    const summary = document.createElement("p");
    summary.textContent = `${decided} of ${results.length} decided`;
    const list = document.createElement("ul");
    list.className = "batch-results";
    for (const item of results) {
      const line = document.createElement("li");
      line.className = `result-${item.status}`;
      const what = names.get(item.id) || item.id.slice(0, 8);
      line.textContent = `${what}: ${OUTCOMES[item.status] || item.status}: ${item.message}`;
      list.append(line);
    }
    result.append(summary, list);
    say(summary.textContent);
  };
  // A form's fields, posted to its action as the console's page (its session and CSRF token).
  const post = (form, body) => fetch(form.getAttribute("action"), {
    method: "POST",
    body,
    credentials: "same-origin",
    headers: { Accept: "application/json", "X-CSRF-Token": csrf },
  });

  const submitBatch = async (form, submitter) => {
    const body = new URLSearchParams(new FormData(form));  // the ticked boxes are the form's
    body.set("action", submitter ? submitter.value : "approve");
    const result = form.querySelector(".result");
    const comment = form.querySelector("textarea[name=comment]");
    const refuse = (text, field) => {
      result.classList.add("error");
      result.textContent = text;
      say(text);
      if (field) field.focus();
    };
    result.classList.remove("error");
    if (!body.has("id")) return refuse("select the requests to decide first");
    if (body.get("action") === "deny" && !body.get("comment").trim()) {
      return refuse("give the reason for denying them in the comment", comment);
    }
    const ticked = boxes().filter((box) => box.checked);
    // A box's value is the request id, a space and the call's fingerprint; results name the id.
    const names = new Map(ticked.map((box) => [box.value.split(" ")[0], cardOf(box).querySelector("h3 code").textContent]));
    const buttons = form.querySelectorAll('button[type="submit"]');
    buttons.forEach((button) => { button.disabled = true; });
    result.textContent = "sending…";
    try {
      const response = await post(form, body);
      const type = response.headers.get("content-type") || "";
      if (response.ok && type.includes("json")) {
        showResults(result, (await response.json()).results, names);
        ticked.forEach((box) => { box.checked = false; });  // decided (their cards go), or reported
        comment.value = "";
        countSelected();
      } else {
        refuse(await response.text());
      }
    } catch (error) {
      refuse("could not reach the console; try again");
    }
    buttons.forEach((button) => { button.disabled = false; });
  };

  document.addEventListener("submit", async (event) => {
    if (event.target.closest("form.batch")) {
      event.preventDefault();
      await submitBatch(event.target, event.submitter);
      return;
    }
    const form = event.target.closest("form.decide");
    if (!form) return;
    event.preventDefault();
    const body = new URLSearchParams(new FormData(form));
    const submitter = event.submitter;
    if (submitter && submitter.name === "grant") {
      // "Approve, and allow the same for …": an approval that asks for a grant.
      body.set("action", "approve");
      body.set("grant", submitter.value);
    } else {
      body.set("action", submitter ? submitter.value : "approve");
    }
    const result = form.querySelector(".result");
    const buttons = form.querySelectorAll("button");
    buttons.forEach((button) => { button.disabled = true; });
    result.classList.remove("error");
    result.textContent = "sending…";
    try {
      const response = await post(form, body);
      const type = response.headers.get("content-type") || "";
      const data = type.includes("json") ? await response.json() : null;
      const text = data ? data.message : await response.text();
      result.textContent = text;
      if (data && "grant" in data) {
        // The card goes once decided: what came of the grant stays above the list.
        outcome.textContent = text;
        outcome.hidden = false;
        say(text);
      }
      if (!response.ok) result.classList.add("error");
      if (response.ok || response.status === 409 || response.status === 404) return;
    } catch (error) {
      result.textContent = "could not reach the console; try again";
      result.classList.add("error");
    }
    buttons.forEach((button) => { button.disabled = false; });
  });

  refreshEmpty();
  refreshBatch();
  tick();
  setInterval(tick, 1000);
})();
