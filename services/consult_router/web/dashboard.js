// The consultants' dashboard: sign in, say you are available, take offers, read the
// case, advise; the queue of open cases alongside. Everything arrives over one socket
// that replays what it missed after a reconnect.
import { ApiError, createApi, devSignIn, devSignInAvailable, wsUrl } from "./common/api.js";
import { LiveSocket } from "./common/live.js";
import { flagBadge, humanFlag, news2Table, riskClass, RISK_LABELS } from "./common/news2.js";

const $ = (id) => document.getElementById(id);
const store = window.sessionStorage;
const TOKEN = "reach.dashboard.token";
const api = createApi(() => store.getItem(TOKEN));

const PATHWAYS = ["sdec", "utc", "gp", "urgent_community_response", "mental_health", "falls",
  "frailty", "hot_clinic", "maternity", "pharmacy", "other"];
const WITHDRAWN = {
  accepted_elsewhere: "a colleague accepted it",
  expired: "its time ran out",
  cancelled: "the crew cancelled it",
  reassigned: "it was passed on",
};

const state = {
  me: null,
  lastSeq: null,        // the newest logged message seen: a reconnect replays after it
  offers: new Map(),    // offer_id -> offer
  consult: null,        // the consult being worked on
  queue: [],
  live: null,
  titleTimer: null,
  overrideFlags: null,
};

// ---- small helpers -------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-") || key.startsWith("aria-") || key === "role") node.setAttribute(key, value);
    else node[key] = value;
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

function since(iso) {
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  const minutes = Math.floor(seconds / 60);
  return minutes ? `${minutes} min ${String(seconds % 60).padStart(2, "0")} s` : `${seconds} s`;
}

function notice(text) {
  $("notice").textContent = text;
  $("notice").hidden = !text;
}

function describe(summary) {
  const age = summary.age_years === null || summary.age_years === undefined ? "age unknown" : `${summary.age_years}`;
  return `${age}, ${summary.sex || "sex unknown"} · ${humanFlag(summary.complaint || summary.presenting_complaint || "other")} · ${summary.call_category}`;
}

function news2Badge(news2) {
  if (!news2) return el("span", { class: "news2-total risk-none", text: "NEWS2 –" });
  const badge = el("span", { class: `news2-total ${riskClass(news2.risk)}`, text: `NEWS2 ${news2.score} · ${RISK_LABELS[news2.risk] || news2.risk}` });
  return news2.red_flag ? el("span", {}, badge, " ", flagBadge(document, "Red score")) : badge;
}

function flags(list) {
  return el("span", {}, ...(list || []).map((flag) => flagBadge(document, humanFlag(flag))));
}

// ---- alerting: sound and title flash for an offer -----------------------------

function chime() {
  try {
    const audio = new (window.AudioContext || window.webkitAudioContext)();
    for (const [start, pitch] of [[0, 880], [0.25, 660], [0.5, 880]]) {
      const tone = audio.createOscillator();
      const gain = audio.createGain();
      tone.frequency.value = pitch;
      gain.gain.setValueAtTime(0.2, audio.currentTime + start);
      gain.gain.exponentialRampToValueAtTime(0.001, audio.currentTime + start + 0.22);
      tone.connect(gain).connect(audio.destination);
      tone.start(audio.currentTime + start);
      tone.stop(audio.currentTime + start + 0.23);
    }
  } catch {
    // No audio (a policy or no device): the card and the title still show it.
  }
}

function flashTitle() {
  clearInterval(state.titleTimer);
  if (!state.offers.size) {
    document.title = "reach · dashboard";
    return;
  }
  let on = false;
  state.titleTimer = setInterval(() => {
    on = !on;
    document.title = on ? `▶ ${state.offers.size} offer${state.offers.size > 1 ? "s" : ""} waiting` : "reach · dashboard";
  }, 800);
}

// ---- offers --------------------------------------------------------------------

function renderOffers() {
  const list = $("offer-list");
  list.replaceChildren();
  for (const offer of state.offers.values()) {
    const summary = offer.case;
    const countdown = el("span", { class: "countdown", "data-expires": offer.expires_at, role: "timer", "aria-live": "off" });
    const reason = el("input", { id: `reason-${offer.offer_id}`, placeholder: "Reason (optional)", maxLength: 500 });
    const card = el("article", { class: "offer", "data-offer": offer.offer_id, "aria-label": `Offer: case ${summary.reference}` },
      el("h3", { text: `Offer · ${summary.reference}${offer.broadcast ? " · to everyone on call" : ""}` }),
      el("p", {}, el("strong", { text: describe(summary) }), " · ", humanFlag(summary.specialty)),
      el("p", {}, news2Badge(summary.news2), " ", flags(summary.risk_flags)),
      el("p", { class: "muted" }, "Waiting ", el("span", { class: "since", "data-since": summary.waiting_since, text: since(summary.waiting_since) }),
        " · answer within ", countdown),
      summary.handover && summary.handover.text ? el("p", { class: "handover", text: summary.handover.text }) : null,
      el("div", { class: "row" },
        el("button", { type: "button", class: "good", text: "Accept", onclick: () => accept(offer.offer_id) }),
        el("label", { htmlFor: `reason-${offer.offer_id}`, class: "visually-hidden", text: "Reason for declining" }),
        reason,
        el("button", { type: "button", text: "Decline", onclick: () => decline(offer.offer_id, reason.value) })),
      el("p", { class: "error", role: "alert", id: `offer-error-${offer.offer_id}` }));
    list.append(card);
  }
  tick();
  flashTitle();
}

function accept(offerId) {
  if (!state.live.send({ type: "accept", offer_id: offerId })) {
    showOfferError(offerId, "Not connected: wait for the connection and try again.");
  }
}

function decline(offerId, reason) {
  state.live.send({ type: "decline", offer_id: offerId, reason: reason || null });
  state.offers.delete(offerId);
  renderOffers();
}

function showOfferError(offerId, text) {
  const target = $(`offer-error-${offerId}`);
  if (target) target.textContent = text;
  else notice(text);
}

// ---- the consult ---------------------------------------------------------------

function showConsult(consult) {
  state.consult = consult;
  const section = $("consult");
  if (!consult) {
    section.hidden = true;
    return;
  }
  const c = consult.case;
  section.hidden = false;
  $("consult-reference").textContent = c.reference;
  $("consult-summary").textContent = `${describe(c)} · ${humanFlag(c.requested_specialty || "")}`;
  $("consult-crew").textContent = `Crew ${c.callsign || "unknown"}${c.paramedic_name ? ` (${c.paramedic_name})` : ""}`;
  $("consult-waited").dataset.since = c.created_at;
  $("consult-flags").replaceChildren(flags(c.risk_flags));
  $("consult-news2").replaceChildren(news2Table(document, c.news2, c.observations));
  $("handover-format").textContent = c.handover ? `(${c.handover.format})` : "";
  $("handover-text").textContent = c.handover && c.handover.text ? c.handover.text : "No handover text.";
  $("crew-proposal").textContent = c.proposed_disposition ? `The crew proposes: ${humanFlag(c.proposed_disposition)}` : "";
  const done = consult.status !== "accepted";
  $("advice-form").hidden = done;
  $("advised").hidden = !done;
  if (done) {
    $("advised").textContent = consult.status === "cancelled"
      ? "The crew cancelled this request."
      : `Advice sent: ${humanFlag(consult.disposition || "")}${consult.pathway ? ` (${humanFlag(consult.pathway)})` : ""}. The crew sees it now.`;
  } else {
    resetOverride();
  }
  tick();
}

function resetOverride() {
  state.overrideFlags = null;
  $("override").hidden = true;
  $("confirm-override").checked = false;
  $("advice-error").textContent = "";
}

async function sendAdvice(event) {
  event.preventDefault();
  const consult = state.consult;
  if (!consult) return;
  const chosen = document.querySelector('input[name="disposition"]:checked');
  const pathway = $("pathway").value || null;
  $("advice-error").textContent = "";
  if (!chosen) {
    $("advice-error").textContent = "Choose where the patient goes.";
    return;
  }
  if (chosen.value === "redirect" && !pathway) {
    $("pathway").setAttribute("aria-invalid", "true");
    $("advice-error").textContent = "An alternative pathway needs the pathway.";
    $("pathway").focus();
    return;
  }
  $("pathway").removeAttribute("aria-invalid");
  const body = {
    disposition: chosen.value,
    pathway,
    advice: $("advice").value,
    safety_netting: $("safety_netting").value,
    confirm_risk_override: Boolean(state.overrideFlags) && $("confirm-override").checked,
  };
  if (state.overrideFlags && !body.confirm_risk_override) {
    $("advice-error").textContent = "Confirm the risk flags above, or choose to convey.";
    $("confirm-override").focus();
    return;
  }
  $("send-advice").disabled = true;
  try {
    const { body: updated } = await api.post(`/v1/consults/${consult.consult_id}/advice`, body);
    showConsult(updated);
    notice(`Advice for ${updated.case.reference} sent.`);
  } catch (error) {
    if (error instanceof ApiError && error.code === "risk_override_required") {
      state.overrideFlags = error.body.risk_flags || [];
      $("override-flags").replaceChildren(flags(state.overrideFlags));
      $("override").hidden = false;
      $("confirm-override").focus();
      $("advice-error").textContent = "This case carries risk flags: confirm to advise against conveying.";
    } else {
      $("advice-error").textContent = error.message;
    }
  } finally {
    $("send-advice").disabled = false;
  }
}

// ---- the queue -----------------------------------------------------------------

function renderQueue() {
  const body = $("queue-body");
  body.replaceChildren();
  const items = [...state.queue].sort((a, b) => a.priority - b.priority || Date.parse(a.waiting_since) - Date.parse(b.waiting_since));
  for (const item of items) {
    const mine = item.held_by.includes(state.me && state.me.id);
    const claim = el("button", { type: "button", text: "Claim", "aria-label": `Claim case ${item.reference}`,
      disabled: item.status === "accepted", onclick: () => claimCase(item) });
    const row = el("tr", { class: item.escalated ? "escalated" : "", "data-case": item.case_id },
      el("td", { class: "priority", text: `P${item.priority}` }),
      el("td", {}, el("strong", { text: item.reference }), " ", el("span", { class: "muted", text: humanFlag(item.call_category) })),
      el("td", { text: humanFlag(item.specialty) }),
      el("td", {}, news2Badge(item.news2), " ", flags(item.risk_flags)),
      el("td", {}, el("span", { class: "since", "data-since": item.waiting_since, text: since(item.waiting_since) })),
      el("td", { text: mine ? "offered to you" : item.held_by.length ? `offered (${item.held_by.length})` : item.status }),
      el("td", {}, claim));
    body.append(row);
  }
  $("queue-empty").hidden = items.length > 0;
  $("queue-count").textContent = items.length ? `(${items.length})` : "";
}

async function claimCase(item) {
  $("queue-error").textContent = "";
  try {
    await api.post(`/v1/queue/${item.case_id}/claim`);
    notice(`You have case ${item.reference}.`);
  } catch (error) {
    $("queue-error").textContent = error.code === "case_taken"
      ? `${item.reference} has just been taken by a colleague.` : error.message;
  }
}

// ---- the socket ----------------------------------------------------------------

function setConnection(connection) {
  const words = { live: "live", replaying: "reconnected", connecting: "connecting…",
    reconnecting: "reconnecting…", offline: "offline", refused: "signed out" };
  $("connection").dataset.state = connection;
  $("connection").textContent = words[connection] || connection;
  if (connection === "refused") signOut("Your sign-in was refused or has expired: sign in again.");
}

function setStatus(status) {
  for (const button of $("availability").querySelectorAll("button")) {
    button.setAttribute("aria-pressed", String(button.dataset.status === status));
  }
}

function onMessage(message) {
  if (typeof message.seq === "number" && ["offer", "offer_withdrawn", "assigned", "case_updated"].includes(message.type)) {
    state.lastSeq = Math.max(state.lastSeq || 0, message.seq);
  }
  switch (message.type) {
    case "welcome": return onWelcome(message);
    case "queue":
      state.queue = message.items;
      return renderQueue();
    case "offer":
      state.offers.set(message.offer_id, message);
      chime();
      return renderOffers();
    case "offer_withdrawn": {
      const offer = state.offers.get(message.offer_id);
      state.offers.delete(message.offer_id);
      renderOffers();
      if (offer) notice(`Offer for ${offer.case.reference} withdrawn: ${WITHDRAWN[message.reason] || message.reason}.`);
      return undefined;
    }
    case "assigned":
      // The offer that became this consult is done with (a claim may also have taken it).
      for (const [offerId, offer] of state.offers) {
        if (offer.case.id === message.case.id) state.offers.delete(offerId);
      }
      renderOffers();
      return showConsult({ consult_id: message.consult_id, status: "accepted", case: message.case });
    case "case_updated":
      if (state.consult && message.consult_id === state.consult.consult_id) showConsult(message);
      return undefined;
    case "status":
      return setStatus(message.status);
    case "error":
      if (message.offer_id) {
        const text = message.error === "offer_taken" ? "A colleague took this case first." :
          message.error === "offer_expired" ? "This offer's time ran out." : message.detail;
        showOfferError(message.offer_id, text);
        if (["offer_taken", "offer_expired"].includes(message.error)) {
          setTimeout(() => { state.offers.delete(message.offer_id); renderOffers(); }, 2500);
        }
      } else {
        notice(message.detail);
      }
      return undefined;
    default:
      return undefined;
  }
}

function onWelcome(welcome) {
  const replayed = welcome.replay_from !== null && welcome.replay_from !== undefined;
  const missed = replayed ? Math.max(0, welcome.seq - welcome.replay_from) : 0;
  state.me = welcome.consultant;
  $("who").textContent = `${welcome.consultant.name} · ${welcome.consultant.specialties.map(humanFlag).join(", ")}`;
  setStatus(welcome.consultant.status);
  state.offers = new Map(welcome.offers.map((offer) => [offer.offer_id, offer]));
  renderOffers();
  const open = welcome.consults.find((consult) => consult.status === "accepted");
  if (open) showConsult(open);
  if (state.lastSeq === null || !replayed) state.lastSeq = welcome.seq - (replayed ? missed : 0);
  if (replayed) {
    $("connection").textContent = missed ? `reconnected: ${missed} missed update${missed > 1 ? "s" : ""} replayed` : "reconnected: nothing missed";
    notice(missed ? `Reconnected. ${missed} update${missed > 1 ? "s" : ""} you missed ${missed > 1 ? "were" : "was"} replayed.` : "Reconnected. You missed nothing.");
  }
}

function connect() {
  state.live = new LiveSocket({
    url: wsUrl("/v1/consultant/stream"),
    hello: () => {
      const hello = { type: "hello", token: store.getItem(TOKEN) };
      if (state.lastSeq !== null) hello.after = state.lastSeq;
      return hello;
    },
    onMessage,
    onState: setConnection,
  });
  window.reachDashboard = { socket: state.live };  // for tests and the curious
  state.live.start();
}

// ---- sign-in -------------------------------------------------------------------

function signOut(reason) {
  if (state.live) state.live.stop();
  state.live = null;
  store.removeItem(TOKEN);
  state.offers.clear();
  state.lastSeq = null;
  flashTitle();
  showSignIn(reason);
}

async function showSignIn(reason) {
  $("desk").hidden = true;
  $("availability").hidden = true;
  $("sign-out").hidden = true;
  $("signin").hidden = false;
  $("who").textContent = "";
  $("signin-error").textContent = reason || "";
  if (await devSignInAvailable()) {
    const granted = await devSignIn("coordinator", "dashboard-dev", "Dashboard");
    try {
      const response = await fetch("/v1/consultants", { headers: { Authorization: `Bearer ${granted.token}` } });
      const consultants = response.ok ? await response.json() : [];
      $("dev-consultant").replaceChildren(...consultants.map((c) =>
        new Option(`${c.name} · ${c.specialties.map(humanFlag).join(", ")}`, JSON.stringify({ id: c.id, name: c.name }))));
      $("dev-form").hidden = consultants.length === 0;
    } catch {
      $("dev-form").hidden = true;
    }
  }
}

function startDesk() {
  $("signin").hidden = true;
  $("desk").hidden = false;
  $("availability").hidden = false;
  $("sign-out").hidden = false;
  connect();
}

function tick() {
  for (const node of document.querySelectorAll("[data-since]")) node.textContent = since(node.dataset.since);
  if (state.consult && !$("consult").hidden) $("consult-waited").textContent = `The crew has waited ${since(state.consult.case.created_at)}`;
  for (const node of document.querySelectorAll(".countdown[data-expires]")) {
    const left = Math.max(0, Math.round((Date.parse(node.dataset.expires) - Date.now()) / 1000));
    node.textContent = `${left} s`;
    node.dataset.urgent = String(left <= 10);
  }
}

function init() {
  $("pathway").append(...PATHWAYS.map((value) => new Option(humanFlag(value), value)));
  $("advice-form").addEventListener("submit", sendAdvice);
  for (const radio of document.querySelectorAll('input[name="disposition"]')) {
    radio.addEventListener("change", resetOverride);
  }
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    store.setItem(TOKEN, $("token").value.trim());
    startDesk();
  });
  $("dev-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const chosen = JSON.parse($("dev-consultant").value);
    const granted = await devSignIn("consultant", chosen.id, chosen.name);
    if (!granted) {
      $("signin-error").textContent = "The demo sign-in is not available.";
      return;
    }
    store.setItem(TOKEN, granted.token);
    startDesk();
  });
  $("availability").addEventListener("click", (event) => {
    const status = event.target.dataset && event.target.dataset.status;
    if (status && state.live) state.live.send({ type: "status", status });
  });
  $("sign-out").addEventListener("click", () => signOut("Signed out."));
  setInterval(tick, 1000);
  if (store.getItem(TOKEN)) startDesk();
  else showSignIn();
}

init();
