// A local OpenID provider standing in for Google in axnt-oauth's end-to-end tests.
//
// Usage:  node mock-provider.mjs [PORT]        (PORT 0 or absent: any free port)
//
// It serves oauth2-mock-server's provider (discovery, JWKS, /authorize, /token,
// /userinfo, /revoke) on 127.0.0.1 with one fresh RS256 signing key, and prints ONE line
// of JSON to stdout once it is listening:
//
//   {"issuer":"http://127.0.0.1:PORT"}
//
// then runs until SIGTERM/SIGINT (stops cleanly, exit 0), or until the process that
// started it is gone (so a test that panics does not leave it behind). Nothing else is
// written to stdout; set AXNT_MOCK_PROVIDER_VERBOSE=1 to log each request to stderr.
//
// How the Rust e2e test uses it: it spawns `node $TEST_AXNT_NODE_E2E_DIR/mock-provider.mjs 0`,
// reads the first stdout line, and starts the service with AXNT_GOOGLE_ISSUER set to the
// issuer (plus any client id and secret). The service finds every endpoint through
// `/.well-known/openid-configuration`. A browser is not needed: /authorize answers at once
// with a 302 to the redirect_uri carrying `code` and `state` (no login page), so a test
// follows the service's start link, then the provider's redirect, then the callback.
//
// What is added on top of oauth2-mock-server, so the provider behaves like Google where
// the service depends on it (oauth2-mock-server itself accepts any code, any refresh
// token and any client, answers scope "dummy", always rotates the refresh token, and
// names every user "johndoe"):
//
// - ID tokens carry `aud` and `azp` = the client id the token request authenticated with
//   (HTTP Basic, form-urlencoded as RFC 6749 asks, or the `client_id` form field), the
//   `nonce` sent to /authorize, and `email`, `email_verified` (true) and `name`.
// - The user is chosen by `login_hint`: an email address there becomes the account's
//   email, and `sub` is derived from it (stable: "mock-" + 16 hex digits of its SHA-256).
//   Without one the user is johndoe@example.com.
// - The token response's `scope` is the scope asked for at /authorize (kept on refresh).
// - Codes are single use and bound to the client, redirect_uri and PKCE challenge given
//   at /authorize: a reused or unknown code, another client or redirect_uri, a missing or
//   wrong code_verifier are each 400 invalid_grant (oauth2-mock-server would let a
//   request without code_verifier through).
// - Refresh tokens are checked: an unknown or revoked one is 400 invalid_grant. A refresh
//   answers no new refresh token, as Google does; the old one stays valid.
// - POST /revoke (form field `token`, access or refresh token) revokes the whole grant,
//   as Google does.
// - /userinfo answers the profile of the access token's user.
// - The discovery document advertises client_secret_basic and client_secret_post and the
//   refresh_token grant, as Google's does (oauth2-mock-server's says auth method "none").
//
// The package's OAuth2Issuer and OAuth2Service are served by our own node:http server
// rather than by its OAuth2Server, so that the checks above can answer before it and
// /__control can share the port.
//
// Test control, on the same port (JSON in and out; never needed for the happy path):
//
//   GET  /__control  -> {"settings": {...}, "counts": {...}}
//   POST /__control  with any of:
//     {"accessTokenTtl": 5}           expires_in (and access-token exp) of later tokens; default 3600
//     {"client": {"clientId": "id", "clientSecret": "s"}}
//                                     from now on /token requires exactly these credentials,
//                                     else 401 invalid_client (null: accept any client, the default)
//     {"tokenErrors": [{"status": 400, "error": "invalid_grant"}]}
//                                     the next token requests (one per entry) answer these errors
//     {"omitRefreshTokens": 1}        the next N code exchanges answer no refresh_token (a re-consent)
//     {"revokeAll": true}             every refresh token issued so far is dead (user revoked access)
//     {"reset": true}                 settings, grants and counts back to the start
//   counts: authorize, token.authorization_code, token.refresh_token (requests received),
//   revoke, userinfo, tokenErrors (token requests refused by the checks above or tokenErrors).
import { createHash } from "node:crypto";
import { createServer } from "node:http";
import { OAuth2Issuer, OAuth2Service } from "oauth2-mock-server";

const HOST = "127.0.0.1";
const DEFAULT_EMAIL = "johndoe@example.com";
const verbose = process.env.AXNT_MOCK_PROVIDER_VERBOSE === "1";
const log = (...args) => verbose && console.error("[mock-provider]", ...args);

const requestedPort = Number.parseInt(process.argv[2] ?? "0", 10);
if (!Number.isInteger(requestedPort) || requestedPort < 0 || requestedPort > 65535) {
  console.error(`usage: node mock-provider.mjs [PORT]  (got ${JSON.stringify(process.argv[2])})`);
  process.exit(2);
}

// ---- state -------------------------------------------------------------------------

const initialSettings = () => ({
  accessTokenTtl: 3600,
  client: null,
  tokenErrors: [],
  omitRefreshTokens: 0,
});
const initialCounts = () => ({
  authorize: 0,
  token: { authorization_code: 0, refresh_token: 0 },
  revoke: 0,
  userinfo: 0,
  tokenErrors: 0,
});

let settings = initialSettings();
let counts = initialCounts();
// One grant per successful /authorize: {clientId, redirectUri, scope, user, revoked}.
// Codes, refresh tokens and access tokens all point at their grant.
let grantsByCode = new Map();
let grantsByRefreshToken = new Map();
let grantsByAccessToken = new Map();
let allGrants = [];

function userFor(loginHint) {
  const email = loginHint?.includes("@") ? loginHint : DEFAULT_EMAIL;
  const digest = createHash("sha256").update(email).digest("hex");
  const local = email.split("@")[0];
  return {
    sub: `mock-${digest.slice(0, 16)}`,
    email,
    email_verified: true,
    name: email === DEFAULT_EMAIL ? "John Doe" : local,
  };
}

// The client a token request authenticated as. oauth2-mock-server takes the raw Basic
// user name, but RFC 6749 §2.3.1 has clients form-urlencode id and secret first.
function clientOf(req) {
  const header = req.headers.authorization ?? "";
  const match = /^Basic\s+(\S+)$/i.exec(header);
  if (match) {
    const decoded = Buffer.from(match[1], "base64").toString("utf8");
    const colon = decoded.indexOf(":");
    const formDecode = (s) => decodeURIComponent(s.replace(/\+/g, " "));
    if (colon >= 0) {
      return { id: formDecode(decoded.slice(0, colon)), secret: formDecode(decoded.slice(colon + 1)) };
    }
  }
  return { id: req.body?.client_id, secret: req.body?.client_secret };
}

// ---- the provider ------------------------------------------------------------------

const issuer = new OAuth2Issuer();
const service = new OAuth2Service(issuer);

// /authorize: remember what the code was issued for. `url` already carries the code.
service.on("beforeAuthorizeRedirect", ({ url }, req) => {
  const code = url.searchParams.get("code");
  if (!code) return; // an unsupported response_type: oauth2-mock-server answers the error
  counts.authorize += 1;
  const grant = {
    clientId: req.query.client_id,
    redirectUri: req.query.redirect_uri,
    scope: req.query.scope ?? "",
    codeChallenge: req.query.code_challenge,
    codeChallengeMethod: req.query.code_challenge_method ?? "plain",
    user: userFor(req.query.login_hint),
    revoked: false,
  };
  grantsByCode.set(code, grant);
  allGrants.push(grant);
});

// The grant a (validated) token request is about.
function grantOf(req) {
  if (req.body.grant_type === "authorization_code") return grantsByCode.get(req.body.code);
  if (req.body.grant_type === "refresh_token") return grantsByRefreshToken.get(req.body.refresh_token);
  return undefined;
}

// Emitted twice per /token call: for the access token, then for the ID token (whose
// payload alone has no `scope`: oauth2-mock-server sets it on access tokens only).
service.on("beforeTokenSigning", (token, req) => {
  const grant = grantOf(req);
  if (!grant) return;
  const isIdToken = !("scope" in token.payload);
  if (isIdToken) {
    const clientId = clientOf(req).id;
    Object.assign(token.payload, grant.user, { aud: clientId, azp: clientId });
  } else {
    token.payload.sub = grant.user.sub;
    token.payload.scope = grant.scope;
    token.payload.exp = token.payload.iat + settings.accessTokenTtl;
  }
});

service.on("beforeResponse", (response, req) => {
  const grant = grantOf(req);
  if (!grant || response.statusCode !== 200) return;
  const body = response.body;
  body.scope = grant.scope;
  body.expires_in = settings.accessTokenTtl;
  grantsByAccessToken.set(body.access_token, grant);
  if (req.body.grant_type === "authorization_code") {
    grantsByCode.delete(req.body.code);
    if (settings.omitRefreshTokens > 0) {
      settings.omitRefreshTokens -= 1;
      delete body.refresh_token;
    } else {
      grantsByRefreshToken.set(body.refresh_token, grant);
    }
  } else {
    delete body.refresh_token; // Google does not rotate refresh tokens
  }
});

service.on("beforeUserinfo", (response, req) => {
  counts.userinfo += 1;
  const bearer = /^Bearer\s+(\S+)$/i.exec(req.headers.authorization ?? "")?.[1];
  const grant = bearer && grantsByAccessToken.get(bearer);
  if (!grant || grant.revoked) {
    response.statusCode = 401;
    response.body = { error: "invalid_token" };
    return;
  }
  response.body = { ...grant.user };
});

// Checks made before oauth2-mock-server sees a token request; an error answer, or null.
function refuseTokenRequest(req) {
  const { grant_type: grantType } = req.body;
  if (grantType in counts.token) counts.token[grantType] += 1;

  const queued = settings.tokenErrors.shift();
  if (queued) {
    const { status = 400, ...error } = queued;
    return [status, error];
  }
  const client = clientOf(req);
  if (settings.client && (client.id !== settings.client.clientId || client.secret !== settings.client.clientSecret)) {
    return [401, { error: "invalid_client", error_description: "The OAuth client was not found." }];
  }
  if (grantType === "authorization_code") {
    const grant = grantsByCode.get(req.body.code);
    if (!grant) return [400, { error: "invalid_grant", error_description: "Malformed auth code." }];
    if (grant.clientId !== client.id || grant.redirectUri !== req.body.redirect_uri) {
      return [400, { error: "invalid_grant", error_description: "client_id or redirect_uri does not match the authorization request." }];
    }
    if (!pkceMatches(grant, req.body.code_verifier)) {
      return [400, { error: "invalid_grant", error_description: "Invalid code verifier." }];
    }
  }
  if (grantType === "refresh_token") {
    const grant = grantsByRefreshToken.get(req.body.refresh_token);
    if (!grant || grant.revoked) {
      return [400, { error: "invalid_grant", error_description: "Token has been expired or revoked." }];
    }
  }
  return null;
}

// Google-like PKCE: a code issued with a challenge needs the matching verifier, where
// oauth2-mock-server lets a request without code_verifier through.
function pkceMatches(grant, verifier) {
  if (!grant.codeChallenge) return true;
  if (typeof verifier !== "string") return false;
  const expected =
    grant.codeChallengeMethod === "S256" ? createHash("sha256").update(verifier).digest("base64url") : verifier;
  return expected === grant.codeChallenge;
}

function revoke(token) {
  counts.revoke += 1;
  const grant = grantsByRefreshToken.get(token) ?? grantsByAccessToken.get(token);
  if (grant) grant.revoked = true;
}

function control(req, res) {
  if (req.method === "POST") {
    const patch = req.body ?? {};
    if (patch.reset) {
      settings = initialSettings();
      counts = initialCounts();
      grantsByCode = new Map();
      grantsByRefreshToken = new Map();
      grantsByAccessToken = new Map();
      allGrants = [];
    }
    if (patch.revokeAll) allGrants.forEach((grant) => (grant.revoked = true));
    if ("accessTokenTtl" in patch) settings.accessTokenTtl = patch.accessTokenTtl;
    if ("client" in patch) settings.client = patch.client;
    if ("omitRefreshTokens" in patch) settings.omitRefreshTokens = patch.omitRefreshTokens;
    if (patch.tokenErrors) settings.tokenErrors.push(...patch.tokenErrors);
  } else if (req.method !== "GET") {
    return send(res, 405, { error: "use GET or POST" });
  }
  const { client, ...shown } = settings;
  send(res, 200, { settings: { ...shown, client: client && { clientId: client.clientId } }, counts });
}

// oauth2-mock-server answers discovery with res.json(doc); an own property on `res`
// shadows express's, so the document can be amended on its way out.
function patchDiscovery(res) {
  res.json = (doc) =>
    send(res, 200, {
      ...doc,
      token_endpoint_auth_methods_supported: ["client_secret_basic", "client_secret_post"],
      grant_types_supported: ["authorization_code", "refresh_token"],
      scopes_supported: ["openid", "email", "profile"],
      claims_supported: ["aud", "email", "email_verified", "exp", "iat", "iss", "name", "sub"],
    });
}

function send(res, status, body) {
  res.writeHead(status, { "content-type": "application/json", "cache-control": "no-store" });
  res.end(JSON.stringify(body));
}

// Reads a request body ahead of express. body-parser then skips the (finished) stream
// and keeps the req.body set here, so /token, /revoke and /__control all see the fields.
async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString("utf8");
  if ((req.headers["content-type"] ?? "").includes("application/json")) return text ? JSON.parse(text) : {};
  return Object.fromEntries(new URLSearchParams(text));
}

const server = createServer(async (req, res) => {
  const path = new URL(req.url, "http://x").pathname;
  log(req.method, req.url);
  try {
    if (req.method === "POST") req.body = await readBody(req);
  } catch {
    return send(res, 400, { error: "invalid_request", error_description: "unreadable body" });
  }
  if (path === "/__control") return control(req, res);
  if (path === "/.well-known/openid-configuration") patchDiscovery(res);
  if (req.method === "POST" && path === "/token" && req.body.grant_type) {
    const refusal = refuseTokenRequest(req);
    if (refusal) {
      counts.tokenErrors += 1;
      return send(res, ...refusal);
    }
  }
  if (req.method === "POST" && path === "/revoke" && req.body.token) revoke(req.body.token);
  service.requestHandler(req, res);
});

await issuer.keys.generate("RS256");
server.listen(requestedPort, HOST);
await new Promise((resolve, reject) => server.once("listening", resolve).once("error", reject));
// Set explicitly: left unset, oauth2-mock-server names its issuer http://localhost:PORT
// even when bound to 127.0.0.1, and `iss` would then not match the discovery URL.
issuer.url = `http://${HOST}:${server.address().port}`;
process.stdout.write(`${JSON.stringify({ issuer: issuer.url })}\n`);

let stopping = false;
function stop(reason) {
  if (stopping) return;
  stopping = true;
  log("stopping:", reason);
  server.close(() => process.exit(0));
  server.closeAllConnections(); // keep-alive connections would hold close() open
}
process.on("SIGTERM", () => stop("SIGTERM"));
process.on("SIGINT", () => stop("SIGINT"));

// Exit with the process that started us: a Rust test that panics or is killed never
// reaps its children. process.ppid is fixed at start in Node 20, so probe that pid.
const parent = process.ppid;
setInterval(() => {
  try {
    process.kill(parent, 0);
  } catch (err) {
    if (err.code === "ESRCH") stop("parent process exited");
  }
}, 1000).unref();
