"""The example workflow in ComfyUI's web page (the frontend package ComfyUI's requirements install), in a real
headless Chromium: the UI-format file converts to exactly the API-format file, and every node type is registered.

``IVMIXED_UPDATE_DOCS=1`` first rewrites the UI-format file from the API-format one (loaded by the frontend, laid out
left to right, seeds fixed) and the screenshot ``docs/comfyui.png``."""

import json
import os
import time
from collections import defaultdict

import pytest

from .comfy_env import PACK, REPO

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
API_WORKFLOW = PACK / "example_workflows" / "ivmixed_animatediff_api.json"
UI_WORKFLOW = PACK / "example_workflows" / "ivmixed_animatediff.json"
SCREENSHOT = REPO / "docs" / "comfyui.png"
UPDATE = os.environ.get("IVMIXED_UPDATE_DOCS") == "1"
VIEW = (1920, 1080)
# A first visit opens the template browser; the minimap and the render statistics would cover parts of the graph.
# Frontend 1.27.10 throws while it starts with the default navigation mode (its change handler writes two settings
# not registered yet); "custom" runs no handler, so that the page's errors can be asserted empty.
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False,
            "Comfy.Canvas.NavigationMode": "custom"}
GAP_X, GAP_Y = 70, 40  # between columns, between nodes of a column (canvas units)
TEXT_NODE_SIZE = [380, 110]  # prompt boxes: wide enough to read, short enough to keep the graph wide, not tall
LOADER_WIDTH = 320  # checkpoint loaders: the whole file names


def browser_problem():
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM}"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed"
    return None


pytestmark = pytest.mark.skipif(browser_problem() is not None, reason=str(browser_problem()))


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    from .server import ComfyServer

    with ComfyServer(tmp_path_factory.mktemp("comfyui-page"), settings=SETTINGS) as server:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": VIEW[0], "height": VIEW[1]})
                errors = []
                page.on("pageerror", lambda error: errors.append(str(error)))
                open_page(page, server.url + "/")
                page.errors = errors
                yield page
            finally:
                browser.close()


def open_page(page, url):
    page.goto(url, timeout=120_000)
    page.wait_for_function("window.app && window.app.graph && window.LiteGraph && window.app.vueAppReady",
                           timeout=120_000)


def graph_nodes(page):
    return page.evaluate("""() => app.graph._nodes.map(n => ({
        id: n.id, type: n.type, title: n.title, pos: [n.pos[0], n.pos[1]], size: [n.size[0], n.size[1]],
        inputs: (n.inputs || []).map(i => i.link == null ? null : app.graph.links[i.link].origin_id)
            .filter(x => x != null),
        registered: !!LiteGraph.registered_node_types[n.type], has_errors: !!n.has_errors,
        backend: !!(n.constructor && n.constructor.nodeData)}))""")


def layout(nodes):
    """Left-to-right positions: a node's column is its longest path from a node without inputs; in a column, nodes
    keep the order of their inputs' heights and sit no higher than their first input (so chains read as rows)."""
    by_id = {n["id"]: n for n in nodes}
    depth = {}

    def column(node_id, seen=()):
        if node_id not in depth:
            assert node_id not in seen, f"the workflow has a cycle through node {node_id}"
            inputs = by_id[node_id]["inputs"]
            depth[node_id] = 1 + max((column(i, seen + (node_id,)) for i in inputs), default=-1)
        return depth[node_id]

    columns = defaultdict(list)
    for node in nodes:
        columns[column(node["id"])].append(node["id"])
    title = 30  # LiteGraph's title bar, above a node's position
    positions, x = {}, 0.0
    for index in sorted(columns):
        def order(node_id):
            ys = [positions[i][1] for i in by_id[node_id]["inputs"] if i in positions]
            return (sum(ys) / len(ys) if ys else 0.0, node_id)

        y = 0.0
        for node_id in sorted(columns[index], key=order):
            inputs = [positions[i][1] for i in by_id[node_id]["inputs"] if i in positions]
            y = max(y, inputs[0] if index and inputs else 0.0)
            positions[node_id] = (x, y)
            y += by_id[node_id]["size"][1] + title + GAP_Y
        x += max(by_id[i]["size"][0] for i in columns[index]) + GAP_X
    return positions


FIT_VIEW = """(margin) => {
    const title = LiteGraph.NODE_TITLE_HEIGHT, nodes = app.graph._nodes;
    const x0 = Math.min(...nodes.map(n => n.pos[0])), y0 = Math.min(...nodes.map(n => n.pos[1] - title));
    const x1 = Math.max(...nodes.map(n => n.pos[0] + n.size[0]));
    const y1 = Math.max(...nodes.map(n => n.pos[1] + n.size[1]));
    const rect = app.canvas.canvas.getBoundingClientRect();
    const w = rect.width - 2 * margin, h = rect.height - 2 * margin - 40;  // the canvas toolbar, bottom right
    const scale = Math.min(w / (x1 - x0), h / (y1 - y0), 1.0);
    app.canvas.ds.scale = scale;
    app.canvas.ds.offset = [(rect.width / scale - (x1 - x0)) / 2 - x0,
                            (margin + (h - (y1 - y0) * scale) / 2) / scale - y0];
    app.canvas.setDirty(true, true);
    app.canvas.draw(true, true);
    return scale;
}"""


def make_ui_workflow(page, api):
    """The UI-format workflow of ``api``: loaded by the frontend, laid out, seeds fixed, the view fitted to it."""
    page.evaluate("async (api) => { await app.loadApiJson(api, 'ivmixed_animatediff') }", api)
    page.evaluate("""([size, loader]) => { for (const n of app.graph._nodes) {
        if (n.type === 'CLIPTextEncode') n.setSize([Math.max(size[0], n.computeSize()[0]), size[1]]);
        if (n.type === 'CheckpointLoaderSimple') n.setSize([loader, n.size[1]]);
        for (const w of n.widgets || []) if (w.name === 'control_after_generate') w.value = 'fixed';
    } }""", [TEXT_NODE_SIZE, LOADER_WIDTH])
    positions = layout(graph_nodes(page))
    page.evaluate("""(positions) => { for (const n of app.graph._nodes) n.pos = positions[String(n.id)]; }""",
                  {str(k): list(v) for k, v in positions.items()})
    scale = page.evaluate(FIT_VIEW, 30)
    assert scale > 0.5, f"the graph only fits the page at {scale:.2f}x: too small to read"
    return json.loads(page.evaluate("JSON.stringify(app.graph.serialize())"))


def prompt_from_ui(page, ui):
    """ComfyUI's own conversion of a UI-format workflow (the page's Queue button): the API-format prompt."""
    page.evaluate("async (ui) => { await app.loadGraphData(ui, true, true, 'ivmixed_animatediff') }", ui)
    return page.evaluate("async () => (await app.graphToPrompt()).output")


def test_ui_workflow_converts_to_the_api_workflow(page):
    api = json.loads(API_WORKFLOW.read_text())
    if UPDATE:
        ui = make_ui_workflow(page, api)
        UI_WORKFLOW.write_text(json.dumps(ui, indent=2) + "\n")
        time.sleep(0.5)  # a frame drawn after the last change
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT))
    assert UI_WORKFLOW.is_file(), f"{UI_WORKFLOW} is missing: make it with IVMIXED_UPDATE_DOCS=1"
    ui = json.loads(UI_WORKFLOW.read_text())
    prompt = prompt_from_ui(page, ui)

    assert sorted(prompt, key=int) == sorted(api, key=int)
    for node_id, node in api.items():
        got = prompt[node_id]
        assert got["class_type"] == node["class_type"], node_id
        assert got["inputs"] == node["inputs"], (node_id, node["class_type"])
        assert got.get("_meta", {}).get("title") == node.get("_meta", {}).get("title"), node_id
    nodes = graph_nodes(page)
    assert len(nodes) == len(api)
    unknown = [(n["id"], n["type"]) for n in nodes if not (n["registered"] and n["backend"])]
    assert not unknown, f"node types the page does not know (shown as missing): {unknown}"
    flagged = [(n["id"], n["type"]) for n in nodes if n["has_errors"]]
    assert not flagged, f"nodes shown with errors: {flagged}"
    assert not page.errors, f"errors in the page: {page.errors}"

