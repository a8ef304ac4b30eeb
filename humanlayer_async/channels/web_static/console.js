// The humanlayer-async approvals console: live updates over server-sent events, and
// forms posted without leaving the page. Without JavaScript, the forms still work.
"use strict";
(() => {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const pending = document.getElementById("pending");
  const history = document.getElementById("history");
  const empty = document.getElementById("pending-empty");
  const connection = document.getElementById("connection");
  const announce = document.getElementById("announce");
  const HISTORY = 50;

  const element = (html) => {
    const template = document.createElement("template");
    template.innerHTML = html.trim();
    return template.content.firstElementChild;
  };
  const say = (text) => { announce.textContent = text; };
  const refreshEmpty = () => { empty.hidden = pending.children.length > 0; };

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

  const addPending = (id, html) => {
    if (document.getElementById(`req-${id}`) || document.getElementById(`dec-${id}`)) return false;
    pending.append(element(html));
    refreshEmpty();
    return true;
  };
  const addDecided = (id, html) => {
    document.getElementById(`req-${id}`)?.remove();
    document.getElementById(`dec-${id}`)?.remove();
    history.prepend(element(html));
    while (history.children.length > HISTORY) history.lastElementChild.remove();
    refreshEmpty();
  };

  const source = new EventSource(document.body.dataset.events);
  source.addEventListener("open", () => { connection.textContent = "live updates: on"; });
  source.addEventListener("error", () => { connection.textContent = "live updates: reconnecting…"; });
  source.addEventListener("snapshot", (event) => {
    const data = JSON.parse(event.data);
    const typing = new Map(
      [...pending.querySelectorAll("input[name], textarea")].map((field) => [field.id, field.value]),
    );
    pending.innerHTML = data.pending;
    history.innerHTML = data.history;
    for (const [id, value] of typing) {
      const field = document.getElementById(id);
      if (field) field.value = value;
    }
    refreshEmpty();
    tick();
  });
  source.addEventListener("requested", (event) => {
    const data = JSON.parse(event.data);
    if (addPending(data.id, data.html)) say(`New request: ${data.summary}`);
    tick();
  });
  source.addEventListener("decided", (event) => {
    const data = JSON.parse(event.data);
    addDecided(data.id, data.html);
    say(data.summary);
  });

  document.addEventListener("submit", async (event) => {
    const form = event.target.closest("form.decide");
    if (!form) return;
    event.preventDefault();
    const body = new URLSearchParams(new FormData(form));
    body.set("action", event.submitter ? event.submitter.value : "approve");
    const result = form.querySelector(".result");
    const buttons = form.querySelectorAll("button");
    buttons.forEach((button) => { button.disabled = true; });
    result.classList.remove("error");
    result.textContent = "sending…";
    try {
      const response = await fetch(form.getAttribute("action"), {
        method: "POST",
        body,
        credentials: "same-origin",
        headers: { Accept: "application/json", "X-CSRF-Token": csrf },
      });
      const type = response.headers.get("content-type") || "";
      const text = type.includes("json") ? (await response.json()).message : await response.text();
      result.textContent = text;
      if (!response.ok) result.classList.add("error");
      if (response.ok || response.status === 409 || response.status === 404) return;
    } catch (error) {
      result.textContent = "could not reach the console; try again";
      result.classList.add("error");
    }
    buttons.forEach((button) => { button.disabled = false; });
  });

  refreshEmpty();
  tick();
  setInterval(tick, 1000);
})();
