// The board's client: the server renders, this file only swaps HTML in and sends events.
//
// One websocket to /live on the host that served the page. Each {"type": "render"} carries
// elements marked data-slot="..." that replace the page's elements with the same slot. A post
// goes over the socket; its "ack" arrives once this node's replica holds the message. When the
// socket closes the page keeps what it shows and reconnects with a growing, jittered delay.
"use strict";

(() => {
  const MIN_DELAY_MS = 250;
  const MAX_DELAY_MS = 5000;
  const AUTHOR_KEY = "forwarder-board.author";

  const form = document.getElementById("composer");
  const authorInput = document.getElementById("author");
  const textInput = document.getElementById("text");
  const sendButton = document.getElementById("send");
  const notice = document.getElementById("notice");
  const badge = document.getElementById("connection");

  let socket = null; // the current WebSocket, null while waiting to reconnect
  let live = false; // true once the current socket has delivered its first render
  let attempts = 0; // failed connections in a row, for the backoff
  let connects = 0; // successful connections so far (exposed as data-connects)
  let timer = null;
  let pending = null; // the post waiting for its ack or error
  const mine = new Set(); // ids of messages posted from this page
  const seen = new Set(Array.from(document.querySelectorAll(".message[data-id]"), (el) => el.dataset.id));

  function liveUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/live`;
  }

  function setConnection(state, label) {
    badge.hidden = false;
    badge.dataset.state = state;
    badge.textContent = label;
    document.body.dataset.connection = state;
  }

  function showNotice(kind, ...parts) {
    notice.hidden = false;
    notice.className = `notice is-${kind}`;
    notice.replaceChildren(
      ...parts.map((part) => {
        if (typeof part === "string") return document.createTextNode(part);
        const code = document.createElement("code");
        code.textContent = part.code;
        return code;
      }),
    );
  }

  function localizeTimes(root) {
    for (const el of root.querySelectorAll("time[datetime]")) {
      const when = new Date(el.getAttribute("datetime"));
      if (!Number.isNaN(when.getTime())) {
        el.textContent = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
        el.title = when.toLocaleString();
      }
    }
  }

  function decorate(root) {
    for (const el of root.querySelectorAll(".message[data-id]")) {
      const id = el.dataset.id;
      if (mine.has(id)) el.classList.add("is-mine");
      if (!seen.has(id)) {
        seen.add(id);
        el.classList.add("is-new");
      }
    }
    localizeTimes(root);
  }

  function swap(html) {
    const template = document.createElement("template");
    template.innerHTML = html;
    decorate(template.content);
    for (const fresh of template.content.querySelectorAll("[data-slot]")) {
      const current = document.querySelector(`[data-slot="${fresh.dataset.slot}"]`);
      if (current) current.replaceWith(fresh);
    }
  }

  function finishPost() {
    pending = null;
    sendButton.disabled = false;
    sendButton.textContent = "Post";
  }

  function handle(event) {
    if (event.type === "render") {
      swap(event.html);
      document.body.dataset.txid = event.txid;
      if (!live) {
        live = true;
        attempts = 0;
        connects += 1;
        document.body.dataset.connects = String(connects);
        setConnection("live", "live");
      }
    } else if (event.type === "ack") {
      const id = String(event.message.id);
      mine.add(id);
      document.getElementById(`m-${id}`)?.classList.add("is-mine");
      if (pending) {
        textInput.value = "";
        finishPost();
      }
      showNotice("ok", `Your message #${id} is visible here at txid `, { code: event.txid }, ".");
      notice.dataset.txid = event.txid;
      notice.dataset.messageId = id;
    } else if (event.type === "error") {
      finishPost();
      showNotice("error", event.message);
    }
  }

  function connect() {
    timer = null;
    setConnection(connects === 0 ? "connecting" : "reconnecting", connects === 0 ? "connecting…" : "reconnecting…");
    const ws = new WebSocket(liveUrl());
    socket = ws;
    ws.addEventListener("message", (message) => {
      if (socket === ws) handle(JSON.parse(message.data));
    });
    ws.addEventListener("close", () => {
      if (socket !== ws) return;
      socket = null;
      live = false;
      if (pending) {
        finishPost();
        showNotice("error", "The connection closed before the server answered: your message may have been saved. Check the board before posting it again.");
      }
      scheduleReconnect();
    });
  }

  function scheduleReconnect() {
    const delay = Math.min(MAX_DELAY_MS, MIN_DELAY_MS * 2 ** attempts) * (0.8 + Math.random() * 0.4);
    attempts += 1;
    setConnection("reconnecting", "reconnecting…");
    timer = setTimeout(connect, delay);
  }

  function reconnectNow() {
    if (socket === null && timer !== null) {
      clearTimeout(timer);
      connect();
    }
  }

  form.addEventListener("submit", (event) => {
    // With JavaScript the post always goes over the socket; the form's own POST is for pages without it.
    event.preventDefault();
    if (pending) return;
    const author = authorInput.value.trim();
    const text = textInput.value.trim();
    if (!author || !text) {
      showNotice("error", "Write your name and a message first.");
      return;
    }
    if (socket === null || socket.readyState !== WebSocket.OPEN || !live) {
      showNotice("error", "Not connected to the server right now; reconnecting. Try again in a moment.");
      return;
    }
    localStorage.setItem(AUTHOR_KEY, author);
    pending = { author, text };
    sendButton.disabled = true;
    sendButton.textContent = "Posting…";
    socket.send(JSON.stringify({ type: "post", author, text }));
  });

  textInput.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  window.addEventListener("online", reconnectNow);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") reconnectNow();
  });

  if (!authorInput.value) authorInput.value = localStorage.getItem(AUTHOR_KEY) || "";
  decorate(document);
  connect();
})();
