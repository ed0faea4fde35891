// Node 20 support for @restatedev/restate-sdk >= 1.15, which calls Promise.withResolvers (ES2024, Node >= 22)
// while handling every invocation. Defines it only where the runtime lacks it; import this module before the SDK.
// (SDK versions without the call, <= 1.14, abort HTTP/1.1 request-response invocations at their first ctx.run:
// they take the request's "close" event, emitted once the body is read, for a lost connection.)
export {};

interface Resolvers<T> {
  promise: Promise<T>;
  resolve: (value: T | PromiseLike<T>) => void;
  reject: (reason?: unknown) => void;
}

const promiseConstructor = Promise as unknown as { withResolvers?: <T>() => Resolvers<T> };

if (typeof promiseConstructor.withResolvers !== "function") {
  promiseConstructor.withResolvers = function withResolvers<T>(): Resolvers<T> {
    let resolve!: (value: T | PromiseLike<T>) => void;
    let reject!: (reason?: unknown) => void;
    const promise = new Promise<T>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return { promise, resolve, reject };
  };
}
