"""The README's picture of the ``nextpose serve`` page: starts the server (resnext50 256x192
with the oracle's seed-0 weights, so the keypoints are not a trained model's), opens the page
in headless Chromium (Debian's, driven by Playwright), chooses a sample image and saves a
screenshot.

Usage::

    python benchmarks/serve_screenshot.py docs/serve-page.jpg
"""

import argparse
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from bench_serve import COCO, make_checkpoint, start_server
from playwright.sync_api import sync_playwright


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--image", type=Path, default=COCO / "000000000785.jpg")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or sys.exit("needs Debian's chromium")
    options = argparse.Namespace(device="cpu", backend="auto", max_batch=32, max_wait_ms=5)
    with tempfile.TemporaryDirectory() as folder:
        server, url = start_server(make_checkpoint(Path(folder), oracle=True), options)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1180, "height": 640})
                page.goto(url + "/")
                page.wait_for_function("window.nextpose.model !== null")
                page.set_input_files("#file", str(args.image))
                page.wait_for_function("window.nextpose.records.length > 0", timeout=120_000)
                box = page.locator("#canvas").bounding_box()
                nose = page.evaluate("window.nextpose.records[0].keypoints[0]")
                scale = box["width"] / page.evaluate("document.getElementById('canvas').width")
                page.mouse.move(box["x"] + nose[0] * scale, box["y"] + nose[1] * scale)
                page.screenshot(path=str(args.out), quality=85, type="jpeg")
                browser.close()
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
