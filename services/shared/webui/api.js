// The reach HTTP API from the browser: bearer token, JSON, the error envelope.

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.detail) || `request failed (${status})`);
    this.status = status;
    this.code = (body && body.error) || "error";
    this.fields = (body && body.fields) || [];
    this.body = body || {};
  }
}

export function newKey() {
  if (globalThis.crypto && crypto.randomUUID) return crypto.randomUUID();
  return `k-${Date.now()}-${Math.random().toString(36).slice(2)}`;
}

export function createApi(getToken) {
  async function request(method, path, body, headers = {}) {
    const token = getToken();
    const init = { method, headers: { ...headers } };
    if (token) init.headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      throw new ApiError(0, { error: "offline", detail: "cannot reach reach: check the connection" });
    }
    const text = await response.text();
    const parsed = text ? safeJson(text) : null;
    if (!response.ok) throw new ApiError(response.status, parsed);
    return { status: response.status, body: parsed, headers: response.headers };
  }
  return {
    get: (path) => request("GET", path),
    post: (path, body, headers) => request("POST", path, body, headers),
    put: (path, body) => request("PUT", path, body),
  };
}

function safeJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return { error: "bad_response", detail: text.slice(0, 200) };
  }
}

export async function devSignInAvailable() {
  try {
    const response = await fetch("/dev/token");
    return response.ok;
  } catch {
    return false;
  }
}

export async function devSignIn(role, sub, name) {
  const response = await fetch("/dev/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ role, sub, name }),
  });
  if (!response.ok) return null;
  return response.json();
}

export function wsUrl(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}
