"""The human study: trial design and balanced lists, the built study folder, the server (twenty
raters at once, tokens, idempotent retries), JATOS export, the analysis -- and the real page
driven by scripted raters in headless Chromium against the real server."""

from __future__ import annotations

import copy
import json
import shutil
import threading
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from iri_alignment.irisets import write_iriset
from iri_alignment.survey.analysis import (analyze, krippendorff_alpha_nominal, pairwise_agreement,
                                           read_responses)
from iri_alignment.survey.build import build_study
from iri_alignment.survey.design import make_lists, study_trials
from iri_alignment.survey.jatos import build_jzip

MODELS = ("resnet18-adversarial", "resnet18-standard", "vgg16-standard")


def fake_set(folder: Path, model_id: str, seed: int, n: int = 10) -> Path:
    """An IRI set of n 8x8 images (labels 0..n-1), written in the package's own format."""
    g = torch.Generator().manual_seed(seed)
    targets, iris = torch.rand(n, 3, 8, 8, generator=g), torch.rand(n, 3, 8, 8, generator=g)
    arch, regime = model_id.split("-", 1)
    table = pd.DataFrame({"index": range(n), "target_index": range(n), "label": range(n), "rep_loss": 0.01,
                          "converged": True, "best_iteration": 1, "seed": 0})
    write_iriset(folder, seeds=torch.rand(1, 3, 8, 8, generator=g), targets=targets, iris=iris, table=table,
                 target_indices=list(range(n)), meta={"model": {"arch": arch, "regime": regime, "dataset": "shapes"},
                                                      "regularizer": "reg-free"})
    return folder


@pytest.fixture
def study_params(smoke) -> dict:
    params = copy.deepcopy(smoke)
    params["survey"].update(raters_per_trial=2, list_size=25, catch_fraction=0.1, practice_trials=2, enable_after_ms=0,
                            completion_url="http://127.0.0.1:9/done?cc=TEST")
    params["survey"]["exclusions"].update(min_rt_ms=0, max_failed_catch=0)
    return params


@pytest.fixture
def sets(tmp_path) -> list[Path]:
    return [fake_set(tmp_path / "results" / "iris" / m / "reg-free", m, i) for i, m in enumerate(MODELS)]


@pytest.fixture
def study(tmp_path, sets, study_params) -> Path:
    build_study(sets, tmp_path / "study", study_params)
    return tmp_path / "study"


# -- design ----------------------------------------------------------------------------------------------


def test_every_main_trial_is_in_k_lists_never_twice_and_each_list_has_catch_trials(sets, study_params):
    main = study_trials(sets, seed=0)
    assert len(main) == 3 * 10 * 2
    lists, catch, practice = make_lists(main, raters_per_trial=3, list_size=25, catch_fraction=0.1, practice=4, seed=0)
    counts = Counter(t for lst in lists for t in lst["trials"] if not t.startswith("catch"))
    assert set(counts) == {t["id"] for t in main} and set(counts.values()) == {3}
    for lst in lists:
        assert len(lst["trials"]) == len(set(lst["trials"]))
        mains = [t for t in lst["trials"] if not t.startswith("catch")]
        assert len(mains) <= 25 and 1 <= len(lst["trials"]) - len(mains) <= 3
    assert len(practice) == 4 and {p["task"] for p in practice} == {"2afc", "clustering"}
    for t in catch + practice:  # a known answer: the query is the right choice itself
        assert t["choices"][t["answer"]] == t["query"]


def test_the_button_order_is_the_exports(sets, study_params, tmp_path):
    from iri_alignment.alignment import export_human

    export_human(study_params, iris=sets[0], out=tmp_path / "export")
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    main = [t for t in study_trials(sets[:1], seed=study_params["scoring"]["clustering_seed"]) if t["task"] == "2afc"]
    assert [t["answer"] for t in main] == [t["answer"] for t in manifest["2afc"]]


# -- the built folder ------------------------------------------------------------------------------------


def test_the_public_folder_reveals_no_answer_and_loads_nothing_from_outside(study):
    public = json.loads((study / "public" / "trials.json").read_text())
    private = json.loads((study / "private" / "trials.json").read_text())
    assert set(public) == set(private)
    for pid, t in public.items():
        assert ("answer" in t) == (private[pid]["kind"] == "practice")
        for image in (t["query"], *t["choices"]):
            assert (study / "public" / image).is_file() and not any(w in image for w in ("target", "seed", "iri"))
    assert not any(private[pid]["trial"] in json.dumps(public) for pid in private)  # ids are opaque
    page = (study / "public" / "index.html").read_text() + (study / "public" / "survey.js").read_text()
    assert "http://" not in page and "https://" not in page  # no CDN


def test_the_vendored_jspsych_matches_its_manifest_and_the_npm_lock(repo):
    from iri_alignment.survey.vendor import VENDOR, sha256

    manifest = json.loads((VENDOR / "MANIFEST.json").read_text())
    lock = json.loads((repo / "src/iri_alignment/survey/frontend/package-lock.json").read_text())["packages"]
    for name, entry in manifest.items():
        assert sha256(VENDOR / name) == entry["sha256"], name
        assert lock[f"node_modules/{entry['package']}"]["version"] == entry["version"]
    assert manifest["jspsych.min.js"]["version"].startswith("8.")


# -- the server, without a browser ---------------------------------------------------------------------


@pytest.fixture
def client(study):
    from iri_alignment.survey.server import create_app

    app = create_app(study, token="admin-secret")
    return app.test_client(), app


def answer_all(client, session, private, choose, *, retry=False):
    for pid in session["practice"] + session["trials"]:
        body = {"session_id": session["session_id"], "token": session["token"], "trial": pid,
                "response": choose(private[pid]), "rt": 900}
        for _ in range(2 if retry else 1):
            r = client.post("/api/response", json=body)
            assert r.status_code == 200, r.json
    return client.post("/api/complete", json={"session_id": session["session_id"], "token": session["token"]})


def start(client, study):
    config = json.loads((study / "public" / "config.json").read_text())
    r = client.post("/api/session", json={"prolific_pid": None, "study_hash": config["study_hash"]})
    assert r.status_code == 200
    return {**r.json, "practice": config["practice"]}


def test_twenty_raters_at_once_lose_and_duplicate_nothing_and_fill_the_lists_evenly(study, client):
    client, app = client
    private = json.loads((study / "private" / "trials.json").read_text())
    lists = json.loads((study / "private" / "lists.json").read_text())

    def rater(i):
        c = app.test_client()
        session = start(c, study)
        done = answer_all(c, session, private, lambda t: t["answer"], retry=True)  # every answer sent twice
        assert done.status_code == 200 and done.json["redirect"].endswith("cc=TEST")
        return session

    with ThreadPoolExecutor(20) as pool:
        sessions = list(pool.map(rater, range(20)))
    rows = app.config["store"].export()
    expected = sum(len(lists[s["list_id"]]["trials"]) + len(s["practice"]) for s in sessions)
    assert len(rows) == expected and len({(r["session_id"], r["trial"]) for r in rows}) == expected
    per_list = Counter(s["list_id"] for s in sessions)
    assert max(per_list.values()) - min(per_list.get(i, 0) for i in range(len(lists))) <= 1


def test_writes_need_the_sessions_own_token_and_known_trials(study, client):
    client, _ = client
    a, b = start(client, study), start(client, study)
    trial = a["trials"][0]
    forged = {"session_id": a["session_id"], "token": b["token"], "trial": trial, "response": 0, "rt": 500}
    assert client.post("/api/response", json=forged).status_code == 403
    other = next(t for t in b["trials"] if t not in a["trials"] + a["practice"])
    r = client.post("/api/response", json={**forged, "token": a["token"], "trial": other})
    assert r.status_code == 400 and "not one of this session" in r.json["error"]
    r = client.post("/api/response", json={**forged, "token": a["token"], "response": 7})
    assert r.status_code == 400
    assert client.post("/api/response", data="x" * 40000, content_type="application/json").status_code == 413
    r = client.post("/api/complete", json={"session_id": a["session_id"], "token": a["token"]})
    assert r.status_code == 409 and len(r.json["missing"]) == len(a["trials"]) + len(a["practice"])


def test_only_the_admin_token_reads_the_answers_and_nothing_outside_public_is_served(study, client):
    client, _ = client
    assert client.get("/admin/export").status_code == 403
    assert client.get("/admin/export", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert client.get("/admin/export", headers={"Authorization": "Bearer admin-secret"}).status_code == 200
    for path in ("/../private/trials.json", "/%2e%2e/private/trials.json", "/../study.json", "/../responses.db"):
        assert client.get(path).status_code == 404, path
    assert client.get("/trials.json").status_code == 200


# -- JATOS --------------------------------------------------------------------------------------------


def test_the_jatos_archive_holds_a_version_3_study_and_the_page_with_jatos_js(study, tmp_path):
    info = build_jzip(study, tmp_path / "study.jzip")
    with zipfile.ZipFile(tmp_path / "study.jzip") as z:
        names = z.namelist()
        jas = json.loads(z.read(f"{info['dir']}.jas"))
        page = z.read(f"{info['dir']}/index.html").decode()
    assert jas["version"] == "3" and jas["data"]["dirName"] == info["dir"]
    component = jas["data"]["componentList"][0]
    assert f"{info['dir']}/{component['htmlFilePath']}" in names and '<script src="jatos.js">' in page
    assert jas["data"]["endRedirectUrl"].endswith("cc=TEST")
    assert not any("private" in n for n in names)


# -- analysis -----------------------------------------------------------------------------------------


def test_krippendorffs_alpha_matches_an_independent_implementation_and_a_hand_computed_case():
    krippendorff = pytest.importorskip("krippendorff")
    assert krippendorff_alpha_nominal([[1, 1], [2, 2], [1, 2]]) == pytest.approx(1 - 5 * 2 / (2 * 3 * 3))
    rng = np.random.default_rng(0)
    data = rng.integers(0, 3, size=(6, 40)).astype(float)
    data[rng.random(data.shape) < 0.3] = np.nan
    units = [[int(v) for v in col if not np.isnan(v)] for col in data.T]
    want = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")
    assert krippendorff_alpha_nominal(units) == pytest.approx(want, abs=1e-9)
    assert pairwise_agreement([[0, 0, 0], [1, 0]]) == pytest.approx((1 + 0) / 2)


def test_exclusions_are_counted_and_a_rater_who_misses_catch_trials_is_left_out(study, client, tmp_path):
    client, app = client
    private = json.loads((study / "private" / "trials.json").read_text())
    good, careless = start(client, study), start(client, study)
    answer_all(client, good, private, lambda t: t["answer"])
    answer_all(client, careless, private, lambda t: (t["answer"] + 1) % len(t["choices"]))  # misses every catch
    unfinished = start(client, study)
    client.post("/api/response", json={"session_id": unfinished["session_id"], "token": unfinished["token"],
                                       "trial": unfinished["trials"][0], "response": 0, "rt": 400})
    summary = analyze(study / "responses.db", study, tmp_path / "human")
    assert summary["exclusions"]["excluded_incomplete_sessions"] == 1
    assert summary["exclusions"]["excluded_failed_catch_sessions"] == 1
    assert summary["exclusions"]["kept_sessions"] == 1
    assert all(row["mean"] == 100 for row in summary["human"])


# -- the real page in a real browser ---------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def live(study):
    """The real server on 127.0.0.1 (a free port) in a thread."""
    from werkzeug.serving import make_server

    from iri_alignment.survey.server import create_app

    app = create_app(study, token="admin-secret")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", app
    server.shutdown()


@pytest.fixture
def browser():
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make setup)")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu",
                                                               "--disable-background-networking", "--no-first-run"])
        yield b
        b.close()


def run_rater(browser, url: str, public: dict, choose, *, screenshot: Path | None = None) -> str:
    """Click through one session as a scripted rater; return the URL it ends on."""
    page = browser.new_page()
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    # the Prolific completion URL: answered here, so the test sees where the page went
    page.route("http://127.0.0.1:9/**", lambda route: route.fulfill(body="<p class='iri-end'>done</p>",
                                                                     content_type="text/html"))
    page.goto(url + "/?PROLIFIC_PID=rater-" + str(id(choose)) + "&STUDY_ID=s1&SESSION_ID=x1")
    shots = {}
    while True:
        page.wait_for_selector("#jspsych-html-button-response-btngroup button, #jspsych-instructions-next, .iri-end",
                               timeout=20000)
        if page.locator(".iri-end").count() or "done" in page.url:
            break
        if page.locator("#jspsych-instructions-next").count():
            page.click("#jspsych-instructions-next")
            continue
        query = page.locator(".iri-query")
        if query.count():
            src = query.get_attribute("src")
            choices = [b.get_attribute("src") for b in page.locator(".iri-choice img").all()]
            pid = next(p for p, t in public.items() if t["query"] == src and t["choices"] == choices)
            if screenshot is not None and public[pid]["task"] not in shots:
                shots[public[pid]["task"]] = screenshot / f"survey-{public[pid]['task']}.png"
                page.screenshot(path=str(shots[public[pid]["task"]]))
            k = choose(pid, len(choices))
        else:
            k = 0  # consent, feedback, "start"
        page.locator(f"#jspsych-html-button-response-btngroup button[data-choice='{k}']").click()
    page.wait_for_function("window.__done === true || location.href.includes('done')", timeout=20000)
    assert all(r.startswith(url) or r.startswith("http://127.0.0.1:9/") for r in requests), "a request left the study"
    final = page.url
    page.close()
    return final


def test_scripted_raters_in_chromium_are_stored_and_the_analysis_recovers_their_alignment(study, live, browser,
                                                                                         tmp_path, repo):
    url, app = live
    public = json.loads((study / "public" / "trials.json").read_text())
    private = json.loads((study / "private" / "trials.json").read_text())
    rng = np.random.default_rng(0)
    shots = tmp_path / "shots"
    shots.mkdir()
    clicked = {}  # the random rater's main-trial choices, to check what the analysis makes of them

    def random_rater(pid, n):
        if private[pid]["kind"] != "main":
            return private[pid]["answer"]
        clicked[pid] = int(rng.integers(n))
        return clicked[pid]

    raters = {"always-right": lambda pid, n: private[pid]["answer"],
              "random": random_rater,
              "left": lambda pid, n: 0 if private[pid]["kind"] == "main" else private[pid]["answer"]}
    for name, choose in raters.items():
        final = run_rater(browser, url, public, choose, screenshot=shots if name == "always-right" else None)
        assert final.startswith("http://127.0.0.1:9/done?cc=TEST"), final  # the Prolific redirect, after saving
    rows = app.config["store"].export()
    sessions = {r["session_id"] for r in rows}
    assert len(sessions) == 3 and all(r["completed"] for r in rows)
    lists = json.loads((study / "private" / "lists.json").read_text())
    by_session = Counter(r["session_id"] for r in rows)
    for r in rows:  # every answer of every trial, once
        assert by_session[r["session_id"]] == len(lists[r["list_id"]]["trials"]) + len(json.loads(
            (study / "public" / "config.json").read_text())["practice"])
    summary = analyze(study / "responses.db", study, tmp_path / "human")
    answers = read_responses(study / "responses.db", study)
    main = answers[answers["kind"] == "main"]
    per_rater = main.groupby(["session_id", "task"])["aligned"].mean().mul(100)
    session_of = main.groupby("session_id")["rater"].first()
    order = sorted(sessions, key=lambda s: min(r["server_time"] for r in rows if r["session_id"] == s))
    right, random_, left = order
    assert (per_rater[right] == 100).all()
    left_main = main[main["session_id"] == left]
    assert per_rater[left].to_dict() == (left_main.assign(at0=left_main["answer"] == 0)
                                         .groupby("task")["at0"].mean().mul(100).to_dict())
    # a few random clicks can land anywhere; what must hold is that the analysis scores exactly the clicks made
    expected = pd.DataFrame([{"task": private[pid]["task"], "right": k == private[pid]["answer"]}
                             for pid, k in clicked.items()]).groupby("task")["right"].mean().mul(100)
    assert per_rater[random_].to_dict() == pytest.approx(expected.to_dict())
    assert summary["raters"] == 3 and session_of.nunique() == 3
    for task in ("2afc", "clustering"):
        assert (shots / f"survey-{task}.png").is_file()


# -- the MLflow UI, in the same browser ----------------------------------------------------------------


def test_the_mlflow_ui_opens_the_study_on_its_runs_table(browser, smoke, tmp_path, monkeypatch):
    """The README's URL shows the score runs side by side in MLflow's model-training view, not its GenAI overview."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    import mlflow

    from iri_alignment.tracking import EXPERIMENT_KIND, start_run

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    for name, stage in (("resnet18-standard-reg-free", "score"), ("resnet18-adversarial-reg-free", "score"),
                        ("resnet18-standard", "train")):
        with start_run(smoke, stage=stage, name=name):
            pass
    experiment = mlflow.MlflowClient(store).get_experiment_by_name("nanda2023-smoke")
    assert experiment.tags[EXPERIMENT_KIND[0]] == EXPERIMENT_KIND[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", store,
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        url = (f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs"
               "?workflowType=machine_learning&searchFilter=tags.stage%20%3D%20%27score%27")
        page.goto(url)
        page.wait_for_selector("text=resnet18-adversarial-reg-free", timeout=60000)
        page.wait_for_selector("text=resnet18-standard-reg-free", timeout=10000)
        page.screenshot(path=str(tmp_path / "mlflow-runs.png"))
        assert page.locator("text=resnet18-standard >> nth=0").count()
        assert not page.locator("text=/^resnet18-standard$/").count()  # the train run is filtered out
        assert not page.get_by_text("Judges").count() and not page.get_by_text("Prompts").count()  # not GenAI's view
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_rebuild_never_replaces_a_study_that_holds_answers(study, client, study_params, sets):
    client, _ = client
    private = json.loads((study / "private" / "trials.json").read_text())
    answer_all(client, start(client, study), private, lambda t: t["answer"])
    with pytest.raises(FileExistsError, match="collected answers"):
        build_study(sets, study, study_params)
    assert (study / "responses.db").is_file()


def test_the_server_and_the_jatos_export_start_without_torch():
    """They serve files and answers; importing them under a web server must not load torch (~0.5 GB)."""
    import subprocess
    import sys

    code = ("import sys, iri_alignment.survey.server, iri_alignment.survey.jatos; "
            "print(sorted(m for m in ('torch', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_folder_that_is_not_a_study_is_named_before_any_mlflow_run(tmp_path, repo, monkeypatch):
    from click.testing import CliRunner

    from iri_alignment.cli import cli

    monkeypatch.chdir(tmp_path)
    store = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    (tmp_path / "answers.csv").write_text("x\n")
    (tmp_path / "empty").mkdir()
    for args in (["survey", "analyze", "--responses", "answers.csv", "--study", "empty", "--out", "out",
                  "--params", str(repo / "params.yaml"), "--profile", "smoke"],
                 ["survey", "jatos", "--study", "empty", "--out", "s.jzip"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1 and "empty is not a study folder (no study.json): build one" in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not store.exists() and not (tmp_path / "out").exists() and not (tmp_path / "s.jzip").exists()


JATOS_STUB = """
// A stand-in for the jatos.js that JATOS serves: enough of its API for the page, recording what it is given.
window.__jatos = {appended: [], ended: null};
window.jatos = {
  studyResultId: 7,
  urlQueryParameters: {},
  onLoad: (fn) => setTimeout(fn, 0),
  appendResultData: (text) => { window.__jatos.appended.push(text); return Promise.resolve(); },
  endStudyAndRedirect: (url, data) => { window.__jatos.ended = url; window.__jatos.final = data; },
  endStudy: (data, ok, msg) => { window.__jatos.ended = "end"; window.__jatos.final = data; },
};
"""


def test_the_jatos_page_appends_every_answer_and_the_analysis_reads_jatos_results(study, browser, tmp_path):
    """The .jzip's page under a jatos.js stand-in: one result line per answer, the end redirect, and
    `iri survey analyze` on those lines as JATOS exports them."""
    import http.server

    info = build_jzip(study, tmp_path / "study.jzip")
    with zipfile.ZipFile(tmp_path / "study.jzip") as z:
        z.extractall(tmp_path / "jatos")
    folder = tmp_path / "jatos" / info["dir"]
    (folder / "jatos.js").write_text(JATOS_STUB)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        public = json.loads((study / "public" / "trials.json").read_text())
        private = json.loads((study / "private" / "trials.json").read_text())
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{httpd.server_address[1]}/index.html")
        while not page.evaluate("window.__jatos.ended"):
            page.wait_for_selector("#jspsych-html-button-response-btngroup button, #jspsych-instructions-next",
                                   timeout=20000)
            if page.locator("#jspsych-instructions-next").count():
                page.click("#jspsych-instructions-next")
                continue
            query = page.locator(".iri-query")
            k = 0
            if query.count():
                src = query.get_attribute("src")
                choices = [b.get_attribute("src") for b in page.locator(".iri-choice img").all()]
                k = private[next(p for p, t in public.items() if t["query"] == src and t["choices"] == choices)]["answer"]
            page.locator(f"#jspsych-html-button-response-btngroup button[data-choice='{k}']").click()
            page.wait_for_timeout(30)
        lines = page.evaluate("window.__jatos.appended")
        assert page.evaluate("window.__jatos.ended").endswith("cc=TEST")
        assert page.evaluate("window.__jatos.final") == "".join(lines)  # saved per trial and at the end
    finally:
        httpd.shutdown()
    lists = json.loads((study / "private" / "lists.json").read_text())
    config = json.loads((study / "public" / "config.json").read_text())
    rows = [json.loads(line) for line in lines]
    assert len(rows) == len(lists[7 % len(lists)]["trials"]) + len(config["practice"])  # rotation by result id
    results = tmp_path / "jatos_results.txt"
    results.write_text("".join(lines))
    summary = analyze(results, study, tmp_path / "human")
    assert summary["exclusions"]["kept_sessions"] == 1 and all(row["mean"] == 100 for row in summary["human"])


def test_the_dag_builds_the_survey_and_adds_the_human_tables_once_responses_are_named(repo, tmp_path):
    import subprocess
    import sys

    import yaml

    raw = yaml.safe_load((repo / "params.yaml").read_text())
    (tmp_path / "answers.db").write_bytes(b"")
    raw["profiles"]["smoke"]["survey"] = {"responses": str(tmp_path / "answers.db")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    def rules(params_file):
        proc = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-n", "--quiet", "rules", "--config",
                               f"params={params_file}", "profile=smoke", f"results={tmp_path}/results"],
                              cwd=repo, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return {line.split()[0] for line in proc.stdout.splitlines() if len(line.split()) == 2 and line.split()[1].isdigit()}

    assert {"survey"} <= rules(repo / "params.yaml") and "human" not in rules(repo / "params.yaml")
    assert {"survey", "human"} <= rules(tmp_path / "params.yaml")
