// The crew's page: ask for advice, then watch the case live until it closes.
import { createApi, devSignIn, devSignInAvailable, newKey, wsUrl } from "./common/api.js";
import { LiveSocket } from "./common/live.js";
import { flagBadge, humanFlag, news2Table } from "./common/news2.js";

const $ = (id) => document.getElementById(id);
const store = window.sessionStorage;
const api = createApi(() => store.getItem("reach.crew.token"));

const COMPLAINTS = ["fall", "chest_pain", "breathing_difficulty", "abdominal_pain", "collapse",
  "stroke_symptoms", "seizure", "infection", "diabetic", "injury", "mental_health_crisis",
  "pregnancy", "palliative", "other"];
const SPECIALTIES = ["frailty", "emergency_medicine", "acute_medicine", "paediatrics",
  "mental_health", "cardiology", "stroke", "maternity", "surgery"];
const FLAGS = ["cannot_walk", "breathlessness", "reduced_consciousness", "low_spo2",
  "abnormal_sbp", "chest_pain_cardiac", "head_injury_anticoagulated", "safeguarding"];
const EVENT_TEXT = {
  queued: () => "Waiting for a consultant",
  offered: () => "Offered to a consultant",
  accepted: (d) => `Accepted by ${d.consultant ? d.consultant.name : "a consultant"}`,
  advised: (d) => `Advice given: ${humanDisposition(d)}`,
  escalated: () => "Escalated: still waiting, the team has been alerted",
  observations_updated: (d) => `Observations recorded${d.news2 ? ` (NEWS2 ${d.news2.score})` : ""}`,
  cancelled: () => "Request cancelled",
  closed: (d) => `Closed: advice ${d.followed ? "followed" : "not followed"}`,
};

let current = null;      // the case as last read
let lastSeq = 0;         // the newest stream event shown
let live = null;         // the LiveSocket
let pendingKey = null;   // one Idempotency-Key per case the crew means to send once

function humanDisposition(advice) {
  const words = { convey_ed: "convey to the emergency department", redirect: "alternative pathway", home: "treat at home" };
  const pathway = advice.pathway ? ` (${humanFlag(advice.pathway)})` : "";
  return `${words[advice.disposition] || advice.disposition}${pathway}`;
}

function setConnection(state) {
  const words = { live: "live", replaying: "reconnected: caught up", connecting: "connecting…",
    reconnecting: "reconnecting…", offline: "offline", refused: "signed out" };
  $("connection").dataset.state = state;
  $("connection").textContent = words[state] || state;
}

function options(select, values) {
  select.replaceChildren(...values.map((value) => new Option(humanFlag(value), value)));
}

function observationFields(container, prefix) {
  const fields = [
    ["respiration_rate", "Resp. rate /min", "number"], ["spo2", "SpO₂ %", "number"],
    ["systolic_bp", "Systolic BP", "number"], ["pulse", "Pulse /min", "number"],
    ["temperature", "Temperature °C", "decimal"],
  ];
  const grid = document.createElement("div");
  grid.className = "grid";
  for (const [name, label, kind] of fields) {
    const id = `${prefix}-${name}`;
    grid.insertAdjacentHTML("beforeend",
      `<div><label for="${id}">${label}</label><input id="${id}" data-obs="${name}" type="number" ` +
      `${kind === "decimal" ? 'step="0.1"' : 'step="1"'} inputmode="decimal"></div>`);
  }
  grid.insertAdjacentHTML("beforeend",
    `<div><label for="${prefix}-consciousness">ACVPU</label><select id="${prefix}-consciousness" data-obs="consciousness">` +
    `<option value="">–</option><option>A</option><option>C</option><option>V</option><option>P</option><option>U</option></select></div>` +
    `<div><label for="${prefix}-on_oxygen">Air or oxygen</label><select id="${prefix}-on_oxygen" data-obs="on_oxygen">` +
    `<option value="">–</option><option value="false">Air</option><option value="true">Oxygen</option></select></div>` +
    `<div><label for="${prefix}-spo2_scale">SpO₂ scale</label><select id="${prefix}-spo2_scale" data-obs="spo2_scale">` +
    `<option value="1">Scale 1</option><option value="2">Scale 2 (clinician's decision)</option></select></div>`);
  container.append(grid);
}

function readObservations(container) {
  const observations = {};
  for (const input of container.querySelectorAll("[data-obs]")) {
    const name = input.dataset.obs;
    if (input.value === "") continue;
    if (name === "consciousness") observations[name] = input.value;
    else if (name === "on_oxygen") observations[name] = input.value === "true";
    else if (name === "spo2_scale") observations[name] = Number(input.value);
    else observations[name] = Number(input.value);
  }
  observations.taken_at = new Date().toISOString();
  return observations;
}

function readCase() {
  const value = (id) => $(id).value.trim();
  const body = {
    incident: { cad_reference: value("cad_reference"), call_category: value("call_category"), callsign: value("callsign_field") },
    patient: { sex: value("sex") },
    presenting_complaint: value("presenting_complaint"),
    requested_specialty: value("requested_specialty"),
    observations: readObservations($("obs-fieldset")),
    risk_flags: [...document.querySelectorAll("#flags input:checked")].map((box) => box.value),
  };
  if (value("age_years") !== "") body.patient.age_years = Number(value("age_years"));
  if (value("nhs_number") !== "") body.patient.nhs_number = value("nhs_number");
  if (value("proposed_disposition") !== "") body.proposed_disposition = value("proposed_disposition");
  if (value("handover_text") !== "") body.handover = { format: value("handover_format"), text: value("handover_text") };
  return body;
}

function showFieldErrors(form, error, summary) {
  for (const old of form.querySelectorAll(".field-error")) old.remove();
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  summary.textContent = error.message;
  for (const problem of error.fields || []) {
    const last = problem.path.split(".").pop();
    const input = form.querySelector(`[name="${problem.path}"]`) || form.querySelector(`[data-obs="${last}"]`);
    if (!input) continue;
    input.setAttribute("aria-invalid", "true");
    const note = document.createElement("div");
    note.className = "field-error";
    note.textContent = problem.message;
    input.after(note);
  }
}

async function submitCase(event) {
  event.preventDefault();
  const button = $("submit-case");
  button.disabled = true;
  pendingKey = pendingKey || newKey();
  try {
    const { body } = await api.post("/v1/cases", readCase(), { "Idempotency-Key": pendingKey });
    pendingKey = null;
    showFieldErrors($("case-form"), { message: "", fields: [] }, $("case-error"));
    openCase(body);
  } catch (error) {
    if (error.status === 422 || error.status === 409) pendingKey = null;
    showFieldErrors($("case-form"), error, $("case-error"));
  } finally {
    button.disabled = false;
  }
}

function openCase(caseBody) {
  store.setItem("reach.crew.case", caseBody.id);
  lastSeq = 0;
  $("timeline").replaceChildren();
  render(caseBody);
  $("new-case").hidden = true;
  $("case-view").hidden = false;
  if (live) live.stop();
  live = new LiveSocket({
    url: wsUrl(`/v1/cases/${caseBody.id}/stream`),
    hello: () => ({ type: "hello", token: store.getItem("reach.crew.token"), after: lastSeq }),
    onMessage: onStreamMessage,
    onState: setConnection,
  });
  window.reachCrewSocket = live;   // for tests and for the curious
  live.start();
}

async function onStreamMessage(message) {
  if (typeof message.seq !== "number") return;   // pong, errors
  if (message.seq <= lastSeq) return;
  lastSeq = message.seq;
  const item = document.createElement("li");
  item.dataset.type = message.type;
  const time = document.createElement("time");
  time.dateTime = message.at;
  time.textContent = new Date(message.at).toLocaleTimeString();
  const describe = EVENT_TEXT[message.type] || (() => message.type);
  item.append(time, describe(message.data || {}));
  $("timeline").append(item);
  if (message.type !== "queued" || current === null) await refresh();
}

async function refresh() {
  const id = store.getItem("reach.crew.case");
  if (!id) return;
  try {
    render((await api.get(`/v1/cases/${id}`)).body);
  } catch (error) {
    $("action-error").textContent = error.message;
  }
}

function render(caseBody) {
  current = caseBody;
  $("case-reference").textContent = caseBody.reference;
  $("case-status").textContent = caseBody.status;
  $("case-priority").textContent = `priority ${caseBody.priority}`;
  $("case-waiting").textContent = `Asked at ${new Date(caseBody.created_at).toLocaleTimeString()}`;
  $("case-news2").replaceChildren(news2Table(document, caseBody.news2, caseBody.observations));
  $("case-flags").replaceChildren(...caseBody.risk_flags.map((flag) => flagBadge(document, humanFlag(flag))));
  const advice = $("case-advice");
  if (caseBody.advice) {
    advice.hidden = false;
    const who = caseBody.assigned_consultant ? caseBody.assigned_consultant.name : "The consultant";
    advice.replaceChildren();
    advice.insertAdjacentHTML("beforeend", `<h3>${escapeHtml(who)} advises: ${escapeHtml(humanDisposition(caseBody.advice))}</h3>`);
    for (const [label, text] of [["Advice", caseBody.advice.advice], ["Safety-netting", caseBody.advice.safety_netting]]) {
      if (!text) continue;
      const paragraph = document.createElement("p");
      paragraph.innerHTML = `<strong>${label}:</strong> `;
      paragraph.append(text);
      advice.append(paragraph);
    }
  } else {
    advice.hidden = true;
  }
  const open = ["queued", "offered", "accepted"].includes(caseBody.status);
  $("cancel-form").hidden = !open;
  $("ack-form").hidden = caseBody.status !== "advised";
}

function escapeHtml(text) {
  const span = document.createElement("span");
  span.textContent = text;
  return span.innerHTML;
}

async function act(path, body) {
  $("action-error").textContent = "";
  try {
    render((await api.post(`/v1/cases/${current.id}/${path}`, body)).body);
  } catch (error) {
    $("action-error").textContent = error.message;
  }
}

function signedIn(token, label) {
  store.setItem("reach.crew.token", token);
  store.setItem("reach.crew.who", label || "");
  start();
}

async function start() {
  const token = store.getItem("reach.crew.token");
  $("signin").hidden = Boolean(token);
  $("who").textContent = token ? store.getItem("reach.crew.who") || "signed in" : "";
  if (!token) {
    $("dev-form").hidden = !(await devSignInAvailable());
    return;
  }
  const caseId = store.getItem("reach.crew.case");
  if (caseId) {
    try {
      openCase((await api.get(`/v1/cases/${caseId}`)).body);
      return;
    } catch (error) {
      store.removeItem("reach.crew.case");
    }
  }
  $("new-case").hidden = false;
  $("case-view").hidden = true;
}

function wire() {
  options($("presenting_complaint"), COMPLAINTS);
  options($("requested_specialty"), SPECIALTIES);
  observationFields($("obs-fieldset"), "obs");
  observationFields($("repeat-obs"), "repeat");
  for (const flag of FLAGS) {
    $("flags").insertAdjacentHTML("beforeend",
      `<label><input type="checkbox" value="${flag}"> ${humanFlag(flag)}</label>`);
  }
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signedIn($("token").value.trim(), "signed in with a token");
  });
  $("dev-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const callsign = $("callsign").value.trim().toUpperCase();
    const granted = await devSignIn("paramedic", `crew-${callsign.toLowerCase()}`, `${callsign} crew`);
    if (!granted) {
      $("signin-error").textContent = "Demo sign-in is only available on the embedded default.";
      return;
    }
    $("callsign_field").value = callsign;
    signedIn(granted.token, `${callsign} crew`);
  });
  $("case-form").addEventListener("submit", submitCase);
  $("case-form").addEventListener("input", () => { pendingKey = null; });
  $("repeat-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      render((await api.post(`/v1/cases/${current.id}/observations`, readObservations($("repeat-obs")))).body);
      $("repeat-error").textContent = "";
    } catch (error) {
      showFieldErrors($("repeat-form"), error, $("repeat-error"));
    }
  });
  $("cancel-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act("cancel", { reason: $("cancel-reason").value.trim() || "no longer needed" });
  });
  $("ack-followed").addEventListener("click", () => act("acknowledge", { followed: true }));
  $("ack-not").addEventListener("click", () => { $("ack-reason-box").hidden = false; $("ack-reason").focus(); });
  $("ack-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act("acknowledge", { followed: false, reason: $("ack-reason").value.trim() });
  });
  $("another").addEventListener("click", () => {
    if (live) live.stop();
    store.removeItem("reach.crew.case");
    current = null;
    start();
  });
  start();
}

wire();
