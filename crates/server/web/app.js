// nextsync's web app: account, devices, NextChat app passwords and sync settings.
//
// Plain ES modules, no build step. The access token lives in this module's memory only;
// the refresh token is an HttpOnly cookie the page cannot read (see auth/cookie.rs). Every
// piece of text from the server goes into the page as text (textContent), never as HTML.

import { t, language, setLanguage } from "./i18n.js";

/** The server's base URL: where this page was served from (it may sit under a sub-path). */
const BASE = new URL("..", import.meta.url);
const root = document.getElementById("app");

const session = {
  access: null,
  expiresAt: 0,
  deviceId: null,
  email: null,
  socket: null,
  refreshTimer: null,
  live: "offline",
};

// ---------------------------------------------------------------------------------------
// DOM helpers: elements from tag, attributes and children (strings become text nodes).

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "text") el.textContent = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function show(...nodes) {
  root.replaceChildren(...nodes);
  const first = root.querySelector("h1, input, button");
  if (first && first.tagName === "INPUT") first.focus();
}

function when(ms) {
  if (!ms) return t("never");
  return new Date(ms).toLocaleString(language() === "zh" ? "zh-CN" : undefined);
}

function errorLine() {
  return h("p", { class: "error", role: "alert" });
}

// ---------------------------------------------------------------------------------------
// The API.

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function request(method, path, body, { auth = true, retry = true } = {}) {
  const headers = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  if (auth && session.access) headers.authorization = `Bearer ${session.access}`;
  const response = await fetch(new URL(path, BASE), {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (response.ok) return data;
  const code = data?.error?.code ?? "http_error";
  if (auth && retry && response.status === 401) {
    const renewed = await refresh();
    if (renewed) return request(method, path, body, { auth, retry: false });
    if (renewed === false) signedOut(t("signedOutElsewhere"));
  }
  throw new ApiError(response.status, code, data?.error?.message ?? response.statusText);
}

/** Takes the answer of a sign-in or refresh. */
function signedIn(tokens) {
  session.access = tokens.access_token;
  session.deviceId = tokens.device_id;
  session.expiresAt = Date.now() + tokens.expires_in * 1000;
  clearTimeout(session.refreshTimer);
  // Renew a minute before expiry (never sooner than in ten seconds).
  const renewIn = Math.max(10_000, tokens.expires_in * 1000 - 60_000);
  session.refreshTimer = setTimeout(async () => {
    const renewed = await refresh();
    if (renewed) sendOnSocket({ type: "auth", access_token: session.access });
    else if (renewed === false) signedOut(t("signedOutElsewhere"));
  }, renewIn);
}

/**
 * New tokens from the sign-in cookie. Tabs of one browser share the cookie, and a refresh
 * token works once: the Web Locks API makes tabs take turns, so each sends the cookie the
 * previous refresh left behind instead of reusing one (which would sign the device out).
 */
async function refresh() {
  // true: renewed; false: refused (this device is signed out); null: the server is unreachable.
  const run = async () => {
    try {
      const response = await fetch(new URL("v1/auth/refresh", BASE), {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: "{}",
        credentials: "same-origin",
      });
      if (response.status >= 500) return null;
      if (!response.ok) return false;
      signedIn(await response.json());
      return true;
    } catch {
      return null;
    }
  };
  return navigator.locks ? navigator.locks.request("nextsync-refresh", run) : run();
}

function deviceName() {
  const ua = navigator.userAgent;
  const browser = /Edg\//.test(ua) ? "Edge" : /Firefox\//.test(ua) ? "Firefox"
    : /Chrom(e|ium)\//.test(ua) ? "Chrome" : /Safari\//.test(ua) ? "Safari" : "Browser";
  const system = /Android/.test(ua) ? "Android" : /iPhone|iPad/.test(ua) ? "iOS"
    : /Mac OS X/.test(ua) ? "macOS" : /Windows/.test(ua) ? "Windows" : /Linux/.test(ua) ? "Linux" : "";
  return `Web · ${browser}${system ? ` on ${system}` : ""}`;
}

// ---------------------------------------------------------------------------------------
// The live feed. A WebSocket from the tab's cursor; where one cannot be opened (a proxy that
// refuses upgrades), long-polls of the pull endpoint instead, trying the socket again now
// and then. Both resume from the cursor, and records are kept by id, so the page shows each
// change once whatever path brought it. The socket also says at once when this device was
// signed out.

const feed = { failures: 0, polling: false, retryTimer: null };
/** Every record seen, by `collection/id`, at its latest state. */
const records = new Map();

/**
 * Replies being written on another device (`draft` frames), by `collection/id`: the fields so
 * far, who writes them and when they last grew. The record's write replaces its draft; one
 * that stops growing (its device went away) is dropped after a while.
 */
const drafts = new Map();
const DRAFT_STALE_MS = 15_000;
let draftExpiry = null;

function applyChanges(changes) {
  for (const change of changes) {
    const key = `${change.collection}/${change.id}`;
    drafts.delete(key);
    if (change.deleted) records.delete(key);
    else records.set(key, change);
  }
  onChanges?.(changes);
}

function applyDraft(frame) {
  const key = `${frame.collection}/${frame.id}`;
  if (frame.fields) drafts.set(key, { ...frame, seen: Date.now() });
  else drafts.delete(key);
  clearTimeout(draftExpiry);
  draftExpiry = setTimeout(() => {
    for (const [k, d] of drafts) if (Date.now() - d.seen > DRAFT_STALE_MS) drafts.delete(k);
    onChanges?.([]);
  }, DRAFT_STALE_MS + 100);
  onChanges?.([]);
}

function connectSocket() {
  if (!session.access || session.socket) return;
  const url = new URL("v1/sync/ws", BASE);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  let socket;
  try {
    socket = new WebSocket(url);
  } catch {
    feed.failures++;
    scheduleReconnect();
    return;
  }
  session.socket = socket;
  let welcomed = false;
  if (!feed.polling) setLive("connecting");
  socket.addEventListener("open", () => {
    socket.send(JSON.stringify({ type: "hello", access_token: session.access, cursor: session.cursor ?? null }));
  });
  socket.addEventListener("message", (event) => {
    const frame = JSON.parse(event.data);
    if (frame.type === "welcome") {
      welcomed = true;
      feed.failures = 0;
      feed.polling = false;
      setLive("live");
    }
    if (frame.cursor) session.cursor = frame.cursor;
    if (frame.type === "changes") applyChanges(frame.changes);
    if (frame.type === "draft") applyDraft(frame);
    if (frame.type === "error" && (frame.code === "token_revoked" || frame.code === "account_disabled")) {
      signedOut(t("signedOutElsewhere"));
    }
  });
  socket.addEventListener("close", () => {
    if (session.socket !== socket) return;
    session.socket = null;
    if (!session.access) return;
    if (!welcomed) feed.failures++;
    if (!feed.polling) setLive("offline");
    scheduleReconnect();
  });
}

function scheduleReconnect() {
  clearTimeout(feed.retryTimer);
  const delay = feed.polling ? 30_000 : Math.min(500 * 2 ** feed.failures, 10_000);
  feed.retryTimer = setTimeout(async () => {
    if (!session.access || session.socket) return;
    // Still signed in? A refused refresh means this device was signed out.
    const renewed = await refresh();
    if (renewed === false) {
      signedOut(t("signedOutElsewhere"));
      return;
    }
    if (renewed === null) {
      if (!feed.polling) setLive("offline");
      feed.failures++;
      scheduleReconnect();
      return;
    }
    // The server answers but the socket never welcomed us twice running: poll meanwhile.
    if (feed.failures >= 2 && !feed.polling) startPolling();
    connectSocket();
  }, delay);
}

async function startPolling() {
  feed.polling = true;
  setLive("polling");
  while (feed.polling && session.access) {
    try {
      const since = session.cursor ? `&since=${encodeURIComponent(session.cursor)}` : "";
      const page = await request("GET", `v1/sync/pull?limit=500&wait=25${since}`);
      if (!feed.polling) break;
      session.cursor = page.cursor;
      if (page.changes.length) applyChanges(page.changes);
      setLive("polling");
    } catch {
      if (!feed.polling) break;
      setLive("offline");
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }
}

function sendOnSocket(frame) {
  if (session.socket?.readyState === WebSocket.OPEN) session.socket.send(JSON.stringify(frame));
}

function setLive(state) {
  session.live = state;
  const badge = document.getElementById("live");
  if (badge) {
    badge.className = `status ${state}`;
    badge.textContent = t(state);
  }
}

function signedOut(message) {
  const socket = session.socket;
  session.access = null;
  session.socket = null;
  session.cursor = null;
  feed.polling = false;
  feed.failures = 0;
  clearTimeout(feed.retryTimer);
  records.clear();
  clearTimeout(session.refreshTimer);
  socket?.close();
  showSignIn(message);
}

// ---------------------------------------------------------------------------------------
// Signed out: sign in, create an account, forgot and reset password.

function languageSwitch() {
  return h("select", {
    "aria-label": t("language"),
    onchange: (e) => {
      setLanguage(e.target.value);
      route();
    },
  },
  h("option", { value: "en", selected: language() === "en" }, "English"),
  h("option", { value: "zh", selected: language() === "zh" }, "简体中文"));
}

function authPage(title, form, ...after) {
  return h("main", {},
    h("div", { class: "narrow" },
      h("div", { class: "row top-row" },
        h("strong", {}, "nextsync"), languageSwitch()),
      h("div", { class: "card" }, h("h1", {}, title), form, ...after)));
}

function field(id, label, type, autocomplete, extra = {}) {
  return [h("label", { for: id }, label), h("input", { id, name: id, type, autocomplete, required: true, ...extra })];
}

/** A sign-in form's submit handler for `path` (login or register); errors go to `error`. */
function signInVia(path, error) {
  return async (e) => {
    e.preventDefault();
    const data = new FormData(e.target);
    error.textContent = "";
    try {
      const tokens = await request("POST", path, {
        email: data.get("email"), password: data.get("password"),
        device_name: deviceName(), device_kind: "browser", refresh_cookie: true,
      }, { auth: false });
      signedIn(tokens);
      await startApp();
    } catch (err) {
      error.textContent = err.code === "registration_closed" ? t("registrationClosed") : err.message;
    }
  };
}

/** Whether this server takes new accounts (asked once; open unless it says closed). */
let registrationOpen = null;

async function registration() {
  if (registrationOpen === null) {
    try {
      registrationOpen = (await request("GET", "v1/server", undefined, { auth: false })).registration !== "closed";
    } catch {
      return true;
    }
  }
  return registrationOpen;
}

async function showSignIn(message) {
  const error = errorLine();
  if (message) error.textContent = message;
  const open = await registration();
  const form = h("form", { onsubmit: signInVia("v1/auth/login", error) },
  field("email", t("email"), "email", "username"),
  field("password", t("password"), "password", "current-password"),
  error,
  h("div", { class: "row" }, h("button", { class: "primary", type: "submit" }, t("signIn"))));
  show(authPage(t("signIn"), form,
    h("div", { class: "row" },
      h("button", { class: "link", type: "button", onclick: showForgot }, t("forgot")),
      open ? h("button", { class: "link", type: "button", id: "to-signup", onclick: showSignUp }, t("noAccount")) : null)));
}

function showSignUp() {
  const error = errorLine();
  const form = h("form", { onsubmit: signInVia("v1/auth/register", error) },
  field("email", t("email"), "email", "username"),
  field("password", t("password"), "password", "new-password", { minlength: 10 }),
  h("p", { class: "hint" }, t("passwordRules")),
  error,
  h("div", { class: "row" }, h("button", { class: "primary", type: "submit" }, t("signUp"))));
  show(authPage(t("signUp"), form,
    h("div", { class: "row" }, h("button", { class: "link", type: "button", onclick: () => showSignIn() }, t("haveAccount")))));
}

function showForgot() {
  const error = errorLine();
  const done = h("p", { class: "notice", role: "status" });
  const form = h("form", {
    onsubmit: async (e) => {
      e.preventDefault();
      error.textContent = "";
      try {
        await request("POST", "v1/auth/password/forgot", { email: new FormData(e.target).get("email") }, { auth: false });
        done.textContent = t("linkSent");
      } catch (err) {
        error.textContent = err.message;
      }
    },
  },
  h("p", { class: "hint" }, t("forgotHint")),
  field("email", t("email"), "email", "username"),
  error, done,
  h("div", { class: "row" }, h("button", { class: "primary", type: "submit" }, t("sendLink"))));
  show(authPage(t("forgotTitle"), form,
    h("div", { class: "row" }, h("button", { class: "link", type: "button", onclick: () => showSignIn() }, t("backToSignIn")))));
}

function showReset(token) {
  const error = errorLine();
  const form = h("form", {
    onsubmit: async (e) => {
      e.preventDefault();
      error.textContent = "";
      try {
        await request("POST", "v1/auth/password/reset", { token, new_password: new FormData(e.target).get("password") }, { auth: false });
        history.replaceState(null, "", BASE.pathname);
        await showSignIn();
        root.querySelector(".error").textContent = "";
        root.querySelector(".card").append(h("p", { class: "notice", role: "status" }, t("resetDone")));
      } catch (err) {
        error.textContent = err.message;
      }
    },
  },
  field("password", t("newPassword"), "password", "new-password", { minlength: 10 }),
  h("p", { class: "hint" }, t("passwordRules")),
  error,
  h("div", { class: "row" }, h("button", { class: "primary", type: "submit" }, t("resetTitle"))));
  show(authPage(t("resetTitle"), form));
}

// ---------------------------------------------------------------------------------------
// Signed in.

const TABS = [
  ["conversations", "conversations", showConversations],
  ["conflicts", "conflicts", showConflicts],
  ["trash", "trash", showTrash],
  ["devices", "devices", showDevices],
  ["nextchat", "appPasswords", showAppPasswords],
  ["settings", "settings", showSettings],
  ["backups", "backups", showBackups],
  ["account", "account", showAccount],
];

async function startApp() {
  const me = await request("GET", "v1/me");
  session.email = me.email;
  if (!session.socket) connectSocket();
  const tab = location.hash.slice(1);
  await showTab(TABS.some(([id]) => id === tab) ? tab : "conversations");
}

/** Called with the changes of each frame or poll of the live feed: the open tab may redraw. */
let onChanges = null;

async function showTab(id) {
  const [, label, render] = TABS.find(([tab]) => tab === id);
  if (location.hash !== `#${id}`) history.replaceState(null, "", `#${id}`);
  onChanges = null;
  const content = h("main", { id: "content" });
  show(
    h("header", { class: "top" },
      h("span", { class: "brand" }, "nextsync"),
      h("span", { id: "live", class: `status ${session.live}` }, t(session.live)),
      h("span", { class: "muted" }, session.email),
      languageSwitch(),
      h("button", { type: "button", id: "sign-out", onclick: signOut }, t("signOut"))),
    h("nav", { class: "tabs", "aria-label": "nextsync" },
      TABS.map(([tab, name]) => h("button", {
        type: "button", "data-tab": tab, "aria-current": tab === id ? "page" : false,
        onclick: () => showTab(tab),
      }, t(name)))),
    content);
  document.title = `${t(label)} · nextsync`;
  try {
    await render(content);
  } catch (err) {
    content.append(h("p", { class: "error", role: "alert" }, t("somethingWrong", { message: err.message })));
  }
}

async function signOut() {
  try {
    await request("POST", "v1/auth/logout", {});
  } catch {
    // Signed out already.
  }
  signedOut();
}

// ---------------------------------------------------------------------------------------
// Conversations, live: NextChat's sessions and messages as the feed brings them.

/** Text of a NextChat message's content: a string, or parts of which the text ones count. */
function messageText(content) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content.map((part) => (part?.type === "text" && typeof part.text === "string" ? part.text : "")).join("\n");
  }
  return "";
}

/** A link target that is safe to follow: http(s) and mailto only (no `javascript:`). */
function safeHref(url) {
  try {
    const parsed = new URL(url, BASE);
    return ["http:", "https:", "mailto:"].includes(parsed.protocol) ? parsed.href : null;
  } catch {
    return null;
  }
}

/** Inline Markdown: code spans, bold, italic and links, as nodes (never HTML). */
function inline(text) {
  const out = [];
  const pattern = /(`[^`\n]+`)|(\*\*[^*\n]+\*\*)|(\*[^*\s][^*\n]*\*)|(\[[^\]\n]+\]\([^)\s]+\))/g;
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    if (match.index > last) out.push(text.slice(last, match.index));
    const [token] = match;
    if (match[1]) out.push(h("code", {}, token.slice(1, -1)));
    else if (match[2]) out.push(h("strong", {}, token.slice(2, -2)));
    else if (match[3]) out.push(h("em", {}, token.slice(1, -1)));
    else {
      const [, label, url] = token.match(/^\[([^\]]+)\]\(([^)]+)\)$/);
      const href = safeHref(url);
      out.push(href ? h("a", { href, rel: "noopener noreferrer nofollow", target: "_blank" }, label) : token);
    }
    last = match.index + token.length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

/**
 * The Markdown NextChat's replies use, as DOM nodes: fenced code, headings, lists,
 * paragraphs and inline marks. Built from text nodes and a few elements, so raw HTML in a
 * message shows as text and nothing in it runs.
 */
function markdown(source) {
  const blocks = [];
  const lines = source.replace(/\r\n/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (line.startsWith("```")) {
      const code = [];
      i++;
      while (i < lines.length && !lines[i].startsWith("```")) code.push(lines[i++]);
      i++;
      blocks.push(h("pre", {}, h("code", {}, code.join("\n"))));
    } else if (/^#{1,6}\s/.test(line)) {
      blocks.push(h("p", { class: "md-heading" }, inline(line.replace(/^#{1,6}\s+/, ""))));
      i++;
    } else if (/^\s*([-*+]|\d+[.)])\s+/.test(line)) {
      const ordered = /^\s*\d/.test(line);
      const items = [];
      while (i < lines.length && /^\s*([-*+]|\d+[.)])\s+/.test(lines[i])) {
        items.push(h("li", {}, inline(lines[i].replace(/^\s*([-*+]|\d+[.)])\s+/, ""))));
        i++;
      }
      blocks.push(h(ordered ? "ol" : "ul", {}, items));
    } else if (line.trim() === "") {
      i++;
    } else {
      const paragraph = [];
      while (i < lines.length && lines[i].trim() !== "" && !lines[i].startsWith("```")
        && !/^#{1,6}\s/.test(lines[i]) && !/^\s*([-*+]|\d+[.)])\s+/.test(lines[i])) {
        if (paragraph.length) paragraph.push(h("br"));
        paragraph.push(...inline(lines[i]));
        i++;
      }
      blocks.push(h("p", {}, paragraph));
    }
  }
  return blocks;
}

function sessionsNewestFirst() {
  const sessions = [...records.values()].filter((r) => r.collection === "sessions");
  const updated = (r) => (typeof r.fields.lastUpdate === "number" ? r.fields.lastUpdate : 0);
  return sessions.sort((a, b) => updated(b) - updated(a) || a.id.localeCompare(b.id));
}

/** The session's messages in order, with replies still being written elsewhere (drafts). */
function messagesOf(sessionId) {
  const shown = new Map();
  for (const r of records.values()) {
    if (r.collection === "messages" && r.fields.session_id === sessionId) shown.set(r.id, r);
  }
  for (const d of drafts.values()) {
    const base = shown.get(d.id);
    if (d.collection !== "messages" || Date.now() - d.seen > DRAFT_STALE_MS) continue;
    const fields = { ...(base?.fields ?? {}), ...d.fields };
    if (fields.session_id !== sessionId) continue;
    shown.set(d.id, { collection: "messages", id: d.id, fields, seq: base?.seq ?? Number.MAX_SAFE_INTEGER, draft: d });
  }
  return [...shown.values()]
    .sort((a, b) => (a.fields.position ?? 0) - (b.fields.position ?? 0) || a.seq - b.seq);
}

async function showConversations(content) {
  const search = h("input", {
    type: "search", id: "conversation-search", placeholder: t("searchTitles"), "aria-label": t("searchTitles"),
    autocomplete: "off",
  });
  const list = h("ul", { class: "list sessions", id: "session-list" });
  const view = h("section", { class: "card messages", id: "message-view", "aria-live": "polite" });
  content.classList.add("wide");
  content.append(h("div", { class: "conversations" },
    h("section", { class: "card session-pane" }, h("h1", {}, t("conversations")), search, list),
    view));

  const drawList = () => {
    const query = search.value.trim().toLowerCase();
    const sessions = sessionsNewestFirst().filter((r) =>
      !query || String(r.fields.topic ?? "").toLowerCase().includes(query));
    if (!session.selected && sessions.length) session.selected = sessions[0].id;
    list.replaceChildren(...(sessions.length === 0 ? [h("li", { class: "muted" }, t("noConversations"))]
      : sessions.map((r) => h("li", {},
        h("button", {
          type: "button", class: "session-link", "data-session": r.id,
          "aria-current": r.id === session.selected ? "true" : false,
          onclick: () => {
            session.selected = r.id;
            draw();
          },
        }, String(r.fields.topic ?? r.id))))));
  };
  const drawMessages = () => {
    const selected = session.selected ? records.get(`sessions/${session.selected}`) : null;
    if (!selected) {
      view.replaceChildren(h("p", { class: "muted" }, t("pickConversation")));
      return;
    }
    view.replaceChildren(
      h("h2", {}, String(selected.fields.topic ?? selected.id)),
      ...messagesOf(selected.id).map((m) => h("article", {
        class: `message ${m.fields.role === "user" ? "from-user" : "from-model"}${m.draft ? " draft" : ""}`,
        "data-message": m.id, "data-draft": m.draft ? "true" : false,
      },
      h("div", { class: "muted" }, [m.fields.role === "user" ? t("you") : String(m.fields.model ?? t("assistant")),
        typeof m.fields.date === "string" ? ` · ${m.fields.date}` : ""].join("")),
      h("div", { class: "md" }, markdown(messageText(m.fields.content))),
      m.draft ? h("div", { class: "writing", role: "status" }, t("beingWritten", { device: m.draft.device_name })) : null)));
  };
  const draw = () => {
    drawList();
    drawMessages();
  };
  search.addEventListener("input", drawList);
  draw();
  onChanges = () => {
    clearTimeout(session.conversationRedraw);
    session.conversationRedraw = setTimeout(draw, 30);
  };
}

// ---------------------------------------------------------------------------------------
// Conflicts: values that lost a race, beside the ones that won.

/** Words and the spaces between them, for a readable diff. */
function words(text) {
  return text.match(/\s+|[^\s]+/g) ?? [];
}

/**
 * Marks the words of `text` that `other` lacks (a longest-common-subsequence diff over
 * words). Long texts are shown without marks rather than spending seconds on them.
 */
function diffed(text, other, mark) {
  const a = words(text);
  const b = words(other);
  if (a.length * b.length > 4_000_000) return [text];
  const lcs = Array.from({ length: a.length + 1 }, () => new Uint32Array(b.length + 1));
  for (let i = a.length - 1; i >= 0; i--) {
    for (let j = b.length - 1; j >= 0; j--) {
      lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out = [];
  let i = 0;
  let j = 0;
  while (i < a.length) {
    if (j < b.length && a[i] === b[j]) {
      out.push(a[i]);
      i++;
      j++;
    } else if (j < b.length && lcs[i][j + 1] >= lcs[i + 1][j]) {
      j++;
    } else {
      out.push(/^\s+$/.test(a[i]) ? a[i] : h("mark", { class: mark }, a[i]));
      i++;
    }
  }
  return out;
}

function sideView(side, other, mark) {
  if (side.deleted) return h("p", { class: "muted" }, t("deletedValue"));
  if (typeof side.value === "string" && typeof other.value === "string") {
    return h("p", { class: "value" }, diffed(side.value, other.value, mark));
  }
  return h("pre", { class: "value" }, JSON.stringify(side.value, null, 2));
}

/** A human name for a record: a session's topic, a message's excerpt and its session's. */
async function describe(collection, id) {
  const excerpt = (text) => (text.length > 80 ? `${text.slice(0, 80)}…` : text);
  try {
    const record = await request("GET", `v1/records/${encodeURIComponent(collection)}/${encodeURIComponent(id)}`);
    const fields = record.fields ?? {};
    if (collection === "sessions" && typeof fields.topic === "string") return fields.topic;
    if (collection === "messages") {
      let title = "";
      if (typeof fields.session_id === "string") {
        const owner = await request("GET", `v1/records/sessions/${encodeURIComponent(fields.session_id)}`).catch(() => null);
        if (typeof owner?.fields?.topic === "string") title = `${owner.fields.topic} · `;
      }
      return `${title}${typeof fields.content === "string" ? excerpt(fields.content) : id}`;
    }
    if (typeof fields.title === "string") return fields.title;
    if (typeof fields.name === "string") return fields.name;
  } catch {
    // A record that is gone is named by its id.
  }
  return `${collection} / ${id}`;
}

async function showConflicts(content) {
  const { conflicts } = await request("GET", "v1/conflicts");
  const groups = new Map();
  for (const conflict of conflicts) {
    const key = `${conflict.collection}\u0000${conflict.id}`;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(conflict);
  }
  const section = h("section", { class: "card" },
    h("h1", {}, t("conflicts")),
    h("p", { class: "hint" }, t("conflictsHint")));
  content.append(section);
  if (groups.size === 0) section.append(h("p", { class: "muted", id: "no-conflicts" }, t("noConflicts")));
  for (const list of groups.values()) {
    const { collection, id } = list[0];
    const group = h("div", { class: "conflict-group" }, h("h2", {}, await describe(collection, id)));
    for (const conflict of list) group.append(conflictView(conflict));
    section.append(group);
  }
  // Another device resolving, or a new conflict, shows here at once.
  onChanges = () => {
    clearTimeout(session.conflictRedraw);
    session.conflictRedraw = setTimeout(() => {
      if (location.hash === "#conflicts") showTab("conflicts");
    }, 200);
  };
}

function conflictView(conflict) {
  const error = errorLine();
  const resolve = async (body) => {
    error.textContent = "";
    try {
      await request("POST", `v1/conflicts/${conflict.conflict_id}/resolve`, body);
      await showTab("conflicts");
    } catch (err) {
      error.textContent = err.message;
    }
  };
  const initial = typeof conflict.kept.value === "string"
    ? conflict.kept.value : JSON.stringify(conflict.kept.value, null, 2);
  const editor = h("div", { hidden: true },
    h("label", { for: `edit-${conflict.conflict_id}` }, t("yourValue")),
    h("textarea", { id: `edit-${conflict.conflict_id}`, rows: 5 }, initial),
    h("div", { class: "row" }, h("button", {
      type: "button", class: "primary",
      onclick: () => {
        const text = editor.querySelector("textarea").value;
        let value = text;
        if (typeof conflict.kept.value !== "string") {
          try {
            value = JSON.parse(text);
          } catch {
            error.textContent = t("notJson");
            return;
          }
        }
        resolve({ value });
      },
    }, t("save"))));
  return h("article", { class: "conflict", "data-conflict": conflict.conflict_id },
    h("div", { class: "muted" }, `${t("field")}: ${conflict.field} · ${when(conflict.created_at)}`),
    h("div", { class: "sides" },
      h("div", { class: "side kept" }, h("h3", {}, t("keptSide")), sideView(conflict.kept, conflict.lost, "only-kept")),
      h("div", { class: "side lost" }, h("h3", {}, t("lostSide")), sideView(conflict.lost, conflict.kept, "only-lost"))),
    h("div", { class: "row" },
      h("button", { type: "button", "data-action": "keep", onclick: () => resolve({ choose: "kept" }) }, t("keep")),
      h("button", { type: "button", "data-action": "take-other", onclick: () => resolve({ choose: "lost" }) }, t("takeOther")),
      h("button", { type: "button", "data-action": "edit", onclick: () => { editor.hidden = false; editor.querySelector("textarea").focus(); } }, t("edit"))),
    editor, error);
}

const KINDS = { browser: "kindBrowser", cli: "kindCli", app: "kindApp", other: "kindOther" };

async function showDevices(content) {
  const [{ devices }, { app_passwords: appPasswords }] = await Promise.all([
    request("GET", "v1/devices"), request("GET", "v1/app-passwords"),
  ]);
  const remove = (label, message, path) => h("button", {
    type: "button", class: "danger", "aria-label": `${t("revoke")}: ${label}`,
    onclick: async () => {
      if (!confirm(message)) return;
      await request("DELETE", path);
      await showTab("devices");
    },
  }, t("revoke"));
  const signIns = devices.map((device) => h("li", { "data-kind": device.kind },
    h("div", { class: "item-main" },
      h("div", { class: "item-title" }, device.name,
        h("span", { class: "badge" }, t(KINDS[device.kind] ?? "kindOther")),
        device.current ? h("span", { class: "badge" }, t("thisDevice")) : null),
      h("div", { class: "muted" }, `${t("created")}: ${when(device.created_at)} · ${t("lastSeen")}: ${when(device.last_seen_at)}`)),
    device.current ? null : remove(device.name, t("confirmRevoke", { name: device.name }), `v1/devices/${device.device_id}`)));
  // NextChat installations authenticate with app passwords: they are devices too.
  const nextchats = appPasswords.map((item) => h("li", { "data-kind": "app-password" },
    h("div", { class: "item-main" },
      h("div", { class: "item-title" }, item.label, h("span", { class: "badge" }, t("kindAppPassword"))),
      h("div", { class: "muted" }, `${t("created")}: ${when(item.created_at)} · ${t("lastUsed")}: ${when(item.last_used_at)}`)),
    remove(item.label, t("confirmDelete", { name: item.label }), `v1/app-passwords/${item.id}`)));
  content.append(h("section", { class: "card" },
    h("h1", {}, t("devices")),
    h("ul", { class: "list", id: "device-list" }, signIns, nextchats),
    devices.length > 1 ? h("div", { class: "row" }, h("button", {
      type: "button",
      onclick: async () => {
        for (const device of devices.filter((d) => !d.current)) {
          await request("DELETE", `v1/devices/${device.device_id}`);
        }
        await showTab("devices");
        root.querySelector("#content .card").append(h("p", { class: "notice", role: "status" }, t("othersSignedOut")));
      },
    }, t("signOutOthers"))) : null));
}

function copyButton(value) {
  const button = h("button", {
    type: "button", class: "copy",
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(value);
        button.textContent = t("copied");
      } catch {
        button.textContent = "—";
      }
    },
  }, t("copy"));
  return button;
}

/** The exact NextChat settings for `password`, three ways. */
function nextchatSetup(password) {
  const base = BASE.href.replace(/\/$/, "");
  const row = (name, value, literal = true) => h("tr", {},
    h("th", { scope: "row" }, name),
    h("td", {}, literal ? [h("code", {}, value), copyButton(value)] : value));
  return h("div", { id: "nextchat-setup" },
    h("h2", {}, t("setupTitle")),
    h("details", { open: true }, h("summary", {}, t("proxyWebdav")),
      h("table", { class: "settings", "data-mode": "proxy-webdav" },
        row(t("syncType"), "WebDAV", false), row(t("corsProxy"), t("on"), false),
        row(t("proxyEndpoint"), base), row(t("webdavEndpoint"), `${base}/dav/`),
        row(t("userName"), session.email), row(t("password"), password))),
    h("details", {}, h("summary", {}, t("proxyUpstash")),
      h("table", { class: "settings", "data-mode": "proxy-upstash" },
        row(t("syncType"), "UpStash", false), row(t("corsProxy"), t("on"), false),
        row(t("proxyEndpoint"), base), row(t("upstashUrl"), base),
        row(t("backupName"), "chatgpt-next-web"), row(t("upstashToken"), password))),
    h("details", {}, h("summary", {}, t("plainDav")),
      h("p", { class: "hint" }, t("plainDavHint")),
      h("p", {}, h("code", { class: "secret" }, `WHITE_WEBDAV_ENDPOINTS=${base}/dav/`)),
      h("table", { class: "settings", "data-mode": "plain-dav" },
        row(t("syncType"), "WebDAV", false), row(t("corsProxy"), t("on"), false),
        row(t("proxyEndpoint"), t("empty"), false), row(t("webdavEndpoint"), `${base}/dav/`),
        row(t("userName"), session.email), row(t("password"), password))),
    h("p", { class: "hint" }, t("pressSync")));
}

async function showAppPasswords(content) {
  const { app_passwords: list } = await request("GET", "v1/app-passwords");
  const error = errorLine();
  const created = h("div", { id: "created" });
  const passwordField = h("div", { hidden: true },
    h("p", { class: "hint" }, t("passwordNeeded")),
    ...field("confirm-password", t("confirmPassword"), "password", "current-password", { required: false }));
  const form = h("form", {
    onsubmit: async (e) => {
      e.preventDefault();
      error.textContent = "";
      const data = new FormData(e.target);
      const body = { label: data.get("label") };
      if (!passwordField.hidden) body.password = data.get("confirm-password");
      try {
        const made = await request("POST", "v1/app-passwords", body);
        await showTab("nextchat");
        const slot = root.querySelector("#created");
        slot.append(h("div", { class: "card" },
          h("h2", {}, made.label),
          h("p", { class: "hint" }, t("shownOnce")),
          h("p", {}, h("span", { class: "secret", id: "new-app-password" }, made.password), " ", copyButton(made.password)),
          nextchatSetup(made.password)));
        slot.scrollIntoView({ behavior: "smooth" });
      } catch (err) {
        if (err.code === "password_required") {
          passwordField.hidden = false;
          passwordField.querySelector("input").focus();
        } else {
          error.textContent = err.message;
        }
      }
    },
  },
  ...field("label", t("label"), "text", "off", { placeholder: t("labelPlaceholder"), maxlength: 100 }),
  passwordField,
  error,
  h("div", { class: "row" }, h("button", { class: "primary", type: "submit" }, t("create"))));
  // An end-to-end encrypted account's values are ciphertext NextChat cannot read: its sync
  // fails on purpose, and the page says why.
  const encrypted = await request("GET", "v1/records/nextsync-keys/keyring").then(
    (keyring) => !keyring.deleted,
    (err) => { if (err.status === 404) return false; throw err; });
  if (encrypted) {
    content.append(h("section", { class: "card", id: "e2ee-notice" },
      h("h2", {}, t("e2eeTitle")),
      h("p", { class: "error" }, t("e2eeNextchat"))));
  }
  content.append(
    h("section", { class: "card" },
      h("h1", {}, t("appPasswordsTitle")),
      h("p", { class: "hint" }, t("appPasswordsHint")),
      form),
    created,
    h("section", { class: "card" },
      list.length === 0 ? h("p", { class: "muted" }, t("none")) : h("ul", { class: "list", id: "app-password-list" },
        list.map((item) => h("li", {},
          h("div", { class: "item-main" },
            h("div", { class: "item-title" }, item.label),
            h("div", { class: "muted" }, `${t("created")}: ${when(item.created_at)} · ${t("lastUsed")}: ${when(item.last_used_at)}`)),
          h("button", {
            type: "button", class: "danger", "aria-label": `${t("revoke")}: ${item.label}`,
            onclick: async () => {
              if (!confirm(t("confirmDelete", { name: item.label }))) return;
              await request("DELETE", `v1/app-passwords/${item.id}`);
              await showTab("nextchat");
            },
          }, t("revoke")))))));
}

async function showSettings(content) {
  const settings = await request("GET", "v1/nextchat/settings");
  const notice = h("p", { class: "notice", role: "status" });
  const toggle = (key, label, hint) => {
    const id = `setting-${key}`;
    return h("div", { class: "switch" },
      h("input", {
        type: "checkbox", id, checked: settings[key],
        onchange: async (e) => {
          notice.textContent = "";
          const saved = await request("PUT", "v1/nextchat/settings", { [key]: e.target.checked });
          e.target.checked = saved[key];
          notice.textContent = t("saved");
        },
      }),
      h("div", {}, h("label", { for: id }, label), h("p", { class: "hint" }, hint)));
  };
  content.append(h("section", { class: "card" },
    h("h1", {}, t("syncSettingsTitle")),
    toggle("sync_settings", t("syncSettingsLabel"), t("syncSettingsHint")),
    toggle("sync_secrets", t("syncSecretsLabel"), t("syncSecretsHint")),
    notice));
  content.append(healthPanel());
}

// ---------------------------------------------------------------------------------------
// Sync health: the records this page holds against the server's digests
// (crates/core/src/digest.rs: the same hash, computed here with Web Crypto), repairing
// only the buckets that differ.

const encoder = new TextEncoder();

function u64le(n) {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(n), true);
  return bytes;
}

function concat(chunks) {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

function compareBytes(a, b) {
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

/** 16 bytes (a little-endian u128), or null for a deleted record. */
async function recordHash(r) {
  if (r.deleted) return null;
  const fields = Object.keys(r.fields).map((name) => [encoder.encode(name), encoder.encode(String(r.stamps?.[name] ?? ""))]);
  fields.sort((a, b) => compareBytes(a[0], b[0]) || compareBytes(a[1], b[1]));
  const chunks = [];
  for (const part of [r.collection, r.id]) {
    const bytes = encoder.encode(part);
    chunks.push(u64le(bytes.length), bytes);
  }
  chunks.push(u64le(fields.length));
  for (const [name, stamp] of fields) chunks.push(u64le(name.length), name, u64le(stamp.length), stamp);
  chunks.push(r.tombstone ? concat([Uint8Array.of(1), encoder.encode(r.tombstone)]) : Uint8Array.of(0));
  return (await sha256(concat(chunks))).slice(0, 16);
}

async function bucketOf(collection, id, buckets) {
  const c = encoder.encode(collection);
  const digest = await sha256(concat([u64le(c.length), c, encoder.encode(id)]));
  return new DataView(digest.buffer).getUint32(0, true) % buckets;
}

/** The digest's text form: the u128 as 32 hex digits. */
function digestHex(bytes) {
  return [...bytes].reverse().map((b) => b.toString(16).padStart(2, "0")).join("");
}

function bucketsFor(records) {
  let n = 1;
  while (n * 64 < records && n < 4096) n *= 2;
  return n;
}

/** Per collection: digest and live count of the records this page holds. */
async function pageDigests(filter = () => true) {
  const out = new Map();
  for (const r of records.values()) {
    if (!filter(r)) continue;
    const hash = await recordHash(r);
    if (!hash) continue;
    if (!out.has(r.collection)) out.set(r.collection, { digest: new Uint8Array(16), records: 0 });
    const entry = out.get(r.collection);
    for (let i = 0; i < 16; i++) entry.digest[i] ^= hash[i];
    entry.records += 1;
  }
  return out;
}

/** The server's digests once this page's feed stands where they hold. */
async function digestsAtPageCursor() {
  for (let attempt = 0; attempt < 10; attempt++) {
    const server = await request("GET", "v1/sync/digest");
    if (server.cursor === session.cursor || (!session.cursor && server.collections.length === 0)) return server;
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
  throw new Error(t("healthBusy"));
}

/** Compares, repairs the buckets that differ, and says what it did. */
async function verifyPage() {
  const server = await digestsAtPageCursor();
  const local = await pageDigests();
  const names = new Set([...server.collections.map((c) => c.collection), ...local.keys()]);
  const differing = [];
  for (const name of names) {
    const theirs = server.collections.find((c) => c.collection === name);
    const ours = local.get(name);
    const same = (theirs?.records ?? 0) === (ours?.records ?? 0)
      && (theirs?.digest ?? "0".repeat(32)) === (ours ? digestHex(ours.digest) : "0".repeat(32));
    if (!same) differing.push({ name, records: Math.max(theirs?.records ?? 0, ours?.records ?? 0) });
  }
  const repaired = [];
  for (const { name, records: count } of differing) {
    const n = bucketsFor(count);
    const theirs = await request("GET", `v1/sync/digest/${encodeURIComponent(name)}?buckets=${n}`);
    const ours = Array.from({ length: n }, () => new Uint8Array(16));
    const bucketOfRecord = new Map();
    for (const r of records.values()) {
      if (r.collection !== name) continue;
      const bucket = await bucketOf(name, r.id, n);
      bucketOfRecord.set(r.id, bucket);
      const hash = await recordHash(r);
      if (hash) for (let i = 0; i < 16; i++) ours[bucket][i] ^= hash[i];
    }
    const wanted = theirs.buckets.map((d, b) => (d === digestHex(ours[b]) ? null : b)).filter((b) => b !== null);
    for (let i = 0; i < wanted.length; i += 256) {
      const chunk = wanted.slice(i, i + 256);
      const answer = await request("GET",
        `v1/sync/digest/${encodeURIComponent(name)}/records?buckets=${n}&bucket=${chunk.join(",")}`);
      const sent = new Set(answer.records.map((r) => r.id));
      for (const r of answer.records) {
        const key = `${r.collection}/${r.id}`;
        const mine = records.get(key);
        const before = mine ? digestHex((await recordHash(mine)) ?? new Uint8Array(16)) : null;
        const after = r.deleted ? null : digestHex(await recordHash(r));
        if (before !== after) repaired.push(key);
        if (r.deleted) records.delete(key);
        else records.set(key, r);
      }
      for (const [id, bucket] of bucketOfRecord) {
        if (chunk.includes(bucket) && !sent.has(id)) {
          records.delete(`${name}/${id}`);
          repaired.push(`${name}/${id}`);
        }
      }
    }
  }
  if (repaired.length) onChanges?.([]);
  return { collections: names.size, differing: differing.map((d) => d.name), repaired, at: Date.now() };
}

function healthPanel() {
  const result = h("p", { id: "health-result", role: "status" });
  const details = h("ul", { class: "plain", id: "health-details" });
  const error = errorLine();
  const show = (health) => {
    if (!health) {
      result.textContent = t("healthNever");
      return;
    }
    result.textContent = health.repaired.length
      ? t(health.repaired.length === 1 ? "healthRepairedOne" : "healthRepaired", { count: health.repaired.length, collections: health.differing.join(", "), when: when(health.at) })
      : t("healthOk", { count: health.collections, when: when(health.at) });
    details.replaceChildren(...health.repaired.slice(0, 50).map((key) => h("li", {}, key)));
  };
  const button = h("button", {
    type: "button", id: "verify-now",
    onclick: async () => {
      error.textContent = "";
      button.disabled = true;
      try {
        session.health = await verifyPage();
        show(session.health);
      } catch (err) {
        error.textContent = err.message;
      } finally {
        button.disabled = false;
      }
    },
  }, t("verifyNow"));
  show(session.health);
  return h("section", { class: "card" },
    h("h2", {}, t("healthTitle")),
    h("p", { class: "hint" }, t("healthHint")),
    result, details,
    h("div", { class: "row" }, button),
    error);
}

// ---------------------------------------------------------------------------------------
// Trash and restore to a moment: deleted records wait here; the account can go back in time.

/** A human name for a record from its own fields (a trashed record cannot be read back). */
function nameOf(collection, fields) {
  const excerpt = (text) => (text.length > 80 ? `${text.slice(0, 80)}…` : text);
  if (typeof fields.topic === "string") return fields.topic;
  if (collection === "messages" && fields.content !== undefined) return excerpt(messageText(fields.content));
  if (typeof fields.title === "string") return fields.title;
  if (typeof fields.name === "string") return fields.name;
  return `${collection} / ${fields.id ?? ""}`.replace(/ \/ $/, "");
}

const COLLECTION_NAMES = { sessions: "conversationKind", messages: "messageKind", masks: "maskKind", prompts: "promptKind" };

function kindOf(collection) {
  return COLLECTION_NAMES[collection] ? t(COLLECTION_NAMES[collection]) : collection;
}

/** Trash items grouped by the write that deleted them; a conversation leads its messages. */
function trashGroups(items) {
  const groups = new Map();
  for (const item of items) {
    if (!groups.has(item.batch)) groups.set(item.batch, []);
    groups.get(item.batch).push(item);
  }
  const rank = (item) => (item.collection === "sessions" ? 0 : item.collection === "messages" ? 2 : 1);
  return [...groups.values()].map((group) => group.sort((a, b) => rank(a) - rank(b) || a.seq - b.seq));
}

async function showTrash(content) {
  const notice = h("p", { class: "notice", role: "status", id: "trash-notice" });
  const error = errorLine();
  const list = h("ul", { class: "list", id: "trash-list" });
  const more = h("button", { type: "button", id: "trash-more", hidden: true }, t("loadMore"));
  const items = [];
  let next = null;

  const draw = () => {
    const groups = trashGroups(items);
    list.replaceChildren(...(groups.length === 0 ? [h("li", { class: "muted", id: "trash-empty" }, t("trashEmpty"))]
      : groups.map((group) => {
        const lead = group[0];
        const others = group.length - 1;
        return h("li", { "data-trash": `${lead.collection}/${lead.id}` },
          h("div", { class: "item-main" },
            h("div", { class: "item-title" }, nameOf(lead.collection, lead.fields)),
            h("div", { class: "muted" }, [
              kindOf(lead.collection),
              others > 0 ? t("deletedWith", { count: others }) : "",
              t("deletedAt", { when: when(lead.deleted_at) }),
              t("expiresAt", { when: when(lead.expires_at) }),
            ].filter(Boolean).join(" · "))),
          h("div", { class: "row" },
            h("button", {
              type: "button", class: "primary", "data-action": "restore",
              onclick: () => act(async () => {
                const path = `v1/trash/${encodeURIComponent(lead.collection)}/${encodeURIComponent(lead.id)}/restore?together=true`;
                const { restored } = await request("POST", path);
                notice.textContent = t("restoredCount", { count: restored.length });
              }),
            }, t("restore")),
            h("button", {
              type: "button", class: "danger", "data-action": "purge",
              onclick: () => act(async () => {
                if (!confirm(t("confirmPurge", { name: nameOf(lead.collection, lead.fields), count: group.length }))) return false;
                for (const item of group) {
                  await request("DELETE", `v1/trash/${encodeURIComponent(item.collection)}/${encodeURIComponent(item.id)}`)
                    .catch((err) => { if (err.status !== 404) throw err; });
                }
                notice.textContent = t("purgedCount", { count: group.length });
              }),
            }, t("deleteForever"))));
      })));
    more.hidden = !next;
    emptyButton.hidden = items.length === 0;
  };
  const load = async (reset) => {
    if (reset) {
      items.length = 0;
      next = null;
    }
    const page = await request("GET", `v1/trash?limit=200${next && !reset ? `&before=${next}` : ""}`);
    items.push(...page.items);
    next = page.next ?? null;
    draw();
  };
  /** Runs a trash action, then shows the trash as it is now. */
  const act = async (action) => {
    error.textContent = "";
    notice.textContent = "";
    try {
      if ((await action()) === false) return;
      await load(true);
    } catch (err) {
      error.textContent = err.message;
    }
  };
  more.addEventListener("click", () => load(false).catch((err) => { error.textContent = err.message; }));
  const emptyButton = h("button", {
    type: "button", class: "danger", id: "empty-trash", hidden: true,
    onclick: () => act(async () => {
      if (!confirm(t("confirmEmptyTrash"))) return false;
      const { purged } = await request("DELETE", "v1/trash");
      notice.textContent = t("purgedCount", { count: purged });
    }),
  }, t("emptyTrash"));
  content.append(h("section", { class: "card" },
    h("h1", {}, t("trash")),
    h("p", { class: "hint" }, t("trashHint")),
    list, more,
    h("div", { class: "row" }, emptyButton),
    notice, error));
  content.append(restoreToMoment());
  await load(true);
  // A delete or restore on another device shows here at once.
  onChanges = () => {
    clearTimeout(session.trashRedraw);
    session.trashRedraw = setTimeout(() => load(true).catch(() => {}), 300);
  };
}

/** A `datetime-local` value (local time, to the second) for a moment. */
function localInput(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

function restoreToMoment() {
  const moment = h("input", {
    type: "datetime-local", id: "restore-at", step: 1, value: localInput(new Date(Date.now() - 3_600_000)),
  });
  const preview = h("div", { id: "restore-preview" });
  const notice = h("p", { class: "notice", role: "status", id: "restore-notice" });
  const error = errorLine();
  const atIso = () => new Date(moment.value).toISOString();
  const run = async (dryRun) => {
    error.textContent = "";
    notice.textContent = "";
    try {
      return await request("POST", "v1/restore", { at: atIso(), dry_run: dryRun });
    } catch (err) {
      error.textContent = err.code === "beyond_retention" ? t("beyondRetention") : err.message;
      return null;
    }
  };
  const showPlan = (plan) => {
    const total = plan.restored + plan.reverted + plan.trashed;
    if (total === 0) {
      preview.replaceChildren(h("p", { class: "muted", id: "restore-nothing" }, t("restoreNothing")));
      return;
    }
    const counts = h("p", { id: "restore-counts" }, t("restorePlan", {
      restored: plan.restored, reverted: plan.reverted, trashed: plan.trashed,
    }));
    const byKind = new Map();
    for (const change of plan.changes) {
      const key = `${change.action}\u0000${change.collection}`;
      byKind.set(key, (byKind.get(key) ?? 0) + 1);
    }
    const lines = [...byKind.entries()].map(([key, count]) => {
      const [action, collection] = key.split("\u0000");
      return h("li", {}, `${t(`action_${action}`)} · ${kindOf(collection)} · ${count}`);
    });
    const confirmButton = h("button", {
      type: "button", class: "primary", id: "restore-confirm",
      onclick: async () => {
        confirmButton.disabled = true;
        const done = await run(false);
        confirmButton.disabled = false;
        if (!done) return;
        preview.replaceChildren();
        notice.textContent = t("restoreDone", { when: when(Date.parse(done.at)) });
      },
    }, t("restoreConfirm", { count: total }));
    preview.replaceChildren(counts, h("ul", { class: "plain" }, lines), h("div", { class: "row" }, confirmButton));
  };
  return h("section", { class: "card" },
    h("h2", {}, t("restoreTitle")),
    h("p", { class: "hint" }, t("restoreHint")),
    h("label", { for: "restore-at" }, t("restoreAt")),
    moment,
    h("div", { class: "row" }, h("button", {
      type: "button", id: "restore-preview-button",
      onclick: async () => {
        preview.replaceChildren();
        const plan = await run(true);
        if (plan) showPlan(plan);
      },
    }, t("restorePreview"))),
    preview, notice, error);
}

// ---------------------------------------------------------------------------------------
// Backups: the last NextChat uploads, export and import.

function size(bytes) {
  return bytes >= 1_000_000 ? `${(bytes / 1_000_000).toFixed(1)} MB` : `${Math.max(1, Math.round(bytes / 1000))} KB`;
}

function summary(merged) {
  return t("mergeSummary", { created: merged.created, edited: merged.edited });
}

async function showBackups(content) {
  const { snapshots } = await request("GET", "v1/nextchat/snapshots");
  const notice = h("p", { class: "notice", role: "status", id: "backup-notice" });
  const error = errorLine();
  content.append(h("section", { class: "card" },
    h("h1", {}, t("snapshotsTitle")),
    h("p", { class: "hint" }, t("snapshotsHint")),
    snapshots.length === 0 ? h("p", { class: "muted" }, t("none")) : h("ul", { class: "list", id: "snapshot-list" },
      snapshots.map((snap) => h("li", {},
        h("div", { class: "item-main" },
          h("div", { class: "item-title" }, when(snap.created_at)),
          h("div", { class: "muted" }, t("snapshotLine", {
            source: snap.device ?? snap.source, sessions: snap.sessions, messages: snap.messages, size: size(snap.bytes),
          }))),
        h("button", {
          type: "button", "data-action": "restore",
          onclick: async () => {
            if (!confirm(t("confirmRestore", { sessions: snap.sessions, messages: snap.messages, when: when(snap.created_at) }))) return;
            error.textContent = "";
            try {
              const merged = await request("POST", `v1/nextchat/snapshots/${snap.snapshot_id}/restore`, {});
              notice.textContent = summary(merged);
            } catch (err) {
              error.textContent = err.message;
            }
          },
        }, t("restore"))))),
    notice, error));

  const progress = h("progress", { max: 100, value: 0, hidden: true, id: "import-progress" });
  const importNotice = h("p", { class: "notice", role: "status", id: "import-notice" });
  const importError = errorLine();
  const file = h("input", { type: "file", id: "import-file", accept: "application/json,.json" });
  content.append(h("section", { class: "card" },
    h("h2", {}, t("exportTitle")),
    h("p", { class: "hint" }, t("exportHint")),
    h("div", { class: "row" }, h("button", {
      type: "button", id: "export",
      onclick: async () => {
        const response = await fetch(new URL("v1/export?format=nextchat", BASE), {
          headers: { authorization: `Bearer ${session.access}` },
        });
        if (!response.ok) return;
        const link = h("a", { href: URL.createObjectURL(await response.blob()), download: "nextsync-nextchat-backup.json" });
        document.body.append(link);
        link.click();
        link.remove();
      },
    }, t("export"))),
    h("h2", {}, t("importTitle")),
    h("p", { class: "hint" }, t("importHint")),
    h("label", { for: "import-file" }, t("importFile")),
    file,
    progress,
    h("div", { class: "row" }, h("button", {
      type: "button", id: "import",
      onclick: () => {
        importNotice.textContent = "";
        importError.textContent = "";
        const chosen = file.files[0];
        if (!chosen) return;
        // XMLHttpRequest, for its upload progress events.
        const xhr = new XMLHttpRequest();
        xhr.open("POST", new URL("v1/import?format=nextchat", BASE));
        xhr.setRequestHeader("authorization", `Bearer ${session.access}`);
        xhr.setRequestHeader("content-type", "application/json");
        progress.hidden = false;
        progress.value = 0;
        xhr.upload.onprogress = (e) => {
          if (e.lengthComputable) progress.value = Math.round((e.loaded / e.total) * 100);
        };
        xhr.onload = () => {
          progress.value = 100;
          const data = xhr.responseText ? JSON.parse(xhr.responseText) : null;
          if (xhr.status === 200) importNotice.textContent = summary(data);
          else importError.textContent = data?.error?.message ?? xhr.statusText;
        };
        xhr.onerror = () => { importError.textContent = t("offline"); };
        xhr.send(chosen);
      },
    }, t("import"))),
    importNotice, importError));
}

async function showAccount(content) {
  const changeError = errorLine();
  const changeNotice = h("p", { class: "notice", role: "status" });
  const change = h("form", {
    onsubmit: async (e) => {
      e.preventDefault();
      changeError.textContent = "";
      const data = new FormData(e.target);
      try {
        await request("POST", "v1/auth/password/change", {
          current_password: data.get("current"), new_password: data.get("new"),
        });
        e.target.reset();
        changeNotice.textContent = t("passwordChanged");
      } catch (err) {
        changeError.textContent = err.message;
      }
    },
  },
  h("input", { type: "email", name: "username", autocomplete: "username", value: session.email, hidden: true, readonly: true }),
  ...field("current", t("currentPassword"), "password", "current-password"),
  ...field("new", t("newPassword"), "password", "new-password", { minlength: 10 }),
  changeError, changeNotice,
  h("div", { class: "row" }, h("button", { class: "primary", type: "submit" }, t("changePassword"))));

  const deleteError = errorLine();
  const remove = h("form", {
    onsubmit: async (e) => {
      e.preventDefault();
      deleteError.textContent = "";
      const data = new FormData(e.target);
      if (data.get("confirm-email") !== session.email) {
        deleteError.textContent = t("deleteHint");
        return;
      }
      try {
        await request("DELETE", "v1/me", { password: data.get("delete-password") });
        signedOut(t("deleted"));
      } catch (err) {
        deleteError.textContent = err.message;
      }
    },
  },
  h("p", { class: "hint" }, t("deleteHint")),
  ...field("confirm-email", t("email"), "email", "off"),
  ...field("delete-password", t("password"), "password", "current-password"),
  deleteError,
  h("div", { class: "row" }, h("button", { class: "danger", type: "submit" }, t("deleteAccount"))));

  content.append(
    h("section", { class: "card" }, h("h1", {}, t("accountTitle")), h("p", {}, session.email), h("h2", {}, t("changePassword")), change),
    h("section", { class: "card" }, h("h2", {}, t("deleteAccount")), remove));
}

// ---------------------------------------------------------------------------------------
// Start.

async function route() {
  const params = new URLSearchParams(location.search);
  if (location.pathname.endsWith("/reset-password") && params.get("token")) {
    showReset(params.get("token"));
    return;
  }
  if (session.access || (await refresh()) === true) {
    await startApp();
  } else {
    showSignIn();
  }
}

route();
