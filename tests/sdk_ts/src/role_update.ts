// A role-update saga written with the official Restate TypeScript SDK, run against Capstan by
// tests/e2e/test_polyglot.py.
//
// RoleUpdate/update applies one permission per durable step (ctx.run). A step whose index equals
// `failAt` fails with a TerminalError (errorCode 422); the saga then undoes the steps already taken,
// in reverse order and each in its own ctx.run, and rethrows, so the caller sees the 422.
// RoleUpdate/permissions reads the in-memory store the steps write to: the external system the saga
// keeps consistent (it lives as long as the process, which is what the test needs).
// RoleUpdate/history lists every grant and revoke the side effects performed, in order: replays
// must not repeat them.
import * as restate from "@restatedev/restate-sdk";

export interface UpdateRequest {
  userId: string;
  role: string;
  permissions: string[];
  failAt?: number;
}

export interface UpdateResult {
  userId: string;
  role: string;
  applied: string[];
}

// userId -> permissions currently applied, in the order they were granted.
const store = new Map<string, string[]>();
// userId -> "grant <permission>" / "revoke <permission>", one per executed side effect.
const history = new Map<string, string[]>();

function record(userId: string, event: string): void {
  history.set(userId, [...(history.get(userId) ?? []), event]);
}

function grant(userId: string, permission: string): void {
  record(userId, `grant ${permission}`);
  const current = store.get(userId) ?? [];
  if (!current.includes(permission)) {
    store.set(userId, [...current, permission]);
  }
}

function revoke(userId: string, permission: string): void {
  record(userId, `revoke ${permission}`);
  const current = store.get(userId) ?? [];
  store.set(
    userId,
    current.filter((p) => p !== permission),
  );
}

export const roleUpdate = restate.service({
  name: "RoleUpdate",
  handlers: {
    update: async (ctx: restate.Context, req: UpdateRequest): Promise<UpdateResult> => {
      const compensations: Array<() => Promise<void>> = [];
      try {
        for (const [i, permission] of req.permissions.entries()) {
          // Register the undo before the step: a step that fails half-way is undone too
          // (revoke is idempotent).
          compensations.push(() => ctx.run(`revoke ${permission}`, () => revoke(req.userId, permission)));
          await ctx.run(`apply ${permission}`, () => {
            if (req.failAt === i) {
              throw new restate.TerminalError(`cannot apply ${permission} for role ${req.role}`, {
                errorCode: 422,
              });
            }
            grant(req.userId, permission);
          });
        }
      } catch (e) {
        if (e instanceof restate.TerminalError) {
          for (const compensate of compensations.reverse()) {
            await compensate();
          }
        }
        throw e;
      }
      return { userId: req.userId, role: req.role, applied: [...req.permissions] };
    },

    permissions: async (_ctx: restate.Context, req: { userId: string }): Promise<string[]> => {
      return store.get(req.userId) ?? [];
    },

    history: async (_ctx: restate.Context, req: { userId: string }): Promise<string[]> => {
      return history.get(req.userId) ?? [];
    },
  },
});
