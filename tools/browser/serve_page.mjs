// Opens mura serve's page in a headless Chromium, uploads the images of a study through the
// page's file input, waits for the study's probability and every heat map to appear, writes a screenshot,
// and prints what the page shows as one JSON line.
//
// node tools/browser/serve_page.mjs URL SCREENSHOT IMAGE...
// The browser: $MURA_BROWSER, else chromium-headless-shell or chromium on PATH.
import { execSync } from "node:child_process";
import puppeteer from "puppeteer-core";

const [url, screenshot, ...images] = process.argv.slice(2);
if (!url || !screenshot || !images.length) {
  console.error("usage: serve_page.mjs URL SCREENSHOT IMAGE...");
  process.exit(2);
}
function browserPath() {
  if (process.env.MURA_BROWSER) return process.env.MURA_BROWSER;
  for (const name of ["chromium-headless-shell", "chromium", "chromium-browser"]) {
    try {
      return execSync(`command -v ${name}`, { shell: "/bin/sh" }).toString().trim();
    } catch {}
  }
  throw new Error("no headless Chromium: set MURA_BROWSER");
}

const browser = await puppeteer.launch({
  executablePath: browserPath(),
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage();
  const requests = [];
  page.on("request", (r) => requests.push(r.url()));
  await page.setViewport({ width: 1100, height: 900 });
  await page.goto(url, { waitUntil: "load" });
  await page.waitForFunction(() => document.getElementById("model").dataset.name, { timeout: 20000 });
  const input = await page.$("#files");
  await input.uploadFile(...images);
  await page.waitForFunction(
    () => document.getElementById("study-probability").textContent.length > 0
      || document.getElementById("error").textContent.length > 0,
    { timeout: 60000 },
  );
  await page.waitForFunction(
    () => [...document.querySelectorAll("img.overlay")].every((i) => i.complete && i.naturalWidth > 0),
    { timeout: 20000 },
  );
  await page.screenshot({ path: screenshot, fullPage: true });
  const shown = await page.evaluate(() => ({
    model: document.getElementById("model").dataset.name,
    probability: document.getElementById("study-probability").textContent,
    decision: document.getElementById("decision").textContent,
    error: document.getElementById("error").textContent,
    overlays: [...document.querySelectorAll("img.overlay")].map((i) => [i.naturalWidth, i.naturalHeight]),
  }));
  shown.origins = [...new Set(requests.map((r) => new URL(r).origin))];
  console.log(JSON.stringify(shown));
} finally {
  await browser.close();
}
