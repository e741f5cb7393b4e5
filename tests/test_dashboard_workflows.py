"""The dashboard's workflow view: a task page of a graph node, chain step or chord member draws its
workflow (inline SVG, one box per member coloured by its state, an arrow per dependency) and lists its
members with their states; `GET /api/tasks/{id}/workflow` returns the same data as JSON."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import graph_tasks as gt
import pytest
import workflow_tasks as wt
from test_dashboard import BEARER, TOKEN, TestClient

from decortask import Decortask, Graph, chain, chord, group
from decortask.app import reset_default_app
from decortask.dashboard import create_dashboard
from decortask.testing import run_pending

XSS_NAME = "x<script>alert(1)</script>"


@pytest.fixture
def app(tmp_path: Path, unique: str) -> Iterator[Decortask]:
    instance = Decortask("memory://", f"sqlite:///{tmp_path}/store.db", default_queue=f"q-{unique}")
    yield instance
    instance.close()
    reset_default_app()


@pytest.fixture
def client(app: Decortask) -> Iterator[TestClient]:
    with TestClient(create_dashboard(app, token=TOKEN), base_url="http://127.0.0.1:8000") as c:
        yield c


def _boxes(page: str) -> dict[str, str]:
    """The drawn boxes: node name -> the state it is coloured by."""
    return dict(re.findall(r'class="wf-node" data-node="([^"]+)" data-status="([A-Z]+)"', page))


def _failed_graph() -> Graph:
    g = Graph()
    g.add("source", gt.number.s(5))
    g.add("broken", gt.boom.s(), requires=["source"])
    g.add("after_broken", gt.total.s(), requires=["broken"])
    g.add("later", gt.total.s(), requires=["source"])
    g.add_finally("report", gt.report.s())
    return g


def test_a_graph_nodes_page_draws_the_graph_with_each_node_coloured_by_its_state(
    app: Decortask,
    client: TestClient,
) -> None:
    handle = _failed_graph().apply_async(app=app)
    page = client.get(f"/tasks/{handle.node_ids['source']}", headers=BEARER).text
    assert _boxes(page) == {
        "source": "PENDING",
        "broken": "WAITING",
        "after_broken": "WAITING",
        "later": "WAITING",
        "report": "WAITING",
    }
    run_pending(app)
    page = client.get(f"/tasks/{handle.node_ids['after_broken']}", headers=BEARER).text
    assert _boxes(page) == {
        "source": "SUCCESS",
        "broken": "FAILED",
        "after_broken": "CANCELLED",
        "later": "SUCCESS",
        "report": "SUCCESS",
    }
    assert 'id="workflow-status">FAILED<' in page
    arrows = set(re.findall(r'class="wf-edge wf-(\w+)" data-from="(\w+)" data-to="(\w+)"', page))
    # Three dependencies, and the finally node after the four others, drawn only from the two that no other
    # comes after (after_broken comes after source and broken).
    assert arrows == {
        ("required", "source", "broken"),
        ("required", "broken", "after_broken"),
        ("required", "source", "later"),
        ("finally", "after_broken", "report"),
        ("finally", "later", "report"),
    }
    assert f'href="/tasks/{handle.node_ids["broken"]}"' in page  # each box and row links to its task


def test_the_workflow_api_gives_the_nodes_layers_and_edges(app: Decortask, client: TestClient) -> None:
    handle = _failed_graph().apply_async(app=app)
    run_pending(app)
    data = client.get(f"/api/tasks/{handle.node_ids['later']}/workflow", headers=BEARER).json()["workflow"]
    assert data["kind"] == "graph" and data["id"] == handle.id and data["status"] == "FAILED"
    layers = {node["name"]: node["layer"] for node in data["nodes"]}
    assert layers == {"source": 0, "broken": 1, "later": 1, "after_broken": 2, "report": 3}
    skipped = next(node for node in data["nodes"] if node["name"] == "after_broken")
    assert skipped["status"] == "CANCELLED" and skipped["reason"] == "skipped"
    lone = wt.add.apply_async((1, 1), app=app)
    assert client.get(f"/api/tasks/{lone.id}/workflow", headers=BEARER).json() == {"workflow": None}
    assert client.get("/api/tasks/nope/workflow", headers=BEARER).status_code == 404
    assert client.get(f"/api/tasks/{lone.id}/workflow").status_code == 401


def test_a_chain_steps_a_chord_and_a_group_members_pages_list_their_workflow(
    app: Decortask, client: TestClient
) -> None:
    steps = chain(wt.add.s(1, 1), wt.fail.s(), wt.add.s(5)).apply_async(app=app)
    joined = chord([wt.add.s(i, i) for i in range(3)], wt.tsum.s()).apply_async(app=app)
    run_pending(app)
    page = client.get(f"/tasks/{steps.parts[0]}", headers=BEARER).text
    assert _boxes(page) == {"step 1": "SUCCESS", "step 2": "FAILED", "step 3": "FAILED"}
    assert "chain <code>" in page and 'id="workflow-status">FAILED<' in page
    page = client.get(f"/tasks/{joined.id}", headers=BEARER).text  # the callback's own page
    assert _boxes(page) == {
        "member 1": "SUCCESS",
        "member 2": "SUCCESS",
        "member 3": "SUCCESS",
        "callback": "SUCCESS",
    }
    assert page.count('class="wf-edge wf-required"') == 3
    members = group(wt.add.s(1, 1), wt.fail.s(0), wt.add.s(2, 2)).apply_async(app=app)
    view = client.get(f"/api/tasks/{members[2].id}/workflow", headers=BEARER).json()["workflow"]
    assert (view["kind"], view["id"], view["status"]) == ("group", members.id, "RUNNING")
    run_pending(app)
    page = client.get(f"/tasks/{members[0].id}", headers=BEARER).text
    assert _boxes(page) == {"member 1": "SUCCESS", "member 2": "FAILED", "member 3": "SUCCESS"}
    assert 'id="workflow-status">FAILED<' in page and "wf-edge" not in page


def test_names_in_the_picture_are_text_not_markup(app: Decortask, client: TestClient) -> None:
    """Node names are identifiers, but task names and reasons come from records: all escaped."""
    from decortask.dashboard.workflow_html import workflow_svg

    view = {
        "kind": "graph",
        "id": "g",
        "status": "RUNNING",
        "more": 0,
        "edges": [],
        "nodes": [
            {"name": "a", "task": XSS_NAME, "id": XSS_NAME, "status": "FAILED", "reason": XSS_NAME,
             "finally": False, "layer": 0, "row": 0},
        ],
    }  # fmt: skip
    drawn = workflow_svg(view)
    assert "<script>" not in drawn and "&lt;script&gt;" in drawn
