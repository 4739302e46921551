"""Lineage in the ZenML dashboard, checked against a real local ZenML server and in a real browser.

Starts the local server (`zenml login --local`, 127.0.0.1 only, a free port, its own throw-away
ZENML_CONFIG_PATH), runs the tiny pipeline against it once, then checks through the server's REST API
that the run's DAG links the raw data snapshot -> validated data (task_data) -> SFT adapter -> DPO adapter
-> merged model -> GGUF exports, and that the report visualizations are served (each HTML page, the Markdown
summaries, the PNG charts and the merged model's card). Last, headless
Chromium opens the run page in the dashboard and takes a screenshot. The server is stopped at the end
(`zenml logout --local`).

    .venv/bin/pytest -q tests/infra/test_dashboard.py      # a few minutes: one tiny pipeline run
    TUNELINE_SCREENSHOT=docs/img/dashboard_run.png .venv/bin/pytest -q tests/infra/test_dashboard.py -k browser

Needs the `server` extra; the browser part needs Debian's `chromium` (apt-get install -y chromium) and
is skipped, with the reason, only when no chromium binary is found.
"""

import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from tuneline.paths import PROJECT_ROOT

pytestmark = pytest.mark.pipeline

ZENML = str(Path(sys.executable).parent / "zenml")
# The lineage chain: (producer step, artifact, consumer step), in order.
CHAIN = [
    ("snapshot_data", "raw_data", "validate_data"),
    ("validate_data", "task_data", "train_sft"),
    ("train_sft", "sft_adapter", "train_dpo"),
    ("train_dpo", "dpo_adapter", "merge"),
    ("merge", "merged_model", "score_merged"),
    ("score_merged", "merged_reference", "export_gguf"),
    ("merge", "merged_model", "export_gguf"),
    ("export_gguf", "gguf_export", "promote"),
    ("merge", "merged_model", "export_gptq"),
    ("export_gptq", "gptq_export", "promote"),
    ("merge", "merged_model", "export_awq"),
    ("export_awq", "awq_export", "promote"),
]
REPORTS = {"data_report": "validate_data", "sft_loss_curve": "train_sft", "dpo_loss_curve": "train_dpo",
           "evaluation_report": "evaluate", "final_report": "promote"}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--no-first-run", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                  "--hide-scrollbars", "--window-size=1400,900"]  # + a fresh --user-data-dir per test


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _require_server_extra():
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "multipart", "jwt") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(f"the server extra is not installed ({missing}): pip install -e '.[server]'", pytrace=False)


class Server:
    def __init__(self, url: str, env: dict):
        self.url, self.env = url.rstrip("/"), env
        self.http = requests.Session()

    def zenml(self, *args, timeout=900) -> subprocess.CompletedProcess:
        return subprocess.run([ZENML, *args], cwd=PROJECT_ROOT, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def get(self, path: str, **params):
        r = self.http.get(f"{self.url}/api/v1{path}", params=params, timeout=60)
        if r.status_code == 401 and "Authorization" not in self.http.headers:
            self._login()
            r = self.http.get(f"{self.url}/api/v1{path}", params=params, timeout=60)
        assert r.status_code == 200, f"GET {path}: {r.status_code} {r.text[:500]}"
        return r.json()

    def put(self, path: str, body: dict):
        r = self.http.put(f"{self.url}/api/v1{path}", json=body, timeout=60)
        assert r.status_code == 200, f"PUT {path}: {r.status_code} {r.text[:500]}"
        return r.json()

    def complete_onboarding(self):
        """What the dashboard's first-run survey would store: without it the survey replaces every page."""
        me = self.get("/current-user", hydrate=True)
        metadata = (me.get("metadata") or {}).get("user_metadata") or {}
        self.put("/current-user", {"email_opted_in": False,
                                   "user_metadata": {**metadata, "finished_onboarding_survey": True}})

    def _login(self):
        """The local server runs without auth; a server with password auth gets the default user's token."""
        r = self.http.post(f"{self.url}/api/v1/login", data={"username": "default", "password": ""}, timeout=60)
        assert r.status_code == 200, f"login: {r.status_code} {r.text[:500]}"
        self.http.headers["Authorization"] = f"Bearer {r.json()['access_token']}"


@pytest.fixture(scope="module")
def server():
    """A local ZenML server on 127.0.0.1 with its own config dir; stopped and removed at the end."""
    _require_server_extra()
    config_dir = tempfile.mkdtemp(prefix="tuneline-dashboard-")
    env = os.environ.copy() | {"ZENML_CONFIG_PATH": config_dir, "ZENML_AUTO_OPEN_DASHBOARD": "false",
                               "ZENML_ANALYTICS_OPT_IN": "false", "ZENML_ENABLE_REPO_INIT_WARNINGS": "false"}
    repo_config = PROJECT_ROOT / ".zen" / "config.yaml"
    saved = repo_config.read_bytes() if repo_config.exists() else None  # the run rewrites the repo's active stack
    port = _free_port()
    srv = Server(f"http://127.0.0.1:{port}", env)
    if not (PROJECT_ROOT / ".zen").exists():
        assert srv.zenml("init").returncode == 0
    try:
        p = srv.zenml("login", "--local", "--ip-address", "127.0.0.1", "--port", str(port), timeout=180)
        assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if requests.get(f"{srv.url}/health", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(1)
        yield srv
    finally:
        stop = srv.zenml("logout", "--local", timeout=120)
        if saved is not None:
            repo_config.write_bytes(saved)
        shutil.rmtree(config_dir, ignore_errors=True)
        assert stop.returncode == 0, (stop.stdout + stop.stderr)[-2000:]
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, "the local ZenML server is still listening"


@pytest.fixture(scope="module")
def run(server) -> dict:
    """One tiny pipeline run against the server, reused by every test here."""
    started = time.time()
    tiny = str(PROJECT_ROOT / "configs" / "tiny.yaml")
    p = server.zenml("pipeline", "run", "pipelines.finetune.finetune", "-c", tiny)
    assert p.returncode == 0, (p.stdout + p.stderr)[-6000:]
    runs = server.get("/runs", sort_by="desc:created", size=1, hydrate=True)["items"]
    assert runs, "the server has no run"
    r = runs[0]
    r["_seconds"] = round(time.time() - started)
    r["_output"] = p.stdout + p.stderr
    return r


def _dag(server, run) -> tuple[dict, set]:
    dag = server.get(f"/runs/{run['id']}/dag")
    nodes = {n["node_id"]: n for n in dag["nodes"]}
    edges = {(nodes[e["source"]]["type"], nodes[e["source"]]["name"], nodes[e["target"]]["type"],
              nodes[e["target"]]["name"]) for e in dag["edges"]}
    return nodes, edges


def test_run_completed_on_the_server(server, run):
    assert run["body"]["status"] == "completed", run["body"]["status"]
    assert "Dashboard URL for Pipeline Run" in run["_output"] and server.url in run["_output"]


def test_dag_links_raw_data_to_exports(server, run):
    nodes, edges = _dag(server, run)
    steps = {n["name"] for n in nodes.values() if n["type"] == "step"}
    assert {"prepare_base", "plan", "snapshot_data", "validate_data", "data_gate", "train_sft", "train_dpo", "evaluate", "merge",
            "export_gguf", "export_gptq", "export_awq", "promote"} <= steps, steps
    for producer, artifact, consumer in CHAIN:
        assert ("step", producer, "artifact", artifact) in edges, f"{producer} -> {artifact} missing"
        assert ("artifact", artifact, "step", consumer) in edges, f"{artifact} -> {consumer} missing"
    # The raw data artifact is the copied files themselves, typed as data, with the configured names.
    raw = server.get(f"/artifact_versions/{_artifact_version_ids(server, run)['raw_data']}", hydrate=True)
    assert raw["body"]["type"] == "DataArtifact", raw["body"]["type"]
    meta = raw["metadata"]["run_metadata"]
    assert meta["files"]["train_file"].startswith("data/") and len(meta["sha256"]) == 16, meta
    assert ("step", "prepare_base", "artifact", "base_model") in edges
    assert ("artifact", "base_model", "step", "validate_data") in edges


def _artifact_version_ids(server, run) -> dict:
    nodes, _ = _dag(server, run)
    return {n["name"]: n["id"] for n in nodes.values() if n["type"] == "artifact" and n.get("id")}


def _visualizations(server, version_id: str) -> list[dict]:
    """Every visualization the server serves for one artifact version, in order."""
    count = len(server.get(f"/artifact_versions/{version_id}", hydrate=True)["metadata"]["visualizations"] or [])
    return [server.get(f"/artifact_versions/{version_id}/visualize", index=i) for i in range(count)]


def test_report_visualizations_are_served(server, run):
    ids = _artifact_version_ids(server, run)
    for name, producer in REPORTS.items():
        assert name in ids, f"{name} (from {producer}) is not in the run's DAG"
        vis = server.get(f"/artifact_versions/{ids[name]}/visualize", index=0)
        assert vis["type"] == "html" and len(vis["value"]) > 200, (name, vis["type"], str(vis["value"])[:200])
        assert "<" in vis["value"], name


# Beside each HTML page: the Markdown summaries and the PNG charts (materializers/report.py), and the
# merged model's card (materializers/directories.py), each as its own visualization.
MARKDOWN = {"data_report": "## Data validation", "evaluation_report": "| base |", "final_report": "## Exports",
            "merged_model": "## Evaluation"}
IMAGES = {"sft_loss_curve", "dpo_loss_curve", "evaluation_report", "final_report"}


def test_markdown_and_image_visualizations_are_served(server, run):
    ids = _artifact_version_ids(server, run)
    for name in set(MARKDOWN) | IMAGES:
        shown = _visualizations(server, ids[name])
        kinds = [v["type"] for v in shown]
        if name in MARKDOWN:
            texts = [v["value"] for v in shown if v["type"] == "markdown"]
            assert any(MARKDOWN[name] in t for t in texts), (name, kinds, [t[:300] for t in texts])
        if name in IMAGES:
            images = [base64.b64decode(v["value"]) for v in shown if v["type"] == "image"]
            assert images and all(i[:8] == b"\x89PNG\r\n\x1a\n" and len(i) > 5_000 for i in images), (name, kinds)
    card = next(v["value"] for v in _visualizations(server, ids["merged_model"]) if v["type"] == "markdown")
    assert "| sft |" in card and "| dpo |" in card, card[:2000]  # the card's evaluation table, rendered as Markdown
    # The Hub metadata (YAML front matter) shows as a code block, not as a paragraph between two rules.
    assert card.startswith("```yaml\n") and "base_model:" in card.split("```", 2)[1], card[:2000]


class DevTools:
    def __init__(self, ws):
        self.ws, self.n = ws, 0

    def call(self, method: str, **params) -> dict:
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.n:
                assert "error" not in msg, msg
                return msg["result"]

    def js(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")


@contextlib.contextmanager
def chromium_page(binary: str, profile: Path):
    """Headless Chromium driven over the DevTools protocol (the dashboard lays the DAG out in the
    background, which `--screenshot`'s virtual time never lets finish). Ended when the block ends."""
    from websockets.sync.client import connect

    proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        port_file, deadline = profile / "DevToolsActivePort", time.time() + 60
        while not port_file.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        pages = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        with connect(next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page"), max_size=None) as ws:
            yield DevTools(ws)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


def test_run_page_in_headless_chromium(server, run, tmp_path):
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if not binary:
        pytest.skip("no chromium binary: apt-get install -y chromium (CI installs it)")
    server.complete_onboarding()
    url = f"{server.url}/projects/default/runs/{run['id']}"
    steps = ["prepare_base", "validate_data", "data_gate", "train_sft", "train_dpo", "evaluate", "merge",
             "export_gguf", "promote"]
    with chromium_page(binary, tmp_path / "profile") as browser:
        browser.call("Page.enable")
        browser.call("Emulation.setDeviceMetricsOverride", width=1400, height=900, deviceScaleFactor=1, mobile=False)
        browser.call("Page.navigate", url=url)
        text, deadline = "", time.time() + 120
        while time.time() < deadline:
            # Under load the page text once held only the first steps of the DAG: fit the view so every node is drawn.
            browser.js("document.querySelector('button[aria-label=\"Fit view\"]')?.click()")
            text = browser.js("document.body ? document.body.innerText : ''") or ""
            if all(s in text for s in steps) and "Calculating DAG" not in text:
                break
            time.sleep(0.5)
        assert "Add your account details" not in text and "Log in" not in text, text[:1000]
        missing = [s for s in steps + ["task_data", "sft_adapter", "dpo_adapter", "merged_model", "gguf_export"]
                   if s not in text]
        assert not missing, f"not on the run page: {missing}\n{text[:1000]}"
        # The whole DAG in view: dismiss the local-server notice, fold the details panel, fit the graph.
        browser.js("""(() => {
            const b = (sel) => document.querySelector(sel);
            b('button[aria-label="Dismiss local-server notice"]')?.click();
            [...document.querySelectorAll('button')].find(x => !x.getAttribute('aria-label') && !x.innerText.trim()
                && x.parentElement?.innerText.trim().startsWith('Run Insights'))?.click(); })()""")
        time.sleep(1.5)
        browser.js("document.querySelector('button[aria-label=\"Fit view\"]')?.click()")
        time.sleep(1.5)
        png = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000, "the screenshot is empty"
    shot = Path(os.environ.get("TUNELINE_SCREENSHOT") or tmp_path / "dashboard_run.png")
    if not shot.is_absolute():
        shot = PROJECT_ROOT / shot
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.write_bytes(png)


def test_model_version_is_listed_by_the_api(server, run):
    """The open-source dashboard does not list model versions; the API (and `zenml model version list`) does."""
    versions = server.get("/model_versions", model="tuneline-tiny", hydrate=True)["items"]
    assert versions and versions[0]["name"] == "1", versions
    assert versions[0]["metadata"]["run_metadata"].get("reasons"), "the promotion decision is on the version"
    p = server.zenml("model", "version", "list", "--model", "tuneline-tiny", timeout=120)
    assert p.returncode == 0 and "tuneline-tiny" in p.stdout, p.stdout + p.stderr
    print(json.dumps({"pipeline_seconds": run["_seconds"]}))
