// NEWS2 as the RCP chart shows it: a band per parameter's points, the total's risk.
// Colour is never the only signal: every badge also carries its number and a word.

export const PARAMETER_LABELS = {
  respiration_rate: "Resp. rate",
  spo2: "SpO₂",
  on_oxygen: "Air / O₂",
  systolic_bp: "Systolic BP",
  pulse: "Pulse",
  consciousness: "ACVPU",
  temperature: "Temp.",
};

export const RISK_LABELS = {
  low: "Low",
  low_medium: "Low-medium (a red score)",
  medium: "Medium",
  high: "High",
};

export function pointsClass(points) {
  return `band-${Math.max(0, Math.min(3, Number(points) || 0))}`;
}

export function riskClass(risk) {
  return `risk-${risk || "none"}`;
}

export function formatValue(parameter, observations) {
  if (!observations) return "–";
  const value = observations[parameter];
  if (value === null || value === undefined) return "–";
  if (parameter === "on_oxygen") return value ? "O₂" : "Air";
  if (parameter === "spo2") return `${value}%${observations.spo2_scale === 2 ? " (scale 2)" : ""}`;
  if (parameter === "temperature") return `${Number(value).toFixed(1)}°C`;
  return String(value);
}

// A small table of parameters, each cell banded by its points.
export function news2Table(document, news2, observations) {
  const table = document.createElement("table");
  table.className = "news2";
  const caption = document.createElement("caption");
  if (news2) {
    caption.innerHTML = "";
    const badge = document.createElement("span");
    badge.className = `news2-total ${riskClass(news2.risk)}`;
    badge.textContent = `NEWS2 ${news2.score} · ${RISK_LABELS[news2.risk] || news2.risk}`;
    caption.append(badge);
    if (news2.red_flag) caption.append(" ", flagBadge(document, "Red score"));
    if (news2.validated === false) caption.append(" ", flagBadge(document, "Outside NEWS2's validated population"));
  } else {
    caption.textContent = "NEWS2: no score (an incomplete set)";
  }
  table.append(caption);
  const body = document.createElement("tbody");
  for (const [parameter, label] of Object.entries(PARAMETER_LABELS)) {
    const row = document.createElement("tr");
    const name = document.createElement("th");
    name.scope = "row";
    name.textContent = label;
    const value = document.createElement("td");
    value.textContent = formatValue(parameter, observations);
    const points = document.createElement("td");
    const scored = news2 && news2.subscores ? news2.subscores[parameter] : undefined;
    points.className = scored === undefined ? "points" : `points ${pointsClass(scored)}`;
    points.textContent = scored === undefined ? "" : `${scored}`;
    if (scored !== undefined) points.setAttribute("aria-label", `${scored} points`);
    row.append(name, value, points);
    body.append(row);
  }
  table.append(body);
  return table;
}

export function flagBadge(document, text) {
  const badge = document.createElement("span");
  badge.className = "flag";
  badge.textContent = `⚑ ${text}`;
  return badge;
}

export function humanFlag(flag) {
  return flag.replaceAll("_", " ");
}
