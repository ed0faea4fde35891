// Serves the TypeScript SDK test services over HTTP/1.1 on 127.0.0.1.
//
// Usage: node dist/main.js [PORT]   (or PORT in the environment; 0, the default, picks a free port).
// Prints "listening on http://127.0.0.1:<port>" once bound; tests/services/polyglot.py reads it.
// Over HTTP/1.1 the SDK answers discovery with protocolMode REQUEST_RESPONSE, the mode Capstan drives.
import "./node20"; // first: the SDK needs Promise.withResolvers
import * as http from "node:http";
import * as restate from "@restatedev/restate-sdk";
import { roleUpdate } from "./role_update";

const port = Number.parseInt(process.argv[2] ?? process.env.PORT ?? "0", 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`invalid port: ${process.argv[2] ?? process.env.PORT}`);
  process.exit(2);
}

const server = http.createServer(restate.createEndpointHandler({ services: [roleUpdate] }));

server.on("error", (err) => {
  console.error(`server error: ${err.message}`);
  process.exit(1);
});

server.listen(port, "127.0.0.1", () => {
  const address = server.address();
  if (address === null || typeof address === "string") {
    console.error("unexpected server address");
    process.exit(1);
  }
  console.log(`listening on http://127.0.0.1:${address.port}`);
});

function shutdown(signal: string): void {
  console.log(`received ${signal}, shutting down`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  // Do not wait forever for in-flight requests.
  setTimeout(() => process.exit(0), 2000).unref();
}

process.on("SIGINT", () => shutdown("SIGINT"));
process.on("SIGTERM", () => shutdown("SIGTERM"));
