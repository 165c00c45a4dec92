#!/usr/bin/env node
// The chat page of `alpaca serve` in a real headless Chromium: type an instruction, watch
// tokens stream in, stop a generation, use chat mode, take screenshots (docs/img/).
//
//   apt-get install chromium chromium-driver      # Debian's browser
//   (cd scripts/webui && npm install)             # playwright-core (no browser download)
//   cargo build --release && node scripts/webui_check.mjs [MODEL.gguf]
//
// Starts the release binary on a free loopback port; exits 1 if a check fails.

import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir, homedir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = dirname(here);
const require = createRequire(join(here, "webui", "package.json"));
const { chromium } = require("playwright-core");

const model = process.argv[2] || join(homedir(), ".cache/alpaca/models/SmolLM2-135M-Instruct.Q4_1.gguf");
const failures = [];
function check(name, ok, detail = "") {
  console.log(`- [${ok ? "x" : " "}] ${name}${detail ? ": " + detail : ""}`);
  if (!ok) failures.push(name);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function startServer() {
  const proc = spawn(join(root, "target/release/alpaca"), ["serve", "-m", model, "--port", "0"], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  return new Promise((resolve, reject) => {
    let buf = "";
    proc.stderr.on("data", (d) => {
      buf += d.toString();
      const m = buf.match(/listening on (http:\/\/\S+)\s/);
      if (m) resolve({ proc, url: m[1] });
    });
    proc.on("exit", (code) => reject(new Error(`server exited ${code}: ${buf}`)));
    setTimeout(() => reject(new Error("server did not start")), 60000);
  });
}

async function metric(url, name) {
  const text = await (await fetch(url + "/metrics")).text();
  const line = text.split("\n").find((l) => l.startsWith(name + " "));
  return line ? parseFloat(line.split(" ")[1]) : NaN;
}

const { proc, url } = await startServer();
let browser;
try {
  browser = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "alpaca-chromium-")), {
    executablePath: "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1000, height: 640 },
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--no-first-run", "--disable-component-update", "--disable-sync",
    ],
  });
} catch (e) {
  proc.kill("SIGTERM");
  throw e;
}
try {
  const page = browser.pages()[0] || (await browser.newPage());
  const consoleErrors = [];
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
  await page.goto(url + "/");
  check("page loads with its title", (await page.title()) === "alpaca");
  await page.waitForFunction(() => document.getElementById("model").textContent.includes("context"));
  check("model name shown", true, await page.textContent("#model"));

  // 1. Instruction mode: tokens stream into the response box.
  await page.fill("#instruction", "Give three tips for staying healthy.");
  await page.$eval("#temperature", (el) => { el.value = "0"; el.dispatchEvent(new Event("input")); });
  // Count DOM updates of the response box in the page itself (each streamed piece is one).
  await page.$eval("#output", (el) => {
    window.__updates = 0;
    new MutationObserver(() => { window.__updates++; }).observe(el, { childList: true, characterData: true, subtree: true });
  });
  await page.click("#send");
  await page.waitForFunction(() => document.getElementById("status").textContent !== "generating…", null, { timeout: 30000 });
  const updates = await page.evaluate(() => window.__updates);
  check("tokens stream in (response box updated piece by piece)", updates >= 5, `${updates} updates`);
  check("generation finished", (await page.textContent("#status")) === "done", await page.textContent("#stats"));
  const answer = await page.textContent("#output");
  check("response text", answer.length > 20, JSON.stringify(answer.slice(0, 80)));
  mkdirSync(join(root, "docs/img"), { recursive: true });
  await page.screenshot({ path: join(root, "docs/img/webui_instruction.png") });

  // 2. Stop: a long generation is aborted; the output stops growing; the slot is freed.
  const cancelledBefore = await metric(url, "alpaca_generations_cancelled_total");
  await page.fill("#instruction", "Write a very long story about a dragon who learns to bake bread.");
  await page.$eval("#max_tokens", (el) => { el.value = "1024"; el.dispatchEvent(new Event("input")); });
  await page.click("#send");
  await page.waitForFunction(() => document.getElementById("output").textContent.length > 40);
  await page.click("#stop");
  await page.waitForFunction(() => document.getElementById("status").textContent === "stopped");
  const atStop = (await page.textContent("#output")).length;
  await sleep(1000);
  const later = (await page.textContent("#output")).length;
  check("stop button aborts the stream", later === atStop, `${atStop} chars at stop, ${later} a second later`);
  await page.screenshot({ path: join(root, "docs/img/webui_stopped.png") });
  let cancelled = cancelledBefore;
  for (let i = 0; i < 40 && cancelled <= cancelledBefore; i++) {
    await sleep(50);
    cancelled = await metric(url, "alpaca_generations_cancelled_total");
  }
  check("server cancelled the generation", cancelled === cancelledBefore + 1,
        `alpaca_generations_cancelled_total ${cancelledBefore} -> ${cancelled}, active ${await metric(url, "alpaca_active_sequences")}`);
  check("buttons reset", !(await page.isDisabled("#send")) && (await page.isDisabled("#stop")));

  // 3. Chat mode: two turns.
  await page.click("#tab-chat");
  await page.$eval("#max_tokens", (el) => { el.value = "48"; el.dispatchEvent(new Event("input")); });
  await page.$eval("#temperature", (el) => { el.value = "0"; el.dispatchEvent(new Event("input")); });
  for (const msg of ["What is the capital of France?", "And of Italy?"]) {
    await page.fill("#message", msg);
    await page.click("#send");
    await page.waitForFunction(() => document.getElementById("status").textContent === "done", null, { timeout: 30000 });
  }
  const turns = await page.$$eval("#log .msg", (els) => els.map((e) => e.className + ": " + e.lastChild.textContent));
  check("chat mode: two turns answered", turns.length === 4 && turns[3].length > 15, JSON.stringify(turns));
  await page.screenshot({ path: join(root, "docs/img/webui_chat.png") });
  check("no console errors", consoleErrors.length === 0, consoleErrors.join("; "));
} finally {
  await browser.close();
  proc.kill("SIGTERM");
}
console.log(failures.length ? `FAILED: ${failures.join(", ")}` : "all checks passed");
process.exit(failures.length ? 1 : 0);
