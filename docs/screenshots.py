"""Screenshots of the Prefect and MLflow UIs for the README (``make screenshots``).

Starts a fresh no-Docker stack (moto S3, ``mlflow server``, ``prefect server``), runs the tiny test pipeline
on it twice (the second run has new filings, so the registry shows a champion and a previous version),
serves every deployment with ``finmerge serve``, and photographs with headless Chromium:

* ``docs/img/prefect-deployments.png``: the Prefect UI's deployments page;
* ``docs/img/prefect-runs.png``: the flow runs of the pipeline;
* ``docs/img/mlflow-model.png``: the MLflow UI's registered merged model with its versions and aliases.

Needs ``chromium`` (Debian: ``apt-get install chromium``) and the ``playwright`` package (the ``docs`` extra);
``make screenshots`` installs both when missing. Playwright drives the system Chromium: no browser download.
Stops everything it started, also on failure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "img"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--hide-scrollbars",
    # the machine has no internet: keep Chromium from trying (each refused connection slows the render)
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    sys.exit("no chromium on PATH: apt-get install chromium (or run `make screenshots`)")


def shoot_all(
    prefect_ui: str, mlflow_ui: str, viewer: tuple[str, str] | None = None, prefect_auth: str | None = None
) -> None:
    """Drive headless Chromium with Playwright: wait for the content, close side panels, save PNGs. The stack
    asks for logins (docs/security.md): MLflow's basic auth as the read-only ``viewer``, Prefect's auth
    string on its login page."""
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS[1:])
        creds = {"http_credentials": {"username": viewer[0], "password": viewer[1]}} if viewer else {}
        context = browser.new_context(viewport={"width": 1440, "height": 960}, device_scale_factor=1, **creds)
        page = context.new_page()
        try:
            if prefect_auth:
                _prefect_login(page, prefect_ui, prefect_auth)
            page.goto(f"{prefect_ui}/deployments")
            page.get_by_text("retrain-on-event").first.wait_for(timeout=60_000)
            _save(page, "prefect-deployments.png")
            page.goto(f"{prefect_ui}/runs")
            page.get_by_text("finmerge-pipeline").first.wait_for(timeout=60_000)
            _save(page, "prefect-runs.png")
            page.goto(f"{mlflow_ui}/#/models/finmerge-merged")
            page.get_by_text("Version 2").first.wait_for(timeout=60_000)
            _close_assistant(page)
            _save(page, "mlflow-model.png")
        finally:
            browser.close()


def _prefect_login(page, prefect_ui: str, auth: str) -> None:
    """The Prefect UI of an auth-enabled server opens on a login form asking for the auth string."""
    page.goto(prefect_ui)
    field = page.locator("input[type='password']")
    field.first.wait_for(timeout=60_000)
    field.first.fill(auth)
    page.keyboard.press("Enter")
    page.wait_for_timeout(2000)


def _close_assistant(page) -> None:
    """MLflow 3 opens an assistant panel over a third of the page; close it when it is there."""
    panel = page.get_by_text("MLflow Assistant")
    if panel.count():
        page.locator("button[aria-label*='lose']").last.click()
        page.wait_for_timeout(500)


def _save(page, name: str) -> None:
    page.wait_for_timeout(2500)  # the UIs poll forever (no network idle): let charts and counts settle
    out = OUT / name
    page.screenshot(path=str(out))
    print(f"wrote {out.relative_to(ROOT)} ({out.stat().st_size // 1024} KiB)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    ap.add_argument("--only-shoot", nargs=2, metavar=("PREFECT_UI", "MLFLOW_UI"), help="just photograph")
    args = ap.parse_args()
    if args.only_shoot:
        shoot_all(*args.only_shoot)
        return 0

    from finmerge import stack
    from finmerge.demo.edinet import write_fixture_filings

    work = Path(tempfile.mkdtemp(prefix="finmerge-shots-"))
    info = stack.up(work / "stack")
    env = {**os.environ, **stack.env(info), "PREFECT_HOME": str(work / "prefect-home")}
    os.environ.update(stack.env(info))  # the fixture filings below are written to the stack's S3
    exe = str(Path(sys.executable).parent / "finmerge")
    landing = "s3://finmerge/landing/edinet"
    common = [
        "--config",
        str(ROOT / "configs" / "test.yaml"),
        "--set",
        "storage.uri=s3://finmerge/store",
        "--set",
        f"storage.staging_dir={work / 'staging'}",
        "--set",
        f"corpus.ingest.sources=['{landing}/*.zip']",
        "--set",
        "registry.gates.max_ppl_ratio=100",
        "--set",
        "registry.gates.max_task_drop=1",
        "--set",
        "registry.gates.min_chat_adherence=null",
    ]
    serve = None
    try:
        for first in (0, 1):  # two retrains: the second brings new filings
            write_fixture_filings(landing, first * 2, 2)
            subprocess.run([exe, "retrain", "--force", *common], env=env, check=True)
            print(f"retrain {first + 1} done")
        serve = subprocess.Popen(
            [exe, "serve", *common],
            env=env,
            stdout=open(work / "serve.log", "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        time.sleep(25)  # serve registers the deployments
        shoot_all(
            info["services"]["prefect"]["url"].removesuffix("/api"),
            info["services"]["mlflow"]["url"],
            viewer=stack.credentials(info)["viewer"],
            prefect_auth=stack.env(info).get("PREFECT_API_AUTH_STRING"),
        )
    finally:
        if serve is not None:
            stack.stop(serve)
        if args.keep:
            print(f"stack left running: finmerge stack down --state {work / 'stack'}")
        else:
            stack.down(work / "stack")
    return 0


if __name__ == "__main__":
    sys.exit(main())
