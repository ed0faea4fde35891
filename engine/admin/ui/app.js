// Capstan's web UI: one ES module, no build step, no dependencies.
//
// Every page is a function of the location hash (#/services, #/invocations?status=suspended,
// #/invocations/<id>, #/state/<Service>/<key>, #/subscriptions ...) that reads the admin API and returns DOM.
// Rules this file keeps:
//   * nothing from the API reaches innerHTML: elements are built with h(), text goes in as Text nodes, and the only
//     hrefs are "#/..." routes built from encoded segments (h() refuses any other href);
//   * the API is addressed relative to /ui/ ("../query"), so a reverse proxy's path prefix is kept;
//   * an API error becomes the banner at the top ("The admin API answered 404 Not Found: ..."), never a blank page;
//   * <body data-state> is "loading", "ready" or "error", for people and for the end-to-end test.

const TOKEN_KEY = "capstan.adminToken";
const API_BASE = new URL("../", window.location.href);
const DEFAULT_LIMIT = 100;
const CLIP = 160; // characters of a value shown inline; the full text is in the element's title
const STATUSES = ["pending", "scheduled", "running", "suspended", "backing-off", "paused", "completed"];
const CANCEL_SIGNAL = 1; // Restate's built-in signal ids: 1 cancel; awakeables and named signals from 17 on
const FIRST_USER_SIGNAL = 17;

// ------------------------------------------------------------------------------------------------ admin API

class ApiError extends Error {
  constructor(status, statusText, message) {
    super(message);
    this.status = status;
    this.statusText = statusText;
  }

  describe() {
    if (this.status === 0) return this.message;
    let text = `The admin API answered ${this.status} ${this.statusText}`.trimEnd();
    if (this.message) text += `: ${this.message}`;
    if (this.status === 401 || this.status === 403) {
      text += " (paste the admin token in the box at the top right)";
    }
    return text;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = window.sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(new URL(path, API_BASE), init);
  } catch (err) {
    throw new ApiError(0, "", `Could not reach the admin API at ${API_BASE.href} (${err.message})`);
  }
  const text = await resp.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!resp.ok) {
    let message = "";
    if (data && typeof data === "object" && typeof data.message === "string") message = data.message;
    else if (typeof data === "string") message = data.trim();
    throw new ApiError(resp.status, resp.statusText, message);
  }
  return data;
}

// The admin API runs few queries at once (admin.query_concurrency_limit, 2 by default) and answers 429 beyond:
// this tab sends its queries one at a time, and retries a 429 (someone else's queries) a few times.
let sqlQueue = Promise.resolve();
const SQL_RETRIES = 4;

/** Rows of a read-only SQL query (POST /query). */
function sql(query) {
  const run = sqlQueue.then(() => sqlWithRetries(query));
  sqlQueue = run.catch(() => undefined);
  return run;
}

async function sqlWithRetries(query) {
  for (let attempt = 1; ; attempt++) {
    try {
      const data = await api("POST", "query", { query });
      return data.rows;
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 429 || attempt >= SQL_RETRIES) throw err;
      await new Promise((resolve) => setTimeout(resolve, 200 * attempt));
    }
  }
}

/** A SQL string literal. */
function lit(value) {
  return `'${String(value).replaceAll("'", "''")}'`;
}

const seg = encodeURIComponent;

// ------------------------------------------------------------------------------------------------ DOM helpers

/** An element. Children are nodes or values (strings go in as text); null, undefined and false are skipped. */
function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "href" && !String(value).startsWith("#/")) throw new Error(`refusing href ${value}`);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function link(route, ...children) {
  return h("a", { href: route }, ...children);
}

function clip(text, max = CLIP) {
  const s = String(text);
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

/** Text clipped to CLIP characters, the whole text in a tooltip. */
function clipped(text, cls) {
  if (text === null || text === undefined || text === "") return null;
  return h("span", { class: cls, title: String(text).length > CLIP ? text : null }, clip(text));
}

function mono(text) {
  return text === null || text === undefined ? null : h("code", {}, text);
}

function badge(status, extra) {
  const label = extra ? `${status} (${extra})` : status;
  const cls = extra === "failure" ? "failure" : status;
  return h("span", { class: `badge badge-${cls}`, dataset: { status: label } }, label);
}

function statusBadge(row) {
  return badge(row.status, row.status === "completed" ? row.completion_result : null);
}

function table(headers, rows, props) {
  return h(
    "table",
    props,
    h("thead", {}, h("tr", {}, headers.map((name) => h("th", {}, name)))),
    h("tbody", {}, rows),
  );
}

function fields(pairs) {
  const items = pairs.filter(([, value]) => value !== null && value !== undefined && value !== "");
  return h(
    "dl",
    { class: "fields" },
    items.map(([label, value]) => [h("dt", {}, label), h("dd", {}, value)]),
  );
}

function empty(text, ...more) {
  return h("p", { class: "empty" }, text, ...more);
}

function section(title, ...children) {
  return h("section", {}, h("h2", {}, title), ...children);
}

function pageHeader(title, ...extra) {
  return h(
    "div",
    { class: "page-header" },
    h("h1", { id: "page-title" }, title),
    ...extra,
    h("button", { type: "button", class: "refresh", onclick: () => render() }, "Refresh"),
  );
}

/** A JSON text pretty-printed when it parses (and is not a bare string), else the text itself. */
function pretty(text) {
  if (typeof text !== "string") return JSON.stringify(text, null, 2);
  try {
    const parsed = JSON.parse(text);
    return typeof parsed === "object" && parsed !== null ? JSON.stringify(parsed, null, 2) : text;
  } catch {
    return text;
  }
}

function parseJson(text, fallback) {
  if (typeof text !== "string" || !text) return fallback;
  try {
    return JSON.parse(text);
  } catch {
    return fallback;
  }
}

// ------------------------------------------------------------------------------------------------ banner

const banner = document.getElementById("banner");
let flash = null; // a notice to show once after the next render: {kind, text}

function setBanner(kind, text) {
  if (!kind) {
    banner.hidden = true;
    banner.replaceChildren();
    banner.className = "banner";
    return;
  }
  banner.className = `banner banner-${kind}`;
  banner.replaceChildren(h("span", {}, text), h("button", { type: "button", onclick: () => setBanner(null) }, "×"));
  banner.hidden = false;
}

function showError(err) {
  setBanner("error", err instanceof ApiError ? err.describe() : `Unexpected error in the UI: ${err.message}`);
  if (!(err instanceof ApiError)) console.error(err);
}

// ------------------------------------------------------------------------------------------------ services

async function pageServices() {
  // The counts are a convenience: a query the API refuses (e.g. 413, too many invocations to copy) only loses them.
  let countsError = null;
  const [{ services }, counts] = await Promise.all([
    api("GET", "services"),
    sql("SELECT target_service_name AS service, status, count(*) AS n FROM sys_invocation GROUP BY 1, 2").catch(
      (err) => {
        if (!(err instanceof ApiError)) throw err;
        countsError = err;
        return [];
      },
    ),
  ]);
  const byService = new Map();
  for (const row of counts) {
    if (!byService.has(row.service)) byService.set(row.service, []);
    byService.get(row.service).push(row);
  }
  const view = [pageHeader("Services", h("span", { class: "count" }, `${services.length}`))];
  if (countsError) view.push(h("p", { class: "note" }, `No invocation counts: ${countsError.describe()}`));
  if (!services.length) {
    view.push(empty("No services yet: register a deployment (", mono("capstan deployments register URI"), ")."));
    return view;
  }
  const overview = services.map((svc) =>
    h(
      "tr",
      { dataset: { service: svc.name } },
      h("td", {}, link(`#/services?focus=${seg(svc.name)}`, svc.name)),
      h("td", {}, h("span", { class: `kind kind-${svc.ty}` }, svc.ty)),
      h("td", { class: "handler-names" }, svc.handlers.map((handler) => handler.name).join(", ")),
      h("td", {}, statusChips(svc.name, byService.get(svc.name) || [])),
      h("td", {}, mono(svc.deployment_id)),
    ),
  );
  view.push(table(["Service", "Type", "Handlers", "Invocations", "Deployment"], overview, { id: "services-table" }));
  for (const svc of services) view.push(serviceCard(svc, byService.get(svc.name) || []));
  return view;
}

function statusChips(service, counts) {
  counts.sort((a, b) => STATUSES.indexOf(a.status) - STATUSES.indexOf(b.status));
  return h(
    "span",
    { class: "chips" },
    counts.length ? null : "none",
    counts.map((row) =>
      link(`#/invocations?service=${seg(service)}&status=${seg(row.status)}`, badge(row.status), ` ${row.n}`),
    ),
  );
}

function serviceCard(svc, counts) {
  const keyed = svc.ty === "VirtualObject" || svc.ty === "Workflow";
  const handlers = svc.handlers.map((handler) =>
    h(
      "tr",
      { dataset: { handler: handler.name } },
      h("td", {}, link(`#/invocations?service=${seg(svc.name)}&handler=${seg(handler.name)}`, handler.name)),
      h("td", {}, handler.ty || "—"),
      h("td", {}, schemaSummary(handler.input_json_schema, handler.input_description)),
      h("td", {}, schemaSummary(handler.output_json_schema, handler.output_description)),
      h("td", {}, handler.public ? "public" : "private"),
      h("td", { class: "doc" }, clipped(handler.documentation)),
    ),
  );
  const options = [
    ["Idempotency retention", svc.idempotency_retention],
    ["Journal retention", svc.journal_retention],
    ["Workflow retention", svc.workflow_completion_retention],
    ["Inactivity timeout", svc.inactivity_timeout],
    ["Abort timeout", svc.abort_timeout],
    ["Retry policy", svc.retry_policy ? JSON.stringify(svc.retry_policy) : null],
    ["Lazy state", svc.enable_lazy_state ? "enabled" : null],
  ].filter(([, value]) => value);
  return h(
    "article",
    { class: "card service", id: `service-${svc.name}`, dataset: { service: svc.name } },
    h(
      "header",
      {},
      h("h2", {}, svc.name),
      h("span", { class: `kind kind-${svc.ty}` }, svc.ty),
      svc.public ? null : h("span", { class: "kind" }, "private"),
      h("span", { class: "meta" }, `revision ${svc.revision} · `, link("#/deployments", mono(svc.deployment_id))),
      keyed ? link(`#/state/${seg(svc.name)}`, "State") : null,
    ),
    svc.documentation ? h("p", { class: "doc" }, svc.documentation) : null,
    h("div", { class: "chips" }, "Invocations: ", statusChips(svc.name, counts)),
    table(["Handler", "Type", "Input", "Output", "Visibility", "Documentation"], handlers, { class: "handlers" }),
    options.length ? fields(options) : null,
  );
}

function schemaSummary(schema, description) {
  if (schema) return h("code", { title: JSON.stringify(schema) }, clip(JSON.stringify(schema), 60));
  const desc = parseJson(description, null);
  if (desc && desc.contentType) return mono(desc.contentType);
  return "none";
}

// ------------------------------------------------------------------------------------------------ deployments

async function pageDeployments() {
  const { deployments } = await api("GET", "deployments");
  const view = [pageHeader("Deployments", h("span", { class: "count" }, `${deployments.length}`))];
  if (!deployments.length) {
    view.push(empty("No deployments: register one with ", mono("capstan deployments register URI"), "."));
    return view;
  }
  const rows = deployments.map((dep) =>
    h(
      "tr",
      { dataset: { deployment: dep.id } },
      h("td", {}, mono(dep.id)),
      h("td", {}, mono(dep.uri)),
      h("td", {}, `${dep.protocol_type} · ${dep.http_version}`),
      h("td", {}, `v${dep.min_protocol_version}–v${dep.max_protocol_version}`),
      h("td", {}, dep.sdk_version || "—"),
      h("td", {}, dep.created_at),
      h(
        "td",
        {},
        dep.services.map((s, i) => [i ? ", " : "", link(`#/services?focus=${seg(s.name)}`, s.name)]),
      ),
    ),
  );
  view.push(table(["ID", "Endpoint", "Protocol", "Versions", "SDK", "Created", "Services"], rows));
  return view;
}

// ------------------------------------------------------------------------------------------------ invocations

const LIST_COLUMNS = [
  "id", "target", "target_service_name", "target_service_key", "status", "completion_result", "completion_failure",
  "created_at", "modified_at", "retry_count", "last_failure", "last_failure_error_code", "next_retry_at",
];

function invocationsQuery(filters) {
  const where = [];
  const status = filters.get("status");
  if (status === "active") where.push("status != 'completed'");
  else if (status === "failed") where.push("status = 'completed' AND completion_result = 'failure'");
  else if (status === "retrying") where.push("retry_count > 0 AND status != 'completed'");
  else if (status) where.push(`status = ${lit(status)}`);
  for (const [param, column] of [["service", "target_service_name"], ["handler", "target_handler_name"],
    ["key", "target_service_key"]]) {
    if (filters.get(param)) where.push(`${column} = ${lit(filters.get(param))}`);
  }
  if (filters.get("id")) where.push(`id LIKE ${lit(`${filters.get("id")}%`)}`);
  const limit = Math.max(1, Math.min(1000, Number.parseInt(filters.get("limit") || "", 10) || DEFAULT_LIMIT));
  let query = `SELECT ${LIST_COLUMNS.join(", ")} FROM sys_invocation`;
  if (where.length) query += ` WHERE ${where.join(" AND ")}`;
  return { query: `${query} ORDER BY created_at DESC, id LIMIT ${limit}`, limit };
}

async function pageInvocations(params) {
  const { query, limit } = invocationsQuery(params);
  const [rows, counts, { services }] = await Promise.all([
    sql(query),
    sql("SELECT status, count(*) AS n FROM sys_invocation GROUP BY status"),
    api("GET", "services"),
  ]);
  counts.sort((a, b) => STATUSES.indexOf(a.status) - STATUSES.indexOf(b.status));
  const view = [pageHeader("Invocations", h("span", { class: "count" }, `${rows.length}`))];
  view.push(
    h(
      "div",
      { class: "chips", id: "status-counts" },
      link("#/invocations", "all"),
      counts.map((row) => link(`#/invocations?status=${seg(row.status)}`, badge(row.status), ` ${row.n}`)),
    ),
  );
  view.push(filterForm(params, services.map((s) => s.name)));
  if (!rows.length) {
    view.push(empty("No invocations match."));
    return view;
  }
  const body = rows.map((row) =>
    h(
      "tr",
      { dataset: { invocationId: row.id, status: row.status } },
      h("td", {}, link(`#/invocations/${seg(row.id)}`, mono(row.id))),
      h("td", {}, row.target),
      h("td", {}, statusBadge(row)),
      h("td", { class: "num" }, row.retry_count || ""),
      h("td", { class: "failure-text" }, clipped(row.completion_failure || failureText(row))),
      h("td", {}, row.created_at),
      h("td", {}, row.modified_at),
    ),
  );
  view.push(
    table(["ID", "Target", "Status", "Failed attempts", "Failure", "Created", "Modified"], body, {
      id: "invocations-table",
    }),
  );
  if (rows.length >= limit) view.push(h("p", { class: "note" }, `First ${limit} shown (newest first).`));
  return view;
}

function failureText(row) {
  if (!row.last_failure) return null;
  const code = row.last_failure_error_code;
  return code === null || code === undefined ? row.last_failure : `[${code}] ${row.last_failure}`;
}

function filterForm(params, serviceNames) {
  const statusOptions = [
    ["", "any status"], ["active", "not completed"], ["retrying", "retrying (failed attempts)"],
    ["failed", "completed with failure"], ...STATUSES.map((s) => [s, s]),
  ];
  const names = [...serviceNames];
  if (params.get("service") && !names.includes(params.get("service"))) names.push(params.get("service"));
  const select = (name, options) =>
    h(
      "select",
      { name, id: `filter-${name}` },
      options.map(([value, label]) => h("option", { value, selected: params.get(name) === value || null }, label)),
    );
  const input = (name, placeholder) =>
    h("input", { name, id: `filter-${name}`, placeholder, value: params.get(name) || "", spellcheck: "false" });
  const form = h(
    "form",
    {
      class: "filters",
      id: "invocation-filters",
      onsubmit: (event) => {
        event.preventDefault();
        const next = new URLSearchParams();
        for (const [name, value] of new FormData(form)) if (String(value).trim()) next.set(name, String(value).trim());
        const qs = next.toString();
        navigate(qs ? `#/invocations?${qs}` : "#/invocations");
      },
    },
    h("label", {}, "Status ", select("status", statusOptions)),
    h("label", {}, "Service ", select("service", [["", "any service"], ...names.map((n) => [n, n])])),
    h("label", {}, "Handler ", input("handler", "any")),
    h("label", {}, "Key ", input("key", "any")),
    h("label", {}, "ID ", input("id", "inv_… prefix")),
    h("label", {}, "Limit ", input("limit", String(DEFAULT_LIMIT))),
    h("button", { type: "submit" }, "Filter"),
    link("#/invocations", "Clear"),
  );
  return form;
}

// ------------------------------------------------------------------------------------------------ one invocation

async function pageInvocation(params, id) {
  const detail = await api("GET", `invocations/${seg(id)}`);
  const inv = detail.invocation;
  const journal = detail.journal || [];
  const keyed = inv.target_service_key !== null && inv.target_service_key !== undefined;
  const view = [pageHeader("Invocation", mono(inv.id))];
  view.push(
    h(
      "div",
      { class: `status-panel status-${inv.status}`, id: "invocation-status" },
      statusBadge(inv),
      h("span", {}, statusSentence(inv, journal)),
    ),
  );
  view.push(actionBar(inv));
  let invokedBy = inv.invoked_by;
  if (inv.invoked_by_id) {
    invokedBy = [`${inv.invoked_by} `, inv.invoked_by_target, " (", link(`#/invocations/${seg(inv.invoked_by_id)}`,
      mono(inv.invoked_by_id)), ")"];
  } else if (inv.invoked_by_subscription_id) {
    invokedBy = [`${inv.invoked_by} `, link("#/subscriptions", mono(inv.invoked_by_subscription_id))];
  }
  view.push(
    fields([
      ["Target", [
        link(`#/services?focus=${seg(inv.target_service_name)}`, inv.target_service_name),
        keyed ? ["/", link(`#/state/${seg(inv.target_service_name)}/${seg(inv.target_service_key)}`,
          inv.target_service_key)] : null,
        `/${inv.target_handler_name}`,
      ]],
      ["Service type", [inv.target_service_ty, inv.target_handler_ty ? ` · ${inv.target_handler_ty}` : ""]],
      ["Invoked by", invokedBy],
      ["Idempotency key", mono(inv.idempotency_key)],
      ["Deployment", mono(inv.pinned_deployment_id || inv.last_attempt_deployment_id)],
      ["Created", inv.created_at],
      ["Modified", inv.modified_at],
      ["Scheduled start", inv.scheduled_start_at],
      ["Completed", inv.completed_at],
      ["Expires", inv.expires_at],
      ["Failed attempts", inv.retry_count ? String(inv.retry_count) : null],
      ["Next retry", inv.next_retry_at],
      ["Last failure", clipped(failureText(inv), "failure-text")],
      ["Result", inv.completion_failure ? h("span", { class: "failure-text" }, inv.completion_failure)
        : inv.completion_result],
    ]),
  );
  view.push(section(`Journal (${journal.length} ${journal.length === 1 ? "entry" : "entries"})`,
    timeline(inv, journal)));
  return view;
}

/** completion id -> the command that awaits it, from the commands' decoded fields. */
function completionOwners(journal) {
  const owners = new Map();
  for (const entry of journal) {
    if (!entry.entry_type.startsWith("Command")) continue;
    const decoded = parseJson(entry.entry_json, {});
    for (const [field, value] of Object.entries(decoded)) {
      if (field.endsWith("completion_id") || field.endsWith("notification_idx")) owners.set(value, entry);
    }
  }
  return owners;
}

function waitingOn(inv) {
  if (inv.status !== "suspended") return { completions: [], signals: [] };
  return {
    completions: parseJson(inv.suspended_waiting_completions, []),
    signals: parseJson(inv.suspended_waiting_signals, []),
  };
}

function describeSignal(id) {
  if (id === CANCEL_SIGNAL) return "cancellation";
  return id >= FIRST_USER_SIGNAL ? `awakeable/signal ${id}` : `signal ${id}`;
}

function statusSentence(inv, journal) {
  const attempts = inv.retry_count ? ` after ${inv.retry_count} failed attempt${inv.retry_count === 1 ? "" : "s"}` : "";
  switch (inv.status) {
    case "pending":
      return `Waiting in the inbox of ${inv.target_service_name}/${inv.target_service_key}: ` +
        "another invocation holds the key.";
    case "scheduled":
      return `Scheduled to start at ${inv.scheduled_start_at}.`;
    case "running":
      return `Running${attempts}.`;
    case "suspended": {
      const { completions, signals } = waitingOn(inv);
      const owners = completionOwners(journal);
      const parts = completions.map((cid) => {
        const owner = owners.get(cid);
        return owner ? `${entryKind(owner).name} #${owner.index}` : `completion ${cid}`;
      });
      parts.push(...signals.filter((s) => s !== CANCEL_SIGNAL).map(describeSignal));
      return `Suspended, waiting for ${parts.join(", ") || "a completion"}.`;
    }
    case "backing-off":
      return `Backing off${attempts}; next attempt at ${inv.next_retry_at}. Last failure: ${failureText(inv)}`;
    case "paused":
      return `Paused${attempts}: resume it to try again.` +
        (inv.last_failure ? ` Last failure: ${failureText(inv)}` : "");
    case "completed":
      return inv.completion_result === "failure"
        ? `Completed with a failure: ${inv.completion_failure}.`
        : `Completed successfully at ${inv.completed_at}${attempts}.`;
    default:
      return inv.status;
  }
}

function entryKind(entry) {
  const [kind, name] = entry.entry_type.includes(": ") ? entry.entry_type.split(": ", 2) : ["Entry", entry.entry_type];
  return { kind, name };
}

function timeline(inv, journal) {
  const owners = completionOwners(journal);
  const waiting = waitingOn(inv);
  const items = journal.map((entry) => journalItem(entry, owners, waiting));
  // What the journal does not hold: failed attempts, the suspension, the outcome.
  if (inv.retry_count) {
    items.push(
      eventItem("attempts", "error", `${inv.retry_count} failed attempt${inv.retry_count === 1 ? "" : "s"}`,
        inv.last_failure ? `last failure: ${failureText(inv)}` : null),
    );
  }
  if (inv.status === "backing-off") {
    items.push(eventItem("retry", "waiting", "Backing off", `next attempt at ${inv.next_retry_at}`));
  }
  if (inv.status === "suspended") {
    items.push(eventItem("suspended", "waiting", "Suspended", statusSentence(inv, journal)));
  }
  if (inv.status === "paused") items.push(eventItem("paused", "waiting", "Paused", "resume to try again"));
  if (inv.status === "pending") items.push(eventItem("pending", "waiting", "Pending", "waiting for the key's lock"));
  if (inv.status === "completed") {
    items.push(
      inv.completion_result === "failure"
        ? eventItem("completed", "error", "Completed with failure", inv.completion_failure)
        : eventItem("completed", "done", "Completed", inv.completed_at),
    );
  }
  return h("ol", { class: "timeline", id: "journal" }, items);
}

function journalItem(entry, owners, waiting) {
  const { kind, name } = entryKind(entry);
  const decoded = parseJson(entry.entry_json, {});
  const details = [];
  if (entry.name) details.push(h("span", { class: "entry-name" }, `"${entry.name}"`));
  if (entry.invoked_target) {
    details.push(["→ ", entry.invoked_target]);
    if (entry.invoked_id) details.push(link(`#/invocations/${seg(entry.invoked_id)}`, mono(entry.invoked_id)));
  }
  if (entry.sleep_wakeup_at) details.push(`until ${entry.sleep_wakeup_at}`);
  if (entry.promise_name) details.push(`promise "${entry.promise_name}"`);
  if (typeof decoded.key === "string" && !entry.promise_name && !entry.invoked_target) {
    details.push(`key "${decoded.key}"`);
  }
  if (typeof decoded.invocation_id === "string" && !entry.invoked_target) {
    details.push(link(`#/invocations/${seg(decoded.invocation_id)}`, mono(decoded.invocation_id)));
  }
  let state = "done";
  let stateLabel = null;
  if (kind === "Notification") {
    const owner = owners.get(decoded.completion_id);
    if (owner) details.push(`completes #${owner.index}`);
    // A signal notification names its signal by index (idx) or name; the template shape says signal_id/_name.
    const signal = decoded.signal_id ?? (name === "Signal" ? decoded.idx : undefined);
    if (signal !== undefined) details.push(describeSignal(signal));
    const signalName = decoded.signal_name ?? (name === "Signal" ? decoded.name : undefined);
    if (signalName && !entry.name) details.push(`signal "${signalName}"`);
  }
  const awaited = Object.entries(decoded)
    .filter(([field]) => field.endsWith("completion_id") && kind === "Command")
    .some(([, value]) => waiting.completions.includes(value));
  if (awaited) {
    state = "waiting";
    stateLabel = "awaiting completion";
  } else if (entry.completed === false) {
    state = "waiting";
    stateLabel = "not completed";
  } else if (entry.completed === true) {
    stateLabel = "completed";
  }
  if (decoded.failure) state = "error";
  const value = entry.value;
  return h(
    "li",
    {
      class: `entry entry-${kind.toLowerCase()} state-${state}`,
      dataset: { index: entry.index, type: entry.entry_type },
    },
    h(
      "div",
      { class: "entry-head" },
      h("span", { class: "entry-index" }, `#${entry.index}`),
      h("span", { class: `entry-kind kind-${kind}` }, kind),
      h("span", { class: "entry-type" }, name),
      details.map((d) => h("span", { class: "entry-detail" }, d)),
      stateLabel ? h("span", { class: `entry-state state-${state}` }, stateLabel) : null,
    ),
    value !== null && value !== undefined && value !== ""
      ? h(
        "pre",
        {
          class: decoded.failure ? "entry-value failure-text" : "entry-value",
          title: value.length > 600 ? value : null,
        },
        clip(pretty(value), 600),
      )
      : null,
    h("details", {}, h("summary", {}, `decoded (${entry.raw_length} bytes)`), h("pre", {}, pretty(entry.entry_json))),
  );
}

function eventItem(name, state, title, text) {
  return h(
    "li",
    { class: `entry entry-event state-${state}`, dataset: { event: name } },
    h("div", { class: "entry-head" }, h("span", { class: "entry-kind kind-Event" }, "Status"),
      h("span", { class: "entry-type" }, title), text ? h("span", { class: "entry-detail" }, text) : null),
  );
}

// ------------------------------------------------------------------------------------------------ actions

const ACTIONS = {
  cancel: {
    label: "Cancel",
    allowed: (s) => s !== "completed",
    warning: "The handler gets a cancellation and may run its compensations before it completes with [409] cancelled.",
  },
  kill: {
    label: "Kill",
    allowed: (s) => s !== "completed",
    warning: "The invocation stops at once, without running any more code; its children are killed too.",
  },
  pause: {
    label: "Pause",
    allowed: (s) => ["running", "suspended", "backing-off"].includes(s),
    warning: "The current attempt is aborted and no new attempt starts until it is resumed.",
  },
  resume: {
    label: "Resume",
    allowed: (s) => ["paused", "backing-off", "suspended"].includes(s),
    warning: "A new attempt starts now (the failed-attempt count starts again from 0).",
  },
  purge: {
    label: "Purge",
    allowed: (s) => s === "completed",
    warning: "The invocation's status, result and journal are deleted now instead of at the end of their retention.",
  },
};

function actionBar(inv) {
  const confirm = h("div", { class: "confirm", id: "action-confirm", hidden: true });
  const buttons = Object.entries(ACTIONS).map(([op, action]) =>
    h(
      "button",
      {
        type: "button",
        class: `action action-${op}`,
        id: `action-${op}`,
        disabled: !action.allowed(inv.status),
        onclick: () => askToConfirm(confirm, inv, op),
      },
      action.label,
    ),
  );
  return h("div", { class: "actions" }, h("div", { class: "action-buttons" }, buttons), confirm);
}

function askToConfirm(confirm, inv, op) {
  const action = ACTIONS[op];
  const go = h(
    "button",
    {
      type: "button",
      class: `action action-${op} confirm-go`,
      id: "action-confirm-go",
      onclick: async () => {
        go.disabled = true;
        try {
          await api("PATCH", `invocations/${seg(inv.id)}/${op}`);
        } catch (err) {
          showError(err);
          go.disabled = false;
          return;
        }
        flash = { kind: "ok", text: `${action.label}: done for ${inv.id}.` };
        if (op === "purge") navigate("#/invocations");
        else render();
      },
    },
    `${action.label} ${inv.id}`,
  );
  confirm.replaceChildren(
    h("span", {}, `${action.label} this invocation? ${action.warning}`),
    go,
    h("button", { type: "button", id: "action-confirm-back", onclick: () => { confirm.hidden = true; } }, "Back"),
  );
  confirm.hidden = false;
}

// ------------------------------------------------------------------------------------------------ state

async function pageStateIndex() {
  const [{ services }, counts] = await Promise.all([
    api("GET", "services"),
    sql("SELECT service_name, count(DISTINCT service_key) AS keys, count(*) AS entries FROM state GROUP BY 1"),
  ]);
  const keyed = services.filter((s) => s.ty === "VirtualObject" || s.ty === "Workflow");
  const countOf = new Map(counts.map((row) => [row.service_name, row]));
  const view = [pageHeader("State")];
  view.push(stateLookupForm(keyed.map((s) => s.name), ""));
  if (!keyed.length) {
    view.push(empty("No virtual objects or workflows are registered."));
    return view;
  }
  const rows = keyed.map((svc) =>
    h(
      "tr",
      { dataset: { service: svc.name } },
      h("td", {}, link(`#/state/${seg(svc.name)}`, svc.name)),
      h("td", {}, svc.ty),
      h("td", { class: "num" }, countOf.get(svc.name)?.keys ?? 0),
      h("td", { class: "num" }, countOf.get(svc.name)?.entries ?? 0),
    ),
  );
  view.push(table(["Service", "Type", "Keys with state", "Entries"], rows));
  return view;
}

function stateLookupForm(serviceNames, current) {
  const form = h(
    "form",
    {
      class: "filters",
      id: "state-lookup",
      onsubmit: (event) => {
        event.preventDefault();
        const data = new FormData(form);
        const svc = String(data.get("service") || "");
        const key = String(data.get("key") || "");
        if (svc && key) navigate(`#/state/${seg(svc)}/${seg(key)}`);
        else if (svc) navigate(`#/state/${seg(svc)}`);
      },
    },
    h("label", {}, "Service ", h("select", { name: "service", id: "state-service" },
      serviceNames.map((n) => h("option", { value: n, selected: n === current || null }, n)))),
    h("label", {}, "Key ",
      h("input", { name: "key", id: "state-key", placeholder: "object key", spellcheck: "false" })),
    h("button", { type: "submit" }, "Show"),
  );
  return form;
}

async function pageStateService(params, service) {
  const rows = await sql(
    "SELECT service_key, count(*) AS entries, sum(value_length) AS bytes FROM state " +
      `WHERE service_name = ${lit(service)} GROUP BY 1 ORDER BY 1 LIMIT 1000`,
  );
  const view = [pageHeader("State", h("span", { class: "subtitle" }, service))];
  view.push(stateLookupForm([service], service));
  if (!rows.length) {
    view.push(empty(`No key of ${service} has state.`));
    return view;
  }
  view.push(
    table(
      ["Key", "Entries", "Bytes"],
      rows.map((row) =>
        h(
          "tr",
          { dataset: { key: row.service_key } },
          h("td", {}, link(`#/state/${seg(service)}/${seg(row.service_key)}`, row.service_key)),
          h("td", { class: "num" }, row.entries),
          h("td", { class: "num" }, row.bytes),
        ),
      ),
      { id: "state-keys" },
    ),
  );
  return view;
}

async function pageStateKey(params, service, key) {
  const where = `service_name = ${lit(service)} AND service_key = ${lit(key)}`;
  const [entries, lock, inbox] = await Promise.all([
    sql(`SELECT key, value_utf8, value, value_length FROM state WHERE ${where} ORDER BY key`),
    sql(`SELECT invocation_id FROM sys_keyed_service_status WHERE ${where}`),
    sql(`SELECT id, sequence_number, created_at FROM sys_inbox WHERE ${where} ORDER BY sequence_number`),
  ]);
  const view = [
    pageHeader("State", h("span", { class: "subtitle" }, link(`#/state/${seg(service)}`, service), ` / ${key}`)),
  ];
  view.push(
    fields([
      ["Lock held by", lock.length ? link(`#/invocations/${seg(lock[0].invocation_id)}`, mono(lock[0].invocation_id))
        : "nobody"],
      ["Inbox", inbox.length ? inbox.map((row, i) => [i ? ", " : "", link(`#/invocations/${seg(row.id)}`,
        mono(row.id))]) : "empty"],
      ["Invocations", link(`#/invocations?service=${seg(service)}&key=${seg(key)}`, `all of ${service}/${key}`)],
    ]),
  );
  if (!entries.length) {
    view.push(empty(`No state for ${service}/${key}.`));
    return view;
  }
  const rows = entries.map((row) =>
    h(
      "tr",
      { dataset: { stateKey: row.key } },
      h("td", {}, mono(row.key)),
      h("td", {},
        row.value_utf8 === null ? mono(`0x${row.value}`) : h("pre", { class: "value" }, pretty(row.value_utf8))),
      h("td", { class: "num" }, row.value_length),
    ),
  );
  view.push(section("Entries", table(["Name", "Value", "Bytes"], rows, { id: "state-entries" })));
  view.push(
    h("p", { class: "note" }, "Edit with ", mono(`capstan kv set ${service} ${key} NAME VALUE`), " or ",
      mono(`capstan kv clear ${service} ${key} [NAME]`), "."),
  );
  return view;
}

// ------------------------------------------------------------------------------------------------ subscriptions

async function pageSubscriptions() {
  let subscriptions;
  try {
    ({ subscriptions } = await api("GET", "subscriptions"));
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      return [
        pageHeader("Subscriptions"),
        empty("The Kafka extension is not loaded: this engine has no subscriptions."),
      ];
    }
    throw err;
  }
  const [status, lag, { clusters }] = await Promise.all([
    sql("SELECT id, running, paused, ingested, dead_lettered, last_error, replaying, group_id FROM sys_subscription"),
    sql("SELECT subscription_id, topic, partition, position, committed_offset, end_offset, lag FROM sys_kafka_lag " +
      "ORDER BY subscription_id, topic, partition"),
    api("GET", "kafka-clusters"),
  ]);
  const statusOf = new Map(status.map((row) => [row.id, row]));
  const view = [pageHeader("Subscriptions", h("span", { class: "count" }, `${subscriptions.length}`))];
  if (!subscriptions.length) {
    view.push(empty("No subscriptions. Create one with ",
      mono("capstan subscriptions create kafka://CLUSTER/TOPIC service://Service/handler"), "."));
  }
  for (const sub of subscriptions) {
    view.push(subscriptionCard(sub, statusOf.get(sub.id), lag.filter((r) => r.subscription_id === sub.id)));
  }
  view.push(
    section(
      "Kafka clusters",
      clusters.length
        ? table(["Name", "Bootstrap servers"], clusters.map((c) => h("tr", {}, h("td", {}, c.name),
          h("td", {}, mono((c.properties || {})["bootstrap.servers"] || "")))), { id: "clusters-table" })
        : empty("No Kafka clusters."),
    ),
  );
  return view;
}

function subscriptionCard(sub, status, partitions) {
  const st = status || {};
  const totalLag = partitions.reduce((sum, p) => sum + (p.lag ?? 0), 0);
  let state = "stopped";
  if (st.paused) state = "paused";
  else if (st.running) state = "running";
  const sink = sub.sink.replace(/^service:\/\//, "");
  const [service, handler] = sink.split("/");
  const options = Object.entries(sub.options || {});
  return h(
    "article",
    { class: "card subscription", dataset: { subscription: sub.id } },
    h(
      "header",
      {},
      h("h2", {}, mono(sub.id)),
      h("span", { class: `badge badge-sub-${state}`, dataset: { status: state } }, state),
      st.replaying ? h("span", { class: "kind" }, "replaying") : null,
    ),
    fields([
      ["Source", mono(sub.source)],
      ["Sink", service && handler ? link(`#/invocations?service=${seg(service)}&handler=${seg(handler)}`, sub.sink)
        : sub.sink],
      ["Consumer group", mono(st.group_id)],
      ["Ingested", h("span", { class: "stat", dataset: { stat: "ingested" } }, String(st.ingested ?? 0))],
      ["Dead-lettered",
        h("span", { class: "stat", dataset: { stat: "dead-lettered" } }, String(st.dead_lettered ?? 0))],
      ["Lag", h("span", { class: "stat", dataset: { stat: "lag" } }, String(totalLag))],
      ["Last error", st.last_error ? h("span", { class: "failure-text" }, st.last_error) : null],
      ["Options", options.length ? options.map(([k, v]) => h("div", {}, mono(`${k} = ${v}`))) : null],
    ]),
    partitions.length
      ? table(
        ["Topic", "Partition", "Position", "Committed", "End offset", "Lag"],
        partitions.map((p) =>
          h("tr", { dataset: { partition: p.partition } }, h("td", {}, p.topic), h("td", { class: "num" }, p.partition),
            h("td", { class: "num" }, p.position ?? "—"), h("td", { class: "num" }, p.committed_offset ?? "—"),
            h("td", { class: "num" }, p.end_offset ?? "—"), h("td", { class: "num" }, p.lag ?? "—")),
        ),
        { class: "partitions" },
      )
      : empty("No partitions assigned (the consumer is not running yet)."),
  );
}

// ------------------------------------------------------------------------------------------------ routing

const ROUTES = [
  [/^\/services$/, pageServices, "services"],
  [/^\/deployments$/, pageDeployments, "deployments"],
  [/^\/invocations$/, pageInvocations, "invocations"],
  [/^\/invocations\/([^/]+)$/, pageInvocation, "invocations"],
  [/^\/state$/, pageStateIndex, "state"],
  [/^\/state\/([^/]+)$/, pageStateService, "state"],
  [/^\/state\/([^/]+)\/([^/]+)$/, pageStateKey, "state"],
  [/^\/subscriptions$/, pageSubscriptions, "subscriptions"],
];

function navigate(hash) {
  if (window.location.hash === hash) render();
  else window.location.hash = hash;
}

const main = document.getElementById("main");
let generation = 0; // a render that finds a newer one started drops its result

async function render() {
  const current = ++generation;
  const raw = window.location.hash.replace(/^#/, "") || "/services";
  const cut = raw.indexOf("?");
  const path = cut < 0 ? raw : raw.slice(0, cut);
  const params = new URLSearchParams(cut < 0 ? "" : raw.slice(cut + 1));
  document.body.dataset.state = "loading";
  const notice = flash;
  flash = null;
  let view;
  let failure = null;
  let sectionName = null;
  try {
    const route = ROUTES.find(([pattern]) => pattern.test(path));
    if (!route) throw new ApiError(0, "", `No page at #${path}.`);
    const [pattern, page, name] = route;
    sectionName = name;
    const args = pattern.exec(path).slice(1).map((part) => decodeURIComponent(part));
    view = await page(params, ...args);
  } catch (err) {
    failure = err;
  }
  if (current !== generation) return;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.section === sectionName);
  if (failure) {
    main.replaceChildren(pageHeader("Error"));
    showError(failure);
    document.body.dataset.state = "error";
    return;
  }
  main.replaceChildren(...view.filter(Boolean));
  if (notice) setBanner(notice.kind, notice.text);
  else setBanner(null);
  const focus = params.get("focus");
  if (focus) document.getElementById(`service-${focus}`)?.scrollIntoView();
  document.title = `Capstan · ${document.getElementById("page-title")?.textContent || ""}`;
  document.body.dataset.state = "ready";
}

function setUpToken() {
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  const show = () => {
    input.value = "";
    input.placeholder = window.sessionStorage.getItem(TOKEN_KEY) ? "saved (this tab)" : "none";
  };
  show();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (token) window.sessionStorage.setItem(TOKEN_KEY, token);
    else window.sessionStorage.removeItem(TOKEN_KEY);
    flash = { kind: "ok", text: token ? "Admin token saved for this tab." : "Admin token cleared." };
    show();
    render();
  });
}

window.addEventListener("hashchange", () => render());
setUpToken();
render();
