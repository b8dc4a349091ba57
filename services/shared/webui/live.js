// A websocket that stays up: hello with a token and the last seq seen, reconnection
// with back-off, pings, and a state the page can show. The server replays everything
// after `after`, so a reconnect misses nothing.

export class LiveSocket {
  constructor({ url, hello, onMessage, onState, pingSeconds = 25 }) {
    this.url = url;
    this.hello = hello;
    this.onMessage = onMessage;
    this.onState = onState || (() => {});
    this.pingSeconds = pingSeconds;
    this.attempt = 0;
    this.closedByUs = false;
    this.socket = null;
    this.pinger = null;
    this.everConnected = false;
  }

  start() {
    this.closedByUs = false;
    this.connect();
  }

  stop() {
    this.closedByUs = true;
    clearInterval(this.pinger);
    if (this.socket) this.socket.close(1000, "bye");
    this.onState("offline");
  }

  // Drop the connection as a network would (used by tests and the "reconnect" button).
  drop() {
    if (this.socket) this.socket.close(4000, "dropped");
  }

  send(message) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  connect() {
    this.onState(this.everConnected ? "reconnecting" : "connecting");
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.addEventListener("open", () => {
      socket.send(JSON.stringify(this.hello()));
      this.attempt = 0;
      this.onState(this.everConnected ? "replaying" : "live");
      this.everConnected = true;
      clearInterval(this.pinger);
      this.pinger = setInterval(() => this.send({ type: "ping" }), this.pingSeconds * 1000);
    });
    socket.addEventListener("message", (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      this.onMessage(message);
    });
    socket.addEventListener("close", (event) => {
      clearInterval(this.pinger);
      if (this.socket !== socket) return;
      if (this.closedByUs) return;
      if (event.code === 4401 || event.code === 4403 || event.code === 4404) {
        this.onState("refused", event.code);
        return;
      }
      this.attempt += 1;
      const delay = Math.min(10000, 250 * 2 ** Math.min(this.attempt, 6));
      this.onState("reconnecting");
      setTimeout(() => this.connect(), delay * (0.5 + Math.random() / 2));
    });
  }
}
