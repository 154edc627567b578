// The configuration value parsers: what each accepts, and that bad text gets an error that says
// what was expected (and never quotes more than a line of it back).
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  InvalidValue,
  MAX_DURATION_MS,
  parseBoolean,
  parseDuration,
  parseHostPort,
  parseInteger,
  parseList,
  parseNumber,
  parseUrl,
} from "../../../src/common/config-values.ts";

describe("parseInteger", () => {
  it("takes decimal digits, with a sign and surrounding space", () => {
    assert.equal(parseInteger("42"), 42);
    assert.equal(parseInteger(" -7 "), -7);
    assert.equal(parseInteger("0", { min: 0 }), 0);
  });
  it("refuses what Number() would take but a person did not mean", () => {
    for (const text of ["", " ", "1e3", "0x10", "1.5", "12abc", "Infinity", "1_000", "9".repeat(16)])
      assert.throws(() => parseInteger(text), InvalidValue, text);
  });
  it("checks the bounds and says them", () => {
    assert.throws(() => parseInteger("0", { min: 1 }), /expected an integer of at least 1, got "0"/);
    assert.throws(() => parseInteger("70000", { min: 0, max: 65535 }), /from 0 to 65535/);
    assert.throws(() => parseInteger("11", { max: 10 }), /of at most 10/);
  });
  it("quotes at most a line of the bad text", () => {
    const error = (() => {
      try {
        parseInteger("x".repeat(10_000));
      } catch (e) {
        return e as Error;
      }
    })();
    assert.ok(error instanceof InvalidValue);
    assert.ok(error.message.length < 200, error.message);
  });
});

describe("parseNumber", () => {
  it("takes decimals; `above` excludes the bound itself", () => {
    assert.equal(parseNumber("0.5", { above: 0 }), 0.5);
    assert.equal(parseNumber(".25"), 0.25);
    assert.equal(parseNumber("50"), 50);
    assert.throws(() => parseNumber("0", { above: 0 }), /expected a number above 0, got "0"/);
    for (const text of ["", "abc", "1e3", "NaN", "Infinity", "1.2.3"])
      assert.throws(() => parseNumber(text), InvalidValue, text);
  });
});

describe("parseDuration", () => {
  it("is a whole number in the flag's unit, never negative, at most a day by default", () => {
    assert.equal(parseDuration("800", "ms"), 800);
    assert.equal(parseDuration("0", "ms"), 0);
    assert.equal(parseDuration(String(MAX_DURATION_MS), "ms"), MAX_DURATION_MS);
    assert.throws(() => parseDuration("-1", "ms"), /from 0 to 86400000/);
    assert.throws(() => parseDuration(String(MAX_DURATION_MS + 1), "ms"), InvalidValue);
    assert.equal(parseDuration("86400", "s"), 86400);
    assert.throws(() => parseDuration("86401", "s"), /from 0 to 86400/);
    assert.throws(() => parseDuration("0", "s", { min: 1 }), /from 1 to 86400/);
    assert.throws(() => parseDuration("1.5", "s"), InvalidValue);
  });
});

describe("parseBoolean", () => {
  it("takes the usual spellings in any case, and nothing else", () => {
    for (const text of ["1", "true", "TRUE", "yes", "On"]) assert.equal(parseBoolean(text), true, text);
    for (const text of ["0", "false", "No", "OFF"]) assert.equal(parseBoolean(text), false, text);
    for (const text of ["", "y", "enabled", "2"])
      assert.throws(() => parseBoolean(text), /expected true or false/, text);
  });
});

describe("parseList", () => {
  it("splits on commas, trims and drops empty items", () => {
    assert.deepEqual(parseList("a, b,,c ,"), ["a", "b", "c"]);
    assert.deepEqual(parseList(""), []);
    assert.deepEqual(parseList(" , "), []);
  });
});

describe("parseUrl", () => {
  it("takes absolute URLs of the given schemes only", () => {
    assert.equal(parseUrl("https://server:8443", ["https:", "http:"]).port, "8443");
    assert.equal(parseUrl(" redis://r:6379 ", ["redis:", "rediss:"]).hostname, "r");
    assert.throws(() => parseUrl("ftp://x", ["https:"]), /scheme https:, got "ftp:"/);
    assert.throws(() => parseUrl("server:8443/x", ["https:"]), /scheme/);
    assert.throws(() => parseUrl("not a url", ["https:"]), /expected a URL \(https:\/\/…\)/);
  });
});

describe("parseHostPort", () => {
  it("takes host:port, [v6]:port and :port", () => {
    assert.deepEqual(parseHostPort("10.0.0.1:8180"), { host: "10.0.0.1", port: 8180 });
    assert.deepEqual(parseHostPort("[fd00::1]:80"), { host: "fd00::1", port: 80 });
    assert.deepEqual(parseHostPort(":9090"), { host: "0.0.0.0", port: 9090 });
    assert.deepEqual(parseHostPort("localhost:0"), { host: "localhost", port: 0 });
  });
  it("refuses anything else", () => {
    for (const text of ["8180", "host", "host:", "host:65536", "host:123456", "a:b:1", "[x]:1", "[::1:80"])
      assert.throws(() => parseHostPort(text), /expected host:port/, text);
  });
});
